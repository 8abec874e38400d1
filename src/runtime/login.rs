//! Login threads: the login phase of every connection, and whole discovery sessions, over a
//! blocking socket (they need no storage and are short-lived). A normal session that reaches
//! full feature phase is registered (reinstating an older session with the same ISID) and its
//! socket handed to the shard that owns its target.

use super::shard::{NewConnection, ShardHandle, ShardMsg};
use crate::control::{NexusKey, Registry, SessionDetails, TargetEntry};
use crate::iscsi::connection::ConnParams;
use crate::iscsi::discovery::{TextExchange, TextRequest as DiscoveryText};
use crate::iscsi::login::{
    AuthPolicy, LoginError, LoginMachine, LoginOutcome, LoginRequest, LoginResponse,
    SendTargetsScope, SessionJoin, SessionLookup, SessionParams, SessionType, TargetDirectory,
    TargetLimits, TargetRecord,
};
use crate::iscsi::pdu::frame::encode_pdu;
use crate::iscsi::pdu::initiator::{self, InitiatorPdu, LoginRequestHeader};
use crate::iscsi::pdu::target::{self, LoginResponseHeader, RESERVED_TAG, RejectReason, Seq};
use crate::iscsi::pdu::{BHS_LEN, Bhs, Framing, Opcode};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// Time a login (or an idle discovery session) may take before the connection is dropped.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest data segment accepted during login and discovery.
const LOGIN_MAX_DATA: u32 = 65_536;
/// Queue depth advertised through MaxCmdSN once in full feature phase.
const FFP_WINDOW: u32 = 128;

/// What every login thread shares.
pub struct LoginContext {
    /// Exported targets (changed by the control plane as volumes come and go).
    pub targets: RwLock<Vec<TargetEntry>>,
    /// Bound portals.
    pub portals: Vec<SocketAddr>,
    /// Shard handles, by shard index.
    pub shards: Vec<ShardHandle>,
    /// Session registry.
    pub registry: Arc<Registry>,
    /// The authentication every login (discovery included) must pass; the daemon may swap it
    /// (`SIGHUP` re-reads the configuration): a login uses the policy of its start.
    pub auth: RwLock<AuthPolicy>,
    /// How logins ended, counted for the statistics.
    pub counts: LoginCounters,
}

/// Login outcomes since start (atomics: login threads count, the control plane reads).
#[derive(Debug, Default)]
pub struct LoginCounters {
    accepted: AtomicU64,
    authentication_failed: AtomicU64,
    not_authorized: AtomicU64,
    failed: AtomicU64,
}

