//! The extent map of one image (volume, snapshot or clone): logical extent → physical extent.
//!
//! # Shape
//! A radix tree of fixed fan-out ([`FANOUT`] = 512): leaves hold 512 physical extent numbers
//! (`u64`, 0 = unmapped), interior nodes hold 512 optional children. A map of `len` logical
//! extents has `levels()` = 1 + ⌈log₅₁₂ len⌉ levels (3 for 1 TiB of 64 KiB extents), so a lookup
//! is that many dependent loads: no lock, no hash, no allocation. Absent subtrees read as
//! unmapped; the root is absent until the first write.
//!
//! # Sharing and ownership
//! Nodes live behind `Arc` and are immutable while shared. [`ExtentMap::snapshot`] clones the root
//! `Arc`: O(1) whatever the size of the map. [`ExtentMap::set`] (which needs `&mut self`, so only
//! the map's owner — the shard serving the volume — calls it) copies every shared node on the path
//! it changes ("shadowing", `Arc::make_mut` style) and mutates only nodes nobody else can see, so
//! other images never change and readers on other threads (a snapshot walked by the control
//! thread, served by another shard) need no lock and no epoch: a node is freed when its last `Arc`
//! goes. Deleting an image just drops its root; lookup cost never depends on how many snapshots or
//! clones exist or how deep a clone chain is. Dropping the last `Arc` of a big tree releases its
//! extents synchronously (≈0.5 s for a fully mapped TiB, mostly free-queue pushes): drop deleted
//! images on the control thread, not on a shard (`ExtentMap` is `Send`).
//!
//! # Reference counts (the invariant)
//! **M1** For every physical extent `p`, `refs.count(p)` equals the number of entries equal to `p`
//! in the distinct *owned* leaves alive (each leaf counted once however many maps share it), plus
//! one per allocation of `p` not yet handed to `set` or released. A leaf is *owned* when its
//! entries are counted in a [`RefTable`]: a leaf the map creates or copies is owned from birth
//! (a copy increments every extent it holds), a leaf loaded with [`Leaf::new`] becomes owned when
//! [`adopt_loaded`] loads the recounted table; when an owned leaf's last `Arc` goes, its `Drop`
//! decrements every extent it holds. An unowned leaf is counted nowhere and its `Drop` releases
//! nothing. (An extent appears at most once per leaf in practice, so `count(p)` is the number of
//! distinct leaves mapping `p`, as [`count_references`] recomputes.)
//!
//! **M2** A leaf is mutated in place only when this map holds its only `Arc` *and* it is owned
//! by this map's table; otherwise it is copied first. An interior node is mutated in place only
//! when this map holds its only `Arc`. Hence a node reachable from two images is never mutated.
//!
//! **M3** No entry at or past `len` is mapped (shrinking unmaps first), so growing never exposes
//! old data.
//!
//! # Recovery
//! ```text
//! let refs = RefTable::new(capacity);                       // pristine
//! let leaf_k = Leaf::new(entries_k);                        // once per distinct stored leaf
//! let map_i = ExtentMap::from_leaves(len_i, refs.clone(),  // leaves shared by Arc clones
//!                 [(index, leaf_k.clone()), ...])?;         // touches no count
//! adopt_loaded(&refs, &[&map_1, &map_2, ...])?;            // recount, load, own the leaves
//! ```
//! Until `adopt_loaded` returns, the maps must not be changed (their leaves are not counted yet);
//! they may be dropped (e.g. on a load error) without touching any count.
//!
//! # Memory
//! A leaf is 4 KiB of entries plus 24 bytes (plus the allocator's and `Arc`'s 16); an interior
//! node is 8 KiB and there is one per 512 leaves. A densely mapped TiB of 64 KiB extents (16 M
//! extents) takes 32 768 leaves ≈ 130 MiB (≈ 0.8 % of the data) and 65 interior nodes ≈ 0.5 MiB.
//! Sparse data costs up to one leaf per mapped extent. A snapshot costs nothing until a write
//! shadows a path (one leaf + one node per level).

mod usage;

pub use usage::{SharedSubtree, UsageSource, UsageWalk, exclusive_extents};

use super::refs::{RefError, RefTable};
use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use thiserror::Error;

/// Entries per node (leaf or interior).
pub const FANOUT: usize = 512;
/// log2 of [`FANOUT`].
const BITS: u32 = 9;
/// Index mask within one node.
const MASK: u64 = FANOUT as u64 - 1;
/// Largest supported number of logical extents (512⁶ = 2⁵⁴, at most 6 levels; far beyond any
/// device: 2⁶⁴ bytes in 4 KiB extents is 2⁵² extents). Keeps all index arithmetic in range.
pub const MAX_EXTENTS: u64 = 1 << 54;

/// Errors of loading and recounting extent maps.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MapError {
    /// The map would exceed [`MAX_EXTENTS`].
    #[error("{extents} logical extents exceed the supported maximum {MAX_EXTENTS}")]
    TooManyExtents {
        /// The size asked for.
        extents: u64,
    },
    /// A stored leaf's index lies beyond the map's end.
    #[error("leaf {index} lies beyond the map's {leaves} leaves")]
    LeafOutOfRange {
        /// The leaf index.
        index: u64,
        /// Number of leaves the map's size allows.
        leaves: u64,
    },
    /// Two stored leaves have the same index in one map.
    #[error("leaf {index} given twice")]
    DuplicateLeaf {
        /// The leaf index.
        index: u64,
    },
    /// A stored leaf maps logical extents at or past the map's end.
    #[error("leaf {index} maps logical extents past the end of the map")]
    MappingPastEnd {
        /// The leaf index.
        index: u64,
    },
    /// A leaf names a physical extent outside the pool.
    #[error("physical extent {pext} outside the pool (1..={capacity})")]
    ExtentOutOfRange {
        /// The extent named.
        pext: u64,
        /// The pool's capacity in extents.
        capacity: u64,
    },
    /// A physical extent is referenced by more than `u32::MAX` leaves.
    #[error("physical extent {pext} has more than {} references", u32::MAX)]
    CountOverflow {
        /// The extent.
        pext: u64,
    },
    /// The pool's capacity does not fit this machine's address space.
    #[error("pool capacity of {capacity} extents is too large for this machine")]
    CapacityTooLarge {
        /// The capacity.
        capacity: u64,
    },
    /// A map given to [`adopt_loaded`] was built with another reference table.
    #[error("a map was loaded with a different reference table")]
    TableMismatch,
    /// A leaf given to [`adopt_loaded`] is already counted in a table.
    #[error("a loaded leaf is already owned by a reference table")]
    LeafAlreadyOwned,
    /// Loading the counts failed.
    #[error(transparent)]
    Refs(#[from] RefError),
}

/// A leaf: the physical extents of [`FANOUT`] consecutive logical extents (0 = unmapped).
///
/// Shared between images through `Arc`; immutable while shared (M2).
pub struct Leaf {
    entries: [u64; FANOUT],
    /// Number of non-zero entries.
    mapped: u16,
    /// The table in which this leaf's entries are counted (M1); unset for a loaded leaf not yet
    /// adopted. Set at most once, never changed.
    owner: OnceLock<Arc<RefTable>>,
}

impl Leaf {
    /// A loaded leaf with these entries, *not owning references* (counted in no table, its
    /// `Drop` releases nothing) until [`adopt_loaded`] adopts it. Share the returned `Arc`
    /// between the maps that shared the leaf when it was saved.
    pub fn new(entries: [u64; FANOUT]) -> Arc<Leaf> {
        Arc::new(Leaf {
            mapped: count_mapped(&entries),
            entries,
            owner: OnceLock::new(),
        })
    }

