//! Typed configuration: command-line flags and an optional TOML file, checked while parsed.
//!
//! Precedence: built-in defaults < config file < command-line flags. See docs/config.md.

use crate::iscsi::login::{AuthPolicy, ChapSecret};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// IQN prefix of every exported target: the target of volume `v` is `<prefix>:v`.
pub const IQN_PREFIX: &str = "iqn.2026-11.dev.shoal";

/// A configuration error, with enough context to fix it.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown/mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// The offending value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// One volume to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    /// Name (also the last part of its target IQN).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Logical block size (512 or 4096).
    pub block_size: u32,
    /// Initial write-cache state (WCE). With it off every write is made durable before status.
    pub write_cache: bool,
}

/// The whole configuration of a `shoal serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listening portals.
    pub listen: Vec<SocketAddr>,
    /// Number of shard threads.
    pub shards: usize,
    /// Pin shard threads to cores.
    pub pin: bool,
    /// Volumes.
    pub volumes: Vec<VolumeConfig>,
    /// Idle time before the target pings an initiator.
    pub nop_interval: Duration,
    /// Time a ping may go unanswered.
    pub nop_timeout: Duration,
    /// Commands an initiator may have outstanding per session.
    pub queue_depth: u32,
    /// Open backing files with O_DIRECT (on by default).
    pub direct_io: bool,
    /// Size of the pool's data store, used when the pool is created.
    pub pool_size: u64,
    /// Extent size of a new pool (4 KiB .. 1 MiB, a power of two).
    pub extent_size: u32,
    /// Admin API address (loopback; port 0 picks a free port, written to `<data>/admin.addr`).
    pub admin_listen: SocketAddr,
    /// The token requests to the admin API from other machines must carry (none: they are
    /// refused).
    pub admin_token: Option<String>,
    /// Shards poll their ring this long after the last completion before sleeping (zero: off).
    pub busy_poll: Duration,
    /// Responses are sent by io_uring's worker threads rather than the shard thread (see
    /// docs/config.md: for initiators that share the target's CPUs).
    pub async_send: bool,
    /// Device reads a shard hands to the kernel as soon as this many wait in its ring while it
    /// parses a burst of commands (0: only once per loop round; at most
    /// [`MAX_READ_SUBMIT_BATCH`]).
    pub read_submit_batch: u32,
    /// Measure command latencies (histograms per LUN, class and phase); counts are kept either
    /// way.
    pub latency_stats: bool,
    /// Log commands slower than this on stderr (off when None).
    pub slow_command: Option<Duration>,
    /// Bytes each shard reads ahead of a sequential reader (0: off; at most
    /// [`MAX_READ_AHEAD`]).
    pub read_ahead: u64,
    /// Bytes of I/O buffers each shard registers with its ring (0: none; at most
    /// [`MAX_REGISTERED_BUFFERS`]): O_DIRECT transfers from and into them skip the kernel's
    /// per-I/O page pinning. The memory stays pinned while the target runs.
    pub registered_buffers: u64,
    /// The authentication logins must pass (CHAP credentials, or none).
    pub auth: AuthPolicy,
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// A secret (CHAP secret, admin token) kept in `path`: the file's text less one trailing line
/// ending (`\n` or `\r\n`, as `echo` or an editor leaves it); anything else is part of it.
pub fn read_secret_file(path: &Path) -> std::io::Result<String> {
    let mut text = std::fs::read_to_string(path)?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// The admin token in `path` (one trailing line ending dropped): 16 to 1024 bytes of printable
/// ASCII without spaces (it travels in an HTTP header).
pub fn read_admin_token(path: &Path) -> Result<String, ConfigError> {
    let token = read_secret_file(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let printable = token.bytes().all(|b| b.is_ascii_graphic());
    if !(MIN_ADMIN_TOKEN..=1024).contains(&token.len()) || !printable {
        return Err(invalid(
            "admin token",
            format!("<{} bytes in {}>", token.len(), path.display()),
            "use 16 to 1024 printable ASCII characters, no spaces",
        ));
    }
    Ok(token.to_string())
}

/// Shortest CHAP secret accepted (RFC 7143 §12.1.3 asks for at least 96 bits).
pub const MIN_CHAP_SECRET: usize = 12;

/// The target's credentials for mutual CHAP from an optional name and secret: both or neither.
pub fn mutual_chap<'a>(
    user: Option<&'a str>,
    secret: Option<&'a str>,
) -> Result<Option<(&'a str, &'a str)>, ConfigError> {
    match (user, secret) {
        (Some(user), Some(secret)) => Ok(Some((user, secret))),
        (None, None) => Ok(None),
        _ => Err(invalid(
            "mutual CHAP",
            "target_user/target_secret",
            "give both or neither",
        )),
    }
}

/// A CHAP policy from the initiator's name and secret and, for mutual CHAP, the target's: names
/// of 1..=255 bytes, secrets of 12..=255 bytes, the two secrets different (RFC 7143 §12.1.3).
pub fn chap_policy(
    user: &str,
    secret: &str,
    target: Option<(&str, &str)>,
) -> Result<AuthPolicy, ConfigError> {
    let check = |what: &'static str, name: &str, secret: &str| {
        if name.is_empty() || name.len() > 255 {
            return Err(invalid(what, name, "a CHAP name has 1 to 255 bytes"));
        }
        if secret.len() < MIN_CHAP_SECRET || secret.len() > 255 {
            let shown = format!("<{} bytes>", secret.len());
            return Err(invalid(what, shown, "a CHAP secret has 12 to 255 bytes"));
        }
        Ok(ChapSecret {
            user: name.to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
    };
    let initiator = check("CHAP user/secret", user, secret)?;
    let target = match target {
        None => None,
        Some((name, s)) if s == secret => {
            return Err(invalid(
                "CHAP target secret",
                name,
                "must differ from the initiator secret",
            ));
        }
        Some((name, s)) => Some(check("CHAP target user/secret", name, s)?),
    };
    Ok(AuthPolicy::Chap { initiator, target })
}

/// Most buffer memory one shard registers.
pub const MAX_REGISTERED_BUFFERS: u64 = 1 << 30;

/// Checks a registered-buffer budget.
pub fn registered_buffers_value(bytes: u64) -> Result<u64, ConfigError> {
    if bytes > MAX_REGISTERED_BUFFERS {
        return Err(invalid(
            "registered-buffers",
            bytes,
            "at most 1G per shard (0 turns it off)",
        ));
    }
    Ok(bytes)
}

/// Default of [`Config::read_submit_batch`]: two, so that a lone read (QD1) costs no extra
/// system call while a burst starts on the device at once.
pub const DEFAULT_READ_SUBMIT_BATCH: u32 = 2;
/// Largest [`Config::read_submit_batch`].
pub const MAX_READ_SUBMIT_BATCH: u32 = 4096;

/// Checks a [`Config::read_submit_batch`].
pub fn read_submit_batch_value(n: u32) -> Result<u32, ConfigError> {
    if n > MAX_READ_SUBMIT_BATCH {
        return Err(invalid(
            "read submit batch",
            n,
            "at most 4096 (0: once per loop round)",
        ));
    }
    Ok(n)
}

/// Largest read-ahead window (a shard holds at most this much read ahead in all).
pub const MAX_READ_AHEAD: u64 = 16 << 20;

/// Checks a read-ahead window.
pub fn read_ahead_value(bytes: u64) -> Result<u64, ConfigError> {
    if bytes > MAX_READ_AHEAD {
        return Err(invalid("read-ahead", bytes, "at most 16M (0 turns it off)"));
    }
    Ok(bytes)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./shoal-data"),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3260))],
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: false,
            volumes: vec![VolumeConfig {
                name: "default".into(),
                size: 1 << 30,
                block_size: 512,
                write_cache: true,
            }],
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(30),
            queue_depth: 128,
            direct_io: true,
            pool_size: 32 << 30,
            extent_size: 64 << 10,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token: None,
            busy_poll: Duration::ZERO,
            async_send: false,
            read_submit_batch: DEFAULT_READ_SUBMIT_BATCH,
            latency_stats: true,
            slow_command: None,
            read_ahead: 1 << 20,
            registered_buffers: 32 << 20,
            auth: AuthPolicy::None,
        }
    }
}

