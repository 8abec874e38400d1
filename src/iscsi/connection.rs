//! Full-feature phase of one connection (RFC 7143 §4, §11), ErrorRecoveryLevel 0, one connection
//! per session: the task table, Data-Out collection and R2T, Data-In and status, NOP keepalive,
//! task management and logout.
//!
//! Shaped like quinn-proto: no sockets and no clock. The runtime calls [`Connection::on_pdu`] for
//! each received PDU (with `now`), [`Connection::tick`] now and then, and [`Connection::complete`]
//! when a task's SCSI work is done; it drains [`Connection::poll_transmit`] to send and
//! [`Connection::poll_action`] to learn what to execute.
//!
//! Invariants:
//! - A task is executed only once all of its Data-Out has arrived and its CmdSN turn has come.
//! - An aborted task whose storage I/O is in flight keeps its slot (and buffers) until
//!   [`Connection::complete`] is called for it; no response is sent for it.
//! - Every PDU carrying status takes the next StatSN; other PDUs report it without advancing it.

use super::pdu::initiator::{
    self, DataOut, InitiatorPdu, LogoutRequest, NopOut, PduError, ScsiCommand, TextRequest,
    TmfFunction, TmfRequest,
};
use super::pdu::target::{self, DataIn, RESERVED_TAG, RejectReason, Residual, Seq, TmfResponse};
use super::pdu::{Bhs, Framing};
use super::serial;
use super::session::{Admission, CmdWindow};
use crate::runtime::buf::{AlignedBuf, BufPool};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Negotiated values the full-feature phase depends on (from the login).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnParams {
    /// Digests on the wire.
    pub framing: Framing,
    /// Largest data segment we accept (our MaxRecvDataSegmentLength).
    pub max_recv_data_segment_length: u32,
    /// Largest data segment we may send (the initiator's MaxRecvDataSegmentLength).
    pub max_xmit_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
}

impl Default for ConnParams {
    /// RFC 7143 §13 defaults.
    fn default() -> Self {
        ConnParams {
            framing: Framing::default(),
            max_recv_data_segment_length: 8192,
            max_xmit_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
        }
    }
}

/// Target-side limits and timers for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Commands the initiator may have outstanding (MaxCmdSN - ExpCmdSN + 1).
    pub queue_depth: u32,
    /// Idle time after which the target pings with a NOP-In.
    pub nop_interval: Duration,
    /// Time a ping may stay unanswered before the connection is dropped.
    pub nop_timeout: Duration,
    /// Largest Expected Data Transfer Length buffered for a write.
    pub max_write_len: u32,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            queue_depth: 128,
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(30),
            max_write_len: 16 << 20,
        }
    }
}

/// Index of a task in the connection's task table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskId(pub usize);

/// Data a PDU carries after its header.
#[derive(Debug)]
pub enum OutData {
    /// No data segment.
    None,
    /// Owned bytes (sense data, text, NOP echo).
    Bytes(Vec<u8>),
    /// A slice of a shared read buffer (zero-copy Data-In).
    Shared {
        /// The buffer.
        buf: Rc<AlignedBuf>,
        /// Start of this PDU's data in it.
        offset: usize,
        /// Length.
        len: usize,
    },
}

impl OutData {
    /// The bytes to send.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            OutData::None => &[],
            OutData::Bytes(v) => v,
            OutData::Shared { buf, offset, len } => &buf[*offset..*offset + *len],
        }
    }
}

/// One PDU to send.
#[derive(Debug)]
pub struct OutPdu {
    /// Its header (DataSegmentLength already set).
    pub bhs: Bhs,
    /// Its data segment.
    pub data: OutData,
}

/// Data returned to the initiator by a finished command.
#[derive(Debug)]
pub enum DataInSource {
    /// None.
    None,
    /// Owned bytes (INQUIRY, MODE SENSE...).
    Bytes(Vec<u8>),
    /// A read buffer; its length is the data length.
    Buffer(Rc<AlignedBuf>),
}

impl DataInSource {
    fn len(&self) -> usize {
        match self {
            DataInSource::None => 0,
            DataInSource::Bytes(v) => v.len(),
            DataInSource::Buffer(b) => b.len(),
        }
    }
}

/// How a task ended, as the runtime reports it.
#[derive(Debug)]
pub struct TaskResponse {
    /// SCSI status byte.
    pub status: u8,
    /// Sense bytes (with CHECK CONDITION).
    pub sense: Option<Vec<u8>>,
    /// Data-In.
    pub data: DataInSource,
    /// Bytes the command wanted to move (SCSI transfer length), for residuals (§11.4.5).
    pub wanted: u64,
}

impl TaskResponse {
    /// The response of a task that ends without one (it was aborted): nothing to send.
    pub fn nothing() -> Self {
        TaskResponse {
            status: 0,
            sense: None,
            data: DataInSource::None,
            wanted: 0,
        }
    }
}

/// Work the runtime must do for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Execute the task's CDB (its Data-Out is complete): see [`Connection::task`].
    Execute(TaskId),
    /// Perform a task-management function that reaches beyond this connection (LU or target
    /// reset, clear task set), then call [`Connection::tmf_done`].
    Reset {
        /// ITT of the TMF request.
        itt: u32,
        /// The function.
        function: TmfFunction,
        /// The LUN field of the request.
        lun: u64,
    },
    /// Answer a Text Request in full-feature phase with [`Connection::text_response`] (or a
    /// Reject through [`Connection::reject_text`]).
    Text(crate::iscsi::discovery::TextRequest),
}

