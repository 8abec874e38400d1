//! Storage I/O of SCSI commands on the shard's ring: a small state machine per command.
//!
//! ```text
//! Read / Verify:      Read ─────────────────────────────────────────────▶ done (compare)
//! Write:              plan ─▶ CopyOld? ─▶ WriteData ─▶ commit ─▶ SyncMeta? ─▶ VerifyRead? ─▶ done
//! Flush:              Flush (group sync: fdatasync data store + journals) ────────────────▶ done
//! Compare and write:  [range free] ─▶ Read ─▶ compare ─▶ (equal) plan ─▶ … as Write ─▶ done
//! Extended copy:      per chunk (≤ COPY_CHUNK of a segment): Read (source) ─▶ plan (destination)
//!                     ─▶ … as Write ─▶ next chunk, or done after the last
//! ```
//! COMPARE AND WRITE is atomic with respect to every other write of its LUN: it starts only when
//! no write overlapping its range is in flight, and until it ends, writes overlapping its range
//! wait (`range_waiters`) — they are retried whenever an op finishes.
//! A write whose plan hits a logical extent being copied by another write is parked and
//! re-planned when that copy commits (writes to one extent are serialised while it is remapped).
//!
//! Invariant: every buffer an SQE points at (read buffer, bounce buffers, the task's Data-Out)
//! is owned by the op or its task until the op's last completion arrives.
//!
//! A volume whose data store is in memory (tmpfs) has its transfers done at once with plain
//! `pread`/`pwrite` (`Transfer::run_inline`): such a file system has no non-blocking path, so
//! io_uring would hand every one to a kernel worker thread, which costs more than the copy. Their
//! results go through the same completion path as the ring's, in the shard's next round.

use super::buf::{AlignedBuf, BufPool};
use super::files::OwnFile;
use super::readahead::Lookup;
use super::shard::{Accounting, KIND_IO, KIND_READAHEAD, Shard, log_error, user_data};
use super::sync::SyncWaiter;
use crate::iscsi::connection::{DataInSource, TaskId};
use crate::scsi::xcopy::CopySegment;
use crate::scsi::{self, IoResult, OpClass, Outcome};
use crate::storage::{NewExtent, Piece, PlanError, WritePiece};
use io_uring::{opcode, squeue::Entry, types};
use smallvec::SmallVec;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

/// Bytes an EXTENDED COPY moves per read and write: ESXi's transfer size, so its usual 4 MiB
/// segment is one read and one write (`cargo bench --bench xcopy`: 1 MiB chunks copied 4 MiB
/// commands at 519–548 MiB/s, 4 MiB chunks at 609–1119 MiB/s on the development VM).
const COPY_CHUNK: u64 = 4 << 20;

/// One transfer between a buffer and a volume's backing store.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transfer {
    dir: Direction,
    fd: RawFd,
    /// `fd`'s slot in the ring's file table (see `runtime::files`).
    fixed_file: Option<u32>,
    offset: u64,
    ptr: *mut u8,
    len: u32,
    /// The buffer's slot in the ring's buffer table (see `runtime::buf`).
    buf_index: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    /// `dsync`: RWF_DSYNC, durable when it completes.
    Write {
        dsync: bool,
    },
}

/// Runs `$body` with `$file` bound to the transfer's file as the ring names it: its fixed slot
/// or its descriptor (two types, hence a macro).
macro_rules! with_ring_file {
    ($t:expr, $file:ident => $body:expr) => {
        match $t.fixed_file {
            Some(slot) => {
                let $file = types::Fixed(slot);
                $body
            }
            None => {
                let $file = types::Fd($t.fd);
                $body
            }
        }
    };
}

impl Transfer {
    /// Reads `len` bytes at `offset` of `fd` into `ptr`.
    pub(super) fn read(fd: RawFd, offset: u64, ptr: *mut u8, len: u32) -> Self {
        Transfer {
            dir: Direction::Read,
            fd,
            fixed_file: None,
            offset,
            ptr,
            len,
            buf_index: None,
        }
    }

    /// Writes `len` bytes from `ptr` at `offset` of `fd`; `dsync`: durable when it completes.
    pub(super) fn write(fd: RawFd, offset: u64, ptr: *const u8, len: u32, dsync: bool) -> Self {
        Transfer {
            dir: Direction::Write { dsync },
            // Never written through: the ring and pwritev2 only read a write's buffer.
            ptr: ptr.cast_mut(),
            ..Transfer::read(fd, offset, std::ptr::null_mut(), len)
        }
    }

    /// The same transfer from or into a registered buffer (its slot, if any).
    pub(super) fn in_buffer(mut self, buf_index: Option<u16>) -> Self {
        self.buf_index = buf_index;
        self
    }

    /// The same transfer through this shard's own description of the file.
    fn through(mut self, file: OwnFile) -> Self {
        self.fd = file.fd;
        self.fixed_file = file.fixed;
        self
    }

    /// The ring's SQE for it (user data still to be set): `READ_FIXED` / `WRITE_FIXED` from a
    /// registered buffer, through the fixed file slot when there is one.
    fn sqe(self) -> Entry {
        let Transfer {
            dir,
            offset,
            ptr,
            len,
            buf_index,
            ..
        } = self;
        let flags = match dir {
            Direction::Write { dsync: true } => libc::RWF_DSYNC,
            _ => 0,
        };
        with_ring_file!(self, file => match (dir, buf_index) {
            (Direction::Read, None) => opcode::Read::new(file, ptr, len).offset(offset).build(),
            (Direction::Read, Some(i)) => {
                opcode::ReadFixed::new(file, ptr, len, i).offset(offset).build()
            }
            (Direction::Write { .. }, None) => opcode::Write::new(file, ptr, len)
                .offset(offset)
                .rw_flags(flags)
                .build(),
            (Direction::Write { .. }, Some(i)) => opcode::WriteFixed::new(file, ptr, len, i)
                .offset(offset)
                .rw_flags(flags)
                .build(),
        })
    }

    /// Does it now with plain system calls (for memory-backed stores); the result as a
    /// completion would carry it: bytes moved, or `-errno`.
    fn run_inline(self) -> i32 {
        let Transfer {
            dir,
            fd,
            offset,
            ptr,
            len,
            ..
        } = self;
        let len = len as usize;
        let mut done = 0usize;
        while done < len {
            let at = (offset + done as u64) as libc::off_t;
            let n = match dir {
                Direction::Read => {
                    // SAFETY: `ptr..ptr + len` is a buffer the op owns (module invariant); the
                    // call writes into its unfinished tail only.
                    unsafe { libc::pread(fd, ptr.add(done).cast(), len - done, at) }
                }
                Direction::Write { dsync } => {
                    let iov = libc::iovec {
                        // SAFETY: as above; pwritev2 only reads the buffer.
                        iov_base: unsafe { ptr.add(done) }.cast(),
                        iov_len: len - done,
                    };
                    let flags = if dsync { libc::RWF_DSYNC } else { 0 };
                    // SAFETY: one valid iovec, as above.
                    unsafe { libc::pwritev2(fd, &iov, 1, at, flags) }
                }
            };
            match n {
                n if n > 0 => done += n as usize,
                // End of file: what a ring read would report.
                0 => break,
                _ => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return -err.raw_os_error().unwrap_or(libc::EIO);
                    }
                }
            }
        }
        done as i32
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Read,
    /// EXTENDED COPY shared a chunk's extents (no data moved): ends on the next round.
    Shared,
    CopyOld,
    WriteData,
    SyncMeta,
    VerifyRead,
    Flush,
}

