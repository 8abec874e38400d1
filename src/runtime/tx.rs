//! Gathered sends: one `sendmsg` carries a batch of PDUs, headers and digests from a small
//! arena and data straight from the buffers they live in (no copy of read data).
//!
//! Invariant: while a send is in flight, `iov`, `heads` and `pdus` are not modified, so every
//! pointer in `msg` stays valid until the completion arrives.

use crate::iscsi::connection::OutPdu;
use crate::iscsi::pdu::{BHS_LEN, DIGEST_LEN, Framing, digest, padded};

/// Most PDUs gathered into one `sendmsg` (three iovecs each, under IOV_MAX = 1024).
const MAX_BATCH: usize = 256;

#[derive(Clone, Copy)]
struct Wrap {
    head: [u8; BHS_LEN + DIGEST_LEN],
    head_len: usize,
    tail: [u8; 3 + DIGEST_LEN],
    tail_len: usize,
}

/// The send state of one connection.
pub struct Tx {
    pdus: Vec<OutPdu>,
    heads: Vec<Wrap>,
    iov: Vec<libc::iovec>,
    first: usize,
    msg: Box<libc::msghdr>,
    in_flight: bool,
}

impl Tx {
    /// Empty send state.
    pub fn new() -> Self {
        Tx {
            pdus: Vec::with_capacity(MAX_BATCH),
            heads: Vec::with_capacity(MAX_BATCH),
            iov: Vec::with_capacity(MAX_BATCH * 3),
            first: 0,
            // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            in_flight: false,
        }
    }

    /// A send is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Fills a new batch from `next` (called only when no send is in flight). Returns the
    /// `msghdr` to submit, or `None` when there is nothing to send.
    pub fn start(
        &mut self,
        framing: Framing,
        mut next: impl FnMut() -> Option<OutPdu>,
    ) -> Option<*const libc::msghdr> {
        debug_assert!(!self.in_flight);
        self.pdus.clear();
        self.heads.clear();
        self.iov.clear();
        self.first = 0;
        while self.pdus.len() < MAX_BATCH {
            let Some(pdu) = next() else { break };
            self.heads.push(wrap(&pdu, framing));
            self.pdus.push(pdu);
        }
        if self.pdus.is_empty() {
            return None;
        }
        for (pdu, w) in self.pdus.iter().zip(self.heads.iter()) {
            self.iov.push(iovec(&w.head[..w.head_len]));
            let data = pdu.data.as_slice();
            if !data.is_empty() {
                self.iov.push(iovec(data));
            }
            if w.tail_len > 0 {
                self.iov.push(iovec(&w.tail[..w.tail_len]));
            }
        }
        self.in_flight = true;
        Some(self.arm())
    }

    fn arm(&mut self) -> *const libc::msghdr {
        let rest = &mut self.iov[self.first..];
        self.msg.msg_iov = rest.as_mut_ptr();
        self.msg.msg_iovlen = rest.len() as _;
        &*self.msg
    }

    /// Accounts `sent` bytes of the batch. Returns the `msghdr` to resubmit when part of the
    /// batch is still unsent; otherwise releases the batch (and its buffers) and returns `None`.
    pub fn advance(&mut self, mut sent: usize) -> Option<*const libc::msghdr> {
        while sent > 0 && self.first < self.iov.len() {
            let v = &mut self.iov[self.first];
            if sent >= v.iov_len {
                sent -= v.iov_len;
                self.first += 1;
            } else {
                // SAFETY: `sent < iov_len`, so the advanced pointer stays inside the same slice.
                v.iov_base = unsafe { (v.iov_base as *mut u8).add(sent) }.cast();
                v.iov_len -= sent;
                sent = 0;
            }
        }
        while self.first < self.iov.len() && self.iov[self.first].iov_len == 0 {
            self.first += 1;
        }
        if self.first < self.iov.len() {
            return Some(self.arm());
        }
        self.finish();
        None
    }

    /// Drops the batch (after completion or on close).
    pub fn finish(&mut self) {
        self.in_flight = false;
        self.pdus.clear();
        self.iov.clear();
        self.heads.clear();
        self.first = 0;
    }
}

impl Default for Tx {
    fn default() -> Self {
        Tx::new()
    }
}

fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

fn wrap(pdu: &OutPdu, framing: Framing) -> Wrap {
    let mut w = Wrap {
        head: [0; BHS_LEN + DIGEST_LEN],
        head_len: BHS_LEN,
        tail: [0; 7],
        tail_len: 0,
    };
    w.head[..BHS_LEN].copy_from_slice(&pdu.bhs.0);
    if framing.header_digest {
        let crc = digest::to_wire(digest::crc32c(&pdu.bhs.0));
        w.head[BHS_LEN..].copy_from_slice(&crc);
        w.head_len += DIGEST_LEN;
    }
    let data = pdu.data.as_slice();
    if !data.is_empty() {
        let pad = padded(data.len()) - data.len();
        w.tail_len = pad;
        if framing.data_digest {
            let crc = digest::to_wire(digest::data_digest(data));
            w.tail[pad..pad + DIGEST_LEN].copy_from_slice(&crc);
            w.tail_len += DIGEST_LEN;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::connection::OutData;
    use crate::iscsi::pdu::frame::encode_pdu;
    use crate::iscsi::pdu::{Bhs, Opcode};

    fn gather(tx: &Tx) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &tx.iov[tx.first..] {
            // SAFETY: each iovec points into a live slice owned by `tx`.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }

    #[test]
    fn batch_matches_encoded_pdus_and_resumes_after_partial_send() {
        let framing = Framing {
            header_digest: true,
            data_digest: true,
        };
        let mut queue = Vec::new();
        let mut expected = Vec::new();
        for (i, data) in [b"abcde".to_vec(), Vec::new(), b"xyzw".to_vec()]
            .into_iter()
            .enumerate()
        {
            let mut bhs = Bhs::new(Opcode::NOP_IN);
            bhs.set_itt(i as u32);
            bhs.set_data_segment_len(data.len() as u32);
            encode_pdu(&mut expected, &bhs, &data, framing);
            queue.push(OutPdu {
                bhs,
                data: if data.is_empty() {
                    OutData::None
                } else {
                    OutData::Bytes(data)
                },
            });
        }
        let mut queue = queue.into_iter();
        let mut tx = Tx::new();
        assert!(tx.start(framing, || queue.next()).is_some());
        assert_eq!(gather(&tx), expected);
        assert!(tx.advance(50).is_some());
        assert_eq!(gather(&tx), expected[50..]);
        let rest = expected.len() - 50;
        assert!(tx.advance(rest).is_none());
        assert!(!tx.in_flight());
    }
}
