//! A shard: one thread, one io_uring, the LUNs it owns and every connection to them.
//!
//! The loop gathers every submission produced while handling completions and enters the kernel
//! once per round (`submit_and_wait` with a timeout that drives the keepalive timers).
//! `user_data` names the operation: a kind in the top byte and a slot index below.
//!
//! Invariants:
//! - Only this thread touches its connections, LUNs and buffers (they are `!Send`).
//! - A connection is dropped only when none of its operations is in flight: every buffer an SQE
//!   points at (receive buffer, send batch, write data, read buffer) outlives the SQE.
//!
//! The shard's work is split by concern: this file has the loop, connections (receive, send,
//! close), SCSI dispatch and task management; `io.rs` the storage I/O state machine of a
//! command; `sync.rs` group commit; `volumes.rs` the control thread's volume messages (add /
//! remove LUN, snapshot, grow, checkpoint cut, space-usage walk).

use super::buf::BufPool;
use super::files::OwnFiles;
use super::qos::{Held, Throttle};
use super::readahead::ReadAhead;
use super::sanitize::PendingSanitize;
use super::sync::GroupSync;
use super::text::SessionDirectory;
use super::tx::Tx;
pub use super::volumes::UsageReport;
use super::volumes::{PendingProvision, PendingRemoval, PendingSnapshot, PendingUsage};
use super::xcopy::CopyRefusal;
use crate::control::Registry;
use crate::iscsi::connection::{
    Action, CloseReason, ConnConfig, ConnParams, Connection, DataInSource, TaskId, TaskResponse,
};
use crate::iscsi::discovery::{TextExchange, TextRequest};
use crate::iscsi::login::{SessionParams, TargetLimits};
use crate::iscsi::pdu::frame::{self, FrameError, Next};
use crate::iscsi::pdu::initiator::TmfFunction;
use crate::iscsi::pdu::target::TmfResponse;
use crate::scsi::lun::{PrPersist, SanitizeState};
use crate::scsi::{self, Completion, LogicalUnit, NexusId, OpClass, Outcome};
use crate::stats::slow::{SlowCommand, SlowLog};
use crate::stats::{
    LunSnapshot, LunStats, PhaseTimes, QosCounters, Stamps, StatsConfig, Window, second_of,
};
use crate::storage::pool::extent_map::ExtentMap;
use crate::storage::records::{self, RecordError};
use crate::storage::{Piece, Volume};
use crossbeam::channel::{Receiver, Sender};
use io_uring::{IoUring, opcode, types};
use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
pub(super) const KIND_IO: u64 = 3;
const KIND_WAKE: u64 = 4;
pub(super) const KIND_SYNC: u64 = 5;
pub(super) const KIND_READAHEAD: u64 = 6;
pub(super) const KIND_SANITIZE: u64 = 7;
const TICK: Duration = Duration::from_millis(100);
/// Shortest sleep while QoS holds commands back (finer than the kernel timer slack gains nothing).
const MIN_HELD_WAIT: Duration = Duration::from_micros(200);
/// Slots of the ring's file table: one per data file the shard's volumes use (more fall back
/// to plain descriptors).
const FILE_SLOTS: u32 = 64;
/// Slots of the ring's buffer table (the byte budget usually runs out first).
const BUFFER_SLOTS: u16 = 4096;
const RX_CAPACITY: usize = 512 * 1024;

pub(super) fn user_data(kind: u64, index: usize) -> u64 {
    (kind << 56) | index as u64
}

/// A LUN served by a shard: its SCSI state, its storage and its statistics.
pub struct LunSlot {
    /// The target (IQN) it is exported as.
    pub target: String,
    /// SCSI state.
    pub lu: LogicalUnit,
    /// Storage.
    pub volume: Box<dyn Volume + Send>,
    /// Latency and throughput.
    pub stats: LunStats,
    /// Where its state is kept across a restart (none: not kept).
    pub records: RecordFiles,
    /// Its QoS limits and the commands they hold back.
    pub qos: Throttle<HeldCommand>,
}

/// A command held back (by a QoS limit, or a SANITIZE answered when its erase ends): its
/// connection (slot and session, since a slot may be reused once the connection is gone) and
/// task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldCommand {
    pub(super) index: usize,
    pub(super) tsih: u16,
    pub(super) task: TaskId,
}

/// The files a LUN's state is kept in across a restart (`storage::records`); none: not kept.
#[derive(Debug, Clone, Default)]
pub struct RecordFiles {
    /// Its persistent reservations, while APTPL is active.
    pub reservations: Option<PathBuf>,
    /// Its sanitize operation in progress, or failure mode.
    pub sanitize: Option<PathBuf>,
}

impl LunSlot {
    /// Stores what the last command changed of the persistent reservations (APTPL), before its
    /// status goes out.
    pub fn store_reservations(&mut self) -> Result<(), RecordError> {
        let (Some(change), Some(path)) = (
            self.lu.take_pr_persist(),
            self.records.reservations.as_deref(),
        ) else {
            return Ok(());
        };
        match change {
            PrPersist::Save(record) => records::save(path, &record),
            PrPersist::Remove => records::remove(path),
        }
    }

    /// Stores what changed of the sanitize state (a SANITIZE started or ended, EXIT FAILURE
    /// MODE), before the status of the command that changed it goes out: an erase an initiator
    /// was told had started resumes after a restart.
    pub fn store_sanitize(&mut self) -> Result<(), RecordError> {
        match self.lu.take_sanitize_persist() {
            Some(state) => self.store_sanitize_state(state),
            None => Ok(()),
        }
    }

    /// Stores what a SANITIZE command changed of the sanitize state (`prior` before it) and
    /// passes its `outcome` on; if the change cannot be stored, puts `prior` back and fails the
    /// command with INTERNAL TARGET FAILURE instead.
    fn settle_sanitize(&mut self, outcome: Outcome, prior: SanitizeState, shard: usize) -> Outcome {
        match self.store_sanitize() {
            Ok(()) => outcome,
            Err(e) => {
                log_error(shard, "storing the sanitize state", &e);
                self.revert_sanitize(prior, shard);
                Outcome::Done(Completion::check(scsi::Sense::internal_target_failure()))
            }
        }
    }

    /// Puts the sanitize state back to `prior` after a change that could not be stored. The
    /// file may hold the change all the same (a write whose directory sync failed), and a
    /// `running` record resumes an erase at the next serve: `prior` is stored again, and if
    /// that fails too the unit is put in the failure mode (EXIT FAILURE MODE allowed), which
    /// accepts no writes such an erase could destroy.
    pub(super) fn revert_sanitize(&mut self, prior: SanitizeState, shard: usize) {
        let state = match self.store_sanitize_state(prior) {
            Ok(()) => prior,
            Err(e) => {
                log_error(shard, "restoring the sanitize record", &e);
                SanitizeState::Failed { ause: true }
            }
        };
        self.lu.restore_sanitize(state);
    }

    /// Stores sanitize state `state` (no record for `Idle`).
    fn store_sanitize_state(&self, state: SanitizeState) -> Result<(), RecordError> {
        let Some(path) = self.records.sanitize.as_deref() else {
            return Ok(());
        };
        match state {
            SanitizeState::Idle => records::remove(path),
            other => records::save(path, &other),
        }
    }
}

/// A logged-in connection handed to the shard that owns its target.
pub struct NewConnection {
    /// The socket.
    pub stream: TcpStream,
    /// The target it logged in to.
    pub target: String,
    /// Negotiated parameters.
    pub params: ConnParams,
    /// Connection ID.
    pub cid: u16,
    /// ExpCmdSN after login.
    pub exp_cmd_sn: u32,
    /// Next StatSN.
    pub stat_sn: u32,
    /// The I_T nexus.
    pub nexus: NexusId,
    /// Its initiator port name (`NAME,i,0xISID`), for PERSISTENT RESERVE IN's TransportIDs.
    pub initiator_port: String,
    /// Its TSIH (to unregister the session when it ends).
    pub tsih: u16,
    /// The negotiated session parameters (for full-feature renegotiation).
    pub session: SessionParams,
}

/// Live settings of a served LUN to change; each `None` stays as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LunChange {
    /// The write cache (MODE PARAMETERS CHANGED for every nexus).
    pub write_cache: Option<bool>,
    /// Write protection.
    pub read_only: Option<bool>,
    /// QoS limits (commands held back stay in order).
    pub qos: Option<super::qos::QosLimits>,
}