/// One command's storage work in flight.
pub(super) struct IoOp {
    pub(super) conn: usize,
    task: TaskId,
    pub(super) outcome: Outcome,
    pub(super) phase: Phase,
    /// Read or verify buffer.
    buf: Option<AlignedBuf>,
    /// The write plan.
    plan: SmallVec<[WritePiece; 4]>,
    /// One buffer per `NewExtent` of the plan, in plan order.
    /// (`None` for an extent the command covers whole: it is written straight from the data.)
    bounce: SmallVec<[Option<AlignedBuf>; 2]>,
    /// Where written bytes come from when not the task's Data-Out (WRITE SAME's repeated
    /// block); each range's pieces index it from the range's start.
    source: Option<AlignedBuf>,
    /// Byte ranges to write (empty: the outcome's single range).
    ranges: SmallVec<[(u64, u64); 2]>,
    pub(super) pending: u32,
    pub(super) error: bool,
    no_space: bool,
    /// Already waited once for released extents to be published.
    waited_for_space: bool,
    /// Waiting in `range_waiters` for an overlapping COMPARE AND WRITE (or, for one, for the
    /// writes it overlaps) to end: not started.
    waiting_for_range: bool,
    /// When the shard executed the command (latency statistics on).
    submitted: Option<Instant>,
    /// EXTENDED COPY: bytes of the current segment copied.
    copied: u64,
    /// EXTENDED COPY: the LUN the current chunk was copied to when it is not the command's own
    /// (its journal is the one to sync).
    pub(super) copy_dst_lun: Option<usize>,
    /// EXTENDED COPY: the current chunk went to another shard (see `runtime::xcopy`).
    pub(super) copy_remote: bool,
    /// EXTENDED COPY: why a chunk to or from another logical unit failed (ASC, ASCQ of COPY
    /// ABORTED).
    pub(super) copy_aborted: Option<(u8, u8)>,
}

impl IoOp {
    /// The part of the current EXTENDED COPY segment to copy next (from the segment's end when
    /// it copies backwards), if any is left.
    fn copy_chunk(&self) -> Option<CopySegment> {
        let Outcome::Copy { segments, done, .. } = &self.outcome else {
            return None;
        };
        let segment = segments.get(*done)?;
        let len = (segment.len - self.copied).min(COPY_CHUNK);
        let at = if segment.backwards() {
            segment.len - self.copied - len
        } else {
            self.copied
        };
        Some(CopySegment {
            src: segment.src + at,
            dst: segment.dst + at,
            len,
            ..*segment
        })
    }

    /// Counts the current chunk copied; whether another one is left.
    fn advance_copy(&mut self) -> bool {
        let Some(chunk) = self.copy_chunk() else {
            return false;
        };
        let Outcome::Copy { segments, done, .. } = &mut self.outcome else {
            return false;
        };
        self.copied += chunk.len;
        if self.copied >= segments[*done].len {
            *done += 1;
            self.copied = 0;
        }
        *done < segments.len()
    }

    fn new_extents(&self) -> impl Iterator<Item = &NewExtent> {
        self.plan.iter().filter_map(|p| match p {
            WritePiece::NewExtent(e) => Some(e),
            WritePiece::InPlace { .. } => None,
        })
    }

    fn durable(&self, write_cache: bool) -> bool {
        !write_cache
            || matches!(
                self.outcome,
                Outcome::Write { fua: true, .. }
                    | Outcome::WriteVerify { .. }
                    | Outcome::CompareAndWrite { fua: true, .. }
            )
    }

    /// The byte ranges a data-changing command writes (empty for the others).
    pub(super) fn written_ranges(&self) -> SmallVec<[(u64, u64); 2]> {
        match &self.outcome {
            Outcome::Write { offset, len, .. }
            | Outcome::WriteVerify { offset, len, .. }
            | Outcome::WriteSame { offset, len, .. }
            | Outcome::CompareAndWrite { offset, len, .. } => {
                SmallVec::from_slice(&[(*offset, *len)])
            }
            Outcome::Unmap { ranges } => ranges.iter().copied().collect(),
            Outcome::Copy { .. } => self
                .copy_chunk()
                .map(|c| SmallVec::from_slice(&[(c.dst, c.len)]))
                .unwrap_or_default(),
            Outcome::Done(_)
            | Outcome::Read { .. }
            | Outcome::Verify { .. }
            | Outcome::Flush
            | Outcome::GetLbaStatus { .. }
            | Outcome::Sanitize { .. } => SmallVec::new(),
        }
    }
}