/// The TOML file's shape. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<Vec<String>>,
    shards: Option<usize>,
    pin: Option<bool>,
    nop_interval: Option<f64>,
    nop_timeout: Option<f64>,
    queue_depth: Option<u32>,
    direct_io: Option<bool>,
    pool_size: Option<SizeValue>,
    extent_size: Option<SizeValue>,
    admin_listen: Option<String>,
    admin_token_file: Option<PathBuf>,
    busy_poll_us: Option<u64>,
    async_send: Option<bool>,
    read_submit_batch: Option<u32>,
    latency_stats: Option<bool>,
    slow_command_ms: Option<f64>,
    read_ahead: Option<SizeValue>,
    registered_buffers: Option<SizeValue>,
    chap: Option<FileChap>,
    #[serde(default, rename = "volume")]
    volumes: Vec<FileVolume>,
}

/// `[chap]`: the CHAP credentials initiators log in with, and the target's for mutual CHAP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileChap {
    user: String,
    secret: String,
    target_user: Option<String>,
    target_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVolume {
    name: String,
    size: SizeValue,
    block_size: Option<u32>,
    write_cache: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl Config {
    /// Applies a TOML config file on top of `self`.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.apply_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Applies TOML text on top of `self`.
    pub fn apply_toml(&mut self, text: &str) -> Result<(), ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        if let Some(data) = file.data {
            self.data_dir = data;
        }
        if let Some(listen) = file.listen {
            self.listen = listen
                .iter()
                .map(|s| parse_listen(s))
                .collect::<Result<_, _>>()?;
        }
        if let Some(n) = file.shards {
            self.shards = n;
        }
        if let Some(pin) = file.pin {
            self.pin = pin;
        }
        if let Some(s) = file.nop_interval {
            self.nop_interval = parse_seconds("nop_interval", s)?;
        }
        if let Some(s) = file.nop_timeout {
            self.nop_timeout = parse_seconds("nop_timeout", s)?;
        }
        if let Some(q) = file.queue_depth {
            self.queue_depth = q;
        }
        if let Some(d) = file.direct_io {
            self.direct_io = d;
        }
        if let Some(v) = file.pool_size {
            self.pool_size = size_value(v)?;
        }
        if let Some(v) = file.extent_size {
            let bytes = size_value(v)?;
            self.extent_size =
                u32::try_from(bytes).map_err(|_| invalid("extent size", bytes, "at most 1 MiB"))?;
        }
        if let Some(a) = file.admin_listen {
            self.admin_listen = parse_listen(&a)?;
        }
        if let Some(path) = file.admin_token_file {
            self.admin_token = Some(read_admin_token(&path)?);
        }
        if let Some(us) = file.busy_poll_us {
            self.busy_poll = Duration::from_micros(us);
        }
        if let Some(on) = file.async_send {
            self.async_send = on;
        }
        if let Some(n) = file.read_submit_batch {
            self.read_submit_batch = read_submit_batch_value(n)?;
        }
        if let Some(on) = file.latency_stats {
            self.latency_stats = on;
        }
        if let Some(ms) = file.slow_command_ms {
            self.slow_command = Some(parse_millis("slow_command_ms", ms)?);
        }
        if let Some(v) = file.read_ahead {
            self.read_ahead = read_ahead_value(size_value(v)?)?;
        }
        if let Some(v) = file.registered_buffers {
            self.registered_buffers = registered_buffers_value(size_value(v)?)?;
        }
        if let Some(c) = file.chap {
            let target = mutual_chap(c.target_user.as_deref(), c.target_secret.as_deref())?;
            self.auth = chap_policy(&c.user, &c.secret, target)?;
        }
        if !file.volumes.is_empty() {
            self.volumes = file
                .volumes
                .into_iter()
                .map(volume_from_file)
                .collect::<Result<_, _>>()?;
        }
        Ok(())
    }

    /// Checks cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.admin_listen.ip().is_loopback() && self.admin_token.is_none() {
            return Err(invalid(
                "admin API address",
                self.admin_listen,
                "off loopback, the admin API needs a token (--admin-token-file or \
                 admin_token_file): anyone who reaches it could delete volumes",
            ));
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(invalid(
                "shard count",
                self.shards,
                "must be between 1 and 1024",
            ));
        }
        if self.listen.is_empty() {
            return Err(invalid(
                "listen address list",
                "",
                "at least one portal is needed",
            ));
        }
        if self.busy_poll > Duration::from_secs(1) {
            return Err(invalid(
                "busy-poll window",
                format!("{} us", self.busy_poll.as_micros()),
                "must be at most 1 s (1000000 us)",
            ));
        }
        if !(1..=4096).contains(&self.queue_depth) {
            return Err(invalid(
                "queue depth",
                self.queue_depth,
                "must be between 1 and 4096",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for v in &self.volumes {
            validate_volume_name(&v.name)?;
            if !names.insert(v.name.as_str()) {
                return Err(invalid("volume name", &v.name, "declared twice"));
            }
            if v.block_size != 512 && v.block_size != 4096 {
                return Err(invalid("block size", v.block_size, "must be 512 or 4096"));
            }
            if v.size == 0 || v.size % u64::from(v.block_size) != 0 {
                return Err(invalid(
                    "volume size",
                    v.size,
                    "must be a positive multiple of the block size",
                ));
            }
        }
        if !self.extent_size.is_power_of_two() || !(4096..=1 << 20).contains(&self.extent_size) {
            return Err(invalid(
                "extent size",
                self.extent_size,
                "must be a power of two from 4K to 1M",
            ));
        }
        if self.pool_size < 16 * u64::from(self.extent_size) {
            return Err(invalid(
                "pool size",
                self.pool_size,
                "must hold at least 16 extents",
            ));
        }
        Ok(())
    }
}

fn invalid(what: &'static str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn size_value(v: SizeValue) -> Result<u64, ConfigError> {
    match v {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(s) => parse_size(&s),
    }
}

fn volume_from_file(v: FileVolume) -> Result<VolumeConfig, ConfigError> {
    let size = size_value(v.size)?;
    Ok(VolumeConfig {
        name: v.name,
        size,
        block_size: v.block_size.unwrap_or(512),
        write_cache: v.write_cache.unwrap_or(true),
    })
}

fn parse_seconds(what: &'static str, s: f64) -> Result<Duration, ConfigError> {
    if !(s.is_finite() && s > 0.0 && s < 86_400.0) {
        return Err(invalid(
            what,
            s,
            "must be a number of seconds between 0 and 86400",
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Parses a threshold in milliseconds (0 included: every command).
pub fn parse_millis(what: &'static str, ms: f64) -> Result<Duration, ConfigError> {
    if !(ms.is_finite() && (0.0..=86_400_000.0).contains(&ms)) {
        return Err(invalid(
            what,
            ms,
            "must be a number of milliseconds between 0 and 86400000",
        ));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// Parses a `HOST:PORT` portal address.
pub fn parse_listen(s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| invalid("listen address", s, "expected IP:PORT, e.g. 127.0.0.1:3260"))
}

/// Parses a size such as `1073741824`, `512M`, `10G`, `1T` or `4KiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        invalid(
            "size",
            s,
            "expected a number with an optional unit K, M, G or T",
        )
    })?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid("size", s, "unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| invalid("size", s, "too large"))
}

/// Checks that a volume name can be the last part of an IQN (RFC 3722 stringprep subset:
/// lower-case letters, digits, '-', '.'), 1 to 64 characters.
pub fn validate_volume_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "volume name",
            name,
            "use 1-64 lower-case letters, digits, '-' or '.'",
        ))
    }
}

