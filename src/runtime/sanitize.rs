//! SANITIZE BLOCK ERASE on the shard (SBC-4 5.30, 4.11): erase every block of a thin volume
//! so that what it held cannot be read back, from the logical unit or from the pool's data
//! store.
//!
//! The logical unit enters the sanitize state when it hands the command over
//! ([`crate::scsi::Outcome::Sanitize`]): from then on it answers other commands NOT READY,
//! SANITIZE IN PROGRESS, so nothing new reaches the volume. The job then:
//! 1. waits for the writes already in flight on the volume (they must not land after the erase);
//! 2. walks the volume's logical extents in chunks of [`CHUNK_EXTENTS`]: the physical extents of
//!    a chunk that no other image can see (`ThinVolume::exclusive_runs`) are erased in the data
//!    store — a hole punched (`FALLOC_FL_PUNCH_HOLE`), else the range zeroed
//!    (`FALLOC_FL_ZERO_RANGE`), else zeros written, whichever the file system takes first —
//!    and once those complete the chunk is unmapped (journaled like UNMAP);
//! 3. makes it durable: fdatasync of the data store and the volume's journal, on the ring;
//! 4. ends the sanitize state (GOOD, or the sanitize failure mode on an error) and answers the
//!    command unless it was answered at once (IMMED).
//!
//! Invariants:
//! - An extent is erased only while this volume maps it and no other image can see it: the
//!   erase precedes the unmap, so a freed extent is never erased after another volume got it.
//!   Snapshots (and EXTENDED COPY by reference) of a volume being sanitized are refused, so no
//!   image gains a hold on an extent between the check and the erase. Extents a snapshot
//!   shares keep their data: they are the snapshot's, and snapshot contents never change.
//! - A checkpoint writer holding the shard's maps (from the cut until the checkpoint is
//!   written) makes every node look shared: no chunk is judged meanwhile, the job waits for the
//!   writer's [`super::shard::CheckpointHold`] to drop, so no extent only this volume sees is
//!   unmapped without being erased.
//! - Every step runs on the shard thread between completions; the erases and syncs go through
//!   the ring, so the shard keeps serving its other volumes.
//! - The job survives the loss of the connection that sent the command, and an abort of the
//!   command (either only drops the answer), as SBC-4 wants of a sanitize operation. When the
//!   volume is being removed the job submits nothing more, and the removal waits until its
//!   erases in flight are done: they name physical extents the pool would otherwise free.

use super::shard::{Accounting, HeldCommand, KIND_SANITIZE, Shard, user_data};
use crate::iscsi::connection::DataInSource;
use crate::scsi::Completion;
use crate::scsi::lun::SanitizeState;
use io_uring::{opcode, types};
use std::os::fd::RawFd;

/// Logical extents looked at per chunk (1 GiB of 64 KiB extents): one chunk's erases are in
/// flight at a time.
pub(super) const CHUNK_EXTENTS: u64 = 16384;
/// Chunks with nothing to erase (unmapped or shared) walked per loop round at most, so a
/// sparse volume of many TiB does not stall the shard in one round.
const EMPTY_CHUNKS_PER_ROUND: u32 = 16;
/// The most bytes one zero-writing fallback write covers.
const ZERO_WRITE_BYTES: usize = 1 << 20;