impl Shard {
    /// Starts the storage work of task `id` on connection `index`, executed at `submitted`.
    pub(super) fn start_io(
        &mut self,
        index: usize,
        id: TaskId,
        outcome: Outcome,
        submitted: Option<Instant>,
    ) {
        let slot = match self.free_ops.pop() {
            Some(s) => s,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        let phase = match outcome {
            Outcome::Read { .. }
            | Outcome::Verify { .. }
            | Outcome::CompareAndWrite { .. }
            | Outcome::Copy { .. } => Phase::Read,
            Outcome::Flush => Phase::Flush,
            _ => Phase::WriteData,
        };
        self.ops[slot] = Some(IoOp {
            conn: index,
            task: id,
            outcome,
            phase,
            buf: None,
            plan: SmallVec::new(),
            bounce: SmallVec::new(),
            source: None,
            ranges: SmallVec::new(),
            pending: 0,
            error: false,
            no_space: false,
            waited_for_space: false,
            waiting_for_range: false,
            submitted,
            copied: 0,
            copy_dst_lun: None,
            copy_remote: false,
            copy_aborted: None,
        });
        if let Some(sc) = self.conn_mut(index) {
            sc.io_in_flight += 1;
        }
        self.dispatch(slot);
    }

    /// Starts op `slot`'s first phase, or parks it in `range_waiters` while a COMPARE AND
    /// WRITE holds a range it writes (or, for a COMPARE AND WRITE, while writes it overlaps run).
    fn dispatch(&mut self, slot: usize) {
        if self.must_wait_for_range(slot) {
            if let Some(op) = self.ops[slot].as_mut() {
                op.waiting_for_range = true;
            }
            self.range_waiters.push(slot);
            return;
        }
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        op.waiting_for_range = false;
        let phase = op.phase;
        let write_same = matches!(
            op.outcome,
            Outcome::WriteSame { .. } | Outcome::Unmap { .. }
        );
        let compare_and_write = matches!(op.outcome, Outcome::CompareAndWrite { .. });
        if compare_and_write {
            self.caw_active += 1;
            self.invalidate_read_ahead(slot);
        }
        match phase {
            Phase::Read => self.submit_read(slot),
            Phase::Flush => {
                if let Some(lun) = self.lun_of(slot) {
                    self.join_sync(lun, SyncWaiter::Op(slot));
                }
            }
            _ => {
                self.invalidate_read_ahead(slot);
                if write_same {
                    self.prepare_write_same(slot);
                }
                self.plan_write(slot)
            }
        }
    }

    /// WRITE SAME: builds the repeated block, and with UNMAP and an all-zero block releases the
    /// whole extents of the range first (they read back as zeros), leaving only the partial
    /// ends to write.
    fn prepare_write_same(&mut self, slot: usize) {
        let Some(lun) = self.lun_of(slot) else { return };
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        if let Outcome::Unmap { ranges } = &op.outcome {
            let ranges = ranges.clone();
            return self.prepare_unmap(slot, lun, &ranges);
        }
        let Outcome::WriteSame {
            offset,
            len,
            unmap,
            ndob,
        } = op.outcome
        else {
            return;
        };
        let bs = self.luns[lun].lu.info().block_size as usize;
        let Some(sc) = self.conns.get(op.conn).and_then(|c| c.as_deref()) else {
            return;
        };
        let block: Vec<u8> = match sc.conn.task(op.task) {
            Some(t) if !ndob && t.data_out().len() >= bs => t.data_out()[..bs].to_vec(),
            _ => vec![0; bs],
        };
        let zero = block.iter().all(|&b| b == 0);
        let mut ranges: SmallVec<[(u64, u64); 2]> = SmallVec::new();
        match self.luns[lun].volume.as_thin() {
            Some(thin) if unmap && zero => {
                let es = thin.extent_size();
                let end = offset + len;
                let first_full = offset.div_ceil(es) * es;
                let last_full = end / es * es;
                if first_full < last_full && thin.unmap(first_full, last_full - first_full).is_ok()
                {
                    ranges.push((offset, first_full - offset));
                    ranges.push((last_full, end - last_full));
                } else {
                    ranges.push((offset, len));
                }
            }
            _ => ranges.push((offset, len)),
        }
        ranges.retain(|r| r.1 > 0);
        let longest = ranges.iter().map(|r| r.1).max().unwrap_or(0) as usize;
        let mut source = self.pool.take(longest.max(bs));
        for chunk in source.chunks_mut(bs) {
            let n = chunk.len();
            chunk.copy_from_slice(&block[..n]);
        }
        op.source = Some(source);
        op.ranges = ranges;
    }

    pub(super) fn lun_of(&self, slot: usize) -> Option<usize> {
        let op = self.ops.get(slot)?.as_ref()?;
        self.conns.get(op.conn)?.as_deref().map(|c| c.lun)
    }

    /// Starts the op's transfers; ends the phase at once when there are none.
    fn submit_all(&mut self, slot: usize, transfers: &mut Vec<Transfer>) {
        if let Some(op) = self.ops[slot].as_mut() {
            op.pending = transfers.len() as u32;
        }
        let empty = transfers.is_empty();
        let inline = self
            .lun_of(slot)
            .is_some_and(|lun| self.luns[lun].volume.data_in_memory());
        self.start_transfers(transfers, user_data(KIND_IO, slot), inline);
        if empty {
            self.end_phase(slot);
        }
    }

    /// Starts transfers whose completions carry `ud`: on the ring, or at once (`inline`, a
    /// memory-backed volume) with their results queued for the next round.
    fn start_transfers(&mut self, transfers: &mut Vec<Transfer>, ud: u64, inline: bool) {
        for t in transfers.drain(..) {
            let ring = &self.ring;
            let own = self.own_files.get(t.fd, |slot, fd| {
                ring.submitter()
                    .register_files_update(slot, &[fd])
                    .map(drop)
            });
            let t = t.through(own);
            if inline {
                let res = t.run_inline();
                self.inline_done.push((ud, res));
            } else {
                self.push(t.sqe().user_data(ud));
            }
        }
    }

    fn submit_read(&mut self, slot: usize) {
        let Some(lun) = self.lun_of(slot) else { return };
        let copy_chunk = self.ops[slot].as_ref().and_then(IoOp::copy_chunk);
        if copy_chunk.is_some_and(|chunk| self.copy_by_reference(slot, lun, chunk)) {
            return;
        }
        let Some(op) = self.ops[slot].as_ref() else {
            return;
        };
        let (offset, len) = match op.outcome {
            Outcome::Read { offset, len, .. }
            | Outcome::Verify { offset, len, .. }
            | Outcome::WriteVerify { offset, len, .. }
            | Outcome::CompareAndWrite { offset, len, .. } => (offset, len),
            Outcome::Copy { .. } => match op.copy_chunk() {
                Some(chunk) => (chunk.src, chunk.len),
                None => return,
            },
            _ => return,
        };
        // READ commands (not the reads of VERIFY) use and drive the read-ahead.
        let sequential = matches!(op.outcome, Outcome::Read { .. })
            && self.readahead.enabled()
            && !self.luns[lun].volume.data_in_memory();
        if sequential {
            let served = self.read_from_chunk(slot, lun, offset, len);
            self.read_ahead(lun, offset, len);
            if served {
                return;
            }
        }
        self.submit_device_read(slot, lun, offset, len);
    }

    /// EXTENDED COPY of whole extents of a thin volume: the destination shares the source's
    /// physical extents instead of the data being read and written (see
    /// `ThinVolume::share_extents`); whether it did. The chunk then ends on the next round
    /// (through `inline_done`, so a long copy is a loop of rounds, not a recursion), as if
    /// written.
    fn copy_by_reference(&mut self, slot: usize, lun: usize, chunk: CopySegment) -> bool {
        if chunk.crosses_lus() {
            self.copy_between_lus(slot, lun, chunk);
            return true;
        }
        let Some(thin) = self.luns[lun].volume.as_thin() else {
            return false;
        };
        let es = thin.extent_size();
        if chunk.src % es != 0 || chunk.dst % es != 0 || chunk.len % es != 0 {
            return false;
        }
        let failed = match thin.share_extents(chunk.src / es, chunk.dst / es, chunk.len / es) {
            Ok(false) => return false,
            Ok(true) => false,
            Err(e) => {
                log_error(self.id, "journaling an extended copy", &e);
                true
            }
        };
        self.invalidate_read_ahead(slot);
        if let Some(op) = self.ops[slot].as_mut() {
            op.error |= failed;
            op.phase = Phase::Shared;
            op.pending = 1;
        }
        self.inline_done.push((user_data(KIND_IO, slot), 0));
        true
    }

    /// A chunk shared by reference: syncs the journal when the copy must be durable (the write
    /// cache is off), as a written chunk would.
    fn after_share(&mut self, slot: usize) {
        let Some(own) = self.lun_of(slot) else { return };
        let lun = self.ops[slot]
            .as_ref()
            .and_then(|op| op.copy_dst_lun)
            .unwrap_or(own);
        let write_cache = self.luns[lun].lu.write_cache_enabled();
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let failed = op.error || op.copy_aborted.is_some();
        // A chunk the copy thread handled was synced by the adopting shard when it had to be.
        let synced_there = op.copy_remote;
        if !failed && !synced_there && op.durable(write_cache) {
            op.phase = Phase::SyncMeta;
            self.join_sync(lun, SyncWaiter::Op(slot));
        } else {
            self.finish_op(slot);
        }
    }

    /// Reads `len` bytes at `offset` of `lun` from the device into a new buffer of op `slot`.
    fn submit_device_read(&mut self, slot: usize, lun: usize, offset: u64, len: u64) {
        let mut buf = self.pool.take(len as usize);
        let mut sqes = std::mem::take(&mut self.sqes);
        self.read_transfers(lun, offset, &mut buf, &mut sqes);
        if let Some(op) = self.ops[slot].as_mut() {
            op.buf = Some(buf);
        }
        // A memory-backed volume's reads are done inline: nothing waits in the ring.
        let reads = if self.luns[lun].volume.data_in_memory() {
            0
        } else {
            sqes.len() as u32
        };
        self.submit_all(slot, &mut sqes);
        self.sqes = sqes;
        self.submit_reads_early(reads);
    }

    /// Hands the device reads queued so far to the kernel once `read_submit_batch` of them wait,
    /// instead of at the round's end: the device starts on them while the shard parses the
    /// rest of a burst of commands. (A virtual disk that answers a batch only once it has
    /// worked through all of it otherwise idles in lockstep with the initiator's bursts.)
    fn submit_reads_early(&mut self, reads: u32) {
        if self.read_submit_batch == 0 || reads == 0 {
            return;
        }
        self.unsubmitted_reads += reads;
        if self.unsubmitted_reads >= self.read_submit_batch {
            self.unsubmitted_reads = 0;
            match self.ring.submit() {
                Ok(_) => {}
                // A full completion queue or a signal: the round's own submission retries.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                    ) => {}
                Err(e) => log_error(self.id, "io_uring submit", &e),
            }
        }
    }

    /// The transfers that fill `buf` with its length of `lun` at `offset` (unmapped pieces are
    /// zeroed here).
    fn read_transfers(
        &mut self,
        lun: usize,
        offset: u64,
        buf: &mut AlignedBuf,
        out: &mut Vec<Transfer>,
    ) {
        self.pieces.clear();
        self.luns[lun]
            .volume
            .map_read(offset, buf.len() as u64, &mut self.pieces);
        let mut at = 0usize;
        for piece in &self.pieces {
            match *piece {
                Piece::File { fd, offset, len } => {
                    // SAFETY: `at + len <= buf.len()` (the pieces cover exactly its length);
                    // the buffer stays with its op or chunk until every transfer completes.
                    let ptr = unsafe { buf.as_mut_ptr().add(at) };
                    out.push(
                        Transfer::read(fd, offset, ptr, len as u32).in_buffer(buf.reg_index()),
                    );
                    at += len as usize;
                }
                Piece::Zero { len } => {
                    buf[at..at + len as usize].fill(0);
                    at += len as usize;
                }
            }
        }
    }

    /// Serves op `slot` from a read-ahead chunk of exactly its range, if there is one: takes a
    /// ready chunk's buffer (completing next round), or waits for one in flight.
    fn read_from_chunk(&mut self, slot: usize, lun: usize, offset: u64, len: u64) -> bool {
        let lookup = self.readahead.lookup(lun, offset, len);
        let Some(op) = self.ops[slot].as_mut() else {
            return false;
        };
        if !matches!(lookup, Lookup::Miss) {
            self.luns[lun].stats.read_ahead.hits += 1;
        }
        match lookup {
            Lookup::Ready(buf) => {
                op.buf = Some(buf);
                op.pending = 1;
                self.inline_done
                    .push((user_data(KIND_IO, slot), len as i32));
                true
            }
            Lookup::InFlight(chunk) => {
                op.pending = 1;
                if let Some(c) = self.readahead.chunk_mut(chunk) {
                    c.waiters.push(slot);
                }
                true
            }
            Lookup::Miss => false,
        }
    }

    /// Tells the read-ahead about a READ of `lun` and submits the chunks it wants read.
    fn read_ahead(&mut self, lun: usize, offset: u64, len: u64) {
        let capacity = self.luns[lun].volume.capacity();
        let chunks = self.readahead.advance(lun, offset, len, capacity);
        for (chunk, offset, len) in chunks {
            let counters = &mut self.luns[lun].stats.read_ahead;
            counters.chunks += 1;
            counters.bytes += len;
            let mut buf = self.pool.take(len as usize);
            let mut sqes = std::mem::take(&mut self.sqes);
            self.read_transfers(lun, offset, &mut buf, &mut sqes);
            if let Some(c) = self.readahead.chunk_mut(chunk) {
                c.pending = sqes.len() as u32;
                c.buf = Some(buf);
            }
            self.start_transfers(&mut sqes, user_data(KIND_READAHEAD, chunk), false);
            self.sqes = sqes;
        }
    }

    /// A completion of a read-ahead chunk's read: once all are in, the commands waiting for
    /// it get its data (the first its buffer, any other a copy), or read the device after an
    /// error.
    pub(super) fn on_readahead(&mut self, chunk: usize, res: i32) {
        let Some(c) = self.readahead.chunk_mut(chunk) else {
            return;
        };
        c.error |= res < 0;
        c.pending = c.pending.saturating_sub(1);
        if c.pending > 0 {
            return;
        }
        let Some(mut done) = self.readahead.complete(chunk) else {
            return;
        };
        for (i, &slot) in done.waiters.iter().enumerate() {
            let Some(lun) = self.lun_of(slot) else {
                continue;
            };
            if done.error {
                self.submit_device_read(slot, lun, done.offset, done.len);
                continue;
            }
            let buf = if i + 1 == done.waiters.len() {
                done.buf.take()
            } else {
                done.buf.as_ref().map(|b| {
                    let mut copy = self.pool.take(b.len());
                    copy.copy_from_slice(b);
                    copy
                })
            };
            if let Some(op) = self.ops[slot].as_mut() {
                op.buf = buf;
            }
            self.on_io(slot, done.len as i32);
        }
    }

    /// A data-changing command (write, UNMAP, WRITE SAME, COMPARE AND WRITE) of op `slot` starts
    /// or ends: read-ahead chunks it overlaps turn stale (see `runtime::readahead`).
    fn invalidate_read_ahead(&mut self, slot: usize) {
        if self.readahead.chunks() == 0 {
            return;
        }
        let Some(lun) = self.lun_of(slot) else { return };
        let Some(op) = self.ops[slot].as_ref() else {
            return;
        };
        for (offset, len) in op.written_ranges() {
            self.readahead.invalidate(lun, offset, len);
        }
    }

    /// Whether op `slot` must wait: a write overlapping a COMPARE AND WRITE in progress, or a
    /// COMPARE AND WRITE overlapping a write in flight (on the same LUN).
    fn must_wait_for_range(&self, slot: usize) -> bool {
        let Some(op) = self.ops[slot].as_ref() else {
            return false;
        };
        let caw = matches!(op.outcome, Outcome::CompareAndWrite { .. });
        if !caw && self.caw_active == 0 {
            return false;
        }
        let mine = op.written_ranges();
        if mine.is_empty() {
            return false;
        }
        let lun = self.lun_of(slot);
        self.ops.iter().enumerate().any(|(other, o)| {
            let Some(o) = o.as_ref() else { return false };
            let relevant = other != slot
                && !o.waiting_for_range
                && (caw || matches!(o.outcome, Outcome::CompareAndWrite { .. }))
                && self.lun_of(other) == lun;
            relevant
                && o.written_ranges()
                    .iter()
                    .any(|&(b, bl)| mine.iter().any(|&(a, al)| a < b + bl && b < a + al))
        })
    }

    /// COMPARE AND WRITE read its range: on a match, writes the second half of the Data-Out
    /// there (as a WRITE would); on a difference, ends with MISCOMPARE (see `io_result`).
    fn compare_then_write(&mut self, slot: usize) {
        let Some(op) = self.ops[slot].as_ref() else {
            return;
        };
        let Outcome::CompareAndWrite { len, or, .. } = op.outcome else {
            return;
        };
        let len = len as usize;
        let Some(task) = self
            .conns
            .get(op.conn)
            .and_then(|c| c.as_deref())
            .and_then(|sc| sc.conn.task(op.task))
        else {
            return self.finish_op(slot);
        };
        let data = task.data_out();
        let mut source = self.pool.take(len);
        if or {
            // ORWRITE: the blocks read, ORed with the Data-Out.
            let (Some(read), Some(mask)) = (op.buf.as_deref(), data.get(..len)) else {
                return self.finish_op(slot);
            };
            for ((out, r), m) in source.iter_mut().zip(read).zip(mask) {
                *out = r | m;
            }
        } else {
            let equal =
                data.len() >= 2 * len && op.buf.as_deref().is_some_and(|b| b[..] == data[..len]);
            if !equal {
                return self.finish_op(slot);
            }
            source.copy_from_slice(&data[len..2 * len]);
        }
        if let Some(op) = self.ops[slot].as_mut() {
            op.source = Some(source);
            op.phase = Phase::WriteData;
        }
        self.plan_write(slot);
    }

    /// EXTENDED COPY read a chunk: writes it at the destination (as a WRITE would).
    /// Unmapped source to unmapped destination writes nothing: the destination already reads as
    /// zeros, and writing them would only allocate extents (a copy of a thin image stays thin).
    fn copy_then_write(&mut self, slot: usize) {
        let Some(lun) = self.lun_of(slot) else { return };
        let Some(chunk) = self.ops[slot].as_ref().and_then(IoOp::copy_chunk) else {
            return;
        };
        if self.unmapped(lun, chunk.src, chunk.len) && self.unmapped(lun, chunk.dst, chunk.len) {
            if let Some(op) = self.ops[slot].as_mut() {
                op.buf = None;
            }
            return self.finish_op(slot);
        }
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        op.source = op.buf.take();
        op.phase = Phase::WriteData;
        self.invalidate_read_ahead(slot);
        self.plan_write(slot);
    }

    /// Whether `len` bytes at `offset` of `lun` are all unallocated (thin volumes only).
    fn unmapped(&mut self, lun: usize, offset: u64, len: u64) -> bool {
        self.pieces.clear();
        self.luns[lun]
            .volume
            .map_read(offset, len, &mut self.pieces);
        self.pieces.iter().all(|p| matches!(p, Piece::Zero { .. }))
    }

    /// EXTENDED COPY wrote a chunk: starts the next one, if any is left and all went well.
    /// Between chunks the op holds no extent and no range, so a snapshot or a COMPARE AND WRITE
    /// waiting for it may go ahead (the next chunk is planned after them).
    fn next_copy_chunk(&mut self, slot: usize) -> bool {
        let Some(op) = self.ops[slot].as_mut() else {
            return false;
        };
        let failed = op.error || op.no_space || op.copy_aborted.is_some();
        if failed || !matches!(op.outcome, Outcome::Copy { .. }) {
            return false;
        }
        // A copy whose task was aborted (or whose connection is closing) stops here: the
        // task-management answer and the connection's teardown wait for it.
        if self.abandoned(slot) {
            return false;
        }
        self.invalidate_read_ahead(slot);
        if !self.ops[slot].as_mut().is_some_and(IoOp::advance_copy)
            || !self.skip_unmapped_chunks(slot)
        {
            return false;
        }
        let Some(op) = self.ops[slot].as_mut() else {
            return false;
        };
        op.phase = Phase::Read;
        op.plan.clear();
        op.bounce.clear();
        op.source = None;
        op.buf = None;
        op.pending = 0;
        op.waited_for_space = false;
        op.copy_dst_lun = None;
        op.copy_remote = false;
        self.finish_snapshots(Some(slot));
        self.retry_range_waiters();
        self.dispatch(slot);
        true
    }

    /// Moves the copy past the chunks unmapped at both source and destination (they copy
    /// nothing), in a loop rather than a read each; whether a chunk is left.
    fn skip_unmapped_chunks(&mut self, slot: usize) -> bool {
        let Some(lun) = self.lun_of(slot) else {
            return false;
        };
        loop {
            let Some(chunk) = self.ops[slot].as_ref().and_then(IoOp::copy_chunk) else {
                return false;
            };
            // Another unit's chunk goes by reference, unmapped or not.
            if chunk.crosses_lus()
                || !self.unmapped(lun, chunk.src, chunk.len)
                || !self.unmapped(lun, chunk.dst, chunk.len)
            {
                return true;
            }
            if !self.ops[slot].as_mut().is_some_and(IoOp::advance_copy) {
                return false;
            }
        }
    }

    /// Ops that waited for a range get another try (an op just ended).
    fn retry_range_waiters(&mut self) {
        if self.range_waiters.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.range_waiters);
        for slot in waiting {
            self.dispatch(slot);
        }
    }

