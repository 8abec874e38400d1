//! The shard's side of volume management: the control thread's messages that change what a
//! shard serves or read its volumes' metadata — add and remove a LUN (removal waits for its
//! connections to close), snapshot (waits for the writes in flight, then a group sync of the
//! journal), grow, checkpoint cut (journal rotation), and the stepwise space-usage walk.
//!
//! Everything here runs on the shard thread between completions; nothing blocks on the control
//! thread, which waits for the replies.

use super::shard::{CheckpointHold, Cuts, LunSlot, ProvisionError, Shard, SnapshotError};
use super::sync::SyncWaiter;
use crate::scsi::lun::SanitizeState;
use crate::storage::pool::extent_map::{ExtentMap, UsageWalk};
use crate::storage::pool::thin::ThinVolume;
use crossbeam::channel::Sender;
use std::sync::Arc;

/// Leaves (or shared subtrees) a usage walk visits per loop round: a few tens of µs at most,
/// so a walk of a TiB map never stalls the shard's I/O.
const USAGE_STEP: usize = 32;

/// A usage walk in progress.
pub(super) struct PendingUsage {
    target: String,
    walk: UsageWalk,
    marks: u64,
    reply: Sender<Result<UsageReport, String>>,
}

/// A served volume's space, measured by its shard.
#[derive(Debug)]
pub struct UsageReport {
    /// The walk of its map (finish it with `exclusive_extents`).
    pub walk: UsageWalk,
    /// Extents reserved for it (a full volume).
    pub reserved: u64,
    /// `ThinVolume::usage_marks` when the walk started, for `ShardMsg::TrimReservation`.
    pub marks: u64,
}

/// A snapshot waiting for the writes that were in flight when its map was shared, then for
/// its volume's journal to be durable (a group sync round).
pub(super) struct PendingSnapshot {
    id: u64,
    lun: usize,
    waiting_for: Vec<usize>,
    syncing: bool,
    result: Option<(ExtentMap, u64)>,
    reply: Sender<Result<(ExtentMap, u64), SnapshotError>>,
}

/// A thin volume becoming full: its map walked in steps (like a usage walk) to count the
/// extents it owns alone, then the rest reserved (`ThinVolume::make_full_measured`).
pub(super) struct PendingProvision {
    target: String,
    walk: UsageWalk,
    marks: u64,
    /// Walks begun again because the map was shared or unmapped under the last one.
    restarts: u32,
    reply: Sender<Result<u64, ProvisionError>>,
}

/// Walks begun again before the conversion counts in one go instead (a map shared or unmapped
/// that often is being written hard; the single count then stalls this shard briefly).
const PROVISION_RESTARTS: u32 = 3;

/// A freeze waiting for the writes in flight on its volumes.
pub(super) struct PendingFreeze {
    waiting_for: Vec<usize>,
    reply: Sender<Result<(), String>>,
}

/// A LUN removal waiting for its connections to close.
pub(super) struct PendingRemoval {
    pub(super) lun: usize,
    reply: Sender<Result<Option<(ExtentMap, u64)>, String>>,
}

