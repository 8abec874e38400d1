//! Per-volume QoS: limits on a LUN's I/O operations and bytes per second, enforced by its shard.
//!
//! Each limit is a token bucket refilled at its rate and holding at most 50 ms worth of it
//! (at least one operation, at least one largest transfer). A command that moves data (READ,
//! WRITE, WRITE SAME, COMPARE AND WRITE, EXTENDED COPY...: see `scsi::cdb::qos_charge`) is
//! admitted when both buckets hold a token or more; it then takes one operation and its bytes,
//! which may leave the byte bucket in debt (a transfer larger than the burst waits for the debt
//! to be paid back, so the long-run rate holds whatever the transfer size). Other commands
//! (INQUIRY, UNMAP, SYNCHRONIZE CACHE...) are never held.
//!
//! A command that is not admitted waits in the LUN's FIFO, and every command behind it waits too
//! (order is kept); the shard releases them as the buckets refill, waking in time for the next
//! one ([`Throttle::wait`]). The time a command waits counts in its `queued` phase. Nothing here
//! locks or allocates per command once the queue has grown to its working size.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How much of a second's worth of tokens a bucket holds at most.
const BURST: Duration = Duration::from_millis(50);

/// A volume's limits: operations and bytes per second (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosLimits {
    /// READ and WRITE commands per second.
    pub iops: Option<u64>,
    /// Bytes read and written per second.
    pub bytes_per_sec: Option<u64>,
}

impl QosLimits {
    /// Whether no limit is set.
    pub fn unlimited(&self) -> bool {
        self.iops.is_none() && self.bytes_per_sec.is_none()
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens now (negative: debt).
    tokens: f64,
}

impl Bucket {
    fn new(rate: u64, least_burst: f64) -> Self {
        let rate = rate as f64;
        let burst = (rate * BURST.as_secs_f64()).max(least_burst);
        Bucket {
            rate,
            burst,
            tokens: burst,
        }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.burst);
    }

    /// Time until the bucket holds `need` tokens.
    fn time_to(&self, need: f64) -> Duration {
        if self.tokens >= need {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((need - self.tokens) / self.rate)
    }
}

/// A command waiting for its turn: what the shard needs to run it, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<T> {
    /// The shard's handle on the command.
    pub what: T,
    /// Bytes it transfers.
    pub bytes: u64,
}

/// The limits of one LUN, their buckets and the commands waiting.
#[derive(Debug)]
pub struct Throttle<T> {
    limits: QosLimits,
    ops: Option<Bucket>,
    bytes: Option<Bucket>,
    last: Option<Instant>,
    waiting: VecDeque<Held<T>>,
    /// Frozen for a consistent snapshot of several volumes: every command held until
    /// [`Throttle::thaw`], or this instant at the latest.
    frozen_until: Option<Instant>,
}

impl<T> Default for Throttle<T> {
    fn default() -> Self {
        Throttle {
            limits: QosLimits::default(),
            ops: None,
            bytes: None,
            last: None,
            waiting: VecDeque::new(),
            frozen_until: None,
        }
    }
}

impl<T> Throttle<T> {
    /// A throttle enforcing `limits`, buckets full.
    pub fn new(limits: QosLimits) -> Self {
        let mut t = Throttle::default();
        t.set_limits(limits);
        t
    }

    /// The limits enforced.
    pub fn limits(&self) -> QosLimits {
        self.limits
    }

    /// Holds every command from now on, in order, until [`Throttle::thaw`] or `until` (so a
    /// freeze nobody lifts ends by itself).
    pub fn freeze(&mut self, until: Instant) {
        self.frozen_until = Some(until);
    }

    /// Lets the commands a freeze held go (at the limits' pace).
    pub fn thaw(&mut self) {
        self.frozen_until = None;
    }

    /// Whether a freeze holds commands at `now`.
    pub fn frozen(&self, now: Instant) -> bool {
        self.frozen_until.is_some_and(|until| now < until)
    }

    /// Enforces `limits` from now on (buckets full). The commands waiting stay in order; with
    /// no limit left, [`release`](Self::release) lets them all go.
    pub fn set_limits(&mut self, limits: QosLimits) {
        self.limits = limits;
        // A bucket holds at least one token, so it always admits again; a transfer larger than
        // the byte burst takes it into debt.
        self.ops = limits.iops.filter(|&r| r > 0).map(|r| Bucket::new(r, 1.0));
        self.bytes = limits
            .bytes_per_sec
            .filter(|&r| r > 0)
            .map(|r| Bucket::new(r, 1.0));
        self.last = None;
    }

