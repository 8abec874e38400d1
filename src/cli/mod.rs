//! The admin CLI: `shoal volume|snapshot|clone|pool|stats ...`, a client of the daemon's admin
//! HTTP/JSON API (see `docs/admin-api.md`).
//!
//! `main.rs` embeds [`CliCommand`] next to `serve` and flattens [`AdminArgs`] into its top-level
//! options; [`run`] executes a parsed command and returns the process exit code:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | success |
//! | 1 | the daemon refused the operation (`shoal: <message> (<code>)` on stderr) |
//! | 2 | bad usage or a bad argument (clap's errors exit 2 as well) |
//! | 3 | the daemon cannot be reached (no `admin.addr`, connection refused, not a shoal API) |
//!
//! The daemon is found through `--admin URL`, else through `<data-dir>/admin.addr`.

use crate::config::{self, ConfigError};
use crate::control::admin;
use crate::control::api::{
    AccessInfo, AdminError, ChapInfo, CreateClone, CreateSnapshot, CreateSnapshotGroup,
    CreateVolume, ErrorBody, ErrorCode, Export, PoolSettings, PoolStatus, Rename, ReservationsInfo,
    ResetReport, Resize, ScheduleInfo, SessionInfo, SnapshotDiff, SnapshotInfo, SnapshotSchedule,
    StatsQuery, StatsReport, VolumeChap, VolumeInfo, VolumePatch,
};
use crate::control::{schedule, settings};
use clap::Subcommand;
use serde::de::DeserializeOwned;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;
use thiserror::Error;

mod human;
use human::*;
pub use human::{format_time, human_size};

/// Options shared by every admin command; `main.rs` flattens them into its top-level parser
/// (they are global, so they may be given before or after the subcommand).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct AdminArgs {
    /// Admin API URL of the running daemon, e.g. http://127.0.0.1:7000 (default: read from
    /// `<DIR>/admin.addr`).
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// Print the admin API's JSON instead of tables (admin commands).
    #[arg(long, global = true)]
    pub json: bool,
}

/// The admin commands, embedded in `shoal`'s command set next to `serve`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CliCommand {
    /// Create, list, show, change, rename, resize and delete volumes; their access, CHAP, QoS and reservations.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Create, list, delete, roll back to and export snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create writable clones of snapshots.
    #[command(subcommand, name = "clone")]
    Clones(CloneCommand),
    /// Pool space and settings.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Latency and throughput per volume: IOPS, MB/s and latency percentiles (µs).
    Stats(StatsArgs),
    /// The sessions logged in (initiator, address, since when), and ending one.
    #[command(subcommand)]
    Session(SessionCommand),
}

/// `shoal session ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum SessionCommand {
    /// List the sessions logged in: volume, initiator and its alias, address, TSIH, since when.
    List {
        /// Only the sessions to this volume (VOLUME@SNAP for an exported snapshot).
        #[arg(long, value_name = "VOLUME")]
        volume: Option<String>,
    },
    /// End a session (its connections are closed; the initiator may log in again unless an
    /// access list or CHAP now refuses it).
    Drop {
        /// The session's TSIH, as `shoal session list` shows it.
        tsih: u16,
    },
}

/// `shoal stats [VOLUME] [--window N] [--watch [--count N]] [--reset]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct StatsArgs {
    /// Only this volume (VOLUME@SNAP for an exported snapshot).
    #[arg(value_name = "VOLUME")]
    pub volume: Option<String>,
    /// Over the last N complete seconds (1-60) instead of since the last reset.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=60))]
    pub window: Option<u32>,
    /// Refresh every second until Ctrl-C, showing the last second (or --window N).
    #[arg(long, conflicts_with = "reset")]
    pub watch: bool,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Reset the statistics (of VOLUME, or of every volume) instead of showing them.
    #[arg(long)]
    pub reset: bool,
}

