//! Model test of the thin pool (issue 3, "Tests", first bullet).
//!
//! Random sequences of write / atomic write / unmap / extent sharing within and between volumes
//! (EXTENDED COPY by reference) / read / snapshot / clone / delete / rollback / resize /
//! create (thin or full) / checkpoint / sync / publish-frees / restart (`kill -9`, also in the
//! middle of a write or of a checkpoint) / power loss, over a small pool (4 KiB extents, 16..=64
//! of them, so that it fills up often) with volumes of 1..=24 extents (one leaf of the extent
//! map) or 500..=1200 (an interior node over several leaves), checked after every step against
//! an in-memory model: the contents of each image, extent by extent.
//!
//! The test plays the shard and the control thread itself, through the library's public API,
//! mirroring what `src/runtime/shard.rs` and `src/control/daemon.rs` do for each operation; the
//! data I/O the shard does on io_uring is done here with `pread` / `pwrite` on the data store:
//! - write: `plan_write`; `InPlace` pieces are written at their offset; a `NewExtent` is built
//!   (old contents from `copy_from`, or zeros), the bytes laid at `within`, the whole extent
//!   written at `offset`; then every `NewExtent` is committed (data before record). A write
//!   refused with `NoSpace` changes nothing.
//! - read: `map_read`, `File` pieces by `pread`, `Zero` pieces as zeros. Snapshots are read
//!   through the map the pool holds (`Pool::map` + `ExtentMap::get` + `pread`), and through a
//!   read-only `ThinVolume` (an exported snapshot, which must refuse writes).
//! - create: a full volume reserves its extents first (`RefTable::reserve`) and is served with
//!   `with_reservation`; snapshot: `ThinVolume::reserve_for_snapshot` (refused when the pool
//!   cannot top a full volume's reservation up), `ThinVolume::share` then `Pool::add_snapshot` (the shard's
//!   `snapshot` + the daemon's `take_snapshot`); clone: `Pool::add_clone` then serve; delete:
//!   take the volume's map (the shard's `RemoveLun`), `Pool::delete`, drop the map, give back
//!   the reservation; rollback: take the map, `Pool::rollback`, drop the old map,
//!   `Pool::put_map`, serve again with the old reservation; resize: `Pool::resize` then
//!   `ThinVolume::grow`; checkpoint: `rotate_journal` on every volume then `Pool::checkpoint`;
//!   publish: `Pool::publish_frees` (the daemon's 100 ms tick); restart: the daemon's `start`
//!   (full volumes re-reserve every extent they do not own alone).
//!
//! After every step: the catalog equals the model (ids, names, kinds, sizes, thin/full); every
//! volume and snapshot reads back exactly its model; every reference count equals a recount of
//! the live images' maps (`count_references`), so the pool's used extents are exactly the
//! distinct physical extents referenced plus those waiting to be published, and
//! `free + used <= capacity`; the reservations equal what the full volumes hold and
//! `used + reserved <= capacity`; image ids are never handed out twice; a full volume never
//! runs out of space ("space reserved at creation, never out of space": its reservation covers
//! every logical extent it does not own alone — a snapshot tops it up first or is refused — so
//! neither a first write nor a copy-on-write of an extent shared with a snapshot can fail).
//!
//! # Restart (`kill -9`)
//! Everything is dropped (journal records are in the page cache: complete), `catalog::check`
//! (`shoal check`) must find no problem and count the extents the maps referenced, `Pool::open`
//! recovers, the volumes are served again, and every image must equal the model exactly. A crash
//! in the middle of a write (data written, some of its new extents committed) may leave each
//! extent it touched old or new; one in the middle of a checkpoint (after the shards rotated
//! their journals) loses nothing.
//!
//! # Power loss: what is and is not guaranteed
//! The durable state is tracked per journal file, as the bytes an `fdatasync` covered:
//! - `Sync` (SYNCHRONIZE CACHE / FUA on every volume) calls `fdatasync` on every descriptor of
//!   every volume's `sync_fds` and records the content of the files they name (found through
//!   `/proc/self/fd`);
//! - every catalog operation `fdatasync`s the control journal before it returns
//!   (`Pool::commit`): after one, the control journal (`journal/control*.log`) is durable;
//! - `publish_frees` syncs every journal when extents are pending; rotating a journal (checkpoint)
//!   syncs the old file; a completed checkpoint makes everything durable (checkpoint file and
//!   superblock fsynced, fresh journals);
//! - after recovery from a power loss, what is on disk is by definition durable (torn tails
//!   excepted: they are cut when the journal is next opened).
//!
//! The data store is written with O_DIRECT in production: its bytes are on the device once a
//! write completes, so a power loss keeps the data store as it is (the worst case for journals:
//! the data of a later write is there, its mapping record maybe not; docs/format.md's "known
//! gap" of a volatile device cache is not modelled). Each journal file is cut at a random length
//! between its durable length and its current length (a torn tail, possibly mid-record; sometimes
//! the cut part is zeroed instead of removed, as when the file size reached the disk but the page
//! did not; seed 0 cuts every journal back to its durable length). Then `catalog::check` must
//! report no problem, `Pool::open` must succeed, and every image must read back an acceptable
//! state, from docs/format.md's commit protocol:
//! - every catalog operation (create, snapshot, clone, delete, rollback, resize) is durable when
//!   it returns: the set of images, names, kinds and sizes are exactly the model's;
//! - a logical extent not written (nor unmapped) since its image's last durable point reads
//!   exactly its content at that point (a write acknowledged and then covered by a SYNCHRONIZE
//!   CACHE is durable: data and mapping);
//! - an extent written or unmapped since then reads its content at the durable point or the
//!   content it had after one of those later acknowledged writes / unmaps: write-back caching
//!   (WCE=1) promises nothing more. The check is per extent; it does not check that the
//!   surviving changes of one volume form a prefix of its history;
//! - a snapshot is exactly the volume as it was when the snapshot returned, whatever was synced:
//!   docs/format.md ("Catalog operations", step 2) has the shard fdatasync the volume's journal at
//!   the snapshot point "so that the snapshot recovered after a power failure is the one the
//!   admin saw". So a snapshot is also a durable point of its volume, and a clone of it or a
//!   rollback to it starts from its exact contents; a later write to the clone or the rolled-back
//!   volume may again be lost (old = the snapshot's contents);
//! - a resize's new extents read zeros; a deleted image stays deleted;
//! - nothing reads data that the model never had in that extent: an extent freed (or made
//!   exclusive) by a record that a power loss can drop must not be reused (or overwritten in
//!   place) by another image.
//!
//! After the check, the model adopts what was recovered.
//!
//! What the durability tracking cannot see: an fsync the library does on its own beyond those
//! listed above (if `ThinVolume::share` or the shard's snapshot started syncing the journal as
//! documented, the test needs no change: it already expects the snapshot's contents exactly),
//! and a missing fsync of the checkpoint or superblock (trusted).
//!
//! Failing cases shrink and are saved to `tests/pool_model.proptest-regressions`; the minimal
//! sequences of the bugs found so far are spelled out as plain tests at the end of this file.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use shoal::storage::pool::catalog::{self, Pool};
use shoal::storage::pool::extent_map::{
    ExtentMap, UsageSource, UsageWalk, count_references, exclusive_extents,
};
use shoal::storage::pool::format::{ImageKind, ImageMeta};
use shoal::storage::pool::journal;
use shoal::storage::pool::thin::ThinVolume;
use shoal::storage::{Piece, PlanError, Volume, WritePiece};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Extent size of the pools under test.
const ES: u64 = 4096;
/// Logical block size of every volume.
const BS: u64 = 512;
/// Blocks per extent.
const BPE: u64 = ES / BS;
/// Largest volume, in blocks. Volumes are small (up to 24 extents, one leaf of the map) or
/// large (mostly past 512 extents: a map with an interior node over several leaves).
const MAX_VOLUME_BLOCKS: u64 = 1200 * BPE;
/// The size in blocks of a new volume: one in four is large (500..700 extents), the others
/// small (1..=24 extents); mostly not a whole number of extents.
fn volume_blocks(pick: u16) -> u64 {
    let n = u64::from(pick / 4);
    if pick % 4 == 3 {
        500 * BPE + n % (200 * BPE)
    } else {
        n % (24 * BPE) + 1
    }
}

/// How many blocks a resize adds (at most `room`): even picks a few extents, odd ones anything
/// (which takes a small volume past one leaf).
fn grow_blocks(pick: u16, room: u64) -> u64 {
    let n = u64::from(pick / 2);
    if pick % 2 == 0 {
        (n % (4 * BPE) + 1).min(room)
    } else {
        n % room + 1
    }
}

/// Snapshots and clones are not taken past this many live images.
const MAX_IMAGES: usize = 12;

type Outcome = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// One step. Image picks (`vol`, `snap`, `img`) choose among the images of that kind when the
/// step runs (modulo their count, in id order); offsets and lengths are in blocks and clamped
/// to the image, so every sequence is valid (and shrinks toward the first image, block 0).
#[derive(Debug, Clone)]
enum Op {
    /// Write `blocks` blocks of fresh bytes at block `at` of a volume.
    Write { vol: u16, at: u16, blocks: u16 },
    /// UNMAP a block range of a volume.
    Unmap { vol: u16, at: u16, blocks: u16 },
    /// EXTENDED COPY of whole extents from one volume to another, by reference
    /// (`ThinVolume::lend_extents` on the source, `adopt_extents` on the destination).
    ShareAcross {
        from: u16,
        to: u16,
        src: u16,
        dst: u16,
        extents: u16,
    },
    /// Make a volume full (`ThinVolume::make_full`, then `Pool::set_thin`) or thin
    /// (`Pool::set_thin`, then `make_thin`), as the daemon's `set_provisioning` does.
    SetFull { vol: u16, full: bool },
    /// Convert a volume to full the way the shard does, a few leaves at a time
    /// (`ExtentMap::usage_step`, then `ThinVolume::make_full_measured`), with any other step
    /// free to run between two of these: the walk starts, or goes on by `steps` leaves.
    StepFull { vol: u16, steps: u16 },
    /// WRITE ATOMIC of `blocks` blocks of fresh bytes at block `at` of a volume.
    AtomicWrite { vol: u16, at: u16, blocks: u16 },
    /// `kill -9` right after a WRITE ATOMIC's data, before or after its one record; restart.
    CrashMidAtomicWrite {
        vol: u16,
        at: u16,
        blocks: u16,
        committed: bool,
    },
    /// EXTENDED COPY of whole extents within a volume, by reference
    /// (`ThinVolume::share_extents`): `extents` extents from extent `src` to extent `dst`.
    Share {
        vol: u16,
        src: u16,
        dst: u16,
        extents: u16,
    },
    /// Read a block range of any image (volume or snapshot) and compare.
    Read { img: u16, at: u16, blocks: u16 },
    /// Snapshot a volume.
    Snapshot { vol: u16 },
    /// Clone a snapshot as a new volume.
    Clone { snap: u16 },
    /// Delete any image.
    Delete { img: u16 },
    /// Roll a volume back to one of its snapshots.
    Rollback { vol: u16, snap: u16 },
    /// Grow a volume by `blocks` blocks.
    Resize { vol: u16, blocks: u16 },
    /// Create a new empty volume of `blocks` blocks, thin or full (space reserved).
    Create { blocks: u16, full: bool },
    /// Checkpoint (every map and the catalog), retiring the journals.
    Checkpoint,
    /// SYNCHRONIZE CACHE on every volume.
    Sync,
    /// The daemon's background tick: `Pool::publish_frees` (freed extents become reusable once
    /// every journal is synced).
    Publish,
    /// `kill -9` and restart.
    Restart,
    /// `kill -9` in the middle of a write: its data is written, the first `commits` of its new
    /// extents are committed, then restart. Each extent it touches may read old or new.
    CrashMidWrite {
        vol: u16,
        at: u16,
        blocks: u16,
        commits: u8,
    },
    /// `kill -9` in the middle of a checkpoint: after the shards have rotated their volumes'
    /// journals, before `Pool::checkpoint`; then restart.
    CrashMidCheckpoint,
    /// Power loss and restart; `seed` draws the torn tails (0: every journal loses all it
    /// had not synced).
    PowerLoss { seed: u64 },
}

