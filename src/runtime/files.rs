//! A shard's own open file descriptions of the files its volumes' data live in.
//!
//! Every volume of a pool shares one data-store `File`. Each read or write through a shared
//! descriptor takes and drops a reference on the one kernel `struct file` behind it (io_uring's
//! `fget`, `pread`'s `fdget` in a multi-threaded process): an atomic on a cache line that every
//! shard's core would then bounce between them, once per I/O. A shard instead reopens each data
//! file once (`/proc/self/fd/N`, same access mode and O_DIRECT) and does its transfers through
//! its own description, which no other core touches. When the shard's ring has a file table
//! ([`OwnFiles::enable_fixed`]), each own description also gets a slot in it, and the ring's
//! transfers name the slot (`IOSQE_FIXED_FILE`): no descriptor lookup and no reference count per
//! I/O at all.
//!
//! Invariants: the map is cleared whenever a LUN is added or removed, the only times a volume (and
//! so a descriptor the map was built from) can be dropped, so a descriptor number reused for
//! another file is never translated to the old one. The descriptions it held stay open, and their
//! slots filled, until [`OwnFiles::release_retired`], which the shard calls once its submission
//! queue is empty: an SQE already queued with one of their numbers or slots is resolved by the
//! kernel at submission (and holds its own reference from then on).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// How the shard names a data file: a descriptor (for plain system calls), and its slot in the
/// ring's file table when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnFile {
    pub fd: RawFd,
    pub fixed: Option<u32>,
}

/// One translation: the shared descriptor, this shard's own description (None: reopening
/// failed, the shared one is used) and its fixed slot.
#[derive(Debug)]
struct Entry {
    shared: RawFd,
    own: Option<File>,
    fixed: Option<u32>,
}

impl Entry {
    fn file(&self) -> OwnFile {
        OwnFile {
            fd: self.own.as_ref().map_or(self.shared, File::as_raw_fd),
            fixed: self.fixed,
        }
    }
}

/// Shared descriptor → this shard's own (or the shared one when reopening failed).
#[derive(Debug, Default)]
pub struct OwnFiles {
    map: Vec<Entry>,
    /// Taken out of the map, closed (and their slots emptied) by [`OwnFiles::release_retired`].
    retired: Vec<Entry>,
    /// Free slots of the ring's file table (none: no table).
    free_slots: Vec<u32>,
}

impl OwnFiles {
    /// Own descriptions may take slots `0..slots` of the ring's (sparse) file table.
    pub fn enable_fixed(&mut self, slots: u32) {
        self.free_slots = (0..slots).rev().collect();
    }

    /// How this shard names `fd`; on first use reopens it and puts the new description in a
    /// free slot with `register(slot, own_fd)` (a failure leaves it without one).
    pub fn get(
        &mut self,
        fd: RawFd,
        register: impl FnOnce(u32, RawFd) -> io::Result<()>,
    ) -> OwnFile {
        if let Some(entry) = self.map.iter().find(|e| e.shared == fd) {
            return entry.file();
        }
        let own = reopen(fd);
        let fixed = match (&own, self.free_slots.last().copied()) {
            (Some(file), Some(slot)) if register(slot, file.as_raw_fd()).is_ok() => {
                self.free_slots.pop();
                Some(slot)
            }
            _ => None,
        };
        let entry = Entry {
            shared: fd,
            own,
            fixed,
        };
        let file = entry.file();
        self.map.push(entry);
        file
    }

    /// Forgets every translation (a LUN was added or removed); the descriptions stay open and
    /// in their slots until [`OwnFiles::release_retired`].
    pub fn clear(&mut self) {
        self.retired.append(&mut self.map);
    }

    /// Whether [`OwnFiles::release_retired`] has anything to do.
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Empties the retired descriptions' slots with `unregister(slot)` and closes them. Call
    /// only when no queued SQE can still name them (the submission queue is empty).
    pub fn release_retired(&mut self, mut unregister: impl FnMut(u32)) {
        for entry in self.retired.drain(..) {
            if let Some(slot) = entry.fixed {
                unregister(slot);
                self.free_slots.push(slot);
            }
        }
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
        let own = files.get(shared.as_raw_fd(), no_table).fd;
        assert_ne!(own, shared.as_raw_fd(), "a description of its own");
        assert_eq!(
            files.get(shared.as_raw_fd(), no_table).fd,
            own,
            "opened once"
        );
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
        let fresh = files.get(shared.as_raw_fd(), no_table).fd;
        assert!(fresh != shared.as_raw_fd() && fresh != own);
        assert_eq!(files.retired.len(), 1);
        files.release_retired(|_| panic!("no slot was filled"));
        assert!(files.retired.is_empty());
    }

    fn no_table(_: u32, _: RawFd) -> io::Result<()> {
        panic!("no file table enabled")
    }

    #[test]
    fn a_bad_descriptor_is_passed_through() {
        let mut files = OwnFiles::default();
        files.enable_fixed(4);
        let file = files.get(-1, |_, _| panic!("nothing to register"));
        assert_eq!(
            file,
            OwnFile {
                fd: -1,
                fixed: None
            }
        );
    }

    #[test]
    fn own_descriptions_take_fixed_slots_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let (a, b, c) = (open("a"), open("b"), open("c"));
        let mut files = OwnFiles::default();
        files.enable_fixed(2);
        let mut table: Vec<(u32, RawFd)> = Vec::new();
        let mut get = |files: &mut OwnFiles, f: &File| {
            files.get(f.as_raw_fd(), |slot, fd| {
                table.push((slot, fd));
                Ok(())
            })
        };
        let fa = get(&mut files, &a);
        let fb = get(&mut files, &b);
        let fc = get(&mut files, &c);
        assert_eq!(
            (fa.fixed, fb.fixed, fc.fixed),
            (Some(0), Some(1), None),
            "two slots"
        );
        assert_eq!(get(&mut files, &a), fa, "registered once");
        assert_eq!(table, vec![(0, fa.fd), (1, fb.fd)]);
        // A failed registration leaves the description usable without a slot.
        files.clear();
        files.release_retired(|_| {});
        let failed = files.get(c.as_raw_fd(), |_, _| {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        });
        assert_eq!(failed.fixed, None);
        assert_ne!(failed.fd, c.as_raw_fd());
        // Retired slots are emptied only on release, and then reused.
        let fa2 = files.get(a.as_raw_fd(), |_, _| Ok(()));
        assert!(fa2.fixed.is_some());
        files.clear();
        assert!(files.has_retired());
        let mut emptied = Vec::new();
        files.release_retired(|slot| emptied.push(slot));
        assert_eq!(emptied, vec![fa2.fixed.unwrap()]);
        assert_eq!(files.free_slots.len(), 2);
    }
}
