//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, typed views of every
//! initiator PDU, builders for every target PDU, digests and framing arithmetic.
//!
//! No I/O here. The receive path (runtime) reads a BHS, asks [`Framing::rest_len`] how many more
//! bytes belong to the PDU (AHS, header digest, padded data segment, data digest), reads them and
//! calls [`initiator::parse`]. Unknown opcodes survive decoding ([`Opcode`] is a newtype) so the
//! connection can answer them with a Reject.

pub mod bhs;
pub mod digest;
pub mod frame;
pub mod initiator;
pub mod opcode;
pub mod target;

pub use bhs::{BHS_LEN, Bhs};
pub use opcode::Opcode;

/// Rounds a data segment length up to the 4-byte boundary that pads it on the wire (§11.1).
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Length of a CRC32C digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// What the negotiated digests make of a PDU's layout after its BHS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Framing {
    /// HeaderDigest=CRC32C was negotiated.
    pub header_digest: bool,
    /// DataDigest=CRC32C was negotiated.
    pub data_digest: bool,
}

impl Framing {
    /// Bytes that follow a BHS on the wire: AHS, header digest, padded data, data digest.
    pub fn rest_len(&self, bhs: &Bhs) -> usize {
        let data = bhs.data_segment_len() as usize;
        let mut n = bhs.total_ahs_len();
        if self.header_digest {
            n += DIGEST_LEN;
        }
        if data > 0 {
            n += padded(data);
            if self.data_digest {
                n += DIGEST_LEN;
            }
        }
        n
    }
}