impl LunChange {
    fn apply(self, lun: &mut LunSlot) {
        if let Some(on) = self.write_cache {
            lun.lu.set_write_cache(on);
        }
        if let Some(on) = self.read_only {
            lun.lu.set_read_only(on);
        }
        if let Some(limits) = self.qos {
            lun.qos.set_limits(limits);
        }
    }
}

/// Messages to a shard.
pub enum ShardMsg {
    /// Serve a new connection.
    Connection(Box<NewConnection>),
    /// Drop the session of this nexus (session reinstatement).
    DropNexus(NexusId),
    /// Send a copy of the statistics of every LUN (or of one target) over a window.
    Stats {
        /// Only this target.
        target: Option<String>,
        /// The window.
        window: Window,
        /// The copies.
        reply: Sender<Vec<LunSnapshot>>,
    },
    /// Start the statistics of every LUN (or of one target) anew.
    ResetStats {
        /// Only this target.
        target: Option<String>,
        /// The volumes reset.
        reply: Sender<Vec<String>>,
    },
    /// Serve a new LUN.
    AddLun(Box<LunSlot>),
    /// Stop serving a LUN and hand back its extent map (thin volumes): refused while sessions
    /// use it unless `force`, which closes them first.
    RemoveLun {
        /// The target.
        target: String,
        /// Close its sessions.
        force: bool,
        /// The answer: the map and the extents still reserved for it (None for a non-thin
        /// volume), or why not.
        reply: Sender<Result<Option<(ExtentMap, u64)>, String>>,
    },
    /// Share the volume's map as a snapshot: the answer comes once every write in flight at
    /// that instant has completed (so none of them is acknowledged after the snapshot returns).
    Snapshot {
        /// The target.
        target: String,
        /// The snapshot's map and the sequence number of the instant it was taken.
        reply: Sender<Result<(ExtentMap, u64), SnapshotError>>,
    },
    /// The reservations of the LUN exported as `target`, after clearing them all when `clear`.
    Reservations {
        /// The target.
        target: String,
        /// Clear them first (administrator override).
        clear: bool,
        /// Where the answer goes.
        reply: Sender<Result<crate::scsi::lun::Reservations, String>>,
    },
    /// Change a LUN's live settings (see [`LunChange`]).
    Reconfigure {
        /// The target.
        target: String,
        /// What changes.
        change: LunChange,
        /// Done, or why not.
        reply: Sender<Result<(), String>>,
    },
    /// Grow a volume online (CAPACITY DATA HAS CHANGED for every nexus).
    Resize {
        /// The target.
        target: String,
        /// New size in bytes.
        size: u64,
        /// Extents reserved in the pool for a full volume's growth (0 for thin).
        reserved: u64,
        /// Done, or why not.
        reply: Sender<Result<(), String>>,
    },
    /// Space usage of a volume: its map walked in small steps between I/O completions (see
    /// [`UsageWalk`](crate::storage::pool::extent_map::UsageWalk)); the answer comes when the walk is complete.
    Usage {
        /// The target.
        target: String,
        /// The walk and what it needs to trim the volume's reservation, or why not.
        reply: Sender<Result<UsageReport, String>>,
    },
    /// Give back the part of a full volume's reservation it no longer needs (see
    /// `ThinVolume::trim_reservation`).
    TrimReservation {
        /// The target.
        target: String,
        /// Extents it owns alone, from a [`UsageReport`].
        owned: u64,
        /// The report's marks.
        marks: u64,
        /// Extents given back, or why not.
        reply: Sender<Result<u64, String>>,
    },
    /// Checkpoint cut: every writable thin volume continues its journal in a file of
    /// `generation` and reports (image, map, cut sequence number).
    Rotate {
        /// The superblock generation of the coming checkpoint.
        generation: u64,
        /// The cuts, or why a volume could not rotate.
        reply: Sender<Result<Cuts, String>>,
    },
    /// EXTENDED COPY by another shard's command: lend `count` extents from extent `first` of
    /// `target` (`ThinVolume::lend_extents`), checked for `initiator` (None: the command's own
    /// unit).
    LendExtents {
        /// The target.
        target: String,
        /// Whose copy it is, when the target is not the command's own unit.
        initiator: Option<String>,
        /// First extent.
        first: u64,
        /// Extents.
        count: u64,
        /// The lent extents (one reference each), or why not.
        reply: Sender<Result<super::xcopy::Lent, String>>,
    },
    /// EXTENDED COPY by another shard's command: map extents from `first` of `target` to
    /// `lent` (see `Shard::adopt_for_copy` for who owns the references when it refuses).
    AdoptExtents {
        /// The target.
        target: String,
        /// Whose copy it is, when the target is not the command's own unit.
        initiator: Option<String>,
        /// First extent.
        first: u64,
        /// Extents lent by the source's shard.
        lent: Vec<Option<u64>>,
        /// Done, or why not.
        reply: super::xcopy::AdoptReply,
    },
    /// Make a volume full (reserving its space; `Err` when the pool cannot) or thin (giving
    /// its reservation back); answers the extents reserved or given back.
    Provision {
        /// The target.
        target: String,
        /// Full (true) or thin (false).
        full: bool,
        /// Extents reserved or given back, or why not.
        reply: Sender<Result<u64, ProvisionError>>,
    },
    /// Freeze `targets` for a consistent snapshot of several volumes: hold their new commands
    /// (until `Thaw`, or `until`) and answer once the writes in flight on them have completed.
    Freeze {
        /// The targets.
        targets: Vec<String>,
        /// When the freeze ends by itself.
        until: Instant,
        /// Answered when frozen and drained, or why not.
        reply: Sender<Result<(), String>>,
    },
    /// Lift a freeze.
    Thaw {
        /// The targets.
        targets: Vec<String>,
    },
    /// The copy thread's answer to a `CrossCopy` of op `slot`.
    CopyDone {
        /// The op.
        slot: usize,
        /// Copied, or why not.
        result: Result<(), CopyRefusal>,
    },
    /// Stop the shard.
    Stop,
}

/// A checkpoint cut of one volume: (image, its map at the cut, the cut's sequence number).
pub type JournalCut = (u64, ExtentMap, u64);

/// A shard's checkpoint cuts, and the token that tells the shard the checkpoint writer still
/// holds those maps: their nodes are shared meanwhile, so every extent of the shard's volumes
/// looks shared, and SANITIZE waits for the token to be dropped before it judges which extents
/// only its volume sees (see `runtime::sanitize`). Drop the token with the maps.
pub struct Cuts {
    /// One per writable thin volume of the shard.
    pub cuts: Vec<JournalCut>,
    /// Held while the maps are.
    pub hold: CheckpointHold,
}

/// See [`Cuts`].
#[derive(Debug)]
pub struct CheckpointHold {
    pub(super) _token: Arc<()>,
}

/// Why a shard did not make a volume full (or thin).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// The pool cannot reserve what the volume does not own alone (nothing was reserved).
    #[error("the pool cannot reserve the {needed} extents the volume does not own alone")]
    NoSpace {
        /// Extents it would need.
        needed: u64,
    },
    /// Anything else: the volume is not served here, or was made thin meanwhile.
    #[error("{0}")]
    Other(String),
}

impl From<String> for ProvisionError {
    fn from(e: String) -> Self {
        ProvisionError::Other(e)
    }
}

/// Why a shard refused a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A full volume's snapshot needs its reservation topped up, and the pool is too full.
    #[error(
        "the pool cannot reserve the {needed} extents a snapshot of full volume {target} needs \
         (every extent it maps becomes shared, and a full volume must be able to rewrite them all)"
    )]
    NoSpace {
        /// The volume's target.
        target: String,
        /// Extents it would need reserved.
        needed: u64,
    },
    /// The volume is being sanitized: a snapshot would catch it half erased, and the extents
    /// it holds alone must not gain another holder before they are erased.
    #[error(
        "volume of target {target} is being sanitized (SANITIZE from an initiator); snapshot it \
         once that has ended"
    )]
    Sanitizing {
        /// The volume's target.
        target: String,
    },
    /// Anything else (not served here, journal sync failed).
    #[error("{0}")]
    Failed(String),
}

/// How other threads reach a shard: a channel plus an eventfd that wakes its ring.
#[derive(Clone)]
pub struct ShardHandle {
    tx: Sender<ShardMsg>,
    wake: Arc<OwnedFd>,
}

