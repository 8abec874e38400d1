//! Group commit: one round of `fdatasync`s on the ring makes many commands durable at once.
//!
//! Commands that must be durable before their status (FUA writes, every write of a volume with
//! `write_cache = false`, when they remapped extents; SYNCHRONIZE CACHE) and snapshots (whose
//! volume journal must be durable up to the cut before the control plane commits them) *join*
//! the shard's group sync. When no sync is in flight the joiner starts one at once: an
//! `fdatasync` of every file the batch's waiters need (for a command: the pool's data store and
//! its volume's journal; for a snapshot: the journal only), deduplicated, submitted on the
//! ring, so the shard never blocks. Joiners arriving
//! while a sync is in flight wait for the next one — the one in flight may have started before
//! their data was written — which starts the moment the current one completes, for all of
//! them together. Under load a batch therefore carries every command that completed its data
//! while the previous sync ran: one sync round per batch, not per command.
//!
//! Invariant: a waiter is released only by a sync round *submitted after* it joined, so every
//! write it depends on had completed before that round's `fdatasync` calls were issued.

use super::shard::{KIND_SYNC, Shard, user_data};
use io_uring::{opcode, types};
use std::os::fd::RawFd;

/// What waits for a group sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncWaiter {
    /// A storage op (its slot), in its `SyncMeta` or `Flush` phase.
    Op(usize),
    /// A pending snapshot (its id).
    Snapshot(u64),
    /// Extents adopted for another shard's EXTENDED COPY into a write-through volume (its id;
    /// see `runtime::xcopy`).
    Adopt(u64),
}

/// The shard's group-commit state (pure bookkeeping; the shard submits and completes rounds).
#[derive(Debug, Default)]
pub(super) struct GroupSync {
    /// `fdatasync`s of the round in flight not completed yet (0: no round in flight).
    in_flight: u32,
    /// A round is in flight (possibly with no file to sync yet).
    active: bool,
    /// Some `fdatasync` of the round in flight failed.
    failed: bool,
    /// Waiters released by the round in flight: (LUN index, waiter).
    riding: Vec<(usize, SyncWaiter)>,
    /// Waiters for the next round.
    waiting: Vec<(usize, SyncWaiter)>,
    /// Scratch: the files of a round.
    fds: Vec<RawFd>,
}

/// A finished round: who it releases, and whether it failed.
#[derive(Debug)]
pub(super) struct RoundDone {
    riders: Vec<(usize, SyncWaiter)>,
    failed: bool,
}

impl GroupSync {
    /// Adds a waiter. True when the caller must start a round now (none was in flight): the
    /// waiter rides it; otherwise it waits for the next round.
    fn join(&mut self, lun: usize, waiter: SyncWaiter) -> bool {
        if self.active {
            self.waiting.push((lun, waiter));
            false
        } else {
            self.riding.push((lun, waiter));
            true
        }
    }

    /// The riders of the round being started.
    fn riders(&self) -> impl Iterator<Item = (usize, SyncWaiter)> + '_ {
        self.riding.iter().copied()
    }

    /// The round starts with `syncs` `fdatasync`s in flight.
    fn begin(&mut self, syncs: u32) {
        self.active = true;
        self.failed = false;
        self.in_flight = syncs;
    }

    /// One `fdatasync` completed (with `res`); the round ends with the last one. When it ends,
    /// the waiters become the riders of the next round (start it when the result says so).
    fn complete(&mut self, res: i32) -> Option<(RoundDone, bool)> {
        if res < 0 {
            self.failed = true;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight > 0 {
            return None;
        }
        Some(self.end())
    }

    fn end(&mut self) -> (RoundDone, bool) {
        self.active = false;
        let done = RoundDone {
            riders: std::mem::take(&mut self.riding),
            failed: self.failed,
        };
        let next = !self.waiting.is_empty();
        if next {
            self.riding = std::mem::take(&mut self.waiting);
        }
        (done, next)
    }
}

impl Shard {
    /// Makes `waiter` durable with the next sync round of the files of LUN `lun`.
    pub(super) fn join_sync(&mut self, lun: usize, waiter: SyncWaiter) {
        if self.group.join(lun, waiter) {
            self.start_sync_round();
        }
    }

