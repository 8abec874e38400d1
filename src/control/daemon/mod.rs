//! The daemon's control plane: the [`AdminBackend`] over the thin pool and the shards.
//!
//! It owns the pool's catalog ([`Pool`]) behind one mutex (admin operations are serialized and
//! never on an I/O path), decides which shard serves each volume, and performs every operation
//! by message to the owning shard (snapshot, resize, removal) followed by a catalog record
//! committed with `fdatasync` before the call returns. Dropping a deleted image's map — which
//! returns its exclusively held extents to the free queue — happens here, off the shards.

mod copy;
mod group;
mod schedules;
mod serving;

use super::Registry;
use super::TargetEntry;
use super::api::*;
use super::metrics;
use super::schedule;
use super::settings::{self, SettingsError, SnapshotSchedule, VolumeSettings};
use crate::config::{self, target_name};
use crate::runtime::login::LoginContext;
use crate::runtime::qos::Throttle;
use crate::runtime::shard::{
    LunChange, LunSlot, ProvisionError, RecordFiles, ShardHandle, ShardMsg, SnapshotError,
    UsageReport,
};
use crate::scsi::lun::SanitizeState;
use crate::scsi::pr::{PrRecord, PrState};
use crate::scsi::{LogicalUnit, LunInfo};
use crate::stats::{LunSnapshot, MAX_WINDOW_SECS, Window};
use crate::storage::pool::catalog::{Pool, PoolError};
use crate::storage::pool::extent_map::{ExtentMap, UsageSource, exclusive_extents};
use crate::storage::pool::format::{ImageKind, ImageMeta};
use crate::storage::pool::thin::{OpenJournal, ThinVolume};
use crate::storage::records;
use crossbeam::channel::{Receiver, bounded};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How long a shard may take to answer a control message.
const SHARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a served image lives.
#[derive(Debug, Clone)]
struct Served {
    shard: usize,
    target: String,
    /// The image's name (the target's alias, and the key of its access list).
    alias: String,
}

struct State {
    pool: Pool,
    served: HashMap<u64, Served>,
    next_shard: usize,
    /// Access lists and write cache settings, by volume name.
    settings: VolumeSettings,
    /// The write cache setting of the volumes the configuration declares (others: on).
    declared_write_cache: HashMap<String, bool>,
    /// When each volume's scheduled snapshot was last tried (seconds since the epoch), so a
    /// failing one is retried an interval later rather than every second.
    schedule_attempts: HashMap<String, u64>,
}

impl State {
    /// Whether volume `name` is served with its write cache on (WCE): as set through the admin
    /// API, else as the configuration declares it, else on.
    fn write_cache(&self, name: &str) -> bool {
        self.settings
            .write_cache(name)
            .or_else(|| self.declared_write_cache.get(name).copied())
            .unwrap_or(true)
    }
}

/// The control plane of a running target.
pub struct Daemon {
    state: Mutex<State>,
    shards: Vec<ShardHandle>,
    login: Arc<LoginContext>,
    registry: Arc<Registry>,
    max_transfer_bytes: u64,
    latency_stats: bool,
    /// The data directory the targets' records are kept under (APTPL reservations, sanitize
    /// operations: `storage::records`); none: not kept.
    records_dir: Option<PathBuf>,
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError::new(ErrorCode::Internal, e.to_string())
}

/// A refused setting is the caller's error (400); failing to store it is ours.
fn settings_error(e: SettingsError) -> AdminError {
    match e {
        SettingsError::BadName(_)
        | SettingsError::TooMany(_)
        | SettingsError::BadChap(_)
        | SettingsError::BadSchedule(_) => {
            AdminError::new(ErrorCode::InvalidArgument, e.to_string())
        }
        SettingsError::Io { .. } | SettingsError::Corrupt { .. } => internal(e),
    }
}

fn pool_error(e: PoolError) -> AdminError {
    internal(e)
}

fn not_found(what: &str, name: &str) -> AdminError {
    AdminError::new(ErrorCode::NotFound, format!("no {what} named {name:?}"))
}

/// The target IQN an exported snapshot `volume@snap` is served as (':' cannot appear in a
/// volume name, so the IQN is unambiguous).
pub fn snapshot_target(full_name: &str) -> String {
    target_name(&full_name.replacen('@', ":", 1))
}

impl Daemon {
    /// A control plane over `pool`, serving through `shards`.
    pub fn new(
        pool: Pool,
        shards: Vec<ShardHandle>,
        login: Arc<LoginContext>,
        registry: Arc<Registry>,
    ) -> Self {
        Daemon {
            state: Mutex::new(State {
                pool,
                served: HashMap::new(),
                next_shard: 0,
                settings: VolumeSettings::in_memory(),
                declared_write_cache: HashMap::new(),
                schedule_attempts: HashMap::new(),
            }),
            shards,
            login,
            registry,
            max_transfer_bytes: 16 << 20,
            latency_stats: true,
            records_dir: None,
        }
    }

    /// Keeps the targets' records under data directory `data` (persistent reservations that
    /// ask for it, APTPL; sanitize operations in progress or failed), and restores them when a
    /// volume is served.
    pub fn with_records_in(mut self, data: &Path) -> Self {
        self.records_dir = Some(data.to_path_buf());
        self
    }

    fn chap_info(st: &State, volume: &str) -> ChapInfo {
        let chap = st.settings.chap(volume);
        ChapInfo {
            volume: volume.to_string(),
            user: chap.map(|c| c.user.clone()),
            target_user: chap.and_then(|c| c.target_user.clone()),
        }
    }

    /// Keeps the volumes' settings in `settings` (loaded from the data directory).
    pub fn with_settings(self, settings: VolumeSettings) -> Self {
        self.lock().settings = settings;
        self
    }