    /// A group sync round this op waited for is done (`failed`: an `fdatasync` failed).
    pub(super) fn op_synced(&mut self, slot: usize, failed: bool) {
        if let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) {
            op.error |= failed;
            self.end_phase(slot);
        }
    }

    /// Plans a write; parks it when an extent it needs is busy.
    /// Whether op `slot`'s task was aborted, or its connection is closing: what it has not
    /// written yet, it must not write (a fenced node's WRITE parked behind a busy extent).
    fn abandoned(&self, slot: usize) -> bool {
        let Some(op) = self.ops.get(slot).and_then(Option::as_ref) else {
            return true;
        };
        self.conns
            .get(op.conn)
            .and_then(|c| c.as_deref())
            .is_none_or(|sc| sc.closing || sc.conn.task(op.task).is_none_or(|t| t.aborted()))
    }

    fn plan_write(&mut self, slot: usize) {
        if self.abandoned(slot) {
            // Nothing planned yet: end it unwritten (an aborted task gets no response).
            if let Some(op) = self.ops[slot].as_mut() {
                op.error = true;
            }
            self.finish_op(slot);
            return;
        }
        let Some(lun) = self.lun_of(slot) else { return };
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let ranges: SmallVec<[(u64, u64); 2]> = match op.outcome {
            Outcome::Write { offset, len, .. }
            | Outcome::WriteVerify { offset, len, .. }
            | Outcome::CompareAndWrite { offset, len, .. } => {
                SmallVec::from_slice(&[(offset, len)])
            }
            Outcome::WriteSame { .. } | Outcome::Unmap { .. } => op.ranges.clone(),
            Outcome::Copy { .. } => match op.copy_chunk() {
                Some(chunk) => SmallVec::from_slice(&[(chunk.dst, chunk.len)]),
                None => return,
            },
            _ => return,
        };
        let atomic = matches!(op.outcome, Outcome::Write { atomic: true, .. });
        let mut plan = std::mem::take(&mut self.plan);
        plan.clear();
        let mut planned = Ok(());
        for (offset, len) in ranges {
            let volume = &mut self.luns[lun].volume;
            planned = if atomic {
                volume.plan_atomic_write(offset, len, &mut plan)
            } else {
                volume.plan_write(offset, len, &mut plan)
            };
            if planned.is_err() {
                // Give back what the earlier ranges planned.
                for piece in &plan {
                    if let WritePiece::NewExtent(e) = piece {
                        self.luns[lun].volume.abort_extent(e);
                    }
                }
                break;
            }
        }
        if planned.is_ok() {
            op.plan.extend(plan.drain(..));
        }
        plan.clear();
        self.plan = plan;
        match planned {
            Ok(()) => {}
            Err(PlanError::Busy) => {
                self.parked.push(slot);
                return;
            }
            Err(PlanError::NoSpace)
                if !op.waited_for_space
                    && self.luns[lun]
                        .volume
                        .as_thin()
                        .is_some_and(|t| t.frees_pending()) =>
            {
                op.waited_for_space = true;
                // Released extents wait for the journals to be synced (every 100 ms): retry
                // then rather than fail a write the pool can hold.
                self.parked_for_space.push(slot);
                return;
            }
            Err(PlanError::NoSpace) | Err(PlanError::ReadOnly) => {
                op.no_space = true;
                self.finish_op(slot);
                return;
            }
            Err(PlanError::NotAtomic) => {
                op.error = true;
                self.finish_op(slot);
                return;
            }
        }
        let copies = op.new_extents().any(|e| e.copy_from.is_some());
        if copies {
            op.phase = Phase::CopyOld;
            self.submit_copy_old(slot);
        } else {
            op.phase = Phase::WriteData;
            self.submit_write_data(slot);
        }
    }

    /// Reads the old contents of every extent being copied into its bounce buffer.
    fn submit_copy_old(&mut self, slot: usize) {
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let mut sqes = std::mem::take(&mut self.sqes);
        let extents: SmallVec<[NewExtent; 4]> = op.new_extents().copied().collect();
        for e in &extents {
            let mut bounce = bounce_for(&mut self.pool, e, e.copy_from.is_none());
            if let (Some(b), Some(old)) = (bounce.as_mut(), e.copy_from) {
                let read = Transfer::read(e.fd, old, b.as_mut_ptr(), e.extent_len as u32);
                sqes.push(read.in_buffer(b.reg_index()));
            }
            op.bounce.push(bounce);
        }
        self.submit_all(slot, &mut sqes);
        self.sqes = sqes;
    }

    /// Writes in-place pieces from the Data-Out and new extents from their bounce buffers.
    fn submit_write_data(&mut self, slot: usize) {
        let Some(lun) = self.lun_of(slot) else { return };
        let write_cache = self.luns[lun].lu.write_cache_enabled();
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let Some(sc) = self.conns.get(op.conn).and_then(|c| c.as_deref()) else {
            return;
        };
        let Some(task) = sc.conn.task(op.task) else {
            return;
        };
        let (data, data_index): (&[u8], Option<u16>) = match &op.source {
            Some(source) => (source, source.reg_index()),
            None => (
                task.data_out(),
                task.data_out.as_ref().and_then(AlignedBuf::reg_index),
            ),
        };
        // A durable write that remaps extents is made durable by the group sync that follows
        // (data store and journal together); one that only overwrites owned extents has no
        // metadata to sync, and RWF_DSYNC makes its data durable in the same operation.
        let dsync = op.durable(write_cache) && op.new_extents().next().is_none();
        let mut sqes = std::mem::take(&mut self.sqes);
        let mut bounce_index = 0;
        if op.bounce.is_empty() {
            for e in op.plan.iter() {
                if let WritePiece::NewExtent(e) = e {
                    op.bounce.push(bounce_for(&mut self.pool, e, true));
                }
            }
        }
        for piece in op.plan.iter() {
            let (fd, offset, ptr, len, buf_index) = match *piece {
                WritePiece::InPlace {
                    fd,
                    offset,
                    len,
                    data_at,
                } => {
                    let src = &data[data_at as usize..(data_at + len) as usize];
                    (fd, offset, src.as_ptr(), len, data_index)
                }
                WritePiece::NewExtent(e) => {
                    let bounce = op.bounce.get_mut(bounce_index).and_then(Option::as_mut);
                    bounce_index += 1;
                    let src = &data[e.data_at as usize..(e.data_at + e.len) as usize];
                    match bounce {
                        Some(b) => {
                            b[e.within as usize..(e.within + e.len) as usize].copy_from_slice(src);
                            (e.fd, e.offset, b.as_ptr(), e.extent_len, b.reg_index())
                        }
                        // The command covers the whole extent: no merge, no copy.
                        None => (e.fd, e.offset, src.as_ptr(), e.extent_len, data_index),
                    }
                }
            };
            sqes.push(Transfer::write(fd, offset, ptr, len as u32, dsync).in_buffer(buf_index));
        }
        self.submit_all(slot, &mut sqes);
        self.sqes = sqes;
    }

    /// UNMAP (LBPRZ=1: unmapped blocks must read back as zeros): releases every whole extent
    /// of each range and plans zero writes for the mapped parts of partial extents.
    fn prepare_unmap(&mut self, slot: usize, lun: usize, ranges: &[(u64, u64)]) {
        let bs = self.luns[lun].lu.info().block_size as usize;
        let mut writes: SmallVec<[(u64, u64); 2]> = SmallVec::new();
        match self.luns[lun].volume.as_thin() {
            Some(thin) => {
                let es = thin.extent_size();
                for &(offset, len) in ranges {
                    let end = offset + len;
                    let first_full = offset.div_ceil(es) * es;
                    let last_full = (end / es * es).max(first_full);
                    if first_full < last_full
                        && thin.unmap(first_full, last_full - first_full).is_err()
                    {
                        writes.push((first_full, last_full - first_full));
                    }
                    let head = (offset, first_full.min(end));
                    let tail = (last_full.max(offset), end);
                    for (start, stop) in [head, tail] {
                        // A partial extent that is unmapped already reads as zeros.
                        if start < stop && thin.map().get(start / es).is_some() {
                            writes.push((start, stop - start));
                        }
                    }
                }
            }
            None => writes.extend(ranges.iter().copied()),
        }
        writes.sort_unstable();
        writes.dedup();
        let longest = writes.iter().map(|r| r.1).max().unwrap_or(0) as usize;
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let mut source = self.pool.take(longest.max(bs));
        source.fill(0);
        op.source = Some(source);
        op.ranges = writes;
    }

    /// Slots of the write ops in flight on LUN `lun` (a snapshot waits for them).
    pub(super) fn write_ops_on(&self, lun: usize) -> Vec<usize> {
        self.ops
            .iter()
            .enumerate()
            .filter_map(|(slot, op)| {
                let op = op.as_ref()?;
                // Every data-changing command (the one classification: `written_ranges`).
                let writes = !op.written_ranges().is_empty();
                let on_lun = self
                    .conns
                    .get(op.conn)?
                    .as_deref()
                    .is_some_and(|c| c.lun == lun);
                (writes && on_lun).then_some(slot)
            })
            .collect()
    }

    /// A completion for op `slot`.
    pub(super) fn on_io(&mut self, slot: usize, res: i32) {
        let Some(op) = self.ops.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if res < 0 {
            op.error = true;
        }
        op.pending = op.pending.saturating_sub(1);
        if op.pending == 0 {
            self.end_phase(slot);
        }
    }

    fn end_phase(&mut self, slot: usize) {
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let (phase, error) = (op.phase, op.error);
        let compare_and_write = matches!(op.outcome, Outcome::CompareAndWrite { .. });
        let copy = matches!(op.outcome, Outcome::Copy { .. });
        match phase {
            Phase::Read if compare_and_write && !error => self.compare_then_write(slot),
            Phase::Read if copy && !error => self.copy_then_write(slot),
            Phase::CopyOld if !error => {
                op.phase = Phase::WriteData;
                self.submit_write_data(slot);
            }
            Phase::CopyOld | Phase::WriteData => self.after_write(slot),
            Phase::Shared => self.after_share(slot),
            Phase::SyncMeta if !error && self.wants_verify(slot) => self.start_verify(slot),
            _ => self.finish_op(slot),
        }
    }

    fn wants_verify(&self, slot: usize) -> bool {
        self.ops[slot]
            .as_ref()
            .is_some_and(|op| matches!(op.outcome, Outcome::WriteVerify { verify: true, .. }))
    }

    fn start_verify(&mut self, slot: usize) {
        if let Some(op) = self.ops[slot].as_mut() {
            op.phase = Phase::VerifyRead;
        }
        self.submit_read(slot);
    }

    /// Data written (or failed): commit or abort the new extents, wake parked writes, then sync
    /// the metadata when the write must be durable.
    fn after_write(&mut self, slot: usize) {
        let Some(lun) = self.lun_of(slot) else { return };
        let write_cache = self.luns[lun].lu.write_cache_enabled();
        let Some(op) = self.ops[slot].as_mut() else {
            return;
        };
        let extents: SmallVec<[NewExtent; 4]> = op.new_extents().copied().collect();
        let volume = &mut self.luns[lun].volume;
        let atomic = matches!(op.outcome, Outcome::Write { atomic: true, .. });
        if atomic && !op.error {
            // Every extent switches with one record, or (the record failing) the write fails.
            op.error = volume.commit_atomic(&extents).is_err();
        } else {
            for e in &extents {
                if op.error {
                    volume.abort_extent(e);
                } else if volume.commit_extent(e).is_err() {
                    op.error = true;
                }
            }
        }
        op.bounce.clear();
        let durable = !op.error && !extents.is_empty() && op.durable(write_cache);
        if !extents.is_empty() {
            self.unpark();
        }
        if durable {
            if let Some(op) = self.ops[slot].as_mut() {
                op.phase = Phase::SyncMeta;
            }
            self.join_sync(lun, SyncWaiter::Op(slot));
        } else if !self.ops[slot].as_ref().is_some_and(|o| o.error) && self.wants_verify(slot) {
            self.start_verify(slot);
        } else {
            self.finish_op(slot);
        }
    }

    /// Re-plans the writes that waited for released extents to be published (shard timer).
    pub(super) fn retry_for_space(&mut self) {
        let parked = std::mem::take(&mut self.parked_for_space);
        for slot in parked {
            self.plan_write(slot);
        }
    }

    /// Re-plans every parked write (an extent they waited for was committed or released).
    fn unpark(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for slot in parked {
            self.plan_write(slot);
        }
    }

    /// Reports the op's result to the SCSI layer and the connection.
    fn finish_op(&mut self, slot: usize) {
        if self.next_copy_chunk(slot) {
            return;
        }
        self.invalidate_read_ahead(slot);
        let Some(op) = self.ops[slot].take() else {
            return;
        };
        self.free_ops.push(slot);
        if matches!(op.outcome, Outcome::CompareAndWrite { .. }) && !op.waiting_for_range {
            self.caw_active -= 1;
        }
        self.retry_range_waiters();
        // A snapshot waiting for the writes in flight when it was taken may answer now.
        self.finish_snapshots(Some(slot));
        let index = op.conn;
        let Some(sc) = self.conns.get_mut(index).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        sc.io_in_flight -= 1;
        let data_out = sc.conn.task(op.task).map(|t| t.data_out()).unwrap_or(&[]);
        let result = io_result(&op, data_out);
        let lun = &mut self.luns[sc.lun];
        let completion = lun.lu.complete(sc.nexus, &op.outcome, result.clone());
        let block_size = lun.lu.info().block_size;
        let (class, bytes, wanted) = match op.outcome {
            Outcome::Read { len, .. } => (OpClass::Read, len, len),
            Outcome::Write { len, .. } | Outcome::WriteVerify { len, .. } => {
                let wanted = sc
                    .conn
                    .task(op.task)
                    .map_or(len, |t| scsi::cdb::data_out_length(&t.cmd.cdb, block_size));
                (OpClass::Write, len, wanted)
            }
            Outcome::Verify {
                len, compare: true, ..
            } => (OpClass::Other, len, len),
            Outcome::Unmap { .. } => {
                let wanted = sc
                    .conn
                    .task(op.task)
                    .map_or(0, |t| scsi::cdb::data_out_length(&t.cmd.cdb, block_size));
                (OpClass::Other, 0, wanted)
            }
            Outcome::WriteSame { len, .. } => {
                let wanted = sc
                    .conn
                    .task(op.task)
                    .map_or(0, |t| scsi::cdb::data_out_length(&t.cmd.cdb, block_size));
                (OpClass::Write, len, wanted)
            }
            Outcome::CompareAndWrite { len, or: false, .. } => (OpClass::Other, 2 * len, 2 * len),
            Outcome::CompareAndWrite { len, or: true, .. } => (OpClass::Other, len, len),
            _ => (OpClass::Other, 0, 0),
        };
        let extent = match op.outcome {
            Outcome::Read { offset, len, .. }
            | Outcome::Write { offset, len, .. }
            | Outcome::WriteVerify { offset, len, .. }
            | Outcome::Verify { offset, len, .. }
            | Outcome::WriteSame { offset, len, .. } => {
                let bs = u64::from(block_size.max(1));
                Some((offset / bs, len / bs))
            }
            _ => None,
        };
        let acct = Accounting {
            class,
            bytes,
            submitted: op.submitted,
            backend_done: op.submitted.map(|_| self.round_now),
            extent,
        };
        let buffer = match (op.outcome, op.buf, result) {
            (Outcome::Read { .. }, Some(buf), IoResult::Ok) => DataInSource::Buffer(Rc::new(buf)),
            _ => DataInSource::None,
        };
        self.finish(index, op.task, completion, buffer, wanted, acct);
        self.pump(index);
        self.reap(index);
    }
}

