//! Aligned I/O buffers and the per-shard pool they return to.
//!
//! O_DIRECT needs buffers aligned to the logical block size of the backing store; every buffer
//! here is aligned to 4 KiB and sized to a power-of-two class (4 KiB .. 64 MiB). A dropped
//! [`AlignedBuf`] goes back to its pool's free list, so steady-state I/O allocates nothing.
//!
//! Registered buffers: a pool whose shard has a ring buffer table
//! ([`BufPool::enable_registration`]) registers the buffers parked in it, within a byte budget,
//! when the shard asks ([`BufPool::register_parked`], before it enters the ring). A registered
//! buffer knows its table slot ([`AlignedBuf::reg_index`]), so its O_DIRECT transfers can be
//! `READ_FIXED` / `WRITE_FIXED`: the kernel then skips pinning and unpinning its pages on every
//! I/O. A buffer is registered on its first return to the pool, so the slot of any buffer in use
//! is already in the kernel's table.
//!
//! Invariants: every byte of a buffer is initialised (fresh memory is zeroed), so handing out
//! `&[u8]` over its full capacity is sound. A registered buffer is never given back to the
//! allocator while its pool lives (the kernel's table points at it; the shard drops its ring
//! before its pool). The pool is single-threaded (`Rc`), like the shard.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::RefCell;
use std::io;
use std::ptr::NonNull;
use std::rc::{Rc, Weak};

/// Alignment of every buffer (covers 512- and 4096-byte logical blocks).
pub const ALIGN: usize = 4096;
const MIN_CLASS_SHIFT: u32 = 12;
const MAX_CLASS_SHIFT: u32 = 26;
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
/// Free buffers kept per class before extra ones are released to the allocator.
const KEEP_PER_CLASS: usize = 256;

/// Largest buffer registered with the ring: page pinning costs most, relative to the transfer,
/// on small I/O, and a few large buffers (an EXTENDED COPY's 4 MiB chunks) would otherwise take
/// the whole budget.
const MAX_REGISTERED_BUF: usize = 1 << 20;

/// Largest buffer the pool hands out.
pub const MAX_BUF: usize = 1 << MAX_CLASS_SHIFT;

struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
    /// Slot in the ring's buffer table, once registered.
    reg: Option<u16>,
}

impl Raw {
    fn allocate(cap: usize) -> Raw {
        let layout = layout(cap);
        // SAFETY: `layout` has a non-zero size (cap >= 4096) and a power-of-two alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Raw {
            ptr,
            cap,
            reg: None,
        }
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
    reg: Registration,
}

/// What is left of the ring's buffer table and of the pinned-memory budget.
#[derive(Debug, Default)]
struct Registration {
    next_slot: u16,
    slots: u16,
    bytes_left: usize,
    /// Unregistered buffers parked since the last [`BufPool::register_parked`].
    waiting: usize,
}

impl Registration {
    fn active(&self) -> bool {
        self.next_slot < self.slots && self.bytes_left >= ALIGN
    }
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

    /// Lets [`BufPool::register_parked`] fill slots `0..slots` of the ring's (sparse) buffer
    /// table with up to `budget` bytes of buffers.
    pub fn enable_registration(&self, slots: u16, budget: usize) {
        let mut free = self.free.borrow_mut();
        free.reg = Registration {
            next_slot: 0,
            slots,
            bytes_left: budget,
            waiting: free.lists.iter().map(Vec::len).sum(),
        };
    }

    /// Whether parked buffers wait for [`BufPool::register_parked`].
    pub fn wants_registration(&self) -> bool {
        let free = self.free.borrow();
        free.reg.waiting > 0 && free.reg.active()
    }

