//! Login and operational keys as data, and the negotiation engine that applies them
//! (RFC 7143 §6.1–§6.2 negotiation rules, §13 key definitions).
//!
//! [`KEYS`] holds one [`KeyDef`] per key this target understands: its result function
//! ([`KeyKind`]), RFC default, legal range, the phases it may appear in, whether it is leading-only,
//! who may send it, and when it is irrelevant. Everything the engine does follows from that table:
//! - an unknown key (including every `X-` key) is answered `NotUnderstood`;
//! - a key whose value cannot be parsed, or is outside its range, is answered `Reject`;
//! - a key that does not apply to this session is answered `Irrelevant`;
//! - Boolean AND / OR, numerical minimum / maximum and list selection compute the answer from the
//!   initiator's offer and the target's [`TargetLimits`];
//! - a declarative key is recorded and never answered.
//!
//! Protocol violations (a key repeated in one text, a target-only key sent by the initiator, a key
//! outside its phase, an illegal declaration) are returned as errors: the login fails
//! (status 0x0200), while in full feature phase [`negotiate_full_feature`] answers `Reject`.
//!
//! Identity keys (InitiatorName, TargetName, SessionType), AuthMethod and SendTargets are in the
//! table for phase and repetition checks, but their meaning lives in the login state machine,
//! the security stage and [`crate::iscsi::discovery`] (`KeyAction::Special`).

use std::collections::HashSet;

use thiserror::Error;

use super::params::{MAX_DATA_SEGMENT_LENGTH, SessionParams, SessionType, TargetLimits};

/// The reserved answer for a key the responder does not know (RFC 7143 §6.2).
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
/// The reserved answer for an unacceptable offer (RFC 7143 §6.2).
pub const REJECT: &str = "Reject";
/// The reserved answer for a key that does not apply to this session (RFC 7143 §6.2).
pub const IRRELEVANT: &str = "Irrelevant";

/// The longest single value (one list item) of a key defined by RFC 7143, in bytes (§6.1).
pub const MAX_STANDARD_VALUE_LEN: usize = 255;

/// A key's result function (RFC 7143 §6.2.1, §6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Boolean with result `offer AND ours`.
    BooleanAnd,
    /// Boolean with result `offer OR ours`.
    BooleanOr,
    /// Number with result `min(offer, ours)`.
    NumericalMin,
    /// Number with result `max(offer, ours)`.
    NumericalMax,
    /// Comma-separated list; the answer is the first offered value the target supports.
    List,
    /// Declaration: recorded, never answered.
    Declarative,
}

/// Who may send a key (RFC 7143 §13 "Senders").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySender {
    /// Only the initiator.
    Initiator,
    /// Only the target: receiving it from the initiator is a protocol error.
    Target,
    /// Both.
    Both,
}

/// When a key's value matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relevance {
    /// Always relevant.
    Always,
    /// Answered `Irrelevant` in discovery sessions (RFC 7143 §13 "Irrelevant when:
    /// SessionType=Discovery").
    NotInDiscovery,
    /// Always answered `Irrelevant` (marker intervals: markers are never enabled).
    Never,
}

/// Where a key may be exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Login, SecurityNegotiation stage (CSG=0).
    Security,
    /// Login, LoginOperationalNegotiation stage (CSG=1).
    Operational,
    /// Text Requests in full feature phase.
    FullFeature,
}

/// The phases in which a key may appear (RFC 7143 §13 "Use": LO and IO keys are login-only,
/// ALL keys may also be renegotiated in full feature phase, FFPO keys only appear there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Allowed in the security stage.
    pub security: bool,
    /// Allowed in the operational stage.
    pub operational: bool,
    /// Allowed in full feature phase Text Requests.
    pub full_feature: bool,
}

impl Phases {
    const SECURITY: Self = Self::new(true, false, false);
    const OPERATIONAL: Self = Self::new(false, true, false);
    const LOGIN: Self = Self::new(true, true, false);
    const OPERATIONAL_AND_FFP: Self = Self::new(false, true, true);
    const ALL: Self = Self::new(true, true, true);
    const FULL_FEATURE: Self = Self::new(false, false, true);

    const fn new(security: bool, operational: bool, full_feature: bool) -> Self {
        Self {
            security,
            operational,
            full_feature,
        }
    }

    /// True when the key may appear in `phase`.
    pub fn allows(self, phase: Phase) -> bool {
        match phase {
            Phase::Security => self.security,
            Phase::Operational => self.operational,
            Phase::FullFeature => self.full_feature,
        }
    }
}

