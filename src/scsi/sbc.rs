//! Block commands (SBC-3) of a direct-access logical unit: capacity data and the translation of
//! READ / WRITE / VERIFY / WRITE AND VERIFY / PRE-FETCH / SYNCHRONIZE CACHE into storage requests
//! ([`Outcome`]), and of storage results back into status and sense.
//!
//! Implements:
//! - READ CAPACITY (10) (SBC-3 5.15) and READ CAPACITY (16) (SBC-3 5.16) parameter data;
//! - READ (SBC-3 5.10 - 5.13), WRITE (5.32 - 5.35), VERIFY (5.29 - 5.31), WRITE AND VERIFY
//!   (5.36 - 5.38): write protection (4.11 / SBC-3 6.4.1 WP), MAXIMUM TRANSFER LENGTH and LBA range
//!   (4.5), zero transfer lengths (no I/O, GOOD), FUA (4.12, forced when the write cache is
//!   disabled), BYTCHK;
//! - PRE-FETCH (5.3, 5.4): range-checked, then GOOD without I/O (no cache to load);
//! - SYNCHRONIZE CACHE (5.26, 5.27): range-checked, then a flush;
//! - the sense data of failed storage requests: MISCOMPARE DURING VERIFY OPERATION with the
//!   offset in INFORMATION (5.29.1), UNRECOVERED READ ERROR / WRITE ERROR, and SPACE ALLOCATION
//!   FAILED WRITE PROTECT (4.7.3.6) for an exhausted thin pool.
//!
//! Data-Out shorter than the transfer length (iSCSI EDTL < SPDTL, an overflow the iSCSI layer
//! reports as a residual): WRITE and WRITE AND VERIFY write only the whole blocks received (FCP-4
//! 9.4.2 option a, which libiscsi's residual tests expect); a partial block, and any shortfall
//! for a VERIFY compare, is INVALID FIELD IN COMMAND INFORMATION UNIT and nothing is written.

use super::cdb::{BlockIo, check_block_range};
use super::lun::LunInfo;
use super::sense::Sense;
use super::spc::truncate;
use super::{Completion, IoResult, Outcome};

/// Length of READ CAPACITY (10) parameter data.
pub const READ_CAPACITY_10_LEN: usize = 8;
/// Length of READ CAPACITY (16) parameter data.
pub const READ_CAPACITY_16_LEN: usize = 32;

/// The LBA of the last logical block (0 for an empty medium).
fn last_lba(info: &LunInfo) -> u64 {
    info.num_blocks.saturating_sub(1)
}

/// READ CAPACITY (10) parameter data (SBC-3 5.15.2): RETURNED LOGICAL BLOCK ADDRESS (FFFFFFFFh
/// when the last LBA does not fit, telling the initiator to use READ CAPACITY (16)) and LOGICAL
/// BLOCK LENGTH IN BYTES.
pub fn read_capacity10(info: &LunInfo) -> Completion {
    let lba = u32::try_from(last_lba(info)).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(READ_CAPACITY_10_LEN);
    d.extend_from_slice(&lba.to_be_bytes());
    d.extend_from_slice(&info.block_size.to_be_bytes());
    Completion::good(d)
}

/// READ CAPACITY (16) parameter data (SBC-3 5.16.2), 32 bytes truncated to the allocation length:
/// last LBA, block length, no protection (P_TYPE / PROT_EN / P_I_EXPONENT 0), LOGICAL BLOCKS PER
/// PHYSICAL BLOCK EXPONENT, LBPME and LBPRZ for a thin LU, LOWEST ALIGNED LBA 0.
pub fn read_capacity16(info: &LunInfo, alloc_len: u32) -> Completion {
    let mut d = vec![0u8; READ_CAPACITY_16_LEN];
    d[0..8].copy_from_slice(&last_lba(info).to_be_bytes());
    d[8..12].copy_from_slice(&info.block_size.to_be_bytes());
    d[13] = info.logical_per_physical_exponent() & 0x0F;
    if info.thin {
        d[14] = 0xC0; // LBPME | LBPRZ
    }
    Completion::good(truncate(d, alloc_len))
}

