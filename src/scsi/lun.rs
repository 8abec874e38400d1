//! A logical unit: its static description ([`LunInfo`]), its mutable SCSI state (mode
//! parameters, per-I_T-nexus unit attention queues) and the command entry points
//! [`LogicalUnit::execute`] / [`LogicalUnit::complete`].
//!
//! Implements:
//! - command dispatch after [`cdb::parse`] to the SPC-4 ([`spc`]) and SBC-3 ([`sbc`]) handlers;
//! - unit attention conditions (SAM-5 5.14, SPC-4 5.12 with UA_INTLCK_CTRL=00b): a pending unit
//!   attention is reported, and cleared, in place of any command except INQUIRY, REPORT LUNS and
//!   REQUEST SENSE; REQUEST SENSE returns and clears it; REPORT LUNS clears REPORTED LUNS DATA
//!   HAS CHANGED (SPC-4 6.33, LUICLR);
//! - the unit attentions raised by events: a new I_T nexus (POWER ON, RESET...), LOGICAL UNIT
//!   RESET and TARGET RESET (SAM-5 7.5, 7.10), MODE SELECT from another nexus (MODE PARAMETERS
//!   CHANGED), a capacity change (CAPACITY DATA HAS CHANGED, SBC-3 4.6), commands aborted by
//!   another nexus (COMMANDS CLEARED BY ANOTHER INITIATOR, TAS=0), the thin pool passing its
//!   soft threshold (THIN PROVISIONING SOFT THRESHOLD REACHED, once per nexus);
//! - the answers for a LUN with no logical unit behind it (SPC-4 6.6.2, PERIPHERAL QUALIFIER
//!   011b; SPC-4 6.33 for REPORT LUNS), [`lun_not_supported`];
//! - single-level LUN encoding (SAM-5 4.7.3, peripheral and flat addressing): [`encode_lun`],
//!   [`decode_lun`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::cdb::{self, Command, ModeSelect};
use super::pr::{self, Access, PrError, PrRecord, PrState, PrType};
use super::sense::Sense;
use super::spc::ModeState;
use super::xcopy::{self, CopyResults, CopyState};
use super::{Completion, IoResult, NexusId, Outcome, sbc, spc};

/// The static description of a logical unit, from the volume catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    /// The LUN number (0..=16383 for single-level addressing).
    pub lun: u64,
    /// The volume's name in the catalog.
    pub volume_name: String,
    /// The iSCSI name (IQN) of the target the LU belongs to.
    pub target_name: String,
    /// RELATIVE TARGET PORT IDENTIFIER of the port the LU is reached through (1 for the first).
    pub relative_port_id: u16,
    /// Logical block size in bytes: 512 or 4096.
    pub block_size: u32,
    /// Physical block size in bytes (a power-of-two multiple of `block_size`, else treated as
    /// equal to it).
    pub physical_block_size: u32,
    /// Capacity in logical blocks.
    pub num_blocks: u64,
    /// NAA IEEE Registered Extended designator (16 bytes, first nibble 6).
    pub naa: [u8; 16],
    /// Unit serial number (printable ASCII).
    pub serial: String,
    /// Write protected: writes fail with DATA PROTECT, MODE SENSE reports WP.
    pub read_only: bool,
    /// Thin provisioned (LBPME / LBPRZ, provisioning type thin): UNMAP, GET LBA STATUS and
    /// WRITE SAME with UNMAP are implemented only then.
    pub thin: bool,
    /// Size in bytes of the thin pool's allocation unit (extent), reported as the OPTIMAL UNMAP
    /// GRANULARITY of the Block Limits VPD page; 0 when not thin (or unknown: no granularity
    /// reported).
    pub extent_size: u32,
    /// Initial (and default) value of the caching mode page's WCE.
    pub write_cache: bool,
    /// MAXIMUM TRANSFER LENGTH in blocks (Block Limits VPD); 0 = no limit.
    pub max_transfer_blocks: u32,
    /// MAXIMUM ATOMIC TRANSFER LENGTH in blocks (Block Limits VPD): the longest WRITE ATOMIC
    /// (16); 0 when the backend cannot write atomically (the command is then not implemented).
    pub max_atomic_blocks: u32,
}

impl Default for LunInfo {
    /// LUN 0, 512-byte blocks, empty, writable, fully provisioned, write cache enabled, at most
    /// 8 MiB per transfer. The naming fields are placeholders the catalog overwrites.
    fn default() -> Self {
        LunInfo {
            lun: 0,
            volume_name: String::new(),
            target_name: String::new(),
            relative_port_id: 1,
            block_size: 512,
            physical_block_size: 512,
            num_blocks: 0,
            naa: [0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            serial: String::new(),
            read_only: false,
            thin: false,
            extent_size: 0,
            write_cache: true,
            max_transfer_blocks: 16384,
            max_atomic_blocks: 0,
        }
    }
}

impl LunInfo {
    /// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY (16)): log2 of physical / logical
    /// block size, 0 when that ratio is not a power of two greater than one.
    pub fn logical_per_physical_exponent(&self) -> u8 {
        let ratio = self.logical_per_physical();
        if ratio.is_power_of_two() {
            ratio.trailing_zeros() as u8
        } else {
            0
        }
    }

    /// Logical blocks per physical block (at least 1).
    pub fn logical_per_physical(&self) -> u32 {
        if self.block_size == 0 || self.physical_block_size % self.block_size != 0 {
            return 1;
        }
        (self.physical_block_size / self.block_size).max(1)
    }
}

/// At most this many unit attentions are queued per nexus; further ones are dropped (the oldest
/// are the ones SAM-5 wants reported first).
const MAX_PENDING_UA: usize = 16;

/// A logical unit: [`LunInfo`] plus the state SCSI commands change.
#[derive(Debug, Clone)]
pub struct LogicalUnit {
    /// The static description.
    info: LunInfo,
    /// Current mode parameters.
    mode: ModeState,
    /// Default mode parameters (from `info.write_cache`).
    default_mode: ModeState,
    /// Pending unit attentions of each known I_T nexus, oldest first.
    nexuses: BTreeMap<NexusId, VecDeque<Sense>>,
    /// The nexuses that were given THIN PROVISIONING SOFT THRESHOLD REACHED since the last
    /// [`reset_soft_threshold`](Self::reset_soft_threshold).
    soft_threshold_told: BTreeSet<NexusId>,
    /// The I_T nexus holding a RESERVE (6) reservation of the whole logical unit. Released by
    /// RELEASE (6) from it, its logout or connection loss, and LOGICAL UNIT / TARGET RESET.
    reserved_by: Option<NexusId>,
    /// EXTENDED COPY results held for RECEIVE COPY RESULTS.
    copy_results: CopyResults,
    /// Persistent reservations (registrations survive the nexus's logout: they belong to the
    /// initiator port, which the session registry keeps the same id for).
    pr: PrState,
    /// Initiator port names of the nexuses (connected or registered), for READ FULL STATUS.
    port_names: BTreeMap<NexusId, String>,
    /// What the shard must store of the persistent reservations before answering the command
    /// that changed them (APTPL), if anything.
    pr_persist: Option<PrPersist>,
    /// The nexuses a PREEMPT AND ABORT just preempted, whose tasks on this LU the shard aborts.
    preempted: Vec<NexusId>,
    /// Where the logical unit stands with SANITIZE.
    sanitize: SanitizeState,
    /// What the shard must store of the sanitize state before answering the command that
    /// changed it (or, for an erase ending, before the LU is used again), if anything.
    sanitize_persist: Option<SanitizeState>,
    /// Write protected by the administrator (`info.read_only` is that or the control page's
    /// SWP, set by an initiator).
    base_read_only: bool,
}

/// Where a logical unit stands with SANITIZE (SBC-4 4.11). Kept across a restart
/// (`storage::records`, as `{"state": "running", ...}`): an erase in progress resumes, a failure
/// mode stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SanitizeState {
    /// No sanitize operation in progress, none failed.
    #[default]
    Idle,
    /// A sanitize operation is in progress, `done` of 65536 of it: every command but INQUIRY,
    /// REPORT LUNS, REQUEST SENSE (which reports the progress) and MAINTENANCE IN (REPORT
    /// TARGET PORT GROUPS and REPORT SUPPORTED OPERATION CODES, which multipath initiators and
    /// the sanitizing one ask) is NOT READY, SANITIZE IN PROGRESS.
    Running {
        /// Progress, in 65536ths (not kept across a restart: the erase resumes from the start,
        /// and finds nothing left where it had been).
        #[serde(default, skip_serializing)]
        done: u16,
        /// AUSE of the command: if it fails, EXIT FAILURE MODE may end the failure mode.
        ause: bool,
    },
    /// The last sanitize operation failed: the medium is in the sanitize failure mode, where
    /// commands that access it fail with SANITIZE COMMAND FAILED until a SANITIZE succeeds,
    /// or EXIT FAILURE MODE when the failed one had AUSE set.
    Failed {
        /// AUSE of the failed command.
        ause: bool,
    },
}

/// The persistent reservations and pending unit attentions of a logical unit, as
/// [`LogicalUnit::reservation_state`] copied them.
#[derive(Debug, Clone)]
pub struct ReservationState {
    pr: PrState,
    unit_attentions: BTreeMap<NexusId, VecDeque<Sense>>,
}

/// A change of the persistent reservations to store (APTPL; see [`LogicalUnit::take_pr_persist`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrPersist {
    /// APTPL is active: keep this state across a restart.
    Save(PrRecord),
    /// APTPL was turned off: keep nothing.
    Remove,
}

impl LogicalUnit {
    /// A logical unit with its mode parameters at their defaults and no I_T nexus.
    pub fn new(info: LunInfo) -> Self {
        let default_mode = ModeState {
            wce: info.write_cache,
            swp: false,
        };
        let base_read_only = info.read_only;
        LogicalUnit {
            info,
            mode: default_mode,
            default_mode,
            nexuses: BTreeMap::new(),
            soft_threshold_told: BTreeSet::new(),
            reserved_by: None,
            copy_results: CopyResults::default(),
            pr: PrState::default(),
            port_names: BTreeMap::new(),
            pr_persist: None,
            preempted: Vec::new(),
            sanitize: SanitizeState::Idle,
            sanitize_persist: None,
            base_read_only,
        }
    }

    /// The same, with persistent reservations restored from a record kept across a restart
    /// (see [`PrState::from_record`]): the state and the names of its registered nexuses.
    pub fn with_reservations(mut self, pr: PrState, ports: BTreeMap<NexusId, String>) -> Self {
        self.pr = pr;
        self.port_names.extend(ports);
        self
    }

    /// The same, with the sanitize state kept across a restart: an erase in progress (which
    /// the shard resumes from the start) or the failure mode.
    pub fn with_sanitize(mut self, state: SanitizeState) -> Self {
        self.sanitize = match state {
            SanitizeState::Running { ause, .. } => SanitizeState::Running { done: 0, ause },
            other => other,
        };
        self
    }

    /// What must be stored of the sanitize state: a command (SANITIZE, EXIT FAILURE MODE)
    /// changed it, before its status goes out; or an erase ended, before the LU is used again.
    /// Progress alone is never a change.
    pub fn take_sanitize_persist(&mut self) -> Option<SanitizeState> {
        self.sanitize_persist.take()
    }