/// How the target computes its side of a key and records the result.
#[derive(Clone, Copy)]
enum Handler {
    /// Boolean: the target's value, and where the result goes.
    Bool {
        ours: fn(&TargetLimits) -> bool,
        apply: fn(&mut SessionParams, bool),
    },
    /// Number: the target's value, and where the result goes.
    Num {
        ours: fn(&TargetLimits) -> u32,
        apply: fn(&mut SessionParams, u32),
    },
    /// List: which values the target accepts, and where the chosen one goes.
    List {
        accepts: fn(&TargetLimits, &str) -> bool,
        apply: fn(&mut SessionParams, &str),
    },
    /// Declared number (range-checked), recorded as is.
    DeclaredNum { apply: fn(&mut SessionParams, u32) },
    /// Declared string, recorded as is.
    DeclaredText { apply: fn(&mut SessionParams, &str) },
    /// Understood, nothing to record.
    Ignore,
    /// Interpreted by the login state machine, the security stage or discovery.
    Special,
}

/// One key of RFC 7143 §13 (and RFC 7144 / RFC 7145 where initiators send them).
#[derive(Clone, Copy)]
pub struct KeyDef {
    /// The key name, case-sensitive.
    pub name: &'static str,
    /// Its result function.
    pub kind: KeyKind,
    /// Its RFC default value.
    pub default: &'static str,
    /// Legal numeric range (inclusive) for numerical keys.
    pub range: Option<(u32, u32)>,
    /// The phases in which it may appear.
    pub phases: Phases,
    /// LO ("leading only"): meaningful only on the leading connection of a session.
    pub leading_only: bool,
    /// Who may send it.
    pub sender: KeySender,
    /// When it is irrelevant.
    pub relevance: Relevance,
    handler: Handler,
}

impl std::fmt::Debug for KeyDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDef")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("default", &self.default)
            .field("range", &self.range)
            .field("phases", &self.phases)
            .field("leading_only", &self.leading_only)
            .field("sender", &self.sender)
            .field("relevance", &self.relevance)
            .finish_non_exhaustive()
    }
}

impl KeyDef {
    /// True for declarative keys (no answer is expected).
    pub fn is_declarative(&self) -> bool {
        self.kind == KeyKind::Declarative
    }
}

/// Legal range of every data length key (RFC 7143 §13.12–§13.14).
const LENGTH_RANGE: Option<(u32, u32)> = Some((512, MAX_DATA_SEGMENT_LENGTH));

/// Builds a table entry; the table below reads as one line per RFC property.
#[allow(clippy::too_many_arguments)]
const fn key(
    name: &'static str,
    kind: KeyKind,
    default: &'static str,
    range: Option<(u32, u32)>,
    phases: Phases,
    leading_only: bool,
    sender: KeySender,
    relevance: Relevance,
    handler: Handler,
) -> KeyDef {
    KeyDef {
        name,
        kind,
        default,
        range,
        phases,
        leading_only,
        sender,
        relevance,
        handler,
    }
}

use KeyKind::{BooleanAnd, BooleanOr, Declarative, List, NumericalMax, NumericalMin};
use KeySender::{Both, Initiator, Target};
use Relevance::{Always, Never, NotInDiscovery};

