//! Per-shard latency statistics: per LUN and op class, counters and `hdrhistogram`s of the total
//! command latency and of its four phases, since the last reset and over the last seconds. Each
//! shard owns the statistics of its LUNs (plain fields: no lock, no atomic on the I/O path); the
//! control plane asks for a [`LunSnapshot`] by message and merges or formats it.
//!
//! # Phases
//!
//! A command passes five instants ([`Stamps`] plus the send completion); the four phases are the
//! gaps between them, so they always add up to the total:
//!
//! | phase | from | to |
//! |---|---|---|
//! | `data_out` | the SCSI Command PDU was received | its data is complete and its CmdSN turn has come (`Task::ready_at`; 0 for a read in order) |
//! | `queued` | ready | the shard executed it: its first backend SQE was queued in the ring, or it was answered (commands without storage I/O) |
//! | `backend` | executed | the round that reaped its last backend completion (0 without storage I/O; includes waits for a busy extent or for space) |
//! | `send` | backend done | the round that reaped the completion of the `sendmsg` carrying the last byte of its response |
//!
//! "Received" and "reaped" are the instant the shard took at the start of the loop round that
//! handled the completion (one `Instant::now()` per round, shared by every completion of the
//! round); "executed" is one `Instant::now()` per command. A command whose response is never sent
//! (aborted, connection closed) is not counted.
//!
//! # Memory
//!
//! Nothing is allocated for a LUN or class until its first command. Since-reset: five
//! auto-resizing histograms per class (total at 3 significant digits, phases at 2). Windows: a
//! ring of [`WINDOW_SLOTS`] one-second slots per class, each with five 2-digit histograms of `u32`
//! counts (about 10 KiB each when latencies stay under 100 ms, at most 15 KiB up to 60 s), so a
//! busy class holds at most 61 × 75 KiB ≈ 4.5 MiB of windows. Slots of seconds older than the
//! ring are released by [`LunStats::trim`] (the shard timer), so an idle LUN returns to holding
//! only its since-reset histograms, and a reset frees everything.

pub mod export;
pub mod plot;
pub mod slow;

use crate::scsi::OpClass;
use hdrhistogram::Histogram;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Highest latency tracked (60 s); larger values are clamped to it.
pub const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// One-second slots in a window ring: the last [`MAX_WINDOW_SECS`] complete seconds plus the
/// current one.
pub const WINDOW_SLOTS: usize = MAX_WINDOW_SECS as usize + 1;

/// Longest last-N-seconds window.
pub const MAX_WINDOW_SECS: u32 = 60;

/// Significant digits of the since-reset total latency histogram.
const TOTAL_SIGFIG: u8 = 3;

/// Significant digits of the phase histograms and of the window slots.
const SLOT_SIGFIG: u8 = 2;

/// What a shard measures besides counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatsConfig {
    /// Measure latencies (`--no-latency-stats` turns it off: no `Instant::now()` per command, no
    /// histograms; counts are kept).
    pub latency: bool,
    /// Log commands whose total latency reaches this ([`slow`]); needs `latency`.
    pub slow_command: Option<Duration>,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            latency: true,
            slow_command: None,
        }
    }
}

/// A phase of a command's latency (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Command received → data complete and CmdSN turn come.
    DataOut,
    /// Ready → executed (backend I/O queued, or answered).
    Queued,
    /// Executed → last backend completion reaped.
    Backend,
    /// Backend done → response fully written to the socket.
    Send,
}

impl Phase {
    /// Every phase, in command order.
    pub const ALL: [Phase; 4] = [Phase::DataOut, Phase::Queued, Phase::Backend, Phase::Send];

    /// The name used in the API, the metrics and the slow-command log.
    pub fn name(self) -> &'static str {
        match self {
            Phase::DataOut => "data_out",
            Phase::Queued => "queued",
            Phase::Backend => "backend",
            Phase::Send => "send",
        }
    }
}

/// The name of an op class in the API (`read`, `write`, `other`).
pub fn class_name(class: OpClass) -> &'static str {
    match class {
        OpClass::Read => "read",
        OpClass::Write => "write",
        OpClass::Other => "other",
    }
}

/// Every op class, in report order.
pub const CLASSES: [OpClass; 3] = [OpClass::Read, OpClass::Write, OpClass::Other];

