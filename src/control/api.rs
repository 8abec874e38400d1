//! The admin API's vocabulary: request and response bodies (JSON via serde), the stable error
//! codes, and the [`AdminBackend`] trait the daemon implements and the HTTP server calls.
//!
//! Shared by the server (`control::admin`) and the CLI client (`cli`), so both sides agree on
//! every field by construction.

pub use super::settings::{SnapshotSchedule, VolumeChap};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Stable error codes (the `code` field of an error body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No volume, snapshot or route by that name (HTTP 404).
    NotFound,
    /// The name is taken (HTTP 409).
    AlreadyExists,
    /// A field is malformed or out of range (HTTP 400).
    InvalidArgument,
    /// The object is in use (sessions logged in, a rollback depends on it...) (HTTP 409).
    InUse,
    /// The pool cannot hold it (HTTP 507).
    NoSpace,
    /// The request conflicts with the object's state (HTTP 409).
    Conflict,
    /// A request from another machine without the admin token (HTTP 401).
    Unauthorized,
    /// Anything else; the message says what (HTTP 500).
    Internal,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::InUse | ErrorCode::Conflict => 409,
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NoSpace => 507,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Internal => 500,
        }
    }
}

/// An admin error: a stable code and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{message}")]
pub struct AdminError {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong, naming the object.
    pub message: String,
}

impl AdminError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AdminError {
            code,
            message: message.into(),
        }
    }
}

/// The JSON body of every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: AdminError,
}

/// Pool space and settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Data store capacity in bytes.
    pub size_bytes: u64,
    /// Bytes in extents referenced by some image.
    pub used_bytes: u64,
    /// Bytes free (size - used - reserved).
    pub free_bytes: u64,
    /// Bytes reserved for full (thick) volumes but not yet written.
    pub reserved_bytes: u64,
    /// Extent size in bytes.
    pub extent_size: u32,
    /// Soft threshold, percent used.
    pub soft_threshold_percent: u8,
    /// Number of volumes (including clones).
    pub volumes: u64,
    /// Number of snapshots.
    pub snapshots: u64,
}

/// A volume (or clone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Exported target IQN.
    pub target: String,
    /// Provisioned size in bytes.
    pub size_bytes: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Thin (true) or full.
    pub thin: bool,
    /// Bytes of extents mapped.
    pub mapped_bytes: u64,
    /// Bytes only this volume references (what deleting it would free).
    pub exclusive_bytes: u64,
    /// Bytes the pool holds in reserve for it: a full volume's guarantee (one extent for every
    /// logical extent it does not own alone); 0 for thin volumes.
    #[serde(default)]
    pub reserved_bytes: u64,
    /// The shard thread serving it (its I/O and its connections run there); `None` when not
    /// served.
    #[serde(default)]
    pub shard: Option<usize>,
    /// `VOLUME@SNAP` it was cloned from, if it is a clone.
    pub origin: Option<String>,
    /// Number of snapshots of this volume.
    pub snapshots: u64,
    /// Sessions logged in to it.
    pub sessions: u64,
    /// NAA identifier (hex).
    pub naa: String,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Initiators allowed to log in (empty: every initiator; see `/v1/volumes/{name}/access`).
    #[serde(default)]
    pub initiators: Vec<String>,
    /// Write cache (WCE): on, writes are durable after SYNCHRONIZE CACHE or FUA; off, before
    /// their status.
    #[serde(default = "default_true")]
    pub write_cache: bool,
    /// Scheduled snapshots (see `/v1/volumes/{name}/schedule`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_schedule: Option<SnapshotSchedule>,
    /// The CHAP name of the volume's own credentials (see `/v1/volumes/{name}/chap`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap_user: Option<String>,
    /// QoS limit on READ/WRITE commands per second, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_limit: Option<u64>,
    /// QoS limit on bytes read and written per second, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// Write-protected by the administrator (writes get DATA PROTECT).
    #[serde(default)]
    pub read_only: bool,
}

