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
pub mod pool;
pub mod records;

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

/// One piece of a write plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePiece {
    /// Write `len` bytes of the command's data, starting `data_at` bytes into it, to `offset` of
    /// `fd`: the extent is owned exclusively, so it is overwritten in place.
    InPlace {
        /// Backing file.
        fd: RawFd,
        /// Byte offset in it.
        offset: u64,
        /// Byte count.
        len: u64,
        /// Offset of these bytes in the command's Data-Out.
        data_at: u64,
    },
    /// A first write to an unmapped extent, or a copy-on-write of a shared one: see
    /// [`NewExtent`].
    NewExtent(NewExtent),
}

/// Building a new physical extent for one logical extent: start from zeros (unmapped) or from
/// the old extent's bytes (`copy_from`, copy-on-write), lay the command's bytes over it, write
/// the whole extent at `offset`, then [`Volume::commit_extent`] switches the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewExtent {
    /// Logical extent number.
    pub lext: u64,
    /// The freshly allocated physical extent.
    pub pext: u64,
    /// Backing file of the data store.
    pub fd: RawFd,
    /// Byte offset of the new extent in it.
    pub offset: u64,
    /// Extent size in bytes.
    pub extent_len: u64,
    /// Byte offset of the old extent to copy, when the logical extent was mapped (shared).
    pub copy_from: Option<u64>,
    /// Where the command's bytes start inside the extent.
    pub within: u64,
    /// How many of the command's bytes land in this extent.
    pub len: u64,
    /// Offset of these bytes in the command's Data-Out.
    pub data_at: u64,
}

/// Why a write cannot be planned now.
#[derive(Debug, Error)]
pub enum PlanError {
    /// A logical extent it touches is being copied by another write: retry once that one
    /// commits (writes to one extent are serialised while it is re-mapped).
    #[error("extent busy with a copy-on-write in flight")]
    Busy,
    /// The pool has no free extent.
    #[error("no space left in the pool")]
    NoSpace,
    /// The volume is read-only (an exported snapshot).
    #[error("read-only volume")]
    ReadOnly,
    /// The volume cannot write atomically (its logical unit does not offer WRITE ATOMIC).
    #[error("atomic writes are not supported by this volume")]
    NotAtomic,
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
    /// Plans a write of `len` bytes at `offset`, appending its pieces in logical order. New
    /// extents are allocated and their logical extents marked busy until committed or aborted;
    /// on error nothing stays allocated or marked.
    fn plan_write(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<WritePiece>,
    ) -> Result<(), PlanError>;
    /// Switches a logical extent to its new physical extent once the data is written (and
    /// records the change durably enough for an acknowledgement: it survives `kill -9`).
    fn commit_extent(&mut self, ext: &NewExtent) -> Result<(), StorageError>;
    /// Gives back a planned extent whose write failed.
    fn abort_extent(&mut self, ext: &NewExtent);

    /// Plans a write that lands whole or not at all (WRITE ATOMIC): every extent it touches
    /// gets a `NewExtent`, even one the volume owns alone, so nothing is written in place, and
    /// [`Volume::commit_atomic`] switches them together. A volume that cannot refuses.
    fn plan_atomic_write(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<WritePiece>,
    ) -> Result<(), PlanError> {
        let _ = (offset, len, out);
        Err(PlanError::NotAtomic)
    }

    /// Switches every extent of an atomic plan to its new physical extent at once (one journal
    /// record), once all their data is written.
    fn commit_atomic(&mut self, exts: &[NewExtent]) -> Result<(), StorageError> {
        exts.iter().try_for_each(|e| self.commit_extent(e))
    }
    /// File descriptors to `fdatasync` so that acknowledged writes and the mappings they depend
    /// on survive power loss (data store and metadata journal).
    fn sync_fds(&self, out: &mut Vec<RawFd>);
    /// File descriptors to `fdatasync` so that the mappings recorded so far survive power loss
    /// (the metadata journal alone: what a snapshot depends on). Default: [`Volume::sync_fds`].
    fn metadata_fds(&self, out: &mut Vec<RawFd>) {
        self.sync_fds(out);
    }
    /// Whether the data lives in memory (tmpfs): transfers are then plain copies that never
    /// wait for a device, and the shard does them inline rather than on its ring.
    fn data_in_memory(&self) -> bool {
        false
    }
    /// The thin volume behind this seam, for control operations (snapshot, resize, removal).
    fn as_thin(&mut self) -> Option<&mut pool::thin::ThinVolume> {
        None
    }
}

/// Whether `file` lives on a memory file system (tmpfs, ramfs): reading and writing it copies
/// memory and never waits for a device (see [`Volume::data_in_memory`]).
pub fn in_memory_fs(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: an all-zero statfs is a valid out-parameter; fstatfs writes it on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid pointer to `st`.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// Replaces the file at `path` with `bytes` durably: written to `<path>.tmp`, fsynced, renamed
/// over `path`, then the directory fsynced. A crash leaves the old contents or the new ones. The
/// file is readable by its owner only (0600): some hold secrets (per-volume CHAP).
pub fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Makes the entries of directory `dir` (a rename, a removal) durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}
