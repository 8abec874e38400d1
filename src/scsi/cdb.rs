//! CDB parsing: bytes in, a typed [`Command`] out ("parse, then execute", as LIO's
//! `sbc_parse_cdb`).
//!
//! Owns:
//! - the CDB length of each operation code group (SPC-4 4.2.5.1, table 9), so that the 16-byte
//!   padded CDBs iSCSI carries are read only as far as their real length;
//! - the CDB layouts of every command this target implements (SPC-4 6.x and SBC-3 5.x, section
//!   numbers on each [`Command`] variant) and the checks on their fields: protection fields
//!   (RDPROTECT / WRPROTECT / VRPROTECT, SBC-3 4.22.2) must be zero since we have no protection
//!   information, the CONTROL byte's NACA bit must be zero (SAM-5 5.2; NormACA=0), BYTCHK values
//!   we do not implement, MODE SELECT PF/SP, INQUIRY EVPD/page-code rules, the ANCHOR bit of
//!   UNMAP and WRITE SAME (ANC_SUP=0), a WRITE SAME of zero blocks (WSNZ=1) and so on;
//! - [`check_block_range`]: the MAXIMUM TRANSFER LENGTH (SBC-3 6.5.3) and LBA range checks
//!   (SBC-3 4.5) of a block command against the medium;
//! - [`SUPPORTED_COMMANDS`]: the single table of supported operation codes with their CDB usage
//!   data, which REPORT SUPPORTED OPERATION CODES (SPC-4 6.35) reports verbatim; unit tests check
//!   that it matches [`parse`] exactly.
//! - [`data_out_length`] and [`op_class`], which the iSCSI layer uses before executing.
//!
//! Anything not listed (EXTENDED COPY, RESERVE/RELEASE (10),
//! WRITE SAME (32)...) is answered with INVALID COMMAND OPERATION CODE. The logical block
//! provisioning commands UNMAP and GET LBA STATUS are listed (the table is static) but are
//! [`CommandInfo::thin_only`]: a fully provisioned LU answers them with INVALID COMMAND
//! OPERATION CODE and leaves them out of REPORT SUPPORTED OPERATION CODES (see `sbc`).

use super::OpClass;
use super::sense::Sense;

/// Operation codes of the commands this module knows about (SPC-4 annex E, SBC-3 table 14).
pub mod opcode {
    /// TEST UNIT READY (SPC-4 6.47).
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE (SPC-4 6.39).
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ (6) (SBC-3 5.10).
    pub const READ_6: u8 = 0x08;
    /// WRITE (6) (SBC-3 5.32).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY (SPC-4 6.6).
    pub const INQUIRY: u8 = 0x12;
    /// RESERVE (6) (SPC-2 7.21).
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE (6) (SPC-2 7.16).
    pub const RELEASE_6: u8 = 0x17;
    /// MODE SELECT (6) (SPC-4 6.9).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE (6) (SPC-4 6.11).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT (SBC-3 5.25).
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.5).
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    /// READ CAPACITY (10) (SBC-3 5.15).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ (10) (SBC-3 5.11).
    pub const READ_10: u8 = 0x28;
    /// WRITE (10) (SBC-3 5.33).
    pub const WRITE_10: u8 = 0x2A;
    /// WRITE AND VERIFY (10) (SBC-3 5.36).
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    /// VERIFY (10) (SBC-3 5.29).
    pub const VERIFY_10: u8 = 0x2F;
    /// PRE-FETCH (10) (SBC-3 5.3).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// SYNCHRONIZE CACHE (10) (SBC-3 5.26).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// READ DEFECT DATA (10) (SBC-3 5.17).
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    /// WRITE SAME (10) (SBC-3 5.45).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP (SBC-3 5.28).
    pub const UNMAP: u8 = 0x42;
    /// SANITIZE (SBC-4 5.30).
    pub const SANITIZE: u8 = 0x48;
    /// MODE SELECT (10) (SPC-4 6.10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE (10) (SPC-4 6.12).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// PERSISTENT RESERVE IN (SPC-4 6.15).
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT (SPC-4 6.16).
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// EXTENDED COPY (SPC-4 6.4; service action LID1, the SPC-3 command).
    pub const EXTENDED_COPY: u8 = 0x83;
    /// RECEIVE COPY RESULTS (SPC-4 6.22).
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    /// READ (16) (SBC-3 5.13).
    pub const READ_16: u8 = 0x88;
    /// WRITE (16) (SBC-3 5.35).
    pub const WRITE_16: u8 = 0x8A;
    /// WRITE AND VERIFY (16) (SBC-3 5.38).
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    /// VERIFY (16) (SBC-3 5.31).
    pub const VERIFY_16: u8 = 0x8F;
    /// PRE-FETCH (16) (SBC-3 5.4).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// SYNCHRONIZE CACHE (16) (SBC-3 5.27).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME (16) (SBC-3 5.46).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// COMPARE AND WRITE (SBC-3 5.2).
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// ORWRITE (16).
    pub const ORWRITE_16: u8 = 0x8B;
    /// WRITE ATOMIC (16) (SBC-4 5.48).
    pub const WRITE_ATOMIC_16: u8 = 0x9C;
    /// SERVICE ACTION IN (16) (SPC-4 annex E).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS (SPC-4 6.33).
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN (SPC-4 annex E).
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// READ (12) (SBC-3 5.12).
    pub const READ_12: u8 = 0xA8;
    /// READ DEFECT DATA (12) (SBC-3 5.18).
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
    /// WRITE (12) (SBC-3 5.34).
    pub const WRITE_12: u8 = 0xAA;
    /// WRITE AND VERIFY (12) (SBC-3 5.37).
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    /// VERIFY (12) (SBC-3 5.30).
    pub const VERIFY_12: u8 = 0xAF;
}

/// A human name for an operation code (for logs), e.g. `WRITE(10)`; `OPCODE 0xNN` for codes this
/// module does not know.
pub fn opcode_name(op: u8) -> std::borrow::Cow<'static, str> {
    use opcode::*;
    let name = match op {
        TEST_UNIT_READY => "TEST UNIT READY",
        REQUEST_SENSE => "REQUEST SENSE",
        READ_6 => "READ(6)",
        WRITE_6 => "WRITE(6)",
        INQUIRY => "INQUIRY",
        RESERVE_6 => "RESERVE(6)",
        RELEASE_6 => "RELEASE(6)",
        MODE_SELECT_6 => "MODE SELECT(6)",
        MODE_SENSE_6 => "MODE SENSE(6)",
        START_STOP_UNIT => "START STOP UNIT",
        PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT ALLOW MEDIUM REMOVAL",
        READ_CAPACITY_10 => "READ CAPACITY(10)",
        READ_10 => "READ(10)",
        WRITE_10 => "WRITE(10)",
        WRITE_AND_VERIFY_10 => "WRITE AND VERIFY(10)",
        VERIFY_10 => "VERIFY(10)",
        PRE_FETCH_10 => "PRE-FETCH(10)",
        SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE CACHE(10)",
        WRITE_SAME_10 => "WRITE SAME(10)",
        UNMAP => "UNMAP",
        SANITIZE => "SANITIZE",
        MODE_SELECT_10 => "MODE SELECT(10)",
        MODE_SENSE_10 => "MODE SENSE(10)",
        READ_16 => "READ(16)",
        WRITE_16 => "WRITE(16)",
        WRITE_AND_VERIFY_16 => "WRITE AND VERIFY(16)",
        VERIFY_16 => "VERIFY(16)",
        PRE_FETCH_16 => "PRE-FETCH(16)",
        SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE CACHE(16)",
        WRITE_SAME_16 => "WRITE SAME(16)",
        COMPARE_AND_WRITE => "COMPARE AND WRITE",
        ORWRITE_16 => "ORWRITE(16)",
        WRITE_ATOMIC_16 => "WRITE ATOMIC(16)",
        SERVICE_ACTION_IN_16 => "SERVICE ACTION IN(16)",
        REPORT_LUNS => "REPORT LUNS",
        MAINTENANCE_IN => "MAINTENANCE IN",
        PERSISTENT_RESERVE_IN => "PERSISTENT RESERVE IN",
        PERSISTENT_RESERVE_OUT => "PERSISTENT RESERVE OUT",
        EXTENDED_COPY => "EXTENDED COPY",
        RECEIVE_COPY_RESULTS => "RECEIVE COPY RESULTS",
        READ_12 => "READ(12)",
        READ_DEFECT_DATA_10 => "READ DEFECT DATA(10)",
        READ_DEFECT_DATA_12 => "READ DEFECT DATA(12)",
        WRITE_12 => "WRITE(12)",
        WRITE_AND_VERIFY_12 => "WRITE AND VERIFY(12)",
        VERIFY_12 => "VERIFY(12)",
        other => return format!("OPCODE {other:#04x}").into(),
    };
    name.into()
}

/// SERVICE ACTION IN (16) service action READ CAPACITY (16) (SBC-3 5.16).
pub const SA_READ_CAPACITY_16: u16 = 0x10;
/// SERVICE ACTION IN (16) service action GET LBA STATUS (SBC-3 5.9).
pub const SA_GET_LBA_STATUS: u16 = 0x12;
/// SANITIZE service action BLOCK ERASE (SBC-4 5.30).
pub const SA_SANITIZE_BLOCK_ERASE: u16 = 0x02;
/// SANITIZE service action EXIT FAILURE MODE (SBC-4 5.30).
pub const SA_SANITIZE_EXIT_FAILURE_MODE: u16 = 0x1F;
/// MAINTENANCE IN service action REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
pub const SA_REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
/// MAINTENANCE IN service action REPORT TARGET PORT GROUPS.
pub const SA_REPORT_TARGET_PORT_GROUPS: u16 = 0x0A;

/// The CDB length implied by an operation code's group (SPC-4 table 9), or `None` for the
/// reserved and vendor-specific groups (and variable-length 7Fh), none of which we implement.
pub fn cdb_length(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// The block-addressing fields shared by READ, WRITE, VERIFY, WRITE AND VERIFY, PRE-FETCH and
/// SYNCHRONIZE CACHE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockIo {
    /// LOGICAL BLOCK ADDRESS.
    pub lba: u64,
    /// TRANSFER LENGTH (or VERIFICATION / PREFETCH LENGTH, NUMBER OF LOGICAL BLOCKS), in blocks.
    /// READ (6) / WRITE (6) length 0 is already turned into 256.
    pub blocks: u32,
    /// Disable Page Out (a cache hint; accepted and ignored).
    pub dpo: bool,
    /// Force Unit Access.
    pub fua: bool,
    /// CDB byte offset of the length field, for the field pointer of a length error.
    pub length_field: u16,
}

