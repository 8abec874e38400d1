//! A thin volume: the storage seam ([`Volume`]) over the pool's data store and the volume's
//! extent map, owned by the shard that serves the volume.
//!
//! Invariants:
//! - A logical extent is written in place only when [`ExtentMap::is_exclusive`] says no other
//!   image can see its physical extent; otherwise a write allocates a new extent, builds it
//!   (zeros or the old contents, then the new bytes) and commits the remapping afterwards.
//! - While a logical extent is being remapped it is *busy*: other writes to it wait
//!   ([`PlanError::Busy`]), so two copy-on-writes of one extent never race.
//! - A mapping change is appended to the volume's journal (a buffered write that survives
//!   `kill -9`) before the write is acknowledged; `sync_fds` names the journal so FUA and
//!   SYNCHRONIZE CACHE make it durable against power loss too.

use super::extent_map::ExtentMap;
use super::journal::{JournalWriter, Op, Record};
use super::refs::RefTable;
use crate::storage::{NewExtent, Piece, PlanError, StorageError, Volume, WritePiece};
use rustc_hash::FxHashSet;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// What every volume of a pool shares: the data store and the allocation state.
#[derive(Debug)]
pub struct PoolShared {
    /// The data store, opened O_DIRECT. Physical extent `p` (1-based) lives at byte
    /// `(p - 1) * extent_size`.
    pub data: File,
    /// Extent size in bytes.
    pub extent_size: u64,
    /// Reference counts and free extents.
    pub refs: Arc<RefTable>,
    /// The global journal sequence number (orders records across journals).
    pub seq: Arc<AtomicU64>,
    /// Soft threshold, percent of the pool used: initiators get a unit attention past it.
    /// Changed online by the control thread ([`Pool::set_soft_threshold`]).
    ///
    /// [`Pool::set_soft_threshold`]: super::catalog::Pool::set_soft_threshold
    pub soft_threshold_pct: AtomicU8,
    /// The data store is on a memory file system (see [`Volume::data_in_memory`]).
    pub in_memory: bool,
}

impl PoolShared {
    /// Byte offset of physical extent `pext` in the data store.
    pub fn offset_of(&self, pext: u64) -> u64 {
        (pext - 1) * self.extent_size
    }

    /// Whether the pool is used past its soft threshold.
    pub fn past_soft_threshold(&self) -> bool {
        let capacity = self.refs.capacity().max(1);
        let pct = self.soft_threshold_pct.load(Ordering::Relaxed);
        self.refs.used_extents() * 100 >= capacity * u64::from(pct)
    }

    /// The next journal sequence number.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A thin volume (or clone, or read-only exported snapshot) served by a shard.
pub struct ThinVolume {
    image: u64,
    map: ExtentMap,
    pool: Arc<PoolShared>,
    journal: JournalWriter,
    /// A second descriptor of the journal file, for `fdatasync` on the ring (syncing any
    /// descriptor of a file syncs the file).
    journal_sync: File,
    capacity: u64,
    block_size: u32,
    busy: FxHashSet<u64>,
    read_only: bool,
    /// Extents still reserved for this volume (a full volume's space, promised at creation);
    /// its first writes draw from the reservation.
    reserved_left: u64,
    /// A full volume (space reserved for every logical extent).
    full: bool,
    /// Extents the current write plan took from the reservation (to give back on failure).
    reserved_in_plan: smallvec::SmallVec<[u64; 4]>,
    /// Times the map was shared (snapshots, checkpoint cuts, extents lent or adopted) or lost
    /// extents it owned (UNMAP): a trim or a conversion to full measured before is void.
    share_epoch: u64,
}

/// Longest WRITE ATOMIC (bytes): its new extents switch in one `MapGroup` record, whose entries
/// (at most 1 MiB / 4 KiB + 2 with the smallest extents) stay within
/// [`super::journal::MAX_GROUP_ENTRIES`].
pub const MAX_ATOMIC_WRITE: u64 = 1 << 20;
const _: () = assert!(MAX_ATOMIC_WRITE / 4096 + 2 <= super::journal::MAX_GROUP_ENTRIES as u64);

/// Most references [`ThinVolume::share_extents`] lets an extent reach (the count is a `u32`);
/// past it, EXTENDED COPY copies the data.
pub const MAX_SHARES: u32 = 1 << 24;

/// A volume's journal, opened for appending and for syncing.
pub struct OpenJournal {
    writer: JournalWriter,
    sync: File,
}

impl OpenJournal {
    /// Opens `writer`'s file a second time, for the syncs.
    pub fn open(writer: JournalWriter) -> Result<Self, StorageError> {
        let sync = File::open(writer.path()).map_err(|source| StorageError::Io {
            what: "open journal",
            path: writer.path().display().to_string(),
            source,
        })?;
        Ok(OpenJournal { writer, sync })
    }
}

impl ThinVolume {
    /// A volume of `capacity` bytes over `map`, journaling to `journal`.
    pub fn new(
        image: u64,
        map: ExtentMap,
        pool: Arc<PoolShared>,
        journal: JournalWriter,
        capacity: u64,
        block_size: u32,
        read_only: bool,
    ) -> Result<Self, StorageError> {
        let journal = OpenJournal::open(journal)?;
        Ok(ThinVolume::with_journal(
            image, map, pool, journal, capacity, block_size, read_only,
        ))
    }

