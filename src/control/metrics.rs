//! Statistics as the admin API shows them: the shards' [`LunSnapshot`]s turned into JSON reports
//! and HdrHistogram encodings, and the Prometheus text exposition format (version 0.0.4) of
//! `GET /metrics`.

use super::api::{
    ClassStats, EncodedHistogram, LifetimeStats, LunStatsReport, Percentiles, PhasePercentiles,
    PhaseSums, PoolStatus, QosStats, ReadAheadStats, StatsReport,
};
use crate::stats::export::{self, ExportError, Interval};
use crate::stats::{CLASSES, ClassSnapshot, LunSnapshot, Phase, class_name};
use hdrhistogram::Histogram;
use std::fmt::Write;
use std::time::{Duration, SystemTime};

/// Window of the quantiles `GET /metrics` reports (seconds).
pub const METRICS_WINDOW_SECS: u32 = 60;

fn percentiles(h: Option<&Histogram<u64>>) -> Percentiles {
    match h {
        Some(h) if !h.is_empty() => Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        },
        _ => Percentiles::default(),
    }
}

fn class_stats(c: &ClassSnapshot, seconds: f64) -> ClassStats {
    let rate = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let phase = |i: usize| percentiles(c.hists.as_ref().map(|h| &h.phases[i]));
    let l = &c.lifetime;
    ClassStats {
        ops: c.ops,
        bytes: c.bytes,
        iops: (rate(c.ops) * 10.0).round() / 10.0,
        bytes_per_second: rate(c.bytes).round(),
        latency_ns: percentiles(c.hists.as_ref().map(|h| &h.total)),
        phases_ns: PhasePercentiles {
            data_out: phase(0),
            queued: phase(1),
            backend: phase(2),
            send: phase(3),
        },
        lifetime: LifetimeStats {
            ops: l.ops,
            bytes: l.bytes,
            timed: l.timed,
            latency_ns_sum: l.latency_ns_sum,
            phase_ns_sum: PhaseSums {
                data_out: l.phase_ns_sum[0],
                queued: l.phase_ns_sum[1],
                backend: l.phase_ns_sum[2],
                send: l.phase_ns_sum[3],
            },
            latency_buckets: l.latency_buckets,
            latency_bucket_bounds_ns: crate::stats::LATENCY_BUCKETS_NS,
        },
    }
}

/// The JSON report of one LUN.
pub fn lun_report(s: &LunSnapshot) -> LunStatsReport {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    LunStatsReport {
        volume: s.volume.clone(),
        target: s.target.clone(),
        lun: s.lun,
        seconds: round(s.seconds),
        since_reset_seconds: round(s.since_reset),
        read: class_stats(&s.classes[0], s.seconds),
        write: class_stats(&s.classes[1], s.seconds),
        other: class_stats(&s.classes[2], s.seconds),
        read_ahead: ReadAheadStats {
            chunks: s.read_ahead.chunks,
            bytes: s.read_ahead.bytes,
            hits: s.read_ahead.hits,
        },
        qos: QosStats {
            held: s.qos.held,
            waiting: s.qos.waiting,
        },
    }
}