/// Why the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Logout completed.
    Logout,
    /// The initiator violated the protocol.
    ProtocolError,
    /// A header digest failed.
    HeaderDigest,
    /// A NOP-In ping went unanswered.
    KeepaliveTimeout,
    /// Target cold reset.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// Received, not yet at its CmdSN turn.
    Held,
    /// Delivered, collecting Data-Out.
    Receiving,
    /// Handed to the runtime.
    Executing,
}

#[derive(Debug, Clone, Copy)]
struct R2tState {
    ttt: u32,
    offset: u32,
    len: u32,
    received: u32,
    next_data_sn: u32,
}

/// One SCSI task.
#[derive(Debug)]
pub struct Task {
    /// The command header.
    pub cmd: ScsiCommand,
    /// Data-Out collected so far (`expected` bytes when complete), unless discarded.
    pub data_out: Option<AlignedBuf>,
    /// Bytes of Data-Out the task accepts.
    expected: u32,
    /// Data-Out too large to buffer: accepted and dropped, the command fails.
    discard: bool,
    received: u32,
    unsolicited_limit: u32,
    unsolicited_next: u32,
    unsolicited_data_sn: u32,
    unsolicited_done: bool,
    next_solicit: u32,
    /// Outstanding R2Ts (MaxOutstandingR2T is small; inline up to 4 without allocating).
    r2ts: SmallVec<[R2tState; 4]>,
    r2t_sn: u32,
    state: TaskState,
    aborted: bool,
    /// When its SCSI Command PDU arrived.
    pub arrived_at: Instant,
    /// When the last PDU the command needed arrived (its data complete, its CmdSN turn come).
    pub ready_at: Option<Instant>,
}

impl Task {
    /// The Data-Out bytes (empty when none).
    pub fn data_out(&self) -> &[u8] {
        self.data_out.as_deref().unwrap_or(&[])
    }

    /// The command was refused before execution because its Data-Out could not be buffered,
    /// or it is bidirectional.
    pub fn refused(&self) -> bool {
        self.discard || (self.cmd.read && self.cmd.write)
    }

    /// A task management function aborted it (it ends without a response).
    pub fn aborted(&self) -> bool {
        self.aborted
    }
}

/// Commands and requests waiting for their CmdSN turn.
#[derive(Debug)]
enum Ordered {
    Task(TaskId),
    Nop(NopOut, Vec<u8>),
    Text(TextRequest, Vec<u8>),
    Logout(LogoutRequest),
    Tmf(TmfRequest),
    /// A CmdSN considered received without a command (the aborted, never-seen task of
    /// §11.5.1 rule b): delivering it only moves ExpCmdSN on.
    Void,
}

#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    waiting_for: Vec<TaskId>,
}

/// One full-feature-phase connection (and its single-connection session).
#[derive(Debug)]
pub struct Connection {
    params: ConnParams,
    config: ConnConfig,
    cid: u16,
    stat_sn: u32,
    window: CmdWindow<Ordered>,
    tasks: Vec<Option<Task>>,
    free_slots: Vec<usize>,
    /// Task by Initiator Task Tag. Fx hashing: a tag is a u32 the initiator picks, and a session
    /// holds at most its queue depth of them, so collisions can cost little.
    by_itt: FxHashMap<u32, TaskId>,
    outbox: VecDeque<OutPdu>,
    actions: VecDeque<Action>,
    pending_tmfs: Vec<PendingTmf>,
    next_ttt: u32,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    logout: Option<LogoutRequest>,
    close: Option<CloseReason>,
    pool: BufPool,
    /// PDUs ever queued in the outbox, and ever taken out of it (see [`Connection::pdus_queued`]).
    pdus_queued: u64,
    pdus_taken: u64,
    /// An executing task was marked aborted since [`Connection::take_aborted`] last asked.
    aborted: bool,
    /// ITTs of the last tasks aborted before they executed (at most [`ABORTED_ITTS_KEPT`]): a
    /// Data-Out still on its way for one of them is dropped silently, not rejected (the
    /// initiator may not know yet: a task aborted by another nexus, PREEMPT AND ABORT).
    aborted_itts: VecDeque<u32>,
}

/// How many aborted tasks' ITTs a connection remembers for late Data-Out.
const ABORTED_ITTS_KEPT: usize = 256;

impl Connection {
    /// A connection entering full-feature phase. `exp_cmd_sn` and `stat_sn` continue the login's
    /// numbering.
    pub fn new(
        params: ConnParams,
        config: ConnConfig,
        cid: u16,
        exp_cmd_sn: u32,
        stat_sn: u32,
        pool: BufPool,
        now: Instant,
    ) -> Self {
        Connection {
            params,
            config,
            cid,
            stat_sn,
            window: CmdWindow::new(exp_cmd_sn, config.queue_depth),
            tasks: Vec::new(),
            free_slots: Vec::new(),
            by_itt: FxHashMap::default(),
            outbox: VecDeque::new(),
            actions: VecDeque::new(),
            pending_tmfs: Vec::new(),
            next_ttt: 1,
            last_rx: now,
            ping: None,
            logout: None,
            close: None,
            pool,
            pdus_queued: 0,
            pdus_taken: 0,
            aborted: false,
            aborted_itts: VecDeque::new(),
        }
    }