    /// [`ThinVolume::new`] with the journal already open: it cannot fail, so a caller that
    /// took `map` out of the catalog never loses it to an error (dropping a map releases its
    /// extents).
    pub fn with_journal(
        image: u64,
        map: ExtentMap,
        pool: Arc<PoolShared>,
        journal: OpenJournal,
        capacity: u64,
        block_size: u32,
        read_only: bool,
    ) -> Self {
        let OpenJournal {
            writer: journal,
            sync: journal_sync,
        } = journal;
        ThinVolume {
            image,
            map,
            pool,
            journal,
            journal_sync,
            capacity,
            block_size,
            busy: FxHashSet::default(),
            read_only,
            reserved_left: 0,
            full: false,
            reserved_in_plan: smallvec::SmallVec::new(),
            share_epoch: 0,
        }
    }

    /// Makes this a full volume holding `extents` extents reserved in the pool (taken with
    /// [`RefTable::reserve`] by the caller).
    pub fn with_reservation(mut self, full: bool, extents: u64) -> Self {
        self.full = full;
        self.reserved_left = extents;
        self
    }

    /// Makes this thin volume full: reserves one extent of the pool for every logical extent
    /// it does not own alone (unmapped, or shared with a snapshot or a clone), so that no write
    /// can ever fail for space. One lookup per mapped extent, on the serving shard. `Ok`: the
    /// extents reserved (0 when already full); `Err`: the extents needed, which the pool cannot
    /// reserve (nothing changes).
    pub fn make_full(&mut self) -> Result<u64, u64> {
        if self.full {
            return Ok(0);
        }
        let mut owned = 0u64;
        let map = &self.map;
        map.for_each_mapped(|lext, _| owned += u64::from(map.is_exclusive(lext)));
        self.reserve_full(owned)
    }

    /// [`ThinVolume::make_full`] with the extents it owns alone measured by a stepwise walk
    /// ([`ExtentMap::usage_step`], [`UsageWalk::writable`]) that started at `marks`
    /// ([`ThinVolume::usage_marks`]), so the serving shard's I/O never waits for a whole-map
    /// count. `None` when the map was shared or unmapped since (the count may be too high:
    /// measure again); otherwise as `make_full`. Writes during the walk only add extents the
    /// volume owns alone, so the count is a lower bound and the reservation enough.
    ///
    /// [`UsageWalk::writable`]: crate::storage::pool::extent_map::UsageWalk::writable
    pub fn make_full_measured(&mut self, owned: u64, marks: u64) -> Option<Result<u64, u64>> {
        if self.full {
            return Some(Ok(0));
        }
        if self.share_epoch != marks {
            return None;
        }
        Some(self.reserve_full(owned))
    }

    /// Reserves one pool extent per logical extent beyond the `owned` it owns alone, and makes
    /// the volume full; `Err(needed)` when the pool cannot (nothing changes).
    fn reserve_full(&mut self, owned: u64) -> Result<u64, u64> {
        let need = self.map.len().saturating_sub(owned);
        if !self.pool.refs.reserve(need) {
            return Err(need);
        }
        self.full = true;
        self.reserved_left = need;
        Ok(need)
    }

