//! The shard-side cost of latency statistics per command, without the machine's noise: the clock
//! reads a command adds (one `Instant::now()` at execution; the round instants are shared) and
//! recording its phases (`OpStats::record`: counters, a since-reset histogram set and a window
//! slot), on warm histograms. Prints one line per measurement.
//!
//! `cargo bench --bench stats_record` (under `cargo test --all-targets`, without `--bench`, it runs
//! a few thousand iterations as a smoke test).

use shoal::stats::{OpStats, PhaseTimes, second_of};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs the binary as a quick smoke test.
    let n: u64 = if std::env::args().any(|a| a == "--bench") {
        5_000_000
    } else {
        10_000
    };
    let start = Instant::now();
    for _ in 0..n {
        black_box(Instant::now());
    }
    let clock = start.elapsed().as_nanos() as f64 / n as f64;

    let mut op = OpStats::default();
    let sec = second_of(Instant::now());
    // Latencies spread like a busy device's: 20 µs .. 2 ms.
    let times: Vec<PhaseTimes> = (0..4096u64)
        .map(|i| PhaseTimes {
            data_out: 0,
            queued: 1_000 + i * 3,
            backend: 20_000 + (i * 7919) % 2_000_000,
            send: 5_000 + (i * 31) % 50_000,
        })
        .collect();
    for t in &times {
        op.record(sec, 4096, Some(t));
    }
    let start = Instant::now();
    for i in 0..n {
        let t = &times[(i % 4096) as usize];
        op.record(sec + i / 1_000_000, 4096, Some(black_box(t)));
    }
    let record = start.elapsed().as_nanos() as f64 / n as f64;
    black_box(&op);
    println!("clock read (Instant::now): {clock:.1} ns");
    println!("record one command (5 histograms + window slot + counters): {record:.1} ns");
    println!(
        "per command with statistics on: {:.1} ns (one clock read + record)",
        clock + record
    );
}
