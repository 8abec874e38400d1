//! EXTENDED COPY between logical units: a chunk of whole extents copied by reference from one
//! thin volume of the pool to another (`ThinVolume::lend_extents` on the source,
//! `ThinVolume::adopt_extents` on the destination), so that a Storage vMotion or a template
//! deployed to another datastore moves no data.
//!
//! Invariants:
//! - **Reachability.** A copy manager must not reach volumes the host was never given (LIO's
//!   CVE-2020-28374). A unit other than the command's own is reachable only when the command's
//!   initiator (by iSCSI name) has a session to it — so it passed that unit's access list and
//!   CHAP at login — and no reservation there forbids that session the access (reading the
//!   source, changing the destination). Anything else is COPY TARGET DEVICE NOT REACHABLE,
//!   and the host copies by itself.
//! - **One owner per map.** A volume's map changes only on the shard that serves it. When both
//!   units are on the command's shard it lends and adopts itself; otherwise it hands the chunk
//!   to the control plane's copy thread ([`CrossCopy`], `Daemon::cross_copy`), which asks the
//!   source's shard to lend and the destination's to adopt, and answers with
//!   `ShardMsg::CopyDone`. Shards never wait for one another, and the copy thread does not
//!   wait long for the control state (an admin operation holding it may be waiting for this
//!   very command): after 200 ms it refuses the chunk.
//! - **References.** Lent extents carry one reference each from the moment they are lent; the
//!   adopting map takes them over, or whoever refuses them gives them back — except on a
//!   journal error or a late refusal (the adopter disposed of them) or when a shard did not
//!   answer (left counted: space lost until the next start recounts, never an extent freed
//!   while mapped).
//! - **Full volumes** lend and adopt too: each first reserves one more pool extent for every
//!   extent it owned alone and now shares (`ThinVolume::lend_extents` / `adopt_extents`), so
//!   it still never runs out of space; when the pool cannot, the copy is refused.

use super::io::Phase;
use super::shard::{KIND_IO, Shard, log_error, user_data};
use crate::scsi::Outcome;
use crate::scsi::xcopy::CopySegment;

/// Why a chunk to or from another logical unit was not copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyRefusal {
    /// Not served, not reachable by this initiator, a reservation forbids it, partial extents,
    /// a write-protected destination, extents being remapped: COPY TARGET DEVICE NOT
    /// REACHABLE. Lent extents sent along were not taken.
    NotReachable,
    /// Past the unit's end: LOGICAL BLOCK ADDRESS OUT OF RANGE. Lent extents were not taken.
    OutOfRange,
    /// The destination refused once it had the lent extents (a full volume whose reservation
    /// the pool cannot grow): COPY TARGET DEVICE NOT REACHABLE, the references already given
    /// back.
    Refused,
    /// A journal record could not be written; lent extents were disposed of.
    Io,
}

impl CopyRefusal {
    /// The ASC / ASCQ of the COPY ABORTED it ends the command with (`None`: an I/O error).
    fn sense_codes(self) -> Option<(u8, u8)> {
        match self {
            CopyRefusal::NotReachable | CopyRefusal::Refused => Some((0x0D, 0x02)),
            CopyRefusal::OutOfRange => Some((0x21, 0x00)),
            CopyRefusal::Io => None,
        }
    }
}

/// Extents lent for a copy (one reference each; `None`: unmapped), or why not.
pub type Lent = Result<Vec<Option<u64>>, CopyRefusal>;

/// Where a shard answers an adoption for the copy thread (outer `Err`: the shard failed).
pub type AdoptReply = crossbeam::channel::Sender<Result<Result<(), CopyRefusal>, String>>;

/// One side of a chunk another shard must help with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySide {
    /// The command's own unit, by target name (already checked).
    Own(String),
    /// Another unit, by NAA designator (the control plane finds its shard and target; that
    /// shard checks the initiator may reach it).
    Named([u8; 16]),
}

