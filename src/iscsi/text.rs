//! The iSCSI `key=value` text codec (RFC 7143 §6.1, §6.2 and the data segments of §11.10–§11.13).
//!
//! Login and Text PDUs carry their parameters as a list of `key=value` strings, each ended by a
//! NUL byte. This module owns:
//! - [`parse_text`] / [`encode_text`]: one complete text (all PDUs of a sequence joined) to and
//!   from ordered `(key, value)` pairs;
//! - [`TextAccumulator`]: joins the data segments of a sequence of PDUs sent with the C (continue)
//!   bit, where a single `key=value` may be split across two PDUs (RFC 7143 §6.1, §11.10.2,
//!   §11.12.2).
//!
//! Limits enforced here come from RFC 7143 §6.1: a key name is at most 63 bytes, and no value is
//! longer than 8192 bytes. Semantics of keys (which exist, which values are legal) live in
//! [`crate::iscsi::login::keys`]; this file only knows the syntax.

use thiserror::Error;

/// The longest key name RFC 7143 §6.1 allows, in bytes.
pub const MAX_KEY_LEN: usize = 63;

/// The longest value this codec accepts, in bytes (RFC 7143 §6.1: 8192 for any key).
pub const MAX_VALUE_LEN: usize = 8192;

/// Default cap on the total size of one text joined across several PDUs (C bit), in bytes.
///
/// RFC 7143 does not bound it; a peer that never clears the C bit must not make us buffer
/// without end.
pub const DEFAULT_MAX_TEXT_LEN: usize = 64 * 1024;

/// A malformed text data segment.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    /// A NUL-terminated entry had no `=` separating key from value.
    #[error("text entry {entry:?} has no '=' separator")]
    MissingSeparator {
        /// The offending entry (lossily decoded, at most 64 bytes of it).
        entry: String,
    },
    /// An entry had an empty key (`=value`).
    #[error("text entry has an empty key")]
    EmptyKey,
    /// An entry was not valid UTF-8.
    #[error("text entry at byte {offset} is not valid UTF-8")]
    NotUtf8 {
        /// Byte offset of the entry in the text.
        offset: usize,
    },
    /// A key name was longer than [`MAX_KEY_LEN`].
    #[error("key of {len} bytes exceeds the {MAX_KEY_LEN}-byte limit")]
    KeyTooLong {
        /// Length of the key in bytes.
        len: usize,
    },
    /// A value was longer than [`MAX_VALUE_LEN`].
    #[error("value of key {key:?} is {len} bytes, over the {MAX_VALUE_LEN}-byte limit")]
    ValueTooLong {
        /// The key whose value was too long.
        key: String,
        /// Length of the value in bytes.
        len: usize,
    },
    /// The joined text of a C-bit sequence grew past the accumulator's limit.
    #[error("text of {len} bytes exceeds the {max}-byte limit")]
    TextTooLong {
        /// Length the text would have reached.
        len: usize,
        /// The accumulator's limit.
        max: usize,
    },
}

/// Parses one complete text into ordered `(key, value)` pairs.
///
/// Entries are separated by NUL bytes. Empty entries (runs of NULs, such as trailing padding) are
/// skipped, and a last entry missing its terminating NUL is accepted. The value is everything
/// after the first `=`, so values may themselves contain `=`. Duplicate keys are returned as they
/// are: whether a repetition is an error is a negotiation question, not a syntax one.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut pairs = Vec::new();
    let mut offset = 0;
    for entry in data.split(|&b| b == 0) {
        if !entry.is_empty() {
            pairs.push(parse_entry(entry, offset)?);
        }
        offset += entry.len() + 1;
    }
    Ok(pairs)
}