/// `shoal volume ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (thin unless --full), exported as iqn.2026-11.dev.shoal:NAME.
    Create {
        /// Volume name (lower-case letters, digits, '-', '.').
        #[arg(value_name = "NAME")]
        name: String,
        /// Size, e.g. 10G, 512M, 1T (binary units) or bytes.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        /// Reserve all its space now (never out of space) instead of thin provisioning.
        #[arg(long)]
        full: bool,
        /// Logical block size in bytes: 512 (default) or 4096.
        #[arg(long, value_name = "BYTES", value_parser = parse_block_size_arg)]
        block_size: Option<u32>,
        /// Write cache off: every write durable before its status (for hosts that never flush,
        /// such as ESXi; see docs/vmware.md).
        #[arg(long)]
        no_write_cache: bool,
    },
    /// Change a volume's settings, live (hosts are told MODE PARAMETERS CHANGED).
    Set {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Write cache on or off.
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        write_cache: Option<bool>,
        /// QoS: most READ/WRITE commands per second (0: no limit).
        #[arg(long, value_name = "N")]
        iops_limit: Option<u64>,
        /// QoS: most bytes read and written per second, e.g. 200M (0: no limit).
        #[arg(long, value_name = "SIZE", value_parser = parse_rate_arg)]
        bandwidth_limit: Option<u64>,
        /// Write-protect the volume (writes get DATA PROTECT), or lift it.
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        read_only: Option<bool>,
        /// Thin provisioning, or full: space reserved now for every extent the volume does not
        /// own alone, so it never runs out (refused when the pool cannot reserve it).
        #[arg(long, value_name = "thin|full", value_parser = parse_provisioning)]
        provisioning: Option<bool>,
    },
    /// List volumes (and clones).
    List,
    /// Show one volume.
    Show {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Show the SCSI reservations on a served volume: persistent reservation registrations,
    /// the reservation and its holder, a RESERVE (6) holder.
    Reservations {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Clear them all first (for a dead host's reservation; registrants are told
        /// RESERVATIONS PREEMPTED).
        #[arg(long)]
        clear: bool,
    },
    /// Show or set the initiators allowed to log in to a volume (LUN masking); without
    /// --allow or --any, shows the list. Sessions of initiators a new list leaves out are
    /// closed.
    Access {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Allow only these initiators (repeatable; replaces the list).
        #[arg(long, value_name = "IQN", conflicts_with = "any")]
        allow: Vec<String>,
        /// Allow every initiator (removes the list).
        #[arg(long)]
        any: bool,
    },
    /// Show or set CHAP credentials of the volume's own (its target, and its exported
    /// snapshots', then ask them instead of the configuration's `[chap]`). Secrets are read from
    /// files, not the command line. Without options, shows them (never the secrets). Sessions
    /// already logged in stay.
    Chap {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// CHAP name initiators log in with.
        #[arg(long, value_name = "NAME", requires = "secret_file")]
        user: Option<String>,
        /// File holding their secret (12 to 255 bytes; a trailing newline is dropped).
        #[arg(long, value_name = "FILE", requires = "user")]
        secret_file: Option<PathBuf>,
        /// The target's CHAP name, for mutual CHAP.
        #[arg(long, value_name = "NAME", requires_all = ["user", "target_secret_file"])]
        target_user: Option<String>,
        /// File holding the target's secret, for mutual CHAP.
        #[arg(long, value_name = "FILE", requires = "target_user")]
        target_secret_file: Option<PathBuf>,
        /// Remove the volume's credentials (the configuration's apply again).
        #[arg(long, conflicts_with_all = ["user", "secret_file", "target_user", "target_secret_file"])]
        off: bool,
    },
    /// Rename a volume and its snapshots (its target IQN changes: no initiator may be logged
    /// in, and its snapshots must not be exported).
    Rename {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// The new name.
        #[arg(value_name = "NEW-NAME")]
        new_name: String,
    },
    /// Grow a volume online.
    Resize {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// New size, e.g. 20G.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
    },
    /// Delete a volume (refused while initiators are logged in, unless --force).
    Delete {
        /// Volume name.
        #[arg(value_name = "NAME")]
        name: String,
        /// Delete even while sessions use it.
        #[arg(long)]
        force: bool,
    },
}

/// `shoal snapshot ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot of a volume; of several at one instant (crash-consistent together:
    /// their new writes are held a moment), given several.
    Create {
        /// VOLUME@SNAP, one or more (each volume once).
        #[arg(value_name = "VOLUME@SNAP", required = true, num_args = 1..)]
        snapshots: Vec<SnapshotRef>,
    },
    /// List snapshots, of one volume or all.
    List {
        /// Only this volume's snapshots.
        #[arg(value_name = "VOLUME")]
        volume: Option<String>,
    },
    /// Delete a snapshot.
    Delete {
        /// VOLUME@SNAP.
        #[arg(value_name = "VOLUME@SNAP")]
        snapshot: SnapshotRef,
    },
    /// Roll a volume back to one of its snapshots (no initiator may be logged in to it).
    Rollback {
        /// VOLUME@SNAP.
        #[arg(value_name = "VOLUME@SNAP")]
        snapshot: SnapshotRef,
    },
    /// Export a snapshot read-only as its own target (or withdraw it with --disable).
    Export {
        /// VOLUME@SNAP.
        #[arg(value_name = "VOLUME@SNAP")]
        snapshot: SnapshotRef,
        /// Withdraw the export instead.
        #[arg(long)]
        disable: bool,
    },
    /// Where a snapshot's data may differ from an older snapshot's (--base), or where it has
    /// data at all: the byte ranges an incremental (or full) backup reads from the exported
    /// snapshot.
    Diff {
        /// VOLUME@SNAP.
        #[arg(value_name = "VOLUME@SNAP")]
        snapshot: SnapshotRef,
        /// The older snapshot (of any volume) to compare with.
        #[arg(long, value_name = "VOLUME@SNAP")]
        base: Option<SnapshotRef>,
    },
    /// Show or set a volume's snapshot schedule: a snapshot (`VOLUME@auto-YYYYMMDD-HHMMSS`)
    /// every DURATION, the newest N kept, older scheduled ones deleted (snapshots taken by hand
    /// are never touched). Without options, shows it.
    Schedule {
        /// Volume name.
        #[arg(value_name = "VOLUME")]
        volume: String,
        /// Interval, e.g. 15m, 1h, 1d.
        #[arg(long, value_name = "DURATION", value_parser = schedule::parse_interval, requires = "keep")]
        every: Option<u64>,
        /// Scheduled snapshots kept.
        #[arg(long, value_name = "N", requires = "every",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(settings::MAX_KEEP)))]
        keep: Option<u32>,
        /// Remove the schedule (the scheduled snapshots stay).
        #[arg(long, conflicts_with_all = ["every", "keep"])]
        off: bool,
    },
}

/// `shoal clone ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CloneCommand {
    /// Create a writable clone of a snapshot (or of a volume, through an implicit snapshot).
    Create {
        /// VOLUME@SNAP to clone (or a VOLUME).
        #[arg(value_name = "VOLUME@SNAP", value_parser = parse_clone_source)]
        source: String,
        /// Name of the new volume.
        #[arg(value_name = "NEW-VOLUME")]
        name: String,
    },
}

/// `shoal pool ...`.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum PoolCommand {
    /// Pool size, used and free space, settings.
    Status,
    /// Change pool settings: grow it online, set its soft threshold.
    Set {
        /// Soft threshold: percent of the pool used past which initiators are warned (a THIN
        /// PROVISIONING SOFT THRESHOLD REACHED unit attention), 1..=100.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
        soft_threshold: Option<u8>,
        /// Grow the pool's data store to SIZE (e.g. 200G), online: a file grows in place, a
        /// device must have been grown first. Up to 4x the size the daemon started with.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: Option<u64>,
    },
}

/// A `VOLUME@SNAP` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The volume.
    pub volume: String,
    /// The snapshot's name within it.
    pub snapshot: String,
}

impl FromStr for SnapshotRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('@') {
            Some((v, n)) if !v.is_empty() && !n.is_empty() => Ok(SnapshotRef {
                volume: v.into(),
                snapshot: n.into(),
            }),
            _ => Err("expected VOLUME@SNAP, e.g. vm1@monday".into()),
        }
    }
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.volume, self.snapshot)
    }
}

fn size_reason(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// clap parser for sizes (`10G`...), with `config::parse_size`'s rules.
/// A byte rate: a size (`200M`), or 0 for no limit.
fn parse_rate_arg(s: &str) -> Result<u64, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    parse_size_arg(s)
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    config::parse_size(s).map_err(size_reason)
}

/// `thin` or `full`: whether the volume is full.
fn parse_provisioning(s: &str) -> Result<bool, String> {
    match s {
        "full" => Ok(true),
        "thin" => Ok(false),
        _ => Err("thin or full".to_string()),
    }
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("on or off".to_string()),
    }
}

fn parse_block_size_arg(s: &str) -> Result<u32, String> {
    let n = config::parse_size(s).map_err(size_reason)?;
    u32::try_from(n).map_err(|_| "too large".to_string())
}

fn parse_clone_source(s: &str) -> Result<String, String> {
    if s.is_empty() || (s.contains('@') && s.parse::<SnapshotRef>().is_err()) {
        return Err("expected VOLUME@SNAP (or VOLUME), e.g. golden@v1".into());
    }
    Ok(s.into())
}

