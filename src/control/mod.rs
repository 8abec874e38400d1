//! The control plane: the catalog of exported targets and the session registry.
//!
//! Today the catalog is fixed at start-up from the configuration; the registry maps each I_T
//! nexus (initiator name + ISID + target) to the shard serving it, assigns TSIHs, and drives
//! session reinstatement (RFC 7143 §6.3.5: a login with a known ISID and TSIH 0 replaces the old
//! session). It is used only on the login path, never by shards on the I/O path.

pub mod admin;
pub mod api;
pub mod daemon;
pub mod metrics;
pub mod schedule;
pub mod settings;

use crate::scsi::NexusId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

/// One exported target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetEntry {
    /// Target IQN.
    pub name: String,
    /// Volume name (TargetAlias).
    pub alias: String,
    /// Shard that owns its LUN.
    pub shard: usize,
    /// Initiators allowed to log in (empty: every initiator; see [`settings`]).
    pub initiators: Vec<String>,
    /// The volume's own CHAP policy, which replaces the configuration's for this target.
    pub chap: Option<crate::iscsi::login::AuthPolicy>,
}

/// Key of an I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NexusKey {
    /// InitiatorName.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// Target IQN.
    pub target: String,
}

/// What the registry knows of a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEntry {
    /// Its nexus id.
    pub nexus: NexusId,
    /// Its TSIH.
    pub tsih: u16,
    /// Shard serving it.
    pub shard: usize,
}

/// What an administrator is shown of a live session beyond its registry entry (set at login).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetails {
    /// The initiator's address (its end of the leading connection).
    pub peer: Option<SocketAddr>,
    /// When the login completed.
    pub since: SystemTime,
    /// InitiatorAlias (ESXi sends its host name).
    pub alias: Option<String>,
    /// Header and data digests (CRC32C) negotiated.
    pub header_digest: bool,
    /// See `header_digest`.
    pub data_digest: bool,
}

/// A live session as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Initiator name, ISID and target.
    pub key: NexusKey,
    /// Nexus id, TSIH, shard.
    pub entry: SessionEntry,
    /// Set by the login once the session is in full feature phase.
    pub details: Option<SessionDetails>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    sessions: HashMap<NexusKey, SessionEntry>,
    /// Details of the live sessions, by TSIH.
    details: HashMap<u16, SessionDetails>,
    /// The id of every I_T nexus ever seen: the same initiator port logging in again gets its
    /// id back, so what SCSI keeps for it beyond a session (persistent reservation
    /// registrations) is found again.
    ids: HashMap<NexusKey, NexusId>,
    /// Ids kept even past the bound: ports holding a persistent reservation registration.
    pinned: HashSet<NexusId>,
    next_nexus: u64,
    next_tsih: u16,
}

/// Initiator ports whose nexus id is remembered after their session ended (beyond it, only
/// those with a session are kept).
const MAX_REMEMBERED_NEXUSES: usize = 65_536;

/// The session registry (login path only).
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<RegistryInner>,
}

/// Result of registering a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    /// The session's entry.
    pub entry: SessionEntry,
    /// The session it replaces (reinstatement), if any.
    pub replaced: Option<SessionEntry>,
}

impl RegistryInner {
    /// The id of the nexus `key`, given one if it has none.
    fn nexus_of(&mut self, key: &NexusKey) -> NexusId {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        if self.ids.len() >= MAX_REMEMBERED_NEXUSES {
            // Bounded: forget the ports that have no session now and hold no registration.
            let RegistryInner {
                sessions,
                pinned,
                ids,
                ..
            } = self;
            ids.retain(|k, id| sessions.contains_key(k) || pinned.contains(id));
        }
        self.next_nexus += 1;
        let id = NexusId(self.next_nexus);
        self.ids.insert(key.clone(), id);
        id
    }
}