/// Parses one `key=value` entry that starts at `offset` in the text.
fn parse_entry(entry: &[u8], offset: usize) -> Result<(String, String), TextError> {
    let text = std::str::from_utf8(entry).map_err(|_| TextError::NotUtf8 { offset })?;
    let Some((key, value)) = text.split_once('=') else {
        return Err(TextError::MissingSeparator {
            entry: truncate_for_error(text),
        });
    };
    if key.is_empty() {
        return Err(TextError::EmptyKey);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(TextError::KeyTooLong { len: key.len() });
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(TextError::ValueTooLong {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Keeps error messages short when the peer sends a huge malformed entry.
fn truncate_for_error(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Encodes pairs as `key=value\0` entries, in order.
///
/// The caller is responsible for sending only valid keys and values; this never fails.
pub fn encode_text(pairs: &[(String, String)]) -> Vec<u8> {
    let len = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(len);
    for (key, value) in pairs {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Joins the data segments of a sequence of PDUs sent with the C (continue) bit.
///
/// Feed every PDU's data with [`TextAccumulator::feed`]; while `continues` is true nothing is
/// parsed (a `key=value` may straddle two PDUs). The PDU with the C bit clear yields the parsed
/// pairs of the whole sequence and empties the accumulator for the next one.
#[derive(Debug, Clone)]
pub struct TextAccumulator {
    buf: Vec<u8>,
    max_len: usize,
}

impl Default for TextAccumulator {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_TEXT_LEN)
    }
}

impl TextAccumulator {
    /// An empty accumulator that refuses texts longer than `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_len,
        }
    }

    /// Appends one PDU's data. Returns the parsed pairs of the whole sequence when `continues`
    /// (the PDU's C bit) is false, `None` while more parts are expected.
    ///
    /// On any error the accumulator is emptied.
    pub fn feed(
        &mut self,
        data: &[u8],
        continues: bool,
    ) -> Result<Option<Vec<(String, String)>>, TextError> {
        self.push(data)?;
        if continues {
            return Ok(None);
        }
        self.finish().map(Some)
    }

    /// Appends one PDU's data without parsing. Empties the accumulator on error.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TextError> {
        let len = self.buf.len() + data.len();
        if len > self.max_len {
            self.reset();
            return Err(TextError::TextTooLong {
                len,
                max: self.max_len,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Parses everything pushed so far and empties the accumulator.
    pub fn finish(&mut self) -> Result<Vec<(String, String)>, TextError> {
        let data = std::mem::take(&mut self.buf);
        parse_text(&data)
    }

    /// True when no partial text is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Drops any partial text.
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

/// Builds an owned pair; a convenience for answer lists.
pub(crate) fn pair(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| pair(k, *v)).collect()
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let original = pairs(&[
            ("InitiatorName", "iqn.2024-01.org.example:host"),
            ("HeaderDigest", "CRC32C,None"),
            ("X-com.example.empty", ""),
        ]);
        let bytes = encode_text(&original);
        assert_eq!(
            bytes,
            b"InitiatorName=iqn.2024-01.org.example:host\0HeaderDigest=CRC32C,None\0X-com.example.empty=\0"
        );
        assert_eq!(parse_text(&bytes).unwrap(), original);
    }

    #[test]
    fn parse_empty_data_gives_no_pairs() {
        assert_eq!(parse_text(b"").unwrap(), vec![]);
        assert_eq!(parse_text(b"\0\0\0\0").unwrap(), vec![]);
    }

    #[test]
    fn parse_tolerates_trailing_nul_padding() {
        let got = parse_text(b"A=1\0B=2\0\0\0").unwrap();
        assert_eq!(got, pairs(&[("A", "1"), ("B", "2")]));
    }

    #[test]
    fn parse_accepts_last_entry_without_nul() {
        assert_eq!(
            parse_text(b"A=1\0B=2").unwrap(),
            pairs(&[("A", "1"), ("B", "2")])
        );
    }

    #[test]
    fn parse_keeps_equals_signs_inside_value() {
        assert_eq!(parse_text(b"K=a=b\0").unwrap(), pairs(&[("K", "a=b")]));
    }

    #[test]
    fn parse_keeps_duplicate_keys_in_order() {
        let got = parse_text(b"A=1\0A=2\0").unwrap();
        assert_eq!(got, pairs(&[("A", "1"), ("A", "2")]));
    }

    #[test]
    fn parse_rejects_entry_without_separator() {
        let err = parse_text(b"A=1\0garbage\0").unwrap_err();
        assert_eq!(
            err,
            TextError::MissingSeparator {
                entry: "garbage".into()
            }
        );
    }

    #[test]
    fn parse_rejects_empty_key() {
        assert_eq!(parse_text(b"=value\0").unwrap_err(), TextError::EmptyKey);
    }

    #[test]
    fn parse_rejects_non_utf8_with_offset() {
        let err = parse_text(b"A=1\0B=\xff\xfe\0").unwrap_err();
        assert_eq!(err, TextError::NotUtf8 { offset: 4 });
    }

    #[test]
    fn parse_key_length_limit_is_63_bytes() {
        let ok = format!("{}=v\0", "K".repeat(63));
        assert_eq!(parse_text(ok.as_bytes()).unwrap().len(), 1);
        let bad = format!("{}=v\0", "K".repeat(64));
        assert_eq!(
            parse_text(bad.as_bytes()).unwrap_err(),
            TextError::KeyTooLong { len: 64 }
        );
    }

    #[test]
    fn parse_value_length_limit_is_8192_bytes() {
        let ok = format!("K={}\0", "v".repeat(8192));
        assert_eq!(parse_text(ok.as_bytes()).unwrap()[0].1.len(), 8192);
        let bad = format!("K={}\0", "v".repeat(8193));
        assert_eq!(
            parse_text(bad.as_bytes()).unwrap_err(),
            TextError::ValueTooLong {
                key: "K".into(),
                len: 8193
            }
        );
    }

    #[test]
    fn missing_separator_error_is_truncated() {
        let long = "x".repeat(10_000);
        let TextError::MissingSeparator { entry } = parse_text(long.as_bytes()).unwrap_err() else {
            panic!("wrong error");
        };
        assert_eq!(entry.len(), 64);
    }

    #[test]
    fn accumulator_joins_pair_split_across_pdus() {
        let mut acc = TextAccumulator::default();
        assert_eq!(acc.feed(b"InitiatorName=iqn.2024", true).unwrap(), None);
        assert!(!acc.is_empty());
        assert_eq!(acc.feed(b"-01.org.example:h\0Session", true).unwrap(), None);
        let got = acc.feed(b"Type=Normal\0", false).unwrap().unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("InitiatorName", "iqn.2024-01.org.example:h"),
                ("SessionType", "Normal")
            ])
        );
        assert!(acc.is_empty());
    }

    #[test]
    fn accumulator_single_pdu_without_continue_parses_at_once() {
        let mut acc = TextAccumulator::default();
        assert_eq!(
            acc.feed(b"A=1\0", false).unwrap(),
            Some(pairs(&[("A", "1")]))
        );
    }

    #[test]
    fn accumulator_rejects_text_over_limit_and_resets() {
        let mut acc = TextAccumulator::new(8);
        assert_eq!(acc.feed(b"A=1234", true).unwrap(), None);
        assert_eq!(
            acc.feed(b"567\0", false).unwrap_err(),
            TextError::TextTooLong { len: 10, max: 8 }
        );
        assert!(acc.is_empty());
        assert_eq!(
            acc.feed(b"B=2\0", false).unwrap(),
            Some(pairs(&[("B", "2")]))
        );
    }

    #[test]
    fn accumulator_parse_error_surfaces_on_final_part() {
        let mut acc = TextAccumulator::default();
        assert_eq!(acc.feed(b"A=1\0bro", true).unwrap(), None);
        assert!(matches!(
            acc.feed(b"ken\0", false),
            Err(TextError::MissingSeparator { .. })
        ));
        assert!(acc.is_empty());
    }
}
