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
//! - logical block provisioning (4.7) of a thin LU: UNMAP (5.28) with its parameter list
//!   (5.28.2) turned into byte ranges, WRITE SAME (10)/(16) (5.45, 5.46; NDOB from SBC-4) with
//!   MAXIMUM WRITE SAME LENGTH and the one-block Data-Out, GET LBA STATUS (5.9) and its parameter
//!   data (5.9.2); the limits the Block Limits VPD page reports ([`max_unmap_lba_count`],
//!   [`MAX_UNMAP_BLOCK_DESCRIPTORS`], [`optimal_unmap_granularity`], [`max_write_same_length`]).
//!   A fully provisioned LU answers UNMAP and GET LBA STATUS with INVALID COMMAND OPERATION CODE
//!   and WRITE SAME with UNMAP=1 with INVALID FIELD IN CDB (its LBPU / LBPWS / LBPWS10 are 0);
//!   plain WRITE SAME works on every LU. A write-protected LU (an exported snapshot) answers
//!   UNMAP and WRITE SAME with DATA PROTECT, WRITE PROTECTED;
//! - the sense data of failed storage requests: MISCOMPARE DURING VERIFY OPERATION with the
//!   offset in INFORMATION (5.29.1), UNRECOVERED READ ERROR / WRITE ERROR, and SPACE ALLOCATION
//!   FAILED WRITE PROTECT (4.7.3.6) for an exhausted thin pool.
//!
//! Data-Out shorter than the transfer length (iSCSI EDTL < SPDTL, an overflow the iSCSI layer
//! reports as a residual): WRITE and WRITE AND VERIFY write only the whole blocks received (FCP-4
//! 9.4.2 option a, which libiscsi's residual tests expect); a partial block, and any shortfall
//! for a VERIFY compare, is INVALID FIELD IN COMMAND INFORMATION UNIT and nothing is written.

use super::cdb::{BlockIo, WriteSame, check_block_range};
use super::lun::LunInfo;
use super::sense::Sense;
use super::spc::truncate;
use super::{Completion, IoResult, Outcome};

/// Length of READ CAPACITY (10) parameter data.
pub const READ_CAPACITY_10_LEN: usize = 8;
/// Length of READ CAPACITY (16) parameter data.
pub const READ_CAPACITY_16_LEN: usize = 32;

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (Block Limits VPD page) of a thin LU.
pub const MAX_UNMAP_BLOCK_DESCRIPTORS: u32 = 256;
/// The most bytes one UNMAP block descriptor may cover: MAXIMUM UNMAP LBA COUNT is this over the
/// block size (512 Ki blocks of 512 bytes, 64 Ki of 4096), under the 1 Mi blocks libiscsi deems
/// sane and above any extent size.
pub const MAX_UNMAP_BYTES: u64 = 256 << 20;
/// The most bytes one WRITE SAME may cover: MAXIMUM WRITE SAME LENGTH is this over the block size
/// (32768 blocks of 512 bytes, 4096 of 4096), the same bound as a WRITE's buffer. It must stay
/// under 65536 blocks: libiscsi's WriteSame16.Unmap otherwise first WRITEs 65536 blocks (32 MiB),
/// more than a transfer may carry.
pub const MAX_WRITE_SAME_BYTES: u64 = 16 << 20;
/// PROVISIONING STATUS of an LBA status descriptor (SBC-3 table 40): mapped.
pub const LBA_STATUS_MAPPED: u8 = 0;
/// PROVISIONING STATUS of an LBA status descriptor: deallocated.
pub const LBA_STATUS_DEALLOCATED: u8 = 1;
/// PROVISIONING STATUS of an LBA status descriptor: anchored.
pub const LBA_STATUS_ANCHORED: u8 = 2;
/// GET LBA STATUS returns at most this many descriptors, whatever the allocation length.
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 64;
/// [`lba_status_descriptors`] looks at no more than this many extents per command; the last
/// descriptor then ends early (the initiator asks again from there).
pub const MAX_LBA_STATUS_EXTENTS: u64 = 1 << 16;

/// The LBA of the last logical block (0 for an empty medium).
fn last_lba(info: &LunInfo) -> u64 {
    info.num_blocks.saturating_sub(1)
}