/// PC (page control) field of MODE SENSE (SPC-4 6.11.2, table 99).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    /// Current values.
    Current,
    /// Changeable values (a mask of the bits MODE SELECT may change).
    Changeable,
    /// Default values.
    Default,
    /// Saved values (not supported: no persistent mode pages).
    Saved,
}

/// A parsed MODE SENSE (6) or (10) CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSense {
    /// MODE SENSE (10) rather than (6).
    pub ten: bool,
    /// Disable Block Descriptors.
    pub dbd: bool,
    /// Long LBA Accepted (MODE SENSE (10) only).
    pub llbaa: bool,
    /// Page control.
    pub pc: PageControl,
    /// PAGE CODE (3Fh = all pages).
    pub page_code: u8,
    /// SUBPAGE CODE.
    pub subpage_code: u8,
    /// ALLOCATION LENGTH.
    pub alloc_len: u32,
}

/// A parsed MODE SELECT (6) or (10) CDB (PF=1 and SP=0 already checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSelect {
    /// MODE SELECT (10) rather than (6).
    pub ten: bool,
    /// PARAMETER LIST LENGTH.
    pub param_len: u32,
}

/// A parsed REPORT SUPPORTED OPERATION CODES CDB (SPC-4 6.35.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsocRequest {
    /// Return Command Timeouts Descriptor.
    pub rctd: bool,
    /// REPORTING OPTIONS (0..=3; others rejected at parse).
    pub options: u8,
    /// REQUESTED OPERATION CODE.
    pub opcode: u8,
    /// REQUESTED SERVICE ACTION.
    pub service_action: u16,
    /// ALLOCATION LENGTH.
    pub alloc_len: u32,
}

/// A parsed WRITE SAME (10) or (16) CDB (SBC-3 5.45, 5.46; NDOB from SBC-4 5.50): WRPROTECT,
/// ANCHOR, PBDATA and LBDATA already checked to be zero and NUMBER OF LOGICAL BLOCKS to be non-zero
/// (WSNZ=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSame {
    /// LBA and NUMBER OF LOGICAL BLOCKS (never 0); `length_field` points at the latter.
    pub io: BlockIo,
    /// UNMAP: the blocks may be deallocated when the Data-Out block reads back as what an
    /// unmapped block returns (zeros, LBPRZ=1).
    pub unmap: bool,
    /// NDOB (WRITE SAME (16) only): no Data-Out, the block is all zeros.
    pub ndob: bool,
}