    /// Whether an executing task was marked aborted since the last call: the runtime then ends
    /// those it holds back itself (a QoS limit) instead of running them.
    pub fn take_aborted(&mut self) -> bool {
        std::mem::take(&mut self.aborted)
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &ConnParams {
        &self.params
    }

    /// Why the connection must close once its outbox is sent, if it must.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close
    }

    /// The next PDU to send.
    pub fn poll_transmit(&mut self) -> Option<OutPdu> {
        let pdu = self.outbox.pop_front()?;
        self.pdus_taken += 1;
        Some(pdu)
    }

    /// PDUs queued for sending since the connection began. The outbox is FIFO, so the response
    /// queued when this read `n` is on the wire once [`Connection::pdus_taken`] reached `n` and
    /// those PDUs were written (the runtime's send statistics rely on it).
    pub fn pdus_queued(&self) -> u64 {
        self.pdus_queued
    }

    /// PDUs handed to [`Connection::poll_transmit`]'s caller since the connection began.
    pub fn pdus_taken(&self) -> u64 {
        self.pdus_taken
    }

    /// PDUs waiting to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The next action for the runtime.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The task `id` (for executing it).
    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(id.0).and_then(Option::as_ref)
    }

    /// Number of live tasks.
    pub fn task_count(&self) -> usize {
        self.by_itt.len()
    }

    fn seq(&self) -> Seq {
        Seq {
            stat_sn: self.stat_sn,
            exp_cmd_sn: self.window.exp_cmd_sn(),
            max_cmd_sn: self.window.max_cmd_sn(),
        }
    }

    /// Sequence numbers for a PDU that carries status: takes the next StatSN.
    fn status_seq(&mut self) -> Seq {
        let seq = self.seq();
        self.stat_sn = self.stat_sn.wrapping_add(1);
        seq
    }

    fn send(&mut self, bhs: Bhs, data: OutData) {
        self.outbox.push_back(OutPdu { bhs, data });
        self.pdus_queued += 1;
    }

    fn reject(&mut self, reason: RejectReason, rejected: &Bhs) {
        let bhs = target::reject(reason, self.status_seq());
        self.send(bhs, OutData::Bytes(rejected.0.to_vec()));
    }

    fn fail(&mut self, reason: RejectReason, rejected: &Bhs) {
        self.reject(reason, rejected);
        self.close = Some(CloseReason::ProtocolError);
    }

    /// Handles one received PDU. `data` is its data segment (digests already checked).
    pub fn on_pdu(&mut self, bhs: &Bhs, data: &[u8], now: Instant) {
        self.last_rx = now;
        if self.close.is_some() {
            return;
        }
        match initiator::parse(bhs) {
            Ok(pdu) => self.dispatch(pdu, bhs, data, now),
            Err(PduError::UnknownOpcode(_)) => self.reject(RejectReason::CommandNotSupported, bhs),
            Err(PduError::InvalidField { .. }) => self.reject(RejectReason::InvalidPduField, bhs),
        }
    }

    /// A data segment failed its digest: reject the PDU (§7.8), and since ERL 0 cannot recover
    /// the lost data, fail the connection.
    pub fn on_data_digest_error(&mut self, bhs: &Bhs) {
        self.fail(RejectReason::DataDigestError, bhs);
    }

    /// A header digest failed: nothing after it can be located, so the connection ends
    /// (§7.8, ERL 0).
    pub fn on_header_digest_error(&mut self) {
        self.close = Some(CloseReason::HeaderDigest);
    }

    /// Ends the connection once its queued PDUs are sent (target cold reset from another
    /// session).
    pub fn shut(&mut self, reason: CloseReason) {
        self.close = Some(reason);
    }

    /// A PDU declared a data segment larger than we accept: protocol error.
    pub fn on_oversized_pdu(&mut self, bhs: &Bhs) {
        self.fail(RejectReason::ProtocolError, bhs);
    }

    fn dispatch(&mut self, pdu: InitiatorPdu, bhs: &Bhs, data: &[u8], now: Instant) {
        if self.logout.is_some() && !matches!(pdu, InitiatorPdu::DataOut(_)) {
            self.reject(RejectReason::WaitingForLogout, bhs);
            return;
        }
        match pdu {
            InitiatorPdu::ScsiCommand(cmd) => self.on_scsi_command(cmd, bhs, data, now),
            InitiatorPdu::DataOut(d) => self.on_data_out(d, bhs, data, now),
            InitiatorPdu::NopOut(nop) => self.on_nop_out(nop, bhs, data),
            InitiatorPdu::TmfRequest(tmf) => {
                self.admit(tmf.cmd_sn, tmf.immediate, Ordered::Tmf(tmf), now);
            }
            InitiatorPdu::TextRequest(text) => {
                let item = Ordered::Text(text, data.to_vec());
                self.admit(text.cmd_sn, text.immediate, item, now);
            }
            InitiatorPdu::LogoutRequest(req) => {
                self.admit(req.cmd_sn, req.immediate, Ordered::Logout(req), now);
            }
            InitiatorPdu::LoginRequest(_) => self.fail(RejectReason::ProtocolError, bhs),
            InitiatorPdu::Snack { .. } => self.reject(RejectReason::CommandNotSupported, bhs),
        }
    }

    /// Admits a numbered request; returns false when the window ignored it (out of window or a
    /// duplicate CmdSN).
    fn admit(&mut self, cmd_sn: u32, immediate: bool, item: Ordered, now: Instant) -> bool {
        match self.window.admit(cmd_sn, immediate, item) {
            Admission::Deliver(item) => {
                self.deliver(item, now);
                while let Some(next) = self.window.pop_ready() {
                    self.deliver(next, now);
                }
                true
            }
            Admission::Queued => true,
            Admission::Ignored => false,
        }
    }

    fn deliver(&mut self, item: Ordered, now: Instant) {
        match item {
            Ordered::Task(id) => {
                if let Some(task) = self.task_mut(id) {
                    task.state = TaskState::Receiving;
                }
                self.progress(id, now);
            }
            Ordered::Nop(nop, data) => self.answer_nop(nop, data),
            Ordered::Text(req, data) => {
                self.actions
                    .push_back(Action::Text(crate::iscsi::discovery::TextRequest {
                        final_bit: req.final_bit,
                        cont: req.cont,
                        itt: req.itt,
                        ttt: req.ttt,
                        data,
                    }))
            }
            Ordered::Logout(req) => self.on_logout(req),
            Ordered::Tmf(tmf) => self.on_tmf(tmf),
            Ordered::Void => {}
        }
    }

    fn task_mut(&mut self, id: TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(id.0).and_then(Option::as_mut)
    }

    fn insert_task(&mut self, task: Task) -> TaskId {
        let itt = task.cmd.itt;
        let id = match self.free_slots.pop() {
            Some(slot) => {
                self.tasks[slot] = Some(task);
                TaskId(slot)
            }
            None => {
                self.tasks.push(Some(task));
                TaskId(self.tasks.len() - 1)
            }
        };
        self.by_itt.insert(itt, id);
        id
    }

    fn remove_task(&mut self, id: TaskId) -> Option<Task> {
        let task = self.tasks.get_mut(id.0)?.take()?;
        self.free_slots.push(id.0);
        if self.by_itt.get(&task.cmd.itt) == Some(&id) {
            self.by_itt.remove(&task.cmd.itt);
        }
        self.settle_tmfs(id);
        self.maybe_finish_logout();
        Some(task)
    }

    // ---- SCSI Command and Data-Out (§11.3, §11.7, §11.8) ----

    fn on_scsi_command(&mut self, cmd: ScsiCommand, bhs: &Bhs, data: &[u8], now: Instant) {
        if self.by_itt.contains_key(&cmd.itt) {
            self.reject(RejectReason::TaskInProgress, bhs);
            return;
        }
        let immediate_len = data.len() as u32;
        if immediate_len > 0
            && (!cmd.write
                || !self.params.immediate_data
                || immediate_len > self.params.first_burst_length
                || immediate_len > cmd.expected_data_transfer_length)
        {
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        }
        let task = self.new_task(cmd, data, now);
        let id = self.insert_task(task);
        if !self.admit(cmd.cmd_sn, cmd.immediate, Ordered::Task(id), now) {
            // Ignored by the window (§4.2.2.1): it will never be delivered, forget it.
            self.remove_task(id);
        }
    }

    fn new_task(&self, cmd: ScsiCommand, immediate: &[u8], now: Instant) -> Task {
        let expected = if cmd.write {
            cmd.expected_data_transfer_length
        } else {
            0
        };
        let discard = expected > self.config.max_write_len;
        let data_out = (expected > 0 && !discard).then(|| {
            let mut buf = self.pool.take(expected as usize);
            buf[..immediate.len()].copy_from_slice(immediate);
            buf
        });
        let unsolicited_limit = if self.params.initial_r2t || cmd.final_bit {
            immediate.len() as u32
        } else {
            self.params.first_burst_length.min(expected)
        };
        let received = immediate.len() as u32;
        Task {
            cmd,
            data_out,
            expected,
            discard,
            received,
            unsolicited_limit,
            unsolicited_next: received,
            unsolicited_data_sn: 0,
            unsolicited_done: cmd.final_bit || received >= unsolicited_limit,
            next_solicit: unsolicited_limit.max(received),
            r2ts: SmallVec::new(),
            r2t_sn: 0,
            state: TaskState::Held,
            aborted: false,
            arrived_at: now,
            ready_at: None,
        }
    }

    /// Moves a delivered task on: execute it when its data is complete, else solicit more.
    fn progress(&mut self, id: TaskId, now: Instant) {
        let max_r2t = self.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = self.params.max_burst_length.max(512);
        let mut r2ts: SmallVec<[(u32, u32, u32); 4]> = SmallVec::new();
        {
            let Some(task) = self.task_mut(id) else {
                return;
            };
            if task.state != TaskState::Receiving {
                return;
            }
            if task.received >= task.expected {
                task.state = TaskState::Executing;
                task.ready_at = Some(now);
                self.actions.push_back(Action::Execute(id));
                return;
            }
            if !task.unsolicited_done || task.discard {
                return;
            }
            while task.r2ts.len() < max_r2t && task.next_solicit < task.expected {
                let len = (task.expected - task.next_solicit).min(max_burst);
                r2ts.push((task.next_solicit, len, task.r2t_sn));
                task.r2ts.push(R2tState {
                    ttt: 0,
                    offset: task.next_solicit,
                    len,
                    received: 0,
                    next_data_sn: 0,
                });
                task.next_solicit += len;
                task.r2t_sn = task.r2t_sn.wrapping_add(1);
            }
        }
        for (offset, len, r2t_sn) in r2ts {
            let ttt = self.alloc_ttt();
            let seq = self.seq();
            let Some(task) = self.task_mut(id) else {
                return;
            };
            if let Some(r) = task.r2ts.iter_mut().find(|r| r.offset == offset) {
                r.ttt = ttt;
            }
            let bhs = target::r2t(task.cmd.itt, task.cmd.lun, ttt, seq, r2t_sn, offset, len);
            self.send(bhs, OutData::None);
        }
    }

    fn alloc_ttt(&mut self) -> u32 {
        let ttt = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        ttt
    }

    fn on_data_out(&mut self, d: DataOut, bhs: &Bhs, data: &[u8], now: Instant) {
        let Some(&id) = self.by_itt.get(&d.itt) else {
            if !self.aborted_itts.contains(&d.itt) {
                self.reject(RejectReason::InvalidPduField, bhs);
            }
            return;
        };
        match self.accept_data_out(id, &d, data) {
            Ok(()) => self.progress(id, now),
            Err(reason) => {
                // The task's data can no longer be trusted: reject the PDU and terminate the
                // task (the initiator fails it on the Reject), keeping the session for others.
                self.reject(reason, bhs);
                self.abort_matching(|t| t.cmd.itt == d.itt);
            }
        }
    }

    /// Checks a Data-Out against the task's unsolicited burst or the R2T it answers, and stores
    /// its data. Any inconsistency (offset, DataSN, length) is a protocol error at ERL 0.
    fn accept_data_out(
        &mut self,
        id: TaskId,
        d: &DataOut,
        data: &[u8],
    ) -> Result<(), RejectReason> {
        let task = self.task_mut(id).ok_or(RejectReason::InvalidPduField)?;
        let len = data.len() as u32;
        let end = d
            .buffer_offset
            .checked_add(len)
            .ok_or(RejectReason::ProtocolError)?;
        if end > task.expected || task.state == TaskState::Executing {
            return Err(RejectReason::ProtocolError);
        }
        if d.ttt == RESERVED_TAG {
            if task.unsolicited_done
                || d.buffer_offset != task.unsolicited_next
                || d.data_sn != task.unsolicited_data_sn
                || end > task.unsolicited_limit
            {
                return Err(RejectReason::ProtocolError);
            }
            task.unsolicited_next = end;
            task.unsolicited_data_sn = task.unsolicited_data_sn.wrapping_add(1);
            if d.final_bit || end >= task.unsolicited_limit {
                task.unsolicited_done = true;
            }
        } else {
            let r = task.r2ts.iter_mut().find(|r| r.ttt == d.ttt);
            let r = r.ok_or(RejectReason::InvalidPduField)?;
            if d.buffer_offset != r.offset + r.received
                || d.data_sn != r.next_data_sn
                || end > r.offset + r.len
                || (d.final_bit && end != r.offset + r.len)
            {
                return Err(RejectReason::ProtocolError);
            }
            r.received += len;
            r.next_data_sn = r.next_data_sn.wrapping_add(1);
            if r.received == r.len {
                let ttt = r.ttt;
                task.r2ts.retain(|r| r.ttt != ttt);
            }
        }
        if let Some(buf) = task.data_out.as_mut() {
            buf[d.buffer_offset as usize..end as usize].copy_from_slice(data);
        }
        task.received += len;
        Ok(())
    }

    // ---- Responses (§11.4, §11.7) ----

    /// Reports that task `id` finished. Sends its Data-In and status, unless it was aborted.
    /// Returns whether a response was queued.
    pub fn complete(&mut self, id: TaskId, resp: TaskResponse) -> bool {
        let Some(task) = self.remove_task(id) else {
            return false;
        };
        if task.aborted {
            return false;
        }
        let cmd = task.cmd;
        let edtl = cmd.expected_data_transfer_length;
        let residual = Residual::of(resp.wanted, edtl);
        let sendable = if cmd.read {
            resp.data.len().min(edtl as usize)
        } else {
            0
        };
        let good = resp.status == 0 && resp.sense.is_none();
        let data_sn = self.send_data_in(
            &cmd,
            resp.data,
            sendable,
            good.then_some(residual),
            resp.status,
        );
        if sendable > 0 && good {
            return true;
        }
        let sense = resp.sense.map(|s| {
            let mut v = Vec::with_capacity(2 + s.len());
            v.extend_from_slice(&(s.len() as u16).to_be_bytes());
            v.extend_from_slice(&s);
            v
        });
        let data_len = sense.as_ref().map_or(0, |v| v.len() as u32);
        let seq = self.status_seq();
        let bhs = target::scsi_response(cmd.itt, seq, resp.status, residual, data_sn, data_len);
        self.send(bhs, sense.map_or(OutData::None, OutData::Bytes));
        true
    }

    /// Queues Data-In PDUs for the first `len` bytes of `data`; the last carries status when
    /// `status_residual` is given. Returns the number of Data-In PDUs (the next ExpDataSN).
    fn send_data_in(
        &mut self,
        cmd: &ScsiCommand,
        data: DataInSource,
        len: usize,
        status_residual: Option<Residual>,
        status: u8,
    ) -> u32 {
        if len == 0 {
            return 0;
        }
        let shared = match data {
            DataInSource::None => return 0,
            DataInSource::Buffer(buf) => buf,
            DataInSource::Bytes(bytes) => {
                let mut buf = self.pool.take(bytes.len());
                buf.copy_from_slice(&bytes);
                Rc::new(buf)
            }
        };
        let max_seg = self.params.max_xmit_data_segment_length.max(512) as usize;
        let burst = self.params.max_burst_length.max(512) as usize;
        let mut offset = 0;
        let mut data_sn = 0u32;
        while offset < len {
            let in_burst = burst - offset % burst;
            let seg = (len - offset).min(max_seg).min(in_burst);
            let last = offset + seg == len;
            let status = if last {
                status_residual.map(|r| (status, r))
            } else {
                None
            };
            let d = DataIn {
                itt: cmd.itt,
                lun: cmd.lun,
                data_sn,
                buffer_offset: offset as u32,
                data_len: seg as u32,
                final_bit: last || seg == in_burst,
                status,
            };
            let seq = if status.is_some() {
                self.status_seq()
            } else {
                self.seq()
            };
            let bhs = target::data_in(d, seq);
            self.send(
                bhs,
                OutData::Shared {
                    buf: Rc::clone(&shared),
                    offset,
                    len: seg,
                },
            );
            offset += seg;
            data_sn += 1;
        }
        data_sn
    }

    // ---- NOP (§11.18, §11.19) ----

    fn on_nop_out(&mut self, nop: NopOut, bhs: &Bhs, data: &[u8]) {
        if nop.itt == RESERVED_TAG {
            if !nop.immediate {
                self.reject(RejectReason::ProtocolError, bhs);
                return;
            }
            if self.ping.is_some_and(|(ttt, _)| ttt == nop.ttt) {
                self.ping = None;
            }
            return;
        }
        // The echo must fit the initiator's MaxRecvDataSegmentLength (§13.12); a ping that
        // cannot be echoed is a protocol error, as LIO treats it.
        if nop.ttt != RESERVED_TAG || data.len() > self.params.max_xmit_data_segment_length as usize
        {
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        }
        let item = Ordered::Nop(nop, data.to_vec());
        // NOP-Out carries no task: no `now`-dependent work.
        self.admit(nop.cmd_sn, nop.immediate, item, self.last_rx);
    }

    fn answer_nop(&mut self, nop: NopOut, data: Vec<u8>) {
        let seq = self.status_seq();
        let bhs = target::nop_in(nop.itt, RESERVED_TAG, nop.lun, seq, data.len() as u32);
        let data = if data.is_empty() {
            OutData::None
        } else {
            OutData::Bytes(data)
        };
        self.send(bhs, data);
    }

    /// Timers: pings an idle initiator, and fails the connection when a ping goes unanswered.
    pub fn tick(&mut self, now: Instant) {
        if self.close.is_some() {
            return;
        }
        if let Some((_, sent)) = self.ping {
            if now.saturating_duration_since(sent) >= self.config.nop_timeout {
                self.close = Some(CloseReason::KeepaliveTimeout);
            }
            return;
        }
        if now.saturating_duration_since(self.last_rx) >= self.config.nop_interval {
            let ttt = self.alloc_ttt();
            let bhs = target::nop_in(RESERVED_TAG, ttt, 0, self.seq(), 0);
            self.send(bhs, OutData::None);
            self.ping = Some((ttt, now));
        }
    }

    // ---- Text (§11.10) ----

    /// Sends the answer to a full-feature Text Request.
    pub fn text_response(&mut self, r: crate::iscsi::discovery::TextResponse) {
        let seq = self.status_seq();
        let (itt, ttt, data) = (r.itt, r.ttt, r.data);
        let bhs = target::text_response(itt, ttt, r.final_bit, r.cont, seq, data.len() as u32);
        self.send(
            bhs,
            if data.is_empty() {
                OutData::None
            } else {
                OutData::Bytes(data)
            },
        );
    }

    /// Rejects a Text Request the exchange refused (`reason` from RFC 7143 §11.17.1). The
    /// rejected header is rebuilt from the request's fields.
    pub fn reject_text(&mut self, reason: u8, req: &crate::iscsi::discovery::TextRequest) {
        let mut bhs = Bhs::new(super::pdu::Opcode::TEXT_REQUEST);
        bhs.0[1] = if req.final_bit { 0x80 } else { 0 } | if req.cont { 0x40 } else { 0 };
        bhs.set_itt(req.itt);
        bhs.set_u32(20, req.ttt);
        let reason = if reason == RejectReason::InvalidPduField as u8 {
            RejectReason::InvalidPduField
        } else {
            RejectReason::ProtocolError
        };
        self.reject(reason, &bhs);
    }

    /// Applies renegotiated parameters (after the Text Response that agreed them was queued).
    pub fn set_params(&mut self, params: ConnParams) {
        self.params = params;
    }

    // ---- Logout (§11.14) ----

    fn on_logout(&mut self, req: LogoutRequest) {
        let response = match req.reason {
            0 => 0,
            1 if req.cid == self.cid => 0,
            1 => 1,
            _ => 2,
        };
        if response != 0 {
            let bhs = target::logout_response(req.itt, self.status_seq(), response, 0, 0);
            self.send(bhs, OutData::None);
            return;
        }
        self.logout = Some(req);
        // Tasks not yet executing will never get their data now: drop them.
        let idle: Vec<TaskId> = self
            .live_tasks()
            .filter(|(_, t)| t.state != TaskState::Executing)
            .map(|(id, _)| id)
            .collect();
        for id in idle {
            self.remove_task(id);
        }
        self.maybe_finish_logout();
    }

    fn maybe_finish_logout(&mut self) {
        let Some(req) = self.logout else { return };
        if self.close.is_some() || !self.by_itt.is_empty() {
            return;
        }
        let bhs = target::logout_response(req.itt, self.status_seq(), 0, 2, 20);
        self.send(bhs, OutData::None);
        self.close = Some(CloseReason::Logout);
    }

    // ---- Task management (§11.5, §11.6) ----

    fn live_tasks(&self) -> impl Iterator<Item = (TaskId, &Task)> {
        self.tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (TaskId(i), t)))
    }

    fn on_tmf(&mut self, tmf: TmfRequest) {
        match tmf.function {
            TmfFunction::AbortTask => self.abort_task(tmf),
            TmfFunction::AbortTaskSet => {
                let lun = tmf.lun;
                let ids = self.abort_matching(|t| t.cmd.lun == lun);
                self.respond_tmf_after(tmf.itt, ids);
            }
            TmfFunction::ClearTaskSet
            | TmfFunction::LogicalUnitReset
            | TmfFunction::TargetWarmReset
            | TmfFunction::TargetColdReset => self.actions.push_back(Action::Reset {
                itt: tmf.itt,
                function: tmf.function,
                lun: tmf.lun,
            }),
            TmfFunction::TaskReassign => {
                self.tmf_done(tmf.itt, TmfResponse::ReassignmentNotSupported)
            }
            TmfFunction::ClearAca | TmfFunction::Unknown(_) => {
                self.tmf_done(tmf.itt, TmfResponse::NotSupported)
            }
        }
    }

    fn abort_task(&mut self, tmf: TmfRequest) {
        let rtt = tmf.referenced_task_tag;
        match self.by_itt.get(&rtt).copied() {
            Some(id) if self.task(id).is_some_and(|t| t.cmd.lun == tmf.lun) => {
                let ids = self.abort_matching(|t| t.cmd.itt == rtt);
                self.respond_tmf_after(tmf.itt, ids);
            }
            _ => {
                // §11.5.1: a task the target never saw, whose RefCmdSN is inside the window,
                // counts as received and aborted; anything else does not exist.
                let in_window = serial::in_window(
                    tmf.ref_cmd_sn,
                    self.window.exp_cmd_sn(),
                    self.window.max_cmd_sn(),
                ) && serial::lt(tmf.ref_cmd_sn, tmf.cmd_sn);
                if in_window {
                    self.tmf_done(tmf.itt, TmfResponse::FunctionComplete);
                    // "Consider the CmdSN as received": fill the hole so the commands held
                    // behind it run.
                    let now = self.last_rx;
                    self.admit(tmf.ref_cmd_sn, false, Ordered::Void, now);
                } else {
                    self.tmf_done(tmf.itt, TmfResponse::TaskDoesNotExist);
                }
            }
        }
    }

    /// Aborts every live task matching `pred`. Tasks not yet executing are dropped at once;
    /// executing ones are marked and their ids returned (their I/O is still in flight).
    pub fn abort_matching(&mut self, pred: impl Fn(&Task) -> bool) -> Vec<TaskId> {
        let matching: Vec<TaskId> = self
            .live_tasks()
            .filter(|(_, t)| pred(t))
            .map(|(id, _)| id)
            .collect();
        let held: Vec<TaskId> = matching.clone();
        let _ = self
            .window
            .remove_held(|o| matches!(o, Ordered::Task(id) if held.contains(id)));
        let mut in_flight = Vec::new();
        for id in matching {
            let executing = self
                .task(id)
                .is_some_and(|t| t.state == TaskState::Executing);
            if executing {
                if let Some(t) = self.task_mut(id) {
                    t.aborted = true;
                }
                self.aborted = true;
                in_flight.push(id);
            } else {
                if let Some(itt) = self.task(id).map(|t| t.cmd.itt) {
                    if self.aborted_itts.len() == ABORTED_ITTS_KEPT {
                        self.aborted_itts.pop_front();
                    }
                    self.aborted_itts.push_back(itt);
                }
                self.remove_task(id);
            }
        }
        in_flight
    }

    /// Aborts every task addressed to `lun` (LU reset, clear task set from any session).
    pub fn abort_lun(&mut self, lun: u64) -> Vec<TaskId> {
        self.abort_matching(|t| t.cmd.lun == lun)
    }

    /// Aborts every task (target reset).
    pub fn abort_all(&mut self) -> Vec<TaskId> {
        self.abort_matching(|_| true)
    }

    fn respond_tmf_after(&mut self, itt: u32, waiting_for: Vec<TaskId>) {
        if waiting_for.is_empty() {
            self.tmf_done(itt, TmfResponse::FunctionComplete);
        } else {
            self.pending_tmfs.push(PendingTmf { itt, waiting_for });
        }
    }

    fn settle_tmfs(&mut self, gone: TaskId) {
        if self.pending_tmfs.is_empty() {
            return;
        }
        for p in &mut self.pending_tmfs {
            p.waiting_for.retain(|&id| id != gone);
        }
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_tmfs)
            .into_iter()
            .partition(|p| p.waiting_for.is_empty());
        self.pending_tmfs = pending;
        for p in done {
            self.tmf_done(p.itt, TmfResponse::FunctionComplete);
        }
    }

    /// Sends a task management response.
    pub fn tmf_done(&mut self, itt: u32, response: TmfResponse) {
        let bhs = target::tmf_response(itt, self.status_seq(), response);
        self.send(bhs, OutData::None);
    }

    /// Answers a TMF the runtime performed, once `in_flight` (tasks of this connection it
    /// aborted) have completed. Closes the connection after a target cold reset.
    pub fn reset_done(&mut self, itt: u32, function: TmfFunction, in_flight: Vec<TaskId>) {
        self.respond_tmf_after(itt, in_flight);
        if function == TmfFunction::TargetColdReset {
            self.close = Some(CloseReason::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::pdu::Opcode;

    fn command(itt: u32, cmd_sn: u32, edtl: u32, read: bool) -> Bhs {
        let mut bhs = Bhs::new(Opcode::SCSI_COMMAND);
        bhs.0[1] = 0x80 | if read { 0x40 } else { 0x20 } | 1;
        bhs.set_itt(itt);
        bhs.set_u32(20, edtl);
        bhs.set_u32(24, cmd_sn);
        bhs.0[32] = if read { 0x28 } else { 0x2a };
        bhs
    }

    fn executed(c: &mut Connection) -> TaskId {
        match c.poll_action() {
            Some(Action::Execute(id)) => id,
            other => panic!("expected an Execute, got {other:?}"),
        }
    }

    fn abort_task(itt: u32, rtt: u32, cmd_sn: u32) -> Bhs {
        let mut bhs = Bhs::new(Opcode::TASK_MGMT_REQUEST);
        bhs.0[0] |= 0x40; // immediate
        bhs.0[1] = 0x80 | 1; // ABORT TASK
        bhs.set_itt(itt);
        bhs.set_u32(20, rtt);
        bhs.set_u32(24, cmd_sn);
        bhs.set_u32(32, cmd_sn - 1);
        bhs
    }

    /// The runtime learns that an executing task was aborted (it may hold that task back
    /// itself, under a QoS limit, and must end it), once per abort.
    #[test]
    fn aborting_an_executing_task_is_reported_once() {
        let t0 = Instant::now();
        let mut c = Connection::new(
            ConnParams::default(),
            ConnConfig::default(),
            0,
            1,
            1,
            BufPool::new(),
            t0,
        );
        c.on_pdu(&command(1, 1, 512, true), &[], t0);
        c.on_pdu(&command(2, 2, 512, true), &[], t0);
        let (_first, second) = (executed(&mut c), executed(&mut c));
        assert!(!c.take_aborted());
        // ABORT TASK of a task the target never saw: nothing to end.
        c.on_pdu(&abort_task(10, 99, 3), &[], t0);
        assert!(!c.take_aborted());
        c.on_pdu(&abort_task(11, 2, 3), &[], t0);
        assert!(c.take_aborted());
        assert!(!c.take_aborted(), "reported once");
        assert!(c.task(second).is_some_and(Task::aborted));
        // Ending it unrun answers the TMF.
        assert!(!c.complete(second, TaskResponse::nothing()));
        let answers: Vec<u8> = std::iter::from_fn(|| c.poll_transmit())
            .map(|p| p.bhs.opcode().0)
            .collect();
        assert!(answers.contains(&0x22), "a TMF response: {answers:x?}");
    }

    /// The stamps latency statistics read: arrival of the command, readiness (data complete),
    /// and the outbox counts that tell when a response is on the wire.
    #[test]
    fn task_stamps_and_outbox_counts() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_micros(70);
        let params = ConnParams {
            immediate_data: false,
            ..ConnParams::default()
        };
        let mut c = Connection::new(params, ConnConfig::default(), 0, 1, 1, BufPool::new(), t0);

        // A read is ready when it arrives.
        c.on_pdu(&command(1, 1, 512, true), &[], t0);
        let id = executed(&mut c);
        let task = c.task(id).unwrap();
        assert_eq!((task.arrived_at, task.ready_at), (t0, Some(t0)));
        let resp = TaskResponse {
            status: 0,
            sense: None,
            data: DataInSource::Bytes(vec![7; 512]),
            wanted: 512,
        };
        assert!(c.complete(id, resp));
        assert_eq!((c.pdus_queued(), c.pdus_taken()), (1, 0));
        assert!(c.poll_transmit().is_some());
        assert_eq!(c.pdus_taken(), 1);

        // A write waits for its R2T-solicited Data-Out: ready when the last one arrives.
        c.on_pdu(&command(2, 2, 1024, false), &[], t0);
        assert!(c.poll_action().is_none());
        let r2t = c.poll_transmit().expect("R2T");
        assert_eq!(c.pdus_queued(), 2);
        let mut d = Bhs::new(Opcode::SCSI_DATA_OUT);
        d.0[1] = 0x80;
        d.set_itt(2);
        d.set_u32(20, r2t.bhs.u32_at(20));
        d.set_data_segment_len(1024);
        c.on_pdu(&d, &[1; 1024], t1);
        let id = executed(&mut c);
        let task = c.task(id).unwrap();
        assert_eq!((task.arrived_at, task.ready_at), (t0, Some(t1)));

        // An aborted task gets no response: nothing to record.
        c.abort_all();
        let resp = TaskResponse {
            status: 0,
            sense: None,
            data: DataInSource::None,
            wanted: 1024,
        };
        assert!(!c.complete(id, resp));
        assert_eq!(c.pdus_queued(), 2);
    }
}
