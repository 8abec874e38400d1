//! A minimal raw iSCSI initiator over a blocking socket, for the cases real initiators never
//! produce: malformed PDUs, bad digests, oversized segments, out-of-window CmdSN.

use shoal::iscsi::pdu::frame::{Next, encode_pdu, next_frame};
use shoal::iscsi::pdu::{Bhs, Framing, Opcode};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A logged-in (or not yet) raw connection.
pub struct RawInitiator {
    /// The socket.
    pub stream: TcpStream,
    /// Digests in use after login.
    pub framing: Framing,
    /// Next CmdSN.
    pub cmd_sn: u32,
    /// Last StatSN seen + 1.
    pub exp_stat_sn: u32,
    /// Next ITT.
    pub itt: u32,
    /// The keys the target answered in the last login response.
    pub answers: Vec<(String, String)>,
    buf: Vec<u8>,
}

/// A received PDU.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// Header.
    pub bhs: Bhs,
    /// Data segment.
    pub data: Vec<u8>,
}

impl RawInitiator {
    /// Connects without logging in.
    pub fn connect(addr: SocketAddr) -> RawInitiator {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawInitiator {
            stream,
            framing: Framing::default(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
            answers: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Connects and logs in to `target` (normal session) with the given extra keys, in one
    /// operational-stage PDU. Panics unless the login succeeds.
    pub fn login(addr: SocketAddr, target: &str, isid: u8, keys: &[(&str, &str)]) -> RawInitiator {
        let mut ini = RawInitiator::connect(addr);
        let mut text = vec![
            (
                "InitiatorName".to_string(),
                "iqn.2026-11.dev.shoal:test-initiator".to_string(),
            ),
            ("SessionType".to_string(), "Normal".to_string()),
            ("TargetName".to_string(), target.to_string()),
        ];
        for (k, v) in keys {
            text.push((k.to_string(), v.to_string()));
        }
        let resp = ini.login_pdu(isid, 1, 3, true, &text);
        assert_eq!(
            resp.bhs.0[36], 0,
            "login failed: class {} detail {}",
            resp.bhs.0[36], resp.bhs.0[37]
        );
        assert_eq!(resp.bhs.0[1] & 0x80, 0x80, "login did not transit");
        ini.enter_full_feature(&resp);
        ini
    }

    /// Sends one Login Request and returns the response.
    pub fn login_pdu(
        &mut self,
        isid: u8,
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[(String, String)],
    ) -> Pdu {
        let mut data = Vec::new();
        for (k, v) in keys {
            data.extend_from_slice(format!("{k}={v}").as_bytes());
            data.push(0);
        }
        let mut bhs = Bhs::new(Opcode::LOGIN_REQUEST);
        bhs.set_immediate(true);
        bhs.0[1] = (if transit { 0x80 } else { 0 }) | (csg << 2) | nsg;
        bhs.0[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, isid]);
        bhs.set_itt(0);
        bhs.set_u32(24, self.cmd_sn);
        bhs.set_u32(28, self.exp_stat_sn);
        bhs.set_data_segment_len(data.len() as u32);
        self.send(&bhs, &data);
        let resp = self.recv().expect("login response");
        self.exp_stat_sn = resp.bhs.u32_at(24).wrapping_add(1);
        resp
    }

    /// Sends a PDU with the connection's framing.
    pub fn send(&mut self, bhs: &Bhs, data: &[u8]) {
        let mut out = Vec::new();
        encode_pdu(&mut out, bhs, data, self.framing);
        self.stream.write_all(&out).expect("send");
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send raw");
    }

    /// Receives one PDU, or None when the target closed the connection (or timed out).
    pub fn recv(&mut self) -> Option<Pdu> {
        loop {
            match next_frame(&self.buf, self.framing, 16 << 20) {
                Ok(Next::Frame(f)) => {
                    let pdu = Pdu {
                        bhs: f.bhs,
                        data: f.data.to_vec(),
                    };
                    let n = f.consumed;
                    self.buf.drain(..n);
                    return Some(pdu);
                }
                Ok(Next::NeedBytes(_)) => {}
                Err(e) => panic!("target sent a bad frame: {e}"),
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Whether the target closed the connection within the read timeout.
    pub fn closed_by_target(&mut self) -> bool {
        loop {
            match self.recv() {
                None => return true,
                Some(p) if p.bhs.opcode() == Opcode::REJECT || p.bhs.opcode() == Opcode::NOP_IN => {
                    continue;
                }
                Some(_) => return false,
            }
        }
    }

    /// Builds a SCSI Command header (F set).
    pub fn scsi_command(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool) -> Bhs {
        let mut bhs = Bhs::new(Opcode::SCSI_COMMAND);
        bhs.0[1] = 0x80 | if read { 0x40 } else { 0 } | if write { 0x20 } else { 0 } | 1;
        bhs.set_itt(self.next_itt());
        bhs.set_u32(20, edtl);
        bhs.set_u32(24, self.cmd_sn);
        bhs.set_u32(28, self.exp_stat_sn);
        bhs.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        bhs
    }

    /// A fresh ITT.
    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Sends TEST UNIT READY and returns the SCSI status, skipping unit attentions.
    pub fn test_unit_ready(&mut self) -> u8 {
        for _ in 0..4 {
            let bhs = self.scsi_command(&[0u8; 6], 0, false, false);
            self.send(&bhs, &[]);
            let resp = self
                .recv_opcode(Opcode::SCSI_RESPONSE)
                .expect("TUR response");
            let status = resp.bhs.0[3];
            let sense_key = resp.data.get(4).map(|b| b & 0x0f);
            if status == 2 && sense_key == Some(6) {
                continue;
            }
            return status;
        }
        panic!("unit attention never cleared");
    }

    /// Receives until a PDU with `opcode` arrives (answering target NOP-In pings on the way).
    pub fn recv_opcode(&mut self, opcode: Opcode) -> Option<Pdu> {
        loop {
            let p = self.recv()?;
            self.exp_stat_sn = self.exp_stat_sn.max(p.bhs.u32_at(24).wrapping_add(1));
            if p.bhs.opcode() == opcode {
                return Some(p);
            }
            if p.bhs.opcode() == Opcode::NOP_IN && p.bhs.itt() == 0xffff_ffff {
                self.answer_ping(&p);
            }
        }
    }

    /// Answers a target NOP-In ping.
    pub fn answer_ping(&mut self, ping: &Pdu) {
        let mut bhs = Bhs::new(Opcode::NOP_OUT);
        bhs.set_immediate(true);
        bhs.0[1] = 0x80;
        bhs.set_itt(0xffff_ffff);
        bhs.set_u32(20, ping.bhs.u32_at(20));
        bhs.set_u32(24, self.cmd_sn);
        bhs.set_u32(28, self.exp_stat_sn);
        self.send(&bhs, &[]);
    }
}

// ------------------------------------------------------------------------------------------
// Full-feature helpers: login variants, commands with Data-Out and R2T, TMF, NOP, timed reads.
// ------------------------------------------------------------------------------------------

/// The default volume's target name.
pub const DEFAULT_TARGET: &str = "iqn.2026-11.dev.shoal:default";
/// The InitiatorName `RawInitiator::login` uses.
pub const INITIATOR_NAME: &str = "iqn.2026-11.dev.shoal:test-initiator";
/// The reserved tag (RFC 7143 §11.2.1.8).
pub const RESERVED: u32 = 0xffff_ffff;
/// The read timeout every raw connection starts with.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An ISID of the random type (0x80) with `n` in its qualifier.
pub fn isid(n: u16) -> [u8; 6] {
    let [hi, lo] = n.to_be_bytes();
    [0x80, 0, 0, 0, hi, lo]
}

/// A session of the test initiator to the default volume with ISID `isid(n)`, the power-on unit
/// attention cleared (TEST UNIT READY must then answer GOOD).
pub fn session(addr: SocketAddr, n: u16) -> RawInitiator {
    let mut ini = RawInitiator::login_default(addr, n, &[]);
    assert_eq!(ini.test_unit_ready(), 0, "power-on unit attention cleared");
    ini
}

/// A session of initiator `initiator` to volume `volume` with ISID `isid(n)`, once TEST UNIT
/// READY answers GOOD (unit attentions consumed; panics unless it does within
/// [`READ_TIMEOUT`]).
pub fn session_as(addr: SocketAddr, initiator: &str, volume: &str, n: u16) -> RawInitiator {
    let target = format!("iqn.2026-11.dev.shoal:{volume}");
    let mut ini = RawInitiator::login_as(addr, initiator, isid(n), &target, &[]);
    let start = std::time::Instant::now();
    while ini.test_unit_ready() != 0 {
        assert!(
            start.elapsed() < READ_TIMEOUT,
            "{target} not ready for {initiator} within {READ_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    ini
}

/// Writes `data` (whole 512-byte blocks) from `lba` on, 256 blocks per WRITE(10), each
/// required to succeed.
pub fn write_blocks(ini: &mut RawInitiator, lba: u32, data: &[u8]) {
    for (i, chunk) in data.chunks(256 * 512).enumerate() {
        let r = ini.write10(lba + (i * 256) as u32, chunk);
        assert_eq!(
            r.status(),
            0,
            "WRITE(10) at {}: {:?}",
            lba + (i * 256) as u32,
            r.sense()
        );
    }
}

/// Reads `blocks` 512-byte blocks from `lba` on, 256 per READ(10), each required to succeed.
pub fn read_blocks(ini: &mut RawInitiator, lba: u32, blocks: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(blocks * 512);
    for at in (0..blocks).step_by(256) {
        let n = (blocks - at).min(256) as u16;
        let r = ini.read10(lba + at as u32, n);
        assert_eq!(
            r.status(),
            0,
            "READ(10) at {}: {:?}",
            lba + at as u32,
            r.sense()
        );
        out.extend(r.data);
    }
    out
}

/// Encodes `key=value\0` pairs.
pub fn text_data(keys: &[(&str, &str)]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in keys {
        data.extend_from_slice(format!("{k}={v}").as_bytes());
        data.push(0);
    }
    data
}

/// Decodes `key=value\0` pairs (lossy, for assertions).
pub fn parse_keys(data: &[u8]) -> Vec<(String, String)> {
    data.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = String::from_utf8_lossy(s);
            match s.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (s.to_string(), String::new()),
            }
        })
        .collect()
}

/// The value of `key` in decoded pairs.
pub fn key_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A Login Request header (I bit set, ITT 0, CID 0).
pub fn login_bhs(
    isid: [u8; 6],
    csg: u8,
    nsg: u8,
    transit: bool,
    cmd_sn: u32,
    exp_stat_sn: u32,
) -> Bhs {
    let mut bhs = Bhs::new(Opcode::LOGIN_REQUEST);
    bhs.set_immediate(true);
    bhs.0[1] = (if transit { 0x80 } else { 0 }) | (csg << 2) | nsg;
    bhs.0[8..14].copy_from_slice(&isid);
    bhs.set_itt(0);
    bhs.set_u32(24, cmd_sn);
    bhs.set_u32(28, exp_stat_sn);
    bhs
}

/// Status-Class and Status-Detail of a Login Response.
pub fn login_status(resp: &Pdu) -> (u8, u8) {
    (resp.bhs.0[36], resp.bhs.0[37])
}

/// What one timed read from the target brought.
#[derive(Debug)]
pub enum Event {
    /// A whole PDU.
    Pdu(Pdu),
    /// Nothing arrived in time.
    Timeout,
    /// The target closed (or reset) the connection.
    Closed,
}

/// A finished SCSI task as the initiator saw it.
#[derive(Debug)]
pub struct Reply {
    /// The PDU that carried the status (SCSI Response, or the last Data-In with the S bit).
    pub status_pdu: Pdu,
    /// Every Data-In of the task, in arrival order.
    pub data_in: Vec<Pdu>,
    /// Every R2T of the task, in arrival order.
    pub r2ts: Vec<Pdu>,
    /// The Data-In payload placed at its buffer offsets.
    pub data: Vec<u8>,
}

impl Reply {
    /// The SCSI status byte.
    pub fn status(&self) -> u8 {
        self.status_pdu.bhs.0[3]
    }

    /// Sense key, ASC and ASCQ of a CHECK CONDITION (fixed or descriptor sense).
    pub fn sense(&self) -> Option<(u8, u8, u8)> {
        let d = &self.status_pdu.data;
        let len = u16::from_be_bytes([*d.first()?, *d.get(1)?]) as usize;
        let s = d.get(2..2 + len)?;
        match s.first()? & 0x7f {
            0x70 | 0x71 => Some((s.get(2)? & 0x0f, *s.get(12)?, *s.get(13)?)),
            0x72 | 0x73 => Some((s.get(1)? & 0x0f, *s.get(2)?, *s.get(3)?)),
            _ => None,
        }
    }

    /// The residual count when the U (underflow) bit is set.
    pub fn underflow(&self) -> Option<u32> {
        (self.status_pdu.bhs.0[1] & 0x02 != 0).then(|| self.status_pdu.bhs.u32_at(44))
    }

    /// The residual count when the O (overflow) bit is set.
    pub fn overflow(&self) -> Option<u32> {
        (self.status_pdu.bhs.0[1] & 0x04 != 0).then(|| self.status_pdu.bhs.u32_at(44))
    }

    /// StatSN, ExpCmdSN and MaxCmdSN of the status PDU.
    pub fn seq(&self) -> (u32, u32, u32) {
        let b = &self.status_pdu.bhs;
        (b.u32_at(24), b.u32_at(28), b.u32_at(32))
    }
}

impl RawInitiator {
    /// Connects and logs in with a full ISID and InitiatorName in one operational-stage PDU
    /// (CSG 1 → 3). Panics unless the login succeeds; the answer keys are kept in `answers`.
    pub fn login_as(
        addr: SocketAddr,
        initiator: &str,
        isid: [u8; 6],
        target: &str,
        keys: &[(&str, &str)],
    ) -> RawInitiator {
        let mut ini = RawInitiator::connect(addr);
        let mut all = vec![
            ("InitiatorName", initiator),
            ("SessionType", "Normal"),
            ("TargetName", target),
        ];
        all.extend_from_slice(keys);
        let resp = ini
            .login_step(isid, 1, 3, true, &all)
            .expect("login response");
        assert_eq!(login_status(&resp), (0, 0), "login failed");
        assert_eq!(
            resp.bhs.0[1] & 0x83,
            0x83,
            "login did not transit to full feature phase"
        );
        ini.enter_full_feature(&resp);
        ini
    }

    /// Logs in to the default target with ISID `isid(n)` and extra operational keys.
    pub fn login_default(addr: SocketAddr, n: u16, keys: &[(&str, &str)]) -> RawInitiator {
        RawInitiator::login_as(addr, INITIATOR_NAME, isid(n), DEFAULT_TARGET, keys)
    }

    /// Records the final login response: negotiated keys and digests.
    pub fn enter_full_feature(&mut self, resp: &Pdu) {
        self.answers = parse_keys(&resp.data);
        self.framing.header_digest = self.negotiated("HeaderDigest") == Some("CRC32C");
        self.framing.data_digest = self.negotiated("DataDigest") == Some("CRC32C");
    }

    /// Sends one Login Request and returns the response, or None when the target closed.
    pub fn login_step(
        &mut self,
        isid: [u8; 6],
        csg: u8,
        nsg: u8,
        transit: bool,
        keys: &[(&str, &str)],
    ) -> Option<Pdu> {
        let data = text_data(keys);
        let mut bhs = login_bhs(isid, csg, nsg, transit, self.cmd_sn, self.exp_stat_sn);
        bhs.set_data_segment_len(data.len() as u32);
        self.send(&bhs, &data);
        let resp = self.recv()?;
        self.exp_stat_sn = resp.bhs.u32_at(24).wrapping_add(1);
        Some(resp)
    }

    /// A key the target answered at login.
    pub fn negotiated(&self, key: &str) -> Option<&str> {
        key_value(&self.answers, key)
    }

    /// A numeric session parameter: the target's answer, else the RFC 7143 default.
    pub fn param(&self, key: &str, default: u32) -> u32 {
        self.negotiated(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// A boolean session parameter: the target's answer, else the RFC 7143 default.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        self.negotiated(key).map_or(default, |v| v == "Yes")
    }

    /// Reads one PDU within `within`, telling a timeout from a closed connection.
    pub fn next_event(&mut self, within: Duration) -> Event {
        let deadline = std::time::Instant::now() + within;
        loop {
            match next_frame(&self.buf, self.framing, 16 << 20) {
                Ok(Next::Frame(f)) => {
                    let pdu = Pdu {
                        bhs: f.bhs,
                        data: f.data.to_vec(),
                    };
                    let n = f.consumed;
                    self.buf.drain(..n);
                    return Event::Pdu(pdu);
                }
                Ok(Next::NeedBytes(_)) => {}
                Err(e) => panic!("target sent a bad frame: {e}"),
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Event::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 65536];
            let got = self.stream.read(&mut chunk);
            let _ = self.stream.set_read_timeout(Some(READ_TIMEOUT));
            match got {
                Ok(0) => return Event::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Event::Timeout;
                }
                Err(_) => return Event::Closed,
            }
        }
    }

    /// The next PDU other than a target ping (pings are answered) within `within`.
    pub fn next_non_ping(&mut self, within: Duration) -> Event {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_event(left) {
                Event::Pdu(p) if p.bhs.opcode() == Opcode::NOP_IN && p.bhs.itt() == RESERVED => {
                    self.answer_ping(&p)
                }
                Event::Pdu(p) => {
                    self.note_stat_sn(&p);
                    return Event::Pdu(p);
                }
                other => return other,
            }
        }
    }

    /// The next non-ping PDU; panics when the target closes or stays silent for 10 s.
    pub fn expect_pdu(&mut self) -> Pdu {
        match self.next_non_ping(READ_TIMEOUT) {
            Event::Pdu(p) => p,
            other => panic!("expected a PDU from the target, got {other:?}"),
        }
    }

    /// Whether the target closes the connection within `within` (Rejects and pings are skipped;
    /// any other PDU counts as "not closed").
    pub fn closes_within(&mut self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_event(left) {
                Event::Closed => return true,
                Event::Timeout => return false,
                Event::Pdu(p) if matches!(p.bhs.opcode(), Opcode::REJECT | Opcode::NOP_IN) => {}
                Event::Pdu(p) => panic!("expected the connection to close, got {:?}", p.bhs),
            }
        }
    }

    /// Tracks ExpStatSN from PDUs that carry status.
    fn note_stat_sn(&mut self, p: &Pdu) {
        let carries_status = match p.bhs.opcode() {
            Opcode::SCSI_DATA_IN => p.bhs.0[1] & 0x01 != 0,
            Opcode::R2T | Opcode::ASYNC_MESSAGE => false,
            Opcode::NOP_IN => p.bhs.itt() != RESERVED,
            _ => true,
        };
        if carries_status {
            self.exp_stat_sn = p.bhs.u32_at(24).wrapping_add(1);
        }
    }

    /// Builds an immediate SCSI Command: I bit set, carrying the next CmdSN without taking it.
    pub fn immediate_command(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool) -> Bhs {
        let mut bhs = self.scsi_command(cdb, edtl, read, write);
        self.cmd_sn = self.cmd_sn.wrapping_sub(1);
        bhs.set_immediate(true);
        bhs
    }

    /// Builds a SCSI Command with an explicit CmdSN, leaving the CmdSN counter alone.
    pub fn command_with_cmd_sn(&mut self, cdb: &[u8], edtl: u32, read: bool, cmd_sn: u32) -> Bhs {
        let mut bhs = self.scsi_command(cdb, edtl, read, false);
        self.cmd_sn = self.cmd_sn.wrapping_sub(1);
        bhs.set_u32(24, cmd_sn);
        bhs
    }

    /// Sends a SCSI Command (next CmdSN) with `immediate` as its data segment, F bit set unless
    /// `more` (unsolicited Data-Out follows). Returns its ITT.
    pub fn send_command(
        &mut self,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
        immediate: &[u8],
        more: bool,
    ) -> u32 {
        let mut bhs = self.scsi_command(cdb, edtl, read, write);
        if more {
            bhs.0[1] &= !0x80;
        }
        bhs.set_data_segment_len(immediate.len() as u32);
        self.send(&bhs, immediate);
        bhs.itt()
    }

    /// A SCSI Data-Out header.
    pub fn data_out_bhs(
        &self,
        itt: u32,
        ttt: u32,
        data_sn: u32,
        offset: u32,
        len: usize,
        final_bit: bool,
    ) -> Bhs {
        let mut bhs = Bhs::new(Opcode::SCSI_DATA_OUT);
        bhs.0[1] = if final_bit { 0x80 } else { 0 };
        bhs.set_itt(itt);
        bhs.set_u32(20, ttt);
        bhs.set_u32(28, self.exp_stat_sn);
        bhs.set_u32(36, data_sn);
        bhs.set_u32(40, offset);
        bhs.set_data_segment_len(len as u32);
        bhs
    }

    /// Sends `data` as Data-Out PDUs of one sequence starting at `offset`, split by the target's
    /// MaxRecvDataSegmentLength, DataSN from 0, F on the last.
    pub fn send_data_sequence(&mut self, itt: u32, ttt: u32, offset: u32, data: &[u8]) {
        let max = self.param("MaxRecvDataSegmentLength", 8192) as usize;
        let n = data.len().div_ceil(max);
        for (i, chunk) in data.chunks(max).enumerate() {
            let at = offset + (i * max) as u32;
            let bhs = self.data_out_bhs(itt, ttt, i as u32, at, chunk.len(), i + 1 == n);
            self.send(&bhs, chunk);
        }
    }

    /// Answers an R2T with the bytes it asks for out of `data` (the whole command's data).
    pub fn answer_r2t(&mut self, r2t: &Pdu, data: &[u8]) {
        let (ttt, offset, len) = (r2t.bhs.u32_at(20), r2t.bhs.u32_at(40), r2t.bhs.u32_at(44));
        let slice = &data[offset as usize..(offset + len) as usize];
        self.send_data_sequence(r2t.bhs.itt(), ttt, offset, slice);
    }

    /// Receives the rest of task `itt`: answers its R2Ts from `out`, gathers its Data-In, and
    /// returns at its status. Panics on any other PDU (a Reject, another task's status).
    pub fn finish_task(&mut self, itt: u32, out: &[u8]) -> Reply {
        let mut data_in = Vec::new();
        let mut r2ts = Vec::new();
        let mut data = Vec::new();
        loop {
            let p = self.expect_pdu();
            assert_eq!(
                p.bhs.itt(),
                itt,
                "PDU for another task while waiting for {itt:#x}: {:?}",
                p.bhs
            );
            match p.bhs.opcode() {
                Opcode::R2T => {
                    self.answer_r2t(&p, out);
                    r2ts.push(p);
                }
                Opcode::SCSI_DATA_IN => {
                    let at = p.bhs.u32_at(40) as usize;
                    if data.len() < at + p.data.len() {
                        data.resize(at + p.data.len(), 0);
                    }
                    data[at..at + p.data.len()].copy_from_slice(&p.data);
                    let status = p.bhs.0[1] & 0x01 != 0;
                    data_in.push(p.clone());
                    if status {
                        return Reply {
                            status_pdu: p,
                            data_in,
                            r2ts,
                            data,
                        };
                    }
                }
                Opcode::SCSI_RESPONSE => {
                    return Reply {
                        status_pdu: p,
                        data_in,
                        r2ts,
                        data,
                    };
                }
                other => panic!(
                    "unexpected {other:?} while waiting for task {itt:#x}: {:?}",
                    p.bhs
                ),
            }
        }
    }

    /// Runs one SCSI command to completion the way a conforming initiator does: immediate data
    /// when ImmediateData=Yes, unsolicited Data-Out when InitialR2T=No (both up to
    /// FirstBurstLength), and the rest on R2T.
    pub fn command(&mut self, cdb: &[u8], edtl: u32, read: bool, out: &[u8]) -> Reply {
        let write = !out.is_empty();
        let first_burst = self.param("FirstBurstLength", 65536) as usize;
        let max_seg = self.param("MaxRecvDataSegmentLength", 8192) as usize;
        let unsolicited = if write && !self.flag("InitialR2T", true) {
            first_burst.min(out.len())
        } else {
            0
        };
        let immediate = if write && self.flag("ImmediateData", true) {
            first_burst.min(max_seg).min(out.len())
        } else {
            0
        };
        let more = unsolicited > immediate;
        let itt = self.send_command(cdb, edtl, read, write, &out[..immediate], more);
        if more {
            let ttt = RESERVED;
            let rest = &out[immediate..unsolicited];
            self.send_data_sequence(itt, ttt, immediate as u32, rest);
        }
        self.finish_task(itt, out)
    }

    /// WRITE(10) of `data` (whole 512-byte blocks) at `lba`.
    pub fn write10(&mut self, lba: u32, data: &[u8]) -> Reply {
        let cdb = super::scsi::write10(lba, (data.len() / 512) as u16);
        self.command(&cdb, data.len() as u32, false, data)
    }

    /// The logical unit's NAA designation descriptor (code set, type, length, designator): the
    /// first one of its Device Identification VPD page.
    pub fn naa_designator(&mut self) -> Vec<u8> {
        let r = self.command(&[0x12, 0x01, 0x83, 0x00, 0xFF, 0x00], 255, true, &[]);
        assert_eq!(r.status(), 0);
        let d = &r.data[4..];
        assert_eq!(d[1] & 0x0F, 0x03, "NAA first");
        d[..4 + usize::from(d[3])].to_vec()
    }

    /// EXTENDED COPY (LID1): see [`super::scsi::extended_copy`].
    pub fn extended_copy(
        &mut self,
        list_id: u8,
        usage: u8,
        cscds: &[Vec<u8>],
        segments: &[Vec<u8>],
    ) -> Reply {
        let (cdb, list) = super::scsi::extended_copy(list_id, usage, cscds, segments);
        self.command(&cdb, list.len() as u32, false, &list)
    }

    /// READ(10) of `blocks` 512-byte blocks at `lba`, EDTL the exact length.
    pub fn read10(&mut self, lba: u32, blocks: u16) -> Reply {
        let cdb = super::scsi::read10(lba, blocks);
        self.command(&cdb, u32::from(blocks) * 512, true, &[])
    }

    /// Sends an immediate Task Management Function Request; returns its ITT.
    pub fn send_tmf(&mut self, function: u8, lun: u64, rtt: u32, ref_cmd_sn: u32) -> u32 {
        let mut bhs = Bhs::new(Opcode::TASK_MGMT_REQUEST);
        bhs.set_immediate(true);
        bhs.0[1] = 0x80 | function;
        bhs.set_lun(lun);
        let itt = self.next_itt();
        bhs.set_itt(itt);
        bhs.set_u32(20, rtt);
        bhs.set_u32(24, self.cmd_sn);
        bhs.set_u32(28, self.exp_stat_sn);
        bhs.set_u32(32, ref_cmd_sn);
        self.send(&bhs, &[]);
        itt
    }

    /// Sends a TMF and returns its response. Panics on any other PDU (e.g. the status of a task
    /// the TMF aborted).
    pub fn tmf(&mut self, function: u8, lun: u64, rtt: u32, ref_cmd_sn: u32) -> Pdu {
        let itt = self.send_tmf(function, lun, rtt, ref_cmd_sn);
        let p = self.expect_pdu();
        assert_eq!(
            p.bhs.opcode(),
            Opcode::TASK_MGMT_RESPONSE,
            "expected the TMF response, got {:?}",
            p.bhs
        );
        assert_eq!(p.bhs.itt(), itt, "TMF response for another ITT");
        p
    }

    /// Sends an immediate NOP-Out ping carrying `data`; returns its ITT.
    pub fn send_ping(&mut self, data: &[u8]) -> u32 {
        let mut bhs = Bhs::new(Opcode::NOP_OUT);
        bhs.set_immediate(true);
        bhs.0[1] = 0x80;
        let itt = self.next_itt();
        bhs.set_itt(itt);
        bhs.set_u32(20, RESERVED);
        bhs.set_u32(24, self.cmd_sn);
        bhs.set_u32(28, self.exp_stat_sn);
        bhs.set_data_segment_len(data.len() as u32);
        self.send(&bhs, data);
        itt
    }

    /// Writes bytes, ignoring errors (the target may already have closed).
    pub fn send_raw_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// TEST UNIT READY until GOOD (unit attentions consumed); panics otherwise.
    pub fn ready(&mut self) {
        assert_eq!(self.test_unit_ready(), 0, "TEST UNIT READY failed");
    }
}
