//! Persistent reservations kept across a restart (APTPL): one small JSON file per exported
//! target, `<data>/reservations/<target>.json`, holding a [`PrRecord`].
//!
//! Written by the shard that serves the target (its only writer) before the status of the
//! PERSISTENT RESERVE OUT that changed the state goes out, with [`super::replace_file`]: a crash
//! leaves the old record or the new one, never a torn one. Read by the control thread when it
//! serves the target again. A file that cannot be read is an error, not an empty state: a
//! cluster's reservation must not silently disappear.

use crate::scsi::pr::PrRecord;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors reading or writing a reservations file.
#[derive(Debug, Error)]
pub enum ReservationsError {
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
    #[error("{path}: not a reservations record: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The file of target `target` under data directory `data`. Characters of the name other than
/// ASCII letters, digits, `.`, `-` and `_` are written `%XX` (IQNs hold `:`), so two targets
/// never share a file.
pub fn path(data: &Path, target: &str) -> PathBuf {
    let mut name = String::with_capacity(target.len() + 8);
    for b in target.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    data.join("reservations").join(format!("{name}.json"))
}

/// Creates `<data>/reservations` when missing, durably (the data directory synced), once at
/// start: [`save`] then only replaces files in it, off any directory creation.
pub fn prepare(data: &Path) -> Result<(), ReservationsError> {
    let dir = data.join("reservations");
    let io = |source| ReservationsError::Io {
        path: dir.clone(),
        source,
    };
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).map_err(io)?;
        super::sync_dir(data).map_err(io)?;
    }
    Ok(())
}

/// Makes the record at `to` a copy of the one at `from`, durably: a renamed target keeps its
/// reservations. With no record at `from`, removes any at `to`. The one at `from` stays until
/// the caller removes it, so a crash in between leaves a record for each name and [`retain`]
/// drops the one whose target no longer exists at the next start.
pub fn copy(from: &Path, to: &Path) -> Result<(), ReservationsError> {
    let bytes = match std::fs::read(from) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return remove(to),
        Err(source) => {
            return Err(ReservationsError::Io {
                path: from.to_path_buf(),
                source,
            });
        }
    };
    super::replace_file(to, &bytes).map_err(|source| ReservationsError::Io {
        path: to.to_path_buf(),
        source,
    })
}

/// Removes the records in `<data>/reservations` (and the temporary files of interrupted
/// writes) whose path `keep` refuses, durably: records of targets that no longer exist, which a
/// new target of the same name must not inherit. Returns the paths removed. Other files are
/// left alone.
pub fn retain(
    data: &Path,
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, ReservationsError> {
    let dir = data.join("reservations");
    let io = |path: &Path, source| ReservationsError::Io {
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

/// Stores `record` at `path` (in a directory [`prepare`] made), durably.
pub fn save(path: &Path, record: &PrRecord) -> Result<(), ReservationsError> {
    let io = |source| ReservationsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = serde_json::to_vec_pretty(record).map_err(|e| io(io::Error::other(e)))?;
    super::replace_file(path, &text).map_err(io)
}

/// Removes the record at `path`, if any, durably.
pub fn remove(path: &Path) -> Result<(), ReservationsError> {
    let io = |source| ReservationsError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    match path.parent() {
        Some(dir) => super::sync_dir(dir).map_err(io),
        None => Ok(()),
    }
}

/// The record at `path`; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<PrRecord>, ReservationsError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReservationsError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ReservationsError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::pr::{PrRecordKey, PrRecordReservation};

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
        prepare(dir.path()).unwrap();
        let p = path(dir.path(), "iqn.2026-11.dev.shoal:vol-1");
        assert_eq!(
            p,
            dir.path()
                .join("reservations/iqn.2026-11.dev.shoal%3Avol-1.json")
        );
        assert_ne!(path(dir.path(), "a:b"), path(dir.path(), "a_b"));
        assert!(load(&p).unwrap().is_none());
        save(&p, &record()).unwrap();
        assert_eq!(load(&p).unwrap(), Some(record()));
        let mut changed = record();
        changed.reservation = None;
        save(&p, &changed).unwrap();
        assert_eq!(load(&p).unwrap(), Some(changed));
        remove(&p).unwrap();
        assert!(load(&p).unwrap().is_none());
        remove(&p).unwrap();
    }

    #[test]
    fn copies_follow_a_rename_and_retain_removes_records_of_missing_targets() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        let (old, new, other) = (
            path(dir.path(), "t:old"),
            path(dir.path(), "t:new"),
            path(dir.path(), "t:other"),
        );
        save(&old, &record()).unwrap();
        save(&other, &record()).unwrap();
        copy(&old, &new).unwrap();
        assert_eq!(load(&new).unwrap(), Some(record()));
        assert_eq!(load(&old).unwrap(), Some(record()), "the source stays");
        // No record to copy: a stale one at the destination goes.
        copy(&path(dir.path(), "t:none"), &new).unwrap();
        assert!(load(&new).unwrap().is_none());
        // A leftover temporary file and a record of a gone target are removed; the kept record
        // and files that are not ours stay.
        let tmp = dir.path().join("reservations/t%3Aold.json.tmp");
        std::fs::write(&tmp, b"{").unwrap();
        let readme = dir.path().join("reservations/README");
        std::fs::write(&readme, b"mine").unwrap();
        let mut removed = retain(dir.path(), |p| p == other).unwrap();
        removed.sort();
        assert_eq!(removed, vec![old.clone(), tmp.clone()]);
        assert!(load(&old).unwrap().is_none() && !tmp.exists());
        assert_eq!(load(&other).unwrap(), Some(record()));
        assert!(readme.exists());
        assert!(retain(dir.path(), |p| p == other).unwrap().is_empty());
        // No directory at all: nothing to do.
        assert!(
            retain(&dir.path().join("absent"), |_| false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path()).unwrap();
        let p = path(dir.path(), "t");
        save(&p, &record()).unwrap();
        std::fs::write(&p, b"{\"generation\": 3, \"registra").unwrap();
        let e = load(&p).unwrap_err();
        assert!(matches!(e, ReservationsError::Parse { .. }), "{e}");
        assert!(e.to_string().contains("t.json"), "{e}");
    }
}
