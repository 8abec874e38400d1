//! EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.22): the copy manager of a logical
//! unit, which VMware's VAAI "full copy" (XCOPY) drives to clone a VM or move it within a
//! datastore without the data crossing the network.
//!
//! [`parse`] checks a parameter list in the order libiscsi's conformance suite and other targets
//! use: its lengths (PARAMETER LIST LENGTH ERROR), the descriptor counts (TOO MANY TARGET /
//! SEGMENT DESCRIPTORS), the descriptor types (UNSUPPORTED ... TYPE CODE), then each segment's
//! copy targets and ranges (COPY ABORTED, with the segment's index in INFORMATION). What it
//! accepts becomes a [`CopyPlan`] of byte ranges the shard copies (`Outcome::Copy`) in chunks.
//! A chunk of whole extents of a thin volume is copied by reference: the destination extents
//! share the source's physical extents (`ThinVolume::share_extents`), so cloning a VM within a
//! datastore moves no data and takes no space until one side is rewritten. Other chunks go
//! through the same write path as a WRITE. Either way copy-on-write, space accounting and
//! durability hold as usual.
//!
//! Supported: identification CSCD descriptors (E4h) of a block device, block-to-block segment
//! descriptors (02h), no inline data. A copy target is this logical unit, named by one of its
//! own designators (Device Identification page), or another block device of the same block size
//! named by its NAA designator: the shard copies whole extents to or from it by reference when
//! the host may reach it (`runtime::xcopy`), and refuses anything else with COPY TARGET DEVICE
//! NOT REACHABLE, so the host copies by itself (ESXi falls back to its software data mover).
//! Results are held per I_T nexus and list identifier when LIST ID USAGE is 00b
//! ([`CopyResults`], the COPY STATUS of RECEIVE COPY RESULTS).

use std::collections::VecDeque;

use super::lun::LunInfo;
use super::sense::Sense;
use super::{Completion, NexusId, cdb, spc};

/// Most CSCD (target) descriptors in one parameter list.
pub const MAX_CSCD_DESCRIPTORS: u16 = 4;
/// Most segment descriptors in one parameter list.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
/// Most bytes of CSCD and segment descriptors together.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// Most results held for RECEIVE COPY RESULTS (COPY STATUS), over all nexuses; the oldest go
/// first.
const MAX_HELD_RESULTS: usize = 64;

/// Length of the parameter list header.
const HEADER_LEN: usize = 16;
/// Length of an identification CSCD descriptor.
const CSCD_LEN: usize = 32;
/// Identification descriptor CSCD type code.
const CSCD_IDENTIFICATION: u8 = 0xE4;
/// Block device to block device segment type code.
const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
/// DESCRIPTOR LENGTH of a block-to-block segment descriptor.
const BLOCK_TO_BLOCK_LEN: u16 = 0x18;

/// EXTENDED COPY service action LID1 (the SPC-3 command); the only one implemented.
pub const SA_EXTENDED_COPY_LID1: u8 = 0x00;
/// RECEIVE COPY RESULTS service action COPY STATUS.
pub const SA_COPY_STATUS: u8 = 0x00;
/// RECEIVE COPY RESULTS service action OPERATING PARAMETERS.
pub const SA_OPERATING_PARAMETERS: u8 = 0x03;

/// What an accepted EXTENDED COPY does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    /// (source offset, destination offset, length) in bytes of this logical unit, in segment
    /// order; empty segments are left out.
    pub segments: Vec<CopySegment>,
    /// Segment descriptors in the list (empty ones included): what COPY STATUS reports done.
    pub segment_count: u16,
    /// The list identifier whose results are held (LIST ID USAGE 00b).
    pub held: Option<u8>,
}

/// One block-to-block segment, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySegment {
    /// Byte offset of the source.
    pub src: u64,
    /// Byte offset of the destination.
    pub dst: u64,
    /// Bytes to copy (> 0).
    pub len: u64,
    /// Its segment descriptor's index in the parameter list (empty descriptors counted): what
    /// COPY ABORTED names when it fails.
    pub index: u16,
    /// The source's logical unit: `None` this one, else another one's NAA designator (of the
    /// same block size; the shard checks it is there and that the host may reach it).
    pub src_lu: Option<[u8; 16]>,
    /// The destination's logical unit, likewise.
    pub dst_lu: Option<[u8; 16]>,
}