    /// Puts back the sanitize state from before a change that could not be stored.
    pub fn restore_sanitize(&mut self, state: SanitizeState) {
        self.sanitize = state;
        self.sanitize_persist = None;
    }

    /// Moves to sanitize state `state`, noting it to be stored.
    fn set_sanitize(&mut self, state: SanitizeState) {
        self.sanitize = state;
        self.sanitize_persist = Some(state);
    }

    /// What must be stored of the persistent reservations changed by the last command (or by
    /// [`clear_reservations`](Self::clear_reservations)) before its status goes out.
    pub fn take_pr_persist(&mut self) -> Option<PrPersist> {
        self.pr_persist.take()
    }

    /// The nexuses the last command preempted with PREEMPT AND ABORT: the shard aborts their
    /// tasks on this LU (TAS=0: without status) once the command succeeded.
    pub fn take_preempted_nexuses(&mut self) -> Vec<NexusId> {
        std::mem::take(&mut self.preempted)
    }

    /// Notes the persistent reservations changed: kept while APTPL is active, dropped when a
    /// REGISTER turned it off.
    fn pr_changed(&mut self, was_aptpl: bool) {
        self.pr_persist = if self.pr.aptpl() {
            Some(PrPersist::Save(self.pr.to_record(&self.port_names)))
        } else if was_aptpl {
            Some(PrPersist::Remove)
        } else {
            None
        };
    }

    /// The static description.
    pub fn info(&self) -> &LunInfo {
        &self.info
    }

    /// Whether write-back caching is enabled (caching mode page WCE). When it is not, every
    /// write request this LU returns has `fua` set.
    pub fn write_cache_enabled(&self) -> bool {
        self.mode.wce
    }

    /// The administrator turns the write cache on or off: the current and default caching page
    /// change, and every nexus is told MODE PARAMETERS CHANGED (when it changed).
    pub fn set_write_cache(&mut self, on: bool) {
        let changed = self.mode.wce != on;
        self.mode.wce = on;
        self.default_mode.wce = on;
        self.info.write_cache = on;
        if changed {
            self.queue_unit_attention_all(Sense::mode_parameters_changed(), None);
        }
    }

    /// The administrator write-protects the logical unit (or lifts it): writes, WRITE SAME,
    /// UNMAP, COMPARE AND WRITE and EXTENDED COPY get DATA PROTECT / WRITE PROTECTED, MODE SENSE
    /// reports WP, and every nexus is told MODE PARAMETERS CHANGED (when it changed).
    pub fn set_read_only(&mut self, on: bool) {
        self.base_read_only = on;
        let changed = self.apply_write_protection();
        if changed {
            self.queue_unit_attention_all(Sense::mode_parameters_changed(), None);
        }
    }

    /// Sets the write protection from the administrator's and SWP; whether it changed.
    fn apply_write_protection(&mut self) -> bool {
        let on = self.base_read_only || self.mode.swp;
        let changed = self.info.read_only != on;
        self.info.read_only = on;
        changed
    }

    /// The administrator makes the volume thin provisioned or full: LBPME (READ CAPACITY (16)),
    /// the Logical Block Provisioning page and UNMAP / GET LBA STATUS follow, and every nexus
    /// is told INQUIRY DATA HAS CHANGED (when it changed).
    pub fn set_thin(&mut self, on: bool) {
        let changed = self.info.thin != on;
        self.info.thin = on;
        if changed {
            self.queue_unit_attention_all(Sense::inquiry_data_changed(), None);
        }
    }

    // ---- I_T nexuses and unit attentions ----

    /// Registers a new I_T nexus and queues POWER ON, RESET, OR BUS DEVICE RESET OCCURRED for it.
    /// Registering a nexus again replaces its queue (and it will be told of a reached soft
    /// threshold again).
    pub fn add_nexus(&mut self, n: NexusId) {
        self.nexuses
            .insert(n, VecDeque::from([Sense::power_on_reset()]));
        self.soft_threshold_told.remove(&n);
    }

    /// The administrator clears every reservation of the LU (persistent ones, their
    /// registrations, and a RESERVE (6) one); registrants get RESERVATIONS PREEMPTED.
    pub fn clear_reservations(&mut self) {
        let was_aptpl = self.pr.aptpl();
        for (n, ua) in self.pr.admin_clear() {
            self.queue_unit_attention(n, ua);
        }
        self.reserved_by = None;
        self.pr_changed(was_aptpl);
    }

    /// The LU's reservations, initiator ports named (for the admin API).
    pub fn reservations(&self) -> Reservations {
        let port = |n: &NexusId| {
            self.port_names
                .get(n)
                .cloned()
                .unwrap_or_else(|| format!("nexus {}", n.0))
        };
        let report = self.pr.report();
        Reservations {
            generation: report.generation,
            registrations: report
                .registrations
                .iter()
                .map(|(n, k)| (port(n), *k))
                .collect(),
            reservation: report
                .reservation
                .map(|(holder, t)| (holder.as_ref().map(port), t.name())),
            scsi2_holder: self.reserved_by.as_ref().map(port),
        }
    }

    /// A copy of the persistent reservations and of the pending unit attentions (to put back
    /// with [`restore_reservation_state`](Self::restore_reservation_state)).
    pub fn reservation_state(&self) -> ReservationState {
        ReservationState {
            pr: self.pr.clone(),
            unit_attentions: self.nexuses.clone(),
        }
    }

    /// Puts back persistent reservations copied before a PERSISTENT RESERVE OUT whose change
    /// could not be stored (APTPL): the command fails, so it changed nothing, and the unit
    /// attentions it queued for others (RESERVATIONS PREEMPTED...) go too.
    pub fn restore_reservation_state(&mut self, state: ReservationState) {
        self.pr = state.pr;
        self.nexuses = state.unit_attentions;
        self.pr_persist = None;
        self.preempted.clear();
    }

    /// Whether nexus `n` holds a persistent reservation registration.
    pub fn is_registered(&self, n: NexusId) -> bool {
        self.pr.is_registered(n)
    }

    /// Names nexus `n` by its initiator port (`NAME,i,0xISID`), which READ FULL STATUS reports.
    pub fn name_nexus(&mut self, n: NexusId, port: String) {
        self.port_names.insert(n, port);
    }

    /// Forgets an I_T nexus (logout, connection loss) and its pending unit attentions.
    pub fn remove_nexus(&mut self, n: NexusId) {
        self.nexuses.remove(&n);
        if !self.pr.is_registered(n) {
            self.port_names.remove(&n);
        }
        self.soft_threshold_told.remove(&n);
        if self.reserved_by == Some(n) {
            self.reserved_by = None;
        }
    }

    /// Queues a unit attention for one nexus (ignored for an unknown nexus or a condition that
    /// is already pending).
    pub fn queue_unit_attention(&mut self, n: NexusId, ua: Sense) {
        if let Some(queue) = self.nexuses.get_mut(&n) {
            push_ua(queue, ua);
        }
    }

    /// Queues a unit attention for every nexus except `except`.
    pub fn queue_unit_attention_all(&mut self, ua: Sense, except: Option<NexusId>) {
        for (n, queue) in self.nexuses.iter_mut() {
            if Some(*n) != except {
                push_ua(queue, ua);
            }
        }
    }

    /// Whether a unit attention is pending for `n`.
    pub fn has_unit_attention(&self, n: NexusId) -> bool {
        self.nexuses.get(&n).is_some_and(|q| !q.is_empty())
    }

    /// Dequeues the oldest pending unit attention of `n`.
    fn pop_unit_attention(&mut self, n: NexusId) -> Option<Sense> {
        self.nexuses.get_mut(&n).and_then(VecDeque::pop_front)
    }

    /// Removes a pending condition from `n`'s queue.
    fn clear_unit_attention(&mut self, n: NexusId, ua: Sense) {
        if let Some(queue) = self.nexuses.get_mut(&n) {
            queue.retain(|s| *s != ua);
        }
    }

    /// LOGICAL UNIT RESET: queues BUS DEVICE RESET FUNCTION OCCURRED for every nexus, the one
    /// that sent the reset (`_from`) included, as SAM-5 requires (libiscsi's MultipathIO.Reset
    /// checks every path). Mode parameters are kept. Aborting the tasks is the caller's job.
    pub fn lun_reset(&mut self, _from: NexusId) {
        self.queue_unit_attention_all(Sense::bus_device_reset(), None);
        self.reserved_by = None;
    }

    /// TARGET WARM/COLD RESET: queues POWER ON, RESET, OR BUS DEVICE RESET OCCURRED for every
    /// nexus, the sender's included.
    pub fn target_reset(&mut self, _from: NexusId) {
        self.queue_unit_attention_all(Sense::target_reset(), None);
        self.reserved_by = None;
    }

    /// Tasks of `n` were aborted by a task management function from another nexus (TAS=0 in the
    /// Control mode page, so they end without status): queues COMMANDS CLEARED BY ANOTHER
    /// INITIATOR for `n`.
    pub fn commands_cleared(&mut self, n: NexusId) {
        self.queue_unit_attention(n, Sense::commands_cleared_by_another_initiator());
    }

    /// The thin pool's used space passed its soft threshold: queues THIN
    /// PROVISIONING SOFT THRESHOLD REACHED (06/38/07) for every known nexus that was not given it
    /// since the last [`reset_soft_threshold`](Self::reset_soft_threshold). Cheap to call on every
    /// allocation above the threshold: each nexus gets the condition once (a nexus that logs in
    /// later gets it at the next call).
    pub fn soft_threshold_reached(&mut self) {
        let ua = Sense::soft_threshold_reached();
        for (n, queue) in self.nexuses.iter_mut() {
            if self.soft_threshold_told.insert(*n) {
                push_ua(queue, ua);
            }
        }
    }

    /// The pool went back below its soft threshold: the next
    /// [`soft_threshold_reached`](Self::soft_threshold_reached) tells every nexus again.
    /// Conditions already queued stay queued.
    pub fn reset_soft_threshold(&mut self) {
        self.soft_threshold_told.clear();
    }

    /// Resizes the logical unit and queues CAPACITY DATA HAS CHANGED for every nexus.
    pub fn set_capacity(&mut self, num_blocks: u64) {
        self.info.num_blocks = num_blocks;
        self.queue_unit_attention_all(Sense::capacity_data_changed(), None);
    }

    // ---- commands ----

    /// Executes a CDB from nexus `n` with the Data-Out gathered for it (empty for commands
    /// without one; see [`cdb::data_out_length`]). An unknown nexus has no unit attention.
    pub fn execute(&mut self, n: NexusId, cdb: &[u8], data_out: &[u8]) -> Outcome {
        let ua = if reports_no_unit_attention(cdb) {
            None
        } else {
            self.pop_unit_attention(n)
        };
        if let Some(ua) = ua {
            return Outcome::Done(Completion::check(ua));
        }
        if self.sanitize != SanitizeState::Idle
            && let Some(refusal) = self.sanitize_refusal(cdb)
        {
            return Outcome::Done(Completion::check(refusal));
        }
        match cdb::parse(cdb) {
            Ok(cmd) if self.conflicts(n, &cmd) => Outcome::Done(Completion::reservation_conflict()),
            Ok(cmd) => self.dispatch(n, &cmd, data_out),
            Err(sense) => Outcome::Done(Completion::check(sense)),
        }
    }