/// A parsed, field-checked CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY (SPC-4 6.47).
    TestUnitReady,
    /// REQUEST SENSE (SPC-4 6.39).
    RequestSense {
        /// DESC: return descriptor format sense data.
        desc: bool,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// INQUIRY (SPC-4 6.6).
    Inquiry {
        /// EVPD: return the vital product data page `page_code`.
        evpd: bool,
        /// PAGE CODE (0 when EVPD=0).
        page_code: u8,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// MODE SENSE (6) / (10) (SPC-4 6.11, 6.12).
    ModeSense(ModeSense),
    /// MODE SELECT (6) / (10) (SPC-4 6.9, 6.10).
    ModeSelect(ModeSelect),
    /// START STOP UNIT (SBC-3 5.25): accepted, nothing to do.
    StartStopUnit {
        /// IMMED.
        immed: bool,
        /// POWER CONDITION.
        power_condition: u8,
        /// LOEJ (load/eject).
        loej: bool,
        /// START.
        start: bool,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.5): accepted, nothing to do.
    PreventAllowMediumRemoval {
        /// PREVENT = 01b.
        prevent: bool,
    },
    /// READ CAPACITY (10) (SBC-3 5.15).
    ReadCapacity10,
    /// READ DEFECT DATA (10) and (12) (SBC-3 5.17, 5.18): a virtual disk has no defects, so
    /// the lists asked for are valid and empty.
    ReadDefectData {
        /// READ DEFECT DATA (12): an 8-byte header.
        twelve: bool,
        /// REQ_PLIST: the primary defect list is asked for.
        plist: bool,
        /// REQ_GLIST: the grown defect list is asked for.
        glist: bool,
        /// DEFECT LIST FORMAT.
        format: u8,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// READ CAPACITY (16) (SBC-3 5.16).
    ReadCapacity16 {
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// READ (6/10/12/16) (SBC-3 5.10 - 5.13).
    Read(BlockIo),
    /// WRITE (6/10/12/16) (SBC-3 5.32 - 5.35).
    Write(BlockIo),
    /// WRITE ATOMIC (16) (SBC-4 5.48): a write that lands whole or not at all.
    WriteAtomic(BlockIo),
    /// VERIFY (10/12/16) (SBC-3 5.29 - 5.31).
    Verify {
        /// Addressed blocks.
        io: BlockIo,
        /// BYTCHK=01b: compare with the Data-Out (else medium verification only).
        compare: bool,
    },
    /// WRITE AND VERIFY (10/12/16) (SBC-3 5.36 - 5.38).
    WriteAndVerify {
        /// Addressed blocks.
        io: BlockIo,
        /// BYTCHK=01b: byte-by-byte compare after writing.
        compare: bool,
    },
    /// PRE-FETCH (10/16) (SBC-3 5.3, 5.4).
    PreFetch {
        /// Addressed blocks.
        io: BlockIo,
        /// IMMED.
        immed: bool,
    },
    /// SYNCHRONIZE CACHE (10/16) (SBC-3 5.26, 5.27). `io.blocks == 0` means "to the end of the
    /// medium".
    SynchronizeCache {
        /// Addressed blocks.
        io: BlockIo,
        /// IMMED.
        immed: bool,
    },
    /// UNMAP (SBC-3 5.28); ANCHOR already checked to be zero. The parameter list (5.28.2) is in
    /// the Data-Out.
    Unmap {
        /// PARAMETER LIST LENGTH (0: nothing to unmap, GOOD).
        param_len: u32,
    },
    /// WRITE SAME (10) / (16) (SBC-3 5.45, 5.46).
    WriteSame(WriteSame),
    /// RESERVE (6) (SPC-2 7.21): a logical-unit reservation for the sending I_T nexus (third-party
    /// reservations, which SPC-2 made obsolete, are not supported).
    Reserve6,
    /// RELEASE (6) (SPC-2 7.16): releases the sender's reservation, if it holds one.
    Release6,
    /// PERSISTENT RESERVE IN (SPC-4 6.15).
    PersistentReserveIn {
        /// SERVICE ACTION.
        action: u8,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// PERSISTENT RESERVE OUT (SPC-4 6.16); the parameter list is in the Data-Out.
    PersistentReserveOut {
        /// SERVICE ACTION.
        action: u8,
        /// SCOPE (high nibble) and TYPE (low nibble).
        scope_type: u8,
        /// PARAMETER LIST LENGTH.
        param_len: u32,
    },
    /// COMPARE AND WRITE (SBC-3 5.2); WRPROTECT already checked to be zero. `blocks` is the
    /// NUMBER OF LOGICAL BLOCKS (0..=255); the Data-Out holds twice that: the verify data, then
    /// the write data.
    CompareAndWrite(BlockIo),
    /// ORWRITE (16) (SBC-3 5.11): read the blocks, OR the Data-Out into them and write the
    /// result, atomically against every other write (as COMPARE AND WRITE).
    OrWrite(BlockIo),
    /// GET LBA STATUS (SBC-3 5.9).
    GetLbaStatus {
        /// STARTING LOGICAL BLOCK ADDRESS.
        lba: u64,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// REPORT LUNS (SPC-4 6.33).
    ReportLuns {
        /// SELECT REPORT (0, 1 or 2).
        select_report: u8,
        /// ALLOCATION LENGTH (>= 16).
        alloc_len: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35).
    ReportSupportedOpcodes(RsocRequest),
    /// REPORT TARGET PORT GROUPS (SPC-4 6.36).
    ReportTargetPortGroups {
        /// PARAMETER DATA FORMAT 001b: the extended header.
        extended: bool,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
    /// SANITIZE (SBC-4 5.30): BLOCK ERASE or EXIT FAILURE MODE, the only service actions
    /// implemented (OVERWRITE and CRYPTOGRAPHIC ERASE are INVALID FIELD IN CDB). Neither takes
    /// a parameter list: a non-zero PARAMETER LIST LENGTH was refused.
    Sanitize {
        /// The service action: [`SA_SANITIZE_BLOCK_ERASE`] or
        /// [`SA_SANITIZE_EXIT_FAILURE_MODE`].
        action: u16,
        /// IMMED: GOOD status once the operation has started.
        immed: bool,
        /// AUSE: if the operation fails, EXIT FAILURE MODE may end the failure mode.
        ause: bool,
    },
    /// EXTENDED COPY (LID1) (SPC-4 6.4): see `scsi::xcopy`.
    ExtendedCopy {
        /// PARAMETER LIST LENGTH.
        param_len: u32,
    },
    /// RECEIVE COPY RESULTS (SPC-4 6.22).
    ReceiveCopyResults {
        /// SERVICE ACTION (COPY STATUS or OPERATING PARAMETERS).
        action: u8,
        /// LIST IDENTIFIER (COPY STATUS).
        list_id: u8,
        /// ALLOCATION LENGTH.
        alloc_len: u32,
    },
}

/// One supported command, as REPORT SUPPORTED OPERATION CODES describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for operation codes that have them.
    pub service_action: Option<u16>,
    /// CDB USAGE DATA (SPC-4 6.35.3): byte 0 the opcode, the service action in its field, then a
    /// mask of the bits the device server evaluates. Its length is the CDB length.
    pub usage: &'static [u8],
}

impl CommandInfo {
    /// Whether the command exists only on a thin-provisioned logical unit (LBPME=1): UNMAP and
    /// GET LBA STATUS. A fully provisioned LU answers them with INVALID COMMAND OPERATION CODE and
    /// does not report them. (WRITE SAME is implemented by every LU; only its UNMAP bit needs
    /// thin provisioning.)
    pub fn thin_only(&self) -> bool {
        matches!(
            (self.opcode, self.service_action),
            (opcode::UNMAP, None)
                | (opcode::SANITIZE, Some(SA_SANITIZE_BLOCK_ERASE))
                | (opcode::SERVICE_ACTION_IN_16, Some(SA_GET_LBA_STATUS))
        )
    }
}

/// The commands this target implements, in opcode order: exactly what [`parse`] accepts.
pub const SUPPORTED_COMMANDS: &[CommandInfo] = &[
    cmd(
        opcode::TEST_UNIT_READY,
        &[0x00, 0x00, 0x00, 0x00, 0x00, 0x04],
    ),
    cmd(opcode::REQUEST_SENSE, &[0x03, 0x01, 0x00, 0x00, 0xFF, 0x04]),
    cmd(opcode::READ_6, &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(opcode::WRITE_6, &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(opcode::INQUIRY, &[0x12, 0x03, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(opcode::MODE_SELECT_6, &[0x15, 0x11, 0x00, 0x00, 0xFF, 0x04]),
    cmd(opcode::RESERVE_6, &[0x16, 0x00, 0x00, 0x00, 0x00, 0x04]),
    cmd(opcode::RELEASE_6, &[0x17, 0x00, 0x00, 0x00, 0x00, 0x04]),
    cmd(opcode::MODE_SENSE_6, &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x04]),
    cmd(
        opcode::START_STOP_UNIT,
        &[0x1B, 0x01, 0x00, 0x0F, 0xF7, 0x04],
    ),
    cmd(
        opcode::PREVENT_ALLOW_MEDIUM_REMOVAL,
        &[0x1E, 0x00, 0x00, 0x00, 0x03, 0x04],
    ),
    cmd(
        opcode::READ_CAPACITY_10,
        &[0x25, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x01, 0x04],
    ),
    cmd(
        opcode::READ_10,
        &[0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::WRITE_10,
        &[0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::WRITE_AND_VERIFY_10,
        &[0x2E, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::VERIFY_10,
        &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::PRE_FETCH_10,
        &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::READ_DEFECT_DATA_10,
        &[0x37, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::WRITE_SAME_10,
        &[0x41, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::UNMAP,
        &[0x42, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04],
    ),
    sa_cmd(
        opcode::SANITIZE,
        SA_SANITIZE_BLOCK_ERASE,
        &sanitize_usage(SA_SANITIZE_BLOCK_ERASE as u8),
    ),
    sa_cmd(
        opcode::SANITIZE,
        SA_SANITIZE_EXIT_FAILURE_MODE,
        &sanitize_usage(SA_SANITIZE_EXIT_FAILURE_MODE as u8),
    ),
    cmd(
        opcode::MODE_SELECT_10,
        &[0x55, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04],
    ),
    cmd(
        opcode::MODE_SENSE_10,
        &[0x5A, 0x18, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04],
    ),
    sa_cmd(opcode::PERSISTENT_RESERVE_IN, 0x00, &prin_usage(0x00)),
    sa_cmd(opcode::PERSISTENT_RESERVE_IN, 0x01, &prin_usage(0x01)),
    sa_cmd(opcode::PERSISTENT_RESERVE_IN, 0x02, &prin_usage(0x02)),
    sa_cmd(opcode::PERSISTENT_RESERVE_IN, 0x03, &prin_usage(0x03)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x00, &prout_usage(0x00)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x01, &prout_usage(0x01)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x02, &prout_usage(0x02)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x03, &prout_usage(0x03)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x04, &prout_usage(0x04)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x05, &prout_usage(0x05)),
    sa_cmd(opcode::PERSISTENT_RESERVE_OUT, 0x06, &prout_usage(0x06)),
    sa_cmd(
        opcode::EXTENDED_COPY,
        0x00,
        &[
            0x83, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x04,
        ],
    ),
    sa_cmd(
        opcode::RECEIVE_COPY_RESULTS,
        0x00,
        &receive_copy_results_usage(0x00),
    ),
    sa_cmd(
        opcode::RECEIVE_COPY_RESULTS,
        0x03,
        &receive_copy_results_usage(0x03),
    ),
    cmd(opcode::READ_16, &READ_16_USAGE),
    cmd(
        opcode::COMPARE_AND_WRITE,
        &[
            0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0xFF,
            0x00, 0x04,
        ],
    ),
    cmd(opcode::WRITE_16, &WRITE_16_USAGE),
    cmd(
        opcode::ORWRITE_16,
        &[
            0x8B, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x1F, 0x04,
        ],
    ),
    cmd(opcode::WRITE_AND_VERIFY_16, &WRITE_AND_VERIFY_16_USAGE),
    cmd(opcode::VERIFY_16, &VERIFY_16_USAGE),
    cmd(opcode::PRE_FETCH_16, &PRE_FETCH_16_USAGE),
    cmd(opcode::SYNCHRONIZE_CACHE_16, &SYNCHRONIZE_CACHE_16_USAGE),
    cmd(opcode::WRITE_SAME_16, &WRITE_SAME_16_USAGE),
    cmd(opcode::WRITE_ATOMIC_16, &WRITE_ATOMIC_16_USAGE),
    CommandInfo {
        opcode: opcode::SERVICE_ACTION_IN_16,
        service_action: Some(SA_READ_CAPACITY_16),
        usage: &[
            0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x01, 0x04,
        ],
    },
    CommandInfo {
        opcode: opcode::SERVICE_ACTION_IN_16,
        service_action: Some(SA_GET_LBA_STATUS),
        usage: &[
            0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            0x00, 0x04,
        ],
    },
    cmd(
        opcode::REPORT_LUNS,
        &[
            0xA0, 0x00, 0xFF, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04,
        ],
    ),
    CommandInfo {
        opcode: opcode::MAINTENANCE_IN,
        service_action: Some(SA_REPORT_TARGET_PORT_GROUPS),
        usage: &[
            0xA3, 0xEA, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04,
        ],
    },
    CommandInfo {
        opcode: opcode::MAINTENANCE_IN,
        service_action: Some(SA_REPORT_SUPPORTED_OPCODES),
        usage: &[
            0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04,
        ],
    },
    cmd(opcode::READ_12, &READ_12_USAGE),
    cmd(opcode::WRITE_12, &WRITE_12_USAGE),
    cmd(opcode::WRITE_AND_VERIFY_12, &WRITE_AND_VERIFY_12_USAGE),
    cmd(opcode::VERIFY_12, &VERIFY_12_USAGE),
    cmd(
        opcode::READ_DEFECT_DATA_12,
        &[
            0xB7, 0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x04,
        ],
    ),
];

/// A table entry for an operation code without service actions.
const fn cmd(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: None,
        usage,
    }
}

/// One service action of a command that has several.
const fn sa_cmd(opcode: u8, service_action: u16, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: Some(service_action),
        usage,
    }
}

/// CDB usage data of SANITIZE: IMMED, AUSE, SERVICE ACTION; PARAMETER LIST LENGTH; CONTROL.
const fn sanitize_usage(sa: u8) -> [u8; 10] {
    [
        0x48,
        0xA0 | sa,
        0x00,
        0x00,
        0x00,
        0x00,
        0x00,
        0xFF,
        0xFF,
        0x04,
    ]
}

/// CDB usage data of PERSISTENT RESERVE IN: SERVICE ACTION, ALLOCATION LENGTH, CONTROL.
const fn prin_usage(sa: u8) -> [u8; 10] {
    [0x5E, sa, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x04]
}

/// CDB usage data of PERSISTENT RESERVE OUT: SERVICE ACTION, SCOPE and TYPE, PARAMETER LIST
/// LENGTH, CONTROL.
const fn prout_usage(sa: u8) -> [u8; 10] {
    [0x5F, sa, 0xFF, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x04]
}

/// CDB usage data of RECEIVE COPY RESULTS: SERVICE ACTION, LIST IDENTIFIER, ALLOCATION LENGTH,
/// CONTROL.
const fn receive_copy_results_usage(sa: u8) -> [u8; 16] {
    [
        0x84, sa, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x00,
        0x04,
    ]
}

/// CDB usage data of a 16-byte block command: byte 1 mask, LBA, length, GROUP NUMBER ignored,
/// CONTROL (NACA only).
const fn block16_usage(op: u8, byte1: u8) -> [u8; 16] {
    let mut u = [0xFF; 16];
    u[0] = op;
    u[1] = byte1;
    u[14] = 0x00;
    u[15] = 0x04;
    u
}

/// CDB usage data of a 12-byte block command: byte 1 mask, LBA, length, GROUP NUMBER ignored,
/// CONTROL (NACA only).
const fn block12_usage(op: u8, byte1: u8) -> [u8; 12] {
    let mut u = [0xFF; 12];
    u[0] = op;
    u[1] = byte1;
    u[10] = 0x00;
    u[11] = 0x04;
    u
}

/// Byte 1 usage of READ / WRITE: RDPROTECT/WRPROTECT, DPO, FUA.
const RW_BYTE1: u8 = 0xF8;
/// Byte 1 usage of VERIFY / WRITE AND VERIFY: VRPROTECT/WRPROTECT, DPO, BYTCHK.
const VERIFY_BYTE1: u8 = 0xF6;
/// Byte 1 usage of PRE-FETCH / SYNCHRONIZE CACHE: IMMED.
const IMMED_BYTE1: u8 = 0x02;
/// Byte 1 usage of WRITE SAME (16): WRPROTECT, ANCHOR, UNMAP, PBDATA, LBDATA (obsolete, checked
/// to be zero), NDOB.
const WRITE_SAME_16_BYTE1: u8 = 0xFF;

const READ_16_USAGE: [u8; 16] = block16_usage(opcode::READ_16, RW_BYTE1);
const WRITE_16_USAGE: [u8; 16] = block16_usage(opcode::WRITE_16, RW_BYTE1);
/// WRITE ATOMIC (16): WRPROTECT, DPO, FUA; LBA; ATOMIC BOUNDARY (checked: must be zero);
/// TRANSFER LENGTH; GROUP NUMBER ignored; NACA.
const WRITE_ATOMIC_16_USAGE: [u8; 16] = block16_usage(opcode::WRITE_ATOMIC_16, RW_BYTE1);
const WRITE_AND_VERIFY_16_USAGE: [u8; 16] =
    block16_usage(opcode::WRITE_AND_VERIFY_16, VERIFY_BYTE1);
const VERIFY_16_USAGE: [u8; 16] = block16_usage(opcode::VERIFY_16, VERIFY_BYTE1);
const PRE_FETCH_16_USAGE: [u8; 16] = block16_usage(opcode::PRE_FETCH_16, IMMED_BYTE1);
const SYNCHRONIZE_CACHE_16_USAGE: [u8; 16] =
    block16_usage(opcode::SYNCHRONIZE_CACHE_16, IMMED_BYTE1);
const READ_12_USAGE: [u8; 12] = block12_usage(opcode::READ_12, RW_BYTE1);
const WRITE_12_USAGE: [u8; 12] = block12_usage(opcode::WRITE_12, RW_BYTE1);
const WRITE_AND_VERIFY_12_USAGE: [u8; 12] =
    block12_usage(opcode::WRITE_AND_VERIFY_12, VERIFY_BYTE1);
const VERIFY_12_USAGE: [u8; 12] = block12_usage(opcode::VERIFY_12, VERIFY_BYTE1);
const WRITE_SAME_16_USAGE: [u8; 16] = block16_usage(opcode::WRITE_SAME_16, WRITE_SAME_16_BYTE1);

/// Looks up a supported command by operation code and, for opcodes with service actions, the
/// service action.
pub fn supported_command(opcode: u8, service_action: Option<u16>) -> Option<&'static CommandInfo> {
    SUPPORTED_COMMANDS.iter().find(|c| {
        c.opcode == opcode && (c.service_action.is_none() || c.service_action == service_action)
    })
}

/// Whether an operation code has service actions (its commands are told apart by a SERVICE
/// ACTION field).
pub fn has_service_actions(opcode: u8) -> bool {
    SUPPORTED_COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// Reads a big-endian field of `len` bytes at `start` (of a CDB or a parameter list); 0 when out
/// of the slice (never reached after the length check in [`parse`]).
pub(crate) fn be(cdb: &[u8], start: usize, len: usize) -> u64 {
    cdb.get(start..start + len)
        .map(|b| b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        .unwrap_or(0)
}

/// Reads one CDB byte; 0 when out of the slice.
fn byte(cdb: &[u8], i: usize) -> u8 {
    cdb.get(i).copied().unwrap_or(0)
}

/// Narrows a field read with [`be`] of at most 4 bytes.
fn be32(cdb: &[u8], start: usize, len: usize) -> u32 {
    u32::try_from(be(cdb, start, len)).unwrap_or(u32::MAX)
}

/// Parses and field-checks a CDB. `cdb` may be longer than the command (iSCSI pads to 16 bytes);
/// only the length implied by the operation code is read.
///
/// Errors are the sense data to return with CHECK CONDITION: INVALID COMMAND OPERATION CODE for
/// anything unsupported, INVALID FIELD IN CDB (with a field pointer) for bad fields.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    let Some(&op) = cdb.first() else {
        return Err(Sense::invalid_field_in_cdb_unspecified());
    };
    let Some(len) = cdb_length(op) else {
        return Err(Sense::invalid_opcode());
    };
    if !is_supported_opcode(op, cdb) {
        // PERSISTENT RESERVE IN/OUT and the copy commands with a service action we lack:
        // INVALID FIELD IN CDB on the SERVICE ACTION field (SPC-4 4.3.5.5), which initiators
        // tell from "not implemented".
        if matches!(
            op,
            opcode::PERSISTENT_RESERVE_IN
                | opcode::PERSISTENT_RESERVE_OUT
                | opcode::EXTENDED_COPY
                | opcode::RECEIVE_COPY_RESULTS
                | opcode::SANITIZE
        ) {
            return Err(Sense::invalid_field_in_cdb(1, Some(4)));
        }
        return Err(Sense::invalid_opcode());
    }
    let Some(cdb) = cdb.get(..len) else {
        return Err(Sense::invalid_field_in_cdb_unspecified());
    };
    check_control(cdb)?;
    parse_fields(op, cdb)
}

/// Whether the operation code (and service action, read leniently) is in the table.
fn is_supported_opcode(op: u8, cdb: &[u8]) -> bool {
    let sa = has_service_actions(op).then(|| u16::from(byte(cdb, 1) & 0x1F));
    supported_command(op, sa).is_some()
}

/// CONTROL byte (SAM-5 5.2): NACA must be zero since INQUIRY reports NormACA=0.
fn check_control(cdb: &[u8]) -> Result<(), Sense> {
    let last = cdb.len() - 1;
    if byte(cdb, last) & 0x04 != 0 {
        return Err(Sense::invalid_field_in_cdb(last as u16, Some(2)));
    }
    Ok(())
}

/// Per-opcode field decoding, after the opcode and length are known good.
fn parse_fields(op: u8, cdb: &[u8]) -> Result<Command, Sense> {
    use opcode::*;
    match op {
        TEST_UNIT_READY => Ok(Command::TestUnitReady),
        REQUEST_SENSE => Ok(Command::RequestSense {
            desc: byte(cdb, 1) & 0x01 != 0,
            alloc_len: u32::from(byte(cdb, 4)),
        }),
        INQUIRY => parse_inquiry(cdb),
        RESERVE_6 => Ok(Command::Reserve6),
        PERSISTENT_RESERVE_IN => Ok(Command::PersistentReserveIn {
            action: byte(cdb, 1) & 0x1F,
            alloc_len: be32(cdb, 7, 2),
        }),
        PERSISTENT_RESERVE_OUT => Ok(Command::PersistentReserveOut {
            action: byte(cdb, 1) & 0x1F,
            scope_type: byte(cdb, 2),
            param_len: be32(cdb, 5, 4),
        }),
        RELEASE_6 => Ok(Command::Release6),
        EXTENDED_COPY => Ok(Command::ExtendedCopy {
            param_len: be32(cdb, 10, 4),
        }),
        SANITIZE => parse_sanitize(cdb),
        RECEIVE_COPY_RESULTS => Ok(Command::ReceiveCopyResults {
            action: byte(cdb, 1) & 0x1F,
            list_id: byte(cdb, 2),
            alloc_len: be32(cdb, 10, 4),
        }),
        MODE_SENSE_6 | MODE_SENSE_10 => parse_mode_sense(cdb, op == MODE_SENSE_10),
        MODE_SELECT_6 | MODE_SELECT_10 => parse_mode_select(cdb, op == MODE_SELECT_10),
        START_STOP_UNIT => Ok(Command::StartStopUnit {
            immed: byte(cdb, 1) & 0x01 != 0,
            power_condition: byte(cdb, 4) >> 4,
            loej: byte(cdb, 4) & 0x02 != 0,
            start: byte(cdb, 4) & 0x01 != 0,
        }),
        PREVENT_ALLOW_MEDIUM_REMOVAL => parse_prevent_allow(cdb),
        READ_CAPACITY_10 => parse_read_capacity10(cdb),
        READ_DEFECT_DATA_10 => parse_read_defect_data(byte(cdb, 2), be32(cdb, 7, 2), false, 2),
        READ_DEFECT_DATA_12 => parse_read_defect_data(byte(cdb, 1), be32(cdb, 6, 4), true, 1),
        SERVICE_ACTION_IN_16 if u16::from(byte(cdb, 1) & 0x1F) == SA_GET_LBA_STATUS => {
            Ok(Command::GetLbaStatus {
                lba: be(cdb, 2, 8),
                alloc_len: be32(cdb, 10, 4),
            })
        }
        SERVICE_ACTION_IN_16 => parse_read_capacity16(cdb),
        READ_6 => Ok(Command::Read(rw6(cdb))),
        WRITE_6 => Ok(Command::Write(rw6(cdb))),
        READ_10 | READ_12 | READ_16 => Ok(Command::Read(rw_protected(cdb)?)),
        WRITE_10 | WRITE_12 | WRITE_16 => Ok(Command::Write(rw_protected(cdb)?)),
        WRITE_ATOMIC_16 => parse_write_atomic(cdb),
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            let (io, compare) = verify_fields(cdb)?;
            Ok(Command::Verify { io, compare })
        }
        WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => {
            let (io, compare) = verify_fields(cdb)?;
            Ok(Command::WriteAndVerify { io, compare })
        }
        PRE_FETCH_10 | PRE_FETCH_16 => Ok(Command::PreFetch {
            io: block_fields(cdb),
            immed: byte(cdb, 1) & 0x02 != 0,
        }),
        SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => Ok(Command::SynchronizeCache {
            io: block_fields(cdb),
            immed: byte(cdb, 1) & 0x02 != 0,
        }),
        UNMAP => parse_unmap(cdb),
        WRITE_SAME_10 | WRITE_SAME_16 => parse_write_same(cdb),
        COMPARE_AND_WRITE => parse_compare_and_write(cdb),
        ORWRITE_16 => {
            check_protect(cdb)?;
            Ok(Command::OrWrite(block_fields(cdb)))
        }
        REPORT_LUNS => parse_report_luns(cdb),
        MAINTENANCE_IN if u16::from(byte(cdb, 1) & 0x1F) == SA_REPORT_TARGET_PORT_GROUPS => {
            parse_rtpg(cdb)
        }
        MAINTENANCE_IN => parse_rsoc(cdb),
        _ => Err(Sense::invalid_opcode()),
    }
}

/// INQUIRY (SPC-4 6.6.1): CMDDT is obsolete and must be zero; EVPD=0 requires PAGE CODE 0.
fn parse_inquiry(cdb: &[u8]) -> Result<Command, Sense> {
    let b1 = byte(cdb, 1);
    if b1 & 0x02 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(1)));
    }
    let evpd = b1 & 0x01 != 0;
    let page_code = byte(cdb, 2);
    if !evpd && page_code != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    Ok(Command::Inquiry {
        evpd,
        page_code,
        alloc_len: be32(cdb, 3, 2),
    })
}

/// MODE SENSE (6) / (10) (SPC-4 6.11.1, 6.12).
fn parse_mode_sense(cdb: &[u8], ten: bool) -> Result<Command, Sense> {
    let b1 = byte(cdb, 1);
    let b2 = byte(cdb, 2);
    let pc = match b2 >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => PageControl::Saved,
    };
    let alloc_len = if ten {
        be32(cdb, 7, 2)
    } else {
        u32::from(byte(cdb, 4))
    };
    Ok(Command::ModeSense(ModeSense {
        ten,
        dbd: b1 & 0x08 != 0,
        llbaa: ten && b1 & 0x10 != 0,
        pc,
        page_code: b2 & 0x3F,
        subpage_code: byte(cdb, 3),
        alloc_len,
    }))
}

/// MODE SELECT (6) / (10) (SPC-4 6.9.1): PF=0 (vendor-specific pages) and SP=1 (save pages)
/// are not supported.
fn parse_mode_select(cdb: &[u8], ten: bool) -> Result<Command, Sense> {
    let b1 = byte(cdb, 1);
    if b1 & 0x10 == 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if b1 & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    let param_len = if ten {
        be32(cdb, 7, 2)
    } else {
        u32::from(byte(cdb, 4))
    };
    Ok(Command::ModeSelect(ModeSelect { ten, param_len }))
}

/// PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.5): PREVENT 10b/11b are obsolete.
fn parse_prevent_allow(cdb: &[u8]) -> Result<Command, Sense> {
    match byte(cdb, 4) & 0x03 {
        0 => Ok(Command::PreventAllowMediumRemoval { prevent: false }),
        1 => Ok(Command::PreventAllowMediumRemoval { prevent: true }),
        _ => Err(Sense::invalid_field_in_cdb(4, Some(1))),
    }
}

/// READ DEFECT DATA (10)/(12): `flags` is the byte (at `at`) holding REQ_PLIST, REQ_GLIST and
/// the DEFECT LIST FORMAT; format 111b is reserved.
fn parse_read_defect_data(
    flags: u8,
    alloc_len: u32,
    twelve: bool,
    at: u16,
) -> Result<Command, Sense> {
    let format = flags & 0x07;
    if format == 0x07 {
        return Err(Sense::invalid_field_in_cdb(at, Some(2)));
    }
    Ok(Command::ReadDefectData {
        twelve,
        plist: flags & 0x10 != 0,
        glist: flags & 0x08 != 0,
        format,
        alloc_len,
    })
}

/// SANITIZE (SBC-4 5.30.1): the reserved bit of byte 1 and reserved bytes 2..=6 must be zero,
/// and neither implemented service action takes a parameter list.
fn parse_sanitize(cdb: &[u8]) -> Result<Command, Sense> {
    if byte(cdb, 1) & 0x40 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(6)));
    }
    if let Some(i) = (2..=6).find(|&i| byte(cdb, i) != 0) {
        return Err(Sense::invalid_field_in_cdb(i as u16, None));
    }
    if be(cdb, 7, 2) != 0 {
        return Err(Sense::invalid_field_in_cdb(7, None));
    }
    Ok(Command::Sanitize {
        action: u16::from(byte(cdb, 1) & 0x1F),
        immed: byte(cdb, 1) & 0x80 != 0,
        ause: byte(cdb, 1) & 0x20 != 0,
    })
}

/// READ CAPACITY (10) (SBC-3 5.15.1): with PMI=0 the LBA field must be zero.
fn parse_read_capacity10(cdb: &[u8]) -> Result<Command, Sense> {
    let pmi = byte(cdb, 8) & 0x01 != 0;
    if !pmi && be(cdb, 2, 4) != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    Ok(Command::ReadCapacity10)
}

/// READ CAPACITY (16) (SBC-3 5.16.1): with PMI=0 the LBA field must be zero.
fn parse_read_capacity16(cdb: &[u8]) -> Result<Command, Sense> {
    let pmi = byte(cdb, 14) & 0x01 != 0;
    if !pmi && be(cdb, 2, 8) != 0 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    Ok(Command::ReadCapacity16 {
        alloc_len: be32(cdb, 10, 4),
    })
}

/// READ (6) / WRITE (6) (SBC-3 5.10, 5.32): 21-bit LBA, TRANSFER LENGTH 0 means 256 blocks.
fn rw6(cdb: &[u8]) -> BlockIo {
    let lba = (u64::from(byte(cdb, 1) & 0x1F) << 16) | be(cdb, 2, 2);
    let blocks = match byte(cdb, 4) {
        0 => 256,
        n => u32::from(n),
    };
    BlockIo {
        lba,
        blocks,
        dpo: false,
        fua: false,
        length_field: 4,
    }
}

/// LBA and length fields of a 10/12/16-byte block command, with DPO and FUA from byte 1.
fn block_fields(cdb: &[u8]) -> BlockIo {
    let b1 = byte(cdb, 1);
    let (lba, blocks, length_field) = match cdb.len() {
        10 => (be(cdb, 2, 4), be32(cdb, 7, 2), 7),
        12 => (be(cdb, 2, 4), be32(cdb, 6, 4), 6),
        _ => (be(cdb, 2, 8), be32(cdb, 10, 4), 10),
    };
    BlockIo {
        lba,
        blocks,
        dpo: b1 & 0x10 != 0,
        fua: b1 & 0x08 != 0,
        length_field,
    }
}

/// RDPROTECT / WRPROTECT / VRPROTECT (byte 1 bits 7:5) must be zero: no protection information
/// (SBC-3 4.22.2 tables).
fn check_protect(cdb: &[u8]) -> Result<(), Sense> {
    if byte(cdb, 1) & 0xE0 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    Ok(())
}

/// WRITE ATOMIC (16)'s block fields: LBA in bytes 2-9, TRANSFER LENGTH in bytes 12-13 (bytes
/// 10-11 are the ATOMIC BOUNDARY).
fn write_atomic_fields(cdb: &[u8]) -> BlockIo {
    let b1 = byte(cdb, 1);
    BlockIo {
        lba: be(cdb, 2, 8),
        blocks: be32(cdb, 12, 2),
        dpo: b1 & 0x10 != 0,
        fua: b1 & 0x08 != 0,
        length_field: 12,
    }
}

/// WRITE ATOMIC (16) (SBC-4 5.48): no protection information, and ATOMIC BOUNDARY zero (the
/// Block Limits page reports no boundary support: MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC
/// BOUNDARY 0).
fn parse_write_atomic(cdb: &[u8]) -> Result<Command, Sense> {
    check_protect(cdb)?;
    if be(cdb, 10, 2) != 0 {
        return Err(Sense::invalid_field_in_cdb(10, None));
    }
    Ok(Command::WriteAtomic(write_atomic_fields(cdb)))
}

/// READ / WRITE (10/12/16): protection check, then the block fields. RARC and FUA_NV are
/// accepted and ignored.
fn rw_protected(cdb: &[u8]) -> Result<BlockIo, Sense> {
    check_protect(cdb)?;
    Ok(block_fields(cdb))
}

/// VERIFY / WRITE AND VERIFY (10/12/16): protection check and BYTCHK (byte 1 bits 2:1).
/// BYTCHK=00b medium verification, 01b compare; 10b is reserved and 11b (compare against one
/// block) is not implemented.
fn verify_fields(cdb: &[u8]) -> Result<(BlockIo, bool), Sense> {
    check_protect(cdb)?;
    let compare = match (byte(cdb, 1) >> 1) & 0x03 {
        0 => false,
        1 => true,
        _ => return Err(Sense::invalid_field_in_cdb(1, Some(2))),
    };
    let mut io = block_fields(cdb);
    io.fua = false; // bit 3 is reserved in VERIFY / WRITE AND VERIFY
    Ok((io, compare))
}

/// UNMAP (SBC-3 5.28.1): ANCHOR must be zero (ANC_SUP=0 in the Logical Block Provisioning VPD
/// page); GROUP NUMBER is ignored.
fn parse_unmap(cdb: &[u8]) -> Result<Command, Sense> {
    if byte(cdb, 1) & 0x01 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(0)));
    }
    Ok(Command::Unmap {
        param_len: be32(cdb, 7, 2),
    })
}