impl Shard {
    /// Starts a stepwise usage walk of `target`'s map (answered by `advance_usage`).
    pub(super) fn start_usage(
        &mut self,
        target: String,
        reply: Sender<Result<UsageReport, String>>,
    ) {
        match self.thin_of(&target).map(|t| t.usage_marks()) {
            Ok(marks) => self.pending_usage.push(PendingUsage {
                target,
                walk: UsageWalk::new(),
                marks,
                reply,
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// One step of every usage walk in progress; finished ones are answered.
    pub(super) fn advance_usage(&mut self) {
        let mut jobs = std::mem::take(&mut self.pending_usage);
        jobs.retain_mut(|job| {
            let step = match self.thin_of(&job.target) {
                Ok(thin) => Ok((
                    thin.map().usage_step(&mut job.walk, USAGE_STEP),
                    thin.reserved_left(),
                )),
                Err(e) => Err(e),
            };
            match step {
                Ok((false, _)) => true,
                Ok((true, reserved)) => {
                    let report = UsageReport {
                        walk: std::mem::take(&mut job.walk),
                        reserved,
                        marks: job.marks,
                    };
                    let _ = job.reply.send(Ok(report));
                    false
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    false
                }
            }
        });
        // Walks started while stepping (none today) would be in `self.pending_usage`.
        jobs.append(&mut self.pending_usage);
        self.pending_usage = jobs;
    }

    pub(super) fn lun_index(&self, target: &str) -> Option<usize> {
        self.luns
            .iter()
            .position(|l| !l.target.is_empty() && l.target == target)
    }

    /// The LUN serving `target`, or why not.
    pub(super) fn served_lun(&mut self, target: &str) -> Result<&mut LunSlot, String> {
        let i = self
            .lun_index(target)
            .ok_or_else(|| format!("target {target} is not served here"))?;
        Ok(&mut self.luns[i])
    }

    pub(super) fn thin_of(&mut self, target: &str) -> Result<&mut ThinVolume, String> {
        self.served_lun(target)?
            .volume
            .as_thin()
            .ok_or_else(|| format!("target {target} is not a thin volume"))
    }

    /// Starts making `target`'s volume full: answered by `advance_provisions` once a stepwise
    /// walk has counted what it owns alone (a volume already full answers at once).
    pub(super) fn start_provision(
        &mut self,
        target: String,
        reply: Sender<Result<u64, ProvisionError>>,
    ) {
        match self.thin_of(&target) {
            Ok(thin) => {
                let marks = thin.usage_marks();
                self.pending_provisions.push(PendingProvision {
                    target,
                    walk: UsageWalk::new(),
                    marks,
                    restarts: 0,
                    reply,
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// One step of every conversion to full in progress; finished ones are answered and their
    /// logical units told (INQUIRY DATA HAS CHANGED).
    pub(super) fn advance_provisions(&mut self) {
        let mut jobs = std::mem::take(&mut self.pending_provisions);
        let mut converted = Vec::new();
        jobs.retain_mut(|job| {
            let thin = match self.thin_of(&job.target) {
                Ok(thin) => thin,
                Err(e) => {
                    let _ = job.reply.send(Err(e.into()));
                    return false;
                }
            };
            let done = thin.map().usage_step(&mut job.walk, USAGE_STEP);
            job.walk.drop_shared();
            if !done {
                return true;
            }
            let result = match thin.make_full_measured(job.walk.writable(), job.marks) {
                Some(result) => result,
                None if job.restarts < PROVISION_RESTARTS => {
                    job.restarts += 1;
                    job.walk = UsageWalk::new();
                    job.marks = thin.usage_marks();
                    return true;
                }
                None => thin.make_full(),
            };
            if result.is_ok() {
                converted.push(job.target.clone());
            }
            let needed = |needed| ProvisionError::NoSpace { needed };
            let _ = job.reply.send(result.map_err(needed));
            false
        });
        jobs.append(&mut self.pending_provisions);
        self.pending_provisions = jobs;
        for target in converted {
            if let Ok(slot) = self.served_lun(&target) {
                slot.lu.set_thin(false);
            }
        }
    }

    /// Makes `target`'s volume thin: its reservation goes back to the pool and its logical unit
    /// says so (the way to full is `start_provision`). A conversion to full still walking is
    /// dropped (it would reserve once done). Returns the extents given back.
    pub(super) fn make_thin(&mut self, target: &str) -> Result<u64, String> {
        self.pending_provisions.retain(|job| {
            if job.target != target {
                return true;
            }
            let e = format!("target {target} was made thin before its space was reserved");
            let _ = job.reply.send(Err(e.into()));
            false
        });
        let given = self.thin_of(target)?.make_thin();
        if let Ok(slot) = self.served_lun(target) {
            slot.lu.set_thin(true);
        }
        Ok(given)
    }

    pub(super) fn add_lun(&mut self, slot: LunSlot) {
        // Reuse the slot of a removed LUN (indexes are stable while connections use them).
        self.own_files.clear();
        let lun = match self.luns.iter().position(|l| l.target.is_empty()) {
            Some(i) => {
                self.readahead.forget_lun(i);
                self.luns[i] = slot;
                i
            }
            None => {
                self.luns.push(slot);
                self.luns.len() - 1
            }
        };
        if matches!(
            self.luns[lun].lu.sanitize_state(),
            SanitizeState::Running { .. }
        ) {
            self.resume_sanitize(lun);
        }
    }

    pub(super) fn remove_lun(
        &mut self,
        target: &str,
        force: bool,
        reply: Sender<Result<Option<(ExtentMap, u64)>, String>>,
    ) {
        let Some(lun) = self.lun_index(target) else {
            let _ = reply.send(Err(format!("target {target} is not served here")));
            return;
        };
        let users: Vec<usize> = self
            .live_conns()
            .filter(|(_, c)| c.lun == lun)
            .map(|(i, _)| i)
            .collect();
        if !users.is_empty() && !force {
            let _ = reply.send(Err(format!("{} session(s) are logged in", users.len())));
            return;
        }
        for i in users {
            self.close(i);
        }
        self.pending_removals.push(PendingRemoval { lun, reply });
        self.finish_removals();
    }

    /// Completes removals whose LUN has no connection left.
    pub(super) fn finish_removals(&mut self) {
        let mut i = 0;
        while i < self.pending_removals.len() {
            let lun = self.pending_removals[i].lun;
            let target = &self.luns[lun].target;
            // A sanitize's erases in flight name extents the pool frees once the map goes back.
            let erasing = self.pending_sanitizes.iter().any(|j| j.busy_on(target));
            if erasing || self.live_conns().any(|(_, c)| c.lun == lun) {
                i += 1;
                continue;
            }
            let p = self.pending_removals.swap_remove(i);
            let slot = &mut self.luns[lun];
            let map = slot
                .volume
                .as_thin()
                .map(|t| (t.take_map(), t.reserved_left()));
            let target = std::mem::take(&mut slot.target);
            // Its sanitize job (nothing in flight) goes with it: the erase resumes from its
            // record if the volume is served again, and must not run twice meanwhile.
            self.pending_sanitizes.retain(|j| !j.is_on(&target));
            self.readahead.forget_lun(lun);
            self.own_files.clear();
            let _ = p.reply.send(Ok(map));
        }
    }

    pub(super) fn snapshot(
        &mut self,
        target: &str,
        reply: Sender<Result<(ExtentMap, u64), SnapshotError>>,
    ) {
        let Some(lun) = self.lun_index(target) else {
            let e = format!("target {target} is not served here");
            let _ = reply.send(Err(SnapshotError::Failed(e)));
            return;
        };
        if self.luns[lun].lu.sanitize_state() != crate::scsi::SanitizeState::Idle {
            let target = target.to_string();
            let _ = reply.send(Err(SnapshotError::Sanitizing { target }));
            return;
        }
        let Some(thin) = self.luns[lun].volume.as_thin() else {
            let e = format!("target {target} is not a thin volume");
            let _ = reply.send(Err(SnapshotError::Failed(e)));
            return;
        };
        if let Err(needed) = thin.reserve_for_snapshot() {
            let target = target.to_string();
            let _ = reply.send(Err(SnapshotError::NoSpace { target, needed }));
            return;
        }
        // The journal is synced once the writes in flight are done (on the ring, with the
        // other durable work of the shard), before the answer.
        let taken = thin.share();
        let waiting_for = self.write_ops_on(lun);
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        self.pending_snapshots.push(PendingSnapshot {
            id,
            lun,
            waiting_for,
            syncing: false,
            result: Some(taken),
            reply,
        });
        self.finish_snapshots(None);
    }

    /// Starts the journal sync of snapshots no longer waiting for any write (after op `done`
    /// finished).
    /// Holds the new commands of `targets` (see `Throttle::freeze`) and answers `reply` once
    /// every write in flight on them has completed. An unknown target thaws the others and
    /// fails the freeze.
    pub(super) fn freeze(
        &mut self,
        targets: &[String],
        until: std::time::Instant,
        reply: Sender<Result<(), String>>,
    ) {
        let mut luns = Vec::new();
        for target in targets {
            match self.lun_index(target) {
                Some(lun) => luns.push(lun),
                None => {
                    let _ = reply.send(Err(format!("target {target} is not served here")));
                    return;
                }
            }
        }
        let mut waiting_for = Vec::new();
        for lun in luns {
            self.luns[lun].qos.freeze(until);
            waiting_for.extend(self.write_ops_on(lun));
        }
        if waiting_for.is_empty() {
            let _ = reply.send(Ok(()));
        } else {
            self.pending_freezes
                .push(PendingFreeze { waiting_for, reply });
        }
    }

    /// Lifts the freeze of `targets`: their held commands go (the loop releases them).
    pub(super) fn thaw(&mut self, targets: &[String]) {
        for target in targets {
            if let Some(lun) = self.lun_index(target) {
                self.luns[lun].qos.thaw();
            }
        }
    }

    /// Op `done` ended: answers the freezes that waited only for it.
    fn finish_freezes(&mut self, done: Option<usize>) {
        let Some(slot) = done else { return };
        self.pending_freezes.retain_mut(|f| {
            f.waiting_for.retain(|&s| s != slot);
            if f.waiting_for.is_empty() {
                let _ = f.reply.send(Ok(()));
                return false;
            }
            true
        });
    }

    pub(super) fn finish_snapshots(&mut self, done: Option<usize>) {
        if !self.pending_freezes.is_empty() {
            self.finish_freezes(done);
        }
        if self.pending_snapshots.is_empty() {
            return;
        }
        let mut ready = Vec::new();
        for p in &mut self.pending_snapshots {
            if let Some(slot) = done {
                p.waiting_for.retain(|&s| s != slot);
            }
            if p.waiting_for.is_empty() && !p.syncing {
                p.syncing = true;
                ready.push((p.lun, p.id));
            }
        }
        for (lun, id) in ready {
            self.join_sync(lun, SyncWaiter::Snapshot(id));
        }
    }

    /// The sync round a snapshot waited for is done: answer it.
    pub(super) fn snapshot_synced(&mut self, id: u64, failed: bool) {
        let Some(i) = self.pending_snapshots.iter().position(|p| p.id == id) else {
            return;
        };
        let p = self.pending_snapshots.swap_remove(i);
        let answer = match p.result {
            Some(taken) if !failed => Ok(taken),
            _ => Err(SnapshotError::Failed(
                "fdatasync of the volume's journal failed".to_string(),
            )),
        };
        let _ = p.reply.send(answer);
    }

    pub(super) fn rotate(&mut self, generation: u64) -> Result<Cuts, String> {
        let mut cuts = Vec::new();
        // Volumes only: an exported snapshot's map is the control plane's (a write-protected
        // volume's is still its shard's).
        for slot in self.luns.iter_mut().filter(|l| !l.target.is_empty()) {
            if let Some(thin) = slot.volume.as_thin().filter(|t| !t.is_snapshot_view()) {
                let (map, seq) = thin.rotate_journal(generation).map_err(|e| e.to_string())?;
                cuts.push((thin.image(), map, seq));
            }
        }
        let hold = CheckpointHold {
            _token: Arc::clone(&self.cut_hold),
        };
        Ok(Cuts { cuts, hold })
    }

    /// Whether a checkpoint writer still holds maps this shard cut (see [`Cuts`]).
    pub(super) fn checkpoint_holds_maps(&self) -> bool {
        Arc::strong_count(&self.cut_hold) > 1
    }

    pub(super) fn resize(&mut self, target: &str, size: u64, reserved: u64) -> Result<(), String> {
        let lun = self
            .lun_index(target)
            .ok_or_else(|| format!("target {target} is not served here"))?;
        let slot = &mut self.luns[lun];
        let thin = slot
            .volume
            .as_thin()
            .ok_or_else(|| format!("target {target} is not a thin volume"))?;
        thin.grow(size, reserved);
        let blocks = size / u64::from(slot.lu.info().block_size);
        slot.lu.set_capacity(blocks);
        Ok(())
    }
}
