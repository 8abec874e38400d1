//! Negotiated session parameters and the target's own limits (RFC 7143 §13).
//!
//! [`SessionParams`] is the result of login negotiation (and of later Text Request
//! renegotiation), named after the RFC keys, with the RFC defaults in [`Default`].
//! [`TargetLimits`] is what this target is willing to accept or offer; the negotiation in
//! [`super::keys`] combines the two with each key's result function.

/// The largest data segment any iSCSI PDU may declare (RFC 7143 §13.12: 2^24 - 1).
pub const MAX_DATA_SEGMENT_LENGTH: u32 = 16_777_215;

/// The data segment limit that applies when MaxRecvDataSegmentLength was never declared, and
/// to every Login PDU (RFC 7143 §13.12).
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;

/// The longest iSCSI name RFC 7143 §4.2.7.1 allows, in bytes.
pub const MAX_ISCSI_NAME_LEN: usize = 223;

/// The SessionType key (RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    /// A session for SCSI I/O to one target (`SessionType=Normal`, the default).
    #[default]
    Normal,
    /// A session that only runs SendTargets (`SessionType=Discovery`).
    Discovery,
}

impl SessionType {
    /// Parses the key's value; `None` for anything but `Normal` and `Discovery`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "Normal" => Some(Self::Normal),
            "Discovery" => Some(Self::Discovery),
            _ => None,
        }
    }

    /// The key's value as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Discovery => "Discovery",
        }
    }
}

/// Which HeaderDigest / DataDigest values the target accepts (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestSupport {
    /// Either `CRC32C` or `None`, whichever comes first in the initiator's list.
    #[default]
    Either,
    /// Only `None`.
    NoneOnly,
    /// Only `CRC32C`. The login fails if the initiator does not agree to it.
    Crc32cOnly,
}

impl DigestSupport {
    /// True when this policy accepts the digest value `value` (`"None"` or `"CRC32C"`).
    pub fn accepts(self, value: &str) -> bool {
        match value {
            "None" => self != Self::Crc32cOnly,
            "CRC32C" => self != Self::NoneOnly,
            _ => false,
        }
    }
}

/// The operational parameters of a session (and of its connection), as negotiated.
///
/// Field names follow the RFC 7143 §13 keys. `Default` gives the RFC defaults, which are what
/// applies to any key never negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// HeaderDigest=CRC32C was agreed (connection scope).
    pub header_digest: bool,
    /// DataDigest=CRC32C was agreed (connection scope).
    pub data_digest: bool,
    /// The largest data segment the target accepts in one PDU: the MaxRecvDataSegmentLength
    /// the target declared (connection scope).
    pub max_recv_data_segment_length: u32,
    /// The largest data segment the target may send in one PDU: the MaxRecvDataSegmentLength
    /// the initiator declared, 8192 if it never did (connection scope).
    pub max_xmit_data_segment_length: u32,
    /// MaxBurstLength: the most solicited data in one sequence.
    pub max_burst_length: u32,
    /// FirstBurstLength: the most unsolicited data per command.
    pub first_burst_length: u32,
    /// InitialR2T: the initiator must wait for an R2T before sending non-immediate data.
    pub initial_r2t: bool,
    /// ImmediateData: data may ride in the SCSI Command PDU.
    pub immediate_data: bool,
    /// MaxOutstandingR2T: outstanding R2Ts per task.
    pub max_outstanding_r2t: u16,
    /// DataPDUInOrder: data PDUs within a sequence arrive in order.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder: data sequences arrive in order.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait, in seconds.
    pub default_time2wait: u16,
    /// DefaultTime2Retain, in seconds.
    pub default_time2retain: u16,
    /// ErrorRecoveryLevel (this target only agrees to 0).
    pub error_recovery_level: u8,
    /// MaxConnections (this target only agrees to 1).
    pub max_connections: u16,
    /// InitiatorName as declared (empty until declared).
    pub initiator_name: String,
    /// InitiatorAlias, if declared.
    pub initiator_alias: Option<String>,
    /// TargetName of a normal session; `None` for discovery sessions.
    pub target_name: Option<String>,
    /// SessionType.
    pub session_type: SessionType,
}

impl Default for SessionParams {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_xmit_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: None,
            session_type: SessionType::Normal,
        }
    }
}

impl SessionParams {
    /// Resets the connection-scoped parameters to their defaults, keeping the session-wide
    /// ones: the starting point for a connection that joins an existing session.
    pub fn for_new_connection(&self) -> Self {
        let defaults = Self::default();
        Self {
            header_digest: defaults.header_digest,
            data_digest: defaults.data_digest,
            max_recv_data_segment_length: defaults.max_recv_data_segment_length,
            max_xmit_data_segment_length: defaults.max_xmit_data_segment_length,
            ..self.clone()
        }
    }
}