/// How the data store's extents are erased: the first way the file system accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eraser {
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`: the file system forgets the
    /// blocks (a block device discards them and reads zeros).
    PunchHole,
    /// `fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)`.
    ZeroRange,
    /// Plain O_DIRECT writes of zeros.
    WriteZeros,
}

impl Eraser {
    fn next(self) -> Option<Eraser> {
        match self {
            Eraser::PunchHole => Some(Eraser::ZeroRange),
            Eraser::ZeroRange => Some(Eraser::WriteZeros),
            Eraser::WriteZeros => None,
        }
    }
}

/// Where a sanitize job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the writes that were in flight when it began.
    Draining,
    /// Erasing and unmapping chunk after chunk.
    Erasing,
    /// Waiting for the fdatasyncs that make the erase durable.
    Syncing,
}

/// A SANITIZE BLOCK ERASE in progress on one of the shard's volumes.
pub(super) struct PendingSanitize {
    /// Names its operations in `user_data`.
    id: usize,
    target: String,
    /// The command still owed its answer (IMMED=0), and its accounting.
    answer: Option<(HeldCommand, Accounting)>,
    stage: Stage,
    /// The next logical extent to look at.
    next: u64,
    /// The chunk whose erases are in flight (or to be redone with the next eraser).
    chunk: Option<(u64, u64)>,
    eraser: Eraser,
    in_flight: u32,
    /// An erase the file system does not support: redo the chunk with the next eraser.
    unsupported: bool,
    /// Waiting for a checkpoint writer to drop the shard's maps before the next chunk.
    awaiting_checkpoint: bool,
    failed: bool,
    /// Zeros for [`Eraser::WriteZeros`] (kept until its writes complete).
    zeros: Option<super::buf::AlignedBuf>,
}

impl PendingSanitize {
    /// Whether the next round has work for it without waiting for a completion.
    pub(super) fn runnable(&self) -> bool {
        self.stage != Stage::Draining && self.in_flight == 0 && !self.awaiting_checkpoint
    }

    /// Whether it has erases or syncs in flight on the volume of `target`.
    pub(super) fn busy_on(&self, target: &str) -> bool {
        self.in_flight > 0 && self.is_on(target)
    }

    /// Whether it erases the volume of `target`.
    pub(super) fn is_on(&self, target: &str) -> bool {
        self.target == target
    }
}

impl Shard {
    /// Starts SANITIZE BLOCK ERASE of LUN `lun`'s volume for command `cmd`: answered GOOD now
    /// with `immed`, else when the erase is done. (The caller flushes the connection.)
    pub(super) fn start_sanitize(
        &mut self,
        cmd: HeldCommand,
        lun: usize,
        immed: bool,
        acct: Accounting,
    ) {
        let answer = if immed {
            let good = Completion::good(Vec::new());
            self.finish(cmd.index, cmd.task, good, DataInSource::None, 0, acct);
            None
        } else {
            Some((cmd, acct))
        };
        self.queue_sanitize(lun, answer);
    }

    /// Resumes the erase of LUN `lun`, which came with a sanitize operation in progress (kept
    /// across a restart, or a rename): from the start, since what was erased and unmapped
    /// before is simply found unmapped. Nobody waits for an answer.
    pub(super) fn resume_sanitize(&mut self, lun: usize) {
        let target = &self.luns[lun].target;
        eprintln!(
            "shoal: shard {}: target {target}: resuming its SANITIZE",
            self.id
        );
        self.queue_sanitize(lun, None);
    }

    fn queue_sanitize(&mut self, lun: usize, answer: Option<(HeldCommand, Accounting)>) {
        let id = self.next_waiter_id as usize;
        self.next_waiter_id += 1;
        self.pending_sanitizes.push(PendingSanitize {
            id,
            target: self.luns[lun].target.clone(),
            answer,
            stage: Stage::Draining,
            next: 0,
            chunk: None,
            eraser: Eraser::PunchHole,
            in_flight: 0,
            unsupported: false,
            awaiting_checkpoint: false,
            failed: false,
            zeros: None,
        });
    }

    /// A completion of sanitize job `id`'s erase or sync.
    pub(super) fn on_sanitize_io(&mut self, id: usize, res: i32) {
        let Some(job) = self.pending_sanitizes.iter_mut().find(|j| j.id == id) else {
            return;
        };
        job.in_flight = job.in_flight.saturating_sub(1);
        if res >= 0 {
            return;
        }
        let unsupported = res == -libc::EOPNOTSUPP || res == -libc::EINVAL;
        if unsupported && job.stage == Stage::Erasing && job.eraser.next().is_some() {
            job.unsupported = true;
        } else {
            let e = std::io::Error::from_raw_os_error(-res);
            super::shard::log_error(self.id, "erasing a sanitized volume's extents", &e);
            job.failed = true;
        }
    }

    /// One step of every sanitize job; finished ones end their logical unit's sanitize state
    /// and are answered.
    pub(super) fn advance_sanitizes(&mut self) {
        let mut jobs = std::mem::take(&mut self.pending_sanitizes);
        let mut ended = Vec::new();
        jobs.retain_mut(|job| {
            if job.in_flight > 0 {
                return true; // nothing to do before its completions
            }
            let Some(lun) = self.lun_index(&job.target) else {
                return false; // no longer served here: nothing left to erase or answer
            };
            if self.pending_removals.iter().any(|r| r.lun == lun) {
                return false; // going away: erase nothing more (the removal waited for us)
            }
            if !matches!(
                self.luns[lun].lu.sanitize_state(),
                SanitizeState::Running { .. }
            ) {
                return false; // the unit is out of the sanitize state: it takes writes again
            }
            if self.advance_sanitize(job, lun) {
                return true;
            }
            ended.push((lun, !job.failed, job.answer.take()));
            false // its zeros, if any, go back to the pool
        });
        jobs.append(&mut self.pending_sanitizes);
        self.pending_sanitizes = jobs;
        for (lun, ok, answer) in ended {
            self.end_sanitize(lun, ok, answer);
        }
    }

    /// Moves `job` (with nothing in flight) on; false once it is over.
    fn advance_sanitize(&mut self, job: &mut PendingSanitize, lun: usize) -> bool {
        match job.stage {
            Stage::Draining => {
                if self.write_ops_on(lun).is_empty() {
                    job.stage = Stage::Erasing;
                }
                true
            }
            Stage::Erasing => {
                self.erase_step(job, lun);
                true
            }
            Stage::Syncing => false,
        }
    }

    /// Finishes the chunk whose erases completed (unmaps it), then starts the next chunk's
    /// erases; at the end (or on a failure) submits the syncs.
    fn erase_step(&mut self, job: &mut PendingSanitize, lun: usize) {
        let Some(thin) = self.luns[lun].volume.as_thin() else {
            job.failed = true;
            job.stage = Stage::Syncing;
            return;
        };
        let es = thin.extent_size();
        let extents = thin.map().len();
        let mut empty_chunks = 0;
        loop {
            if let Some((first, end)) = job.chunk.take() {
                if job.unsupported && !job.failed {
                    job.unsupported = false;
                    match job.eraser.next() {
                        Some(next) => {
                            job.eraser = next;
                            job.chunk = Some((first, end));
                            self.submit_erases(job, lun, first, end);
                            return;
                        }
                        None => job.failed = true,
                    }
                }
                let Some(thin) = self.luns[lun].volume.as_thin() else {
                    job.failed = true;
                    break;
                };
                if !job.failed && thin.unmap(first * es, (end - first) * es).is_err() {
                    job.failed = true;
                }
                job.next = end;
                let done = u128::from(end) * 65536 / u128::from(extents.max(1));
                let done = u16::try_from(done).unwrap_or(u16::MAX);
                self.luns[lun].lu.set_sanitize_progress(done);
            }
            if job.failed || job.next >= extents {
                break;
            }
            // While a checkpoint writer holds the maps, every extent looks shared and would be
            // unmapped without being erased: wait (polled each round, at most a tick apart).
            job.awaiting_checkpoint = self.checkpoint_holds_maps();
            if job.awaiting_checkpoint {
                return;
            }
            let first = job.next;
            let end = (first + CHUNK_EXTENTS).min(extents);
            job.chunk = Some((first, end));
            if self.submit_erases(job, lun, first, end) > 0 {
                return;
            }
            empty_chunks += 1;
            if empty_chunks >= EMPTY_CHUNKS_PER_ROUND {
                return; // the chunk is unmapped next round
            }
        }
        job.stage = Stage::Syncing;
        let mut fds = Vec::new();
        self.luns[lun].volume.sync_fds(&mut fds);
        let mut sqes = Vec::with_capacity(fds.len());
        for fd in fds {
            let sqe = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(user_data(KIND_SANITIZE, job.id));
            sqes.push(sqe);
        }
        job.in_flight += sqes.len() as u32;
        for sqe in sqes {
            self.push(sqe);
        }
    }

    /// Submits the erases of the extents of logical extents `first..end` that only this volume
    /// sees; returns how many operations are now in flight.
    fn submit_erases(
        &mut self,
        job: &mut PendingSanitize,
        lun: usize,
        first: u64,
        end: u64,
    ) -> u32 {
        let Some(thin) = self.luns[lun].volume.as_thin() else {
            return 0;
        };
        let es = thin.extent_size();
        let fd = thin.data_fd();
        let ranges: Vec<(u64, u64)> = thin
            .exclusive_runs(first, end)
            .into_iter()
            .map(|(pext, n)| (thin.data_offset(pext), n * es))
            .collect();
        let mut sqes = Vec::new();
        for (offset, len) in ranges {
            self.erase_range(job, fd, offset, len, &mut sqes);
        }
        job.in_flight += sqes.len() as u32;
        for sqe in sqes {
            self.push(sqe);
        }
        job.in_flight
    }

    /// The operations that erase `len` bytes at `offset` of the data store `fd`.
    fn erase_range(
        &mut self,
        job: &mut PendingSanitize,
        fd: RawFd,
        offset: u64,
        len: u64,
        sqes: &mut Vec<io_uring::squeue::Entry>,
    ) {
        let ud = user_data(KIND_SANITIZE, job.id);
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let mode = match job.eraser {
            Eraser::PunchHole => libc::FALLOC_FL_PUNCH_HOLE | keep,
            Eraser::ZeroRange => libc::FALLOC_FL_ZERO_RANGE | keep,
            Eraser::WriteZeros => {
                let zeros = job.zeros.get_or_insert_with(|| {
                    let mut z = self.pool.take(ZERO_WRITE_BYTES);
                    z.fill(0);
                    z
                });
                let piece = zeros.len() as u64;
                let mut at = offset;
                while at < offset + len {
                    let n = piece.min(offset + len - at) as u32;
                    let sqe = opcode::Write::new(types::Fd(fd), zeros.as_ptr(), n)
                        .offset(at)
                        .build()
                        .user_data(ud);
                    sqes.push(sqe);
                    at += u64::from(n);
                }
                return;
            }
        };
        let sqe = opcode::Fallocate::new(types::Fd(fd), len)
            .offset(offset)
            .mode(mode)
            .build()
            .user_data(ud);
        sqes.push(sqe);
    }

    /// Ends LUN `lun`'s sanitize state and answers the command if it still waits.
    fn end_sanitize(
        &mut self,
        lun: usize,
        mut ok: bool,
        answer: Option<(HeldCommand, Accounting)>,
    ) {
        // Nothing read the volume meanwhile, but read-ahead from before may still be cached.
        let capacity = self.luns[lun].volume.capacity();
        self.readahead.invalidate(lun, 0, capacity);
        let slot = &mut self.luns[lun];
        let mut completion = slot.lu.sanitize_ended(ok);
        if let Err(e) = slot.store_sanitize() {
            super::shard::log_error(self.id, "storing the end of a SANITIZE", &e);
            if ok {
                // The record may still say the erase runs, and the next start would erase
                // whatever was written meanwhile: the medium stays closed, in the failure mode
                // (EXIT FAILURE MODE allowed, once the record can be stored).
                slot.revert_sanitize(SanitizeState::Failed { ause: true }, self.id);
                completion = Completion::check(crate::scsi::Sense::sanitize_failed());
                ok = false;
            }
        }
        if !ok {
            let target = &self.luns[lun].target;
            let e = format!("target {target}: the volume is in the sanitize failure mode");
            super::shard::log_error(self.id, "SANITIZE failed", &e);
        }
        let Some((cmd, acct)) = answer else { return };
        if self.held_conn(cmd).is_none() {
            return; // its connection is gone
        }
        self.finish(cmd.index, cmd.task, completion, DataInSource::None, 0, acct);
        self.flush(cmd.index);
    }

    /// Ends without status the SANITIZE commands a task management function aborted while
    /// their erase runs on (SBC-4: a sanitize operation is not stopped by an abort or reset),
    /// so the function's answer does not wait for the erase.
    pub(super) fn end_aborted_sanitize_answers(&mut self) {
        let mut aborted = Vec::new();
        for job in &mut self.pending_sanitizes {
            let Some((cmd, _)) = job.answer else { continue };
            let state = self.conns.get(cmd.index).and_then(|c| c.as_deref());
            let task = state
                .filter(|sc| sc.tsih == cmd.tsih)
                .and_then(|sc| sc.conn.task(cmd.task));
            if task.is_none_or(|t| t.aborted()) {
                job.answer = None;
                aborted.push(cmd);
            }
        }
        for cmd in aborted {
            self.end_without_status(cmd);
        }
    }
}