impl Registry {
    /// The id of the nexus between initiator port `initiator_port` (`NAME,i,0xISID`) and
    /// `target`, given one if it has none: what persistent reservations restored from a record
    /// are kept under, so that the port's next login finds them. `None` when the name is not an
    /// initiator port name.
    pub fn nexus_of_port(&self, initiator_port: &str, target: &str) -> Option<NexusId> {
        let (initiator, hex) = initiator_port.rsplit_once(",i,0x")?;
        if initiator.is_empty() || hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut isid = [0u8; 6];
        for (i, byte) in isid.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        let key = NexusKey {
            initiator: initiator.to_string(),
            isid,
            target: target.to_string(),
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let id = inner.nexus_of(&key);
        inner.pinned.insert(id);
        Some(id)
    }

    /// Keeps (`registered`) or stops keeping nexus `id` past the bound on remembered ports: a
    /// port holding a persistent reservation registration must get its id back whenever it
    /// logs in again, or its registration (and a reservation it holds) would be orphaned.
    pub fn pin(&self, id: NexusId, registered: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if registered {
            inner.pinned.insert(id);
        } else {
            inner.pinned.remove(&id);
        }
    }

    /// Registers a new session for `key` on `shard`, replacing any session with the same key.
    pub fn register(&self, key: NexusKey, shard: usize) -> Registration {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let replaced = inner.sessions.get(&key).copied();
        let nexus = inner.nexus_of(&key);
        inner.next_tsih = inner.next_tsih.wrapping_add(1).max(1);
        let entry = SessionEntry {
            nexus,
            tsih: inner.next_tsih,
            shard,
        };
        inner.sessions.insert(key, entry);
        if let Some(old) = replaced {
            inner.details.remove(&old.tsih);
        }
        Registration { entry, replaced }
    }

    /// Records what an administrator is shown of the session with this TSIH (ignored when it
    /// already ended).
    pub fn describe(&self, tsih: u16, details: SessionDetails) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.sessions.values().any(|s| s.tsih == tsih) {
            inner.details.insert(tsih, details);
        }
    }

