//! Full feature phase Text Requests: SendTargets (RFC 7143 Appendix C, §13.3), renegotiation of
//! ALL keys (RFC 7143 §6.1), and long text exchanges split over several PDUs (RFC 7143 §11.10,
//! §11.11).
//!
//! - [`send_targets`] answers one `SendTargets=` value from a [`TargetDirectory`]: `All` (every
//!   target, discovery sessions), an iSCSI name (that target only), or empty (the session's own
//!   target, normal sessions).
//! - [`TextResponder`] cuts a long encoded text into parts no larger than the peer's
//!   MaxRecvDataSegmentLength, preferring to cut after a NUL.
//! - [`TextExchange`] is the per-connection Text Request state machine: it joins C-bit request
//!   parts, hands out Target Transfer Tags for every response that leaves the exchange open
//!   (C=1 parts of a long response, acknowledgements of request parts, F=0 negotiation rounds),
//!   and returns the new [`SessionParams`] once a negotiation's final response is sent.

use std::collections::HashSet;

use thiserror::Error;

use crate::iscsi::login::keys::{NegotiationError, negotiate_full_feature};
use crate::iscsi::login::params::MAX_ISCSI_NAME_LEN;
use crate::iscsi::login::{
    SendTargetsScope, SessionParams, SessionType, TargetDirectory, TargetLimits, TargetRecord,
};
use crate::iscsi::text::{TextAccumulator, TextError, encode_text, pair};

/// The reserved Target Transfer Tag: "no exchange in progress" (RFC 7143 §11.10.4).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Reject PDU reason: protocol error (RFC 7143 §11.17.1).
pub const REJECT_PROTOCOL_ERROR: u8 = 0x04;

/// Reject PDU reason: invalid PDU field (RFC 7143 §11.17.1).
pub const REJECT_INVALID_PDU_FIELD: u8 = 0x09;

/// Answers `SendTargets=<value>` for `session` (RFC 7143 Appendix C).
///
/// - Discovery session: `All` lists every target; an iSCSI name (`iqn.`, `eui.`, `naa.`) lists
///   that target if it exists; an empty value lists nothing.
/// - Normal session: an empty value, `All` or the session's own TargetName list only the
///   session's target (Appendix C forbids `All` from exposing other targets there; answering
///   with the session's target keeps initiators that ask for `All` working); another name lists
///   nothing.
/// - Any other value is answered `SendTargets=Reject`.
pub fn send_targets(
    value: &str,
    session: &SessionParams,
    directory: &dyn TargetDirectory,
) -> Vec<(String, String)> {
    match resolve_scope(value, session) {
        Resolution::Scope(scope) => {
            let mut records = filter_records(scope, directory.send_targets(scope));
            records.retain(|r| directory.may_access(&session.initiator_name, &r.name));
            records_to_pairs(&records)
        }
        Resolution::Nothing => Vec::new(),
        Resolution::Reject => vec![pair("SendTargets", "Reject")],
    }
}

/// How a SendTargets value is answered.
enum Resolution<'a> {
    Scope(SendTargetsScope<'a>),
    Nothing,
    Reject,
}

fn resolve_scope<'a>(value: &'a str, session: &'a SessionParams) -> Resolution<'a> {
    match (session.session_type, session.target_name.as_deref()) {
        (SessionType::Discovery, _) => match value {
            "All" => Resolution::Scope(SendTargetsScope::All),
            "" => Resolution::Nothing,
            name if is_iscsi_name(name) => Resolution::Scope(SendTargetsScope::Named(name)),
            _ => Resolution::Reject,
        },
        (SessionType::Normal, Some(own)) => match value {
            "" | "All" => Resolution::Scope(SendTargetsScope::Session(own)),
            name if name == own => Resolution::Scope(SendTargetsScope::Session(own)),
            name if is_iscsi_name(name) => Resolution::Nothing,
            _ => Resolution::Reject,
        },
        (SessionType::Normal, None) => Resolution::Nothing,
    }
}

/// True for values shaped like an iSCSI name (RFC 7143 §4.2.7: `iqn.`, `eui.` or `naa.` type,
/// at most 223 bytes, no spaces or control characters).
pub(crate) fn is_iscsi_name(value: &str) -> bool {
    value.len() <= MAX_ISCSI_NAME_LEN
        && value.bytes().all(|b| b.is_ascii_graphic())
        && ["iqn.", "eui.", "naa."]
            .iter()
            .any(|prefix| value.starts_with(prefix) && value.len() > prefix.len())
}

