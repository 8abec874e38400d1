//! WRITE ATOMIC (16) against the real binary with the raw initiator: the Block Limits page
//! offers it, a write across several extents (partial ones at both ends) reads back whole and
//! survives `kill -9` with the pool's counts intact, a write past MAXIMUM ATOMIC TRANSFER
//! LENGTH or with an ATOMIC BOUNDARY is refused and changes nothing. (That nothing is torn by
//! a crash between its data and its record is checked by tests/pool_model.rs; libiscsi's
//! WriteAtomic16 suite runs in tests/clients.rs.)

mod support;

use support::Target;
use support::initiator::RawInitiator;
use support::scsi::pattern;

const BLOCK: usize = 512;

/// A WRITE ATOMIC (16) CDB.
fn write_atomic(lba: u64, blocks: u16, boundary: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9C;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..12].copy_from_slice(&boundary.to_be_bytes());
    c[12..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read(ini: &mut RawInitiator, lba: u32, blocks: u16) -> Vec<u8> {
    let r = ini.read10(lba, blocks);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    r.data
}

#[test]
fn an_atomic_write_across_extents_reads_back_whole_and_survives_kill_9() {
    let t = Target::start(&["--size", "16M"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    // Block Limits: MAXIMUM ATOMIC TRANSFER LENGTH 1 MiB of 512-byte blocks, no alignment,
    // granularity or boundary.
    let bl = ini.command(&[0x12, 0x01, 0xB0, 0, 0xFF, 0], 255, true, &[]);
    assert_eq!(bl.status(), 0);
    let field = |at: usize| u32::from_be_bytes(bl.data[at..at + 4].try_into().unwrap());
    assert_eq!(field(44), 2048, "MAXIMUM ATOMIC TRANSFER LENGTH");
    assert_eq!([field(48), field(52), field(56), field(60)], [0; 4]);

    // Extents 0..3 written first (owned: an ordinary write would overwrite them in place).
    let old = pattern(1, 256 * 1024);
    for (i, chunk) in old.chunks(128 * BLOCK).enumerate() {
        assert_eq!(ini.write10((i * 128) as u32, chunk).status(), 0);
    }
    // 200 KiB from LBA 100: partial extents at both ends, whole ones between.
    let new = pattern(2, 400 * BLOCK);
    let r = ini.command(&write_atomic(100, 400, 0), new.len() as u32, false, &new);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    let mut want = old.clone();
    want[100 * BLOCK..500 * BLOCK].copy_from_slice(&new);
    assert_eq!(read(&mut ini, 0, 512), want);

    // Refused, nothing written: past MAXIMUM ATOMIC TRANSFER LENGTH, or with a boundary.
    let big = vec![7u8; 2049 * BLOCK];
    let r = ini.command(&write_atomic(0, 2049, 0), big.len() as u32, false, &big);
    assert_eq!(r.sense(), Some((0x05, 0x24, 0x00)), "INVALID FIELD IN CDB");
    let r = ini.command(
        &write_atomic(0, 8, 8),
        8 * BLOCK as u32,
        false,
        &big[..8 * BLOCK],
    );
    assert_eq!(r.sense(), Some((0x05, 0x24, 0x00)), "ATOMIC BOUNDARY");
    assert_eq!(read(&mut ini, 0, 512), want);

    drop(ini);
    let t = Target::start_in(t.kill(), &[]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    while ini.test_unit_ready() != 0 {}
    assert_eq!(read(&mut ini, 0, 512), want);
    drop(ini);
    let dir = t.kill();
    support::check_pool(dir.path());
}
