//! The pool on the control side: creating and recovering a pool, the catalog of images
//! (volumes, snapshots, clones), and the journal records of catalog operations.
//!
//! Recovery: the newest valid superblock → its checkpoint (if any) → every journal record newer
//! than the checkpoint, in sequence order, replayed onto plain copy-on-write leaf tables
//! (`ReplayMap`) → those leaves become the live [`ExtentMap`]s (sharing preserved by leaf
//! identity) over a fresh [`RefTable`] whose counts are recomputed from the maps
//! ([`adopt_loaded`]), so no extent is both free and mapped and no count is wrong, by
//! construction.
//!
//! Catalog operations append one record to `journal/control.log` and `fdatasync` it before they
//! return. The record's sequence number orders it against the shards' mapping records: a
//! snapshot's number is taken by the shard at the instant it shares the volume's map.

use super::extent_map::{
    ExtentMap, FANOUT, Leaf, MapError, UsageSource, adopt_loaded, exclusive_extents,
};
use super::format::{self, FormatError, ImageKind, ImageMeta, Superblock};
use super::journal::{self, JournalReader, JournalWriter, Op, Record};
use super::refs::RefTable;
use super::thin::PoolShared;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use thiserror::Error;

/// Errors of the pool's control side.
#[derive(Debug, Error)]
pub enum PoolError {
    /// The on-disk format layer failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Loading extent maps failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A data store operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The journal contradicts itself (a record names an image that does not exist...).
    #[error("journal record {seq}: {reason}")]
    Replay {
        /// The record's sequence number.
        seq: u64,
        /// What is inconsistent.
        reason: String,
    },
    /// A pool parameter is invalid.
    #[error("invalid pool parameter: {0}")]
    Invalid(String),
}

/// A logical map under replay: copy-on-write leaves shared by `Arc` (recovery only).
#[derive(Debug, Clone, Default)]
struct ReplayMap {
    len: u64,
    leaves: BTreeMap<u64, Arc<[u64; FANOUT]>>,
}

impl ReplayMap {
    fn new(len: u64) -> Self {
        ReplayMap {
            len,
            leaves: BTreeMap::new(),
        }
    }

    fn set(&mut self, lext: u64, pext: u64) -> Result<(), String> {
        if lext >= self.len {
            return Err(format!("logical extent {lext} past the end ({})", self.len));
        }
        let leaf = self
            .leaves
            .entry(lext / FANOUT as u64)
            .or_insert_with(|| Arc::new([0; FANOUT]));
        Arc::make_mut(leaf)[(lext % FANOUT as u64) as usize] = pext;
        Ok(())
    }

    fn resize(&mut self, len: u64) {
        if len < self.len {
            let first_leaf = len / FANOUT as u64;
            self.leaves.retain(|&i, _| i <= first_leaf);
            if let Some(leaf) = self.leaves.get_mut(&first_leaf) {
                let from = (len % FANOUT as u64) as usize;
                Arc::make_mut(leaf)[from..].fill(0);
            }
        }
        self.len = len;
    }
}

/// Number of logical extents of an image of `size` bytes.
pub fn extents_for(size: u64, extent_size: u64) -> u64 {
    size.div_ceil(extent_size)
}

/// The pool, as the control thread holds it.
pub struct Pool {
    dir: PathBuf,
    sb: Superblock,
    shared: Arc<PoolShared>,
    control: JournalWriter,
    images: BTreeMap<u64, ImageMeta>,
    /// Maps the control plane holds: snapshots, and volumes not handed to a shard.
    maps: HashMap<u64, ExtentMap>,
    next_image: u64,
}

/// The control journal of superblock generation `generation`.
fn control_journal_name(generation: u64) -> String {
    format!("control-{generation:08}.log")
}

impl Pool {
    /// Whether `dir` holds a pool.
    pub fn exists(dir: &Path) -> bool {
        Superblock::path(dir).exists()
    }

