//! The iSCSI login phase, target side, as a pure state machine (RFC 7143 §6.3 login phase,
//! §6.1–§6.2 text negotiation, §11.12 Login Request, §11.13 Login Response, §13 keys).
//!
//! One [`LoginMachine`] per connection. The runtime decodes each Login Request PDU into a
//! [`LoginRequest`], calls [`LoginMachine::step`], encodes the returned [`LoginResponse`] (adding
//! StatSN, ExpCmdSN, MaxCmdSN, and the TSIH of a new session on completion) and acts on the
//! [`LoginOutcome`]:
//! - [`LoginOutcome::Continue`]: send the response, wait for the next Login Request;
//! - [`LoginOutcome::Complete`]: send the response; the connection is in full feature phase
//!   with the given [`SessionParams`];
//! - [`LoginOutcome::Failed`]: send the response (it carries the failure status) and close.
//!
//! What the machine does:
//! - stage rules: the login starts in the security (CSG=0) or, when no authentication is
//!   required, operational (CSG=1) stage; T=1 must name a later, valid NSG (2 is reserved); CSG
//!   must stay the stage the target last agreed to; T and C are exclusive;
//! - C bit: request texts are joined until the last part (each partial part is answered with an
//!   empty response); responses longer than 8192 bytes are sent in parts with C=1;
//! - identity: InitiatorName in the first text (0207), TargetName for normal sessions (0207) that
//!   must exist (0203), none for discovery; VersionMin must be 0 (0205); a non-zero TSIH must name
//!   a live session (020A) with room for the connection (0206);
//! - negotiation: every offered key is answered per [`keys`], our MaxRecvDataSegmentLength is
//!   declared in the first operational response, TargetPortalGroupTag (and TargetAlias) in the
//!   first response of a normal session;
//! - repetition: a key twice in one text, or a key renegotiated in a later request, fails the
//!   login (0200); identity keys may be repeated with the same value (libiscsi does).
//!
//! Submodules: [`keys`] (key table and negotiation), [`params`] (results and limits), [`stage`],
//! [`security`] (AuthMethod), [`status`] (status codes and errors), [`directory`] (runtime traits).

pub mod directory;
pub mod keys;
pub mod params;
pub mod security;
pub mod stage;
pub mod status;

#[cfg(test)]
mod tests;

use std::collections::HashSet;

pub use directory::{
    NoSessions, SendTargetsScope, SessionJoin, SessionLookup, TargetDirectory, TargetRecord,
};
pub use keys::{NegotiationError, negotiate_full_feature};
pub use params::{DigestSupport, SessionParams, SessionType, TargetLimits};
pub use security::{AuthMethod, AuthPolicy, ChapSecret};
pub use stage::LoginStage;
pub use status::{LoginError, LoginStatus};

use crate::iscsi::discovery::TextResponder;
use crate::iscsi::text::{TextAccumulator, encode_text, pair};
use keys::{KeyAction, Negotiator, Phase, find_repeated_key, key_def, reconcile_bursts};
use params::{DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH, MAX_ISCSI_NAME_LEN};
use security::SecurityStage;

/// The only iSCSI version this target speaks (RFC 7143 §11.12.4).
pub const ISCSI_VERSION: u8 = 0x00;

/// The largest data segment of any Login PDU (RFC 7143 §13.12: 8192 during login).
pub const LOGIN_MAX_DATA_SEGMENT_LENGTH: usize = DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH as usize;

/// The fields of a Login Request PDU the login phase needs (RFC 7143 §11.12).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginRequest {
    /// T bit: the initiator is ready to move to `nsg`.
    pub transit: bool,
    /// C bit: the text continues in the next Login Request.
    pub cont: bool,
    /// CSG: current stage.
    pub csg: u8,
    /// NSG: next stage (meaningful when `transit`).
    pub nsg: u8,
    /// VersionMax.
    pub version_max: u8,
    /// VersionMin.
    pub version_min: u8,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH: 0 for a new session, else the session a connection joins.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The data segment (login text), without padding or digest.
    pub data: Vec<u8>,
}

