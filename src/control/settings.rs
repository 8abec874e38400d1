//! Per-volume settings the control plane keeps: initiator access lists (LUN masking), the
//! write cache and the snapshot schedule.
//!
//! Access lists: a volume without a list (or with an empty one) is open to every initiator that
//! passes authentication. A list names initiators by iSCSI name; logins from others fail with
//! 0202 (authorization failure) and discovery does not show them the target. A change applies at
//! once: the control plane closes the sessions of initiators a new list leaves out. An exported
//! snapshot (`volume@snap`) has its volume's list.
//!
//! Write cache: set through the admin API, it overrides the configuration's `[[volume]]`
//! `write_cache` (and the default, on).
//!
//! CHAP: a volume may have CHAP credentials of its own; logins to its target (and to its exported
//! snapshots) must then pass them instead of the configuration's `[chap]`. Secrets are stored in
//! this file, which is therefore readable by its owner only (0600).
//!
//! Snapshot schedule: take a snapshot every so often and keep the newest so many of them (see
//! `control::schedule`).
//!
//! The settings live in `<data>/settings.json`, written whole on every change (a temporary file,
//! fsynced, renamed over the old one, then the directory fsynced), so a crash leaves the old or
//! the new settings, never a mix. Invariant: every stored name is a valid iSCSI name, and a volume
//! with no list and no write cache setting has no entry.

use crate::iscsi::login::AuthPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File name of the settings inside the data directory.
pub const SETTINGS_FILE: &str = "settings.json";

/// Most initiators in one list.
pub const MAX_INITIATORS: usize = 256;

/// A settings problem.
#[derive(Debug, Error)]
pub enum SettingsError {
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
    #[error("{path}: not a volume settings file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A name in a new list is not an iSCSI name.
    #[error(
        "{0:?} is not an iSCSI initiator name (iqn., eui. or naa., at most 223 bytes, no spaces)"
    )]
    BadName(String),
    /// A new list is too long.
    #[error("{0} initiators: at most {MAX_INITIATORS} per volume")]
    TooMany(usize),
    /// CHAP credentials that break the rules (the message says which).
    #[error("{0}")]
    BadChap(String),
    /// A schedule out of bounds.
    #[error(
        "snapshot schedule every {} s keeping {}: the interval must be at least 1 s, and 1 to {MAX_KEEP} snapshots kept",
        .0.every_secs,
        .0.keep
    )]
    BadSchedule(SnapshotSchedule),
}

/// One volume's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// Allowed initiator names (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    initiators: Vec<String>,
    /// The write cache, when set through the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    write_cache: Option<bool>,
    /// Scheduled snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot_schedule: Option<SnapshotSchedule>,
    /// CHAP credentials of the volume's target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chap: Option<VolumeChap>,
    /// QoS limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    qos: Option<VolumeQos>,
    /// Write-protected by the administrator.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    read_only: bool,
}

/// A volume's QoS limits (see `runtime::qos`): READ/WRITE commands and bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeQos {
    /// Commands per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
}

impl VolumeQos {
    /// The limits the shard enforces.
    pub fn limits(&self) -> crate::runtime::qos::QosLimits {
        crate::runtime::qos::QosLimits {
            iops: self.iops,
            bytes_per_sec: self.bytes_per_sec,
        }
    }
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.initiators.is_empty()
            && self.write_cache.is_none()
            && self.snapshot_schedule.is_none()
            && self.chap.is_none()
            && self.qos.is_none()
            && !self.read_only
    }
}

/// A volume's CHAP credentials: what initiators log in to its target with, and the target's
/// own for mutual CHAP (the rules of the configuration's `[chap]`: names of 1..=255 bytes,
/// secrets of 12..=255 bytes, the two secrets different).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeChap {
    /// CHAP name initiators log in with.
    pub user: String,
    /// Their secret.
    pub secret: String,
    /// The target's CHAP name, for mutual CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_user: Option<String>,
    /// The target's secret, for mutual CHAP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_secret: Option<String>,
}

impl std::fmt::Debug for VolumeChap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeChap")
            .field("user", &self.user)
            .field("target_user", &self.target_user)
            .finish_non_exhaustive()
    }
}

impl VolumeChap {
    /// The login policy these credentials make, or why they are refused.
    pub fn policy(&self) -> Result<AuthPolicy, SettingsError> {
        let bad = |e: crate::config::ConfigError| SettingsError::BadChap(e.to_string());
        let target =
            crate::config::mutual_chap(self.target_user.as_deref(), self.target_secret.as_deref())
                .map_err(bad)?;
        crate::config::chap_policy(&self.user, &self.secret, target).map_err(bad)
    }
}

/// A volume's snapshot schedule: a snapshot every `every_secs`, the newest `keep` of them kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSchedule {
    /// Seconds between two scheduled snapshots (at least 1).
    pub every_secs: u64,
    /// Scheduled snapshots kept (at least 1); older ones are deleted.
    pub keep: u32,
}