/// The model of one image, extent by extent (sparse: volumes may span many leaves of the map).
#[derive(Clone)]
struct Img {
    name: String,
    kind: ImageKind,
    /// For a snapshot: the volume it was taken of (rollback targets).
    of_volume: Option<u64>,
    /// A full volume (space reserved at creation: "never out of space").
    full: bool,
    /// A full volume whose reservation could not be re-established after a rollback (the
    /// daemon warns): it no longer has the "never out of space" guarantee.
    unbacked: bool,
    /// Size in bytes.
    size: u64,
    /// The contents of every logical extent that is not all zeros, `ES` bytes each (bytes past
    /// `size` are zeros).
    data: BTreeMap<u64, Vec<u8>>,
    /// Per logical extent: other contents it may show after a power loss (its content at the
    /// last durable point and after each later write / unmap, but not the current one).
    alts: BTreeMap<u64, Vec<Vec<u8>>>,
}

static ZEROS: [u8; ES as usize] = [0; ES as usize];

impl Img {
    fn new(name: String, kind: ImageKind, size: u64) -> Img {
        Img {
            name,
            kind,
            of_volume: None,
            full: false,
            unbacked: false,
            size,
            data: BTreeMap::new(),
            alts: BTreeMap::new(),
        }
    }

    fn extent(&self, lext: u64) -> &[u8] {
        self.data.get(&lext).map_or(&ZEROS[..], |e| &e[..])
    }

    fn set_extent(&mut self, lext: u64, bytes: Vec<u8>) {
        if bytes.iter().all(|&b| b == 0) {
            self.data.remove(&lext);
        } else {
            self.data.insert(lext, bytes);
        }
    }

