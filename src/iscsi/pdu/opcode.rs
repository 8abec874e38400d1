//! iSCSI opcodes (RFC 7143 §11.1.1) as a newtype, so that an unknown opcode survives decoding
//! and can be rejected.

use std::fmt;

/// The 6-bit opcode of a PDU.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Opcode(pub u8);

macro_rules! opcodes {
    ($($name:ident = $value:expr, $text:expr;)*) => {
        impl Opcode {
            $(
                #[doc = $text]
                pub const $name: Opcode = Opcode($value);
            )*
            /// The RFC name of the opcode, or `None` when unknown.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Opcode::$name => Some($text),)*
                    _ => None,
                }
            }
        }
    };
}

opcodes! {
    NOP_OUT = 0x00, "NOP-Out";
    SCSI_COMMAND = 0x01, "SCSI Command";
    TASK_MGMT_REQUEST = 0x02, "SCSI Task Management Function Request";
    LOGIN_REQUEST = 0x03, "Login Request";
    TEXT_REQUEST = 0x04, "Text Request";
    SCSI_DATA_OUT = 0x05, "SCSI Data-Out";
    LOGOUT_REQUEST = 0x06, "Logout Request";
    SNACK_REQUEST = 0x10, "SNACK Request";
    NOP_IN = 0x20, "NOP-In";
    SCSI_RESPONSE = 0x21, "SCSI Response";
    TASK_MGMT_RESPONSE = 0x22, "SCSI Task Management Function Response";
    LOGIN_RESPONSE = 0x23, "Login Response";
    TEXT_RESPONSE = 0x24, "Text Response";
    SCSI_DATA_IN = 0x25, "SCSI Data-In";
    LOGOUT_RESPONSE = 0x26, "Logout Response";
    R2T = 0x31, "Ready To Transfer (R2T)";
    ASYNC_MESSAGE = 0x32, "Asynchronous Message";
    REJECT = 0x3f, "Reject";
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}"),
            None => write!(f, "Opcode({:#04x})", self.0),
        }
    }
}