/// Keeps a named or session scope from listing any other target, whatever the directory says.
fn filter_records(scope: SendTargetsScope<'_>, records: Vec<TargetRecord>) -> Vec<TargetRecord> {
    match scope {
        SendTargetsScope::All => records,
        SendTargetsScope::Named(name) | SendTargetsScope::Session(name) => {
            records.into_iter().filter(|r| r.name == name).collect()
        }
    }
}

/// One `TargetName=` followed by its `TargetAddress=` keys per record.
fn records_to_pairs(records: &[TargetRecord]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for record in records {
        pairs.push(pair("TargetName", record.name.clone()));
        pairs.extend(
            record
                .addresses
                .iter()
                .map(|a| pair("TargetAddress", a.clone())),
        );
    }
    pairs
}

/// One part of a text being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextChunk {
    /// The bytes of this part.
    pub data: Vec<u8>,
    /// True for the last part (send with C=0); false means more follow (send with C=1).
    pub last: bool,
}

impl Default for TextChunk {
    /// An empty last part.
    fn default() -> Self {
        Self {
            data: Vec::new(),
            last: true,
        }
    }
}

/// Cuts an encoded text into parts of at most `max_chunk` bytes (RFC 7143 §11.11.2: a long
/// text response is sent over several PDUs with the C bit). Cuts fall right after a NUL when
/// the part holds one, so most parts end on a whole `key=value`; a single entry longer than
/// `max_chunk` is split where it must be (the initiator joins the parts).
#[derive(Debug, Clone)]
pub struct TextResponder {
    data: Vec<u8>,
    pos: usize,
    max_chunk: usize,
    done: bool,
}

impl TextResponder {
    /// A responder for `data` with parts of at most `max_chunk` bytes (at least 1).
    pub fn new(data: Vec<u8>, max_chunk: usize) -> Self {
        Self {
            data,
            pos: 0,
            max_chunk: max_chunk.max(1),
            done: false,
        }
    }

    /// The next part, `None` once the last part was returned. An empty text yields one empty
    /// last part.
    pub fn next_chunk(&mut self) -> Option<TextChunk> {
        if self.done {
            return None;
        }
        let rest = &self.data[self.pos..];
        let len = chunk_len(rest, self.max_chunk);
        let data = rest[..len].to_vec();
        self.pos += len;
        self.done = self.pos >= self.data.len();
        Some(TextChunk {
            data,
            last: self.done,
        })
    }

    /// True once the last part was returned.
    pub fn is_finished(&self) -> bool {
        self.done
    }
}

/// Length of the next part: everything if it fits, else up to the last NUL that fits, else
/// `max` bytes.
fn chunk_len(rest: &[u8], max: usize) -> usize {
    if rest.len() <= max {
        return rest.len();
    }
    rest[..max]
        .iter()
        .rposition(|&b| b == 0)
        .map_or(max, |i| i + 1)
}

/// The fields of a Text Request PDU the exchange needs (RFC 7143 §11.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextRequest {
    /// F bit: the initiator has no more keys to negotiate in this exchange.
    pub final_bit: bool,
    /// C bit: the request text continues in the next Text Request.
    pub cont: bool,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag: [`RESERVED_TAG`] to start a new exchange, else the tag of the
    /// response being continued.
    pub ttt: u32,
    /// The data segment, without padding or digest.
    pub data: Vec<u8>,
}

/// The fields of a Text Response PDU the exchange decides (RFC 7143 §11.11); the runtime adds
/// StatSN, ExpCmdSN and MaxCmdSN.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextResponse {
    /// F bit: the exchange is over.
    pub final_bit: bool,
    /// C bit: the response text continues.
    pub cont: bool,
    /// Initiator Task Tag, echoed.
    pub itt: u32,
    /// Target Transfer Tag: [`RESERVED_TAG`] when the exchange is over, else the tag the
    /// initiator must send back to continue it.
    pub ttt: u32,
    /// The data segment.
    pub data: Vec<u8>,
}

/// A Text Response and the parameters it puts in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextStep {
    /// The response to send.
    pub response: TextResponse,
    /// New session parameters, to apply once this (final) response has been sent; `None`
    /// when nothing changed or the exchange is still open.
    pub params: Option<SessionParams>,
}

