//! COMPARE AND WRITE (VMware's ATS) against the real binary with the raw initiator: a match
//! writes, a difference reports MISCOMPARE with the offset of the first differing byte and writes
//! nothing, and concurrent sessions using it as a lock lose no update.

mod support;

use support::Target;
use support::initiator::{RawInitiator, Reply};
use support::scsi::pattern;

const BLOCK: usize = 512;

/// COMPARE AND WRITE of `verify.len()` bytes at `lba`: the Data-Out is the verify data, then
/// the write data.
fn compare_and_write(ini: &mut RawInitiator, lba: u64, verify: &[u8], write: &[u8]) -> Reply {
    assert_eq!(verify.len(), write.len());
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = (verify.len() / BLOCK) as u8;
    let data = [verify, write].concat();
    ini.command(&cdb, data.len() as u32, false, &data)
}

/// The INFORMATION field of a fixed-format sense (the offset of a miscompare).
fn information(reply: &Reply) -> Option<u32> {
    let d = &reply.status_pdu.data;
    let s = d.get(2..)?;
    (s.first()? & 0x80 != 0).then(|| u32::from_be_bytes([s[3], s[4], s[5], s[6]]))
}

fn session(t: &Target, n: u16) -> RawInitiator {
    let mut ini = RawInitiator::login_default(t.addr, n, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    ini
}

#[test]
fn a_match_writes_and_a_difference_writes_nothing() {
    let t = Target::start(&[]);
    let mut ini = session(&t, 1);
    let old = pattern(1, 2 * BLOCK);
    assert_eq!(ini.write10(100, &old).status(), 0);
    let new = pattern(2, 2 * BLOCK);
    let r = compare_and_write(&mut ini, 100, &old, &new);
    assert_eq!(r.status(), 0, "sense {:?}", r.sense());
    assert_eq!(ini.read10(100, 2).data, new);
    // Verify data differing at byte 700: MISCOMPARE, INFORMATION 700, nothing written.
    let mut wrong = new.clone();
    wrong[700] ^= 0xFF;
    let r = compare_and_write(&mut ini, 100, &wrong, &pattern(3, 2 * BLOCK));
    assert_eq!(r.status(), 0x02);
    assert_eq!(r.sense(), Some((0x0E, 0x1D, 0x00)));
    assert_eq!(information(&r), Some(700));
    assert_eq!(ini.read10(100, 2).data, new);
    // Longer than the MAXIMUM COMPARE AND WRITE LENGTH of VPD B0h (64 blocks): INVALID FIELD
    // IN CDB.
    let long = vec![0u8; 65 * BLOCK];
    let r = compare_and_write(&mut ini, 0, &long, &long);
    assert_eq!(r.status(), 0x02);
    assert_eq!(r.sense(), Some((0x05, 0x24, 0x00)));
}

#[test]
fn concurrent_sessions_using_it_as_a_lock_lose_no_update() {
    const SESSIONS: u16 = 4;
    const INCREMENTS: u64 = 60;
    let t = Target::start(&[]);
    let counter = |n: u64| {
        let mut b = vec![0u8; BLOCK];
        b[..8].copy_from_slice(&n.to_be_bytes());
        b
    };
    {
        let mut ini = session(&t, 100);
        assert_eq!(ini.write10(7, &counter(0)).status(), 0);
    }
    let addr = t.addr;
    let workers: Vec<_> = (0..SESSIONS)
        .map(|n| {
            std::thread::spawn(move || {
                let mut ini = RawInitiator::login_default(addr, n + 1, &[]);
                assert_eq!(ini.test_unit_ready(), 0);
                let mut miscompares = 0u64;
                for _ in 0..INCREMENTS {
                    loop {
                        let seen = ini.read10(7, 1).data;
                        let v = u64::from_be_bytes(seen[..8].try_into().unwrap());
                        let r = compare_and_write(&mut ini, 7, &seen, &counter(v + 1));
                        match r.status() {
                            0 => break,
                            0x02 if r.sense() == Some((0x0E, 0x1D, 0x00)) => miscompares += 1,
                            s => panic!("status {s:#x}, sense {:?}", r.sense()),
                        }
                    }
                }
                miscompares
            })
        })
        .collect();
    let miscompares: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let mut ini = session(&t, 200);
    let data = ini.read10(7, 1).data;
    let total = u64::from_be_bytes(data[..8].try_into().unwrap());
    assert_eq!(
        total,
        u64::from(SESSIONS) * INCREMENTS,
        "lost updates ({miscompares} miscompares retried)"
    );
}

/// ORWRITE (16) of `data` at `lba`.
fn or_write(ini: &mut RawInitiator, lba: u64, data: &[u8]) -> Reply {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x8B;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[10..14].copy_from_slice(&((data.len() / BLOCK) as u32).to_be_bytes());
    ini.command(&cdb, data.len() as u32, false, data)
}

#[test]
fn or_write_ors_the_data_into_the_blocks_through_the_same_atomic_path() {
    let t = Target::start(&[]);
    let mut ini = session(&t, 1);
    let low = vec![0x0Fu8; 2 * BLOCK];
    assert_eq!(ini.write10(100, &low).status(), 0);
    let mut mask = vec![0xF0u8; 2 * BLOCK];
    mask[BLOCK..].fill(0x30);
    assert_eq!(or_write(&mut ini, 100, &mask).status(), 0);
    let back = ini.read10(100, 2);
    assert_eq!(back.status(), 0);
    assert!(back.data[..BLOCK].iter().all(|&b| b == 0xFF), "0x0F | 0xF0");
    assert!(back.data[BLOCK..].iter().all(|&b| b == 0x3F), "0x0F | 0x30");
    // Unwritten (thin) blocks read as zeros: ORing gives the data itself.
    assert_eq!(or_write(&mut ini, 300, &pattern(9, BLOCK)).status(), 0);
    assert_eq!(ini.read10(300, 1).data, pattern(9, BLOCK));
}