    /// Tells whether the shards measure latencies (reported by the statistics API).
    pub fn with_latency_stats(mut self, on: bool) -> Self {
        self.latency_stats = on;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the volumes `wanted` that the pool lacks, then serves every volume of the pool.
    pub fn start(&self, wanted: &[config::VolumeConfig]) -> Result<(), AdminError> {
        let mut st = self.lock();
        for v in wanted {
            if st.pool.find(&v.name).is_none() {
                st.pool
                    .create_volume(&v.name, v.size, v.block_size, true)
                    .map_err(pool_error)?;
            }
        }
        self.drop_orphans(&mut st)?;
        let volumes: Vec<ImageMeta> = st
            .pool
            .images()
            .filter(|m| m.kind == ImageKind::Volume)
            .cloned()
            .collect();
        // Every map is still here: what each full volume owns alone, for its reservation (one
        // visit of the pool's nodes, skipped when every volume is thin).
        let exclusive = if volumes.iter().any(|m| !m.thin) {
            st.pool.exclusive_extents()
        } else {
            HashMap::new()
        };
        st.declared_write_cache = wanted
            .iter()
            .map(|v| (v.name.clone(), v.write_cache))
            .collect();
        for meta in volumes {
            let owned = exclusive.get(&meta.image).copied().unwrap_or(0);
            let reserved = reserve_full_volume(&st, &meta, owned);
            let target = target_name(&meta.name);
            self.serve_reserved(&mut st, &meta, target, false, reserved)?;
        }
        Ok(())
    }

    /// Writes a checkpoint of the pool (every image's map, the catalog) and retires the journals
    /// it covers. Shards keep serving I/O: each only switches its volumes' journals to new
    /// files at a cut.
    pub fn checkpoint(&self) -> Result<(), AdminError> {
        let mut st = self.lock();
        let old_journals =
            crate::storage::pool::journal::list_journals(st.pool.dir()).map_err(internal)?;
        let generation = st.pool.next_generation();
        // Dropped after the maps (declared first: locals drop in reverse order, on the error
        // paths too), once the checkpoint is written: until then the shards' SANITIZE jobs wait
        // (the maps' nodes look shared).
        let mut holds = Vec::new();
        let mut live = Vec::new();
        for shard in 0..self.shards.len() {
            let cut = self
                .ask(shard, |reply| ShardMsg::Rotate { generation, reply })
                .map_err(internal)?;
            live.extend(cut.cuts);
            holds.push(cut.hold);
        }
        st.pool.checkpoint(live, old_journals).map_err(pool_error)
    }

    /// Publishes freed extents once the records that freed them are durable (see
    /// [`Pool::publish_frees`]).
    pub fn publish_frees(&self) -> Result<usize, AdminError> {
        self.lock().pool.publish_frees().map_err(pool_error)
    }

    /// Checkpoints when the journals hold more than `limit` bytes.
    pub fn checkpoint_if_over(&self, limit: u64) -> Result<bool, AdminError> {
        let bytes = self.lock().pool.journal_bytes();
        if bytes <= limit {
            return Ok(false);
        }
        self.checkpoint()?;
        Ok(true)
    }

    fn volume_meta(st: &State, name: &str) -> Result<ImageMeta, AdminError> {
        st.pool
            .find(name)
            .filter(|m| m.kind == ImageKind::Volume)
            .cloned()
            .ok_or_else(|| not_found("volume", name))
    }

    fn snapshot_meta(st: &State, volume: &str, snap: &str) -> Result<ImageMeta, AdminError> {
        let full = format!("{volume}@{snap}");
        st.pool
            .find(&full)
            .filter(|m| m.kind == ImageKind::Snapshot)
            .cloned()
            .ok_or_else(|| not_found("snapshot", &full))
    }

    /// Gives back the part of full volume `volume`'s reservation it no longer needs, measured
    /// now (best effort: a failure leaves the volume over-reserved, which is safe).
    fn trim_reservation(&self, st: &State, volume: &ImageMeta) {
        let Some(served) = st.served.get(&volume.image) else {
            return;
        };
        let usage = self.usage(st);
        let Some(u) = usage.get(&volume.image) else {
            return;
        };
        let Some(marks) = u.marks else { return };
        let target = served.target.clone();
        let owned = u.exclusive;
        let trimmed = self.ask(served.shard, |reply| ShardMsg::TrimReservation {
            target,
            owned,
            marks,
            reply,
        });
        if let Err(e) = trimmed {
            eprintln!("shoal: trimming the reservation of {}: {e}", volume.name);
        }
    }

    /// Mapped and exclusive extents of every image (see [`exclusive_extents`]). Served volumes
    /// are walked by their shards in small steps (their I/O never waits long); everything else
    /// here, in one visit of each distinct node of the pool.
    fn usage(&self, st: &State) -> HashMap<u64, ImageUsage> {
        // Start every shard's walk first: they run concurrently.
        let mut walking = Vec::new();
        for meta in st.pool.images() {
            if meta.kind != ImageKind::Volume {
                continue;
            }
            if let Some(s) = st.served.get(&meta.image) {
                let (tx, rx) = bounded(1);
                let target = s.target.clone();
                if self.shards[s.shard].send(ShardMsg::Usage { target, reply: tx }) {
                    walking.push((meta.image, rx));
                }
            }
        }
        let reports: HashMap<u64, UsageReport> = walking
            .into_iter()
            .filter_map(|(image, rx)| match rx.recv_timeout(SHARD_TIMEOUT) {
                Ok(Ok(report)) => Some((image, report)),
                Ok(Err(e)) => {
                    eprintln!("shoal: usage of image {image}: {e}");
                    None
                }
                Err(_) => None,
            })
            .collect();
        let mut sources = Vec::new();
        let mut usage = HashMap::new();
        for meta in st.pool.images() {
            let served = meta.kind == ImageKind::Volume && st.served.contains_key(&meta.image);
            if served {
                if let Some(r) = reports.get(&meta.image) {
                    sources.push((meta.image, UsageSource::Walked(&r.walk)));
                    let u = ImageUsage {
                        mapped: r.walk.mapped(),
                        exclusive: 0,
                        reserved: r.reserved,
                        marks: Some(r.marks),
                    };
                    usage.insert(meta.image, u);
                }
            } else if let Some(map) = st.pool.map(meta.image) {
                sources.push((meta.image, UsageSource::Map(map)));
                usage.insert(meta.image, ImageUsage::fresh(map.mapped()));
            }
        }
        for (image, owned) in exclusive_extents(&sources, &st.pool.shared().refs) {
            if let Some(u) = usage.get_mut(&image) {
                u.exclusive = owned;
            }
        }
        usage
    }

    /// Usage of `image`, just created from `source` (a snapshot of a volume: itself; a clone:
    /// its snapshot): it maps what `source` maps and owns nothing alone yet — O(1), where the
    /// whole pool's usage would make creation O(pool).
    fn fresh_usage(st: &State, image: u64, source: u64) -> HashMap<u64, ImageUsage> {
        let mapped = st.pool.map(source).map_or(0, ExtentMap::mapped);
        HashMap::from([(image, ImageUsage::fresh(mapped))])
    }

    fn volume_info(&self, st: &State, meta: &ImageMeta) -> VolumeInfo {
        let usage = self.usage(st);
        self.volume_info_with(st, meta, &usage)
    }

    fn volume_info_with(
        &self,
        st: &State,
        meta: &ImageMeta,
        usage: &HashMap<u64, ImageUsage>,
    ) -> VolumeInfo {
        let (mapped, exclusive, reserved) = usage_bytes(st, usage, meta.image);
        let origin = meta
            .parent
            .and_then(|p| st.pool.image(p))
            .filter(|p| p.kind == ImageKind::Snapshot)
            .map(|p| p.name.clone());
        let prefix = format!("{}@", meta.name);
        let target = target_name(&meta.name);
        let qos = st.settings.qos(&meta.name);
        VolumeInfo {
            name: meta.name.clone(),
            sessions: self.registry.sessions_on(&target) as u64,
            target,
            size_bytes: meta.size_bytes,
            block_size: meta.block_size,
            thin: meta.thin,
            mapped_bytes: mapped,
            exclusive_bytes: exclusive,
            reserved_bytes: reserved,
            shard: st.served.get(&meta.image).map(|s| s.shard),
            origin,
            snapshots: st
                .pool
                .images()
                .filter(|m| m.kind == ImageKind::Snapshot && m.name.starts_with(&prefix))
                .count() as u64,
            naa: naa_designator(&meta.identity)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            created: meta.created_unix_secs,
            initiators: st.settings.initiators(&meta.name).to_vec(),
            write_cache: st.write_cache(&meta.name),
            snapshot_schedule: st.settings.snapshot_schedule(&meta.name),
            chap_user: st.settings.chap(&meta.name).map(|c| c.user.clone()),
            iops_limit: qos.iops,
            bandwidth_limit: qos.bytes_per_sec,
            read_only: st.settings.read_only(&meta.name),
        }
    }

    fn snapshot_info(&self, st: &State, meta: &ImageMeta) -> SnapshotInfo {
        let usage = self.usage(st);
        self.snapshot_info_with(st, meta, &usage)
    }

    fn snapshot_info_with(
        &self,
        st: &State,
        meta: &ImageMeta,
        usage: &HashMap<u64, ImageUsage>,
    ) -> SnapshotInfo {
        let (mapped, exclusive, _) = usage_bytes(st, usage, meta.image);
        let volume = meta.name.split('@').next().unwrap_or("").to_string();
        SnapshotInfo {
            name: meta.name.clone(),
            volume,
            size_bytes: meta.size_bytes,
            mapped_bytes: mapped,
            exclusive_bytes: exclusive,
            export: st.served.get(&meta.image).map(|s| s.target.clone()),
            created: meta.created_unix_secs,
        }
    }

    fn check_new_name(st: &State, name: &str) -> Result<(), AdminError> {
        config::validate_volume_name(name)
            .map_err(|e| AdminError::new(ErrorCode::InvalidArgument, e.to_string()))?;
        if st.pool.find(name).is_some() {
            return Err(AdminError::new(
                ErrorCode::AlreadyExists,
                format!("{name:?} already exists"),
            ));
        }
        Ok(())
    }

    fn take_snapshot(
        &self,
        st: &mut State,
        volume: &ImageMeta,
        snap: &str,
    ) -> Result<ImageMeta, AdminError> {
        Self::check_snapshot_name(st, volume, snap)?;
        let full = format!("{}@{snap}", volume.name);
        let (map, seq) = match st.served.get(&volume.image).cloned() {
            Some(s) => {
                let (reply, answer) = bounded(1);
                let target = s.target;
                if !self.shards[s.shard].send(ShardMsg::Snapshot { target, reply }) {
                    return Err(internal("shard is gone"));
                }
                match answer.recv_timeout(SHARD_TIMEOUT) {
                    Ok(Ok(taken)) => taken,
                    Ok(Err(e @ SnapshotError::NoSpace { .. })) => {
                        return Err(AdminError::new(ErrorCode::NoSpace, e.to_string()));
                    }
                    Ok(Err(e @ SnapshotError::Sanitizing { .. })) => {
                        return Err(AdminError::new(ErrorCode::Conflict, e.to_string()));
                    }
                    Ok(Err(e)) => return Err(internal(e)),
                    Err(_) => return Err(internal("shard did not answer")),
                }
            }
            None => {
                let map = st
                    .pool
                    .map(volume.image)
                    .map(ExtentMap::snapshot)
                    .ok_or_else(|| internal("volume has no map"))?;
                (map, st.pool.next_seq())
            }
        };
        st.pool
            .add_snapshot(volume.image, &full, map, seq)
            .map_err(pool_error)
    }
}

/// Space of one image, in extents.
#[derive(Debug, Clone, Copy, Default)]
struct ImageUsage {
    /// Logical extents mapped.
    mapped: u64,
    /// Extents it alone references (what deleting it would free).
    exclusive: u64,
    /// Extents the pool holds in reserve for it (a full volume).
    reserved: u64,
    /// For a served volume: where its shard's measurement started (for a reservation trim).
    marks: Option<u64>,
}

impl ImageUsage {
    /// An image just created from another: it maps what its source maps, owns nothing alone
    /// and holds no reservation (clones are thin).
    fn fresh(mapped: u64) -> ImageUsage {
        ImageUsage {
            mapped,
            ..ImageUsage::default()
        }
    }
}

/// The shard a newly served image goes to: the one serving the fewest images, so that volumes
/// created after deletions still spread evenly; ties go round-robin from `turn` (every served
/// image advances it), so that N images on N idle shards land one per shard.
fn least_loaded_shard(served: &HashMap<u64, Served>, shards: usize, turn: usize) -> usize {
    let shards = shards.max(1);
    let mut load = vec![0usize; shards];
    for s in served.values() {
        if let Some(n) = load.get_mut(s.shard) {
            *n += 1;
        }
    }
    (0..shards)
        .map(|i| (turn + i) % shards)
        .min_by_key(|&i| load[i])
        .unwrap_or(0)
}

/// The reservation a full volume (served again: start-up, rollback) needs: one extent for every
/// logical extent it does not own alone (`owned`). 0 for a thin volume, and 0 with a warning
/// when the pool cannot hold it (snapshots pin the old data): the volume then allocates like a
/// thin one until space frees.
fn reserve_full_volume(st: &State, meta: &ImageMeta, owned: u64) -> u64 {
    if meta.thin {
        return 0;
    }
    let shared = st.pool.shared();
    let want = meta
        .size_bytes
        .div_ceil(shared.extent_size)
        .saturating_sub(owned);
    if shared.refs.reserve(want) {
        return want;
    }
    eprintln!(
        "shoal: full volume {}: the pool cannot reserve the {want} extents it does not own \
         alone: writes may fail when the pool is full",
        meta.name
    );
    0
}

/// Mapped, exclusive and reserved bytes of `image` from a usage table.
fn usage_bytes(st: &State, usage: &HashMap<u64, ImageUsage>, image: u64) -> (u64, u64, u64) {
    let es = st.pool.shared().extent_size;
    let u = usage.get(&image).copied().unwrap_or_default();
    (u.mapped * es, u.exclusive * es, u.reserved * es)
}

/// An NAA IEEE Registered Extended designator (NAA = 6, SPC-4 §7.8.6.6.5) from an image's
/// 16-byte identity: NAA nibble, a 24-bit company id, then identity bits.
pub fn naa_designator(id: &[u8; 16]) -> [u8; 16] {
    // Company id: a locally chosen value; Shoal owns no IEEE OUI.
    const COMPANY_ID: u32 = 0x00_5a_0a;
    let mut d = [0u8; 16];
    d[0] = 0x60 | ((COMPANY_ID >> 20) & 0x0f) as u8;
    d[1] = (COMPANY_ID >> 12) as u8;
    d[2] = (COMPANY_ID >> 4) as u8;
    d[3] = (((COMPANY_ID & 0x0f) as u8) << 4) | (id[15] & 0x0f);
    // Vendor-specific: the pool's identity bytes, then the image id.
    d[4..8].copy_from_slice(&id[0..4]);
    d[8..16].copy_from_slice(&id[8..16]);
    d
}

impl AdminBackend for Daemon {
    fn pool_status(&self) -> Result<PoolStatus, AdminError> {
        let st = self.lock();
        st.pool.publish_frees().map_err(pool_error)?;
        let shared = st.pool.shared();
        let es = shared.extent_size;
        let refs = &shared.refs;
        let size = refs.capacity() * es;
        let used = refs.used_extents() * es;
        let reserved = refs.reserved_extents() * es;
        Ok(PoolStatus {
            size_bytes: size,
            used_bytes: used,
            free_bytes: size.saturating_sub(used + reserved),
            reserved_bytes: reserved,
            extent_size: es as u32,
            soft_threshold_percent: st.pool.superblock().soft_threshold_pct,
            volumes: st
                .pool
                .images()
                .filter(|m| m.kind == ImageKind::Volume)
                .count() as u64,
            snapshots: st
                .pool
                .images()
                .filter(|m| m.kind == ImageKind::Snapshot)
                .count() as u64,
        })
    }