/// A chunk for the control plane's copy thread: copy `count` extents from extent `src_first`
/// of `src` to extent `dst_first` of `dst`, for `initiator`, then answer shard `shard` with
/// `ShardMsg::CopyDone { slot, .. }`.
#[derive(Debug, Clone)]
pub struct CrossCopy {
    /// The shard whose command it is.
    pub shard: usize,
    /// Its op slot there.
    pub slot: usize,
    /// The command's initiator (iSCSI name).
    pub initiator: String,
    /// Source unit.
    pub src: CopySide,
    /// Destination unit.
    pub dst: CopySide,
    /// First source extent.
    pub src_first: u64,
    /// First destination extent.
    pub dst_first: u64,
    /// Extents.
    pub count: u64,
}

impl Shard {
    /// Copies an EXTENDED COPY chunk that names another unit: here when this shard serves both
    /// units (the op's phase then ends on the next round), else through the copy thread (it
    /// ends when `CopyDone` arrives).
    pub(super) fn copy_between_lus(&mut self, slot: usize, lun: usize, chunk: CopySegment) {
        let outcome = self.copy_here_or_there(slot, lun, chunk);
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        op.phase = Phase::Shared;
        op.pending = 1;
        match outcome {
            Some(Ok(dst)) => op.copy_dst_lun = Some(dst),
            Some(Err(refusal)) => Self::note_refusal(op, refusal),
            None => {
                // Handed to the copy thread.
                op.copy_remote = true;
                return;
            }
        }
        self.inline_done.push((user_data(KIND_IO, slot), 0));
    }

    fn note_refusal(op: &mut super::io::IoOp, refusal: CopyRefusal) {
        match refusal.sense_codes() {
            Some(codes) => op.copy_aborted = Some(codes),
            None => op.error = true,
        }
    }

    /// The chunk copied here (`Some(Ok(destination LUN))`), refused (`Some(Err(..))`), or
    /// handed to the copy thread (`None`).
    fn copy_here_or_there(
        &mut self,
        slot: usize,
        lun: usize,
        chunk: CopySegment,
    ) -> Option<Result<usize, CopyRefusal>> {
        let Some(initiator) = self.initiator_of(slot) else {
            return Some(Err(CopyRefusal::NotReachable));
        };
        let Some(es) = self.luns[lun].volume.as_thin().map(|t| t.extent_size()) else {
            return Some(Err(CopyRefusal::NotReachable));
        };
        if chunk.src % es != 0 || chunk.dst % es != 0 || chunk.len % es != 0 {
            return Some(Err(CopyRefusal::NotReachable));
        }
        let (src_first, dst_first, count) = (chunk.src / es, chunk.dst / es, chunk.len / es);
        let local = |naa: Option<[u8; 16]>| match naa {
            None => Some(lun),
            Some(naa) => self.local_lun(&naa),
        };
        match (local(chunk.src_lu), local(chunk.dst_lu)) {
            (Some(src), Some(dst)) => {
                let shared =
                    self.share_locally(&initiator, lun, (src, src_first), (dst, dst_first), count);
                Some(shared.map(|()| dst))
            }
            _ => {
                let side = |naa: Option<[u8; 16]>| match naa {
                    None => CopySide::Own(self.luns[lun].target.clone()),
                    Some(naa) => CopySide::Named(naa),
                };
                let request = CrossCopy {
                    shard: self.id,
                    slot,
                    initiator,
                    src: side(chunk.src_lu),
                    dst: side(chunk.dst_lu),
                    src_first,
                    dst_first,
                    count,
                };
                let sent = self
                    .copy_requests
                    .as_ref()
                    .is_some_and(|tx| tx.send(request).is_ok());
                if sent {
                    None
                } else {
                    Some(Err(CopyRefusal::NotReachable))
                }
            }
        }
    }

    /// Lends `count` extents from `src` and has `dst` adopt them, both LUNs of this shard
    /// (`own`: the command's, which needs no check).
    fn share_locally(
        &mut self,
        initiator: &str,
        own: usize,
        (src, src_first): (usize, u64),
        (dst, dst_first): (usize, u64),
        count: u64,
    ) -> Result<(), CopyRefusal> {
        let check = |l: usize| (l != own).then_some(initiator);
        self.check_copy_side(dst, check(dst), dst_first, count, true)?;
        if src == dst {
            let shared = self.luns[dst]
                .volume
                .as_thin()
                .map_or(Ok(false), |t| t.share_extents(src_first, dst_first, count));
            return self.after_adopt(dst, dst_first, count, shared);
        }
        // The destination passed its checks above, on this thread: it takes what is lent.
        let lent = self.lend_for_copy(src, check(src), src_first, count)?;
        self.adopt_checked(dst, dst_first, lent)
    }