/// The buffer a new extent is assembled in (zeroed when `zeroed`, else about to receive its
/// old contents), or `None` when the command overwrites the whole extent: it is then written
/// straight from the command's data, no merge, no copy.
fn bounce_for(pool: &mut BufPool, e: &NewExtent, zeroed: bool) -> Option<AlignedBuf> {
    if e.within == 0 && e.len == e.extent_len {
        return None;
    }
    let mut b = pool.take(e.extent_len as usize);
    if zeroed {
        b.fill(0);
    }
    Some(b)
}

fn io_result(op: &IoOp, data_out: &[u8]) -> IoResult {
    if op.no_space {
        return IoResult::SpaceExhausted;
    }
    if let Some((asc, ascq)) = op.copy_aborted {
        return IoResult::CopyAborted { asc, ascq };
    }
    if op.error {
        let read = matches!(op.phase, Phase::Read | Phase::VerifyRead | Phase::CopyOld);
        return IoResult::MediumError { read };
    }
    let compare = match op.outcome {
        Outcome::Verify { compare, .. } => compare,
        Outcome::WriteVerify { verify, .. } => verify,
        Outcome::CompareAndWrite { or, .. } => !or,
        _ => false,
    };
    if compare {
        if let Some(buf) = &op.buf {
            let n = buf.len().min(data_out.len());
            if let Some(at) = buf[..n]
                .iter()
                .zip(&data_out[..n])
                .position(|(a, b)| a != b)
            {
                return IoResult::Miscompare { at: at as u64 };
            }
        }
    }
    IoResult::Ok
}

