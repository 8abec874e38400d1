//! Persistent reservations (SPC-4 5.9, 6.15, 6.16): the registrations and the reservation of one
//! logical unit, the PERSISTENT RESERVE OUT service actions that change them, the PERSISTENT
//! RESERVE IN data that reports them, and which commands they refuse to which I_T nexus.
//!
//! Scope: LU scope only; REGISTER, REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE, CLEAR,
//! PREEMPT and PREEMPT AND ABORT (the aborting is the shard's: see
//! [`crate::scsi::lun::LogicalUnit::take_preempted_nexuses`]); READ KEYS, READ RESERVATION, REPORT
//! CAPABILITIES and READ FULL STATUS; persistence through power loss (APTPL). ALL_TG_PT is
//! accepted (ATP_C): a Shoal target has one target port (relative port 1, one portal group), so
//! registering through "all target ports" registers through that one. Not supported (and
//! reported so by REPORT CAPABILITIES): SPEC_I_PT, REGISTER AND MOVE — answered with INVALID
//! FIELD.
//!
//! APTPL: the APTPL bit of the last successful REGISTER (or REGISTER AND IGNORE EXISTING KEY)
//! turns persistence on or off for the whole LU state. While it is on, the state is kept as a
//! [`PrRecord`] (initiator ports by name, since nexus ids live only as long as the daemon); the
//! logical unit hands every new record to the shard, which stores it before the command's status
//! goes out, and a restarted daemon rebuilds the state with [`PrState::from_record`].
//!
//! Invariants: a registration key is never 0; the reservation's holder is registered (for the
//! all-registrants types every registrant holds it, and it ends with the last registration);
//! PRgeneration counts the REGISTER/CLEAR/PREEMPT that changed the registrations.

use super::NexusId;
use super::sense::{Sense, SenseKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// PERSISTENT RESERVE OUT service actions (SPC-4 table 196).
pub mod action {
    /// REGISTER.
    pub const REGISTER: u8 = 0x00;
    /// RESERVE.
    pub const RESERVE: u8 = 0x01;
    /// RELEASE.
    pub const RELEASE: u8 = 0x02;
    /// CLEAR.
    pub const CLEAR: u8 = 0x03;
    /// PREEMPT.
    pub const PREEMPT: u8 = 0x04;
    /// PREEMPT AND ABORT: PREEMPT, and the preempted nexuses' tasks on the LU are aborted.
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    /// REGISTER AND IGNORE EXISTING KEY.
    pub const REGISTER_AND_IGNORE: u8 = 0x06;
    /// PERSISTENT RESERVE IN: READ KEYS.
    pub const READ_KEYS: u8 = 0x00;
    /// PERSISTENT RESERVE IN: READ RESERVATION.
    pub const READ_RESERVATION: u8 = 0x01;
    /// PERSISTENT RESERVE IN: REPORT CAPABILITIES.
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    /// PERSISTENT RESERVE IN: READ FULL STATUS.
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// A persistent reservation type (SPC-4 table 187).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    /// Write Exclusive.
    WriteExclusive = 1,
    /// Exclusive Access.
    ExclusiveAccess = 3,
    /// Write Exclusive – Registrants Only.
    WriteExclusiveRegistrantsOnly = 5,
    /// Exclusive Access – Registrants Only.
    ExclusiveAccessRegistrantsOnly = 6,
    /// Write Exclusive – All Registrants.
    WriteExclusiveAllRegistrants = 7,
    /// Exclusive Access – All Registrants.
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    /// Its name as SPC-4 writes it.
    pub fn name(self) -> &'static str {
        match self {
            PrType::WriteExclusive => "Write Exclusive",
            PrType::ExclusiveAccess => "Exclusive Access",
            PrType::WriteExclusiveRegistrantsOnly => "Write Exclusive - Registrants Only",
            PrType::ExclusiveAccessRegistrantsOnly => "Exclusive Access - Registrants Only",
            PrType::WriteExclusiveAllRegistrants => "Write Exclusive - All Registrants",
            PrType::ExclusiveAccessAllRegistrants => "Exclusive Access - All Registrants",
        }
    }

    /// The type of a TYPE field, if supported.
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant holds it.
    fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants (not only the holder) may read and write.
    fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Non-holders may not read either.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command touches the medium, for the reservation's access rules (SPC-4 table 63,
/// simplified to what a block device needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, REQUEST SENSE, TEST UNIT READY,
    /// READ CAPACITY, REPORT SUPPORTED OPERATION CODES, PERSISTENT RESERVE IN/OUT).
    Always,
    /// Reads the medium or its state (READ, VERIFY, PRE-FETCH, GET LBA STATUS, MODE SENSE...):
    /// refused to non-holders by the Exclusive Access types.
    Read,
    /// Changes the medium or its state (WRITE, WRITE SAME, UNMAP, COMPARE AND WRITE, MODE
    /// SELECT, SYNCHRONIZE CACHE...): refused to non-holders by every type.
    Write,
}