    fn update_pool(&self, req: &PoolSettings) -> Result<PoolStatus, AdminError> {
        let invalid = |e: PoolError| match e {
            PoolError::Invalid(m) => AdminError::new(ErrorCode::InvalidArgument, m),
            other => pool_error(other),
        };
        // Every value is checked before anything changes.
        if let Some(pct) = req
            .soft_threshold_percent
            .filter(|p| !(1..=100).contains(p))
        {
            return Err(AdminError::new(
                ErrorCode::InvalidArgument,
                format!("soft threshold {pct}% is not in 1..=100"),
            ));
        }
        let grown = match req.size_bytes {
            Some(size) => {
                let mut st = self.lock();
                let before = st.pool.superblock().capacity_extents;
                st.pool.grow_data_store(size).map_err(invalid)? != before
            }
            None => false,
        };
        if let Some(pct) = req.soft_threshold_percent {
            self.lock().pool.set_soft_threshold(pct).map_err(invalid)?;
        }
        if grown || req.soft_threshold_percent.is_some() {
            // The superblock holds both: a checkpoint writes it. Only then may the shards
            // allocate past the old size (recovery must know the data store that large).
            self.checkpoint()?;
        }
        if grown {
            self.lock().pool.publish_capacity().map_err(invalid)?;
        }
        self.pool_status()
    }