/// The encoded histograms of `s` for the classes `wanted` (indexes into [`CLASSES`]), and the
/// interval log holding them; the window ended `now` and lasted `s.seconds`.
pub fn encode_histograms(
    s: &LunSnapshot,
    wanted: &[usize],
    now: SystemTime,
) -> Result<(Vec<EncodedHistogram>, String, SystemTime), ExportError> {
    let length = Duration::from_secs_f64(s.seconds.max(0.0));
    let start = now.checked_sub(length).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut encoded = Vec::new();
    let mut intervals = Vec::new();
    for &i in wanted {
        let class = class_name(CLASSES[i]);
        let h = match &s.classes[i].hists {
            Some(h) => h.total.clone(),
            None => crate::stats::new_histogram(2),
        };
        let tag = format!("{}.{class}", s.volume.replace('@', "_"));
        encoded.push(EncodedHistogram {
            class: class.into(),
            tag: tag.clone(),
            count: h.len(),
            max_ns: h.max(),
            histogram: export::to_base64(&h)?,
        });
        intervals.push(Interval {
            tag: Some(tag),
            start,
            length,
            histogram: h,
        });
    }
    let comment = format!(
        "shoal {} latency (ns, command received to response sent) of {} ({}), {} s window",
        env!("CARGO_PKG_VERSION"),
        s.volume,
        s.target,
        (s.seconds * 1000.0).round() / 1000.0
    );
    let log = export::interval_log(&comment, start, &intervals)?;
    Ok((encoded, log, start))
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// Escapes a label value (text format 0.0.4: backslash, double quote, line feed).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(ns: u64) -> String {
    // Shortest representation that round-trips (Prometheus parses Go floats).
    format!("{}", ns as f64 / 1e9)
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The quantiles each summary reports.
const QUANTILES: [(&str, f64); 5] = [
    ("0.5", 0.5),
    ("0.9", 0.9),
    ("0.99", 0.99),
    ("0.999", 0.999),
    ("1", 1.0),
];

fn quantile_of(p: &Percentiles, q: &str) -> u64 {
    match q {
        "0.5" => p.p50,
        "0.9" => p.p90,
        "0.99" => p.p99,
        "0.999" => p.p99_9,
        _ => p.max,
    }
}

/// The `_sum` (seconds, from nanoseconds) and `_count` lines of summary or histogram `family`.
fn sum_and_count(out: &mut String, family: &str, labels: &str, sum_ns: u64, count: u64) {
    let _ = writeln!(out, "{family}_sum{{{labels}}} {}", seconds(sum_ns));
    let _ = writeln!(out, "{family}_count{{{labels}}} {count}");
}

/// The text exposition (format 0.0.4) of `stats` (taken over the last
/// [`METRICS_WINDOW_SECS`] seconds: the quantiles; counters, sums and counts are lifetime
/// figures) and of the pool.
pub fn prometheus(stats: &StatsReport, pool: &PoolStatus, sessions: &[(String, u64)]) -> String {
    let mut out = String::new();
    let rows: Vec<(String, &ClassStats)> = stats
        .luns
        .iter()
        .flat_map(|l| {
            let base = format!(
                "volume=\"{}\",target=\"{}\",lun=\"{}\"",
                escape_label(&l.volume),
                escape_label(&l.target),
                l.lun
            );
            [("read", &l.read), ("write", &l.write), ("other", &l.other)]
                .map(|(class, c)| (format!("{base},class=\"{class}\""), c))
        })
        .collect();

    header(
        &mut out,
        "shoal_commands_total",
        "counter",
        "SCSI commands completed (response sent) since the volume was served.",
    );
    for (labels, c) in &rows {
        let _ = writeln!(out, "shoal_commands_total{{{labels}}} {}", c.lifetime.ops);
    }
    header(
        &mut out,
        "shoal_bytes_total",
        "counter",
        "Bytes moved by SCSI commands (Data-In and Data-Out) since the volume was served.",
    );
    for (labels, c) in &rows {
        let _ = writeln!(out, "shoal_bytes_total{{{labels}}} {}", c.lifetime.bytes);
    }
    let luns: Vec<(String, &ReadAheadStats)> = stats
        .luns
        .iter()
        .map(|l| {
            let labels = format!(
                "volume=\"{}\",target=\"{}\",lun=\"{}\"",
                escape_label(&l.volume),
                escape_label(&l.target),
                l.lun
            );
            (labels, &l.read_ahead)
        })
        .collect();
    header(
        &mut out,
        "shoal_read_ahead_bytes_total",
        "counter",
        "Bytes read ahead of sequential readers since the volume was served.",
    );
    for (labels, r) in &luns {
        let _ = writeln!(out, "shoal_read_ahead_bytes_total{{{labels}}} {}", r.bytes);
    }
    header(
        &mut out,
        "shoal_read_ahead_hits_total",
        "counter",
        "READ commands answered from read-ahead instead of their own device read.",
    );
    for (labels, r) in &luns {
        let _ = writeln!(out, "shoal_read_ahead_hits_total{{{labels}}} {}", r.hits);
    }
    header(
        &mut out,
        "shoal_qos_held_total",
        "counter",
        "READ/WRITE commands the volume's QoS limits held back, since the volume was served.",
    );
    for (labels, l) in luns.iter().zip(&stats.luns) {
        let _ = writeln!(out, "shoal_qos_held_total{{{}}} {}", labels.0, l.qos.held);
    }
    header(
        &mut out,
        "shoal_qos_waiting",
        "gauge",
        "Commands the volume's QoS limits hold back now.",
    );
    for (labels, l) in luns.iter().zip(&stats.luns) {
        let _ = writeln!(out, "shoal_qos_waiting{{{}}} {}", labels.0, l.qos.waiting);
    }
    header(
        &mut out,
        "shoal_command_duration_seconds",
        "histogram",
        "Command latency, SCSI Command PDU received to response sent, since the volume was \
         served (the same as shoal_command_latency_seconds, as a histogram that aggregates).",
    );
    for (labels, c) in &rows {
        let l = &c.lifetime;
        let mut cumulative = 0u64;
        for (bound, count) in l.latency_bucket_bounds_ns.iter().zip(&l.latency_buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "shoal_command_duration_seconds_bucket{{{labels},le=\"{}\"}} {cumulative}",
                seconds(*bound)
            );
        }
        let _ = writeln!(
            out,
            "shoal_command_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            l.timed
        );
        sum_and_count(
            &mut out,
            "shoal_command_duration_seconds",
            labels,
            l.latency_ns_sum,
            l.timed,
        );
    }
    header(
        &mut out,
        "shoal_command_latency_seconds",
        "summary",
        &format!(
            "Command latency, SCSI Command PDU received to response sent; quantiles over the last \
             {METRICS_WINDOW_SECS} s, sum and count since the volume was served."
        ),
    );
    for (labels, c) in &rows {
        for (q, _) in QUANTILES {
            let v = quantile_of(&c.latency_ns, q);
            let _ = writeln!(
                out,
                "shoal_command_latency_seconds{{{labels},quantile=\"{q}\"}} {}",
                seconds(v)
            );
        }
        let l = &c.lifetime;
        sum_and_count(
            &mut out,
            "shoal_command_latency_seconds",
            labels,
            l.latency_ns_sum,
            l.timed,
        );
    }
    header(
        &mut out,
        "shoal_command_phase_seconds",
        "summary",
        &format!(
            "Time commands spend in each phase (data_out, queued, backend, send); quantiles over \
             the last {METRICS_WINDOW_SECS} s, sum and count since the volume was served."
        ),
    );
    for (labels, c) in &rows {
        let p = &c.phases_ns;
        let s = &c.lifetime.phase_ns_sum;
        for (phase, pct, sum) in [
            (Phase::DataOut, &p.data_out, s.data_out),
            (Phase::Queued, &p.queued, s.queued),
            (Phase::Backend, &p.backend, s.backend),
            (Phase::Send, &p.send, s.send),
        ] {
            let labels = format!("{labels},phase=\"{}\"", phase.name());
            for (q, _) in QUANTILES {
                let _ = writeln!(
                    out,
                    "shoal_command_phase_seconds{{{labels},quantile=\"{q}\"}} {}",
                    seconds(quantile_of(pct, q))
                );
            }
            sum_and_count(
                &mut out,
                "shoal_command_phase_seconds",
                &labels,
                sum,
                c.lifetime.timed,
            );
        }
    }
    header(
        &mut out,
        "shoal_pool_size_bytes",
        "gauge",
        "Capacity of the pool's data store.",
    );
    let _ = writeln!(out, "shoal_pool_size_bytes {}", pool.size_bytes);
    header(
        &mut out,
        "shoal_pool_bytes",
        "gauge",
        "Pool space by state: used (referenced extents), reserved (for full volumes), free.",
    );
    for (state, v) in [
        ("used", pool.used_bytes),
        ("reserved", pool.reserved_bytes),
        ("free", pool.free_bytes),
    ] {
        let _ = writeln!(out, "shoal_pool_bytes{{state=\"{state}\"}} {v}");
    }
    header(
        &mut out,
        "shoal_volumes",
        "gauge",
        "Volumes (clones included) and snapshots in the pool.",
    );
    let _ = writeln!(out, "shoal_volumes{{kind=\"volume\"}} {}", pool.volumes);
    let _ = writeln!(out, "shoal_volumes{{kind=\"snapshot\"}} {}", pool.snapshots);
    header(
        &mut out,
        "shoal_logins_total",
        "counter",
        "iSCSI logins since start, by result (refused credentials and access lists apart).",
    );
    let l = &stats.logins;
    for (result, n) in [
        ("accepted", l.accepted),
        ("authentication_failed", l.authentication_failed),
        ("not_authorized", l.not_authorized),
        ("failed", l.failed),
    ] {
        let _ = writeln!(out, "shoal_logins_total{{result=\"{result}\"}} {n}");
    }
    header(
        &mut out,
        "shoal_sessions",
        "gauge",
        "Sessions logged in to each volume: one per host and path, so a drop is a lost path.",
    );
    for (volume, n) in sessions {
        let _ = writeln!(
            out,
            "shoal_sessions{{volume=\"{}\"}} {n}",
            escape_label(volume)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::OpClass;
    use crate::stats::{LunStats, PhaseTimes, Window, second_of};
    use std::time::Instant;

    fn snapshot() -> LunSnapshot {
        let mut s = LunStats::default();
        let now = Instant::now();
        let sec = second_of(now);
        for backend in [100_000u64, 200_000, 300_000, 400_000] {
            let t = PhaseTimes {
                data_out: 0,
                queued: 1_000,
                backend,
                send: 9_000,
            };
            s.class_mut(OpClass::Read).record(sec, 4096, Some(&t));
        }
        let (classes, _, since_reset) = s.snapshot(Window::SinceReset, now);
        LunSnapshot {
            target: "iqn.2026-11.dev.shoal:vm\"1".into(),
            volume: "vm\"1".into(),
            lun: 0,
            seconds: 2.0,
            since_reset,
            classes,
            read_ahead: crate::stats::ReadAheadCounters {
                chunks: 3,
                bytes: 3 << 17,
                hits: 2,
            },
            qos: crate::stats::QosCounters {
                held: 7,
                waiting: 1,
            },
        }
    }

    fn pool() -> PoolStatus {
        PoolStatus {
            size_bytes: 1 << 30,
            used_bytes: 1 << 20,
            free_bytes: (1 << 30) - (1 << 20),
            reserved_bytes: 0,
            extent_size: 65536,
            soft_threshold_percent: 85,
            volumes: 1,
            snapshots: 0,
        }
    }

    #[test]
    fn report_rates_and_percentiles() {
        let r = lun_report(&snapshot());
        assert_eq!((r.read.ops, r.read.bytes), (4, 16384));
        assert_eq!(r.read.iops, 2.0);
        assert_eq!(r.read.bytes_per_second, 8192.0);
        let p = r.read.latency_ns;
        assert!((209_000..=211_000).contains(&p.p50), "{p:?}");
        assert!((409_000..=411_000).contains(&p.max), "{p:?}");
        assert!(p.p90 <= p.p99 && p.p99 <= p.p99_9 && p.p99_9 <= p.max);
        let b = r.read.phases_ns.backend.p50;
        assert!((199_000..=202_000).contains(&b), "{b}");
        assert_eq!(r.read.phases_ns.data_out.max, 1, "0 is clamped to 1 ns");
        assert_eq!(r.read.lifetime.phase_ns_sum.backend, 1_000_000);
        assert_eq!(r.write, ClassStats::default());
    }

    #[test]
    fn histograms_decode_to_the_counts() {
        let s = snapshot();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (enc, log, start) = encode_histograms(&s, &[0, 1], now).unwrap();
        assert_eq!(start, now - Duration::from_secs(2));
        assert_eq!(enc.len(), 2);
        assert_eq!((enc[0].class.as_str(), enc[0].count), ("read", 4));
        assert_eq!(enc[0].tag, "vm\"1.read");
        assert_eq!(export::from_base64(&enc[0].histogram).unwrap().len(), 4);
        assert_eq!(enc[1].count, 0);
        let intervals = export::read_interval_log(log.as_bytes()).unwrap();
        assert_eq!(intervals.len(), 2);
        assert_eq!(intervals[0].histogram.len(), 4);
        assert_eq!(intervals[0].tag.as_deref(), Some("vm\"1.read"));
    }

    /// Checks the text format line by line: comments, then `name{labels} value` samples whose
    /// names match the last TYPE line's family, every label value quoted and escaped.
    #[test]
    fn latency_buckets_take_their_upper_bound() {
        use crate::stats::{LATENCY_BUCKETS_NS, latency_bucket};
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(10_000), 0);
        assert_eq!(latency_bucket(10_001), 1);
        assert_eq!(latency_bucket(10_000_000_000), LATENCY_BUCKETS_NS.len() - 1);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS_NS.len());
        assert!(LATENCY_BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn prometheus_text_format() {
        let report = StatsReport {
            window_seconds: Some(60),
            latency_stats: true,
            luns: vec![lun_report(&snapshot())],
            logins: crate::control::api::LoginCounts {
                accepted: 3,
                not_authorized: 2,
                ..Default::default()
            },
        };
        let sessions = [("vm1".to_string(), 2), ("a\"b".to_string(), 0)];
        let text = prometheus(&report, &pool(), &sessions);
        assert!(
            text.contains("shoal_sessions{volume=\"vm1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_sessions{volume=\"a\\\"b\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_logins_total{result=\"accepted\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("shoal_logins_total{result=\"not_authorized\"} 2\n"));
        assert!(text.ends_with('\n'));
        let mut family = String::new();
        let mut kind = String::new();
        let mut types = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "summary", "histogram"].contains(&k),
                    "{line}"
                );
                assert!(
                    !types.contains(&name.to_string()),
                    "family declared twice: {name}"
                );
                types.push(name.to_string());
                family = name.into();
                kind = k.into();
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value of {line:?}"));
            assert!(v >= 0.0 && v.is_finite(), "{line}");
            let name = series.split('{').next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            let ok = match kind.as_str() {
                "summary" => [
                    family.clone(),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_string()),
                "histogram" => [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&name.to_string()),
                _ => name == family,
            };
            assert!(ok, "sample {name} outside its family {family}");
            if let Some(labels) = series.strip_prefix(name) {
                if !labels.is_empty() {
                    assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                }
            }
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        assert_eq!(
            types,
            [
                "shoal_commands_total",
                "shoal_bytes_total",
                "shoal_read_ahead_bytes_total",
                "shoal_read_ahead_hits_total",
                "shoal_qos_held_total",
                "shoal_qos_waiting",
                "shoal_command_duration_seconds",
                "shoal_command_latency_seconds",
                "shoal_command_phase_seconds",
                "shoal_pool_size_bytes",
                "shoal_pool_bytes",
                "shoal_volumes",
                "shoal_logins_total",
                "shoal_sessions"
            ]
        );
        let labels = r#"volume="vm\"1",target="iqn.2026-11.dev.shoal:vm\"1",lun="0",class="read""#;
        assert!(
            text.contains(&format!("shoal_commands_total{{{labels}}} 4\n")),
            "{text}"
        );
        assert!(text.contains(&format!("shoal_bytes_total{{{labels}}} 16384\n")));
        let lun_labels = labels.rsplit_once(",class=").map_or(labels, |(l, _)| l);
        assert!(text.contains(&format!(
            "shoal_read_ahead_bytes_total{{{lun_labels}}} 393216\n"
        )));
        assert!(text.contains(&format!("shoal_read_ahead_hits_total{{{lun_labels}}} 2\n")));
        assert!(text.contains(&format!("shoal_qos_held_total{{{lun_labels}}} 7\n")));
        assert!(text.contains(&format!("shoal_qos_waiting{{{lun_labels}}} 1\n")));
        assert!(text.contains(&format!(
            "shoal_command_latency_seconds_count{{{labels}}} 4\n"
        )));
        // Totals of 110, 210, 310 and 410 us: cumulative buckets.
        for (le, n) in [
            ("0.0001", 0),
            ("0.00015", 1),
            ("0.00025", 2),
            ("0.0005", 4),
            ("10", 4),
            ("+Inf", 4),
        ] {
            let line =
                format!("shoal_command_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        assert!(text.contains(&format!(
            "shoal_command_duration_seconds_count{{{labels}}} 4\n"
        )));
        assert!(text.contains(&format!(
            "shoal_command_duration_seconds_sum{{{labels}}} 0.00104\n"
        )));
        assert!(text.contains(&format!(
            "shoal_command_phase_seconds_sum{{{labels},phase=\"backend\"}} 0.001\n"
        )));
        let q99 = format!("shoal_command_latency_seconds{{{labels},quantile=\"0.99\"}} ");
        let v: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&q99))
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.000409..=0.000411).contains(&v), "{v}");
        assert!(text.contains("shoal_pool_bytes{state=\"used\"} 1048576\n"));
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
