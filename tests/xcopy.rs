//! EXTENDED COPY (VMware's XCOPY "full copy") against the real binary with the raw initiator:
//! segments within a volume are copied (several chunks long, overlapping ones as if through a
//! buffer), COPY STATUS reports them, a copy towards another volume is refused with COPY
//! ABORTED (the host then copies by itself), and one past the end writes nothing.

mod support;

use support::Target;
use support::initiator::{RawInitiator, Reply};
use support::scsi::pattern;

const BLOCK: usize = 512;
const IQN: &str = "iqn.2026-11.dev.shoal";

/// The volume's NAA designation descriptor (code set, type, length, designator), the first
/// one of its Device Identification VPD page.
fn naa_designator(ini: &mut RawInitiator) -> Vec<u8> {
    let r = ini.command(&[0x12, 0x01, 0x83, 0x00, 0xFF, 0x00], 255, true, &[]);
    assert_eq!(r.status(), 0);
    let d = &r.data[4..];
    assert_eq!(d[1] & 0x0F, 0x03, "NAA first");
    d[..4 + usize::from(d[3])].to_vec()
}

/// An identification CSCD descriptor (E4h) naming `designator`, a 512-byte block device.
fn cscd(designator: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4..4 + designator.len()].copy_from_slice(designator);
    d[29..32].copy_from_slice(&(BLOCK as u32).to_be_bytes()[1..]);
    d
}

/// A block-to-block segment descriptor: `blocks` from `src` to `dst`, CSCD 0 to CSCD `dst_id`.
fn segment(dst_id: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 0x18;
    d[6..8].copy_from_slice(&dst_id.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src.to_be_bytes());
    d[20..28].copy_from_slice(&dst.to_be_bytes());
    d
}

/// EXTENDED COPY (LID1) with list identifier `list_id` (results held).
fn extended_copy(
    ini: &mut RawInitiator,
    list_id: u8,
    cscds: &[Vec<u8>],
    segs: &[Vec<u8>],
) -> Reply {
    let (c, s) = (cscds.concat(), segs.concat());
    let mut list = vec![0u8; 16];
    list[0] = list_id;
    list[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
    list[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    list.extend(c);
    list.extend(s);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    ini.command(&cdb, list.len() as u32, false, &list)
}

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

fn write_blocks(ini: &mut RawInitiator, lba: u32, data: &[u8]) {
    for (i, chunk) in data.chunks(256 * BLOCK).enumerate() {
        let r = ini.write10(lba + (i * 256) as u32, chunk);
        assert_eq!(r.status(), 0);
    }
}

fn read_blocks(ini: &mut RawInitiator, lba: u32, blocks: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for at in (0..blocks).step_by(256) {
        let n = (blocks - at).min(256) as u16;
        let r = ini.read10(lba + at as u32, n);
        assert_eq!(r.status(), 0);
        out.extend(r.data);
    }
    out
}

#[test]
fn segments_within_a_volume_are_copied_and_reported() {
    let t = Target::start(&["--size", "16M"]);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    let me = naa_designator(&mut ini);
    // 6 MiB of data at LBA 0: the first segment takes two of the copy engine's 4 MiB chunks.
    let blocks = 12288usize;
    let mut disk = pattern(7, 16 << 20);
    let data = disk[..blocks * BLOCK].to_vec();
    write_blocks(&mut ini, 0, &data);
    // Unwritten blocks read as zeros.
    disk[blocks * BLOCK..].fill(0);
    let r = extended_copy(
        &mut ini,
        5,
        &[cscd(&me)],
        &[
            segment(0, blocks as u16, 0, 16384),
            // Overlapping, destination after the source, two chunks: as if copied through a
            // buffer (the engine copies it from the end).
            segment(0, 9000, 100, 1100),
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
    let r = extended_copy(&mut ini, 6, &[cscd(&me)], &[segment(0, 2048, 28672, 30720)]);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(mapped(&t), before);
    let r = extended_copy(&mut ini, 7, &[cscd(&me)], &[segment(0, 256, 28672, 0)]);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(read_blocks(&mut ini, 0, 256), vec![0u8; 256 * BLOCK]);
}

#[test]
fn copies_to_another_volume_or_past_the_end_abort_and_write_nothing() {
    let t = Target::start(&["--size", "16M"]);
    t.cli_ok(&["volume", "create", "other", "--size", "16M"]);
    let mut other = RawInitiator::login(t.addr, &format!("{IQN}:other"), 2, &[]);
    assert_eq!(other.test_unit_ready(), 0);
    let theirs = naa_designator(&mut other);
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    let me = naa_designator(&mut ini);
    assert_ne!(me, theirs);
    let data = pattern(3, 64 * BLOCK);
    write_blocks(&mut ini, 0, &data);
    // Towards the other volume: COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE.
    let r = extended_copy(
        &mut ini,
        1,
        &[cscd(&me), cscd(&theirs)],
        &[segment(1, 64, 0, 0)],
    );
    assert_eq!(r.status(), 0x02);
    assert_eq!(r.sense(), Some((0x0A, 0x0D, 0x02)));
    assert_eq!(read_blocks(&mut other, 0, 64), vec![0u8; 64 * BLOCK]);
    // Past the end of the volume (16 MiB = 32768 blocks): COPY ABORTED, nothing written.
    let r = extended_copy(&mut ini, 2, &[cscd(&me)], &[segment(0, 64, 0, 32768 - 63)]);
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
