//! Per-target state kept across a restart, one small JSON file per exported target and kind of
//! record under the data directory: `<data>/reservations/<target>.json` (the persistent
//! reservations registered with APTPL, a [`crate::scsi::pr::PrRecord`]) and
//! `<data>/sanitize/<target>.json` (a sanitize operation in progress or failed, a
//! [`crate::scsi::lun::SanitizeState`]).
//!
//! Written by the shard that serves the target (its only writer while it is served) before the
//! status of the command that changed the state goes out, with [`super::replace_file`]: a crash
//! leaves the old record or the new one, never a torn one. Read by the control thread when it
//! serves the target again, which also copies them along a rename and drops them with the
//! volume. A file that cannot be read is an error, not an empty state: a cluster's reservation
//! must not silently disappear, nor an erase the initiator was told had started.

use serde::{Serialize, de::DeserializeOwned};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors reading or writing a record file.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is not a record.
    #[error("{path}: not a valid record: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A kind of per-target record: the directory, under the data directory, holding one file per
/// target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKind(&'static str);

/// Persistent reservations registered with APTPL.
pub const RESERVATIONS: RecordKind = RecordKind("reservations");
/// A sanitize operation in progress (resumed at the next start) or failed.
pub const SANITIZE: RecordKind = RecordKind("sanitize");
/// Every kind, for what concerns them all (a rename, a delete, orphans).
pub const ALL_KINDS: [RecordKind; 2] = [RESERVATIONS, SANITIZE];

impl RecordKind {
    /// The directory of these records under data directory `data`.
    pub fn dir(self, data: &Path) -> PathBuf {
        data.join(self.0)
    }

    /// The file of target `target` under data directory `data`. Characters of the name other
    /// than ASCII letters, digits, `.`, `-` and `_` are written `%XX` (IQNs hold `:`), so two
    /// targets never share a file.
    pub fn path(self, data: &Path, target: &str) -> PathBuf {
        let mut name = String::with_capacity(target.len() + 8);
        for b in target.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                name.push(char::from(b));
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        self.dir(data).join(format!("{name}.json"))
    }

    /// Creates the directory when missing, durably (the data directory synced), once at start:
    /// [`save`] then only replaces files in it, off any directory creation.
    pub fn prepare(self, data: &Path) -> Result<(), RecordError> {
        let dir = self.dir(data);
        let io = |source| RecordError::Io {
            path: dir.clone(),
            source,
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            super::sync_dir(data).map_err(io)?;
        }
        Ok(())
    }

    /// Removes the records of this kind (and the temporary files of interrupted writes) whose
    /// path `keep` refuses, durably: records of targets that no longer exist, which a new
    /// target of the same name must not inherit. Returns the paths removed. Other files are
    /// left alone.
    pub fn retain(
        self,
        data: &Path,
        keep: impl Fn(&Path) -> bool,
    ) -> Result<Vec<PathBuf>, RecordError> {
        let dir = self.dir(data);
        let io = |path: &Path, source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, e)),
        };
        let mut removed = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ours = name.ends_with(".json") || name.ends_with(".json.tmp");
            if ours && (name.ends_with(".tmp") || !keep(&path)) {
                std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            super::sync_dir(&dir).map_err(|e| io(&dir, e))?;
        }
        Ok(removed)
    }
}

/// Makes the record at `to` a copy of the one at `from`, durably: a renamed target keeps its
/// state. With no record at `from`, removes any at `to`. The one at `from` stays until the
/// caller removes it, so a crash in between leaves a record for each name and
/// [`RecordKind::retain`] drops the one whose target no longer exists at the next start.
pub fn copy(from: &Path, to: &Path) -> Result<(), RecordError> {
    match read_if_present(from)? {
        Some(bytes) => super::replace_file(to, &bytes).map_err(|source| RecordError::Io {
            path: to.to_path_buf(),
            source,
        }),
        None => remove(to),
    }
}

/// Stores `record` at `path` (in a directory [`RecordKind::prepare`] made), durably.
pub fn save<T: Serialize>(path: &Path, record: &T) -> Result<(), RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(record).map_err(|e| io(io::Error::other(e)))?;
    super::replace_file(path, &text).map_err(io)
}

/// Removes the record at `path`, if any, durably: the directory is synced even when the file
/// is already gone, since an earlier removal whose sync failed may not be durable yet.
pub fn remove(path: &Path) -> Result<(), RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    match path.parent().map(super::sync_dir) {
        Some(Err(e)) if e.kind() != io::ErrorKind::NotFound => Err(io(e)),
        _ => Ok(()),
    }
}