impl CopySegment {
    /// Whether the destination starts inside the source: such a segment is copied from its end
    /// backwards, so that no source byte is overwritten before it is read.
    pub fn backwards(&self) -> bool {
        self.src_lu == self.dst_lu && self.dst > self.src && self.dst < self.src + self.len
    }

    /// Whether it names another logical unit (as source, destination or both).
    pub fn crosses_lus(&self) -> bool {
        self.src_lu.is_some() || self.dst_lu.is_some()
    }
}

/// What a CSCD (copy target) descriptor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyTarget {
    /// This logical unit.
    ThisLu,
    /// Another block device of the same block size, by its NAA designator.
    Other([u8; 16]),
    /// Anything else: a copy naming it is refused (COPY TARGET DEVICE NOT REACHABLE).
    Unusable,
}

/// Parses and checks an EXTENDED COPY (LID1) parameter list of `param_len` bytes (`data_out`
/// holds them) against logical unit `info`. `Ok(None)`: nothing to copy (an empty list).
pub fn parse(info: &LunInfo, param_len: u32, data_out: &[u8]) -> Result<Option<CopyPlan>, Sense> {
    let len = (param_len as usize).min(data_out.len());
    if len == 0 {
        return Ok(None);
    }
    let list = &data_out[..len];
    if list.len() < HEADER_LEN {
        return Err(Sense::parameter_list_length_error());
    }
    let list_id = list[0];
    let usage = (list[1] >> 3) & 0x03;
    let cscd_len = usize::from(be16(list, 2));
    let segments_len = be32(list, 8) as usize;
    let inline_len = be32(list, 12) as usize;
    let needed = HEADER_LEN
        .saturating_add(cscd_len)
        .saturating_add(segments_len)
        .saturating_add(inline_len);
    if needed > list.len()
        || cscd_len.saturating_add(segments_len) > MAX_DESCRIPTOR_LIST_LENGTH as usize
    {
        return Err(Sense::parameter_list_length_error());
    }
    if inline_len != 0 {
        return Err(Sense::invalid_field_in_parameter_list(12));
    }
    match usage {
        0b01 => return Err(Sense::invalid_field_in_parameter_list_bit(1, Some(3))),
        0b11 if list_id != 0 => return Err(Sense::invalid_field_in_parameter_list(0)),
        _ => {}
    }
    let cscds = &list[HEADER_LEN..HEADER_LEN + cscd_len];
    let segments = &list[HEADER_LEN + cscd_len..HEADER_LEN + cscd_len + segments_len];
    let targets = copy_targets(info, cscds)?;
    let descriptors = segment_descriptors(segments)?;
    let mut plan = CopyPlan {
        segments: Vec::new(),
        segment_count: descriptors.len() as u16,
        held: (usage == 0b00).then_some(list_id),
    };
    for (index, d) in descriptors.iter().enumerate() {
        if let Some(segment) = block_to_block(info, &targets, d, index as u64)? {
            plan.segments.push(segment);
        }
    }
    Ok(Some(plan))
}

/// What each CSCD descriptor names: this logical unit, another block device of the same block
/// size named by a 16-byte NAA designator, or something unusable.
fn copy_targets(info: &LunInfo, cscds: &[u8]) -> Result<Vec<CopyTarget>, Sense> {
    if cscds.len() % CSCD_LEN != 0 {
        return Err(Sense::parameter_list_length_error());
    }
    if cscds.len() / CSCD_LEN > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(Sense::too_many_target_descriptors());
    }
    let mut targets = Vec::new();
    for d in cscds.chunks_exact(CSCD_LEN) {
        if d[0] != CSCD_IDENTIFICATION {
            return Err(Sense::unsupported_target_descriptor_type());
        }
        // Byte 1: LU ID TYPE (ignored since SPC-4), NUL (obsolete), PERIPHERAL DEVICE TYPE.
        let block_device = d[1] & 0x1F == 0;
        let block_length = u32::from(d[29]) << 16 | u32::from(d[30]) << 8 | u32::from(d[31]);
        let target = if !block_device || block_length != info.block_size {
            CopyTarget::Unusable
        } else if spc::designates_lu(info, &d[4..28]) {
            CopyTarget::ThisLu
        } else {
            naa_designator(&d[4..28]).map_or(CopyTarget::Unusable, CopyTarget::Other)
        };
        targets.push(target);
    }
    Ok(targets)
}