fn default_true() -> bool {
    true
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// `VOLUME@SNAP`.
    pub name: String,
    /// The volume it belongs to.
    pub volume: String,
    /// Size of the volume when taken.
    pub size_bytes: u64,
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Bytes only this snapshot references.
    pub exclusive_bytes: u64,
    /// Exported read-only as its own target (the IQN), if it is.
    pub export: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
}

/// `POST /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVolume {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Reserve all space now (full) instead of thin.
    #[serde(default)]
    pub full: bool,
    /// Logical block size (default 512).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Write cache (WCE; default: the configuration's `[[volume]]` setting, else on).
    #[serde(default)]
    pub write_cache: Option<bool>,
}

/// `PATCH /v1/volumes/{name}`: the settings to change (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePatch {
    /// Write cache (WCE), changed live: the hosts are told MODE PARAMETERS CHANGED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_cache: Option<bool>,
    /// QoS: READ/WRITE commands per second (0: no limit), applied live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops_limit: Option<u64>,
    /// QoS: bytes read and written per second (0: no limit), applied live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// Write-protect the volume (or lift it), applied live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Make the volume full (reserving a pool extent for every extent it does not own alone;
    /// 409 `no_space` when the pool cannot) or thin (giving the reservation back), applied
    /// live and kept in the catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<bool>,
}

/// `PATCH /v1/pool`: the settings to change (absent: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    /// Soft threshold, percent of the pool used (1..=100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_threshold_percent: Option<u8>,
    /// New size of the pool's data store in bytes (grow only; rounded down to whole extents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// `POST /v1/volumes/{name}/rename`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// The new name.
    pub name: String,
}

/// `POST /v1/volumes/{name}/resize`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    /// New size in bytes (growing only).
    pub size_bytes: u64,
}

/// `POST /v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    /// Volume to snapshot.
    pub volume: String,
    /// Snapshot name (unique per volume).
    pub name: String,
}

/// `POST /v1/snapshot-groups`: snapshots of several volumes taken at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotGroup {
    /// `VOLUME@SNAP` of each, every volume once.
    pub snapshots: Vec<String>,
}

/// `POST /v1/clones`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateClone {
    /// Source `VOLUME@SNAP` (or a volume name: an implicit snapshot is taken).
    pub source: String,
    /// New volume name.
    pub name: String,
}

/// `POST /v1/snapshots/{vol}@{snap}/export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Export (true) or withdraw (false).
    pub enabled: bool,
}

/// `GET /v1/stats[/{volume}]?window=N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsQuery {
    /// Only this volume (`VOLUME@SNAP` for an exported snapshot).
    pub volume: Option<String>,
    /// The last N complete seconds (1..=60); None: since the last reset.
    pub window: Option<u32>,
}

/// Latency percentiles of a set of commands, in nanoseconds (0 when there is none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// Percentiles of each phase of a command (see `docs/admin-api.md`, "Latency phases").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhasePercentiles {
    /// Command received → its data complete and its CmdSN turn come.
    pub data_out: Percentiles,
    /// Ready → executed by the shard (backend I/O queued, or answered).
    pub queued: Percentiles,
    /// Executed → last backend completion.
    pub backend: Percentiles,
    /// Backend done → response fully written to the socket.
    pub send: Percentiles,
}

/// Nanoseconds spent in each phase, summed over commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseSums {
    /// See [`PhasePercentiles::data_out`].
    pub data_out: u64,
    /// See [`PhasePercentiles::queued`].
    pub queued: u64,
    /// See [`PhasePercentiles::backend`].
    pub backend: u64,
    /// See [`PhasePercentiles::send`].
    pub send: u64,
}

/// Figures that never reset while the volume is served (what Prometheus counters report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifetimeStats {
    /// Commands completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Commands whose latency was measured.
    pub timed: u64,
    /// Sum of their total latencies, ns.
    pub latency_ns_sum: u64,
    /// Sum of their phases, ns.
    pub phase_ns_sum: PhaseSums,
    /// Their count by total latency: one count per bound of `latency_bucket_bounds_ns` (above
    /// the previous bound, at most this one), then one for those above every bound.
    #[serde(default)]
    pub latency_buckets: [u64; crate::stats::LATENCY_BUCKETS_NS.len() + 1],
    /// The bucket bounds, ns.
    #[serde(default = "latency_bucket_bounds")]
    pub latency_bucket_bounds_ns: [u64; crate::stats::LATENCY_BUCKETS_NS.len()],
}

