//! EXTENDED COPY (VMware's XCOPY "full copy") against the real binary with the raw initiator:
//! segments within a volume are copied (several chunks long, overlapping ones as if through a
//! buffer; whole extents by reference), COPY STATUS reports them; whole extents are copied to
//! and from another volume by reference when the host has a session to it (on the same shard
//! or another), while a copy the host may not make there, or of partial extents, is refused
//! with COPY ABORTED (the host then copies by itself); one past the end writes nothing.

mod support;

use support::Target;
use support::initiator::{RawInitiator, read_blocks, session_as, write_blocks};
use support::scsi::{pattern, xcopy_cscd, xcopy_segment};

const BLOCK: usize = 512;
const IQN: &str = "iqn.2026-11.dev.shoal";

/// RECEIVE COPY RESULTS (COPY STATUS) of `list_id`: (status, segments processed, units, count).
fn copy_status(ini: &mut RawInitiator, list_id: u8) -> (u8, u16, u8, u32) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x84;
    cdb[2] = list_id;
    cdb[13] = 255;
    let r = ini.command(&cdb, 255, true, &[]);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    let d = &r.data;
    let count = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    (d[4], u16::from_be_bytes([d[5], d[6]]), d[7], count)
}

#[test]
fn segments_within_a_volume_are_copied_and_reported() {
    let t = Target::start(&["--size", "16M"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    let me = ini.naa_designator();
    // 6 MiB of data at LBA 0: the first segment takes two of the copy engine's 4 MiB chunks.
    let blocks = 12288usize;
    let mut disk = pattern(7, 16 << 20);
    let data = disk[..blocks * BLOCK].to_vec();
    write_blocks(&mut ini, 0, &data);
    // Unwritten blocks read as zeros.
    disk[blocks * BLOCK..].fill(0);
    let r = ini.extended_copy(
        5,
        0,
        &[xcopy_cscd(&me)],
        &[
            xcopy_segment(0, blocks as u16, 0, 16384),
            // Overlapping, destination after the source, two chunks: as if copied through a
            // buffer (the engine copies it from the end).
            xcopy_segment(0, 9000, 100, 1100),
        ],
    );
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    let copy = |disk: &mut Vec<u8>, blocks: usize, src: usize, dst: usize| {
        let from = disk[src * BLOCK..(src + blocks) * BLOCK].to_vec();
        disk[dst * BLOCK..(dst + blocks) * BLOCK].copy_from_slice(&from);
    };
    copy(&mut disk, blocks, 0, 16384);
    copy(&mut disk, 9000, 100, 1100);
    let got = read_blocks(&mut ini, 0, 16384 + blocks);
    assert!(
        got == disk[..(16384 + blocks) * BLOCK],
        "copied data differs"
    );
    let bytes = (blocks + 9000) * BLOCK;
    assert_eq!(copy_status(&mut ini, 5), (0x01, 2, 0x00, bytes as u32));
    // Unwritten blocks copied over unwritten blocks allocate nothing (a thin copy stays thin);
    // over written ones they write zeros.
    let mapped = |t: &Target| {
        let v: serde_json::Value =
            serde_json::from_str(&t.cli_ok(&["volume", "show", "default", "--json"])).unwrap();
        v["mapped_bytes"].as_u64().unwrap()
    };
    let before = mapped(&t);
    let r = ini.extended_copy(
        6,
        0,
        &[xcopy_cscd(&me)],
        &[xcopy_segment(0, 2048, 28672, 30720)],
    );
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(mapped(&t), before);
    let r = ini.extended_copy(7, 0, &[xcopy_cscd(&me)], &[xcopy_segment(0, 256, 28672, 0)]);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(read_blocks(&mut ini, 0, 256), vec![0u8; 256 * BLOCK]);
}

#[test]
fn copies_to_another_volume_or_past_the_end_abort_and_write_nothing() {
    let t = Target::start(&["--size", "16M"]);
    t.cli_ok(&["volume", "create", "other", "--size", "16M"]);
    let mut other = RawInitiator::login(t.addr, &format!("{IQN}:other"), 2, &[]);
    assert_eq!(other.test_unit_ready(), 0);
    let theirs = other.naa_designator();
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    let me = ini.naa_designator();
    assert_ne!(me, theirs);
    let data = pattern(3, 64 * BLOCK);
    write_blocks(&mut ini, 0, &data);
    // Towards the other volume, half an extent (only whole extents go between volumes): COPY
    // ABORTED, COPY TARGET DEVICE NOT REACHABLE.
    let r = ini.extended_copy(
        1,
        0,
        &[xcopy_cscd(&me), xcopy_cscd(&theirs)],
        &[xcopy_segment(1, 64, 0, 0)],
    );
    assert_eq!(r.status(), 0x02);
    assert_eq!(r.sense(), Some((0x0A, 0x0D, 0x02)));
    assert_eq!(read_blocks(&mut other, 0, 64), vec![0u8; 64 * BLOCK]);
    // Past the end of the volume (16 MiB = 32768 blocks): COPY ABORTED, nothing written.
    let r = ini.extended_copy(
        2,
        0,
        &[xcopy_cscd(&me)],
        &[xcopy_segment(0, 64, 0, 32768 - 63)],
    );
    assert_eq!(r.status(), 0x02);
    assert_eq!(r.sense().map(|s| s.0), Some(0x0A));
    assert_eq!(read_blocks(&mut ini, 32768 - 63, 63), vec![0u8; 63 * BLOCK]);
    // No results are held for a refused list.
    let mut cdb = [0u8; 16];
    cdb[0] = 0x84;
    cdb[2] = 2;
    cdb[13] = 255;
    let r = ini.command(&cdb, 255, true, &[]);
    assert_eq!(r.sense(), Some((0x05, 0x24, 0x00)));
}

/// Sixteen maximal segments over unmapped space (128 chunks of 4 MiB): skipped without a read
/// each (they copied nothing and recursed once per chunk), the copy ends GOOD, and the
/// destination still reads as zeros and takes no space.
#[test]
fn a_copy_of_unmapped_space_skips_its_chunks() {
    let t = Target::start(&["--size", "1G"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    let me = ini.naa_designator();
    let segments: Vec<Vec<u8>> = (0..16u64)
        .map(|i| xcopy_segment(0, u16::MAX, i * 65535, (1 << 20) + i * 65535))
        .collect();
    let r = ini.extended_copy(1, 0, &[xcopy_cscd(&me)], &segments);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert!(read_blocks(&mut ini, 1 << 20, 8).iter().all(|&b| b == 0));
    let v: serde_json::Value =
        serde_json::from_str(&t.cli_ok(&["--json", "volume", "show", "default"])).unwrap();
    assert_eq!(v["mapped_bytes"], 0, "{v}");
}

/// `used_bytes` of the pool.
fn pool_used(t: &Target) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&t.cli_ok(&["--json", "pool", "status"])).expect("pool JSON");
    v["used_bytes"].as_u64().expect("used_bytes")
}

#[test]
fn a_copy_of_whole_extents_shares_them_until_either_side_is_written() {
    let t = Target::start(&["--size", "64M"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    let me = ini.naa_designator();
    // 8 MiB written at LBA 0, then copied to LBA 32768 (16 MiB) as ESXi clones: 4 MiB segments.
    let blocks = 16384usize;
    let data = pattern(11, blocks * BLOCK);
    write_blocks(&mut ini, 0, &data);
    let used = pool_used(&t);
    let segments: Vec<Vec<u8>> = (0..2u64)
        .map(|i| xcopy_segment(0, 8192, i * 8192, 32768 + i * 8192))
        .collect();
    let r = ini.extended_copy(1, 0, &[xcopy_cscd(&me)], &segments);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(read_blocks(&mut ini, 32768, blocks), data);
    assert_eq!(pool_used(&t), used, "the copy shares the source's extents");
    // Writing either side copies that extent first: the other keeps its data.
    let new = pattern(12, 8 * BLOCK);
    write_blocks(&mut ini, 0, &new);
    write_blocks(&mut ini, 32768 + 8192, &new);
    let mut source = data.clone();
    source[..new.len()].copy_from_slice(&new);
    let mut copy = data.clone();
    copy[8192 * BLOCK..][..new.len()].copy_from_slice(&new);
    assert_eq!(read_blocks(&mut ini, 0, blocks), source);
    assert_eq!(read_blocks(&mut ini, 32768, blocks), copy);
    // The copy survives kill -9, and the pool's reference counts check out.
    drop(ini);
    let t = Target::start_in(t.kill(), &[]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    assert_eq!(read_blocks(&mut ini, 0, blocks), source);
    assert_eq!(read_blocks(&mut ini, 32768, blocks), copy);
    drop(ini);
    let dir = t.kill();
    support::check_pool(dir.path());
}

/// A segment from CSCD `src_id` to CSCD `dst_id`.
fn segment_between(src_id: u16, dst_id: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
    let mut d = xcopy_segment(dst_id, blocks, src, dst);
    d[4..6].copy_from_slice(&src_id.to_be_bytes());
    d
}

/// Both volumes on one shard (the copy is done there), and on two (through the control
/// plane's copy thread: the volumes are spread over the shards in turn).
#[test]
fn a_copy_between_volumes_shares_extents_when_the_host_may_reach_both() {
    for shards in ["1", "2"] {
        copy_between_volumes(shards);
    }
}

fn copy_between_volumes(shards: &str) {
    const HOST: &str = "iqn.2026-11.dev.shoal:esx-1";
    const OTHER_HOST: &str = "iqn.2026-11.dev.shoal:esx-2";
    let t = Target::start(&["--size", "64M", "--shards", shards]);
    t.cli_ok(&["volume", "create", "ds2", "--size", "64M"]);
    // With two shards, ds2 writes through: its shard syncs each adoption before answering.
    if shards == "2" {
        t.cli_ok(&["volume", "set", "ds2", "--write-cache", "off"]);
    }
    let shard_of = |name: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&t.cli_ok(&["--json", "volume", "show", name])).unwrap();
        v["shard"].clone()
    };
    assert_eq!(
        shard_of("default") == shard_of("ds2"),
        shards == "1",
        "one shard each with two shards"
    );
    let mut a = session_as(t.addr, HOST, "default", 1);
    let me = a.naa_designator();
    let data = pattern(21, 8 << 20);
    write_blocks(&mut a, 0, &data);
    // ds2's designator, seen through another host's session: this host has none to ds2 yet.
    let mut other = session_as(t.addr, OTHER_HOST, "ds2", 2);
    let ds2 = other.naa_designator();
    let cscds = [xcopy_cscd(&me), xcopy_cscd(&ds2)];
    let to_ds2 = [
        segment_between(0, 1, 8192, 0, 0),
        segment_between(0, 1, 8192, 8192, 8192),
    ];
    let r = a.extended_copy(1, 0, &cscds, &to_ds2);
    assert_eq!(
        r.sense(),
        Some((0x0A, 0x0D, 0x02)),
        "COPY TARGET DEVICE NOT REACHABLE without a session to ds2"
    );
    drop(other);

    // With a session of its own to ds2, the copy shares the extents: no space taken.
    let mut b = session_as(t.addr, HOST, "ds2", 3);
    let used = pool_used(&t);
    let r = a.extended_copy(1, 0, &cscds, &to_ds2);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert!(read_blocks(&mut b, 0, 16384) == data, "ds2 holds the copy");
    assert_eq!(pool_used(&t), used);
    // Back again, to another place of the default volume (source on the other unit).
    let r = a.extended_copy(2, 0, &cscds, &[segment_between(1, 0, 8192, 8192, 65536)]);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert!(
        read_blocks(&mut a, 65536, 8192) == data[8192 * BLOCK..],
        "copied back"
    );
    // Writes on either side copy first: the other keeps its data.
    write_blocks(&mut b, 0, &pattern(22, 4096));
    assert!(
        read_blocks(&mut a, 0, 16384) == data,
        "the source keeps its data"
    );
    // Another host's reservation of ds2 (Write Exclusive) keeps this host's copy out.
    let mut other = session_as(t.addr, OTHER_HOST, "ds2", 4);
    let prout = |ini: &mut RawInitiator, action: u8, key: u64, sa_key: u64| {
        let mut param = [0u8; 24];
        param[..8].copy_from_slice(&key.to_be_bytes());
        param[8..16].copy_from_slice(&sa_key.to_be_bytes());
        let cdb = [0x5F, action, 0x01, 0, 0, 0, 0, 0, 24, 0];
        assert_eq!(ini.command(&cdb, 24, false, &param).status(), 0);
    };
    prout(&mut other, 0x00, 0, 0xB1); // REGISTER
    prout(&mut other, 0x01, 0xB1, 0); // RESERVE, Write Exclusive
    let r = a.extended_copy(4, 0, &cscds, &[segment_between(0, 1, 128, 0, 16384)]);
    assert_eq!(
        r.sense(),
        Some((0x0A, 0x0D, 0x02)),
        "reserved by another host"
    );
    prout(&mut other, 0x02, 0xB1, 0); // RELEASE
    let r = a.extended_copy(4, 0, &cscds, &[segment_between(0, 1, 128, 0, 16384)]);
    assert_eq!(r.status(), 0, "released: {:?}", r.sense());
    drop(other);
    // Partial extents, or past ds2's end, abort the copy (the host copies by itself).
    let r = a.extended_copy(3, 0, &cscds, &[segment_between(0, 1, 8, 1, 1)]);
    assert_eq!(r.sense(), Some((0x0A, 0x0D, 0x02)));
    let r = a.extended_copy(3, 0, &cscds, &[segment_between(0, 1, 128, 0, 131072)]);
    assert_eq!(r.sense(), Some((0x0A, 0x21, 0x00)));
    assert_eq!(copy_status(&mut a, 3).0, 0x02, "held results: failed");

    // Persisted: kill -9, both volumes read back, the pool's counts check out.
    drop((a, b));
    let t = Target::start_in(t.kill(), &[]);
    let mut b = session_as(t.addr, HOST, "ds2", 3);
    let mut want = data.clone();
    want[..4096].copy_from_slice(&pattern(22, 4096));
    assert!(read_blocks(&mut b, 0, 16384) == want, "ds2 after kill -9");
    drop(b);
    let dir = t.kill();
    support::check_pool(dir.path());
}

/// A thick volume copies by reference too: it reserves the space its newly shared extents may
/// need, so a write after the copy still never runs out of space.
#[test]
fn a_thick_volume_copies_by_reference_and_reserves_for_what_it_shares() {
    let t = Target::start(&["--size", "1M"]);
    t.cli_ok(&["volume", "create", "thick", "--size", "16M", "--full"]);
    let mut ini = session_as(t.addr, "iqn.2026-11.dev.shoal:esx-1", "thick", 1);
    let me = ini.naa_designator();
    let data = pattern(31, 4 << 20);
    write_blocks(&mut ini, 0, &data);
    let reserved = |t: &Target| {
        let v: serde_json::Value =
            serde_json::from_str(&t.cli_ok(&["--json", "volume", "show", "thick"])).unwrap();
        v["reserved_bytes"].as_u64().unwrap()
    };
    assert_eq!(reserved(&t), 12 << 20, "the 12 MiB it has not written");
    let used = pool_used(&t);
    let r = ini.extended_copy(
        1,
        0,
        &[xcopy_cscd(&me)],
        &[xcopy_segment(0, 8192, 0, 16384)],
    );
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(pool_used(&t), used, "shared, not copied");
    assert_eq!(
        reserved(&t),
        16 << 20,
        "its 4 MiB source is shared now: reserved too"
    );
    assert!(
        read_blocks(&mut ini, 16384, 8192) == data,
        "the copy reads back"
    );
    // Rewriting both sides takes new extents from the reservation (or writes in place once the
    // other side's copy let go), and what it still has not written stays covered.
    write_blocks(&mut ini, 0, &pattern(32, 4 << 20));
    write_blocks(&mut ini, 16384, &pattern(33, 4 << 20));
    assert!(reserved(&t) >= 8 << 20, "{}", reserved(&t));
    write_blocks(&mut ini, 8192, &pattern(34, 4 << 20));
    write_blocks(&mut ini, 24576, &pattern(35, 4 << 20));
}

/// Copies by reference racing writes to their source: a writer rewrites extents of region A
/// (checking each write reads back) while another session copies A to B and B to C over and
/// over. A's data is exactly the writer's, and after kill -9 the pool's counts check out.
#[test]
fn copies_by_reference_racing_writes_keep_the_pool_consistent() {
    let t = Target::start(&["--size", "64M", "--shards", "1"]);
    let mut copier = RawInitiator::login_default(t.addr, 1, &[]);
    while copier.test_unit_ready() != 0 {}
    let me = copier.naa_designator();
    let region = 4 << 20; // bytes: A at 0, B at 16 MiB, C at 32 MiB
    let mut writer = RawInitiator::login_default(t.addr, 2, &[]);
    while writer.test_unit_ready() != 0 {}
    write_blocks(&mut writer, 0, &pattern(40, region));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let copies = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let blocks = (region / BLOCK) as u16;
                for (src, dst) in [(0u64, 32768u64), (32768, 65536)] {
                    let r = copier.extended_copy(
                        0,
                        0b11,
                        &[xcopy_cscd(&me)],
                        &[xcopy_segment(0, blocks, src, dst)],
                    );
                    assert_eq!(r.status(), 0, "{:?}", r.sense());
                }
                n += 1;
            }
            n
        })
    };
    let mut expected = pattern(40, region);
    let mut seed = 41u64;
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(2) {
        // 64 KiB (one extent) at a pseudo-random extent of A.
        let extent = (seed * 7919 % 64) as usize;
        let data = pattern(seed, 64 << 10);
        let lba = (extent * (64 << 10) / BLOCK) as u32;
        assert_eq!(writer.write10(lba, &data).status(), 0);
        expected[extent * (64 << 10)..][..64 << 10].copy_from_slice(&data);
        assert!(
            read_blocks(&mut writer, lba, 128) == data,
            "write {seed} reads back"
        );
        seed += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = copies.join().expect("copier");
    assert!(rounds > 0, "no copy ran");
    assert!(
        read_blocks(&mut writer, 0, region / BLOCK) == expected,
        "A is the writer's"
    );
    drop(writer);
    support::check_pool(t.kill().path());
}
