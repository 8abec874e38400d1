//! Per-shard latency histograms and counters, kept without locks (each shard owns its own) and
//! merged on demand.
//!
//! Latency of a command: from the moment its last PDU arrived (its Data-Out complete and its
//! CmdSN turn come) to the moment its response was queued for sending, in nanoseconds.

use crate::scsi::OpClass;
use hdrhistogram::Histogram;

/// Highest latency tracked exactly (60 s); larger values are clamped.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Counters and a latency histogram for one op class of one LUN.
///
/// The histogram (about 200 KiB at 3 significant digits over 1 ns..60 s) is allocated on the
/// first recorded command, so volumes nobody uses (hundreds of clones) cost nothing.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    /// Latency histogram (ns), once a command was recorded.
    pub latency: Option<Histogram<u64>>,
    /// Commands completed.
    pub ops: u64,
    /// Bytes moved (Data-In + Data-Out).
    pub bytes: u64,
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits from 1 ns to 60 s: the parameters are valid by construction.
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("valid histogram bounds")
}

impl OpStats {
    /// Records one command.
    pub fn record(&mut self, latency_ns: u64, bytes: u64) {
        self.latency
            .get_or_insert_with(new_histogram)
            .saturating_record(latency_ns.clamp(1, MAX_TRACKED_NS));
        self.ops += 1;
        self.bytes += bytes;
    }

    /// Adds another shard's figures.
    pub fn merge(&mut self, other: &OpStats) {
        if let Some(theirs) = &other.latency {
            // Both histograms share the same bounds, so adding cannot fail.
            let _ = self.latency.get_or_insert_with(new_histogram).add(theirs);
        }
        self.ops += other.ops;
        self.bytes += other.bytes;
    }
}

impl OpStats {
    /// Latency at quantile `q` (0..=1) in ns; 0 before any command.
    pub fn quantile(&self, q: f64) -> u64 {
        self.latency.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }
}

/// The statistics of one LUN: one [`OpStats`] per op class.
#[derive(Debug, Clone, Default)]
pub struct LunStats {
    /// READ commands.
    pub read: OpStats,
    /// WRITE commands.
    pub write: OpStats,
    /// Everything else.
    pub other: OpStats,
}

impl LunStats {
    /// The figures of one op class.
    pub fn class_mut(&mut self, class: OpClass) -> &mut OpStats {
        match class {
            OpClass::Read => &mut self.read,
            OpClass::Write => &mut self.write,
            OpClass::Other => &mut self.other,
        }
    }

    /// Adds another shard's figures.
    pub fn merge(&mut self, other: &LunStats) {
        self.read.merge(&other.read);
        self.write.merge(&other.write);
        self.other.merge(&other.other);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_merge() {
        let mut a = LunStats::default();
        a.class_mut(OpClass::Read).record(50_000, 4096);
        let mut b = LunStats::default();
        b.class_mut(OpClass::Read).record(150_000, 4096);
        b.class_mut(OpClass::Write).record(0, 512);
        a.merge(&b);
        assert_eq!(a.read.ops, 2);
        assert_eq!(a.read.bytes, 8192);
        assert_eq!(a.write.latency.as_ref().map(|h| h.len()), Some(1));
        assert!(a.other.latency.is_none(), "no histogram before a command");
        let p50 = a.read.quantile(0.5);
        assert!((49_000..=51_000).contains(&p50), "p50 {p50}");
        assert!(a.read.quantile(1.0) >= 149_000);
    }
}