    /// Creates a pool in `dir` with a data store of `size_bytes` (a sparse file `dir/data`) cut
    /// into `extent_size` extents.
    pub fn create(
        dir: &Path,
        size_bytes: u64,
        extent_size: u32,
        direct: bool,
    ) -> Result<Pool, PoolError> {
        if !extent_size.is_power_of_two()
            || !(format::MIN_EXTENT_SIZE..=format::MAX_EXTENT_SIZE).contains(&extent_size)
        {
            return Err(PoolError::Invalid(format!(
                "extent size {extent_size} must be a power of two between {} and {}",
                format::MIN_EXTENT_SIZE,
                format::MAX_EXTENT_SIZE
            )));
        }
        let capacity = size_bytes / u64::from(extent_size);
        if capacity < 16 {
            return Err(PoolError::Invalid(format!(
                "pool size {size_bytes} holds fewer than 16 extents"
            )));
        }
        std::fs::create_dir_all(format::journal_dir(dir)).map_err(|source| PoolError::Io {
            what: "create pool directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut sb = Superblock::new(extent_size, capacity, format::random_uuid()?);
        let data_path = dir.join(&sb.data_path);
        let data = open_data(&data_path, capacity * u64::from(extent_size), direct)?;
        sb.create(dir)?;
        let refs = RefTable::new(capacity);
        Pool::assemble(dir, sb, data, refs, BTreeMap::new(), HashMap::new(), 0)
    }

    /// Opens and recovers the pool in `dir`.
    pub fn open(dir: &Path, direct: bool) -> Result<Pool, PoolError> {
        let sb = Superblock::read(dir)?;
        let data_path = resolve(dir, &sb.data_path);
        let data = open_data(
            &data_path,
            sb.capacity_extents * u64::from(sb.extent_size),
            direct,
        )?;
        let (images, replay, max_seq, max_image) = recover(dir, &sb)?;
        // What recovery saw must be durable before any extent it found free is reused: a
        // record that freed an extent may still be only in the page cache.
        sync_journals(dir)?;
        let refs = RefTable::new(sb.capacity_extents);
        let maps = build_maps(&replay, &refs)?;
        let mut pool = Pool::assemble(dir, sb, data, refs, images, maps, max_seq)?;
        // Image ids are never reused, even those of deleted images (identities and journal
        // file names derive from them).
        pool.next_image = pool.next_image.max(max_image + 1);
        Ok(pool)
    }

    fn assemble(
        dir: &Path,
        sb: Superblock,
        data: File,
        refs: Arc<RefTable>,
        images: BTreeMap<u64, ImageMeta>,
        maps: HashMap<u64, ExtentMap>,
        seq: u64,
    ) -> Result<Pool, PoolError> {
        refs.defer_frees();
        let in_memory = crate::storage::in_memory_fs(&data);
        let shared = Arc::new(PoolShared {
            in_memory,
            data,
            extent_size: u64::from(sb.extent_size),
            refs,
            seq: Arc::new(AtomicU64::new(seq.max(sb.checkpoint_seq))),
            soft_threshold_pct: AtomicU8::new(sb.soft_threshold_pct),
        });
        let control = JournalWriter::open(
            &format::journal_dir(dir).join(control_journal_name(sb.generation)),
        )?;
        let next_image = images
            .keys()
            .next_back()
            .map_or(1, |k| k + 1)
            .max(sb.next_image_id);
        Ok(Pool {
            dir: dir.to_path_buf(),
            sb,
            shared,
            control,
            images,
            maps,
            next_image,
        })
    }

    /// What every volume of the pool shares.
    pub fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }

    /// The pool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// Every live image.
    pub fn images(&self) -> impl Iterator<Item = &ImageMeta> {
        self.images.values()
    }

    /// The image named `name`.
    pub fn find(&self, name: &str) -> Option<&ImageMeta> {
        self.images.values().find(|m| m.name == name)
    }

    /// The image with id `image`.
    pub fn image(&self, image: u64) -> Option<&ImageMeta> {
        self.images.get(&image)
    }

    /// Takes the map of `image` (to hand the volume to a shard).
    pub fn take_map(&mut self, image: u64) -> Option<ExtentMap> {
        self.maps.remove(&image)
    }

    /// Gives a map back to the control plane (a volume no longer served).
    pub fn put_map(&mut self, image: u64, map: ExtentMap) {
        self.maps.insert(image, map);
    }

    /// The map of `image`, if the control plane holds it.
    pub fn map(&self, image: u64) -> Option<&ExtentMap> {
        self.maps.get(&image)
    }

    /// Opens the journal a shard writes `image`'s mapping records to.
    pub fn volume_journal(&self, image: u64) -> Result<JournalWriter, PoolError> {
        let path =
            format::journal_dir(&self.dir).join(journal_file_name(image, self.sb.generation));
        Ok(JournalWriter::open(&path)?)
    }

    /// The superblock generation the next checkpoint will write (new journal files are named
    /// for it when shards rotate).
    pub fn next_generation(&self) -> u64 {
        self.sb.generation + 1
    }

    /// Makes the extents freed so far reusable: syncs every journal (so the records that
    /// released them are durable), then publishes them to the free queue. Returns how many.
    pub fn publish_frees(&self) -> Result<usize, PoolError> {
        let refs = &self.shared.refs;
        let n = refs.pending_frees();
        if n == 0 {
            return Ok(0);
        }
        sync_journals(&self.dir)?;
        Ok(refs.publish_freed(n))
    }

    /// Bytes of journal on disk (what recovery would replay).
    pub fn journal_bytes(&self) -> u64 {
        journal::list_journals(&self.dir)
            .map(|files| {
                files
                    .iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Extents each image held here owns alone (what deleting it would free; see
    /// [`exclusive_extents`]). Images served by a shard are not here: call this before serving
    /// them (start-up) or account for them separately.
    pub fn exclusive_extents(&self) -> HashMap<u64, u64> {
        let sources: Vec<(u64, UsageSource<'_>)> = self
            .maps
            .iter()
            .map(|(&image, map)| (image, UsageSource::Map(map)))
            .collect();
        exclusive_extents(&sources, &self.shared.refs)
    }

    /// Sets the soft threshold (percent of the pool used, 1..=100): shards see it at once;
    /// it is stored in the superblock by the next checkpoint (the caller writes one).
    pub fn set_soft_threshold(&mut self, pct: u8) -> Result<(), PoolError> {
        if !(1..=100).contains(&pct) {
            return Err(PoolError::Invalid(format!(
                "soft threshold {pct}% is not in 1..=100"
            )));
        }
        self.sb.soft_threshold_pct = pct;
        self.shared.soft_threshold_pct.store(pct, Ordering::Relaxed);
        Ok(())
    }

    /// First step of growing the pool to `size_bytes` (rounded down to whole extents): extends
    /// the data store (a file grows, sparse, and is fsynced; a device must already be that
    /// large) and records the new capacity in the in-memory superblock. The caller then writes
    /// a checkpoint (which makes the superblock durable) and calls
    /// [`Pool::publish_capacity`]: no extent past the old capacity is handed out before the
    /// superblock that covers it is on disk. Returns the new capacity in extents (unchanged
    /// when `size_bytes` is the current size).
    pub fn grow_data_store(&mut self, size_bytes: u64) -> Result<u64, PoolError> {
        let es = u64::from(self.sb.extent_size);
        let now = self.sb.capacity_extents.max(self.shared.refs.capacity());
        let wanted = size_bytes / es;
        if wanted < now {
            return Err(PoolError::Invalid(format!(
                "a pool only grows: it holds {} bytes, not {size_bytes}",
                now * es
            )));
        }
        let limit = self.shared.refs.growth_limit();
        if wanted > limit {
            return Err(PoolError::Invalid(format!(
                "this daemon can grow the pool to at most {} bytes ({}x the size it started \
                 with); restart it to grow further",
                limit * es,
                super::refs::GROWTH_LIMIT
            )));
        }
        if wanted == now {
            return Ok(now);
        }
        let data = &self.shared.data;
        let path = resolve(&self.dir, &self.sb.data_path);
        let io = |what, source| PoolError::Io {
            what,
            path: path.clone(),
            source,
        };
        let len = wanted * es;
        let meta = data.metadata().map_err(|e| io("stat data store", e))?;
        if meta.file_type().is_file() {
            if meta.len() < len {
                data.set_len(len).map_err(|e| io("grow data store", e))?;
            }
            data.sync_all().map_err(|e| io("sync data store", e))?;
        } else {
            let mut handle = data;
            let device_len = std::io::Seek::seek(&mut handle, std::io::SeekFrom::End(0))
                .map_err(|e| io("size data store device", e))?;
            if device_len < len {
                return Err(PoolError::Invalid(format!(
                    "the data store device {} holds {device_len} bytes, fewer than {len}: grow \
                     the device first",
                    path.display()
                )));
            }
        }
        self.sb.capacity_extents = wanted;
        Ok(wanted)
    }

    /// Last step of a growth ([`Pool::grow_data_store`], then a checkpoint): the new extents
    /// become allocatable to every shard.
    pub fn publish_capacity(&self) -> Result<(), PoolError> {
        self.shared
            .refs
            .grow(self.sb.capacity_extents)
            .map_err(|e| PoolError::Invalid(e.to_string()))
    }

    /// Writes a checkpoint and retires the journals it covers.
    ///
    /// `live` holds, for every volume served by a shard, its map and the sequence number of the
    /// instant the shard cut it — the shard has already continued that volume's journal in a
    /// file named for [`Pool::next_generation`]. `old_journals` are the journal files that
    /// existed before the shards rotated. Images the control plane holds (snapshots, volumes
    /// not served) are taken from the pool. The checkpoint covers every record up to
    /// `min(cuts) - 1`: later records are all in the new files. Catalog operations must not run
    /// concurrently (the caller holds the control lock).
    pub fn checkpoint(
        &mut self,
        live: Vec<(u64, ExtentMap, u64)>,
        old_journals: Vec<PathBuf>,
    ) -> Result<(), PoolError> {
        let generation = self.next_generation();
        // Files of the new generation are live (a checkpoint that crashed after rotating left
        // some behind, and rotation appended to them): never retire them.
        let suffix = format!("-{generation:08}.log");
        let old_journals: Vec<PathBuf> = old_journals
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with(&suffix))
            .collect();
        let control_path = format::journal_dir(&self.dir).join(control_journal_name(generation));
        let control_cut = self.next_seq();
        self.control.rotate(&control_path)?;
        let cut = live
            .iter()
            .map(|l| l.2)
            .chain(std::iter::once(control_cut))
            .min()
            .unwrap_or(control_cut);
        let live: HashMap<u64, ExtentMap> = live
            .into_iter()
            .map(|(image, map, _)| (image, map))
            .collect();
        let data = self.checkpoint_data(&live, cut - 1)?;
        let name = super::checkpoint::write_checkpoint(&self.dir, generation, &data)?;
        let previous = self.sb.checkpoint.replace(name);
        self.sb.checkpoint_seq = cut - 1;
        self.sb.next_image_id = self.next_image;
        self.sb.write(&self.dir)?;
        journal::remove_journals(&old_journals)?;
        if let Some(old) = previous {
            let _ = std::fs::remove_file(self.dir.join(old));
        }
        Ok(())
    }

    fn checkpoint_data(
        &self,
        live: &HashMap<u64, ExtentMap>,
        seq: u64,
    ) -> Result<super::checkpoint::CheckpointData, PoolError> {
        let mut data = super::checkpoint::CheckpointData {
            seq,
            ..Default::default()
        };
        let mut leaf_numbers: HashMap<usize, u32> = HashMap::new();
        for meta in self.images.values() {
            let map = live
                .get(&meta.image)
                .or_else(|| self.maps.get(&meta.image))
                .ok_or_else(|| {
                    PoolError::Invalid(format!("no map for image {} at checkpoint", meta.name))
                })?;
            let mut list = Vec::new();
            let mut mapped = 0u64;
            map.for_each_leaf(|index, id, entries| {
                let number = *leaf_numbers.entry(id).or_insert_with(|| {
                    data.leaves.push(*entries);
                    (data.leaves.len() - 1) as u32
                });
                mapped += entries.iter().filter(|&&p| p != 0).count() as u64;
                list.push((index, number));
            });
            list.sort_unstable_by_key(|&(index, _)| index);
            data.images.push(super::checkpoint::ImageEntry {
                meta: meta.clone(),
                mapped_extents: mapped,
            });
            data.image_leaves.push((meta.image, list));
        }
        Ok(data)
    }

    /// The next sequence number (for records the control thread orders itself).
    pub fn next_seq(&self) -> u64 {
        self.shared.next_seq()
    }

    fn commit(&mut self, seq: u64, op: Op) -> Result<(), PoolError> {
        self.control.append(&Record { seq, op })?;
        self.control.sync()?;
        Ok(())
    }

    fn new_meta(
        &mut self,
        parent: Option<u64>,
        kind: ImageKind,
        name: &str,
        size: u64,
        block_size: u32,
        thin: bool,
    ) -> ImageMeta {
        let image = self.next_image;
        self.next_image += 1;
        let mut identity = [0u8; 16];
        identity[..8].copy_from_slice(&self.sb.uuid[..8]);
        identity[8..].copy_from_slice(&image.to_be_bytes());
        ImageMeta {
            image,
            parent,
            kind,
            name: name.to_string(),
            size_bytes: size,
            block_size,
            thin,
            identity,
            created_unix_secs: now_secs(),
        }
    }

    /// Creates an empty volume; its map is held by the control plane until taken.
    pub fn create_volume(
        &mut self,
        name: &str,
        size: u64,
        block_size: u32,
        thin: bool,
    ) -> Result<ImageMeta, PoolError> {
        let meta = self.new_meta(None, ImageKind::Volume, name, size, block_size, thin);
        let seq = self.next_seq();
        self.commit(seq, Op::CreateImage(Box::new(meta.clone())))?;
        let extents = extents_for(size, self.shared.extent_size);
        self.maps.insert(
            meta.image,
            ExtentMap::new(extents, Arc::clone(&self.shared.refs)),
        );
        self.images.insert(meta.image, meta.clone());
        Ok(meta)
    }

    /// Records a snapshot of `volume` named `name`, whose map `map` the shard shared at `seq`.
    pub fn add_snapshot(
        &mut self,
        volume: u64,
        name: &str,
        map: ExtentMap,
        seq: u64,
    ) -> Result<ImageMeta, PoolError> {
        let source = self
            .images
            .get(&volume)
            .cloned()
            .ok_or_else(|| missing(volume))?;
        let meta = self.new_meta(
            Some(volume),
            ImageKind::Snapshot,
            name,
            source.size_bytes,
            source.block_size,
            source.thin,
        );
        self.commit(seq, Op::CreateImage(Box::new(meta.clone())))?;
        self.maps.insert(meta.image, map);
        self.images.insert(meta.image, meta.clone());
        Ok(meta)
    }

    /// Creates a writable clone of snapshot `snapshot`; its map is held until taken.
    pub fn add_clone(&mut self, snapshot: u64, name: &str) -> Result<ImageMeta, PoolError> {
        let source = self
            .images
            .get(&snapshot)
            .cloned()
            .ok_or_else(|| missing(snapshot))?;
        let map = self
            .maps
            .get(&snapshot)
            .map(ExtentMap::snapshot)
            .ok_or_else(|| missing(snapshot))?;
        let meta = self.new_meta(
            Some(snapshot),
            ImageKind::Volume,
            name,
            source.size_bytes,
            source.block_size,
            true,
        );
        let seq = self.next_seq();
        self.commit(seq, Op::CreateImage(Box::new(meta.clone())))?;
        self.maps.insert(meta.image, map);
        self.images.insert(meta.image, meta.clone());
        Ok(meta)
    }

    /// Deletes an image (its map, if held here, is dropped: exclusively held extents return to
    /// the free queue as the last references go).
    pub fn delete(&mut self, image: u64) -> Result<Option<ExtentMap>, PoolError> {
        if !self.images.contains_key(&image) {
            return Err(missing(image));
        }
        let seq = self.next_seq();
        self.commit(seq, Op::DeleteImage { image })?;
        self.images.remove(&image);
        Ok(self.maps.remove(&image))
    }

    /// Rolls `volume` back to `snapshot`: returns the volume's new map (a share of the
    /// snapshot's). The caller drops the old map.
    pub fn rollback(&mut self, volume: u64, snapshot: u64) -> Result<ExtentMap, PoolError> {
        let map = self
            .maps
            .get(&snapshot)
            .map(ExtentMap::snapshot)
            .ok_or_else(|| missing(snapshot))?;
        let size = self
            .images
            .get(&snapshot)
            .map(|m| m.size_bytes)
            .ok_or_else(|| missing(snapshot))?;
        let seq = self.next_seq();
        self.commit(
            seq,
            Op::Rollback {
                image: volume,
                snapshot,
            },
        )?;
        if let Some(m) = self.images.get_mut(&volume) {
            m.size_bytes = size;
        }
        Ok(map)
    }

    /// Renames image `image`, and with a volume its snapshots (`old@s` becomes `name@s`), in one
    /// `Rename` record: a crash leaves either every old name or every new one.
    pub fn rename(&mut self, image: u64, name: &str) -> Result<(), PoolError> {
        if !self.images.contains_key(&image) {
            return Err(missing(image));
        }
        let seq = self.next_seq();
        let name = name.to_string();
        self.commit(
            seq,
            Op::Rename {
                image,
                name: name.clone(),
            },
        )?;
        rename_with_snapshots(&mut self.images, image, name);
        Ok(())
    }

    /// Makes volume `image` thin provisioned (`thin`) or full, durably (one catalog record).
    /// The caller reserves or gives back its space (`RefTable::reserve` / `unreserve`).
    pub fn set_thin(&mut self, image: u64, thin: bool) -> Result<(), PoolError> {
        let seq = self.next_seq();
        self.commit(seq, Op::Provision { image, thin })?;
        if let Some(m) = self.images.get_mut(&image) {
            m.thin = thin;
        }
        Ok(())
    }

    /// Records a new size for `image` (before the shard grows its map).
    pub fn resize(&mut self, image: u64, size: u64) -> Result<(), PoolError> {
        let seq = self.next_seq();
        self.commit(
            seq,
            Op::Resize {
                image,
                size_bytes: size,
            },
        )?;
        if let Some(m) = self.images.get_mut(&image) {
            m.size_bytes = size;
        }
        let extents = extents_for(size, self.shared.extent_size);
        if let Some(map) = self.maps.get_mut(&image) {
            map.resize(extents);
        }
        Ok(())
    }
}

/// `fdatasync`s every journal file of the pool.
fn sync_journals(dir: &Path) -> Result<(), PoolError> {
    for path in journal::list_journals(dir)? {
        let synced = File::open(&path).and_then(|f| f.sync_data());
        if let Err(source) = synced {
            // A journal deleted by a concurrent checkpoint is covered by it.
            if source.kind() != std::io::ErrorKind::NotFound {
                return Err(PoolError::Io {
                    what: "sync journal",
                    path,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The journal file of `image` written during superblock generation `generation`.
pub fn journal_file_name(image: u64, generation: u64) -> String {
    format!("image-{image:016x}-{generation:08}.log")
}

fn missing(image: u64) -> PoolError {
    PoolError::Invalid(format!("no image {image}"))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn resolve(dir: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

fn open_data(path: &Path, len: u64, direct: bool) -> Result<File, PoolError> {
    let io = |what, source| PoolError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    if direct {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts.open(path).map_err(|e| io("open data store", e))?;
    let meta = file.metadata().map_err(|e| io("stat data store", e))?;
    if meta.file_type().is_file() && meta.len() < len {
        file.set_len(len).map_err(|e| io("size data store", e))?;
    }
    Ok(file)
}

/// Catalog, replay maps, highest sequence number and highest image id ever created.
type Recovered = (BTreeMap<u64, ImageMeta>, HashMap<u64, ReplayMap>, u64, u64);

/// What reading the journals found (for `shoal check`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Journal files.
    pub files: usize,
    /// Records replayed (newer than the checkpoint).
    pub records: u64,
    /// Bytes of torn tails discarded (a crash mid-append; harmless).
    pub torn_bytes: u64,
}

/// Loads the checkpoint and replays the journals onto replay maps.
fn recover(dir: &Path, sb: &Superblock) -> Result<Recovered, PoolError> {
    recover_with_stats(dir, sb).map(|(r, _)| r)
}

/// [`recover`], also reporting what the journals held.
fn recover_with_stats(dir: &Path, sb: &Superblock) -> Result<(Recovered, JournalStats), PoolError> {
    let es = u64::from(sb.extent_size);
    let mut images = BTreeMap::new();
    let mut maps: HashMap<u64, ReplayMap> = HashMap::new();
    if let Some(name) = &sb.checkpoint {
        let ck = super::checkpoint::read_checkpoint(dir, name)?;
        let leaves: Vec<Arc<[u64; FANOUT]>> = ck.leaves.iter().map(|l| Arc::new(*l)).collect();
        for entry in ck.images {
            let mut m = ReplayMap::new(extents_for(entry.meta.size_bytes, es));
            if let Some((_, list)) = ck
                .image_leaves
                .iter()
                .find(|(id, _)| *id == entry.meta.image)
            {
                for &(index, leaf) in list {
                    let leaf = leaves.get(leaf as usize).ok_or_else(|| PoolError::Replay {
                        seq: ck.seq,
                        reason: format!("checkpoint leaf {leaf} missing"),
                    })?;
                    m.leaves.insert(index, Arc::clone(leaf));
                }
            }
            maps.insert(entry.meta.image, m);
            images.insert(entry.meta.image, entry.meta);
        }
    }
    let mut readers = Vec::new();
    for path in journal::list_journals(dir)? {
        readers.push(JournalReader::open(&path)?);
    }
    let records = journal::replay_order(&mut readers, sb.checkpoint_seq)?;
    let stats = JournalStats {
        files: readers.len(),
        records: records.len() as u64,
        torn_bytes: readers.iter().map(JournalReader::discarded_bytes).sum(),
    };
    let mut max_seq = sb.checkpoint_seq;
    let mut max_image = sb.next_image_id.saturating_sub(1);
    max_image = max_image.max(images.keys().next_back().copied().unwrap_or(0));
    for r in records {
        max_seq = max_seq.max(r.seq);
        if let Op::CreateImage(meta) = &r.op {
            max_image = max_image.max(meta.image);
        }
        apply(&mut images, &mut maps, es, r.seq, r.op)?;
    }
    Ok(((images, maps, max_seq, max_image), stats))
}

/// The findings of an offline check of a pool.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Live images.
    pub images: usize,
    /// Of which snapshots.
    pub snapshots: usize,
    /// Physical extents referenced.
    pub used_extents: u64,
    /// Physical extents in the pool.
    pub capacity_extents: u64,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// Journals read.
    pub journals: JournalStats,
    /// Every invariant that failed, precisely.
    pub problems: Vec<String>,
}

/// Gives image `image` the name `name`; a volume's snapshots (named `old@s`) follow as `name@s`.
fn rename_with_snapshots(images: &mut BTreeMap<u64, ImageMeta>, image: u64, name: String) {
    let Some(meta) = images.get_mut(&image) else {
        return;
    };
    let old = std::mem::replace(&mut meta.name, name.clone());
    if meta.kind != ImageKind::Volume {
        return;
    }
    let prefix = format!("{old}@");
    for m in images.values_mut() {
        if m.kind == ImageKind::Snapshot {
            if let Some(snapshot) = m.name.strip_prefix(&prefix) {
                m.name = format!("{name}@{snapshot}");
            }
        }
    }
}

/// Checks every metadata invariant of the pool in `dir` without changing anything: the
/// superblock, the checkpoint, every journal record (replayed in order: each names a live image
/// and a logical extent inside it), every mapped physical extent inside the pool, image names
/// unique, and the reference counts recomputed from the maps consistent with the allocation
/// counters (no extent both free and mapped). A failure to read or replay is returned as an
/// error; invariant violations are listed in the report.
pub fn check(dir: &Path) -> Result<CheckReport, PoolError> {
    let sb = Superblock::read(dir)?;
    let es = u64::from(sb.extent_size);
    let ((images, replay, _, _), journals) = recover_with_stats(dir, &sb)?;
    let mut report = CheckReport {
        images: images.len(),
        snapshots: images
            .values()
            .filter(|m| m.kind == ImageKind::Snapshot)
            .count(),
        capacity_extents: sb.capacity_extents,
        extent_size: es,
        journals,
        ..CheckReport::default()
    };
    let data = resolve(dir, &sb.data_path);
    match std::fs::metadata(&data) {
        Ok(m) if m.file_type().is_file() && m.len() < sb.capacity_extents * es => {
            report.problems.push(format!(
                "data store {} is {} bytes, smaller than the pool's {} extents of {es}",
                data.display(),
                m.len(),
                sb.capacity_extents
            ))
        }
        Ok(_) => {}
        Err(e) => report
            .problems
            .push(format!("data store {}: {e}", data.display())),
    }
    let mut names = std::collections::HashSet::new();
    for m in images.values() {
        if !names.insert(m.name.as_str()) {
            report
                .problems
                .push(format!("image name {:?} used twice", m.name));
        }
        if m.kind == ImageKind::Snapshot && !m.name.contains('@') {
            report
                .problems
                .push(format!("snapshot {:?} is not named VOLUME@SNAP", m.name));
        }
    }
    for (image, m) in &replay {
        if !images.contains_key(image) {
            report
                .problems
                .push(format!("map of image {image} has no catalog entry"));
        }
        let extents = images
            .get(image)
            .map_or(m.len, |meta| extents_for(meta.size_bytes, es));
        if m.len != extents {
            report.problems.push(format!(
                "image {image}: map of {} extents for a size of {extents}",
                m.len
            ));
        }
        for (&index, leaf) in &m.leaves {
            for (i, &p) in leaf.iter().enumerate() {
                let lext = index * FANOUT as u64 + i as u64;
                if p > sb.capacity_extents {
                    report.problems.push(format!(
                        "image {image}: logical extent {lext} maps extent {p} outside the pool"
                    ));
                } else if p != 0 && lext >= m.len {
                    report.problems.push(format!(
                        "image {image}: logical extent {lext} mapped past the end"
                    ));
                }
            }
        }
    }
    if report.problems.is_empty() {
        let refs = RefTable::new(sb.capacity_extents);
        let maps = build_maps(&replay, &refs)?;
        let all: Vec<&ExtentMap> = maps.values().collect();
        let counts = super::extent_map::count_references(sb.capacity_extents, &all)?;
        let referenced = counts.iter().filter(|&&c| c > 0).count() as u64;
        report.used_extents = refs.used_extents();
        if referenced != refs.used_extents() {
            report.problems.push(format!(
                "{referenced} extents referenced but the allocator counts {} used",
                refs.used_extents()
            ));
        }
        if refs.used_extents() + refs.free_extents() > sb.capacity_extents {
            report.problems.push(format!(
                "used {} + free {} exceed the capacity {}",
                refs.used_extents(),
                refs.free_extents(),
                sb.capacity_extents
            ));
        }
    }
    Ok(report)
}

fn apply(
    images: &mut BTreeMap<u64, ImageMeta>,
    maps: &mut HashMap<u64, ReplayMap>,
    es: u64,
    seq: u64,
    op: Op,
) -> Result<(), PoolError> {
    let bad = |reason: String| PoolError::Replay { seq, reason };
    match op {
        Op::Map { image, lext, pext } => {
            // Records of an image deleted later in the same replay were dropped with it.
            if let Some(m) = maps.get_mut(&image) {
                m.set(lext, pext).map_err(bad)?;
            }
        }
        Op::Provision { image, thin } => {
            if let Some(meta) = images.get_mut(&image) {
                meta.thin = thin;
            }
        }
        Op::MapGroup { image, entries } => {
            if let Some(m) = maps.get_mut(&image) {
                for (lext, pext) in entries {
                    m.set(lext, pext).map_err(bad)?;
                }
            }
        }
        Op::UnmapRange {
            image,
            first_lext,
            count,
        } => {
            if let Some(m) = maps.get_mut(&image) {
                for lext in first_lext..first_lext.saturating_add(count).min(m.len) {
                    m.set(lext, 0).map_err(bad)?;
                }
            }
        }
        Op::CreateImage(meta) => {
            let mut m = match meta.parent {
                Some(p) => maps
                    .get(&p)
                    .cloned()
                    .ok_or_else(|| bad(format!("parent image {p} unknown")))?,
                None => ReplayMap::new(0),
            };
            m.resize(extents_for(meta.size_bytes, es));
            maps.insert(meta.image, m);
            images.insert(meta.image, *meta);
        }
        Op::DeleteImage { image } => {
            maps.remove(&image);
            images.remove(&image);
        }
        Op::Rollback { image, snapshot } => {
            let m = maps
                .get(&snapshot)
                .cloned()
                .ok_or_else(|| bad(format!("snapshot {snapshot} unknown")))?;
            let size = images.get(&snapshot).map_or(m.len * es, |s| s.size_bytes);
            if let Some(meta) = images.get_mut(&image) {
                meta.size_bytes = size;
            }
            maps.insert(image, m);
        }
        Op::Resize { image, size_bytes } => {
            if let Some(m) = maps.get_mut(&image) {
                m.resize(extents_for(size_bytes, es));
            }
            if let Some(meta) = images.get_mut(&image) {
                meta.size_bytes = size_bytes;
            }
        }
        Op::Rename { image, name } => rename_with_snapshots(images, image, name),
    }
    Ok(())
}

/// Turns replay maps into live extent maps over `refs`, sharing each replay leaf once, and
/// recounts the references.
fn build_maps(
    replay: &HashMap<u64, ReplayMap>,
    refs: &Arc<RefTable>,
) -> Result<HashMap<u64, ExtentMap>, PoolError> {
    let mut shared: HashMap<*const [u64; FANOUT], Arc<Leaf>> = HashMap::new();
    let mut maps = HashMap::new();
    for (&image, m) in replay {
        let leaves: Vec<(u64, Arc<Leaf>)> = m
            .leaves
            .iter()
            .map(|(&index, leaf)| {
                let key = Arc::as_ptr(leaf);
                let live = shared.entry(key).or_insert_with(|| Leaf::new(**leaf));
                (index, Arc::clone(live))
            })
            .collect();
        maps.insert(
            image,
            ExtentMap::from_leaves(m.len, Arc::clone(refs), leaves)?,
        );
    }
    let all: Vec<&ExtentMap> = maps.values().collect();
    adopt_loaded(refs, &all)?;
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::pool::thin::ThinVolume;
    use crate::storage::{Volume, WritePiece};

    const ES: u32 = 64 * 1024;

    fn thin(pool: &mut Pool, meta: &ImageMeta) -> ThinVolume {
        let map = pool.take_map(meta.image).expect("map held");
        let journal = pool.volume_journal(meta.image).expect("journal");
        ThinVolume::new(
            meta.image,
            map,
            Arc::clone(pool.shared()),
            journal,
            meta.size_bytes,
            512,
            false,
        )
        .expect("volume")
    }

    /// Plans and commits a write without doing the data I/O (mapping only).
    fn write_mapping(v: &mut ThinVolume, offset: u64, len: u64) {
        let mut plan = Vec::new();
        v.plan_write(offset, len, &mut plan).expect("plan");
        for piece in plan {
            if let WritePiece::NewExtent(e) = piece {
                v.commit_extent(&e).expect("commit");
            }
        }
    }

    #[test]
    fn a_grown_pool_allocates_past_its_old_size_and_reopens_at_its_new_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = Pool::create(dir.path(), 16 * u64::from(ES), ES, false).unwrap();
        let meta = pool
            .create_volume("vol", 32 * u64::from(ES), 512, true)
            .unwrap();
        let mut v = thin(&mut pool, &meta);
        write_mapping(&mut v, 0, 16 * u64::from(ES));
        let mut plan = Vec::new();
        assert!(
            v.plan_write(16 * u64::from(ES), 4096, &mut plan).is_err(),
            "full"
        );
        // Shrinking and growing past the daemon's room are refused.
        for bad in [8, 16 * crate::storage::pool::refs::GROWTH_LIMIT + 1] {
            let e = pool.grow_data_store(bad * u64::from(ES)).unwrap_err();
            assert!(matches!(e, PoolError::Invalid(_)), "{e}");
        }
        assert_eq!(pool.grow_data_store(16 * u64::from(ES)).unwrap(), 16);
        assert_eq!(pool.grow_data_store(24 * u64::from(ES) + 100).unwrap(), 24);
        assert_eq!(pool.shared().refs.capacity(), 16, "not before publication");
        let data_len = std::fs::metadata(dir.path().join("data")).unwrap().len();
        assert_eq!(data_len, 24 * u64::from(ES));
        let journals = journal::list_journals(dir.path()).unwrap();
        let (map, cut) = v.rotate_journal(pool.next_generation()).unwrap();
        pool.checkpoint(vec![(meta.image, map, cut)], journals)
            .unwrap();
        pool.publish_capacity().unwrap();
        write_mapping(&mut v, 16 * u64::from(ES), 8 * u64::from(ES));
        assert_eq!(pool.shared().refs.free_extents(), 0);
        let written = v.map().get(20).unwrap();
        assert!(written > 16, "an extent past the old size: {written}");
        drop(v);
        drop(pool);
        let pool = Pool::open(dir.path(), false).unwrap();
        assert_eq!(pool.superblock().capacity_extents, 24);
        assert_eq!(pool.shared().refs.capacity(), 24);
        assert_eq!(pool.shared().refs.used_extents(), 24);
        assert_eq!(pool.map(meta.image).unwrap().get(20), Some(written));
    }

    #[test]
    fn pool_recovers_volumes_snapshots_and_clones_from_journals() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = Pool::create(dir.path(), 64 << 20, ES, false).unwrap();
        let meta = pool.create_volume("vol", 16 << 20, 512, true).unwrap();
        let mut v = thin(&mut pool, &meta);
        write_mapping(&mut v, 0, 4096);
        write_mapping(&mut v, 1 << 20, 128 << 10);
        let before = v.map().get(0).unwrap();
        let seq = pool.next_seq();
        let snap = pool
            .add_snapshot(meta.image, "vol@s1", v.map().snapshot(), seq)
            .unwrap();
        // Copy-on-write after the snapshot: a new extent for logical extent 0.
        write_mapping(&mut v, 0, 4096);
        let after = v.map().get(0).unwrap();
        assert_ne!(before, after);
        let clone = pool.add_clone(snap.image, "vm1").unwrap();
        let used = pool.shared().refs.used_extents();
        drop(v);
        drop(pool);

        let mut pool = Pool::open(dir.path(), false).unwrap();
        assert_eq!(pool.images().count(), 3);
        assert_eq!(pool.map(snap.image).unwrap().get(0), Some(before));
        assert_eq!(pool.map(meta.image).unwrap().get(0), Some(after));
        assert_eq!(pool.map(clone.image).unwrap().get(0), Some(before));
        assert_eq!(
            pool.map(meta.image).unwrap().get(16),
            pool.map(snap.image).unwrap().get(16)
        );
        assert_eq!(pool.shared().refs.used_extents(), used);
        // Deleting the origin volume keeps the snapshot and the clone intact.
        pool.delete(meta.image).unwrap();
        assert_eq!(pool.map(clone.image).unwrap().get(0), Some(before));
        // The dropped references wait until the journals are synced: nothing is freed (or
        // looks exclusive) before that.
        assert_eq!(pool.shared().refs.used_extents(), used);
        let pending = pool.shared().refs.pending_frees();
        assert!(pending >= 1);
        assert_eq!(pool.publish_frees().unwrap(), pending);
        assert_eq!(pool.shared().refs.used_extents(), used - 1);
        // Sequence numbers continue after the recovered ones.
        let v = thin(&mut pool, &clone);
        assert_eq!(v.map().get(0), Some(before));
    }

    #[test]
    fn renaming_a_volume_renames_its_snapshots_with_it_and_replays_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut pool = Pool::create(dir.path(), 16 << 20, ES, false).unwrap();
        let vol = pool.create_volume("vol", 4 << 20, 512, true).unwrap();
        let other = pool.create_volume("vol2", 4 << 20, 512, true).unwrap();
        let v = thin(&mut pool, &vol);
        let w = thin(&mut pool, &other);
        let seq = pool.next_seq();
        let s1 = pool
            .add_snapshot(vol.image, "vol@s1", v.map().snapshot(), seq)
            .unwrap();
        let seq = pool.next_seq();
        let s2 = pool
            .add_snapshot(other.image, "vol2@s1", w.map().snapshot(), seq)
            .unwrap();
        let clone = pool.add_clone(s1.image, "vm1").unwrap();
        pool.rename(vol.image, "db").unwrap();
        assert_eq!(pool.image(s1.image).unwrap().name, "db@s1");
        pool.rename(s2.image, "vol2@s2").unwrap();
        drop((v, w));
        drop(pool);
        let pool = Pool::open(dir.path(), false).unwrap();
        let name = |image| pool.image(image).unwrap().name.clone();
        assert_eq!(name(vol.image), "db");
        assert_eq!(name(s1.image), "db@s1");
        assert_eq!(name(other.image), "vol2", "a name sharing the prefix stays");
        assert_eq!(name(s2.image), "vol2@s2");
        assert_eq!(name(clone.image), "vm1");
    }

    #[test]
    fn pool_refuses_bad_extent_sizes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Pool::create(dir.path(), 64 << 20, 3000, false).is_err());
        assert!(Pool::create(dir.path(), 64 << 20, 2 << 20, false).is_err());
    }
}