/// Most scheduled snapshots kept per volume.
pub const MAX_KEEP: u32 = 1000;

impl SnapshotSchedule {
    /// Checks the bounds: an interval of at least a second, 1..=[`MAX_KEEP`] kept.
    pub fn check(&self) -> Result<(), SettingsError> {
        if self.every_secs == 0 || self.keep == 0 || self.keep > MAX_KEEP {
            return Err(SettingsError::BadSchedule(*self));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    /// Volume name → its settings.
    volumes: BTreeMap<String, Entry>,
}

/// The settings of every volume, and where they are kept.
#[derive(Debug)]
pub struct VolumeSettings {
    path: PathBuf,
    volumes: BTreeMap<String, Entry>,
}

impl VolumeSettings {
    /// The settings kept in `<data_dir>/settings.json` (none when the file does not exist).
    pub fn load(data_dir: &Path) -> Result<Self, SettingsError> {
        let path = data_dir.join(SETTINGS_FILE);
        let corrupt = |message: String| SettingsError::Corrupt {
            path: path.clone(),
            message,
        };
        let volumes = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: SettingsFile =
                    serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
                for name in file.volumes.values().flat_map(|e| &e.initiators) {
                    check_name(name).map_err(|e| corrupt(e.to_string()))?;
                }
                for schedule in file.volumes.values().filter_map(|e| e.snapshot_schedule) {
                    schedule.check().map_err(|e| corrupt(e.to_string()))?;
                }
                for chap in file.volumes.values().filter_map(|e| e.chap.as_ref()) {
                    chap.policy().map_err(|e| corrupt(e.to_string()))?;
                }
                file.volumes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(SettingsError::Io { path, source }),
        };
        Ok(VolumeSettings { path, volumes })
    }

    /// Settings kept nowhere (tests, and daemons without a data directory).
    pub fn in_memory() -> Self {
        VolumeSettings {
            path: PathBuf::new(),
            volumes: BTreeMap::new(),
        }
    }

    /// The initiators allowed on `volume` (empty: every initiator).
    pub fn initiators(&self, volume: &str) -> &[String] {
        self.volumes
            .get(volume)
            .map_or(&[], |e| e.initiators.as_slice())
    }

    /// The write cache set for `volume` through the admin API, if any.
    pub fn write_cache(&self, volume: &str) -> Option<bool> {
        self.volumes.get(volume).and_then(|e| e.write_cache)
    }

    /// Sets `volume`'s access list (empty: open to every initiator), durably; duplicates are
    /// dropped. On an error nothing changes.
    pub fn set_initiators(
        &mut self,
        volume: &str,
        initiators: &[String],
    ) -> Result<(), SettingsError> {
        if initiators.len() > MAX_INITIATORS {
            return Err(SettingsError::TooMany(initiators.len()));
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
        self.update(volume, |e| e.initiators = list)
    }

    /// The login policy of `volume`'s own CHAP credentials, if it has some.
    pub fn chap_policy(&self, volume: &str) -> Option<AuthPolicy> {
        // Checked when set and when loaded: a stored entry always makes a policy.
        self.volumes.get(volume)?.chap.as_ref()?.policy().ok()
    }

    /// `volume`'s CHAP credentials, if it has some.
    pub fn chap(&self, volume: &str) -> Option<&VolumeChap> {
        self.volumes.get(volume)?.chap.as_ref()
    }

    /// Sets (or with `None` removes) `volume`'s CHAP credentials, durably; refused (nothing
    /// changed) when they break the rules.
    pub fn set_chap(
        &mut self,
        volume: &str,
        chap: Option<VolumeChap>,
    ) -> Result<(), SettingsError> {
        if let Some(c) = &chap {
            c.policy()?;
        }
        self.update(volume, |e| e.chap = chap)
    }

    /// Whether the administrator write-protected `volume`.
    pub fn read_only(&self, volume: &str) -> bool {
        self.volumes.get(volume).is_some_and(|e| e.read_only)
    }

    /// Changes `volume`'s write cache, write protection and QoS limits (each `None` kept as it
    /// is) in one durable update.
    pub fn set_live(
        &mut self,
        volume: &str,
        write_cache: Option<bool>,
        read_only: Option<bool>,
        qos: Option<VolumeQos>,
    ) -> Result<(), SettingsError> {
        self.update(volume, |e| {
            if write_cache.is_some() {
                e.write_cache = write_cache;
            }
            if let Some(on) = read_only {
                e.read_only = on;
            }
            if let Some(qos) = qos {
                e.qos = (qos != VolumeQos::default()).then_some(qos);
            }
        })
    }

    /// `volume`'s QoS limits (none set: unlimited).
    pub fn qos(&self, volume: &str) -> VolumeQos {
        self.volumes
            .get(volume)
            .and_then(|e| e.qos)
            .unwrap_or_default()
    }

    /// `volume`'s snapshot schedule, if it has one.
    pub fn snapshot_schedule(&self, volume: &str) -> Option<SnapshotSchedule> {
        self.volumes.get(volume).and_then(|e| e.snapshot_schedule)
    }

    /// Every volume with a snapshot schedule.
    pub fn snapshot_schedules(&self) -> Vec<(String, SnapshotSchedule)> {
        self.volumes
            .iter()
            .filter_map(|(name, e)| Some((name.clone(), e.snapshot_schedule?)))
            .collect()
    }

    /// Sets (or with `None` removes) `volume`'s snapshot schedule, durably.
    pub fn set_snapshot_schedule(
        &mut self,
        volume: &str,
        schedule: Option<SnapshotSchedule>,
    ) -> Result<(), SettingsError> {
        if let Some(s) = &schedule {
            s.check()?;
        }
        self.update(volume, |e| e.snapshot_schedule = schedule)
    }

    /// Sets `volume`'s write cache, durably.
    pub fn set_write_cache(&mut self, volume: &str, on: bool) -> Result<(), SettingsError> {
        self.set_live(volume, Some(on), None, None)
    }

    /// Gives `new_name` a copy of `volume`'s settings (none: none), durably, keeping
    /// `volume`'s. The first step of a rename, taken before the catalog renames the volume; the
    /// old name's entry goes once it has (a crash in between leaves an entry of a name with no
    /// volume, which [`VolumeSettings::retain`] drops at the next start).
    pub fn copy(&mut self, volume: &str, new_name: &str) -> Result<(), SettingsError> {
        let entry = self.volumes.get(volume).cloned().unwrap_or_default();
        self.update(new_name, |e| *e = entry)
    }

    /// Keeps the settings of the volumes `exists` names and drops the others, durably: entries
    /// a crash left behind in a rename or a delete, which a new volume of that name must not
    /// inherit. Returns the names dropped.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) -> Result<Vec<String>, SettingsError> {
        let dropped: Vec<String> = self
            .volumes
            .keys()
            .filter(|name| !exists(name))
            .cloned()
            .collect();
        if dropped.is_empty() {
            return Ok(dropped);
        }
        let mut next = self.volumes.clone();
        next.retain(|name, _| exists(name));
        self.save(&next)?;
        self.volumes = next;
        Ok(dropped)
    }

    /// Forgets `volume`'s settings (the volume was deleted).
    pub fn remove(&mut self, volume: &str) -> Result<(), SettingsError> {
        if self.volumes.contains_key(volume) {
            self.update(volume, |e| *e = Entry::default())?;
        }
        Ok(())
    }

    /// Changes `volume`'s entry, stores every setting, and only then keeps the change.
    fn update(
        &mut self,
        volume: &str,
        change: impl FnOnce(&mut Entry),
    ) -> Result<(), SettingsError> {
        let mut next = self.volumes.clone();
        let mut entry = next.remove(volume).unwrap_or_default();
        change(&mut entry);
        if !entry.is_empty() {
            next.insert(volume.to_owned(), entry);
        }
        self.save(&next)?;
        self.volumes = next;
        Ok(())
    }

    fn save(&self, volumes: &BTreeMap<String, Entry>) -> Result<(), SettingsError> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let io = |source| SettingsError::Io {
            path: self.path.clone(),
            source,
        };
        let file = SettingsFile {
            volumes: volumes.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        crate::storage::replace_file(&self.path, text.as_bytes()).map_err(io)
    }
}

/// Whether `name` may appear in a list: shaped like an iSCSI name (the protocol core's check).
pub fn check_name(name: &str) -> Result<(), SettingsError> {
    if !crate::iscsi::discovery::is_iscsi_name(name) {
        return Err(SettingsError::BadName(name.to_owned()));
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
        let mut a = VolumeSettings::load(dir.path()).unwrap();
        assert!(a.initiators("vm1").is_empty());
        let esx = names(&["iqn.1998-01.com.vmware:esx1", "iqn.1998-01.com.vmware:esx2"]);
        a.set_initiators("vm1", &[esx.clone(), esx.clone()].concat())
            .unwrap();
        assert_eq!(a.initiators("vm1"), &esx[..], "duplicates dropped");
        let b = VolumeSettings::load(dir.path()).unwrap();
        assert_eq!(b.initiators("vm1"), &esx[..]);
        a.set_initiators("vm1", &[]).unwrap();
        assert!(
            VolumeSettings::load(dir.path())
                .unwrap()
                .initiators("vm1")
                .is_empty()
        );
        a.set_initiators("vm2", &esx).unwrap();
        a.set_write_cache("vm2", false).unwrap();
        let b = VolumeSettings::load(dir.path()).unwrap();
        assert_eq!(
            (b.initiators("vm2"), b.write_cache("vm2")),
            (&esx[..], Some(false))
        );
        assert_eq!(b.write_cache("vm1"), None);
        a.remove("vm2").unwrap();
        let b = VolumeSettings::load(dir.path()).unwrap();
        assert!(b.initiators("vm2").is_empty() && b.write_cache("vm2").is_none());
    }

    #[test]
    fn a_copy_for_a_rename_is_durable_and_retain_drops_names_without_a_volume() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = VolumeSettings::load(dir.path()).unwrap();
        let esx = names(&["iqn.1998-01.com.vmware:esx1"]);
        a.set_initiators("db", &esx).unwrap();
        a.set_write_cache("db", false).unwrap();
        // A stale entry under the new name is replaced, not merged.
        a.set_initiators("db2", &names(&["iqn.2026-11.host:stale"]))
            .unwrap();
        a.set_live("db2", None, Some(true), None).unwrap();
        a.copy("db", "db2").unwrap();
        let b = VolumeSettings::load(dir.path()).unwrap();
        for name in ["db", "db2"] {
            assert_eq!(b.initiators(name), &esx[..], "{name}");
            assert_eq!(b.write_cache(name), Some(false), "{name}");
            assert!(!b.read_only(name), "{name}");
        }
        // Copying a volume without settings clears the new name's.
        a.set_write_cache("old", true).unwrap();
        a.copy("none", "old").unwrap();
        assert_eq!(a.write_cache("old"), None);
        // The rename done, the old name has no volume: retain drops it, durably.
        let dropped = a.retain(|name| name == "db2").unwrap();
        assert_eq!(dropped, names(&["db"]));
        let b = VolumeSettings::load(dir.path()).unwrap();
        assert!(b.initiators("db").is_empty() && b.write_cache("db").is_none());
        assert_eq!(b.initiators("db2"), &esx[..]);
        assert!(a.retain(|_| true).unwrap().is_empty());
    }