    /// An empty leaf owned by `refs` (it holds no reference yet).
    fn empty_owned(refs: &Arc<RefTable>) -> Leaf {
        Leaf {
            entries: [0; FANOUT],
            mapped: 0,
            owner: OnceLock::from(Arc::clone(refs)),
        }
    }

    /// A copy owned by `refs`: M1 requires one more reference to each extent it holds.
    fn copy_owned(&self, refs: &Arc<RefTable>) -> Leaf {
        for &p in self.entries.iter().filter(|&&p| p != 0) {
            refs.incr(p);
        }
        Leaf {
            entries: self.entries,
            mapped: self.mapped,
            owner: OnceLock::from(Arc::clone(refs)),
        }
    }

    /// The entries: physical extent numbers, 0 for unmapped.
    pub fn entries(&self) -> &[u64; FANOUT] {
        &self.entries
    }

    /// Number of mapped entries.
    pub fn mapped(&self) -> u32 {
        u32::from(self.mapped)
    }

    /// Whether this leaf's entries are counted in a reference table.
    pub fn is_owned(&self) -> bool {
        self.owner.get().is_some()
    }

    fn owned_by(&self, refs: &Arc<RefTable>) -> bool {
        self.counted_in(refs)
    }

    /// Whether this leaf's entries are counted in `refs`.
    fn counted_in(&self, refs: &RefTable) -> bool {
        self.owner
            .get()
            .is_some_and(|o| std::ptr::eq(Arc::as_ptr(o), refs))
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        // M1: the last `Arc` of an owned leaf is gone: its references go with it.
        if let Some(refs) = self.owner.get() {
            for &p in self.entries.iter().filter(|&&p| p != 0) {
                refs.release(p);
            }
        }
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("mapped", &self.mapped)
            .field("owned", &self.is_owned())
            .finish_non_exhaustive()
    }
}

fn count_mapped(entries: &[u64; FANOUT]) -> u16 {
    // At most FANOUT = 512 entries: fits a u16.
    entries.iter().filter(|&&p| p != 0).count() as u16
}

/// A child pointer. Invariant: every node at level `l` of a map (leaves are level 0, the root is
/// at the map's height) is a `Leaf` iff `l == 0`.
#[derive(Clone)]
enum Node {
    Interior(Arc<Interior>),
    Leaf(Arc<Leaf>),
}

/// An interior node. `Clone` is the shadow copy: it shares every child (bumping their `Arc`
/// counts, so they become shared in turn and are copied when written through).
#[derive(Clone)]
struct Interior {
    children: [Option<Node>; FANOUT],
    /// Number of `Some` children.
    live: u16,
}

impl Interior {
    fn empty() -> Interior {
        Interior {
            children: std::array::from_fn(|_| None),
            live: 0,
        }
    }
}

impl Node {
    /// An empty node for level `level`.
    fn empty(level: u32, refs: &Arc<RefTable>) -> Node {
        if level == 0 {
            Node::Leaf(Arc::new(Leaf::empty_owned(refs)))
        } else {
            Node::Interior(Arc::new(Interior::empty()))
        }
    }
}

/// Index within a node at `level` of logical extent `lext`.
fn index_at(lext: u64, level: u32) -> usize {
    ((lext >> (BITS * level)) & MASK) as usize
}

/// Logical extents covered by a node at `level` (`level` ≤ 5, so at most 2⁵⁴).
fn coverage(level: u32) -> u64 {
    1 << (BITS * (level + 1))
}

/// Height (level of the root) a map of `extents` logical extents needs.
fn height_for(extents: u64) -> u32 {
    let mut height = 0;
    while coverage(height) < extents {
        height += 1;
    }
    height
}

/// The leaf at `slot`, made safe to mutate (M2): copied unless uniquely held and owned by
/// `refs`. Allocates nothing when it already is.
fn leaf_mut<'a>(slot: &'a mut Arc<Leaf>, refs: &Arc<RefTable>) -> &'a mut Leaf {
    if !(slot.owned_by(refs) && Arc::get_mut(slot).is_some()) {
        *slot = Arc::new(slot.copy_owned(refs));
    }
    Arc::get_mut(slot).expect("a leaf just copied has a single owner")
}

/// Maps `lext` to `pext` below `node` (at `level`), consuming the caller's reference to `pext`
/// and releasing the one the leaf held on the previous extent. Returns the previous extent.
fn map_entry(
    node: &mut Node,
    level: u32,
    lext: u64,
    pext: u64,
    refs: &Arc<RefTable>,
) -> Option<u64> {
    match node {
        Node::Interior(arc) => {
            // M2: shadow the node if another image shares it (no allocation when unique).
            let inner = Arc::make_mut(arc);
            let i = index_at(lext, level);
            if inner.children[i].is_none() {
                inner.children[i] = Some(Node::empty(level - 1, refs));
                inner.live += 1;
            }
            let child = inner.children[i].as_mut().expect("child filled just above");
            map_entry(child, level - 1, lext, pext, refs)
        }
        Node::Leaf(arc) => {
            debug_assert_eq!(level, 0, "leaves live at level 0");
            let leaf = leaf_mut(arc, refs);
            let old = std::mem::replace(&mut leaf.entries[index_at(lext, 0)], pext);
            if old == 0 {
                leaf.mapped += 1;
                None
            } else {
                // M1: this leaf no longer holds `old`.
                refs.release(old);
                Some(old)
            }
        }
    }
}

/// Whether the mapping of `lext` (known to be mapped) is the only one below `node`.
fn only_mapping(node: &Node, level: u32, lext: u64) -> bool {
    match node {
        Node::Leaf(leaf) => leaf.mapped == 1,
        Node::Interior(n) => {
            n.live == 1
                && n.children[index_at(lext, level)]
                    .as_ref()
                    .is_some_and(|c| only_mapping(c, level - 1, lext))
        }
    }
}

/// Unmaps `lext` (known to be mapped) below `node`. Returns true when `node` would be left empty:
/// the caller then drops it whole (no copy; an owned leaf's `Drop` releases the extent if this
/// was its last `Arc`, otherwise the other images keep it and its count is unchanged).
fn unmap_entry(node: &mut Node, level: u32, lext: u64, refs: &Arc<RefTable>) -> bool {
    if only_mapping(node, level, lext) {
        return true;
    }
    match node {
        Node::Interior(arc) => {
            let inner = Arc::make_mut(arc);
            let i = index_at(lext, level);
            let child = inner.children[i]
                .as_mut()
                .expect("a mapped extent has a path");
            if unmap_entry(child, level - 1, lext, refs) {
                inner.children[i] = None;
                inner.live -= 1;
            }
            // Not the only mapping here, so something is left.
            false
        }
        Node::Leaf(arc) => {
            let leaf = leaf_mut(arc, refs);
            let old = std::mem::replace(&mut leaf.entries[index_at(lext, 0)], 0);
            debug_assert_ne!(old, 0, "unmap_entry on an unmapped extent");
            leaf.mapped -= 1;
            refs.release(old);
            false
        }
    }
}

/// Whether any logical extent in `[lo, hi)` is mapped below `node` (at `level`, first logical
/// extent `base`).
fn any_mapped_in(node: &Node, level: u32, base: u64, lo: u64, hi: u64) -> bool {
    match node {
        Node::Leaf(leaf) => leaf
            .entries
            .iter()
            .enumerate()
            .any(|(i, &p)| p != 0 && (lo..hi).contains(&(base + i as u64))),
        Node::Interior(n) => {
            let span = coverage(level - 1);
            n.children.iter().enumerate().any(|(i, c)| {
                let cb = base + i as u64 * span;
                cb < hi
                    && cb + span > lo
                    && c.as_ref()
                        .is_some_and(|c| any_mapped_in(c, level - 1, cb, lo, hi))
            })
        }
    }
}