/// Why a PERSISTENT RESERVE OUT failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// Parameters of a PERSISTENT RESERVE OUT (the 24-byte basic parameter list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProutParams {
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    /// ACTIVATE PERSIST THROUGH POWER LOSS (used by REGISTER, ignored by the other actions).
    pub aptpl: bool,
}

/// Checks and decodes the basic parameter list (SPC-4 6.16.3): exactly 24 bytes (PARAMETER
/// LIST LENGTH ERROR otherwise) and no SPEC_I_PT (not supported: INVALID FIELD IN PARAMETER
/// LIST). ALL_TG_PT needs nothing: the target has a single target port.
pub fn parse_params(param_len: u32, data: &[u8]) -> Result<ProutParams, PrError> {
    if param_len != 24 || data.len() < 24 {
        return Err(PrError::Check(Sense::parameter_list_length_error()));
    }
    let flags = data[20];
    const SPEC_I_PT: u8 = 3;
    if flags & (1 << SPEC_I_PT) != 0 {
        return Err(PrError::Check(Sense::invalid_field_in_parameter_list_bit(
            20,
            Some(SPEC_I_PT),
        )));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&data[at..at + 8]);
        u64::from_be_bytes(b)
    };
    Ok(ProutParams {
        key: u64_at(0),
        sa_key: u64_at(8),
        aptpl: flags & 1 != 0,
    })
}

/// RESERVATIONS PREEMPTED, RESERVATIONS RELEASED, REGISTRATIONS PREEMPTED (2Ah/03h..05h).
fn ua(ascq: u8) -> Sense {
    Sense::new(SenseKey::UnitAttention, 0x2A, ascq)
}

/// The persistent reservation state of one logical unit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrState {
    keys: BTreeMap<NexusId, u64>,
    reservation: Option<(NexusId, PrType)>,
    generation: u32,
    /// Persist through power loss is active (PTPL_A).
    aptpl: bool,
}

/// The state kept across a restart while APTPL is active: initiator ports by name
/// (`NAME,i,0xISID`), as READ FULL STATUS names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrRecord {
    /// PRgeneration.
    pub generation: u32,
    /// Each registration: initiator port and key.
    pub registrations: Vec<PrRecordKey>,
    /// The reservation, if any.
    pub reservation: Option<PrRecordReservation>,
}

/// One registration of a [`PrRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrRecordKey {
    /// The initiator port (`NAME,i,0xISID`).
    pub port: String,
    /// Its reservation key (never 0).
    pub key: u64,
}

/// The reservation of a [`PrRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrRecordReservation {
    /// The holder's initiator port; absent for the all-registrants types.
    pub holder: Option<String>,
    /// The TYPE code (SPC-4 table 187).
    pub kind: u8,
}

/// Why a [`PrRecord`] cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrRecordError {
    /// A key of 0, or a port registered twice.
    #[error("bad registration of {0:?}")]
    BadRegistration(String),
    /// An initiator port name that is not `NAME,i,0xISID`.
    #[error("not an initiator port name: {0:?}")]
    BadPort(String),
    /// A reservation type this module does not know.
    #[error("unknown reservation type {0}")]
    BadType(u8),
    /// A reservation whose holder is not registered (or a holder for an all-registrants type,
    /// or an all-registrants reservation without registrants).
    #[error("reservation holder {0:?} is not a registrant")]
    BadHolder(Option<String>),
}

/// What [`PrState::report`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrReport {
    /// PRgeneration.
    pub generation: u32,
    /// (nexus, key) of each registration.
    pub registrations: Vec<(NexusId, u64)>,
    /// The reservation: its holder (None for the all-registrants types) and type.
    pub reservation: Option<(Option<NexusId>, PrType)>,
}