/// `Outcome::Done` with CHECK CONDITION and `sense`.
fn fail(sense: Sense) -> Outcome {
    Outcome::Done(Completion::check(sense))
}

/// `Outcome::Done` with GOOD and no data.
fn done_good() -> Outcome {
    Outcome::Done(Completion::good(Vec::new()))
}

/// Range-checks `io` and returns its byte offset and length on the volume.
fn byte_range(info: &LunInfo, io: &BlockIo, max_transfer: u32) -> Result<(u64, u64), Sense> {
    check_block_range(io, info.num_blocks, max_transfer)?;
    let bs = u64::from(info.block_size);
    let offset = io.lba.checked_mul(bs).ok_or(Sense::lba_out_of_range())?;
    let len = u64::from(io.blocks)
        .checked_mul(bs)
        .ok_or(Sense::lba_out_of_range())?;
    Ok((offset, len))
}

/// How many of `want` bytes of Data-Out a write may use: all of them, or (when the initiator sent
/// less) the whole blocks it sent; a partial block is INVALID FIELD IN COMMAND INFORMATION UNIT.
fn usable_data_out(info: &LunInfo, want: u64, data_out: &[u8]) -> Result<u64, Sense> {
    let got = u64::try_from(data_out.len()).unwrap_or(u64::MAX);
    if got >= want {
        return Ok(want);
    }
    if got % u64::from(info.block_size.max(1)) != 0 {
        return Err(Sense::invalid_field_in_information_unit());
    }
    Ok(got)
}

/// READ (6/10/12/16): range check, then a read request (GOOD with no data for zero blocks).
pub fn read(info: &LunInfo, io: &BlockIo) -> Outcome {
    match byte_range(info, io, info.max_transfer_blocks) {
        Err(sense) => fail(sense),
        Ok((_, 0)) => done_good(),
        Ok((offset, len)) => Outcome::Read {
            offset,
            len,
            fua: io.fua,
        },
    }
}

/// WRITE (6/10/12/16): write protection, range check, Data-Out length, then a write request.
/// FUA is forced when the write cache is disabled (WCE=0), so that every acknowledged write is
/// durable.
pub fn write(info: &LunInfo, write_cache: bool, io: &BlockIo, data_out: &[u8]) -> Outcome {
    if info.read_only {
        return fail(Sense::write_protected());
    }
    let range = byte_range(info, io, info.max_transfer_blocks);
    match range.and_then(|(offset, len)| Ok((offset, usable_data_out(info, len, data_out)?))) {
        Err(sense) => fail(sense),
        Ok((_, 0)) => done_good(),
        Ok((offset, len)) => Outcome::Write {
            offset,
            len,
            fua: io.fua || !write_cache,
        },
    }
}

/// VERIFY (10/12/16): range check, then a verify request; with BYTCHK=01b the Data-Out must
/// hold every block to compare.
pub fn verify(info: &LunInfo, io: &BlockIo, compare: bool, data_out: &[u8]) -> Outcome {
    match byte_range(info, io, info.max_transfer_blocks) {
        Err(sense) => fail(sense),
        Ok((_, 0)) => done_good(),
        Ok((_, len)) if compare && (data_out.len() as u64) < len => {
            fail(Sense::invalid_field_in_information_unit())
        }
        Ok((offset, len)) => Outcome::Verify {
            offset,
            len,
            compare,
        },
    }
}

/// WRITE AND VERIFY (10/12/16): as WRITE (always durable), then a read-back compare when
/// BYTCHK=01b. With BYTCHK=00b the durable write stands for the medium verification.
pub fn write_and_verify(info: &LunInfo, io: &BlockIo, compare: bool, data_out: &[u8]) -> Outcome {
    if info.read_only {
        return fail(Sense::write_protected());
    }
    let range = byte_range(info, io, info.max_transfer_blocks);
    match range.and_then(|(offset, len)| Ok((offset, usable_data_out(info, len, data_out)?))) {
        Err(sense) => fail(sense),
        Ok((_, 0)) => done_good(),
        Ok((offset, len)) => Outcome::WriteVerify {
            offset,
            len,
            verify: compare,
        },
    }
}

