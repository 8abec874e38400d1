//! Starting and stopping the whole target: the pool, shard threads, listeners, the control
//! plane and its admin API.

use super::login::{self, LoginContext};
use super::shard::{self, Shard, ShardHandle, ShardMsg};
use crate::config::{self, Config};
use crate::control::Registry;
use crate::control::admin::{self as admin_http, AdminServer};
use crate::control::daemon::Daemon;
use crate::iscsi::connection::ConnConfig;
use crate::iscsi::login::AuthPolicy;
use crate::storage::pool::catalog::{Pool, PoolError};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use thiserror::Error;

/// Why the target could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The pool could not be opened, recovered or created.
    #[error("pool {path}: {source}")]
    Pool {
        /// The pool directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: PoolError,
    },
    /// A configured volume could not be created or served.
    #[error("volumes: {0}")]
    Volumes(String),
    /// A portal could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The admin API could not start.
    #[error("admin API: {0}")]
    Admin(String),
    /// A thread or ring could not be created.
    #[error("cannot start shard {shard}: {source}")]
    Shard {
        /// Which shard.
        shard: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running target.
pub struct Server {
    login: Arc<LoginContext>,
    shards: Vec<ShardHandle>,
    threads: Vec<JoinHandle<()>>,
    portals: Vec<SocketAddr>,
    admin: Option<AdminServer>,
    data_dir: PathBuf,
    stop: Arc<AtomicBool>,
}

/// Replaces the authentication new logins must pass (sessions already logged in go on).
pub struct AuthSwitch(Arc<LoginContext>);

impl AuthSwitch {
    /// From now on, logins must pass `auth`.
    pub fn set(&self, auth: AuthPolicy) {
        *self.0.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
    }
}

fn open_pool(cfg: &Config) -> Result<Pool, StartError> {
    let dir = cfg.data_dir.join("pool");
    let err = |source| StartError::Pool {
        path: dir.clone(),
        source,
    };
    if Pool::exists(&dir) {
        Pool::open(&dir, cfg.direct_io).map_err(err)
    } else {
        Pool::create(&dir, cfg.pool_size, cfg.extent_size, cfg.direct_io).map_err(err)
    }
}

fn bind_portals(cfg: &Config) -> Result<(Vec<TcpListener>, Vec<SocketAddr>), StartError> {
    let mut portals = Vec::new();
    let mut listeners = Vec::new();
    for addr in &cfg.listen {
        let listen_err = |source| StartError::Listen {
            addr: *addr,
            source,
        };
        let l = TcpListener::bind(addr).map_err(listen_err)?;
        portals.push(l.local_addr().map_err(listen_err)?);
        listeners.push(l);
    }
    Ok((listeners, portals))
}

fn start_shards(
    cfg: &Config,
    portals: &[SocketAddr],
    registry: &Arc<Registry>,
    copy_requests: &crossbeam::channel::Sender<super::xcopy::CrossCopy>,
) -> Result<(Vec<ShardHandle>, Vec<JoinHandle<()>>), StartError> {
    let conn_config = ConnConfig {
        queue_depth: cfg.queue_depth,
        nop_interval: cfg.nop_interval,
        nop_timeout: cfg.nop_timeout,
        ..ConnConfig::default()
    };
    let busy_poll = cfg.busy_poll;
    let async_send = cfg.async_send;
    let read_submit_batch = cfg.read_submit_batch;
    let read_ahead = cfg.read_ahead;
    let registered_buffers = cfg.registered_buffers as usize;
    let stats_config = crate::stats::StatsConfig {
        latency: cfg.latency_stats,
        slow_command: cfg.slow_command,
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut shards = Vec::new();
    let mut threads = Vec::new();
    for id in 0..cfg.shards {
        let (handle, inbox, wake) =
            shard::channel().map_err(|source| StartError::Shard { shard: id, source })?;
        let portals = portals.to_vec();
        let registry = Arc::clone(registry);
        let copy_requests = copy_requests.clone();
        let core = if cfg.pin {
            cores.get(id % cores.len().max(1)).copied()
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name(format!("shoal-shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let shard = Shard::new(
                    id,
                    Vec::new(),
                    inbox,
                    wake,
                    conn_config,
                    portals,
                    registry,
                    stats_config,
                );
                match shard {
                    Ok(shard) => {
                        let shard = shard
                            .with_busy_poll(busy_poll)
                            .with_async_send(async_send)
                            .with_read_submit_batch(read_submit_batch)
                            .with_read_ahead(read_ahead)
                            .with_registered_buffers(registered_buffers)
                            .with_copy_requests(copy_requests);
                        if let Err(e) = shard.run() {
                            eprintln!("shoal: shard {id} stopped: {e}");
                        }
                    }
                    Err(e) => eprintln!("shoal: shard {id} could not start: {e}"),
                }
            })
            .map_err(|source| StartError::Shard { shard: id, source })?;
        shards.push(handle);
        threads.push(thread);
    }
    Ok((shards, threads))
}

/// The control plane's copy thread: EXTENDED COPY chunks between units of different shards
/// (see `runtime::xcopy`). It ends when every shard has stopped (their senders dropped).
fn start_copy_thread(
    daemon: Arc<Daemon>,
    requests: crossbeam::channel::Receiver<super::xcopy::CrossCopy>,
) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name("shoal-xcopy".into())
        .spawn(move || {
            for request in requests {
                daemon.cross_copy(request);
            }
        })
        .map_err(|source| StartError::Shard {
            shard: usize::MAX,
            source,
        })
}

impl Server {
    /// Opens (or creates) the pool, starts shards, serves every volume, opens the portals and
    /// the admin API.
    pub fn start(cfg: &Config) -> Result<Server, StartError> {
        cfg.validate()?;
        let pool = open_pool(cfg)?;
        let (listeners, portals) = bind_portals(cfg)?;
        let registry = Arc::new(Registry::default());
        let (copy_tx, copy_rx) = crossbeam::channel::unbounded();
        let (shards, mut threads) = start_shards(cfg, &portals, &registry, &copy_tx)?;
        drop(copy_tx);
        let ctx = Arc::new(LoginContext {
            targets: RwLock::new(Vec::new()),
            portals: portals.clone(),
            shards: shards.clone(),
            registry: Arc::clone(&registry),
            auth: RwLock::new(cfg.auth.clone()),
            counts: Default::default(),
        });
        for kind in crate::storage::records::ALL_KINDS {
            kind.prepare(&cfg.data_dir)
                .map_err(|e| StartError::Volumes(format!("records directory: {e}")))?;
        }
        let settings = crate::control::settings::VolumeSettings::load(&cfg.data_dir)
            .map_err(|e| StartError::Volumes(format!("volume settings: {e}")))?;
        let daemon = Arc::new(
            Daemon::new(pool, shards.clone(), Arc::clone(&ctx), registry)
                .with_latency_stats(cfg.latency_stats)
                .with_settings(settings)
                .with_records_in(&cfg.data_dir),
        );
        daemon
            .start(&cfg.volumes)
            .map_err(|e| StartError::Volumes(e.message))?;
        // Recovery replayed the journals: fold them into a checkpoint now, then whenever they
        // grow past the limit.
        daemon
            .checkpoint()
            .map_err(|e| StartError::Volumes(format!("checkpoint: {}", e.message)))?;
        let stop = Arc::new(AtomicBool::new(false));
        threads.push(start_checkpointer(Arc::clone(&daemon), Arc::clone(&stop))?);
        threads.push(start_copy_thread(Arc::clone(&daemon), copy_rx)?);
        let admin =
            AdminServer::start_with_token(cfg.admin_listen, daemon, cfg.admin_token.clone())
                .map_err(|e| StartError::Admin(e.to_string()))?;
        admin_http::write_addr_file(&cfg.data_dir, admin.local_addr())
            .map_err(|e| StartError::Admin(format!("writing the admin address file: {e}")))?;
        for l in listeners {
            let ctx = Arc::clone(&ctx);
            let stop = Arc::clone(&stop);
            let t = std::thread::Builder::new()
                .name("shoal-listen".into())
                .spawn(move || accept_loop(l, ctx, stop))
                .map_err(|source| StartError::Shard {
                    shard: usize::MAX,
                    source,
                })?;
            threads.push(t);
        }
        Ok(Server {
            login: ctx,
            shards,
            threads,
            portals,
            admin: Some(admin),
            data_dir: cfg.data_dir.clone(),
            stop,
        })
    }

    /// The bound portal addresses (useful with port 0).
    pub fn portals(&self) -> &[SocketAddr] {
        &self.portals
    }

    /// A handle that replaces the authentication policy of new logins, from any thread.
    pub fn auth_switch(&self) -> AuthSwitch {
        AuthSwitch(Arc::clone(&self.login))
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Stops everything and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(admin) = self.admin.take() {
            admin.shutdown();
        }
        let _ = admin_http::remove_addr_file(&self.data_dir);
        for p in &self.portals {
            // Wake the blocking accept so the listener sees the stop flag.
            let _ = std::net::TcpStream::connect(p);
        }
        for s in &self.shards {
            s.send(ShardMsg::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Waits until the threads exit (they run until the process is killed).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Journal bytes beyond which the background thread writes a checkpoint.
const CHECKPOINT_JOURNAL_BYTES: u64 = 64 << 20;

fn start_checkpointer(
    daemon: Arc<Daemon>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name("shoal-checkpoint".into())
        .spawn(move || {
            let mut ticks = 0u32;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                ticks += 1;
                if let Err(e) = daemon.publish_frees() {
                    eprintln!("shoal: publishing freed extents failed: {}", e.message);
                }
                if ticks % 10 == 0 {
                    if let Err(e) = daemon.checkpoint_if_over(CHECKPOINT_JOURNAL_BYTES) {
                        eprintln!("shoal: checkpoint failed: {}", e.message);
                    }
                    daemon.run_snapshot_schedules();
                }
            }
        })
        .map_err(|source| StartError::Shard {
            shard: usize::MAX,
            source,
        })
}

fn accept_loop(listener: TcpListener, ctx: Arc<LoginContext>, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let ctx = Arc::clone(&ctx);
        let spawned = std::thread::Builder::new()
            .name("shoal-login".into())
            .spawn(move || login::serve_login(stream, &ctx));
        if let Err(e) = spawned {
            eprintln!("shoal: cannot start a login thread: {e}");
        }
    }
}
