//! Typed views of the PDUs an initiator sends (RFC 7143 §11.3–§11.16), parsed from a [`Bhs`].
//!
//! Parsing checks only what the header alone can tell (reserved opcodes, the F bit where it is
//! mandatory, field ranges); the connection checks sequence numbers and state.

use super::{Bhs, Opcode};
use thiserror::Error;

/// Why a header could not be accepted; the connection answers with a Reject (§11.17.1).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PduError {
    /// The opcode is not one an initiator may send.
    #[error("unsupported initiator opcode {0:?}")]
    UnknownOpcode(Opcode),
    /// A field holds a value the RFC forbids.
    #[error("invalid field in {opcode:?}: {what}")]
    InvalidField {
        /// The PDU's opcode.
        opcode: Opcode,
        /// What is wrong.
        what: &'static str,
    },
}

/// Task attribute of a SCSI command (§11.3.1, SAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttribute {
    /// Untagged (treated as simple).
    Untagged,
    /// SIMPLE.
    Simple,
    /// ORDERED.
    Ordered,
    /// HEAD OF QUEUE.
    HeadOfQueue,
    /// ACA.
    Aca,
}

/// SCSI Command (§11.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiCommand {
    /// I bit.
    pub immediate: bool,
    /// F bit: no unsolicited Data-Out follows.
    pub final_bit: bool,
    /// R bit: data flows to the initiator.
    pub read: bool,
    /// W bit: data flows to the target.
    pub write: bool,
    /// ATTR.
    pub attr: TaskAttribute,
    /// LUN field, raw.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub expected_data_transfer_length: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The CDB (padded to 16 bytes; an extended CDB AHS is not supported).
    pub cdb: [u8; 16],
}

/// SCSI Data-Out (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOut {
    /// F bit: last PDU of this sequence.
    pub final_bit: bool,
    /// LUN field, raw.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff for unsolicited data).
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Offset of this PDU's data in the command's data.
    pub buffer_offset: u32,
    /// DataSegmentLength.
    pub data_len: u32,
}

/// NOP-Out (§11.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NopOut {
    /// I bit.
    pub immediate: bool,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag (0xffffffff when answering a target NOP-In).
    pub itt: u32,
    /// Target Transfer Tag (echoes a NOP-In's, or 0xffffffff).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// Task management functions (§11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfFunction {
    /// 1: ABORT TASK.
    AbortTask,
    /// 2: ABORT TASK SET.
    AbortTaskSet,
    /// 3: CLEAR ACA.
    ClearAca,
    /// 4: CLEAR TASK SET.
    ClearTaskSet,
    /// 5: LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// 6: TARGET WARM RESET.
    TargetWarmReset,
    /// 7: TARGET COLD RESET.
    TargetColdReset,
    /// 8: TASK REASSIGN.
    TaskReassign,
    /// Any other value.
    Unknown(u8),
}

impl TmfFunction {
    fn from_code(code: u8) -> Self {
        match code {
            1 => TmfFunction::AbortTask,
            2 => TmfFunction::AbortTaskSet,
            3 => TmfFunction::ClearAca,
            4 => TmfFunction::ClearTaskSet,
            5 => TmfFunction::LogicalUnitReset,
            6 => TmfFunction::TargetWarmReset,
            7 => TmfFunction::TargetColdReset,
            8 => TmfFunction::TaskReassign,
            other => TmfFunction::Unknown(other),
        }
    }
}

/// SCSI Task Management Function Request (§11.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmfRequest {
    /// I bit.
    pub immediate: bool,
    /// Function.
    pub function: TmfFunction,
    /// LUN field.
    pub lun: u64,
    /// Initiator Task Tag of this request.
    pub itt: u32,
    /// Referenced Task Tag (ABORT TASK).
    pub referenced_task_tag: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN (ABORT TASK).
    pub ref_cmd_sn: u32,
}

/// Login Request (§11.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginRequestHeader {
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
    /// Version-min.
    pub version_min: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// Text Request (§11.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRequest {
    /// I bit.
    pub immediate: bool,
    /// F bit.
    pub final_bit: bool,
    /// C bit.
    pub cont: bool,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff on a new request).
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// Logout Request (§11.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogoutRequest {
    /// I bit.
    pub immediate: bool,
    /// Reason code: 0 close session, 1 close connection, 2 remove connection for recovery.
    pub reason: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID to close (reason 1 and 2).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