/// The fields of a Login Response PDU the login phase decides (RFC 7143 §11.13). The runtime
/// adds StatSN, ExpCmdSN and MaxCmdSN, and the TSIH of a new session on the completing response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginResponse {
    /// T bit: the target moves to `nsg`.
    pub transit: bool,
    /// C bit: the response text continues in the next Login Response.
    pub cont: bool,
    /// CSG.
    pub csg: u8,
    /// NSG.
    pub nsg: u8,
    /// Version-max (always [`ISCSI_VERSION`]).
    pub version_max: u8,
    /// Version-active (always [`ISCSI_VERSION`]).
    pub version_active: u8,
    /// ISID, echoed.
    pub isid: [u8; 6],
    /// TSIH, echoed (the runtime sets a new session's TSIH on completion).
    pub tsih: u16,
    /// Initiator Task Tag, echoed.
    pub itt: u32,
    /// Status-Class.
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
    /// The data segment (encoded login text).
    pub data: Vec<u8>,
}

impl LoginResponse {
    /// The response's status.
    pub fn status(&self) -> LoginStatus {
        LoginStatus::new(self.status_class, self.status_detail)
    }
}

/// What the runtime must do after sending a step's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Wait for the next Login Request.
    Continue,
    /// The connection is in full feature phase with these parameters.
    Complete(SessionParams),
    /// The login failed (the response carries the status): close the connection.
    Failed(LoginError),
}

/// One Login Response and what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStep {
    /// The response to send.
    pub response: LoginResponse,
    /// What to do next.
    pub outcome: LoginOutcome,
}

/// The identity of the connection being logged in, fixed by its first Login Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionIdentity {
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH as sent by the initiator (0 for a new session).
    pub tsih: u16,
    /// CID.
    pub cid: u16,
}

/// A response longer than one Login PDU, being sent in parts.
#[derive(Debug)]
struct PendingResponse {
    chunks: TextResponder,
    transit: bool,
    next: LoginStage,
}

/// The header fields echoed in every response.
#[derive(Debug, Clone, Copy, Default)]
struct Echo {
    csg: u8,
    nsg: u8,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
}

impl Echo {
    fn of(req: &LoginRequest) -> Self {
        Self {
            csg: req.csg & 0x3,
            nsg: req.nsg & 0x3,
            isid: req.isid,
            tsih: req.tsih,
            itt: req.itt,
        }
    }

    fn response(self, status: LoginStatus, data: Vec<u8>) -> LoginResponse {
        LoginResponse {
            transit: false,
            cont: false,
            csg: self.csg,
            nsg: self.nsg,
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: self.isid,
            tsih: self.tsih,
            itt: self.itt,
            status_class: status.class,
            status_detail: status.detail,
            data,
        }
    }
}

/// Keys that carry the session's identity; they may be repeated with the same value.
const IDENTITY_KEYS: [&str; 4] = [
    "InitiatorName",
    "TargetName",
    "SessionType",
    "InitiatorAlias",
];

/// The login phase of one connection.
#[derive(Debug)]
pub struct LoginMachine {
    limits: TargetLimits,
    security: SecurityStage,
    identity: Option<ConnectionIdentity>,
    stage: Option<LoginStage>,
    accumulator: TextAccumulator,
    pending: Option<PendingResponse>,
    params: SessionParams,
    joining: bool,
    identity_declared: bool,
    /// The access list leaves the initiator out of the target it named, which requires CHAP:
    /// the login fails with 0202 once the initiator has authenticated (0201 before), so that
    /// only a peer holding the secret learns what the list says.
    denied: Option<(String, String)>,
    negotiated: HashSet<String>,
    target_declarations_sent: bool,
    max_recv_declared: bool,
    finished: bool,
    last: Echo,
}

impl LoginMachine {
    /// A login that has seen no request yet.
    pub fn new(limits: TargetLimits, auth: AuthPolicy) -> Self {
        let accumulator = TextAccumulator::new(limits.max_text_length);
        Self {
            limits,
            security: SecurityStage::new(auth),
            identity: None,
            stage: None,
            accumulator,
            pending: None,
            params: SessionParams::default(),
            joining: false,
            identity_declared: false,
            denied: None,
            negotiated: HashSet::new(),
            target_declarations_sent: false,
            max_recv_declared: false,
            finished: false,
            last: Echo::default(),
        }
    }

