//! Latency statistics through the real binary: I/O from the raw initiator, then the admin API
//! (`/v1/stats`, windows, the histogram endpoint decoded with the hdrhistogram crate, reset),
//! Prometheus `/metrics`, `shoal stats` (table, `--json`, `--reset`), the slow-command log and
//! `--no-latency-stats`.

mod support;

use shoal::control::api::{ClassStats, HistogramReport, LunStatsReport, StatsReport};
use shoal::stats::export::{from_base64, read_interval_log};
use std::process::Command;
use std::time::Duration;
use support::initiator::RawInitiator;
use support::{Target, run, run_ok};

const T: Duration = Duration::from_secs(30);
const WRITES: u64 = 12;
const WRITE_LEN: usize = 16 << 10;
const READS: u64 = 20;
const READ_BLOCKS: u16 = 8;

fn get(t: &Target, path: &str) -> ureq::Response {
    ureq::get(&format!("{}{path}", t.admin()))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn stats(t: &Target, path: &str) -> StatsReport {
    get(t, path).into_json().expect("stats json")
}

fn default_lun(r: &StatsReport) -> &LunStatsReport {
    r.luns
        .iter()
        .find(|l| l.volume == "default")
        .expect("default volume in the report")
}

/// Logs in with FirstBurstLength 4096 (so 16 KiB writes wait for R2T-solicited Data-Out),
/// clears the unit attention, writes `WRITES` × 16 KiB and reads `READS` × 4 KiB.
fn do_io(t: &Target) -> u64 {
    let mut ini = RawInitiator::login_default(t.addr, 1, &[("FirstBurstLength", "4096")]);
    let mut turs = 0;
    loop {
        turs += 1;
        let tur = support::scsi::test_unit_ready();
        if ini.command(&tur, 0, false, &[]).status() == 0 {
            break;
        }
        assert!(turs < 5, "unit attention never cleared");
    }
    for i in 0..WRITES as u32 {
        let data = support::scsi::pattern(u64::from(i), WRITE_LEN);
        let r = ini.write10(i * 32 + 8, &data);
        assert_eq!(r.status(), 0, "write {i}");
        assert!(
            !r.r2ts.is_empty(),
            "a 16 KiB write past FirstBurstLength waits for R2T"
        );
    }
    for i in 0..READS as u32 {
        let r = ini.read10(i * 8, READ_BLOCKS);
        assert_eq!(r.status(), 0, "read {i}");
    }
    turs
}

fn check_class(c: &ClassStats, ops: u64, bytes: u64) {
    assert_eq!((c.ops, c.bytes), (ops, bytes));
    let p = &c.latency_ns;
    assert!(p.p50 > 0, "{p:?}");
    assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p99_9 && p.p99_9 <= p.max);
    let l = &c.lifetime;
    assert_eq!((l.ops, l.bytes, l.timed), (ops, bytes, ops));
    let s = &l.phase_ns_sum;
    assert_eq!(
        s.data_out + s.queued + s.backend + s.send,
        l.latency_ns_sum,
        "the phases add up to the total"
    );
    assert!(s.backend > 0 && s.send > 0, "{s:?}");
}

