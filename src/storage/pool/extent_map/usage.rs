//! Space accounting over shared trees: how many extents each image maps, and how many it holds
//! *exclusively* (what deleting it would return to the pool).
//!
//! An extent `p` is exclusive to image `X` when `refs.count(p) == 1` (one leaf holds it, M1) and
//! that leaf is reachable from `X` only. Leaves and interior nodes are shared by identity, so the
//! question "reachable from `X` only" is answered per node: [`exclusive_extents`] visits every
//! *distinct* node once, tagging it with the one image that reaches it or as shared, and counts
//! entries of the leaves that end up held by one image. The cost is O(distinct nodes) plus one
//! count lookup per entry of each singly-held leaf — not O(images × map size): a snapshot that
//! shares its whole tree with its volume costs one hash lookup.
//!
//! A served volume's map belongs to its shard, which mutates unshared nodes in place (M2), so no
//! other thread may read those. The shard walks its own map in small steps between I/O
//! completions ([`ExtentMap::usage_step`]), counting the entries of the leaves only it holds, and
//! hands over the subtrees already shared with another holder (`Arc` clones: a shared node is
//! immutable, and one more holder changes nothing for the writer, which copies shared nodes
//! anyway). The control thread finishes the job with [`exclusive_extents`]. The result is
//! exact for a quiet pool and fuzzy in time under concurrent writes, like any online space
//! report.

use super::{ExtentMap, FANOUT, Leaf, Node, RefTable, coverage};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// A subtree of a served map that another holder shares (see the module docs).
pub struct SharedSubtree {
    node: Node,
}

impl std::fmt::Debug for SharedSubtree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSubtree")
            .field("node", &node_id(&self.node))
            .finish()
    }
}

/// Progress and result of a stepwise walk of one map by its owner
/// ([`ExtentMap::usage_step`]).
#[derive(Debug, Default)]
pub struct UsageWalk {
    /// First leaf index not yet visited.
    next_leaf: u64,
    done: bool,
    /// Mapped extents of the map (taken when the walk finishes).
    mapped: u64,
    /// Entries of leaves held by this map alone whose extent has one reference.
    sole: u64,
    /// The part of `sole` in leaves counted in the walked map's own reference table: the
    /// extents its owner may write in place ([`ExtentMap::is_exclusive`]).
    sole_owned: u64,
    /// Subtrees with other holders, to be resolved by [`exclusive_extents`].
    shared: Vec<SharedSubtree>,
}

impl UsageWalk {
    /// A walk that has not started.
    pub fn new() -> UsageWalk {
        UsageWalk::default()
    }

    /// Whether every leaf has been visited.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Mapped extents of the walked map.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// Lets go of the shared subtrees met so far (a walk that only wants [`Self::writable`]:
    /// holding them would keep their extents counted until the walk ends).
    pub fn drop_shared(&mut self) {
        self.shared.clear();
    }

    /// Extents the walked map's owner could write in place, each at the moment its leaf was
    /// visited: a lower bound of that number at the end of the walk when nothing was shared or
    /// unmapped meanwhile (writes only add such extents).
    pub fn writable(&self) -> u64 {
        self.sole_owned
    }
}

