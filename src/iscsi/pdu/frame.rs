//! Receive framing (RFC 7143 §11.1): BHS → AHS → header digest → padded data → data digest.
//!
//! [`next_frame`] looks at the bytes received so far and either borrows one complete PDU out of
//! them (checking both digests) or says how many bytes are still missing.

use super::{BHS_LEN, Bhs, DIGEST_LEN, Framing, digest, padded};
use thiserror::Error;

/// A framing failure: the connection cannot continue (header digest) or must reject the PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The header digest did not match: the header cannot be trusted, drop the connection.
    #[error("header digest mismatch")]
    HeaderDigest,
    /// The data digest did not match (the header is good: reject the PDU).
    #[error("data digest mismatch")]
    DataDigest {
        /// The PDU's header.
        bhs: Bhs,
        /// Bytes the whole PDU occupies, to skip it.
        consumed: usize,
    },
    /// The data segment is longer than we declared we accept (MaxRecvDataSegmentLength).
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        /// The PDU's header.
        bhs: Bhs,
        /// Its DataSegmentLength.
        len: u32,
        /// Our limit.
        max: u32,
    },
}

/// One received PDU, borrowed from the receive buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    /// Its header.
    pub bhs: Bhs,
    /// Additional header segments (raw).
    pub ahs: &'a [u8],
    /// The data segment without padding.
    pub data: &'a [u8],
    /// Bytes the PDU occupied in the buffer.
    pub consumed: usize,
}

/// The outcome of looking for a PDU in received bytes.
#[derive(Debug)]
pub enum Next<'a> {
    /// A complete PDU.
    Frame(Frame<'a>),
    /// At least this many more bytes are needed (counting from the start of `buf`).
    NeedBytes(usize),
}

/// Finds the first complete PDU in `buf`.
///
/// `max_data` is our MaxRecvDataSegmentLength; a PDU declaring more is refused before its data is
/// awaited (a peer cannot make us buffer unbounded bytes). Login PDUs pass their own limit.
pub fn next_frame(buf: &[u8], framing: Framing, max_data: u32) -> Result<Next<'_>, FrameError> {
    let Some(bhs) = Bhs::from_slice(buf) else {
        return Ok(Next::NeedBytes(BHS_LEN));
    };
    let data_len = bhs.data_segment_len();
    if data_len > max_data {
        return Err(FrameError::DataSegmentTooLong {
            bhs,
            len: data_len,
            max: max_data,
        });
    }
    let total = BHS_LEN + framing.rest_len(&bhs);
    if buf.len() < total {
        return Ok(Next::NeedBytes(total));
    }
    let ahs_end = BHS_LEN + bhs.total_ahs_len();
    let mut at = ahs_end;
    if framing.header_digest {
        let wire = read_digest(buf, at);
        if digest::crc32c(&buf[..ahs_end]) != wire {
            return Err(FrameError::HeaderDigest);
        }
        at += DIGEST_LEN;
    }
    let data_start = at;
    let data_end = data_start + data_len as usize;
    if data_len > 0 && framing.data_digest {
        let padded_end = data_start + padded(data_len as usize);
        if digest::crc32c(&buf[data_start..padded_end]) != read_digest(buf, padded_end) {
            return Err(FrameError::DataDigest {
                bhs,
                consumed: total,
            });
        }
    }
    Ok(Next::Frame(Frame {
        bhs,
        ahs: &buf[BHS_LEN..ahs_end],
        data: &buf[data_start..data_end],
        consumed: total,
    }))
}

fn read_digest(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; DIGEST_LEN];
    b.copy_from_slice(&buf[at..at + DIGEST_LEN]);
    digest::from_wire(b)
}

/// Serialises one PDU (header, digests, padded data) onto `out`; used by tests, the login path and
/// our own test initiator. The shard's send path builds iovecs instead of copying data.
pub fn encode_pdu(out: &mut Vec<u8>, bhs: &Bhs, data: &[u8], framing: Framing) {
    out.extend_from_slice(&bhs.0);
    if framing.header_digest {
        out.extend_from_slice(&digest::to_wire(digest::crc32c(&bhs.0)));
    }
    if !data.is_empty() {
        out.extend_from_slice(data);
        let pad = padded(data.len()) - data.len();
        out.extend_from_slice(&[0u8; 3][..pad]);
        if framing.data_digest {
            out.extend_from_slice(&digest::to_wire(digest::data_digest(data)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::Opcode;

    fn pdu_with_data(data: &[u8], framing: Framing) -> Vec<u8> {
        let mut bhs = Bhs::new(Opcode::NOP_OUT);
        bhs.0[1] = 0x80;
        bhs.set_data_segment_len(data.len() as u32);
        let mut out = Vec::new();
        encode_pdu(&mut out, &bhs, data, framing);
        out
    }

    #[test]
    fn next_frame_waits_for_whole_pdu() {
        let framing = Framing {
            header_digest: true,
            data_digest: true,
        };
        let wire = pdu_with_data(b"hello", framing);
        assert_eq!(wire.len(), 48 + 4 + 8 + 4);
        for cut in [0, 10, 48, 52, 60] {
            match next_frame(&wire[..cut], framing, 8192).unwrap() {
                Next::NeedBytes(n) => assert!(n > cut),
                Next::Frame(_) => panic!("frame from {cut} bytes"),
            }
        }
        let Next::Frame(f) = next_frame(&wire, framing, 8192).unwrap() else {
            panic!()
        };
        assert_eq!(f.data, b"hello");
        assert_eq!(f.consumed, wire.len());
    }

    #[test]
    fn next_frame_detects_header_digest_error() {
        let framing = Framing {
            header_digest: true,
            data_digest: false,
        };
        let mut wire = pdu_with_data(b"", framing);
        wire[20] ^= 1;
        assert_eq!(
            next_frame(&wire, framing, 8192).unwrap_err(),
            FrameError::HeaderDigest
        );
    }

    #[test]
    fn next_frame_detects_data_digest_error() {
        let framing = Framing {
            header_digest: false,
            data_digest: true,
        };
        let mut wire = pdu_with_data(b"abcdefgh", framing);
        wire[50] ^= 1;
        assert!(matches!(
            next_frame(&wire, framing, 8192),
            Err(FrameError::DataDigest { consumed: 60, .. })
        ));
    }

    #[test]
    fn next_frame_refuses_oversized_segment_before_reading_it() {
        let framing = Framing::default();
        let wire = pdu_with_data(&[7u8; 100], framing);
        assert!(matches!(
            next_frame(&wire[..48], framing, 64),
            Err(FrameError::DataSegmentTooLong {
                len: 100,
                max: 64,
                ..
            })
        ));
    }
}