impl ShardHandle {
    /// Sends a message and wakes the shard.
    pub fn send(&self, msg: ShardMsg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let n = unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        n == 8
    }
}

/// Creates the channel and eventfd of a shard.
pub fn channel() -> std::io::Result<(ShardHandle, Receiver<ShardMsg>, Arc<OwnedFd>)> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
    let (tx, rx) = crossbeam::channel::unbounded();
    Ok((
        ShardHandle {
            tx,
            wake: Arc::clone(&wake),
        },
        rx,
        wake,
    ))
}

pub(super) struct ShardConn {
    pub(super) stream: TcpStream,
    pub(super) conn: Connection,
    pub(super) lun: usize,
    pub(super) nexus: NexusId,
    pub(super) rx: Vec<u8>,
    pub(super) rx_start: usize,
    pub(super) rx_end: usize,
    pub(super) recv_in_flight: bool,
    pub(super) tx: Tx,
    pub(super) io_in_flight: u32,
    pub(super) closing: bool,
    pub(super) session: SessionParams,
    pub(super) text: TextExchange,
    pub(super) tsih: u16,
    /// Answered commands whose response is not fully sent yet, in response order.
    pub(super) pending_stats: VecDeque<PendingStat>,
    /// The outbox count ([`Connection::pdus_taken`]) at the end of the send in flight.
    pub(super) batch_end: u64,
}

/// How a finished command is counted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Accounting {
    pub(super) class: OpClass,
    pub(super) bytes: u64,
    /// When the shard executed it (None: latency statistics are off).
    pub(super) submitted: Option<Instant>,
    /// The round that reaped its last backend completion (None: no storage I/O).
    pub(super) backend_done: Option<Instant>,
    /// First LBA and blocks, for the slow-command log.
    pub(super) extent: Option<(u64, u64)>,
}

/// An answer held until the tasks it aborted on other connections, whose storage I/O was in
/// flight, have finished (SAM-5: once an abort completes, the aborted commands no longer modify
/// the medium): a PREEMPT AND ABORT, or a task management function that cleared other nexuses'
/// tasks (CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET).
pub(super) struct PendingFence {
    /// The connection that gets the answer (and its session: the slot may be reused).
    index: usize,
    tsih: u16,
    answer: FenceAnswer,
    /// Aborted tasks still in flight: (connection, task).
    waiting_for: Vec<(usize, TaskId)>,
    /// When the abort happened ([`FENCE_WAIT_LIMIT`]).
    since: Instant,
}

/// The longest a fence or reset answer waits for aborted storage I/O. Storage I/O ends in
/// bounded time, so this is a safety net: past it the answer goes out (logged) rather than leave
/// a cluster's fencing or a host's reset hanging.
const FENCE_WAIT_LIMIT: Duration = Duration::from_secs(10);

/// What a [`PendingFence`] answers.
pub(super) enum FenceAnswer {
    /// The status of a PERSISTENT RESERVE OUT (PREEMPT AND ABORT).
    Scsi {
        id: TaskId,
        completion: Completion,
        wanted: u64,
        acct: Accounting,
    },
    /// A task management response, which also waits for the connection's own aborted tasks.
    Tmf {
        itt: u32,
        function: TmfFunction,
        own: Vec<TaskId>,
    },
}

/// A command answered, waiting for its response to be on the wire to be recorded.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingStat {
    /// Its response's last PDU is the outbox's `last_pdu`th (see [`Connection::pdus_queued`]).
    last_pdu: u64,
    class: OpClass,
    bytes: u64,
    stamps: Stamps,
    opcode: u8,
    extent: Option<(u64, u64)>,
}

/// One shard thread's state.
pub struct Shard {
    pub(super) id: usize,
    pub(super) ring: IoUring,
    pub(super) luns: Vec<LunSlot>,
    pub(super) conns: Vec<Option<Box<ShardConn>>>,
    pub(super) ops: Vec<Option<super::io::IoOp>>,
    /// Writes waiting for a busy extent (op slots).
    pub(super) parked: Vec<usize>,
    /// Writes waiting for released extents to be published (retried on the timer).
    pub(super) parked_for_space: Vec<usize>,
    /// Scratch for write plans.
    pub(super) plan: Vec<crate::storage::WritePiece>,
    pub(super) free_ops: Vec<usize>,
    pub(super) inbox: Receiver<ShardMsg>,
    pub(super) wake: Arc<OwnedFd>,
    pub(super) wake_buf: Box<u64>,
    pub(super) pool: BufPool,
    pub(super) config: ConnConfig,
    pub(super) pieces: Vec<Piece>,
    /// Scratch for completions and submissions (reused: no allocation per round or per I/O).
    pub(super) cqes: Vec<(u64, i32)>,
    pub(super) sqes: Vec<super::io::Transfer>,
    /// Completions of transfers done inline (memory-backed volumes), handled next round.
    pub(super) inline_done: Vec<(u64, i32)>,
    /// Ops waiting for a COMPARE AND WRITE's range (or one waiting for writes), retried when
    /// an op ends (see `runtime::io`).
    pub(super) range_waiters: Vec<usize>,
    /// COMPARE AND WRITE ops started and not ended.
    pub(super) caw_active: usize,
    /// Sequential read-ahead of the shard's LUNs.
    pub(super) readahead: ReadAhead,
    /// This shard's own descriptions of the volumes' data files (see `runtime::files`).
    pub(super) own_files: OwnFiles,
    pub(super) portals: Vec<std::net::SocketAddr>,
    pub(super) registry: Arc<Registry>,
    /// Commands the QoS limits let go this round (kept to reuse its allocation).
    released: Vec<Held<HeldCommand>>,
    pub(super) pending_snapshots: Vec<PendingSnapshot>,
    /// Adoptions for another shard's EXTENDED COPY waiting for a group sync (write-through
    /// volumes), by id, with where to answer.
    pub(super) pending_adopts: Vec<(u64, super::xcopy::AdoptReply)>,
    /// Freezes waiting for the writes in flight on their volumes (see `ShardMsg::Freeze`).
    pub(super) pending_freezes: Vec<super::volumes::PendingFreeze>,
    /// Ids of snapshot and adoption waiters of the group sync.
    pub(super) next_waiter_id: u64,
    /// Group commit of durable writes, flushes and snapshots (see `sync.rs`).
    pub(super) group: GroupSync,
    pub(super) pending_removals: Vec<PendingRemoval>,
    pub(super) pending_usage: Vec<PendingUsage>,
    /// Answers held until the tasks they aborted on other connections are done.
    pending_fences: Vec<PendingFence>,
    /// Conversions to full volumes walking their maps.
    pub(super) pending_provisions: Vec<PendingProvision>,
    /// SANITIZE BLOCK ERASE jobs in progress.
    pub(super) pending_sanitizes: Vec<PendingSanitize>,
    /// Shared with the [`CheckpointHold`] of the last cuts: more than one strong reference
    /// while a checkpoint writer holds this shard's maps.
    pub(super) cut_hold: Arc<()>,
    /// Device reads queued in the SQ since the last submission.
    pub(super) unsubmitted_reads: u32,
    /// Device reads queued that are submitted at once (0: at the round's end only).
    pub(super) read_submit_batch: u32,
    pub(super) stopping: bool,
    /// Keep polling the ring this long after the last completion before sleeping (0: never
    /// poll). Saves the wake-up latency of the shard thread at the cost of a spinning core.
    busy_poll: Duration,
    /// Responses go out through io_uring's worker threads (`IOSQE_ASYNC`).
    async_send: bool,
    /// Where EXTENDED COPY chunks naming another shard's unit go (the control plane's copy
    /// thread; see `runtime::xcopy`). `None`: such copies are refused.
    pub(super) copy_requests: Option<crossbeam::channel::Sender<super::xcopy::CrossCopy>>,
    /// The instant this loop round began handling completions: the time stamp of every receive,
    /// backend and send completion of the round.
    pub(super) round_now: Instant,
    pub(super) stats_config: StatsConfig,
    slow: Option<SlowLog>,
    ticks: u64,
}