/// The instants a command passed before its response was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamps {
    /// Its SCSI Command PDU was received.
    pub arrived: Instant,
    /// Its data was complete and its CmdSN turn had come.
    pub ready: Instant,
    /// The shard executed it.
    pub submitted: Instant,
    /// Its last backend completion was reaped (`submitted` when it had no storage I/O).
    pub backend_done: Instant,
}

/// A command's phase durations in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// See [`Phase::DataOut`].
    pub data_out: u64,
    /// See [`Phase::Queued`].
    pub queued: u64,
    /// See [`Phase::Backend`].
    pub backend: u64,
    /// See [`Phase::Send`].
    pub send: u64,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl PhaseTimes {
    /// The phases of a command whose response was fully sent at `sent`.
    ///
    /// Invariant: the phases add up to `sent - arrived` exactly. Each instant is taken no earlier
    /// than the one before it (an instant out of order, e.g. a backend completion reaped in the
    /// round that executed the command, counts as its predecessor), so no phase is negative.
    pub fn between(stamps: &Stamps, sent: Instant) -> PhaseTimes {
        let ready = stamps.ready.max(stamps.arrived);
        let submitted = stamps.submitted.max(ready);
        let backend_done = stamps.backend_done.max(submitted);
        let sent = sent.max(backend_done);
        PhaseTimes {
            data_out: ns(ready - stamps.arrived),
            queued: ns(submitted - ready),
            backend: ns(backend_done - submitted),
            send: ns(sent - backend_done),
        }
    }

    /// The total latency: the sum of the phases.
    pub fn total(&self) -> u64 {
        self.data_out
            .saturating_add(self.queued)
            .saturating_add(self.backend)
            .saturating_add(self.send)
    }

    /// One phase.
    pub fn get(&self, phase: Phase) -> u64 {
        match phase {
            Phase::DataOut => self.data_out,
            Phase::Queued => self.queued,
            Phase::Backend => self.backend,
            Phase::Send => self.send,
        }
    }
}

/// A histogram that grows to the largest value recorded (from 1 ns; values are clamped to
/// [`MAX_TRACKED_NS`]), so that its size follows the latencies actually seen.
pub fn new_histogram<T: hdrhistogram::Counter>(sigfig: u8) -> Histogram<T> {
    // Bounds 1..2^24 ns and 2 or 3 digits are valid by construction.
    let mut h = Histogram::new_with_bounds(1, 1 << 24, sigfig).expect("valid histogram bounds");
    h.auto(true);
    h
}

fn record<T: hdrhistogram::Counter>(h: &mut Histogram<T>, value_ns: u64) {
    // Auto-resizing up to MAX_TRACKED_NS cannot fail (the crate only fails past i64::MAX / 2).
    let _ = h.record(value_ns.clamp(1, MAX_TRACKED_NS));
}

/// Adds `src` into `dst`, whatever their counter types.
fn add_into<T: hdrhistogram::Counter>(dst: &mut Histogram<u64>, src: &Histogram<T>) {
    for v in src.iter_recorded() {
        let _ = dst.record_n(v.value_iterated_to(), v.count_at_value().as_u64());
    }
}

/// A total latency histogram and one per phase.
#[derive(Debug, Clone)]
pub struct HistSet<T: hdrhistogram::Counter> {
    /// Total latency (ns).
    pub total: Histogram<T>,
    /// One per [`Phase`], in [`Phase::ALL`] order (ns).
    pub phases: [Histogram<T>; 4],
}

impl<T: hdrhistogram::Counter> HistSet<T> {
    fn new(total_sigfig: u8) -> Self {
        HistSet {
            total: new_histogram(total_sigfig),
            phases: std::array::from_fn(|_| new_histogram(SLOT_SIGFIG)),
        }
    }

    fn record(&mut self, t: &PhaseTimes) {
        record(&mut self.total, t.total());
        for (h, p) in self.phases.iter_mut().zip(Phase::ALL) {
            record(h, t.get(p));
        }
    }

    fn reset(&mut self) {
        self.total.reset();
        self.phases.iter_mut().for_each(Histogram::reset);
    }
}

impl HistSet<u64> {
    fn add<T: hdrhistogram::Counter>(&mut self, other: &HistSet<T>) {
        add_into(&mut self.total, &other.total);
        for (mine, theirs) in self.phases.iter_mut().zip(&other.phases) {
            add_into(mine, theirs);
        }
    }
}