    #[test]
    fn snapshot_schedules_survive_a_reload_and_bad_ones_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = VolumeSettings::load(dir.path()).unwrap();
        let hourly = SnapshotSchedule {
            every_secs: 3600,
            keep: 24,
        };
        a.set_snapshot_schedule("vm1", Some(hourly)).unwrap();
        for bad in [(0, 1), (60, 0), (60, MAX_KEEP + 1)] {
            let s = SnapshotSchedule {
                every_secs: bad.0,
                keep: bad.1,
            };
            assert!(matches!(
                a.set_snapshot_schedule("vm1", Some(s)),
                Err(SettingsError::BadSchedule(_))
            ));
        }
        let b = VolumeSettings::load(dir.path()).unwrap();
        assert_eq!(b.snapshot_schedule("vm1"), Some(hourly));
        assert_eq!(b.snapshot_schedules(), vec![("vm1".to_string(), hourly)]);
        a.set_snapshot_schedule("vm1", None).unwrap();
        let b = VolumeSettings::load(dir.path()).unwrap();
        assert!(b.snapshot_schedules().is_empty());
        // A damaged schedule in the file is refused at load, naming the file.
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            r#"{"volumes":{"vm1":{"snapshot_schedule":{"every_secs":0,"keep":1}}}}"#,
        )
        .unwrap();
        let e = VolumeSettings::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains("settings.json"), "{e}");
    }

    #[test]
    fn bad_names_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = VolumeSettings::load(dir.path()).unwrap();
        a.set_initiators("vm1", &names(&["iqn.2026-11.host:a"]))
            .unwrap();
        for bad in [
            "",
            "host1",
            "iqn.",
            "iqn.with space",
            &format!("iqn.{}", "x".repeat(220)),
        ] {
            let err = a
                .set_initiators("vm1", &names(&["iqn.2026-11.host:b", bad]))
                .unwrap_err();
            assert!(matches!(err, SettingsError::BadName(_)), "{bad:?}");
        }
        assert_eq!(a.initiators("vm1"), &names(&["iqn.2026-11.host:a"])[..]);
        let many: Vec<String> = (0..=MAX_INITIATORS).map(|i| format!("iqn.x:{i}")).collect();
        assert!(matches!(
            a.set_initiators("vm1", &many),
            Err(SettingsError::TooMany(_))
        ));
    }

    #[test]
    fn a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "{\"volumes\": {\"v\": {\"initiators\": [\"bad\"]}}}",
        )
        .unwrap();
        assert!(matches!(
            VolumeSettings::load(dir.path()),
            Err(SettingsError::Corrupt { .. })
        ));
        std::fs::write(dir.path().join(SETTINGS_FILE), "not json").unwrap();
        assert!(VolumeSettings::load(dir.path()).is_err());
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