    /// ISID, TSIH and CID of the connection, once the first request arrived.
    pub fn identity(&self) -> Option<ConnectionIdentity> {
        self.identity
    }

    /// The stage the login is in (`None` before the first request).
    pub fn stage(&self) -> Option<LoginStage> {
        self.stage
    }

    /// True once the login completed or failed.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Handles one Login Request.
    pub fn step(
        &mut self,
        req: &LoginRequest,
        directory: &dyn TargetDirectory,
        sessions: &dyn SessionLookup,
    ) -> LoginStep {
        let echo = Echo::of(req);
        self.last = echo;
        match self.try_step(req, directory, sessions) {
            Ok(step) => step,
            Err(err) => self.fail(echo, err),
        }
    }

    /// Fails the login because the runtime received a PDU other than a Login Request
    /// (RFC 7143 §11.13.5: 020B), echoing the last Login Request's fields.
    pub fn fail_invalid_during_login(&mut self) -> LoginStep {
        self.fail(self.last, LoginError::InvalidDuringLogin)
    }

    fn fail(&mut self, echo: Echo, err: LoginError) -> LoginStep {
        self.finished = true;
        self.pending = None;
        self.accumulator.reset();
        LoginStep {
            response: echo.response(err.status(), Vec::new()),
            outcome: LoginOutcome::Failed(err),
        }
    }

    fn try_step(
        &mut self,
        req: &LoginRequest,
        directory: &dyn TargetDirectory,
        sessions: &dyn SessionLookup,
    ) -> Result<LoginStep, LoginError> {
        if self.finished {
            return Err(LoginError::AlreadyFinished);
        }
        let current = self.check_header(req, sessions)?;
        if self.pending.is_some() {
            if !req.data.is_empty() {
                return Err(LoginError::UnexpectedData);
            }
            return Ok(self.next_pending_part(req, current));
        }
        let Some(pairs) = self.accumulator.feed(&req.data, req.cont)? else {
            // Partial request text: acknowledge with an empty response (RFC 7143 §11.12.2).
            return Ok(self.respond(req, current, false, current, Vec::new()));
        };
        let (answers, stage_complete) = self.negotiate(current, &pairs, directory)?;
        let transit = req.transit && stage_complete;
        let next = if transit {
            stage::requested_next_stage(current, req.nsg)?
        } else {
            current
        };
        let answers = self.add_declarations(current, answers, directory);
        self.finish_text(req, current, transit, next, answers)
    }

    /// Validates flags, version, stage and identity; returns the current stage.
    fn check_header(
        &mut self,
        req: &LoginRequest,
        sessions: &dyn SessionLookup,
    ) -> Result<LoginStage, LoginError> {
        if req.transit && req.cont {
            return Err(LoginError::TransitWithContinue);
        }
        let current = match self.stage {
            None => self.start(req, sessions)?,
            Some(stage) => {
                self.check_identity(req)?;
                if req.csg != stage.wire() {
                    return Err(LoginError::StageMismatch {
                        expected: stage.wire(),
                        got: req.csg,
                    });
                }
                stage
            }
        };
        if req.transit {
            stage::requested_next_stage(current, req.nsg)?;
        }
        Ok(current)
    }

    /// First request: version, starting stage, and the session a non-zero TSIH names.
    fn start(
        &mut self,
        req: &LoginRequest,
        sessions: &dyn SessionLookup,
    ) -> Result<LoginStage, LoginError> {
        if req.version_min > ISCSI_VERSION {
            return Err(LoginError::UnsupportedVersion {
                min: req.version_min,
                max: req.version_max,
            });
        }
        let stage = stage::initial_stage(req.csg, req.transit, req.nsg)?;
        if stage == LoginStage::LoginOperationalNegotiation && !self.security.may_skip() {
            return Err(LoginError::AuthenticationFailed(
                "security stage skipped".into(),
            ));
        }
        if req.tsih != 0 {
            self.join(req, sessions)?;
        }
        self.identity = Some(ConnectionIdentity {
            isid: req.isid,
            tsih: req.tsih,
            cid: req.cid,
        });
        self.stage = Some(stage);
        Ok(stage)
    }

