//! Sequential read-ahead: a shard notices LUNs read in sequence and reads the next ranges before
//! they are asked for, so that a sequential reader keeps the device busy while its previous
//! answers travel (O_DIRECT bypasses the kernel's page-cache read-ahead, which is what serves a
//! buffered target such as tgt's rdwr backend).
//!
//! This module is the bookkeeping only, free of I/O: streams, and *chunks* (one predicted read
//! each, in flight or ready); the shard (`runtime::io`) submits the chunks' reads and hands their
//! buffers to the commands that match them.
//!
//! - A *stream* is a LUN read at consecutive offsets with one request length. After
//!   [`MIN_RUN`] such reads in a row, each further one tops the stream up to its *depth* ahead
//!   of it, in chunks of that same length (so a chunk matches a later command exactly and its
//!   buffer is sent as is: no copy). Each LUN follows at most [`STREAMS_PER_LUN`] streams (the
//!   least recently used is replaced, dropping its chunks); a shard holds at most [`MAX_CHUNKS`].
//! - The depth ramps up as the kernel's page-cache read-ahead does: [`INITIAL_CHUNKS`] requests
//!   at first, doubled each time a command of the stream is answered from a chunk, up to
//!   `window`. A short run that random reads make by chance (fio's random map hands out runs of
//!   free blocks at the end of each pass) costs a few reads, not a whole window of them.
//! - Only an exact match is served: a command of another length or alignment reads the device.
//! - Invariant (coherence): a chunk that is *not stale* reads data no write has changed since
//!   the chunk's read was submitted. Writes (and UNMAP, WRITE SAME) call [`ReadAhead::invalidate`]
//!   when they start and again when they complete: their start marks every overlapping chunk
//!   stale (a stale chunk is never matched again), their completion catches chunks submitted
//!   while they were in flight. A command already waiting for a chunk that turns stale was
//!   concurrent with the write, so either contents are a valid answer.
//! - Invariant (memory safety): a chunk's buffer stays in its slot until every read into it
//!   completed, whatever happens to its LUN meanwhile.

use super::buf::AlignedBuf;
use smallvec::SmallVec;

/// Sequential reads in a row before read-ahead starts.
pub const MIN_RUN: u32 = 3;
/// Streams followed per LUN.
pub const STREAMS_PER_LUN: usize = 4;
/// Chunks per shard, in flight or ready.
pub const MAX_CHUNKS: usize = 64;
/// Bytes of chunks per shard.
pub const MAX_BYTES: u64 = 16 << 20;
/// A new stream's depth, in requests (never more than the window).
pub const INITIAL_CHUNKS: u64 = 4;
/// Longest request read ahead: larger ones already keep a device busy.
pub const MAX_REQUEST: u64 = 1 << 20;

#[derive(Debug, Clone)]
struct Stream {
    id: u64,
    /// Where the next read of the stream starts.
    next: u64,
    /// Its request length.
    len: u64,
    /// Consecutive reads seen.
    run: u32,
    /// End of what has been read ahead.
    ahead: u64,
    /// Bytes to keep read ahead of it: grows with each command answered from its chunks.
    depth: u64,
    /// For least-recently-used replacement.
    last_use: u64,
}

/// One predicted read.
#[derive(Debug)]
pub struct Chunk {
    /// LUN index on the shard.
    pub lun: usize,
    /// Logical byte offset and length.
    pub offset: u64,
    pub len: u64,
    /// The buffer being filled, or filled.
    pub buf: Option<AlignedBuf>,
    /// Reads into `buf` still in flight.
    pub pending: u32,
    /// A read failed.
    pub error: bool,
    /// Overlapped by a write since: never matched again (see the module invariant).
    pub stale: bool,
    /// Ops waiting for it (slots).
    pub waiters: SmallVec<[usize; 2]>,
    stream: u64,
}

impl Chunk {
    /// Its buffer is filled (every read completed).
    pub fn ready(&self) -> bool {
        self.pending == 0 && self.buf.is_some()
    }

    fn overlaps(&self, lun: usize, offset: u64, len: u64) -> bool {
        self.lun == lun && self.offset < offset + len && offset < self.offset + self.len
    }
}

/// What a read command finds.
#[derive(Debug)]
pub enum Lookup {
    /// A ready chunk with exactly its range: its buffer.
    Ready(AlignedBuf),
    /// A chunk in flight with exactly its range: wait for the chunk at this slot.
    InFlight(usize),
    /// Read the device.
    Miss,
}