/// Every key this target understands.
#[rustfmt::skip]
pub static KEYS: &[KeyDef] = &[
    // --- Identity and session type: declared by the initiator in the first login PDU.
    key("InitiatorName", Declarative, "", None, Phases::LOGIN, false, Initiator, Always, Handler::Special),
    key("TargetName", Declarative, "", None, Phases::LOGIN, false, Initiator, Always, Handler::Special),
    key("SessionType", Declarative, "Normal", None, Phases::LOGIN, true, Initiator, Always, Handler::Special),
    key("InitiatorAlias", Declarative, "", None, Phases::ALL, false, Initiator, Always,
        Handler::DeclaredText { apply: |p, v| p.initiator_alias = Some(v.to_owned()) }),
    // --- Declared by the target only.
    key("TargetAlias", Declarative, "", None, Phases::ALL, false, Target, Always, Handler::Ignore),
    key("TargetAddress", Declarative, "", None, Phases::ALL, false, Target, Always, Handler::Ignore),
    key("TargetPortalGroupTag", Declarative, "", Some((0, 65535)), Phases::LOGIN, false, Target, Always, Handler::Ignore),
    // --- Security stage.
    key("AuthMethod", List, "None", None, Phases::SECURITY, false, Both, Always, Handler::Special),
    // CHAP (RFC 7143 §12.1.3): the security stage runs the exchange (`login::security`).
    key("CHAP_A", List, "", None, Phases::SECURITY, false, Both, Always, Handler::Special),
    key("CHAP_I", Declarative, "", None, Phases::SECURITY, false, Both, Always, Handler::Special),
    key("CHAP_C", Declarative, "", None, Phases::SECURITY, false, Both, Always, Handler::Special),
    key("CHAP_N", Declarative, "", None, Phases::SECURITY, false, Both, Always, Handler::Special),
    key("CHAP_R", Declarative, "", None, Phases::SECURITY, false, Both, Always, Handler::Special),
    // --- Full feature phase only.
    key("SendTargets", Declarative, "", None, Phases::FULL_FEATURE, false, Initiator, Always, Handler::Special),
    // --- Connection-scope operational keys (IO).
    key("HeaderDigest", List, "None", None, Phases::OPERATIONAL, false, Both, Always,
        Handler::List { accepts: |l, v| l.header_digest.accepts(v), apply: |p, v| p.header_digest = v == "CRC32C" }),
    key("DataDigest", List, "None", None, Phases::OPERATIONAL, false, Both, Always,
        Handler::List { accepts: |l, v| l.data_digest.accepts(v), apply: |p, v| p.data_digest = v == "CRC32C" }),
    key("MaxRecvDataSegmentLength", Declarative, "8192", LENGTH_RANGE, Phases::OPERATIONAL_AND_FFP, false, Both, Always,
        Handler::DeclaredNum { apply: |p, v| p.max_xmit_data_segment_length = v }),
    key("OFMarker", BooleanAnd, "No", None, Phases::OPERATIONAL, false, Both, Always,
        Handler::Bool { ours: |_| false, apply: |_, _| {} }),
    key("IFMarker", BooleanAnd, "No", None, Phases::OPERATIONAL, false, Both, Always,
        Handler::Bool { ours: |_| false, apply: |_, _| {} }),
    key("OFMarkInt", NumericalMin, "2048", Some((1, 65535)), Phases::OPERATIONAL, false, Both, Never, Handler::Ignore),
    key("IFMarkInt", NumericalMin, "2048", Some((1, 65535)), Phases::OPERATIONAL, false, Both, Never, Handler::Ignore),
    // --- Session-scope operational keys (LO).
    key("MaxConnections", NumericalMin, "1", Some((1, 65535)), Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Num { ours: |_| 1, apply: |p, v| p.max_connections = to_u16(v) }),
    key("InitialR2T", BooleanOr, "Yes", None, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Bool { ours: |l| l.initial_r2t, apply: |p, v| p.initial_r2t = v }),
    key("ImmediateData", BooleanAnd, "Yes", None, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Bool { ours: |l| l.immediate_data, apply: |p, v| p.immediate_data = v }),
    key("MaxBurstLength", NumericalMin, "262144", LENGTH_RANGE, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Num { ours: |l| l.max_burst_cap(), apply: |p, v| p.max_burst_length = v }),
    key("FirstBurstLength", NumericalMin, "65536", LENGTH_RANGE, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Num { ours: |l| l.first_burst_cap(), apply: |p, v| p.first_burst_length = v }),
    key("DefaultTime2Wait", NumericalMax, "2", Some((0, 3600)), Phases::OPERATIONAL, true, Both, Always,
        Handler::Num { ours: |l| u32::from(l.default_time2wait), apply: |p, v| p.default_time2wait = to_u16(v) }),
    key("DefaultTime2Retain", NumericalMin, "20", Some((0, 3600)), Phases::OPERATIONAL, true, Both, Always,
        Handler::Num { ours: |l| u32::from(l.default_time2retain), apply: |p, v| p.default_time2retain = to_u16(v) }),
    key("MaxOutstandingR2T", NumericalMin, "1", Some((1, 65535)), Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Num { ours: |l| u32::from(l.max_outstanding_r2t_cap()), apply: |p, v| p.max_outstanding_r2t = to_u16(v) }),
    key("DataPDUInOrder", BooleanOr, "Yes", None, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Bool { ours: |_| true, apply: |p, v| p.data_pdu_in_order = v }),
    key("DataSequenceInOrder", BooleanOr, "Yes", None, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::Bool { ours: |_| true, apply: |p, v| p.data_sequence_in_order = v }),
    key("ErrorRecoveryLevel", NumericalMin, "0", Some((0, 2)), Phases::OPERATIONAL, true, Both, Always,
        Handler::Num { ours: |_| 0, apply: |p, v| p.error_recovery_level = u8::try_from(v).unwrap_or(0) }),
    key("TaskReporting", List, "RFC3720", None, Phases::OPERATIONAL, true, Both, NotInDiscovery,
        Handler::List { accepts: |_, v| v == "RFC3720", apply: |_, _| {} }),
    key("iSCSIProtocolLevel", NumericalMin, "1", Some((0, 31)), Phases::OPERATIONAL, true, Both, Always,
        Handler::Num { ours: |_| 1, apply: |_, _| {} }),
    key("X#NodeArchitecture", Declarative, "", None, Phases::LOGIN, true, Both, Always, Handler::Ignore),
    key("RDMAExtensions", BooleanAnd, "No", None, Phases::OPERATIONAL, true, Both, Always,
        Handler::Bool { ours: |_| false, apply: |_, _| {} }),
];