fn latency_bucket_bounds() -> [u64; crate::stats::LATENCY_BUCKETS_NS.len()] {
    crate::stats::LATENCY_BUCKETS_NS
}

impl Default for LifetimeStats {
    fn default() -> Self {
        LifetimeStats {
            ops: 0,
            bytes: 0,
            timed: 0,
            latency_ns_sum: 0,
            phase_ns_sum: PhaseSums::default(),
            latency_buckets: Default::default(),
            latency_bucket_bounds_ns: latency_bucket_bounds(),
        }
    }
}

/// One op class of one LUN over the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    /// Commands completed in the window.
    pub ops: u64,
    /// Bytes moved (Data-In + Data-Out) in the window.
    pub bytes: u64,
    /// Commands per second over the window.
    pub iops: f64,
    /// Bytes per second over the window.
    pub bytes_per_second: f64,
    /// Total latency, ns: command PDU received → response fully sent.
    pub latency_ns: Percentiles,
    /// Each phase, ns.
    pub phases_ns: PhasePercentiles,
    /// Since the volume was served.
    pub lifetime: LifetimeStats,
}

/// The statistics of one LUN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LunStatsReport {
    /// Volume name (`VOLUME@SNAP` for an exported snapshot).
    pub volume: String,
    /// Target IQN.
    pub target: String,
    /// LUN number.
    pub lun: u64,
    /// Seconds the window covers (rates are over this).
    pub seconds: f64,
    /// Seconds since the last reset.
    pub since_reset_seconds: f64,
    /// READ commands.
    pub read: ClassStats,
    /// WRITE commands (WRITE AND VERIFY, WRITE SAME included).
    pub write: ClassStats,
    /// Everything else.
    pub other: ClassStats,
    /// Sequential read-ahead since the volume was served.
    #[serde(default)]
    pub read_ahead: ReadAheadStats,
    /// What the volume's QoS limits did.
    #[serde(default)]
    pub qos: QosStats,
}

/// What a LUN's QoS limits did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QosStats {
    /// READ/WRITE commands held back until the limits let them run, since the volume was
    /// served.
    pub held: u64,
    /// Commands held back now.
    pub waiting: u64,
}

/// What sequential read-ahead did for a LUN since it was served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadAheadStats {
    /// Chunks read ahead of sequential readers.
    pub chunks: u64,
    /// Their bytes.
    pub bytes: u64,
    /// READ commands answered from a chunk instead of their own device read.
    pub hits: u64,
}

/// `GET` / `PUT /v1/volumes/{name}/access`: the initiators allowed to log in to a volume's
/// target (empty: every initiator). A PUT replaces the list and closes the sessions of
/// initiators it leaves out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessInfo {
    /// The volume (ignored in a PUT body).
    #[serde(default)]
    pub volume: String,
    /// Allowed initiator names (iqn./eui./naa.).
    pub initiators: Vec<String>,
}

/// `GET`/`PUT`/`DELETE /v1/volumes/{name}/schedule`: a volume's snapshot schedule and the
/// scheduled snapshots it keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// The volume.
    pub volume: String,
    /// The schedule; `None`: no scheduled snapshots.
    pub schedule: Option<SnapshotSchedule>,
    /// When the next scheduled snapshot is due, seconds since the epoch (with a schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<u64>,
    /// The scheduled snapshots (`VOLUME@auto-...`) there are, oldest first.
    #[serde(default)]
    pub snapshots: Vec<String>,
}