/// A parsed initiator PDU header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiatorPdu {
    /// NOP-Out.
    NopOut(NopOut),
    /// SCSI Command.
    ScsiCommand(ScsiCommand),
    /// Task management request.
    TmfRequest(TmfRequest),
    /// Login Request.
    LoginRequest(LoginRequestHeader),
    /// Text Request.
    TextRequest(TextRequest),
    /// SCSI Data-Out.
    DataOut(DataOut),
    /// Logout Request.
    LogoutRequest(LogoutRequest),
    /// SNACK (never valid at ErrorRecoveryLevel 0; parsed so it can be rejected).
    Snack {
        /// Initiator Task Tag.
        itt: u32,
    },
}

/// Parses an initiator PDU header.
pub fn parse(bhs: &Bhs) -> Result<InitiatorPdu, PduError> {
    let pdu = match bhs.opcode() {
        Opcode::NOP_OUT => InitiatorPdu::NopOut(parse_nop_out(bhs)?),
        Opcode::SCSI_COMMAND => InitiatorPdu::ScsiCommand(parse_scsi_command(bhs)?),
        Opcode::TASK_MGMT_REQUEST => InitiatorPdu::TmfRequest(parse_tmf_request(bhs)?),
        Opcode::LOGIN_REQUEST => InitiatorPdu::LoginRequest(parse_login_request(bhs)),
        Opcode::TEXT_REQUEST => InitiatorPdu::TextRequest(parse_text_request(bhs)),
        Opcode::SCSI_DATA_OUT => InitiatorPdu::DataOut(parse_data_out(bhs)),
        Opcode::LOGOUT_REQUEST => InitiatorPdu::LogoutRequest(parse_logout_request(bhs)?),
        Opcode::SNACK_REQUEST => InitiatorPdu::Snack { itt: bhs.itt() },
        other => return Err(PduError::UnknownOpcode(other)),
    };
    Ok(pdu)
}

fn require_final(bhs: &Bhs, what: &'static str) -> Result<(), PduError> {
    if bhs.final_bit() {
        Ok(())
    } else {
        Err(PduError::InvalidField {
            opcode: bhs.opcode(),
            what,
        })
    }
}

fn parse_nop_out(bhs: &Bhs) -> Result<NopOut, PduError> {
    require_final(bhs, "NOP-Out without the F bit")?;
    Ok(NopOut {
        immediate: bhs.immediate(),
        lun: bhs.lun(),
        itt: bhs.itt(),
        ttt: bhs.u32_at(20),
        cmd_sn: bhs.u32_at(24),
        exp_stat_sn: bhs.u32_at(28),
    })
}

fn parse_scsi_command(bhs: &Bhs) -> Result<ScsiCommand, PduError> {
    let flags = bhs.flags();
    let attr = match flags & 0x07 {
        0 => TaskAttribute::Untagged,
        1 => TaskAttribute::Simple,
        2 => TaskAttribute::Ordered,
        3 => TaskAttribute::HeadOfQueue,
        4 => TaskAttribute::Aca,
        _ => {
            return Err(PduError::InvalidField {
                opcode: bhs.opcode(),
                what: "reserved task attribute",
            });
        }
    };
    let mut cdb = [0u8; 16];
    cdb.copy_from_slice(&bhs.0[32..48]);
    Ok(ScsiCommand {
        immediate: bhs.immediate(),
        final_bit: bhs.final_bit(),
        read: flags & 0x40 != 0,
        write: flags & 0x20 != 0,
        attr,
        lun: bhs.lun(),
        itt: bhs.itt(),
        expected_data_transfer_length: bhs.u32_at(20),
        cmd_sn: bhs.u32_at(24),
        exp_stat_sn: bhs.u32_at(28),
        cdb,
    })
}

fn parse_tmf_request(bhs: &Bhs) -> Result<TmfRequest, PduError> {
    require_final(bhs, "task management request without the F bit")?;
    Ok(TmfRequest {
        immediate: bhs.immediate(),
        function: TmfFunction::from_code(bhs.flags() & 0x7f),
        lun: bhs.lun(),
        itt: bhs.itt(),
        referenced_task_tag: bhs.u32_at(20),
        cmd_sn: bhs.u32_at(24),
        exp_stat_sn: bhs.u32_at(28),
        ref_cmd_sn: bhs.u32_at(32),
    })
}

fn parse_login_request(bhs: &Bhs) -> LoginRequestHeader {
    let flags = bhs.flags();
    let mut isid = [0u8; 6];
    isid.copy_from_slice(&bhs.0[8..14]);
    LoginRequestHeader {
        transit: flags & 0x80 != 0,
        cont: flags & 0x40 != 0,
        csg: (flags >> 2) & 0x03,
        nsg: flags & 0x03,
        version_max: bhs.0[2],
        version_min: bhs.0[3],
        isid,
        tsih: bhs.u16_at(14),
        itt: bhs.itt(),
        cid: bhs.u16_at(20),
        cmd_sn: bhs.u32_at(24),
        exp_stat_sn: bhs.u32_at(28),
    }
}