/// Figures that only grow while a LUN is served ([`OpStats::reset`] leaves them): what the
/// Prometheus counters and summaries report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetime {
    /// Timed commands by total latency: `latency_buckets[i]` counts those at most
    /// [`LATENCY_BUCKETS_NS`]`[i]` and above the bound before; the last one, those above every
    /// bound (Prometheus's histogram, made cumulative at export).
    pub latency_buckets: [u64; LATENCY_BUCKETS_NS.len() + 1],
    /// Commands completed.
    pub ops: u64,
    /// Bytes moved (Data-In + Data-Out).
    pub bytes: u64,
    /// Sum of the total latencies (ns) of the timed commands.
    pub latency_ns_sum: u64,
    /// Sum of each phase (ns), in [`Phase::ALL`] order.
    pub phase_ns_sum: [u64; 4],
    /// Commands whose latency was measured (all of them while latency statistics are on).
    pub timed: u64,
}

/// Upper bounds (ns) of the lifetime latency buckets: 10 µs to 10 s, 1-2.5-5 steps (finer
/// below 1 ms, where storage latencies live).
pub const LATENCY_BUCKETS_NS: [u64; 22] = [
    10_000,
    25_000,
    50_000,
    75_000,
    100_000,
    150_000,
    250_000,
    500_000,
    750_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The lifetime bucket of a total latency of `ns`.
pub fn latency_bucket(ns: u64) -> usize {
    LATENCY_BUCKETS_NS.partition_point(|&bound| bound < ns)
}

/// One second of a window ring.
#[derive(Debug, Default)]
struct Slot {
    /// The second it holds (see [`second_of`]); its figures are stale when it is not the wanted
    /// one.
    sec: u64,
    ops: u64,
    bytes: u64,
    hists: Option<Box<HistSet<u32>>>,
}

/// Counters and latency histograms for one op class of one LUN.
#[derive(Debug, Default)]
pub struct OpStats {
    /// Since the LUN was served.
    pub lifetime: Lifetime,
    /// Commands since the last reset.
    pub ops: u64,
    /// Bytes since the last reset.
    pub bytes: u64,
    /// Latency since the last reset, once a timed command was recorded.
    pub hists: Option<Box<HistSet<u64>>>,
    /// The last seconds ([`WINDOW_SLOTS`] slots indexed by second), once a command was recorded.
    ring: Option<Box<[Slot]>>,
}

/// What a snapshot covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Everything since the last reset (or since the LUN was served).
    SinceReset,
    /// The last N complete seconds (1..=[`MAX_WINDOW_SECS`]).
    Last(u32),
}

/// A copy of one class's figures over a window.
#[derive(Debug, Clone, Default)]
pub struct ClassSnapshot {
    /// Commands in the window.
    pub ops: u64,
    /// Bytes in the window.
    pub bytes: u64,
    /// Latency histograms over the window (None: no timed command in it). For a last-N-seconds
    /// window, filled by [`ClassSnapshot::merge_slots`].
    pub hists: Option<HistSet<u64>>,
    /// The one-second histograms of a last-N-seconds window, as copied on the shard (a copy is
    /// a memcpy; merging them, which walks every bucket, is left to the control plane).
    pub slots: Vec<HistSet<u32>>,
    /// Since the LUN was served.
    pub lifetime: Lifetime,
}

impl ClassSnapshot {
    /// Merges the copied one-second histograms into `hists` (off the shard).
    pub fn merge_slots(&mut self) {
        for slot in std::mem::take(&mut self.slots) {
            self.hists
                .get_or_insert_with(|| HistSet::new(SLOT_SIGFIG))
                .add(&slot);
        }
    }

    /// Total latency at quantile `q` (0..=1) in ns; 0 without commands.
    pub fn quantile(&self, q: f64) -> u64 {
        self.hists
            .as_ref()
            .map_or(0, |h| h.total.value_at_quantile(q))
    }
}

