//! Serial number arithmetic on 32-bit sequence numbers (RFC 1982, as RFC 7143 §4.2.2.1 requires
//! for CmdSN, StatSN, DataSN and R2TSN).

/// `a < b` in serial arithmetic.
pub fn lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 1 << 31
}

/// `a <= b` in serial arithmetic.
pub fn le(a: u32, b: u32) -> bool {
    a == b || lt(a, b)
}

/// `lo <= x <= hi` in serial arithmetic.
pub fn in_window(x: u32, lo: u32, hi: u32) -> bool {
    le(lo, x) && le(x, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_comparison_wraps() {
        assert!(lt(1, 2));
        assert!(!lt(2, 1));
        assert!(lt(u32::MAX, 0));
        assert!(lt(u32::MAX - 5, 3));
        assert!(!lt(3, u32::MAX - 5));
        assert!(le(7, 7));
        assert!(in_window(0, u32::MAX - 1, 5));
        assert!(!in_window(6, u32::MAX - 1, 5));
    }
}