/// One image's input to [`exclusive_extents`].
#[derive(Debug)]
pub enum UsageSource<'a> {
    /// A map this thread may read (a snapshot, an unserved volume).
    Map(&'a ExtentMap),
    /// A served map, walked by its shard.
    Walked(&'a UsageWalk),
}

impl ExtentMap {
    /// Advances `walk` over at most `budget` nodes (leaves, and shared subtrees handed over
    /// whole). Returns true when the walk is complete. Only the map's owner may call this (it
    /// reads unshared nodes); between calls the map may change — each leaf index is visited
    /// once, at some moment of the walk.
    pub fn usage_step(&self, walk: &mut UsageWalk, budget: usize) -> bool {
        if walk.done {
            return true;
        }
        let total_leaves = self.len.div_ceil(FANOUT as u64);
        let mut left = budget.max(1);
        if let Some(root) = &self.root {
            step(root, self.height, 0, walk, &mut left, &self.refs);
        } else {
            walk.next_leaf = total_leaves;
        }
        if walk.next_leaf >= total_leaves {
            walk.done = true;
            walk.mapped = self.mapped;
        }
        walk.done
    }
}

/// Leaves covered by a node at `level`.
fn leaves_under(level: u32) -> u64 {
    coverage(level) / FANOUT as u64
}

/// Whether a node has holders other than the tree being walked.
fn is_shared(node: &Node) -> bool {
    match node {
        Node::Interior(n) => Arc::strong_count(n) > 1,
        Node::Leaf(l) => Arc::strong_count(l) > 1,
    }
}

/// Visits the part of `node` (at `level`, first leaf `first`) at or after `walk.next_leaf`,
/// spending `left`; advances `walk.next_leaf` past what was visited.
fn step(
    node: &Node,
    level: u32,
    first: u64,
    walk: &mut UsageWalk,
    left: &mut usize,
    refs: &RefTable,
) {
    let end = first + leaves_under(level);
    if end <= walk.next_leaf || *left == 0 {
        return;
    }
    if is_shared(node) && first >= walk.next_leaf {
        walk.shared.push(SharedSubtree { node: node.clone() });
        walk.next_leaf = end;
        *left -= 1;
        return;
    }
    match node {
        Node::Leaf(leaf) => {
            let sole = sole_entries(leaf, refs);
            walk.sole += sole;
            if leaf.counted_in(refs) {
                walk.sole_owned += sole;
            }
            walk.next_leaf = end;
            *left -= 1;
        }
        Node::Interior(n) => {
            let span = leaves_under(level - 1);
            for (i, child) in n.children.iter().enumerate() {
                if *left == 0 {
                    return;
                }
                let child_first = first + i as u64 * span;
                match child {
                    Some(c) => step(c, level - 1, child_first, walk, left, refs),
                    None => walk.next_leaf = walk.next_leaf.max(child_first + span),
                }
            }
            walk.next_leaf = walk.next_leaf.max(end);
        }
    }
}

/// Entries of `leaf` whose extent has exactly one reference.
fn sole_entries(leaf: &Leaf, refs: &RefTable) -> u64 {
    leaf.entries
        .iter()
        .filter(|&&p| p != 0 && refs.count(p) == 1)
        .count() as u64
}

fn node_id(node: &Node) -> usize {
    match node {
        Node::Interior(n) => Arc::as_ptr(n).addr(),
        Node::Leaf(l) => Arc::as_ptr(l).addr(),
    }
}

/// Who reaches a node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Holder {
    One(u64),
    Many,
}

struct Tagger<'a> {
    tags: HashMap<usize, Holder>,
    /// Leaves in first-visit order, with their ids.
    leaves: Vec<(usize, &'a Leaf)>,
}

impl<'a> Tagger<'a> {
    fn visit(&mut self, node: &'a Node, image: u64) {
        match self.tags.entry(node_id(node)) {
            Entry::Vacant(v) => {
                v.insert(Holder::One(image));
                match node {
                    Node::Leaf(leaf) => self.leaves.push((node_id(node), leaf)),
                    Node::Interior(n) => {
                        for child in n.children.iter().flatten() {
                            self.visit(child, image);
                        }
                    }
                }
            }
            Entry::Occupied(o) => {
                if *o.get() != Holder::One(image) && *o.get() != Holder::Many {
                    self.mark_shared(node);
                }
            }
        }
    }

    /// Marks `node` and everything below it (all visited already) as shared.
    fn mark_shared(&mut self, node: &Node) {
        if self.tags.insert(node_id(node), Holder::Many) == Some(Holder::Many) {
            return;
        }
        if let Node::Interior(n) = node {
            for child in n.children.iter().flatten() {
                self.mark_shared(child);
            }
        }
    }
}