    /// `len` bytes at `offset`.
    fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut at = offset;
        while at < offset + len {
            let n = (ES - at % ES).min(offset + len - at);
            out.extend_from_slice(&self.extent(at / ES)[(at % ES) as usize..][..n as usize]);
            at += n;
        }
        out
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        let mut at = offset;
        let end = offset + bytes.len() as u64;
        while at < end {
            let n = (ES - at % ES).min(end - at);
            let mut ext = self.extent(at / ES).to_vec();
            ext[(at % ES) as usize..][..n as usize]
                .copy_from_slice(&bytes[(at - offset) as usize..][..n as usize]);
            self.set_extent(at / ES, ext);
            at += n;
        }
    }

    /// Remembers the current contents of every extent touched by `[start, end)` as acceptable
    /// after a power loss (the change about to be made may not survive).
    fn remember(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        for lext in (start / ES)..end.div_ceil(ES) {
            let cur = self.extent(lext).to_vec();
            let alts = self.alts.entry(lext).or_default();
            if !alts.contains(&cur) {
                alts.push(cur);
            }
        }
    }

    /// Whether `actual` is an acceptable content of `lext` after a power loss.
    fn acceptable(&self, lext: u64, actual: &[u8]) -> bool {
        self.extent(lext) == actual
            || self
                .alts
                .get(&lext)
                .is_some_and(|a| a.iter().any(|c| c[..] == *actual))
    }

    /// A durable point: only the current contents are acceptable.
    fn settle(&mut self) {
        self.alts.clear();
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The bytes of write number `id`: every 512-byte block starts with the write's number and the
/// block's index in the write (so that a divergence names the write it came from), then
/// pseudo-random bytes.
fn pattern(id: u32, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (b, block) in out.chunks_mut(BS as usize).enumerate() {
        block[0..4].copy_from_slice(&id.to_le_bytes());
        block[4..8].copy_from_slice(&(b as u32).to_le_bytes());
        let mut x = (u64::from(id) << 32) | b as u64;
        for chunk in block[8..].chunks_mut(8) {
            x = splitmix(x);
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
    out
}

/// A short description of some bytes, block by block: `0` (zeros), `wN.b` (block `b` of write
/// `N`, intact), `?` (anything else).
fn describe(bytes: &[u8]) -> String {
    let mut s = String::new();
    for block in bytes.chunks(BS as usize) {
        if !s.is_empty() {
            s.push(' ');
        }
        if block.iter().all(|&b| b == 0) {
            s.push('0');
            continue;
        }
        let id = u32::from_le_bytes(block[0..4].try_into().unwrap());
        let b = u32::from_le_bytes(block[4..8].try_into().unwrap());
        let fresh = pattern(id, (b as usize + 1) * BS as usize);
        if id != 0 && fresh[b as usize * BS as usize..][..block.len()] == *block {
            let _ = write!(s, "w{id}.{b}");
        } else {
            s.push('?');
        }
    }
    s
}

/// The first extent where two sparse images differ, described.
fn first_difference(actual: &BTreeMap<u64, Vec<u8>>, model: &Img) -> String {
    let lexts: std::collections::BTreeSet<u64> =
        actual.keys().chain(model.data.keys()).copied().collect();
    for lext in lexts {
        let got = actual.get(&lext).map_or(&ZEROS[..], |e| &e[..]);
        if got != model.extent(lext) {
            return format!(
                "logical extent {lext} reads [{}], model [{}]",
                describe(got),
                describe(model.extent(lext))
            );
        }
    }
    "equal".into()
}

struct Harness {
    dir: tempfile::TempDir,
    capacity: u64,
    pool: Option<Pool>,
    /// Volumes being served (the shard's LUNs), by image id.
    vols: BTreeMap<u64, ThinVolume>,
    model: BTreeMap<u64, Img>,
    /// Highest image id ever handed out.
    max_id: u64,
    /// Counter for unique names.
    names: u32,
    /// Counter for write patterns.
    writes: u32,
    /// Durable content of each journal file (absent: nothing durable).
    durable: HashMap<PathBuf, Vec<u8>>,
    /// What happened, resolved (for failure messages).
    log: Vec<String>,
    /// A write is being retried after waiting for freed extents (once, as the shard does).
    waited_for_space: bool,
    /// A conversion to full in progress ([`Op::StepFull`]): the volume, its walk, the marks
    /// it started at.
    full_walk: Option<(u64, UsageWalk, u64)>,
}

impl Harness {
    fn new(capacity: u64, sizes: &[u64]) -> Result<Harness, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let pool = Pool::create(dir.path(), capacity * ES, ES as u32, false)
            .map_err(|e| format!("create pool: {e}"))?;
        let mut h = Harness {
            dir,
            capacity,
            pool: Some(pool),
            vols: BTreeMap::new(),
            full_walk: None,
            model: BTreeMap::new(),
            max_id: 0,
            names: 0,
            writes: 0,
            durable: HashMap::new(),
            log: vec![format!("pool of {capacity} extents of {ES}")],
            waited_for_space: false,
        };
        for &blocks in sizes {
            h.create(blocks, false)?;
        }
        h.everything_durable()?;
        Ok(h)
    }

    fn pool(&mut self) -> &mut Pool {
        self.pool.as_mut().expect("pool open")
    }

    fn name(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}{}", self.names)
    }

    fn ids(&self, kind: ImageKind) -> Vec<u64> {
        self.model
            .iter()
            .filter(|(_, m)| m.kind == kind)
            .map(|(&id, _)| id)
            .collect()
    }

    fn pick(&self, kind: Option<ImageKind>, p: u16) -> Option<u64> {
        let ids: Vec<u64> = match kind {
            Some(k) => self.ids(k),
            None => self.model.keys().copied().collect(),
        };
        (!ids.is_empty()).then(|| ids[p as usize % ids.len()])
    }

    /// A block range inside an image of `size` bytes: (offset, len) in bytes.
    fn range(size: u64, at: u16, blocks: u16) -> (u64, u64) {
        let total = size / BS;
        let first = u64::from(at) % total;
        let n = (u64::from(blocks) % (total - first)) + 1;
        (first * BS, n * BS)
    }

    fn new_id(&mut self, meta: &ImageMeta) -> Outcome {
        ensure!(
            meta.image > self.max_id,
            "image id {} handed out again (highest id ever used: {}); docs/format.md: \"the next \
             image id is the larger of the superblock's value and one more than the highest id \
             that any CreateImage used\"",
            meta.image,
            self.max_id
        );
        self.max_id = meta.image;
        Ok(())
    }

    /// Serves volume `meta` (the daemon's `serve_reserved`: its map taken from the pool, with
    /// `reserved` extents of the pool's reservations for a full volume).
    fn serve(&mut self, meta: &ImageMeta, reserved: u64) -> Outcome {
        let pool = self.pool.as_mut().expect("pool open");
        let map = pool
            .take_map(meta.image)
            .ok_or_else(|| format!("volume {} has no map to take", meta.name))?;
        let journal = pool
            .volume_journal(meta.image)
            .map_err(|e| format!("journal of {}: {e}", meta.name))?;
        let v = ThinVolume::new(
            meta.image,
            map,
            Arc::clone(pool.shared()),
            journal,
            meta.size_bytes,
            meta.block_size,
            false,
        )
        .map_err(|e| format!("serve {}: {e}", meta.name))?
        .with_reservation(!meta.thin, reserved);
        // A walk of a map this image had before (crash, rollback) is not one of this map.
        if self.full_walk.as_ref().is_some_and(|w| w.0 == meta.image) {
            self.full_walk = None;
        }
        self.vols.insert(meta.image, v);
        Ok(())
    }

    /// The daemon's `create_volume`: a full volume reserves its extents first.
    fn create(&mut self, blocks: u64, full: bool) -> Outcome {
        let size = blocks * BS;
        let name = self.name("vol");
        let kind = if full { "full" } else { "thin" };
        let reserved = if full { size.div_ceil(ES) } else { 0 };
        if full && !self.pool().shared().refs.reserve(reserved) {
            self.log.push(format!(
                "create {kind} {name} of {blocks} blocks -> cannot reserve {reserved} extents"
            ));
            return Ok(());
        }
        let meta = self
            .pool()
            .create_volume(&name, size, BS as u32, !full)
            .map_err(|e| format!("create {name}: {e}"))?;
        self.new_id(&meta)?;
        self.serve(&meta, reserved)?;
        self.log.push(format!(
            "create {kind} {name} (id {}) of {blocks} blocks",
            meta.image
        ));
        let mut img = Img::new(name, ImageKind::Volume, size);
        img.full = full;
        self.model.insert(meta.image, img);
        // A catalog operation: the control journal is durable.
        self.control_durable()
    }

    // ---- I/O ----

    fn read_volume(&self, id: u64, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        self.read_through(&self.vols[&id], offset, len)
    }

    /// A read through the storage seam: `map_read`, then the pieces.
    fn read_through(&self, v: &ThinVolume, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let id = v.image();
        let pool = self.pool.as_ref().expect("pool open");
        let data = &pool.shared().data;
        let mut pieces = Vec::new();
        v.map_read(offset, len, &mut pieces);
        let mut out = Vec::with_capacity(len as usize);
        for piece in pieces {
            match piece {
                Piece::File { fd, offset, len } => {
                    ensure!(
                        fd == data.as_raw_fd(),
                        "read piece names fd {fd}, not the data store"
                    );
                    ensure!(
                        offset + len <= self.capacity * ES,
                        "read piece {offset}+{len} past the data store"
                    );
                    let at = out.len();
                    out.resize(at + len as usize, 0);
                    data.read_exact_at(&mut out[at..], offset)
                        .map_err(|e| format!("pread: {e}"))?;
                }
                Piece::Zero { len } => out.resize(out.len() + len as usize, 0),
            }
        }
        ensure!(
            out.len() as u64 == len,
            "map_read({offset}, {len}) of image {id} gave pieces of {} bytes",
            out.len()
        );
        Ok(out)
    }

    /// Reads an image the control plane holds (a snapshot) through its map.
    fn read_held(&self, id: u64, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        let pool = self.pool.as_ref().expect("pool open");
        let map = pool
            .map(id)
            .ok_or_else(|| format!("the pool holds no map for snapshot {id}"))?;
        let data = &pool.shared().data;
        let mut out = vec![0u8; len as usize];
        let mut at = offset;
        while at < offset + len {
            let lext = at / ES;
            let within = at % ES;
            let n = (ES - within).min(offset + len - at);
            let dst = &mut out[(at - offset) as usize..][..n as usize];
            if let Some(p) = map.get(lext) {
                ensure!(
                    p >= 1 && p <= self.capacity,
                    "snapshot {id} maps extent {lext} to {p}, outside the pool"
                );
                data.read_exact_at(dst, pool.shared().offset_of(p) + within)
                    .map_err(|e| format!("pread: {e}"))?;
            }
            at += n;
        }
        Ok(out)
    }

    /// Snapshot `id` served as a read-only LUN (daemon `serve` with `read_only`).
    fn export(&mut self, id: u64) -> Result<ThinVolume, String> {
        let pool = self.pool.as_mut().expect("pool open");
        let meta = pool
            .image(id)
            .cloned()
            .ok_or_else(|| format!("no image {id} to export"))?;
        let map = pool
            .map(id)
            .map(ExtentMap::snapshot)
            .ok_or_else(|| format!("snapshot {} has no map", meta.name))?;
        let journal = pool
            .volume_journal(id)
            .map_err(|e| format!("journal of {}: {e}", meta.name))?;
        ThinVolume::new(
            id,
            map,
            Arc::clone(pool.shared()),
            journal,
            meta.size_bytes,
            meta.block_size,
            true,
        )
        .map_err(|e| format!("export {}: {e}", meta.name))
    }

    /// The contents of every logical extent of image `id` that does not read as zeros, `ES`
    /// bytes each: a volume through `map_read`, a snapshot through its map.
    fn image_extents(&self, id: u64) -> Result<BTreeMap<u64, Vec<u8>>, String> {
        let size = self.model[&id].size;
        let pool = self.pool.as_ref().expect("pool open");
        let data = &pool.shared().data;
        let mut out = BTreeMap::new();
        let mut keep = |lext: u64, ext: Vec<u8>| {
            if ext.iter().any(|&b| b != 0) {
                out.insert(lext, ext);
            }
        };
        if let Some(v) = self.vols.get(&id) {
            let mut pieces = Vec::new();
            v.map_read(0, size, &mut pieces);
            let mut at = 0;
            for piece in pieces {
                match piece {
                    Piece::File { fd, offset, len } => {
                        ensure!(
                            fd == data.as_raw_fd() && offset + len <= self.capacity * ES,
                            "read piece {piece:?} outside the data store"
                        );
                        let mut done = 0;
                        while done < len {
                            let n = (ES - (at + done) % ES).min(len - done);
                            let mut ext = vec![0u8; ES as usize];
                            data.read_exact_at(
                                &mut ext[((at + done) % ES) as usize..][..n as usize],
                                offset + done,
                            )
                            .map_err(|e| format!("pread: {e}"))?;
                            keep((at + done) / ES, ext);
                            done += n;
                        }
                        at += len;
                    }
                    Piece::Zero { len } => at += len,
                }
            }
            ensure!(
                at == size,
                "map_read of image {id} covers {at} of {size} bytes"
            );
        } else {
            let map = pool
                .map(id)
                .ok_or_else(|| format!("the pool holds no map for snapshot {id}"))?;
            let mut mapped = Vec::new();
            map.for_each_mapped(|lext, p| mapped.push((lext, p)));
            for (lext, p) in mapped {
                ensure!(
                    lext * ES < size && p >= 1 && p <= self.capacity,
                    "snapshot {id} maps logical extent {lext} to {p}"
                );
                let n = ES.min(size - lext * ES);
                let mut ext = vec![0u8; ES as usize];
                data.read_exact_at(&mut ext[..n as usize], pool.shared().offset_of(p))
                    .map_err(|e| format!("pread: {e}"))?;
                keep(lext, ext);
            }
        }
        Ok(out)
    }

    fn read_image(&self, id: u64, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        if self.vols.contains_key(&id) {
            self.read_volume(id, offset, len)
        } else {
            self.read_held(id, offset, len)
        }
    }

    fn write(&mut self, id: u64, offset: u64, len: u64) -> Outcome {
        self.write_up_to(id, offset, len, usize::MAX, false)
    }

    /// A write whose first `commits` new extents are committed (all of them: a whole write;
    /// fewer: the process dies before the others complete, and the caller restarts). `atomic`:
    /// WRITE ATOMIC (`plan_atomic_write`, nothing in place; `commit_atomic` switches every
    /// extent or, with fewer `commits`, none: the model then keeps the old contents exactly).
    fn write_up_to(
        &mut self,
        id: u64,
        offset: u64,
        len: u64,
        commits: usize,
        atomic: bool,
    ) -> Outcome {
        self.writes += 1;
        let wid = self.writes;
        let bytes = pattern(wid, len as usize);
        let pool = self.pool.as_ref().expect("pool open");
        let data = &pool.shared().data;
        // Extents in use minus releases waiting to be published: an allocation the write
        // gives back raises both by one (releases are deferred until the journals are synced).
        let in_use = || {
            let refs = &pool.shared().refs;
            refs.used_extents() as i64 - refs.pending_frees() as i64
        };
        let used_before = in_use();
        let name = self.model[&id].name.clone();
        let v = self.vols.get_mut(&id).expect("served");
        let full = self.model[&id].full && !self.model[&id].unbacked;
        let mut plan = Vec::new();
        let planned = if atomic {
            v.plan_atomic_write(offset, len, &mut plan)
        } else {
            v.plan_write(offset, len, &mut plan)
        };
        match planned {
            Ok(()) => {}
            Err(PlanError::NoSpace) if v.frees_pending() && !self.waited_for_space => {
                // The shard parks such a write until the released extents are published
                // (runtime/io.rs), then plans it again.
                self.log.push(format!(
                    "write w{wid} {name} [{offset}, +{len}) -> waits for freed extents"
                ));
                self.publish()?;
                self.waited_for_space = true;
                let result = self.write_up_to(id, offset, len, commits, atomic);
                self.waited_for_space = false;
                return result;
            }
            Err(PlanError::NoSpace) => {
                self.log.push(format!(
                    "write w{wid} {name} [{offset}, +{len}) -> no space"
                ));
                ensure!(
                    !v.remapping(),
                    "a write refused for lack of space left extents busy"
                );
                // (What it had allocated goes through the pending queue like any freed
                // extent, although no record ever named it.)
                ensure!(
                    in_use() == used_before,
                    "a write refused for lack of space left extents allocated ({used_before} \
                     used before, {} after)",
                    in_use()
                );
                // Issue 3: a full volume has "space reserved at creation, never out of space":
                // its reservation covers every logical extent it does not own alone (snapshots
                // top it up, or are refused). A WRITE ATOMIC rewriting extents it owns alone
                // needs free pool space for a moment (documented), so only plain writes count.
                ensure!(
                    !full || atomic,
                    "full volume {name} is out of space writing [{offset}, +{len}) ({} extents \
                     still reserved for it)",
                    v.reserved_left()
                );
                return Ok(());
            }
            Err(e) => return Err(format!("plan_write {name} [{offset}, +{len}): {e}")),
        }
        let store = self.capacity * ES;
        let mut covered = 0u64;
        let mut new = Vec::new();
        for piece in &plan {
            match *piece {
                WritePiece::InPlace {
                    fd,
                    offset: at,
                    len: n,
                    data_at,
                } => {
                    ensure!(!atomic, "an atomic write planned in place: {plan:?}");
                    ensure!(fd == data.as_raw_fd(), "in-place piece on fd {fd}");
                    ensure!(data_at == covered, "plan out of order: {plan:?}");
                    ensure!(at + n <= store, "in-place piece past the store: {plan:?}");
                    data.write_all_at(&bytes[data_at as usize..][..n as usize], at)
                        .map_err(|e| format!("pwrite: {e}"))?;
                    covered += n;
                }
                WritePiece::NewExtent(e) => {
                    ensure!(e.fd == data.as_raw_fd(), "new extent on fd {}", e.fd);
                    ensure!(e.data_at == covered, "plan out of order: {plan:?}");
                    let logical = offset + e.data_at;
                    ensure!(
                        e.lext == logical / ES && e.within == logical % ES && e.extent_len == ES,
                        "new extent does not match its range: {e:?}"
                    );
                    ensure!(
                        e.within + e.len <= ES
                            && e.offset % ES == 0
                            && e.offset + ES <= store
                            && e.offset == pool.shared().offset_of(e.pext),
                        "new extent outside the store: {e:?}"
                    );
                    let mut buf = vec![0u8; ES as usize];
                    if let Some(from) = e.copy_from {
                        ensure!(from % ES == 0 && from + ES <= store, "copy from {from}");
                        data.read_exact_at(&mut buf, from)
                            .map_err(|e| format!("pread: {e}"))?;
                    }
                    buf[e.within as usize..][..e.len as usize]
                        .copy_from_slice(&bytes[e.data_at as usize..][..e.len as usize]);
                    data.write_all_at(&buf, e.offset)
                        .map_err(|e| format!("pwrite: {e}"))?;
                    covered += e.len;
                    new.push(e);
                }
            }
        }
        ensure!(covered == len, "plan covers {covered} of {len} bytes");
        // Data before record: every extent is written, then committed.
        let whole = commits >= new.len();
        if atomic && whole {
            v.commit_atomic(&new)
                .map_err(|err| format!("commit atomic {new:?}: {err}"))?;
        } else if !atomic {
            for e in new.iter().take(commits) {
                v.commit_extent(e)
                    .map_err(|err| format!("commit {e:?}: {err}"))?;
            }
        }
        if commits >= new.len() {
            ensure!(!v.remapping(), "extents still busy after every commit");
            self.log.push(format!(
                "write w{wid} {name} [{offset}, +{len}) ({} new extents)",
                new.len()
            ));
        } else {
            self.log.push(format!(
                "write w{wid} {name} [{offset}, +{len}): data written, {commits} of {} new \
                 extents committed",
                new.len()
            ));
        }
        if atomic && !whole {
            // Cut before its one record: not a byte of it is visible.
            return Ok(());
        }
        let m = self.model.get_mut(&id).expect("model");
        m.remember(offset, offset + len);
        m.write(offset, &bytes);
        Ok(())
    }

    fn unmap(&mut self, id: u64, offset: u64, len: u64) -> Outcome {
        if self.model[&id].full {
            // Full volumes are not thin provisioned: the SCSI layer refuses UNMAP and WRITE
            // SAME(UNMAP) for them, and `ThinVolume::unmap` leaves them unchanged.
            let v = self.vols.get_mut(&id).expect("served");
            let freed = v
                .unmap(offset, len)
                .map_err(|e| format!("unmap image {id}: {e}"))?;
            self.log.push(format!(
                "unmap {} -> full volume, unchanged",
                self.model[&id].name
            ));
            ensure!(freed == 0, "a full volume unmapped {freed} extents");
            return Ok(());
        }
        let v = self.vols.get_mut(&id).expect("served");
        let first = offset.div_ceil(ES);
        let end = (offset + len) / ES;
        let expected = (first..end).filter(|&l| v.map().get(l).is_some()).count() as u64;
        let freed = v
            .unmap(offset, len)
            .map_err(|e| format!("unmap image {id}: {e}"))?;
        let m = self.model.get_mut(&id).expect("model");
        self.log.push(format!(
            "unmap {} [{offset}, +{len}) (extents {first}..{end}, {freed} unmapped)",
            m.name
        ));
        ensure!(
            freed == expected,
            "unmap reported {freed} extents unmapped, {expected} were mapped"
        );
        if first < end {
            m.remember(first * ES, end * ES);
            for lext in first..end {
                m.data.remove(&lext);
            }
        }
        Ok(())
    }

    /// Makes volume `id` full or thin. Turning full reserves exactly the extents it does not
    /// own alone (every check after this step holds the volume to "never out of space"), or is
    /// refused when the pool cannot, changing nothing.
    fn set_full(&mut self, id: u64, full: bool) -> Outcome {
        let name = self.model[&id].name.clone();
        if full == self.model[&id].full {
            return Ok(());
        }
        if full {
            let v = self.vols.get_mut(&id).expect("served");
            match v.make_full() {
                Ok(reserved) => {
                    self.record_full(id, true)?;
                    self.log
                        .push(format!("{name} -> full ({reserved} reserved)"));
                }
                Err(need) => {
                    self.log
                        .push(format!("{name} -> full refused ({need} needed)"));
                }
            }
        } else {
            self.record_full(id, false)?;
            let given = self.vols.get_mut(&id).expect("served").make_thin();
            self.log
                .push(format!("{name} -> thin ({given} given back)"));
        }
        Ok(())
    }

    /// Records volume `id` as full or thin in the catalog (`Pool::set_thin`, a catalog
    /// operation: the control journal is durable once it returns) and in the model (a volume
    /// just made full is backed by its new reservation).
    fn record_full(&mut self, id: u64, full: bool) -> Outcome {
        self.pool()
            .set_thin(id, !full)
            .map_err(|e| format!("set_thin: {e}"))?;
        let m = self.model.get_mut(&id).expect("model");
        m.full = full;
        m.unbacked = false;
        self.control_durable()
    }

    /// One step of a conversion to full by a stepwise walk (see [`Op::StepFull`]). A walk
    /// that went stale (the map was shared or unmapped meanwhile) is dropped; one that finishes
    /// reserves what its count says, and every check after it holds the volume to "never out
    /// of space", which an undercount would break.
    fn step_full(&mut self, id: u64, steps: u64) -> Outcome {
        let (id, mut walk, marks) = match self.full_walk.take() {
            Some((walking, walk, marks)) if self.vols.contains_key(&walking) => {
                (walking, walk, marks)
            }
            _ => {
                if self.model[&id].full {
                    return Ok(());
                }
                let marks = self.vols[&id].usage_marks();
                (id, UsageWalk::new(), marks)
            }
        };
        let v = self.vols.get_mut(&id).expect("served");
        let done = v.map().usage_step(&mut walk, steps.max(1) as usize);
        walk.drop_shared();
        if !done {
            self.full_walk = Some((id, walk, marks));
            return Ok(());
        }
        let name = self.model[&id].name.clone();
        match v.make_full_measured(walk.writable(), marks) {
            None => self
                .log
                .push(format!("{name} -> full: walk stale, dropped")),
            Some(Err(need)) => self
                .log
                .push(format!("{name} -> full (walked) refused ({need} needed)")),
            Some(Ok(reserved)) => {
                if !self.model[&id].full {
                    self.record_full(id, true)?;
                }
                self.log
                    .push(format!("{name} -> full (walked, {reserved} reserved)"));
            }
        }
        Ok(())
    }

    /// EXTENDED COPY by reference of `count` extents from `src` of volume `a` to `dst` of
    /// volume `b`: lent by `a` and adopted by `b` (a full volume may refuse either, when the
    /// pool cannot grow its reservation: the checks after this step hold it to "never out of
    /// space"); refused references are given back (as the shard and the copy thread do), and
    /// then nothing changes.
    fn share_across(&mut self, a: u64, b: u64, src: u64, dst: u64, count: u64) -> Outcome {
        let lent = self
            .vols
            .get_mut(&a)
            .expect("served")
            .lend_extents(src, count);
        let (from_full, to_full) = (self.model[&a].full, self.model[&b].full);
        // A thin volume with no write in flight always lends; a full one may not, when the
        // pool cannot grow its reservation.
        ensure!(
            lent.is_some() || from_full,
            "lend from thin {} refused",
            self.model[&a].name
        );
        let adopted = match lent {
            Some(lent) => {
                let v = self.vols.get_mut(&b).expect("served");
                let adopted = v
                    .adopt_extents(dst, lent)
                    .map_err(|e| format!("adopt into image {b}: {e}"))?;
                ensure!(
                    adopted || to_full,
                    "adopt into thin {} refused",
                    self.model[&b].name
                );
                adopted
            }
            None => false,
        };
        self.log.push(format!(
            "share {} extents {src}..+{count} -> {} extent {dst} ({})",
            self.model[&a].name,
            self.model[&b].name,
            if adopted { "shared" } else { "refused" }
        ));
        if !adopted {
            return Ok(());
        }
        let sources: Vec<Vec<u8>> = (src..src + count)
            .map(|l| self.model[&a].extent(l).to_vec())
            .collect();
        let m = self.model.get_mut(&b).expect("model");
        m.remember(dst * ES, (dst + count) * ES);
        for (lext, bytes) in (dst..).zip(sources) {
            m.set_extent(lext, bytes);
        }
        Ok(())
    }

    /// EXTENDED COPY by reference of `count` extents from `src` to `dst` of volume `id`: the
    /// destination extents then read as the sources did (overlapping ranges as if through a
    /// buffer); a full volume first grows its reservation for what it will share, or refuses
    /// (its copy then moves the data) and is unchanged.
    fn share(&mut self, id: u64, src: u64, dst: u64, count: u64) -> Outcome {
        let full = self.model[&id].full;
        let v = self.vols.get_mut(&id).expect("served");
        let shared = v
            .share_extents(src, dst, count)
            .map_err(|e| format!("share extents of image {id}: {e}"))?;
        let m = self.model.get_mut(&id).expect("model");
        self.log.push(format!(
            "share {} extents {src}..+{count} -> {dst} ({})",
            m.name,
            if shared { "shared" } else { "refused" }
        ));
        if !shared {
            // Only a full volume whose reservation the pool cannot grow refuses.
            ensure!(
                full,
                "a thin volume with no write in flight refused to share"
            );
            return Ok(());
        }
        let sources: Vec<Vec<u8>> = (src..src + count).map(|l| m.extent(l).to_vec()).collect();
        m.remember(dst * ES, (dst + count) * ES);
        for (lext, bytes) in (dst..).zip(sources) {
            m.set_extent(lext, bytes);
        }
        Ok(())
    }

    // ---- catalog operations ----

    fn snapshot(&mut self, vol: u64) -> Outcome {
        let short = self.name("s");
        let name = format!("{}@{short}", self.model[&vol].name);
        // The shard: a full volume's reservation is topped up first (or the snapshot is refused
        // with nothing changed); then the map is shared at this instant and the volume's
        // journal made durable (runtime/shard.rs `snapshot`, a group sync round; docs/format.md).
        let served = self.vols.get_mut(&vol).expect("served");
        if let Err(needed) = served.reserve_for_snapshot() {
            self.log.push(format!(
                "snapshot {name} -> refused: {needed} extents to reserve"
            ));
            return Ok(());
        }
        let (map, seq) = self.vols[&vol].share();
        self.sync_volume(vol)?;
        let meta = self
            .pool()
            .add_snapshot(vol, &name, map, seq)
            .map_err(|e| format!("snapshot {name}: {e}"))?;
        self.new_id(&meta)?;
        self.log
            .push(format!("snapshot {name} (id {})", meta.image));
        let v = self.model.get_mut(&vol).expect("model");
        // The snapshot is a durable point of the volume (docs/format.md, step 2).
        v.settle();
        let mut snap = v.clone();
        snap.name = name;
        snap.kind = ImageKind::Snapshot;
        snap.of_volume = Some(vol);
        snap.full = false;
        self.model.insert(meta.image, snap);
        self.control_durable()
    }

    fn clone_of(&mut self, snap: u64) -> Outcome {
        let name = self.name("clone");
        let meta = self
            .pool()
            .add_clone(snap, &name)
            .map_err(|e| format!("clone {name}: {e}"))?;
        self.new_id(&meta)?;
        self.serve(&meta, 0)?;
        let s = &self.model[&snap];
        self.log
            .push(format!("clone {name} (id {}) of {}", meta.image, s.name));
        let mut c = s.clone();
        c.name = name;
        c.kind = ImageKind::Volume;
        c.of_volume = None;
        c.full = false;
        self.model.insert(meta.image, c);
        self.control_durable()
    }

    fn delete(&mut self, id: u64) -> Outcome {
        let name = self.model[&id].name.clone();
        self.log.push(format!("delete {name}"));
        // The shard's RemoveLun hands the map back (daemon `delete_volume` / `unserve`).
        let removed = self
            .vols
            .remove(&id)
            .map(|mut v| (v.take_map(), v.reserved_left()));
        let held = self
            .pool()
            .delete(id)
            .map_err(|e| format!("delete {name}: {e}"))?;
        ensure!(
            held.is_none() || removed.is_none(),
            "the pool held a map for served volume {name}"
        );
        drop(held);
        if let Some((map, reserved)) = removed {
            // Dropping the map returns the extents only it referenced.
            drop(map);
            self.pool().shared().refs.unreserve(reserved);
        }
        let of_volume = self.model.remove(&id).and_then(|m| m.of_volume);
        self.control_durable()?;
        // daemon `delete_snapshot`: a full volume whose data the snapshot pinned gives back the
        // reservation it no longer needs (after publishing the snapshot's releases). The model's
        // invariants then check that the full volume still never runs out of space.
        if let Some(vol) = of_volume
            .filter(|v| self.model.get(v).is_some_and(|m| m.full) && self.vols.contains_key(v))
        {
            self.publish()?;
            let marks = self.vols[&vol].usage_marks();
            let owned = {
                let pool = self.pool.as_ref().expect("pool open");
                let sources: Vec<(u64, UsageSource<'_>)> = self
                    .model
                    .keys()
                    .filter_map(|&img| match self.vols.get(&img) {
                        Some(v) => Some((img, UsageSource::Map(v.map()))),
                        None => pool.map(img).map(|m| (img, UsageSource::Map(m))),
                    })
                    .collect();
                exclusive_extents(&sources, &pool.shared().refs)
                    .get(&vol)
                    .copied()
                    .unwrap_or(0)
            };
            let v = self.vols.get_mut(&vol).expect("served");
            let trimmed = v.trim_reservation(owned, marks);
            let name = &self.model[&vol].name;
            self.log.push(format!(
                "trim reservation of {name}: {trimmed} extents given back"
            ));
        }
        Ok(())
    }

    fn rollback(&mut self, vol: u64, snap: u64) -> Outcome {
        let (vname, sname) = (
            self.model[&vol].name.clone(),
            self.model[&snap].name.clone(),
        );
        self.log.push(format!("rollback {vname} to {sname}"));
        // daemon `rollback`: unserve (the map comes back), record, drop the old map, put the
        // new one, serve again.
        let old = self
            .vols
            .remove(&vol)
            .map(|mut v| (v.take_map(), v.reserved_left()));
        let map = self
            .pool()
            .rollback(vol, snap)
            .map_err(|e| format!("rollback {vname} to {sname}: {e}"))?;
        let old_reserved = old.map_or(0, |(old_map, reserved)| {
            drop(old_map);
            reserved
        });
        let meta = self
            .pool()
            .image(vol)
            .cloned()
            .ok_or_else(|| format!("volume {vname} vanished"))?;
        // daemon `rollback`: the reservation follows the rolled-back map (after publishing the
        // old map's released extents).
        let refs = Arc::clone(&self.pool().shared().refs);
        refs.unreserve(old_reserved);
        self.publish()?;
        let reserved = if meta.thin {
            0
        } else {
            // Everything the rolled-back map holds is shared with the snapshot.
            let es = self.pool().shared().extent_size;
            let want = meta.size_bytes.div_ceil(es);
            if refs.reserve(want) {
                want
            } else {
                // The daemon warns: snapshots pin the old data and the pool cannot back the
                // volume fully any more; its guarantee is gone until space frees.
                self.log
                    .push(format!("rollback {vname}: reservation of {want} failed"));
                self.model.get_mut(&vol).expect("model").unbacked = true;
                0
            }
        };
        self.pool().put_map(vol, map);
        self.serve(&meta, reserved)?;
        let s = self.model[&snap].clone();
        let v = self.model.get_mut(&vol).expect("model");
        v.size = s.size;
        v.data = s.data;
        v.alts = s.alts;
        self.control_durable()
    }

    fn resize(&mut self, vol: u64, blocks: u64) -> Outcome {
        let size = self.model[&vol].size + blocks * BS;
        let name = self.model[&vol].name.clone();
        self.log.push(format!("resize {name} to {size}"));
        // daemon `resize_volume`: a full volume reserves its growth first.
        let old_size = self.model[&vol].size;
        let es = self.pool().shared().extent_size;
        let full = !self.pool().image(vol).expect("catalog").thin;
        let reserved = if full {
            size.div_ceil(es) - old_size.div_ceil(es)
        } else {
            0
        };
        if !self.pool().shared().refs.reserve(reserved) {
            self.log.push(format!("resize {name}: no space to reserve"));
            return Ok(());
        }
        self.pool()
            .resize(vol, size)
            .map_err(|e| format!("resize {name}: {e}"))?;
        self.vols
            .get_mut(&vol)
            .expect("served")
            .grow(size, reserved);
        ensure!(
            self.vols[&vol].capacity() == size,
            "capacity after grow is {}",
            self.vols[&vol].capacity()
        );
        // The extents it gains read as zeros; so do the bytes past the old size in the old last
        // extent (an image's bytes past its size are zeros in every extent it maps).
        self.model.get_mut(&vol).expect("model").size = size;
        self.control_durable()
    }

    fn checkpoint(&mut self) -> Outcome {
        self.log.push("checkpoint".into());
        let pool = self.pool.as_mut().expect("pool open");
        let old = journal::list_journals(pool.dir()).map_err(|e| e.to_string())?;
        let generation = pool.next_generation();
        let mut live = Vec::new();
        for v in self.vols.values_mut() {
            let (map, seq) = v
                .rotate_journal(generation)
                .map_err(|e| format!("rotate: {e}"))?;
            live.push((v.image(), map, seq));
        }
        pool.checkpoint(live, old)
            .map_err(|e| format!("checkpoint: {e}"))?;
        self.everything_durable()
    }

    // ---- durability ----

    fn journal_files(&self) -> Result<Vec<PathBuf>, String> {
        journal::list_journals(self.dir.path()).map_err(|e| format!("list journals: {e}"))
    }

    /// Every journal file as it is now is durable; so is every image's current content.
    fn everything_durable(&mut self) -> Outcome {
        self.durable.clear();
        for path in self.journal_files()? {
            let mut bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            // A torn tail left by a power loss is cut when the journal is next opened for
            // writing: only the valid records count as durable content.
            let mut reader = journal::JournalReader::open(&path).map_err(|e| e.to_string())?;
            for record in reader.by_ref() {
                record.map_err(|e| format!("{}: {e}", path.display()))?;
            }
            bytes.truncate(reader.valid_len() as usize);
            self.durable.insert(path, bytes);
        }
        for m in self.model.values_mut() {
            m.settle();
        }
        Ok(())
    }

    /// A catalog operation returned: the control journal was fdatasynced.
    fn control_durable(&mut self) -> Outcome {
        for path in self.journal_files()? {
            let control = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("control"));
            if control {
                let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                self.durable.insert(path, bytes);
            }
        }
        Ok(())
    }

    /// SYNCHRONIZE CACHE on volume `id`: fdatasync every descriptor its `sync_fds` names;
    /// the journal files among them become durable as they are now.
    fn sync_volume(&mut self, id: u64) -> Outcome {
        let mut fds = Vec::new();
        self.vols[&id].sync_fds(&mut fds);
        let data = self.dir.path().join(
            &self
                .pool
                .as_ref()
                .expect("pool open")
                .superblock()
                .data_path,
        );
        let data = std::fs::canonicalize(data).map_err(|e| e.to_string())?;
        let mut journals = 0;
        for fd in fds {
            // SAFETY: `fd` is a descriptor the volume holds open (its data store or journal)
            // for as long as it lives; fdatasync only reads it.
            let rc = unsafe { libc::fdatasync(fd) };
            ensure!(
                rc == 0,
                "fdatasync({fd}): {}",
                std::io::Error::last_os_error()
            );
            let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map_err(|e| format!("fd {fd}: {e}"))?;
            if path == data {
                continue;
            }
            ensure!(
                !path.to_string_lossy().ends_with(" (deleted)"),
                "the journal volume {} appends to, {}, has been unlinked: its records are lost \
                 at the next restart",
                self.model[&id].name,
                path.display()
            );
            // The same file, named the way `list_journals` names it.
            let name = path.file_name().expect("a file").to_owned();
            let listed = self
                .journal_files()?
                .into_iter()
                .find(|p| p.file_name() == Some(&name))
                .ok_or_else(|| format!("synced file {} is not a journal", path.display()))?;
            let bytes = std::fs::read(&listed).map_err(|e| e.to_string())?;
            self.durable.insert(listed, bytes);
            journals += 1;
        }
        ensure!(
            journals == 1,
            "sync_fds of image {id} named {journals} journals"
        );
        self.model.get_mut(&id).expect("model").settle();
        Ok(())
    }

    /// SYNCHRONIZE CACHE on every volume.
    fn sync(&mut self) -> Outcome {
        self.log.push("sync".into());
        let ids: Vec<u64> = self.vols.keys().copied().collect();
        for id in ids {
            self.sync_volume(id)?;
        }
        Ok(())
    }

    /// The daemon's `publish_frees`: when extents wait, every journal is synced, then they
    /// become free.
    fn publish(&mut self) -> Outcome {
        let pool = self.pool.as_ref().expect("pool open");
        let pending = pool.shared().refs.pending_frees();
        let published = pool
            .publish_frees()
            .map_err(|e| format!("publish_frees: {e}"))?;
        self.log
            .push(format!("publish freed extents ({published} of {pending})"));
        ensure!(
            published == pending && pool.shared().refs.pending_frees() == 0,
            "published {published} of {pending} pending extents, {} still pending",
            pool.shared().refs.pending_frees()
        );
        if pending > 0 {
            // Every journal was fdatasynced.
            self.everything_durable()?;
        }
        Ok(())
    }

    // ---- restart ----

    fn shut_down(&mut self) {
        // The process dies: the shards' volumes and the control plane's pool go away.
        self.vols.clear();
        self.full_walk = None;
        self.pool = None;
    }

    fn check_offline(&self) -> Result<catalog::CheckReport, String> {
        let report = catalog::check(self.dir.path()).map_err(|e| format!("check: {e}"))?;
        ensure!(
            report.problems.is_empty(),
            "check found problems: {:?}",
            report.problems
        );
        ensure!(
            report.images == self.model.len(),
            "check counts {} images, the model {}",
            report.images,
            self.model.len()
        );
        Ok(report)
    }

    fn reopen(&mut self) -> Outcome {
        let pool = Pool::open(self.dir.path(), false).map_err(|e| format!("Pool::open: {e}"))?;
        self.pool = Some(pool);
        let metas: Vec<ImageMeta> = self
            .pool()
            .images()
            .filter(|m| m.kind == ImageKind::Volume)
            .cloned()
            .collect();
        // daemon `start`: a full volume gets back a reservation for every logical extent it
        // does not own alone, if the pool still has it.
        let exclusive = self.pool().exclusive_extents();
        for meta in metas {
            let reserved = if meta.thin {
                0
            } else {
                let extents = meta.size_bytes.div_ceil(ES);
                let owned = exclusive.get(&meta.image).copied().unwrap_or(0);
                let want = extents.saturating_sub(owned);
                if self.pool().shared().refs.reserve(want) {
                    want
                } else {
                    self.model.get_mut(&meta.image).expect("model").unbacked = true;
                    0
                }
            };
            self.serve(&meta, reserved)?;
        }
        Ok(())
    }

    fn crash_mid_write(&mut self, id: u64, offset: u64, len: u64, commits: usize) -> Outcome {
        let lexts = (offset / ES)..(offset + len).div_ceil(ES);
        let m = &self.model[&id];
        let old: BTreeMap<u64, Vec<u8>> = lexts.map(|l| (l, m.extent(l).to_vec())).collect();
        self.write_up_to(id, offset, len, commits, false)?;
        // The write was never acknowledged: each extent it touched may read old or new.
        self.restart_checking(Some((id, old)))
    }

    /// `kill -9` around a WRITE ATOMIC: after its data, before (`committed` false) or after its
    /// record. Then every extent it touched reads old, or every one reads new: the model holds
    /// exactly that, and the restart checks it exactly.
    fn crash_mid_atomic_write(
        &mut self,
        id: u64,
        offset: u64,
        len: u64,
        committed: bool,
    ) -> Outcome {
        let commits = if committed { usize::MAX } else { 0 };
        self.write_up_to(id, offset, len, commits, true)?;
        self.restart()
    }

    /// The daemon's `checkpoint` up to the shards' rotation, then `kill -9`.
    fn crash_mid_checkpoint(&mut self) -> Outcome {
        let pool = self.pool.as_mut().expect("pool open");
        let old = journal::list_journals(pool.dir()).map_err(|e| e.to_string())?;
        let generation = pool.next_generation();
        for v in self.vols.values_mut() {
            v.rotate_journal(generation)
                .map_err(|e| format!("rotate: {e}"))?;
        }
        self.log.push(format!(
            "checkpoint {generation}: volumes' journals rotated"
        ));
        // Rotating synced the volumes' old journals.
        for path in old {
            let control = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("control"));
            if !control {
                let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                self.durable.insert(path, bytes);
            }
        }
        let ids: Vec<u64> = self.vols.keys().copied().collect();
        for id in ids {
            self.model.get_mut(&id).expect("model").settle();
        }
        self.restart()
    }

    fn restart(&mut self) -> Outcome {
        self.restart_checking(None)
    }

    /// `kill -9` and restart: every image must then equal the model, except that the extents
    /// of `unsure` (an image and the contents its extents had before a write the crash
    /// interrupted) may read their old contents instead (the model adopts what they read).
    fn restart_checking(&mut self, unsure: Option<(u64, BTreeMap<u64, Vec<u8>>)>) -> Outcome {
        self.log.push("restart (kill -9)".into());
        // Extents waiting to be published, and those a crashed write had allocated, are free
        // after recovery: the used extents are those the maps reference.
        let used = self.referenced()?;
        self.shut_down();
        let report = self.check_offline()?;
        self.reopen()?;
        // Everything acknowledged is there.
        self.check_catalog()?;
        if let Some((id, old)) = unsure {
            let actual = self.image_extents(id)?;
            let m = self.model.get_mut(&id).expect("model");
            for (lext, old) in old {
                let got = actual.get(&lext).map_or(&ZEROS[..], |e| &e[..]);
                ensure!(
                    got == m.extent(lext) || got == &old[..],
                    "after a crash mid-write, {} logical extent {lext} reads [{}]; acceptable: \
                     [{}] (new) or [{}] (old)",
                    m.name,
                    describe(got),
                    describe(m.extent(lext)),
                    describe(&old)
                );
                m.set_extent(lext, got.to_vec());
            }
        }
        self.check_contents()?;
        ensure!(
            report.used_extents == used,
            "check counts {} used extents, {used} before the crash",
            report.used_extents
        );
        let after = self.pool().shared().refs.used_extents();
        ensure!(
            after == used,
            "{after} extents used after recovery, {used} before the crash"
        );
        // Recovery fdatasynced every journal it replayed before handing out extents.
        self.everything_durable()
    }

    fn power_loss(&mut self, seed: u64) -> Outcome {
        self.shut_down();
        let mut rng = seed;
        let mut cuts = Vec::new();
        for path in self.journal_files()? {
            let current = std::fs::read(&path).map_err(|e| e.to_string())?;
            let durable = self.durable.get(&path).map_or(&[][..], |d| &d[..]);
            ensure!(
                current.starts_with(durable),
                "journal {} changed below its durable length {}",
                path.display(),
                durable.len()
            );
            // Seed 0 (where proptest shrinks to): the worst case, everything not durable lost.
            rng = splitmix(rng);
            let spare = (current.len() - durable.len()) as u64;
            let cut = durable.len()
                + if seed == 0 {
                    0
                } else {
                    (rng % (spare + 1)) as usize
                };
            rng = splitmix(rng);
            let zeroed = seed != 0 && rng % 4 == 0;
            if cut < current.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| e.to_string())?;
                if zeroed {
                    f.write_all_at(&vec![0u8; current.len() - cut], cut as u64)
                        .map_err(|e| e.to_string())?;
                } else {
                    f.set_len(cut as u64).map_err(|e| e.to_string())?;
                }
                cuts.push(format!(
                    "{} {} -> {cut}{}",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                    current.len(),
                    if zeroed { " (zeroed)" } else { "" }
                ));
            }
        }
        self.log.push(format!(
            "power loss (seed {seed}): journals cut: [{}]",
            cuts.join(", ")
        ));
        self.check_offline()?;
        self.reopen()?;
        self.check_catalog()?;
        // Every extent must read one of its acceptable contents; the model adopts it.
        let ids: Vec<u64> = self.model.keys().copied().collect();
        let mut wrong = Vec::new();
        for id in ids {
            let actual = self.image_extents(id)?;
            let m = &self.model[&id];
            let lexts: std::collections::BTreeSet<u64> = actual
                .keys()
                .chain(m.data.keys())
                .chain(m.alts.keys())
                .copied()
                .collect();
            for lext in lexts {
                let got = actual.get(&lext).map_or(&ZEROS[..], |e| &e[..]);
                if !m.acceptable(lext, got) {
                    wrong.push(format!(
                        "{} logical extent {lext} reads [{}]; acceptable: [{}]{}",
                        m.name,
                        describe(got),
                        describe(m.extent(lext)),
                        m.alts
                            .get(&lext)
                            .into_iter()
                            .flatten()
                            .map(|a| format!(" or [{}]", describe(a)))
                            .collect::<String>()
                    ));
                }
            }
            let m = self.model.get_mut(&id).expect("model");
            m.data = actual;
        }
        ensure!(
            wrong.is_empty(),
            "after power loss:\n    {}",
            wrong.join("\n    ")
        );
        // What recovery found is on disk: durable.
        self.everything_durable()
    }

    // ---- checks ----

    fn check_catalog(&self) -> Outcome {
        let pool = self.pool.as_ref().expect("pool open");
        let images: Vec<&ImageMeta> = pool.images().collect();
        let ids: Vec<u64> = images.iter().map(|m| m.image).collect();
        let model: Vec<u64> = self.model.keys().copied().collect();
        ensure!(
            ids == model,
            "catalog holds images {ids:?}, model {model:?}"
        );
        for meta in images {
            let m = &self.model[&meta.image];
            ensure!(
                meta.name == m.name
                    && meta.kind == m.kind
                    && meta.size_bytes == m.size
                    && (meta.kind == ImageKind::Snapshot || meta.thin != m.full),
                "catalog entry {} {:?} of {} bytes, model {} {:?} of {}",
                meta.name,
                meta.kind,
                meta.size_bytes,
                m.name,
                m.kind,
                m.size
            );
            match m.kind {
                ImageKind::Volume => {
                    let v = self
                        .vols
                        .get(&meta.image)
                        .ok_or_else(|| format!("volume {} is not served", m.name))?;
                    ensure!(
                        v.capacity() == m.size && pool.map(meta.image).is_none(),
                        "volume {} served with capacity {} (model {}), map held by the pool: {}",
                        m.name,
                        v.capacity(),
                        m.size,
                        pool.map(meta.image).is_some()
                    );
                }
                ImageKind::Snapshot => {
                    let map = pool
                        .map(meta.image)
                        .ok_or_else(|| format!("snapshot {} has no map", m.name))?;
                    ensure!(
                        map.len() == m.size.div_ceil(ES),
                        "snapshot {} map of {} extents for {} bytes",
                        m.name,
                        map.len(),
                        m.size
                    );
                }
            }
        }
        Ok(())
    }

    fn check_contents(&self) -> Outcome {
        for (&id, m) in &self.model {
            let actual = self.image_extents(id)?;
            ensure!(
                actual == m.data,
                "{} ({:?}) diverges from the model: {}",
                m.name,
                m.kind,
                first_difference(&actual, m)
            );
        }
        Ok(())
    }

    /// References to each physical extent, recounted from every live image's map.
    fn recount(&self) -> Result<Vec<u32>, String> {
        let pool = self.pool.as_ref().expect("pool open");
        let mut maps: Vec<&ExtentMap> = self.vols.values().map(ThinVolume::map).collect();
        for (&id, m) in &self.model {
            if m.kind == ImageKind::Snapshot {
                maps.push(
                    pool.map(id)
                        .ok_or_else(|| format!("snapshot {} has no map", m.name))?,
                );
            }
        }
        count_references(self.capacity, &maps).map_err(|e| e.to_string())
    }

    /// Physical extents referenced by the live images.
    fn referenced(&self) -> Result<u64, String> {
        Ok(self.recount()?.iter().filter(|&&c| c > 0).count() as u64)
    }

    fn check_refs(&self) -> Outcome {
        let pool = self.pool.as_ref().expect("pool open");
        let counts = self.recount()?;
        let refs = &pool.shared().refs;
        // Released references wait (pending) until the journals are synced: each count is its
        // leaves plus its pending releases, and those add up to the pending queue.
        let pending = refs.pending_frees() as u64;
        let mut surplus = 0u64;
        let mut held = 0u64;
        for (p, &c) in counts.iter().enumerate().skip(1) {
            let count = refs.count(p as u64);
            ensure!(
                count >= c,
                "extent {p}: reference count {count} but {c} leaves map it"
            );
            surplus += u64::from(count - c);
            if count > 0 {
                held += 1;
            }
        }
        ensure!(
            surplus == pending,
            "counts exceed the leaves by {surplus} but {pending} releases are pending"
        );
        let used = refs.used_extents();
        ensure!(
            used == held,
            "the pool counts {used} extents used, {held} have a count (referenced or pending)"
        );
        let reserved: u64 = self.vols.values().map(ThinVolume::reserved_left).sum();
        ensure!(
            refs.reserved_extents() == reserved,
            "the pool holds {} extents reserved, the full volumes {reserved}",
            refs.reserved_extents()
        );
        ensure!(
            used + reserved <= self.capacity,
            "used {used} + reserved {reserved} > capacity {}",
            self.capacity
        );
        ensure!(
            refs.free_extents() + used <= self.capacity,
            "free {} + used {used} > capacity {}",
            refs.free_extents(),
            self.capacity
        );
        Ok(())
    }

    fn check_all(&self) -> Outcome {
        self.check_catalog()?;
        self.check_contents()?;
        self.check_refs()?;
        self.check_full_volumes()
    }

    /// The invariant behind "never out of space": a full volume's reservation plus the extents
    /// it owns alone (which it rewrites in place) cover every logical extent.
    fn check_full_volumes(&self) -> Outcome {
        for (id, v) in &self.vols {
            let m = &self.model[id];
            if !m.full || m.unbacked {
                continue;
            }
            let map = v.map();
            let mut owned = 0u64;
            map.for_each_mapped(|lext, _| owned += u64::from(map.is_exclusive(lext)));
            if v.reserved_left() + owned < map.len() {
                return Err(format!(
                    "full volume {}: {} reserved + {owned} owned alone < {} extents",
                    m.name,
                    v.reserved_left(),
                    map.len()
                ));
            }
        }
        Ok(())
    }

    // ---- one step ----

    fn step(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::Write { vol, at, blocks } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let (offset, len) = Self::range(self.model[&id].size, at, blocks);
                    self.write(id, offset, len)?;
                }
            }
            Op::Unmap { vol, at, blocks } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let (offset, len) = Self::range(self.model[&id].size, at, blocks);
                    self.unmap(id, offset, len)?;
                }
            }
            Op::ShareAcross {
                from,
                to,
                src,
                dst,
                extents,
            } => {
                let whole = |h: &Self, id: u64| h.model[&id].size / ES;
                if let (Some(a), Some(b)) = (
                    self.pick(Some(ImageKind::Volume), from),
                    self.pick(Some(ImageKind::Volume), to),
                ) && a != b
                    && whole(self, a) > 0
                    && whole(self, b) > 0
                {
                    let n = whole(self, a).min(whole(self, b));
                    let count = u64::from(extents) % n + 1;
                    let src = u64::from(src) % (whole(self, a) - count + 1);
                    let dst = u64::from(dst) % (whole(self, b) - count + 1);
                    self.share_across(a, b, src, dst, count)?;
                }
            }
            Op::SetFull { vol, full } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    self.set_full(id, full)?;
                }
            }
            Op::StepFull { vol, steps } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    self.step_full(id, u64::from(steps))?;
                }
            }
            Op::AtomicWrite { vol, at, blocks } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let (offset, len) = Self::range(self.model[&id].size, at, blocks);
                    self.write_up_to(id, offset, len, usize::MAX, true)?;
                }
            }
            Op::CrashMidAtomicWrite {
                vol,
                at,
                blocks,
                committed,
            } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let (offset, len) = Self::range(self.model[&id].size, at, blocks);
                    self.crash_mid_atomic_write(id, offset, len, committed)?;
                }
            }
            Op::Share {
                vol,
                src,
                dst,
                extents,
            } => {
                // Whole extents inside the volume, as EXTENDED COPY shares (its ranges end
                // inside the capacity, so a partial last extent is copied as data).
                let whole = |h: &Self, id: u64| h.model[&id].size / ES;
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol)
                    && whole(self, id) > 0
                {
                    let n = whole(self, id);
                    let count = u64::from(extents) % n + 1;
                    let room = n - count + 1;
                    self.share(id, u64::from(src) % room, u64::from(dst) % room, count)?;
                }
            }
            Op::Read { img, at, blocks } => {
                if let Some(id) = self.pick(None, img) {
                    let m = self.model[&id].clone();
                    let (offset, len) = Self::range(m.size, at, blocks);
                    let mut actual = self.read_image(id, offset, len)?;
                    let expected = m.read(offset, len);
                    if m.kind == ImageKind::Snapshot && actual == expected {
                        // Also through the snapshot exported as a read-only LUN (daemon
                        // `export_snapshot`).
                        let mut export = self.export(id)?;
                        actual = self.read_through(&export, offset, len)?;
                        let refs = &self.pool.as_ref().expect("pool open").shared().refs;
                        let used = refs.used_extents();
                        let mut plan = Vec::new();
                        let refused = export.plan_write(offset, len, &mut plan);
                        ensure!(
                            matches!(refused, Err(PlanError::ReadOnly))
                                && plan.is_empty()
                                && refs.used_extents() == used,
                            "a write to exported snapshot {} was not refused: {refused:?} \
                             {plan:?}",
                            m.name
                        );
                    }
                    if let Some(at) = actual.iter().zip(&expected).position(|(a, b)| a != b) {
                        let block = |b: &[u8]| {
                            describe(&b[at / BS as usize * BS as usize..][..BS as usize])
                        };
                        return Err(format!(
                            "read {} [{offset}, +{len}): byte {at} of the read differs: block \
                             [{}], model [{}]",
                            m.name,
                            block(&actual),
                            block(&expected)
                        ));
                    }
                }
            }
            Op::Snapshot { vol } => {
                if self.model.len() < MAX_IMAGES {
                    if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                        self.snapshot(id)?;
                    }
                }
            }
            Op::Clone { snap } => {
                if self.model.len() < MAX_IMAGES {
                    if let Some(id) = self.pick(Some(ImageKind::Snapshot), snap) {
                        self.clone_of(id)?;
                    }
                }
            }
            Op::Delete { img } => {
                if let Some(id) = self.pick(None, img) {
                    self.delete(id)?;
                }
            }
            Op::Rollback { vol, snap } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let snaps: Vec<u64> = self
                        .model
                        .iter()
                        .filter(|(_, m)| m.of_volume == Some(id))
                        .map(|(&s, _)| s)
                        .collect();
                    if !snaps.is_empty() {
                        self.rollback(id, snaps[snap as usize % snaps.len()])?;
                    }
                }
            }
            Op::Resize { vol, blocks } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let room = MAX_VOLUME_BLOCKS.saturating_sub(self.model[&id].size / BS);
                    if room > 0 {
                        self.resize(id, grow_blocks(blocks, room))?;
                    }
                }
            }
            Op::Create { blocks, full } => {
                if self.model.len() < MAX_IMAGES {
                    self.create(volume_blocks(blocks), full)?;
                }
            }
            Op::Checkpoint => self.checkpoint()?,
            Op::Sync => self.sync()?,
            Op::Publish => self.publish()?,
            Op::Restart => self.restart()?,
            Op::CrashMidWrite {
                vol,
                at,
                blocks,
                commits,
            } => {
                if let Some(id) = self.pick(Some(ImageKind::Volume), vol) {
                    let (offset, len) = Self::range(self.model[&id].size, at, blocks);
                    self.crash_mid_write(id, offset, len, usize::from(commits))?;
                }
            }
            Op::CrashMidCheckpoint => self.crash_mid_checkpoint()?,
            Op::PowerLoss { seed } => self.power_loss(seed)?,
        }
        self.check_all()
    }
}

