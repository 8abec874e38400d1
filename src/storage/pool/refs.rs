//! Physical-extent reference counts and allocation for the thin pool.
//!
//! The pool's data store is carved into `capacity` physical extents numbered `1..=capacity`
//! (0 never names an extent: it is the "unmapped" value of an extent-map entry). A [`RefTable`]
//! keeps one `AtomicU32` reference count per physical extent, a lock-free queue of extents whose
//! count fell back to 0, and a bump pointer over extents never used since the table was built.
//! It is shared (`Arc`) by every shard and the control thread; every operation is lock-free.
//!
//! # What a count means
//! `count(p)` is the number of references to `p` held by
//! - entries of *owned* extent-map leaves (see [`super::extent_map`]: one per entry equal to `p`,
//!   summed over distinct leaves — in practice an extent appears at most once per leaf, so this is
//!   the number of distinct leaves that map it), plus
//! - outstanding allocations: an extent returned by [`RefTable::allocate`] /
//!   [`RefTable::allocate_reserved`] has count 1, owned by the caller until it hands that reference
//!   to `ExtentMap::set` or gives it back with [`RefTable::release`].
//!
//! # Invariants (exact whenever no operation is in flight)
//! - **R1** `used_extents()` = number of extents with a count > 0; `free_extents()` =
//!   `capacity - used_extents()`.
//! - **R2** every extent below the bump pointer whose count is 0 is in the free queue exactly
//!   once; no extent with a count > 0 is in the queue; extents at or above the bump pointer have
//!   count 0 and are not in the queue. So an extent is never both free and referenced.
//! - **R3** `used + reserved <= capacity` (the two together are the `committed` counter): a thin
//!   allocation never eats into space promised to full (thick) volumes.
//!
//! # Reservations (full volumes)
//! A full volume reserves its extents at creation ([`RefTable::reserve`]); reserved extents are
//! invisible to thin allocation ([`RefTable::allocate`]) and are consumed one by one by
//! [`RefTable::allocate_reserved`]. The table only keeps the pool-wide total: each volume keeps
//! track of its own share and gives back what it no longer needs with [`RefTable::unreserve`].
//! Reservations are not persisted here: after recovery the catalog re-reserves.
//!
//! # Growth
//! The pool grows online ([`RefTable::grow`]): the count array is allocated for [`GROWTH_LIMIT`]
//! times the capacity the table was built with, zeroed lazily by the allocator (untouched pages
//! cost no memory), and the capacity is an atomic the allocators read; extents past the old
//! capacity were never handed out, so raising it only makes new extents reachable. Growing past
//! the limit needs a restart (the table is rebuilt for the new capacity).
//!
//! # Memory
//! 4 bytes per physical extent (64 MiB per TiB of pool at 64 KiB extents), plus up to ~16 bytes per
//! extent sitting in the free queue (extents freed below the high-water mark).

use crossbeam::queue::SegQueue;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use thiserror::Error;

/// Errors of [`RefTable::from_counts`] / [`RefTable::load_counts`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RefError {
    /// The counts vector does not have one slot per extent plus slot 0.
    #[error("reference counts cover {got} slots, expected {expected} (capacity + 1)")]
    CountsLength {
        /// Slots given.
        got: usize,
        /// `capacity + 1`.
        expected: u64,
    },
    /// Slot 0 has a non-zero count: 0 never names an extent.
    #[error("reference count of extent 0 must be 0 (0 never names an extent)")]
    ExtentZeroCounted,
    /// The pool cannot grow online to that many extents (or would shrink).
    #[error("the pool can grow online from {capacity} to at most {limit} extents, not {wanted}")]
    GrowthLimit {
        /// The capacity now.
        capacity: u64,
        /// The most it can grow to without a restart.
        limit: u64,
        /// The capacity asked for.
        wanted: u64,
    },
    /// Counts can only be loaded into a table nobody has used yet.
    #[error("the reference table is already in use; counts can only be loaded into a fresh table")]
    NotPristine,
    /// The capacity does not fit this machine's address space.
    #[error("pool capacity of {capacity} extents is too large for this machine")]
    CapacityTooLarge {
        /// The capacity asked for.
        capacity: u64,
    },
}

