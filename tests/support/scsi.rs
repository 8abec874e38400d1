//! CDB builders and data patterns for the raw-initiator tests.

/// TEST UNIT READY.
pub fn test_unit_ready() -> [u8; 6] {
    [0u8; 6]
}

/// READ(10) of `blocks` blocks at `lba`.
pub fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// WRITE(10) of `blocks` blocks at `lba`.
pub fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

/// Standard INQUIRY with an allocation length.
pub fn inquiry(alloc_len: u16) -> [u8; 6] {
    let [hi, lo] = alloc_len.to_be_bytes();
    [0x12, 0, 0, hi, lo, 0]
}

/// REPORT LUNS (select report 0) with an allocation length.
pub fn report_luns(alloc_len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa0;
    c[6..10].copy_from_slice(&alloc_len.to_be_bytes());
    c
}

/// The single-level LUN field for LUN `n` (< 256, peripheral addressing).
pub fn lun_field(n: u8) -> u64 {
    u64::from(n) << 48
}

/// Deterministic, seed-dependent bytes (never all zero, so a lost write shows).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*) for fuzzing.
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

/// An EXTENDED COPY identification CSCD descriptor (E4h) naming `designator` (a designation
/// descriptor from VPD page 83h), a 512-byte block device.
pub fn xcopy_cscd(designator: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 32];
    d[0] = 0xE4;
    d[4..4 + designator.len()].copy_from_slice(designator);
    d[29..32].copy_from_slice(&512u32.to_be_bytes()[1..]);
    d
}

/// A block-to-block segment descriptor (02h): `blocks` from LBA `src` of CSCD 0 to LBA `dst` of
/// CSCD `dst_id`.
pub fn xcopy_segment(dst_id: u16, blocks: u16, src: u64, dst: u64) -> Vec<u8> {
    let mut d = vec![0u8; 28];
    d[0] = 0x02;
    d[3] = 0x18;
    d[6..8].copy_from_slice(&dst_id.to_be_bytes());
    d[10..12].copy_from_slice(&blocks.to_be_bytes());
    d[12..20].copy_from_slice(&src.to_be_bytes());
    d[20..28].copy_from_slice(&dst.to_be_bytes());
    d
}

/// An EXTENDED COPY (LID1) parameter list and its CDB: list identifier `list_id`, LIST ID USAGE
/// `usage` (00b: results held; 11b: none), the descriptors.
pub fn extended_copy(
    list_id: u8,
    usage: u8,
    cscds: &[Vec<u8>],
    segments: &[Vec<u8>],
) -> ([u8; 16], Vec<u8>) {
    let (c, s) = (cscds.concat(), segments.concat());
    let mut list = vec![0u8; 16];
    list[0] = list_id;
    list[1] = usage << 3;
    list[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
    list[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    list.extend(c);
    list.extend(s);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    (cdb, list)
}