/// The NAA designator (type 3, 16 bytes, associated with a logical unit) a designation
/// descriptor holds, if that is what it holds.
fn naa_designator(descriptor: &[u8]) -> Option<[u8; 16]> {
    let lu_association = (descriptor[1] >> 4) & 0x03 == 0;
    let naa = descriptor[1] & 0x0F == 3;
    if !lu_association || !naa || descriptor[3] != 16 {
        return None;
    }
    descriptor.get(4..20)?.try_into().ok()
}

/// The segment descriptors, each checked for a supported type and a whole length.
fn segment_descriptors(mut list: &[u8]) -> Result<Vec<&[u8]>, Sense> {
    let mut out = Vec::new();
    while !list.is_empty() {
        if list.len() < 4 {
            return Err(Sense::parameter_list_length_error());
        }
        let len = 4 + usize::from(be16(list, 2));
        let Some(d) = list.get(..len) else {
            return Err(Sense::parameter_list_length_error());
        };
        out.push(d);
        list = &list[len..];
    }
    if out.len() > usize::from(MAX_SEGMENT_DESCRIPTORS) {
        return Err(Sense::too_many_segment_descriptors());
    }
    for d in &out {
        if d[0] != SEGMENT_BLOCK_TO_BLOCK {
            return Err(Sense::unsupported_segment_descriptor_type());
        }
        if be16(d, 2) != BLOCK_TO_BLOCK_LEN {
            return Err(Sense::parameter_list_length_error());
        }
    }
    Ok(out)
}

/// A block-to-block segment descriptor as byte ranges; `None` when it copies no block.
fn block_to_block(
    info: &LunInfo,
    targets: &[CopyTarget],
    d: &[u8],
    index: u64,
) -> Result<Option<CopySegment>, Sense> {
    let mut lus = [None; 2];
    for (lu, id) in lus.iter_mut().zip([be16(d, 4), be16(d, 6)]) {
        *lu = match targets.get(usize::from(id)) {
            None => return Err(Sense::unreachable_copy_target(index)),
            Some(CopyTarget::Unusable) => return Err(Sense::copy_target_not_reachable(index)),
            Some(CopyTarget::ThisLu) => None,
            Some(CopyTarget::Other(naa)) => Some(*naa),
        };
    }
    let [src_lu, dst_lu] = lus;
    // Source and destination have the same block size, so DC (which of them NUMBER OF BLOCKS
    // counts) makes no difference.
    let blocks = u64::from(be16(d, 10));
    let (src_lba, dst_lba) = (cdb::be(d, 12, 8), cdb::be(d, 20, 8));
    // Another logical unit's capacity is the shard's to check.
    let fits = |lba: u64, other: bool| {
        lba.checked_add(blocks)
            .is_some_and(|end| other || end <= info.num_blocks)
    };
    if !fits(src_lba, src_lu.is_some()) || !fits(dst_lba, dst_lu.is_some()) {
        return Err(Sense::copy_aborted(0x00, 0x00, index));
    }
    if blocks == 0 {
        return Ok(None);
    }
    let bs = u64::from(info.block_size);
    Ok(Some(CopySegment {
        src: src_lba * bs,
        dst: dst_lba * bs,
        len: blocks * bs,
        index: u16::try_from(index).unwrap_or(u16::MAX),
        src_lu,
        dst_lu,
    }))
}

/// RECEIVE COPY RESULTS (OPERATING PARAMETERS) data (SPC-4 6.22.4), truncated to `alloc_len`.
pub fn operating_parameters(info: &LunInfo, alloc_len: u32) -> Completion {
    let implemented = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
    let mut d = vec![0u8; 44];
    d.extend_from_slice(&implemented);
    let available = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&available.to_be_bytes());
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    // MAXIMUM SEGMENT LENGTH: a block-to-block segment counts at most 65535 blocks.
    let max_segment = u32::try_from(0xFFFF * u64::from(info.block_size)).unwrap_or(u32::MAX);
    d[16..20].copy_from_slice(&max_segment.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    d[34..36].copy_from_slice(&1u16.to_be_bytes()); // TOTAL CONCURRENT COPIES
    d[36] = 1; // MAXIMUM CONCURRENT COPIES
    d[37] = info.block_size.trailing_zeros() as u8; // DATA SEGMENT GRANULARITY (log2 bytes)
    d[43] = implemented.len() as u8;
    d.truncate(alloc_len as usize);
    Completion::good(d)
}