    /// Lends `count` extents from `first` of LUN `lun` (checked for `initiator` when another
    /// shard's or another unit's command asks).
    pub(super) fn lend_for_copy(
        &mut self,
        lun: usize,
        initiator: Option<&str>,
        first: u64,
        count: u64,
    ) -> Result<Vec<Option<u64>>, CopyRefusal> {
        self.check_copy_side(lun, initiator, first, count, false)?;
        self.luns[lun]
            .volume
            .as_thin()
            .and_then(|t| t.lend_extents(first, count))
            .ok_or(CopyRefusal::NotReachable)
    }

    /// Maps extents from `first` of LUN `lun` to `lent`. On `NotReachable` / `OutOfRange` the
    /// lent references are untouched (the caller gives them back); otherwise they are taken or
    /// disposed of.
    pub(super) fn adopt_for_copy(
        &mut self,
        lun: usize,
        initiator: Option<&str>,
        first: u64,
        lent: Vec<Option<u64>>,
    ) -> Result<(), CopyRefusal> {
        self.check_copy_side(lun, initiator, first, lent.len() as u64, true)?;
        self.adopt_checked(lun, first, lent)
    }

    /// [`Shard::adopt_for_copy`] once `check_copy_side` passed for it: the references are
    /// always taken or disposed of.
    fn adopt_checked(
        &mut self,
        lun: usize,
        first: u64,
        lent: Vec<Option<u64>>,
    ) -> Result<(), CopyRefusal> {
        let count = lent.len() as u64;
        let adopted = match self.luns[lun].volume.as_thin() {
            Some(thin) => thin.adopt_extents(first, lent),
            // `check_copy_side` found a thin-pool volume here.
            None => return Err(CopyRefusal::Refused),
        };
        match self.after_adopt(lun, first, count, adopted) {
            // `adopt_extents` gave the references back: say so, so nobody releases them again.
            Err(CopyRefusal::NotReachable) => Err(CopyRefusal::Refused),
            other => other,
        }
    }

    /// Read-ahead dropped over the changed range, and the outcome of a share or adoption.
    fn after_adopt(
        &mut self,
        lun: usize,
        first: u64,
        count: u64,
        adopted: Result<bool, crate::storage::StorageError>,
    ) -> Result<(), CopyRefusal> {
        if let Some(es) = self.luns[lun].volume.as_thin().map(|t| t.extent_size()) {
            self.readahead.invalidate(lun, first * es, count * es);
        }
        match adopted {
            Ok(true) => Ok(()),
            Ok(false) => Err(CopyRefusal::NotReachable),
            Err(e) => {
                log_error(self.id, "journaling an extended copy", &e);
                Err(CopyRefusal::Io)
            }
        }
    }

    /// Whether LUN `lun` may be a copy's source (or, `write`, its destination) for `count`
    /// extents from `first`: inside the unit, not write-protected when written, and for
    /// another unit (`initiator` set) reachable by that initiator, with no COMPARE AND WRITE
    /// in flight over the destination range.
    fn check_copy_side(
        &mut self,
        lun: usize,
        initiator: Option<&str>,
        first: u64,
        count: u64,
        write: bool,
    ) -> Result<(), CopyRefusal> {
        let Some(es) = self.extent_size_of(lun) else {
            return Err(CopyRefusal::NotReachable);
        };
        let slot = &self.luns[lun];
        // Being sanitized: its extents must neither gain a holder nor change under the erase.
        if slot.lu.sanitize_state() != crate::scsi::SanitizeState::Idle {
            return Err(CopyRefusal::NotReachable);
        }
        let end = first.checked_add(count).and_then(|e| e.checked_mul(es));
        if end.is_none_or(|end| end > slot.volume.capacity()) {
            return Err(CopyRefusal::OutOfRange);
        }
        // Frozen for a consistent snapshot of several volumes: not changed until thawed.
        if write && (slot.lu.info().read_only || slot.qos.frozen(std::time::Instant::now())) {
            return Err(CopyRefusal::NotReachable);
        }
        if let Some(initiator) = initiator {
            let session = self.live_conns().find(|(_, sc)| {
                sc.lun == lun
                    && !sc.closing
                    && sc.session.initiator_name.eq_ignore_ascii_case(initiator)
            });
            match session {
                Some((_, sc)) if !slot.lu.forbids(sc.nexus, write) => {}
                _ => return Err(CopyRefusal::NotReachable),
            }
        }
        if write && self.compare_and_write_overlaps(lun, first * es, count * es) {
            return Err(CopyRefusal::NotReachable);
        }
        let adoptable = |t: &mut crate::storage::pool::thin::ThinVolume| t.may_adopt(first, count);
        if write && !self.luns[lun].volume.as_thin().is_some_and(adoptable) {
            return Err(CopyRefusal::NotReachable);
        }
        Ok(())
    }