impl Shard {
    /// A shard serving `luns`, reading messages from `inbox`.
    #[allow(clippy::too_many_arguments)] // each is a distinct piece of the shard's world
    pub fn new(
        id: usize,
        luns: Vec<LunSlot>,
        inbox: Receiver<ShardMsg>,
        wake: Arc<OwnedFd>,
        config: ConnConfig,
        portals: Vec<std::net::SocketAddr>,
        registry: Arc<Registry>,
        stats_config: StatsConfig,
    ) -> std::io::Result<Self> {
        let ring = new_ring()?;
        let mut own_files = OwnFiles::default();
        if ring.submitter().register_files_sparse(FILE_SLOTS).is_ok() {
            own_files.enable_fixed(FILE_SLOTS);
        }
        let slow = stats_config
            .slow_command
            .filter(|_| stats_config.latency)
            .map(SlowLog::new);
        Ok(Shard {
            id,
            ring,
            luns,
            conns: Vec::new(),
            ops: Vec::new(),
            parked: Vec::new(),
            parked_for_space: Vec::new(),
            plan: Vec::new(),
            free_ops: Vec::new(),
            inbox,
            wake,
            wake_buf: Box::new(0),
            pool: BufPool::new(),
            config,
            pieces: Vec::new(),
            cqes: Vec::with_capacity(1024),
            sqes: Vec::with_capacity(64),
            inline_done: Vec::with_capacity(64),
            range_waiters: Vec::new(),
            caw_active: 0,
            readahead: ReadAhead::new(0),
            own_files,
            portals,
            registry,
            released: Vec::new(),
            pending_snapshots: Vec::new(),
            pending_freezes: Vec::new(),
            pending_adopts: Vec::new(),
            next_waiter_id: 0,
            group: GroupSync::default(),
            pending_removals: Vec::new(),
            pending_usage: Vec::new(),
            pending_fences: Vec::new(),
            pending_provisions: Vec::new(),
            pending_sanitizes: Vec::new(),
            cut_hold: Arc::new(()),
            unsubmitted_reads: 0,
            read_submit_batch: 0,
            stopping: false,
            busy_poll: Duration::ZERO,
            async_send: false,
            copy_requests: None,
            round_now: Instant::now(),
            stats_config,
            slow,
            ticks: 0,
        })
    }

    /// Submits device reads as soon as `n` wait in the ring (zero: once per loop round).
    pub fn with_read_submit_batch(mut self, n: u32) -> Self {
        self.read_submit_batch = n;
        self
    }

    /// Polls the ring for `window` after the last completion before sleeping (zero: off).
    pub fn with_busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Sends EXTENDED COPY chunks that name another shard's unit to `requests` (the control
    /// plane's copy thread).
    pub fn with_copy_requests(
        mut self,
        requests: crossbeam::channel::Sender<super::xcopy::CrossCopy>,
    ) -> Self {
        self.copy_requests = Some(requests);
        self
    }

    /// Sends responses through io_uring's worker threads (`IOSQE_ASYNC`) instead of inline.
    /// The socket then wakes the initiator from a worker thread: an initiator on this machine
    /// is no longer pulled onto the shard's CPU by the wake-up, so the two do not end up taking
    /// turns on one CPU. Costs a thread hand-off per send.
    pub fn with_async_send(mut self, on: bool) -> Self {
        self.async_send = on;
        self
    }

    /// Registers up to `budget` bytes of its I/O buffers with the ring (zero: none); see
    /// `runtime::buf`. Kernels without sparse buffer tables (before 5.13) do without.
    pub fn with_registered_buffers(self, budget: usize) -> Self {
        if budget > 0
            && self
                .ring
                .submitter()
                .register_buffers_sparse(BUFFER_SLOTS.into())
                .is_ok()
        {
            self.pool.enable_registration(BUFFER_SLOTS, budget);
        }
        self
    }

    /// Reads up to `window` bytes ahead of each sequential reader (zero: off); see
    /// `runtime::readahead`.
    pub fn with_read_ahead(mut self, window: u64) -> Self {
        self.readahead = ReadAhead::new(window);
        self
    }