    fn join(&mut self, req: &LoginRequest, sessions: &dyn SessionLookup) -> Result<(), LoginError> {
        match sessions.join_session(req.isid, req.tsih, req.cid) {
            SessionJoin::NotFound => Err(LoginError::SessionDoesNotExist(req.tsih)),
            SessionJoin::TooManyConnections => Err(LoginError::TooManyConnections(req.tsih)),
            SessionJoin::Join(session) => {
                self.params = session.for_new_connection();
                self.joining = true;
                Ok(())
            }
        }
    }

    fn check_identity(&self, req: &LoginRequest) -> Result<(), LoginError> {
        let Some(id) = self.identity else {
            return Ok(());
        };
        if id.isid != req.isid {
            return Err(LoginError::IdentityChanged("ISID"));
        }
        if id.tsih != req.tsih {
            return Err(LoginError::IdentityChanged("TSIH"));
        }
        if id.cid != req.cid {
            return Err(LoginError::IdentityChanged("CID"));
        }
        Ok(())
    }

    /// Negotiates one complete request text; returns the answers and whether the current stage
    /// is complete (the target may transit).
    fn negotiate(
        &mut self,
        current: LoginStage,
        pairs: &[(String, String)],
        directory: &dyn TargetDirectory,
    ) -> Result<(Vec<(String, String)>, bool), LoginError> {
        if let Some(key) = find_repeated_key(pairs) {
            return Err(LoginError::RepeatedKey(key.to_owned()));
        }
        self.check_renegotiation(pairs)?;
        self.declare_identity(pairs, directory, current)?;
        let phase = match current {
            LoginStage::SecurityNegotiation => Phase::Security,
            _ => Phase::Operational,
        };
        let negotiator = Negotiator {
            limits: &self.limits,
            phase,
            session_type: self.params.session_type,
            leading: !self.joining,
        };
        let mut answers = Vec::new();
        for (key, value) in pairs {
            match negotiator.negotiate(key, value, &mut self.params)? {
                KeyAction::Answer(answer) => answers.push((key.clone(), answer)),
                KeyAction::Silent => {}
                KeyAction::Special if key == "AuthMethod" => {
                    answers.push((key.clone(), self.security.select_method(value)?));
                }
                KeyAction::Special => {} // identity keys: handled by declare_identity
            }
            if key_def(key).is_some() {
                self.negotiated.insert(key.clone());
            }
        }
        if current == LoginStage::SecurityNegotiation {
            answers.extend(self.security.chap_step(pairs)?);
        }
        reconcile_bursts(&mut self.params, &mut answers);
        let complete = match current {
            LoginStage::SecurityNegotiation => self.security.is_complete(),
            _ => true,
        };
        if complete && self.denied.is_some() {
            return Err(self.not_authorized());
        }
        Ok((answers, complete))
    }

    /// The 0202 failure of an initiator the target's access list leaves out.
    fn not_authorized(&mut self) -> LoginError {
        let (initiator, target) = self.denied.take().unwrap_or_default();
        LoginError::NotAuthorized { initiator, target }
    }

    /// A key already negotiated in an earlier request may not come again (RFC 7143 §6.1);
    /// identity keys are checked by [`Self::declare_identity`].
    fn check_renegotiation(&self, pairs: &[(String, String)]) -> Result<(), LoginError> {
        match pairs
            .iter()
            .find(|(k, _)| !IDENTITY_KEYS.contains(&k.as_str()) && self.negotiated.contains(k))
        {
            Some((key, _)) => Err(LoginError::Renegotiated(key.clone())),
            None => Ok(()),
        }
    }