/// The Third-party Copy VPD page (8Fh) body (SPC-4 7.8.17): a Supported Commands descriptor
/// listing EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS).
pub fn third_party_copy_vpd() -> Vec<u8> {
    let commands: [(u8, &[u8]); 2] = [
        (super::cdb::opcode::EXTENDED_COPY, &[SA_EXTENDED_COPY_LID1]),
        (
            super::cdb::opcode::RECEIVE_COPY_RESULTS,
            &[SA_COPY_STATUS, SA_OPERATING_PARAMETERS],
        ),
    ];
    let mut list = Vec::new();
    for (opcode, actions) in commands {
        list.push(opcode);
        list.push(actions.len() as u8);
        list.extend_from_slice(actions);
    }
    // Descriptor: type 0001h, length, COMMANDS SUPPORTED LIST LENGTH, the list, padded to a
    // multiple of four bytes.
    let mut body = vec![list.len() as u8];
    body.extend_from_slice(&list);
    while (body.len() + 4) % 4 != 0 {
        body.push(0);
    }
    let mut d = vec![0x00, 0x01];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend_from_slice(&body);
    d
}

/// How a held copy ended (or that it runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    /// Started, not ended.
    Running,
    /// Ended.
    Ended {
        /// Without error.
        ok: bool,
        /// Segment descriptors processed.
        segments: u16,
        /// Bytes copied.
        bytes: u64,
    },
}

/// The results of copies with held data (LIST ID USAGE 00b), per nexus and list identifier.
#[derive(Debug, Clone, Default)]
pub struct CopyResults {
    held: VecDeque<(NexusId, u8, CopyState)>,
}

impl CopyResults {
    /// Records the state of copy `list_id` of nexus `n`.
    pub fn record(&mut self, n: NexusId, list_id: u8, state: CopyState) {
        self.held.retain(|&(m, id, _)| (m, id) != (n, list_id));
        if self.held.len() >= MAX_HELD_RESULTS {
            self.held.pop_front();
        }
        self.held.push_back((n, list_id, state));
    }

    /// RECEIVE COPY RESULTS (COPY STATUS) data (SPC-4 6.22.2) of copy `list_id` of nexus `n`;
    /// INVALID FIELD IN CDB on the LIST IDENTIFIER when no such copy is held.
    pub fn copy_status(&self, n: NexusId, list_id: u8, alloc_len: u32) -> Completion {
        let Some(&(_, _, state)) = self
            .held
            .iter()
            .find(|&&(m, id, _)| (m, id) == (n, list_id))
        else {
            return Completion::check(Sense::invalid_field_in_cdb(2, None));
        };
        let (status, segments, bytes) = match state {
            CopyState::Running => (0x00, 0, 0),
            CopyState::Ended {
                ok,
                segments,
                bytes,
            } => (if ok { 0x01 } else { 0x02 }, segments, bytes),
        };
        // TRANSFER COUNT in the smallest unit it fits: bytes (00h), then KiB, MiB, GiB (01h..).
        let (mut units, mut count) = (0u8, bytes);
        while count > u64::from(u32::MAX) {
            units += 1;
            count >>= 10;
        }
        let mut d = vec![0u8; 12];
        d[0..4].copy_from_slice(&8u32.to_be_bytes());
        d[4] = status;
        d[5..7].copy_from_slice(&segments.to_be_bytes());
        d[7] = units;
        d[8..12].copy_from_slice(&(count as u32).to_be_bytes());
        d.truncate(alloc_len as usize);
        Completion::good(d)
    }
}

/// A big-endian field of a parameter list (lengths were checked before it is read).
fn be16(d: &[u8], at: usize) -> u16 {
    cdb::be(d, at, 2) as u16
}