/// `GET /v1/snapshots/{vol}@{snap}/diff[?base={vol}@{snap}]`: where a snapshot's data may
/// differ from an older snapshot's (or, without a base, where it has data at all): what an
/// incremental backup reads from the exported snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDiff {
    /// `VOLUME@SNAP`.
    pub snapshot: String,
    /// The snapshot compared with, if any.
    pub base: Option<String>,
    /// The unit of the ranges: the pool's extent size.
    pub extent_size: u64,
    /// Bytes the ranges cover.
    pub changed_bytes: u64,
    /// Byte ranges, in order, adjacent ones merged.
    pub ranges: Vec<ByteRange>,
}

/// A range of a volume, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub offset: u64,
    /// Bytes.
    pub length: u64,
}

/// `GET`/`PUT`/`DELETE /v1/volumes/{name}/chap`: whether a volume's target has CHAP
/// credentials of its own (the secrets are never shown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapInfo {
    /// The volume.
    pub volume: String,
    /// The CHAP name initiators log in with; `None`: the configuration's `[chap]` applies.
    pub user: Option<String>,
    /// The target's CHAP name for mutual CHAP, if set.
    pub target_user: Option<String>,
}

/// `GET /v1/volumes/{name}/reservations`: SCSI reservations held on a volume's LUN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationsInfo {
    /// The volume.
    pub volume: String,
    /// PRgeneration (counts registration changes).
    pub generation: u32,
    /// Persistent reservation registrations.
    pub registrations: Vec<Registration>,
    /// The persistent reservation, if any.
    pub reservation: Option<PersistentReservation>,
    /// The initiator port holding a SCSI-2 RESERVE (6) reservation, if any.
    pub scsi2_holder: Option<String>,
}

/// One registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Initiator port (`NAME,i,0xISID`).
    pub initiator_port: String,
    /// Reservation key, as hex (`0x...`).
    pub key: String,
}

/// The persistent reservation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistentReservation {
    /// Type, as SPC-4 names it.
    #[serde(rename = "type")]
    pub kind: String,
    /// The holder's initiator port; null for the all-registrants types (every registrant holds
    /// it).
    pub holder: Option<String>,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReport {
    /// The window: the last N seconds, or null for since the last reset.
    pub window_seconds: Option<u32>,
    /// Whether latencies are measured (`shoal serve --no-latency-stats` turns them off; counts
    /// are kept either way).
    pub latency_stats: bool,
    /// One entry per served LUN, by volume name.
    pub luns: Vec<LunStatsReport>,
    /// Logins since the target started, by how they ended.
    #[serde(default)]
    pub logins: LoginCounts,
}

/// Logins since the target started (normal and discovery sessions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginCounts {
    /// Reached full feature phase.
    pub accepted: u64,
    /// Refused for their credentials (CHAP; status 0201).
    pub authentication_failed: u64,
    /// Refused by an access list (status 0202).
    pub not_authorized: u64,
    /// Failed for any other reason (a protocol error, an unknown target...).
    pub failed: u64,
}

/// Which op classes a histogram request wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsClass {
    /// READ.
    Read,
    /// WRITE.
    Write,
    /// Other commands.
    Other,
    /// The three, one histogram each.
    All,
}

impl std::str::FromStr for StatsClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(StatsClass::Read),
            "write" => Ok(StatsClass::Write),
            "other" => Ok(StatsClass::Other),
            "all" => Ok(StatsClass::All),
            _ => Err(format!(
                "invalid class {s:?}: expected read, write, other or all"
            )),
        }
    }
}

/// One encoded histogram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodedHistogram {
    /// `read`, `write` or `other`.
    pub class: String,
    /// Its tag in the interval log: `VOLUME.CLASS`.
    pub tag: String,
    /// Commands in it.
    pub count: u64,
    /// Largest value, ns.
    pub max_ns: u64,
    /// HdrHistogram V2 compressed encoding (DEFLATE), base64; values in ns.
    pub histogram: String,
}