/// What this target accepts and prefers, the target's side of every negotiation.
///
/// Numeric caps are combined with the initiator's offer by each key's result function (for a
/// "minimum" key the answer is `min(offer, cap)`), so a cap is never exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// The MaxRecvDataSegmentLength the target declares: the largest data segment it accepts
    /// (512..=16777215).
    pub max_recv_data_segment_length: u32,
    /// Cap on MaxBurstLength (512..=16777215).
    pub max_burst_length: u32,
    /// Cap on FirstBurstLength (512..=16777215; the effective cap is never above
    /// `max_burst_length`).
    pub first_burst_length: u32,
    /// Cap on MaxOutstandingR2T (1..=65535).
    pub max_outstanding_r2t: u16,
    /// Whether the target allows ImmediateData (ANDed with the initiator's wish).
    pub immediate_data: bool,
    /// The target's InitialR2T preference (ORed with the initiator's; `false` lets the
    /// initiator choose unsolicited data).
    pub initial_r2t: bool,
    /// Accepted HeaderDigest values.
    pub header_digest: DigestSupport,
    /// Accepted DataDigest values.
    pub data_digest: DigestSupport,
    /// The target's DefaultTime2Wait (the answer is the larger of the two), seconds.
    pub default_time2wait: u16,
    /// Cap on DefaultTime2Retain (the answer is the smaller of the two), seconds.
    pub default_time2retain: u16,
    /// Cap on the size of one text (login or Text Request) joined across C-bit PDUs, bytes.
    pub max_text_length: usize,
}

impl Default for TargetLimits {
    fn default() -> Self {
        Self {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1_048_576,
            first_burst_length: 262_144,
            max_outstanding_r2t: 16,
            immediate_data: true,
            initial_r2t: false,
            header_digest: DigestSupport::Either,
            data_digest: DigestSupport::Either,
            default_time2wait: 2,
            default_time2retain: 20,
            max_text_length: crate::iscsi::text::DEFAULT_MAX_TEXT_LEN,
        }
    }
}

impl TargetLimits {
    /// The MaxRecvDataSegmentLength to declare, forced into the legal range.
    pub fn declared_max_recv_data_segment_length(&self) -> u32 {
        self.max_recv_data_segment_length
            .clamp(512, MAX_DATA_SEGMENT_LENGTH)
    }

    /// The effective MaxBurstLength cap, forced into the legal range.
    pub fn max_burst_cap(&self) -> u32 {
        self.max_burst_length.clamp(512, MAX_DATA_SEGMENT_LENGTH)
    }

    /// The effective FirstBurstLength cap: legal range, and never above the MaxBurstLength cap,
    /// so the negotiated FirstBurstLength never exceeds the negotiated MaxBurstLength.
    pub fn first_burst_cap(&self) -> u32 {
        self.first_burst_length.clamp(512, self.max_burst_cap())
    }

    /// The effective MaxOutstandingR2T cap (at least 1).
    pub fn max_outstanding_r2t_cap(&self) -> u16 {
        self.max_outstanding_r2t.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_params_default_matches_rfc_defaults() {
        let p = SessionParams::default();
        assert!(!p.header_digest && !p.data_digest);
        assert_eq!(p.max_recv_data_segment_length, 8192);
        assert_eq!(p.max_xmit_data_segment_length, 8192);
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.first_burst_length, 65_536);
        assert!(p.initial_r2t && p.immediate_data);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert!(p.data_pdu_in_order && p.data_sequence_in_order);
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 20));
        assert_eq!((p.error_recovery_level, p.max_connections), (0, 1));
        assert_eq!(p.session_type, SessionType::Normal);
    }

    #[test]
    fn for_new_connection_resets_only_connection_scope() {
        let session = SessionParams {
            header_digest: true,
            data_digest: true,
            max_recv_data_segment_length: 65536,
            max_xmit_data_segment_length: 131_072,
            max_burst_length: 4096,
            initiator_name: "iqn.x".into(),
            ..SessionParams::default()
        };
        let conn = session.for_new_connection();
        assert!(!conn.header_digest && !conn.data_digest);
        assert_eq!(conn.max_recv_data_segment_length, 8192);
        assert_eq!(conn.max_xmit_data_segment_length, 8192);
        assert_eq!(conn.max_burst_length, 4096);
        assert_eq!(conn.initiator_name, "iqn.x");
    }

    #[test]
    fn session_type_parses_only_exact_values() {
        assert_eq!(SessionType::parse("Normal"), Some(SessionType::Normal));
        assert_eq!(
            SessionType::parse("Discovery"),
            Some(SessionType::Discovery)
        );
        assert_eq!(SessionType::parse("discovery"), None);
        assert_eq!(SessionType::Discovery.as_str(), "Discovery");
    }

    #[test]
    fn digest_support_accepts_per_policy() {
        assert!(DigestSupport::Either.accepts("None") && DigestSupport::Either.accepts("CRC32C"));
        assert!(!DigestSupport::NoneOnly.accepts("CRC32C"));
        assert!(!DigestSupport::Crc32cOnly.accepts("None"));
        assert!(!DigestSupport::Either.accepts("crc32c"));
    }

    #[test]
    fn limits_caps_are_clamped_and_first_burst_never_exceeds_max_burst() {
        let limits = TargetLimits {
            max_recv_data_segment_length: 1,
            max_burst_length: 4096,
            first_burst_length: 1 << 30,
            max_outstanding_r2t: 0,
            ..TargetLimits::default()
        };
        assert_eq!(limits.declared_max_recv_data_segment_length(), 512);
        assert_eq!(limits.first_burst_cap(), 4096);
        assert_eq!(limits.max_outstanding_r2t_cap(), 1);
    }
}