/// Unmaps every logical extent at or past `end` below `node` (at `level`, first extent `base`,
/// with `end < base + coverage(level)`). Returns true when nothing is left in `node`: the caller
/// drops it whole. Shared nodes are copied only on the boundary path, and only when they hold
/// mappings on both sides of `end`.
/// `removed` grows by the number of mappings dropped.
fn truncate(
    node: &mut Node,
    level: u32,
    base: u64,
    end: u64,
    refs: &Arc<RefTable>,
    removed: &mut u64,
) -> bool {
    if !any_mapped_in(node, level, base, end, u64::MAX) {
        return false;
    }
    if !any_mapped_in(node, level, base, base, end) {
        *removed += mapped_below(node);
        return true;
    }
    match node {
        Node::Interior(arc) => {
            let inner = Arc::make_mut(arc);
            let span = coverage(level - 1);
            for i in 0..FANOUT {
                let cb = base + i as u64 * span;
                if cb + span <= end {
                    continue;
                }
                let Some(child) = inner.children[i].as_mut() else {
                    continue;
                };
                if cb >= end {
                    *removed += mapped_below(child);
                    inner.children[i] = None;
                    inner.live -= 1;
                } else if truncate(child, level - 1, cb, end, refs, removed) {
                    inner.children[i] = None;
                    inner.live -= 1;
                }
            }
            inner.live == 0
        }
        Node::Leaf(arc) => {
            let leaf = leaf_mut(arc, refs);
            // end < base + FANOUT here (precondition).
            let start = (end - base) as usize;
            for e in &mut leaf.entries[start..] {
                if *e != 0 {
                    refs.release(*e);
                    *e = 0;
                    leaf.mapped -= 1;
                    *removed += 1;
                }
            }
            leaf.mapped == 0
        }
    }
}

/// Number of mapped entries below `node` (O(leaves below it)).
fn mapped_below(node: &Node) -> u64 {
    match node {
        Node::Leaf(leaf) => u64::from(leaf.mapped),
        Node::Interior(n) => n.children.iter().flatten().map(mapped_below).sum(),
    }
}

/// Calls `f(leaf_index, leaf)` for every leaf below `node` in logical order.
fn walk_leaves<'a, F: FnMut(u64, &'a Arc<Leaf>)>(
    node: &'a Node,
    level: u32,
    first_leaf: u64,
    f: &mut F,
) {
    match node {
        Node::Leaf(leaf) => f(first_leaf, leaf),
        Node::Interior(n) => {
            let span = coverage(level - 1) / FANOUT as u64;
            for (i, child) in n.children.iter().enumerate() {
                if let Some(child) = child {
                    walk_leaves(child, level - 1, first_leaf + i as u64 * span, f);
                }
            }
        }
    }
}

/// The extent map of one image. See the module docs for the invariants.
///
/// `Send + Sync`: a snapshot's map can move to another shard or the control thread; nodes shared
/// with other images are immutable.
pub struct ExtentMap {
    /// Absent until the first mapping (and again once everything is unmapped).
    root: Option<Node>,
    /// Level of the root: `height_for(len)`.
    height: u32,
    /// Number of logical extents.
    len: u64,
    /// Number of mapped logical extents (kept by every change, so [`ExtentMap::mapped`] is O(1)).
    mapped: u64,
    /// The pool's reference table (M1).
    refs: Arc<RefTable>,
}

// Compile-time check of the thread-safety promise.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<ExtentMap>();
    send_sync::<Arc<Leaf>>();
};

impl fmt::Debug for ExtentMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtentMap")
            .field("len", &self.len)
            .field("levels", &self.levels())
            .field("empty_root", &self.root.is_none())
            .finish_non_exhaustive()
    }
}

impl ExtentMap {
    /// An all-unmapped map of `extents` logical extents over the pool whose table is `refs`.
    ///
    /// # Panics
    /// If `extents` exceeds [`MAX_EXTENTS`] (callers validate volume sizes).
    pub fn new(extents: u64, refs: Arc<RefTable>) -> ExtentMap {
        assert!(
            extents <= MAX_EXTENTS,
            "{extents} logical extents exceed {MAX_EXTENTS}"
        );
        ExtentMap {
            root: None,
            height: height_for(extents),
            len: extents,
            mapped: 0,
            refs,
        }
    }

    /// A map of `extents` logical extents made of stored leaves `(leaf index, leaf)`, leaf `k`
    /// covering logical extents `512k .. 512k + 512`. Sharing one `Arc<Leaf>` between maps
    /// reproduces the sharing of the saved images. Touches no reference count: see the module's
    /// "Recovery" section ([`adopt_loaded`] must follow before the map is changed). Empty leaves
    /// are skipped.
    pub fn from_leaves(
        extents: u64,
        refs: Arc<RefTable>,
        leaves: impl IntoIterator<Item = (u64, Arc<Leaf>)>,
    ) -> Result<ExtentMap, MapError> {
        if extents > MAX_EXTENTS {
            return Err(MapError::TooManyExtents { extents });
        }
        let mut map = ExtentMap::new(extents, refs);
        let leaf_count = extents.div_ceil(FANOUT as u64);
        for (index, leaf) in leaves {
            if index >= leaf_count {
                return Err(MapError::LeafOutOfRange {
                    index,
                    leaves: leaf_count,
                });
            }
            // M3: nothing mapped past the end (only the last leaf can have such entries).
            let valid = (extents - index * FANOUT as u64).min(FANOUT as u64) as usize;
            if leaf.entries[valid..].iter().any(|&p| p != 0) {
                return Err(MapError::MappingPastEnd { index });
            }
            if leaf.mapped > 0 {
                let count = u64::from(leaf.mapped);
                map.install_leaf(index, leaf)?;
                map.mapped += count;
            }
        }
        Ok(map)
    }

    /// Puts `leaf` at leaf index `index` of a map under construction (its nodes are unique).
    fn install_leaf(&mut self, index: u64, leaf: Arc<Leaf>) -> Result<(), MapError> {
        if self.height == 0 {
            if self.root.is_some() {
                return Err(MapError::DuplicateLeaf { index });
            }
            self.root = Some(Node::Leaf(leaf));
            return Ok(());
        }
        let mut node = self
            .root
            .get_or_insert_with(|| Node::Interior(Arc::new(Interior::empty())));
        // Levels counted from the leaves: the root is at `height`, its children at `height - 1`.
        let mut level = self.height;
        loop {
            let Node::Interior(arc) = node else {
                unreachable!("nodes above level 0 are interior (Node invariant)")
            };
            let inner = Arc::make_mut(arc);
            let i = index_at(index, level - 1);
            if level == 1 {
                if inner.children[i].is_some() {
                    return Err(MapError::DuplicateLeaf { index });
                }
                inner.children[i] = Some(Node::Leaf(leaf));
                inner.live += 1;
                return Ok(());
            }
            if inner.children[i].is_none() {
                inner.children[i] = Some(Node::Interior(Arc::new(Interior::empty())));
                inner.live += 1;
            }
            node = inner.children[i].as_mut().expect("child filled just above");
            level -= 1;
        }
    }

    /// The physical extent mapped at `lext`, or `None` when unmapped or out of range. Lock-free
    /// and allocation-free: `levels()` dependent loads.
    pub fn get(&self, lext: u64) -> Option<u64> {
        if lext >= self.len {
            return None;
        }
        let mut node = self.root.as_ref()?;
        let mut level = self.height;
        loop {
            match node {
                Node::Interior(n) => {
                    node = n.children[index_at(lext, level)].as_ref()?;
                    level -= 1;
                }
                Node::Leaf(leaf) => {
                    let p = leaf.entries[index_at(lext, 0)];
                    return (p != 0).then_some(p);
                }
            }
        }
    }

