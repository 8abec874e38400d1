//! Login Response status (RFC 7143 §11.13.5) and the typed login failures that map onto it.

use thiserror::Error;

use super::keys::KeyViolation;
use crate::iscsi::text::TextError;

/// Status-Class and Status-Detail of a Login Response (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    /// Status-Class: 0 success, 1 redirection, 2 initiator error, 3 target error.
    pub class: u8,
    /// Status-Detail, meaningful within the class.
    pub detail: u8,
}

impl LoginStatus {
    /// Status-Class 0x00: success.
    pub const CLASS_SUCCESS: u8 = 0x00;
    /// Status-Class 0x01: redirection.
    pub const CLASS_REDIRECTION: u8 = 0x01;
    /// Status-Class 0x02: initiator error.
    pub const CLASS_INITIATOR_ERROR: u8 = 0x02;
    /// Status-Class 0x03: target error.
    pub const CLASS_TARGET_ERROR: u8 = 0x03;

    /// 0000: login is proceeding OK.
    pub const SUCCESS: Self = Self::new(0x00, 0x00);
    /// 0101: the target moved temporarily (TargetAddress gives where).
    pub const TARGET_MOVED_TEMPORARILY: Self = Self::new(0x01, 0x01);
    /// 0102: the target moved permanently.
    pub const TARGET_MOVED_PERMANENTLY: Self = Self::new(0x01, 0x02);
    /// 0200: miscellaneous initiator error (including protocol errors).
    pub const INITIATOR_ERROR: Self = Self::new(0x02, 0x00);
    /// 0201: authentication failed.
    pub const AUTHENTICATION_FAILURE: Self = Self::new(0x02, 0x01);
    /// 0202: the initiator is not allowed to access this target.
    pub const AUTHORIZATION_FAILURE: Self = Self::new(0x02, 0x02);
    /// 0203: no such target.
    pub const NOT_FOUND: Self = Self::new(0x02, 0x03);
    /// 0204: the target was removed.
    pub const TARGET_REMOVED: Self = Self::new(0x02, 0x04);
    /// 0205: no supported version in VersionMin..=VersionMax.
    pub const UNSUPPORTED_VERSION: Self = Self::new(0x02, 0x05);
    /// 0206: too many connections on this session.
    pub const TOO_MANY_CONNECTIONS: Self = Self::new(0x02, 0x06);
    /// 0207: a required parameter is missing.
    pub const MISSING_PARAMETER: Self = Self::new(0x02, 0x07);
    /// 0208: the connection cannot be included in that session.
    pub const CANT_INCLUDE_IN_SESSION: Self = Self::new(0x02, 0x08);
    /// 0209: the session type is not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self::new(0x02, 0x09);
    /// 020A: the TSIH names no existing session.
    pub const SESSION_DOES_NOT_EXIST: Self = Self::new(0x02, 0x0A);
    /// 020B: a request other than Login arrived during login.
    pub const INVALID_DURING_LOGIN: Self = Self::new(0x02, 0x0B);
    /// 0300: target hardware or software error.
    pub const TARGET_ERROR: Self = Self::new(0x03, 0x00);
    /// 0301: service unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self::new(0x03, 0x01);
    /// 0302: out of resources.
    pub const OUT_OF_RESOURCES: Self = Self::new(0x03, 0x02);

    /// A status from its class and detail.
    pub const fn new(class: u8, detail: u8) -> Self {
        Self { class, detail }
    }

    /// True for Status-Class 0.
    pub fn is_success(self) -> bool {
        self.class == Self::CLASS_SUCCESS
    }
}