/// A failed admin command. [`CliError::exit_code`] gives the process exit code.
#[derive(Debug, Error)]
pub enum CliError {
    /// Bad usage or argument (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No `admin.addr` in the data directory (exit 3).
    #[error(
        "no running shoal daemon found for data directory {} (missing {}): start `shoal serve` or pass --admin URL",
        data_dir.display(),
        file.display()
    )]
    NoDaemon {
        /// The data directory.
        data_dir: PathBuf,
        /// The address file looked for.
        file: PathBuf,
    },
    /// `admin.addr` exists but cannot be used (exit 3).
    #[error("cannot use {}: {reason}", file.display())]
    AddrFile {
        /// The address file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// The daemon did not answer (exit 3).
    #[error("cannot reach the shoal daemon at {url} ({via}): {reason}")]
    Unreachable {
        /// Base URL tried.
        url: String,
        /// Where the URL came from.
        via: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// Something answered, but not as the admin API does (exit 3).
    #[error("unexpected answer from {url} (is it a shoal admin API?): {reason}")]
    BadResponse {
        /// Base URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The daemon refused the operation (exit 1).
    #[error("{} ({})", .0.message, code_name(.0.code))]
    Refused(AdminError),
}

impl CliError {
    /// The process exit code for this error: 1 refused, 2 usage, 3 daemon unreachable.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => 1,
            CliError::Usage(_) => 2,
            CliError::NoDaemon { .. }
            | CliError::AddrFile { .. }
            | CliError::Unreachable { .. }
            | CliError::BadResponse { .. } => 3,
        }
    }
}

/// The stable name of an error code, as in the JSON (`already_exists`).
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

// ---------------------------------------------------------------------------------------------
// Client

/// A response of the admin API: the decoded value and the JSON text as received.
#[derive(Debug, Clone)]
pub struct Fetched<T> {
    /// Decoded body.
    pub value: T,
    /// The body as the daemon sent it.
    pub json: String,
}

/// A typed client of the admin API.
#[derive(Debug)]
pub struct AdminClient {
    base: String,
    via: String,
    agent: ureq::Agent,
    /// Sent as `Authorization: Bearer ...` (a daemon on another machine asks for it).
    token: Option<String>,
}

/// Environment variable holding the admin token for a daemon on another machine.
pub const TOKEN_ENV: &str = "SHOAL_ADMIN_TOKEN";
/// Environment variable naming a file that holds it.
pub const TOKEN_FILE_ENV: &str = "SHOAL_ADMIN_TOKEN_FILE";

impl AdminClient {
    /// A client of the API at `url` (`http://HOST:PORT`; the scheme may be left out).
    pub fn new(url: &str) -> Result<AdminClient, CliError> {
        Ok(AdminClient::with_base(
            normalize_url(url)?,
            "--admin".into(),
        ))
    }

    /// A client for the daemon serving `data_dir`, or at `admin` when given.
    pub fn locate(data_dir: &Path, admin: Option<&str>) -> Result<AdminClient, CliError> {
        let token = Self::token_from_env()?;
        let client = match admin {
            Some(url) => AdminClient::new(url),
            None => {
                let addr = admin::read_addr_file(data_dir)?;
                Ok(AdminClient::with_base(
                    format!("http://{addr}"),
                    format!(
                        "address from {}; is `shoal serve` still running?",
                        admin::addr_file(data_dir).display()
                    ),
                ))
            }
        };
        client.map(|c| c.with_token(token))
    }

    fn with_base(base: String, via: String) -> AdminClient {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_write(Duration::from_secs(60))
            .timeout_read(Duration::from_secs(600))
            .redirects(0)
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build();
        AdminClient {
            base,
            via,
            agent,
            token: None,
        }
    }