/// How many times its built capacity a table can grow to online (see the module's Growth).
pub const GROWTH_LIMIT: u64 = 4;

/// Reference counts, free queue and allocation counters of one pool's physical extents.
pub struct RefTable {
    /// Number of physical extents; valid extent numbers are `1..=capacity`. Only grows, up to
    /// `counts.len() - 1`.
    capacity: AtomicU64,
    /// `counts[p]` is the reference count of extent `p`; `counts[0]` is unused and stays 0.
    /// Slots past the capacity stay 0 until a growth makes them extents.
    counts: Box<[AtomicU32]>,
    /// Extents whose count fell to 0 (R2).
    free: SegQueue<u64>,
    /// With deferred releases: references dropped by records that may not be durable yet (see
    /// [`RefTable::publish_freed`]). Until published they still count, so the extent can
    /// neither be reused nor look exclusive to a remaining holder (which would then overwrite
    /// it in place while a power loss could still bring the old holder's mapping back).
    pending: SegQueue<u64>,
    /// Whether frees are deferred (the pool enables it; unit tests of the map leave it off).
    deferred: std::sync::atomic::AtomicBool,
    /// Bump pointer: the lowest extent never handed out since the table was built. Never exceeds
    /// `capacity + 1`.
    next: AtomicU64,
    /// Extents with a count > 0, plus allocations in progress (R1).
    used: AtomicU64,
    /// Extents promised to full volumes and not yet allocated.
    reserved: AtomicU64,
    /// `used + reserved`, updated first (with a bound check) so R3 holds at every instant.
    committed: AtomicU64,
}

impl fmt::Debug for RefTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefTable")
            .field("capacity", &self.capacity())
            .field("used", &self.used_extents())
            .field("reserved", &self.reserved_extents())
            .finish_non_exhaustive()
    }
}

impl RefTable {
    /// An empty table for a pool of `capacity_extents` extents (numbers `1..=capacity_extents`),
    /// all free.
    ///
    /// # Panics
    /// If the count array (4 bytes per extent) cannot be addressed on this machine; the pool
    /// layer validates capacities before building tables.
    pub fn new(capacity_extents: u64) -> Arc<RefTable> {
        // Room to grow when the address space and the allocator allow it; else none.
        let counts = slots_for(capacity_extents.saturating_mul(GROWTH_LIMIT))
            .and_then(zeroed_counts)
            .or_else(|| slots_for(capacity_extents).and_then(zeroed_counts))
            .expect("pool capacity validated by the caller fits the address space");
        Arc::new(Self::empty(capacity_extents, counts))
    }

    fn empty(capacity: u64, counts: Box<[AtomicU32]>) -> RefTable {
        RefTable {
            capacity: AtomicU64::new(capacity),
            counts,
            free: SegQueue::new(),
            pending: SegQueue::new(),
            deferred: std::sync::atomic::AtomicBool::new(false),
            next: AtomicU64::new(1),
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        }
    }

    /// A table whose counts are `counts` (indexed by extent number, `capacity + 1` slots, slot 0
    /// zero), as recomputed by [`super::extent_map::count_references`]. Extents with count 0 are
    /// free; the bump pointer starts just past the highest referenced extent.
    ///
    /// Note: maps loaded with [`super::extent_map::ExtentMap::from_leaves`] reference the table
    /// they were built with; recovery therefore uses [`super::extent_map::adopt_loaded`] (which
    /// calls [`RefTable::load_counts`] on that table). This constructor serves checks and tools.
    pub fn from_counts(capacity: u64, counts: Vec<u32>) -> Result<Arc<RefTable>, RefError> {
        let slots = slots_for(capacity).ok_or(RefError::CapacityTooLarge { capacity })?;
        if counts.len() != slots {
            return Err(RefError::CountsLength {
                got: counts.len(),
                expected: capacity + 1,
            });
        }
        // Reuses the vector's allocation (same layout); no room to grow (checks and tools).
        let table = Self::empty(capacity, counts.into_iter().map(AtomicU32::new).collect());
        table.index_counts()?;
        Ok(Arc::new(table))
    }