    /// Makes this full volume thin: its reservation goes back to the pool (returned: the
    /// extents given back).
    pub fn make_thin(&mut self) -> u64 {
        let given = std::mem::take(&mut self.reserved_left);
        self.pool.refs.unreserve(given);
        self.full = false;
        given
    }

    /// Extents still reserved for this volume (given back with `unreserve` when it goes).
    pub fn reserved_left(&self) -> u64 {
        self.reserved_left
    }

    /// Before a snapshot of a full volume: every extent it maps becomes shared, so rewriting
    /// it may take a new extent for each logical extent. Tops the reservation up to one extent
    /// per logical extent (the invariant of a full volume: extents reserved + extents it owns
    /// alone ≥ its logical extents). `Err(needed)` when the pool cannot reserve that much
    /// (nothing changed).
    pub fn reserve_for_snapshot(&mut self) -> Result<u64, u64> {
        // Whatever happens next, everything this volume maps is about to be shared.
        self.share_epoch += 1;
        if !self.full {
            return Ok(0);
        }
        let need = self.map.len().saturating_sub(self.reserved_left);
        if need > 0 && !self.pool.refs.reserve(need) {
            return Err(need);
        }
        self.reserved_left += need;
        Ok(need)
    }

    /// Where a space measurement starts (the share epoch), for
    /// [`ThinVolume::trim_reservation`].
    pub fn usage_marks(&self) -> u64 {
        self.share_epoch
    }

    /// Gives back the part of a full volume's reservation it no longer needs (after snapshots
    /// that pinned its data went away), given `owned`: the extents it owned alone according
    /// to a measurement that started at `marks` ([`ThinVolume::usage_marks`]). Conservative
    /// under concurrent writes: a full volume only gains extents it owns alone (first writes
    /// and copies; it never unmaps), so `owned` is a lower bound at any later moment, unless
    /// the map was shared since the marks — then the trim is void. Returns the extents given
    /// back.
    pub fn trim_reservation(&mut self, owned: u64, marks: u64) -> u64 {
        if !self.full || self.share_epoch != marks {
            return 0;
        }
        let need = self.map.len().saturating_sub(owned);
        let excess = self.reserved_left.saturating_sub(need);
        if excess > 0 {
            self.pool.refs.unreserve(excess);
            self.reserved_left -= excess;
        }
        excess
    }

    /// A new extent. Every allocation of a full volume — a first write or a copy-on-write of an
    /// extent shared with a snapshot — draws from the volume's reservation while it lasts.
    fn allocate(&mut self) -> Option<u64> {
        if self.reserved_left > 0 {
            if let Some(p) = self.pool.refs.allocate_reserved() {
                self.reserved_left -= 1;
                self.reserved_in_plan.push(p);
                return Some(p);
            }
        }
        self.pool.refs.allocate()
    }

    /// Whether the pool is used past its soft threshold.
    pub fn past_soft_threshold(&self) -> bool {
        self.pool.past_soft_threshold()
    }

    /// Whether released references wait to be published (space may come back shortly).
    pub fn frees_pending(&self) -> bool {
        self.pool.refs.pending_frees() > 0
    }

    /// Extent size in bytes.
    pub fn extent_size(&self) -> u64 {
        self.pool.extent_size
    }

    /// The data store's descriptor (what SANITIZE erases extents in).
    pub fn data_fd(&self) -> std::os::fd::RawFd {
        self.pool.data.as_raw_fd()
    }

    /// Byte offset of physical extent `pext` in the data store.
    pub fn data_offset(&self, pext: u64) -> u64 {
        self.pool.offset_of(pext)
    }

    /// The physical extents behind logical extents `first..end` that no other image can see
    /// ([`ExtentMap::is_exclusive`]), as runs `(first physical extent, count)` of consecutive
    /// ones, in logical order: what SANITIZE erases in the data store before it unmaps them.
    pub fn exclusive_runs(&self, first: u64, end: u64) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for lext in first..end.min(self.map.len()) {
            let Some(pext) = self.map.exclusive_extent(lext) else {
                continue;
            };
            match runs.last_mut() {
                Some((start, n)) if *start + *n == pext => *n += 1,
                _ => runs.push((pext, 1)),
            }
        }
        runs
    }

