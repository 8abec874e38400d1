//! A shard's own open file descriptions of the files its volumes' data live in.
//!
//! Every volume of a pool shares one data-store `File`. Each read or write through a shared
//! descriptor takes and drops a reference on the one kernel `struct file` behind it (io_uring's
//! `fget`, `pread`'s `fdget` in a multi-threaded process): an atomic on a cache line that every
//! shard's core would then bounce between them, once per I/O. A shard instead reopens each data
//! file once (`/proc/self/fd/N`, same access mode and O_DIRECT) and does its transfers through
//! its own description, which no other core touches.
//!
//! Invariants: the map is cleared whenever a LUN is added or removed, the only times a volume (and
//! so a descriptor the map was built from) can be dropped, so a descriptor number reused for
//! another file is never translated to the old one. The descriptions it held stay open until
//! [`OwnFiles::release_retired`], which the shard calls once its submission queue is empty: an
//! SQE already queued with one of their numbers is resolved by the kernel at submission.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Shared descriptor → this shard's own (or the shared one when reopening failed).
#[derive(Debug, Default)]
pub struct OwnFiles {
    map: Vec<(RawFd, Option<File>)>,
    /// Taken out of the map, closed by [`OwnFiles::release_retired`].
    retired: Vec<File>,
}

impl OwnFiles {
    /// The descriptor this shard uses for `fd`.
    pub fn get(&mut self, fd: RawFd) -> RawFd {
        if let Some((_, own)) = self.map.iter().find(|(shared, _)| *shared == fd) {
            return own.as_ref().map_or(fd, File::as_raw_fd);
        }
        let own = reopen(fd);
        let raw = own.as_ref().map_or(fd, File::as_raw_fd);
        self.map.push((fd, own));
        raw
    }

    /// Forgets every translation (a LUN was added or removed); the descriptions stay open until
    /// [`OwnFiles::release_retired`].
    pub fn clear(&mut self) {
        self.retired
            .extend(self.map.drain(..).filter_map(|(_, own)| own));
    }

    /// Closes the descriptions [`OwnFiles::clear`] retired. Call only when no queued SQE can
    /// still name them (the submission queue is empty).
    pub fn release_retired(&mut self) {
        self.retired.clear();
    }
}

/// A new open file description of the file behind `fd`, with its access mode and O_DIRECT;
/// None if that fails (the shared descriptor is used then).
fn reopen(fd: RawFd) -> Option<File> {
    // SAFETY: F_GETFL on a descriptor only reads its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return None;
    }
    let access = flags & libc::O_ACCMODE;
    let mut opts = OpenOptions::new();
    opts.read(access == libc::O_RDONLY || access == libc::O_RDWR)
        .write(access == libc::O_WRONLY || access == libc::O_RDWR)
        .custom_flags(flags & libc::O_DIRECT);
    // /proc/self/fd/N names the open file itself (even renamed or unlinked): the same inode.
    opts.open(format!("/proc/self/fd/{fd}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn own_descriptor_reads_and_writes_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let shared = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        shared.write_all_at(b"shared", 0).unwrap();
        let mut files = OwnFiles::default();
        let own = files.get(shared.as_raw_fd());
        assert_ne!(own, shared.as_raw_fd(), "a description of its own");
        assert_eq!(files.get(shared.as_raw_fd()), own, "opened once");
        let mut buf = [0u8; 6];
        // SAFETY: `buf` is valid for 6 bytes; `own` is open while `files` lives.
        let n = unsafe { libc::pread(own, buf.as_mut_ptr().cast(), 6, 0) };
        assert_eq!((n, &buf), (6, b"shared"));
        // SAFETY: as above, reading from `buf`.
        let n = unsafe { libc::pwrite(own, b"own!".as_ptr().cast(), 4, 6) };
        assert_eq!(n, 4);
        let mut back = [0u8; 10];
        shared.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"sharedown!");
        files.clear();
        // Retired, not closed: a queued SQE may still name it.
        // SAFETY: as above.
        let n = unsafe { libc::pread(own, buf.as_mut_ptr().cast(), 6, 0) };
        assert_eq!(n, 6);
        let fresh = files.get(shared.as_raw_fd());
        assert!(fresh != shared.as_raw_fd() && fresh != own);
        assert_eq!(files.retired.len(), 1);
        files.release_retired();
        assert!(files.retired.is_empty());
    }

    #[test]
    fn a_bad_descriptor_is_passed_through() {
        let mut files = OwnFiles::default();
        assert_eq!(files.get(-1), -1);
    }
}