    /// Loads recomputed counts into this table, which must be *pristine*: nothing allocated,
    /// reserved or freed since [`RefTable::new`]. Used once by recovery, before the table is
    /// shared with any allocator; it must not race with other calls on the table.
    pub fn load_counts(&self, counts: &[u32]) -> Result<(), RefError> {
        let capacity = self.capacity();
        if slots_for(capacity) != Some(counts.len()) {
            return Err(RefError::CountsLength {
                got: counts.len(),
                expected: capacity + 1,
            });
        }
        let pristine = self.next.load(Ordering::Acquire) == 1
            && self.committed.load(Ordering::Acquire) == 0
            && self.free.is_empty();
        if !pristine {
            return Err(RefError::NotPristine);
        }
        if counts.first().is_some_and(|&c| c != 0) {
            return Err(RefError::ExtentZeroCounted);
        }
        for (slot, &c) in self.counts.iter().zip(counts) {
            slot.store(c, Ordering::Relaxed);
        }
        self.index_counts()
    }

    /// Derives the free queue, bump pointer and counters from the counts (R1, R2, R3). The table
    /// must be otherwise empty.
    fn index_counts(&self) -> Result<(), RefError> {
        if self
            .counts
            .first()
            .is_some_and(|c| c.load(Ordering::Relaxed) != 0)
        {
            return Err(RefError::ExtentZeroCounted);
        }
        let slots = slots_for(self.capacity()).map_or(0, |n| n.min(self.counts.len()));
        let highest = (1..slots)
            .rev()
            .find(|&p| self.counts[p].load(Ordering::Relaxed) != 0)
            .unwrap_or(0);
        let mut used = 0u64;
        for (p, slot) in self.counts.iter().enumerate().take(highest + 1).skip(1) {
            if slot.load(Ordering::Relaxed) == 0 {
                self.free.push(p as u64);
            } else {
                used += 1;
            }
        }
        self.next.store(highest as u64 + 1, Ordering::Release);
        self.used.store(used, Ordering::Release);
        self.reserved.store(0, Ordering::Release);
        self.committed.store(used, Ordering::Release);
        Ok(())
    }