    fn list_volumes(&self) -> Result<Vec<VolumeInfo>, AdminError> {
        let st = self.lock();
        let metas: Vec<ImageMeta> = st
            .pool
            .images()
            .filter(|m| m.kind == ImageKind::Volume)
            .cloned()
            .collect();
        let usage = self.usage(&st);
        Ok(metas
            .iter()
            .map(|m| self.volume_info_with(&st, m, &usage))
            .collect())
    }

    fn volume(&self, name: &str) -> Result<VolumeInfo, AdminError> {
        let st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        Ok(self.volume_info(&st, &meta))
    }

    fn create_volume(&self, req: &CreateVolume) -> Result<VolumeInfo, AdminError> {
        let mut st = self.lock();
        Self::check_new_name(&st, &req.name)?;
        // Records a former volume of the name left (a delete or rename that could not remove
        // them) must not come with the new one: a stale sanitize record would erase it.
        self.drop_records(&target_name(&req.name))?;
        let bs = req.block_size.unwrap_or(512);
        if bs != 512 && bs != 4096 {
            return Err(AdminError::new(
                ErrorCode::InvalidArgument,
                format!("block size {bs} must be 512 or 4096"),
            ));
        }
        if req.size_bytes == 0 || req.size_bytes % u64::from(bs) != 0 {
            return Err(AdminError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "size {} must be a positive multiple of the block size {bs}",
                    req.size_bytes
                ),
            ));
        }
        let es = st.pool.shared().extent_size;
        let reserved = if req.full {
            req.size_bytes.div_ceil(es)
        } else {
            0
        };
        if req.full && !st.pool.shared().refs.reserve(reserved) {
            return Err(AdminError::new(
                ErrorCode::NoSpace,
                format!("the pool cannot reserve {} bytes", req.size_bytes),
            ));
        }
        let meta = st
            .pool
            .create_volume(&req.name, req.size_bytes, bs, !req.full)
            .map_err(|e| {
                st.pool.shared().refs.unreserve(reserved);
                pool_error(e)
            })?;
        if let Some(on) = req.write_cache {
            st.settings
                .set_write_cache(&meta.name, on)
                .map_err(internal)?;
        }
        self.serve_reserved(&mut st, &meta, target_name(&meta.name), false, reserved)?;
        Ok(self.volume_info(&st, &meta))
    }

    fn update_volume(&self, name: &str, req: &VolumePatch) -> Result<VolumeInfo, AdminError> {
        let mut st = self.lock();
        let mut meta = Self::volume_meta(&st, name)?;
        if let Some(full) = req.full {
            self.set_provisioning(&mut st, &meta, full)?;
            meta = Self::volume_meta(&st, name)?;
        }
        let qos = (req.iops_limit.is_some() || req.bandwidth_limit.is_some()).then(|| {
            let mut qos = st.settings.qos(&meta.name);
            let limit = |v: u64| (v > 0).then_some(v);
            if let Some(v) = req.iops_limit {
                qos.iops = limit(v);
            }
            if let Some(v) = req.bandwidth_limit {
                qos.bytes_per_sec = limit(v);
            }
            qos
        });
        let change = LunChange {
            write_cache: req.write_cache,
            read_only: req.read_only,
            qos: qos.map(|q| q.limits()),
        };
        if change == LunChange::default() {
            return Ok(self.volume_info(&st, &meta));
        }
        st.settings
            .set_live(&meta.name, req.write_cache, req.read_only, qos)
            .map_err(internal)?;
        if let Some(served) = st.served.get(&meta.image) {
            let (shard, target) = (served.shard, served.target.clone());
            self.ask(shard, |reply| ShardMsg::Reconfigure {
                target,
                change,
                reply,
            })
            .map_err(internal)?;
        }
        Ok(self.volume_info(&st, &meta))
    }

    fn reservations(&self, name: &str, clear: bool) -> Result<ReservationsInfo, AdminError> {
        let (shard, target) = {
            let st = self.lock();
            let meta = Self::volume_meta(&st, name)?;
            let served = st.served.get(&meta.image).cloned().ok_or_else(|| {
                AdminError::new(
                    ErrorCode::Conflict,
                    format!("volume {name} is not served, so it holds no reservation"),
                )
            })?;
            (served.shard, served.target)
        };
        let r = self
            .ask(shard, |reply| ShardMsg::Reservations {
                target,
                clear,
                reply,
            })
            .map_err(internal)?;
        Ok(ReservationsInfo {
            volume: name.to_string(),
            generation: r.generation,
            registrations: r
                .registrations
                .into_iter()
                .map(|(initiator_port, key)| Registration {
                    initiator_port,
                    key: format!("{key:#018x}"),
                })
                .collect(),
            reservation: r.reservation.map(|(holder, kind)| PersistentReservation {
                kind: kind.to_string(),
                holder,
            }),
            scsi2_holder: r.scsi2_holder,
        })
    }

    fn resize_volume(&self, name: &str, req: &Resize) -> Result<VolumeInfo, AdminError> {
        let mut st = self.lock();
        let mut meta = Self::volume_meta(&st, name)?;
        if req.size_bytes < meta.size_bytes {
            return Err(AdminError::new(
                ErrorCode::InvalidArgument,
                "volumes can only grow (shrinking would drop data)",
            ));
        }
        if req.size_bytes % u64::from(meta.block_size) != 0 {
            return Err(AdminError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "size must be a multiple of the block size {}",
                    meta.block_size
                ),
            ));
        }
        // A full volume reserves the space of its growth first.
        let es = st.pool.shared().extent_size;
        let reserved = if meta.thin {
            0
        } else {
            req.size_bytes.div_ceil(es) - meta.size_bytes.div_ceil(es)
        };
        if !st.pool.shared().refs.reserve(reserved) {
            return Err(AdminError::new(
                ErrorCode::NoSpace,
                format!(
                    "the pool cannot reserve {} more bytes for full volume {name}",
                    reserved * es
                ),
            ));
        }
        if let Err(e) = st.pool.resize(meta.image, req.size_bytes) {
            st.pool.shared().refs.unreserve(reserved);
            return Err(pool_error(e));
        }
        if let Some(s) = st.served.get(&meta.image).cloned() {
            let (target, size) = (s.target, req.size_bytes);
            self.ask(s.shard, |reply| ShardMsg::Resize {
                target,
                size,
                reserved,
                reply,
            })
            .map_err(internal)?;
        }
        meta.size_bytes = req.size_bytes;
        Ok(self.volume_info(&st, &meta))
    }

    fn delete_volume(&self, name: &str, force: bool) -> Result<(), AdminError> {
        let mut st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        let removed = self.unserve(&mut st, meta.image, force)?;
        st.pool.delete(meta.image).map_err(pool_error)?;
        if let Some((map, reserved)) = removed {
            // Dropping the map returns the extents only it referenced (here, off the shards).
            drop(map);
            st.pool.shared().refs.unreserve(reserved);
        }
        // A new volume of the same name starts open, as any new volume, and unreserved.
        st.settings.remove(name).map_err(internal)?;
        self.drop_records(&target_name(name))
    }

    fn snapshot_diff(
        &self,
        volume: &str,
        snapshot: &str,
        base: Option<(&str, &str)>,
    ) -> Result<SnapshotDiff, AdminError> {
        let st = self.lock();
        let meta = Self::snapshot_meta(&st, volume, snapshot)?;
        let base_meta = base
            .map(|(v, s)| Self::snapshot_meta(&st, v, s))
            .transpose()?;
        let map_of = |m: &ImageMeta| {
            st.pool
                .map(m.image)
                .ok_or_else(|| internal(format!("snapshot {} has no map", m.name)))
        };
        let map = map_of(&meta)?;
        let base_map = base_meta.as_ref().map(map_of).transpose()?;
        let es = st.pool.shared().extent_size;
        let mut ranges: Vec<ByteRange> = Vec::new();
        map.diff(base_map, |lext| {
            let offset = lext * es;
            let length = es.min(meta.size_bytes.saturating_sub(offset));
            match ranges.last_mut() {
                Some(r) if r.offset + r.length == offset => r.length += length,
                _ => ranges.push(ByteRange { offset, length }),
            }
        });
        Ok(SnapshotDiff {
            snapshot: meta.name.clone(),
            base: base_meta.map(|m| m.name),
            extent_size: es,
            changed_bytes: ranges.iter().map(|r| r.length).sum(),
            ranges,
        })
    }

    fn chap(&self, name: &str) -> Result<ChapInfo, AdminError> {
        let st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        Ok(Self::chap_info(&st, &meta.name))
    }

    fn set_chap(&self, name: &str, chap: Option<VolumeChap>) -> Result<ChapInfo, AdminError> {
        let mut st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        st.settings
            .set_chap(&meta.name, chap)
            .map_err(settings_error)?;
        self.login
            .set_chap(&meta.name, st.settings.chap_policy(&meta.name));
        Ok(Self::chap_info(&st, &meta.name))
    }

    fn snapshot_schedule(&self, name: &str) -> Result<ScheduleInfo, AdminError> {
        let st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        Ok(Self::schedule_info(&st, &meta.name))
    }

    fn set_snapshot_schedule(
        &self,
        name: &str,
        schedule: Option<SnapshotSchedule>,
    ) -> Result<ScheduleInfo, AdminError> {
        let mut st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        st.settings
            .set_snapshot_schedule(&meta.name, schedule)
            .map_err(settings_error)?;
        // A new schedule starts from its own first snapshot, not from an old failure.
        st.schedule_attempts.remove(&meta.name);
        Ok(Self::schedule_info(&st, &meta.name))
    }

    fn access(&self, name: &str) -> Result<AccessInfo, AdminError> {
        let st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        Ok(AccessInfo {
            volume: meta.name.clone(),
            initiators: st.settings.initiators(&meta.name).to_vec(),
        })
    }

    fn set_access(&self, name: &str, req: &AccessInfo) -> Result<AccessInfo, AdminError> {
        let mut st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        st.settings
            .set_initiators(&meta.name, &req.initiators)
            .map_err(settings_error)?;
        let initiators = st.settings.initiators(&meta.name).to_vec();
        // The volume's target and its exported snapshots'. Revocation takes effect now: the
        // sessions of initiators the list no longer names are closed (they may not log in again).
        for target in self.login.set_initiators(&meta.name, &initiators) {
            for (initiator, session) in self.registry.sessions_of(&target) {
                if !settings::allows(&initiators, &initiator) {
                    if let Some(shard) = self.shards.get(session.shard) {
                        shard.send(ShardMsg::DropNexus(session.nexus));
                    }
                }
            }
        }
        Ok(AccessInfo {
            volume: meta.name.clone(),
            initiators,
        })
    }

    fn list_snapshots(&self, volume: Option<&str>) -> Result<Vec<SnapshotInfo>, AdminError> {
        let st = self.lock();
        let prefix = volume.map(|v| format!("{v}@"));
        let metas: Vec<ImageMeta> = st
            .pool
            .images()
            .filter(|m| m.kind == ImageKind::Snapshot)
            .filter(|m| {
                prefix
                    .as_ref()
                    .is_none_or(|p| m.name.starts_with(p.as_str()))
            })
            .cloned()
            .collect();
        let usage = self.usage(&st);
        Ok(metas
            .iter()
            .map(|m| self.snapshot_info_with(&st, m, &usage))
            .collect())
    }

    fn create_snapshot(&self, req: &CreateSnapshot) -> Result<SnapshotInfo, AdminError> {
        let mut st = self.lock();
        let volume = Self::volume_meta(&st, &req.volume)?;
        let meta = self.take_snapshot(&mut st, &volume, &req.name)?;
        let usage = Self::fresh_usage(&st, meta.image, meta.image);
        Ok(self.snapshot_info_with(&st, &meta, &usage))
    }

    fn create_snapshot_group(
        &self,
        req: &CreateSnapshotGroup,
    ) -> Result<Vec<SnapshotInfo>, AdminError> {
        let bad = |message: String| AdminError::new(ErrorCode::InvalidArgument, message);
        if req.snapshots.is_empty() {
            return Err(bad("a snapshot group names at least one VOLUME@SNAP".into()));
        }
        let mut st = self.lock();
        let mut volumes: Vec<(ImageMeta, String)> = Vec::new();
        for name in &req.snapshots {
            let Some((volume, snap)) = name.split_once('@') else {
                return Err(bad(format!(
                    "invalid snapshot {name:?}: expected VOLUME@SNAPSHOT"
                )));
            };
            let meta = Self::volume_meta(&st, volume)?;
            if volumes.iter().any(|(m, _)| m.image == meta.image) {
                return Err(bad(format!("volume {volume} is named twice")));
            }
            volumes.push((meta, snap.to_string()));
        }
        let taken = self.snapshot_group(&mut st, &volumes)?;
        Ok(taken
            .iter()
            .map(|meta| {
                let usage = Self::fresh_usage(&st, meta.image, meta.image);
                self.snapshot_info_with(&st, meta, &usage)
            })
            .collect())
    }

    fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<(), AdminError> {
        let mut st = self.lock();
        let meta = Self::snapshot_meta(&st, volume, snapshot)?;
        self.remove_snapshot(&mut st, &meta)
    }

    fn rename_volume(&self, name: &str, req: &Rename) -> Result<VolumeInfo, AdminError> {
        let mut st = self.lock();
        let meta = Self::volume_meta(&st, name)?;
        let new = req.name.as_str();
        Self::check_new_name(&st, new)?;
        let prefix = format!("{name}@");
        let snapshots: Vec<ImageMeta> = st
            .pool
            .images()
            .filter(|m| m.kind == ImageKind::Snapshot && m.name.starts_with(&prefix))
            .cloned()
            .collect();
        if let Some(s) = snapshots.iter().find(|s| st.served.contains_key(&s.image)) {
            return Err(AdminError::new(
                ErrorCode::Conflict,
                format!(
                    "snapshot {} is exported: withdraw it first (shoal snapshot export {} --disable)",
                    s.name, s.name
                ),
            ));
        }
        for s in &snapshots {
            let renamed = format!("{new}{}", &s.name[name.len()..]);
            if st.pool.find(&renamed).is_some() {
                return Err(AdminError::new(
                    ErrorCode::AlreadyExists,
                    format!("{renamed:?} already exists"),
                ));
            }
        }
        // The target's IQN changes: its sessions must be gone first.
        let removed = self.unserve(&mut st, meta.image, false).map_err(|e| {
            AdminError::new(
                ErrorCode::InUse,
                format!(
                    "volume {name} must be offline to be renamed ({})",
                    e.message
                ),
            )
        })?;
        let reserved = Self::put_back(&mut st, meta.image, removed);
        // The settings and the APTPL record are copied to the new name first, then one record
        // renames the volume and its snapshots, then the old name's copies go: a crash at any
        // point leaves the volume under one name with its settings and reservations, plus
        // copies under a name without a volume, which the next start drops. Refused, the volume
        // is served again under its old name.
        let moved = self
            .copy_volume_state(&mut st, name, new)
            .and_then(|()| st.pool.rename(meta.image, new).map_err(pool_error));
        if let Err(e) = moved {
            self.forget_volume_state(&mut st, new);
            if let Some(reserved) = reserved {
                self.serve_reserved(&mut st, &meta, target_name(name), false, reserved)?;
            }
            return Err(e);
        }
        self.forget_volume_state(&mut st, name);
        if let Some(at) = st.schedule_attempts.remove(name) {
            st.schedule_attempts.insert(new.to_string(), at);
        }
        let meta = st
            .pool
            .image(meta.image)
            .cloned()
            .ok_or_else(|| internal("volume vanished"))?;
        if let Some(reserved) = reserved {
            self.serve_reserved(&mut st, &meta, target_name(new), false, reserved)?;
        }
        Ok(self.volume_info(&st, &meta))
    }

    fn rollback(&self, volume: &str, snapshot: &str) -> Result<VolumeInfo, AdminError> {
        let mut st = self.lock();
        let vol = Self::volume_meta(&st, volume)?;
        let snap = Self::snapshot_meta(&st, volume, snapshot)?;
        let old = self.unserve(&mut st, vol.image, false).map_err(|e| {
            AdminError::new(
                ErrorCode::InUse,
                format!(
                    "volume {volume} must be offline to roll back ({})",
                    e.message
                ),
            )
        })?;
        // Its shard no longer serves it, so its sanitize record is settled: an erase that was
        // started (and resumes when the volume is served) must not erase the rolled-back data.
        // (A record that cannot be read leaves the volume offline, its map in the catalog: it
        // could not be served either.)
        match self.sanitizing(volume) {
            Ok(false) => {}
            Ok(true) => {
                if let Some(reserved) = Self::put_back(&mut st, vol.image, old) {
                    self.serve_reserved(&mut st, &vol, target_name(volume), false, reserved)?;
                }
                return Err(AdminError::new(
                    ErrorCode::Conflict,
                    format!("volume {volume} is being sanitized: roll it back once the erase ends"),
                ));
            }
            Err(e) => {
                Self::put_back(&mut st, vol.image, old);
                return Err(e);
            }
        }
        let map = st
            .pool
            .rollback(vol.image, snap.image)
            .map_err(pool_error)?;
        let old_reserved = old.map_or(0, |(old_map, reserved)| {
            drop(old_map);
            reserved
        });
        let meta = st
            .pool
            .image(vol.image)
            .cloned()
            .ok_or_else(|| internal("volume vanished"))?;
        // A full volume's reservation follows the rolled-back map: one extent per logical
        // extent (all it maps is shared with the snapshot).
        st.pool.shared().refs.unreserve(old_reserved);
        // The old map's extents count until published: publish them before reserving.
        st.pool.publish_frees().map_err(pool_error)?;
        // Everything the rolled-back map holds is shared with the snapshot: it owns nothing
        // alone.
        let reserved = reserve_full_volume(&st, &meta, 0);
        st.pool.put_map(vol.image, map);
        self.serve_reserved(&mut st, &meta, target_name(&meta.name), false, reserved)?;
        Ok(self.volume_info(&st, &meta))
    }

    fn export_snapshot(
        &self,
        volume: &str,
        snapshot: &str,
        req: &Export,
    ) -> Result<SnapshotInfo, AdminError> {
        let mut st = self.lock();
        let meta = Self::snapshot_meta(&st, volume, snapshot)?;
        let served = st.served.contains_key(&meta.image);
        if req.enabled && !served {
            self.serve(&mut st, &meta, snapshot_target(&meta.name), true)?;
        } else if !req.enabled && served {
            self.unserve(&mut st, meta.image, false)?;
        }
        Ok(self.snapshot_info(&st, &meta))
    }

    fn create_clone(&self, req: &CreateClone) -> Result<VolumeInfo, AdminError> {
        let mut st = self.lock();
        Self::check_new_name(&st, &req.name)?;
        self.drop_records(&target_name(&req.name))?;
        let snap = match req.source.split_once('@') {
            Some((v, s)) => Self::snapshot_meta(&st, v, s)?,
            None => {
                // A clone of a volume goes through an implicit snapshot.
                let volume = Self::volume_meta(&st, &req.source)?;
                self.take_snapshot(&mut st, &volume, &format!("clone-{}", req.name))?
            }
        };
        let meta = st
            .pool
            .add_clone(snap.image, &req.name)
            .map_err(pool_error)?;
        self.serve(&mut st, &meta, target_name(&meta.name), false)?;
        // The clone is served now (its map on a shard): it maps what its snapshot maps.
        let usage = Self::fresh_usage(&st, meta.image, snap.image);
        Ok(self.volume_info_with(&st, &meta, &usage))
    }

    fn stats(&self, query: &StatsQuery) -> Result<StatsReport, AdminError> {
        let window = stats_window(query.window)?;
        let luns = self.collect_stats(query.volume.as_deref(), window)?;
        Ok(StatsReport {
            window_seconds: query.window,
            latency_stats: self.latency_stats,
            luns: luns.iter().map(metrics::lun_report).collect(),
            logins: self.login.counts.snapshot(),
        })
    }

    fn stats_histogram(
        &self,
        volume: &str,
        class: StatsClass,
        window: Option<u32>,
    ) -> Result<HistogramReport, AdminError> {
        let luns = self.collect_stats(Some(volume), stats_window(window)?)?;
        let Some(lun) = luns.first() else {
            return Err(not_found("served volume", volume));
        };
        let wanted: &[usize] = match class {
            StatsClass::Read => &[0],
            StatsClass::Write => &[1],
            StatsClass::Other => &[2],
            StatsClass::All => &[0, 1, 2],
        };
        let now = SystemTime::now();
        let (histograms, interval_log, start) =
            metrics::encode_histograms(lun, wanted, now).map_err(internal)?;
        Ok(HistogramReport {
            volume: lun.volume.clone(),
            target: lun.target.clone(),
            window_seconds: window,
            start_time: start
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| (d.as_secs_f64() * 1000.0).round() / 1000.0),
            seconds: (lun.seconds * 1000.0).round() / 1000.0,
            histograms,
            interval_log,
        })
    }

    fn reset_stats(&self, volume: Option<&str>) -> Result<ResetReport, AdminError> {
        let target = volume.map(volume_target);
        let mut waits = Vec::new();
        for shard in &self.shards {
            let (tx, rx) = bounded(1);
            let target = target.clone();
            if shard.send(ShardMsg::ResetStats { target, reply: tx }) {
                waits.push(rx);
            }
        }
        let mut volumes = Vec::new();
        for rx in waits {
            volumes.extend(
                rx.recv_timeout(SHARD_TIMEOUT)
                    .map_err(|_| internal("shard did not answer"))?,
            );
        }
        if let (Some(name), true) = (volume, volumes.is_empty()) {
            return Err(not_found("served volume", name));
        }
        volumes.sort();
        Ok(ResetReport { volumes })
    }

    fn sessions(&self, volume: Option<&str>) -> Result<Vec<SessionInfo>, AdminError> {
        let names: HashMap<String, String> = {
            let st = self.lock();
            let names: HashMap<String, String> = st
                .served
                .values()
                .map(|s| (s.target.clone(), s.alias.clone()))
                .collect();
            if let Some(v) = volume
                && !names.values().any(|n| n == v)
                && Self::volume_meta(&st, v).is_err()
            {
                return Err(not_found("volume", v));
            }
            names
        };
        let want = volume.map(volume_target);
        Ok(self
            .registry
            .list()
            .into_iter()
            .filter(|s| want.as_ref().is_none_or(|t| *t == s.key.target))
            .map(|s| session_info(s, &names))
            .collect())
    }

    fn session_counts(&self) -> Result<Vec<(String, u64)>, AdminError> {
        // The names only, under the state lock; the counts from one read of the registry.
        let names: Vec<String> = self
            .lock()
            .pool
            .images()
            .filter(|m| m.kind == ImageKind::Volume)
            .map(|m| m.name.clone())
            .collect();
        let mut per_target: HashMap<String, u64> = HashMap::new();
        for s in self.registry.list() {
            *per_target.entry(s.key.target).or_default() += 1;
        }
        Ok(names
            .into_iter()
            .map(|name| {
                let n = per_target.get(&target_name(&name)).copied().unwrap_or(0);
                (name, n)
            })
            .collect())
    }

    fn drop_session(&self, tsih: u16) -> Result<(), AdminError> {
        let session = self
            .registry
            .list()
            .into_iter()
            .find(|s| s.entry.tsih == tsih)
            .ok_or_else(|| {
                AdminError::new(ErrorCode::NotFound, format!("no session with TSIH {tsih}"))
            })?;
        let sent = self
            .shards
            .get(session.entry.shard)
            .is_some_and(|h| h.send(ShardMsg::DropNexus(session.entry.nexus)));
        if !sent {
            return Err(internal(
                "the shard serving the session did not take the request",
            ));
        }
        eprintln!(
            "shoal: session {tsih} of {} to {} ended by the administrator",
            session.key.initiator, session.key.target
        );
        Ok(())
    }
}