    /// Every live session, by target then initiator port.
    pub fn list(&self) -> Vec<SessionView> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SessionView> = inner
            .sessions
            .iter()
            .map(|(key, entry)| SessionView {
                key: key.clone(),
                entry: *entry,
                details: inner.details.get(&entry.tsih).cloned(),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.key.target, &a.key.initiator, a.key.isid).cmp(&(
                &b.key.target,
                &b.key.initiator,
                b.key.isid,
            ))
        });
        out
    }

    /// Forgets the session with this TSIH (it ended). A newer session that reinstated the same
    /// nexus has another TSIH and stays.
    pub fn unregister(&self, tsih: u16) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sessions.retain(|_, s| s.tsih != tsih);
        inner.details.remove(&tsih);
    }

    /// Number of sessions logged in to `target`.
    pub fn sessions_on(&self, target: &str) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sessions.keys().filter(|k| k.target == target).count()
    }

    /// The sessions logged in to `target`: (initiator name, session).
    pub fn sessions_of(&self, target: &str) -> Vec<(String, SessionEntry)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .sessions
            .iter()
            .filter(|(k, _)| k.target == target)
            .map(|(k, s)| (k.initiator.clone(), *s))
            .collect()
    }

    /// Whether a session with this TSIH exists.
    pub fn tsih_exists(&self, tsih: u16) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.sessions.values().any(|s| s.tsih == tsih)
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sessions
            .len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(isid: u8) -> NexusKey {
        NexusKey {
            initiator: "iqn.x".into(),
            isid: [isid; 6],
            target: "iqn.t".into(),
        }
    }

    #[test]
    fn sessions_are_listed_with_their_details_until_they_end_or_are_replaced() {
        let r = Registry::default();
        let a = r.register(key(1), 0);
        let details = SessionDetails {
            peer: "127.0.0.1:5000".parse().ok(),
            since: SystemTime::UNIX_EPOCH,
            alias: Some("esx1".into()),
            header_digest: true,
            data_digest: false,
        };
        r.describe(a.entry.tsih, details.clone());
        r.register(key(2), 1);
        let list = r.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].key, key(1));
        assert_eq!(list[0].details.as_ref(), Some(&details));
        assert_eq!(list[1].details, None, "not described yet");
        // Reinstatement replaces the session and its details.
        let again = r.register(key(1), 0);
        assert_ne!(again.entry.tsih, a.entry.tsih);
        assert_eq!(r.list()[0].details, None);
        r.unregister(again.entry.tsih);
        assert_eq!(r.list().len(), 1);
        // A session that ended is not described after the fact.
        r.describe(again.entry.tsih, details);
        assert!(r.list().iter().all(|s| s.details.is_none()));
    }

    #[test]
    fn a_returning_initiator_port_gets_its_nexus_id_back() {
        let r = Registry::default();
        let a = r.register(key(1), 0);
        r.unregister(a.entry.tsih);
        let again = r.register(key(1), 0);
        assert!(again.replaced.is_none());
        assert_eq!(again.entry.nexus, a.entry.nexus);
        assert_ne!(r.register(key(2), 0).entry.nexus, a.entry.nexus);
    }

    #[test]
    fn a_port_named_in_a_reservations_record_logs_in_to_the_same_nexus() {
        let r = Registry::default();
        let port = "iqn.x,i,0x010101010101";
        let id = r.nexus_of_port(port, "iqn.t").unwrap();
        assert_eq!(r.nexus_of_port(port, "iqn.t"), Some(id));
        assert_eq!(r.register(key(1), 0).entry.nexus, id);
        assert_ne!(
            r.nexus_of_port(port, "iqn.other"),
            Some(id),
            "another target"
        );
        for bad in [
            "iqn.x",
            "iqn.x,i,0x0101",
            ",i,0x010101010101",
            "iqn.x,i,0x01010101010g",
        ] {
            assert_eq!(r.nexus_of_port(bad, "iqn.t"), None, "{bad}");
        }
    }

    #[test]
    fn past_the_bound_only_ports_with_a_session_or_a_registration_keep_their_id() {
        let r = Registry::default();
        let registered = r.register(key(1), 0);
        r.pin(registered.entry.nexus, true);
        r.unregister(registered.entry.tsih);
        let restored = r.nexus_of_port("iqn.y,i,0x000000000009", "iqn.t").unwrap();
        let forgotten = r.register(key(2), 0);
        r.unregister(forgotten.entry.tsih);
        // Fill the registry past its bound with ports that come and go.
        for i in 0..MAX_REMEMBERED_NEXUSES as u64 {
            let k = NexusKey {
                initiator: format!("iqn.many:{i}"),
                isid: [0; 6],
                target: "iqn.t".into(),
            };
            let e = r.register(k, 0);
            r.unregister(e.entry.tsih);
        }
        assert_eq!(r.register(key(1), 0).entry.nexus, registered.entry.nexus);
        assert_eq!(
            r.nexus_of_port("iqn.y,i,0x000000000009", "iqn.t"),
            Some(restored)
        );
        assert_ne!(
            r.register(key(2), 0).entry.nexus,
            forgotten.entry.nexus,
            "an unregistered port was forgotten"
        );
    }

    #[test]
    fn register_reinstates_same_isid() {
        let r = Registry::default();
        let a = r.register(key(1), 0);
        assert!(a.replaced.is_none());
        let b = r.register(key(2), 0);
        assert_ne!(a.entry.nexus, b.entry.nexus);
        let c = r.register(key(1), 0);
        assert_eq!(c.replaced, Some(a.entry));
        assert_eq!(c.entry.nexus, a.entry.nexus);
        assert_ne!(c.entry.tsih, a.entry.tsih);
        assert!(r.tsih_exists(c.entry.tsih));
        assert_eq!(r.len(), 2);
        r.unregister(a.entry.tsih);
        assert_eq!(
            r.len(),
            2,
            "the replaced session's TSIH no longer names an entry"
        );
        r.unregister(c.entry.tsih);
        assert_eq!(r.len(), 1);
        assert!(!r.tsih_exists(c.entry.tsih));
    }
}