    /// Whether `lext` can be written in place: it is mapped, every node on its path is held by
    /// this map alone (and the leaf is owned by this map's table), and its physical extent has
    /// count 1 — no other image can see it. When false the writer copies on write: allocate,
    /// write the merged extent there, then [`ExtentMap::set`]. Meaningful to the map's owner (the
    /// thread that calls `set`); out of range → false.
    pub fn is_exclusive(&self, lext: u64) -> bool {
        self.exclusive_extent(lext).is_some()
    }

    /// The physical extent at `lext` when [`ExtentMap::is_exclusive`] holds, in one walk.
    pub fn exclusive_extent(&self, lext: u64) -> Option<u64> {
        if lext >= self.len {
            return None;
        }
        let mut node = self.root.as_ref()?;
        let mut level = self.height;
        loop {
            match node {
                Node::Interior(n) => {
                    if Arc::strong_count(n) != 1 {
                        return None;
                    }
                    node = n.children[index_at(lext, level)].as_ref()?;
                    level -= 1;
                }
                Node::Leaf(leaf) => {
                    let p = leaf.entries[index_at(lext, 0)];
                    let exclusive = p != 0
                        && Arc::strong_count(leaf) == 1
                        && leaf.owned_by(&self.refs)
                        && self.refs.count(p) == 1;
                    return exclusive.then_some(p);
                }
            }
        }
    }

    /// Maps `lext` to `pext` (`None` unmaps) and returns the previous mapping. Takes over the
    /// caller's reference to `pext` (from `RefTable::allocate`, or one the caller added with
    /// `incr`); the reference this image held on the previous extent is released. Shared nodes on
    /// the path are copied first (M2); nothing is allocated when the path is exclusive and the
    /// leaf exists. Unmapping an unmapped extent changes nothing (and copies nothing).
    ///
    /// # Panics
    /// If `lext >= len()` or `pext` is not in `1..=capacity` of the pool (caller bugs).
    pub fn set(&mut self, lext: u64, pext: Option<u64>) -> Option<u64> {
        assert!(
            lext < self.len,
            "logical extent {lext} outside the map ({} extents)",
            self.len
        );
        match pext {
            Some(p) => {
                assert!(
                    p >= 1 && p <= self.refs.capacity(),
                    "physical extent {p} outside the pool (1..={})",
                    self.refs.capacity()
                );
                let (height, refs) = (self.height, &self.refs);
                let root = self.root.get_or_insert_with(|| Node::empty(height, refs));
                let old = map_entry(root, height, lext, p, refs);
                if old.is_none() {
                    self.mapped += 1;
                }
                old
            }
            None => {
                let old = self.get(lext)?;
                let root = self.root.as_mut().expect("a mapped extent has a root");
                if unmap_entry(root, self.height, lext, &self.refs) {
                    self.root = None;
                }
                self.mapped -= 1;
                Some(old)
            }
        }
    }

    /// A new image sharing this one's tree: O(1) (one `Arc` clone), whatever the size.
    pub fn snapshot(&self) -> ExtentMap {
        ExtentMap {
            root: self.root.clone(),
            height: self.height,
            len: self.len,
            mapped: self.mapped,
            refs: Arc::clone(&self.refs),
        }
    }

    /// Number of logical extents.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the map has no logical extent at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of tree levels a lookup walks (1 + height); depends only on `len()`.
    pub fn levels(&self) -> u32 {
        self.height + 1
    }

    /// The pool's reference table this map counts in.
    pub fn refs(&self) -> &Arc<RefTable> {
        &self.refs
    }

    /// Changes the number of logical extents. Growing adds levels on top as needed (O(levels));
    /// shrinking first unmaps everything at or past the new end (M3), then drops levels no longer
    /// needed.
    ///
    /// # Panics
    /// If `extents` exceeds [`MAX_EXTENTS`].
    pub fn resize(&mut self, extents: u64) {
        assert!(
            extents <= MAX_EXTENTS,
            "{extents} logical extents exceed {MAX_EXTENTS}"
        );
        let new_height = height_for(extents);
        if extents < self.len {
            if let Some(root) = self.root.as_mut() {
                // extents < len <= coverage(height): truncate's precondition.
                let mut removed = 0;
                if truncate(root, self.height, 0, extents, &self.refs, &mut removed) {
                    self.root = None;
                }
                self.mapped -= removed;
            }
            // Everything left lies below `extents` <= coverage(new_height), so in child 0 of every
            // level above `new_height`.
            while self.height > new_height {
                self.root = match self.root.take() {
                    Some(Node::Interior(n)) => {
                        debug_assert!(n.children[1..].iter().all(Option::is_none));
                        n.children[0].clone()
                    }
                    Some(Node::Leaf(_)) => unreachable!("a root above level 0 is interior"),
                    None => None,
                };
                self.height -= 1;
            }
        } else {
            while self.height < new_height {
                if let Some(old) = self.root.take() {
                    let mut top = Interior::empty();
                    top.children[0] = Some(old);
                    top.live = 1;
                    self.root = Some(Node::Interior(Arc::new(top)));
                }
                self.height += 1;
            }
        }
        self.len = extents;
    }

    /// Number of mapped logical extents. O(1).
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Calls `f(logical, physical)` for every mapped logical extent, in logical order.
    pub fn for_each_mapped(&self, mut f: impl FnMut(u64, u64)) {
        self.walk(|index, leaf| {
            let first = index * FANOUT as u64;
            for (i, &p) in leaf.entries.iter().enumerate() {
                if p != 0 {
                    f(first + i as u64, p);
                }
            }
        });
    }

    /// Calls `f(leaf_index, leaf_id, entries)` for every leaf, in logical order (leaf `k` covers
    /// logical extents `512k .. 512k + 512`). `leaf_id` is the leaf's identity (its address):
    /// equal ids are the same shared leaf, so a checkpoint writer stores each distinct leaf once.
    /// Ids are unique among leaves alive at the same time: keep the maps being saved alive until
    /// the write is done.
    pub fn for_each_leaf(&self, mut f: impl FnMut(u64, usize, &[u64; FANOUT])) {
        self.walk(|index, leaf| f(index, Arc::as_ptr(leaf).addr(), &leaf.entries));
    }

    /// Calls `f(logical)`, in logical order, for every logical extent whose mapping differs
    /// from `base`'s (absent: an empty map): mapped here and not there, or the other way round,
    /// or to another physical extent. For two snapshots this is the set of extents whose data
    /// may differ: an extent both map to the same physical extent is shared, so nobody has
    /// written it in place since. Leaves the two maps share are skipped without a look at their
    /// entries, so the cost is a walk of the leaves plus the entries of the leaves that differ.
    pub fn diff(&self, base: Option<&ExtentMap>, mut f: impl FnMut(u64)) {
        let own = self.leaves_by_index();
        let base = base.map(ExtentMap::leaves_by_index).unwrap_or_default();
        for i in 0..own.len().max(base.len()) {
            let leaf = own.get(i).copied().flatten();
            let other = base.get(i).copied().flatten();
            if let (Some(a), Some(b)) = (leaf, other) {
                if Arc::ptr_eq(a, b) {
                    continue;
                }
            }
            let first = (i * FANOUT) as u64;
            for k in 0..FANOUT {
                let here = leaf.map_or(0, |l| l.entries[k]);
                let there = other.map_or(0, |l| l.entries[k]);
                if here != there && first + (k as u64) < self.len {
                    f(first + k as u64);
                }
            }
        }
    }

    /// The map's leaves by leaf index (`None` where no leaf exists).
    fn leaves_by_index(&self) -> Vec<Option<&Arc<Leaf>>> {
        let mut leaves = Vec::new();
        self.walk_refs(|index, leaf| {
            let i = index as usize;
            if leaves.len() <= i {
                leaves.resize(i + 1, None);
            }
            leaves[i] = Some(leaf);
        });
        leaves
    }