    /// Whether a READ/WRITE of `bytes` may run now; when not, the caller must [`hold`](Self::hold)
    /// it. A command may run only when nothing is waiting (order is kept) and both buckets hold
    /// a token; it then takes its share.
    pub fn admit(&mut self, now: Instant, bytes: u64) -> bool {
        // Behind commands still waiting (even with the limits just removed), in order.
        if self.frozen(now) || !self.waiting.is_empty() {
            return false;
        }
        if self.ops.is_none() && self.bytes.is_none() {
            return true;
        }
        self.refill(now);
        self.take(bytes)
    }

    /// Queues a command [`admit`](Self::admit) refused.
    pub fn hold(&mut self, what: T, bytes: u64) {
        self.waiting.push_back(Held { what, bytes });
    }

    /// The waiting commands that may run now, in order (all of them when no limit is left).
    pub fn release(&mut self, now: Instant, out: &mut Vec<Held<T>>) {
        if self.waiting.is_empty() || self.frozen(now) {
            return;
        }
        if self.ops.is_none() && self.bytes.is_none() {
            out.extend(self.waiting.drain(..));
            return;
        }
        self.refill(now);
        while let Some(next) = self.waiting.front() {
            if !self.take(next.bytes) {
                break;
            }
            out.extend(self.waiting.pop_front());
        }
    }