/// The target IQN of a volume.
pub fn target_name(volume: &str) -> String {
    format!("{IQN_PREFIX}:{volume}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutual_chap_needs_both_the_target_name_and_secret() {
        assert_eq!(mutual_chap(None, None).unwrap(), None);
        assert_eq!(mutual_chap(Some("t"), Some("s")).unwrap(), Some(("t", "s")));
        for (user, secret) in [(Some("t"), None), (None, Some("s"))] {
            let e = mutual_chap(user, secret).unwrap_err().to_string();
            assert!(e.contains("both or neither"), "{e}");
        }
        let half = crate::control::settings::VolumeChap {
            user: "u".into(),
            secret: "initiator-secret".into(),
            target_user: Some("t".into()),
            target_secret: None,
        };
        assert!(
            half.policy().is_err(),
            "a volume's CHAP follows the same rule"
        );
    }

    #[test]
    fn a_secret_file_loses_one_line_ending_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for (text, secret) in [
            ("s3cret-secret\n", "s3cret-secret"),
            ("s3cret-secret\r\n", "s3cret-secret"),
            ("s3cret-secret", "s3cret-secret"),
            ("two-endings\n\n", "two-endings\n"),
            (" spaced \n", " spaced "),
            ("cr-only\r", "cr-only\r"),
        ] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(read_secret_file(&path).unwrap(), secret, "{text:?}");
        }
        assert!(read_secret_file(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2 T").unwrap(), 2 << 40);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn toml_volumes_and_listeners() {
        let mut c = Config::default();
        c.apply_toml(
            r#"
            listen = ["127.0.0.1:3261", "127.0.0.1:3262"]
            shards = 3
            [[volume]]
            name = "vm1"
            size = "2G"
            [[volume]]
            name = "db"
            size = 1048576
            block_size = 4096
            write_cache = false
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.shards, 3);
        assert_eq!(c.volumes[0].size, 2 << 30);
        assert_eq!(c.volumes[1].block_size, 4096);
        assert!(!c.volumes[1].write_cache);
    }

    #[test]
    fn toml_latency_settings() {
        let mut c = Config::default();
        assert!(c.latency_stats && c.slow_command.is_none());
        c.apply_toml("latency_stats = false\nslow_command_ms = 2.5")
            .unwrap();
        assert!(!c.latency_stats);
        assert_eq!(c.slow_command, Some(Duration::from_micros(2500)));
        assert!(c.apply_toml("slow_command_ms = -1").is_err());
        assert_eq!(parse_millis("x", 0.0).unwrap(), Duration::ZERO);
    }

    #[test]
    fn toml_registered_buffers() {
        let mut c = Config::default();
        assert_eq!(c.registered_buffers, 32 << 20);
        c.apply_toml("registered_buffers = \"64M\"").unwrap();
        assert_eq!(c.registered_buffers, 64 << 20);
        c.apply_toml("registered_buffers = 0").unwrap();
        assert_eq!(c.registered_buffers, 0);
        let err = c.apply_toml("registered_buffers = \"2G\"").unwrap_err();
        assert!(err.to_string().contains("registered-buffers"), "{err}");
        assert_eq!(c.registered_buffers, 0, "a bad value changes nothing");
    }

    #[test]
    fn toml_read_submit_batch() {
        let mut c = Config::default();
        assert_eq!(c.read_submit_batch, DEFAULT_READ_SUBMIT_BATCH);
        c.apply_toml("read_submit_batch = 0").unwrap();
        assert_eq!(c.read_submit_batch, 0);
        c.apply_toml("read_submit_batch = 4096").unwrap();
        let err = c.apply_toml("read_submit_batch = 4097").unwrap_err();
        assert!(err.to_string().contains("read submit batch"), "{err}");
        assert_eq!(c.read_submit_batch, 4096, "a bad value changes nothing");
        assert!(c.apply_toml("read_submit_batch = -1").is_err());
    }

    #[test]
    fn toml_read_ahead() {
        let mut c = Config::default();
        assert_eq!(c.read_ahead, 1 << 20);
        c.apply_toml("read_ahead = \"4M\"").unwrap();
        assert_eq!(c.read_ahead, 4 << 20);
        c.apply_toml("read_ahead = 0").unwrap();
        assert_eq!(c.read_ahead, 0);
        let err = c.apply_toml("read_ahead = \"32M\"").unwrap_err();
        assert!(err.to_string().contains("read-ahead"), "{err}");
        assert_eq!(c.read_ahead, 0, "a bad value changes nothing");
    }

    #[test]
    fn toml_unknown_key_is_an_error() {
        let mut c = Config::default();
        let err = c.apply_toml("shardz = 2").unwrap_err();
        assert!(err.to_string().contains("shardz"), "{err}");
    }

    #[test]
    fn an_admin_api_off_loopback_needs_a_token_of_sixteen_printable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            admin_listen: "0.0.0.0:7000".parse().unwrap(),
            ..Config::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("token"), "{e}");
        let file = dir.path().join("token");
        for bad in ["short", "has a space in it!!", ""] {
            std::fs::write(&file, bad).unwrap();
            assert!(read_admin_token(&file).is_err(), "{bad:?}");
        }
        std::fs::write(&file, "0123456789abcdef-ok\n").unwrap();
        cfg.admin_token = Some(read_admin_token(&file).unwrap());
        assert_eq!(cfg.admin_token.as_deref(), Some("0123456789abcdef-ok"));
        cfg.validate().unwrap();
    }

    #[test]
    fn validate_catches_bad_values() {
        let mut c = Config::default();
        c.volumes[0].name = "Bad_Name".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.volumes[0].block_size = 1024;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.volumes.push(c.volumes[0].clone());
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        let c = Config {
            shards: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn target_names() {
        assert_eq!(target_name("default"), "iqn.2026-11.dev.shoal:default");
    }
}