#[test]
fn stats_api_histograms_metrics_cli_and_reset() {
    let t = Target::start(&[]);
    let turs = do_io(&t);

    // Since reset.
    let r = stats(&t, "/v1/stats");
    assert_eq!(r.window_seconds, None);
    assert!(r.latency_stats);
    let lun = default_lun(&r);
    assert_eq!(lun.target, "iqn.2026-11.dev.shoal:default");
    check_class(&lun.write, WRITES, WRITES * WRITE_LEN as u64);
    check_class(&lun.read, READS, READS * u64::from(READ_BLOCKS) * 512);
    assert_eq!(lun.other.ops, turs, "TEST UNIT READY");
    // Reads in CmdSN order never wait for data; writes wait for the R2T round trip.
    assert_eq!(
        lun.read.phases_ns.data_out.max, 1,
        "0, recorded as the 1 ns floor"
    );
    assert!(
        lun.write.phases_ns.data_out.p50 >= 1_000,
        "{:?}",
        lun.write.phases_ns
    );
    assert!(lun.read.phases_ns.backend.p50 > 0);
    assert!(lun.read.iops > 0.0 && lun.read.bytes_per_second > 0.0);

    // One volume, and the last-N-seconds window once the current second is over.
    std::thread::sleep(Duration::from_millis(1100));
    let one = stats(&t, "/v1/stats/default?window=60");
    assert_eq!(one.luns.len(), 1);
    assert_eq!(one.window_seconds, Some(60));
    let w = &one.luns[0];
    assert_eq!((w.read.ops, w.write.ops), (READS, WRITES));
    assert!(w.seconds > 0.0 && w.seconds <= 60.0);
    let p99_total = w.read.latency_ns.p99 as f64;
    let p99_reset = lun.read.latency_ns.p99 as f64;
    assert!(
        (p99_total - p99_reset).abs() <= p99_reset * 0.02,
        "window (2 digits) and since-reset (3 digits) agree: {p99_total} vs {p99_reset}"
    );
    let err = ureq::get(&format!("{}/v1/stats?window=61", t.admin())).call();
    assert!(matches!(err, Err(ureq::Error::Status(400, _))));
    let err = ureq::get(&format!("{}/v1/stats/nope", t.admin())).call();
    assert!(matches!(err, Err(ureq::Error::Status(404, _))));

    // The histogram endpoint: the crate's deserializer reads back the same counts.
    let h: HistogramReport = get(&t, "/v1/stats/default/histogram?class=read")
        .into_json()
        .unwrap();
    assert_eq!(h.histograms.len(), 1);
    assert_eq!(h.histograms[0].count, READS);
    let decoded = from_base64(&h.histograms[0].histogram).unwrap();
    assert_eq!(decoded.len(), READS);
    assert_eq!(decoded.max(), h.histograms[0].max_ns);
    let all: HistogramReport = get(&t, "/v1/stats/default/histogram?window=60")
        .into_json()
        .unwrap();
    let counts: Vec<u64> = all.histograms.iter().map(|h| h.count).collect();
    assert_eq!(counts, [READS, WRITES, turs]);
    let resp = get(&t, "/v1/stats/default/histogram?class=write&format=hlog");
    assert_eq!(
        resp.header("content-disposition"),
        Some("attachment; filename=\"default-write.hlog\"")
    );
    let log = resp.into_string().unwrap();
    assert!(
        log.starts_with("#[Histogram log format version 1.3]\n"),
        "{log}"
    );
    let intervals = read_interval_log(log.as_bytes()).unwrap();
    assert_eq!(intervals.len(), 1);
    assert_eq!(intervals[0].tag.as_deref(), Some("default.write"));
    assert_eq!(intervals[0].histogram.len(), WRITES);

    // The plot tool reads what the API serves.
    let hlog = t.dir.path().join("run.hlog");
    std::fs::write(&hlog, &log).unwrap();
    let svg = t.dir.path().join("run.svg");
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_shoal-latency-plot"))
            .arg("-o")
            .arg(&svg)
            .arg(&hlog),
        T,
    );
    assert!(out.contains("default.write"), "{out}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 1);

    // Prometheus.
    let resp = get(&t, "/metrics");
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let metrics = resp.into_string().unwrap();
    let labels = |class: &str| {
        format!(
            "volume=\"default\",target=\"iqn.2026-11.dev.shoal:default\",lun=\"0\",class=\"{class}\""
        )
    };
    for (class, n) in [("read", READS), ("write", WRITES)] {
        let line = format!("shoal_commands_total{{{}}} {n}\n", labels(class));
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
        let line = format!(
            "shoal_command_latency_seconds_count{{{}}} {n}\n",
            labels(class)
        );
        assert!(metrics.contains(&line), "{line}");
    }
    let read_bytes = READS * u64::from(READ_BLOCKS) * 512;
    let line = format!("shoal_bytes_total{{{}}} {read_bytes}\n", labels("read"));
    assert!(metrics.contains(&line), "{line}");
    assert!(metrics.contains("# TYPE shoal_command_latency_seconds summary\n"));
    assert!(metrics.contains("shoal_pool_bytes{state=\"used\"} "));

    // The CLI, found through --data.
    let data = t.dir.path().to_str().unwrap().to_string();
    let shoal = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
        c.arg("--data").arg(&data).args(args);
        c
    };
    let json: StatsReport =
        serde_json::from_str(&run_ok(&mut shoal(&["stats", "--json"]), T)).unwrap();
    assert_eq!(default_lun(&json).read.ops, READS);
    let table = run_ok(&mut shoal(&["stats"]), T);
    let row = table
        .lines()
        .find(|l| l.starts_with("default") && l.contains(" read "))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(row.split_whitespace().count(), 9, "{row}");
    let watch = run_ok(
        &mut shoal(&["stats", "--watch", "--count", "2", "--window", "60"]),
        T,
    );
    assert_eq!(watch.matches("VOLUME").count(), 2, "{watch}");

    // Reset (one volume, through the CLI): since-reset and windows start anew, lifetime
    // counters (Prometheus) stay.
    let out = run_ok(&mut shoal(&["stats", "--reset", "default"]), T);
    assert_eq!(out, "reset the statistics of default\n");
    let r = stats(&t, "/v1/stats/default");
    let lun = default_lun(&r);
    for c in [&lun.read, &lun.write, &lun.other] {
        assert_eq!((c.ops, c.bytes, c.latency_ns.max), (0, 0, 0));
    }
    assert_eq!(lun.read.lifetime.ops, READS);
    assert!(lun.since_reset_seconds < 5.0);
    assert_eq!(default_lun(&stats(&t, "/v1/stats?window=60")).read.ops, 0);
    let h: HistogramReport = get(&t, "/v1/stats/default/histogram?class=read")
        .into_json()
        .unwrap();
    assert_eq!(from_base64(&h.histograms[0].histogram).unwrap().len(), 0);
    let metrics = get(&t, "/metrics").into_string().unwrap();
    let line = format!("shoal_commands_total{{{}}} {READS}\n", labels("read"));
    assert!(metrics.contains(&line), "{line}");
    let o = run(&mut shoal(&["stats", "--reset", "nope"]), T);
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // New I/O after the reset counts from zero.
    let mut ini = RawInitiator::login_default(t.addr, 2, &[]);
    while ini.test_unit_ready() != 0 {}
    for i in 0..3 {
        assert_eq!(ini.read10(i * 8, 8).status(), 0);
    }
    let r = stats(&t, "/v1/stats/default");
    assert_eq!(default_lun(&r).read.ops, 3);
    assert_eq!(default_lun(&r).read.lifetime.ops, READS + 3);
}