/// Why a login failed. Each maps to the Login Response status sent before the connection is
/// closed ([`LoginError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LoginError {
    /// VersionMin is above the only version this target speaks (0x00).
    #[error("unsupported iSCSI version range {min:#04x}..={max:#04x}")]
    UnsupportedVersion {
        /// VersionMin of the request.
        min: u8,
        /// VersionMax of the request.
        max: u8,
    },
    /// The first login text had no InitiatorName.
    #[error("InitiatorName missing from the first login request")]
    MissingInitiatorName,
    /// A normal session's first login text had no TargetName.
    #[error("TargetName missing from the first login request of a normal session")]
    MissingTargetName,
    /// An iSCSI name that is empty or longer than 223 bytes.
    #[error("invalid iSCSI name {0:?}")]
    InvalidName(String),
    /// TargetName names no target here.
    #[error("target {0:?} not found")]
    TargetNotFound(String),
    /// The target's access list does not name the initiator (status 0202).
    #[error("initiator {initiator:?} may not access target {target:?}")]
    NotAuthorized {
        /// The InitiatorName.
        initiator: String,
        /// The TargetName.
        target: String,
    },
    /// A discovery session declared a TargetName.
    #[error("a discovery session must not carry TargetName")]
    TargetNameInDiscovery,
    /// SessionType was neither Normal nor Discovery.
    #[error("unsupported session type {0:?}")]
    UnsupportedSessionType(String),
    /// The TSIH of a connection login names no existing session.
    #[error("no session with TSIH {0:#06x}")]
    SessionDoesNotExist(u16),
    /// The session named by the TSIH has no room for another connection.
    #[error("session {0:#06x} has no room for another connection")]
    TooManyConnections(u16),
    /// A connection login whose identity does not match the session it names.
    #[error("connection cannot join session {0:#06x}: {1}")]
    CantIncludeInSession(u16, &'static str),
    /// An invalid stage value, or a transition that does not move forward.
    #[error("invalid stage transition: CSG {csg}, NSG {nsg}, T={transit}")]
    InvalidStage {
        /// CSG of the request.
        csg: u8,
        /// NSG of the request.
        nsg: u8,
        /// T bit of the request.
        transit: bool,
    },
    /// CSG differs from the stage the login is in.
    #[error("request for stage {got} while the login is in stage {expected}")]
    StageMismatch {
        /// The current stage.
        expected: u8,
        /// CSG of the request.
        got: u8,
    },
    /// T and C set together (RFC 7143 §11.12.2).
    #[error("T and C bits both set")]
    TransitWithContinue,
    /// ISID, TSIH or CID changed during the login.
    #[error("{0} changed during login")]
    IdentityChanged(&'static str),
    /// The login text could not be parsed.
    #[error("bad login text: {0}")]
    Text(#[from] TextError),
    /// A key repeated within one login text.
    #[error("key {0} repeated")]
    RepeatedKey(String),
    /// A key negotiated or declared again in a later request (RFC 7143 §6.1).
    #[error("key {0} renegotiated during login")]
    Renegotiated(String),
    /// A key sent where or by whom it is not allowed, or an illegal declaration.
    #[error(transparent)]
    Key(#[from] KeyViolation),
    /// A Login Request carried data while the target was still sending a long response.
    #[error("login request carried data while the target's response is pending")]
    UnexpectedData,
    /// Authentication was required but not performed, or no offered method is acceptable.
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    /// The initiator refused a digest this target requires.
    #[error("{0}=CRC32C is required by this target")]
    DigestRequired(&'static str),
    /// A request arrived after the login ended.
    #[error("login already finished")]
    AlreadyFinished,
    /// The runtime saw a non-login PDU during login.
    #[error("non-login request during login")]
    InvalidDuringLogin,
}

impl LoginError {
    /// The Login Response status that reports this failure.
    pub fn status(&self) -> LoginStatus {
        match self {
            Self::UnsupportedVersion { .. } => LoginStatus::UNSUPPORTED_VERSION,
            Self::MissingInitiatorName | Self::MissingTargetName => LoginStatus::MISSING_PARAMETER,
            Self::TargetNotFound(_) => LoginStatus::NOT_FOUND,
            Self::NotAuthorized { .. } => LoginStatus::AUTHORIZATION_FAILURE,
            Self::UnsupportedSessionType(_) => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            Self::SessionDoesNotExist(_) => LoginStatus::SESSION_DOES_NOT_EXIST,
            Self::TooManyConnections(_) => LoginStatus::TOO_MANY_CONNECTIONS,
            Self::CantIncludeInSession(..) => LoginStatus::CANT_INCLUDE_IN_SESSION,
            Self::AuthenticationFailed(_) => LoginStatus::AUTHENTICATION_FAILURE,
            Self::InvalidDuringLogin => LoginStatus::INVALID_DURING_LOGIN,
            Self::InvalidName(_)
            | Self::TargetNameInDiscovery
            | Self::InvalidStage { .. }
            | Self::StageMismatch { .. }
            | Self::TransitWithContinue
            | Self::IdentityChanged(_)
            | Self::Text(_)
            | Self::RepeatedKey(_)
            | Self::Renegotiated(_)
            | Self::Key(_)
            | Self::UnexpectedData
            | Self::DigestRequired(_)
            | Self::AlreadyFinished => LoginStatus::INITIATOR_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_constants_match_rfc_table() {
        assert_eq!(
            LoginStatus::SESSION_DOES_NOT_EXIST,
            LoginStatus::new(2, 0x0a)
        );
        assert_eq!(LoginStatus::INVALID_DURING_LOGIN, LoginStatus::new(2, 0x0b));
        assert_eq!(LoginStatus::OUT_OF_RESOURCES, LoginStatus::new(3, 2));
        assert!(LoginStatus::SUCCESS.is_success());
        assert!(!LoginStatus::NOT_FOUND.is_success());
    }

    #[test]
    fn errors_map_to_their_status() {
        assert_eq!(
            LoginError::UnsupportedVersion { min: 1, max: 2 }.status(),
            LoginStatus::UNSUPPORTED_VERSION
        );
        assert_eq!(
            LoginError::MissingTargetName.status(),
            LoginStatus::MISSING_PARAMETER
        );
        assert_eq!(
            LoginError::TargetNotFound("x".into()).status(),
            LoginStatus::NOT_FOUND
        );
        assert_eq!(
            LoginError::RepeatedKey("A".into()).status(),
            LoginStatus::INITIATOR_ERROR
        );
        assert_eq!(
            LoginError::AuthenticationFailed("x".into()).status(),
            LoginStatus::AUTHENTICATION_FAILURE
        );
    }
}