/// Unit attentions a service action queues: (nexus, condition).
pub type Notices = Vec<(NexusId, Sense)>;

impl PrState {
    /// Whether any registration or reservation exists (RESERVE/RELEASE (6) then conflict).
    pub fn active(&self) -> bool {
        !self.keys.is_empty() || self.reservation.is_some()
    }

    fn holds(&self, n: NexusId) -> bool {
        match self.reservation {
            Some((_, t)) if t.all_registrants() => self.keys.contains_key(&n),
            Some((holder, _)) => holder == n,
            None => false,
        }
    }

    /// Whether the reservation refuses a command of kind `access` from `n`.
    pub fn conflicts(&self, n: NexusId, access: Access) -> bool {
        let Some((_, t)) = self.reservation else {
            return false;
        };
        if access == Access::Always || self.holds(n) {
            return false;
        }
        if t.registrants_have_access() && self.keys.contains_key(&n) {
            return false;
        }
        access == Access::Write || t.exclusive_access()
    }

    /// The key `n` registered must be `key` (RESERVATION CONFLICT otherwise, or when `n` is not
    /// registered).
    fn check_key(&self, n: NexusId, key: u64) -> Result<(), PrError> {
        match self.keys.get(&n) {
            Some(&k) if k == key => Ok(()),
            _ => Err(PrError::Conflict),
        }
    }

    /// REGISTER (`ignore` false) or REGISTER AND IGNORE EXISTING KEY.
    pub fn register(
        &mut self,
        n: NexusId,
        p: ProutParams,
        ignore: bool,
    ) -> Result<Notices, PrError> {
        let notices = match self.keys.get(&n).copied() {
            None if !ignore && p.key != 0 => return Err(PrError::Conflict),
            // Unregistered, SA key 0: nothing at all happens, APTPL included (SPC-4 5.14.7).
            None if p.sa_key == 0 => return Ok(Vec::new()),
            None => {
                self.keys.insert(n, p.sa_key);
                self.generation = self.generation.wrapping_add(1);
                Vec::new()
            }
            Some(k) if !ignore && k != p.key => return Err(PrError::Conflict),
            Some(_) if p.sa_key == 0 => self.unregister(n),
            Some(_) => {
                self.keys.insert(n, p.sa_key);
                self.generation = self.generation.wrapping_add(1);
                Vec::new()
            }
        };
        // The last successful REGISTER's APTPL bit decides (SPC-4 5.9.4).
        self.aptpl = p.aptpl;
        Ok(notices)
    }

    /// Whether persist through power loss is active.
    pub fn aptpl(&self) -> bool {
        self.aptpl
    }

    /// Removes `n`'s registration; a reservation it held ends (for the all-registrants types,
    /// with the last registration), telling the other registrants of a registrants-only one.
    fn unregister(&mut self, n: NexusId) -> Notices {
        self.keys.remove(&n);
        self.generation = self.generation.wrapping_add(1);
        let ends = match self.reservation {
            Some((_, t)) if t.all_registrants() => self.keys.is_empty(),
            Some((holder, _)) => holder == n,
            None => false,
        };
        let mut notices = Vec::new();
        if ends {
            if let Some((_, t)) = self.reservation.take() {
                if t.registrants_have_access() {
                    notices = self.keys.keys().map(|&r| (r, ua(0x04))).collect();
                }
            }
        }
        notices
    }

    /// RESERVE of type `t`.
    pub fn reserve(&mut self, n: NexusId, p: ProutParams, t: PrType) -> Result<Notices, PrError> {
        self.check_key(n, p.key)?;
        match self.reservation {
            None => {
                self.reservation = Some((n, t));
                Ok(Vec::new())
            }
            Some((_, held)) if held == t && self.holds(n) => Ok(Vec::new()),
            Some(_) => Err(PrError::Conflict),
        }
    }

    /// RELEASE of type `t`.
    pub fn release(&mut self, n: NexusId, p: ProutParams, t: PrType) -> Result<Notices, PrError> {
        self.check_key(n, p.key)?;
        let Some((_, held)) = self.reservation else {
            return Ok(Vec::new());
        };
        if !self.holds(n) {
            return Ok(Vec::new());
        }
        if held != t {
            return Err(PrError::Check(Sense::new(
                SenseKey::IllegalRequest,
                0x26,
                0x04,
            )));
        }
        self.reservation = None;
        Ok(if held.registrants_have_access() {
            self.keys
                .keys()
                .filter(|&&r| r != n)
                .map(|&r| (r, ua(0x04)))
                .collect()
        } else {
            Vec::new()
        })
    }