/// How the admin API shows a registry session; `names` maps targets to the images they serve.
fn session_info(s: super::SessionView, names: &HashMap<String, String>) -> SessionInfo {
    let details = s.details.as_ref();
    SessionInfo {
        tsih: s.entry.tsih,
        volume: names.get(&s.key.target).cloned().unwrap_or_default(),
        initiator: s.key.initiator,
        isid: s.key.isid.iter().map(|b| format!("{b:02x}")).collect(),
        target: s.key.target,
        initiator_alias: details.and_then(|d| d.alias.clone()),
        peer: details.and_then(|d| d.peer).map(|a| a.to_string()),
        logged_in_at: details.and_then(|d| {
            d.since
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|t| t.as_secs())
        }),
        header_digest: details.is_some_and(|d| d.header_digest),
        data_digest: details.is_some_and(|d| d.data_digest),
        shard: s.entry.shard,
    }
}

/// The target a volume (or `VOLUME@SNAP`, an exported snapshot) is served as.
fn volume_target(name: &str) -> String {
    if name.contains('@') {
        snapshot_target(name)
    } else {
        target_name(name)
    }
}

fn stats_window(window: Option<u32>) -> Result<Window, AdminError> {
    match window {
        None => Ok(Window::SinceReset),
        Some(n) if (1..=MAX_WINDOW_SECS).contains(&n) => Ok(Window::Last(n)),
        Some(n) => Err(AdminError::new(
            ErrorCode::InvalidArgument,
            format!("invalid window {n}: expected 1 to {MAX_WINDOW_SECS} seconds"),
        )),
    }
}