#[cfg(test)]
mod tests {
    use super::Transfer;
    use std::os::fd::AsRawFd;

    #[test]
    fn inline_transfers_write_and_read_back_at_their_offsets() {
        let file = tempfile::tempfile().unwrap();
        let fd = file.as_raw_fd();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        let write = Transfer::write(fd, 4096, data.as_ptr(), data.len() as u32, true);
        assert_eq!(write.run_inline(), 8192);
        let mut back = vec![0u8; 8192];
        let read = Transfer::read(fd, 4096, back.as_mut_ptr(), back.len() as u32);
        assert_eq!(read.run_inline(), 8192);
        assert_eq!(back, data);
        // Past the end of the file a read stops short, as a ring read would.
        let read_tail = Transfer::read(fd, 8192, back.as_mut_ptr(), back.len() as u32);
        assert_eq!(read_tail.run_inline(), 4096);
    }

    #[test]
    fn registered_buffers_and_fixed_files_make_fixed_transfers() {
        use io_uring::opcode;
        let read = Transfer::read(5, 0, std::ptr::null_mut(), 4096);
        let write = Transfer::write(5, 0, std::ptr::null(), 4096, false);
        assert_eq!(read.sqe().get_opcode(), u32::from(opcode::Read::CODE));
        assert_eq!(write.sqe().get_opcode(), u32::from(opcode::Write::CODE));
        let (read, write) = (read.in_buffer(Some(7)), write.in_buffer(Some(7)));
        assert_eq!(read.sqe().get_opcode(), u32::from(opcode::ReadFixed::CODE));
        assert_eq!(
            write.sqe().get_opcode(),
            u32::from(opcode::WriteFixed::CODE)
        );
    }