    /// What a sanitize operation in progress, or its failure mode, answers `cdb` with instead of
    /// running it (SBC-4 4.11.4): NOT READY, SANITIZE IN PROGRESS for every command but INQUIRY,
    /// REPORT LUNS, REQUEST SENSE and MAINTENANCE IN (REPORT TARGET PORT GROUPS and REPORT
    /// SUPPORTED OPERATION CODES, which multipath initiators and the sanitizing one ask);
    /// SANITIZE COMMAND FAILED for the commands that read or change the logical blocks.
    fn sanitize_refusal(&self, cdb: &[u8]) -> Option<Sense> {
        match self.sanitize {
            SanitizeState::Idle => None,
            SanitizeState::Running { done, .. } => {
                let allowed = reports_no_unit_attention(cdb)
                    || cdb.first() == Some(&cdb::opcode::MAINTENANCE_IN);
                (!allowed).then_some(Sense::sanitize_in_progress(done))
            }
            // Only a new SANITIZE may get the medium out of the failure mode.
            SanitizeState::Failed { .. } => cdb::parse(cdb)
                .is_ok_and(|cmd| class_of(&cmd).1 && !matches!(cmd, Command::Sanitize { .. }))
                .then_some(Sense::sanitize_failed()),
        }
    }

    /// Where the logical unit stands with SANITIZE.
    pub fn sanitize_state(&self) -> SanitizeState {
        self.sanitize
    }

    /// Records how much of the sanitize operation in progress is done (`done` of 65536); no
    /// effect when none is.
    pub fn set_sanitize_progress(&mut self, done: u16) {
        if let SanitizeState::Running { ause, .. } = self.sanitize {
            self.sanitize = SanitizeState::Running { done, ause };
        }
    }

    /// Ends the sanitize operation in progress (an `Outcome::Sanitize` that
    /// [`execute`](Self::execute) returned): back to normal when it succeeded, else into the
    /// sanitize failure mode. Returns the completion for the command, if it is still owed one
    /// (IMMED=0).
    pub fn sanitize_ended(&mut self, ok: bool) -> Completion {
        let SanitizeState::Running { ause, .. } = self.sanitize else {
            return Completion::good(Vec::new()); // none in progress
        };
        if ok {
            self.set_sanitize(SanitizeState::Idle);
            Completion::good(Vec::new())
        } else {
            self.set_sanitize(SanitizeState::Failed { ause });
            Completion::check(Sense::sanitize_failed())
        }
    }

    /// SANITIZE: EXIT FAILURE MODE is answered here; BLOCK ERASE of a writable thin LU starts
    /// the sanitize state and is handed to the runtime.
    fn sanitize(&mut self, action: u16, immed: bool, ause: bool) -> Outcome {
        let done = if action == cdb::SA_SANITIZE_EXIT_FAILURE_MODE {
            if self.sanitize == (SanitizeState::Failed { ause: false }) {
                // SBC-4 5.30.1: the failed SANITIZE did not allow it.
                Completion::check(Sense::invalid_field_in_cdb(1, Some(4)))
            } else {
                if self.sanitize != SanitizeState::Idle {
                    self.set_sanitize(SanitizeState::Idle);
                }
                Completion::good(Vec::new())
            }
        } else if !self.info.thin {
            // BLOCK ERASE leaves the blocks deallocated: thin LUs only (not reported otherwise).
            Completion::check(Sense::invalid_field_in_cdb(1, Some(4)))
        } else if self.info.read_only {
            Completion::check(Sense::write_protected())
        } else {
            self.set_sanitize(SanitizeState::Running { done: 0, ause });
            return Outcome::Sanitize { immed };
        };
        Outcome::Done(done)
    }

    /// Whether a reservation forbids nexus `n` to read the medium (or, with `write`, to change
    /// it): what EXTENDED COPY received by another logical unit asks of this one on behalf of
    /// the same initiator.
    pub fn forbids(&self, n: NexusId, write: bool) -> bool {
        let io = cdb::BlockIo {
            lba: 0,
            blocks: 0,
            dpo: false,
            fua: false,
            length_field: 0,
        };
        let cmd = if write {
            Command::Write(io)
        } else {
            Command::Read(io)
        };
        self.conflicts(n, &cmd)
    }

    /// Whether another nexus's RESERVE (6) reservation forbids `cmd` from `n`: everything does
    /// but INQUIRY, REQUEST SENSE, REPORT LUNS and RELEASE (a no-op for a non-holder), as SPC-2
    /// 5.5.1 and other targets do.
    fn conflicts(&self, n: NexusId, cmd: &Command) -> bool {
        let allowed = matches!(
            cmd,
            Command::Inquiry { .. }
                | Command::RequestSense { .. }
                | Command::ReportLuns { .. }
                | Command::Release6
        );
        if !allowed && self.reserved_by.is_some_and(|holder| holder != n) {
            return true;
        }
        // RESERVE / RELEASE (6) while persistent reservations are in use (SPC-4 5.9.1).
        if matches!(cmd, Command::Reserve6 | Command::Release6) && self.pr.active() {
            return true;
        }
        self.pr.conflicts(n, class_of(cmd).0)
    }

    /// PERSISTENT RESERVE IN.
    fn persistent_reserve_in(&self, action: u8, alloc_len: u32) -> Completion {
        let mut data = match action {
            pr::action::READ_KEYS => self.pr.read_keys(),
            pr::action::READ_RESERVATION => self.pr.read_reservation(),
            pr::action::REPORT_CAPABILITIES => self.pr.report_capabilities(),
            pr::action::READ_FULL_STATUS => self.pr.read_full_status(&self.port_names),
            _ => return Completion::check(Sense::invalid_field_in_cdb(1, Some(4))),
        };
        data.truncate(alloc_len as usize);
        Completion::good(data)
    }

    /// PERSISTENT RESERVE OUT: the service action, then the unit attentions it causes.
    fn persistent_reserve_out(
        &mut self,
        n: NexusId,
        action: u8,
        scope_type: u8,
        param_len: u32,
        data_out: &[u8],
    ) -> Completion {
        use pr::action::*;
        let was_aptpl = self.pr.aptpl();
        let needs_type = matches!(action, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT);
        let kind = PrType::from_code(scope_type & 0x0F);
        let result = match (needs_type, scope_type >> 4, kind) {
            (true, scope, _) if scope != 0 => {
                Err(PrError::Check(Sense::invalid_field_in_cdb(2, Some(7))))
            }
            (true, _, None) => Err(PrError::Check(Sense::invalid_field_in_cdb(2, Some(3)))),
            _ => pr::parse_params(param_len, data_out),
        }
        .and_then(|p| match (action, kind) {
            (REGISTER, _) => self.pr.register(n, p, false),
            (REGISTER_AND_IGNORE, _) => self.pr.register(n, p, true),
            (RESERVE, Some(t)) => self.pr.reserve(n, p, t),
            (RELEASE, Some(t)) => self.pr.release(n, p, t),
            (CLEAR, _) => self.pr.clear(n, p),
            (PREEMPT | PREEMPT_AND_ABORT, Some(t)) => self.pr.preempt(n, p, t),
            _ => Err(PrError::Check(Sense::invalid_field_in_cdb(1, Some(4)))),
        });
        match result {
            Ok(notices) => {
                if action == PREEMPT_AND_ABORT {
                    self.preempted = notices.iter().map(|&(to, _)| to).collect();
                }
                for (to, ua) in notices {
                    self.queue_unit_attention(to, ua);
                }
                self.pr_changed(was_aptpl);
                Completion::good(Vec::new())
            }
            Err(PrError::Conflict) => Completion::reservation_conflict(),
            Err(PrError::Check(sense)) => Completion::check(sense),
        }
    }

    /// Runs a parsed command.
    fn dispatch(&mut self, n: NexusId, cmd: &Command, data_out: &[u8]) -> Outcome {
        let info = &self.info;
        let completion = match *cmd {
            Command::TestUnitReady
            | Command::StartStopUnit { .. }
            | Command::PreventAllowMediumRemoval { .. } => Completion::good(Vec::new()),
            // Another holder was answered RESERVATION CONFLICT above; re-reserving is fine.
            Command::Reserve6 => {
                self.reserved_by = Some(n);
                Completion::good(Vec::new())
            }
            Command::Release6 => {
                if self.reserved_by == Some(n) {
                    self.reserved_by = None;
                }
                Completion::good(Vec::new())
            }
            Command::PersistentReserveIn { action, alloc_len } => {
                self.persistent_reserve_in(action, alloc_len)
            }
            Command::PersistentReserveOut {
                action,
                scope_type,
                param_len,
            } => self.persistent_reserve_out(n, action, scope_type, param_len, data_out),
            Command::RequestSense { desc, alloc_len } => {
                let sense = self.pop_unit_attention(n).unwrap_or(match self.sanitize {
                    SanitizeState::Running { done, .. } => Sense::sanitize_in_progress(done),
                    _ => Sense::no_sense(),
                });
                spc::request_sense(desc, alloc_len, &sense)
            }
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => spc::inquiry(info, evpd, page_code, alloc_len),
            Command::ModeSense(ref req) => {
                spc::mode_sense(info, req, &self.mode, &self.default_mode)
            }
            Command::ModeSelect(req) => self.mode_select(n, req, data_out),
            Command::ReadCapacity10 => sbc::read_capacity10(info),
            Command::ReadDefectData {
                twelve,
                plist,
                glist,
                format,
                alloc_len,
            } => sbc::read_defect_data(twelve, plist, glist, format, alloc_len),
            Command::ReadCapacity16 { alloc_len } => sbc::read_capacity16(info, alloc_len),
            Command::Read(io) => return sbc::read(info, &io),
            Command::Write(io) => return sbc::write(info, self.mode.wce, &io, data_out),
            Command::WriteAtomic(io) => {
                return sbc::write_atomic(info, self.mode.wce, &io, data_out);
            }
            Command::Verify { io, compare } => return sbc::verify(info, &io, compare, data_out),
            Command::WriteAndVerify { io, compare } => {
                return sbc::write_and_verify(info, &io, compare, data_out);
            }
            Command::PreFetch { io, .. } => return sbc::pre_fetch(info, &io),
            Command::SynchronizeCache { io, .. } => return sbc::synchronize_cache(info, &io),
            Command::Unmap { param_len } => return sbc::unmap(info, param_len, data_out),
            Command::WriteSame(ref ws) => return sbc::write_same(info, ws, data_out),
            Command::CompareAndWrite(io) => {
                return sbc::compare_and_write(info, self.mode.wce, &io, data_out);
            }
            Command::OrWrite(io) => {
                return sbc::or_write(info, self.mode.wce, &io, data_out);
            }
            Command::GetLbaStatus { lba, alloc_len } => {
                return sbc::get_lba_status(info, lba, alloc_len);
            }
            Command::ReportLuns {
                select_report,
                alloc_len,
            } => {
                let c = spc::report_luns(select_report, alloc_len, &[info.lun]);
                self.clear_unit_attention(n, Sense::reported_luns_data_changed());
                c
            }
            Command::ReportSupportedOpcodes(ref req) => {
                spc::report_supported_opcodes(req, info.thin, info.max_atomic_blocks != 0)
            }
            Command::ReportTargetPortGroups {
                extended,
                alloc_len,
            } => spc::report_target_port_groups(info, extended, alloc_len),
            Command::ExtendedCopy { param_len } => {
                return self.extended_copy(n, param_len, data_out);
            }
            Command::Sanitize {
                action,
                immed,
                ause,
            } => return self.sanitize(action, immed, ause),
            Command::ReceiveCopyResults {
                action,
                list_id,
                alloc_len,
            } => match action {
                xcopy::SA_OPERATING_PARAMETERS => xcopy::operating_parameters(info, alloc_len),
                _ => self.copy_results.copy_status(n, list_id, alloc_len),
            },
        };
        Outcome::Done(completion)
    }

