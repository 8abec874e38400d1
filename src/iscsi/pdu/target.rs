//! Builders for the PDUs a target sends (RFC 7143 §11.4–§11.19): each returns a [`Bhs`] whose
//! DataSegmentLength is set; the caller appends the data segment (and digests) when sending.

use super::{Bhs, Opcode};

/// The sequence numbers every target PDU carries at bytes 24..36 (§11.4.6, §3.2.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seq {
    /// StatSN (only meaningful where the PDU carries status).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// Reserved tag value (§11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

fn with_seq(opcode: Opcode, itt: u32, seq: Seq) -> Bhs {
    let mut bhs = Bhs::new(opcode);
    bhs.0[1] = 0x80;
    bhs.set_itt(itt);
    bhs.set_u32(24, seq.stat_sn);
    bhs.set_u32(28, seq.exp_cmd_sn);
    bhs.set_u32(32, seq.max_cmd_sn);
    bhs
}

/// Residual reporting of a response (§11.4.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Residual {
    /// The command moved exactly the Expected Data Transfer Length.
    #[default]
    None,
    /// O bit: the command wanted this many bytes more than the EDTL allowed.
    Overflow(u32),
    /// U bit: the command moved this many bytes fewer than the EDTL.
    Underflow(u32),
}

impl Residual {
    /// Residual of a command that wanted `wanted` bytes against an EDTL of `edtl`.
    pub fn of(wanted: u64, edtl: u32) -> Residual {
        let edtl = u64::from(edtl);
        if wanted > edtl {
            Residual::Overflow(u32::try_from(wanted - edtl).unwrap_or(u32::MAX))
        } else if wanted < edtl {
            Residual::Underflow(u32::try_from(edtl - wanted).unwrap_or(u32::MAX))
        } else {
            Residual::None
        }
    }

    fn apply(self, bhs: &mut Bhs) {
        match self {
            Residual::None => {}
            Residual::Overflow(n) => {
                bhs.0[1] |= 0x04;
                bhs.set_u32(44, n);
            }
            Residual::Underflow(n) => {
                bhs.0[1] |= 0x02;
                bhs.set_u32(44, n);
            }
        }
    }
}

/// SCSI Response (§11.4). `data_len` is the length of the data segment (2-byte SenseLength plus
/// sense bytes, or 0).
pub fn scsi_response(
    itt: u32,
    seq: Seq,
    status: u8,
    residual: Residual,
    exp_data_sn: u32,
    data_len: u32,
) -> Bhs {
    let mut bhs = with_seq(Opcode::SCSI_RESPONSE, itt, seq);
    bhs.0[2] = 0x00; // Command Completed at Target
    bhs.0[3] = status;
    bhs.set_u32(36, exp_data_sn);
    residual.apply(&mut bhs);
    bhs.set_data_segment_len(data_len);
    bhs
}

/// SCSI Response with response code Target Failure (0x01) and no status (§11.4.3).
pub fn scsi_target_failure(itt: u32, seq: Seq) -> Bhs {
    let mut bhs = with_seq(Opcode::SCSI_RESPONSE, itt, seq);
    bhs.0[2] = 0x01;
    bhs
}

/// One SCSI Data-In PDU (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataIn {
    /// Initiator Task Tag.
    pub itt: u32,
    /// LUN.
    pub lun: u64,
    /// DataSN.
    pub data_sn: u32,
    /// Offset of this PDU's data.
    pub buffer_offset: u32,
    /// Data segment length.
    pub data_len: u32,
    /// F bit: last PDU of the sequence.
    pub final_bit: bool,
    /// Status phase collapsed into this PDU (S bit), with its status and residual.
    pub status: Option<(u8, Residual)>,
}

/// Builds a Data-In header. `seq.stat_sn` is only sent when the S bit is set.
pub fn data_in(d: DataIn, seq: Seq) -> Bhs {
    let mut bhs = with_seq(Opcode::SCSI_DATA_IN, d.itt, seq);
    bhs.0[1] = if d.final_bit { 0x80 } else { 0 };
    bhs.set_lun(d.lun);
    bhs.set_u32(20, super::target::RESERVED_TAG);
    bhs.set_u32(36, d.data_sn);
    bhs.set_u32(40, d.buffer_offset);
    bhs.set_data_segment_len(d.data_len);
    match d.status {
        Some((status, residual)) => {
            bhs.0[1] |= 0x01 | 0x80;
            bhs.0[3] = status;
            residual.apply(&mut bhs);
        }
        None => bhs.set_u32(24, 0),
    }
    bhs
}