impl OpStats {
    /// Records one command completed in second `sec` (see [`second_of`]); `times` is None when
    /// latency statistics are off.
    pub fn record(&mut self, sec: u64, bytes: u64, times: Option<&PhaseTimes>) {
        self.ops += 1;
        self.bytes += bytes;
        let l = &mut self.lifetime;
        l.ops += 1;
        l.bytes += bytes;
        let ring = self.ring.get_or_insert_with(|| {
            std::iter::repeat_with(Slot::default)
                .take(WINDOW_SLOTS)
                .collect()
        });
        let slot = &mut ring[(sec % WINDOW_SLOTS as u64) as usize];
        if slot.sec != sec {
            // A new second: the slot's old figures are a ring's length old. Keep its buffers.
            slot.sec = sec;
            slot.ops = 0;
            slot.bytes = 0;
            if let Some(h) = slot.hists.as_mut() {
                h.reset();
            }
        }
        slot.ops += 1;
        slot.bytes += bytes;
        let Some(t) = times else { return };
        l.timed += 1;
        l.latency_ns_sum = l.latency_ns_sum.saturating_add(t.total());
        l.latency_buckets[latency_bucket(t.total())] += 1;
        for (sum, p) in l.phase_ns_sum.iter_mut().zip(Phase::ALL) {
            *sum = sum.saturating_add(t.get(p));
        }
        self.hists
            .get_or_insert_with(|| Box::new(HistSet::new(TOTAL_SIGFIG)))
            .record(t);
        slot.hists
            .get_or_insert_with(|| Box::new(HistSet::new(SLOT_SIGFIG)))
            .record(t);
    }

    /// Forgets everything but the lifetime figures, and frees the histograms.
    pub fn reset(&mut self) {
        self.ops = 0;
        self.bytes = 0;
        self.hists = None;
        self.ring = None;
    }

    /// Frees the window slots older than the ring (second `now_sec` is the current one), and the
    /// ring itself once all of them are.
    pub fn trim(&mut self, now_sec: u64) {
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let oldest = now_sec.saturating_sub(MAX_WINDOW_SECS as u64);
        let mut live = false;
        for slot in ring.iter_mut() {
            if slot.sec < oldest {
                slot.hists = None;
                slot.ops = 0;
                slot.bytes = 0;
            } else {
                live = true;
            }
        }
        if !live {
            self.ring = None;
        }
    }

    /// The figures over `window`, second `now_sec` being the current (incomplete) one.
    pub fn snapshot(&self, window: Window, now_sec: u64) -> ClassSnapshot {
        let mut out = ClassSnapshot {
            lifetime: self.lifetime,
            ..ClassSnapshot::default()
        };
        match window {
            Window::SinceReset => {
                out.ops = self.ops;
                out.bytes = self.bytes;
                out.hists = self.hists.as_deref().cloned();
            }
            Window::Last(n) => {
                let Some(ring) = self.ring.as_ref() else {
                    return out;
                };
                let n = u64::from(n.clamp(1, MAX_WINDOW_SECS));
                for sec in now_sec.saturating_sub(n)..now_sec {
                    let slot = &ring[(sec % WINDOW_SLOTS as u64) as usize];
                    if slot.sec != sec {
                        continue;
                    }
                    out.ops += slot.ops;
                    out.bytes += slot.bytes;
                    if let Some(h) = slot.hists.as_deref().filter(|h| !h.total.is_empty()) {
                        out.slots.push(h.clone());
                    }
                }
            }
        }
        out
    }
}

/// The statistics of one LUN: one [`OpStats`] per op class.
#[derive(Debug)]
pub struct LunStats {
    /// READ commands.
    pub read: OpStats,
    /// WRITE commands.
    pub write: OpStats,
    /// Everything else.
    pub other: OpStats,
    /// When the since-reset figures started.
    pub reset_at: Instant,
    /// Sequential read-ahead since the volume was served.
    pub read_ahead: ReadAheadCounters,
    /// READ/WRITE commands its QoS limits held back, since the volume was served.
    pub qos_held: u64,
}

/// What QoS did to one LUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QosCounters {
    /// Commands held back until the limits let them run, since the volume was served.
    pub held: u64,
    /// Commands held back now.
    pub waiting: u64,
}

/// What read-ahead did for one LUN (lifetime counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadAheadCounters {
    /// Chunks read ahead.
    pub chunks: u64,
    /// Bytes read ahead.
    pub bytes: u64,
    /// READ commands served from a chunk (ready, or waited for) instead of their own read.
    pub hits: u64,
}

impl Default for LunStats {
    fn default() -> Self {
        LunStats {
            read: OpStats::default(),
            write: OpStats::default(),
            other: OpStats::default(),
            reset_at: Instant::now(),
            read_ahead: ReadAheadCounters::default(),
            qos_held: 0,
        }
    }
}