    /// EXTENDED COPY: the copy to run (its results held when the list asks), or the error.
    fn extended_copy(&mut self, n: NexusId, param_len: u32, data_out: &[u8]) -> Outcome {
        let plan = match xcopy::parse(&self.info, param_len, data_out) {
            Ok(plan) => plan,
            Err(sense) => return Outcome::Done(Completion::check(sense)),
        };
        let Some(plan) = plan else {
            return Outcome::Done(Completion::good(Vec::new()));
        };
        if self.info.read_only && !plan.segments.is_empty() {
            return Outcome::Done(Completion::check(Sense::write_protected()));
        }
        if plan.segments.is_empty() {
            if let Some(id) = plan.held {
                let state = CopyState::Ended {
                    ok: true,
                    segments: plan.segment_count,
                    bytes: 0,
                };
                self.copy_results.record(n, id, state);
            }
            return Outcome::Done(Completion::good(Vec::new()));
        }
        if let Some(id) = plan.held {
            self.copy_results.record(n, id, CopyState::Running);
        }
        Outcome::Copy {
            segments: plan.segments,
            segment_count: plan.segment_count,
            held: plan.held,
            done: 0,
        }
    }

    /// MODE SELECT: validates and applies the parameter list (the first PARAMETER LIST LENGTH
    /// bytes of the Data-Out); a WCE change raises MODE PARAMETERS CHANGED on the other nexuses.
    fn mode_select(&mut self, n: NexusId, req: ModeSelect, data_out: &[u8]) -> Completion {
        let len = usize::try_from(req.param_len)
            .unwrap_or(usize::MAX)
            .min(data_out.len());
        let params = data_out.get(..len).unwrap_or_default();
        match spc::mode_select(&self.info, &self.mode, &self.default_mode, req.ten, params) {
            Err(sense) => Completion::check(sense),
            Ok(next) => {
                if next != self.mode {
                    self.mode = next;
                    self.apply_write_protection();
                    self.queue_unit_attention_all(Sense::mode_parameters_changed(), Some(n));
                }
                Completion::good(Vec::new())
            }
        }
    }

    /// The completion of an `Outcome::GetLbaStatus { lba, alloc_len }` that
    /// [`execute`](Self::execute) returned: GOOD with the LBA status descriptors from `lba`
    /// ([`sbc::lba_status_descriptors`], formatted by [`sbc::lba_status_data`] and truncated to
    /// `alloc_len`). `mapped(e)` tells whether logical extent `e` (byte offset / extent size) of
    /// the volume is allocated.
    pub fn lba_status(
        &self,
        lba: u64,
        alloc_len: u32,
        mapped: impl FnMut(u64) -> bool,
    ) -> Completion {
        let descriptors = sbc::lba_status_descriptors(&self.info, lba, alloc_len, mapped);
        Completion::good(sbc::lba_status_data(&descriptors, alloc_len))
    }

    /// Maps the result of a storage request that [`execute`](Self::execute) returned to the
    /// command's completion (GOOD with empty data on success: for a read the shard sends the
    /// buffer itself).
    pub fn complete(&mut self, n: NexusId, outcome: &Outcome, result: IoResult) -> Completion {
        let Outcome::Copy {
            segments,
            segment_count,
            held,
            done,
        } = outcome
        else {
            return sbc::complete(outcome, result);
        };
        let ok = result == IoResult::Ok;
        // The descriptor index of the segment that failed (every one before it, empty ones
        // included, was processed); the whole list when none did.
        let stopped_at = segments.get(*done).map_or(*segment_count, |s| s.index);
        if let Some(id) = *held {
            let finished = &segments[..(*done).min(segments.len())];
            let state = CopyState::Ended {
                ok,
                segments: if ok { *segment_count } else { stopped_at },
                bytes: finished.iter().map(|s| s.len).sum(),
            };
            self.copy_results.record(n, id, state);
        }
        match sbc::complete(outcome, result) {
            // A failed copy is COPY ABORTED, with the cause's ASC/ASCQ and the segment's index.
            Completion {
                sense: Some(cause), ..
            } => Completion::check(Sense::copy_aborted(
                cause.asc,
                cause.ascq,
                u64::from(stopped_at),
            )),
            c => c,
        }
    }
}

/// Queues `ua` unless it is already pending or the queue is full.
fn push_ua(queue: &mut VecDeque<Sense>, ua: Sense) {
    if queue.len() < MAX_PENDING_UA && !queue.contains(&ua) {
        queue.push_back(ua);
    }
}

/// What [`LogicalUnit::reservations`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservations {
    /// PRgeneration.
    pub generation: u32,
    /// (initiator port, reservation key) of each registration.
    pub registrations: Vec<(String, u64)>,
    /// The persistent reservation: its holder's port (None: every registrant) and type name.
    pub reservation: Option<(Option<String>, &'static str)>,
    /// The port holding a RESERVE (6) reservation.
    pub scsi2_holder: Option<String>,
}

/// How a command touches the logical unit: its access for persistent reservations (SPC-4 table
/// 63, simplified), and whether it reads or changes the logical blocks (what the sanitize
/// failure mode refuses; mode pages, reservations and the like are not blocks).
fn class_of(cmd: &Command) -> (Access, bool) {
    match cmd {
        Command::Inquiry { .. }
        | Command::RequestSense { .. }
        | Command::ReportLuns { .. }
        | Command::TestUnitReady
        | Command::ReadCapacity10
        | Command::ReadCapacity16 { .. }
        | Command::ReportSupportedOpcodes(_)
        | Command::ReportTargetPortGroups { .. }
        | Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. }
        | Command::ReceiveCopyResults { .. } => (Access::Always, false),
        Command::ReadDefectData { .. } | Command::ModeSense(_) => (Access::Read, false),
        Command::Read(_)
        | Command::Verify { .. }
        | Command::PreFetch { .. }
        | Command::GetLbaStatus { .. } => (Access::Read, true),
        Command::ModeSelect(_)
        | Command::StartStopUnit { .. }
        | Command::PreventAllowMediumRemoval { .. }
        | Command::Reserve6
        | Command::Release6 => (Access::Write, false),
        Command::Write(_)
        | Command::WriteAtomic(_)
        | Command::WriteAndVerify { .. }
        | Command::WriteSame(_)
        | Command::CompareAndWrite(_)
        | Command::OrWrite(_)
        | Command::Unmap { .. }
        | Command::SynchronizeCache { .. }
        | Command::ExtendedCopy { .. }
        | Command::Sanitize { .. } => (Access::Write, true),
    }
}

/// Whether a CDB asks to change logical blocks (what a freeze for a consistent group snapshot
/// holds back): WRITE and its kin, UNMAP, EXTENDED COPY, SANITIZE... A CDB that does not parse
/// changes nothing.
pub fn changes_medium(cdb: &[u8]) -> bool {
    cdb::parse(cdb).is_ok_and(|cmd| class_of(&cmd) == (Access::Write, true))
}

/// INQUIRY, REPORT LUNS and REQUEST SENSE are executed despite a pending unit attention
/// (SAM-5 5.14, SPC-4 5.12).
fn reports_no_unit_attention(cdb: &[u8]) -> bool {
    matches!(
        cdb.first().copied(),
        Some(cdb::opcode::INQUIRY | cdb::opcode::REPORT_LUNS | cdb::opcode::REQUEST_SENSE)
    )
}

/// The answer to a command addressed to a LUN with no logical unit: INQUIRY returns data with
/// PERIPHERAL QUALIFIER 011b / DEVICE TYPE 1Fh (SPC-4 6.6.2; standard data, or an empty VPD page
/// for EVPD=1), REPORT LUNS lists LUN 0, REQUEST SENSE returns LOGICAL UNIT NOT SUPPORTED as
/// parameter data, anything else is CHECK CONDITION LOGICAL UNIT NOT SUPPORTED.
pub fn lun_not_supported(cdb: &[u8]) -> Completion {
    let cmd = match cdb::parse(cdb) {
        Ok(cmd) => cmd,
        Err(sense) if sense == Sense::invalid_opcode() => {
            return Completion::check(Sense::lun_not_supported());
        }
        Err(sense) => return Completion::check(sense),
    };
    match cmd {
        Command::Inquiry {
            evpd: false,
            alloc_len,
            ..
        } => Completion::good(spc::truncate(
            spc::standard_inquiry(spc::PERIPHERAL_NO_LUN),
            alloc_len,
        )),
        Command::Inquiry {
            page_code,
            alloc_len,
            ..
        } => Completion::good(spc::truncate(
            vec![spc::PERIPHERAL_NO_LUN, page_code, 0, 0],
            alloc_len,
        )),
        Command::ReportLuns {
            select_report,
            alloc_len,
        } => spc::report_luns(select_report, alloc_len, &[0]),
        Command::RequestSense { desc, alloc_len } => {
            spc::request_sense(desc, alloc_len, &Sense::lun_not_supported())
        }
        _ => Completion::check(Sense::lun_not_supported()),
    }
}

/// Encodes a LUN number as an 8-byte single-level LUN (SAM-5 4.7.3): peripheral device
/// addressing below 256, flat space addressing below 16384; larger values are taken to be a
/// complete 8-byte LUN structure already and copied big-endian.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 16384 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        b = lun.to_be_bytes();
    }
    b
}