    /// How long until the first waiting command may run (`None`: nothing waits).
    pub fn wait(&self) -> Option<Duration> {
        let _ = self.waiting.front()?;
        if let Some(until) = self.frozen_until {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Some(left);
            }
        }
        let ops = self.ops.map_or(Duration::ZERO, |b| b.time_to(1.0));
        let bytes = self.bytes.map_or(Duration::ZERO, |b| b.time_to(1.0));
        Some(ops.max(bytes))
    }

    /// Takes out the waiting commands `pick` chooses (aborted ones, say), keeping the others in
    /// order; they take no token.
    pub fn take_if(&mut self, mut pick: impl FnMut(&T) -> bool, out: &mut Vec<Held<T>>) {
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for h in self.waiting.drain(..) {
            if pick(&h.what) {
                out.push(h);
            } else {
                kept.push_back(h);
            }
        }
        self.waiting = kept;
    }

    /// Commands waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        for b in [&mut self.ops, &mut self.bytes].into_iter().flatten() {
            b.refill(elapsed);
        }
    }

    /// Takes one operation and `bytes` when both buckets hold a token.
    fn take(&mut self, bytes: u64) -> bool {
        let ready = |b: &Option<Bucket>| b.is_none_or(|b| b.tokens >= 1.0);
        if !ready(&self.ops) || !ready(&self.bytes) {
            return false;
        }
        if let Some(b) = self.ops.as_mut() {
            b.tokens -= 1.0;
        }
        if let Some(b) = self.bytes.as_mut() {
            b.tokens -= bytes as f64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(iops: Option<u64>, bytes_per_sec: Option<u64>) -> QosLimits {
        QosLimits {
            iops,
            bytes_per_sec,
        }
    }

    /// Admits or holds `n` commands of `bytes` each at `at`; how many ran at once.
    fn offer(t: &mut Throttle<u32>, at: Instant, n: u32, bytes: u64) -> u32 {
        let mut ran = 0;
        for i in 0..n {
            if t.admit(at, bytes) {
                ran += 1;
            } else {
                t.hold(i, bytes);
            }
        }
        ran
    }

    /// Releases every `step` until `until`; how many ran.
    fn drain(t: &mut Throttle<u32>, start: Instant, until: Duration, step: Duration) -> usize {
        let mut out = Vec::new();
        let mut at = start;
        while at <= start + until {
            t.release(at, &mut out);
            at += step;
        }
        out.len()
    }

    #[test]
    fn no_limit_admits_everything() {
        let mut t: Throttle<u32> = Throttle::default();
        assert_eq!(offer(&mut t, Instant::now(), 1000, 1 << 20), 1000);
        assert_eq!(t.wait(), None);
    }

    #[test]
    fn an_iops_limit_holds_the_long_run_rate_after_a_burst() {
        let start = Instant::now();
        let mut t = Throttle::new(limits(Some(1000), None));
        // A burst of 50 ms worth runs at once; the rest waits, in order.
        assert_eq!(offer(&mut t, start, 500, 4096), 50);
        assert_eq!(t.waiting(), 450);
        let wait = t.wait().unwrap();
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        // One second later about 1000 more have run (all 450 here).
        let ran = drain(
            &mut t,
            start,
            Duration::from_millis(200),
            Duration::from_millis(1),
        );
        assert!((195..=205).contains(&ran), "{ran} in 200 ms at 1000/s");
        // New commands queue behind the waiting ones even if a token is there.
        assert!(!t.admit(start + Duration::from_millis(200), 4096));
    }

    #[test]
    fn a_byte_limit_holds_the_rate_for_transfers_larger_than_the_burst() {
        let start = Instant::now();
        // 10 MiB/s: the burst is 1 token at least, 512 KiB here; 1 MiB transfers go into debt.
        let mut t = Throttle::new(limits(None, Some(10 << 20)));
        assert_eq!(offer(&mut t, start, 30, 1 << 20), 1);
        let ran = drain(
            &mut t,
            start,
            Duration::from_secs(1),
            Duration::from_millis(5),
        );
        assert!((9..=11).contains(&ran), "{ran} MiB in 1 s at 10 MiB/s");
        let wait = t.wait().unwrap();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
    }

    #[test]
    fn both_limits_the_tighter_wins_and_removing_them_releases_everything() {
        let start = Instant::now();
        let mut t = Throttle::new(limits(Some(100_000), Some(1 << 20)));
        assert_eq!(offer(&mut t, start, 100, 64 << 10), 1);
        let ran = drain(
            &mut t,
            start,
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        assert!((15..=17).contains(&ran), "{ran} x 64 KiB in 1 s at 1 MiB/s");
        t.set_limits(QosLimits::default());
        assert!(
            !t.admit(start, 64 << 10),
            "limits gone, but a new command still waits behind the held ones"
        );
        t.hold(1000, 64 << 10);
        let mut out = Vec::new();
        t.release(start, &mut out);
        assert_eq!(out.len() + ran, 100, "all released once unlimited");
        assert_eq!(t.waiting(), 0);
        // Order kept: the waiting commands come out by their index.
        assert!(out.windows(2).all(|w| w[0].what < w[1].what));
    }

    /// A freeze holds every command, in order, even with no limit; thawing, or its end,
    /// lets them all go.
    #[test]
    fn a_freeze_holds_everything_until_thawed_or_over() {
        let t0 = Instant::now();
        let mut t: Throttle<u32> = Throttle::new(limits(None, None));
        t.freeze(t0 + Duration::from_secs(1));
        assert!(t.frozen(t0));
        assert_eq!(offer(&mut t, t0, 3, 512), 0);
        let mut out = Vec::new();
        t.release(t0, &mut out);
        assert!(out.is_empty() && t.wait().is_some());
        t.thaw();
        t.release(t0, &mut out);
        assert_eq!(out.iter().map(|h| h.what).collect::<Vec<_>>(), [0, 1, 2]);
        // Unthawed, it ends by itself.
        t.freeze(t0 + Duration::from_millis(10));
        assert_eq!(offer(&mut t, t0, 2, 512), 0);
        out.clear();
        t.release(t0 + Duration::from_millis(11), &mut out);
        assert_eq!(out.len(), 2);
        assert!(!t.frozen(t0 + Duration::from_millis(11)));
    }

    #[test]
    fn commands_taken_out_leave_the_others_in_order() {
        let start = Instant::now();
        let mut t = Throttle::new(limits(Some(10), None));
        offer(&mut t, start, 5, 512);
        assert_eq!(t.waiting(), 4);
        let mut out = Vec::new();
        t.take_if(|&i| i % 2 == 0, &mut out);
        assert_eq!(out.iter().map(|h| h.what).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(t.waiting(), 2);
        let mut rest = Vec::new();
        t.set_limits(QosLimits::default());
        t.release(start, &mut rest);
        assert_eq!(rest.iter().map(|h| h.what).collect::<Vec<_>>(), vec![1, 3]);
    }
}
