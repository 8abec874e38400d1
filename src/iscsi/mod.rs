//! The iSCSI protocol core (RFC 7143), target side, ErrorRecoveryLevel 0.
//!
//! No I/O and no clock here: the runtime feeds received bytes and the current time in, and gets
//! PDUs to send and SCSI work to do back.

pub mod connection;
pub mod discovery;
pub mod login;
pub mod pdu;
pub mod serial;
pub mod session;
pub mod text;