    /// Number of physical extents in the pool.
    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Acquire)
    }

    /// The most extents [`grow`](Self::grow) can raise the capacity to.
    pub fn growth_limit(&self) -> u64 {
        self.counts.len() as u64 - 1
    }

    /// Raises the capacity to `capacity` extents (the data store already holds them, and the
    /// superblock says so durably): the new extents become allocatable at once, to every
    /// shard. Lock-free; concurrent growths are the caller's to avoid (the control thread grows).
    pub fn grow(&self, capacity: u64) -> Result<(), RefError> {
        let now = self.capacity();
        if capacity < now || capacity > self.growth_limit() {
            return Err(RefError::GrowthLimit {
                capacity: now,
                limit: self.growth_limit(),
                wanted: capacity,
            });
        }
        self.capacity.store(capacity, Ordering::Release);
        Ok(())
    }

    /// A free extent for a thin allocation, with count 1 owned by the caller (hand it to
    /// `ExtentMap::set` or [`RefTable::release`] it). `None` when every extent is used or
    /// reserved. Lock-free: free queue first, then never-used extents.
    pub fn allocate(&self) -> Option<u64> {
        // R3: take a unit of `committed` only if one is left outside used + reserved.
        self.committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < self.capacity()).then_some(c + 1)
            })
            .ok()?;
        let taken = self.take_extent();
        if taken.is_none() {
            self.committed.fetch_sub(1, Ordering::AcqRel);
        }
        taken
    }

    /// A free extent taken from the pool's reservations (a full volume's write), with count 1
    /// owned by the caller. `None` when no reservation is outstanding (the caller may then fall
    /// back to [`RefTable::allocate`]). The extent's reservation becomes use: when it is
    /// eventually freed it returns to the general pool, not to the reservation.
    pub fn allocate_reserved(&self) -> Option<u64> {
        self.reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
            .ok()?;
        // `committed` is unchanged: the unit moves from reserved to used.
        let taken = self.take_extent();
        if taken.is_none() {
            self.reserved.fetch_add(1, Ordering::AcqRel);
        }
        taken
    }

    /// Takes a free extent for a caller that already holds a unit of `committed`.
    fn take_extent(&self) -> Option<u64> {
        // The unit of `committed` the caller holds guarantees an extent is in the queue or past
        // the bump pointer: `release` pushes an extent before giving its unit back, and every
        // taker takes its unit before taking an extent.
        let pext = self.free.pop().or_else(|| {
            self.next
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n <= self.capacity()).then_some(n + 1)
                })
                .ok()
        });
        let Some(pext) = pext else {
            debug_assert!(false, "a unit of committed space without a free extent");
            return None;
        };
        let prev = self.slot(pext).swap(1, Ordering::AcqRel);
        debug_assert_eq!(prev, 0, "allocated extent {pext} had count {prev}");
        self.used.fetch_add(1, Ordering::AcqRel);
        Some(pext)
    }

    /// Reserves `n` extents for a full volume. `false` (and nothing reserved) when fewer than `n`
    /// extents are neither used nor already reserved.
    pub fn reserve(&self, n: u64) -> bool {
        let ok = self
            .committed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                c.checked_add(n).filter(|&t| t <= self.capacity())
            })
            .is_ok();
        if ok {
            self.reserved.fetch_add(n, Ordering::AcqRel);
        }
        ok
    }

    /// Gives back `n` reserved extents (a full volume deleted, shrunk or made thin). Giving back
    /// more than is reserved is a caller bug: debug builds panic, release builds give back what
    /// is reserved.
    pub fn unreserve(&self, n: u64) {
        let mut given = n;
        let _ = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                given = n.min(r);
                Some(r - given)
            });
        debug_assert_eq!(given, n, "unreserve({n}) with only {given} reserved");
        self.committed.fetch_sub(given, Ordering::AcqRel);
    }

    /// The reference count of `pext`; 0 for a free extent and for numbers outside `1..=capacity`.
    pub fn count(&self, pext: u64) -> u32 {
        if pext == 0 || pext > self.capacity() {
            return 0;
        }
        self.slot(pext).load(Ordering::Acquire)
    }

    /// Adds a reference to `pext`, which must already be referenced (count > 0): a leaf being
    /// copied, or a caller duplicating a reference it holds.
    ///
    /// # Panics
    /// If `pext` is outside `1..=capacity` (a caller bug).
    pub fn incr(&self, pext: u64) {
        // Like `Arc::clone`: the caller holds a reference, so the count can't reach 0 under us
        // and no ordering is needed. Overflow would need 2^32 leaves (16 TiB of map) naming one
        // extent.
        let prev = self.slot(pext).fetch_add(1, Ordering::Relaxed);
        debug_assert!(prev > 0, "incr of free extent {pext}");
        debug_assert!(prev < u32::MAX, "reference count overflow on extent {pext}");
    }

    /// Drops one reference to `pext`; at 0 the extent goes to the free queue. Releasing an
    /// extent whose count is already 0 is a bug: debug builds panic, release builds leave the
    /// count at 0 (the extent is already free).
    ///
    /// # Panics
    /// If `pext` is outside `1..=capacity` (a caller bug).
    pub fn release(&self, pext: u64) {
        if self.deferred.load(Ordering::Acquire) {
            // Bounds-checked now, applied at publication.
            self.slot(pext);
            self.pending.push(pext);
            return;
        }
        self.release_now(pext);
    }

    /// Gives back an allocation no journal record ever named (a write plan that failed, a
    /// write whose I/O failed): it is free again at once, deferral or not.
    pub fn unallocate(&self, pext: u64) {
        self.release_now(pext);
    }

    /// [`RefTable::unallocate`] for an extent taken with [`RefTable::allocate_reserved`]: the
    /// reservation is restored. `false` when another allocation took the space meanwhile.
    pub fn unallocate_reserved(&self, pext: u64) -> bool {
        self.release_now(pext);
        self.reserve(1)
    }

    fn release_now(&self, pext: u64) {
        let prev = self
            .slot(pext)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
        match prev {
            Ok(1) => self.free_now(pext),
            Ok(_) => {}
            Err(_) => debug_assert!(false, "release of free extent {pext}"),
        }
    }

    fn free_now(&self, pext: u64) {
        // R2 then R1/R3: queue first, so a unit of `committed` given back always has an extent
        // behind it (see `take_extent`).
        self.free.push(pext);
        self.used.fetch_sub(1, Ordering::AcqRel);
        self.committed.fetch_sub(1, Ordering::AcqRel);
    }

    /// Defers releases from now on: a dropped reference waits in a pending queue until
    /// [`RefTable::publish_freed`], so that an extent is reused — or overwritten in place by a
    /// holder that became its only one — only after the journal records that released it are
    /// durable (otherwise a power loss could bring the old mapping back next to the new data).
    pub fn defer_frees(&self) {
        self.deferred.store(true, Ordering::Release);
    }

    /// Extents waiting for [`RefTable::publish_freed`].
    pub fn pending_frees(&self) -> usize {
        self.pending.len()
    }

    /// Applies the first `n` pending releases (extents reaching 0 become free). Call after
    /// making durable every journal record written before [`RefTable::pending_frees`]
    /// returned `n`.
    pub fn publish_freed(&self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some(pext) = self.pending.pop() else {
                break;
            };
            self.release_now(pext);
            done += 1;
        }
        done
    }

    /// Extents not referenced by anything (exact whenever no operation is in flight).
    pub fn free_extents(&self) -> u64 {
        self.capacity() - self.used_extents()
    }

    /// Extents with a count > 0 (exact whenever no operation is in flight).
    pub fn used_extents(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Extents reserved for full volumes and not yet allocated.
    pub fn reserved_extents(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Extents a thin allocation can still get: free and not reserved.
    pub fn available_extents(&self) -> u64 {
        self.capacity()
            .saturating_sub(self.committed.load(Ordering::Acquire))
    }

    fn slot(&self, pext: u64) -> &AtomicU32 {
        // Extent numbers come from this table (allocate) or from maps validated against it
        // (count_references); anything else is a caller bug, like an out-of-bounds index.
        assert!(
            pext >= 1 && pext <= self.capacity(),
            "extent {pext} outside the pool (1..={})",
            self.capacity()
        );
        &self.counts[pext as usize]
    }

    /// Test helper: the bump pointer (one past the highest extent ever handed out).
    #[cfg(test)]
    pub(crate) fn high_water(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Test helper: the free queue's contents in queue order (drained and pushed back; only
    /// meaningful when nothing else uses the table).
    #[cfg(test)]
    pub(crate) fn free_queue(&self) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(p) = self.free.pop() {
            out.push(p);
        }
        for &p in &out {
            self.free.push(p);
        }
        out
    }
}

/// Number of count slots (`capacity + 1`) if it is addressable.
fn slots_for(capacity: u64) -> Option<usize> {
    usize::try_from(capacity).ok()?.checked_add(1)
}

/// `slots` zero counts, zeroed by the allocator: a large array comes from fresh pages, which
/// cost memory only once written (the room a table keeps for growth). `None` when the allocator
/// refuses.
fn zeroed_counts(slots: usize) -> Option<Box<[AtomicU32]>> {
    let layout = std::alloc::Layout::array::<AtomicU32>(slots).ok()?;
    if layout.size() == 0 {
        return Some(Box::new([]));
    }
    // SAFETY: the layout has a non-zero size (checked above).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<AtomicU32>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` is a fresh allocation of `layout` (the global allocator's, as `Box` frees
    // with), holding `slots` zeroed `AtomicU32`s (all-zero bytes are a valid `AtomicU32`).
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, slots)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_reuse() {
        let t = RefTable::new(3);
        let a = t.allocate().expect("space");
        let b = t.allocate().expect("space");
        let c = t.allocate().expect("space");
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(t.allocate(), None);
        assert_eq!((t.used_extents(), t.free_extents()), (3, 0));
        t.incr(b);
        assert_eq!(t.count(b), 2);
        t.release(b);
        assert_eq!(t.count(b), 1);
        t.release(b);
        assert_eq!(t.count(b), 0);
        assert_eq!((t.used_extents(), t.free_extents()), (2, 1));
        assert_eq!(t.free_queue(), vec![2]);
        assert_eq!(t.allocate(), Some(2));
        assert_eq!(t.count(2), 1);
        assert_eq!(t.count(0), 0);
        assert_eq!(t.count(4), 0);
    }

    #[test]
    fn reservations_hold_space_back_from_thin_allocation() {
        let t = RefTable::new(4);
        assert!(t.reserve(3));
        assert!(!t.reserve(2));
        assert_eq!(t.available_extents(), 1);
        assert!(t.allocate().is_some());
        assert_eq!(t.allocate(), None, "the rest is reserved");
        let r = t.allocate_reserved().expect("reserved");
        assert_eq!(t.count(r), 1);
        assert_eq!(t.reserved_extents(), 2);
        t.unreserve(2);
        assert_eq!(t.reserved_extents(), 0);
        assert_eq!(t.allocate_reserved(), None);
        assert!(t.allocate().is_some());
        assert!(t.allocate().is_some());
        assert_eq!(t.allocate(), None);
        assert_eq!(t.used_extents(), 4);
    }

    #[test]
    fn from_counts_rebuilds_free_queue_and_bump() {
        let t = RefTable::from_counts(6, vec![0, 2, 0, 1, 0, 0, 0]).expect("valid");
        assert_eq!(t.used_extents(), 2);
        assert_eq!(t.free_extents(), 4);
        assert_eq!(t.high_water(), 4);
        assert_eq!(t.free_queue(), vec![2]);
        assert_eq!(t.allocate(), Some(2));
        assert_eq!(t.allocate(), Some(4));
        assert_eq!(
            RefTable::from_counts(2, vec![0, 1]).err(),
            Some(RefError::CountsLength {
                got: 2,
                expected: 3
            })
        );
        assert_eq!(
            RefTable::from_counts(1, vec![1, 0]).err(),
            Some(RefError::ExtentZeroCounted)
        );
    }

    #[test]
    fn load_counts_needs_a_pristine_table() {
        let t = RefTable::new(3);
        t.load_counts(&[0, 0, 1, 0]).expect("pristine");
        assert_eq!(t.used_extents(), 1);
        assert_eq!(t.load_counts(&[0, 0, 1, 0]), Err(RefError::NotPristine));
        assert_eq!(t.allocate(), Some(1));
        assert_eq!(t.allocate(), Some(3));
    }

    #[test]
    fn concurrent_allocate_release_keeps_counters_exact() {
        // 4 threads holding up to 100 each in a pool of 300: the pool runs full often.
        let t = RefTable::new(300);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let mut held = Vec::new();
                        while held.len() < 100 {
                            match t.allocate() {
                                Some(p) => held.push(p),
                                None => break,
                            }
                        }
                        for p in held {
                            t.release(p);
                        }
                    }
                });
            }
        });
        assert_eq!(t.used_extents(), 0);
        assert_eq!(t.free_extents(), 300);
        let mut q = t.free_queue();
        q.sort_unstable();
        q.dedup();
        assert_eq!(
            q.len() as u64,
            t.high_water() - 1,
            "every extent handed out is free once"
        );
    }

    #[test]
    fn growth_makes_new_extents_allocatable_up_to_the_limit() {
        let refs = RefTable::new(4);
        assert_eq!(refs.growth_limit(), 4 * GROWTH_LIMIT);
        let taken: Vec<u64> = std::iter::from_fn(|| refs.allocate()).collect();
        assert_eq!(taken, vec![1, 2, 3, 4]);
        assert!(!refs.reserve(1), "full");
        refs.grow(6).unwrap();
        assert_eq!((refs.capacity(), refs.free_extents()), (6, 2));
        assert!(refs.reserve(1), "a reservation fits now");
        assert_eq!(refs.allocate(), Some(5));
        assert_eq!(refs.allocate(), None, "the other new extent is reserved");
        assert_eq!(refs.allocate_reserved(), Some(6));
        assert_eq!(refs.count(6), 1);
        // Shrinking, or growing past the room the table kept, is refused and changes nothing.
        for wanted in [5, refs.growth_limit() + 1] {
            assert!(matches!(
                refs.grow(wanted),
                Err(RefError::GrowthLimit { capacity: 6, .. })
            ));
        }
        refs.grow(refs.growth_limit()).unwrap();
        assert_eq!(refs.free_extents(), refs.growth_limit() - 6);
    }

    #[test]
    fn recovered_counts_load_into_a_table_with_room_to_grow() {
        let refs = RefTable::new(4);
        refs.load_counts(&[0, 1, 0, 2, 0]).unwrap();
        assert_eq!((refs.used_extents(), refs.high_water()), (2, 4));
        assert_eq!(
            refs.load_counts(&[0; 17]),
            Err(RefError::CountsLength {
                got: 17,
                expected: 5
            })
        );
        refs.grow(5).unwrap();
        let mut got: Vec<u64> = std::iter::from_fn(|| refs.allocate()).collect();
        got.sort_unstable();
        assert_eq!(got, vec![2, 4, 5]);
    }

    /// Allocators racing a growth: every extent is handed out once, none past the capacity,
    /// and every extent of the grown pool is reachable.
    #[test]
    fn allocations_racing_a_growth_hand_out_each_extent_once() {
        let refs = RefTable::new(1000);
        let limit = refs.growth_limit();
        let taken: Vec<Vec<u64>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while mine.len() < 5000 {
                            // Read before allocating: a growth between a refusal and the
                            // check must not end the worker early.
                            let capacity = refs.capacity();
                            match refs.allocate() {
                                Some(p) => {
                                    assert!(p <= refs.capacity(), "{p} past the capacity");
                                    mine.push(p);
                                }
                                None if capacity == limit => break,
                                None => std::thread::yield_now(),
                            }
                        }
                        mine
                    })
                })
                .collect();
            for step in 2..=GROWTH_LIMIT {
                std::thread::sleep(std::time::Duration::from_millis(2));
                refs.grow(1000 * step).unwrap();
            }
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = taken.concat();
        all.sort_unstable();
        let n = all.len();
        all.dedup();
        assert_eq!(all.len(), n, "an extent handed out twice");
        assert_eq!(
            all,
            (1..=limit).collect::<Vec<_>>(),
            "every extent reachable"
        );
        assert_eq!(refs.free_extents(), 0);
    }

    #[test]
    fn a_table_built_from_counts_has_no_room_to_grow() {
        let refs = RefTable::from_counts(3, vec![0, 1, 0, 0]).unwrap();
        assert_eq!(refs.growth_limit(), 3);
        assert!(refs.grow(4).is_err());
    }
}
