//! Initiator access lists: which initiators may log in to a volume's target (LUN masking).
//!
//! A volume without a list (or with an empty one) is open to every initiator that passes
//! authentication, as before lists existed. An exported snapshot (`volume@snap`) has its
//! volume's list. A list names initiators by iSCSI name; logins from
//! others fail with 0202 (authorization failure) and discovery does not show them the target.
//! A change applies at once: the control plane closes the sessions of initiators a new list
//! leaves out.
//!
//! The lists live in `<data>/access.json`, written whole on every change (a temporary file,
//! fsynced, renamed over the old one, then the directory fsynced), so a crash leaves the old or
//! the new lists, never a mix. Invariant: every stored name is a valid iSCSI name and no list is
//! empty (an emptied list is removed).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the lists inside the data directory.
pub const ACCESS_FILE: &str = "access.json";

/// Most initiators in one list.
pub const MAX_INITIATORS: usize = 256;

/// An access list problem.
#[derive(Debug, Error)]
pub enum AccessError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what this module writes.
    #[error("{path}: not an access list file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A name in a new list is not an iSCSI name.
    #[error("{0:?} is not an iSCSI initiator name (iqn., eui. or naa., 4 to 223 bytes)")]
    BadName(String),
    /// A new list is too long.
    #[error("{0} initiators: at most {MAX_INITIATORS} per volume")]
    TooMany(usize),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    /// Volume name → allowed initiator names.
    volumes: BTreeMap<String, Vec<String>>,
}

/// The access lists of every volume, and where they are kept.
#[derive(Debug)]
pub struct AccessLists {
    path: PathBuf,
    lists: BTreeMap<String, Vec<String>>,
}

