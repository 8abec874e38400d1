//! `shoal-latency-plot` on generated interval logs: one line per file (two runs compared), one
//! per tag within a file, the tag filter, and bad input.

mod support;

use hdrhistogram::Histogram;
use shoal::stats::export::{Interval, interval_log};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};
use support::{run, run_ok};

const T: Duration = Duration::from_secs(30);

/// A histogram of `n` latencies spread from `low_us` to `high_us`.
fn spread(n: u64, low_us: u64, high_us: u64) -> Histogram<u64> {
    let mut h = shoal::stats::new_histogram::<u64>(3);
    for i in 0..n {
        h.record((low_us + (high_us - low_us) * i / n) * 1000)
            .unwrap();
    }
    h
}

/// Writes a log of 1-second intervals: for each (tag, histogram), `seconds` intervals each
/// holding a copy.
fn write_log(path: &Path, series: &[(&str, Histogram<u64>)], seconds: u64) {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let mut intervals = Vec::new();
    for s in 0..seconds {
        for (tag, h) in series {
            intervals.push(Interval {
                tag: Some((*tag).to_string()),
                start: start + Duration::from_secs(s),
                length: Duration::from_secs(1),
                histogram: h.clone(),
            });
        }
    }
    std::fs::write(path, interval_log("generated", start, &intervals).unwrap()).unwrap();
}

fn plot(args: &[&Path]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal-latency-plot"));
    c.args(args);
    c
}

#[test]
fn two_runs_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.hlog");
    let after = dir.path().join("after.hlog");
    write_log(&before, &[("vm1.read", spread(1000, 50, 500))], 3);
    write_log(&after, &[("vm1.read", spread(1000, 40, 200))], 3);
    let svg = dir.path().join("cmp.svg");
    let out = run_ok(
        plot(&[before.as_path(), after.as_path()])
            .arg("-o")
            .arg(&svg)
            .args(["--title", "before vs after"]),
        T,
    );
    // The summary: each file's intervals merged (3 × 1000 commands).
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .take(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["before", "3000"], "{out}");
    assert_eq!(rows[1][..2], ["after", "3000"], "{out}");
    let p99_before: f64 = rows[0][3].parse().unwrap();
    assert!((494.0..=496.0).contains(&p99_before), "{out}");
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("<title>before</title>") && svg.contains("<title>after</title>"));
    assert!(svg.contains(">before vs after<"));
    // 3000 commands: the x axis runs to 99.9% (and 99.99%, one past the data).
    assert!(svg.contains(">99.9%<") && svg.contains(">99.99%<"), "{svg}");
}

#[test]
fn tags_split_lines_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("all.hlog");
    write_log(
        &log,
        &[
            ("vm1.read", spread(100, 10, 20)),
            ("vm1.write", spread(100, 30, 90)),
        ],
        2,
    );
    let svg = dir.path().join("tags.svg");
    run_ok(plot(&[log.as_path()]).arg("-o").arg(&svg), T);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches("<polyline").count(), 2);
    assert!(text.contains("<title>vm1.read</title>") && text.contains("<title>vm1.write</title>"));

    run_ok(
        plot(&[log.as_path()])
            .arg("-o")
            .arg(&svg)
            .args(["--tag", ".write"]),
        T,
    );
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(text.matches("<polyline").count(), 1);

    let bad = dir.path().join("bad.hlog");
    std::fs::write(&bad, "this is not a log\n").unwrap();
    let o = run(plot(&[bad.as_path()]).arg("-o").arg(&svg), T);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(
        plot(&[log.as_path()])
            .arg("-o")
            .arg(&svg)
            .args(["--tag", "nothing"]),
        T,
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
}