impl Daemon {
    /// Snapshots of the LUNs (of one volume when named) from every shard, by volume name.
    fn collect_stats(
        &self,
        volume: Option<&str>,
        window: Window,
    ) -> Result<Vec<LunSnapshot>, AdminError> {
        let target = volume.map(volume_target);
        let mut waits = Vec::new();
        for shard in &self.shards {
            let (tx, rx) = bounded(1);
            let msg = ShardMsg::Stats {
                target: target.clone(),
                window,
                reply: tx,
            };
            if shard.send(msg) {
                waits.push(rx);
            }
        }
        let mut luns = Vec::new();
        for rx in waits {
            luns.extend(
                rx.recv_timeout(SHARD_TIMEOUT)
                    .map_err(|_| internal("shard did not answer"))?,
            );
        }
        if let (Some(name), true) = (volume, luns.is_empty()) {
            return Err(not_found("served volume", name));
        }
        luns.iter_mut().for_each(LunSnapshot::merge_slots);
        luns.sort_by(|a, b| a.volume.cmp(&b.volume));
        Ok(luns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(shards: &[usize]) -> HashMap<u64, Served> {
        shards
            .iter()
            .enumerate()
            .map(|(i, &shard)| {
                let target = format!("t{i}");
                let alias = target.clone();
                (
                    i as u64,
                    Served {
                        shard,
                        target,
                        alias,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn new_images_spread_one_per_idle_shard() {
        let mut placed = Vec::new();
        for turn in 0..4 {
            let shard = least_loaded_shard(&served(&placed), 4, turn);
            placed.push(shard);
        }
        placed.sort_unstable();
        assert_eq!(placed, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_new_image_goes_to_the_shard_that_lost_one() {
        // Shards 0..3 serve 2, 1, 2, 2 images (one of shard 1's was deleted): whatever the
        // rotation, the next image goes to shard 1.
        let map = served(&[0, 0, 1, 2, 2, 3, 3]);
        for turn in 0..8 {
            assert_eq!(least_loaded_shard(&map, 4, turn), 1);
        }
    }

    #[test]
    fn one_shard_takes_everything() {
        assert_eq!(least_loaded_shard(&served(&[0, 0]), 1, 7), 0);
        assert_eq!(least_loaded_shard(&HashMap::new(), 0, 3), 0);
    }
}