    /// Runs the loop until a `Stop` message.
    pub fn run(mut self) -> std::io::Result<()> {
        self.arm_wake();
        let mut last_tick = Instant::now();
        let mut last_work = last_tick;
        while !self.stopping {
            // Held back by QoS: wake when the next one may run.
            let wait = self
                .held_wait()
                .map_or(TICK, |w| w.clamp(MIN_HELD_WAIT, TICK));
            let ts = types::Timespec::from(wait);
            let args = types::SubmitArgs::new().timespec(&ts);
            // With a usage walk in progress, or within the busy-poll window, poll instead of
            // sleeping.
            let polling = !self.busy_poll.is_zero() && last_work.elapsed() < self.busy_poll;
            let idle = self.pending_usage.is_empty()
                && self.pending_provisions.is_empty()
                && !self.pending_sanitizes.iter().any(PendingSanitize::runnable)
                && self.inline_done.is_empty();
            let want = usize::from(idle && !polling);
            if self.pool.wants_registration() {
                self.register_parked_buffers();
            }
            self.unsubmitted_reads = 0;
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            if self.own_files.has_retired() && self.ring.submission().is_empty() {
                let (ring, id) = (&self.ring, self.id);
                self.own_files.release_retired(|slot| {
                    if let Err(e) = ring.submitter().register_files_update(slot, &[-1]) {
                        log_error(id, "emptying a fixed file slot", &e);
                    }
                });
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.append(&mut self.inline_done);
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            let now = Instant::now();
            self.round_now = now;
            if !self.busy_poll.is_zero() && !cqes.is_empty() {
                last_work = now;
            }
            for &(ud, res) in &cqes {
                self.on_completion(ud, res);
            }
            cqes.clear();
            self.cqes = cqes;
            self.release_held();
            if !self.pending_fences.is_empty() {
                self.settle_fences();
            }
            if !self.pending_usage.is_empty() {
                self.advance_usage();
            }
            if !self.pending_provisions.is_empty() {
                self.advance_provisions();
            }
            if !self.pending_sanitizes.is_empty() {
                self.advance_sanitizes();
            }
            if now.duration_since(last_tick) >= TICK {
                last_tick = now;
                self.tick(now);
            }
        }
        Ok(())
    }

    /// Puts the buffers parked since the last round in the ring's buffer table (a failure turns
    /// registration off: the buffers keep working unregistered).
    fn register_parked_buffers(&mut self) {
        let submitter = self.ring.submitter();
        let result = self.pool.register_parked(|first, iovecs| {
            // One buffer per update: the kernel stops a batch at the first buffer it cannot
            // register (RLIMIT_MEMLOCK, say) and the io-uring crate drops the count it returns,
            // so only a one-buffer update tells exactly which buffers got a slot.
            for (i, iov) in iovecs.iter().enumerate() {
                let slot = u32::from(first) + i as u32;
                // SAFETY: the iovec spans one of the pool's buffers, which stays allocated
                // until the pool is dropped, after the ring (field order of `Shard`; see
                // `runtime::buf`).
                let res = unsafe {
                    submitter.register_buffers_update(slot, std::slice::from_ref(iov), None)
                };
                if let Err(e) = res {
                    return (i, Err(e));
                }
            }
            (iovecs.len(), Ok(()))
        });
        if let Err(e) = result {
            log_error(self.id, "registering I/O buffers (continuing without)", &e);
        }
    }

    pub(super) fn push(&mut self, sqe: io_uring::squeue::Entry) {
        loop {
            // SAFETY: every SQE built by this shard points at memory that outlives the
            // operation (see the module invariants).
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return;
            }
            // Queue full: hand what we have to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                log_error(self.id, "io_uring submit", &e);
            }
        }
    }

    fn arm_wake(&mut self) {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.wake.as_raw_fd()), ptr.cast(), 8)
            .build()
            .user_data(user_data(KIND_WAKE, 0));
        self.push(sqe);
    }

    fn on_completion(&mut self, ud: u64, res: i32) {
        let index = (ud & 0x00ff_ffff_ffff_ffff) as usize;
        match ud >> 56 {
            KIND_RECV => self.on_recv(index, res),
            KIND_SEND => self.on_send(index, res),
            KIND_IO => self.on_io(index, res),
            KIND_SYNC => self.on_sync(res),
            KIND_READAHEAD => self.on_readahead(index, res),
            KIND_SANITIZE => self.on_sanitize_io(index, res),
            KIND_WAKE => {
                self.drain_inbox();
                if !self.stopping {
                    self.arm_wake();
                }
            }
            _ => {}
        }
    }

    fn drain_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                ShardMsg::Connection(nc) => self.add_connection(*nc),
                ShardMsg::DropNexus(nexus) => {
                    let victims: Vec<usize> = self
                        .live_conns()
                        .filter(|(_, c)| c.nexus == nexus)
                        .map(|(i, _)| i)
                        .collect();
                    for i in victims {
                        self.close(i);
                    }
                }
                ShardMsg::Stats {
                    target,
                    window,
                    reply,
                } => {
                    let _ = reply.send(self.stats_snapshot(target.as_deref(), window));
                }
                ShardMsg::ResetStats { target, reply } => {
                    let now = Instant::now();
                    let mut reset = Vec::new();
                    for l in self.luns_matching(target.as_deref()) {
                        l.stats.reset(now);
                        reset.push(l.lu.info().volume_name.clone());
                    }
                    let _ = reply.send(reset);
                }
                ShardMsg::AddLun(slot) => self.add_lun(*slot),
                ShardMsg::RemoveLun {
                    target,
                    force,
                    reply,
                } => self.remove_lun(&target, force, reply),
                ShardMsg::Snapshot { target, reply } => self.snapshot(&target, reply),
                ShardMsg::Reconfigure {
                    target,
                    change,
                    reply,
                } => {
                    let answer = self.served_lun(&target).map(|l| change.apply(l));
                    let _ = reply.send(answer);
                }
                ShardMsg::Reservations {
                    target,
                    clear,
                    reply,
                } => {
                    let answer = self.served_lun(&target).and_then(|l| {
                        if clear {
                            l.lu.clear_reservations();
                            l.store_reservations().map_err(|e| e.to_string())?;
                        }
                        Ok(l.lu.reservations())
                    });
                    let _ = reply.send(answer);
                }
                ShardMsg::Resize {
                    target,
                    size,
                    reserved,
                    reply,
                } => {
                    let _ = reply.send(self.resize(&target, size, reserved));
                }
                ShardMsg::Usage { target, reply } => self.start_usage(target, reply),
                ShardMsg::TrimReservation {
                    target,
                    owned,
                    marks,
                    reply,
                } => {
                    let trimmed = self
                        .thin_of(&target)
                        .map(|t| t.trim_reservation(owned, marks));
                    let _ = reply.send(trimmed);
                }
                ShardMsg::Rotate { generation, reply } => {
                    let _ = reply.send(self.rotate(generation));
                }
                ShardMsg::LendExtents {
                    target,
                    initiator,
                    first,
                    count,
                    reply,
                } => {
                    let lent = match self.lun_of_target(&target) {
                        Some(lun) => self.lend_for_copy(lun, initiator.as_deref(), first, count),
                        None => Err(CopyRefusal::NotReachable),
                    };
                    let _ = reply.send(Ok(lent));
                }
                ShardMsg::AdoptExtents {
                    target,
                    initiator,
                    first,
                    lent,
                    reply,
                } => self.adopt_for_other_shard(&target, initiator.as_deref(), first, lent, reply),
                ShardMsg::CopyDone { slot, result } => self.copy_done(slot, result),
                ShardMsg::Freeze {
                    targets,
                    until,
                    reply,
                } => self.freeze(&targets, until, reply),
                ShardMsg::Thaw { targets } => self.thaw(&targets),
                ShardMsg::Provision {
                    target,
                    full,
                    reply,
                } => {
                    if full {
                        self.start_provision(target, reply);
                    } else {
                        let _ = reply.send(self.make_thin(&target).map_err(ProvisionError::from));
                    }
                }
                ShardMsg::Stop => {
                    self.stopping = true;
                    let all: Vec<usize> = self.live_conns().map(|(i, _)| i).collect();
                    for i in all {
                        self.close(i);
                    }
                }
            }
        }
    }

    /// The served LUNs, or the one exported as `target`.
    fn luns_matching<'a>(
        &'a mut self,
        target: Option<&'a str>,
    ) -> impl Iterator<Item = &'a mut LunSlot> + 'a {
        self.luns
            .iter_mut()
            .filter(move |l| !l.target.is_empty() && target.is_none_or(|t| t == l.target))
    }

    fn stats_snapshot(&mut self, target: Option<&str>, window: Window) -> Vec<LunSnapshot> {
        let now = Instant::now();
        self.luns_matching(target)
            .map(|l| {
                let (classes, seconds, since_reset) = l.stats.snapshot(window, now);
                LunSnapshot {
                    target: l.target.clone(),
                    volume: l.lu.info().volume_name.clone(),
                    lun: l.lu.info().lun,
                    seconds,
                    since_reset,
                    classes,
                    read_ahead: l.stats.read_ahead,
                    qos: QosCounters {
                        held: l.stats.qos_held,
                        waiting: l.qos.waiting() as u64,
                    },
                }
            })
            .collect()
    }

    pub(super) fn live_conns(&self) -> impl Iterator<Item = (usize, &ShardConn)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_deref().map(|c| (i, c)))
    }

    fn add_connection(&mut self, nc: NewConnection) {
        let Some(lun) = self.luns.iter().position(|l| l.target == nc.target) else {
            return;
        };
        let _ = nc.stream.set_nodelay(true);
        self.luns[lun].lu.add_nexus(nc.nexus);
        self.luns[lun]
            .lu
            .name_nexus(nc.nexus, nc.initiator_port.clone());
        let conn = Connection::new(
            nc.params,
            self.config,
            nc.cid,
            nc.exp_cmd_sn,
            nc.stat_sn,
            self.pool.clone(),
            Instant::now(),
        );
        let sc = Box::new(ShardConn {
            stream: nc.stream,
            conn,
            lun,
            nexus: nc.nexus,
            rx: vec![0; RX_CAPACITY],
            rx_start: 0,
            rx_end: 0,
            recv_in_flight: false,
            tx: Tx::new(),
            io_in_flight: 0,
            closing: false,
            session: nc.session,
            text: TextExchange::new(),
            tsih: nc.tsih,
            pending_stats: VecDeque::new(),
            batch_end: 0,
        });
        let index = match self.conns.iter().position(Option::is_none) {
            Some(i) => {
                self.conns[i] = Some(sc);
                i
            }
            None => {
                self.conns.push(Some(sc));
                self.conns.len() - 1
            }
        };
        self.arm_recv(index);
    }

    pub(super) fn conn_mut(&mut self, index: usize) -> Option<&mut ShardConn> {
        self.conns.get_mut(index).and_then(|c| c.as_deref_mut())
    }

    // ---- receive ----

    fn arm_recv(&mut self, index: usize) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        if sc.recv_in_flight || sc.closing {
            return;
        }
        if sc.rx_start == sc.rx_end {
            sc.rx_start = 0;
            sc.rx_end = 0;
        } else if sc.rx.len() - sc.rx_end < 64 * 1024 {
            sc.rx.copy_within(sc.rx_start..sc.rx_end, 0);
            sc.rx_end -= sc.rx_start;
            sc.rx_start = 0;
        }
        let free = &mut sc.rx[sc.rx_end..];
        let sqe = opcode::Recv::new(
            types::Fd(sc.stream.as_raw_fd()),
            free.as_mut_ptr(),
            free.len() as u32,
        )
        .build()
        .user_data(user_data(KIND_RECV, index));
        sc.recv_in_flight = true;
        self.push(sqe);
    }

    fn on_recv(&mut self, index: usize, res: i32) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        sc.recv_in_flight = false;
        if res <= 0 || sc.closing {
            self.close(index);
            self.reap(index);
            return;
        }
        sc.rx_end += res as usize;
        let now = self.round_now;
        self.parse_frames(index, now);
        // An ABORT TASK (or ABORT TASK SET) of a command a QoS limit holds ends it now, so the
        // answer does not wait for the limit.
        if self
            .conn_mut(index)
            .is_some_and(|sc| sc.conn.take_aborted())
        {
            self.end_aborted_held();
        }
        self.pump(index);
        self.arm_recv(index);
    }

    fn parse_frames(&mut self, index: usize, now: Instant) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        loop {
            if sc.conn.close_reason().is_some() {
                return;
            }
            let framing = sc.conn.params().framing;
            let max = sc.conn.params().max_recv_data_segment_length;
            let window = &sc.rx[sc.rx_start..sc.rx_end];
            match frame::next_frame(window, framing, max) {
                Ok(Next::Frame(f)) => {
                    let consumed = f.consumed;
                    sc.conn.on_pdu(&f.bhs, f.data, now);
                    sc.rx_start += consumed;
                }
                Ok(Next::NeedBytes(n)) => {
                    if n > sc.rx.len() {
                        sc.rx.resize(n + 64 * 1024, 0);
                    }
                    return;
                }
                Err(FrameError::HeaderDigest) => {
                    sc.conn.on_header_digest_error();
                    return;
                }
                Err(FrameError::DataDigest { bhs, consumed }) => {
                    sc.conn.on_data_digest_error(&bhs);
                    sc.rx_start += consumed;
                }
                Err(FrameError::DataSegmentTooLong { bhs, .. }) => {
                    sc.conn.on_oversized_pdu(&bhs);
                    return;
                }
            }
        }
    }

    // ---- actions and sending ----

    /// Runs the connection's pending actions and starts a send if one is due.
    pub(super) fn pump(&mut self, index: usize) {
        loop {
            let Some(sc) = self.conn_mut(index) else {
                return;
            };
            let Some(action) = sc.conn.poll_action() else {
                break;
            };
            match action {
                Action::Execute(task) => self.execute(index, task),
                Action::Reset { itt, function, lun } => self.reset(index, itt, function, lun),
                Action::Text(req) => self.text(index, &req),
            }
        }
        self.flush(index);
    }

    pub(super) fn flush(&mut self, index: usize) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        if sc.tx.in_flight() {
            return;
        }
        if sc.closing && sc.conn.close_reason().is_none() {
            return;
        }
        let framing = sc.conn.params().framing;
        let conn = &mut sc.conn;
        match sc.tx.start(framing, || conn.poll_transmit()) {
            Some(msg) => {
                sc.batch_end = sc.conn.pdus_taken();
                let sqe = opcode::SendMsg::new(types::Fd(sc.stream.as_raw_fd()), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(user_data(KIND_SEND, index));
                let sqe = if self.async_send {
                    sqe.flags(io_uring::squeue::Flags::ASYNC)
                } else {
                    sqe
                };
                self.push(sqe);
            }
            None => {
                if sc.conn.close_reason().is_some() {
                    self.close(index);
                }
            }
        }
    }

    fn on_send(&mut self, index: usize, res: i32) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        if res < 0 {
            sc.tx.finish();
            self.close(index);
            self.reap(index);
            return;
        }
        match sc.tx.advance(res as usize) {
            Some(msg) => {
                let sqe = opcode::SendMsg::new(types::Fd(sc.stream.as_raw_fd()), msg)
                    .flags(libc::MSG_NOSIGNAL as u32)
                    .build()
                    .user_data(user_data(KIND_SEND, index));
                let sqe = if self.async_send {
                    sqe.flags(io_uring::squeue::Flags::ASYNC)
                } else {
                    sqe
                };
                self.push(sqe);
            }
            None => {
                if !sc.pending_stats.is_empty() {
                    self.record_sent(index);
                }
                let Some(sc) = self.conn_mut(index) else {
                    return;
                };
                if sc.closing {
                    self.reap(index);
                } else {
                    self.flush(index);
                }
            }
        }
    }

    /// Starts closing a connection: no more receives; dropped by `reap` once idle.
    pub(super) fn close(&mut self, index: usize) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        if !sc.closing {
            sc.closing = true;
            // Wakes a pending recv (it completes with 0); the socket closes when dropped.
            let _ = sc.stream.shutdown(std::net::Shutdown::Both);
        }
        self.reap(index);
    }

    /// Drops a closing connection once no operation of it is in flight.
    pub(super) fn reap(&mut self, index: usize) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        if !sc.closing || sc.recv_in_flight || sc.tx.in_flight() || sc.io_in_flight > 0 {
            return;
        }
        let (lun, nexus, tsih) = (sc.lun, sc.nexus, sc.tsih);
        self.conns[index] = None;
        self.registry.unregister(tsih);
        self.finish_removals();
        let still_there = self.live_conns().any(|(_, c)| c.nexus == nexus);
        if !still_there {
            self.luns[lun].lu.remove_nexus(nexus);
        }
    }

    fn tick(&mut self, now: Instant) {
        self.ticks += 1;
        if self.ticks % 10 == 0 {
            for l in self.luns.iter_mut() {
                l.stats.trim(now);
            }
            if let Some(slow) = self.slow.as_mut() {
                for line in slow.roll(self.id, second_of(now)) {
                    eprintln!("{line}");
                }
            }
        }
        self.check_soft_threshold();
        self.retry_for_space();
        self.end_aborted_held();
        let live: Vec<usize> = self.live_conns().map(|(i, _)| i).collect();
        for i in live {
            if let Some(sc) = self.conn_mut(i) {
                sc.conn.tick(now);
            }
            self.flush(i);
        }
    }

    /// THIN PROVISIONING SOFT THRESHOLD REACHED (SBC-3 §4.7.3.6): once per I_T nexus while
    /// the pool is past its threshold; armed again when usage falls back below it.
    fn check_soft_threshold(&mut self) {
        for slot in self.luns.iter_mut().filter(|l| !l.target.is_empty()) {
            let LunSlot { lu, volume, .. } = slot;
            match volume.as_thin().map(|t| t.past_soft_threshold()) {
                Some(true) => lu.soft_threshold_reached(),
                Some(false) => lu.reset_soft_threshold(),
                None => {}
            }
        }
    }

    // ---- SCSI execution ----

    /// Runs task `id` of connection `index`, unless its LUN's QoS limits hold it back for now
    /// (then [`Shard::release_held`] runs it later).
    fn execute(&mut self, index: usize, id: TaskId) {
        let Some(sc) = self.conns.get(index).and_then(|c| c.as_deref()) else {
            return;
        };
        let slot = &mut self.luns[sc.lun];
        let frozen = slot.qos.frozen(self.round_now);
        if frozen || !slot.qos.limits().unlimited() || slot.qos.waiting() > 0 {
            let Some(task) = sc.conn.task(id) else { return };
            let cdb = &task.cmd.cdb;
            // A freeze also holds what changes the blocks without a charge (UNMAP, SANITIZE).
            let charge = scsi::cdb::qos_charge(cdb, slot.lu.info().block_size)
                .or_else(|| (frozen && scsi::lun::changes_medium(cdb)).then_some(0));
            if let Some(bytes) = charge.filter(|_| !task.refused()) {
                if !slot.qos.admit(self.round_now, bytes) {
                    let held = HeldCommand {
                        index,
                        tsih: sc.tsih,
                        task: id,
                    };
                    slot.qos.hold(held, bytes);
                    // A freeze's holds are not the limits' doing.
                    if !frozen {
                        slot.stats.qos_held += 1;
                    }
                    return;
                }
            }
        }
        self.execute_now(index, id);
    }

    /// Runs the commands the QoS limits let go now (their connection still there); a command
    /// aborted while held ends without running.
    pub(super) fn release_held(&mut self) {
        let mut released = std::mem::take(&mut self.released);
        for lun in 0..self.luns.len() {
            if self.luns[lun].qos.waiting() == 0 {
                continue;
            }
            self.luns[lun].qos.release(self.round_now, &mut released);
            for held in released.drain(..) {
                let HeldCommand { index, task, .. } = held.what;
                let Some(sc) = self.held_conn(held.what) else {
                    continue;
                };
                match sc.conn.task(task).map(|t| t.aborted()) {
                    None => {}
                    Some(true) => {
                        sc.conn.complete(task, TaskResponse::nothing());
                        self.flush(index);
                    }
                    Some(false) => {
                        self.execute_now(index, task);
                        self.flush(index);
                    }
                }
            }
        }
        self.released = released;
    }

    /// Ends at once the held commands a task management function aborted (they end without a
    /// response, so the TMF's answer does not wait for the limit), and forgets those whose
    /// connection is gone. Called after a reset, after a connection marked a task aborted (ABORT
    /// TASK, ABORT TASK SET), and on every tick.
    pub(super) fn end_aborted_held(&mut self) {
        let mut ended = std::mem::take(&mut self.released);
        for lun in 0..self.luns.len() {
            if self.luns[lun].qos.waiting() == 0 {
                continue;
            }
            let conns = &self.conns;
            self.luns[lun].qos.take_if(
                |h| {
                    conns
                        .get(h.index)
                        .and_then(|c| c.as_deref())
                        .filter(|sc| sc.tsih == h.tsih)
                        .and_then(|sc| sc.conn.task(h.task))
                        .is_none_or(|t| t.aborted())
                },
                &mut ended,
            );
            for held in ended.drain(..) {
                self.end_without_status(held.what);
            }
        }
        self.released = ended;
        self.end_aborted_sanitize_answers();
    }

    /// The connection of held command `cmd`, if it is still the same session's.
    pub(super) fn held_conn(&mut self, cmd: HeldCommand) -> Option<&mut ShardConn> {
        self.conn_mut(cmd.index).filter(|sc| sc.tsih == cmd.tsih)
    }

    /// Ends held command `cmd` without a response (it was aborted).
    pub(super) fn end_without_status(&mut self, cmd: HeldCommand) {
        if let Some(sc) = self.held_conn(cmd) {
            sc.conn.complete(cmd.task, TaskResponse::nothing());
            self.flush(cmd.index);
        }
    }

    /// How long until a held command may run (`None`: none is held).
    pub(super) fn held_wait(&self) -> Option<Duration> {
        self.luns.iter().filter_map(|l| l.qos.wait()).min()
    }

    fn execute_now(&mut self, index: usize, id: TaskId) {
        let Some(sc) = self.conns.get_mut(index).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        let Some(task) = sc.conn.task(id) else { return };
        let submitted = self.stats_config.latency.then(Instant::now);
        let lun = sc.lun;
        let tsih = sc.tsih;
        let mut preempted = Vec::new();
        let slot = &mut self.luns[lun];
        let cdb = task.cmd.cdb;
        let block_size = slot.lu.info().block_size;
        let wanted_out = if task.cmd.write {
            scsi::cdb::data_out_length(&cdb, block_size)
        } else {
            0
        };
        let outcome = if task.refused() {
            Outcome::Done(Completion::check(scsi::Sense::invalid_field_in_cdb(
                0, None,
            )))
        } else if decode_lun(task.cmd.lun) != Some(slot.lu.info().lun) {
            Outcome::Done(scsi::lun::lun_not_supported(&cdb))
        } else {
            // PERSISTENT RESERVE OUT: the state before it, put back if what changed cannot be
            // stored (the initiator is told the command failed, so nothing may have changed).
            let before = (cdb[0] == scsi::cdb::opcode::PERSISTENT_RESERVE_OUT)
                .then(|| (slot.lu.reservation_state(), slot.lu.is_registered(sc.nexus)));
            // SANITIZE: likewise with the sanitize state (started, or the failure mode left).
            let sanitize_before =
                (cdb[0] == scsi::cdb::opcode::SANITIZE).then(|| slot.lu.sanitize_state());
            let outcome = slot.lu.execute(sc.nexus, &cdb, task.data_out());
            // (Only SANITIZE changes it: other commands skip the store.)
            let outcome = match sanitize_before {
                Some(prior) => slot.settle_sanitize(outcome, prior, self.id),
                None => outcome,
            };
            match (slot.store_reservations(), before) {
                (Ok(()), Some((_, registered))) => {
                    if slot.lu.is_registered(sc.nexus) != registered {
                        // The port's id must outlive its sessions while it is registered.
                        self.registry.pin(sc.nexus, !registered);
                    }
                    preempted = slot.lu.take_preempted_nexuses();
                    outcome
                }
                (Ok(()), None) => outcome,
                (Err(e), before) => {
                    log_error(self.id, "storing persistent reservations", &e);
                    if let Some((state, _)) = before {
                        slot.lu.restore_reservation_state(state);
                    }
                    Outcome::Done(Completion::check(scsi::Sense::internal_target_failure()))
                }
            }
        };
        let write = task.cmd.write;
        let outcome = match outcome {
            Outcome::GetLbaStatus { lba, alloc_len } => {
                Outcome::Done(lba_status(slot, lba, alloc_len))
            }
            other => other,
        };
        let acct = Accounting {
            class: scsi::cdb::op_class(&cdb),
            bytes: 0,
            submitted,
            backend_done: None,
            extent: None,
        };
        if let Outcome::Sanitize { immed } = outcome {
            let cmd = HeldCommand {
                index,
                tsih,
                task: id,
            };
            self.start_sanitize(cmd, lun, immed, acct);
            return;
        }
        let fenced_in_flight = if preempted.is_empty() {
            Vec::new()
        } else {
            self.abort_preempted(index, lun, &preempted)
        };
        match outcome {
            Outcome::Done(c) => {
                let wanted = if write {
                    wanted_out
                } else {
                    c.data.len() as u64
                };
                if fenced_in_flight.is_empty() {
                    self.finish(index, id, c, DataInSource::None, wanted, acct);
                } else {
                    self.pending_fences.push(PendingFence {
                        index,
                        tsih,
                        answer: FenceAnswer::Scsi {
                            id,
                            completion: c,
                            wanted,
                            acct,
                        },
                        waiting_for: fenced_in_flight,
                        since: Instant::now(),
                    });
                }
            }
            io => self.start_io(index, id, io, submitted),
        }
    }

    /// Answers task `id` and counts it: at once when latencies are not measured, else once its
    /// response is on the wire ([`Shard::record_sent`]).
    pub(super) fn finish(
        &mut self,
        index: usize,
        id: TaskId,
        c: Completion,
        buffer: DataInSource,
        wanted: u64,
        acct: Accounting,
    ) {
        let Some(sc) = self.conns.get_mut(index).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        let timing = sc
            .conn
            .task(id)
            .and_then(|t| Some((t.arrived_at, t.ready_at?, t.cmd.cdb[0])));
        let data = match buffer {
            DataInSource::None if !c.data.is_empty() => DataInSource::Bytes(c.data),
            other => other,
        };
        let resp = TaskResponse {
            status: c.status as u8,
            sense: c.sense.map(|s| s.to_bytes()),
            data,
            wanted,
        };
        if !sc.conn.complete(id, resp) {
            return;
        }
        match (acct.submitted, timing) {
            (Some(submitted), Some((arrived, ready, opcode))) => {
                sc.pending_stats.push_back(PendingStat {
                    last_pdu: sc.conn.pdus_queued(),
                    class: acct.class,
                    bytes: acct.bytes,
                    stamps: Stamps {
                        arrived,
                        ready,
                        submitted,
                        backend_done: acct.backend_done.unwrap_or(submitted),
                    },
                    opcode,
                    extent: acct.extent,
                });
            }
            _ => {
                let sec = second_of(self.round_now);
                let stats = &mut self.luns[sc.lun].stats;
                stats.class_mut(acct.class).record(sec, acct.bytes, None);
            }
        }
    }

    /// Records the commands whose responses the send that just completed carried (in the
    /// round's instant).
    fn record_sent(&mut self, index: usize) {
        let now = self.round_now;
        let sec = second_of(now);
        let Some(sc) = self.conns.get_mut(index).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        let slot = &mut self.luns[sc.lun];
        while let Some(p) = sc.pending_stats.front().copied() {
            if p.last_pdu > sc.batch_end {
                break;
            }
            sc.pending_stats.pop_front();
            let times = PhaseTimes::between(&p.stamps, now);
            slot.stats
                .class_mut(p.class)
                .record(sec, p.bytes, Some(&times));
            let Some(slow) = self.slow.as_mut() else {
                continue;
            };
            if slow.is_slow(times.total()) {
                let cmd = SlowCommand {
                    target: &slot.target,
                    lun: slot.lu.info().lun,
                    opcode: p.opcode,
                    extent: p.extent,
                    times,
                    initiator: &sc.session.initiator_name,
                };
                for line in slow.note(self.id, sec, &cmd) {
                    eprintln!("{line}");
                }
            }
        }
    }

    // ---- task management and text ----

    fn reset(&mut self, index: usize, itt: u32, function: TmfFunction, lun_field: u64) {
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        let (lun, nexus) = (sc.lun, sc.nexus);
        let target_wide = matches!(
            function,
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset
        );
        let our_lun = self.luns[lun].lu.info().lun;
        if !target_wide && decode_lun(lun_field) != Some(our_lun) {
            if let Some(sc) = self.conn_mut(index) {
                sc.conn.tmf_done(itt, TmfResponse::LunDoesNotExist);
            }
            return;
        }
        let others: Vec<usize> = self
            .live_conns()
            .filter(|(i, c)| c.lun == lun && *i != index)
            .map(|(i, _)| i)
            .collect();
        // TARGET COLD RESET is a power-on: every session of the target ends (§11.5.1).
        let shut = function == TmfFunction::TargetColdReset;
        let (mut cleared, others_in_flight) = self.abort_tasks_of(others, shut);
        let Some(sc) = self.conn_mut(index) else {
            return;
        };
        let in_flight = sc.conn.abort_all();
        if others_in_flight.is_empty() {
            sc.conn.reset_done(itt, function, in_flight);
        } else {
            // The answer waits for the other nexuses' aborted commands at the disk too.
            let tsih = self.conn_mut(index).map_or(0, |sc| sc.tsih);
            self.pending_fences.push(PendingFence {
                index,
                tsih,
                answer: FenceAnswer::Tmf {
                    itt,
                    function,
                    own: in_flight,
                },
                waiting_for: others_in_flight,
                since: Instant::now(),
            });
        }
        // The aborted commands a QoS limit holds end now, so the reset's answer need not wait.
        self.end_aborted_held();
        let lu = &mut self.luns[lun].lu;
        match function {
            TmfFunction::LogicalUnitReset => lu.lun_reset(nexus),
            TmfFunction::TargetWarmReset | TmfFunction::TargetColdReset => lu.target_reset(nexus),
            // SPC-4 §7.5.2 / SAM-5: tasks of other nexuses cleared by CLEAR TASK SET are
            // reported to them with COMMANDS CLEARED BY ANOTHER INITIATOR.
            _ => {
                cleared.dedup();
                for victim in cleared {
                    lu.commands_cleared(victim);
                }
            }
        }
    }

    /// PREEMPT AND ABORT (SPC-4 5.13.11.2.6) succeeded on connection `index`: every task the
    /// preempted nexuses have on LU `lun` ends without status (TAS=0), as if by ABORT TASK SET
    /// from their own nexus, and a nexus that lost tasks is told COMMANDS CLEARED BY ANOTHER
    /// INITIATOR after REGISTRATIONS PREEMPTED. Their sessions stay up, and their tasks on
    /// other LUs are untouched.
    ///
    /// Returns the aborted tasks whose storage I/O is still in flight (connection, task): a
    /// fenced node's WRITE already at the disk still lands, so the PREEMPT AND ABORT is answered
    /// only once they are done ([`Shard::settle_fences`]).
    fn abort_preempted(
        &mut self,
        index: usize,
        lun: usize,
        preempted: &[NexusId],
    ) -> Vec<(usize, TaskId)> {
        let victims: Vec<usize> = self
            .live_conns()
            .filter(|(i, c)| c.lun == lun && *i != index && preempted.contains(&c.nexus))
            .map(|(i, _)| i)
            .collect();
        let (mut cleared, in_flight) = self.abort_tasks_of(victims, false);
        self.end_aborted_held();
        cleared.dedup();
        for victim in cleared {
            self.luns[lun].lu.commands_cleared(victim);
        }
        in_flight
    }

    /// Aborts every task of connections `conns` on behalf of another nexus (Control mode page
    /// TAS=0: they end without status), closing them too when `shut`. Returns the nexuses that
    /// lost tasks, and the aborted tasks whose storage I/O is still in flight.
    fn abort_tasks_of(
        &mut self,
        conns: Vec<usize>,
        shut: bool,
    ) -> (Vec<NexusId>, Vec<(usize, TaskId)>) {
        let mut cleared = Vec::new();
        let mut in_flight = Vec::new();
        for i in conns {
            if let Some(sc) = self.conn_mut(i) {
                if sc.conn.task_count() > 0 {
                    cleared.push(sc.nexus);
                }
                in_flight.extend(sc.conn.abort_all().into_iter().map(|id| (i, id)));
                if shut {
                    sc.conn.shut(CloseReason::Reset);
                }
            }
            self.flush(i);
        }
        (cleared, in_flight)
    }

    /// Gives the held answers whose aborted tasks have all finished their storage I/O (an
    /// aborted task stays in its connection, marked aborted, until then).
    pub(super) fn settle_fences(&mut self) {
        let mut pending = std::mem::take(&mut self.pending_fences);
        let now = self.round_now;
        for p in &mut pending {
            p.waiting_for.retain(|&(i, id)| self.still_aborting(i, id));
            if !p.waiting_for.is_empty() && now.duration_since(p.since) > FENCE_WAIT_LIMIT {
                let n = p.waiting_for.len();
                let e = format!("{n} aborted commands still in flight after {FENCE_WAIT_LIMIT:?}");
                log_error(self.id, "answering a fence or reset anyway", &e);
                p.waiting_for.clear();
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(|p| p.waiting_for.is_empty());
        self.pending_fences.extend(waiting);
        for p in done {
            if self.conn_mut(p.index).is_none_or(|sc| sc.tsih != p.tsih) {
                continue; // its connection is gone (the slot may serve another session now)
            }
            match p.answer {
                FenceAnswer::Scsi {
                    id,
                    completion,
                    wanted,
                    acct,
                } => self.finish(p.index, id, completion, DataInSource::None, wanted, acct),
                FenceAnswer::Tmf { itt, function, own } => {
                    let own: Vec<TaskId> = own
                        .into_iter()
                        .filter(|&id| self.still_aborting(p.index, id))
                        .collect();
                    if let Some(sc) = self.conn_mut(p.index) {
                        sc.conn.reset_done(itt, function, own);
                    }
                }
            }
            self.flush(p.index);
        }
    }

    /// Whether task `id` of connection `index` was aborted and is still in flight.
    fn still_aborting(&self, index: usize, id: TaskId) -> bool {
        self.conns
            .get(index)
            .and_then(|c| c.as_deref())
            .and_then(|c| c.conn.task(id))
            .is_some_and(|t| t.aborted())
    }

    fn text(&mut self, index: usize, req: &TextRequest) {
        let Some(sc) = self.conns.get_mut(index).and_then(|c| c.as_deref_mut()) else {
            return;
        };
        let slot = &self.luns[sc.lun];
        let directory = SessionDirectory {
            target: &slot.target,
            alias: &slot.lu.info().volume_name,
            portals: &self.portals,
        };
        match sc
            .text
            .handle(req, &sc.session, &TargetLimits::default(), &directory)
        {
            Ok(step) => {
                sc.conn.text_response(step.response);
                if let Some(params) = step.params {
                    sc.conn.set_params(super::login::conn_params(&params));
                    sc.session = params;
                }
            }
            Err(e) => sc.conn.reject_text(e.reject_reason(), req),
        }
    }
}

/// The shard's ring: completions are processed only when the shard asks for them
/// (DEFER_TASKRUN, single issuer), which saves the inter-processor interrupts and task-work
/// wake-ups of the default mode; older kernels fall back to a plain ring.
fn new_ring() -> std::io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        // Flags pending task work in the SQ ring, so a non-waiting enter (busy polling) runs it.
        .setup_taskrun_flag()
        .build(1024);
    match tuned {
        Ok(ring) => Ok(ring),
        Err(_) => IoUring::new(1024),
    }
}