    /// Like `walk`, handing out references that live as long as the map.
    fn walk_refs<'a>(&'a self, mut f: impl FnMut(u64, &'a Arc<Leaf>)) {
        if let Some(root) = &self.root {
            walk_leaves(root, self.height, 0, &mut f);
        }
    }

    fn walk<F: FnMut(u64, &Arc<Leaf>)>(&self, mut f: F) {
        if let Some(root) = &self.root {
            walk_leaves(root, self.height, 0, &mut f);
        }
    }
}

/// Every distinct leaf reachable from `maps` (shared subtrees visited once).
fn distinct_leaves<'a>(maps: &[&'a ExtentMap]) -> Vec<&'a Leaf> {
    fn visit<'a>(node: &'a Node, seen: &mut HashSet<usize>, out: &mut Vec<&'a Leaf>) {
        match node {
            Node::Interior(n) => {
                if seen.insert(Arc::as_ptr(n).addr()) {
                    for child in n.children.iter().flatten() {
                        visit(child, seen, out);
                    }
                }
            }
            Node::Leaf(leaf) => {
                if seen.insert(Arc::as_ptr(leaf).addr()) {
                    out.push(leaf);
                }
            }
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for map in maps {
        if let Some(root) = &map.root {
            visit(root, &mut seen, &mut out);
        }
    }
    out
}

fn count_leaves(capacity: u64, leaves: &[&Leaf]) -> Result<Vec<u32>, MapError> {
    let slots = usize::try_from(capacity)
        .ok()
        .and_then(|c| c.checked_add(1))
        .ok_or(MapError::CapacityTooLarge { capacity })?;
    let mut counts = vec![0u32; slots];
    for leaf in leaves {
        for &p in leaf.entries.iter().filter(|&&p| p != 0) {
            let slot = usize::try_from(p)
                .ok()
                .and_then(|i| counts.get_mut(i))
                .ok_or(MapError::ExtentOutOfRange { pext: p, capacity })?;
            *slot = slot
                .checked_add(1)
                .ok_or(MapError::CountOverflow { pext: p })?;
        }
    }
    Ok(counts)
}

/// Recounts references from scratch: for every distinct leaf reachable from `maps` (by identity,
/// however many maps share it), each mapped entry once. Indexed by physical extent,
/// `capacity + 1` slots (slot 0 stays 0). With every image of the pool in `maps` and no
/// allocation outstanding, this equals the table's counts (M1) — what recovery loads and what
/// `shoal check` compares. Fails on an extent outside `1..=capacity`.
pub fn count_references(capacity: u64, maps: &[&ExtentMap]) -> Result<Vec<u32>, MapError> {
    count_leaves(capacity, &distinct_leaves(maps))
}

