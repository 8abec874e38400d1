//! The Basic Header Segment (RFC 7143 §11.2.1).
//!
//! ```text
//! byte  0     |.|I| Opcode    |   I = immediate delivery (initiator PDUs)
//! byte  1     |F|  opcode-specific flags
//! bytes 2-3   opcode-specific
//! byte  4     TotalAHSLength (in 4-byte words)
//! bytes 5-7   DataSegmentLength (bytes, excluding padding)
//! bytes 8-15  LUN or opcode-specific
//! bytes 16-19 Initiator Task Tag
//! bytes 20-47 opcode-specific
//! ```
//! All multi-byte fields are big-endian.

use super::Opcode;

/// Length of a BHS on the wire.
pub const BHS_LEN: usize = 48;

/// One Basic Header Segment: the raw 48 bytes with typed accessors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

const IMMEDIATE_BIT: u8 = 0x40;
const OPCODE_MASK: u8 = 0x3f;
const FINAL_BIT: u8 = 0x80;

impl Default for Bhs {
    fn default() -> Self {
        Bhs([0; BHS_LEN])
    }
}

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &self.opcode())
            .field("flags", &format_args!("{:#04x}", self.0[1]))
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .field("dsl", &self.data_segment_len())
            .finish()
    }
}

impl Bhs {
    /// A BHS with the given opcode and every other field zero.
    pub fn new(opcode: Opcode) -> Self {
        let mut bhs = Bhs::default();
        bhs.0[0] = opcode.0 & OPCODE_MASK;
        bhs
    }

    /// Copies a BHS out of the first 48 bytes of `bytes`, if there are that many.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes
            .get(..BHS_LEN)
            .and_then(|b| b.try_into().ok())
            .map(Bhs)
    }

    /// The opcode (byte 0, low six bits).
    pub fn opcode(&self) -> Opcode {
        Opcode(self.0[0] & OPCODE_MASK)
    }

    /// The I (immediate delivery) bit.
    pub fn immediate(&self) -> bool {
        self.0[0] & IMMEDIATE_BIT != 0
    }

    /// Sets the I bit.
    pub fn set_immediate(&mut self, on: bool) {
        self.set_flag(0, IMMEDIATE_BIT, on);
    }

    /// The F (final) bit of byte 1.
    pub fn final_bit(&self) -> bool {
        self.0[1] & FINAL_BIT != 0
    }

    /// Byte 1 (flags).
    pub fn flags(&self) -> u8 {
        self.0[1]
    }

    /// Sets or clears `mask` in byte `at`.
    pub fn set_flag(&mut self, at: usize, mask: u8, on: bool) {
        if on {
            self.0[at] |= mask;
        } else {
            self.0[at] &= !mask;
        }
    }

    /// TotalAHSLength in bytes.
    pub fn total_ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }

    /// DataSegmentLength in bytes (without padding).
    pub fn data_segment_len(&self) -> u32 {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]])
    }

    /// Sets DataSegmentLength (24 bits; larger values are a caller bug and are masked).
    pub fn set_data_segment_len(&mut self, len: u32) {
        debug_assert!(
            len < 1 << 24,
            "data segment length {len} does not fit 24 bits"
        );
        let b = len.to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
    }

    /// The LUN field (bytes 8-15), raw.
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }

    /// Sets the LUN field.
    pub fn set_lun(&mut self, lun: u64) {
        self.set_u64(8, lun);
    }

    /// Initiator Task Tag (bytes 16-19).
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// Sets the Initiator Task Tag.
    pub fn set_itt(&mut self, itt: u32) {
        self.set_u32(16, itt);
    }

    /// Big-endian u16 at `at`.
    pub fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }

    /// Big-endian u32 at `at`.
    pub fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_be_bytes(b)
    }

    /// Big-endian u64 at `at`.
    pub fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_be_bytes(b)
    }

    /// Writes a big-endian u16 at `at`.
    pub fn set_u16(&mut self, at: usize, v: u16) {
        self.0[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// Writes a big-endian u32 at `at`.
    pub fn set_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// Writes a big-endian u64 at `at`.
    pub fn set_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bhs_fields_round_trip() {
        let mut bhs = Bhs::new(Opcode::SCSI_COMMAND);
        bhs.set_immediate(true);
        bhs.set_data_segment_len(0x01_02_03);
        bhs.set_itt(0xdead_beef);
        bhs.set_lun(0x0001_0000_0000_0000);
        assert_eq!(bhs.opcode(), Opcode::SCSI_COMMAND);
        assert!(bhs.immediate());
        assert_eq!(bhs.data_segment_len(), 0x01_02_03);
        assert_eq!(&bhs.0[5..8], &[1, 2, 3]);
        assert_eq!(bhs.itt(), 0xdead_beef);
        assert_eq!(bhs.lun(), 0x0001_0000_0000_0000);
        assert_eq!(bhs.0[0], 0x41);
    }

    #[test]
    fn from_slice_needs_48_bytes() {
        assert!(Bhs::from_slice(&[0u8; 47]).is_none());
        assert!(Bhs::from_slice(&[0u8; 60]).is_some());
    }
}
