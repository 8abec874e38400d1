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
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawInitiator {
            stream,
            framing: Framing::default(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            itt: 1,
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
        let answer = String::from_utf8_lossy(&resp.data).to_string();
        ini.framing.header_digest = answer.contains("HeaderDigest=CRC32C");
        ini.framing.data_digest = answer.contains("DataDigest=CRC32C");
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