/// READ DEFECT DATA (10)/(12) parameter data (SBC-3 5.17.2, 5.18.2): the header only. The
/// lists asked for are reported valid (PLISTV, GLISTV) and empty, in the format asked for;
/// generation code 0. Cut to `alloc_len`.
pub fn read_defect_data(
    twelve: bool,
    plist: bool,
    glist: bool,
    format: u8,
    alloc_len: u32,
) -> Completion {
    let flags = (u8::from(plist) << 4) | (u8::from(glist) << 3) | (format & 0x07);
    let mut d = if twelve {
        vec![0, flags, 0, 0, 0, 0, 0, 0]
    } else {
        vec![0, flags, 0, 0]
    };
    d.truncate(alloc_len as usize);
    Completion::good(d)
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

/// The block size as a `u64`, at least 1.
fn block_size(info: &LunInfo) -> u64 {
    u64::from(info.block_size.max(1))
}

/// MAXIMUM UNMAP LBA COUNT of the Block Limits VPD page: [`MAX_UNMAP_BYTES`] in blocks for a thin
/// LU, 0 (UNMAP not supported) otherwise.
pub fn max_unmap_lba_count(info: &LunInfo) -> u32 {
    if !info.thin {
        return 0;
    }
    u32::try_from(MAX_UNMAP_BYTES / block_size(info))
        .unwrap_or(u32::MAX)
        .max(1)
}

/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT of the Block Limits VPD page: 0 unless thin.
pub fn max_unmap_block_descriptors(info: &LunInfo) -> u32 {
    if info.thin {
        MAX_UNMAP_BLOCK_DESCRIPTORS
    } else {
        0
    }
}

/// OPTIMAL UNMAP GRANULARITY of the Block Limits VPD page: the extent size in blocks for a thin
/// LU whose extent size is known, else 0 (not reported). Whole extents are what an unmap frees.
pub fn optimal_unmap_granularity(info: &LunInfo) -> u32 {
    if !info.thin {
        return 0;
    }
    u32::try_from(u64::from(info.extent_size) / block_size(info)).unwrap_or(u32::MAX)
}

/// MAXIMUM WRITE SAME LENGTH of the Block Limits VPD page and the limit WRITE SAME is checked
/// against: [`MAX_WRITE_SAME_BYTES`] in blocks (every LU).
pub fn max_write_same_length(info: &LunInfo) -> u32 {
    u32::try_from(MAX_WRITE_SAME_BYTES / block_size(info))
        .unwrap_or(u32::MAX)
        .max(1)
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
    write_request(info, write_cache, io, data_out, false)
}

/// WRITE ATOMIC (16) (SBC-4 5.48): as WRITE, but the blocks land all or none, even across a
/// crash or power loss. The transfer length is bounded by the MAXIMUM ATOMIC TRANSFER LENGTH of
/// the Block Limits page (INVALID FIELD IN CDB past it); no alignment or granularity applies. An
/// LU whose backend cannot write atomically (`max_atomic_blocks` 0) does not implement it.
pub fn write_atomic(info: &LunInfo, write_cache: bool, io: &BlockIo, data_out: &[u8]) -> Outcome {
    if info.max_atomic_blocks == 0 {
        return fail(Sense::invalid_opcode());
    }
    write_request(info, write_cache, io, data_out, true)
}

/// The write request of a WRITE or (`atomic`) WRITE ATOMIC, with their checks.
fn write_request(
    info: &LunInfo,
    write_cache: bool,
    io: &BlockIo,
    data_out: &[u8],
    atomic: bool,
) -> Outcome {
    if info.read_only {
        return fail(Sense::write_protected());
    }
    let max = if atomic {
        info.max_atomic_blocks
    } else {
        info.max_transfer_blocks
    };
    let range = byte_range(info, io, max);
    match range.and_then(|(offset, len)| Ok((offset, usable_data_out(info, len, data_out)?))) {
        Err(sense) => fail(sense),
        Ok((_, 0)) => done_good(),
        Ok((offset, len)) => Outcome::Write {
            offset,
            len,
            fua: io.fua || !write_cache,
            atomic,
        },
    }
}

/// Largest COMPARE AND WRITE, in blocks (VPD B0h MAXIMUM COMPARE AND WRITE LENGTH). VMware's ATS
/// uses one block; the whole range stays locked against other writes while it runs.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u32 = 64;

/// COMPARE AND WRITE (SBC-3 5.2): write protection, NUMBER OF LOGICAL BLOCKS 0 (nothing to do,
/// GOOD, unless Data-Out came with it: INVALID FIELD IN CDB) or at most [`MAX_COMPARE_AND_WRITE_BLOCKS`] (else INVALID FIELD IN CDB on byte 13),
/// the range, and a Data-Out of verify data plus write data.
pub fn compare_and_write(
    info: &LunInfo,
    write_cache: bool,
    io: &BlockIo,
    data_out: &[u8],
) -> Outcome {
    if info.read_only {
        return fail(Sense::write_protected());
    }
    if io.blocks > MAX_COMPARE_AND_WRITE_BLOCKS {
        return fail(Sense::invalid_field_in_cdb(io.length_field, None));
    }
    match byte_range(info, io, MAX_COMPARE_AND_WRITE_BLOCKS) {
        Err(sense) => fail(sense),
        // Data-Out for zero blocks: the CDB and the transfer disagree (as a 256-block request
        // wrapped to 0 in the one-byte field would).
        Ok((_, 0)) if !data_out.is_empty() => {
            fail(Sense::invalid_field_in_cdb(io.length_field, None))
        }
        Ok((_, 0)) => done_good(),
        Ok((_, len)) if (data_out.len() as u64) < 2 * len => {
            fail(Sense::invalid_field_in_information_unit())
        }
        Ok((offset, len)) => Outcome::CompareAndWrite {
            offset,
            len,
            fua: io.fua || !write_cache,
            or: false,
        },
    }
}

/// ORWRITE (16) (SBC-3 5.11): write protection, the range and transfer limit as a WRITE, a
/// Data-Out of one block per block; then read, OR, write as one atomic step (the COMPARE AND
/// WRITE path with `or`). A zero length does nothing.
pub fn or_write(info: &LunInfo, write_cache: bool, io: &BlockIo, data_out: &[u8]) -> Outcome {
    if info.read_only {
        return fail(Sense::write_protected());
    }
    match byte_range(info, io, info.max_transfer_blocks) {
        Err(sense) => fail(sense),
        Ok((_, 0)) => done_good(),
        Ok((_, len)) if (data_out.len() as u64) < len => {
            fail(Sense::invalid_field_in_information_unit())
        }
        Ok((offset, len)) => Outcome::CompareAndWrite {
            offset,
            len,
            fua: io.fua || !write_cache,
            or: true,
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

/// Reads a big-endian field of a parameter list (0 when out of range).
fn param_be(params: &[u8], start: usize, len: usize) -> u64 {
    params
        .get(start..start + len)
        .map(|b| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        .unwrap_or(0)
}

/// UNMAP (SBC-3 5.28): only on a thin LU (else INVALID COMMAND OPERATION CODE), not on a
/// write-protected one; PARAMETER LIST LENGTH 0 is GOOD without I/O. The parameter list is the
/// first `param_len` bytes of the Data-Out (fewer when the initiator sent less: the list is cut).
/// Nothing is unmapped unless the whole list is valid; an UNMAP with nothing to unmap (no
/// descriptor, or only zero-length ones) completes GOOD without I/O.
pub fn unmap(info: &LunInfo, param_len: u32, data_out: &[u8]) -> Outcome {
    if !info.thin {
        return fail(Sense::invalid_opcode());
    }
    if info.read_only {
        return fail(Sense::write_protected());
    }
    if param_len == 0 {
        return done_good();
    }
    let len = usize::try_from(param_len)
        .unwrap_or(usize::MAX)
        .min(data_out.len());
    match unmap_ranges(info, data_out.get(..len).unwrap_or_default()) {
        Err(sense) => fail(sense),
        Ok(ranges) if ranges.is_empty() => done_good(),
        Ok(ranges) => Outcome::Unmap { ranges },
    }
}

/// Parses an UNMAP parameter list (SBC-3 5.28.2) into byte ranges on the volume, sorted by offset
/// with overlapping and adjacent ranges merged (so that a run of small descriptors still frees
/// the whole extents it covers).
///
/// Layout: UNMAP DATA LENGTH (bytes 0-1, not checked: the lengths that matter are the list's and
/// the descriptors'), UNMAP BLOCK DESCRIPTOR DATA LENGTH (bytes 2-3), 4 reserved bytes, then
/// 16-byte descriptors: LBA (8 bytes), NUMBER OF LOGICAL BLOCKS (4), 4 reserved.
///
/// Errors: a list shorter than its 8-byte header is PARAMETER LIST LENGTH ERROR; more descriptors
/// than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT, or a descriptor over MAXIMUM UNMAP LBA COUNT, is
/// INVALID FIELD IN PARAMETER LIST (pointing at the length field); a descriptor whose LBA plus
/// count passes the capacity is LBA OUT OF RANGE (a zero count at the capacity itself is fine).
/// A descriptor cut by the list's end (or by a BLOCK DESCRIPTOR DATA LENGTH that is not a
/// multiple of 16) is ignored, as is a BLOCK DESCRIPTOR DATA LENGTH beyond the list. Zero-length
/// descriptors unmap nothing.
pub fn unmap_ranges(info: &LunInfo, params: &[u8]) -> Result<Vec<(u64, u64)>, Sense> {
    if params.len() < 8 {
        return Err(Sense::parameter_list_length_error());
    }
    let bd_len = usize::try_from(param_be(params, 2, 2)).unwrap_or(usize::MAX);
    let count = bd_len.min(params.len() - 8) / 16;
    if count > MAX_UNMAP_BLOCK_DESCRIPTORS as usize {
        return Err(Sense::invalid_field_in_parameter_list(2));
    }
    let bs = block_size(info);
    let max_blocks = u64::from(max_unmap_lba_count(info));
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + 16 * i;
        let lba = param_be(params, at, 8);
        let blocks = param_be(params, at + 8, 4);
        if blocks > max_blocks {
            return Err(Sense::invalid_field_in_parameter_list((at + 8) as u16));
        }
        match lba.checked_add(blocks) {
            Some(end) if end <= info.num_blocks => {}
            _ => return Err(Sense::lba_out_of_range()),
        }
        if blocks > 0 {
            let bytes = lba.checked_mul(bs).zip(blocks.checked_mul(bs));
            ranges.push(bytes.ok_or(Sense::lba_out_of_range())?);
        }
    }
    Ok(merge_ranges(ranges))
}

/// Sorts byte ranges by offset and merges the overlapping and adjacent ones.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (offset, len) in ranges {
        match out.last_mut() {
            Some(last) if offset <= last.0 + last.1 => {
                last.1 = last.1.max(offset + len - last.0);
            }
            _ => out.push((offset, len)),
        }
    }
    out
}

/// WRITE SAME (10)/(16) (SBC-3 5.45, 5.46): write protection; UNMAP=1 only on a thin LU (else
/// INVALID FIELD IN CDB on the UNMAP bit); NUMBER OF LOGICAL BLOCKS within MAXIMUM WRITE SAME
/// LENGTH (else INVALID FIELD IN CDB) and the LBA range (else LBA OUT OF RANGE); then the
/// Data-Out must be exactly one logical block (unless NDOB), anything shorter or longer being
/// INVALID FIELD IN COMMAND INFORMATION UNIT (libiscsi's InvalidDataOutSize).
pub fn write_same(info: &LunInfo, ws: &WriteSame, data_out: &[u8]) -> Outcome {
    if info.read_only {
        return fail(Sense::write_protected());
    }
    if ws.unmap && !info.thin {
        return fail(Sense::invalid_field_in_cdb(1, Some(3)));
    }
    let (offset, len) = match byte_range(info, &ws.io, max_write_same_length(info)) {
        Ok(range) => range,
        Err(sense) => return fail(sense),
    };
    if !ws.ndob && data_out.len() as u64 != block_size(info) {
        return fail(Sense::invalid_field_in_information_unit());
    }
    Outcome::WriteSame {
        offset,
        len,
        unmap: ws.unmap,
        ndob: ws.ndob,
    }
}

/// GET LBA STATUS (SBC-3 5.9): only on a thin LU (else INVALID COMMAND OPERATION CODE); the
/// starting LBA must be on the medium (else LBA OUT OF RANGE). An allocation length of 0 is GOOD
/// with no data; otherwise the runtime builds the parameter data ([`lba_status_descriptors`],
/// [`lba_status_data`]).
pub fn get_lba_status(info: &LunInfo, lba: u64, alloc_len: u32) -> Outcome {
    if !info.thin {
        return fail(Sense::invalid_opcode());
    }
    if lba >= info.num_blocks {
        return fail(Sense::lba_out_of_range());
    }
    if alloc_len == 0 {
        return done_good();
    }
    Outcome::GetLbaStatus { lba, alloc_len }
}

/// The LBA status descriptors GET LBA STATUS returns from `lba`, as (starting LBA, number of
/// blocks, provisioning status): runs of extents in the same state, from `lba` (the first run
/// starts there, SBC-3 5.9.2) up to the end of the medium. `mapped(e)` tells whether logical
/// extent `e` (byte offset / `info.extent_size`) is allocated: mapped, else deallocated.
///
/// At most as many descriptors as fit in `alloc_len` (at least one, at most
/// [`MAX_LBA_STATUS_DESCRIPTORS`]), and at most [`MAX_LBA_STATUS_EXTENTS`] extents looked at: the
/// last run may end early, which the initiator sees as the place to ask again. An unknown extent
/// size (0) is taken as one block. Empty when `lba` is past the medium.
pub fn lba_status_descriptors(
    info: &LunInfo,
    lba: u64,
    alloc_len: u32,
    mut mapped: impl FnMut(u64) -> bool,
) -> Vec<(u64, u64, u8)> {
    let per_extent = (u64::from(info.extent_size) / block_size(info)).max(1);
    let fit = usize::try_from(alloc_len.saturating_sub(8) / 16).unwrap_or(usize::MAX);
    let max = fit.clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
    let mut out: Vec<(u64, u64, u8)> = Vec::new();
    let mut cur = lba;
    let mut looked = 0;
    while cur < info.num_blocks && looked < MAX_LBA_STATUS_EXTENTS {
        let extent = cur / per_extent;
        let status = if mapped(extent) {
            LBA_STATUS_MAPPED
        } else {
            LBA_STATUS_DEALLOCATED
        };
        looked += 1;
        let end = extent
            .saturating_add(1)
            .saturating_mul(per_extent)
            .min(info.num_blocks);
        let full = out.len() == max;
        match out.last_mut() {
            Some(last) if last.2 == status && last.1 + (end - cur) <= u64::from(u32::MAX) => {
                last.1 += end - cur;
            }
            _ if full => break,
            _ => out.push((cur, end - cur, status)),
        }
        cur = end;
    }
    out
}

/// GET LBA STATUS parameter data (SBC-3 5.9.2): an 8-byte header whose PARAMETER DATA LENGTH
/// (bytes 0-3) is 4 + 16 × the number of descriptors, then 16-byte LBA status descriptors: LBA
/// (bytes 0-7), NUMBER OF LOGICAL BLOCKS (8-11), PROVISIONING STATUS (byte 12, bits 3:0: 0
/// mapped, 1 deallocated, 2 anchored), reserved. A run longer than a 4-byte count is split
/// over several descriptors. The whole is truncated to `alloc_len` (the PARAMETER DATA LENGTH
/// still describes the untruncated data).
pub fn lba_status_data(descriptors: &[(u64, u64, u8)], alloc_len: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 * descriptors.len());
    for &(lba, blocks, status) in descriptors {
        let (mut lba, mut left) = (lba, blocks);
        loop {
            let n = u32::try_from(left).unwrap_or(u32::MAX);
            body.extend_from_slice(&lba.to_be_bytes());
            body.extend_from_slice(&n.to_be_bytes());
            body.extend_from_slice(&[status & 0x0F, 0, 0, 0]);
            left -= u64::from(n);
            lba = lba.saturating_add(u64::from(n));
            if left == 0 {
                break;
            }
        }
    }
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut d = Vec::with_capacity(8 + body.len());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    d.extend(body);
    truncate(d, alloc_len)
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
        // The segment's index is added by the logical unit (`LogicalUnit::complete`).
        IoResult::CopyAborted { asc, ascq } => Completion::check(Sense::copy_aborted(asc, ascq, 0)),
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
    fn or_write_checks() {
        let i = info();
        assert_eq!(
            or_write(&i, true, &io(10, 2), &[0; 1024]),
            Outcome::CompareAndWrite {
                offset: 5120,
                len: 1024,
                fua: false,
                or: true,
            }
        );
        assert!(matches!(
            or_write(&i, false, &io(10, 1), &[0; 512]),
            Outcome::CompareAndWrite {
                fua: true,
                or: true,
                ..
            }
        ));
        assert!(
            matches!(or_write(&i, true, &io(10, 0), &[]), Outcome::Done(c) if c.status == Status::Good)
        );
        let past_end = or_write(&i, true, &io(i.num_blocks, 1), &[0; 512]);
        assert!(matches!(past_end, Outcome::Done(c) if c.sense == Some(Sense::lba_out_of_range())));
        let short = or_write(&i, true, &io(10, 2), &[0; 512]);
        assert!(
            matches!(short, Outcome::Done(c) if c.sense == Some(Sense::invalid_field_in_information_unit()))
        );
        let ro = LunInfo {
            read_only: true,
            ..info()
        };
        let refused = or_write(&ro, true, &io(10, 1), &[0; 512]);
        assert!(matches!(refused, Outcome::Done(c) if c.sense == Some(Sense::write_protected())));
    }

    #[test]
    fn compare_and_write_checks() {
        let i = info();
        let caw = |lba, blocks| BlockIo {
            length_field: 13,
            ..io(lba, blocks)
        };
        assert_eq!(
            compare_and_write(&i, true, &caw(10, 2), &[0; 2048]),
            Outcome::CompareAndWrite {
                offset: 5120,
                len: 1024,
                fua: false,
                or: false,
            }
        );
        // Write cache off: the write must be durable before GOOD.
        assert!(matches!(
            compare_and_write(&i, false, &caw(10, 1), &[0; 1024]),
            Outcome::CompareAndWrite { fua: true, .. }
        ));
        // Zero blocks: nothing to do, not an error; but not with Data-Out.
        assert_eq!(
            compare_and_write(&i, true, &caw(10, 0), &[]),
            Outcome::Done(Completion::good(Vec::new()))
        );
        assert_eq!(
            sense_of(&compare_and_write(&i, true, &caw(10, 0), &[0; 1024])),
            Some(Sense::invalid_field_in_cdb(13, None))
        );
        assert_eq!(
            sense_of(&compare_and_write(&i, true, &caw(0, 65), &[0; 65 * 1024])),
            Some(Sense::invalid_field_in_cdb(13, None))
        );
        assert_eq!(
            sense_of(&compare_and_write(&i, true, &caw(999, 2), &[0; 2048])),
            Some(Sense::lba_out_of_range())
        );
        // The Data-Out must hold the verify data and the write data.
        assert_eq!(
            sense_of(&compare_and_write(&i, true, &caw(0, 2), &[0; 1024])),
            Some(Sense::invalid_field_in_information_unit())
        );
        let ro = LunInfo {
            read_only: true,
            ..info()
        };
        assert_eq!(
            sense_of(&compare_and_write(&ro, true, &caw(0, 1), &[0; 1024])),
            Some(Sense::write_protected())
        );
        // A miscompare reports the offset of the first differing byte.
        let o = compare_and_write(&i, true, &caw(0, 1), &[0; 1024]);
        let c = complete(&o, IoResult::Miscompare { at: 300 });
        assert_eq!(c.sense, Some(Sense::miscompare(300)));
    }

    #[test]
    fn read_defect_data_reports_empty_valid_lists_in_the_format_asked() {
        assert_eq!(
            read_defect_data(false, true, true, 5, 32).data,
            vec![0, 0x1D, 0, 0]
        );
        assert_eq!(
            read_defect_data(false, false, true, 0, 32).data,
            vec![0, 0x08, 0, 0]
        );
        assert_eq!(
            read_defect_data(true, true, false, 4, 32).data,
            vec![0, 0x14, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(read_defect_data(true, true, true, 0, 3).data.len(), 3);
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
                fua: false,
                atomic: false
            }
        );
        assert_eq!(
            write(&i, false, &io(1, 2), &data),
            Outcome::Write {
                offset: 512,
                len: 1024,
                fua: true,
                atomic: false
            }
        );
        let mut f = io(1, 2);
        f.fua = true;
        assert_eq!(
            write(&i, true, &f, &data),
            Outcome::Write {
                offset: 512,
                len: 1024,
                fua: true,
                atomic: false
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
                fua: false,
                atomic: false
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
                fua: false,
                atomic: false
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
            atomic: false,
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

    /// A thin LU of 1000 512-byte blocks in 4 KiB extents (8 blocks).
    fn thin() -> LunInfo {
        LunInfo {
            thin: true,
            extent_size: 4096,
            ..info()
        }
    }

    /// An UNMAP parameter list with the given (LBA, blocks) descriptors, as libiscsi builds it.
    fn unmap_list(descriptors: &[(u64, u32)]) -> Vec<u8> {
        let len = 8 + 16 * descriptors.len();
        let mut p = Vec::with_capacity(len);
        p.extend_from_slice(&((len - 2) as u16).to_be_bytes());
        p.extend_from_slice(&((len - 8) as u16).to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        for &(lba, n) in descriptors {
            p.extend_from_slice(&lba.to_be_bytes());
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        p
    }

    fn unmap_of(i: &LunInfo, list: &[u8]) -> Outcome {
        unmap(i, list.len() as u32, list)
    }

    #[test]
    fn unmap_needs_thin_and_writable() {
        let list = unmap_list(&[(0, 1)]);
        assert_eq!(
            sense_of(&unmap_of(&info(), &list)),
            Some(Sense::invalid_opcode())
        );
        let ro = LunInfo {
            read_only: true,
            ..thin()
        };
        assert_eq!(
            sense_of(&unmap_of(&ro, &list)),
            Some(Sense::write_protected())
        );
        assert_eq!(
            unmap_of(&thin(), &list),
            Outcome::Unmap {
                ranges: vec![(0, 512)]
            }
        );
    }

    #[test]
    fn unmap_empty_lists_are_good_without_io() {
        let i = thin();
        // PARAMETER LIST LENGTH 0, whatever the Data-Out.
        assert_eq!(unmap(&i, 0, &[]), done_good());
        assert_eq!(unmap(&i, 0, &unmap_list(&[(0, 1)])), done_good());
        // A header without descriptors.
        assert_eq!(unmap_of(&i, &unmap_list(&[])), done_good());
        // Only zero-length descriptors, at the end of the medium too (libiscsi's ZeroBlocks).
        assert_eq!(
            unmap_of(&i, &unmap_list(&[(0, 0), (5, 0), (999, 0), (1000, 0)])),
            done_good()
        );
    }

    #[test]
    fn unmap_parameter_list_length_errors() {
        let i = thin();
        for len in 1..8u32 {
            assert_eq!(
                sense_of(&unmap(&i, len, &[0; 8])),
                Some(Sense::parameter_list_length_error()),
                "length {len}"
            );
        }
        // Data-Out shorter than the PARAMETER LIST LENGTH: the list is cut.
        assert_eq!(
            sense_of(&unmap(&i, 24, &[0, 22, 0, 16])),
            Some(Sense::parameter_list_length_error())
        );
        let list = unmap_list(&[(0, 8), (16, 8)]);
        assert_eq!(
            unmap(&i, 40, &list[..24]),
            Outcome::Unmap {
                ranges: vec![(0, 4096)]
            }
        );
    }

    #[test]
    fn unmap_descriptor_lengths() {
        let i = thin();
        let mut list = unmap_list(&[(0, 8), (16, 8)]);
        // BLOCK DESCRIPTOR DATA LENGTH not a multiple of 16: the cut descriptor is ignored.
        list[3] = 31;
        assert_eq!(
            unmap_of(&i, &list),
            Outcome::Unmap {
                ranges: vec![(0, 4096)]
            }
        );
        // Beyond the list: the list's length wins.
        list[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            unmap_of(&i, &list),
            Outcome::Unmap {
                ranges: vec![(0, 4096), (8192, 4096)]
            }
        );
        // A list longer than its BLOCK DESCRIPTOR DATA LENGTH: the extra bytes are ignored.
        list[2..4].copy_from_slice(&16u16.to_be_bytes());
        list.extend_from_slice(&[0xFF; 16]);
        assert_eq!(
            unmap_of(&i, &list),
            Outcome::Unmap {
                ranges: vec![(0, 4096)]
            }
        );
        // UNMAP DATA LENGTH is not checked.
        list[0..2].copy_from_slice(&[0, 0]);
        assert!(matches!(unmap_of(&i, &list), Outcome::Unmap { .. }));
    }

    #[test]
    fn unmap_limits() {
        let i = thin();
        // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (256).
        let many: Vec<(u64, u32)> = (0..257).map(|b| (b, 1)).collect();
        assert_eq!(
            sense_of(&unmap_of(&i, &unmap_list(&many))),
            Some(Sense::invalid_field_in_parameter_list(2))
        );
        assert_eq!(
            unmap_of(&i, &unmap_list(&many[..256])),
            Outcome::Unmap {
                ranges: vec![(0, 256 * 512)]
            }
        );
        // MAXIMUM UNMAP LBA COUNT, checked on every descriptor (pointer at its count).
        let max = max_unmap_lba_count(&i);
        assert_eq!(max, 512 << 10);
        let big = LunInfo {
            num_blocks: 1 << 30,
            ..thin()
        };
        assert_eq!(
            sense_of(&unmap_of(&big, &unmap_list(&[(0, 1), (8, max + 1)]))),
            Some(Sense::invalid_field_in_parameter_list(32))
        );
        assert_eq!(
            unmap_of(&big, &unmap_list(&[(0, max)])),
            Outcome::Unmap {
                ranges: vec![(0, u64::from(max) * 512)]
            }
        );
    }

    #[test]
    fn unmap_lba_range() {
        let i = thin();
        assert_eq!(
            unmap_of(&i, &unmap_list(&[(999, 1)])),
            Outcome::Unmap {
                ranges: vec![(999 * 512, 512)]
            }
        );
        for bad in [(999, 2), (1000, 1), (1001, 0), (u64::MAX, 1), (u64::MAX, 0)] {
            assert_eq!(
                sense_of(&unmap_of(&i, &unmap_list(&[(0, 1), bad]))),
                Some(Sense::lba_out_of_range()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn unmap_ranges_sorted_and_merged() {
        let i = thin();
        // libiscsi's Simple: one descriptor per block, 0..n.
        let per_block: Vec<(u64, u32)> = (0..10).map(|b| (b, 1)).collect();
        assert_eq!(
            unmap_of(&i, &unmap_list(&per_block)),
            Outcome::Unmap {
                ranges: vec![(0, 10 * 512)]
            }
        );
        // Out of order, overlapping, adjacent, contained, disjoint.
        let list = unmap_list(&[
            (100, 4),
            (10, 5),
            (12, 10),
            (22, 2),
            (14, 1),
            (50, 0),
            (3, 1),
        ]);
        assert_eq!(
            unmap_of(&i, &list),
            Outcome::Unmap {
                ranges: vec![(3 * 512, 512), (10 * 512, 14 * 512), (100 * 512, 4 * 512)]
            }
        );
    }

    fn ws(lba: u64, blocks: u32, unmap: bool, ndob: bool) -> WriteSame {
        WriteSame {
            io: BlockIo {
                lba,
                blocks,
                dpo: false,
                fua: false,
                length_field: 10,
            },
            unmap,
            ndob,
        }
    }

    #[test]
    fn write_same_outcomes() {
        let i = thin();
        let block = [0u8; 512];
        assert_eq!(
            write_same(&i, &ws(2, 3, false, false), &block),
            Outcome::WriteSame {
                offset: 1024,
                len: 1536,
                unmap: false,
                ndob: false
            }
        );
        assert_eq!(
            write_same(&i, &ws(997, 3, true, false), &block),
            Outcome::WriteSame {
                offset: 997 * 512,
                len: 1536,
                unmap: true,
                ndob: false
            }
        );
        // NDOB: no Data-Out needed (one sent anyway is ignored).
        for data in [&[][..], &block[..]] {
            assert_eq!(
                write_same(&i, &ws(0, 1, true, true), data),
                Outcome::WriteSame {
                    offset: 0,
                    len: 512,
                    unmap: true,
                    ndob: true
                }
            );
        }
        // Plain WRITE SAME works on a fully provisioned LU too.
        assert!(matches!(
            write_same(&info(), &ws(0, 1, false, false), &block),
            Outcome::WriteSame { .. }
        ));
    }

    #[test]
    fn write_same_errors() {
        let i = thin();
        let block = [0u8; 512];
        let ro = LunInfo {
            read_only: true,
            ..thin()
        };
        assert_eq!(
            sense_of(&write_same(&ro, &ws(0, 1, false, false), &block)),
            Some(Sense::write_protected())
        );
        assert_eq!(
            sense_of(&write_same(&ro, &ws(0, 1, true, true), &[])),
            Some(Sense::write_protected())
        );
        // UNMAP on a fully provisioned LU.
        assert_eq!(
            sense_of(&write_same(&info(), &ws(0, 1, true, false), &block)),
            Some(Sense::invalid_field_in_cdb(1, Some(3)))
        );
        // MAXIMUM WRITE SAME LENGTH (32768 blocks of 512 bytes).
        let big = LunInfo {
            num_blocks: 1 << 20,
            ..thin()
        };
        assert_eq!(max_write_same_length(&big), 32768);
        assert!(matches!(
            write_same(&big, &ws(0, 32768, false, false), &block),
            Outcome::WriteSame {
                len: 0x100_0000,
                ..
            }
        ));
        assert_eq!(
            sense_of(&write_same(&big, &ws(0, 32769, false, false), &block)),
            Some(Sense::invalid_field_in_cdb(10, None))
        );
        assert_eq!(
            sense_of(&write_same(&big, &ws(0, 65536, true, false), &block)),
            Some(Sense::invalid_field_in_cdb(10, None))
        );
        // LBA range (libiscsi's BeyondEol).
        for n in 1..=256u32 {
            for lba in [1000 - u64::from(n) + 1, 0x8000_0000, u64::MAX] {
                assert_eq!(
                    sense_of(&write_same(&i, &ws(lba, n, false, false), &block)),
                    Some(Sense::lba_out_of_range())
                );
            }
            if n >= 2 {
                assert_eq!(
                    sense_of(&write_same(&i, &ws(999, n, false, false), &block)),
                    Some(Sense::lba_out_of_range())
                );
            }
        }
        // Data-Out other than one block (libiscsi's InvalidDataOutSize).
        for len in [0usize, 1, 256, 511, 513, 1024] {
            assert_eq!(
                sense_of(&write_same(&i, &ws(0, 1, true, false), &vec![0; len])),
                Some(Sense::invalid_field_in_information_unit()),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn get_lba_status_checks() {
        let i = thin();
        assert_eq!(
            get_lba_status(&i, 5, 24),
            Outcome::GetLbaStatus {
                lba: 5,
                alloc_len: 24
            }
        );
        assert_eq!(
            get_lba_status(&i, 999, 8),
            Outcome::GetLbaStatus {
                lba: 999,
                alloc_len: 8
            }
        );
        assert_eq!(get_lba_status(&i, 0, 0), done_good());
        for lba in [1000, 1001, 0x8000_0000_0000_0000, u64::MAX] {
            assert_eq!(
                sense_of(&get_lba_status(&i, lba, 24)),
                Some(Sense::lba_out_of_range())
            );
        }
        assert_eq!(
            sense_of(&get_lba_status(&info(), 0, 24)),
            Some(Sense::invalid_opcode())
        );
        // A snapshot (read-only) answers.
        let ro = LunInfo {
            read_only: true,
            ..thin()
        };
        assert!(matches!(
            get_lba_status(&ro, 0, 24),
            Outcome::GetLbaStatus { .. }
        ));
    }

    #[test]
    fn lba_status_data_exact_bytes() {
        let d = lba_status_data(&[(5, 3, 0), (8, 0x100, 1)], 1024);
        let mut want = vec![0, 0, 0, 36, 0, 0, 0, 0];
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 1, 0, 1, 0, 0, 0]);
        assert_eq!(d, want);
        // No descriptors: the header alone.
        assert_eq!(lba_status_data(&[], 1024), vec![0, 0, 0, 4, 0, 0, 0, 0]);
        // Anchored, and only the low nibble of the status.
        let d = lba_status_data(&[(u64::MAX - 1, 1, 0xF2)], 24);
        assert_eq!(&d[8..16], &(u64::MAX - 1).to_be_bytes());
        assert_eq!(&d[16..24], &[0, 0, 0, 1, 2, 0, 0, 0]);
    }

    #[test]
    fn lba_status_data_splits_long_runs() {
        let d = lba_status_data(&[(10, (1 << 32) + 5, 1)], 1024);
        assert_eq!(&d[..4], &36u32.to_be_bytes());
        assert_eq!(&d[8..16], &10u64.to_be_bytes());
        assert_eq!(&d[16..20], &u32::MAX.to_be_bytes());
        assert_eq!(d[20], 1);
        assert_eq!(&d[24..32], &(10 + u64::from(u32::MAX)).to_be_bytes());
        assert_eq!(&d[32..36], &6u32.to_be_bytes());
        assert_eq!(d[36], 1);
    }

    #[test]
    fn lba_status_data_truncation() {
        let descriptors = [(0u64, 8u64, 0u8), (8, 8, 1), (16, 984, 0)];
        let full = lba_status_data(&descriptors, u32::MAX);
        assert_eq!(full.len(), 56);
        assert_eq!(&full[..4], &52u32.to_be_bytes());
        for alloc in 0..70u32 {
            let d = lba_status_data(&descriptors, alloc);
            assert_eq!(d.len(), (alloc as usize).min(56));
            assert_eq!(d, full[..d.len()]);
        }
    }

    #[test]
    fn lba_status_descriptors_runs() {
        let i = thin(); // 8 blocks per extent, 125 extents
        let mapped = |e: u64| e < 2 || (5..7).contains(&e);
        assert_eq!(
            lba_status_descriptors(&i, 0, 1024, mapped),
            vec![(0, 16, 0), (16, 24, 1), (40, 16, 0), (56, 944, 1)]
        );
        // Starting mid-extent: the first descriptor starts at the LBA asked for.
        assert_eq!(
            lba_status_descriptors(&i, 3, 1024, mapped),
            vec![(3, 13, 0), (16, 24, 1), (40, 16, 0), (56, 944, 1)]
        );
        assert_eq!(
            lba_status_descriptors(&i, 999, 1024, mapped),
            vec![(999, 1, 1)]
        );
        assert!(lba_status_descriptors(&i, 1000, 1024, mapped).is_empty());
        // As many descriptors as the allocation length holds, at least one.
        for (alloc, n) in [(0u32, 1usize), (8, 1), (24, 1), (39, 1), (40, 2), (56, 3)] {
            assert_eq!(
                lba_status_descriptors(&i, 0, alloc, mapped).len(),
                n,
                "alloc {alloc}"
            );
        }
        // The last extent is cut at the end of the medium.
        let odd = LunInfo {
            num_blocks: 1001,
            ..thin()
        };
        assert_eq!(
            lba_status_descriptors(&odd, 990, 1024, |_| true),
            vec![(990, 11, 0)]
        );
        // Unknown extent size: one block per extent.
        let unknown = LunInfo {
            extent_size: 0,
            ..thin()
        };
        assert_eq!(
            lba_status_descriptors(&unknown, 0, 1024, |e| e == 1),
            vec![(0, 1, 1), (1, 1, 0), (2, 998, 1)]
        );
    }

    #[test]
    fn lba_status_descriptors_bounded_work() {
        let huge = LunInfo {
            num_blocks: 1 << 40,
            ..thin()
        };
        let mut calls = 0u64;
        let d = lba_status_descriptors(&huge, 0, u32::MAX, |_| {
            calls += 1;
            false
        });
        assert_eq!(calls, MAX_LBA_STATUS_EXTENTS);
        assert_eq!(d, vec![(0, MAX_LBA_STATUS_EXTENTS * 8, 1)]);
        // Alternating extents: at most MAX_LBA_STATUS_DESCRIPTORS.
        let d = lba_status_descriptors(&huge, 0, u32::MAX, |e| e % 2 == 0);
        assert_eq!(d.len(), MAX_LBA_STATUS_DESCRIPTORS);
        assert!(d.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
    }

    #[test]
    fn provisioning_limits() {
        let i = info();
        assert_eq!(
            (
                max_unmap_lba_count(&i),
                max_unmap_block_descriptors(&i),
                optimal_unmap_granularity(&i),
                max_write_same_length(&i)
            ),
            (0, 0, 0, 32768)
        );
        let t = LunInfo {
            extent_size: 1 << 20,
            ..thin()
        };
        assert_eq!(
            (
                max_unmap_lba_count(&t),
                max_unmap_block_descriptors(&t),
                optimal_unmap_granularity(&t),
            ),
            (512 << 10, 256, 2048)
        );
        let z = LunInfo {
            block_size: 0,
            ..thin()
        };
        let _ = (max_unmap_lba_count(&z), max_write_same_length(&z));
    }
}