    /// Establishes the session identity from the first complete text, or checks that later
    /// texts repeat it unchanged.
    /// A target with CHAP credentials of its own replaces the portal's policy here, before any
    /// security key of this first text is looked at (and refuses a login that skipped the
    /// security stage).
    fn declare_identity(
        &mut self,
        pairs: &[(String, String)],
        directory: &dyn TargetDirectory,
        current: LoginStage,
    ) -> Result<(), LoginError> {
        if self.identity_declared {
            return self.check_redeclared_identity(pairs);
        }
        let initiator = value_of(pairs, "InitiatorName").ok_or(LoginError::MissingInitiatorName)?;
        check_name(initiator)?;
        let session_type = match value_of(pairs, "SessionType") {
            None => SessionType::Normal,
            Some(v) => {
                SessionType::parse(v).ok_or_else(|| LoginError::UnsupportedSessionType(v.into()))?
            }
        };
        let target = match (session_type, value_of(pairs, "TargetName")) {
            (SessionType::Discovery, None) => None,
            (SessionType::Discovery, Some(_)) => return Err(LoginError::TargetNameInDiscovery),
            (SessionType::Normal, None) => return Err(LoginError::MissingTargetName),
            (SessionType::Normal, Some(name)) => Some(check_target(name, directory)?),
        };
        if let Some(policy) = target.and_then(|t| directory.target_auth(t)) {
            self.security = SecurityStage::new(policy);
            if current != LoginStage::SecurityNegotiation && !self.security.may_skip() {
                return Err(LoginError::AuthenticationFailed(
                    "security stage skipped".into(),
                ));
            }
        }
        if let Some(name) = target.filter(|t| !directory.may_access(initiator, t)) {
            self.denied = Some((initiator.to_owned(), name.to_owned()));
            if self.security.may_skip() {
                return Err(self.not_authorized());
            }
        }
        if self.joining {
            self.check_joining_identity(initiator, target, session_type)?;
        }
        self.params.initiator_name = initiator.to_owned();
        self.params.target_name = target.map(str::to_owned);
        self.params.session_type = session_type;
        self.identity_declared = true;
        Ok(())
    }

    fn check_redeclared_identity(&self, pairs: &[(String, String)]) -> Result<(), LoginError> {
        for (key, value) in pairs {
            let same = match key.as_str() {
                "InitiatorName" => *value == self.params.initiator_name,
                "TargetName" => self.params.target_name.as_deref() == Some(value.as_str()),
                "SessionType" => value == self.params.session_type.as_str(),
                "InitiatorAlias" => {
                    !self.negotiated.contains(key)
                        || self.params.initiator_alias.as_deref() == Some(value.as_str())
                }
                _ => true,
            };
            if !same {
                return Err(LoginError::Renegotiated(key.clone()));
            }
        }
        Ok(())
    }

    fn check_joining_identity(
        &self,
        initiator: &str,
        target: Option<&str>,
        session_type: SessionType,
    ) -> Result<(), LoginError> {
        let tsih = self.identity.map_or(0, |id| id.tsih);
        if initiator != self.params.initiator_name {
            return Err(LoginError::CantIncludeInSession(
                tsih,
                "InitiatorName differs",
            ));
        }
        if target != self.params.target_name.as_deref() || session_type != self.params.session_type
        {
            return Err(LoginError::CantIncludeInSession(tsih, "target differs"));
        }
        Ok(())
    }

    /// Appends what the target declares unasked: TargetPortalGroupTag and TargetAlias in the
    /// first response of a normal session, MaxRecvDataSegmentLength in the first operational
    /// response.
    fn add_declarations(
        &mut self,
        current: LoginStage,
        mut answers: Vec<(String, String)>,
        directory: &dyn TargetDirectory,
    ) -> Vec<(String, String)> {
        if !self.target_declarations_sent {
            self.target_declarations_sent = true;
            if let Some(target) = self.params.target_name.as_deref() {
                answers.push(pair(
                    "TargetPortalGroupTag",
                    directory.portal_group_tag().to_string(),
                ));
                if let Some(alias) = directory.target_alias(target) {
                    answers.push(pair("TargetAlias", alias));
                }
            }
        }
        if current == LoginStage::LoginOperationalNegotiation && !self.max_recv_declared {
            self.max_recv_declared = true;
            let ours = self.limits.declared_max_recv_data_segment_length();
            self.params.max_recv_data_segment_length = ours;
            answers.push(pair("MaxRecvDataSegmentLength", ours.to_string()));
        }
        answers
    }