/// Decodes an 8-byte LUN field (e.g. from an iSCSI PDU) into a LUN number: the inverse of
/// [`encode_lun`] for single-level peripheral (bus 0) and flat space addresses; anything else is
/// returned as the raw big-endian value (which matches no LUN below 16384).
pub fn decode_lun(lun: [u8; 8]) -> u64 {
    let level_two_empty = lun[2..].iter().all(|&b| b == 0);
    match lun[0] >> 6 {
        0b00 if lun[0] == 0 && level_two_empty => u64::from(lun[1]),
        0b01 if level_two_empty => (u64::from(lun[0] & 0x3F) << 8) | u64::from(lun[1]),
        _ => u64::from_be_bytes(lun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::Status;
    use crate::scsi::sense::SenseKey;

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);

    fn info() -> LunInfo {
        LunInfo {
            lun: 0,
            volume_name: "vol0".into(),
            target_name: "iqn.2024-01.io.shoal:t1".into(),
            serial: "SN0001".into(),
            num_blocks: 2048,
            max_transfer_blocks: 1024,
            ..LunInfo::default()
        }
    }

    /// A logical unit with nexuses A and B whose power-on unit attentions were consumed.
    fn lu() -> LogicalUnit {
        let mut lu = LogicalUnit::new(info());
        lu.add_nexus(A);
        lu.add_nexus(B);
        lu.execute(A, &TUR, &[]);
        lu.execute(B, &TUR, &[]);
        lu
    }

    const TUR: [u8; 16] = [0; 16];

    /// PERSISTENT RESERVE OUT `action` of type `kind` with the basic parameter list.
    fn prout(
        lu: &mut LogicalUnit,
        n: NexusId,
        action: u8,
        kind: u8,
        keys: (u64, u64),
        aptpl: bool,
    ) {
        let mut param = [0u8; 24];
        param[..8].copy_from_slice(&keys.0.to_be_bytes());
        param[8..16].copy_from_slice(&keys.1.to_be_bytes());
        param[20] = u8::from(aptpl);
        let c = done(lu.execute(n, &cdb(&[0x5F, action, kind, 0, 0, 0, 0, 0, 24]), &param));
        assert_eq!(c.status, Status::Good, "PROUT {action}: {:?}", c.sense);
    }

    #[test]
    fn aptpl_hands_each_change_to_the_shard_and_its_end_once() {
        let mut lu = lu();
        lu.name_nexus(A, "iqn.a,i,0x000000000001".into());
        prout(&mut lu, A, 0x00, 0, (0, 0xA1), false);
        assert_eq!(lu.take_pr_persist(), None, "no APTPL, nothing to keep");
        prout(&mut lu, A, 0x00, 0, (0xA1, 0xA2), true);
        let Some(PrPersist::Save(record)) = lu.take_pr_persist() else {
            panic!("REGISTER with APTPL: a record to keep");
        };
        assert_eq!(record.registrations[0].port, "iqn.a,i,0x000000000001");
        assert_eq!(record.registrations[0].key, 0xA2);
        assert_eq!(lu.take_pr_persist(), None, "taken once");
        prout(&mut lu, A, 0x01, 1, (0xA2, 0), false);
        let Some(PrPersist::Save(record)) = lu.take_pr_persist() else {
            panic!("RESERVE while APTPL is active: a record to keep");
        };
        assert_eq!(record.reservation.map(|r| r.kind), Some(1));
        // A command that does not touch the reservations leaves nothing to keep.
        lu.execute(B, &TUR, &[]);
        assert_eq!(lu.take_pr_persist(), None);
        lu.clear_reservations();
        assert!(
            matches!(lu.take_pr_persist(), Some(PrPersist::Save(r)) if r.registrations.is_empty())
        );
        lu.execute(A, &TUR, &[]); // RESERVATIONS PREEMPTED, told once
        prout(&mut lu, A, 0x00, 0, (0, 0xA3), false);
        assert_eq!(
            lu.take_pr_persist(),
            Some(PrPersist::Remove),
            "APTPL turned off"
        );
    }

    #[test]
    fn preempt_and_abort_names_the_preempted_nexuses_once_and_plain_preempt_none() {
        let mut lu = lu();
        prout(&mut lu, A, 0x00, 0, (0, 0xA1), false);
        prout(&mut lu, B, 0x00, 0, (0, 0xB1), false);
        prout(&mut lu, B, 0x01, 5, (0xB1, 0), false);
        // PREEMPT removes B's key but aborts nothing.
        prout(&mut lu, A, 0x04, 5, (0xA1, 0xB1), false);
        assert!(lu.take_preempted_nexuses().is_empty());
        lu.execute(B, &TUR, &[]); // REGISTRATIONS PREEMPTED
        prout(&mut lu, B, 0x00, 0, (0, 0xB2), false);
        prout(&mut lu, A, 0x05, 5, (0xA1, 0xB2), false);
        assert_eq!(lu.take_preempted_nexuses(), vec![B]);
        assert!(lu.take_preempted_nexuses().is_empty(), "taken once");
        assert!(!lu.is_registered(B) && lu.is_registered(A));
        // A type is required, as for PREEMPT.
        let mut param = [0u8; 24];
        param[..8].copy_from_slice(&0xA1u64.to_be_bytes());
        param[8..16].copy_from_slice(&0xC1u64.to_be_bytes());
        let c = done(lu.execute(A, &cdb(&[0x5F, 0x05, 0x00, 0, 0, 0, 0, 0, 24]), &param));
        assert_eq!(c.sense, Some(Sense::invalid_field_in_cdb(2, Some(3))));
    }

    fn cdb(bytes: &[u8]) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    fn done(o: Outcome) -> Completion {
        match o {
            Outcome::Done(c) => c,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn ua_of(o: Outcome) -> Option<(u8, u8)> {
        let c = done(o);
        c.sense
            .filter(|s| s.key == SenseKey::UnitAttention)
            .map(|s| (s.asc, s.ascq))
    }

    #[test]
    fn new_nexus_gets_power_on_ua_once() {
        let mut lu = LogicalUnit::new(info());
        lu.add_nexus(A);
        assert!(lu.has_unit_attention(A));
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x29, 0x00)));
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
    }

    #[test]
    fn unknown_nexus_has_no_ua() {
        let mut lu = LogicalUnit::new(info());
        assert_eq!(
            done(lu.execute(NexusId(99), &TUR, &[])).status,
            Status::Good
        );
    }

    #[test]
    fn ua_reported_instead_of_any_command_even_invalid_ones() {
        let mut lu = LogicalUnit::new(info());
        lu.add_nexus(A);
        assert_eq!(ua_of(lu.execute(A, &cdb(&[0x42]), &[])), Some((0x29, 0x00)));
        let c = done(lu.execute(A, &cdb(&[0x42]), &[]));
        assert_eq!(c.sense, Some(Sense::invalid_opcode()));
        lu.add_nexus(A);
        let read = cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(ua_of(lu.execute(A, &read, &[])), Some((0x29, 0x00)));
        assert!(matches!(lu.execute(A, &read, &[]), Outcome::Read { .. }));
    }

    #[test]
    fn inquiry_and_report_luns_do_not_report_or_clear_ua() {
        let mut lu = LogicalUnit::new(info());
        lu.add_nexus(A);
        let inq = cdb(&[0x12, 0, 0, 0, 96, 0]);
        let c = done(lu.execute(A, &inq, &[]));
        assert_eq!((c.status, c.data.len()), (Status::Good, 96));
        let rl = cdb(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]);
        let c = done(lu.execute(A, &rl, &[]));
        assert_eq!(c.data, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(lu.has_unit_attention(A));
    }

    #[test]
    fn request_sense_returns_and_clears_ua() {
        let mut lu = LogicalUnit::new(info());
        lu.add_nexus(A);
        let rs = cdb(&[0x03, 0, 0, 0, 18, 0]);
        let c = done(lu.execute(A, &rs, &[]));
        assert_eq!(c.status, Status::Good);
        assert_eq!(c.data, Sense::power_on_reset().to_bytes());
        let c = done(lu.execute(A, &rs, &[]));
        assert_eq!(c.data, Sense::no_sense().to_bytes());
        // Descriptor format.
        lu.add_nexus(A);
        let c = done(lu.execute(A, &cdb(&[0x03, 1, 0, 0, 252, 0]), &[]));
        assert_eq!(c.data, vec![0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
    }

    #[test]
    fn lun_reset_raises_ua_on_every_nexus() {
        let mut lu = lu();
        lu.lun_reset(A);
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x29, 0x03)));
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x29, 0x03)));
        assert_eq!(done(lu.execute(B, &TUR, &[])).status, Status::Good);
    }

    #[test]
    fn target_reset_raises_ua_on_every_nexus() {
        let mut lu = lu();
        lu.target_reset(B);
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x29, 0x00)));
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x29, 0x00)));
    }

    #[test]
    fn ua_queue_is_fifo_deduplicated_and_bounded() {
        let mut lu = lu();
        lu.set_capacity(4096);
        lu.set_capacity(4096);
        lu.lun_reset(A);
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x2A, 0x09)));
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x29, 0x03)));
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
        for ascq in 0..40u8 {
            lu.queue_unit_attention(A, Sense::new(SenseKey::UnitAttention, 0x3F, ascq));
        }
        let mut n = 0;
        while lu.has_unit_attention(A) {
            lu.execute(A, &TUR, &[]);
            n += 1;
        }
        assert_eq!(n, MAX_PENDING_UA);
    }

    #[test]
    fn set_capacity_updates_read_capacity() {
        let mut lu = lu();
        lu.set_capacity(4096);
        assert_eq!(lu.info().num_blocks, 4096);
        assert_eq!(ua_of(lu.execute(A, &cdb(&[0x25]), &[])), Some((0x2A, 0x09)));
        let c = done(lu.execute(A, &cdb(&[0x25]), &[]));
        assert_eq!(&c.data[..4], &4095u32.to_be_bytes());
    }

    #[test]
    fn commands_cleared_ua() {
        let mut lu = lu();
        lu.commands_cleared(B);
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x2F, 0x00)));
    }

    #[test]
    fn report_luns_clears_reported_luns_changed_ua() {
        let mut lu = lu();
        lu.queue_unit_attention(A, Sense::reported_luns_data_changed());
        lu.execute(A, &cdb(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), &[]);
        assert!(!lu.has_unit_attention(A));
    }

    #[test]
    fn remove_nexus_drops_its_uas() {
        let mut lu = LogicalUnit::new(info());
        lu.add_nexus(A);
        lu.remove_nexus(A);
        assert!(!lu.has_unit_attention(A));
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
    }

    /// MODE SELECT (6) of the caching page with the given WCE.
    fn select_caching(wce: bool) -> ([u8; 16], Vec<u8>) {
        let mut params = vec![0, 0, 0, 0, 0x08, 0x12];
        params.extend_from_slice(&[0; 18]);
        params[6] = if wce { 0x04 } else { 0 };
        (cdb(&[0x15, 0x10, 0, 0, params.len() as u8, 0]), params)
    }

    #[test]
    fn mode_select_wce_changes_state_and_raises_ua_on_others() {
        let mut lu = lu();
        assert!(lu.write_cache_enabled());
        let (c, p) = select_caching(false);
        assert_eq!(done(lu.execute(A, &c, &p)).status, Status::Good);
        assert!(!lu.write_cache_enabled());
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x2A, 0x01)));
        // Writes are now forced to FUA.
        let w = cdb(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            lu.execute(A, &w, &[0; 512]),
            Outcome::Write {
                offset: 0,
                len: 512,
                fua: true,
                atomic: false
            }
        );
        // MODE SENSE reflects it.
        let c = done(lu.execute(A, &cdb(&[0x1A, 0x08, 0x08, 0, 255, 0]), &[]));
        assert_eq!(c.data[6], 0x00);
        // Setting the same value again raises nothing.
        let (c, p) = select_caching(false);
        assert_eq!(done(lu.execute(A, &c, &p)).status, Status::Good);
        assert!(!lu.has_unit_attention(B));
        // A LUN reset keeps the mode parameters.
        lu.lun_reset(A);
        assert!(!lu.write_cache_enabled());
    }

    /// MODE SELECT (6) of the control page with SWP as given (the other fields current).
    fn select_control(swp: bool) -> ([u8; 16], Vec<u8>) {
        let mut params = vec![
            0, 0, 0, 0, 0x0A, 0x0A, 0x02, 0x10, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0,
        ];
        params[8] = if swp { 0x08 } else { 0 };
        (cdb(&[0x15, 0x10, 0, 0, params.len() as u8, 0]), params)
    }

    #[test]
    fn software_write_protect_from_one_nexus_protects_the_unit_for_all() {
        let mut lu = thin_lu();
        let w = cdb(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let (c, p) = select_control(true);
        assert_eq!(done(lu.execute(A, &c, &p)).status, Status::Good);
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x2A, 0x01)));
        for n in [A, B] {
            assert_eq!(
                done(lu.execute(n, &w, &[0; 512])).sense,
                Some(Sense::write_protected())
            );
            assert_eq!(
                done(lu.execute(n, &BLOCK_ERASE, &[])).sense,
                Some(Sense::write_protected())
            );
        }
        // MODE SENSE: WP in the header, SWP in the control page.
        let c = done(lu.execute(B, &cdb(&[0x1A, 0x08, 0x0A, 0, 255, 0]), &[]));
        assert_eq!((c.data[2] & 0x80, c.data[8]), (0x80, 0x08));
        // Cleared: writable again; the administrator's protection is separate.
        let (c, p) = select_control(false);
        assert_eq!(done(lu.execute(B, &c, &p)).status, Status::Good);
        lu.execute(A, &TUR, &[]);
        assert!(matches!(
            lu.execute(A, &w, &[0; 512]),
            Outcome::Write { .. }
        ));
        lu.set_read_only(true);
        let (c, p) = select_control(true);
        lu.execute(A, &TUR, &[]);
        assert_eq!(done(lu.execute(A, &c, &p)).status, Status::Good);
        let (c, p) = select_control(false);
        assert_eq!(done(lu.execute(A, &c, &p)).status, Status::Good);
        assert!(
            lu.info().read_only,
            "clearing SWP keeps the administrator's write protection"
        );
    }

    #[test]
    fn mode_select_invalid_list_changes_nothing() {
        let mut lu = lu();
        let (c, mut p) = select_caching(false);
        p[7] = 0x01; // demand read retention priority: not changeable
        let r = done(lu.execute(A, &c, &p));
        assert_eq!(
            r.sense,
            Some(Sense::invalid_field_in_parameter_list_bit(7, Some(0)))
        );
        assert!(lu.write_cache_enabled());
        // Data-Out shorter than the parameter list length: the list is cut.
        let (c, p) = select_caching(false);
        let r = done(lu.execute(A, &c, &p[..10]));
        assert_eq!(r.sense, Some(Sense::parameter_list_length_error()));
        assert!(!lu.has_unit_attention(B));
    }

    /// A thin LU (512-byte blocks, 4 KiB extents) with nexuses A and B, power-on UAs consumed.
    fn thin_lu() -> LogicalUnit {
        let mut lu = LogicalUnit::new(LunInfo {
            thin: true,
            extent_size: 4096,
            max_atomic_blocks: 2048,
            ..info()
        });
        lu.add_nexus(A);
        lu.add_nexus(B);
        lu.execute(A, &TUR, &[]);
        lu.execute(B, &TUR, &[]);
        lu
    }

    #[test]
    fn reserve6_holds_the_lu_for_one_nexus_until_released_or_reset() {
        let reserve = cdb(&[0x16]);
        let release = cdb(&[0x17]);
        let read = cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let status = |lu: &mut LogicalUnit, n, c: &[u8; 16]| match lu.execute(n, c, &[]) {
            Outcome::Done(c) => c.status,
            _ => Status::Good, // a storage request: not refused
        };
        let fresh = lu;
        let mut lu = fresh();
        assert_eq!(status(&mut lu, A, &reserve), Status::Good);
        assert_eq!(
            status(&mut lu, A, &reserve),
            Status::Good,
            "the holder may re-reserve"
        );
        for c in [TUR, read, reserve] {
            assert_eq!(status(&mut lu, B, &c), Status::ReservationConflict);
        }
        // INQUIRY, REQUEST SENSE, REPORT LUNS go through; RELEASE is a no-op for a non-holder.
        for c in [
            cdb(&[0x12, 0, 0, 0, 36]),
            cdb(&[0x03, 0, 0, 0, 18]),
            cdb(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16]),
        ] {
            assert_eq!(status(&mut lu, B, &c), Status::Good, "{c:02x?}");
        }
        assert_eq!(status(&mut lu, B, &release), Status::Good);
        assert_eq!(status(&mut lu, B, &TUR), Status::ReservationConflict);
        assert_eq!(status(&mut lu, A, &read), Status::Good);
        assert_eq!(status(&mut lu, A, &release), Status::Good);
        assert_eq!(status(&mut lu, B, &reserve), Status::Good);
        // The holder's logout or connection loss releases it.
        lu.remove_nexus(B);
        assert_eq!(status(&mut lu, A, &TUR), Status::Good);
        // So do LOGICAL UNIT RESET and TARGET RESET (after their unit attentions).
        for reset in [LogicalUnit::lun_reset, LogicalUnit::target_reset] {
            let mut lu = fresh();
            assert_eq!(status(&mut lu, A, &reserve), Status::Good);
            reset(&mut lu, A);
            lu.execute(B, &TUR, &[]);
            assert_eq!(status(&mut lu, B, &TUR), Status::Good);
        }
    }

    #[test]
    fn execute_dispatches_every_supported_command() {
        let mut lu = thin_lu();
        for c in cdb::SUPPORTED_COMMANDS {
            let mut bytes = [0u8; 16];
            bytes[..c.usage.len()].copy_from_slice(c.usage);
            // Zero every evaluated field except opcode / service action, then make the few
            // mandatory fields valid.
            for b in bytes.iter_mut().take(c.usage.len()).skip(1) {
                *b = 0;
            }
            if let Some(sa) = c.service_action {
                bytes[1] = sa as u8;
            }
            match c.opcode {
                0x15 | 0x55 => bytes[1] = 0x10,
                0x1A | 0x5A => bytes[2] = 0x3F,
                0xA0 => bytes[9] = 16,
                0x41 => bytes[8] = 1,  // WSNZ
                0x93 => bytes[13] = 1, // WSNZ
                0x5F => {
                    bytes[2] = 0x01; // LU scope, Write Exclusive
                    bytes[8] = 24; // the basic parameter list
                }
                _ => {}
            }
            // COMPARE AND WRITE of zero blocks does nothing, and takes no Data-Out.
            let data = vec![0u8; if c.opcode == 0x89 { 0 } else { 512 }];
            let out = lu.execute(A, &bytes, &data);
            if let Outcome::Sanitize { .. } = out {
                // BLOCK ERASE: the runtime would end it; the next commands need the LU back.
                lu.sanitize_ended(true);
            }
            if let Outcome::Done(done) = &out {
                // PERSISTENT RESERVE OUT from an unregistered nexus: a conflict, not an error.
                if c.opcode == 0x5F && done.status == Status::ReservationConflict {
                    continue;
                }
                // COPY STATUS of a list no copy used: INVALID FIELD IN CDB (LIST IDENTIFIER).
                if c.opcode == 0x84 && c.service_action == Some(0) {
                    assert_eq!(done.sense, Some(Sense::invalid_field_in_cdb(2, None)));
                    continue;
                }
                assert_eq!(
                    done.status,
                    Status::Good,
                    "opcode {:#x}: {:?}",
                    c.opcode,
                    done.sense
                );
            }
        }
    }

    #[test]
    fn thin_only_commands_on_a_fully_provisioned_lu() {
        let mut lu = lu();
        let unmap = cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
        let gls = cdb(&[0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0]);
        for c in [unmap, gls] {
            assert_eq!(
                done(lu.execute(A, &c, &[0; 24])).sense,
                Some(Sense::invalid_opcode())
            );
        }
        let ws_unmap = cdb(&[0x41, 0x08, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            done(lu.execute(A, &ws_unmap, &[0; 512])).sense,
            Some(Sense::invalid_field_in_cdb(1, Some(3)))
        );
        let ws = cdb(&[0x41, 0x00, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(matches!(
            lu.execute(A, &ws, &[0; 512]),
            Outcome::WriteSame { unmap: false, .. }
        ));
    }

    #[test]
    fn execute_provisioning_commands() {
        let mut lu = thin_lu();
        let list = [
            0, 38, 0, 32, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 8, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 0,
        ];
        let unmap = cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0]);
        assert_eq!(
            lu.execute(A, &unmap, &list),
            Outcome::Unmap {
                ranges: vec![(0, 24 * 512)]
            }
        );
        let anchor = cdb(&[0x42, 1, 0, 0, 0, 0, 0, 0, 40, 0]);
        assert_eq!(
            done(lu.execute(A, &anchor, &list)).sense,
            Some(Sense::invalid_field_in_cdb(1, Some(0)))
        );
        let mut ws16 = cdb(&[0x93, 0x09]);
        ws16[9] = 8;
        ws16[13] = 16;
        assert_eq!(
            lu.execute(A, &ws16, &[]),
            Outcome::WriteSame {
                offset: 8 * 512,
                len: 16 * 512,
                unmap: true,
                ndob: true
            }
        );
        let mut gls = cdb(&[0x9E, 0x12]);
        gls[9] = 7;
        gls[13] = 24;
        assert_eq!(
            lu.execute(A, &gls, &[]),
            Outcome::GetLbaStatus {
                lba: 7,
                alloc_len: 24
            }
        );
        gls[8] = 0x08; // LBA 2048 = capacity
        assert_eq!(
            done(lu.execute(A, &gls, &[])).sense,
            Some(Sense::lba_out_of_range())
        );
        // The runtime's answer: extent 0 mapped, the rest deallocated.
        let c = lu.lba_status(7, 40, |e| e == 0);
        assert_eq!(c.status, Status::Good);
        assert_eq!(c.data.len(), 40);
        assert_eq!(&c.data[..8], &[0, 0, 0, 36, 0, 0, 0, 0]);
        assert_eq!(
            &c.data[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(
            &c.data[24..40],
            &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0x07, 0xF8, 1, 0, 0, 0]
        );
        assert_eq!(lu.lba_status(7, 24, |e| e == 0).data.len(), 24);
        // A copy that fails in its second segment, after an empty descriptor: COPY ABORTED and
        // its held results name descriptor 2 (0 copied, 1 empty, 2 failed).
        let segment = |index, src| crate::scsi::xcopy::CopySegment {
            src,
            dst: 1 << 20,
            len: 4096,
            index,
            src_lu: None,
            dst_lu: None,
        };
        let o = Outcome::Copy {
            segments: vec![segment(0, 0), segment(2, 8192)],
            segment_count: 3,
            held: Some(5),
            done: 1,
        };
        let c = lu.complete(A, &o, IoResult::MediumError { read: true });
        let sense = c.sense.expect("COPY ABORTED");
        assert_eq!(
            (sense.key, sense.information),
            (SenseKey::CopyAborted, Some(2))
        );
        let status = lu.copy_results.copy_status(A, 5, 12);
        assert_eq!(status.data[4..7], [0x02, 0, 2], "failed after 2 segments");
        // Failures of the storage request.
        let o = Outcome::Unmap {
            ranges: vec![(0, 512)],
        };
        assert_eq!(
            lu.complete(A, &o, IoResult::Ok),
            Completion::good(Vec::new())
        );
        assert_eq!(
            lu.complete(A, &o, IoResult::MediumError { read: false })
                .sense,
            Some(Sense::medium_error(false))
        );
    }

    const BLOCK_ERASE: [u8; 16] = [0x48, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    const READ10: [u8; 16] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];

    fn sense_of(o: Outcome) -> Option<(SenseKey, u8, u8)> {
        done(o).sense.map(|s| (s.key, s.asc, s.ascq))
    }

    #[test]
    fn sanitize_state_gates_commands_and_reports_progress() {
        let mut lu = thin_lu();
        assert_eq!(
            lu.execute(A, &BLOCK_ERASE, &[]),
            Outcome::Sanitize { immed: false }
        );
        lu.set_sanitize_progress(0x8000);
        let not_ready = Some((SenseKey::NotReady, 0x04, 0x1B));
        // Every nexus: media access, TEST UNIT READY, another SANITIZE.
        for (n, c) in [(A, READ10), (B, READ10), (B, TUR), (A, BLOCK_ERASE)] {
            assert_eq!(sense_of(lu.execute(n, &c, &[])), not_ready);
        }
        let c = done(lu.execute(B, &cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]), &[]));
        assert_eq!(
            c.sense.and_then(|s| s.key_specific),
            Some(crate::scsi::sense::KeySpecific::Progress(0x8000))
        );
        // INQUIRY, REPORT LUNS and REQUEST SENSE (with the progress) still work.
        assert_eq!(
            done(lu.execute(B, &cdb(&[0x12, 0, 0, 0, 36, 0]), &[])).status as u8,
            0
        );
        assert_eq!(
            done(lu.execute(B, &cdb(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]), &[])).status as u8,
            0
        );
        let rs = done(lu.execute(B, &cdb(&[0x03, 0, 0, 0, 18, 0]), &[]));
        assert_eq!((rs.data[2], rs.data[12], rs.data[13]), (0x02, 0x04, 0x1B));
        assert_eq!(&rs.data[15..18], &[0x80, 0x80, 0x00]);
        // Success: back to normal.
        assert_eq!(lu.sanitize_ended(true).status as u8, 0);
        assert!(matches!(lu.execute(A, &READ10, &[]), Outcome::Read { .. }));
        assert_eq!(lu.sanitize_state(), SanitizeState::Idle);
    }

    #[test]
    fn sanitize_failure_mode_until_a_sanitize_succeeds_or_exit_when_allowed() {
        let exit = cdb(&[0x48, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0]);
        let failed = Some((SenseKey::MediumError, 0x31, 0x03));
        for ause in [false, true] {
            let mut lu = thin_lu();
            let byte1 = 0x02 | if ause { 0x20 } else { 0 };
            let erase = cdb(&[0x48, byte1, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert!(matches!(
                lu.execute(A, &erase, &[]),
                Outcome::Sanitize { .. }
            ));
            let c = lu.sanitize_ended(false);
            assert_eq!(c.sense.map(|s| (s.key, s.asc, s.ascq)), failed);
            // Media access fails on every nexus; TEST UNIT READY and INQUIRY do not.
            assert_eq!(sense_of(lu.execute(B, &READ10, &[])), failed);
            assert_eq!(done(lu.execute(B, &TUR, &[])).sense, None);
            let answer = sense_of(lu.execute(A, &exit, &[]));
            if ause {
                assert_eq!(answer, None, "AUSE=1: EXIT FAILURE MODE ends it");
                assert!(matches!(lu.execute(B, &READ10, &[]), Outcome::Read { .. }));
            } else {
                assert_eq!(answer, Some((SenseKey::IllegalRequest, 0x24, 0x00)));
                assert_eq!(sense_of(lu.execute(B, &READ10, &[])), failed);
                // A new BLOCK ERASE that succeeds ends it.
                assert!(matches!(
                    lu.execute(A, &erase, &[]),
                    Outcome::Sanitize { .. }
                ));
                lu.sanitize_ended(true);
                assert!(matches!(lu.execute(B, &READ10, &[]), Outcome::Read { .. }));
            }
        }
    }

    #[test]
    fn sanitize_state_changes_are_handed_out_to_be_stored_and_restored_from_a_record() {
        let mut lu = thin_lu();
        let erase_ause = cdb(&[0x48, 0x22, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            lu.execute(A, &erase_ause, &[]),
            Outcome::Sanitize { .. }
        ));
        let running = SanitizeState::Running {
            done: 0,
            ause: true,
        };
        assert_eq!(lu.take_sanitize_persist(), Some(running));
        assert_eq!(lu.take_sanitize_persist(), None, "taken once");
        // Progress is not a change to store; the end is.
        lu.set_sanitize_progress(0x4000);
        assert_eq!(lu.take_sanitize_persist(), None);
        lu.sanitize_ended(false);
        let failed = SanitizeState::Failed { ause: true };
        assert_eq!(lu.take_sanitize_persist(), Some(failed));
        // EXIT FAILURE MODE leaves the failure mode: stored as no record at all.
        lu.execute(A, &cdb(&[0x48, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0]), &[]);
        assert_eq!(lu.take_sanitize_persist(), Some(SanitizeState::Idle));
        // ...and changes nothing when there was no failure mode.
        lu.execute(A, &cdb(&[0x48, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0]), &[]);
        assert_eq!(lu.take_sanitize_persist(), None);
        // Other commands change nothing.
        lu.execute(A, &READ10, &[]);
        assert_eq!(lu.take_sanitize_persist(), None);

        // A change that could not be stored is put back.
        lu.execute(A, &BLOCK_ERASE, &[]);
        lu.restore_sanitize(SanitizeState::Idle);
        assert_eq!(lu.take_sanitize_persist(), None);
        assert!(matches!(lu.execute(A, &READ10, &[]), Outcome::Read { .. }));

        // The record's form, and a unit served again from it: an erase in progress (from the
        // start) or the failure mode, with nothing to store until it changes.
        let record = serde_json::to_value(SanitizeState::Running {
            done: 7,
            ause: true,
        })
        .unwrap();
        assert_eq!(
            record,
            serde_json::json!({"state": "running", "ause": true})
        );
        let state: SanitizeState = serde_json::from_value(record).unwrap();
        let mut resumed = thin_lu().with_sanitize(state);
        assert_eq!(resumed.sanitize_state(), running);
        assert_eq!(resumed.take_sanitize_persist(), None);
        assert_eq!(
            sense_of(resumed.execute(B, &READ10, &[])),
            Some((SenseKey::NotReady, 0x04, 0x1B))
        );
        let record = serde_json::json!({"state": "failed", "ause": false});
        let state: SanitizeState = serde_json::from_value(record).unwrap();
        let mut failed_lu = thin_lu().with_sanitize(state);
        assert_eq!(
            sense_of(failed_lu.execute(B, &READ10, &[])),
            Some((SenseKey::MediumError, 0x31, 0x03))
        );
    }

    #[test]
    fn what_a_freeze_holds_changes_the_blocks() {
        for (c, changes) in [
            (cdb(&[0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0]), true), // WRITE (10)
            (cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), true), // UNMAP
            (BLOCK_ERASE, true),
            (READ10, false),
            (cdb(&[0x12, 0, 0, 0, 36, 0]), false),    // INQUIRY
            (cdb(&[0x15, 0x10, 0, 0, 24, 0]), false), // MODE SELECT (6)
            (cdb(&[0x48, 0x40, 0, 0, 0, 0, 0, 0, 0, 0]), false), // malformed
        ] {
            assert_eq!(changes_medium(&c), changes, "{:#04x}", c[0]);
        }
    }

    #[test]
    fn sanitize_is_refused_where_it_cannot_run() {
        // A fully provisioned LU has no BLOCK ERASE (nothing to deallocate).
        let mut full = lu();
        assert_eq!(
            sense_of(full.execute(A, &BLOCK_ERASE, &[])),
            Some((SenseKey::IllegalRequest, 0x24, 0x00))
        );
        // Write protected.
        let mut ro = thin_lu();
        ro.set_read_only(true);
        ro.execute(A, &TUR, &[]);
        assert_eq!(
            sense_of(ro.execute(A, &BLOCK_ERASE, &[])),
            Some((SenseKey::DataProtect, 0x27, 0x00))
        );
        // Another nexus's RESERVE (6).
        let mut lu = thin_lu();
        lu.execute(B, &cdb(&[0x16, 0, 0, 0, 0, 0]), &[]);
        assert!(matches!(
            lu.execute(A, &BLOCK_ERASE, &[]),
            Outcome::Done(Completion {
                status: crate::scsi::Status::ReservationConflict,
                ..
            })
        ));
        assert_eq!(lu.sanitize_state(), SanitizeState::Idle);
    }

    #[test]
    fn read_only_thin_lun_rejects_unmap_and_write_same() {
        let mut lu = LogicalUnit::new(LunInfo {
            read_only: true,
            thin: true,
            extent_size: 4096,
            ..info()
        });
        let unmap = cdb(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
        let list = [
            0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        assert_eq!(
            done(lu.execute(A, &unmap, &list)).sense,
            Some(Sense::write_protected())
        );
        for b1 in [0x00u8, 0x08] {
            let ws = cdb(&[0x41, b1, 0, 0, 0, 0, 0, 0, 1, 0]);
            assert_eq!(
                done(lu.execute(A, &ws, &[0; 512])).sense,
                Some(Sense::write_protected())
            );
        }
        let gls = cdb(&[0x9E, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 24, 0, 0]);
        assert!(matches!(
            lu.execute(A, &gls, &[]),
            Outcome::GetLbaStatus { .. }
        ));
    }

    #[test]
    fn soft_threshold_ua_once_per_nexus() {
        let mut lu = thin_lu();
        lu.soft_threshold_reached();
        lu.soft_threshold_reached();
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x38, 0x07)));
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
        // Not again for A, however often the pool reports it.
        lu.soft_threshold_reached();
        assert_eq!(done(lu.execute(A, &TUR, &[])).status, Status::Good);
        // B got it once too.
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x38, 0x07)));
        assert_eq!(done(lu.execute(B, &TUR, &[])).status, Status::Good);
        // A nexus that logs in later gets it at the next report.
        const C: NexusId = NexusId(3);
        lu.add_nexus(C);
        lu.execute(C, &TUR, &[]);
        lu.soft_threshold_reached();
        assert_eq!(ua_of(lu.execute(C, &TUR, &[])), Some((0x38, 0x07)));
        assert!(!lu.has_unit_attention(A));
        // A nexus that logs out and back in is told again.
        lu.remove_nexus(A);
        lu.add_nexus(A);
        lu.execute(A, &TUR, &[]);
        lu.soft_threshold_reached();
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x38, 0x07)));
        // After a reset, everyone is told again.
        lu.reset_soft_threshold();
        assert!(!lu.has_unit_attention(B));
        lu.soft_threshold_reached();
        assert_eq!(ua_of(lu.execute(A, &TUR, &[])), Some((0x38, 0x07)));
        assert_eq!(ua_of(lu.execute(B, &TUR, &[])), Some((0x38, 0x07)));
        assert_eq!(ua_of(lu.execute(C, &TUR, &[])), Some((0x38, 0x07)));
        // REQUEST SENSE reports it as well.
        lu.reset_soft_threshold();
        lu.soft_threshold_reached();
        let c = done(lu.execute(A, &cdb(&[0x03, 0, 0, 0, 18, 0]), &[]));
        assert_eq!((c.data[2], c.data[12], c.data[13]), (0x06, 0x38, 0x07));
    }

    #[test]
    fn execute_block_commands() {
        let mut lu = lu();
        let read16 = cdb(&[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0]);
        assert_eq!(
            lu.execute(A, &read16, &[]),
            Outcome::Read {
                offset: 1024,
                len: 2048,
                fua: false
            }
        );
        let verify = cdb(&[0x2F, 0x02, 0, 0, 0, 1, 0, 0, 1, 0]);
        assert_eq!(
            lu.execute(A, &verify, &[0; 512]),
            Outcome::Verify {
                offset: 512,
                len: 512,
                compare: true
            }
        );
        let wv = cdb(&[0x8E, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            lu.execute(A, &wv, &[0; 512]),
            Outcome::WriteVerify {
                offset: 0,
                len: 512,
                verify: true
            }
        );
        let sync = cdb(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lu.execute(A, &sync, &[]), Outcome::Flush);
        let oob = cdb(&[0x28, 0, 0, 0, 0x08, 0x00, 0, 0, 1, 0]);
        assert_eq!(
            done(lu.execute(A, &oob, &[])).sense,
            Some(Sense::lba_out_of_range())
        );
        let protect = cdb(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(
            done(lu.execute(A, &protect, &[])).sense,
            Some(Sense::invalid_field_in_cdb(1, Some(7)))
        );
        let too_long = cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0x04, 0x01, 0]);
        assert_eq!(
            done(lu.execute(A, &too_long, &[])).sense,
            Some(Sense::invalid_field_in_cdb(7, None))
        );
    }

    #[test]
    fn complete_through_logical_unit() {
        let mut lu = lu();
        let o = Outcome::Verify {
            offset: 0,
            len: 512,
            compare: true,
        };
        let c = lu.complete(A, &o, IoResult::Miscompare { at: 17 });
        assert_eq!(c.sense, Some(Sense::miscompare(17)));
        assert_eq!(
            lu.complete(A, &o, IoResult::Ok),
            Completion::good(Vec::new())
        );
    }

    #[test]
    fn read_only_lun_rejects_writes() {
        let mut lu = LogicalUnit::new(LunInfo {
            read_only: true,
            ..info()
        });
        let w = cdb(&[0x0A, 0, 0, 0, 1, 0]);
        assert_eq!(
            done(lu.execute(A, &w, &[0; 512])).sense,
            Some(Sense::write_protected())
        );
        let c = done(lu.execute(A, &cdb(&[0x1A, 0x08, 0x3F, 0, 255, 0]), &[]));
        assert_eq!(c.data[2], 0x90);
    }

    #[test]
    fn lun_not_supported_answers() {
        let c = lun_not_supported(&cdb(&[0x12, 0, 0, 0, 36, 0]));
        assert_eq!(
            (c.status, c.data.len(), c.data[0]),
            (Status::Good, 36, 0x7F)
        );
        let c = lun_not_supported(&cdb(&[0x12, 1, 0x80, 0, 255, 0]));
        assert_eq!(c.data, vec![0x7F, 0x80, 0, 0]);
        let c = lun_not_supported(&cdb(&[0x12, 0, 0, 0, 0, 0]));
        assert!(c.data.is_empty());
        let c = lun_not_supported(&cdb(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]));
        assert_eq!(c.data, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let c = lun_not_supported(&cdb(&[0x03, 0, 0, 0, 18, 0]));
        assert_eq!(
            (c.status, c.data.clone()),
            (Status::Good, Sense::lun_not_supported().to_bytes())
        );
        for other in [
            cdb(&[0x00]),
            cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            cdb(&[0x42]),
        ] {
            let c = lun_not_supported(&other);
            assert_eq!(
                (c.status, c.sense),
                (Status::CheckCondition, Some(Sense::lun_not_supported()))
            );
        }
        // A malformed INQUIRY is still a CDB error.
        let c = lun_not_supported(&cdb(&[0x12, 0, 1, 0, 36, 0]));
        assert_eq!(c.sense, Some(Sense::invalid_field_in_cdb(2, None)));
    }

    #[test]
    fn lun_encoding_round_trips() {
        assert_eq!(encode_lun(0), [0; 8]);
        assert_eq!(encode_lun(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(255), [0, 255, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(256), [0x41, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(16383), [0x7F, 0xFF, 0, 0, 0, 0, 0, 0]);
        for lun in [0u64, 1, 255, 256, 1000, 16383] {
            assert_eq!(decode_lun(encode_lun(lun)), lun);
        }
        assert_eq!(decode_lun([0x40, 0x05, 0, 0, 0, 0, 0, 0]), 5);
        assert_ne!(decode_lun([0, 5, 0, 1, 0, 0, 0, 0]), 5);
    }

    proptest::proptest! {
        #[test]
        fn execute_never_panics(
            cdb in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
        ) {
            let mut lu = lu();
            let _ = lu.execute(A, &cdb, &data);
            let _ = lun_not_supported(&cdb);
            let _ = cdb::data_out_length(&cdb, 4096);
        }

        #[test]
        fn mode_select_never_panics(
            ten in proptest::prelude::any::<bool>(),
            params in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        ) {
            let mut lu = lu();
            let c = if ten {
                cdb(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, params.len() as u8, 0])
            } else {
                cdb(&[0x15, 0x10, 0, 0, params.len() as u8, 0])
            };
            let _ = lu.execute(A, &c, &params);
        }

        #[test]
        fn provisioning_requests_stay_inside_the_medium(
            op in proptest::sample::select(vec![0x41u8, 0x93, 0x42]),
            lba in proptest::prelude::any::<u64>(),
            blocks in proptest::prelude::any::<u32>(),
            small in proptest::prelude::any::<bool>(),
            byte1 in proptest::prelude::any::<u8>(),
            descriptors in proptest::collection::vec((0u64..3000, 0u32..1100), 0..20),
        ) {
            let mut lu = thin_lu();
            let lba = if small { lba % 3000 } else { lba };
            let blocks = if small { blocks % 1100 } else { blocks };
            let mut c = [0u8; 16];
            c[0] = op;
            c[1] = byte1 & 0x0F;
            let mut data = vec![0u8; 512];
            match op {
                0x41 => { c[2..6].copy_from_slice(&(lba as u32).to_be_bytes()); c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes()); }
                0x93 => { c[2..10].copy_from_slice(&lba.to_be_bytes()); c[10..14].copy_from_slice(&blocks.to_be_bytes()); }
                _ => {
                    let len = 8 + 16 * descriptors.len();
                    data = vec![0u8; len];
                    data[2..4].copy_from_slice(&((len - 8) as u16).to_be_bytes());
                    for (i, (l, n)) in descriptors.iter().enumerate() {
                        data[8 + 16 * i..16 + 16 * i].copy_from_slice(&l.to_be_bytes());
                        data[16 + 16 * i..20 + 16 * i].copy_from_slice(&n.to_be_bytes());
                    }
                    c[7..9].copy_from_slice(&(len as u16).to_be_bytes());
                }
            }
            let medium = lu.info().num_blocks * 512;
            let ranges = match lu.execute(A, &c, &data) {
                Outcome::WriteSame { offset, len, .. } => vec![(offset, len)],
                Outcome::Unmap { ranges } => ranges,
                _ => vec![],
            };
            for (i, &(offset, len)) in ranges.iter().enumerate() {
                proptest::prop_assert!(len > 0);
                proptest::prop_assert!(offset + len <= medium);
                proptest::prop_assert_eq!(offset % 512, 0);
                proptest::prop_assert_eq!(len % 512, 0);
                if i > 0 {
                    let (po, pl) = ranges[i - 1];
                    proptest::prop_assert!(po + pl < offset);
                }
            }
        }

        #[test]
        fn block_requests_stay_inside_the_medium(
            op in proptest::sample::select(vec![0x08u8, 0x0A, 0x28, 0x2A, 0x2E, 0x2F, 0x88, 0x8A, 0x8E, 0x8F, 0xA8, 0xAA, 0xAE, 0xAF]),
            lba in proptest::prelude::any::<u64>(),
            blocks in proptest::prelude::any::<u32>(),
            small in proptest::prelude::any::<bool>(),
        ) {
            let mut lu = lu();
            let lba = if small { lba % 3000 } else { lba };
            let blocks = if small { blocks % 1100 } else { blocks };
            let mut c = [0u8; 16];
            c[0] = op;
            match cdb::cdb_length(op) {
                Some(6) => { c[1] = (lba >> 16) as u8 & 0x1F; c[2] = (lba >> 8) as u8; c[3] = lba as u8; c[4] = blocks as u8; }
                Some(10) => { c[2..6].copy_from_slice(&(lba as u32).to_be_bytes()); c[7..9].copy_from_slice(&(blocks as u16).to_be_bytes()); }
                Some(12) => { c[2..6].copy_from_slice(&(lba as u32).to_be_bytes()); c[6..10].copy_from_slice(&blocks.to_be_bytes()); }
                _ => { c[2..10].copy_from_slice(&lba.to_be_bytes()); c[10..14].copy_from_slice(&blocks.to_be_bytes()); }
            }
            let data = vec![0u8; 1024 * 512];
            let medium = lu.info().num_blocks * 512;
            let (offset, len) = match lu.execute(A, &c, &data) {
                Outcome::Read { offset, len, .. }
                | Outcome::Write { offset, len, .. }
                | Outcome::Verify { offset, len, .. }
                | Outcome::WriteVerify { offset, len, .. } => (offset, len),
                _ => (0, 0),
            };
            proptest::prop_assert!(offset + len <= medium);
            proptest::prop_assert!(len <= 1024 * 512);
            proptest::prop_assert_eq!(offset % 512, 0);
            proptest::prop_assert_eq!(len % 512, 0);
        }
    }

    #[test]
    fn lun_info_block_geometry() {
        let mut i = info();
        assert_eq!(
            (i.logical_per_physical(), i.logical_per_physical_exponent()),
            (1, 0)
        );
        i.physical_block_size = 4096;
        assert_eq!(
            (i.logical_per_physical(), i.logical_per_physical_exponent()),
            (8, 3)
        );
        i.physical_block_size = 1536;
        assert_eq!(
            (i.logical_per_physical(), i.logical_per_physical_exponent()),
            (3, 0)
        );
        i.physical_block_size = 100;
        assert_eq!(i.logical_per_physical(), 1);
        i.block_size = 0;
        assert_eq!(i.logical_per_physical(), 1);
    }
}
