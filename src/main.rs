//! The `shoal` command: `shoal serve` starts the target.

use clap::{Parser, Subcommand};
use shoal::config::{self, Config};
use shoal::iscsi::login::AuthPolicy;
use shoal::runtime::Server;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Shoal: a thin-provisioned iSCSI block-storage target.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
struct Cli {
    /// Data directory (volumes and metadata).
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    admin: shoal::cli::AdminArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the target (default: ./shoal-data, 127.0.0.1:3260, a 1 GiB volume "default").
    Serve(Box<ServeArgs>),
    /// Verify every metadata invariant of a stopped pool offline (exit 1 with a report when
    /// one fails).
    Check {
        /// Data directory (default: --data, else ./shoal-data).
        dir: Option<PathBuf>,
    },
    #[command(flatten)]
    Admin(shoal::cli::CliCommand),
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see docs/config.md); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Portal to listen on, IP:PORT (repeatable).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Number of shard threads (default: one per core).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Pin shard threads to cores.
    #[arg(long)]
    pin: bool,
    /// Size of the default volume when no config file declares volumes (e.g. 1G, 512M).
    #[arg(long, value_name = "SIZE")]
    size: Option<String>,
    /// Seconds of idle time before the target pings an initiator with a NOP-In.
    #[arg(long, value_name = "SECS")]
    nop_interval: Option<f64>,
    /// Seconds a NOP-In ping may go unanswered before the connection is dropped.
    #[arg(long, value_name = "SECS")]
    nop_timeout: Option<f64>,
    /// Size of the pool's data store when the pool is created (e.g. 32G).
    #[arg(long, value_name = "SIZE")]
    pool_size: Option<String>,
    /// Extent size when the pool is created (4K..1M, a power of two; default 64K).
    #[arg(long, value_name = "SIZE")]
    extent_size: Option<String>,
    /// Admin API address (default 127.0.0.1 on a free port, written to <data>/admin.addr).
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<String>,
    /// File holding the token admin API requests from other machines must carry
    /// (Authorization: Bearer TOKEN; 16 to 1024 printable characters). Required with a
    /// non-loopback --admin-listen; requests from this machine need none.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Use buffered I/O instead of O_DIRECT (for filesystems without O_DIRECT).
    #[arg(long)]
    no_direct: bool,
    /// Shards keep polling their ring for this many microseconds after the last completion
    /// before sleeping (0, the default: off). Cuts the wake-up latency; costs a busy core.
    #[arg(long, value_name = "US")]
    busy_poll_us: Option<u64>,
    /// Send responses from io_uring's worker threads instead of the shard thread: for
    /// initiators on the target's own CPUs (a benchmark on one machine), where it keeps the
    /// scheduler from running initiator and shard in turn on one CPU (4k QD32 +35% here);
    /// costs CPU and QD1 latency. Off by default.
    #[arg(long)]
    async_send: bool,
    /// Hand device reads to the kernel as soon as N of them are queued while a burst of
    /// commands is parsed, instead of once per loop round (2, the default; 0: once per round).
    /// The device starts sooner; costs a system call per N reads.
    #[arg(long, value_name = "N")]
    read_submit_batch: Option<u32>,
    /// Bytes read ahead of each sequential reader (e.g. 1M, the default; 0 turns read-ahead
    /// off; at most 16M).
    #[arg(long, value_name = "SIZE")]
    read_ahead: Option<String>,
    /// Bytes of I/O buffers each shard registers with its io_uring (e.g. 32M, the default; 0:
    /// none; at most 1G). O_DIRECT transfers through them skip per-I/O page pinning; the
    /// memory stays pinned (RLIMIT_MEMLOCK applies to non-root users).
    #[arg(long, value_name = "SIZE")]
    registered_buffers: Option<String>,
    /// Require CHAP: the name initiators log in with (with --chap-secret-file; mutual CHAP is
    /// set in the config file's [chap] table).
    #[arg(long, value_name = "NAME", requires = "chap_secret_file")]
    chap_user: Option<String>,
    /// File holding the CHAP secret (12 to 255 bytes; one trailing newline is ignored).
    #[arg(long, value_name = "FILE", requires = "chap_user")]
    chap_secret_file: Option<PathBuf>,
    /// Do not measure command latencies (no histograms; counts are kept).
    #[arg(long)]
    no_latency_stats: bool,
    /// Log every command whose latency reaches MS milliseconds on stderr (rate-limited).
    #[arg(long, value_name = "MS")]
    slow_command_ms: Option<f64>,
}

