//! Sequential read-ahead against the real binary, driven by the raw initiator: a sequential
//! reader sees every WRITE and UNMAP made to ranges the shard had already read ahead, and the
//! statistics show that read-ahead served it. Also: the read-path tuning flags are checked at
//! start.

mod support;

use support::Target;
use support::initiator::RawInitiator;
use support::scsi::pattern;

const BLOCK: usize = 512;
/// Each sequential READ: 64 KiB.
const READ: usize = 64 << 10;
const VOLUME: usize = 8 << 20;

fn read_at(ini: &mut RawInitiator, offset: usize) -> Vec<u8> {
    let reply = ini.read10((offset / BLOCK) as u32, (READ / BLOCK) as u16);
    assert_eq!(reply.status(), 0, "READ at {offset}");
    reply.data
}

fn write_at(ini: &mut RawInitiator, offset: usize, data: &[u8], expected: &mut [u8]) {
    let reply = ini.write10((offset / BLOCK) as u32, data);
    assert_eq!(reply.status(), 0, "WRITE at {offset}");
    expected[offset..offset + data.len()].copy_from_slice(data);
}

/// UNMAP(10) of one range (the volume has LBPRZ: it reads back as zeros).
fn unmap(ini: &mut RawInitiator, offset: usize, len: usize, expected: &mut [u8]) {
    let mut param = vec![0u8; 24];
    param[0..2].copy_from_slice(&22u16.to_be_bytes());
    param[2..4].copy_from_slice(&16u16.to_be_bytes());
    param[8..16].copy_from_slice(&((offset / BLOCK) as u64).to_be_bytes());
    param[16..20].copy_from_slice(&((len / BLOCK) as u32).to_be_bytes());
    let mut cdb = [0u8; 10];
    cdb[0] = 0x42;
    cdb[7..9].copy_from_slice(&(param.len() as u16).to_be_bytes());
    let reply = ini.command(&cdb, param.len() as u32, false, &param);
    assert_eq!(reply.status(), 0, "UNMAP at {offset}");
    expected[offset..offset + len].fill(0);
}

fn read_ahead_hits(t: &Target) -> u64 {
    let stats: serde_json::Value = ureq::get(&format!("{}/v1/stats/default", t.admin()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    stats["luns"][0]["read_ahead"]["hits"].as_u64().unwrap()
}

#[test]
fn sequential_reads_see_writes_and_unmaps_made_to_ranges_read_ahead() {
    let t = Target::start(&["--size", "8M"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    let mut expected = vec![0u8; VOLUME];
    for (i, offset) in (0..VOLUME).step_by(READ).enumerate() {
        let data = pattern(i as u64 + 1, READ);
        write_at(&mut ini, offset, &data, &mut expected);
    }
    // Eight sequential READs: read-ahead starts at the third, and the READs answered from it
    // deepen it to 1 MiB ahead (to 1.5 MiB).
    for offset in (0..512 << 10).step_by(READ) {
        assert!(
            read_at(&mut ini, offset) == expected[offset..offset + READ],
            "at {offset}"
        );
    }
    // Change what is read ahead by now: a whole chunk, 4 KiB inside one, 8 KiB across two
    // chunks, and an UNMAP of a whole chunk (64 KiB extents: it releases the extent).
    write_at(&mut ini, 640 << 10, &pattern(100, READ), &mut expected);
    write_at(
        &mut ini,
        (832 << 10) + 4096,
        &pattern(101, 4096),
        &mut expected,
    );
    write_at(
        &mut ini,
        (1024 << 10) - 4096,
        &pattern(102, 8192),
        &mut expected,
    );
    unmap(&mut ini, 1152 << 10, READ, &mut expected);
    // The reader goes on through the changed ranges and beyond.
    for offset in (512 << 10..4 << 20).step_by(READ) {
        let got = read_at(&mut ini, offset);
        let want = &expected[offset..offset + READ];
        let first_bad = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(
            first_bad.is_none(),
            "READ at {offset}: first difference at {first_bad:?}"
        );
    }
    let hits = read_ahead_hits(&t);
    assert!(
        hits >= 40,
        "expected most of the 56 sequential READs past the first three answered by read-ahead, \
         saw {hits}"
    );
}

#[test]
fn read_ahead_off_serves_nothing_from_it() {
    let t = Target::start(&["--size", "8M", "--read-ahead", "0"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    for offset in (0..VOLUME).step_by(READ) {
        let data = read_at(&mut ini, offset);
        assert!(
            data.iter().all(|&b| b == 0),
            "unwritten blocks read as zeros"
        );
    }
    assert_eq!(read_ahead_hits(&t), 0);
}

#[test]
fn read_tuning_flags_out_of_range_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (args, why) in [
        (["--read-ahead", "32M"], "read-ahead"),
        (["--read-submit-batch", "5000"], "read submit batch"),
        (["--read-submit-batch", "two"], "--read-submit-batch"),
    ] {
        let out = support::run(
            std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("--data")
                .arg(dir.path())
                .arg("serve")
                .args(args),
            std::time::Duration::from_secs(30),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    // Nothing was started, nor a pool made.
    assert!(!dir.path().join("pool").exists());
}