/// Narrows a range-checked value; every caller's range fits `u16`.
fn to_u16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Looks a key up by its exact (case-sensitive) name.
pub fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// A key the initiator had no right to send where and how it sent it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyViolation {
    /// A key only the target may send (TargetAlias, TargetAddress, TargetPortalGroupTag).
    #[error("key {key} may only be sent by the target")]
    TargetOnly {
        /// The key.
        key: String,
    },
    /// A key outside the phases where it is allowed.
    #[error("key {key} is not allowed in the {phase:?} phase")]
    WrongPhase {
        /// The key.
        key: String,
        /// The phase it was sent in.
        phase: Phase,
    },
    /// A declaration whose value is malformed or out of range.
    #[error("invalid value {value:?} declared for {key}")]
    InvalidDeclaration {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// A Text Request negotiation that cannot be answered key by key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NegotiationError {
    /// The same key appeared twice in one text (RFC 7143 §6.1: a protocol error).
    #[error("key {0} repeated in one negotiation")]
    RepeatedKey(String),
}

/// What the engine decided for one offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyAction {
    /// Answer `key=value`.
    Answer(String),
    /// Accepted; no answer (declarations, and answers the initiator sent us).
    Silent,
    /// The caller owns this key (identity keys, AuthMethod, SendTargets).
    Special,
}

/// The context one negotiation step runs in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiator<'a> {
    /// The target's side.
    pub limits: &'a TargetLimits,
    /// Where the keys arrived.
    pub phase: Phase,
    /// The session's type (decides `Irrelevant`).
    pub session_type: SessionType,
    /// False for a connection joining an existing session: LO keys are then `Irrelevant`.
    pub leading: bool,
}

impl Negotiator<'_> {
    /// Negotiates one offered key, recording the result in `params`.
    pub(crate) fn negotiate(
        &self,
        key: &str,
        value: &str,
        params: &mut SessionParams,
    ) -> Result<KeyAction, KeyViolation> {
        let Some(def) = key_def(key) else {
            return Ok(KeyAction::Answer(NOT_UNDERSTOOD.into()));
        };
        self.check_allowed(def)?;
        if matches!(def.handler, Handler::Special) {
            return Ok(KeyAction::Special);
        }
        if is_reserved_answer(value) && !def.is_declarative() {
            // An answer, not an offer: the target proposes nothing that needs one.
            return Ok(KeyAction::Silent);
        }
        if let Some(answer) = self.irrelevance(def) {
            return Ok(KeyAction::Answer(answer.into()));
        }
        if value.split(',').any(|v| v.len() > MAX_STANDARD_VALUE_LEN) {
            if def.is_declarative() {
                return Err(invalid_declaration(def, value));
            }
            return Ok(KeyAction::Answer(REJECT.into()));
        }
        self.apply(def, value, params)
    }

    /// Sender and phase checks.
    fn check_allowed(&self, def: &KeyDef) -> Result<(), KeyViolation> {
        if def.sender == KeySender::Target {
            return Err(KeyViolation::TargetOnly {
                key: def.name.into(),
            });
        }
        if !def.phases.allows(self.phase) {
            return Err(KeyViolation::WrongPhase {
                key: def.name.into(),
                phase: self.phase,
            });
        }
        Ok(())
    }

    /// `Some("Irrelevant")` when the key does not apply to this session or connection.
    fn irrelevance(&self, def: &KeyDef) -> Option<&'static str> {
        let irrelevant = match def.relevance {
            Relevance::Always => false,
            Relevance::Never => true,
            Relevance::NotInDiscovery => self.session_type == SessionType::Discovery,
        };
        (irrelevant || (def.leading_only && !self.leading)).then_some(IRRELEVANT)
    }

    /// Runs the key's result function.
    fn apply(
        &self,
        def: &KeyDef,
        value: &str,
        params: &mut SessionParams,
    ) -> Result<KeyAction, KeyViolation> {
        let answer = match def.handler {
            Handler::Bool { ours, apply } => negotiate_bool(def.kind, value, ours(self.limits))
                .inspect(|&r| apply(params, r))
                .map_or(REJECT.into(), |r| yes_no(r).into()),
            Handler::Num { ours, apply } => negotiate_num(def, value, ours(self.limits))
                .inspect(|&r| apply(params, r))
                .map_or(REJECT.into(), |r| r.to_string()),
            Handler::List { accepts, apply } => {
                select_from_list(value, |v| accepts(self.limits, v))
                    .inspect(|v| apply(params, v))
                    .map_or(REJECT.into(), str::to_owned)
            }
            Handler::DeclaredNum { apply } => {
                let v = parse_number(value)
                    .filter(|&v| in_range(def, v))
                    .ok_or_else(|| invalid_declaration(def, value))?;
                apply(params, v);
                return Ok(KeyAction::Silent);
            }
            Handler::DeclaredText { apply } => {
                apply(params, value);
                return Ok(KeyAction::Silent);
            }
            Handler::Ignore if def.kind == KeyKind::Declarative => return Ok(KeyAction::Silent),
            Handler::Ignore => IRRELEVANT.into(),
            Handler::Special => return Ok(KeyAction::Special),
        };
        Ok(KeyAction::Answer(answer))
    }
}

fn invalid_declaration(def: &KeyDef, value: &str) -> KeyViolation {
    KeyViolation::InvalidDeclaration {
        key: def.name.into(),
        value: value.into(),
    }
}