    /// Whether this serves a snapshot (read-only, its map shared from the control plane's)
    /// rather than a volume whose map this shard owns.
    pub fn is_snapshot_view(&self) -> bool {
        self.read_only
    }

    /// The image id.
    pub fn image(&self) -> u64 {
        self.image
    }

    /// The extent map (for snapshots: `map().snapshot()` is O(1)).
    pub fn map(&self) -> &ExtentMap {
        &self.map
    }

    /// Shares the map as a snapshot at this instant: the map and the sequence number that orders
    /// the instant against the journal's mapping records.
    pub fn share(&self) -> (ExtentMap, u64) {
        (self.map.snapshot(), self.pool.next_seq())
    }

    /// Checkpoint cut: continues the journal in a new file named for `generation` and shares
    /// the map at this instant. Every mapping record before the cut is in the old file (and
    /// reflected in the returned map); every later one goes to the new file with a higher
    /// sequence number.
    pub fn rotate_journal(&mut self, generation: u64) -> Result<(ExtentMap, u64), StorageError> {
        let io = |what, path: &std::path::Path, source| StorageError::Io {
            what,
            path: path.display().to_string(),
            source,
        };
        let dir = self
            .journal
            .path()
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let path = dir.join(super::catalog::journal_file_name(self.image, generation));
        self.journal.rotate(&path).map_err(|e| {
            io(
                "rotate journal",
                &path,
                std::io::Error::other(e.to_string()),
            )
        })?;
        self.journal_sync = File::open(&path).map_err(|e| io("open journal", &path, e))?;
        self.share_epoch += 1;
        Ok(self.share())
    }

    /// Takes the map out (the volume is being removed), leaving an empty one.
    pub fn take_map(&mut self) -> ExtentMap {
        let empty = ExtentMap::new(0, Arc::clone(&self.pool.refs));
        std::mem::replace(&mut self.map, empty)
    }

    /// Replaces the map (rollback), returning the old one.
    pub fn replace_map(&mut self, map: ExtentMap) -> ExtentMap {
        std::mem::replace(&mut self.map, map)
    }

    /// Grows the volume to `capacity` bytes.
    /// Grows the volume to `capacity` bytes; `reserved` more extents (already reserved in the
    /// pool by the caller) back the growth of a full volume.
    pub fn grow(&mut self, capacity: u64, reserved: u64) {
        let extents = capacity.div_ceil(self.pool.extent_size);
        self.map.resize(extents);
        self.capacity = capacity;
        self.reserved_left += reserved;
    }

    /// Whether a copy-on-write is in flight (a snapshot waits for none on the written extents).
    pub fn remapping(&self) -> bool {
        !self.busy.is_empty()
    }

    /// Unmaps every extent fully inside `[offset, offset + len)` (UNMAP, WRITE SAME with
    /// UNMAP): their references are dropped and the change journaled. Partial extents keep
    /// their data (they are not zeroed: LBPRZ is reported for unmapped extents only).
    ///
    /// A full volume unmaps nothing (returns 0): it is not thin provisioned (LBPME=0), so the
    /// SCSI layer refuses UNMAP and WRITE SAME with UNMAP for it, and giving an extent back
    /// would break its guarantee (the extent's space is only free again once the release is
    /// published, too late to re-reserve it in a full pool).
    pub fn unmap(&mut self, offset: u64, len: u64) -> Result<u64, StorageError> {
        if self.full {
            return Ok(0);
        }
        let es = self.pool.extent_size;
        let first = offset.div_ceil(es);
        let end = (offset + len) / es;
        let mut freed = 0;
        for lext in first..end {
            if self.busy.contains(&lext) || self.map.get(lext).is_none() {
                continue;
            }
            self.map.set(lext, None);
            self.share_epoch += 1; // an extent it may have owned alone is gone
            self.journal_map(lext, 0)?;
            freed += 1;
        }
        Ok(freed)
    }

