//! CRC32C header and data digests (RFC 7143 §12.1 and Appendix B.4).
//!
//! The digest is sent in little-endian byte order... as RFC 7143 §13.1 / RFC 3385 describe: the
//! CRC register is complemented and transmitted least significant byte first.

/// CRC32C of `bytes` (Castagnoli), as iSCSI computes its digests.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a CRC32C over more bytes (for data split across several buffers).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The 4 wire bytes of a digest value.
pub fn to_wire(crc: u32) -> [u8; 4] {
    crc.to_le_bytes()
}

/// Reads a digest value from its 4 wire bytes.
pub fn from_wire(bytes: [u8; 4]) -> u32 {
    u32::from_le_bytes(bytes)
}

/// Digest over a data segment and its padding, as the wire carries it (padding is covered).
pub fn data_digest(data: &[u8]) -> u32 {
    let pad = super::padded(data.len()) - data.len();
    crc32c_append(crc32c(data), &[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 3720 Appendix B.4 / RFC 7143 CRC examples.
    #[test]
    fn crc32c_known_answers_from_the_rfc() {
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        let descending: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(&descending), 0x113f_db5c);
    }

    #[test]
    fn crc32c_of_an_iscsi_read_pdu_from_the_rfc() {
        // RFC 3720 B.4: an iSCSI SCSI Read (10) command PDU.
        let pdu: [u8; 48] = [
            0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14,
            0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(crc32c(&pdu), 0xd9_96_3a_56);
    }

    #[test]
    fn wire_order_is_little_endian() {
        // The RFC's all-zero example is transmitted as aa 36 91 8a.
        assert_eq!(to_wire(0x8a91_36aa), [0xaa, 0x36, 0x91, 0x8a]);
        assert_eq!(from_wire([0xaa, 0x36, 0x91, 0x8a]), 0x8a91_36aa);
    }

    #[test]
    fn data_digest_covers_padding() {
        assert_eq!(data_digest(b"abc"), crc32c(b"abc\0"));
        assert_eq!(data_digest(b"abcd"), crc32c(b"abcd"));
    }

    #[test]
    fn append_equals_whole() {
        let a = b"hello, ";
        let b = b"world";
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(b"hello, world"));
    }
}