fn build_config(data: Option<PathBuf>, args: &ServeArgs) -> Result<Config, config::ConfigError> {
    let mut cfg = Config::default();
    if let Some(path) = &args.config {
        cfg.apply_file(path)?;
    }
    if let Some(data) = data {
        cfg.data_dir = data;
    }
    if !args.listen.is_empty() {
        cfg.listen = args
            .listen
            .iter()
            .map(|s| config::parse_listen(s))
            .collect::<Result<_, _>>()?;
    }
    if let Some(n) = args.shards {
        cfg.shards = n;
    }
    cfg.pin |= args.pin;
    if let Some(size) = &args.size {
        let size = config::parse_size(size)?;
        for v in &mut cfg.volumes {
            v.size = size;
        }
    }
    if let Some(s) = args.nop_interval {
        cfg.nop_interval = seconds("nop interval", s)?;
    }
    if let Some(s) = args.nop_timeout {
        cfg.nop_timeout = seconds("nop timeout", s)?;
    }
    if let Some(size) = &args.pool_size {
        cfg.pool_size = config::parse_size(size)?;
    }
    if let Some(size) = &args.extent_size {
        let bytes = config::parse_size(size)?;
        cfg.extent_size = u32::try_from(bytes).map_err(|_| config::ConfigError::Invalid {
            what: "extent size",
            value: size.clone(),
            reason: "at most 1M".into(),
        })?;
    }
    if let Some(addr) = &args.admin_listen {
        cfg.admin_listen = config::parse_listen(addr)?;
    }
    if let Some(file) = &args.admin_token_file {
        cfg.admin_token = Some(config::read_admin_token(file)?);
    }
    if args.no_direct {
        cfg.direct_io = false;
    }
    if let Some(us) = args.busy_poll_us {
        cfg.busy_poll = Duration::from_micros(us);
    }
    if args.async_send {
        cfg.async_send = true;
    }
    if let Some(n) = args.read_submit_batch {
        cfg.read_submit_batch = config::read_submit_batch_value(n)?;
    }
    if let Some(size) = &args.read_ahead {
        cfg.read_ahead = config::read_ahead_value(config::parse_size(size)?)?;
    }
    if let (Some(user), Some(file)) = (&args.chap_user, &args.chap_secret_file) {
        let secret =
            config::read_secret_file(file).map_err(|source| config::ConfigError::Read {
                path: file.clone(),
                source,
            })?;
        let target = match &cfg.auth {
            AuthPolicy::Chap {
                target: Some(t), ..
            } => Some((
                t.user.clone(),
                String::from_utf8_lossy(&t.secret).into_owned(),
            )),
            _ => None,
        };
        let target = target.as_ref().map(|(u, s)| (u.as_str(), s.as_str()));
        cfg.auth = config::chap_policy(user, &secret, target)?;
    }
    if let Some(size) = &args.registered_buffers {
        cfg.registered_buffers = config::registered_buffers_value(config::parse_size(size)?)?;
    }
    if args.no_latency_stats {
        cfg.latency_stats = false;
    }
    if let Some(ms) = args.slow_command_ms {
        cfg.slow_command = Some(config::parse_millis("slow command threshold", ms)?);
    }
    cfg.validate()?;
    Ok(cfg)
}