impl AccessLists {
    /// The lists kept in `<data_dir>/access.json` (none when the file does not exist).
    pub fn load(data_dir: &Path) -> Result<Self, AccessError> {
        let path = data_dir.join(ACCESS_FILE);
        let lists = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: AccessFile =
                    serde_json::from_str(&text).map_err(|e| AccessError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                for name in file.volumes.values().flatten() {
                    check_name(name).map_err(|e| AccessError::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                }
                file.volumes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(AccessError::Io { path, source }),
        };
        Ok(AccessLists { path, lists })
    }

    /// Lists kept nowhere (tests, and daemons without a data directory).
    pub fn in_memory() -> Self {
        AccessLists {
            path: PathBuf::new(),
            lists: BTreeMap::new(),
        }
    }

    /// The initiators allowed on `volume` (empty: every initiator).
    pub fn get(&self, volume: &str) -> &[String] {
        self.lists.get(volume).map_or(&[], Vec::as_slice)
    }

    /// Sets `volume`'s list (empty: open to every initiator), durably; duplicates are dropped.
    /// On an error nothing changes.
    pub fn set(&mut self, volume: &str, initiators: &[String]) -> Result<(), AccessError> {
        if initiators.len() > MAX_INITIATORS {
            return Err(AccessError::TooMany(initiators.len()));
        }
        for name in initiators {
            check_name(name)?;
        }
        let mut list: Vec<String> = Vec::new();
        for name in initiators {
            if !list.contains(name) {
                list.push(name.clone());
            }
        }
        let mut next = self.lists.clone();
        if list.is_empty() {
            next.remove(volume);
        } else {
            next.insert(volume.to_owned(), list);
        }
        self.save(&next)?;
        self.lists = next;
        Ok(())
    }

    /// Forgets `volume`'s list (the volume was deleted).
    pub fn remove(&mut self, volume: &str) -> Result<(), AccessError> {
        if self.lists.contains_key(volume) {
            self.set(volume, &[])?;
        }
        Ok(())
    }

    fn save(&self, lists: &BTreeMap<String, Vec<String>>) -> Result<(), AccessError> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let io = |source| AccessError::Io {
            path: self.path.clone(),
            source,
        };
        let file = AccessFile {
            volumes: lists.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

/// Whether `name` may appear in a list: an iSCSI name (RFC 7143 §4.2.7), `iqn.`, `eui.` or
/// `naa.` form, 4 to 223 bytes, no spaces or control characters.
pub fn check_name(name: &str) -> Result<(), AccessError> {
    let form = ["iqn.", "eui.", "naa."].iter().any(|p| name.starts_with(p));
    let clean = name.chars().all(|c| c.is_ascii_graphic());
    if !form || !clean || name.len() < 5 || name.len() > 223 {
        return Err(AccessError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The volume whose list applies to image `name`: the volume itself, or for a snapshot
/// (`volume@snap`, served when exported) the volume it was taken of.
pub fn volume_of(name: &str) -> &str {
    name.split_once('@').map_or(name, |(volume, _)| volume)
}

/// Whether `initiator` may access a target whose list is `allowed` (empty: anyone). iSCSI
/// names compare case-insensitively (they are normalised to lower case, RFC 7143 §4.2.7.2).
pub fn allows(allowed: &[String], initiator: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(initiator))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lists_survive_a_reload_and_empty_means_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AccessLists::load(dir.path()).unwrap();
        assert!(a.get("vm1").is_empty());
        let esx = names(&["iqn.1998-01.com.vmware:esx1", "iqn.1998-01.com.vmware:esx2"]);
        a.set("vm1", &[esx.clone(), esx.clone()].concat()).unwrap();
        assert_eq!(a.get("vm1"), &esx[..], "duplicates dropped");
        let b = AccessLists::load(dir.path()).unwrap();
        assert_eq!(b.get("vm1"), &esx[..]);
        a.set("vm1", &[]).unwrap();
        assert!(AccessLists::load(dir.path()).unwrap().get("vm1").is_empty());
        a.set("vm2", &esx).unwrap();
        a.remove("vm2").unwrap();
        assert!(AccessLists::load(dir.path()).unwrap().get("vm2").is_empty());
    }

    #[test]
    fn bad_names_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AccessLists::load(dir.path()).unwrap();
        a.set("vm1", &names(&["iqn.2026-11.host:a"])).unwrap();
        for bad in [
            "",
            "host1",
            "iqn.",
            "iqn.with space",
            &format!("iqn.{}", "x".repeat(220)),
        ] {
            let err = a
                .set("vm1", &names(&["iqn.2026-11.host:b", bad]))
                .unwrap_err();
            assert!(matches!(err, AccessError::BadName(_)), "{bad:?}");
        }
        assert_eq!(a.get("vm1"), &names(&["iqn.2026-11.host:a"])[..]);
        let many: Vec<String> = (0..=MAX_INITIATORS).map(|i| format!("iqn.x:{i}")).collect();
        assert!(matches!(a.set("vm1", &many), Err(AccessError::TooMany(_))));
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(ACCESS_FILE),
            "{\"volumes\": {\"v\": [\"bad\"]}}",
        )
        .unwrap();
        assert!(matches!(
            AccessLists::load(dir.path()),
            Err(AccessError::Corrupt { .. })
        ));
        std::fs::write(dir.path().join(ACCESS_FILE), "not json").unwrap();
        assert!(AccessLists::load(dir.path()).is_err());
    }

    #[test]
    fn a_snapshot_has_its_volumes_list() {
        assert_eq!(volume_of("golden@v1"), "golden");
        assert_eq!(volume_of("golden"), "golden");
    }

    #[test]
    fn matching_ignores_case_and_empty_allows_all() {
        let allowed = names(&["iqn.1998-01.com.vmware:ESX1"]);
        assert!(allows(&allowed, "iqn.1998-01.com.vmware:esx1"));
        assert!(!allows(&allowed, "iqn.1998-01.com.vmware:esx2"));
        assert!(allows(&[], "anyone"));
    }
}
