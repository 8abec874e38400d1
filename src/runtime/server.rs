//! Starting and stopping the whole target: volumes, shard threads, listeners.

use super::login::{self, LoginContext};
use super::shard::{self, LunSlot, Shard, ShardHandle, ShardMsg};
use crate::config::{self, Config, VolumeConfig};
use crate::control::{Registry, TargetEntry};
use crate::iscsi::connection::ConnConfig;
use crate::scsi::{LogicalUnit, LunInfo};
use crate::storage::{FileVolume, StorageError};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use thiserror::Error;

/// Why the target could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A volume could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A portal could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
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
    shards: Vec<ShardHandle>,
    threads: Vec<JoinHandle<()>>,
    portals: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Opens the volumes and starts shards and listeners.
    pub fn start(cfg: &Config) -> Result<Server, StartError> {
        cfg.validate()?;
        let vol_dir = cfg.data_dir.join("volumes");
        std::fs::create_dir_all(&vol_dir).map_err(|source| StartError::DataDir {
            path: vol_dir.display().to_string(),
            source,
        })?;
        let mut per_shard: Vec<Vec<LunSlot>> = (0..cfg.shards).map(|_| Vec::new()).collect();
        let mut targets = Vec::new();
        for (i, v) in cfg.volumes.iter().enumerate() {
            let shard = i % cfg.shards;
            let slot = open_lun(&vol_dir, v, cfg.direct_io)?;
            targets.push(TargetEntry {
                name: slot.target.clone(),
                alias: v.name.clone(),
                shard,
            });
            per_shard[shard].push(slot);
        }
        let conn_config = ConnConfig {
            queue_depth: cfg.queue_depth,
            nop_interval: cfg.nop_interval,
            nop_timeout: cfg.nop_timeout,
            ..ConnConfig::default()
        };
        let mut portals = Vec::new();
        let mut listeners = Vec::new();
        for addr in &cfg.listen {
            let l = TcpListener::bind(addr).map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
            let local = l.local_addr().map_err(|source| StartError::Listen {
                addr: *addr,
                source,
            })?;
            portals.push(local);
            listeners.push(l);
        }
        let registry = Arc::new(Registry::default());
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        for (id, luns) in per_shard.into_iter().enumerate() {
            let (handle, inbox, wake) =
                shard::channel().map_err(|source| StartError::Shard { shard: id, source })?;
            let shard_portals = portals.clone();
            let shard_registry = Arc::clone(&registry);
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
                    match Shard::new(
                        id,
                        luns,
                        inbox,
                        wake,
                        conn_config,
                        shard_portals,
                        shard_registry,
                    ) {
                        Ok(shard) => {
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
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(LoginContext {
            targets,
            portals: portals.clone(),
            shards: shards.clone(),
            registry,
        });
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
            shards,
            threads,
            portals,
            stop,
        })
    }

    /// The bound portal addresses (useful with port 0).
    pub fn portals(&self) -> &[SocketAddr] {
        &self.portals
    }

    /// Stops everything and waits for the threads.
    pub fn shutdown(self) {
        self.stop.store(true, Ordering::SeqCst);
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

fn open_lun(vol_dir: &Path, v: &VolumeConfig, direct: bool) -> Result<LunSlot, StartError> {
    let volume = FileVolume::open(
        &vol_dir.join(format!("{}.img", v.name)),
        v.size,
        v.block_size,
        direct,
    )?;
    let id = volume_id(vol_dir, &v.name)?;
    let target = config::target_name(&v.name);
    let info = LunInfo {
        lun: 0,
        volume_name: v.name.clone(),
        target_name: target.clone(),
        relative_port_id: 1,
        block_size: v.block_size,
        physical_block_size: v.block_size.max(4096),
        num_blocks: v.size / u64::from(v.block_size),
        naa: naa_designator(&id),
        serial: id.iter().map(|b| format!("{b:02x}")).collect(),
        read_only: false,
        thin: false,
        write_cache: v.write_cache,
        max_transfer_blocks: ((16u64 << 20) / u64::from(v.block_size)) as u32,
    };
    Ok(LunSlot {
        target,
        lu: LogicalUnit::new(info),
        volume: Box::new(volume),
        stats: Default::default(),
    })
}

/// The volume's persistent 12-byte identity (`<name>.id`), created at first start.
fn volume_id(vol_dir: &Path, name: &str) -> Result<[u8; 12], StartError> {
    let path = vol_dir.join(format!("{name}.id"));
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(id) = <[u8; 12]>::try_from(bytes.as_slice()) {
            return Ok(id);
        }
    }
    let mut id = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(err)?;
    std::fs::write(&path, id).map_err(err)?;
    Ok(id)
}

/// An NAA IEEE Registered Extended designator (NAA = 6, SPC-4 §7.8.6.6.5): NAA nibble, a
/// 24-bit company id, then vendor-specific bits taken from the volume id.
fn naa_designator(id: &[u8; 12]) -> [u8; 16] {
    // Company id: a locally chosen value; Shoal owns no IEEE OUI.
    const COMPANY_ID: u32 = 0x00_5a_0a;
    let mut d = [0u8; 16];
    d[0] = 0x60 | ((COMPANY_ID >> 20) & 0x0f) as u8;
    d[1] = (COMPANY_ID >> 12) as u8;
    d[2] = (COMPANY_ID >> 4) as u8;
    d[3] = ((COMPANY_ID & 0x0f) as u8) << 4 | (id[0] & 0x0f);
    d[4..16].copy_from_slice(&id[0..12]);
    d
}