    /// Sends `token` with every request (`Authorization: Bearer TOKEN`).
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token;
        self
    }

    /// The admin token from the environment: `SHOAL_ADMIN_TOKEN`, else the file
    /// `SHOAL_ADMIN_TOKEN_FILE` names (one trailing newline dropped).
    pub fn token_from_env() -> Result<Option<String>, CliError> {
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            return Ok(Some(token.trim().to_string()));
        }
        let Ok(file) = std::env::var(TOKEN_FILE_ENV) else {
            return Ok(None);
        };
        let token = crate::config::read_secret_file(std::path::Path::new(&file)).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the admin token in {file} ({TOKEN_FILE_ENV}): {e}"
            ))
        })?;
        Ok(Some(token))
    }

    /// The API's base URL, e.g. `http://127.0.0.1:7000`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends a request; returns the body of a 2xx response.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&dyn erased::Json>,
    ) -> Result<String, CliError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.agent.request(method, &url);
        if let Some(token) = &self.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        let res = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_json()),
            None => req.call(),
        };
        match res {
            Ok(resp) => resp.into_string().map_err(|e| CliError::BadResponse {
                url: self.base.clone(),
                reason: format!("cannot read the response: {e}"),
            }),
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&text) {
                    Ok(body) => Err(CliError::Refused(body.error)),
                    Err(_) => Err(CliError::BadResponse {
                        url: self.base.clone(),
                        reason: format!("HTTP {status} without an admin error body"),
                    }),
                }
            }
            Err(ureq::Error::Transport(t)) => match t.kind() {
                ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => Err(
                    CliError::Usage(format!("invalid admin URL {}: {t}", self.base)),
                ),
                _ => {
                    let reason = std::error::Error::source(&t)
                        .map(|s| s.to_string())
                        .or_else(|| t.message().map(str::to_owned))
                        .unwrap_or_else(|| t.to_string());
                    Err(CliError::Unreachable {
                        url: self.base.clone(),
                        via: self.via.clone(),
                        reason,
                    })
                }
            },
        }
    }

    fn fetch<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&dyn erased::Json>,
    ) -> Result<Fetched<T>, CliError> {
        let json = self.send(method, path, body)?;
        let value = serde_json::from_str(&json).map_err(|e| CliError::BadResponse {
            url: self.base.clone(),
            reason: format!("cannot decode the response to {method} {path}: {e}"),
        })?;
        Ok(Fetched { value, json })
    }

    /// `GET /v1/pool`.
    pub fn pool_status(&self) -> Result<Fetched<PoolStatus>, CliError> {
        self.fetch("GET", "/v1/pool", None)
    }

    /// `PATCH /v1/pool`.
    pub fn update_pool(&self, req: &PoolSettings) -> Result<Fetched<PoolStatus>, CliError> {
        self.fetch("PATCH", "/v1/pool", Some(req))
    }

    /// `GET /v1/volumes`.
    pub fn list_volumes(&self) -> Result<Fetched<Vec<VolumeInfo>>, CliError> {
        self.fetch("GET", "/v1/volumes", None)
    }

    /// `GET /v1/volumes/{name}`.
    pub fn volume(&self, name: &str) -> Result<Fetched<VolumeInfo>, CliError> {
        self.fetch("GET", &format!("/v1/volumes/{}", encode(name)), None)
    }

    /// `POST /v1/volumes`.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<Fetched<VolumeInfo>, CliError> {
        self.fetch("POST", "/v1/volumes", Some(req))
    }

    /// `GET` (or with `clear`, `DELETE`) `/v1/volumes/{name}/reservations`.
    pub fn reservations(
        &self,
        name: &str,
        clear: bool,
    ) -> Result<Fetched<ReservationsInfo>, CliError> {
        let path = format!("/v1/volumes/{}/reservations", encode(name));
        self.fetch(if clear { "DELETE" } else { "GET" }, &path, None)
    }

    /// `PATCH /v1/volumes/{name}`.
    pub fn update_volume(
        &self,
        name: &str,
        req: &VolumePatch,
    ) -> Result<Fetched<VolumeInfo>, CliError> {
        let path = format!("/v1/volumes/{}", encode(name));
        self.fetch("PATCH", &path, Some(req))
    }

    /// `GET /v1/volumes/{name}/access`, or with `set`, a `PUT` of that list first.
    pub fn access(
        &self,
        name: &str,
        set: Option<Vec<String>>,
    ) -> Result<Fetched<AccessInfo>, CliError> {
        let path = format!("/v1/volumes/{}/access", encode(name));
        match set {
            None => self.fetch("GET", &path, None),
            Some(initiators) => {
                let req = AccessInfo {
                    volume: name.to_owned(),
                    initiators,
                };
                self.fetch("PUT", &path, Some(&req))
            }
        }
    }

    /// `GET` (`change` None), `PUT` (Some(Some)) or `DELETE` (Some(None))
    /// `/v1/volumes/{name}/chap`.
    pub fn chap(
        &self,
        name: &str,
        change: Option<Option<VolumeChap>>,
    ) -> Result<Fetched<ChapInfo>, CliError> {
        let path = format!("/v1/volumes/{}/chap", encode(name));
        match change {
            None => self.fetch("GET", &path, None),
            Some(Some(chap)) => self.fetch("PUT", &path, Some(&chap)),
            Some(None) => self.fetch("DELETE", &path, None),
        }
    }

    /// `GET` (`change` None), `PUT` (Some(Some)) or `DELETE` (Some(None))
    /// `/v1/volumes/{name}/schedule`.
    pub fn schedule(
        &self,
        name: &str,
        change: Option<Option<SnapshotSchedule>>,
    ) -> Result<Fetched<ScheduleInfo>, CliError> {
        let path = format!("/v1/volumes/{}/schedule", encode(name));
        match change {
            None => self.fetch("GET", &path, None),
            Some(Some(schedule)) => self.fetch("PUT", &path, Some(&schedule)),
            Some(None) => self.fetch("DELETE", &path, None),
        }
    }

    /// `POST /v1/volumes/{name}/rename`.
    pub fn rename_volume(&self, name: &str, req: &Rename) -> Result<Fetched<VolumeInfo>, CliError> {
        let path = format!("/v1/volumes/{}/rename", encode(name));
        self.fetch("POST", &path, Some(req))
    }

    /// `POST /v1/volumes/{name}/resize`.
    pub fn resize_volume(&self, name: &str, req: &Resize) -> Result<Fetched<VolumeInfo>, CliError> {
        let path = format!("/v1/volumes/{}/resize", encode(name));
        self.fetch("POST", &path, Some(req))
    }

    /// `DELETE /v1/volumes/{name}?force=...`.
    pub fn delete_volume(&self, name: &str, force: bool) -> Result<(), CliError> {
        let path = format!("/v1/volumes/{}?force={force}", encode(name));
        self.send("DELETE", &path, None).map(drop)
    }

    /// `GET /v1/sessions[?volume=V]`.
    pub fn sessions(&self, volume: Option<&str>) -> Result<Fetched<Vec<SessionInfo>>, CliError> {
        let path = match volume {
            Some(v) => format!("/v1/sessions?volume={}", encode(v)),
            None => "/v1/sessions".into(),
        };
        self.fetch("GET", &path, None)
    }

    /// `DELETE /v1/sessions/{tsih}`.
    pub fn drop_session(&self, tsih: u16) -> Result<(), CliError> {
        self.send("DELETE", &format!("/v1/sessions/{tsih}"), None)
            .map(drop)
    }

    /// `GET /v1/snapshots[?volume=V]`.
    pub fn list_snapshots(
        &self,
        volume: Option<&str>,
    ) -> Result<Fetched<Vec<SnapshotInfo>>, CliError> {
        let path = match volume {
            Some(v) => format!("/v1/snapshots?volume={}", encode(v)),
            None => "/v1/snapshots".into(),
        };
        self.fetch("GET", &path, None)
    }

    /// `POST /v1/snapshots`.
    pub fn create_snapshot(&self, req: &CreateSnapshot) -> Result<Fetched<SnapshotInfo>, CliError> {
        self.fetch("POST", "/v1/snapshots", Some(req))
    }

    /// `POST /v1/snapshot-groups`.
    pub fn create_snapshot_group(
        &self,
        req: &CreateSnapshotGroup,
    ) -> Result<Fetched<Vec<SnapshotInfo>>, CliError> {
        self.fetch("POST", "/v1/snapshot-groups", Some(req))
    }

    /// `DELETE /v1/snapshots/{vol}@{snap}`.
    pub fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<(), CliError> {
        let path = format!("/v1/snapshots/{}", encode_snapshot(volume, snapshot));
        self.send("DELETE", &path, None).map(drop)
    }

    /// `POST /v1/snapshots/{vol}@{snap}/rollback`.
    pub fn rollback(&self, volume: &str, snapshot: &str) -> Result<Fetched<VolumeInfo>, CliError> {
        let path = format!(
            "/v1/snapshots/{}/rollback",
            encode_snapshot(volume, snapshot)
        );
        self.fetch("POST", &path, None)
    }

    /// `POST /v1/snapshots/{vol}@{snap}/export`.
    pub fn export_snapshot(
        &self,
        volume: &str,
        snapshot: &str,
        req: &Export,
    ) -> Result<Fetched<SnapshotInfo>, CliError> {
        let path = format!("/v1/snapshots/{}/export", encode_snapshot(volume, snapshot));
        self.fetch("POST", &path, Some(req))
    }

    /// `GET /v1/snapshots/{vol}@{snap}/diff[?base=...]`.
    pub fn snapshot_diff(
        &self,
        volume: &str,
        snapshot: &str,
        base: Option<(&str, &str)>,
    ) -> Result<Fetched<SnapshotDiff>, CliError> {
        let mut path = format!("/v1/snapshots/{}/diff", encode_snapshot(volume, snapshot));
        if let Some((v, s)) = base {
            path += &format!("?base={}", encode_snapshot(v, s));
        }
        self.fetch("GET", &path, None)
    }

    /// `POST /v1/clones`.
    pub fn create_clone(&self, req: &CreateClone) -> Result<Fetched<VolumeInfo>, CliError> {
        self.fetch("POST", "/v1/clones", Some(req))
    }

    /// `GET /v1/stats[/{volume}][?window=N]`.
    pub fn stats(&self, query: &StatsQuery) -> Result<Fetched<StatsReport>, CliError> {
        let mut path = match &query.volume {
            Some(v) => format!("/v1/stats/{}", encode(v)),
            None => "/v1/stats".into(),
        };
        if let Some(n) = query.window {
            path.push_str(&format!("?window={n}"));
        }
        self.fetch("GET", &path, None)
    }

    /// `POST /v1/stats/reset[?volume=V]`.
    pub fn reset_stats(&self, volume: Option<&str>) -> Result<Fetched<ResetReport>, CliError> {
        let path = match volume {
            Some(v) => format!("/v1/stats/reset?volume={}", encode(v)),
            None => "/v1/stats/reset".into(),
        };
        self.fetch("POST", &path, None)
    }
}