    /// Copies logical extents `src..src + count` onto `dst..dst + count` by reference (EXTENDED
    /// COPY of whole extents): each destination extent is mapped to its source's physical
    /// extent, which the two then share (the next write to either copies it first), or
    /// unmapped where the source is unmapped (it reads as zeros either way). Nothing is
    /// written to the data store; each changed destination extent gets a `Map` record, as a
    /// committed write would. The sources are all read before any destination changes, so
    /// overlapping ranges copy as if through a buffer.
    ///
    /// Returns `Ok(false)`, changing nothing, when the copy must move the data instead (see
    /// [`ThinVolume::lend_extents`] and [`ThinVolume::adopt_extents`]).
    pub fn share_extents(&mut self, src: u64, dst: u64, count: u64) -> Result<bool, StorageError> {
        if !self.may_adopt(dst, count) {
            return Ok(false);
        }
        match self.lend_extents(src, count) {
            Some(lent) => self.adopt_extents(dst, lent),
            None => Ok(false),
        }
    }

    /// The physical extents of logical extents `first..first + count` (`None`: unmapped), each
    /// with one more reference, which the caller hands to [`ThinVolume::adopt_extents`] (of
    /// this or another volume of the pool) or gives back with [`ThinVolume::give_back`].
    /// A full volume first reserves one more extent for each extent of the range it owns
    /// alone (shared from now on, rewriting it will take a new one). `None`, changing nothing,
    /// for a range outside the map, an extent being remapped by a write in flight, an extent
    /// already shared [`MAX_SHARES`] times (a host copying one extent over and over must not
    /// take its count near overflow), or a full volume whose reservation the pool cannot grow.
    pub fn lend_extents(&mut self, first: u64, count: u64) -> Option<Vec<Option<u64>>> {
        if !self.in_map(first, count) || self.any_busy(first, count) {
            return None;
        }
        let lent: Vec<Option<u64>> = (first..first + count).map(|l| self.map.get(l)).collect();
        let refs = &self.pool.refs;
        if lent.iter().flatten().any(|&p| refs.count(p) >= MAX_SHARES) {
            return None;
        }
        // What it owned alone in the range is shared from now on.
        self.share_epoch += 1;
        if self.full {
            let owned = (first..first + count).filter(|&l| self.map.is_exclusive(l));
            self.grow_reservation(owned.count() as u64)?;
        }
        for &p in lent.iter().flatten() {
            // The map holds a reference, so the extent cannot be freed under us.
            self.pool.refs.incr(p);
        }
        Some(lent)
    }

    /// Whether [`ThinVolume::adopt_extents`] may take `count` extents from `first`: not an
    /// exported snapshot, a range inside the map, no extent of it being remapped (a full
    /// volume may still refuse, when the pool cannot grow its reservation).
    pub fn may_adopt(&self, first: u64, count: u64) -> bool {
        !self.read_only && self.in_map(first, count) && !self.any_busy(first, count)
    }

    /// Maps logical extents from `first` to the physical extents `lent` (from
    /// [`ThinVolume::lend_extents`], their references included), one `Map` record per changed
    /// extent. A full volume first reserves one more extent for each extent it owned alone
    /// and now shares (or, unmapped by the copy, may write again). `Ok(false)` when this volume
    /// cannot take them ([`ThinVolume::may_adopt`], or a full volume's reservation the pool
    /// cannot grow); the references are then given back, as they are on an error.
    pub fn adopt_extents(
        &mut self,
        first: u64,
        lent: Vec<Option<u64>>,
    ) -> Result<bool, StorageError> {
        let count = lent.len() as u64;
        if !self.may_adopt(first, count) {
            self.give_back(lent);
            return Ok(false);
        }
        // Extents it owned alone may be replaced by shared ones.
        self.share_epoch += 1;
        if self.full {
            let replaced = (first..).zip(&lent).filter(|&(lext, &source)| {
                self.map.get(lext) != source && self.map.is_exclusive(lext)
            });
            if self.grow_reservation(replaced.count() as u64).is_none() {
                self.give_back(lent);
                return Ok(false);
            }
        }
        let mut rest = lent.into_iter();
        for lext in first..first + count {
            let Some(source) = rest.next() else { break };
            if self.map.get(lext) == source {
                self.give_back([source]);
                continue;
            }
            // The map takes over the lent reference (`ExtentMap::set`).
            self.map.set(lext, source);
            if let Err(e) = self.journal_map(lext, source.unwrap_or(0)) {
                self.give_back(rest);
                return Err(e);
            }
        }
        Ok(true)
    }