impl LoginCounters {
    fn count_failure(&self, e: &LoginError) {
        let counter = match e {
            LoginError::AuthenticationFailed(_) => &self.authentication_failed,
            LoginError::NotAuthorized { .. } => &self.not_authorized,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> crate::control::api::LoginCounts {
        crate::control::api::LoginCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            authentication_failed: self.authentication_failed.load(Ordering::Relaxed),
            not_authorized: self.not_authorized.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl LoginContext {
    /// The target named `name`.
    pub fn target(&self, name: &str) -> Option<TargetEntry> {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        targets.iter().find(|t| t.name == name).cloned()
    }

    /// Starts exporting a target.
    pub fn add_target(&self, entry: TargetEntry) {
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        targets.retain(|t| t.name != entry.name);
        targets.push(entry);
    }

    /// Sets the initiators allowed on the targets of volume `volume` — its own and those of its
    /// exported snapshots (checked at login); returns their names.
    pub fn set_initiators(&self, volume: &str, initiators: &[String]) -> Vec<String> {
        self.update_targets_of(volume, |t| t.initiators = initiators.to_vec())
    }

    /// Gives the targets of `volume` (its own and its exported snapshots') the CHAP policy
    /// `chap` (`None`: the configuration's); new logins use it, live sessions are unaffected.
    pub fn set_chap(&self, volume: &str, chap: Option<AuthPolicy>) {
        self.update_targets_of(volume, |t| t.chap = chap.clone());
    }

    /// Applies `change` to the targets of `volume` (its own and its exported snapshots');
    /// returns their names.
    fn update_targets_of(
        &self,
        volume: &str,
        mut change: impl FnMut(&mut TargetEntry),
    ) -> Vec<String> {
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        targets
            .iter_mut()
            .filter(|t| crate::control::settings::volume_of(&t.alias) == volume)
            .map(|t| {
                change(t);
                t.name.clone()
            })
            .collect()
    }

    /// Stops exporting a target (new logins to it fail with "not found").
    pub fn remove_target(&self, name: &str) {
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        targets.retain(|t| t.name != name);
    }

    fn record(&self, t: &TargetEntry) -> TargetRecord {
        let addresses = self.portals.iter().map(|p| format!("{p},1")).collect();
        TargetRecord {
            name: t.name.clone(),
            addresses,
        }
    }
}

impl TargetDirectory for LoginContext {
    fn target_exists(&self, name: &str) -> bool {
        self.target(name).is_some()
    }

    fn target_alias(&self, name: &str) -> Option<String> {
        self.target(name).map(|t| t.alias)
    }

    fn portal_group_tag(&self) -> u16 {
        1
    }

    fn target_auth(&self, target: &str) -> Option<AuthPolicy> {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        targets.iter().find(|t| t.name == target)?.chap.clone()
    }

    fn may_access(&self, initiator: &str, target: &str) -> bool {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        targets
            .iter()
            .find(|t| t.name == target)
            .is_some_and(|t| crate::control::settings::allows(&t.initiators, initiator))
    }

    fn send_targets(&self, scope: SendTargetsScope<'_>) -> Vec<TargetRecord> {
        match scope {
            SendTargetsScope::All => {
                let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
                targets.iter().map(|t| self.record(t)).collect()
            }
            SendTargetsScope::Named(name) | SendTargetsScope::Session(name) => self
                .target(name)
                .map(|t| self.record(&t))
                .into_iter()
                .collect(),
        }
    }
}

/// Sessions have one connection (MaxConnections=1): adding a connection to an existing session
/// is refused.
struct SingleConnectionSessions<'a>(&'a Registry);

impl SessionLookup for SingleConnectionSessions<'_> {
    fn join_session(&self, _isid: [u8; 6], tsih: u16, _cid: u16) -> SessionJoin {
        if self.0.tsih_exists(tsih) {
            SessionJoin::TooManyConnections
        } else {
            SessionJoin::NotFound
        }
    }
}

/// A blocking PDU reader/writer for the login phase and discovery sessions.
struct Wire {
    stream: TcpStream,
    framing: Framing,
    stat_sn: u32,
}

impl Wire {
    fn read_pdu(&mut self) -> io::Result<(Bhs, Vec<u8>)> {
        let mut head = [0u8; BHS_LEN];
        self.stream.read_exact(&mut head)?;
        let bhs = Bhs(head);
        if bhs.data_segment_len() > LOGIN_MAX_DATA {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "data segment too long",
            ));
        }
        let mut rest = vec![0u8; self.framing.rest_len(&bhs)];
        self.stream.read_exact(&mut rest)?;
        let mut whole = head.to_vec();
        whole.extend_from_slice(&rest);
        let max = LOGIN_MAX_DATA;
        match crate::iscsi::pdu::frame::next_frame(&whole, self.framing, max) {
            Ok(crate::iscsi::pdu::frame::Next::Frame(f)) => Ok((f.bhs, f.data.to_vec())),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad digest or framing",
            )),
        }
    }

    fn write_pdu(&mut self, bhs: &Bhs, data: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(BHS_LEN + data.len() + 16);
        encode_pdu(&mut out, bhs, data, self.framing);
        self.stream.write_all(&out)
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }
}

fn login_request(h: &LoginRequestHeader, data: Vec<u8>) -> LoginRequest {
    LoginRequest {
        transit: h.transit,
        cont: h.cont,
        csg: h.csg,
        nsg: h.nsg,
        version_max: h.version_max,
        version_min: h.version_min,
        isid: h.isid,
        tsih: h.tsih,
        itt: h.itt,
        cid: h.cid,
        cmd_sn: h.cmd_sn,
        exp_stat_sn: h.exp_stat_sn,
        data,
    }
}

fn response_header(r: &LoginResponse) -> LoginResponseHeader {
    LoginResponseHeader {
        transit: r.transit,
        cont: r.cont,
        csg: r.csg,
        nsg: r.nsg,
        version_max: r.version_max,
        version_active: r.version_active,
        isid: r.isid,
        tsih: r.tsih,
        itt: r.itt,
        status_class: r.status_class,
        status_detail: r.status_detail,
        data_len: r.data.len() as u32,
    }
}

