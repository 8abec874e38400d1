//! What the login and discovery code need to know about the target side, supplied by the
//! runtime: which targets exist (for TargetName checks, RFC 7143 §13.4, and SendTargets,
//! RFC 7143 Appendix C) and which sessions exist (for connection logins with a non-zero TSIH,
//! RFC 7143 §6.3.4 / §11.12.8).

use super::params::SessionParams;

/// What a SendTargets request asks for (RFC 7143 Appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTargetsScope<'a> {
    /// `SendTargets=All` in a discovery session: every target the initiator may access.
    All,
    /// `SendTargets=<iSCSI-target-name>` in a discovery session: that target only.
    Named(&'a str),
    /// The target a normal session is logged in to (`SendTargets=` with an empty value, or a
    /// request naming that same target): only that target, never another.
    Session(&'a str),
}

/// One record of a SendTargets answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    /// The iSCSI target name.
    pub name: String,
    /// TargetAddress values, each `"host:port,tpgt"` (IPv6 hosts in brackets).
    pub addresses: Vec<String>,
}

/// The runtime's view of the targets served on this portal.
pub trait TargetDirectory {
    /// True when `name` is a target this portal serves.
    fn target_exists(&self, name: &str) -> bool;
    /// The TargetAlias of `name`, if it has one.
    fn target_alias(&self, name: &str) -> Option<String>;
    /// The TargetPortalGroupTag of the portal this connection arrived on.
    fn portal_group_tag(&self) -> u16;
    /// The records answering a SendTargets request.
    fn send_targets(&self, scope: SendTargetsScope<'_>) -> Vec<TargetRecord>;
    /// The authentication target `target` asks of its logins instead of the portal's (its own
    /// CHAP credentials), if any.
    fn target_auth(&self, target: &str) -> Option<super::AuthPolicy> {
        let _ = target;
        None
    }
    /// True when initiator `initiator` may log in to target `target` (and see it in discovery);
    /// every initiator may by default.
    fn may_access(&self, initiator: &str, target: &str) -> bool {
        let _ = (initiator, target);
        true
    }
}

/// The answer to a connection login that names an existing session by its TSIH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionJoin {
    /// No session with that ISID and TSIH: the login fails with 020A.
    NotFound,
    /// The session cannot take this connection (MaxConnections reached and the CID is not
    /// being reinstated): the login fails with 0206.
    TooManyConnections,
    /// The connection may join; these are the session's negotiated parameters.
    Join(Box<SessionParams>),
}

/// The runtime's registry of live sessions, consulted once per login when TSIH ≠ 0.
pub trait SessionLookup {
    /// Decides whether the connection `cid` may join the session `(isid, tsih)`.
    fn join_session(&self, isid: [u8; 6], tsih: u16, cid: u16) -> SessionJoin;
}

/// A [`SessionLookup`] for callers that keep no sessions: every TSIH is unknown.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSessions;

impl SessionLookup for NoSessions {
    fn join_session(&self, _isid: [u8; 6], _tsih: u16, _cid: u16) -> SessionJoin {
        SessionJoin::NotFound
    }
}