    /// A full volume about to share `n` extents it owned alone: reserves `n` more (`None` when
    /// the pool cannot), and voids reservation trims measured before (they counted those
    /// extents as owned).
    fn grow_reservation(&mut self, n: u64) -> Option<()> {
        self.share_epoch += 1;
        if n > 0 && !self.pool.refs.reserve(n) {
            return None;
        }
        self.reserved_left += n;
        Some(())
    }

    /// Drops references lent by [`ThinVolume::lend_extents`] that no map took over.
    pub fn give_back(&self, lent: impl IntoIterator<Item = Option<u64>>) {
        for p in lent.into_iter().flatten() {
            self.pool.refs.release(p);
        }
    }

    fn in_map(&self, first: u64, count: u64) -> bool {
        first
            .checked_add(count)
            .is_some_and(|end| end <= self.map.len())
    }

    fn any_busy(&self, first: u64, count: u64) -> bool {
        (first..first.saturating_add(count)).any(|l| self.busy.contains(&l))
    }

    fn journal_map(&mut self, lext: u64, pext: u64) -> Result<(), StorageError> {
        self.journal_append(Op::Map {
            image: self.image,
            lext,
            pext,
        })
    }

    fn journal_append(&mut self, op: Op) -> Result<(), StorageError> {
        let record = Record {
            seq: self.pool.next_seq(),
            op,
        };
        self.journal.append(&record).map_err(|e| StorageError::Io {
            what: "journal append",
            path: format!("image {}", self.image),
            source: std::io::Error::other(e.to_string()),
        })
    }

    /// Releases what a failed plan had allocated.
    fn undo(&mut self, out: &mut Vec<WritePiece>, from: usize) {
        for piece in out.drain(from..) {
            if let WritePiece::NewExtent(e) = piece {
                // Never journaled: free at once, and a reserved extent goes back to the
                // volume's reservation.
                if self.reserved_in_plan.contains(&e.pext) {
                    if self.pool.refs.unallocate_reserved(e.pext) {
                        self.reserved_left += 1;
                    }
                } else {
                    self.pool.refs.unallocate(e.pext);
                }
                self.busy.remove(&e.lext);
            }
        }
    }
}

impl Volume for ThinVolume {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<Piece>) {
        let fd = self.pool.data.as_raw_fd();
        for Span {
            lext,
            within,
            len: n,
            ..
        } in spans(offset, len, self.pool.extent_size)
        {
            let piece = match self.map.get(lext) {
                Some(p) => Piece::File {
                    fd,
                    offset: self.pool.offset_of(p) + within,
                    len: n,
                },
                None => Piece::Zero { len: n },
            };
            push_merged(out, piece);
        }
    }

    fn plan_write(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<WritePiece>,
    ) -> Result<(), PlanError> {
        self.plan(offset, len, out, false)
    }

    fn plan_atomic_write(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<WritePiece>,
    ) -> Result<(), PlanError> {
        self.plan(offset, len, out, true)
    }

    fn commit_extent(&mut self, ext: &NewExtent) -> Result<(), StorageError> {
        self.busy.remove(&ext.lext);
        // The map takes over the allocation's reference; the old extent's is dropped.
        self.map.set(ext.lext, Some(ext.pext));
        self.journal_map(ext.lext, ext.pext)
    }

    fn commit_atomic(&mut self, exts: &[NewExtent]) -> Result<(), StorageError> {
        let mut entries = Vec::with_capacity(exts.len());
        for ext in exts {
            self.busy.remove(&ext.lext);
            self.map.set(ext.lext, Some(ext.pext));
            entries.push((ext.lext, ext.pext));
        }
        // One record: after a crash every extent of the write is new, or none is.
        self.journal_append(Op::MapGroup {
            image: self.image,
            entries,
        })
    }
    fn abort_extent(&mut self, ext: &NewExtent) {
        self.busy.remove(&ext.lext);
        // The write failed before any record named the extent.
        self.pool.refs.unallocate(ext.pext);
    }

    fn sync_fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.pool.data.as_raw_fd());
        out.push(self.journal_sync.as_raw_fd());
    }

    fn metadata_fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.journal_sync.as_raw_fd());
    }

    fn data_in_memory(&self) -> bool {
        self.pool.in_memory
    }

    fn as_thin(&mut self) -> Option<&mut ThinVolume> {
        Some(self)
    }
}