/// A shard's read-ahead state (all its LUNs).
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Bytes to keep read ahead of a stream (0: read-ahead off).
    window: u64,
    /// Streams by LUN index (a READ looks only at its own LUN's few).
    streams: Vec<SmallVec<[Stream; STREAMS_PER_LUN]>>,
    chunks: Vec<Option<Chunk>>,
    free: Vec<usize>,
    live: usize,
    bytes: u64,
    clock: u64,
    next_stream: u64,
}

impl ReadAhead {
    /// Read-ahead keeping up to `window` bytes ahead of each stream (0: off).
    pub fn new(window: u64) -> Self {
        ReadAhead {
            window,
            ..Default::default()
        }
    }

    /// Whether read-ahead is on.
    pub fn enabled(&self) -> bool {
        self.window > 0
    }

    /// Chunks held (in flight or ready).
    pub fn chunks(&self) -> usize {
        self.live
    }

    /// The chunk at `slot`.
    pub fn chunk_mut(&mut self, slot: usize) -> Option<&mut Chunk> {
        self.chunks.get_mut(slot).and_then(Option::as_mut)
    }

    /// A read of `len` bytes at `offset` on `lun`: takes a ready chunk of exactly that range,
    /// or names one in flight.
    pub fn lookup(&mut self, lun: usize, offset: u64, len: u64) -> Lookup {
        if self.live == 0 {
            return Lookup::Miss;
        }
        let found = self.chunks.iter().position(|c| {
            c.as_ref().is_some_and(|c| {
                c.lun == lun && c.offset == offset && c.len == len && !c.stale && !c.error
            })
        });
        let Some(slot) = found else {
            return Lookup::Miss;
        };
        if let Some(stream) = self.chunks[slot].as_ref().map(|c| c.stream) {
            self.deepen(lun, stream);
        }
        let ready = self.chunks[slot].as_ref().is_some_and(Chunk::ready);
        if !ready {
            return Lookup::InFlight(slot);
        }
        match self.remove(slot).and_then(|c| c.buf) {
            Some(buf) => Lookup::Ready(buf),
            None => Lookup::Miss,
        }
    }

    /// Records a read of `len` bytes at `offset` on `lun` (of `capacity` bytes) and returns
    /// the chunks created to read ahead now, as (slot, offset, length): the caller gives each a
    /// buffer and submits its reads.
    pub fn advance(
        &mut self,
        lun: usize,
        offset: u64,
        len: u64,
        capacity: u64,
    ) -> SmallVec<[(usize, u64, u64); 8]> {
        let mut out = SmallVec::new();
        if !self.enabled() || len == 0 || len > MAX_REQUEST {
            return out;
        }
        self.clock += 1;
        let clock = self.clock;
        if self.streams.len() <= lun {
            self.streams.resize_with(lun + 1, SmallVec::new);
        }
        let found = self.streams[lun]
            .iter()
            .position(|s| s.next == offset && s.len == len);
        let Some(i) = found else {
            self.start_stream(lun, offset, len);
            return out;
        };
        let s = &mut self.streams[lun][i];
        s.run += 1;
        s.next = offset + len;
        s.last_use = clock;
        s.ahead = s.ahead.max(s.next);
        if s.run < MIN_RUN {
            return out;
        }
        let depth = (s.depth / len).max(1);
        let target = (s.next + depth * len).min(capacity);
        let (id, mut ahead) = (s.id, s.ahead);
        let want = target.saturating_sub(ahead) / len;
        if want > 0 {
            self.evict_for(id, want as usize, want * len);
        }
        while ahead + len <= target && self.live < MAX_CHUNKS && self.bytes + len <= MAX_BYTES {
            let slot = self.insert(Chunk {
                lun,
                offset: ahead,
                len,
                buf: None,
                pending: 0,
                error: false,
                stale: false,
                waiters: SmallVec::new(),
                stream: id,
            });
            out.push((slot, ahead, len));
            ahead += len;
        }
        self.streams[lun][i].ahead = ahead;
        out
    }

    /// Writes to `len` bytes at `offset` on `lun` started or completed: overlapping chunks
    /// turn stale; those with nobody waiting and no read in flight are dropped.
    pub fn invalidate(&mut self, lun: usize, offset: u64, len: u64) {
        if self.live == 0 {
            return;
        }
        for slot in 0..self.chunks.len() {
            if let Some(c) = self.chunks[slot].as_mut() {
                if c.overlaps(lun, offset, len) {
                    c.stale = true;
                    self.drop_if_unused(slot);
                }
            }
        }
    }

    /// The LUN at `lun` was removed, resized or replaced: forget its streams and chunks.
    pub fn forget_lun(&mut self, lun: usize) {
        if let Some(streams) = self.streams.get_mut(lun) {
            streams.clear();
        }
        self.invalidate(lun, 0, u64::MAX / 2);
    }