/// `GET /v1/stats/{volume}/histogram`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramReport {
    /// The volume.
    pub volume: String,
    /// Its target.
    pub target: String,
    /// The window: the last N seconds, or null for since the last reset.
    pub window_seconds: Option<u32>,
    /// When the window started, seconds since the epoch.
    pub start_time: f64,
    /// Its length in seconds.
    pub seconds: f64,
    /// One per requested class.
    pub histograms: Vec<EncodedHistogram>,
    /// The same histograms as an HdrHistogram interval log (`.hlog` text), one interval each.
    pub interval_log: String,
}

/// `POST /v1/stats/reset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetReport {
    /// The volumes whose figures were reset.
    pub volumes: Vec<String>,
}

/// `GET /v1/sessions`: one session logged in to a volume (or an exported snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Its TSIH: what `DELETE /v1/sessions/{tsih}` names.
    pub tsih: u16,
    /// The volume (`VOLUME@SNAP` for an exported snapshot).
    pub volume: String,
    /// The target IQN.
    pub target: String,
    /// InitiatorName.
    pub initiator: String,
    /// The ISID, 12 hex digits.
    pub isid: String,
    /// InitiatorAlias, if the initiator sent one (ESXi: its host name).
    pub initiator_alias: Option<String>,
    /// The initiator's address and port.
    pub peer: Option<String>,
    /// When it logged in, seconds since the epoch.
    pub logged_in_at: Option<u64>,
    /// CRC32C header digests.
    pub header_digest: bool,
    /// CRC32C data digests.
    pub data_digest: bool,
    /// The shard serving it.
    pub shard: usize,
}

