//! Histograms in HdrHistogram's standard encodings, so that HdrHistogram tooling (the Java
//! `HistogramLogProcessor`, HdrHistogram's plotters, `hdrhistogram` in any language) reads them:
//!
//! - one histogram: the V2 compressed encoding (`V2DeflateSerializer`, DEFLATE), in base64;
//! - an interval log (`.hlog`): the text format of the Java `HistogramLogWriter` (log format
//!   version 1.3: a `StartTime` header, the legend line, then one line per interval
//!   `[Tag=TAG,]START,LENGTH,MAX,BASE64` with times in seconds and MAX in milliseconds, values
//!   being nanoseconds).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use std::time::{Duration, SystemTime};
use thiserror::Error;

/// A histogram could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum ExportError {
    /// Serializing failed.
    #[error("cannot encode the histogram: {0}")]
    Encode(String),
    /// Not base64.
    #[error("invalid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Not an HdrHistogram encoding.
    #[error("invalid HdrHistogram encoding: {0}")]
    Decode(String),
    /// Not an interval log.
    #[error("invalid interval log at byte {offset}")]
    Log {
        /// Where parsing stopped.
        offset: usize,
    },
    /// A tag with a character the format cannot carry (`,`, space, line breaks).
    #[error("invalid interval log tag {0:?}")]
    Tag(String),
}

/// The V2 compressed encoding of `h`, in base64.
pub fn to_base64(h: &Histogram<u64>) -> Result<String, ExportError> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| ExportError::Encode(e.to_string()))?;
    Ok(STANDARD.encode(bytes))
}

/// Decodes a base64 V2 (compressed or not) histogram.
pub fn from_base64(text: &str) -> Result<Histogram<u64>, ExportError> {
    let bytes = STANDARD.decode(text.trim())?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| ExportError::Decode(format!("{e:?}")))
}

/// One interval of a log.
#[derive(Debug, Clone)]
pub struct Interval {
    /// Its tag (HdrHistogram tools keep tagged histograms apart), e.g. `vm1.read`.
    pub tag: Option<String>,
    /// When it started.
    pub start: SystemTime,
    /// How long it lasted.
    pub length: Duration,
    /// The histogram (ns).
    pub histogram: Histogram<u64>,
}

/// Writes an interval log; `start` is the log's `StartTime`, interval timestamps are absolute
/// (seconds since the epoch), as the Java writer does without a base time.
pub fn interval_log(
    comment: &str,
    start: SystemTime,
    intervals: &[Interval],
) -> Result<String, ExportError> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let io = |e: std::io::Error| ExportError::Encode(e.to_string());
    {
        let mut header = IntervalLogWriterBuilder::new();
        header.add_comment("[Histogram log format version 1.3]");
        for line in comment.lines() {
            header.add_comment(line);
        }
        header
            .with_start_time(start)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(io)?;
    }
    out.extend_from_slice(
        b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    let mut writer = IntervalLogWriterBuilder::new()
        .with_max_value_divisor(1e6)
        .begin_log_with(&mut out, &mut serializer)
        .map_err(io)?;
    for i in intervals {
        let tag = match &i.tag {
            Some(t) => Some(Tag::new(t).ok_or_else(|| ExportError::Tag(t.clone()))?),
            None => None,
        };
        let since_epoch = i
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        writer
            .write_histogram(&i.histogram, since_epoch, i.length, tag)
            .map_err(|e| ExportError::Encode(e.to_string()))?;
    }
    drop(writer);
    // The writer only writes ASCII (numbers, tags that are &str, base64).
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Reads every interval of a log: (tag, start, length, histogram).
pub fn read_interval_log(text: &[u8]) -> Result<Vec<Interval>, ExportError> {
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        match entry {
            Ok(LogEntry::Interval(i)) => out.push(Interval {
                tag: i.tag().map(|t| t.as_str().to_owned()),
                start: SystemTime::UNIX_EPOCH + i.start_timestamp(),
                length: i.duration(),
                histogram: from_base64(i.encoded_histogram())?,
            }),
            Ok(_) => {}
            Err(hdrhistogram::serialization::interval_log::LogIteratorError::ParseError {
                offset,
            }) => return Err(ExportError::Log { offset }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut h = crate::stats::new_histogram::<u64>(3);
        for v in [1_000u64, 20_000, 20_000, 300_000, 4_000_000] {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn base64_round_trip_through_the_crate_deserializer() {
        let h = sample();
        let text = to_base64(&h).unwrap();
        // V2 compressed cookie 0x1c849304, base64 "HISTFAAA".
        assert!(text.starts_with("HISTFAAA"), "{text}");
        let back = from_base64(&text).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.count_at(20_000), 2);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert!(from_base64("not base64!").is_err());
        assert!(from_base64("AAAA").is_err());
    }

    #[test]
    fn interval_log_round_trip() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let a = Interval {
            tag: Some("vm1.read".into()),
            start,
            length: Duration::from_secs(10),
            histogram: sample(),
        };
        let b = Interval {
            tag: None,
            ..a.clone()
        };
        let text = interval_log("shoal test\nsecond line", start, &[a, b]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#[Histogram log format version 1.3]");
        assert_eq!(lines[1], "#shoal test");
        assert_eq!(lines[2], "#second line");
        assert_eq!(
            lines[3],
            "#[StartTime: 1795000000.000 (seconds since epoch)]"
        );
        assert!(lines[4].starts_with("\"StartTimestamp\""));
        assert_eq!(lines[5], "#[MaxValueDivisor: 1000000.000]");
        assert!(
            lines[6].starts_with("Tag=vm1.read,1795000000.000,10.000,4.002,HISTFAAA"),
            "{}",
            lines[6]
        );
        assert!(
            lines[7].starts_with("1795000000.000,10.000,"),
            "{}",
            lines[7]
        );
        let back = read_interval_log(text.as_bytes()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].tag.as_deref(), Some("vm1.read"));
        assert_eq!(back[1].tag, None);
        assert_eq!(back[0].histogram.len(), 5);
        assert_eq!(back[0].length, Duration::from_secs(10));
        assert_eq!(back[0].start, start);
        let bad = Interval {
            tag: Some("a b".into()),
            ..back[0].clone()
        };
        assert!(matches!(
            interval_log("", start, &[bad]),
            Err(ExportError::Tag(_))
        ));
        assert!(read_interval_log(b"garbage line\n").is_err());
    }
}
