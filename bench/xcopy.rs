//! What EXTENDED COPY (VMware's XCOPY "full copy") saves: copying a region of a volume inside the
//! target, against the host reading it and writing it back over iSCSI (what ESXi's software data
//! mover does without XCOPY). One target on a pool under `target/bench` (the disk, as
//! `bench/run`), one session, one command at a time:
//!
//! - `xcopy 4M`: EXTENDED COPY commands of one 4 MiB segment each (ESXi's default transfer size);
//! - `xcopy 32M`: EXTENDED COPY commands of four 8 MiB segments;
//! - `xcopy 4M unaligned`: as `xcopy 4M`, to a destination one block off the extent grid, so the
//!   target must read and write the data (whole extents are otherwise shared by reference);
//! - `xcopy 4M other volume`: as `xcopy 4M`, to a second volume the host has a session to
//!   (Storage vMotion between datastores; with two shards or more, the volumes are on
//!   different shards and each chunk goes through the control plane's copy thread);
//! - `host copy`: READ (10) then WRITE (10) of 1 MiB each.
//!
//! Each copies `--size` bytes (default 512 MiB) of written data to an unwritten region, then the
//! copies are checked against the source. Prints MiB/s per method, the ratio to the host copy,
//! and the pool space the copy took.
//!
//! `cargo bench --bench xcopy [-- --size 1G]` (under `cargo test --all-targets`, without
//! `--bench`, it copies 8 MiB as a smoke test).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;
use support::Target;
use support::initiator::RawInitiator;
use support::scsi::{pattern, xcopy_cscd, xcopy_segment};

const BLOCK: u64 = 512;
const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let size = args
        .windows(2)
        .find(|w| w[0] == "--size")
        .map(|w| parse_size(&w[1]))
        .unwrap_or(if full { 512 * MIB } else { 8 * MIB });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&root).expect("target/bench");
    let dir = tempfile::tempdir_in(&root).expect("data directory");
    let volume = format!("{}", 5 * size + 64 * MIB);
    let t = Target::start_in(dir, &["--size", &volume, "--shards", "2"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    let me = ini.naa_designator();
    t.cli_ok(&["volume", "create", "ds2", "--size", &volume]);
    let mut ds2 = RawInitiator::login(t.addr, "iqn.2026-11.dev.shoal:ds2", 2, &[]);
    while ds2.test_unit_ready() != 0 {}
    let cscds = [xcopy_cscd(&me), xcopy_cscd(&ds2.naa_designator())];

    let source = pattern(11, size as usize);
    let start = Instant::now();
    for (i, chunk) in source.chunks(MIB as usize).enumerate() {
        let r = ini.write10(lba(i as u64 * MIB), chunk);
        assert_eq!(r.status(), 0, "writing the source");
    }
    let fill = mib_s(size, start.elapsed().as_secs_f64());
    println!("source: {} MiB written at {fill:.0} MiB/s", size / MIB);

    let methods: [(&str, u64); 5] = [
        ("xcopy 4M", size),
        ("xcopy 32M", 2 * size),
        ("xcopy 4M unaligned", 3 * size + BLOCK),
        ("xcopy 4M other volume", 0),
        ("host copy", 4 * size),
    ];
    let mut rates = Vec::new();
    for (name, dst) in methods {
        let used = pool_used(&t);
        let start = Instant::now();
        match name {
            "xcopy 32M" => xcopy(&mut ini, &cscds, 0, size, dst, 8 * MIB, 4),
            "xcopy 4M other volume" => xcopy(&mut ini, &cscds, 1, size, dst, 4 * MIB, 1),
            "host copy" => host_copy(&mut ini, size, dst),
            _ => xcopy(&mut ini, &cscds, 0, size, dst, 4 * MIB, 1),
        }
        let rate = mib_s(size, start.elapsed().as_secs_f64());
        rates.push((name, rate, pool_used(&t).saturating_sub(used)));
        let reader = if name == "xcopy 4M other volume" {
            &mut ds2
        } else {
            &mut ini
        };
        check(reader, &source, dst);
    }
    let host = rates.last().map_or(1.0, |r| r.1);
    println!("| method | MiB/s | vs host copy | pool space taken (MiB) |");
    println!("|---|---:|---:|---:|");
    for (name, rate, space) in &rates {
        println!(
            "| {name} | {rate:.0} | {:.2} | {} |",
            rate / host,
            space / MIB
        );
    }
}

/// The pool's used bytes.
fn pool_used(t: &Target) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&t.cli_ok(&["--json", "pool", "status"])).expect("pool JSON");
    status["used_bytes"].as_u64().expect("used_bytes")
}

/// Copies `size` bytes from offset 0 of CSCD 0 (the session's volume) to `dst` of CSCD `dst_id`
/// with EXTENDED COPY commands of `per_command` segments of `segment` bytes.
fn xcopy(
    ini: &mut RawInitiator,
    cscds: &[Vec<u8>],
    dst_id: u16,
    size: u64,
    dst: u64,
    segment: u64,
    per_command: u64,
) {
    let mut at = 0;
    while at < size {
        let mut segments = Vec::new();
        for _ in 0..per_command {
            if at >= size {
                break;
            }
            let len = segment.min(size - at);
            let blocks = (len / BLOCK) as u16;
            segments.push(xcopy_segment(
                dst_id,
                blocks,
                at / BLOCK,
                (dst + at) / BLOCK,
            ));
            at += len;
        }
        // LIST ID USAGE 11b: no results held.
        let r = ini.extended_copy(0, 0b11, cscds, &segments);
        assert_eq!(r.status(), 0, "EXTENDED COPY: {:?}", r.sense());
    }
}

/// Copies `size` bytes from offset 0 to `dst` by reading and writing 1 MiB at a time.
fn host_copy(ini: &mut RawInitiator, size: u64, dst: u64) {
    for at in (0..size).step_by(MIB as usize) {
        let r = ini.read10(lba(at), (MIB / BLOCK) as u16);
        assert_eq!(r.status(), 0);
        let w = ini.write10(lba(dst + at), &r.data);
        assert_eq!(w.status(), 0);
    }
}

/// The copy at `dst` equals the source (every 1 MiB piece).
fn check(ini: &mut RawInitiator, source: &[u8], dst: u64) {
    for (i, want) in source.chunks(MIB as usize).enumerate() {
        let r = ini.read10(
            lba(dst + i as u64 * MIB),
            (want.len() as u64 / BLOCK) as u16,
        );
        assert!(r.data == want, "copy at {dst} differs in MiB {i}");
    }
}

fn lba(offset: u64) -> u32 {
    u32::try_from(offset / BLOCK).expect("LBA fits READ/WRITE (10)")
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs.max(1e-9)
}

fn parse_size(s: &str) -> u64 {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .expect("--size: a number with an optional K/M/G");
    n * match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => MIB,
        "G" => 1 << 30,
        _ => panic!("--size: unit K, M or G"),
    }
}