/// True for the values reserved for answers (RFC 7143 §6.2).
fn is_reserved_answer(value: &str) -> bool {
    matches!(value, NOT_UNDERSTOOD | REJECT | IRRELEVANT)
}

/// `Yes` / `No`.
pub(crate) fn yes_no(value: bool) -> &'static str {
    if value { "Yes" } else { "No" }
}

/// Parses `Yes` / `No` exactly (RFC 7143 §5.1: boolean values are case-sensitive).
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// Boolean AND / OR result; `None` for an unparsable offer.
fn negotiate_bool(kind: KeyKind, offer: &str, ours: bool) -> Option<bool> {
    let offer = parse_bool(offer)?;
    Some(match kind {
        KeyKind::BooleanOr => offer || ours,
        _ => offer && ours,
    })
}

/// Numerical min / max result; `None` for an unparsable or out-of-range offer.
fn negotiate_num(def: &KeyDef, offer: &str, ours: u32) -> Option<u32> {
    let offer = parse_number(offer).filter(|&v| in_range(def, v))?;
    Some(match def.kind {
        KeyKind::NumericalMax => offer.max(ours),
        _ => offer.min(ours),
    })
}

fn in_range(def: &KeyDef, value: u32) -> bool {
    def.range.is_none_or(|(lo, hi)| (lo..=hi).contains(&value))
}

/// Parses a decimal or `0x` hexadecimal constant (RFC 7143 §5.1 numerical values).
pub(crate) fn parse_number(value: &str) -> Option<u32> {
    if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u32::from_str_radix(hex, 16).ok();
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// The first value of a comma-separated offer that `accepts` takes (RFC 7143 §6.2: the responder
/// honors the originator's order).
pub(crate) fn select_from_list(offer: &str, accepts: impl Fn(&str) -> bool) -> Option<&str> {
    offer.split(',').find(|v| accepts(v))
}

/// The first key that appears twice in `pairs`, if any.
pub(crate) fn find_repeated_key(pairs: &[(String, String)]) -> Option<&str> {
    let mut seen = HashSet::new();
    pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| !seen.insert(*k))
}

/// Keeps FirstBurstLength ≤ MaxBurstLength (RFC 7143 §13.14), fixing the answer if one was
/// given for FirstBurstLength.
pub(crate) fn reconcile_bursts(params: &mut SessionParams, answers: &mut [(String, String)]) {
    if params.first_burst_length <= params.max_burst_length {
        return;
    }
    params.first_burst_length = params.max_burst_length;
    for (key, value) in answers.iter_mut() {
        if key == "FirstBurstLength" && value != REJECT && value != IRRELEVANT {
            *value = params.first_burst_length.to_string();
        }
    }
}