    /// Registers the unregistered parked buffers that fit what is left of the table and budget:
    /// `register(first_slot, iovecs)` puts them in consecutive slots of the ring's table and
    /// says how many it registered, in order, and whether it stopped on an error. Those carry
    /// their slots from then on; on an error registration stops for good (the others keep
    /// working unregistered) and the error is returned.
    pub fn register_parked(
        &self,
        register: impl FnOnce(u16, &[libc::iovec]) -> (usize, io::Result<()>),
    ) -> io::Result<usize> {
        let mut guard = self.free.borrow_mut();
        let FreeLists { lists, reg } = &mut *guard;
        reg.waiting = 0;
        let mut chosen: Vec<(usize, usize)> = Vec::new();
        let mut iovecs: Vec<libc::iovec> = Vec::new();
        let (mut slots, mut bytes) = (reg.slots - reg.next_slot, reg.bytes_left);
        for (class, list) in lists.iter().enumerate() {
            for (i, raw) in list.iter().enumerate() {
                if raw.reg.is_some() || raw.cap > bytes.min(MAX_REGISTERED_BUF) || slots == 0 {
                    continue;
                }
                slots -= 1;
                bytes -= raw.cap;
                chosen.push((class, i));
                iovecs.push(libc::iovec {
                    iov_base: raw.ptr.as_ptr().cast(),
                    iov_len: raw.cap,
                });
            }
        }
        if iovecs.is_empty() {
            return Ok(0);
        }
        let (done, result) = register(reg.next_slot, &iovecs);
        let done = done.min(chosen.len());
        for (class, i) in chosen.iter().copied().take(done) {
            lists[class][i].reg = Some(reg.next_slot);
            reg.next_slot += 1;
            reg.bytes_left -= lists[class][i].cap;
        }
        if let Err(e) = result {
            reg.slots = 0;
            return Err(e);
        }
        Ok(done)
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

    /// Its slot in the ring's buffer table, if registered (see the module doc): the whole
    /// capacity is registered, so any transfer within it can name the slot.
    pub fn reg_index(&self) -> Option<u16> {
        self.raw().reg
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
            let FreeLists { lists, reg } = &mut *free;
            let list = &mut lists[class_of(raw.cap)];
            // A registered buffer stays with its pool: the kernel's table points at it.
            if raw.reg.is_some() || list.len() < KEEP_PER_CLASS {
                // Each flush it triggers registers something, so the scans stay bounded by
                // the table's size.
                let fits = raw.cap <= reg.bytes_left.min(MAX_REGISTERED_BUF);
                if raw.reg.is_none() && reg.active() && fits {
                    reg.waiting += 1;
                }
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
    fn parked_buffers_register_within_slots_and_budget() {
        let pool = BufPool::new();
        let bufs: Vec<AlignedBuf> = [4096, 4096, 8192, 65536]
            .iter()
            .map(|&n| pool.take(n))
            .collect();
        pool.enable_registration(8, 16384);
        assert!(!pool.wants_registration(), "nothing parked yet");
        drop(bufs);
        assert!(pool.wants_registration());
        let mut seen = Vec::new();
        let n = pool
            .register_parked(|first, iovecs| {
                seen.push((first, iovecs.iter().map(|v| v.iov_len).collect::<Vec<_>>()));
                (iovecs.len(), Ok(()))
            })
            .unwrap();
        // 4k + 4k + 8k fill the 16 KiB budget; the 64k buffer stays unregistered.
        assert_eq!(n, 3);
        assert_eq!(seen, vec![(0, vec![4096, 4096, 8192])]);
        assert!(!pool.wants_registration(), "budget spent");
        let a = pool.take(4096);
        let b = pool.take(4096);
        let c = pool.take(8192);
        let d = pool.take(65536);
        let mut slots: Vec<u16> = [&a, &b, &c].iter().filter_map(|x| x.reg_index()).collect();
        slots.sort();
        assert_eq!(slots, vec![0, 1, 2]);
        assert_eq!(d.reg_index(), None);
    }

    #[test]
    fn buffers_over_a_mebibyte_are_not_registered() {
        let pool = BufPool::new();
        pool.enable_registration(8, 64 << 20);
        drop((pool.take(4 << 20), pool.take(4096)));
        let mut sizes = Vec::new();
        pool.register_parked(|_, iovecs| {
            sizes.extend(iovecs.iter().map(|v| v.iov_len));
            (iovecs.len(), Ok(()))
        })
        .unwrap();
        assert_eq!(sizes, vec![4096]);
        assert_eq!(pool.take(4 << 20).reg_index(), None);
    }

    #[test]
    fn registered_buffers_are_kept_past_the_park_limit() {
        let pool = BufPool::new();
        pool.enable_registration(1, 1 << 20);
        drop(pool.take(4096));
        pool.register_parked(|_, iovecs| (iovecs.len(), Ok(())))
            .unwrap();
        let registered = pool.take(4096);
        assert_eq!(registered.reg_index(), Some(0));
        let others: Vec<AlignedBuf> = (0..KEEP_PER_CLASS).map(|_| pool.take(4096)).collect();
        drop(others);
        assert_eq!(pool.parked(), KEEP_PER_CLASS);
        drop(registered);
        assert_eq!(
            pool.parked(),
            KEEP_PER_CLASS + 1,
            "never released to the allocator"
        );
    }

    #[test]
    fn a_failed_registration_turns_it_off() {
        let pool = BufPool::new();
        pool.enable_registration(4, 1 << 20);
        drop(pool.take(4096));
        let err = pool.register_parked(|_, _| (0, Err(io::Error::from_raw_os_error(libc::ENOMEM))));
        assert!(err.is_err());
        drop(pool.take(8192));
        assert!(!pool.wants_registration());
        assert_eq!(pool.take(4096).reg_index(), None);
    }

    /// The kernel registered the first buffer of a batch and refused the second (its memory
    /// lock limit): only the first gets a slot; the second stays unregistered, and
    /// registration stops.
    #[test]
    fn a_partly_refused_registration_gives_slots_to_the_registered_only() {
        let pool = BufPool::new();
        pool.enable_registration(4, 1 << 20);
        drop((pool.take(4096), pool.take(8192)));
        let n = pool.register_parked(|_, _| (1, Err(io::Error::from_raw_os_error(libc::ENOMEM))));
        assert!(n.is_err());
        let a = pool.take(4096);
        let b = pool.take(8192);
        assert_eq!(
            [a.reg_index(), b.reg_index()].iter().flatten().count(),
            1,
            "one slot, for the buffer the kernel took"
        );
        assert!(!pool.wants_registration());
    }

    #[test]
    fn buffer_outliving_pool_is_freed() {
        let pool = BufPool::new();
        let a = pool.take(4096);
        drop(pool);
        drop(a);
    }
}