/// Exclusive extents of every image in `images` (see the module docs). Every image of the pool
/// must be given, or extents shared with a missing one count as exclusive.
pub fn exclusive_extents(images: &[(u64, UsageSource<'_>)], refs: &RefTable) -> HashMap<u64, u64> {
    let mut tagger = Tagger {
        tags: HashMap::new(),
        leaves: Vec::new(),
    };
    let mut out: HashMap<u64, u64> = HashMap::new();
    for (image, source) in images {
        out.entry(*image).or_default();
        match source {
            UsageSource::Map(map) => {
                if let Some(root) = &map.root {
                    tagger.visit(root, *image);
                }
            }
            UsageSource::Walked(walk) => {
                *out.entry(*image).or_default() += walk.sole;
                for sub in &walk.shared {
                    tagger.visit(&sub.node, *image);
                }
            }
        }
    }
    for (id, leaf) in &tagger.leaves {
        if let Some(Holder::One(image)) = tagger.tags.get(id) {
            *out.entry(*image).or_default() += sole_entries(leaf, refs);
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn map_with(
        refs: &Arc<RefTable>,
        extents: u64,
        written: impl IntoIterator<Item = u64>,
    ) -> ExtentMap {
        let mut m = ExtentMap::new(extents, Arc::clone(refs));
        for l in written {
            let p = refs.allocate().expect("space");
            m.set(l, Some(p));
        }
        m
    }

    fn walk_all(map: &ExtentMap, budget: usize) -> UsageWalk {
        let mut w = UsageWalk::new();
        let mut steps = 0;
        while !map.usage_step(&mut w, budget) {
            steps += 1;
            assert!(steps < 1_000_000, "walk does not finish");
        }
        w
    }

    /// Exclusive counts by brute force: extents with one reference, held by one image only.
    pub(in crate::storage::pool::extent_map) fn brute(
        images: &[(u64, &ExtentMap)],
        refs: &RefTable,
    ) -> HashMap<u64, u64> {
        let mut holders: HashMap<usize, Vec<u64>> = HashMap::new();
        for (image, map) in images {
            map.for_each_leaf(|_, id, _| holders.entry(id).or_default().push(*image));
        }
        let mut out = HashMap::new();
        for (image, map) in images {
            let mut n = 0;
            map.for_each_leaf(|_, id, entries| {
                if holders[&id].len() == 1 {
                    n += entries
                        .iter()
                        .filter(|&&p| p != 0 && refs.count(p) == 1)
                        .count() as u64;
                }
            });
            out.insert(*image, n);
        }
        out
    }

    #[test]
    fn lone_volume_owns_everything() {
        let refs = Arc::new(RefTable::new(10_000));
        let m = map_with(&refs, 5000, [0, 1, 700, 4999]);
        let w = walk_all(&m, 1);
        assert_eq!(w.mapped(), 4);
        let ex = exclusive_extents(&[(1, UsageSource::Walked(&w))], &refs);
        assert_eq!(ex[&1], 4);
    }

    #[test]
    fn snapshot_then_overwrite_splits_ownership() {
        let refs = Arc::new(RefTable::new(10_000));
        let mut vol = map_with(&refs, 5000, 0..1100);
        let snap = vol.snapshot();
        // Rewrite 10 extents in the first leaf and 3 in the third: those leaves are copied.
        for l in (0..10).chain(1024..1027) {
            let p = refs.allocate().expect("space");
            vol.set(l, Some(p));
        }
        let w = walk_all(&vol, 2);
        let ex = exclusive_extents(
            &[(1, UsageSource::Walked(&w)), (2, UsageSource::Map(&snap))],
            &refs,
        );
        drop(w);
        let expected = brute(&[(1, &vol), (2, &snap)], &refs);
        assert_eq!(ex, expected);
        assert_eq!(ex[&1], 13, "the rewritten extents");
        assert_eq!(ex[&2], 13, "the overwritten originals");
    }

    #[test]
    fn identical_trees_own_nothing() {
        let refs = Arc::new(RefTable::new(10_000));
        let vol = map_with(&refs, 3000, 0..600);
        let a = vol.snapshot();
        let b = vol.snapshot();
        let ex = exclusive_extents(
            &[
                (1, UsageSource::Map(&vol)),
                (2, UsageSource::Map(&a)),
                (3, UsageSource::Map(&b)),
            ],
            &refs,
        );
        assert_eq!(ex.values().sum::<u64>(), 0);
        // Deleting two of them makes the last the sole holder.
        drop((a, b));
        let ex = exclusive_extents(&[(1, UsageSource::Map(&vol))], &refs);
        assert_eq!(ex[&1], 600);
    }

    #[test]
    fn walk_survives_changes_between_steps() {
        let refs = Arc::new(RefTable::new(100_000));
        let mut vol = map_with(&refs, 50_000, (0..50_000).step_by(7));
        let snap = vol.snapshot();
        let mut w = UsageWalk::new();
        let mut i = 0u64;
        while !vol.usage_step(&mut w, 3) {
            // Writes between steps: the walk must still finish and count sanely.
            let p = refs.allocate().expect("space");
            vol.set((i * 4099) % 50_000, Some(p));
            i += 1;
        }
        let ex = exclusive_extents(
            &[(1, UsageSource::Walked(&w)), (2, UsageSource::Map(&snap))],
            &refs,
        );
        assert!(ex[&1] <= vol.mapped());
        assert!(ex[&2] <= snap.mapped());
        drop(w);
        // A fresh walk on the quiet map is exact.
        let w = walk_all(&vol, 5);
        let ex = exclusive_extents(
            &[(1, UsageSource::Walked(&w)), (2, UsageSource::Map(&snap))],
            &refs,
        );
        drop(w);
        assert_eq!(ex, brute(&[(1, &vol), (2, &snap)], &refs));
    }
}