/// Runs the login phase on `stream`; then serves a discovery session or hands a normal one to
/// its shard. Errors only end this connection.
pub fn serve_login(stream: TcpStream, ctx: &LoginContext) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(LOGIN_TIMEOUT));
    let mut wire = Wire {
        stream,
        framing: Framing::default(),
        stat_sn: initial_stat_sn(),
    };
    let auth = ctx.auth.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut machine = LoginMachine::new(TargetLimits::default(), auth);
    let sessions = SingleConnectionSessions(&ctx.registry);
    loop {
        let Ok((bhs, data)) = wire.read_pdu() else {
            return;
        };
        let header = match initiator::parse(&bhs) {
            Ok(InitiatorPdu::LoginRequest(h)) => Some(h),
            _ => None,
        };
        let step = match &header {
            Some(h) => machine.step(&login_request(h, data), ctx, &sessions),
            None => machine.fail_invalid_during_login(),
        };
        let cmd_sn = header.map_or(0, |h| h.cmd_sn);
        let mut response = step.response;
        match step.outcome {
            LoginOutcome::Continue => {
                if send_login_response(&mut wire, &response, cmd_sn).is_err() {
                    return;
                }
            }
            LoginOutcome::Failed(e) => {
                ctx.counts.count_failure(&e);
                // What an administrator needs to see: refused credentials or access.
                if matches!(
                    e,
                    LoginError::AuthenticationFailed(_) | LoginError::NotAuthorized { .. }
                ) {
                    let peer = wire.stream.peer_addr().map(|a| a.to_string());
                    eprintln!(
                        "shoal: login from {} refused: {e}",
                        peer.as_deref().unwrap_or("?")
                    );
                }
                let _ = send_login_response(&mut wire, &response, cmd_sn);
                return;
            }
            LoginOutcome::Complete(params) => {
                ctx.counts.accepted.fetch_add(1, Ordering::Relaxed);
                let Some(h) = header else { return };
                finish_login(wire, ctx, &mut response, params, &h);
                return;
            }
        }
    }
}

fn send_login_response(wire: &mut Wire, r: &LoginResponse, cmd_sn: u32) -> io::Result<()> {
    let seq = Seq {
        stat_sn: wire.next_stat_sn(),
        exp_cmd_sn: cmd_sn,
        max_cmd_sn: cmd_sn.wrapping_add(FFP_WINDOW - 1),
    };
    let bhs = target::login_response(response_header(r), seq);
    wire.write_pdu(&bhs, &r.data)
}

fn finish_login(
    mut wire: Wire,
    ctx: &LoginContext,
    response: &mut LoginResponse,
    params: SessionParams,
    h: &LoginRequestHeader,
) {
    let target = params.target_name.clone().unwrap_or_default();
    let shard = match (params.session_type, ctx.target(&target)) {
        (SessionType::Normal, Some(t)) => Some(t.shard),
        _ => None,
    };
    let registration = shard.map(|shard| {
        let key = NexusKey {
            initiator: params.initiator_name.clone(),
            isid: h.isid,
            target: target.clone(),
        };
        ctx.registry.register(key, shard)
    });
    response.tsih = registration.map_or(0x8000 | u16::from(h.isid[5]), |r| r.entry.tsih);
    if let Some(reg) = registration {
        ctx.registry.describe(
            reg.entry.tsih,
            SessionDetails {
                peer: wire.stream.peer_addr().ok(),
                since: SystemTime::now(),
                alias: params.initiator_alias.clone(),
                header_digest: params.header_digest,
                data_digest: params.data_digest,
            },
        );
    }
    if send_login_response(&mut wire, response, h.cmd_sn).is_err() {
        return;
    }
    wire.framing = Framing {
        header_digest: params.header_digest,
        data_digest: params.data_digest,
    };
    let (Some(shard), Some(reg)) = (shard, registration) else {
        serve_discovery(wire, ctx, &params, h.cmd_sn);
        return;
    };
    if let Some(old) = reg.replaced {
        if let Some(handle) = ctx.shards.get(old.shard) {
            handle.send(ShardMsg::DropNexus(old.nexus));
        }
    }
    let _ = wire.stream.set_read_timeout(None);
    let conn = NewConnection {
        stream: wire.stream,
        target,
        params: conn_params(&params),
        cid: h.cid,
        exp_cmd_sn: h.cmd_sn,
        stat_sn: wire.stat_sn,
        nexus: reg.entry.nexus,
        initiator_port: initiator_port_name(&params.initiator_name, &h.isid),
        tsih: reg.entry.tsih,
        session: params,
    };
    if let Some(handle) = ctx.shards.get(shard) {
        handle.send(ShardMsg::Connection(Box::new(conn)));
    }
}