/// Negotiates the keys of a full feature phase Text Request (RFC 7143 §6.1, §11.10), updating
/// `params` and returning the answers in offer order.
///
/// Only ALL keys may change here (MaxRecvDataSegmentLength, InitiatorAlias); every login-only key
/// and every key the initiator may not send is answered `Reject`, unknown keys `NotUnderstood`.
/// SendTargets is not handled here: route it to [`crate::iscsi::discovery`] first (if it reaches
/// this function it is answered `Reject`). The new values take effect once the final Text
/// Response of the exchange has been sent.
pub fn negotiate_full_feature(
    pairs: &[(String, String)],
    params: &mut SessionParams,
    limits: &TargetLimits,
) -> Result<Vec<(String, String)>, NegotiationError> {
    if let Some(key) = find_repeated_key(pairs) {
        return Err(NegotiationError::RepeatedKey(key.to_owned()));
    }
    let negotiator = Negotiator {
        limits,
        phase: Phase::FullFeature,
        session_type: params.session_type,
        leading: true,
    };
    let mut answers = Vec::new();
    for (key, value) in pairs {
        let answer = match negotiator.negotiate(key, value, params) {
            Ok(KeyAction::Answer(answer)) => answer,
            Ok(KeyAction::Silent) => continue,
            Ok(KeyAction::Special) | Err(_) => REJECT.into(),
        };
        answers.push((key.clone(), answer));
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::super::params::DigestSupport;
    use super::*;

    fn op(limits: &TargetLimits, session_type: SessionType) -> Negotiator<'_> {
        Negotiator {
            limits,
            phase: Phase::Operational,
            session_type,
            leading: true,
        }
    }

    /// Negotiates one key in a normal session's operational stage with default limits.
    fn answer(key: &str, value: &str) -> (KeyAction, SessionParams) {
        answer_with(&TargetLimits::default(), key, value)
    }

    fn answer_with(limits: &TargetLimits, key: &str, value: &str) -> (KeyAction, SessionParams) {
        let mut params = SessionParams::default();
        let action = op(limits, SessionType::Normal)
            .negotiate(key, value, &mut params)
            .unwrap();
        (action, params)
    }

    fn ans(v: &str) -> KeyAction {
        KeyAction::Answer(v.into())
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn table_names_are_unique_and_defaults_are_in_range() {
        let mut names = HashSet::new();
        for def in KEYS {
            assert!(names.insert(def.name), "duplicate {}", def.name);
            if let (Some((lo, hi)), Some(d)) = (def.range, parse_number(def.default)) {
                assert!((lo..=hi).contains(&d), "{} default out of range", def.name);
            }
        }
    }

    #[test]
    fn key_lookup_is_case_sensitive() {
        assert!(key_def("MaxBurstLength").is_some());
        assert!(key_def("maxburstlength").is_none());
        assert!(key_def("SendTargets").unwrap().phases.full_feature);
        assert!(
            key_def("MaxRecvDataSegmentLength")
                .unwrap()
                .is_declarative()
        );
    }

    #[test]
    fn boolean_and_immediate_data() {
        assert_eq!(answer("ImmediateData", "Yes").0, ans("Yes"));
        assert_eq!(answer("ImmediateData", "No").0, ans("No"));
        let no_imm = TargetLimits {
            immediate_data: false,
            ..TargetLimits::default()
        };
        let (a, p) = answer_with(&no_imm, "ImmediateData", "Yes");
        assert_eq!(a, ans("No"));
        assert!(!p.immediate_data);
    }

    #[test]
    fn boolean_or_initial_r2t() {
        let (a, p) = answer("InitialR2T", "No");
        assert_eq!(a, ans("No"));
        assert!(!p.initial_r2t);
        assert_eq!(answer("InitialR2T", "Yes").0, ans("Yes"));
        let strict = TargetLimits {
            initial_r2t: true,
            ..TargetLimits::default()
        };
        assert_eq!(answer_with(&strict, "InitialR2T", "No").0, ans("Yes"));
    }

    #[test]
    fn boolean_or_data_ordering_always_yes() {
        assert_eq!(answer("DataPDUInOrder", "No").0, ans("Yes"));
        assert_eq!(answer("DataSequenceInOrder", "No").0, ans("Yes"));
    }

    #[test]
    fn boolean_malformed_value_is_rejected() {
        let (a, p) = answer("ImmediateData", "yes");
        assert_eq!(a, ans("Reject"));
        assert!(p.immediate_data, "rejected key keeps its default");
    }

    #[test]
    fn numerical_min_max_burst_length() {
        let (a, p) = answer("MaxBurstLength", "16776192");
        assert_eq!(a, ans("1048576"));
        assert_eq!(p.max_burst_length, 1_048_576);
        let (a, p) = answer("MaxBurstLength", "65536");
        assert_eq!(a, ans("65536"));
        assert_eq!(p.max_burst_length, 65536);
    }

    #[test]
    fn numerical_min_first_burst_outstanding_r2t_retain_erl() {
        assert_eq!(answer("FirstBurstLength", "16776192").0, ans("262144"));
        assert_eq!(answer("MaxOutstandingR2T", "1").0, ans("1"));
        assert_eq!(answer("MaxOutstandingR2T", "64").0, ans("16"));
        assert_eq!(answer("DefaultTime2Retain", "0").0, ans("0"));
        assert_eq!(answer("DefaultTime2Retain", "3600").0, ans("20"));
        assert_eq!(answer("ErrorRecoveryLevel", "2").0, ans("0"));
        assert_eq!(answer("MaxConnections", "8").0, ans("1"));
        assert_eq!(answer("iSCSIProtocolLevel", "2").0, ans("1"));
    }

    #[test]
    fn numerical_max_default_time2wait() {
        let (a, p) = answer("DefaultTime2Wait", "0");
        assert_eq!(a, ans("2"));
        assert_eq!(p.default_time2wait, 2);
        assert_eq!(answer("DefaultTime2Wait", "10").0, ans("10"));
    }

    #[test]
    fn numerical_accepts_hex() {
        assert_eq!(answer("MaxBurstLength", "0x10000").0, ans("65536"));
    }

    #[test]
    fn numerical_out_of_range_or_malformed_is_rejected() {
        assert_eq!(answer("MaxBurstLength", "511").0, ans("Reject"));
        assert_eq!(answer("MaxBurstLength", "16777216").0, ans("Reject"));
        assert_eq!(answer("ErrorRecoveryLevel", "3").0, ans("Reject"));
        assert_eq!(answer("MaxOutstandingR2T", "0").0, ans("Reject"));
        assert_eq!(answer("DefaultTime2Wait", "3601").0, ans("Reject"));
        assert_eq!(answer("MaxBurstLength", "-1").0, ans("Reject"));
        assert_eq!(answer("MaxBurstLength", "").0, ans("Reject"));
        assert_eq!(answer("MaxBurstLength", "99999999999").0, ans("Reject"));
        assert_eq!(answer("MaxBurstLength", "0x").0, ans("Reject"));
    }

    #[test]
    fn list_digest_follows_initiator_order() {
        let (a, p) = answer("HeaderDigest", "CRC32C,None");
        assert_eq!(a, ans("CRC32C"));
        assert!(p.header_digest);
        let (a, p) = answer("DataDigest", "None,CRC32C");
        assert_eq!(a, ans("None"));
        assert!(!p.data_digest);
        assert_eq!(answer("HeaderDigest", "X-fancy,CRC32C").0, ans("CRC32C"));
    }

    #[test]
    fn list_digest_respects_target_support() {
        let none_only = TargetLimits {
            header_digest: DigestSupport::NoneOnly,
            ..TargetLimits::default()
        };
        assert_eq!(
            answer_with(&none_only, "HeaderDigest", "CRC32C,None").0,
            ans("None")
        );
        assert_eq!(
            answer_with(&none_only, "HeaderDigest", "CRC32C").0,
            ans("Reject")
        );
        let crc_only = TargetLimits {
            data_digest: DigestSupport::Crc32cOnly,
            ..TargetLimits::default()
        };
        assert_eq!(
            answer_with(&crc_only, "DataDigest", "None,CRC32C").0,
            ans("CRC32C")
        );
    }

    #[test]
    fn list_task_reporting_picks_rfc3720() {
        assert_eq!(
            answer("TaskReporting", "FastAbort,RFC3720").0,
            ans("RFC3720")
        );
        assert_eq!(answer("TaskReporting", "FastAbort").0, ans("Reject"));
    }

    #[test]
    fn markers_are_answered_no_and_intervals_irrelevant() {
        assert_eq!(answer("OFMarker", "Yes").0, ans("No"));
        assert_eq!(answer("IFMarker", "No").0, ans("No"));
        assert_eq!(answer("OFMarkInt", "2048").0, ans("Irrelevant"));
        assert_eq!(answer("IFMarkInt", "1~65535").0, ans("Irrelevant"));
    }

    #[test]
    fn rdma_extensions_answered_no() {
        assert_eq!(answer("RDMAExtensions", "Yes").0, ans("No"));
    }

    #[test]
    fn unknown_and_private_keys_are_not_understood() {
        assert_eq!(answer("X-com.example.Foo", "1").0, ans("NotUnderstood"));
        assert_eq!(answer("Bogus", "1").0, ans("NotUnderstood"));
        assert_eq!(answer("headerdigest", "None").0, ans("NotUnderstood"));
    }

    #[test]
    fn discovery_session_marks_normal_only_keys_irrelevant() {
        let limits = TargetLimits::default();
        let n = op(&limits, SessionType::Discovery);
        let mut p = SessionParams::default();
        for key in [
            "InitialR2T",
            "ImmediateData",
            "MaxBurstLength",
            "FirstBurstLength",
            "MaxOutstandingR2T",
            "DataPDUInOrder",
            "DataSequenceInOrder",
            "MaxConnections",
        ] {
            assert_eq!(
                n.negotiate(key, "1", &mut p).unwrap(),
                ans("Irrelevant"),
                "{key}"
            );
        }
        assert_eq!(
            n.negotiate("DefaultTime2Wait", "2", &mut p).unwrap(),
            ans("2")
        );
        assert_eq!(
            n.negotiate("HeaderDigest", "None", &mut p).unwrap(),
            ans("None")
        );
        assert_eq!(
            n.negotiate("ErrorRecoveryLevel", "0", &mut p).unwrap(),
            ans("0")
        );
        assert_eq!(p, SessionParams::default());
    }

    #[test]
    fn non_leading_connection_answers_lo_keys_irrelevant() {
        let limits = TargetLimits::default();
        let n = Negotiator {
            leading: false,
            ..op(&limits, SessionType::Normal)
        };
        let mut p = SessionParams::default();
        assert_eq!(
            n.negotiate("MaxBurstLength", "4096", &mut p).unwrap(),
            ans("Irrelevant")
        );
        assert_eq!(
            n.negotiate("HeaderDigest", "CRC32C", &mut p).unwrap(),
            ans("CRC32C")
        );
    }

    #[test]
    fn declared_max_recv_data_segment_length_sets_xmit_silently() {
        let (a, p) = answer("MaxRecvDataSegmentLength", "65536");
        assert_eq!(a, KeyAction::Silent);
        assert_eq!(p.max_xmit_data_segment_length, 65536);
        assert_eq!(p.max_recv_data_segment_length, 8192);
    }

    #[test]
    fn declared_max_recv_data_segment_length_out_of_range_is_violation() {
        let limits = TargetLimits::default();
        let mut p = SessionParams::default();
        let err = op(&limits, SessionType::Normal)
            .negotiate("MaxRecvDataSegmentLength", "100", &mut p)
            .unwrap_err();
        assert!(matches!(err, KeyViolation::InvalidDeclaration { .. }));
    }

    #[test]
    fn values_longer_than_255_bytes_are_rejected() {
        let long = "9".repeat(256);
        assert_eq!(answer("MaxBurstLength", &long).0, ans("Reject"));
        let list = format!("None,{}", "X".repeat(256));
        assert_eq!(answer("HeaderDigest", &list).0, ans("Reject"));
        let limits = TargetLimits::default();
        let mut p = SessionParams::default();
        let err = op(&limits, SessionType::Normal)
            .negotiate("InitiatorAlias", &"a".repeat(256), &mut p)
            .unwrap_err();
        assert!(matches!(err, KeyViolation::InvalidDeclaration { .. }));
        assert_eq!(
            answer("InitiatorAlias", &"a".repeat(255)).0,
            KeyAction::Silent
        );
    }

    #[test]
    fn initiator_alias_is_recorded_silently() {
        let (a, p) = answer("InitiatorAlias", "host-a");
        assert_eq!(a, KeyAction::Silent);
        assert_eq!(p.initiator_alias.as_deref(), Some("host-a"));
    }

    #[test]
    fn target_only_keys_from_initiator_are_violations() {
        let limits = TargetLimits::default();
        let mut p = SessionParams::default();
        for key in ["TargetAlias", "TargetAddress", "TargetPortalGroupTag"] {
            let err = op(&limits, SessionType::Normal)
                .negotiate(key, "x", &mut p)
                .unwrap_err();
            assert!(matches!(err, KeyViolation::TargetOnly { .. }), "{key}");
        }
    }

    #[test]
    fn keys_outside_their_phase_are_violations() {
        let limits = TargetLimits::default();
        let mut p = SessionParams::default();
        let sec = Negotiator {
            phase: Phase::Security,
            ..op(&limits, SessionType::Normal)
        };
        assert!(matches!(
            sec.negotiate("MaxBurstLength", "512", &mut p),
            Err(KeyViolation::WrongPhase { .. })
        ));
        assert!(matches!(
            op(&limits, SessionType::Normal).negotiate("AuthMethod", "None", &mut p),
            Err(KeyViolation::WrongPhase { .. })
        ));
        assert_eq!(
            sec.negotiate("AuthMethod", "None", &mut p),
            Ok(KeyAction::Special)
        );
    }

    #[test]
    fn reserved_values_from_initiator_are_ignored() {
        let (a, p) = answer("MaxBurstLength", "Reject");
        assert_eq!(a, KeyAction::Silent);
        assert_eq!(p, SessionParams::default());
    }

    #[test]
    fn repeated_key_is_found() {
        let p = pairs(&[("A", "1"), ("B", "2"), ("A", "3")]);
        assert_eq!(find_repeated_key(&p), Some("A"));
        assert_eq!(find_repeated_key(&p[..2]), None);
    }

    #[test]
    fn reconcile_bursts_caps_first_burst_and_fixes_answer() {
        let mut params = SessionParams {
            max_burst_length: 4096,
            first_burst_length: 8192,
            ..SessionParams::default()
        };
        let mut answers = pairs(&[("FirstBurstLength", "8192"), ("MaxBurstLength", "4096")]);
        reconcile_bursts(&mut params, &mut answers);
        assert_eq!(params.first_burst_length, 4096);
        assert_eq!(answers[0].1, "4096");
    }

    #[test]
    fn full_feature_accepts_max_recv_data_segment_length() {
        let mut params = SessionParams::default();
        let answers = negotiate_full_feature(
            &pairs(&[
                ("MaxRecvDataSegmentLength", "131072"),
                ("InitiatorAlias", "b"),
            ]),
            &mut params,
            &TargetLimits::default(),
        )
        .unwrap();
        assert!(answers.is_empty());
        assert_eq!(params.max_xmit_data_segment_length, 131_072);
        assert_eq!(params.initiator_alias.as_deref(), Some("b"));
    }

    #[test]
    fn full_feature_rejects_login_only_and_target_keys() {
        let mut params = SessionParams::default();
        let answers = negotiate_full_feature(
            &pairs(&[
                ("MaxBurstLength", "4096"),
                ("HeaderDigest", "CRC32C"),
                ("TargetAlias", "x"),
                ("MaxRecvDataSegmentLength", "1"),
                ("X-foo", "bar"),
                ("SendTargets", "All"),
            ]),
            &mut params,
            &TargetLimits::default(),
        )
        .unwrap();
        assert_eq!(
            answers,
            pairs(&[
                ("MaxBurstLength", "Reject"),
                ("HeaderDigest", "Reject"),
                ("TargetAlias", "Reject"),
                ("MaxRecvDataSegmentLength", "Reject"),
                ("X-foo", "NotUnderstood"),
                ("SendTargets", "Reject"),
            ])
        );
        assert_eq!(params, SessionParams::default());
    }

    #[test]
    fn full_feature_repeated_key_is_error() {
        let mut params = SessionParams::default();
        let err = negotiate_full_feature(
            &pairs(&[
                ("MaxRecvDataSegmentLength", "4096"),
                ("MaxRecvDataSegmentLength", "8192"),
            ]),
            &mut params,
            &TargetLimits::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            NegotiationError::RepeatedKey("MaxRecvDataSegmentLength".into())
        );
    }
}