/// WRITE SAME (10) / (16) (SBC-3 5.45, 5.46): WRPROTECT must be zero (no protection
/// information), ANCHOR zero (ANC_SUP=0; with UNMAP=0 it is invalid anyway), the obsolete PBDATA
/// and LBDATA zero, and NUMBER OF LOGICAL BLOCKS non-zero (the Block Limits VPD page reports
/// WSNZ=1). NDOB is bit 0 of WRITE SAME (16) (SBC-4); the same bit is reserved in WRITE SAME (10).
/// The MAXIMUM WRITE SAME LENGTH and LBA range checks need the LU and are `sbc`'s.
fn parse_write_same(cdb: &[u8]) -> Result<Command, Sense> {
    check_protect(cdb)?;
    let b1 = byte(cdb, 1);
    if b1 & 0x10 != 0 {
        return Err(Sense::invalid_field_in_cdb(1, Some(4)));
    }
    if b1 & 0x06 != 0 {
        let bit = if b1 & 0x04 != 0 { 2 } else { 1 };
        return Err(Sense::invalid_field_in_cdb(1, Some(bit)));
    }
    let mut io = block_fields(cdb);
    io.dpo = false;
    io.fua = false;
    if io.blocks == 0 {
        return Err(Sense::invalid_field_in_cdb(io.length_field, None));
    }
    Ok(Command::WriteSame(WriteSame {
        io,
        unmap: b1 & 0x08 != 0,
        ndob: cdb.len() == 16 && b1 & 0x01 != 0,
    }))
}