/// A Text Request the target answers with a Reject PDU (the exchange is reset).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextExchangeError {
    /// F and C both set (RFC 7143 §11.10.2).
    #[error("F and C bits both set")]
    FinalWithContinue,
    /// A Target Transfer Tag that belongs to no exchange in progress.
    #[error("TTT {ttt:#010x} with ITT {itt:#010x} continues no exchange")]
    UnknownTransferTag {
        /// ITT of the request.
        itt: u32,
        /// TTT of the request.
        ttt: u32,
    },
    /// A request continuing a long response carried data.
    #[error("request continuing a long text response carried data")]
    UnexpectedData,
    /// SendTargets shared its request with other keys (Appendix C: exactly one key).
    #[error("SendTargets must be the only key of its request")]
    SendTargetsNotAlone,
    /// The request text could not be parsed.
    #[error("bad text: {0}")]
    Text(#[from] TextError),
    /// The negotiation broke a protocol rule.
    #[error(transparent)]
    Negotiation(#[from] NegotiationError),
}

impl TextExchangeError {
    /// The Reject PDU reason code for this error (RFC 7143 §11.17.1).
    pub fn reject_reason(&self) -> u8 {
        match self {
            Self::UnknownTransferTag { .. } => REJECT_INVALID_PDU_FIELD,
            _ => REJECT_PROTOCOL_ERROR,
        }
    }
}

/// An exchange in progress.
#[derive(Debug)]
struct Exchange {
    itt: u32,
    ttt: u32,
    text: TextAccumulator,
    sending: Option<TextResponder>,
    final_requested: bool,
    working: SessionParams,
    seen: HashSet<String>,
}

/// The Text Request state machine of one full-feature connection.
#[derive(Debug)]
pub struct TextExchange {
    current: Option<Exchange>,
    next_ttt: u32,
}

impl Default for TextExchange {
    fn default() -> Self {
        Self::new()
    }
}

impl TextExchange {
    /// No exchange in progress.
    pub fn new() -> Self {
        Self {
            current: None,
            next_ttt: 1,
        }
    }

    /// True while an exchange awaits a continuation Text Request.
    pub fn in_progress(&self) -> bool {
        self.current.is_some()
    }

    /// Handles one Text Request on a connection whose parameters are `session`. On error the
    /// runtime sends a Reject PDU with [`TextExchangeError::reject_reason`]; the exchange is
    /// reset.
    pub fn handle(
        &mut self,
        req: &TextRequest,
        session: &SessionParams,
        limits: &TargetLimits,
        directory: &dyn TargetDirectory,
    ) -> Result<TextStep, TextExchangeError> {
        let result = self.try_handle(req, session, limits, directory);
        if result.is_err() {
            self.current = None;
        }
        result
    }

    fn try_handle(
        &mut self,
        req: &TextRequest,
        session: &SessionParams,
        limits: &TargetLimits,
        directory: &dyn TargetDirectory,
    ) -> Result<TextStep, TextExchangeError> {
        if req.final_bit && req.cont {
            return Err(TextExchangeError::FinalWithContinue);
        }
        let mut exchange = self.take_exchange(req, session, limits)?;
        if exchange.sending.is_some() {
            if !req.data.is_empty() {
                return Err(TextExchangeError::UnexpectedData);
            }
            return Ok(self.send_part(exchange, session));
        }
        let Some(pairs) = exchange.text.feed(&req.data, req.cont)? else {
            return Ok(self.acknowledge_part(exchange));
        };
        let answers = answer(&pairs, &mut exchange, limits, directory)?;
        let max = usize::try_from(session.max_xmit_data_segment_length).unwrap_or(usize::MAX);
        exchange.sending = Some(TextResponder::new(encode_text(&answers), max));
        exchange.final_requested = req.final_bit;
        Ok(self.send_part(exchange, session))
    }

    /// A new exchange for TTT=0xffffffff (resetting any in progress, RFC 7143 §11.10.4), else the
    /// exchange the ITT and TTT continue.
    fn take_exchange(
        &mut self,
        req: &TextRequest,
        session: &SessionParams,
        limits: &TargetLimits,
    ) -> Result<Exchange, TextExchangeError> {
        if req.ttt == RESERVED_TAG {
            self.current = None;
            return Ok(Exchange {
                itt: req.itt,
                ttt: RESERVED_TAG,
                text: TextAccumulator::new(limits.max_text_length),
                sending: None,
                final_requested: false,
                working: session.clone(),
                seen: HashSet::new(),
            });
        }
        match self.current.take() {
            Some(ex) if ex.itt == req.itt && ex.ttt == req.ttt => Ok(ex),
            _ => Err(TextExchangeError::UnknownTransferTag {
                itt: req.itt,
                ttt: req.ttt,
            }),
        }
    }

    /// Acknowledges a request part sent with C=1: an empty response, F=0, with a fresh TTT.
    fn acknowledge_part(&mut self, mut exchange: Exchange) -> TextStep {
        exchange.ttt = self.fresh_ttt();
        let response = TextResponse {
            final_bit: false,
            cont: false,
            itt: exchange.itt,
            ttt: exchange.ttt,
            data: Vec::new(),
        };
        self.current = Some(exchange);
        TextStep {
            response,
            params: None,
        }
    }

    /// Sends the next part of the exchange's answer.
    fn send_part(&mut self, mut exchange: Exchange, session: &SessionParams) -> TextStep {
        let chunk = exchange
            .sending
            .as_mut()
            .and_then(TextResponder::next_chunk)
            .unwrap_or_default();
        let mut response = TextResponse {
            final_bit: false,
            cont: !chunk.last,
            itt: exchange.itt,
            ttt: RESERVED_TAG,
            data: chunk.data,
        };
        if chunk.last && exchange.final_requested {
            response.final_bit = true;
            let params = (exchange.working != *session).then_some(exchange.working);
            return TextStep { response, params };
        }
        if chunk.last {
            // The initiator asked to go on negotiating (F=0): keep the exchange open.
            exchange.sending = None;
        }
        exchange.ttt = self.fresh_ttt();
        response.ttt = exchange.ttt;
        self.current = Some(exchange);
        TextStep {
            response,
            params: None,
        }
    }

    /// A Target Transfer Tag never equal to [`RESERVED_TAG`].
    fn fresh_ttt(&mut self) -> u32 {
        let ttt = self.next_ttt;
        self.next_ttt = match self.next_ttt.wrapping_add(1) {
            RESERVED_TAG => 0,
            next => next,
        };
        ttt
    }
}

/// Answers one complete request text: SendTargets, or a renegotiation round.
fn answer(
    pairs: &[(String, String)],
    exchange: &mut Exchange,
    limits: &TargetLimits,
    directory: &dyn TargetDirectory,
) -> Result<Vec<(String, String)>, TextExchangeError> {
    if let Some((_, value)) = pairs.iter().find(|(k, _)| k == "SendTargets") {
        if pairs.len() != 1 {
            return Err(TextExchangeError::SendTargetsNotAlone);
        }
        return Ok(send_targets(value, &exchange.working, directory));
    }
    if let Some((key, _)) = pairs.iter().find(|(k, _)| exchange.seen.contains(k)) {
        return Err(NegotiationError::RepeatedKey(key.clone()).into());
    }
    let answers = negotiate_full_feature(pairs, &mut exchange.working, limits)?;
    exchange.seen.extend(pairs.iter().map(|(k, _)| k.clone()));
    Ok(answers)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::iscsi::text::parse_text;

    /// A directory with fixed targets, shared with the login tests.
    pub(crate) struct FakeDirectory {
        pub targets: Vec<(String, Option<String>, Vec<String>)>,
        pub tpgt: u16,
        /// (initiator, target) pairs an access list keeps apart.
        pub denied: Vec<(String, String)>,
    }

    impl FakeDirectory {
        pub(crate) fn two_targets() -> Self {
            Self {
                targets: vec![
                    (
                        "iqn.2024-01.io.shoal:disk1".into(),
                        Some("disk one".into()),
                        vec!["10.0.0.1:3260,1".into(), "[fd00::1]:3260,1".into()],
                    ),
                    (
                        "iqn.2024-01.io.shoal:disk2".into(),
                        None,
                        vec!["10.0.0.1:3260,1".into()],
                    ),
                ],
                tpgt: 1,
                denied: Vec::new(),
            }
        }
    }

    impl TargetDirectory for FakeDirectory {
        fn target_exists(&self, name: &str) -> bool {
            self.targets.iter().any(|(n, _, _)| n == name)
        }
        fn target_alias(&self, name: &str) -> Option<String> {
            self.targets
                .iter()
                .find(|(n, _, _)| n == name)
                .and_then(|(_, a, _)| a.clone())
        }
        fn portal_group_tag(&self) -> u16 {
            self.tpgt
        }
        fn may_access(&self, initiator: &str, target: &str) -> bool {
            !self
                .denied
                .iter()
                .any(|(i, t)| i == initiator && t == target)
        }
        fn send_targets(&self, scope: SendTargetsScope<'_>) -> Vec<TargetRecord> {
            self.targets
                .iter()
                .filter(|(n, _, _)| match scope {
                    SendTargetsScope::All => true,
                    SendTargetsScope::Named(want) | SendTargetsScope::Session(want) => n == want,
                })
                .map(|(n, _, a)| TargetRecord {
                    name: n.clone(),
                    addresses: a.clone(),
                })
                .collect()
        }
    }

    /// A directory that wrongly returns every target for any scope.
    struct LeakyDirectory(FakeDirectory);

    impl TargetDirectory for LeakyDirectory {
        fn target_exists(&self, name: &str) -> bool {
            self.0.target_exists(name)
        }
        fn target_alias(&self, name: &str) -> Option<String> {
            self.0.target_alias(name)
        }
        fn portal_group_tag(&self) -> u16 {
            1
        }
        fn send_targets(&self, _scope: SendTargetsScope<'_>) -> Vec<TargetRecord> {
            self.0.send_targets(SendTargetsScope::All)
        }
    }

    fn discovery_session() -> SessionParams {
        SessionParams {
            session_type: SessionType::Discovery,
            initiator_name: "iqn.1994-05.com.redhat:client".into(),
            ..SessionParams::default()
        }
    }

    fn normal_session() -> SessionParams {
        SessionParams {
            target_name: Some("iqn.2024-01.io.shoal:disk1".into()),
            initiator_name: "iqn.1994-05.com.redhat:client".into(),
            ..SessionParams::default()
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| pair(k, *v)).collect()
    }

    fn request(data: &[u8]) -> TextRequest {
        TextRequest {
            final_bit: true,
            cont: false,
            itt: 7,
            ttt: RESERVED_TAG,
            data: data.to_vec(),
        }
    }

    #[test]
    fn send_targets_all_in_discovery_lists_every_target_with_addresses() {
        let got = send_targets("All", &discovery_session(), &FakeDirectory::two_targets());
        assert_eq!(
            got,
            pairs(&[
                ("TargetName", "iqn.2024-01.io.shoal:disk1"),
                ("TargetAddress", "10.0.0.1:3260,1"),
                ("TargetAddress", "[fd00::1]:3260,1"),
                ("TargetName", "iqn.2024-01.io.shoal:disk2"),
                ("TargetAddress", "10.0.0.1:3260,1"),
            ])
        );
    }

    #[test]
    fn send_targets_hides_targets_the_initiator_may_not_access() {
        let session = discovery_session();
        let dir = FakeDirectory {
            denied: vec![(
                session.initiator_name.clone(),
                "iqn.2024-01.io.shoal:disk1".into(),
            )],
            ..FakeDirectory::two_targets()
        };
        let got = send_targets("All", &session, &dir);
        assert_eq!(
            got,
            pairs(&[
                ("TargetName", "iqn.2024-01.io.shoal:disk2"),
                ("TargetAddress", "10.0.0.1:3260,1"),
            ])
        );
        assert!(send_targets("iqn.2024-01.io.shoal:disk1", &session, &dir).is_empty());
    }

    #[test]
    fn send_targets_named_in_discovery_lists_only_that_target() {
        let dir = FakeDirectory::two_targets();
        let got = send_targets("iqn.2024-01.io.shoal:disk2", &discovery_session(), &dir);
        assert_eq!(
            got,
            pairs(&[
                ("TargetName", "iqn.2024-01.io.shoal:disk2"),
                ("TargetAddress", "10.0.0.1:3260,1"),
            ])
        );
        assert!(send_targets("iqn.2024-01.io.shoal:nope", &discovery_session(), &dir).is_empty());
    }

    #[test]
    fn send_targets_empty_value_in_discovery_lists_nothing() {
        assert!(send_targets("", &discovery_session(), &FakeDirectory::two_targets()).is_empty());
    }

    #[test]
    fn send_targets_invalid_values_are_rejected() {
        let dir = FakeDirectory::two_targets();
        for value in ["Alle", "A", "all", "iqn."] {
            assert_eq!(
                send_targets(value, &discovery_session(), &dir),
                pairs(&[("SendTargets", "Reject")]),
                "{value}"
            );
            assert_eq!(
                send_targets(value, &normal_session(), &dir),
                pairs(&[("SendTargets", "Reject")]),
                "{value}"
            );
        }
    }

    #[test]
    fn send_targets_in_normal_session_lists_only_own_target() {
        let dir = FakeDirectory::two_targets();
        let own = pairs(&[
            ("TargetName", "iqn.2024-01.io.shoal:disk1"),
            ("TargetAddress", "10.0.0.1:3260,1"),
            ("TargetAddress", "[fd00::1]:3260,1"),
        ]);
        assert_eq!(send_targets("", &normal_session(), &dir), own);
        assert_eq!(send_targets("All", &normal_session(), &dir), own);
        assert_eq!(
            send_targets("iqn.2024-01.io.shoal:disk1", &normal_session(), &dir),
            own
        );
        assert!(send_targets("iqn.2024-01.io.shoal:disk2", &normal_session(), &dir).is_empty());
    }

    #[test]
    fn send_targets_filters_a_directory_that_returns_too_much() {
        let dir = LeakyDirectory(FakeDirectory::two_targets());
        let got = send_targets("", &normal_session(), &dir);
        assert!(
            got.iter()
                .all(|(k, v)| k != "TargetName" || v == "iqn.2024-01.io.shoal:disk1")
        );
    }

    #[test]
    fn responder_cuts_after_nul_and_marks_last() {
        let data = encode_text(&pairs(&[("A", "111"), ("B", "222"), ("C", "333")]));
        let mut r = TextResponder::new(data.clone(), 12);
        let a = r.next_chunk().unwrap();
        assert_eq!((a.data.as_slice(), a.last), (&b"A=111\0B=222\0"[..], false));
        let b = r.next_chunk().unwrap();
        assert_eq!((b.data.as_slice(), b.last), (&b"C=333\0"[..], true));
        assert!(r.is_finished());
        assert_eq!(r.next_chunk(), None);
    }

    #[test]
    fn responder_splits_an_entry_longer_than_a_part() {
        let data = encode_text(&pairs(&[("K", &"v".repeat(20))]));
        let mut r = TextResponder::new(data.clone(), 8);
        let mut joined = Vec::new();
        while let Some(chunk) = r.next_chunk() {
            assert!(chunk.data.len() <= 8);
            joined.extend(chunk.data);
        }
        assert_eq!(joined, data);
    }

    #[test]
    fn responder_empty_text_yields_one_empty_last_part() {
        let mut r = TextResponder::new(Vec::new(), 8192);
        assert_eq!(r.next_chunk(), Some(TextChunk::default()));
        assert_eq!(r.next_chunk(), None);
    }

    #[test]
    fn exchange_send_targets_all_single_response() {
        let mut ex = TextExchange::new();
        let step = ex
            .handle(
                &request(b"SendTargets=All\0"),
                &discovery_session(),
                &TargetLimits::default(),
                &FakeDirectory::two_targets(),
            )
            .unwrap();
        let r = step.response;
        assert!(r.final_bit && !r.cont);
        assert_eq!((r.itt, r.ttt), (7, RESERVED_TAG));
        assert_eq!(parse_text(&r.data).unwrap().len(), 5);
        assert_eq!(step.params, None);
        assert!(!ex.in_progress());
    }

    #[test]
    fn exchange_long_send_targets_is_chunked_with_ttt() {
        let dir = FakeDirectory {
            targets: (0..200)
                .map(|i| {
                    (
                        format!("iqn.2024-01.io.shoal:disk{i:04}"),
                        None,
                        vec!["192.168.100.100:3260,1".into()],
                    )
                })
                .collect(),
            tpgt: 1,
            denied: Vec::new(),
        };
        let session = SessionParams {
            max_xmit_data_segment_length: 512,
            ..discovery_session()
        };
        let limits = TargetLimits::default();
        let mut ex = TextExchange::new();
        let mut step = ex
            .handle(&request(b"SendTargets=All\0"), &session, &limits, &dir)
            .unwrap();
        let mut joined = Vec::new();
        let mut parts = 0;
        while step.response.cont {
            let r = &step.response;
            assert!(!r.final_bit && r.ttt != RESERVED_TAG && r.data.len() <= 512);
            joined.extend_from_slice(&r.data);
            parts += 1;
            let next = TextRequest {
                final_bit: true,
                cont: false,
                itt: 7,
                ttt: r.ttt,
                data: Vec::new(),
            };
            step = ex.handle(&next, &session, &limits, &dir).unwrap();
        }
        assert!(step.response.final_bit && step.response.ttt == RESERVED_TAG);
        joined.extend_from_slice(&step.response.data);
        assert!(parts > 10);
        assert_eq!(parse_text(&joined).unwrap().len(), 400);
        assert!(!ex.in_progress());
    }

    #[test]
    fn exchange_continuation_with_wrong_ttt_is_rejected() {
        let mut ex = TextExchange::new();
        let err = ex
            .handle(
                &TextRequest {
                    ttt: 42,
                    ..request(b"")
                },
                &discovery_session(),
                &TargetLimits::default(),
                &FakeDirectory::two_targets(),
            )
            .unwrap_err();
        assert_eq!(
            err,
            TextExchangeError::UnknownTransferTag { itt: 7, ttt: 42 }
        );
        assert_eq!(err.reject_reason(), REJECT_INVALID_PDU_FIELD);
    }

    #[test]
    fn exchange_new_request_resets_one_in_progress() {
        let dir = FakeDirectory::two_targets();
        let session = SessionParams {
            max_xmit_data_segment_length: 16,
            ..discovery_session()
        };
        let limits = TargetLimits::default();
        let mut ex = TextExchange::new();
        let first = ex
            .handle(&request(b"SendTargets=All\0"), &session, &limits, &dir)
            .unwrap();
        assert!(first.response.cont && ex.in_progress());
        let again = ex
            .handle(
                &TextRequest {
                    itt: 8,
                    ..request(b"MaxRecvDataSegmentLength=8192\0")
                },
                &session,
                &limits,
                &dir,
            )
            .unwrap();
        assert!(again.response.final_bit);
        assert_eq!(again.response.itt, 8);
        assert!(!ex.in_progress());
        let stale = TextRequest {
            ttt: first.response.ttt,
            ..request(b"")
        };
        assert!(ex.handle(&stale, &session, &limits, &dir).is_err());
    }

    #[test]
    fn exchange_request_split_with_c_bit_is_acknowledged_then_answered() {
        let dir = FakeDirectory::two_targets();
        let limits = TargetLimits::default();
        let session = discovery_session();
        let mut ex = TextExchange::new();
        let part = TextRequest {
            final_bit: false,
            cont: true,
            ..request(b"SendTarg")
        };
        let ack = ex.handle(&part, &session, &limits, &dir).unwrap();
        assert!(!ack.response.final_bit && !ack.response.cont && ack.response.data.is_empty());
        assert_ne!(ack.response.ttt, RESERVED_TAG);
        let last = TextRequest {
            ttt: ack.response.ttt,
            ..request(b"ets=iqn.2024-01.io.shoal:disk2\0")
        };
        let step = ex.handle(&last, &session, &limits, &dir).unwrap();
        assert!(step.response.final_bit);
        assert_eq!(
            parse_text(&step.response.data).unwrap()[0].1,
            "iqn.2024-01.io.shoal:disk2"
        );
    }

    #[test]
    fn exchange_final_and_continue_together_is_protocol_error() {
        let mut ex = TextExchange::new();
        let err = ex
            .handle(
                &TextRequest {
                    cont: true,
                    ..request(b"A=1")
                },
                &discovery_session(),
                &TargetLimits::default(),
                &FakeDirectory::two_targets(),
            )
            .unwrap_err();
        assert_eq!(err, TextExchangeError::FinalWithContinue);
        assert_eq!(err.reject_reason(), REJECT_PROTOCOL_ERROR);
    }

    #[test]
    fn exchange_renegotiates_max_recv_data_segment_length() {
        let mut ex = TextExchange::new();
        let session = normal_session();
        let step = ex
            .handle(
                &request(b"MaxRecvDataSegmentLength=65536\0MaxBurstLength=4096\0"),
                &session,
                &TargetLimits::default(),
                &FakeDirectory::two_targets(),
            )
            .unwrap();
        assert_eq!(
            parse_text(&step.response.data).unwrap(),
            pairs(&[("MaxBurstLength", "Reject")])
        );
        let params = step.params.unwrap();
        assert_eq!(params.max_xmit_data_segment_length, 65536);
        assert_eq!(params.max_burst_length, session.max_burst_length);
    }

    #[test]
    fn exchange_multi_round_negotiation_keeps_ttt_until_final() {
        let dir = FakeDirectory::two_targets();
        let limits = TargetLimits::default();
        let session = normal_session();
        let mut ex = TextExchange::new();
        let round1 = TextRequest {
            final_bit: false,
            ..request(b"MaxRecvDataSegmentLength=16384\0")
        };
        let r1 = ex.handle(&round1, &session, &limits, &dir).unwrap();
        assert!(!r1.response.final_bit && r1.response.ttt != RESERVED_TAG && r1.params.is_none());
        let round2 = TextRequest {
            ttt: r1.response.ttt,
            ..request(b"X-com.example.Foo=1\0")
        };
        let r2 = ex.handle(&round2, &session, &limits, &dir).unwrap();
        assert!(r2.response.final_bit);
        assert_eq!(
            parse_text(&r2.response.data).unwrap(),
            pairs(&[("X-com.example.Foo", "NotUnderstood")])
        );
        assert_eq!(r2.params.unwrap().max_xmit_data_segment_length, 16384);
    }

    #[test]
    fn exchange_key_repeated_across_rounds_is_error() {
        let dir = FakeDirectory::two_targets();
        let limits = TargetLimits::default();
        let session = normal_session();
        let mut ex = TextExchange::new();
        let round1 = TextRequest {
            final_bit: false,
            ..request(b"MaxRecvDataSegmentLength=16384\0")
        };
        let r1 = ex.handle(&round1, &session, &limits, &dir).unwrap();
        let round2 = TextRequest {
            ttt: r1.response.ttt,
            ..request(b"MaxRecvDataSegmentLength=4096\0")
        };
        let err = ex.handle(&round2, &session, &limits, &dir).unwrap_err();
        assert!(matches!(
            err,
            TextExchangeError::Negotiation(NegotiationError::RepeatedKey(_))
        ));
        assert!(!ex.in_progress());
    }

    #[test]
    fn exchange_send_targets_with_other_keys_is_error() {
        let mut ex = TextExchange::new();
        let err = ex
            .handle(
                &request(b"SendTargets=All\0MaxRecvDataSegmentLength=8192\0"),
                &discovery_session(),
                &TargetLimits::default(),
                &FakeDirectory::two_targets(),
            )
            .unwrap_err();
        assert_eq!(err, TextExchangeError::SendTargetsNotAlone);
    }

    /// libiscsi test_iscsi_sendtargets_invalid: every malformed request must make libiscsi
    /// report failure (it fails on any key other than TargetName / TargetAddress), the valid one
    /// must succeed — on a normal session.
    #[test]
    fn exchange_libiscsi_sendtargets_invalid_cases() {
        let dir = FakeDirectory::two_targets();
        let limits = TargetLimits::default();
        let session = normal_session();
        let mut ex = TextExchange::new();
        for bad in [
            "SendTargetsPlease=All",
            "SendTargets=Alle",
            "SendTargets=A",
            "sENDtARGETS=aLL",
        ] {
            let data = format!("{bad}\0");
            let step = ex
                .handle(&request(data.as_bytes()), &session, &limits, &dir)
                .unwrap();
            assert!(step.response.final_bit);
            let got = parse_text(&step.response.data).unwrap();
            assert!(
                got.iter()
                    .any(|(k, _)| k != "TargetName" && k != "TargetAddress"),
                "{bad}: {got:?}"
            );
        }
        let step = ex
            .handle(&request(b"SendTargets=All\0"), &session, &limits, &dir)
            .unwrap();
        let got = parse_text(&step.response.data).unwrap();
        assert_eq!(got[0], pair("TargetName", "iqn.2024-01.io.shoal:disk1"));
        assert!(
            got.iter()
                .all(|(k, _)| k == "TargetName" || k == "TargetAddress")
        );
    }

    #[test]
    fn exchange_bad_text_is_protocol_error() {
        let mut ex = TextExchange::new();
        let err = ex
            .handle(
                &request(b"garbage\0"),
                &discovery_session(),
                &TargetLimits::default(),
                &FakeDirectory::two_targets(),
            )
            .unwrap_err();
        assert!(matches!(err, TextExchangeError::Text(_)));
        assert_eq!(err.reject_reason(), REJECT_PROTOCOL_ERROR);
    }

    #[test]
    fn fresh_ttt_never_returns_reserved_tag() {
        let mut ex = TextExchange {
            current: None,
            next_ttt: RESERVED_TAG - 1,
        };
        assert_eq!(ex.fresh_ttt(), RESERVED_TAG - 1);
        assert_eq!(ex.fresh_ttt(), 0);
    }
}