    /// Sends the answers to a complete request text, in parts if they exceed one Login PDU.
    fn finish_text(
        &mut self,
        req: &LoginRequest,
        current: LoginStage,
        transit: bool,
        next: LoginStage,
        answers: Vec<(String, String)>,
    ) -> Result<LoginStep, LoginError> {
        if transit && next == LoginStage::FullFeaturePhase {
            self.check_required_digests()?;
        }
        let mut chunks = TextResponder::new(encode_text(&answers), LOGIN_MAX_DATA_SEGMENT_LENGTH);
        let first = chunks.next_chunk().unwrap_or_default();
        if first.last {
            return Ok(self.respond(req, current, transit, next, first.data));
        }
        self.pending = Some(PendingResponse {
            chunks,
            transit,
            next,
        });
        Ok(self.respond_part(req, current, first.data))
    }

    /// Sends the next part of a long response (the request must have been empty).
    fn next_pending_part(&mut self, req: &LoginRequest, current: LoginStage) -> LoginStep {
        let Some(mut pending) = self.pending.take() else {
            return self.respond(req, current, false, current, Vec::new());
        };
        let chunk = pending.chunks.next_chunk().unwrap_or_default();
        if chunk.last {
            return self.respond(req, current, pending.transit, pending.next, chunk.data);
        }
        self.pending = Some(pending);
        self.respond_part(req, current, chunk.data)
    }

    fn check_required_digests(&self) -> Result<(), LoginError> {
        if self.limits.header_digest == DigestSupport::Crc32cOnly && !self.params.header_digest {
            return Err(LoginError::DigestRequired("HeaderDigest"));
        }
        if self.limits.data_digest == DigestSupport::Crc32cOnly && !self.params.data_digest {
            return Err(LoginError::DigestRequired("DataDigest"));
        }
        Ok(())
    }

    /// A response with C=1 carrying one part of a long text.
    fn respond_part(&self, req: &LoginRequest, current: LoginStage, data: Vec<u8>) -> LoginStep {
        let mut response = Echo::of(req).response(LoginStatus::SUCCESS, data);
        response.cont = true;
        response.csg = current.wire();
        LoginStep {
            response,
            outcome: LoginOutcome::Continue,
        }
    }

    /// A final (C=0) success response; moves the login to `next` when `transit`.
    fn respond(
        &mut self,
        req: &LoginRequest,
        current: LoginStage,
        transit: bool,
        next: LoginStage,
        data: Vec<u8>,
    ) -> LoginStep {
        let mut response = Echo::of(req).response(LoginStatus::SUCCESS, data);
        response.csg = current.wire();
        response.transit = transit;
        if transit {
            response.nsg = next.wire();
            self.stage = Some(next);
        }
        let outcome = if transit && next == LoginStage::FullFeaturePhase {
            self.finished = true;
            LoginOutcome::Complete(self.params.clone())
        } else {
            LoginOutcome::Continue
        };
        LoginStep { response, outcome }
    }
}

/// The value of `key` in `pairs`.
fn value_of<'p>(pairs: &'p [(String, String)], key: &str) -> Option<&'p str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// An iSCSI name must be 1..=223 bytes (RFC 7143 §4.2.7.1).
fn check_name(name: &str) -> Result<(), LoginError> {
    if name.is_empty() || name.len() > MAX_ISCSI_NAME_LEN {
        return Err(LoginError::InvalidName(name.into()));
    }
    Ok(())
}

fn check_target<'n>(name: &'n str, directory: &dyn TargetDirectory) -> Result<&'n str, LoginError> {
    check_name(name)?;
    if !directory.target_exists(name) {
        return Err(LoginError::TargetNotFound(name.into()));
    }
    Ok(name)
}
