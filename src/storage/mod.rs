//! Storage behind the SCSI layer's seam: where the bytes of a volume live.
//!
//! The shard asks a [`Volume`] to *map* a logical byte range to physical pieces ([`Piece`]),
//! then performs the I/O itself on its io_uring (O_DIRECT). Today's backend is one preallocated
//! file per volume, so the map is the identity; the thin pool replaces this module's internals
//! (extent maps, allocation, copy-on-write) behind the same calls.
//!
//! Invariants: every piece is block-aligned and inside the backing file; a `Zero` piece is read
//! as zeros without I/O.

pub mod file;

pub use file::FileVolume;

use std::os::fd::RawFd;
use thiserror::Error;

/// Errors of the storage layer.
#[derive(Debug, Error)]
pub enum StorageError {
    /// An operating-system error on a backing file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A volume parameter is invalid.
    #[error("invalid volume {name}: {reason}")]
    InvalidVolume {
        /// Volume name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No space left for the write.
    #[error("no space left in the pool")]
    NoSpace,
}

/// One physical piece of a logical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes at `offset` of file `fd`.
    File {
        /// The backing file descriptor (opened O_DIRECT).
        fd: RawFd,
        /// Byte offset in that file.
        offset: u64,
        /// Byte count.
        len: u64,
    },
    /// `len` bytes that read as zeros (unallocated).
    Zero {
        /// Byte count.
        len: u64,
    },
}

/// The storage seam the shard uses for one volume.
pub trait Volume {
    /// Capacity in bytes.
    fn capacity(&self) -> u64;
    /// Logical block size in bytes.
    fn block_size(&self) -> u32;
    /// Physical pieces to read for `len` bytes at `offset` (inside the capacity), appended to
    /// `out` in logical order.
    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<Piece>);
    /// Physical pieces to write for `len` bytes at `offset`, allocating as needed.
    fn map_write(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<Piece>,
    ) -> Result<(), StorageError>;
    /// File descriptors to `fdatasync` to make acknowledged writes durable.
    fn sync_fds(&self) -> Vec<RawFd>;
}