fn parse_text_request(bhs: &Bhs) -> TextRequest {
    TextRequest {
        immediate: bhs.immediate(),
        final_bit: bhs.final_bit(),
        cont: bhs.flags() & 0x40 != 0,
        itt: bhs.itt(),
        ttt: bhs.u32_at(20),
        cmd_sn: bhs.u32_at(24),
        exp_stat_sn: bhs.u32_at(28),
    }
}

fn parse_data_out(bhs: &Bhs) -> DataOut {
    DataOut {
        final_bit: bhs.final_bit(),
        lun: bhs.lun(),
        itt: bhs.itt(),
        ttt: bhs.u32_at(20),
        exp_stat_sn: bhs.u32_at(28),
        data_sn: bhs.u32_at(36),
        buffer_offset: bhs.u32_at(40),
        data_len: bhs.data_segment_len(),
    }
}

fn parse_logout_request(bhs: &Bhs) -> Result<LogoutRequest, PduError> {
    require_final(bhs, "logout request without the F bit")?;
    Ok(LogoutRequest {
        immediate: bhs.immediate(),
        reason: bhs.flags() & 0x7f,
        itt: bhs.itt(),
        cid: bhs.u16_at(20),
        cmd_sn: bhs.u32_at(24),
        exp_stat_sn: bhs.u32_at(28),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The READ(10) command PDU of RFC 3720 Appendix B.4.
    const RFC_READ10: [u8; 48] = [
        0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
        0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00,
    ];

    #[test]
    fn parse_scsi_command_rfc_vector() {
        let InitiatorPdu::ScsiCommand(cmd) = parse(&Bhs(RFC_READ10)).unwrap() else {
            panic!("not a SCSI command");
        };
        assert!(cmd.final_bit && cmd.read && !cmd.write);
        assert_eq!(cmd.itt, 0x1400_0000);
        assert_eq!(cmd.expected_data_transfer_length, 1024);
        assert_eq!(cmd.cmd_sn, 0x14);
        assert_eq!(cmd.exp_stat_sn, 0x18);
        assert_eq!(cmd.cdb[0], 0x28);
        assert_eq!(cmd.cdb[8], 0x02);
        assert_eq!(cmd.attr, TaskAttribute::Untagged);
    }

    #[test]
    fn parse_rejects_target_opcodes() {
        let bhs = Bhs::new(Opcode::SCSI_RESPONSE);
        assert_eq!(
            parse(&bhs),
            Err(PduError::UnknownOpcode(Opcode::SCSI_RESPONSE))
        );
        let bhs = Bhs::new(Opcode(0x1c));
        assert!(matches!(parse(&bhs), Err(PduError::UnknownOpcode(_))));
    }

    #[test]
    fn parse_nop_out_requires_final() {
        let bhs = Bhs::new(Opcode::NOP_OUT);
        assert!(matches!(parse(&bhs), Err(PduError::InvalidField { .. })));
    }

    #[test]
    fn parse_login_request_fields() {
        let mut bhs = Bhs::new(Opcode::LOGIN_REQUEST);
        bhs.set_immediate(true);
        bhs.0[1] = 0x80 | (1 << 2) | 3; // T, CSG=1, NSG=3
        bhs.0[8..14].copy_from_slice(&[0x80, 1, 2, 3, 4, 5]);
        bhs.set_u16(14, 0);
        bhs.set_u16(20, 7);
        bhs.set_u32(24, 99);
        let InitiatorPdu::LoginRequest(req) = parse(&bhs).unwrap() else {
            panic!()
        };
        assert!(req.transit && !req.cont);
        assert_eq!((req.csg, req.nsg, req.cid, req.cmd_sn), (1, 3, 7, 99));
        assert_eq!(req.isid, [0x80, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn parse_tmf_abort_task() {
        let mut bhs = Bhs::new(Opcode::TASK_MGMT_REQUEST);
        bhs.0[1] = 0x81;
        bhs.set_u32(20, 0x55);
        bhs.set_u32(32, 0x10);
        let InitiatorPdu::TmfRequest(tmf) = parse(&bhs).unwrap() else {
            panic!()
        };
        assert_eq!(tmf.function, TmfFunction::AbortTask);
        assert_eq!(tmf.referenced_task_tag, 0x55);
        assert_eq!(tmf.ref_cmd_sn, 0x10);
    }

    #[test]
    fn parse_reserved_task_attribute_is_an_error() {
        let mut bhs = Bhs::new(Opcode::SCSI_COMMAND);
        bhs.0[1] = 0x80 | 0x07;
        assert!(matches!(parse(&bhs), Err(PduError::InvalidField { .. })));
    }
}