    /// CLEAR: every registration and the reservation go.
    pub fn clear(&mut self, n: NexusId, p: ProutParams) -> Result<Notices, PrError> {
        self.check_key(n, p.key)?;
        let notices = self
            .keys
            .keys()
            .filter(|&&r| r != n)
            .map(|&r| (r, ua(0x03)))
            .collect();
        self.keys.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        Ok(notices)
    }

    /// The administrator clears everything (as a CLEAR would): every registrant is told
    /// RESERVATIONS PREEMPTED.
    pub fn admin_clear(&mut self) -> Notices {
        let notices = self.keys.keys().map(|&r| (r, ua(0x03))).collect();
        if self.active() {
            self.generation = self.generation.wrapping_add(1);
        }
        self.keys.clear();
        self.reservation = None;
        notices
    }

    /// PREEMPT with type `t` (SPC-4 5.9.11.4).
    pub fn preempt(&mut self, n: NexusId, p: ProutParams, t: PrType) -> Result<Notices, PrError> {
        self.check_key(n, p.key)?;
        let take_over = match self.reservation {
            Some((_, held)) if held.all_registrants() => p.sa_key == 0,
            Some((holder, _)) => self.keys.get(&holder) == Some(&p.sa_key),
            None => false,
        };
        if p.sa_key == 0 && !take_over {
            return Err(PrError::Check(Sense::invalid_field_in_parameter_list(8)));
        }
        let victims: Vec<NexusId> = self
            .keys
            .iter()
            .filter(|&(&r, &k)| r != n && (k == p.sa_key || (take_over && p.sa_key == 0)))
            .map(|(&r, _)| r)
            .collect();
        if victims.is_empty() && !take_over {
            return Err(PrError::Conflict);
        }
        for r in &victims {
            self.keys.remove(r);
        }
        if take_over {
            self.reservation = Some((n, t));
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(victims.into_iter().map(|r| (r, ua(0x05))).collect())
    }

    /// READ KEYS parameter data (SPC-4 6.15.2).
    pub fn read_keys(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(8 + 8 * self.keys.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&((8 * self.keys.len()) as u32).to_be_bytes());
        for k in self.keys.values() {
            d.extend_from_slice(&k.to_be_bytes());
        }
        d
    }

    /// PRgeneration, the registrations and the reservation.
    pub fn report(&self) -> PrReport {
        PrReport {
            generation: self.generation,
            registrations: self.keys.iter().map(|(&n, &k)| (n, k)).collect(),
            reservation: self
                .reservation
                .map(|(holder, t)| ((!t.all_registrants()).then_some(holder), t)),
        }
    }

    /// Whether `n` is registered.
    pub fn is_registered(&self, n: NexusId) -> bool {
        self.keys.contains_key(&n)
    }

    /// READ FULL STATUS parameter data (SPC-4 6.15.5): one descriptor per registration with
    /// its key, R_HOLDER, scope and type, and an iSCSI TransportID in initiator-port format
    /// (`NAME,i,0xISID`, from `ports`; SPC-4 7.6.4.6).
    pub fn read_full_status(&self, ports: &BTreeMap<NexusId, String>) -> Vec<u8> {
        let mut body = Vec::new();
        for (n, key) in &self.keys {
            let holder = self.holds(*n);
            body.extend_from_slice(&key.to_be_bytes());
            body.extend_from_slice(&[0; 4]);
            body.push(u8::from(holder)); // R_HOLDER
            body.push(match self.reservation {
                Some((_, t)) if holder => t as u8,
                _ => 0,
            });
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&1u16.to_be_bytes()); // RELATIVE TARGET PORT IDENTIFIER
            let name = ports.get(n).map_or("", String::as_str);
            // TransportID: FORMAT CODE 01b | PROTOCOL IDENTIFIER 5h, the name NUL-terminated and
            // padded to a multiple of four bytes.
            let padded = (name.len() + 1).div_ceil(4) * 4;
            let mut tid = vec![0x45, 0];
            tid.extend_from_slice(&(padded as u16).to_be_bytes());
            tid.extend_from_slice(name.as_bytes());
            tid.resize(4 + padded, 0);
            body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut d = self.generation.to_be_bytes().to_vec();
        d.extend_from_slice(&(body.len() as u32).to_be_bytes());
        d.extend_from_slice(&body);
        d
    }

    /// READ RESERVATION parameter data (SPC-4 6.15.3): the holder's key (0 for the
    /// all-registrants types), LU scope and the type.
    pub fn read_reservation(&self) -> Vec<u8> {
        let mut d = self.generation.to_be_bytes().to_vec();
        match self.reservation {
            None => d.extend_from_slice(&0u32.to_be_bytes()),
            Some((holder, t)) => {
                d.extend_from_slice(&16u32.to_be_bytes());
                let key = if t.all_registrants() {
                    0
                } else {
                    self.keys.get(&holder).copied().unwrap_or(0)
                };
                d.extend_from_slice(&key.to_be_bytes());
                d.extend_from_slice(&[0; 5]);
                d.push(t as u8);
                d.extend_from_slice(&[0; 2]);
            }
        }
        d
    }

    /// REPORT CAPABILITIES parameter data (SPC-4 6.15.4): no CRH or SIP_C; ATP_C, PTPL_C, and
    /// PTPL_A while APTPL is active; TMV with every type this module implements.
    pub fn report_capabilities(&self) -> Vec<u8> {
        let mut d = vec![0u8; 8];
        d[1] = 8;
        d[2] = 0x04 | 0x01; // ATP_C, PTPL_C
        d[3] = 0x80 | u8::from(self.aptpl); // TMV, PTPL_A
        d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX
        d[5] = 0x01; // EX_AC_AR
        d
    }
    /// The state as kept across a restart, initiator ports named by `ports` (a registration
    /// whose port has no name is left out: every nexus is named at login).
    pub fn to_record(&self, ports: &BTreeMap<NexusId, String>) -> PrRecord {
        let name = |n: &NexusId| ports.get(n).cloned();
        PrRecord {
            generation: self.generation,
            registrations: self
                .keys
                .iter()
                .filter_map(|(n, &key)| {
                    Some(PrRecordKey {
                        port: name(n)?,
                        key,
                    })
                })
                .collect(),
            reservation: self.reservation.map(|(holder, t)| PrRecordReservation {
                holder: if t.all_registrants() {
                    None
                } else {
                    name(&holder)
                },
                kind: t as u8,
            }),
        }
    }

    /// Rebuilds the state a [`PrRecord`] kept, APTPL active; `nexus_of` gives the nexus id of an
    /// initiator port (the session registry's, so that its next login finds its registration).
    /// Returns the state and the name of each registered nexus.
    pub fn from_record(
        record: &PrRecord,
        mut nexus_of: impl FnMut(&str) -> Option<NexusId>,
    ) -> Result<(PrState, BTreeMap<NexusId, String>), PrRecordError> {
        let mut state = PrState {
            generation: record.generation,
            aptpl: true,
            ..PrState::default()
        };
        let mut ports = BTreeMap::new();
        for r in &record.registrations {
            let n = nexus_of(&r.port).ok_or_else(|| PrRecordError::BadPort(r.port.clone()))?;
            if r.key == 0 || state.keys.insert(n, r.key).is_some() {
                return Err(PrRecordError::BadRegistration(r.port.clone()));
            }
            ports.insert(n, r.port.clone());
        }
        if let Some(res) = &record.reservation {
            let t = PrType::from_code(res.kind).ok_or(PrRecordError::BadType(res.kind))?;
            let bad_holder = || PrRecordError::BadHolder(res.holder.clone());
            let holder = match (&res.holder, t.all_registrants()) {
                (None, true) => *state.keys.keys().next().ok_or_else(bad_holder)?,
                (Some(port), false) => ports
                    .iter()
                    .find_map(|(n, p)| (p == port).then_some(*n))
                    .ok_or_else(bad_holder)?,
                _ => return Err(bad_holder()),
            };
            state.reservation = Some((holder, t));
        }
        Ok((state, ports))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NexusId = NexusId(1);
    const B: NexusId = NexusId(2);
    const C: NexusId = NexusId(3);

    fn p(key: u64, sa_key: u64) -> ProutParams {
        ProutParams {
            key,
            sa_key,
            aptpl: false,
        }
    }

    fn registered(keys: &[(NexusId, u64)]) -> PrState {
        let mut s = PrState::default();
        for &(n, k) in keys {
            s.register(n, p(0, k), false).unwrap();
        }
        s
    }

    #[test]
    fn register_rules() {
        let mut s = PrState::default();
        assert_eq!(
            s.register(A, p(5, 7), false),
            Err(PrError::Conflict),
            "unregistered, key 5"
        );
        s.register(A, p(0, 7), false).unwrap();
        assert_eq!(
            s.register(A, p(6, 8), false),
            Err(PrError::Conflict),
            "wrong key"
        );
        s.register(A, p(7, 8), false).unwrap();
        s.register(A, p(99, 9), true).unwrap();
        assert_eq!(&s.read_keys()[8..], &9u64.to_be_bytes());
        s.register(A, p(9, 0), false).unwrap();
        assert!(!s.active());
        // Registering with SA key 0 when unregistered is a no-op.
        s.register(B, p(0, 0), false).unwrap();
        assert!(!s.active());
        assert_eq!(&s.read_keys()[..4], &4u32.to_be_bytes(), "four changes");
    }

    #[test]
    fn access_by_type_holder_registrant_and_stranger() {
        use PrType::*;
        // (type, registered reads, registered writes, unregistered reads, unregistered writes)
        let table = [
            (ExclusiveAccess, false, false, false, false),
            (WriteExclusive, true, false, true, false),
            (ExclusiveAccessRegistrantsOnly, true, true, false, false),
            (WriteExclusiveRegistrantsOnly, true, true, true, false),
            (ExclusiveAccessAllRegistrants, true, true, false, false),
            (WriteExclusiveAllRegistrants, true, true, true, false),
        ];
        for (t, rr, rw, ur, uw) in table {
            let mut s = registered(&[(A, 1), (B, 2)]);
            s.reserve(A, p(1, 0), t).unwrap();
            let ok = |s: &PrState, n, a| !s.conflicts(n, a);
            assert!(
                ok(&s, A, Access::Read) && ok(&s, A, Access::Write),
                "{t:?} holder"
            );
            assert_eq!(
                (ok(&s, B, Access::Read), ok(&s, B, Access::Write)),
                (rr, rw),
                "{t:?}"
            );
            assert_eq!(
                (ok(&s, C, Access::Read), ok(&s, C, Access::Write)),
                (ur, uw),
                "{t:?}"
            );
            assert!(ok(&s, C, Access::Always));
        }
    }

    #[test]
    fn reserve_release_and_read_reservation() {
        let mut s = registered(&[(A, 1), (B, 2)]);
        assert_eq!(s.read_reservation(), vec![0, 0, 0, 2, 0, 0, 0, 0]);
        s.reserve(A, p(1, 0), PrType::WriteExclusive).unwrap();
        s.reserve(A, p(1, 0), PrType::WriteExclusive).unwrap();
        assert_eq!(
            s.reserve(A, p(1, 0), PrType::ExclusiveAccess),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.reserve(B, p(2, 0), PrType::WriteExclusive),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.reserve(C, p(0, 0), PrType::WriteExclusive),
            Err(PrError::Conflict)
        );
        let r = s.read_reservation();
        assert_eq!(
            (&r[4..8], &r[8..16], r[21]),
            (&[0u8, 0, 0, 16][..], &1u64.to_be_bytes()[..], 1)
        );
        // A non-holder's release does nothing; the holder's with the wrong type is refused.
        s.release(B, p(2, 0), PrType::WriteExclusive).unwrap();
        assert!(s.conflicts(C, Access::Write));
        assert!(matches!(
            s.release(A, p(1, 0), PrType::ExclusiveAccess),
            Err(PrError::Check(_))
        ));
        s.release(A, p(1, 0), PrType::WriteExclusive).unwrap();
        assert!(!s.conflicts(C, Access::Write));
    }

    #[test]
    fn all_registrants_reservation_ends_with_the_last_registrant() {
        let mut s = registered(&[(A, 1), (B, 2)]);
        s.reserve(A, p(1, 0), PrType::WriteExclusiveAllRegistrants)
            .unwrap();
        assert_eq!(
            &s.read_reservation()[8..16],
            &[0; 8],
            "key 0 for all registrants"
        );
        s.register(A, p(1, 0), false).unwrap();
        assert!(s.conflicts(C, Access::Write), "B still holds it");
        let notices = s.register(B, p(2, 0), false).unwrap();
        assert!(notices.is_empty());
        assert!(!s.conflicts(C, Access::Write));
    }

    #[test]
    fn clear_and_preempt() {
        let mut s = registered(&[(A, 1), (B, 2), (C, 3)]);
        s.reserve(B, p(2, 0), PrType::ExclusiveAccess).unwrap();
        // A preempts the holder B: B's registration goes, A holds a new reservation.
        let n = s.preempt(A, p(1, 2), PrType::WriteExclusive).unwrap();
        assert_eq!(n, vec![(B, ua(0x05))]);
        assert!(s.holds(A) && !s.keys.contains_key(&B));
        // Preempting a key nobody has is a conflict; SA key 0 without a take-over is invalid.
        assert_eq!(
            s.preempt(A, p(1, 42), PrType::WriteExclusive),
            Err(PrError::Conflict)
        );
        assert!(matches!(
            s.preempt(A, p(1, 0), PrType::WriteExclusive),
            Err(PrError::Check(_))
        ));
        // C (not the holder) removes A's registration, reservation included.
        let n = s.preempt(C, p(3, 1), PrType::WriteExclusive).unwrap();
        assert_eq!(n, vec![(A, ua(0x05))]);
        assert!(s.holds(C));
        let n = s.clear(C, p(3, 0)).unwrap();
        assert!(n.is_empty() && !s.active());
    }

    /// The module invariants hold after any sequence of service actions from three nexuses
    /// with a few keys: keys are never 0, the reservation's holder is registered, and an
    /// all-registrants reservation exists only while someone is registered.
    #[test]
    fn invariants_hold_under_random_service_actions() {
        use proptest::prelude::*;
        let nexus = prop::sample::select(vec![A, B, C]);
        let key = prop::sample::select(vec![0u64, 1, 2, 3]);
        let kind = prop::sample::select(vec![1u8, 3, 5, 6, 7, 8]);
        let op = (0u8..6, nexus, key.clone(), key, kind);
        proptest!(|(ops in prop::collection::vec(op, 1..60))| {
            let mut s = PrState::default();
            for (action, n, k, sa, t) in ops {
                let params = p(k, sa);
                let t = PrType::from_code(t).unwrap();
                let _ = match action {
                    0 => s.register(n, params, false),
                    1 => s.register(n, params, true),
                    2 => s.reserve(n, params, t),
                    3 => s.release(n, params, t),
                    4 => s.clear(n, params),
                    _ => s.preempt(n, params, t),
                };
                prop_assert!(s.keys.values().all(|&k| k != 0));
                if let Some((holder, t)) = s.reservation {
                    if t.all_registrants() {
                        prop_assert!(!s.keys.is_empty());
                    } else {
                        prop_assert!(s.keys.contains_key(&holder), "holder {holder:?} unregistered");
                    }
                }
                let data = s.read_keys();
                prop_assert_eq!(data.len(), 8 + 8 * s.keys.len());
            }
        });
    }

    #[test]
    fn the_last_register_decides_aptpl_and_report_capabilities_says_so() {
        let mut s = PrState::default();
        assert_eq!(
            s.report_capabilities()[2..4],
            [0x05, 0x80],
            "ATP_C and PTPL_C, not PTPL_A"
        );
        let with = ProutParams {
            aptpl: true,
            ..p(0, 7)
        };
        s.register(A, with, false).unwrap();
        assert!(s.aptpl());
        assert_eq!(s.report_capabilities()[3], 0x81, "PTPL_A");
        // Another action's APTPL bit is ignored; a failed REGISTER changes nothing.
        s.reserve(A, p(7, 0), PrType::WriteExclusive).unwrap();
        assert!(s.aptpl());
        assert_eq!(s.register(B, p(5, 9), false), Err(PrError::Conflict));
        assert!(s.aptpl());
        // An unregistered nexus registering key 0 does nothing at all, APTPL included.
        s.register(C, p(0, 0), false).unwrap();
        assert!(s.aptpl(), "a no-op REGISTER leaves APTPL alone");
        s.register(B, p(0, 9), false).unwrap();
        assert!(!s.aptpl(), "B's REGISTER without APTPL turns it off");
    }

    #[test]
    fn a_record_restores_keys_holder_type_and_generation() {
        let mut s = registered(&[(A, 1), (B, 2), (C, 3)]);
        s.reserve(B, p(2, 0), PrType::ExclusiveAccessRegistrantsOnly)
            .unwrap();
        let ports: BTreeMap<NexusId, String> = [(A, "iqn.a,i,0x1"), (B, "iqn.b,i,0x2")]
            .into_iter()
            .chain([(C, "iqn.c,i,0x3")])
            .map(|(n, name)| (n, name.to_string()))
            .collect();
        let record = s.to_record(&ports);
        assert_eq!(record.registrations.len(), 3);
        // Restored under other nexus ids (a new daemon numbers them afresh).
        let renumber = |port: &str| {
            ports
                .iter()
                .find_map(|(n, p)| (p == port).then_some(NexusId(n.0 + 10)))
        };
        let (r, names) = PrState::from_record(&record, renumber).unwrap();
        let b = NexusId(B.0 + 10);
        assert!(r.aptpl());
        assert_eq!(r.generation, s.generation);
        assert_eq!(r.read_reservation(), s.read_reservation());
        assert_eq!(r.read_keys(), s.read_keys());
        assert!(r.holds(b) && !r.conflicts(NexusId(A.0 + 10), Access::Write));
        assert!(
            r.conflicts(NexusId(99), Access::Read),
            "a stranger is held off"
        );
        assert_eq!(names[&b], "iqn.b,i,0x2");
        // The record survives JSON.
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<PrRecord>(&json).unwrap(), record);
    }

    #[test]
    fn an_all_registrants_record_and_bad_records() {
        let mut s = registered(&[(A, 1), (B, 2)]);
        s.reserve(A, p(1, 0), PrType::WriteExclusiveAllRegistrants)
            .unwrap();
        let ports: BTreeMap<NexusId, String> = [
            (A, "iqn.a,i,0x1".to_string()),
            (B, "iqn.b,i,0x2".to_string()),
        ]
        .into();
        let record = s.to_record(&ports);
        assert_eq!(record.reservation.as_ref().unwrap().holder, None);
        let by_name = |port: &str| ports.iter().find_map(|(n, p)| (p == port).then_some(*n));
        let (r, _) = PrState::from_record(&record, by_name).unwrap();
        assert_eq!(r.read_reservation(), s.read_reservation());
        assert!(!r.conflicts(B, Access::Write) && r.conflicts(C, Access::Write));

        let bad = |f: &dyn Fn(&mut PrRecord)| {
            let mut rec = record.clone();
            f(&mut rec);
            PrState::from_record(&rec, by_name).unwrap_err()
        };
        assert!(matches!(
            bad(&|r| r.registrations[0].key = 0),
            PrRecordError::BadRegistration(_)
        ));
        assert!(matches!(
            bad(&|r| r.registrations[1].port = r.registrations[0].port.clone()),
            PrRecordError::BadRegistration(_)
        ));
        assert!(matches!(
            bad(&|r| r.registrations[0].port = "nobody".into()),
            PrRecordError::BadPort(_)
        ));
        assert!(matches!(
            bad(&|r| r.reservation.as_mut().unwrap().kind = 2),
            PrRecordError::BadType(2)
        ));
        assert!(matches!(
            bad(&|r| r.reservation.as_mut().unwrap().holder = Some("iqn.a,i,0x1".into())),
            PrRecordError::BadHolder(_)
        ));
        assert!(matches!(
            bad(&|r| {
                let res = r.reservation.as_mut().unwrap();
                res.kind = PrType::WriteExclusive as u8;
                res.holder = Some("iqn.z,i,0x9".into());
            }),
            PrRecordError::BadHolder(_)
        ));
    }

    #[test]
    fn parameter_list_checks() {
        let mut data = [0u8; 24];
        data[7] = 1;
        data[15] = 2;
        assert_eq!(parse_params(24, &data), Ok(p(1, 2)));
        assert!(matches!(
            parse_params(16, &data[..16]),
            Err(PrError::Check(_))
        ));
        data[20] = 0x01; // APTPL
        assert_eq!(parse_params(24, &data).map(|p| p.aptpl), Ok(true));
        data[20] = 0x04; // ALL_TG_PT: the one target port
        assert_eq!(parse_params(24, &data), Ok(p(1, 2)));
        data[20] = 0x08; // SPEC_I_PT
        assert!(matches!(parse_params(24, &data), Err(PrError::Check(_))));
    }
}