/// Ready To Transfer (§11.8).
pub fn r2t(
    itt: u32,
    lun: u64,
    ttt: u32,
    seq: Seq,
    r2t_sn: u32,
    buffer_offset: u32,
    desired_len: u32,
) -> Bhs {
    let mut bhs = with_seq(Opcode::R2T, itt, seq);
    bhs.set_lun(lun);
    bhs.set_u32(20, ttt);
    bhs.set_u32(36, r2t_sn);
    bhs.set_u32(40, buffer_offset);
    bhs.set_u32(44, desired_len);
    bhs
}

/// NOP-In (§11.19): an answer to a NOP-Out (`itt` echoed, `ttt` reserved) or a target ping
/// (`itt` reserved, `ttt` ours).
pub fn nop_in(itt: u32, ttt: u32, lun: u64, seq: Seq, data_len: u32) -> Bhs {
    let mut bhs = with_seq(Opcode::NOP_IN, itt, seq);
    bhs.set_lun(lun);
    bhs.set_u32(20, ttt);
    bhs.set_data_segment_len(data_len);
    bhs
}

/// Task management response codes (§11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfResponse {
    /// 0: Function complete.
    FunctionComplete = 0,
    /// 1: Task does not exist.
    TaskDoesNotExist = 1,
    /// 2: LUN does not exist.
    LunDoesNotExist = 2,
    /// 3: Task still allegiant.
    TaskStillAllegiant = 3,
    /// 4: Task allegiance reassignment not supported.
    ReassignmentNotSupported = 4,
    /// 5: Task management function not supported.
    NotSupported = 5,
    /// 6: Function authorization failed.
    AuthorizationFailed = 6,
    /// 255: Function rejected.
    Rejected = 255,
}

/// SCSI Task Management Function Response (§11.6).
pub fn tmf_response(itt: u32, seq: Seq, response: TmfResponse) -> Bhs {
    let mut bhs = with_seq(Opcode::TASK_MGMT_RESPONSE, itt, seq);
    bhs.0[2] = response as u8;
    bhs
}

/// Login Response (§11.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginResponseHeader {
    /// T bit.
    pub transit: bool,
    /// C bit.
    pub cont: bool,
    /// Current stage.
    pub csg: u8,
    /// Next stage.
    pub nsg: u8,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID (echoed).
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator Task Tag (echoed).
    pub itt: u32,
    /// Status-Class.
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
    /// Data segment length.
    pub data_len: u32,
}

/// Builds a Login Response header.
pub fn login_response(h: LoginResponseHeader, seq: Seq) -> Bhs {
    let mut bhs = with_seq(Opcode::LOGIN_RESPONSE, h.itt, seq);
    let mut flags = ((h.csg & 3) << 2) | (h.nsg & 3);
    if h.transit {
        flags |= 0x80;
    }
    if h.cont {
        flags |= 0x40;
    }
    bhs.0[1] = flags;
    bhs.0[2] = h.version_max;
    bhs.0[3] = h.version_active;
    bhs.0[8..14].copy_from_slice(&h.isid);
    bhs.set_u16(14, h.tsih);
    bhs.0[36] = h.status_class;
    bhs.0[37] = h.status_detail;
    bhs.set_data_segment_len(h.data_len);
    bhs
}

/// Text Response (§11.11).
pub fn text_response(
    itt: u32,
    ttt: u32,
    final_bit: bool,
    cont: bool,
    seq: Seq,
    data_len: u32,
) -> Bhs {
    let mut bhs = with_seq(Opcode::TEXT_RESPONSE, itt, seq);
    bhs.0[1] = if final_bit { 0x80 } else { 0 } | if cont { 0x40 } else { 0 };
    bhs.set_u32(20, ttt);
    bhs.set_data_segment_len(data_len);
    bhs
}

/// Logout Response (§11.15). `response`: 0 closed successfully, 1 CID not found, 2 recovery not
/// supported, 3 cleanup failed.
pub fn logout_response(itt: u32, seq: Seq, response: u8, time2wait: u16, time2retain: u16) -> Bhs {
    let mut bhs = with_seq(Opcode::LOGOUT_RESPONSE, itt, seq);
    bhs.0[2] = response;
    bhs.set_u16(40, time2wait);
    bhs.set_u16(42, time2retain);
    bhs
}

/// Reject reasons (§11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// 0x02: Data (payload) digest error.
    DataDigestError = 0x02,
    /// 0x03: SNACK Reject.
    SnackReject = 0x03,
    /// 0x04: Protocol Error.
    ProtocolError = 0x04,
    /// 0x05: Command not supported.
    CommandNotSupported = 0x05,
    /// 0x06: Immediate command reject - too many immediate commands.
    ImmediateCommandReject = 0x06,
    /// 0x07: Task in progress.
    TaskInProgress = 0x07,
    /// 0x08: Invalid data ack.
    InvalidDataAck = 0x08,
    /// 0x09: Invalid PDU field.
    InvalidPduField = 0x09,
    /// 0x0a: Long operation reject - out of resources.
    LongOperationReject = 0x0a,
    /// 0x0c: Waiting for Logout.
    WaitingForLogout = 0x0c,
}