/// Recovery's last step: `maps` (every image of the pool, built with
/// [`ExtentMap::from_leaves`] over the pristine table `refs`) are recounted, the counts loaded
/// into `refs` ([`RefTable::load_counts`]), and every leaf becomes owned by `refs`, so that from
/// then on shadowing and `Drop` keep the counts exact (M1). Nothing is changed on error.
pub fn adopt_loaded(refs: &Arc<RefTable>, maps: &[&ExtentMap]) -> Result<(), MapError> {
    if maps.iter().any(|m| !Arc::ptr_eq(&m.refs, refs)) {
        return Err(MapError::TableMismatch);
    }
    let leaves = distinct_leaves(maps);
    if leaves.iter().any(|leaf| leaf.is_owned()) {
        return Err(MapError::LeafAlreadyOwned);
    }
    let counts = count_leaves(refs.capacity(), &leaves)?;
    refs.load_counts(&counts)?;
    for leaf in leaves {
        // Checked unowned above, and maps being loaded are not shared with other threads yet.
        let adopted = leaf.owner.set(Arc::clone(refs)).is_ok();
        debug_assert!(adopted, "leaf adopted twice");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    fn alloc(refs: &RefTable) -> u64 {
        refs.allocate().expect("test pool has space")
    }

    /// Writes a fresh extent at `lext` (the copy-on-write path) and returns it.
    fn write_new(map: &mut ExtentMap, lext: u64) -> u64 {
        let p = alloc(map.refs());
        map.set(lext, Some(p));
        p
    }

    fn contents(map: &ExtentMap) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        map.for_each_mapped(|l, p| v.push((l, p)));
        v
    }

    fn root_ptr(map: &ExtentMap) -> Option<usize> {
        map.root.as_ref().map(|n| match n {
            Node::Interior(n) => Arc::as_ptr(n).addr(),
            Node::Leaf(l) => Arc::as_ptr(l).addr(),
        })
    }

    fn root_strong_count(map: &ExtentMap) -> usize {
        match map.root.as_ref().expect("root") {
            Node::Interior(n) => Arc::strong_count(n),
            Node::Leaf(l) => Arc::strong_count(l),
        }
    }

    /// M1 with no allocation outstanding: table counts == recount, and R1/R2 hold.
    fn check_refs(refs: &RefTable, maps: &[&ExtentMap]) {
        let recount = count_references(refs.capacity(), maps).expect("recount");
        for p in 1..=refs.capacity() {
            assert_eq!(refs.count(p), recount[p as usize], "count of extent {p}");
        }
        let used = recount.iter().filter(|&&c| c > 0).count() as u64;
        assert_eq!(refs.used_extents(), used);
        assert_eq!(refs.free_extents() + refs.used_extents(), refs.capacity());
        let queue = refs.free_queue();
        let distinct: HashSet<u64> = queue.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            queue.len(),
            "an extent twice in the free queue"
        );
        for &p in &queue {
            assert_eq!(recount[p as usize], 0, "extent {p} both free and mapped");
        }
        assert_eq!(
            queue.len() as u64 + used,
            refs.high_water() - 1,
            "every extent handed out is either used or free"
        );
    }

    #[test]
    fn get_set_unmap() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(2000, refs.clone());
        assert_eq!(m.levels(), 2);
        assert_eq!(m.get(0), None);
        assert_eq!(m.get(5000), None, "out of range");
        let a = write_new(&mut m, 7);
        let b = write_new(&mut m, 1500);
        assert_eq!(m.get(7), Some(a));
        assert_eq!(m.get(1500), Some(b));
        assert_eq!(m.mapped(), 2);
        assert_eq!(contents(&m), vec![(7, a), (1500, b)]);
        let c = alloc(&refs);
        assert_eq!(m.set(7, Some(c)), Some(a));
        assert_eq!(refs.count(a), 0, "the replaced extent is released");
        assert_eq!(m.set(7, None), Some(c));
        assert_eq!(m.set(7, None), None);
        assert_eq!(m.get(7), None);
        assert_eq!(refs.count(c), 0);
        assert_eq!(m.set(1500, None), Some(b));
        assert!(m.root.is_none(), "empty nodes are pruned");
        check_refs(&refs, &[&m]);
        assert_eq!(refs.used_extents(), 0);
    }

    #[test]
    fn path_copying_keeps_the_snapshot_unchanged() {
        let refs = RefTable::new(1000);
        let mut m = ExtentMap::new(1 << 20, refs.clone());
        assert_eq!(m.levels(), 3);
        for l in [0, 1, 511, 512, 300_000, 1_000_000] {
            write_new(&mut m, l);
        }
        let before = contents(&m);
        let snap = m.snapshot();
        write_new(&mut m, 1);
        write_new(&mut m, 2);
        m.set(300_000, None);
        write_new(&mut m, 700_000);
        assert_eq!(contents(&snap), before);
        assert_ne!(contents(&m), before);
        assert_eq!(m.get(0), snap.get(0), "untouched extents stay shared");
        check_refs(&refs, &[&m, &snap]);
    }

    #[test]
    fn refcounts_after_snapshot_and_write() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(1000, refs.clone());
        let p0 = write_new(&mut m, 0);
        let p1 = write_new(&mut m, 1);
        let snap = m.snapshot();
        // One leaf shared by two images: one reference.
        assert_eq!((refs.count(p0), refs.count(p1)), (1, 1));
        // Writing extent 1 shadows the leaf: both leaves now hold p0 (2) and p1 moves to 1 + 0.
        let q1 = write_new(&mut m, 1);
        assert_eq!(refs.count(p0), 2);
        assert_eq!(refs.count(p1), 1, "held by the snapshot's leaf only");
        assert_eq!(refs.count(q1), 1);
        check_refs(&refs, &[&m, &snap]);
        drop(snap);
        assert_eq!(refs.count(p0), 1, "2 -> 1 when the snapshot goes");
        assert_eq!(refs.count(p1), 0);
        check_refs(&refs, &[&m]);
    }

    #[test]
    fn dropping_a_snapshot_frees_exactly_its_own_extents() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(4096, refs.clone());
        let shared: Vec<u64> = (0..10).map(|l| write_new(&mut m, l * 300)).collect();
        let snap = m.snapshot();
        // Overwrite three extents in the volume: the snapshot alone keeps the old ones.
        let only_snap: Vec<u64> = [0, 3, 6]
            .iter()
            .map(|&i| m.get(i * 300).expect("mapped"))
            .collect();
        for i in [0, 3, 6] {
            write_new(&mut m, i * 300);
        }
        assert!(refs.free_queue().is_empty());
        drop(snap);
        let mut freed = refs.free_queue();
        freed.sort_unstable();
        assert_eq!(freed, only_snap);
        for (i, p) in shared.iter().enumerate() {
            if ![0, 3, 6].contains(&i) {
                assert_eq!(m.get(i as u64 * 300), Some(*p));
                assert_eq!(refs.count(*p), 1);
            }
        }
        check_refs(&refs, &[&m]);
    }

    #[test]
    fn deleting_the_origin_leaves_clones_intact() {
        let refs = RefTable::new(200);
        let mut origin = ExtentMap::new(3000, refs.clone());
        for l in (0..3000).step_by(97) {
            write_new(&mut origin, l);
        }
        let golden = contents(&origin);
        let mut clones: Vec<ExtentMap> = (0..5).map(|_| origin.snapshot()).collect();
        for (i, c) in clones.iter_mut().enumerate() {
            write_new(c, i as u64 * 10);
        }
        drop(origin);
        for (i, c) in clones.iter().enumerate() {
            let mut expect: BTreeMap<u64, u64> = golden.iter().copied().collect();
            expect.insert(i as u64 * 10, c.get(i as u64 * 10).expect("written"));
            assert_eq!(contents(c), expect.into_iter().collect::<Vec<_>>());
        }
        let maps: Vec<&ExtentMap> = clones.iter().collect();
        check_refs(&refs, &maps);
        drop(clones);
        assert_eq!(refs.used_extents(), 0);
    }

    #[test]
    fn clone_chains_cost_nothing_at_lookup() {
        let refs = RefTable::new(1000);
        let mut chain = vec![ExtentMap::new(100_000, refs.clone())];
        let mut model = BTreeMap::new();
        let mut models = Vec::new();
        for generation in 0..50u64 {
            let img = chain.last_mut().expect("non-empty");
            let l = generation * 1999 % 100_000;
            model.insert(l, write_new(img, l));
            models.push(model.clone());
            let next = img.snapshot();
            chain.push(next);
        }
        for (img, model) in chain.iter().zip(&models) {
            assert_eq!(
                img.levels(),
                2,
                "depth of a lookup is the tree's, not the chain's"
            );
            for (&l, &p) in model {
                assert_eq!(img.get(l), Some(p));
            }
        }
        // Delete every other image, the origin included: the rest keep their data.
        let mut kept = Vec::new();
        for (i, (img, model)) in chain.into_iter().zip(models).enumerate() {
            if i % 2 == 1 {
                kept.push((img, model));
            }
        }
        for (img, model) in &kept {
            assert_eq!(
                contents(img),
                model.iter().map(|(&l, &p)| (l, p)).collect::<Vec<_>>()
            );
        }
        let maps: Vec<&ExtentMap> = kept.iter().map(|(m, _)| m).collect();
        check_refs(&refs, &maps);
        drop(kept);
        assert_eq!(refs.used_extents(), 0);
    }

    #[test]
    fn resize_grow_and_shrink() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(100, refs.clone());
        assert_eq!(m.levels(), 1);
        let a = write_new(&mut m, 99);
        m.resize(1_000_000);
        assert_eq!(m.levels(), 3);
        assert_eq!(m.get(99), Some(a));
        let b = write_new(&mut m, 999_999);
        let c = write_new(&mut m, 600);
        let snap = m.snapshot();
        m.resize(601);
        assert_eq!(m.levels(), 2);
        assert_eq!(m.get(999_999), None);
        assert_eq!(refs.count(b), 1, "still the snapshot's");
        assert_eq!((m.get(99), m.get(600)), (Some(a), Some(c)));
        assert_eq!(contents(&snap), vec![(99, a), (600, c), (999_999, b)]);
        check_refs(&refs, &[&m, &snap]);
        drop(snap);
        assert_eq!(refs.count(b), 0);
        m.resize(100);
        assert_eq!(m.levels(), 1);
        assert_eq!(refs.count(c), 0, "unmapped by the shrink");
        m.resize(5000);
        assert_eq!(m.get(600), None, "growing never exposes old mappings (M3)");
        assert_eq!(contents(&m), vec![(99, a)]);
        m.resize(0);
        assert!(m.is_empty());
        assert_eq!(refs.used_extents(), 0);
        m.resize(10);
        write_new(&mut m, 9);
        check_refs(&refs, &[&m]);
    }

    #[test]
    fn is_exclusive_transitions() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(100_000, refs.clone());
        assert!(!m.is_exclusive(5), "unmapped");
        let p = write_new(&mut m, 5);
        assert!(m.is_exclusive(5));
        assert!(!m.is_exclusive(100_000), "out of range");
        let snap = m.snapshot();
        assert!(!m.is_exclusive(5), "shared root");
        assert!(!snap.is_exclusive(5));
        // A write elsewhere in the same leaf shadows the path: the nodes are exclusive, but the
        // extent is in two leaves now.
        write_new(&mut m, 6);
        assert_eq!(refs.count(p), 2);
        assert!(!m.is_exclusive(5));
        assert!(m.is_exclusive(6));
        drop(snap);
        assert!(m.is_exclusive(5), "the snapshot's references are gone");
        // Copy-on-write: the new extent is exclusive.
        let snap2 = m.snapshot();
        let q = write_new(&mut m, 5);
        assert_ne!(p, q);
        assert!(m.is_exclusive(5));
        assert_eq!(snap2.get(5), Some(p));
        check_refs(&refs, &[&m, &snap2]);
    }

    #[test]
    fn exclusive_overwrite_allocates_nothing_and_unmapping_a_hole_copies_nothing() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(100_000, refs.clone());
        write_new(&mut m, 5);
        let root = root_ptr(&m);
        let p = alloc(&refs);
        m.set(5, Some(p));
        assert_eq!(root_ptr(&m), root, "exclusive path: updated in place");
        let snap = m.snapshot();
        assert_eq!(m.set(77_000, None), None);
        assert_eq!(root_ptr(&m), root, "no shadowing for a no-op unmap");
        drop(snap);
    }

    #[test]
    fn unmapping_the_last_mapping_of_a_shared_leaf_keeps_it_for_the_other_image() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(100_000, refs.clone());
        let p = write_new(&mut m, 70_000);
        let keep = write_new(&mut m, 1);
        let snap = m.snapshot();
        assert_eq!(m.set(70_000, None), Some(p));
        assert_eq!(refs.count(p), 1);
        assert_eq!(snap.get(70_000), Some(p));
        assert_eq!(m.get(1), Some(keep));
        check_refs(&refs, &[&m, &snap]);
        drop(snap);
        assert_eq!(refs.count(p), 0);
    }

    #[test]
    fn one_tib_map_lookups_and_o1_snapshot() {
        // 1 TiB of 64 KiB extents.
        const EXTENTS: u64 = 16 << 20;
        let refs = RefTable::new(10_000);
        let mut m = ExtentMap::new(EXTENTS, refs.clone());
        assert_eq!(m.levels(), 3);
        let mut model = Vec::new();
        for i in 0..2000u64 {
            let l = i * (EXTENTS / 2000) + i % 7;
            model.push((l, write_new(&mut m, l)));
        }
        for &(l, p) in &model {
            assert_eq!(m.get(l), Some(p));
            assert_eq!(m.get(l + 1), None);
        }
        assert_eq!(m.get(EXTENTS - 1), None);
        assert_eq!(m.mapped(), 2000);
        assert_eq!(root_strong_count(&m), 1);
        let snap = m.snapshot();
        assert_eq!(
            root_strong_count(&m),
            2,
            "a snapshot shares the root: nothing copied"
        );
        assert_eq!(root_ptr(&snap), root_ptr(&m));
        drop(snap);
        assert_eq!(root_strong_count(&m), 1);
    }

    #[test]
    fn snapshots_move_to_other_threads() {
        let refs = RefTable::new(100);
        let mut m = ExtentMap::new(10_000, refs.clone());
        let p = write_new(&mut m, 4321);
        let snap = m.snapshot();
        let reader = std::thread::spawn(move || {
            let got = snap.get(4321);
            drop(snap);
            got
        });
        write_new(&mut m, 4321);
        assert_eq!(reader.join().expect("reader thread"), Some(p));
        assert_eq!(
            refs.count(p),
            0,
            "the snapshot was dropped on the other thread"
        );
        check_refs(&refs, &[&m]);
    }

    /// Saves `maps` the way a checkpoint would (each distinct leaf once).
    #[allow(clippy::type_complexity)]
    fn save(maps: &[&ExtentMap]) -> (HashMap<usize, [u64; FANOUT]>, Vec<(u64, Vec<(u64, usize)>)>) {
        let mut leaves = HashMap::new();
        let mut images = Vec::new();
        for m in maps {
            let mut list = Vec::new();
            m.for_each_leaf(|index, id, entries| {
                leaves.entry(id).or_insert(*entries);
                list.push((index, id));
            });
            images.push((m.len(), list));
        }
        (leaves, images)
    }

    #[test]
    fn save_load_adopt_round_trip() {
        let refs = RefTable::new(500);
        let mut a = ExtentMap::new(3000, refs.clone());
        for l in (0..3000).step_by(31) {
            write_new(&mut a, l);
        }
        let mut b = a.snapshot();
        write_new(&mut b, 1000);
        let c = b.snapshot();
        write_new(&mut a, 2);
        let (stored, images) = save(&[&a, &b, &c]);
        let distinct_before = distinct_leaves(&[&a, &b, &c]).len();

        let loaded_refs = RefTable::new(500);
        let leaves: HashMap<usize, Arc<Leaf>> =
            stored.iter().map(|(&id, e)| (id, Leaf::new(*e))).collect();
        let mut loaded: Vec<ExtentMap> = images
            .iter()
            .map(|(len, list)| {
                let it = list.iter().map(|(i, id)| (*i, Arc::clone(&leaves[id])));
                ExtentMap::from_leaves(*len, loaded_refs.clone(), it).expect("valid")
            })
            .collect();
        drop(leaves);
        {
            let maps: Vec<&ExtentMap> = loaded.iter().collect();
            assert_eq!(
                distinct_leaves(&maps).len(),
                distinct_before,
                "sharing reproduced"
            );
            adopt_loaded(&loaded_refs, &maps).expect("adopt");
            assert_eq!(
                adopt_loaded(&loaded_refs, &maps),
                Err(MapError::LeafAlreadyOwned)
            );
            check_refs(&loaded_refs, &maps);
        }
        for p in 1..=500 {
            assert_eq!(
                loaded_refs.count(p),
                refs.count(p),
                "same counts as before the crash"
            );
        }
        for (orig, l) in [&a, &b, &c].iter().zip(&loaded) {
            assert_eq!(contents(orig), contents(l));
        }
        // Life goes on exactly: writes shadow, drops release.
        write_new(&mut loaded[1], 1000);
        write_new(&mut loaded[0], 31);
        loaded[2].set(62, None);
        {
            let maps: Vec<&ExtentMap> = loaded.iter().collect();
            check_refs(&loaded_refs, &maps);
        }
        loaded.remove(0);
        {
            let maps: Vec<&ExtentMap> = loaded.iter().collect();
            check_refs(&loaded_refs, &maps);
        }
        drop(loaded);
        assert_eq!(loaded_refs.used_extents(), 0);
    }

    #[test]
    fn loading_rejects_bad_input_and_touches_no_count() {
        let refs = RefTable::new(10);
        let mut entries = [0; FANOUT];
        entries[3] = 4;
        let leaf = Leaf::new(entries);
        assert_eq!(
            ExtentMap::from_leaves(1000, refs.clone(), [(2, leaf.clone())]).err(),
            Some(MapError::LeafOutOfRange {
                index: 2,
                leaves: 2
            })
        );
        assert_eq!(
            ExtentMap::from_leaves(1000, refs.clone(), [(1, leaf.clone()), (1, leaf.clone())])
                .err(),
            Some(MapError::DuplicateLeaf { index: 1 })
        );
        assert_eq!(
            ExtentMap::from_leaves(515, refs.clone(), [(1, leaf.clone())]).err(),
            Some(MapError::MappingPastEnd { index: 1 })
        );
        let mut bad = [0; FANOUT];
        bad[0] = 11;
        let m = ExtentMap::from_leaves(600, refs.clone(), [(0, Leaf::new(bad))]).expect("shape ok");
        assert_eq!(
            adopt_loaded(&refs, &[&m]),
            Err(MapError::ExtentOutOfRange {
                pext: 11,
                capacity: 10
            })
        );
        let other = RefTable::new(10);
        let m2 = ExtentMap::from_leaves(600, other, [(0, leaf.clone())]).expect("shape ok");
        assert_eq!(adopt_loaded(&refs, &[&m2]), Err(MapError::TableMismatch));
        drop((m, m2, leaf));
        assert_eq!(refs.used_extents(), 0);
        assert_eq!(
            refs.allocate(),
            Some(1),
            "the table is still pristine and usable"
        );
    }

    // ---- model test ----

    #[derive(Debug, Clone)]
    enum Op {
        Write { img: usize, lext: u64 },
        Unmap { img: usize, lext: u64 },
        Snapshot { img: usize },
        Drop { img: usize },
        Create { len: u64 },
        Read { img: usize, lext: u64 },
        Resize { img: usize, len: u64 },
    }

    fn lext_strategy() -> impl Strategy<Value = u64> {
        // Small hot ranges (so writes, unmaps and reads collide), one across a leaf boundary, a
        // wide one, and one across the 262 144 boundary where maps get a third level.
        prop_oneof![0..24u64, 500..524u64, 0..1200u64, 262_130..262_160u64]
    }

    fn len_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![0..1300u64, 262_100..262_200u64]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (any::<usize>(), lext_strategy()).prop_map(|(img, lext)| Op::Write { img, lext }),
            3 => (any::<usize>(), lext_strategy()).prop_map(|(img, lext)| Op::Unmap { img, lext }),
            2 => any::<usize>().prop_map(|img| Op::Snapshot { img }),
            2 => any::<usize>().prop_map(|img| Op::Drop { img }),
            1 => len_strategy().prop_map(|len| Op::Create { len }),
            3 => (any::<usize>(), lext_strategy()).prop_map(|(img, lext)| Op::Read { img, lext }),
            1 => (any::<usize>(), len_strategy()).prop_map(|(img, len)| Op::Resize { img, len }),
        ]
    }

    struct Image {
        map: ExtentMap,
        /// logical extent -> data token
        model: BTreeMap<u64, u64>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
        #[test]
        fn model(start_len in len_strategy(), ops in prop::collection::vec(op_strategy(), 1..150)) {
            const CAPACITY: u64 = 400;
            let refs = RefTable::new(CAPACITY);
            // What each physical extent holds (the data store).
            let mut store: HashMap<u64, u64> = HashMap::new();
            let mut images = vec![Image { map: ExtentMap::new(start_len, refs.clone()), model: BTreeMap::new() }];
            let mut token = 0u64;
            for op in ops {
                let n = images.len();
                match op {
                    Op::Write { img, lext } if n > 0 && !images[img % n].map.is_empty() => {
                        let im = &mut images[img % n];
                        let lext = lext % im.map.len();
                        token += 1;
                        if im.map.is_exclusive(lext) {
                            let p = im.map.get(lext).expect("exclusive implies mapped");
                            store.insert(p, token);
                        } else if let Some(p) = refs.allocate() {
                            store.insert(p, token);
                            let before = im.map.get(lext);
                            prop_assert_eq!(im.map.set(lext, Some(p)), before);
                        } else {
                            // Pool full: the write fails, nothing changes.
                            continue;
                        }
                        im.model.insert(lext, token);
                    }
                    Op::Unmap { img, lext } if n > 0 && !images[img % n].map.is_empty() => {
                        let im = &mut images[img % n];
                        let lext = lext % im.map.len();
                        let before = im.map.get(lext);
                        prop_assert_eq!(im.map.set(lext, None), before);
                        im.model.remove(&lext);
                    }
                    Op::Snapshot { img } if n > 0 && n < 8 => {
                        let im = &images[img % n];
                        let copy = Image { map: im.map.snapshot(), model: im.model.clone() };
                        images.push(copy);
                    }
                    Op::Drop { img } if n > 0 => {
                        images.remove(img % n);
                    }
                    Op::Create { len } if n < 8 => {
                        images.push(Image { map: ExtentMap::new(len, refs.clone()), model: BTreeMap::new() });
                    }
                    Op::Read { img, lext } if n > 0 => {
                        let im = &images[img % n];
                        let got = im.map.get(lext).map(|p| store[&p]);
                        prop_assert_eq!(got, im.model.get(&lext).copied());
                    }
                    Op::Resize { img, len } if n > 0 => {
                        let im = &mut images[img % n];
                        im.map.resize(len);
                        im.model.retain(|&l, _| l < len);
                    }
                    _ => continue,
                }
                // Every image reads exactly its model.
                for im in &images {
                    let mut seen = BTreeMap::new();
                    im.map.for_each_mapped(|l, p| { seen.insert(l, store[&p]); });
                    prop_assert_eq!(&seen, &im.model);
                    prop_assert_eq!(im.map.mapped(), im.model.len() as u64);
                    prop_assert_eq!(im.map.levels(), height_for(im.map.len()) + 1);
                }
                let maps: Vec<&ExtentMap> = images.iter().map(|im| &im.map).collect();
                check_refs(&refs, &maps);
                // Space accounting: the first image walked by its owner in small steps, the
                // others read directly, against brute force.
                if let Some(first) = images.first() {
                    let mut walk = UsageWalk::new();
                    while !first.map.usage_step(&mut walk, 2) {}
                    prop_assert_eq!(walk.mapped(), first.map.mapped());
                    let mut sources = vec![(0u64, UsageSource::Walked(&walk))];
                    sources.extend(images.iter().enumerate().skip(1).map(|(i, im)| (i as u64, UsageSource::Map(&im.map))));
                    let fast = exclusive_extents(&sources, &refs);
                    drop(sources);
                    drop(walk);
                    let labelled: Vec<(u64, &ExtentMap)> = images.iter().enumerate().map(|(i, im)| (i as u64, &im.map)).collect();
                    prop_assert_eq!(fast, usage::tests::brute(&labelled, &refs));
                }
            }
            drop(images);
            prop_assert_eq!(refs.used_extents(), 0);
            prop_assert_eq!(refs.free_extents(), CAPACITY);
        }
    }
}