/// COMPARE AND WRITE (SBC-3 5.2): WRPROTECT zero (no protection information); LBA in bytes
/// 2-9, NUMBER OF LOGICAL BLOCKS in byte 13.
fn parse_compare_and_write(cdb: &[u8]) -> Result<Command, Sense> {
    check_protect(cdb)?;
    let b1 = byte(cdb, 1);
    Ok(Command::CompareAndWrite(BlockIo {
        lba: be(cdb, 2, 8),
        blocks: u32::from(byte(cdb, 13)),
        dpo: b1 & 0x10 != 0,
        fua: b1 & 0x08 != 0,
        length_field: 13,
    }))
}

/// REPORT LUNS (SPC-4 6.33): SELECT REPORT 0, 1 or 2 and an ALLOCATION LENGTH of at least 16.
fn parse_report_luns(cdb: &[u8]) -> Result<Command, Sense> {
    let select_report = byte(cdb, 2);
    if select_report > 2 {
        return Err(Sense::invalid_field_in_cdb(2, None));
    }
    let alloc_len = be32(cdb, 6, 4);
    if alloc_len < 16 {
        return Err(Sense::invalid_field_in_cdb(6, None));
    }
    Ok(Command::ReportLuns {
        select_report,
        alloc_len,
    })
}

/// REPORT TARGET PORT GROUPS (SPC-4 6.36): PARAMETER DATA FORMAT 000b (length-only header) or
/// 001b (extended header).
fn parse_rtpg(cdb: &[u8]) -> Result<Command, Sense> {
    let format = byte(cdb, 1) >> 5;
    if format > 1 {
        return Err(Sense::invalid_field_in_cdb(1, Some(7)));
    }
    Ok(Command::ReportTargetPortGroups {
        extended: format == 1,
        alloc_len: be32(cdb, 6, 4),
    })
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35.1): REPORTING OPTIONS 000b - 011b.
fn parse_rsoc(cdb: &[u8]) -> Result<Command, Sense> {
    let b2 = byte(cdb, 2);
    let options = b2 & 0x07;
    if options > 3 {
        return Err(Sense::invalid_field_in_cdb(2, Some(2)));
    }
    Ok(Command::ReportSupportedOpcodes(RsocRequest {
        rctd: b2 & 0x80 != 0,
        options,
        opcode: byte(cdb, 3),
        service_action: be(cdb, 4, 2) as u16,
        alloc_len: be32(cdb, 6, 4),
    }))
}

/// The MAXIMUM TRANSFER LENGTH (SBC-3 6.5.3, 0 = no limit) and LBA range (SBC-3 4.5) checks of
/// a block command: the LBA must be on the medium, and LBA + length must not pass its end or
/// wrap. A zero length is valid but its LBA is still checked.
pub fn check_block_range(io: &BlockIo, num_blocks: u64, max_transfer: u32) -> Result<(), Sense> {
    if max_transfer != 0 && io.blocks > max_transfer {
        return Err(Sense::invalid_field_in_cdb(io.length_field, None));
    }
    let end = io.lba.checked_add(u64::from(io.blocks));
    match end {
        Some(end) if io.lba < num_blocks && end <= num_blocks => Ok(()),
        _ => Err(Sense::lba_out_of_range()),
    }
}