/// Reject (§11.17). The data segment is the rejected PDU's 48-byte header.
pub fn reject(reason: RejectReason, seq: Seq) -> Bhs {
    let mut bhs = with_seq(Opcode::REJECT, super::target::RESERVED_TAG, seq);
    bhs.0[2] = reason as u8;
    bhs.set_data_segment_len(super::BHS_LEN as u32);
    bhs
}

/// Asynchronous Message (§11.9), e.g. event 1 "target requests logout" or 4 "negotiation request".
pub fn async_message(lun: u64, seq: Seq, event: u8, params: [u16; 3]) -> Bhs {
    let mut bhs = with_seq(Opcode::ASYNC_MESSAGE, super::target::RESERVED_TAG, seq);
    bhs.set_lun(lun);
    bhs.0[36] = event;
    bhs.set_u16(38, params[0]);
    bhs.set_u16(40, params[1]);
    bhs.set_u16(42, params[2]);
    bhs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: Seq = Seq {
        stat_sn: 7,
        exp_cmd_sn: 8,
        max_cmd_sn: 40,
    };

    #[test]
    fn data_in_with_status_sets_s_and_f() {
        let bhs = data_in(
            DataIn {
                itt: 3,
                lun: 0,
                data_sn: 2,
                buffer_offset: 8192,
                data_len: 4096,
                final_bit: true,
                status: Some((0, Residual::Underflow(512))),
            },
            SEQ,
        );
        assert_eq!(bhs.opcode(), Opcode::SCSI_DATA_IN);
        assert_eq!(bhs.0[1], 0x80 | 0x02 | 0x01);
        assert_eq!(bhs.u32_at(24), 7);
        assert_eq!(bhs.u32_at(36), 2);
        assert_eq!(bhs.u32_at(40), 8192);
        assert_eq!(bhs.u32_at(44), 512);
        assert_eq!(bhs.data_segment_len(), 4096);
        assert_eq!(bhs.u32_at(20), RESERVED_TAG);
    }

    #[test]
    fn data_in_without_status_has_no_stat_sn() {
        let bhs = data_in(
            DataIn {
                itt: 3,
                lun: 0,
                data_sn: 0,
                buffer_offset: 0,
                data_len: 512,
                final_bit: false,
                status: None,
            },
            SEQ,
        );
        assert_eq!(bhs.0[1], 0);
        assert_eq!(bhs.u32_at(24), 0);
        assert_eq!(bhs.u32_at(28), 8);
    }

    #[test]
    fn scsi_response_overflow() {
        let bhs = scsi_response(9, SEQ, 2, Residual::Overflow(512), 0, 20);
        assert_eq!(bhs.0[1], 0x84);
        assert_eq!(bhs.0[3], 2);
        assert_eq!(bhs.u32_at(44), 512);
        assert_eq!(bhs.data_segment_len(), 20);
    }

    #[test]
    fn residual_of_compares_with_edtl() {
        assert_eq!(Residual::of(512, 0), Residual::Overflow(512));
        assert_eq!(Residual::of(512, 10000), Residual::Underflow(9488));
        assert_eq!(Residual::of(512, 512), Residual::None);
    }

    #[test]
    fn login_response_flags() {
        let bhs = login_response(
            LoginResponseHeader {
                transit: true,
                cont: false,
                csg: 1,
                nsg: 3,
                version_max: 0,
                version_active: 0,
                isid: [1, 2, 3, 4, 5, 6],
                tsih: 0x1234,
                itt: 1,
                status_class: 0,
                status_detail: 0,
                data_len: 10,
            },
            SEQ,
        );
        assert_eq!(bhs.0[1], 0x87);
        assert_eq!(bhs.u16_at(14), 0x1234);
        assert_eq!(&bhs.0[8..14], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn r2t_fields() {
        let bhs = r2t(1, 0, 0x20, SEQ, 3, 65536, 262144);
        assert_eq!(bhs.opcode(), Opcode::R2T);
        assert_eq!(bhs.0[1], 0x80);
        assert_eq!(
            (
                bhs.u32_at(20),
                bhs.u32_at(36),
                bhs.u32_at(40),
                bhs.u32_at(44)
            ),
            (0x20, 3, 65536, 262144)
        );
    }
}