/// Request bodies behind a trait object, so `send` needs no generic parameter.
mod erased {
    pub trait Json {
        fn to_json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> String {
            // Serializing these plain structs cannot fail.
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Checks and completes an `--admin` URL: `http://HOST:PORT[/prefix]`, scheme optional.
fn normalize_url(url: &str) -> Result<String, CliError> {
    let bad = |why: &str| CliError::Usage(format!("invalid --admin URL {url:?}: {why}"));
    let trimmed = url.trim();
    let rest = match trimmed.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return Err(bad("only http:// is supported")),
        None => trimmed,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if rest.contains(['?', '#', ' ']) {
        return Err(bad("expected http://HOST:PORT"));
    }
    Ok(format!("http://{rest}"))
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn encode_snapshot(volume: &str, snapshot: &str) -> String {
    format!("{}@{}", encode(volume), encode(snapshot))
}

// ---------------------------------------------------------------------------------------------
// Commands

/// Runs an admin command: prints its output on stdout, or `shoal: <error>` on stderr, and
/// returns the exit code (0 ok, 1 refused by the daemon, 2 bad argument, 3 daemon unreachable).
///
/// `data_dir` is `shoal --data` (default `./shoal-data`); `admin` is `--admin URL`, which takes
/// precedence over `<data_dir>/admin.addr`; `json` is `--json`.
pub fn run(data_dir: &Path, admin: Option<&str>, json: bool, cmd: CliCommand) -> ExitCode {
    let result = match &cmd {
        CliCommand::Stats(args) if args.watch => {
            use std::io::IsTerminal;
            let stdout = std::io::stdout();
            let clear = stdout.is_terminal() && !json;
            AdminClient::locate(data_dir, admin)
                .and_then(|client| watch_stats(&client, args, json, clear, &mut stdout.lock()))
                .map(|()| String::new())
        }
        _ => execute(data_dir, admin, json, &cmd),
    };
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`shoal volume list | head -1`) is not an error worth reporting.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "shoal: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs an admin command and returns what [`run`] would print on stdout.
pub fn execute(
    data_dir: &Path,
    admin: Option<&str>,
    json: bool,
    cmd: &CliCommand,
) -> Result<String, CliError> {
    let client = AdminClient::locate(data_dir, admin)?;
    let out = match cmd {
        CliCommand::Volume(cmd) => match cmd {
            VolumeCommand::Create {
                name,
                size,
                full,
                block_size,
                no_write_cache,
            } => {
                let req = CreateVolume {
                    name: name.clone(),
                    size_bytes: *size,
                    full: *full,
                    block_size: *block_size,
                    write_cache: no_write_cache.then_some(false),
                };
                render(json, &client.create_volume(&req)?, show_volume)
            }
            VolumeCommand::Set {
                name,
                write_cache,
                iops_limit,
                bandwidth_limit,
                read_only,
                provisioning,
            } => {
                let req = VolumePatch {
                    write_cache: *write_cache,
                    iops_limit: *iops_limit,
                    bandwidth_limit: *bandwidth_limit,
                    read_only: *read_only,
                    full: *provisioning,
                };
                render(json, &client.update_volume(name, &req)?, show_volume)
            }
            VolumeCommand::List => render(json, &client.list_volumes()?, |v| volume_table(v)),
            VolumeCommand::Show { name } => render(json, &client.volume(name)?, show_volume),
            VolumeCommand::Reservations { name, clear } => {
                render(json, &client.reservations(name, *clear)?, show_reservations)
            }
            VolumeCommand::Access { name, allow, any } => {
                let set = (*any || !allow.is_empty()).then(|| allow.clone());
                render(json, &client.access(name, set)?, show_access)
            }
            VolumeCommand::Chap {
                name,
                user,
                secret_file,
                target_user,
                target_secret_file,
                off,
            } => {
                let change = match (user, secret_file) {
                    (Some(user), Some(file)) => Some(Some(VolumeChap {
                        user: user.clone(),
                        secret: read_secret(file)?,
                        target_user: target_user.clone(),
                        target_secret: target_secret_file
                            .as_deref()
                            .map(read_secret)
                            .transpose()?,
                    })),
                    _ => off.then_some(None),
                };
                render(json, &client.chap(name, change)?, show_chap)
            }
            VolumeCommand::Rename { name, new_name } => {
                let req = Rename {
                    name: new_name.clone(),
                };
                render(json, &client.rename_volume(name, &req)?, show_volume)
            }
            VolumeCommand::Resize { name, size } => {
                let req = Resize { size_bytes: *size };
                render(json, &client.resize_volume(name, &req)?, show_volume)
            }
            VolumeCommand::Delete { name, force } => {
                client.delete_volume(name, *force)?;
                done(json, format!("deleted volume {name}"))
            }
        },
        CliCommand::Snapshot(cmd) => match cmd {
            SnapshotCommand::Create { snapshots } => match snapshots.as_slice() {
                [snapshot] => {
                    let req = CreateSnapshot {
                        volume: snapshot.volume.clone(),
                        name: snapshot.snapshot.clone(),
                    };
                    render(json, &client.create_snapshot(&req)?, show_snapshot)
                }
                many => {
                    let req = CreateSnapshotGroup {
                        snapshots: many
                            .iter()
                            .map(|s| format!("{}@{}", s.volume, s.snapshot))
                            .collect(),
                    };
                    render(json, &client.create_snapshot_group(&req)?, |s| {
                        snapshot_table(s)
                    })
                }
            },
            SnapshotCommand::List { volume } => {
                render(json, &client.list_snapshots(volume.as_deref())?, |s| {
                    snapshot_table(s)
                })
            }
            SnapshotCommand::Delete { snapshot } => {
                client.delete_snapshot(&snapshot.volume, &snapshot.snapshot)?;
                done(json, format!("deleted snapshot {snapshot}"))
            }
            SnapshotCommand::Rollback { snapshot } => {
                let f = client.rollback(&snapshot.volume, &snapshot.snapshot)?;
                render(json, &f, |v| {
                    format!("rolled {} back to {snapshot}\n{}", v.name, show_volume(v))
                })
            }
            SnapshotCommand::Export { snapshot, disable } => {
                let req = Export { enabled: !disable };
                let f = client.export_snapshot(&snapshot.volume, &snapshot.snapshot, &req)?;
                render(json, &f, show_snapshot)
            }
            SnapshotCommand::Diff { snapshot, base } => {
                let base = base
                    .as_ref()
                    .map(|b| (b.volume.as_str(), b.snapshot.as_str()));
                let f = client.snapshot_diff(&snapshot.volume, &snapshot.snapshot, base)?;
                render(json, &f, show_diff)
            }
            SnapshotCommand::Schedule {
                volume,
                every,
                keep,
                off,
            } => {
                let change = match (every, keep) {
                    (Some(every_secs), Some(keep)) => Some(Some(SnapshotSchedule {
                        every_secs: *every_secs,
                        keep: *keep,
                    })),
                    _ => off.then_some(None),
                };
                render(json, &client.schedule(volume, change)?, show_schedule)
            }
        },
        CliCommand::Clones(CloneCommand::Create { source, name }) => {
            let req = CreateClone {
                source: source.clone(),
                name: name.clone(),
            };
            render(json, &client.create_clone(&req)?, show_volume)
        }
        CliCommand::Pool(PoolCommand::Status) => render(json, &client.pool_status()?, show_pool),
        CliCommand::Pool(PoolCommand::Set {
            soft_threshold,
            size,
        }) => {
            let req = PoolSettings {
                soft_threshold_percent: *soft_threshold,
                size_bytes: *size,
            };
            render(json, &client.update_pool(&req)?, show_pool)
        }
        CliCommand::Stats(args) => stats_command(&client, args, json)?,
        CliCommand::Session(SessionCommand::List { volume }) => {
            render(json, &client.sessions(volume.as_deref())?, |s| {
                session_table(s)
            })
        }
        CliCommand::Session(SessionCommand::Drop { tsih }) => {
            client.drop_session(*tsih)?;
            done(json, format!("session {tsih} ended"))
        }
    };
    Ok(out)
}

fn stats_command(client: &AdminClient, args: &StatsArgs, json: bool) -> Result<String, CliError> {
    if args.reset {
        let f = client.reset_stats(args.volume.as_deref())?;
        return Ok(render(json, &f, |r| {
            format!("reset the statistics of {}\n", r.volumes.join(", "))
        }));
    }
    if args.watch {
        // Bounded only: `run` streams an endless watch to stdout.
        if args.count.is_none() {
            return Err(CliError::Usage(
                "--watch without --count runs until interrupted; run it from `shoal`".into(),
            ));
        }
        let mut out = Vec::new();
        watch_stats(client, args, json, false, &mut out)?;
        return Ok(String::from_utf8_lossy(&out).into_owned());
    }
    let query = StatsQuery {
        volume: args.volume.clone(),
        window: args.window,
    };
    Ok(render(json, &client.stats(&query)?, stats_table))
}

/// `shoal stats --watch`: every second, the figures of the last second (or `--window N`), the
/// screen cleared first when `clear`; with `json`, one compact JSON document per line. Runs
/// `--count` times, or until interrupted.
pub fn watch_stats(
    client: &AdminClient,
    args: &StatsArgs,
    json: bool,
    clear: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let query = StatsQuery {
        volume: args.volume.clone(),
        window: Some(args.window.unwrap_or(1)),
    };
    let mut shown = 0u64;
    loop {
        let started = std::time::Instant::now();
        let f = client.stats(&query)?;
        let frame = if json {
            format!("{}\n", serde_json::to_string(&f.value).unwrap_or_default())
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "{}shoal stats at {} (Ctrl-C to stop)\n{}",
                if clear { "\x1b[H\x1b[2J" } else { "" },
                format_time(now),
                stats_table(&f.value)
            )
        };
        // A closed pipe ends the watch quietly.
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    }
}

/// Latency in µs for tables: one decimal below 1 ms.
fn micros(ns: u64) -> String {
    let us = ns as f64 / 1000.0;
    if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// The statistics table: one row per volume and class that had commands in the window (a
/// volume without any gets one row of dashes).
pub fn stats_table(r: &StatsReport) -> String {
    let window = match r.window_seconds {
        Some(n) => format!("last {n} s"),
        None => "since reset".into(),
    };
    let mut rows = Vec::new();
    for l in &r.luns {
        let mut any = false;
        for (class, c) in [("read", &l.read), ("write", &l.write), ("other", &l.other)] {
            if c.ops == 0 {
                continue;
            }
            any = true;
            let p = &c.latency_ns;
            let timed = r.latency_stats;
            let lat = |v: u64| if timed { micros(v) } else { "-".into() };
            rows.push(vec![
                l.volume.clone(),
                class.into(),
                format!("{:.0}", c.iops),
                format!("{:.1}", c.bytes_per_second / 1e6),
                lat(p.p50),
                lat(p.p90),
                lat(p.p99),
                lat(p.p99_9),
                lat(p.max),
            ]);
        }
        if !any {
            let mut row = vec![l.volume.clone(), "-".into(), "0".into(), "0.0".into()];
            row.extend(std::iter::repeat_n("-".to_string(), 5));
            rows.push(row);
        }
    }
    let mut out = format!(
        "window: {window}{}; latency in µs, command received to response sent\n",
        if r.latency_stats {
            ""
        } else {
            " (latency statistics are off)"
        }
    );
    if rows.is_empty() {
        out.push_str("no volume is served\n");
        return out;
    }
    out.push_str(&table(
        &[
            "VOLUME", "CLASS", "IOPS", "MB/s", "p50", "p90", "p99", "p99.9", "max",
        ],
        &[false, false, true, true, true, true, true, true, true],
        &rows,
    ));
    for l in r.luns.iter().filter(|l| l.read_ahead.chunks > 0) {
        let ra = &l.read_ahead;
        out.push_str(&format!(
            "read-ahead {}: {} READs answered from {} chunks read ahead ({}), since served\n",
            l.volume,
            ra.hits,
            ra.chunks,
            human_size(ra.bytes)
        ));
    }
    for l in r.luns.iter().filter(|l| l.qos.held > 0) {
        out.push_str(&format!(
            "qos {}: {} commands held back by its limits since served, {} now\n",
            l.volume, l.qos.held, l.qos.waiting
        ));
    }
    let l = &r.logins;
    if l.authentication_failed + l.not_authorized > 0 {
        out.push_str(&format!(
            "logins since start: {} accepted, {} refused for credentials (CHAP), {} by access \
             lists, {} failed otherwise\n",
            l.accepted, l.authentication_failed, l.not_authorized, l.failed
        ));
    }
    out
}

fn render<T>(json: bool, f: &Fetched<T>, human: impl Fn(&T) -> String) -> String {
    if json {
        raw_json(&f.json)
    } else {
        human(&f.value)
    }
}

/// Output of a command whose response has no body (204): nothing with `--json`.
fn done(json: bool, message: String) -> String {
    if json { String::new() } else { message + "\n" }
}

fn raw_json(text: &str) -> String {
    format!("{}\n", text.trim_end())
}

/// A CHAP secret from `file` (one trailing line ending dropped, as `echo` writes it).
fn read_secret(file: &std::path::Path) -> Result<String, CliError> {
    crate::config::read_secret_file(file)
        .map_err(|e| CliError::Usage(format!("cannot read the secret in {}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The shape `main.rs` gives its parser (see the module docs).
    #[derive(Debug, Parser)]
    #[command(name = "shoal")]
    struct Cli {
        #[arg(long, global = true, value_name = "DIR")]
        data: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        Serve,
        #[command(flatten)]
        Admin(CliCommand),
    }

    fn parse(args: &[&str]) -> Result<(AdminArgs, CliCommand), clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("shoal").chain(args.iter().copied()))?;
        match cli.command {
            Command::Admin(cmd) => Ok((cli.admin, cmd)),
            Command::Serve => panic!("serve"),
        }
    }

    #[test]
    fn stats_table_reports_read_ahead_of_the_volumes_that_used_it() {
        use crate::control::api::{ClassStats, LunStatsReport, ReadAheadStats};
        let lun = |volume: &str, chunks, hits| LunStatsReport {
            volume: volume.into(),
            read: ClassStats {
                ops: 10,
                ..Default::default()
            },
            read_ahead: ReadAheadStats {
                chunks,
                bytes: chunks << 17,
                hits,
            },
            ..Default::default()
        };
        let report = StatsReport {
            window_seconds: None,
            latency_stats: true,
            luns: vec![lun("seq", 8, 7), lun("random", 0, 0)],
            logins: Default::default(),
        };
        let text = stats_table(&report);
        assert!(
            text.contains("read-ahead seq: 7 READs answered from 8 chunks read ahead (1.0 MiB)"),
            "{text}"
        );
        assert!(!text.contains("read-ahead random"), "{text}");
        assert!(!text.contains("logins"), "no refusal, no line: {text}");
        let refused = StatsReport {
            logins: crate::control::api::LoginCounts {
                accepted: 4,
                authentication_failed: 2,
                not_authorized: 1,
                failed: 0,
            },
            ..report
        };
        let text = stats_table(&refused);
        assert!(
            text.contains("logins since start: 4 accepted, 2 refused for credentials (CHAP), 1 by access lists, 0 failed otherwise"),
            "{text}"
        );
    }

    #[test]
    fn reservations_are_shown_with_their_holder_and_keys() {
        use crate::control::api::{PersistentReservation, Registration};
        let r = ReservationsInfo {
            volume: "db".into(),
            generation: 3,
            registrations: vec![Registration {
                initiator_port: "iqn.a,i,0x0001".into(),
                key: "0x00000000000000a1".into(),
            }],
            reservation: Some(PersistentReservation {
                kind: "Write Exclusive".into(),
                holder: Some("iqn.a,i,0x0001".into()),
            }),
            scsi2_holder: None,
        };
        let text = show_reservations(&r);
        assert!(text.contains("Write Exclusive by iqn.a,i,0x0001"), "{text}");
        assert!(text.contains("0x00000000000000a1"), "{text}");
        assert!(text.contains("reserve(6):"), "{text}");
    }

    #[test]
    fn parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_commands() {
        let (a, c) = parse(&["volume", "create", "vm1", "--size", "10G", "--full"]).unwrap();
        assert_eq!(a, AdminArgs::default());
        assert_eq!(
            c,
            CliCommand::Volume(VolumeCommand::Create {
                name: "vm1".into(),
                size: 10 << 30,
                full: true,
                block_size: None,
                no_write_cache: false,
            })
        );
        let (_, c) = parse(&["volume", "set", "vm1", "--write-cache", "off"]).unwrap();
        assert_eq!(
            c,
            CliCommand::Volume(VolumeCommand::Set {
                name: "vm1".into(),
                write_cache: Some(false),
                iops_limit: None,
                bandwidth_limit: None,
                read_only: None,
                provisioning: None,
            })
        );
        assert!(parse(&["volume", "set", "vm1", "--write-cache", "maybe"]).is_err());
        let (_, c) = parse(&["volume", "set", "vm1", "--provisioning", "full"]).unwrap();
        assert!(matches!(
            c,
            CliCommand::Volume(VolumeCommand::Set {
                provisioning: Some(true),
                ..
            })
        ));
        assert!(parse(&["volume", "set", "vm1", "--provisioning", "thick"]).is_err());
        let (_, c) = parse(&[
            "volume",
            "set",
            "vm1",
            "--iops-limit",
            "5000",
            "--bandwidth-limit",
            "200M",
        ])
        .unwrap();
        assert_eq!(
            c,
            CliCommand::Volume(VolumeCommand::Set {
                name: "vm1".into(),
                write_cache: None,
                iops_limit: Some(5000),
                bandwidth_limit: Some(200 << 20),
                read_only: None,
                provisioning: None,
            })
        );
        let (_, c) = parse(&["volume", "set", "vm1", "--bandwidth-limit", "0"]).unwrap();
        assert!(matches!(
            c,
            CliCommand::Volume(VolumeCommand::Set {
                bandwidth_limit: Some(0),
                ..
            })
        ));
        let (_, c) = parse(&[
            "volume",
            "create",
            "v",
            "--size",
            "1G",
            "--block-size",
            "4K",
        ])
        .unwrap();
        assert!(matches!(
            c,
            CliCommand::Volume(VolumeCommand::Create {
                block_size: Some(4096),
                ..
            })
        ));
        let (a, c) = parse(&["--json", "volume", "list", "--admin", "http://x:1"]).unwrap();
        assert!(a.json);
        assert_eq!(a.admin.as_deref(), Some("http://x:1"));
        assert_eq!(c, CliCommand::Volume(VolumeCommand::List));
        let (a, _) = parse(&["pool", "status", "--json"]).unwrap();
        assert!(a.json);
        let (_, c) = parse(&["pool", "set", "--soft-threshold", "70"]).unwrap();
        assert_eq!(
            c,
            CliCommand::Pool(PoolCommand::Set {
                soft_threshold: Some(70),
                size: None,
            })
        );
        let (_, c) = parse(&["pool", "set", "--size", "2G"]).unwrap();
        assert_eq!(
            c,
            CliCommand::Pool(PoolCommand::Set {
                soft_threshold: None,
                size: Some(2 << 30),
            })
        );
        assert!(parse(&["pool", "set", "--size", "lots"]).is_err());
        assert!(parse(&["pool", "set", "--soft-threshold", "0"]).is_err());
        assert!(parse(&["pool", "set", "--soft-threshold", "101"]).is_err());
        let (_, c) = parse(&["snapshot", "export", "a@b", "--disable"]).unwrap();
        assert_eq!(
            c,
            CliCommand::Snapshot(SnapshotCommand::Export {
                snapshot: SnapshotRef {
                    volume: "a".into(),
                    snapshot: "b".into()
                },
                disable: true
            })
        );
        let (_, c) = parse(&["clone", "create", "a@b", "c"]).unwrap();
        assert_eq!(
            c,
            CliCommand::Clones(CloneCommand::Create {
                source: "a@b".into(),
                name: "c".into()
            })
        );
        assert!(parse(&["clone", "create", "a", "c"]).is_ok());
        assert_eq!(
            parse(&["stats"]).unwrap().1,
            CliCommand::Stats(StatsArgs::default())
        );
        let (_, c) = parse(&["stats", "vm1", "--window", "10", "--watch", "--count", "2"]).unwrap();
        assert_eq!(
            c,
            CliCommand::Stats(StatsArgs {
                volume: Some("vm1".into()),
                window: Some(10),
                watch: true,
                count: Some(2),
                reset: false,
            })
        );
        assert!(parse(&["stats", "--reset"]).is_ok());
        assert!(parse(&["stats", "--window", "0"]).is_err());
        assert!(parse(&["stats", "--window", "61"]).is_err());
        assert!(parse(&["stats", "--count", "2"]).is_err());
        assert!(parse(&["stats", "--watch", "--reset"]).is_err());
        assert!(parse(&["snapshot", "list"]).is_ok());
        assert!(parse(&["volume", "delete", "x", "--force"]).is_ok());
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["volume", "create", "vm1", "--size", "10X"][..],
            &["volume", "create", "vm1"],
            &["volume", "resize", "vm1", "--size", "G"],
            &["snapshot", "create", "vm1"],
            &["snapshot", "delete", "@s"],
            &["snapshot", "rollback", "v@"],
            &["clone", "create", "a@", "c"],
            &["volume", "frobnicate"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        let err = parse(&["volume", "create", "v", "--size", "10X"]).unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(64 << 10), "64.0 KiB");
        assert_eq!(human_size((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_size(10 << 30), "10.0 GiB");
        assert_eq!(human_size((10 << 30) + (512 << 20)), "10.5 GiB");
        assert_eq!(human_size(1 << 40), "1.0 TiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(size_with_bytes(1 << 30), "1.0 GiB (1073741824 bytes)");
        assert_eq!(percent(1, 3), "33.3%");
        assert_eq!(percent(1, 0), "0.0%");
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("http://127.0.0.1:7000/").unwrap(),
            "http://127.0.0.1:7000"
        );
        assert_eq!(
            normalize_url("127.0.0.1:7000").unwrap(),
            "http://127.0.0.1:7000"
        );
        assert_eq!(normalize_url("HTTP://[::1]:7").unwrap(), "http://[::1]:7");
        for bad in [
            "https://x:1",
            "http://",
            "",
            "ftp://x",
            "http:///x",
            "x:1?y",
        ] {
            let err = normalize_url(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
        }
        assert_eq!(encode("vm-1.a_b~"), "vm-1.a_b~");
        assert_eq!(encode("a b/c@d%"), "a%20b%2Fc%40d%25");
        assert_eq!(encode_snapshot("v", "s 1"), "v@s%201");
    }

    #[test]
    fn tables() {
        let t = table(
            &["NAME", "SIZE", "ORIGIN"],
            &[false, true, false],
            &[
                vec!["a".into(), "1.0 GiB".into(), "-".into()],
                vec!["long-name".into(), "512 B".into(), "x@y".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          SIZE  ORIGIN\n\
             a          1.0 GiB  -\n\
             long-name    512 B  x@y\n"
        );
        assert_eq!(
            key_values(&[("a", "1".into()), ("long key", "2".into())]),
            "a:        1\nlong key: 2\n"
        );
    }

    #[test]
    fn errors() {
        let e = CliError::Refused(AdminError::new(
            ErrorCode::AlreadyExists,
            "volume vm1 exists",
        ));
        assert_eq!(e.to_string(), "volume vm1 exists (already_exists)");
        assert_eq!(e.exit_code(), 1);
        let e = CliError::NoDaemon {
            data_dir: "d".into(),
            file: "d/admin.addr".into(),
        };
        assert_eq!(
            e.to_string(),
            "no running shoal daemon found for data directory d (missing d/admin.addr): \
             start `shoal serve` or pass --admin URL"
        );
        assert_eq!(e.exit_code(), 3);
        assert_eq!(code_name(ErrorCode::InUse), "in_use");
    }
    #[test]
    fn the_volume_list_flags_write_protection_and_qos() {
        let v = crate::control::admin::tests::volume("golden");
        let row = |v: &VolumeInfo| volume_table(std::slice::from_ref(v));
        assert!(row(&v).contains(" thin "), "{}", row(&v));
        let flagged = VolumeInfo {
            read_only: true,
            iops_limit: Some(5000),
            ..v.clone()
        };
        assert!(row(&flagged).contains(" thin,ro,qos "), "{}", row(&flagged));
        let shown = show_volume(&flagged);
        assert!(
            shown.contains("yes (write-protected)") && shown.contains("5000 IOPS"),
            "{shown}"
        );
    }
}
