//! The slow-command log: one line on stderr for each command whose total latency reached a
//! threshold (off unless configured), rate-limited per shard so that a storm of slow commands
//! cannot slow the shard down further.
//!
//! ```text
//! shoal: slow command: target iqn.2026-11.dev.shoal:vm1 lun 0 WRITE(10) lba 2048 blocks 8 total 12034 us (data_out 3 queued 1 backend 12001 send 29) from iqn.1998-01.com.vmware:esx1
//! shoal: slow commands: 412 more over 10000 us in the last second on shard 0 (not logged)
//! ```

use super::PhaseTimes;
use std::fmt::Write;
use std::time::Duration;

/// Lines logged per shard per second; further slow commands are only counted.
pub const LINES_PER_SECOND: u32 = 10;

/// What the log says about a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowCommand<'a> {
    /// Its target.
    pub target: &'a str,
    /// Its LUN.
    pub lun: u64,
    /// Its operation code.
    pub opcode: u8,
    /// First LBA and number of blocks, for commands that address blocks.
    pub extent: Option<(u64, u64)>,
    /// Its phases.
    pub times: PhaseTimes,
    /// The initiator that sent it (InitiatorName).
    pub initiator: &'a str,
}

/// The slow-command log of one shard.
#[derive(Debug, Clone)]
pub struct SlowLog {
    threshold_ns: u64,
    /// The second (see [`super::second_of`]) the budget applies to.
    second: u64,
    logged: u32,
    suppressed: u64,
}

fn us(ns: u64) -> u64 {
    ns / 1000
}

impl SlowLog {
    /// A log of commands taking `threshold` or more.
    pub fn new(threshold: Duration) -> Self {
        SlowLog {
            threshold_ns: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
            second: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a command of `total_ns` is slow.
    pub fn is_slow(&self, total_ns: u64) -> bool {
        total_ns >= self.threshold_ns
    }

    /// Accounts a slow command finished in second `sec` on shard `shard`; returns the lines to
    /// log (the note of commands suppressed in an earlier second first, then the command's own,
    /// unless the second's budget is spent).
    pub fn note(&mut self, shard: usize, sec: u64, cmd: &SlowCommand<'_>) -> Vec<String> {
        let mut lines = self.roll(shard, sec);
        if self.logged < LINES_PER_SECOND {
            self.logged += 1;
            lines.push(line(cmd));
        } else {
            self.suppressed += 1;
        }
        lines
    }

    /// Moves to second `sec`: the note of the commands suppressed before it, if any (also called
    /// by the shard's timer so that a storm's tail is reported when it stops).
    pub fn roll(&mut self, shard: usize, sec: u64) -> Vec<String> {
        let mut lines = Vec::new();
        if sec == self.second {
            return lines;
        }
        if self.suppressed > 0 {
            lines.push(format!(
                "shoal: slow commands: {} more over {} us in the last second on shard {shard} \
                 (not logged)",
                self.suppressed,
                us(self.threshold_ns)
            ));
        }
        self.second = sec;
        self.logged = 0;
        self.suppressed = 0;
        lines
    }
}

/// The log line of one slow command.
pub fn line(cmd: &SlowCommand<'_>) -> String {
    let t = &cmd.times;
    let mut s = format!(
        "shoal: slow command: target {} lun {} {}",
        cmd.target,
        cmd.lun,
        crate::scsi::cdb::opcode_name(cmd.opcode)
    );
    if let Some((lba, blocks)) = cmd.extent {
        let _ = write!(s, " lba {lba} blocks {blocks}");
    }
    let _ = write!(
        s,
        " total {} us (data_out {} queued {} backend {} send {})",
        us(t.total()),
        us(t.data_out),
        us(t.queued),
        us(t.backend),
        us(t.send)
    );
    if !cmd.initiator.is_empty() {
        let _ = write!(s, " from {}", cmd.initiator);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(target: &str) -> SlowCommand<'_> {
        SlowCommand {
            target,
            lun: 0,
            opcode: 0x2a,
            extent: Some((2048, 8)),
            times: PhaseTimes {
                data_out: 3_400,
                queued: 1_000,
                backend: 12_001_000,
                send: 29_000,
            },
            initiator: "iqn.1998-01.com.vmware:esx1",
        }
    }

    #[test]
    fn line_format() {
        assert_eq!(
            line(&cmd("iqn.x:vm1")),
            "shoal: slow command: target iqn.x:vm1 lun 0 WRITE(10) lba 2048 blocks 8 total 12034 us \
             (data_out 3 queued 1 backend 12001 send 29) from iqn.1998-01.com.vmware:esx1"
        );
        let mut c = cmd("t");
        c.opcode = 0x00;
        c.extent = None;
        assert!(
            line(&c).contains("lun 0 TEST UNIT READY total "),
            "{}",
            line(&c)
        );
    }

    #[test]
    fn rate_limited_per_second() {
        let mut log = SlowLog::new(Duration::from_millis(10));
        assert!(log.is_slow(10_000_000) && !log.is_slow(9_999_999));
        let c = cmd("t");
        let mut lines = 0;
        for _ in 0..25 {
            lines += log.note(0, 7, &c).len();
        }
        assert_eq!(lines, LINES_PER_SECOND as usize);
        let next = log.note(0, 8, &c);
        assert_eq!(next.len(), 2);
        assert_eq!(
            next[0],
            "shoal: slow commands: 15 more over 10000 us in the last second on shard 0 (not logged)"
        );
        assert!(log.roll(0, 9).is_empty(), "nothing suppressed in second 8");
    }
}