/// What the daemon does for the admin API. Called from the admin thread; each call is one
/// complete operation (committed before it returns) or an error that changed nothing.
pub trait AdminBackend: Send + Sync {
    /// Pool space and settings.
    fn pool_status(&self) -> Result<PoolStatus, AdminError>;
    /// Changes pool settings (stored durably before the answer).
    fn update_pool(&self, req: &PoolSettings) -> Result<PoolStatus, AdminError>;
    /// Every volume.
    fn list_volumes(&self) -> Result<Vec<VolumeInfo>, AdminError>;
    /// One volume.
    fn volume(&self, name: &str) -> Result<VolumeInfo, AdminError>;
    /// Creates a volume.
    fn create_volume(&self, req: &CreateVolume) -> Result<VolumeInfo, AdminError>;
    /// Grows a volume online.
    fn resize_volume(&self, name: &str, req: &Resize) -> Result<VolumeInfo, AdminError>;
    /// Renames a volume (and its snapshots); its target IQN changes with it.
    fn rename_volume(&self, name: &str, req: &Rename) -> Result<VolumeInfo, AdminError> {
        let _ = req;
        Err(AdminError::new(
            ErrorCode::NotFound,
            format!("no volume named {name:?}"),
        ))
    }
    /// The SCSI reservations on a volume's LUN, after clearing them all when `clear`
    /// (administrator override: registrants are told RESERVATIONS PREEMPTED).
    fn reservations(&self, name: &str, clear: bool) -> Result<ReservationsInfo, AdminError> {
        let _ = clear;
        Err(AdminError::new(
            ErrorCode::NotFound,
            format!("no reservation state for volume {name}"),
        ))
    }
    /// Deletes a volume (refused while sessions use it unless `force`).
    fn delete_volume(&self, name: &str, force: bool) -> Result<(), AdminError>;
    /// Changes a volume's settings (stored durably, applied live).
    fn update_volume(&self, name: &str, req: &VolumePatch) -> Result<VolumeInfo, AdminError> {
        let _ = req;
        self.volume(name)
    }
    /// The initiators allowed on a volume.
    fn access(&self, name: &str) -> Result<AccessInfo, AdminError> {
        Err(AdminError::new(
            ErrorCode::NotFound,
            format!("no access list for volume {name}"),
        ))
    }
    /// Replaces the initiators allowed on a volume (stored durably before the answer).
    fn set_access(&self, name: &str, req: &AccessInfo) -> Result<AccessInfo, AdminError> {
        let _ = req;
        self.access(name)
    }
    /// Whether a volume has CHAP credentials of its own.
    fn chap(&self, name: &str) -> Result<ChapInfo, AdminError> {
        Err(AdminError::new(
            ErrorCode::NotFound,
            format!("no CHAP settings for volume {name}"),
        ))
    }
    /// Sets (`None`: removes) a volume's CHAP credentials (stored durably before the answer;
    /// new logins use them, live sessions are unaffected).
    fn set_chap(&self, name: &str, chap: Option<VolumeChap>) -> Result<ChapInfo, AdminError> {
        let _ = chap;
        self.chap(name)
    }
    /// A volume's snapshot schedule.
    fn snapshot_schedule(&self, name: &str) -> Result<ScheduleInfo, AdminError> {
        Err(AdminError::new(
            ErrorCode::NotFound,
            format!("no snapshot schedule for volume {name}"),
        ))
    }
    /// Sets (`None`: removes) a volume's snapshot schedule (stored durably before the answer).
    fn set_snapshot_schedule(
        &self,
        name: &str,
        schedule: Option<SnapshotSchedule>,
    ) -> Result<ScheduleInfo, AdminError> {
        let _ = schedule;
        self.snapshot_schedule(name)
    }
    /// Where snapshot `volume@snapshot` differs from snapshot `base` (`(volume, snapshot)`), or
    /// where it has data when there is no base.
    fn snapshot_diff(
        &self,
        volume: &str,
        snapshot: &str,
        base: Option<(&str, &str)>,
    ) -> Result<SnapshotDiff, AdminError> {
        let _ = base;
        Err(AdminError::new(
            ErrorCode::NotFound,
            format!("no snapshot named {volume}@{snapshot}"),
        ))
    }
    /// Snapshots, of one volume or all.
    fn list_snapshots(&self, volume: Option<&str>) -> Result<Vec<SnapshotInfo>, AdminError>;
    /// Takes a snapshot.
    fn create_snapshot(&self, req: &CreateSnapshot) -> Result<SnapshotInfo, AdminError>;
    /// Takes snapshots of several volumes at one instant (crash-consistent together).
    fn create_snapshot_group(
        &self,
        req: &CreateSnapshotGroup,
    ) -> Result<Vec<SnapshotInfo>, AdminError>;
    /// Deletes a snapshot.
    fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<(), AdminError>;
    /// Rolls a volume back to one of its snapshots (volume offline to initiators).
    fn rollback(&self, volume: &str, snapshot: &str) -> Result<VolumeInfo, AdminError>;
    /// Exports a snapshot read-only as its own target, or withdraws it.
    fn export_snapshot(
        &self,
        volume: &str,
        snapshot: &str,
        req: &Export,
    ) -> Result<SnapshotInfo, AdminError>;
    /// Creates a writable clone.
    fn create_clone(&self, req: &CreateClone) -> Result<VolumeInfo, AdminError>;
    /// Latency and throughput statistics of every served LUN, or of one volume's.
    fn stats(&self, query: &StatsQuery) -> Result<StatsReport, AdminError>;
    /// One volume's latency histograms in HdrHistogram's encodings.
    fn stats_histogram(
        &self,
        volume: &str,
        class: StatsClass,
        window: Option<u32>,
    ) -> Result<HistogramReport, AdminError>;
    /// Starts the since-reset figures and windows anew, of every LUN or of one volume.
    fn reset_stats(&self, volume: Option<&str>) -> Result<ResetReport, AdminError>;
    /// The sessions logged in, to every volume or to one.
    fn sessions(&self, volume: Option<&str>) -> Result<Vec<SessionInfo>, AdminError>;
    /// The number of sessions logged in to each volume, every volume listed (0 when none), by
    /// name: what `/metrics` scrapes, so it must be cheap — it reads no map and asks no shard
    /// (unlike [`AdminBackend::list_volumes`], whose usage figures walk every served map).
    fn session_counts(&self) -> Result<Vec<(String, u64)>, AdminError>;
    /// Ends a session: its connections are closed (its initiator may log in again unless an
    /// access list or CHAP now refuses it). `NotFound` when no session has this TSIH.
    fn drop_session(&self, tsih: u16) -> Result<(), AdminError>;
}