/// A copy of one LUN's figures over a window, as the shard hands it to the control plane.
#[derive(Debug, Clone)]
pub struct LunSnapshot {
    /// Its target IQN.
    pub target: String,
    /// Its volume (or `VOLUME@SNAP` for an exported snapshot).
    pub volume: String,
    /// Its LUN number.
    pub lun: u64,
    /// Seconds the window covers (for rates): N, or less when the figures were reset (or the
    /// LUN served) more recently; the time since the reset for the since-reset window.
    pub seconds: f64,
    /// Seconds since the last reset.
    pub since_reset: f64,
    /// Read, write and other, in [`CLASSES`] order.
    pub classes: [ClassSnapshot; 3],
    /// Read-ahead counters (lifetime).
    pub read_ahead: ReadAheadCounters,
    /// QoS counters.
    pub qos: QosCounters,
}

impl LunSnapshot {
    /// Merges the one-second histograms of every class (see [`ClassSnapshot::merge_slots`]).
    pub fn merge_slots(&mut self) {
        self.classes.iter_mut().for_each(ClassSnapshot::merge_slots);
    }
}

impl LunStats {
    /// The figures of one op class.
    pub fn class(&self, class: OpClass) -> &OpStats {
        match class {
            OpClass::Read => &self.read,
            OpClass::Write => &self.write,
            OpClass::Other => &self.other,
        }
    }

    /// The figures of one op class.
    pub fn class_mut(&mut self, class: OpClass) -> &mut OpStats {
        match class {
            OpClass::Read => &mut self.read,
            OpClass::Write => &mut self.write,
            OpClass::Other => &mut self.other,
        }
    }

    /// Starts the since-reset figures and the windows anew at `now` (lifetime figures stay).
    pub fn reset(&mut self, now: Instant) {
        for c in CLASSES {
            self.class_mut(c).reset();
        }
        self.reset_at = now;
    }

    /// Releases window slots that have aged out (called by the shard's timer).
    pub fn trim(&mut self, now: Instant) {
        let sec = second_of(now);
        for c in CLASSES {
            self.class_mut(c).trim(sec);
        }
    }