#[test]
fn slow_command_log_and_stats_off() {
    // Every command is "slow" at 0 ms: each gets a line (within the per-second budget).
    let t = Target::start_logged(&["--slow-command-ms", "0"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    let data = support::scsi::pattern(7, 4096);
    assert_eq!(ini.write10(40, &data).status(), 0);
    assert_eq!(ini.read10(40, 8).status(), 0);
    let log = t.wait_for_stderr("READ(10)", T);
    assert!(
        log.contains(
            "shoal: slow command: target iqn.2026-11.dev.shoal:default lun 0 WRITE(10) lba 40 \
             blocks 8 total "
        ),
        "{log}"
    );
    let read = log
        .lines()
        .find(|l| l.contains(" READ(10) lba 40 blocks 8 total "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        read.ends_with(" from iqn.2026-11.dev.shoal:test-initiator"),
        "the line names the initiator: {read}"
    );
    assert!(
        read.contains(" us (data_out 0 queued ")
            && read.contains(" backend ")
            && read.contains(" send "),
        "{read}"
    );
    assert!(log.contains("lun 0 TEST UNIT READY total "), "{log}");
    drop(t);

    // Latency statistics off: counts kept, no latency.
    let t = Target::start(&["--no-latency-stats"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    for i in 0..5 {
        assert_eq!(ini.read10(i * 8, 8).status(), 0);
    }
    let r = stats(&t, "/v1/stats/default");
    assert!(!r.latency_stats);
    let lun = default_lun(&r);
    assert_eq!((lun.read.ops, lun.read.bytes), (5, 5 * 4096));
    assert_eq!(lun.read.latency_ns.max, 0);
    assert_eq!(lun.read.lifetime.timed, 0);
    let table = run_ok(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data")
            .arg(t.dir.path())
            .arg("stats"),
        T,
    );
    assert!(table.contains("(latency statistics are off)"), "{table}");
}
