//! One O_DIRECT file per volume (`<data>/volumes/<name>.img`), preallocated to the volume size.
//!
//! The map is the identity. Data written with O_DIRECT is in the file (page cache bypassed) when
//! its completion arrives, so it survives `kill -9`; FUA and SYNCHRONIZE CACHE add `fdatasync`
//! (or RWF_DSYNC) for power loss.

use super::{NewExtent, Piece, PlanError, StorageError, Volume, WritePiece};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A volume stored in one file.
#[derive(Debug)]
pub struct FileVolume {
    file: File,
    path: PathBuf,
    capacity: u64,
    block_size: u32,
    /// On tmpfs (see [`Volume::data_in_memory`]).
    in_memory: bool,
}

impl FileVolume {
    /// Opens (creating or growing as needed) the file at `path` for a volume of `capacity` bytes.
    /// Set `direct` for O_DIRECT (tests on filesystems without it may clear it).
    pub fn open(
        path: &Path,
        capacity: u64,
        block_size: u32,
        direct: bool,
    ) -> Result<Self, StorageError> {
        let io = |what, source| StorageError::Io {
            what,
            path: path.display().to_string(),
            source,
        };
        if capacity == 0 || capacity % u64::from(block_size) != 0 {
            return Err(StorageError::InvalidVolume {
                name: path.display().to_string(),
                reason: format!("size {capacity} is not a positive multiple of {block_size}"),
            });
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("stat", e))?.len();
        if len < capacity {
            file.set_len(capacity).map_err(|e| io("resize", e))?;
        }
        Ok(FileVolume {
            in_memory: super::in_memory_fs(&file),
            file,
            path: path.to_path_buf(),
            capacity,
            block_size,
        })
    }

    /// The backing file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Volume for FileVolume {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn map_read(&self, offset: u64, len: u64, out: &mut Vec<Piece>) {
        out.push(Piece::File {
            fd: self.file.as_raw_fd(),
            offset,
            len,
        });
    }

    fn plan_write(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<WritePiece>,
    ) -> Result<(), PlanError> {
        out.push(WritePiece::InPlace {
            fd: self.file.as_raw_fd(),
            offset,
            len,
            data_at: 0,
        });
        Ok(())
    }

    fn commit_extent(&mut self, _ext: &NewExtent) -> Result<(), StorageError> {
        // A file volume never plans new extents.
        Ok(())
    }

    fn abort_extent(&mut self, _ext: &NewExtent) {}

    fn sync_fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.file.as_raw_fd());
    }

    fn data_in_memory(&self) -> bool {
        self.in_memory
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_creates_file_of_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        let v = FileVolume::open(&path, 1 << 20, 512, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        let mut pieces = Vec::new();
        v.map_read(4096, 512, &mut pieces);
        assert!(matches!(
            pieces[0],
            Piece::File {
                offset: 4096,
                len: 512,
                ..
            }
        ));
    }

    #[test]
    fn open_rejects_unaligned_size() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileVolume::open(&dir.path().join("v.img"), 1000, 512, false).unwrap_err();
        assert!(err.to_string().contains("not a positive multiple"));
    }
}