#[cfg(test)]
mod diff_tests {
    use super::*;
    use proptest::prelude::*;

    fn diff(map: &ExtentMap, base: Option<&ExtentMap>) -> Vec<u64> {
        let mut v = Vec::new();
        map.diff(base, |l| v.push(l));
        v
    }

    /// What `diff` must find, entry by entry.
    fn brute(map: &ExtentMap, base: Option<&ExtentMap>) -> Vec<u64> {
        (0..map.len())
            .filter(|&l| map.get(l) != base.and_then(|b| b.get(l).filter(|_| l < b.len())))
            .collect()
    }

    #[test]
    fn two_snapshots_differ_where_written_unmapped_or_copied_and_nowhere_else() {
        let refs = RefTable::new(10_000);
        let mut vol = ExtentMap::new(3 * FANOUT as u64, Arc::clone(&refs));
        for l in [0, 1, 600, 1100] {
            let p = refs.allocate().unwrap();
            vol.set(l, Some(p));
        }
        let s1 = vol.snapshot();
        // After the snapshot: a copy-on-write of 1, a new extent 700, 600 unmapped.
        let p = refs.allocate().unwrap();
        vol.set(1, Some(p));
        let p = refs.allocate().unwrap();
        vol.set(700, Some(p));
        vol.set(600, None);
        let s2 = vol.snapshot();
        assert_eq!(diff(&s2, Some(&s1)), vec![1, 600, 700]);
        assert_eq!(diff(&s1, Some(&s2)), vec![1, 600, 700], "symmetric");
        assert!(diff(&s2, Some(&s2)).is_empty());
        assert_eq!(
            diff(&s1, None),
            vec![0, 1, 600, 1100],
            "from nothing: all mapped"
        );
        // A grown volume: extents past the base's end that are mapped differ.
        vol.resize(5 * FANOUT as u64);
        let p = refs.allocate().unwrap();
        vol.set(2000, Some(p));
        let s3 = vol.snapshot();
        assert_eq!(diff(&s3, Some(&s2)), vec![2000]);
    }

    proptest! {
        #[test]
        fn diff_finds_exactly_the_entries_that_differ(
            ops in prop::collection::vec((0u64..2048, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let refs = RefTable::new(100_000);
            let mut vol = ExtentMap::new(2048, Arc::clone(&refs));
            let mut snaps = Vec::new();
            for (l, map_it, snap) in ops {
                if map_it {
                    let p = refs.allocate().unwrap();
                    vol.set(l, Some(p));
                } else {
                    vol.set(l, None);
                }
                if snap {
                    snaps.push(vol.snapshot());
                }
            }
            snaps.push(vol.snapshot());
            let last = snaps.last().unwrap();
            for base in &snaps {
                prop_assert_eq!(diff(last, Some(base)), brute(last, Some(base)));
            }
            prop_assert_eq!(diff(last, None), brute(last, None));
        }
    }
}