/// The iSCSI initiator port name (RFC 7143 / SPC-4 7.6.4.6): `NAME,i,0xISID`.
fn initiator_port_name(initiator: &str, isid: &[u8; 6]) -> String {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{initiator},i,0x{hex}")
}

/// The parameters the full-feature connection needs.
pub fn conn_params(p: &SessionParams) -> ConnParams {
    ConnParams {
        framing: Framing {
            header_digest: p.header_digest,
            data_digest: p.data_digest,
        },
        max_recv_data_segment_length: p.max_recv_data_segment_length,
        max_xmit_data_segment_length: p.max_xmit_data_segment_length,
        max_burst_length: p.max_burst_length,
        first_burst_length: p.first_burst_length,
        initial_r2t: p.initial_r2t,
        immediate_data: p.immediate_data,
        max_outstanding_r2t: u32::from(p.max_outstanding_r2t),
    }
}

/// A discovery session in full feature phase: Text (SendTargets), NOP and Logout only.
fn serve_discovery(
    mut wire: Wire,
    ctx: &LoginContext,
    params: &SessionParams,
    mut exp_cmd_sn: u32,
) {
    let mut exchange = TextExchange::new();
    loop {
        let Ok((bhs, data)) = wire.read_pdu() else {
            return;
        };
        let pdu = initiator::parse(&bhs);
        if let Ok(p) = &pdu {
            if let Some((cmd_sn, immediate)) = cmd_sn_of(p) {
                if !immediate && cmd_sn == exp_cmd_sn {
                    exp_cmd_sn = exp_cmd_sn.wrapping_add(1);
                }
            }
        }
        let seq = |wire: &mut Wire| Seq {
            stat_sn: wire.next_stat_sn(),
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_add(FFP_WINDOW - 1),
        };
        let result = match pdu {
            Ok(InitiatorPdu::TextRequest(t)) => {
                let req = DiscoveryText {
                    final_bit: t.final_bit,
                    cont: t.cont,
                    itt: t.itt,
                    ttt: t.ttt,
                    data,
                };
                match exchange.handle(&req, params, &TargetLimits::default(), ctx) {
                    Ok(step) => {
                        let r = step.response;
                        let s = seq(&mut wire);
                        let len = r.data.len() as u32;
                        let bhs = target::text_response(r.itt, r.ttt, r.final_bit, r.cont, s, len);
                        wire.write_pdu(&bhs, &r.data)
                    }
                    Err(e) => {
                        let s = seq(&mut wire);
                        let reason = if e.reject_reason() == RejectReason::InvalidPduField as u8 {
                            RejectReason::InvalidPduField
                        } else {
                            RejectReason::ProtocolError
                        };
                        wire.write_pdu(&target::reject(reason, s), &bhs.0)
                    }
                }
            }
            Ok(InitiatorPdu::NopOut(n))
                if n.itt != RESERVED_TAG
                    && data.len() <= params.max_xmit_data_segment_length as usize =>
            {
                let s = seq(&mut wire);
                let reply = target::nop_in(n.itt, RESERVED_TAG, 0, s, data.len() as u32);
                wire.write_pdu(&reply, &data)
            }
            Ok(InitiatorPdu::NopOut(_)) => Ok(()),
            Ok(InitiatorPdu::LogoutRequest(l)) => {
                let s = seq(&mut wire);
                let _ = wire.write_pdu(&target::logout_response(l.itt, s, 0, 0, 0), &[]);
                return;
            }
            Ok(_) | Err(_) => {
                let s = seq(&mut wire);
                let reason = if bhs.opcode() == Opcode::SCSI_COMMAND {
                    RejectReason::ProtocolError
                } else {
                    RejectReason::CommandNotSupported
                };
                wire.write_pdu(&target::reject(reason, s), &bhs.0)
            }
        };
        if result.is_err() {
            return;
        }
    }
}

fn cmd_sn_of(p: &InitiatorPdu) -> Option<(u32, bool)> {
    match p {
        InitiatorPdu::TextRequest(t) => Some((t.cmd_sn, t.immediate)),
        InitiatorPdu::NopOut(n) => Some((n.cmd_sn, n.immediate)),
        InitiatorPdu::LogoutRequest(l) => Some((l.cmd_sn, l.immediate)),
        InitiatorPdu::ScsiCommand(c) => Some((c.cmd_sn, c.immediate)),
        _ => None,
    }
}

fn initial_stat_sn() -> u32 {
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        return 1;
    }
    u32::from_ne_bytes(b)
}