impl ThinVolume {
    /// Plans a write (see [`Volume::plan_write`]); `atomic`: no extent is written in place
    /// ([`Volume::plan_atomic_write`]).
    fn plan(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<WritePiece>,
        atomic: bool,
    ) -> Result<(), PlanError> {
        if self.read_only {
            return Err(PlanError::ReadOnly);
        }
        let start = out.len();
        self.reserved_in_plan.clear();
        let es = self.pool.extent_size;
        let fd = self.pool.data.as_raw_fd();
        for Span {
            lext,
            within,
            len: n,
            data_at,
        } in spans(offset, len, es)
        {
            if self.busy.contains(&lext) {
                self.undo(out, start);
                return Err(PlanError::Busy);
            }
            // One walk of the map for an extent the volume owns alone (the usual overwrite).
            let owned = self.map.exclusive_extent(lext);
            let exclusive = owned.is_some();
            let mapped = owned.or_else(|| self.map.get(lext));
            match mapped {
                Some(p) if exclusive && !atomic => {
                    let piece = WritePiece::InPlace {
                        fd,
                        offset: self.pool.offset_of(p) + within,
                        len: n,
                        data_at,
                    };
                    push_write_merged(out, start, piece);
                }
                _ => {
                    // An atomic rewrite of an extent the volume owns alone takes a second one
                    // for a moment, from the pool: a full volume's reservation only covers the
                    // extents it shares or has not written.
                    let allocated = if exclusive {
                        self.pool.refs.allocate()
                    } else {
                        self.allocate()
                    };
                    let Some(pext) = allocated else {
                        self.undo(out, start);
                        return Err(PlanError::NoSpace);
                    };
                    self.busy.insert(lext);
                    let whole = within == 0 && n == es;
                    out.push(WritePiece::NewExtent(NewExtent {
                        lext,
                        pext,
                        fd,
                        offset: self.pool.offset_of(pext),
                        extent_len: es,
                        copy_from: if whole {
                            None
                        } else {
                            mapped.map(|p| self.pool.offset_of(p))
                        },
                        within,
                        len: n,
                        data_at,
                    }));
                }
            }
        }
        Ok(())
    }
}

/// The part of a byte range that falls in one logical extent.
struct Span {
    lext: u64,
    /// Offset inside the extent.
    within: u64,
    /// Bytes in this extent.
    len: u64,
    /// Offset of these bytes from the start of the range.
    data_at: u64,
}

/// Cuts `[offset, offset + len)` at extent boundaries.
fn spans(offset: u64, len: u64, extent_size: u64) -> impl Iterator<Item = Span> {
    let end = offset + len;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let within = at % extent_size;
        let n = (extent_size - within).min(end - at);
        let span = Span {
            lext: at / extent_size,
            within,
            len: n,
            data_at: at - offset,
        };
        at += n;
        Some(span)
    })
}

/// Appends a read piece, merging it with the previous one when they are contiguous.
fn push_merged(out: &mut Vec<Piece>, piece: Piece) {
    match (out.last_mut(), piece) {
        (
            Some(Piece::File {
                fd: f0,
                offset: o0,
                len: l0,
            }),
            Piece::File { fd, offset, len },
        ) if *f0 == fd && *o0 + *l0 == offset => *l0 += len,
        (Some(Piece::Zero { len: l0 }), Piece::Zero { len }) => *l0 += len,
        _ => out.push(piece),
    }
}

/// Appends an in-place write piece, merging it with the previous in-place piece when both the
/// device range and the source range are contiguous.
fn push_write_merged(out: &mut Vec<WritePiece>, start: usize, piece: WritePiece) {
    if out.len() > start {
        if let (
            Some(WritePiece::InPlace {
                fd: f0,
                offset: o0,
                len: l0,
                data_at: d0,
            }),
            WritePiece::InPlace {
                fd,
                offset,
                len,
                data_at,
            },
        ) = (out.last_mut(), piece)
        {
            if *f0 == fd && *o0 + *l0 == offset && *d0 + *l0 == data_at {
                *l0 += len;
                return;
            }
        }
    }
    out.push(piece);
}