    /// Removes chunk `slot` once its reads completed and nobody waits (else leaves it, stale
    /// or not, for [`ReadAhead::complete`]).
    fn drop_if_unused(&mut self, slot: usize) {
        let unused = self.chunks[slot]
            .as_ref()
            .is_some_and(|c| c.ready() && c.waiters.is_empty());
        if unused {
            self.remove(slot);
        }
    }

    /// Every read of chunk `slot` completed. With commands waiting, the chunk goes to them:
    /// returned (they read the device themselves if it has `error`; a waiter on a chunk that
    /// turned stale was concurrent with the write, so its data is a valid answer). Without, it
    /// stays ready for the command to come, unless stale or failed.
    pub fn complete(&mut self, slot: usize) -> Option<Chunk> {
        let c = self.chunk_mut(slot)?;
        if !c.waiters.is_empty() {
            return self.remove(slot);
        }
        if c.error || c.stale {
            self.remove(slot);
        }
        None
    }

    /// Takes chunk `slot` out (its buffer goes with it).
    pub fn remove(&mut self, slot: usize) -> Option<Chunk> {
        let c = self.chunks.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.live -= 1;
        self.bytes -= c.len;
        Some(c)
    }

    /// Makes room for `count` chunks of `bytes` in all for stream `keep`: drops ready chunks
    /// nobody waits for, of the least recently used other streams first.
    fn evict_for(&mut self, keep: u64, count: usize, bytes: u64) {
        let short = |ra: &Self| ra.live + count > MAX_CHUNKS || ra.bytes + bytes > MAX_BYTES;
        if !short(self) {
            return;
        }
        let last_use = |lun: usize, id: u64| {
            self.streams
                .get(lun)
                .and_then(|streams| streams.iter().find(|s| s.id == id))
                .map_or(0, |s| s.last_use)
        };
        let mut victims: Vec<(u64, usize)> = self
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                (c.stream != keep && c.ready() && c.waiters.is_empty())
                    .then(|| (last_use(c.lun, c.stream), slot))
            })
            .collect();
        victims.sort_unstable();
        for (_, slot) in victims {
            if !short(self) {
                break;
            }
            self.remove(slot);
        }
    }

    fn insert(&mut self, chunk: Chunk) -> usize {
        self.live += 1;
        self.bytes += chunk.len;
        match self.free.pop() {
            Some(slot) => {
                self.chunks[slot] = Some(chunk);
                slot
            }
            None => {
                self.chunks.push(Some(chunk));
                self.chunks.len() - 1
            }
        }
    }

    fn start_stream(&mut self, lun: usize, offset: u64, len: u64) {
        self.next_stream += 1;
        let stream = Stream {
            id: self.next_stream,
            next: offset + len,
            len,
            run: 1,
            ahead: offset + len,
            depth: (INITIAL_CHUNKS * len).min(self.window),
            last_use: self.clock,
        };
        let mine = &mut self.streams[lun];
        if mine.len() < STREAMS_PER_LUN {
            mine.push(stream);
            return;
        }
        let Some(oldest) = (0..mine.len()).min_by_key(|&i| mine[i].last_use) else {
            return;
        };
        let old = std::mem::replace(&mut mine[oldest], stream);
        self.drop_stream_chunks(old.id);
    }

    /// A command of stream `id` was answered from one of its chunks: the stream reads twice as
    /// far ahead, up to the window.
    fn deepen(&mut self, lun: usize, id: u64) {
        let window = self.window;
        if let Some(s) = self
            .streams
            .get_mut(lun)
            .and_then(|streams| streams.iter_mut().find(|s| s.id == id))
        {
            s.depth = s.depth.saturating_mul(2).min(window);
        }
    }

    /// A replaced stream's chunks: the ready ones go; those in flight go when they complete.
    fn drop_stream_chunks(&mut self, id: u64) {
        if self.live == 0 {
            return;
        }
        for slot in 0..self.chunks.len() {
            if let Some(c) = self.chunks[slot].as_mut() {
                if c.stream == id && c.waiters.is_empty() {
                    c.stale = true;
                    self.drop_if_unused(slot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::buf::BufPool;

    const K128: u64 = 128 << 10;
    const CAP: u64 = 1 << 30;

    /// Reads `n` sequential 128k commands on `lun` from `start`; returns every chunk created.
    fn stream(ra: &mut ReadAhead, lun: usize, start: u64, n: u64) -> Vec<(usize, u64, u64)> {
        (0..n)
            .flat_map(|i| ra.advance(lun, start + i * K128, K128, CAP))
            .collect()
    }

    /// Completes chunk `slot`'s single read with a buffer of its length.
    fn fill(ra: &mut ReadAhead, pool: &mut BufPool, slot: usize) -> Option<Chunk> {
        let c = ra.chunk_mut(slot).unwrap();
        c.buf = Some(pool.take(c.len as usize));
        c.pending = 0;
        ra.complete(slot)
    }

    #[test]
    fn starts_after_three_sequential_reads_and_keeps_the_depth_ahead() {
        let mut ra = ReadAhead::new(1 << 20);
        assert!(
            stream(&mut ra, 0, 0, 2).is_empty(),
            "two reads are not a stream yet"
        );
        let first = ra.advance(0, 2 * K128, K128, CAP);
        let offsets: Vec<u64> = first.iter().map(|c| c.1).collect();
        assert_eq!(
            offsets,
            (3..3 + INITIAL_CHUNKS)
                .map(|i| i * K128)
                .collect::<Vec<_>>(),
            "a new stream reads INITIAL_CHUNKS requests ahead"
        );
        // The next read tops the depth up by one chunk.
        let next = ra.advance(0, 3 * K128, K128, CAP);
        assert_eq!(next.iter().map(|c| c.1).collect::<Vec<_>>(), [7 * K128]);
        assert_eq!(ra.chunks(), 5);
    }

    #[test]
    fn answers_from_chunks_double_the_depth_up_to_the_window() {
        let mut ra = ReadAhead::new(1 << 20);
        stream(&mut ra, 0, 0, 4); // chunks 3..=7 (depth 4)
        // Read 4 is answered from its chunk: depth 8 requests (the whole 1 MiB window).
        assert!(matches!(ra.lookup(0, 4 * K128, K128), Lookup::InFlight(_)));
        let more = ra.advance(0, 4 * K128, K128, CAP);
        assert_eq!(
            more.iter().map(|c| c.1 / K128).collect::<Vec<_>>(),
            (8..13).collect::<Vec<_>>()
        );
        // Another answer: still the window, one more chunk per read.
        assert!(matches!(ra.lookup(0, 5 * K128, K128), Lookup::InFlight(_)));
        let more = ra.advance(0, 5 * K128, K128, CAP);
        assert_eq!(more.iter().map(|c| c.1 / K128).collect::<Vec<_>>(), [13]);
    }

    #[test]
    fn a_chance_run_among_random_reads_costs_a_few_reads_only() {
        let mut ra = ReadAhead::new(1 << 20);
        let k4 = 4096;
        let mut created = 0;
        for i in 0..1000u64 {
            // Random 4k reads with a run of three in the middle, never answered from chunks.
            let offset = if (500..503).contains(&i) {
                (i - 500 + 77) * k4
            } else {
                (i * 7919 % 100_000 + 1000) * k4
            };
            created += ra.advance(0, offset, k4, CAP).len() as u64;
        }
        assert_eq!(
            created, INITIAL_CHUNKS,
            "not a whole window (up to MAX_CHUNKS) of them"
        );
    }

    #[test]
    fn random_reads_never_read_ahead() {
        let mut ra = ReadAhead::new(1 << 20);
        for i in 0..100u64 {
            let offset = (i * 7919 % 1000) * K128;
            assert!(ra.advance(0, offset, K128, CAP).is_empty());
        }
        assert_eq!(ra.chunks(), 0);
    }

    #[test]
    fn an_exact_match_takes_the_buffer_or_waits_and_other_ranges_miss() {
        let mut pool = BufPool::new();
        let mut ra = ReadAhead::new(1 << 20);
        let chunks = stream(&mut ra, 0, 0, 3);
        let (ready, in_flight) = (chunks[0], chunks[1]);
        assert!(
            fill(&mut ra, &mut pool, ready.0).is_none(),
            "kept for its command"
        );
        assert!(
            matches!(ra.lookup(0, ready.1, K128), Lookup::Ready(b) if b.len() == K128 as usize)
        );
        assert!(
            matches!(ra.lookup(0, ready.1, K128), Lookup::Miss),
            "taken once"
        );
        match ra.lookup(0, in_flight.1, K128) {
            Lookup::InFlight(slot) => assert_eq!(slot, in_flight.0),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ra.lookup(0, in_flight.1, 4096), Lookup::Miss));
        assert!(
            matches!(ra.lookup(1, in_flight.1, K128), Lookup::Miss),
            "other LUN"
        );
        assert!(matches!(
            ra.lookup(0, in_flight.1 + 512, K128),
            Lookup::Miss
        ));
    }

    #[test]
    fn writes_make_overlapping_chunks_stale() {
        let mut pool = BufPool::new();
        let mut ra = ReadAhead::new(1 << 20);
        let chunks = stream(&mut ra, 0, 0, 6); // 3..=6, then one more per read: 7, 8, 9
        for c in &chunks[..4] {
            fill(&mut ra, &mut pool, c.0);
        }
        // A 4k write in the middle of the second chunk, and one ending at the third's start.
        ra.invalidate(0, chunks[1].1 + 8192, 4096);
        ra.invalidate(0, chunks[2].1 - 4096, 4096);
        assert!(matches!(ra.lookup(0, chunks[0].1, K128), Lookup::Ready(_)));
        assert!(matches!(ra.lookup(0, chunks[1].1, K128), Lookup::Miss));
        assert!(matches!(ra.lookup(0, chunks[2].1, K128), Lookup::Ready(_)));
        // A chunk in flight turns stale: never matched again, dropped when its read completes.
        let flying = chunks[5];
        ra.invalidate(0, flying.1, K128);
        assert!(matches!(ra.lookup(0, flying.1, K128), Lookup::Miss));
        assert!(fill(&mut ra, &mut pool, flying.0).is_none());
        assert!(ra.chunk_mut(flying.0).is_none(), "dropped on completion");
        // Another LUN's writes change nothing here.
        ra.invalidate(1, 0, CAP);
        assert!(matches!(ra.lookup(0, chunks[3].1, K128), Lookup::Ready(_)));
    }

    #[test]
    fn a_waiter_gets_the_chunk_even_if_a_later_write_made_it_stale() {
        let mut pool = BufPool::new();
        let mut ra = ReadAhead::new(1 << 20);
        let c = stream(&mut ra, 0, 0, 3)[0];
        let Lookup::InFlight(slot) = ra.lookup(0, c.1, K128) else {
            panic!("in flight")
        };
        ra.chunk_mut(slot).unwrap().waiters.push(42);
        ra.invalidate(0, c.1, 512);
        let done = fill(&mut ra, &mut pool, slot).expect("handed to its waiter");
        assert_eq!(done.waiters.as_slice(), [42]);
        assert!(done.buf.is_some() && !done.error);
        assert_eq!(ra.chunks() as u64, INITIAL_CHUNKS - 1);
    }

    #[test]
    fn memory_is_bounded_and_old_streams_give_way() {
        let mut pool = BufPool::new();
        let mut ra = ReadAhead::new(16 << 20);
        // One stream of 1 MiB reads, each answered from its chunk from the fourth on, deepens
        // until it fills the shard's byte budget...
        let mut big = Vec::new();
        for i in 0..8u64 {
            if i >= 3 {
                assert!(matches!(
                    ra.lookup(0, i << 20, 1 << 20),
                    Lookup::InFlight(_)
                ));
            }
            big.extend(ra.advance(0, i << 20, 1 << 20, CAP));
        }
        assert_eq!(ra.chunks(), (MAX_BYTES >> 20) as usize);
        for c in &big {
            fill(&mut ra, &mut pool, c.0);
        }
        // ...and a new stream on another LUN evicts its ready chunks to get room.
        let other: Vec<_> = (0..3)
            .flat_map(|i| ra.advance(1, i * K128, K128, CAP))
            .collect();
        assert!(!other.is_empty());
        assert!(ra.bytes <= MAX_BYTES && ra.live <= MAX_CHUNKS);
        // Requests over MAX_REQUEST are left alone.
        assert!(
            (0..4)
                .flat_map(|i| ra.advance(2, i * (2 << 20), 2 << 20, CAP))
                .next()
                .is_none()
        );
    }

    #[test]
    fn stops_at_the_end_of_the_lun_and_forgets_a_removed_one() {
        let mut ra = ReadAhead::new(1 << 20);
        let cap = 5 * K128;
        let chunks: Vec<_> = (0..3)
            .flat_map(|i| ra.advance(0, i * K128, K128, cap))
            .collect();
        assert_eq!(
            chunks.iter().map(|c| c.1).collect::<Vec<_>>(),
            [3 * K128, 4 * K128]
        );
        ra.forget_lun(0);
        assert!(matches!(ra.lookup(0, 3 * K128, K128), Lookup::Miss));
        assert!(ra.streams[0].is_empty());
    }

    #[test]
    fn off_when_the_window_is_zero() {
        let mut ra = ReadAhead::new(0);
        assert!(stream(&mut ra, 0, 0, 10).is_empty());
    }
}
