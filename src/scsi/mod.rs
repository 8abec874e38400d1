//! The SCSI command set of a direct-access block device (SPC-4 / SBC-3), with no I/O.
//!
//! The iSCSI layer hands a [`LogicalUnit`] a CDB (and, once gathered, the Data-Out bytes) and gets
//! back an [`Outcome`]: either a finished [`Completion`] (status, sense, Data-In bytes) for commands
//! that need no storage, or a storage request (`Read`, `Write`, `Verify`, `Flush`...) that the shard
//! runtime performs against the backend and then reports back with [`LogicalUnit::complete`].
//!
//! Invariants:
//! - Nothing here touches a socket, a file or a clock: every function is pure on its inputs and the
//!   LU's own state (mode pages, unit attentions), so it is unit-tested without I/O.
//! - CDB fields are checked once, in `cdb.rs` ("parse, then execute", as LIO's `sbc_parse_cdb`),
//!   so an I/O request that leaves this module is always inside the medium.

pub mod cdb;
pub mod lun;
pub mod pr;
pub mod sbc;
pub mod sense;
pub mod spc;
pub mod xcopy;

pub use cdb::{data_out_length, op_class};
pub use lun::{LogicalUnit, LunInfo, SanitizeState, decode_lun, encode_lun, lun_not_supported};
pub use sense::{Sense, SenseKey, Status};

/// Identifies one I_T nexus (initiator port = initiator name + ISID, target port) for unit
/// attentions and, later, reservations. Assigned by the session registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NexusId(pub u64);

/// A finished command: status, optional sense data and the Data-In bytes (already truncated to the
/// CDB's allocation length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status byte.
    pub status: Status,
    /// Sense data (fixed format), present with CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data-In bytes for the initiator (may be empty).
    pub data: Vec<u8>,
}

impl Completion {
    /// GOOD status with the given Data-In bytes.
    pub fn good(data: Vec<u8>) -> Self {
        Completion {
            status: Status::Good,
            sense: None,
            data,
        }
    }

    /// CHECK CONDITION with the given sense data and no Data-In.
    pub fn check(sense: Sense) -> Self {
        Completion {
            status: Status::CheckCondition,
            sense: Some(sense),
            data: Vec::new(),
        }
    }

    /// RESERVATION CONFLICT: another I_T nexus holds the logical unit (no sense, no data).
    pub fn reservation_conflict() -> Self {
        Completion {
            status: Status::ReservationConflict,
            sense: None,
            data: Vec::new(),
        }
    }
}