    fn extent_size_of(&mut self, lun: usize) -> Option<u64> {
        let slot = self.luns.get_mut(lun)?;
        slot.volume.as_thin().map(|t| t.extent_size())
    }

    /// The LUN of this shard serving the unit with NAA designator `naa`.
    fn local_lun(&self, naa: &[u8; 16]) -> Option<usize> {
        self.luns
            .iter()
            .position(|l| !l.target.is_empty() && l.lu.info().naa == *naa)
    }

    /// The LUN of this shard serving `target`.
    pub(super) fn lun_of_target(&self, target: &str) -> Option<usize> {
        self.luns.iter().position(|l| l.target == target)
    }

    /// The iSCSI name of the initiator whose command op `slot` runs.
    fn initiator_of(&self, slot: usize) -> Option<String> {
        let op = self.ops.get(slot)?.as_ref()?;
        let sc = self.conns.get(op.conn)?.as_deref()?;
        Some(sc.session.initiator_name.clone())
    }

    /// Whether a COMPARE AND WRITE in flight on LUN `lun` overlaps `len` bytes at `offset`.
    fn compare_and_write_overlaps(&self, lun: usize, offset: u64, len: u64) -> bool {
        self.caw_active > 0
            && self.ops.iter().enumerate().any(|(slot, o)| {
                o.as_ref().is_some_and(|o| {
                    matches!(o.outcome, Outcome::CompareAndWrite { .. })
                        && self.lun_of(slot) == Some(lun)
                        && o.written_ranges()
                            .iter()
                            .any(|&(b, bl)| offset < b + bl && b < offset + len)
                })
            })
    }

    /// `ShardMsg::AdoptExtents`: adopts `lent` into `target` and answers `reply`, after the
    /// shard's group sync when the volume writes through (its journal must be durable before
    /// the copy is acknowledged, as a written chunk's would be).
    pub(super) fn adopt_for_other_shard(
        &mut self,
        target: &str,
        initiator: Option<&str>,
        first: u64,
        lent: Vec<Option<u64>>,
        reply: AdoptReply,
    ) {
        let Some(lun) = self.lun_of_target(target) else {
            let _ = reply.send(Ok(Err(CopyRefusal::NotReachable)));
            return;
        };
        let adopted = self.adopt_for_copy(lun, initiator, first, lent);
        if adopted.is_err() || self.luns[lun].lu.write_cache_enabled() {
            let _ = reply.send(Ok(adopted));
            return;
        }
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        self.pending_adopts.push((id, reply));
        self.join_sync(lun, super::sync::SyncWaiter::Adopt(id));
    }

    /// The group sync an adoption waited for is done: answer it (the extents are mapped
    /// either way; a failed sync fails the copy).
    pub(super) fn adopt_synced(&mut self, id: u64, failed: bool) {
        let Some(i) = self.pending_adopts.iter().position(|(p, _)| *p == id) else {
            return;
        };
        let (_, reply) = self.pending_adopts.swap_remove(i);
        let result = if failed { Err(CopyRefusal::Io) } else { Ok(()) };
        let _ = reply.send(Ok(result));
    }

    /// The copy thread's answer for op `slot`: its chunk ends (see `Shard::end_phase`).
    pub(super) fn copy_done(&mut self, slot: usize, result: Result<(), CopyRefusal>) {
        let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Err(refusal) = result {
            Self::note_refusal(op, refusal);
        }
        self.on_io(slot, 0);
    }
}