/// The number of Data-Out bytes the CDB asks the initiator to send: TRANSFER LENGTH × block
/// size for WRITE and WRITE AND VERIFY, VERIFY with BYTCHK=01b (one block for BYTCHK=11b), one
/// block for WRITE SAME (none for WRITE SAME (16) with NDOB), the PARAMETER LIST LENGTH for MODE
/// SELECT and UNMAP, 0 for everything else (including unsupported opcodes).
///
/// Read from the raw fields without validating them, so a command that [`parse`] later rejects
/// still tells how much data the initiator is about to send.
pub fn data_out_length(cdb: &[u8], block_size: u32) -> u64 {
    use opcode::*;
    let Some(&op) = cdb.first() else { return 0 };
    let Some(len) = cdb_length(op) else { return 0 };
    let Some(cdb) = cdb.get(..len) else { return 0 };
    let bs = u64::from(block_size);
    match op {
        WRITE_6 => u64::from(rw6(cdb).blocks) * bs,
        WRITE_10 | WRITE_12 | WRITE_16 | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12
        | WRITE_AND_VERIFY_16 => u64::from(block_fields(cdb).blocks) * bs,
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            let blocks = u64::from(block_fields(cdb).blocks);
            match (byte(cdb, 1) >> 1) & 0x03 {
                1 => blocks * bs,
                3 if blocks > 0 => bs,
                _ => 0,
            }
        }
        MODE_SELECT_6 => u64::from(byte(cdb, 4)),
        MODE_SELECT_10 | UNMAP | SANITIZE => be(cdb, 7, 2),
        PERSISTENT_RESERVE_OUT => be(cdb, 5, 4),
        EXTENDED_COPY => be(cdb, 10, 4),
        WRITE_SAME_10 => bs,
        WRITE_SAME_16 if byte(cdb, 1) & 0x01 != 0 => 0,
        WRITE_SAME_16 => bs,
        COMPARE_AND_WRITE => 2 * u64::from(byte(cdb, 13)) * bs,
        ORWRITE_16 => u64::from(block_fields(cdb).blocks) * bs,
        WRITE_ATOMIC_16 => u64::from(write_atomic_fields(cdb).blocks) * bs,
        _ => 0,
    }
}

/// Bytes a READ or WRITE (6/10/12/16, WRITE AND VERIFY, WRITE SAME) moves between the initiator
/// and the medium: its transfer length for a read, its Data-Out for the others; 0 otherwise.
pub fn transfer_bytes(cdb: &[u8], block_size: u32) -> u64 {
    use opcode::*;
    let Some(&op) = cdb.first() else { return 0 };
    let Some(cdb) = cdb_length(op).and_then(|len| cdb.get(..len)) else {
        return 0;
    };
    let bs = u64::from(block_size);
    match op {
        READ_6 => u64::from(rw6(cdb).blocks) * bs,
        READ_10 | READ_12 | READ_16 => u64::from(block_fields(cdb).blocks) * bs,
        _ => data_out_length(cdb, block_size),
    }
}

/// What a command costs under its LUN's QoS limits (`runtime::qos`), or `None` for one they
/// never hold: `Some(bytes moved to or from the medium)` for READ, WRITE, WRITE AND VERIFY,
/// ORWRITE, COMPARE AND WRITE (its blocks, once), WRITE SAME (every block it writes; none when it
/// unmaps) and EXTENDED COPY (one command: the bytes it copies are in its parameter list, which
/// has not arrived when the command is admitted).
pub fn qos_charge(cdb: &[u8], block_size: u32) -> Option<u64> {
    use opcode::*;
    let op = *cdb.first()?;
    let cdb = cdb.get(..cdb_length(op)?)?;
    let bs = u64::from(block_size);
    let blocks = || u64::from(block_fields(cdb).blocks) * bs;
    let charge = match op {
        READ_6 | READ_10 | READ_12 | READ_16 | WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16
        | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 | WRITE_ATOMIC_16 => {
            transfer_bytes(cdb, block_size)
        }
        WRITE_SAME_10 | WRITE_SAME_16 if byte(cdb, 1) & 0x08 != 0 => 0,
        WRITE_SAME_10 | WRITE_SAME_16 | ORWRITE_16 => blocks(),
        COMPARE_AND_WRITE => u64::from(byte(cdb, 13)) * bs,
        EXTENDED_COPY => 0,
        _ => return None,
    };
    Some(charge)
}