/// The record at `path`; `None` when there is none.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RecordError> {
    let Some(text) = read_if_present(path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| RecordError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The bytes of the file at `path`; `None` when there is none.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, RecordError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::pr::{PrRecord, PrRecordKey, PrRecordReservation};

    fn load_pr(path: &Path) -> Result<Option<PrRecord>, RecordError> {
        load(path)
    }

    fn record() -> PrRecord {
        PrRecord {
            generation: 3,
            registrations: vec![PrRecordKey {
                port: "iqn.2026-11.test:a,i,0x000000000001".into(),
                key: 0xA1,
            }],
            reservation: Some(PrRecordReservation {
                holder: Some("iqn.2026-11.test:a,i,0x000000000001".into()),
                kind: 1,
            }),
        }
    }

    #[test]
    fn saved_records_load_back_and_removal_leaves_none() {
        let dir = tempfile::tempdir().unwrap();
        RESERVATIONS.prepare(dir.path()).unwrap();
        let p = RESERVATIONS.path(dir.path(), "iqn.2026-11.dev.shoal:vol-1");
        assert_eq!(
            p,
            dir.path()
                .join("reservations/iqn.2026-11.dev.shoal%3Avol-1.json")
        );
        assert_ne!(
            RESERVATIONS.path(dir.path(), "a:b"),
            RESERVATIONS.path(dir.path(), "a_b")
        );
        assert_eq!(
            SANITIZE.path(dir.path(), "t:x"),
            dir.path().join("sanitize/t%3Ax.json"),
            "each kind in its own directory"
        );
        assert!(load_pr(&p).unwrap().is_none());
        save(&p, &record()).unwrap();
        assert_eq!(load_pr(&p).unwrap(), Some(record()));
        let mut changed = record();
        changed.reservation = None;
        save(&p, &changed).unwrap();
        assert_eq!(load_pr(&p).unwrap(), Some(changed));
        remove(&p).unwrap();
        assert!(load_pr(&p).unwrap().is_none());
        remove(&p).unwrap();
    }

    #[test]
    fn copies_follow_a_rename_and_retain_removes_records_of_missing_targets() {
        let dir = tempfile::tempdir().unwrap();
        RESERVATIONS.prepare(dir.path()).unwrap();
        let (old, new, other) = (
            RESERVATIONS.path(dir.path(), "t:old"),
            RESERVATIONS.path(dir.path(), "t:new"),
            RESERVATIONS.path(dir.path(), "t:other"),
        );
        save(&old, &record()).unwrap();
        save(&other, &record()).unwrap();
        copy(&old, &new).unwrap();
        assert_eq!(load_pr(&new).unwrap(), Some(record()));
        assert_eq!(load_pr(&old).unwrap(), Some(record()), "the source stays");
        // No record to copy: a stale one at the destination goes.
        copy(&RESERVATIONS.path(dir.path(), "t:none"), &new).unwrap();
        assert!(load_pr(&new).unwrap().is_none());
        // A leftover temporary file and a record of a gone target are removed; the kept record
        // and files that are not ours stay.
        let tmp = dir.path().join("reservations/t%3Aold.json.tmp");
        std::fs::write(&tmp, b"{").unwrap();
        let readme = dir.path().join("reservations/README");
        std::fs::write(&readme, b"mine").unwrap();
        let mut removed = RESERVATIONS.retain(dir.path(), |p| p == other).unwrap();
        removed.sort();
        assert_eq!(removed, vec![old.clone(), tmp.clone()]);
        assert!(load_pr(&old).unwrap().is_none() && !tmp.exists());
        assert_eq!(load_pr(&other).unwrap(), Some(record()));
        assert!(readme.exists());
        assert!(
            RESERVATIONS
                .retain(dir.path(), |p| p == other)
                .unwrap()
                .is_empty()
        );
        // No directory at all: nothing to do.
        assert!(
            RESERVATIONS
                .retain(&dir.path().join("absent"), |_| false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        RESERVATIONS.prepare(dir.path()).unwrap();
        let p = RESERVATIONS.path(dir.path(), "t");
        save(&p, &record()).unwrap();
        std::fs::write(&p, b"{\"generation\": 3, \"registra").unwrap();
        let e = load_pr(&p).unwrap_err();
        assert!(matches!(e, RecordError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("t.json"), "{e}");
    }
}