/// GET LBA STATUS: mapped / deallocated runs from the volume's map.
fn lba_status(slot: &mut LunSlot, lba: u64, alloc_len: u32) -> Completion {
    let LunSlot { lu, volume, .. } = slot;
    match volume.as_thin() {
        Some(thin) => {
            let map = thin.map();
            lu.lba_status(lba, alloc_len, |extent| map.get(extent).is_some())
        }
        None => lu.lba_status(lba, alloc_len, |_| true),
    }
}

/// Decodes a single-level LUN (SAM-5 §4.7: peripheral or flat addressing).
pub fn decode_lun(field: u64) -> Option<u64> {
    let b = field.to_be_bytes();
    if b[2..].iter().any(|&x| x != 0) {
        return None;
    }
    match b[0] >> 6 {
        0b00 if b[0] == 0 => Some(u64::from(b[1])),
        0b01 => Some((u64::from(b[0] & 0x3f) << 8) | u64::from(b[1])),
        _ => None,
    }
}

pub(super) fn log_error(shard: usize, what: &str, e: &dyn std::fmt::Display) {
    eprintln!("shoal: shard {shard}: {what}: {e}");
}

/// Raw descriptor helper for logging.
pub fn fd_of(stream: &TcpStream) -> RawFd {
    stream.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_lun_addressing_methods() {
        assert_eq!(decode_lun(0), Some(0));
        assert_eq!(decode_lun(0x0003_0000_0000_0000), Some(3));
        assert_eq!(decode_lun(0x4105_0000_0000_0000), Some(0x105));
        assert_eq!(decode_lun(0x0000_0000_0000_0001), None);
        assert_eq!(decode_lun(0x8000_0000_0000_0000), None);
    }
}