    /// A write and a read through a real ring, from and into registered pool buffers, through a
    /// fixed file slot: the kernel checks each buffer range against the slot it names.
    #[test]
    fn fixed_transfers_move_the_right_bytes() {
        use crate::runtime::buf::BufPool;
        use crate::runtime::files::OwnFiles;
        let file = tempfile::tempfile().unwrap();
        let mut ring = io_uring::IoUring::new(8).unwrap();
        ring.submitter().register_buffers_sparse(16).unwrap();
        ring.submitter().register_files_sparse(4).unwrap();
        let pool = BufPool::new();
        pool.enable_registration(16, 1 << 20);
        drop((pool.take(8192), pool.take(8192)));
        let submitter = ring.submitter();
        let n = pool
            .register_parked(|first, iovecs| {
                // SAFETY: the pool's buffers outlive the ring (the ring is dropped first, below).
                let r = unsafe { submitter.register_buffers_update(first.into(), iovecs, None) };
                (iovecs.len(), r)
            })
            .unwrap();
        assert_eq!(n, 2);
        let mut files = OwnFiles::default();
        files.enable_fixed(4);
        let own = files.get(file.as_raw_fd(), |slot, fd| {
            ring.submitter()
                .register_files_update(slot, &[fd])
                .map(drop)
        });
        assert_eq!(own.fixed, Some(0));
        let mut src = pool.take(8192);
        let mut dst = pool.take(8192);
        assert!(src.reg_index().is_some() && dst.reg_index().is_some());
        for (i, b) in src.iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        // The second half of the source buffer to offset 4096 of the file, then back into the
        // first half of the destination.
        // SAFETY: 4096 + 4096 <= 8192 bytes of each buffer.
        let (from, into) = unsafe { (src.as_ptr().add(4096), dst.as_mut_ptr()) };
        let transfers = [
            Transfer::write(file.as_raw_fd(), 4096, from, 4096, false).in_buffer(src.reg_index()),
            Transfer::read(file.as_raw_fd(), 4096, into, 4096).in_buffer(dst.reg_index()),
        ];
        for (i, t) in transfers.iter().enumerate() {
            let sqe = t.through(own).sqe().user_data(i as u64);
            // SAFETY: both buffers live until the completion is reaped below.
            unsafe { ring.submission().push(&sqe).unwrap() };
            ring.submit_and_wait(1).unwrap();
            let cqe = ring.completion().next().unwrap();
            assert_eq!(cqe.result(), 4096, "transfer {i}");
        }
        assert_eq!(&dst[..4096], &src[4096..]);
        drop(ring);
    }

    #[test]
    fn inline_transfer_errors_come_back_as_negative_errno() {
        let mut buf = [0u8; 512];
        let read = Transfer::read(-1, 0, buf.as_mut_ptr(), 512);
        assert_eq!(read.run_inline(), -libc::EBADF);
    }
}