    /// The figures over `window` at `now`.
    pub fn snapshot(&self, window: Window, now: Instant) -> ([ClassSnapshot; 3], f64, f64) {
        let since_reset = now.saturating_duration_since(self.reset_at).as_secs_f64();
        let seconds = match window {
            Window::SinceReset => since_reset,
            Window::Last(n) => f64::from(n.clamp(1, MAX_WINDOW_SECS)).min(since_reset),
        };
        let sec = second_of(now);
        let classes = CLASSES.map(|c| self.class(c).snapshot(window, sec));
        (classes, seconds, since_reset)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The whole second `t` falls in, counted from a process-wide epoch (the index of window slots).
pub fn second_of(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_secs()
}

/// The instant at which second `sec` starts (inverse of [`second_of`], for tests).
pub fn start_of_second(sec: u64) -> Instant {
    epoch() + Duration::from_secs(sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn times(data_out: u64, queued: u64, backend: u64, send: u64) -> PhaseTimes {
        PhaseTimes {
            data_out,
            queued,
            backend,
            send,
        }
    }

    #[test]
    fn phases_add_up_to_the_total() {
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        let stamps = Stamps {
            arrived: t0,
            ready: us(30),
            submitted: us(32),
            backend_done: us(132),
        };
        let t = PhaseTimes::between(&stamps, us(140));
        assert_eq!(t, times(30_000, 2_000, 100_000, 8_000));
        assert_eq!(t.total(), 140_000);
        // Out-of-order instants (a completion reaped in the round that executed the command,
        // an execution stamped before the recv round's instant) never give negative phases.
        let odd = Stamps {
            arrived: us(10),
            ready: us(5),
            submitted: us(20),
            backend_done: us(15),
        };
        let t = PhaseTimes::between(&odd, us(25));
        assert_eq!(t, times(0, 10_000, 0, 5_000));
        assert_eq!(t.total(), 15_000);
        assert_eq!(PhaseTimes::between(&odd, t0).total(), 10_000);
    }

    #[test]
    fn record_since_reset_and_reset() {
        let mut s = LunStats::default();
        let sec = second_of(Instant::now());
        s.class_mut(OpClass::Read)
            .record(sec, 4096, Some(&times(0, 1_000, 40_000, 9_000)));
        s.class_mut(OpClass::Read)
            .record(sec, 4096, Some(&times(0, 1_000, 140_000, 9_000)));
        s.class_mut(OpClass::Write).record(sec, 512, None);
        let (c, _, _) = s.snapshot(Window::SinceReset, Instant::now());
        assert_eq!((c[0].ops, c[0].bytes), (2, 8192));
        let p50 = c[0].quantile(0.5);
        assert!((49_900..=50_100).contains(&p50), "p50 {p50}");
        assert!(c[0].quantile(1.0) >= 149_000);
        let backend = &c[0].hists.as_ref().unwrap().phases[2];
        assert!((39_000..=41_000).contains(&backend.value_at_quantile(0.0)));
        assert_eq!((c[1].ops, c[1].bytes), (1, 512));
        assert!(c[1].hists.is_none(), "untimed commands make no histogram");
        assert!(
            s.other.hists.is_none() && s.other.ring.is_none(),
            "idle class costs nothing"
        );
        assert_eq!(c[0].lifetime.latency_ns_sum, 200_000);
        assert_eq!(c[0].lifetime.phase_ns_sum, [0, 2_000, 180_000, 18_000]);

        s.reset(Instant::now());
        let (c, seconds, _) = s.snapshot(Window::SinceReset, Instant::now());
        assert_eq!((c[0].ops, c[0].bytes, c[0].quantile(0.99)), (0, 0, 0));
        assert!(s.read.hists.is_none(), "a reset frees the histograms");
        assert_eq!(c[0].lifetime.ops, 2, "lifetime figures survive a reset");
        assert!(seconds < 1.0);
    }

    #[test]
    fn window_rotation() {
        let mut op = OpStats::default();
        let base = second_of(Instant::now()) + 1000;
        // 1 command in second base, 2 in base+1, 3 in base+2.
        for (i, sec) in [base, base + 1, base + 2].into_iter().enumerate() {
            for _ in 0..=i {
                op.record(sec, 100, Some(&times(0, 0, 1_000 * (i as u64 + 1), 0)));
            }
        }
        let at = |now: u64, n: u32| {
            let mut c = op.snapshot(Window::Last(n), now);
            c.merge_slots();
            c
        };
        // At base+3 the last complete second is base+2.
        assert_eq!(at(base + 3, 1).ops, 3);
        assert_eq!(at(base + 3, 2).ops, 5);
        assert_eq!(at(base + 3, 60).ops, 6);
        assert_eq!(at(base + 3, 60).bytes, 600);
        // The current second is not in the window.
        assert_eq!(at(base + 2, 1).ops, 2);
        let h = at(base + 3, 3).hists.unwrap();
        assert_eq!(h.total.len(), 6);
        assert!(h.total.value_at_quantile(0.0) <= 1_010);
        // A minute later the slots are stale: a slot is only read for its own second.
        assert_eq!(at(base + 2 + WINDOW_SLOTS as u64, 60).ops, 0);
        // Recording in a second that maps onto an old slot replaces its figures.
        op.record(base + WINDOW_SLOTS as u64, 1, None);
        let mut later = op.snapshot(Window::Last(1), base + WINDOW_SLOTS as u64 + 1);
        assert_eq!(later.ops, 1);
        assert!(
            later.slots.is_empty(),
            "the old slot's histograms were reset"
        );
        later.merge_slots();
        assert!(later.hists.is_none());
        // Since reset sees everything.
        assert_eq!(op.snapshot(Window::SinceReset, base).ops, 7);
    }

    #[test]
    fn trim_releases_aged_slots() {
        let mut op = OpStats::default();
        let base = second_of(Instant::now()) + 5000;
        op.record(base, 1, Some(&times(1, 1, 1, 1)));
        op.trim(base + 30);
        assert!(op.ring.is_some());
        op.trim(base + MAX_WINDOW_SECS as u64 + 1);
        assert!(
            op.ring.is_none(),
            "a ring with nothing in the last minute is freed"
        );
        assert!(op.hists.is_some(), "since-reset figures stay");
        assert_eq!(op.snapshot(Window::Last(60), base + 1).ops, 0);
    }

    #[test]
    fn lun_window_length_is_capped_by_the_reset() {
        let s = LunStats::default();
        let (_, seconds, since) = s.snapshot(Window::Last(10), s.reset_at + Duration::from_secs(3));
        assert_eq!((seconds, since), (3.0, 3.0));
        let (_, seconds, _) = s.snapshot(Window::Last(10), s.reset_at + Duration::from_secs(30));
        assert_eq!(seconds, 10.0);
        assert_eq!(second_of(start_of_second(42)), 42);
    }
}