/// The statistics class of a CDB: READ (6/10/12/16), WRITE (6/10/12/16), WRITE AND VERIFY and
/// WRITE SAME, or other (UNMAP included).
pub fn op_class(cdb: &[u8]) -> OpClass {
    use opcode::*;
    match cdb.first().copied() {
        Some(READ_6 | READ_10 | READ_12 | READ_16) => OpClass::Read,
        Some(
            WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12
            | WRITE_AND_VERIFY_16 | WRITE_SAME_10 | WRITE_SAME_16 | WRITE_ATOMIC_16,
        ) => OpClass::Write,
        _ => OpClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::SenseKey;

    /// A 16-byte padded CDB with the given leading bytes.
    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    fn read10(lba: u32, blocks: u16, byte1: u8) -> [u8; 16] {
        let l = lba.to_be_bytes();
        let n = blocks.to_be_bytes();
        cdb(&[0x28, byte1, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0])
    }

    #[test]
    fn qos_charges_the_blocks_each_data_command_moves() {
        let bs = 512;
        let ws16 =
            |byte1: u8, blocks: u8| cdb(&[0x93, byte1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, blocks]);
        assert_eq!(qos_charge(&read10(0, 8, 0), bs), Some(4096));
        assert_eq!(
            qos_charge(&cdb(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 16, 0]), bs),
            Some(8192)
        );
        assert_eq!(
            qos_charge(&ws16(0, 64), bs),
            Some(64 * 512),
            "every block written"
        );
        assert_eq!(
            qos_charge(&ws16(0x08, 64), bs),
            Some(0),
            "UNMAP: a command, no bytes"
        );
        let caw = cdb(&[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]);
        assert_eq!(
            qos_charge(&caw, bs),
            Some(4 * 512),
            "its blocks once, not its Data-Out"
        );
        let orwrite = cdb(&[0x8B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8]);
        assert_eq!(qos_charge(&orwrite, bs), Some(8 * 512));
        let xcopy = cdb(&[0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64]);
        assert_eq!(qos_charge(&xcopy, bs), Some(0));
        for other in [cdb(&[0x12, 0, 0, 0, 36]), cdb(&[0x35]), cdb(&[0x42])] {
            assert_eq!(qos_charge(&other, bs), None, "{:#x}", other[0]);
        }
    }

    #[test]
    fn cdb_length_by_group() {
        assert_eq!(cdb_length(0x00), Some(6));
        assert_eq!(cdb_length(0x28), Some(10));
        assert_eq!(cdb_length(0x5A), Some(10));
        assert_eq!(cdb_length(0x7F), None);
        assert_eq!(cdb_length(0x88), Some(16));
        assert_eq!(cdb_length(0xA0), Some(12));
        assert_eq!(cdb_length(0xC0), None);
    }

    #[test]
    fn parse_read10_fields() {
        let c = parse(&read10(0x0102_0304, 8, 0x18)).unwrap();
        assert_eq!(
            c,
            Command::Read(BlockIo {
                lba: 0x0102_0304,
                blocks: 8,
                dpo: true,
                fua: true,
                length_field: 7
            })
        );
    }

    #[test]
    fn parse_read6_zero_length_means_256() {
        let c = parse(&cdb(&[0x08, 0x1F, 0xFF, 0xFE, 0, 0])).unwrap();
        assert_eq!(
            c,
            Command::Read(BlockIo {
                lba: 0x1F_FFFE,
                blocks: 256,
                dpo: false,
                fua: false,
                length_field: 4
            })
        );
        let Command::Write(io) = parse(&cdb(&[0x0A, 0, 0, 1, 5, 0])).unwrap() else {
            panic!()
        };
        assert_eq!((io.lba, io.blocks), (1, 5));
    }

    #[test]
    fn parse_read12_read16_write16_fields() {
        let Command::Read(io) = parse(&cdb(&[0xA8, 0, 0, 0, 0, 9, 0, 0, 1, 0, 0, 0])).unwrap()
        else {
            panic!()
        };
        assert_eq!((io.lba, io.blocks, io.length_field), (9, 256, 6));
        let c = cdb(&[0x88, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 2, 0, 0]);
        let Command::Read(io) = parse(&c).unwrap() else {
            panic!()
        };
        assert_eq!(
            (io.lba, io.blocks, io.fua, io.length_field),
            (0x0102_0304_0506_0708, 2, true, 10)
        );
        let c = cdb(&[0x8A, 0x02, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0]);
        let Command::Write(io) = parse(&c).unwrap() else {
            panic!()
        };
        assert_eq!((io.lba, io.blocks, io.fua), (1, 1, false)); // FUA_NV accepted
    }

    #[test]
    fn protect_fields_rejected() {
        for op in [
            0x28u8, 0xA8, 0x88, 0x2A, 0xAA, 0x8A, 0x2F, 0xAF, 0x8F, 0x2E, 0xAE, 0x8E, 0x41, 0x93,
        ] {
            for p in 1..8u8 {
                let err = parse(&cdb(&[op, p << 5])).unwrap_err();
                assert_eq!(
                    err,
                    Sense::invalid_field_in_cdb(1, Some(7)),
                    "opcode {op:#x}"
                );
            }
        }
    }

    #[test]
    fn naca_rejected_at_real_cdb_end() {
        assert_eq!(
            parse(&cdb(&[0x00, 0, 0, 0, 0, 0x04])).unwrap_err(),
            Sense::invalid_field_in_cdb(5, Some(2))
        );
        let mut c = read10(0, 1, 0);
        c[9] = 0x04;
        assert_eq!(
            parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb(9, Some(2))
        );
        // Padding bytes past the real length are never read.
        let mut c = read10(0, 1, 0);
        c[15] = 0xFF;
        assert!(parse(&c).is_ok());
    }

    #[test]
    fn unsupported_opcodes_rejected() {
        for op in [0x8Cu8, 0x5D, 0x5C, 0x56, 0x57, 0x38, 0x4C, 0x7F, 0xFF] {
            assert_eq!(
                parse(&cdb(&[op])).unwrap_err(),
                Sense::invalid_opcode(),
                "opcode {op:#x}"
            );
        }
        // READ LONG (16) (9Eh/11h) and MAINTENANCE IN / REPORT IDENTIFYING INFORMATION (05h).
        assert_eq!(
            parse(&cdb(&[0x9E, 0x11])).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(
            parse(&cdb(&[0xA3, 0x05])).unwrap_err(),
            Sense::invalid_opcode()
        );
        assert_eq!(
            parse(&cdb(&[0xA3, 0x2A, 0, 0, 0, 0, 0, 0, 1, 0])),
            Ok(Command::ReportTargetPortGroups {
                extended: true,
                alloc_len: 256
            })
        );
        assert_eq!(
            parse(&cdb(&[0xA3, 0x4A])).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(7)),
            "parameter data format 010b"
        );
    }

    #[test]
    fn short_or_empty_cdb_gives_sense_not_panic() {
        assert_eq!(
            parse(&[]).unwrap_err(),
            Sense::invalid_field_in_cdb_unspecified()
        );
        assert_eq!(
            parse(&[0x28, 0, 0]).unwrap_err(),
            Sense::invalid_field_in_cdb_unspecified()
        );
        assert_eq!(parse(&[0x9E]).unwrap_err(), Sense::invalid_opcode()); // SA unreadable
        for len in 0..16 {
            for op in 0..=255u8 {
                let mut c = vec![0xFFu8; len];
                if let Some(b) = c.first_mut() {
                    *b = op;
                }
                let _ = parse(&c);
                let _ = data_out_length(&c, 512);
                let _ = op_class(&c);
            }
        }
    }

    #[test]
    fn inquiry_field_checks() {
        assert_eq!(
            parse(&cdb(&[0x12, 0, 0, 0x01, 0x00, 0])).unwrap(),
            Command::Inquiry {
                evpd: false,
                page_code: 0,
                alloc_len: 256
            }
        );
        assert_eq!(
            parse(&cdb(&[0x12, 0, 1, 0, 255, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(2, None)
        );
        assert_eq!(
            parse(&cdb(&[0x12, 0x02, 0, 0, 255, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(1))
        );
        assert_eq!(
            parse(&cdb(&[0x12, 1, 0x83, 0, 255, 0])).unwrap(),
            Command::Inquiry {
                evpd: true,
                page_code: 0x83,
                alloc_len: 255
            }
        );
    }

    #[test]
    fn mode_select_pf_sp_checks() {
        assert_eq!(
            parse(&cdb(&[0x15, 0x00, 0, 0, 24, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(4))
        );
        assert_eq!(
            parse(&cdb(&[0x15, 0x11, 0, 0, 24, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(0))
        );
        assert_eq!(
            parse(&cdb(&[0x55, 0x10, 0, 0, 0, 0, 0, 0x01, 0x02, 0])).unwrap(),
            Command::ModeSelect(ModeSelect {
                ten: true,
                param_len: 0x102
            })
        );
    }

    #[test]
    fn mode_sense_fields() {
        let Command::ModeSense(m) = parse(&cdb(&[0x1A, 0x08, 0xFF, 0x00, 0xC0, 0])).unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.ten, m.dbd, m.llbaa, m.pc, m.page_code, m.alloc_len),
            (false, true, false, PageControl::Saved, 0x3F, 0xC0)
        );
        let Command::ModeSense(m) = parse(&cdb(&[0x5A, 0x10, 0x48, 0, 0, 0, 0, 1, 0, 0])).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (m.ten, m.llbaa, m.pc, m.page_code, m.alloc_len),
            (true, true, PageControl::Changeable, 0x08, 256)
        );
    }

    #[test]
    fn compare_and_write_fields() {
        let mut c = cdb(&[0x89, 0x08]);
        c[2..10].copy_from_slice(&0x1234u64.to_be_bytes());
        c[13] = 3;
        let Command::CompareAndWrite(io) = parse(&c).unwrap() else {
            panic!("{:?}", parse(&c))
        };
        assert_eq!(
            (io.lba, io.blocks, io.fua, io.length_field),
            (0x1234, 3, true, 13)
        );
        assert_eq!(data_out_length(&c, 512), 3 * 1024);
        assert_eq!(op_class(&c), OpClass::Other);
        // WRPROTECT: no protection information.
        c[1] = 0x20;
        assert_eq!(
            parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(7))
        );
    }

    #[test]
    fn verify_bytchk_values() {
        let Command::Verify { compare, .. } = parse(&cdb(&[0x2F, 0x00])).unwrap() else {
            panic!()
        };
        assert!(!compare);
        let Command::Verify { compare, .. } = parse(&cdb(&[0x2F, 0x02])).unwrap() else {
            panic!()
        };
        assert!(compare);
        for b in [0x04u8, 0x06] {
            assert_eq!(
                parse(&cdb(&[0x2F, b])).unwrap_err(),
                Sense::invalid_field_in_cdb(1, Some(2))
            );
            assert_eq!(
                parse(&cdb(&[0x8E, b])).unwrap_err(),
                Sense::invalid_field_in_cdb(1, Some(2))
            );
        }
        let Command::WriteAndVerify { io, compare } =
            parse(&cdb(&[0xAE, 0x12, 0, 0, 0, 3, 0, 0, 0, 4])).unwrap()
        else {
            panic!()
        };
        assert!(compare && io.dpo && !io.fua);
        assert_eq!((io.lba, io.blocks), (3, 4));
    }

    #[test]
    fn prefetch_and_sync_cache_fields() {
        let c = parse(&cdb(&[0x34, 0x02, 0, 0, 0, 5, 0x03, 0, 7, 0])).unwrap();
        assert_eq!(
            c,
            Command::PreFetch {
                io: BlockIo {
                    lba: 5,
                    blocks: 7,
                    dpo: false,
                    fua: false,
                    length_field: 7
                },
                immed: true
            }
        );
        let c = parse(&cdb(&[
            0x91, 0x00, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
        ]))
        .unwrap();
        let Command::SynchronizeCache { io, immed } = c else {
            panic!()
        };
        assert_eq!((io.lba, io.blocks, immed), (1, 0, false));
    }

    #[test]
    fn read_capacity_checks() {
        assert_eq!(parse(&cdb(&[0x25])).unwrap(), Command::ReadCapacity10);
        assert_eq!(
            parse(&cdb(&[0x37, 0, 0x1D, 0, 0, 0, 0, 0, 32])).unwrap(),
            Command::ReadDefectData {
                twelve: false,
                plist: true,
                glist: true,
                format: 5,
                alloc_len: 32
            }
        );
        assert_eq!(
            parse(&cdb(&[0xB7, 0x08, 0, 0, 0, 0, 0, 1, 0, 0])).unwrap(),
            Command::ReadDefectData {
                twelve: true,
                plist: false,
                glist: true,
                format: 0,
                alloc_len: 0x10000
            }
        );
        assert!(
            parse(&cdb(&[0x37, 0, 0x07, 0, 0, 0, 0, 0, 32])).is_err(),
            "format 111b"
        );
        assert_eq!(
            parse(&cdb(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(2, None)
        );
        assert_eq!(
            parse(&cdb(&[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0])).unwrap(),
            Command::ReadCapacity10
        );
        let c = cdb(&[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        assert_eq!(
            parse(&c).unwrap(),
            Command::ReadCapacity16 { alloc_len: 32 }
        );
        let c = cdb(&[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 32, 0, 0]);
        assert_eq!(parse(&c).unwrap_err(), Sense::invalid_field_in_cdb(2, None));
    }

    #[test]
    fn report_luns_checks() {
        let ok = cdb(&[0xA0, 0, 2, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
        assert_eq!(
            parse(&ok).unwrap(),
            Command::ReportLuns {
                select_report: 2,
                alloc_len: 16
            }
        );
        let bad_select = cdb(&[0xA0, 0, 3, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
        assert_eq!(
            parse(&bad_select).unwrap_err(),
            Sense::invalid_field_in_cdb(2, None)
        );
        let short = cdb(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]);
        assert_eq!(
            parse(&short).unwrap_err(),
            Sense::invalid_field_in_cdb(6, None)
        );
    }

    #[test]
    fn prevent_allow_and_start_stop() {
        assert_eq!(
            parse(&cdb(&[0x1E, 0, 0, 0, 1, 0])).unwrap(),
            Command::PreventAllowMediumRemoval { prevent: true }
        );
        assert_eq!(
            parse(&cdb(&[0x1E, 0, 0, 0, 2, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(4, Some(1))
        );
        assert_eq!(
            parse(&cdb(&[0x1B, 1, 0, 0, 0x13, 0])).unwrap(),
            Command::StartStopUnit {
                immed: true,
                power_condition: 1,
                loej: true,
                start: true
            }
        );
    }

    #[test]
    fn rsoc_options_checked() {
        let c = cdb(&[0xA3, 0x0C, 0x81, 0x28, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            parse(&c).unwrap(),
            Command::ReportSupportedOpcodes(RsocRequest {
                rctd: true,
                options: 1,
                opcode: 0x28,
                service_action: 0,
                alloc_len: 256
            })
        );
        let c = cdb(&[0xA3, 0x0C, 0x04, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(
            parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb(2, Some(2))
        );
    }

    #[test]
    fn block_range_checks() {
        let io = |lba, blocks| BlockIo {
            lba,
            blocks,
            dpo: false,
            fua: false,
            length_field: 7,
        };
        assert!(check_block_range(&io(0, 0), 100, 0).is_ok());
        assert!(check_block_range(&io(99, 1), 100, 0).is_ok());
        assert!(check_block_range(&io(0, 100), 100, 0).is_ok());
        assert_eq!(
            check_block_range(&io(99, 2), 100, 0),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            check_block_range(&io(100, 0), 100, 0),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            check_block_range(&io(101, 0), 100, 0),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            check_block_range(&io(u64::MAX, 1), 100, 0),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            check_block_range(&io(u64::MAX, 0), u64::MAX, 0),
            Err(Sense::lba_out_of_range())
        );
        assert_eq!(
            check_block_range(&io(0, 9), 100, 8),
            Err(Sense::invalid_field_in_cdb(7, None))
        );
        assert!(check_block_range(&io(0, 8), 100, 8).is_ok());
    }

    #[test]
    fn data_out_length_per_command() {
        assert_eq!(data_out_length(&read10(0, 4, 0), 512), 0);
        assert_eq!(
            data_out_length(&cdb(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 4, 0]), 512),
            2048
        );
        assert_eq!(
            data_out_length(&cdb(&[0x0A, 0, 0, 0, 0, 0]), 512),
            256 * 512
        );
        assert_eq!(
            data_out_length(&cdb(&[0xAA, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]), 4096),
            3 * 4096
        );
        assert_eq!(
            data_out_length(
                &cdb(&[0x8A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
                512
            ),
            65536 * 512
        );
        assert_eq!(
            data_out_length(&cdb(&[0x2E, 0, 0, 0, 0, 0, 0, 0, 2, 0]), 512),
            1024
        );
        assert_eq!(
            data_out_length(&cdb(&[0x2F, 0x00, 0, 0, 0, 0, 0, 0, 2, 0]), 512),
            0
        );
        assert_eq!(
            data_out_length(&cdb(&[0x2F, 0x02, 0, 0, 0, 0, 0, 0, 2, 0]), 512),
            1024
        );
        assert_eq!(
            data_out_length(&cdb(&[0x2F, 0x06, 0, 0, 0, 0, 0, 0, 2, 0]), 512),
            512
        );
        assert_eq!(data_out_length(&cdb(&[0x15, 0x10, 0, 0, 24, 0]), 512), 24);
        assert_eq!(
            data_out_length(&cdb(&[0x55, 0x10, 0, 0, 0, 0, 0, 1, 0, 0]), 512),
            256
        );
        // Raw fields: still reported when the CDB is invalid (WRPROTECT != 0).
        assert_eq!(
            data_out_length(&cdb(&[0x2A, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]), 512),
            512
        );
        assert_eq!(data_out_length(&cdb(&[0x42]), 512), 0);
        assert_eq!(data_out_length(&[], 512), 0);
        // UNMAP: the parameter list length.
        assert_eq!(
            data_out_length(&cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0x01, 0x18, 0]), 512),
            0x118
        );
        // WRITE SAME: one block whatever the NUMBER OF LOGICAL BLOCKS (even an invalid 0) ...
        assert_eq!(
            data_out_length(&cdb(&[0x41, 0x08, 0, 0, 0, 0, 0, 0x10, 0, 0]), 4096),
            4096
        );
        assert_eq!(data_out_length(&cdb(&[0x41]), 512), 512);
        let mut ws16 = cdb(&[0x93, 0x08]);
        ws16[13] = 9;
        assert_eq!(data_out_length(&ws16, 512), 512);
        // ... and none with NDOB.
        ws16[1] = 0x09;
        assert_eq!(data_out_length(&ws16, 512), 0);
        // GET LBA STATUS: Data-In only.
        assert_eq!(data_out_length(&cdb(&[0x9E, 0x12]), 512), 0);
    }

    #[test]
    fn op_class_per_command() {
        for op in [0x08u8, 0x28, 0xA8, 0x88] {
            assert_eq!(op_class(&[op]), OpClass::Read);
        }
        for op in [0x0Au8, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x41, 0x93] {
            assert_eq!(op_class(&[op]), OpClass::Write);
        }
        for op in [0x00u8, 0x12, 0x2F, 0x35, 0x9E, 0x42] {
            assert_eq!(op_class(&[op]), OpClass::Other);
        }
        assert_eq!(op_class(&[]), OpClass::Other);
    }

    /// A WRITE SAME (10) CDB.
    fn ws10(byte1: u8, lba: u32, blocks: u16) -> [u8; 16] {
        let l = lba.to_be_bytes();
        let n = blocks.to_be_bytes();
        cdb(&[0x41, byte1, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0])
    }

    /// A WRITE SAME (16) CDB.
    fn ws16(byte1: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut c = cdb(&[0x93, byte1]);
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn parse_write_same_fields() {
        let c = parse(&ws10(0x08, 0x0102_0304, 0x0506)).unwrap();
        assert_eq!(
            c,
            Command::WriteSame(WriteSame {
                io: BlockIo {
                    lba: 0x0102_0304,
                    blocks: 0x0506,
                    dpo: false,
                    fua: false,
                    length_field: 7
                },
                unmap: true,
                ndob: false
            })
        );
        let c = parse(&ws16(0x09, 0x0102_0304_0506_0708, 0x1_0000)).unwrap();
        assert_eq!(
            c,
            Command::WriteSame(WriteSame {
                io: BlockIo {
                    lba: 0x0102_0304_0506_0708,
                    blocks: 0x1_0000,
                    dpo: false,
                    fua: false,
                    length_field: 10
                },
                unmap: true,
                ndob: true
            })
        );
        // Bit 0 of WRITE SAME (10) is reserved: not NDOB, not evaluated.
        let Command::WriteSame(ws) = parse(&ws10(0x01, 0, 1)).unwrap() else {
            panic!()
        };
        assert!(!ws.ndob && !ws.unmap);
        // GROUP NUMBER is ignored.
        let mut c = ws10(0, 0, 1);
        c[6] = 0x1F;
        assert!(parse(&c).is_ok());
    }

    #[test]
    fn parse_write_same_errors() {
        for p in 1..8u8 {
            assert_eq!(
                parse(&ws10(p << 5, 0, 1)).unwrap_err(),
                Sense::invalid_field_in_cdb(1, Some(7))
            );
            assert_eq!(
                parse(&ws16(p << 5, 0, 1)).unwrap_err(),
                Sense::invalid_field_in_cdb(1, Some(7))
            );
        }
        // ANCHOR, with or without UNMAP (ANC_SUP=0).
        for b1 in [0x10u8, 0x18] {
            assert_eq!(
                parse(&ws10(b1, 0, 1)).unwrap_err(),
                Sense::invalid_field_in_cdb(1, Some(4))
            );
            assert_eq!(
                parse(&ws16(b1, 0, 1)).unwrap_err(),
                Sense::invalid_field_in_cdb(1, Some(4))
            );
        }
        // PBDATA / LBDATA (obsolete).
        assert_eq!(
            parse(&ws10(0x04, 0, 1)).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(2))
        );
        assert_eq!(
            parse(&ws16(0x02, 0, 1)).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(1))
        );
        // NUMBER OF LOGICAL BLOCKS 0 (WSNZ=1), whatever the LBA.
        assert_eq!(
            parse(&ws10(0, 0, 0)).unwrap_err(),
            Sense::invalid_field_in_cdb(7, None)
        );
        assert_eq!(
            parse(&ws10(0x08, u32::MAX, 0)).unwrap_err(),
            Sense::invalid_field_in_cdb(7, None)
        );
        assert_eq!(
            parse(&ws16(0x09, 0, 0)).unwrap_err(),
            Sense::invalid_field_in_cdb(10, None)
        );
        // NACA.
        let mut c = ws16(0, 0, 1);
        c[15] = 0x04;
        assert_eq!(
            parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb(15, Some(2))
        );
    }

    #[test]
    fn parse_unmap_fields_and_anchor() {
        assert_eq!(
            parse(&cdb(&[0x42, 0, 0, 0, 0, 0, 0x1F, 0x01, 0x02, 0])).unwrap(),
            Command::Unmap { param_len: 0x102 }
        );
        assert_eq!(
            parse(&cdb(&[0x42])).unwrap(),
            Command::Unmap { param_len: 0 }
        );
        assert_eq!(
            parse(&cdb(&[0x42, 0x01, 0, 0, 0, 0, 0, 0, 24, 0])).unwrap_err(),
            Sense::invalid_field_in_cdb(1, Some(0))
        );
        // Reserved bits of byte 1 are not evaluated.
        assert!(parse(&cdb(&[0x42, 0xFE, 0, 0, 0, 0, 0, 0, 24, 0])).is_ok());
    }

    #[test]
    fn parse_get_lba_status_fields() {
        let mut c = cdb(&[0x9E, 0x12]);
        c[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        c[10..14].copy_from_slice(&24u32.to_be_bytes());
        c[14] = 0x03; // REPORT TYPE (SBC-4): not evaluated
        assert_eq!(
            parse(&c).unwrap(),
            Command::GetLbaStatus {
                lba: 0x0102_0304_0506_0708,
                alloc_len: 24
            }
        );
        // Any allocation length, even 0, and any LBA: the range check needs the LU.
        c[2..10].copy_from_slice(&u64::MAX.to_be_bytes());
        c[10..14].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            parse(&c).unwrap(),
            Command::GetLbaStatus {
                lba: u64::MAX,
                alloc_len: 0
            }
        );
        // The service action selects the command; READ CAPACITY (16) is unchanged.
        assert_eq!(
            parse(&cdb(&[
                0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0
            ]))
            .unwrap(),
            Command::ReadCapacity16 { alloc_len: 32 }
        );
        c[15] = 0x04;
        assert_eq!(
            parse(&c).unwrap_err(),
            Sense::invalid_field_in_cdb(15, Some(2))
        );
    }

    #[test]
    fn thin_only_commands() {
        let thin_only: Vec<(u8, Option<u16>)> = SUPPORTED_COMMANDS
            .iter()
            .filter(|c| c.thin_only())
            .map(|c| (c.opcode, c.service_action))
            .collect();
        assert_eq!(
            thin_only,
            vec![(0x42, None), (0x48, Some(0x02)), (0x9E, Some(0x12))]
        );
    }

    #[test]
    fn supported_table_matches_parser_exactly() {
        for op in 0..=255u8 {
            let sas: Vec<u8> = if matches!(op, 0x9E | 0xA3 | 0x5E | 0x5F | 0x83 | 0x84 | 0x48) {
                (0..32).collect()
            } else {
                vec![0]
            };
            for sa in sas {
                let c = cdb(&[op, sa]);
                let refused = match parse(&c) {
                    Err(e) if e == Sense::invalid_opcode() => true,
                    // PERSISTENT RESERVE IN/OUT, the copy commands: an unsupported service action.
                    Err(e) => {
                        matches!(op, 0x5E | 0x5F | 0x83 | 0x84 | 0x48)
                            && e == Sense::invalid_field_in_cdb(1, Some(4))
                    }
                    Ok(_) => false,
                };
                let accepted = !refused;
                let listed =
                    supported_command(op, has_service_actions(op).then_some(u16::from(sa)))
                        .is_some();
                assert_eq!(accepted, listed, "opcode {op:#04x} sa {sa:#04x}");
            }
        }
    }

    #[test]
    fn supported_table_usage_data_is_consistent() {
        let mut last = None;
        for info in SUPPORTED_COMMANDS {
            assert_eq!(info.usage[0], info.opcode);
            assert_eq!(
                Some(info.usage.len()),
                cdb_length(info.opcode),
                "opcode {:#x}",
                info.opcode
            );
            if let Some(sa) = info.service_action {
                assert_eq!(u16::from(info.usage[1] & 0x1F), sa);
            }
            // The CONTROL byte: only NACA is evaluated.
            assert_eq!(info.usage[info.usage.len() - 1], 0x04);
            let key = (info.opcode, info.service_action);
            assert!(Some(key) > last, "table must be sorted");
            last = Some(key);
        }
        // DPO/FUA advertised for READ/WRITE, DPO for VERIFY / WRITE AND VERIFY.
        for op in [0x28u8, 0x2A, 0xA8, 0xAA, 0x88, 0x8A] {
            assert_eq!(supported_command(op, None).unwrap().usage[1] & 0x18, 0x18);
        }
        for op in [0x2Eu8, 0x2F, 0xAE, 0xAF, 0x8E, 0x8F] {
            assert_eq!(supported_command(op, None).unwrap().usage[1] & 0x10, 0x10);
        }
        assert_eq!(Sense::invalid_opcode().key, SenseKey::IllegalRequest);
    }
}