/// PRE-FETCH (10/16): range check, then GOOD (not CONDITION MET: there is no cache to load, and
/// libiscsi expects GOOD).
pub fn pre_fetch(info: &LunInfo, io: &BlockIo) -> Outcome {
    match byte_range(info, io, 0) {
        Err(sense) => fail(sense),
        Ok(_) => done_good(),
    }
}

/// SYNCHRONIZE CACHE (10/16): range check (NUMBER OF LOGICAL BLOCKS 0 = up to the end of the
/// medium), then a flush of the whole volume.
pub fn synchronize_cache(info: &LunInfo, io: &BlockIo) -> Outcome {
    match byte_range(info, io, 0) {
        Err(sense) => fail(sense),
        Ok(_) => Outcome::Flush,
    }
}

/// Maps the result of a storage request returned by one of the functions above to the command's
/// completion. A `Read` that succeeded completes GOOD with empty data: the shard sends the read
/// buffer itself.
pub fn complete(outcome: &Outcome, result: IoResult) -> Completion {
    match result {
        IoResult::Ok => match outcome {
            Outcome::Done(c) => c.clone(),
            _ => Completion::good(Vec::new()),
        },
        IoResult::Miscompare { at } => Completion::check(Sense::miscompare(at)),
        IoResult::MediumError { read } => Completion::check(Sense::medium_error(read)),
        IoResult::SpaceExhausted => {
            Completion::check(Sense::space_allocation_failed_write_protect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Status;

    fn info() -> LunInfo {
        LunInfo {
            num_blocks: 1000,
            block_size: 512,
            physical_block_size: 4096,
            max_transfer_blocks: 256,
            ..LunInfo::default()
        }
    }

    fn io(lba: u64, blocks: u32) -> BlockIo {
        BlockIo {
            lba,
            blocks,
            dpo: false,
            fua: false,
            length_field: 7,
        }
    }

    fn sense_of(o: &Outcome) -> Option<Sense> {
        match o {
            Outcome::Done(c) => c.sense,
            _ => None,
        }
    }

    #[test]
    fn read_capacity10_bytes() {
        let c = read_capacity10(&info());
        assert_eq!(c.data, vec![0, 0, 0x03, 0xE7, 0, 0, 0x02, 0x00]);
        let mut big = info();
        big.num_blocks = 1 << 33;
        assert_eq!(&read_capacity10(&big).data[..4], &[0xFF; 4]);
        big.num_blocks = 0xFFFF_FFFF; // last LBA FFFFFFFEh fits
        assert_eq!(&read_capacity10(&big).data[..4], &[0xFF, 0xFF, 0xFF, 0xFE]);
    }

    #[test]
    fn read_capacity16_exact_bytes() {
        let c = read_capacity16(&info(), 32);
        let mut want = vec![0u8; 32];
        want[..8].copy_from_slice(&999u64.to_be_bytes());
        want[8..12].copy_from_slice(&512u32.to_be_bytes());
        want[13] = 3; // 8 logical blocks per physical block
        assert_eq!(c.data, want);
        let mut thin = info();
        thin.thin = true;
        thin.physical_block_size = 512;
        let d = read_capacity16(&thin, 32).data;
        assert_eq!((d[13], d[14], d[15]), (0, 0xC0, 0));
    }

    #[test]
    fn read_capacity16_allocation_length() {
        for alloc in 0..40u32 {
            let c = read_capacity16(&info(), alloc);
            assert_eq!(c.status, Status::Good);
            assert_eq!(c.data.len(), (alloc as usize).min(32));
        }
    }

    #[test]
    fn read_outcomes() {
        let i = info();
        assert_eq!(
            read(&i, &io(2, 3)),
            Outcome::Read {
                offset: 1024,
                len: 1536,
                fua: false
            }
        );
        let mut f = io(0, 1);
        f.fua = true;
        assert_eq!(
            read(&i, &f),
            Outcome::Read {
                offset: 0,
                len: 512,
                fua: true
            }
        );
        assert_eq!(read(&i, &io(0, 0)), done_good());
        assert_eq!(
            read(&i, &io(999, 1)),
            Outcome::Read {
                offset: 999 * 512,
                len: 512,
                fua: false
            }
        );
        assert_eq!(
            sense_of(&read(&i, &io(1001, 0))),
            Some(Sense::lba_out_of_range())
        );
        assert_eq!(
            sense_of(&read(&i, &io(999, 2))),
            Some(Sense::lba_out_of_range())
        );
        assert_eq!(
            sense_of(&read(&i, &io(u64::MAX, 1))),
            Some(Sense::lba_out_of_range())
        );
        assert_eq!(
            sense_of(&read(&i, &io(0, 257))),
            Some(Sense::invalid_field_in_cdb(7, None))
        );
    }

    #[test]
    fn write_outcomes_and_fua() {
        let i = info();
        let data = vec![0u8; 2048];
        assert_eq!(
            write(&i, true, &io(1, 2), &data),
            Outcome::Write {
                offset: 512,
                len: 1024,
                fua: false
            }
        );
        assert_eq!(
            write(&i, false, &io(1, 2), &data),
            Outcome::Write {
                offset: 512,
                len: 1024,
                fua: true
            }
        );
        let mut f = io(1, 2);
        f.fua = true;
        assert_eq!(
            write(&i, true, &f, &data),
            Outcome::Write {
                offset: 512,
                len: 1024,
                fua: true
            }
        );
        assert_eq!(write(&i, true, &io(0, 0), &[]), done_good());
        assert_eq!(
            sense_of(&write(&i, true, &io(1000, 0), &[])),
            Some(Sense::lba_out_of_range())
        );
        assert_eq!(
            sense_of(&write(&i, true, &io(998, 3), &data)),
            Some(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn write_to_read_only_lun() {
        let mut ro = info();
        ro.read_only = true;
        assert_eq!(
            sense_of(&write(&ro, true, &io(0, 1), &[0; 512])),
            Some(Sense::write_protected())
        );
        assert_eq!(
            sense_of(&write_and_verify(&ro, &io(0, 1), true, &[0; 512])),
            Some(Sense::write_protected())
        );
        // Reads and verifies still work.
        assert!(matches!(read(&ro, &io(0, 1)), Outcome::Read { .. }));
        assert!(matches!(
            verify(&ro, &io(0, 1), false, &[]),
            Outcome::Verify { .. }
        ));
    }

    #[test]
    fn write_short_data_out() {
        let i = info();
        // One whole block of two: write what arrived.
        assert_eq!(
            write(&i, true, &io(0, 2), &[0; 512]),
            Outcome::Write {
                offset: 0,
                len: 512,
                fua: false
            }
        );
        // Nothing arrived: nothing to write, GOOD.
        assert_eq!(write(&i, true, &io(0, 1), &[]), done_good());
        // A partial block: INVALID FIELD IN COMMAND INFORMATION UNIT.
        assert_eq!(
            sense_of(&write(&i, true, &io(0, 1), &[0; 200])),
            Some(Sense::invalid_field_in_information_unit())
        );
        // Longer Data-Out: only the transfer length is written.
        assert_eq!(
            write(&i, true, &io(0, 1), &[0; 10000]),
            Outcome::Write {
                offset: 0,
                len: 512,
                fua: false
            }
        );
    }

    #[test]
    fn verify_outcomes() {
        let i = info();
        assert_eq!(
            verify(&i, &io(3, 2), false, &[]),
            Outcome::Verify {
                offset: 1536,
                len: 1024,
                compare: false
            }
        );
        assert_eq!(
            verify(&i, &io(3, 2), true, &[0; 1024]),
            Outcome::Verify {
                offset: 1536,
                len: 1024,
                compare: true
            }
        );
        assert_eq!(
            sense_of(&verify(&i, &io(3, 2), true, &[0; 512])),
            Some(Sense::invalid_field_in_information_unit())
        );
        assert_eq!(verify(&i, &io(0, 0), true, &[]), done_good());
        assert_eq!(
            sense_of(&verify(&i, &io(1001, 0), true, &[])),
            Some(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn write_and_verify_outcomes() {
        let i = info();
        assert_eq!(
            write_and_verify(&i, &io(0, 1), true, &[0; 512]),
            Outcome::WriteVerify {
                offset: 0,
                len: 512,
                verify: true
            }
        );
        assert_eq!(
            write_and_verify(&i, &io(0, 1), false, &[0; 512]),
            Outcome::WriteVerify {
                offset: 0,
                len: 512,
                verify: false
            }
        );
        assert_eq!(write_and_verify(&i, &io(0, 0), false, &[]), done_good());
        assert_eq!(write_and_verify(&i, &io(0, 1), true, &[]), done_good());
        assert_eq!(
            write_and_verify(&i, &io(0, 2), true, &[0; 512]),
            Outcome::WriteVerify {
                offset: 0,
                len: 512,
                verify: true
            }
        );
        assert_eq!(
            sense_of(&write_and_verify(&i, &io(0, 1), true, &[0; 200])),
            Some(Sense::invalid_field_in_information_unit())
        );
        assert_eq!(
            sense_of(&write_and_verify(&i, &io(u64::MAX, 1), true, &[])),
            Some(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn pre_fetch_outcomes() {
        let i = info();
        assert_eq!(pre_fetch(&i, &io(0, 0)), done_good());
        assert_eq!(pre_fetch(&i, &io(744, 256)), done_good());
        assert_eq!(
            pre_fetch(&i, &io(0, 5000)),
            Outcome::Done(Completion::check(Sense::lba_out_of_range()))
        );
        assert_eq!(
            sense_of(&pre_fetch(&i, &io(1001, 0))),
            Some(Sense::lba_out_of_range())
        );
        assert_eq!(
            sense_of(&pre_fetch(&i, &io(0x8000_0000, 1))),
            Some(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn synchronize_cache_outcomes() {
        let i = info();
        assert_eq!(synchronize_cache(&i, &io(0, 0)), Outcome::Flush);
        assert_eq!(synchronize_cache(&i, &io(10, 990)), Outcome::Flush);
        assert_eq!(
            sense_of(&synchronize_cache(&i, &io(10, 991))),
            Some(Sense::lba_out_of_range())
        );
        assert_eq!(
            sense_of(&synchronize_cache(&i, &io(1000, 0))),
            Some(Sense::lba_out_of_range())
        );
    }

    #[test]
    fn complete_maps_io_results() {
        let w = Outcome::Write {
            offset: 0,
            len: 512,
            fua: false,
        };
        assert_eq!(complete(&w, IoResult::Ok), Completion::good(Vec::new()));
        let r = Outcome::Read {
            offset: 0,
            len: 512,
            fua: false,
        };
        assert_eq!(complete(&r, IoResult::Ok).data, Vec::<u8>::new());
        let v = Outcome::Verify {
            offset: 0,
            len: 1024,
            compare: true,
        };
        let c = complete(&v, IoResult::Miscompare { at: 700 });
        assert_eq!(c.status, Status::CheckCondition);
        assert_eq!(c.sense, Some(Sense::miscompare(700)));
        assert_eq!(&c.sense.unwrap().to_bytes()[3..7], &700u32.to_be_bytes());
        assert_eq!(
            complete(&r, IoResult::MediumError { read: true }).sense,
            Some(Sense::medium_error(true))
        );
        assert_eq!(
            complete(&w, IoResult::MediumError { read: false }).sense,
            Some(Sense::medium_error(false))
        );
        assert_eq!(
            complete(&w, IoResult::SpaceExhausted).sense,
            Some(Sense::space_allocation_failed_write_protect())
        );
        assert_eq!(complete(&Outcome::Flush, IoResult::Ok).status, Status::Good);
        let done = Outcome::Done(Completion::good(vec![1, 2]));
        assert_eq!(complete(&done, IoResult::Ok).data, vec![1, 2]);
    }
}