    /// Submits the `fdatasync`s of the riders' files.
    fn start_sync_round(&mut self) {
        let mut fds = std::mem::take(&mut self.group.fds);
        fds.clear();
        for (lun, waiter) in self.group.riders() {
            if let Some(slot) = self.luns.get(lun) {
                match waiter {
                    // Writes and flushes: their data and the mappings they depend on.
                    SyncWaiter::Op(_) => slot.volume.sync_fds(&mut fds),
                    // A snapshot, or adopted extents, depend on the mappings only (as before
                    // group commit: nothing was written to the data store).
                    SyncWaiter::Snapshot(_) | SyncWaiter::Adopt(_) => {
                        slot.volume.metadata_fds(&mut fds)
                    }
                }
            }
        }
        fds.sort_unstable();
        fds.dedup();
        self.group.begin(fds.len() as u32);
        for &fd in &fds {
            let sqe = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(user_data(KIND_SYNC, 0));
            self.push(sqe);
        }
        self.group.fds = fds;
        if self.group.in_flight == 0 {
            let round = self.group.end();
            self.after_sync_round(round);
        }
    }

    /// One `fdatasync` of the round in flight completed with `res`.
    pub(super) fn on_sync(&mut self, res: i32) {
        if let Some(round) = self.group.complete(res) {
            self.after_sync_round(round);
        }
    }

    /// The next round starts for everyone who waited, then this round's riders go on (those
    /// that join meanwhile wait for the round just started).
    fn after_sync_round(&mut self, (done, next): (RoundDone, bool)) {
        if next {
            self.start_sync_round();
        }
        for (_, waiter) in done.riders {
            match waiter {
                SyncWaiter::Op(slot) => self.op_synced(slot, done.failed),
                SyncWaiter::Snapshot(id) => self.snapshot_synced(id, done.failed),
                SyncWaiter::Adopt(id) => self.adopt_synced(id, done.failed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(done: &RoundDone) -> Vec<SyncWaiter> {
        done.riders.iter().map(|&(_, w)| w).collect()
    }

    #[test]
    fn a_waiter_is_released_only_by_a_round_started_after_it_joined() {
        let mut g = GroupSync::default();
        assert!(g.join(0, SyncWaiter::Op(1)), "idle: start a round");
        g.begin(2);
        // Joined while round 1 is in flight: must not ride it.
        assert!(!g.join(0, SyncWaiter::Op(2)));
        assert!(!g.join(1, SyncWaiter::Snapshot(7)));
        assert!(g.complete(0).is_none(), "one of two syncs still in flight");
        let (done, next) = g.complete(0).expect("round 1 ends");
        assert_eq!(released(&done), [SyncWaiter::Op(1)]);
        assert!(!done.failed);
        assert!(next, "the waiters start round 2 together");
        let luns: Vec<usize> = g.riders().map(|(lun, _)| lun).collect();
        assert_eq!(luns, [0, 1]);
        g.begin(1);
        assert!(!g.join(0, SyncWaiter::Op(3)));
        let (done, next) = g.complete(0).expect("round 2 ends");
        assert_eq!(
            released(&done),
            [SyncWaiter::Op(2), SyncWaiter::Snapshot(7)]
        );
        assert!(next);
        g.begin(1);
        let (done, next) = g.complete(0).expect("round 3 ends");
        assert_eq!(released(&done), [SyncWaiter::Op(3)]);
        assert!(!next, "nothing waits: idle");
        assert!(g.join(0, SyncWaiter::Op(4)), "idle again: start at once");
    }

    #[test]
    fn a_failed_sync_fails_its_whole_round_only() {
        let mut g = GroupSync::default();
        assert!(g.join(0, SyncWaiter::Op(1)));
        g.begin(2);
        assert!(!g.join(0, SyncWaiter::Op(2)));
        assert!(g.complete(-libc::EIO).is_none());
        let (done, next) = g.complete(0).expect("round ends");
        assert!(done.failed);
        assert!(next);
        g.begin(1);
        let (done, _) = g.complete(0).expect("next round ends");
        assert!(!done.failed, "the next round starts clean");
        assert_eq!(released(&done), [SyncWaiter::Op(2)]);
    }
}