fn be32(d: &[u8], at: usize) -> u32 {
    cdb::be(d, at, 4) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseKey;

    fn info() -> LunInfo {
        LunInfo {
            num_blocks: 4096,
            block_size: 512,
            naa: [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            serial: "abc".into(),
            ..LunInfo::default()
        }
    }

    /// An identification CSCD descriptor naming `naa`, a block device of `block_size`.
    fn cscd(naa: &[u8; 16], block_size: u32) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0] = 0xE4;
        d[4] = 0x01; // binary
        d[5] = 0x03; // LU, NAA
        d[7] = 16;
        d[8..24].copy_from_slice(naa);
        d[29..32].copy_from_slice(&block_size.to_be_bytes()[1..]);
        d
    }

    fn segment(src_id: u16, dst_id: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
        let mut d = vec![0u8; 28];
        d[0] = 0x02;
        d[2..4].copy_from_slice(&0x18u16.to_be_bytes());
        d[4..6].copy_from_slice(&src_id.to_be_bytes());
        d[6..8].copy_from_slice(&dst_id.to_be_bytes());
        d[10..12].copy_from_slice(&blocks.to_be_bytes());
        d[12..20].copy_from_slice(&src.to_be_bytes());
        d[20..28].copy_from_slice(&dst.to_be_bytes());
        d
    }

    fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
        let c: Vec<u8> = cscds.concat();
        let s: Vec<u8> = segments.concat();
        let mut d = vec![0u8; 16];
        d[0] = list_id;
        d[1] = usage << 3;
        d[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        d.extend(c);
        d.extend(s);
        d
    }

    fn run(d: &[u8]) -> Result<Option<CopyPlan>, Sense> {
        parse(&info(), d.len() as u32, d)
    }

    #[test]
    fn a_copy_within_the_lu_becomes_byte_ranges() {
        let i = info();
        let d = list(
            7,
            0,
            &[cscd(&i.naa, 512)],
            &[
                segment(0, 0, 8, 0, 100),
                segment(0, 0, 0, 5, 5),
                segment(0, 0, 1, 9, 200),
            ],
        );
        let plan = run(&d).unwrap().unwrap();
        assert_eq!(
            plan.segments,
            vec![
                CopySegment {
                    src: 0,
                    dst: 51200,
                    len: 4096,
                    index: 0,
                    src_lu: None,
                    dst_lu: None,
                },
                CopySegment {
                    src: 9 * 512,
                    dst: 200 * 512,
                    len: 512,
                    index: 2,
                    src_lu: None,
                    dst_lu: None,
                }
            ],
            "the empty segment is left out, and the next keeps its index"
        );
        assert_eq!(plan.segment_count, 3);
        assert_eq!(plan.held, Some(7));
        // LIST ID USAGE 10b: results not held.
        let d = list(7, 2, &[cscd(&i.naa, 512)], &[segment(0, 0, 8, 0, 100)]);
        assert_eq!(run(&d).unwrap().unwrap().held, None);
        assert_eq!(run(&[]), Ok(None), "an empty list copies nothing");
    }

    #[test]
    fn length_errors_come_first() {
        let i = info();
        let d = list(1, 0, &[cscd(&i.naa, 512)], &[segment(0, 0, 8, 0, 100)]);
        for short in [5, 16 + 31, d.len() - 1] {
            assert_eq!(
                parse(&i, short as u32, &d[..short]),
                Err(Sense::parameter_list_length_error()),
                "{short}"
            );
        }
        // Past the maximum descriptor list length, even with too many descriptors.
        let many: Vec<Vec<u8>> = (0..40).map(|_| segment(0, 0, 1, 0, 1)).collect();
        let d = list(1, 0, &vec![cscd(&i.naa, 512); 5], &many);
        assert_eq!(run(&d), Err(Sense::parameter_list_length_error()));
    }

    #[test]
    fn descriptor_counts_and_types_are_checked() {
        let i = info();
        let d = list(1, 0, &vec![cscd(&i.naa, 512); 5], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(run(&d), Err(Sense::too_many_target_descriptors()));
        let segs: Vec<Vec<u8>> = (0..17).map(|_| segment(0, 0, 1, 0, 1)).collect();
        let d = list(1, 0, &[cscd(&i.naa, 512)], &segs);
        assert_eq!(run(&d), Err(Sense::too_many_segment_descriptors()));
        let mut fc = cscd(&i.naa, 512);
        fc[0] = 0xE0;
        let d = list(1, 0, &[fc], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(run(&d), Err(Sense::unsupported_target_descriptor_type()));
        let mut stream = segment(0, 0, 1, 0, 1);
        stream[0] = 0x03;
        let d = list(1, 0, &[cscd(&i.naa, 512)], &[stream]);
        assert_eq!(run(&d), Err(Sense::unsupported_segment_descriptor_type()));
    }

    #[test]
    fn unreachable_targets_and_ranges_abort_the_copy() {
        let i = info();
        let abort = |d: &[u8]| run(d).unwrap_err();
        // A CSCD index past the list.
        let e = abort(&list(
            1,
            0,
            &[cscd(&i.naa, 512)],
            &[segment(0, 1, 8, 0, 100)],
        ));
        assert_eq!((e.key, e.asc, e.ascq), (SenseKey::CopyAborted, 0x08, 0x04));
        // Another logical unit of another block size, this one with another block size, or a
        // designator that is not an NAA one.
        let other = [0x60; 16];
        let mut t10 = cscd(&other, 512);
        t10[5] = 0x01; // T10 vendor ID designator
        for target in [cscd(&other, 4096), cscd(&i.naa, 4096), t10] {
            let e = abort(&list(1, 0, &[target], &[segment(0, 0, 8, 0, 100)]));
            assert_eq!((e.key, e.asc, e.ascq), (SenseKey::CopyAborted, 0x0D, 0x02));
        }
        // Past the end of the LU; INFORMATION names the segment.
        let e = abort(&list(
            1,
            0,
            &[cscd(&i.naa, 512)],
            &[segment(0, 0, 1, 0, 1), segment(0, 0, 8, 0, 4090)],
        ));
        assert_eq!((e.key, e.information), (SenseKey::CopyAborted, Some(1)));
    }

    /// A segment naming another logical unit (by NAA) is planned with its designator; its
    /// range is the shard's to check against that unit.
    #[test]
    fn another_logical_unit_is_named_by_its_designator() {
        let i = info();
        let other = [0x61; 16];
        let d = list(
            1,
            0,
            &[cscd(&i.naa, 512), cscd(&other, 512)],
            &[
                segment(0, 1, 8, 0, 1 << 40),
                segment(1, 0, 8, 1 << 40, 16),
                segment(0, 0, 8, 0, 64),
            ],
        );
        let plan = run(&d).unwrap().unwrap();
        let lus: Vec<_> = plan.segments.iter().map(|s| (s.src_lu, s.dst_lu)).collect();
        assert_eq!(
            lus,
            [(None, Some(other)), (Some(other), None), (None, None)]
        );
        assert!(plan.segments[0].crosses_lus() && !plan.segments[2].crosses_lus());
        assert_eq!(plan.segments[0].dst, (1u64 << 40) * 512);
        // This unit's side is still checked here.
        let e = run(&list(
            1,
            0,
            &[cscd(&i.naa, 512), cscd(&other, 512)],
            &[segment(1, 0, 8, 0, 4090)],
        ))
        .unwrap_err();
        assert_eq!(e.key, SenseKey::CopyAborted);
    }

    #[test]
    fn reserved_lu_id_type_is_ignored_and_header_fields_checked() {
        let i = info();
        let mut c = cscd(&i.naa, 512);
        c[1] = 0xC0; // LU ID TYPE 11b (reserved): ignored since SPC-4
        assert!(run(&list(1, 0, &[c], &[segment(0, 0, 8, 0, 100)])).is_ok());
        let mut d = list(1, 0, &[cscd(&i.naa, 512)], &[segment(0, 0, 8, 0, 100)]);
        d[12..16].copy_from_slice(&4u32.to_be_bytes());
        d.extend([0; 4]);
        assert_eq!(run(&d), Err(Sense::invalid_field_in_parameter_list(12)));
        let d = list(1, 3, &[cscd(&i.naa, 512)], &[segment(0, 0, 8, 0, 100)]);
        assert_eq!(run(&d), Err(Sense::invalid_field_in_parameter_list(0)));
    }

    #[test]
    fn overlapping_forward_segments_copy_backwards() {
        let s = |src, dst| CopySegment {
            src,
            dst,
            len: 100,
            index: 0,
            src_lu: None,
            dst_lu: None,
        };
        let other = CopySegment {
            dst_lu: Some([0x61; 16]),
            ..s(0, 50)
        };
        assert!(!other.backwards(), "another unit's range never overlaps");
        assert!(s(0, 50).backwards());
        assert!(!s(50, 0).backwards());
        assert!(!s(0, 100).backwards());
        assert!(!s(0, 0).backwards());
    }

    #[test]
    fn operating_parameters_and_vpd_page_bytes() {
        let c = operating_parameters(&info(), 1024);
        let d = &c.data;
        assert_eq!(d.len(), 46);
        assert_eq!(u32::from_be_bytes(d[0..4].try_into().unwrap()), 42);
        assert_eq!(&d[8..12], &[0, 4, 0, 16]);
        assert_eq!(&d[12..16], &1024u32.to_be_bytes());
        assert_eq!((d[37], d[43], &d[44..]), (9, 2, &[0x02, 0xE4][..]));
        assert_eq!(operating_parameters(&info(), 10).data.len(), 10);
        let v = third_party_copy_vpd();
        assert_eq!(&v[..4], &[0x00, 0x01, 0x00, 8]);
        assert_eq!(v[4], 7, "commands supported list length");
        assert_eq!(&v[5..12], &[0x83, 1, 0x00, 0x84, 2, 0x00, 0x03]);
        assert_eq!(v.len() % 4, 0);
    }

    proptest::proptest! {
        /// Any parameter list, mostly well-formed ones with random fields and copy targets that
        /// are this unit or another: parsing never panics, an accepted copy stays inside this
        /// unit on its side, and names the other unit by its designator.
        #[test]
        fn accepted_copies_stay_inside_the_lu(
            cscd_count in 0usize..6,
            others in proptest::prelude::any::<u8>(),
            segments in proptest::collection::vec(
                (0u16..3, 0u16..3, proptest::prelude::any::<u16>(), 0u64..5000, 0u64..5000),
                0..20,
            ),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let i = info();
            let other = [0x61; 16];
            let cscds: Vec<Vec<u8>> = (0..cscd_count)
                .map(|k| if others >> k & 1 == 1 { cscd(&other, 512) } else { cscd(&i.naa, 512) })
                .collect();
            let segs: Vec<Vec<u8>> = segments
                .iter()
                .map(|&(s, d, n, src, dst)| {
                    let mut seg = segment(s, d, n, src, dst);
                    seg[4..6].copy_from_slice(&s.to_be_bytes());
                    seg
                })
                .collect();
            let mut d = list(1, 0, &cscds, &segs);
            d.extend(&noise);
            let len = if noise.is_empty() { d.len() } else { cut % (d.len() + 1) };
            if let Ok(Some(plan)) = parse(&i, len as u32, &d) {
                let end = i.num_blocks * 512;
                for s in &plan.segments {
                    proptest::prop_assert!(s.len > 0);
                    for (at, lu) in [(s.src, s.src_lu), (s.dst, s.dst_lu)] {
                        match lu {
                            None => proptest::prop_assert!(at + s.len <= end),
                            Some(naa) => proptest::prop_assert_eq!(naa, other),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn copy_status_is_held_per_nexus_and_list() {
        let mut r = CopyResults::default();
        let (a, b) = (NexusId(1), NexusId(2));
        let c = r.copy_status(a, 1, 255);
        assert_eq!(c.sense, Some(Sense::invalid_field_in_cdb(2, None)));
        r.record(a, 1, CopyState::Running);
        assert_eq!(r.copy_status(a, 1, 255).data[4], 0x00);
        r.record(
            a,
            1,
            CopyState::Ended {
                ok: true,
                segments: 2,
                bytes: 8192,
            },
        );
        let d = r.copy_status(a, 1, 255).data;
        assert_eq!(d, vec![0, 0, 0, 8, 0x01, 0, 2, 0, 0, 0, 0x20, 0]);
        assert!(
            r.copy_status(b, 1, 255).sense.is_some(),
            "another nexus's copy"
        );
        r.record(
            b,
            9,
            CopyState::Ended {
                ok: false,
                segments: 0,
                bytes: 1 << 40,
            },
        );
        let d = r.copy_status(b, 9, 255).data;
        assert_eq!(
            (d[4], d[7]),
            (0x02, 1),
            "completed with errors, counted in KiB"
        );
        for id in 0..MAX_HELD_RESULTS as u8 {
            r.record(b, id.wrapping_add(10), CopyState::Running);
        }
        assert!(
            r.copy_status(a, 1, 255).sense.is_some(),
            "the oldest went first"
        );
    }
}