fn seconds(what: &'static str, s: f64) -> Result<Duration, config::ConfigError> {
    if s.is_finite() && s > 0.0 && s < 86_400.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(config::ConfigError::Invalid {
            what,
            value: s.to_string(),
            reason: "must be between 0 and 86400 seconds".into(),
        })
    }
}

fn serve(data: Option<PathBuf>, args: ServeArgs) -> ExitCode {
    let (data_for_reload, args_for_reload) = (data.clone(), args.clone());
    let cfg = match build_config(data, &args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.slow_command.is_some() && !cfg.latency_stats {
        eprintln!(
            "shoal: the slow-command log needs latency statistics: it is off with --no-latency-stats"
        );
    }
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal: {e}");
            return ExitCode::from(1);
        }
    };
    // Before announcing the portals: a SIGHUP from then on reloads rather than kills.
    reload_on_sighup(data_for_reload, args_for_reload, server.auth_switch());
    for p in server.portals() {
        // Tests and scripts read this line to learn the bound port.
        println!("shoal: listening on {p}");
    }
    for v in &cfg.volumes {
        println!(
            "shoal: volume {} ({} bytes) as {} LUN 0",
            v.name,
            v.size,
            config::target_name(&v.name)
        );
    }
    server.wait();
    ExitCode::SUCCESS
}

/// On SIGHUP, reads the configuration again (the file and the flags) and applies what can
/// change without a restart: the CHAP settings, for new logins. A bad file changes nothing.
fn reload_on_sighup(data: Option<PathBuf>, args: ServeArgs, auth: shoal::runtime::AuthSwitch) {
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shoal: no configuration reload on SIGHUP: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        for _ in signals.forever() {
            match build_config(data.clone(), &args) {
                Ok(cfg) => {
                    let chap = !matches!(cfg.auth, AuthPolicy::None);
                    auth.set(cfg.auth);
                    eprintln!(
                        "shoal: configuration reloaded: CHAP {} for new logins",
                        if chap { "required" } else { "off" }
                    );
                }
                Err(e) => eprintln!("shoal: configuration not reloaded: {e}"),
            }
        }
    });
}

fn check(data_dir: &std::path::Path, json: bool) -> ExitCode {
    let pool_dir = data_dir.join("pool");
    let report = match shoal::storage::pool::catalog::check(&pool_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal: check {}: {e}", pool_dir.display());
            return ExitCode::from(1);
        }
    };
    if json {
        let value = serde_json::json!({
            "pool": pool_dir.display().to_string(),
            "images": report.images,
            "snapshots": report.snapshots,
            "used_extents": report.used_extents,
            "capacity_extents": report.capacity_extents,
            "extent_size": report.extent_size,
            "journal_files": report.journals.files,
            "journal_records": report.journals.records,
            "torn_bytes": report.journals.torn_bytes,
            "problems": report.problems,
        });
        println!("{value:#}");
    } else {
        println!("pool:      {}", pool_dir.display());
        println!(
            "images:    {} ({} snapshots)",
            report.images, report.snapshots
        );
        println!(
            "extents:   {} used of {} ({} bytes each)",
            report.used_extents, report.capacity_extents, report.extent_size
        );
        println!(
            "journals:  {} files, {} records replayed, {} torn bytes discarded",
            report.journals.files, report.journals.records, report.journals.torn_bytes
        );
        for p in &report.problems {
            println!("PROBLEM:   {p}");
        }
        println!(
            "{}",
            if report.problems.is_empty() {
                "ok"
            } else {
                "FAILED"
            }
        );
    }
    if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(cli.data, *args),
        Command::Check { dir } => {
            let dir = dir
                .or(cli.data)
                .unwrap_or_else(|| Config::default().data_dir);
            check(&dir, cli.admin.json)
        }
        Command::Admin(cmd) => {
            let data = cli.data.unwrap_or_else(|| Config::default().data_dir);
            shoal::cli::run(&data, cli.admin.admin.as_deref(), cli.admin.json, cmd)
        }
    }
}