/// The result of [`LogicalUnit::execute`]: done, or a storage request for the shard to perform.
///
/// Byte offsets and lengths are in bytes on the volume, already checked against its capacity and
/// always multiples of the logical block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command is complete.
    Done(Completion),
    /// Read `len` bytes at `offset` and return them as Data-In with GOOD status.
    Read {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte count (> 0).
        len: u64,
        /// Force Unit Access: data must come from the medium (we always read O_DIRECT).
        fua: bool,
    },
    /// Write the first `len` bytes of the Data-Out at `offset`, then GOOD status.
    Write {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte count (> 0).
        len: u64,
        /// Force Unit Access: the write must be durable before status.
        fua: bool,
        /// WRITE ATOMIC: every block lands or none does, even across a crash (the backend
        /// writes new extents and switches them with one journal record).
        atomic: bool,
    },
    /// Read `len` bytes at `offset`; when `compare` is set, compare them with the first `len`
    /// bytes of the Data-Out (byte-for-byte, BYTCHK=01b) and report MISCOMPARE on a difference.
    /// Without `compare` the read only checks the medium is readable.
    Verify {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte count (> 0).
        len: u64,
        /// Compare with the Data-Out.
        compare: bool,
    },
    /// WRITE AND VERIFY: write the Data-Out at `offset` durably, then (when `verify`) read it back
    /// and compare.
    WriteVerify {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte count (> 0).
        len: u64,
        /// Read back and compare after writing.
        verify: bool,
    },
    /// Make every acknowledged write durable (fdatasync) before GOOD status.
    Flush,
    /// UNMAP (SBC-3 §5.28): deallocate these byte ranges (each inside the capacity, block
    /// aligned, non-empty), then GOOD. Whole extents are released; since the LU reports LBPRZ=1
    /// (an unmapped block reads as zeros), the blocks of a partial extent must read back as
    /// zeros afterwards too: write zeros there (libiscsi's Unmap.Simple unmaps 1..256 blocks and
    /// reads them back as zeros). Nothing here may fail for lack of space except those writes.
    Unmap {
        /// (offset, len) byte ranges, sorted by offset, overlapping and adjacent ones merged
        /// (at least one).
        ranges: Vec<(u64, u64)>,
    },
    /// WRITE SAME (SBC-3 §5.45/§5.46): write the single block of Data-Out (or zeros when
    /// `ndob`) over `len` bytes at `offset`; with `unmap`, ranges that read back as that block
    /// once unmapped (an all-zero block, LBPRZ=1) may be deallocated instead. With `unmap` and a
    /// block that is not all zeros the data must be written (UNMAP is only a permission). The
    /// Data-Out was checked to be exactly one block unless `ndob`; `len` is at most
    /// [`sbc::MAX_WRITE_SAME_BYTES`]. There is no FUA bit: with WCE=0 the write must be durable
    /// before GOOD, as any write.
    WriteSame {
        /// Byte offset on the volume.
        offset: u64,
        /// Byte count (> 0).
        len: u64,
        /// UNMAP bit.
        unmap: bool,
        /// NDOB bit: no Data-Out, the block is all zeros.
        ndob: bool,
    },
    /// COMPARE AND WRITE (SBC-3 §5.2), as one atomic operation with respect to every other
    /// command of the LU: read `len` bytes at `offset` and compare them with the first `len`
    /// bytes of the Data-Out; if equal, write the next `len` bytes of the Data-Out there (durably
    /// before GOOD when `fua`), else report MISCOMPARE with the offset of the first differing
    /// byte and write nothing. `len` is at most [`sbc::MAX_COMPARE_AND_WRITE_BLOCKS`] blocks; the
    /// Data-Out was checked to hold `2 * len` bytes.
    CompareAndWrite {
        /// Byte offset on the volume.
        offset: u64,
        /// Bytes compared, and then written (> 0).
        len: u64,
        /// Force Unit Access (or write cache off): the write must be durable before status.
        fua: bool,
        /// ORWRITE instead: no compare; the Data-Out (`len` bytes) is ORed into the blocks read
        /// and the result written.
        or: bool,
    },
    /// GET LBA STATUS (SBC-3 §5.9): report mapped / deallocated extents starting at `lba`; the
    /// runtime asks the storage which extents are mapped and completes the command with
    /// [`LogicalUnit::lba_status`] (or [`sbc::lba_status_descriptors`] and
    /// [`sbc::lba_status_data`]) as Data-In. `lba` is on the medium; `alloc_len` > 0.
    GetLbaStatus {
        /// Starting LBA.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// EXTENDED COPY (SPC-4 6.4, see [`xcopy`]): copy each segment within this logical unit, in
    /// order, as reads and writes (a write as WRITE would do it: durable before GOOD with the
    /// write cache off), then GOOD; on a failure stop and report COPY ABORTED. The runtime
    /// counts the segments it finished in `done` (what COPY STATUS reports).
    Copy {
        /// The segments with something to copy (at least one).
        segments: Vec<xcopy::CopySegment>,
        /// Segment descriptors in the parameter list.
        segment_count: u16,
        /// The list identifier whose results are held for RECEIVE COPY RESULTS.
        held: Option<u8>,
        /// Segments of `segments` copied so far.
        done: usize,
    },
    /// SANITIZE BLOCK ERASE (SBC-4 5.30, 4.11) of a thin LU: erase every logical block (it
    /// reads as zeros afterwards, LBPRZ) so that what it held cannot be recovered from the
    /// storage. The logical unit is in the sanitize state from now on (other commands get
    /// NOT READY, SANITIZE IN PROGRESS) until the runtime reports the end with
    /// [`LogicalUnit::sanitize_ended`]; with `immed` the command is answered GOOD at once, else
    /// when the erase is done.
    Sanitize {
        /// IMMED bit.
        immed: bool,
    },
}

/// How a storage request ended, reported back to [`LogicalUnit::complete`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoResult {
    /// The request succeeded (for a compare: the data matched).
    Ok,
    /// A VERIFY / WRITE AND VERIFY compare found a difference at this byte offset within the
    /// compared range.
    Miscompare {
        /// Offset of the first differing byte, relative to the start of the compared range.
        at: u64,
    },
    /// The medium failed (an I/O error from the backend).
    MediumError {
        /// A read (true) or a write (false).
        read: bool,
    },
    /// The pool could not allocate space for the write.
    SpaceExhausted,
    /// EXTENDED COPY could not copy to or from another logical unit: COPY ABORTED with this
    /// ASC/ASCQ (COPY TARGET DEVICE NOT REACHABLE, LOGICAL BLOCK ADDRESS OUT OF RANGE).
    CopyAborted {
        /// Additional sense code.
        asc: u8,
        /// Its qualifier.
        ascq: u8,
    },
}

/// Operation class for statistics (latency histograms are kept per LUN and class).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    /// READ (6/10/12/16).
    Read,
    /// WRITE (6/10/12/16), WRITE AND VERIFY.
    Write,
    /// Everything else.
    Other,
}