/// Runs `ops` on a fresh pool of `capacity` extents with volumes of `sizes` blocks; the error
/// carries the resolved steps.
fn run(capacity: u64, sizes: &[u64], ops: &[Op]) -> Outcome {
    run_harness(capacity, sizes, ops).map(drop)
}

/// [`run`], returning the harness after the final restart (its model and log) to look at.
fn run_harness(capacity: u64, sizes: &[u64], ops: &[Op]) -> Result<Harness, String> {
    let mut h = Harness::new(capacity, sizes)?;
    let mut result = h.check_all();
    for (i, op) in ops.iter().enumerate() {
        if result.is_err() {
            break;
        }
        result = h.step(op).map_err(|e| format!("step {i} {op:?}: {e}"));
    }
    // At the end, a restart: everything committed must be there.
    if result.is_ok() {
        result = h
            .restart()
            .and_then(|()| h.check_all())
            .map_err(|e| format!("final restart: {e}"));
    }
    result.map_err(|e| format!("{e}\nresolved steps:\n  {}", h.log.join("\n  ")))?;
    Ok(h)
}

fn op_strategy(power_loss: bool) -> impl Strategy<Value = Op> {
    let any16 = any::<u16>;
    let range = || (any16(), any16(), 0u16..32);
    prop_oneof![
        30 => range().prop_map(|(vol, at, blocks)| Op::Write { vol, at, blocks }),
        6 => range().prop_map(|(vol, at, blocks)| Op::Unmap { vol, at, blocks }),
        5 => range().prop_map(|(vol, at, blocks)| Op::AtomicWrite { vol, at, blocks }),
        2 => (any16(), any::<bool>()).prop_map(|(vol, full)| Op::SetFull { vol, full }),
        4 => (any16(), 0u16..3).prop_map(|(vol, steps)| Op::StepFull { vol, steps }),
        4 => (any16(), any16(), any16(), any16(), 0u16..8).prop_map(
            |(from, to, src, dst, extents)| Op::ShareAcross { from, to, src, dst, extents }
        ),
        1 => (range(), any::<bool>()).prop_map(|((vol, at, blocks), committed)| {
            Op::CrashMidAtomicWrite { vol, at, blocks, committed }
        }),
        5 => (any16(), any16(), any16(), 0u16..8).prop_map(|(vol, src, dst, extents)| Op::Share {
            vol,
            src,
            dst,
            extents
        }),
        4 => range().prop_map(|(img, at, blocks)| Op::Read { img, at, blocks }),
        8 => any16().prop_map(|vol| Op::Snapshot { vol }),
        5 => any16().prop_map(|snap| Op::Clone { snap }),
        5 => any16().prop_map(|img| Op::Delete { img }),
        4 => (any16(), any16()).prop_map(|(vol, snap)| Op::Rollback { vol, snap }),
        3 => (any16(), any16()).prop_map(|(vol, blocks)| Op::Resize { vol, blocks }),
        3 => (any16(), prop::bool::weighted(0.5)).prop_map(|(blocks, full)| Op::Create { blocks, full }),
        2 => Just(Op::Checkpoint),
        3 => Just(Op::Restart),
        1 => (range(), any::<u8>()).prop_map(|((vol, at, blocks), commits)| Op::CrashMidWrite {
            vol,
            at,
            blocks,
            commits
        }),
        1 => Just(Op::CrashMidCheckpoint),
        (if power_loss { 5 } else { 1 }) => Just(Op::Sync),
        4 => Just(Op::Publish),
        // Without power loss, its weight goes to restarts.
        (if power_loss { 4 } else { 2 }) => any::<u64>().prop_map(move |seed| {
            if power_loss { Op::PowerLoss { seed } } else { Op::Restart }
        }),
    ]
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES=N runs a longer soak (CI runs the default).
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        // Shrink well (sequences are long), but within a time budget per failing test.
        max_shrink_iters: 20_000,
        max_shrink_time: 15_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Two volumes of 1..=12 extents or 500..=700 (not always whole extents).
fn sizes() -> impl Strategy<Value = Vec<u64>> {
    let size = prop_oneof![3 => BPE + 1..=12 * BPE, 1 => 500 * BPE..=700 * BPE];
    proptest::collection::vec(size, 2)
}

proptest! {
    #![proptest_config(config())]

    /// Everything but power loss: the model is exact after every step and every restart.
    #[test]
    fn pool_matches_model_across_kill9(
        capacity in 16u64..=64,
        sizes in sizes(),
        ops in proptest::collection::vec(op_strategy(false), 1..120),
    ) {
        run(capacity, &sizes, &ops).map_err(TestCaseError::fail)?;
    }

    /// With syncs and power losses (torn journal tails).
    #[test]
    fn pool_matches_model_across_power_loss(
        capacity in 16u64..=64,
        sizes in sizes(),
        ops in proptest::collection::vec(op_strategy(true), 1..120),
    ) {
        run(capacity, &sizes, &ops).map_err(TestCaseError::fail)?;
    }
}

// ---- The minimal sequences of the bugs found (each fails while its bug is there). ----

/// An image pick for explicit sequences: the first image of the kind (by id).
const FIRST: u16 = 0;

/// A volume of `blocks` blocks (`volume_blocks` inverted for small sizes).
fn create(blocks: u16, full: bool) -> Op {
    Op::Create {
        blocks: (blocks - 1) * 4,
        full,
    }
}

/// Grows by `blocks` blocks (`grow_blocks` inverted for a few extents).
fn grow(vol: u16, blocks: u16) -> Op {
    Op::Resize {
        vol,
        blocks: (blocks - 1) * 2,
    }
}

fn write(vol: u16, block: u16, blocks: u16) -> Op {
    // `range` maps `blocks` to `blocks % room + 1`: ask for one less.
    Op::Write {
        vol,
        at: block,
        blocks: blocks - 1,
    }
}

/// docs/format.md ("Replay semantics"): "the next image id is the larger of the superblock's
/// value and one more than the highest id that any CreateImage used". `Pool::assemble` takes one
/// more than the highest *live* id, so after a restart a deleted image's id (and with it its
/// NAA identity, `identity[8..]` = the id, and its journal file) is handed out again.
#[test]
fn image_ids_are_not_reused_after_restart() {
    let ops = [
        create(9, false),
        // Images 1, 2, 3: delete the newest.
        Op::Delete { img: 2 },
        Op::Restart,
        create(9, false),
    ];
    run(16, &[9, 9], &ops).unwrap();
}

/// docs/format.md, "Catalog operations", step 2: the shard fdatasyncs the volume's journal at
/// the snapshot point "so that the snapshot recovered after a power failure is the one the admin
/// saw". `ThinVolume::share` (called by the shard's `snapshot`) does not: a write acknowledged
/// before the snapshot, whose mapping record was not synced, is lost from the snapshot (and
/// from every clone of it) by a power loss, although the snapshot's own record is durable.
#[test]
fn snapshot_keeps_writes_acknowledged_before_it_across_power_loss() {
    let ops = [
        write(FIRST, 0, 1),
        Op::Snapshot { vol: FIRST },
        Op::PowerLoss { seed: 0 },
    ];
    run(16, &[9, 9], &ops).unwrap();
}

/// An in-place write is allowed once an extent has one reference, but the record that dropped
/// the other reference may not be durable: vol1 and clone4 share extent p (through the deleted
/// snapshot's leaf); vol1 copies on write (its `Map` record is not synced), which leaves p
/// exclusive to clone4, which then overwrites p in place. A power loss drops vol1's record: vol1
/// maps p again and reads clone4's data (the pending-frees rule only covers counts that reach 0).
#[test]
fn in_place_write_after_unsynced_copy_on_write_survives_power_loss() {
    let ops = [
        write(FIRST, 0, 1),
        Op::Sync,
        Op::Snapshot { vol: FIRST },
        Op::Clone { snap: FIRST },
        // Images 1 (vol1), 2 (vol2), 3 (vol1@s3), 4 (clone4): delete the snapshot.
        Op::Delete { img: 2 },
        // vol1: copy-on-write; clone4 (third volume): in place.
        write(FIRST, 0, 1),
        write(2, 0, 1),
        Op::PowerLoss { seed: 0 },
    ];
    run(16, &[9, 9], &ops).unwrap();
}

/// Full volumes: "space reserved at creation, never out of space". The snapshot tops the
/// reservation up to one extent per logical extent (everything the volume maps becomes shared),
/// so the copy-on-write it causes and a later first write to an unwritten extent both find
/// reserved space although the pool is full.
#[test]
fn full_volume_snapshot_reserves_for_its_copies_on_write() {
    let ops = [
        // vol1: full, 2 extents (16 blocks), reserves 2.
        create(16, true),
        write(FIRST, 0, 1),
        Op::Snapshot { vol: FIRST },
        // Copy-on-write of extent 0: takes the last reserved extent.
        write(FIRST, 0, 1),
        // vol3: thin, 24 extents; fill the pool (16 extents, 2 used).
        create(192, false),
        write(1, 0, 112),
        // vol1's extent 1, never written: no space.
        write(FIRST, 8, 1),
    ];
    run(16, &[], &ops).unwrap();
}

/// EXTENDED COPY by reference (`Share` picks `extents % n + 1` extents and offsets modulo the
/// room left): ask for what is meant.
fn share(vol: u16, src: u16, dst: u16, extents: u16) -> Op {
    Op::Share {
        vol,
        src,
        dst,
        extents: extents - 1,
    }
}

/// EXTENDED COPY by reference: the destination shares the source's extents; the next write to
/// either copies first, so the other keeps its contents; an overlapping copy reads every source
/// before it changes any destination; a full volume refuses (its copy moves the data); all of
/// it survives a restart, a snapshot, a checkpoint and a power loss.
#[test]
fn shared_extents_copy_on_write_and_survive_restarts() {
    let ops = [
        write(FIRST, 0, 16),
        share(FIRST, 0, 2, 2),
        write(FIRST, 0, 1),
        write(FIRST, 20, 1),
        Op::Snapshot { vol: FIRST },
        Op::Restart,
        share(FIRST, 1, 2, 3),
        write(FIRST, 24, 1),
        Op::Checkpoint,
        share(FIRST, 3, 0, 2),
        Op::Sync,
        share(FIRST, 0, 4, 2),
        write(FIRST, 32, 1),
        Op::PowerLoss { seed: 0 },
        create(16, true),
        write(1, 0, 8),
        share(1, 0, 1, 1),
        Op::Restart,
    ];
    run(32, &[48], &ops).unwrap();
}

/// WRITE ATOMIC across extents: `kill -9` after its data but before its record leaves every
/// extent old, after the record every extent new (the restart checks the model exactly); an
/// atomic rewrite of extents a volume owns alone writes nothing in place; it survives a
/// checkpoint and a power loss after a sync.
#[test]
fn atomic_writes_land_whole_or_not_at_all() {
    let atomic = |at: u16, blocks: u16| Op::AtomicWrite {
        vol: FIRST,
        at,
        blocks: blocks - 1,
    };
    let crash = |at: u16, blocks: u16, committed: bool| Op::CrashMidAtomicWrite {
        vol: FIRST,
        at,
        blocks: blocks - 1,
        committed,
    };
    let ops = [
        write(FIRST, 0, 24),
        crash(4, 12, false),
        crash(4, 12, true),
        atomic(2, 20),
        Op::Snapshot { vol: FIRST },
        atomic(6, 4),
        Op::Checkpoint,
        atomic(0, 24),
        Op::Sync,
        Op::PowerLoss { seed: 0 },
        create(16, true),
        write(1, 0, 16),
        atomic(0, 16),
    ];
    run(32, &[48], &ops).unwrap();
}

/// Full volumes: UNMAP leaves them unchanged (the SCSI layer refuses it: LBPME=0), so a
/// rewrite still has space once thin volumes fill the pool.
#[test]
fn full_volume_rewrite_after_unmap_has_space() {
    let ops = [
        create(16, true),
        write(FIRST, 0, 16),
        Op::Unmap {
            vol: FIRST,
            at: 0,
            blocks: 7,
        },
        Op::Publish,
        create(192, false),
        write(1, 0, 120),
        write(FIRST, 0, 1),
    ];
    run(16, &[], &ops).unwrap();
}

/// Full volumes: a rollback keeps the reservation the volume had left (daemon `rollback`), not
/// one for the unwritten extents of the map it gets back.
#[test]
fn full_volume_after_rollback_has_space() {
    let ops = [
        create(16, true),
        Op::Snapshot { vol: FIRST },
        write(FIRST, 0, 16),
        Op::Rollback {
            vol: FIRST,
            snap: FIRST,
        },
        create(192, false),
        write(1, 0, 112),
        write(FIRST, 0, 1),
    ];
    run(16, &[], &ops).unwrap();
}

/// Full volumes: growing one reserves nothing for the new extents (daemon `resize_volume`).
#[test]
fn full_volume_after_resize_has_space() {
    let ops = [
        create(16, true),
        grow(FIRST, 16),
        // 14 extents left outside the reservation of 2: fill them.
        create(192, false),
        write(1, 0, 112),
        write(FIRST, 0, 32),
    ];
    run(16, &[], &ops).unwrap();
}

/// Recovery after `kill -9` rebuilds the free extents from every record it finds, durable or
/// not (the records are in the page cache): an extent freed by an unsynced `Map` record (here
/// an UNMAP) is reusable as soon as the pool is open. Another volume writes it; a power loss
/// then drops the unmap record and vol1 maps the extent again, reading vol2's data. (The
/// pending-frees rule holds within one run of the process only.)
#[test]
fn extent_freed_before_a_restart_is_not_reused_before_its_record_is_durable() {
    let ops = [
        write(FIRST, 0, 1),
        Op::Sync,
        Op::Unmap {
            vol: FIRST,
            at: 0,
            blocks: 7,
        },
        Op::Restart,
        write(1, 0, 1),
        Op::PowerLoss { seed: 0 },
    ];
    run(16, &[9, 9], &ops).unwrap();
}

/// A checkpoint interrupted after the shards rotated their journals (`kill -9` between the
/// daemon's `Rotate` messages and `Pool::checkpoint`) leaves `image-*-<g+1>.log` files behind;
/// after the restart the superblock is still at generation g. The next checkpoint lists those
/// stale files as journals to retire (`old_journals` is taken before the shards rotate), the
/// shards rotate *into* them (`JournalWriter::open` appends to an existing file), and
/// `Pool::checkpoint` deletes them: every later record of those volumes goes to an unlinked
/// file and is lost at the next restart (here: an acknowledged write, after `kill -9`).
#[test]
fn checkpoint_after_a_crash_mid_checkpoint_keeps_the_live_journals() {
    let ops = [
        Op::CrashMidCheckpoint,
        Op::Checkpoint,
        write(FIRST, 0, 1),
        Op::Restart,
    ];
    run(16, &[9, 9], &ops).unwrap();
}

/// A conversion to full walked a leaf at a time (as the shard does it, between I/O), with
/// `under` run after the walk has counted leaf 0 (where the first volume has one extent it owns
/// alone) and before it finishes; then a fresh, undisturbed walk. The first volume spans two
/// leaves and the pool can hold it whole, so a count `under` makes wrong would reserve one extent
/// too few, which the full-volume check after every step reports.
fn conversion_walk_interrupted_by(under: Op) {
    let step = |steps| Op::StepFull { vol: FIRST, steps };
    let ops = [
        write(FIRST, 0, 8),
        write(1, 0, 8),
        step(1),
        under.clone(),
        step(1),
        step(2),
        write(FIRST, 0, 8),
    ];
    let h = run_harness(640, &[4608, 16], &ops).unwrap();
    // The check after every step only holds full volumes to "never out of space": make sure
    // the disturbed walk was dropped and the fresh one did make the volume full (the catalog,
    // checked against the model, says so too after the final restart).
    let log = h.log.join("\n  ");
    let id = h
        .pick(Some(ImageKind::Volume), FIRST)
        .expect("the first volume");
    let name = &h.model[&id].name;
    assert!(
        log.contains(&format!("{name} -> full: walk stale, dropped")),
        "the walk that {under:?} ran under was not dropped:\n  {log}"
    );
    assert!(
        log.contains(&format!("{name} -> full (walked, ")),
        "the fresh walk did not convert {name}:\n  {log}"
    );
    assert!(
        h.model[&id].full && !h.model[&id].unbacked,
        "{name} is not full (and backed) at the end:\n  {log}"
    );
}

/// An UNMAP of the counted extent voids the count.
#[test]
fn full_conversion_walk_is_voided_by_an_unmap_under_it() {
    conversion_walk_interrupted_by(Op::Unmap {
        vol: FIRST,
        at: 0,
        blocks: 7,
    });
}

/// So does an EXTENDED COPY by reference that replaces it with an extent shared with another
/// volume.
#[test]
fn full_conversion_walk_is_voided_by_extents_adopted_under_it() {
    conversion_walk_interrupted_by(Op::ShareAcross {
        from: 1,
        to: FIRST,
        src: 0,
        dst: 0,
        extents: 0,
    });
}

/// And one that lends it to another volume (shared, it is no longer its own alone).
#[test]
fn full_conversion_walk_is_voided_by_extents_lent_under_it() {
    conversion_walk_interrupted_by(Op::ShareAcross {
        from: FIRST,
        to: 1,
        src: 0,
        dst: 0,
        extents: 0,
    });
}
