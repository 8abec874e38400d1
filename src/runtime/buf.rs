//! Aligned I/O buffers and the per-shard pool they return to.
//!
//! O_DIRECT needs buffers aligned to the logical block size of the backing store; every buffer
//! here is aligned to 4 KiB and sized to a power-of-two class (4 KiB .. 64 MiB). A dropped
//! [`AlignedBuf`] goes back to its pool's free list, so steady-state I/O allocates nothing.
//!
//! Invariants: every byte of a buffer is initialised (fresh memory is zeroed), so handing out
//! `&[u8]` over its full capacity is sound. The pool is single-threaded (`Rc`), like the shard.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

/// Alignment of every buffer (covers 512- and 4096-byte logical blocks).
pub const ALIGN: usize = 4096;
const MIN_CLASS_SHIFT: u32 = 12;
const MAX_CLASS_SHIFT: u32 = 26;
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Free buffers kept per class before extra ones are released to the allocator.
const KEEP_PER_CLASS: usize = 256;

/// Largest buffer the pool hands out.
pub const MAX_BUF: usize = 1 << MAX_CLASS_SHIFT;

struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
}

impl Raw {
    fn allocate(cap: usize) -> Raw {
        let layout = layout(cap);
        // SAFETY: `layout` has a non-zero size (cap >= 4096) and a power-of-two alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Raw { ptr, cap }
    }

    fn release(self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed` with exactly this layout and is released
        // once: `Raw` is moved in here and not used again.
        unsafe { dealloc(self.ptr.as_ptr(), layout(self.cap)) }
    }
}

fn layout(cap: usize) -> Layout {
    // A 4 KiB alignment and a capacity below 2^26 always form a valid layout.
    Layout::from_size_align(cap, ALIGN).expect("buffer layout is valid by construction")
}

fn class_of(len: usize) -> usize {
    let shift = len
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS_SHIFT);
    (shift - MIN_CLASS_SHIFT) as usize
}

#[derive(Default)]
struct FreeLists {
    lists: [Vec<Raw>; CLASSES],
}

/// A pool of aligned buffers owned by one shard.
#[derive(Clone, Default)]
pub struct BufPool {
    free: Rc<RefCell<FreeLists>>,
}

impl std::fmt::Debug for BufPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BufPool(parked={})", self.parked())
    }
}

impl BufPool {
    /// An empty pool.
    pub fn new() -> Self {
        BufPool::default()
    }

    /// A buffer of `len` bytes (contents unspecified but initialised). `len` is capped to
    /// [`MAX_BUF`]; callers check their limits first.
    pub fn take(&self, len: usize) -> AlignedBuf {
        let len = len.min(MAX_BUF);
        let class = class_of(len);
        let raw = self.free.borrow_mut().lists[class].pop();
        let raw = raw.unwrap_or_else(|| Raw::allocate(1 << (class as u32 + MIN_CLASS_SHIFT)));
        AlignedBuf {
            raw: Some(raw),
            len,
            pool: Rc::downgrade(&self.free),
        }
    }

    /// Buffers currently parked in the pool (for tests and stats).
    pub fn parked(&self) -> usize {
        self.free.borrow().lists.iter().map(Vec::len).sum()
    }
}

impl Drop for FreeLists {
    fn drop(&mut self) {
        for list in &mut self.lists {
            for raw in list.drain(..) {
                raw.release();
            }
        }
    }
}

/// A 4 KiB-aligned byte buffer with a length, returned to its pool on drop.
pub struct AlignedBuf {
    raw: Option<Raw>,
    len: usize,
    pool: Weak<RefCell<FreeLists>>,
}

impl AlignedBuf {
    fn raw(&self) -> &Raw {
        // Invariant: `raw` is Some until drop.
        self.raw.as_ref().expect("buffer present until drop")
    }

    /// Capacity in bytes (a power of two, at least 4096).
    pub fn capacity(&self) -> usize {
        self.raw().cap
    }

    /// Sets the length (at most the capacity).
    pub fn set_len(&mut self, len: usize) {
        self.len = len.min(self.capacity());
    }

    /// Pointer to the first byte, for I/O submission.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.raw().ptr.as_ptr()
    }

    /// Pointer to the first byte, for I/O submission.
    pub fn as_ptr(&self) -> *const u8 {
        self.raw().ptr.as_ptr()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let raw = self.raw();
        // SAFETY: the allocation holds `cap >= len` initialised bytes (zeroed at allocation) and
        // lives as long as `self`.
        unsafe { std::slice::from_raw_parts(raw.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let ptr = self.as_mut_ptr();
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let Some(raw) = self.raw.take() else { return };
        if let Some(pool) = self.pool.upgrade() {
            let mut free = pool.borrow_mut();
            let list = &mut free.lists[class_of(raw.cap)];
            if list.len() < KEEP_PER_CLASS {
                list.push(raw);
                return;
            }
        }
        raw.release();
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf(len={}, cap={})", self.len, self.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_is_aligned_and_sized() {
        let pool = BufPool::new();
        let buf = pool.take(5000);
        assert_eq!(buf.len(), 5000);
        assert_eq!(buf.capacity(), 8192);
        assert_eq!(buf.as_ptr() as usize % ALIGN, 0);
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn dropped_buffers_are_reused() {
        let pool = BufPool::new();
        let mut a = pool.take(4096);
        a[0] = 9;
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.parked(), 1);
        let b = pool.take(100);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(pool.parked(), 0);
    }

    #[test]
    fn buffer_outliving_pool_is_freed() {
        let pool = BufPool::new();
        let a = pool.take(4096);
        drop(pool);
        drop(a);
    }
}
