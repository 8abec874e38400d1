//! Whole login conversations, modelled on what Linux open-iscsi (usr/login.c) and libiscsi
//! (lib/login.c) send, and every failure status the machine produces.

use super::*;
use crate::iscsi::discovery::tests::FakeDirectory;
use crate::iscsi::text::parse_text;

const INITIATOR: &str = "iqn.2005-03.org.open-iscsi:client";
const TARGET: &str = "iqn.2024-01.io.shoal:disk1";
const ISID: [u8; 6] = [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01];

/// Keys open-iscsi accepts in a security-stage response; anything else fails its login.
const OPEN_ISCSI_SECURITY_KEYS: &[&str] = &[
    "AuthMethod",
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
];

/// Keys open-iscsi accepts in an operational-stage response; anything else fails its login.
const OPEN_ISCSI_OPERATIONAL_KEYS: &[&str] = &[
    "TargetAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "FirstBurstLength",
    "MaxBurstLength",
    "HeaderDigest",
    "DataDigest",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "OFMarker",
    "OFMarkInt",
    "IFMarker",
    "IFMarkInt",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "MaxOutstandingR2T",
    "MaxConnections",
    "ErrorRecoveryLevel",
];

fn text(list: &[(&str, &str)]) -> Vec<u8> {
    encode_text(&list.iter().map(|(k, v)| pair(k, *v)).collect::<Vec<_>>())
}

fn req(csg: u8, transit: bool, nsg: u8, data: Vec<u8>) -> LoginRequest {
    LoginRequest {
        transit,
        cont: false,
        csg,
        nsg,
        isid: ISID,
        itt: 0x1234,
        cmd_sn: 1,
        data,
        ..LoginRequest::default()
    }
}

struct FixedSessions(SessionJoin);

impl SessionLookup for FixedSessions {
    fn join_session(&self, _isid: [u8; 6], _tsih: u16, _cid: u16) -> SessionJoin {
        self.0.clone()
    }
}

struct Harness {
    machine: LoginMachine,
    dir: FakeDirectory,
    sessions: Box<dyn SessionLookup>,
}

impl Harness {
    fn new() -> Self {
        Self::with_limits(TargetLimits::default())
    }

    fn with_limits(limits: TargetLimits) -> Self {
        Self {
            machine: LoginMachine::new(limits, AuthPolicy::None),
            dir: FakeDirectory::two_targets(),
            sessions: Box::new(NoSessions),
        }
    }

    fn with_sessions(join: SessionJoin) -> Self {
        Self {
            sessions: Box::new(FixedSessions(join)),
            ..Self::new()
        }
    }

    fn step(&mut self, req: &LoginRequest) -> LoginStep {
        self.machine.step(req, &self.dir, self.sessions.as_ref())
    }
}

fn answers(step: &LoginStep) -> Vec<(String, String)> {
    parse_text(&step.response.data).unwrap()
}

fn get<'a>(answers: &'a [(String, String)], key: &str) -> Option<&'a str> {
    answers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn assert_keys_within(answers: &[(String, String)], allowed: &[&str]) {
    for (key, _) in answers {
        assert!(
            allowed.contains(&key.as_str()),
            "unexpected key {key} in {answers:?}"
        );
    }
}

fn assert_ok_continue(step: &LoginStep) {
    assert_eq!(
        step.response.status(),
        LoginStatus::SUCCESS,
        "{:?}",
        step.outcome
    );
    assert_eq!(step.outcome, LoginOutcome::Continue);
}

fn complete(step: &LoginStep) -> &SessionParams {
    assert_eq!(
        step.response.status(),
        LoginStatus::SUCCESS,
        "{:?}",
        step.outcome
    );
    match &step.outcome {
        LoginOutcome::Complete(params) => params,
        other => panic!("expected completion, got {other:?}"),
    }
}

fn assert_failed(step: &LoginStep, status: LoginStatus) {
    assert_eq!(step.response.status(), status, "{:?}", step.outcome);
    assert!(matches!(step.outcome, LoginOutcome::Failed(_)));
    assert!(!step.response.transit && !step.response.cont);
    assert!(step.response.data.is_empty());
    assert_eq!(step.response.itt, 0x1234);
    assert_eq!(step.response.isid, ISID);
}

fn normal_security_text(auth: &str) -> Vec<u8> {
    text(&[
        ("InitiatorName", INITIATOR),
        ("InitiatorAlias", "client"),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("AuthMethod", auth),
    ])
}

fn open_iscsi_operational_text() -> Vec<u8> {
    text(&[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "16776192"),
        ("FirstBurstLength", "262144"),
        ("MaxOutstandingR2T", "1"),
        ("MaxConnections", "1"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
        ("MaxRecvDataSegmentLength", "262144"),
    ])
}

/// libiscsi's operational keys (lib/login.c, default settings), after the identity keys.
fn libiscsi_operational_pairs() -> Vec<(&'static str, &'static str)> {
    vec![
        ("HeaderDigest", "None,CRC32C"),
        ("DataDigest", "None"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("MaxBurstLength", "262144"),
        ("FirstBurstLength", "262144"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("MaxOutstandingR2T", "1"),
        ("ErrorRecoveryLevel", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("MaxConnections", "1"),
        ("MaxRecvDataSegmentLength", "262144"),
        ("DataPDUInOrder", "Yes"),
        ("DataSequenceInOrder", "Yes"),
    ]
}

fn libiscsi_single_pdu(session_type: &str) -> Vec<u8> {
    let mut list = vec![("InitiatorName", INITIATOR), ("InitiatorAlias", "client")];
    if session_type == "Normal" {
        list.push(("TargetName", TARGET));
    }
    list.push(("SessionType", session_type));
    list.extend(libiscsi_operational_pairs());
    text(&list)
}

// ---------------------------------------------------------------- conversations

#[test]
fn open_iscsi_normal_login_security_then_operational_then_ffp() {
    let mut h = Harness::new();
    let s1 = h.step(&req(0, true, 1, normal_security_text("None")));
    assert_ok_continue(&s1);
    let r = &s1.response;
    assert!(r.transit && !r.cont);
    assert_eq!((r.csg, r.nsg), (0, 1));
    assert_eq!((r.version_max, r.version_active), (0, 0));
    let a1 = answers(&s1);
    assert_keys_within(&a1, OPEN_ISCSI_SECURITY_KEYS);
    assert_eq!(get(&a1, "AuthMethod"), Some("None"));
    assert_eq!(get(&a1, "TargetPortalGroupTag"), Some("1"));
    assert_eq!(get(&a1, "TargetAlias"), Some("disk one"));
    assert_eq!(
        h.machine.stage(),
        Some(LoginStage::LoginOperationalNegotiation)
    );

    let s2 = h.step(&req(1, true, 3, open_iscsi_operational_text()));
    let a2 = answers(&s2);
    assert_keys_within(&a2, OPEN_ISCSI_OPERATIONAL_KEYS);
    assert!((s2.response.transit, s2.response.csg, s2.response.nsg) == (true, 1, 3));
    // open-iscsi fails the login unless these two come back as exactly "1".
    assert_eq!(get(&a2, "MaxOutstandingR2T"), Some("1"));
    assert_eq!(get(&a2, "MaxConnections"), Some("1"));
    assert_eq!(get(&a2, "MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(get(&a2, "MaxBurstLength"), Some("1048576"));
    assert_eq!(get(&a2, "InitialR2T"), Some("No"));
    assert_eq!(get(&a2, "IFMarker"), Some("No"));
    assert_eq!(get(&a2, "TargetPortalGroupTag"), None, "declared once only");
    let p = complete(&s2);
    assert_eq!(p.initiator_name, INITIATOR);
    assert_eq!(p.initiator_alias.as_deref(), Some("client"));
    assert_eq!(p.target_name.as_deref(), Some(TARGET));
    assert_eq!(p.session_type, SessionType::Normal);
    assert!(!p.header_digest && !p.data_digest);
    assert_eq!(p.max_recv_data_segment_length, 262_144);
    assert_eq!(p.max_xmit_data_segment_length, 262_144);
    assert_eq!(
        (p.max_burst_length, p.first_burst_length),
        (1_048_576, 262_144)
    );
    assert!(!p.initial_r2t && p.immediate_data);
    assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
    assert!(h.machine.is_finished());
}

#[test]
fn libiscsi_normal_login_operational_only_single_pdu() {
    let mut h = Harness::new();
    let s = h.step(&req(1, true, 3, libiscsi_single_pdu("Normal")));
    let a = answers(&s);
    assert_eq!(get(&a, "HeaderDigest"), Some("None"));
    assert_eq!(get(&a, "TargetPortalGroupTag"), Some("1"));
    assert_eq!(get(&a, "MaxRecvDataSegmentLength"), Some("262144"));
    assert_eq!(get(&a, "SessionType"), None, "declarations are not echoed");
    assert_eq!(get(&a, "InitiatorName"), None);
    let p = complete(&s);
    assert_eq!(p.first_burst_length, 262_144);
    assert_eq!(p.max_burst_length, 262_144);
    assert_eq!(h.machine.identity().map(|i| i.isid), Some(ISID));
}

#[test]
fn libiscsi_prefers_crc32c_when_listed_first() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("SessionType", "Normal"),
        ("HeaderDigest", "CRC32C,None"),
        ("DataDigest", "CRC32C"),
    ]);
    let s = h.step(&req(1, true, 3, data));
    assert_eq!(get(&answers(&s), "HeaderDigest"), Some("CRC32C"));
    let p = complete(&s);
    assert!(p.header_digest && p.data_digest);
}

/// libiscsi with CHAP credentials against a target that picks AuthMethod=None: its
/// operational PDU repeats InitiatorName, InitiatorAlias, TargetName and SessionType.
#[test]
fn libiscsi_chap_offer_answered_none_then_identity_repeated() {
    let mut h = Harness::new();
    let s1 = h.step(&req(0, true, 1, normal_security_text("CHAP,None")));
    assert_ok_continue(&s1);
    assert_eq!(get(&answers(&s1), "AuthMethod"), Some("None"));
    let s2 = h.step(&req(1, true, 3, libiscsi_single_pdu("Normal")));
    complete(&s2);
}

#[test]
fn open_iscsi_discovery_goes_from_security_straight_to_ffp() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("InitiatorAlias", "client"),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
    ]);
    let s = h.step(&req(0, true, 3, data));
    let a = answers(&s);
    assert_keys_within(&a, OPEN_ISCSI_SECURITY_KEYS);
    assert_eq!(
        get(&a, "TargetPortalGroupTag"),
        None,
        "discovery sessions get no TPGT"
    );
    assert_eq!((s.response.csg, s.response.nsg), (0, 3));
    let p = complete(&s);
    assert_eq!(p.session_type, SessionType::Discovery);
    assert_eq!(p.target_name, None);
    assert_eq!(
        p.max_recv_data_segment_length, 8192,
        "never declared: RFC default"
    );
}

#[test]
fn open_iscsi_discovery_with_operational_stage() {
    let mut h = Harness::new();
    let sec = text(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("AuthMethod", "None"),
    ]);
    assert_ok_continue(&h.step(&req(0, true, 1, sec)));
    let op = text(&[
        ("HeaderDigest", "None"),
        ("DataDigest", "None"),
        ("DefaultTime2Wait", "2"),
        ("DefaultTime2Retain", "0"),
        ("IFMarker", "No"),
        ("OFMarker", "No"),
        ("ErrorRecoveryLevel", "0"),
        ("MaxRecvDataSegmentLength", "32768"),
    ]);
    let s = h.step(&req(1, true, 3, op));
    let a = answers(&s);
    assert_keys_within(&a, OPEN_ISCSI_OPERATIONAL_KEYS);
    assert!(a.iter().all(|(_, v)| v != "Irrelevant"), "{a:?}");
    let p = complete(&s);
    assert_eq!(p.max_xmit_data_segment_length, 32768);
    assert_eq!(p.max_recv_data_segment_length, 262_144);
}

#[test]
fn libiscsi_discovery_gets_irrelevant_for_normal_only_keys() {
    let mut h = Harness::new();
    let s = h.step(&req(1, true, 3, libiscsi_single_pdu("Discovery")));
    let a = answers(&s);
    for key in [
        "InitialR2T",
        "ImmediateData",
        "MaxBurstLength",
        "FirstBurstLength",
        "MaxConnections",
    ] {
        assert_eq!(get(&a, key), Some("Irrelevant"), "{key}");
    }
    assert_eq!(get(&a, "ErrorRecoveryLevel"), Some("0"));
    let p = complete(&s);
    assert_eq!(p.session_type, SessionType::Discovery);
    assert_eq!(
        p.max_burst_length,
        SessionParams::default().max_burst_length
    );
}

#[test]
fn multi_pdu_request_with_continue_bit() {
    let mut h = Harness::new();
    let whole = libiscsi_single_pdu("Normal");
    let (a, rest) = whole.split_at(10); // splits inside "InitiatorName=..."
    let (b, c) = rest.split_at(rest.len() / 2);
    for part in [a, b] {
        let mut r = req(1, false, 0, part.to_vec());
        r.cont = true;
        let s = h.step(&r);
        assert_ok_continue(&s);
        assert!(s.response.data.is_empty() && !s.response.transit && !s.response.cont);
        assert_eq!(s.response.csg, 1);
    }
    let s = h.step(&req(1, true, 3, c.to_vec()));
    assert_eq!(get(&answers(&s), "TargetPortalGroupTag"), Some("1"));
    assert_eq!(complete(&s).initiator_name, INITIATOR);
}

#[test]
fn long_response_is_sent_in_parts_before_transit() {
    let mut h = Harness::new();
    let mut pairs = vec![pair("InitiatorName", INITIATOR), pair("TargetName", TARGET)];
    pairs.extend((0..1000).map(|i| pair(&format!("X-com.example.key{i:04}"), "1")));
    let mut step = h.step(&req(1, true, 3, encode_text(&pairs)));
    let mut joined = Vec::new();
    let mut parts = 0;
    while step.response.cont {
        assert_ok_continue(&step);
        assert!(!step.response.transit);
        assert!(step.response.data.len() <= LOGIN_MAX_DATA_SEGMENT_LENGTH);
        joined.extend_from_slice(&step.response.data);
        parts += 1;
        step = h.step(&req(1, true, 3, Vec::new()));
    }
    assert!(parts >= 4, "{parts} parts");
    assert!(step.response.transit);
    joined.extend_from_slice(&step.response.data);
    let all = parse_text(&joined).unwrap();
    assert_eq!(
        all.iter().filter(|(_, v)| v == "NotUnderstood").count(),
        1000
    );
    complete(&step);
}

#[test]
fn data_while_response_pending_fails() {
    let mut h = Harness::new();
    let mut pairs = vec![pair("InitiatorName", INITIATOR), pair("TargetName", TARGET)];
    pairs.extend((0..400).map(|i| pair(&format!("X-com.example.key{i:04}"), "1")));
    let s = h.step(&req(1, true, 3, encode_text(&pairs)));
    assert!(s.response.cont);
    let s = h.step(&req(1, true, 3, text(&[("X-more", "1")])));
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert_eq!(s.outcome, LoginOutcome::Failed(LoginError::UnexpectedData));
}

#[test]
fn target_waits_when_initiator_does_not_transit() {
    let mut h = Harness::new();
    let first = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxBurstLength", "65536"),
    ]);
    let s1 = h.step(&req(1, false, 0, first));
    assert_ok_continue(&s1);
    assert!(!s1.response.transit);
    assert_eq!(
        get(&answers(&s1), "MaxRecvDataSegmentLength"),
        Some("262144")
    );
    let s2 = h.step(&req(1, true, 3, text(&[("ImmediateData", "No")])));
    let a2 = answers(&s2);
    assert_eq!(get(&a2, "MaxRecvDataSegmentLength"), None, "declared once");
    assert_eq!(get(&a2, "TargetPortalGroupTag"), None);
    let p = complete(&s2);
    assert_eq!(p.max_burst_length, 65536);
    assert!(!p.immediate_data);
}

#[test]
fn security_stage_without_transit_then_transit() {
    let mut h = Harness::new();
    let s1 = h.step(&req(0, false, 0, normal_security_text("None")));
    assert_ok_continue(&s1);
    assert!(!s1.response.transit);
    let s2 = h.step(&req(0, true, 1, Vec::new()));
    assert_ok_continue(&s2);
    assert!(s2.response.transit && s2.response.data.is_empty());
    complete(&h.step(&req(1, true, 3, Vec::new())));
}

#[test]
fn first_burst_offer_above_max_burst_is_capped() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("FirstBurstLength", "131072"),
        ("MaxBurstLength", "65536"),
    ]);
    let s = h.step(&req(1, true, 3, data));
    assert_eq!(get(&answers(&s), "FirstBurstLength"), Some("65536"));
    assert_eq!(complete(&s).first_burst_length, 65536);
}

#[test]
fn connection_joining_existing_session() {
    let session = SessionParams {
        initiator_name: INITIATOR.into(),
        target_name: Some(TARGET.into()),
        max_burst_length: 65536,
        header_digest: true,
        ..SessionParams::default()
    };
    let mut h = Harness::with_sessions(SessionJoin::Join(Box::new(session)));
    let mut r = req(
        1,
        true,
        3,
        text(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("MaxBurstLength", "4096"),
            ("DataDigest", "CRC32C"),
        ]),
    );
    r.tsih = 7;
    r.cid = 1;
    let s = h.step(&r);
    assert_eq!(s.response.tsih, 7);
    let a = answers(&s);
    assert_eq!(get(&a, "MaxBurstLength"), Some("Irrelevant"));
    let p = complete(&s);
    assert_eq!(p.max_burst_length, 65536, "session-wide value kept");
    assert!(!p.header_digest, "connection scope starts from defaults");
    assert!(p.data_digest);
}

// ---------------------------------------------------------------- failures

#[test]
fn unsupported_version_fails_0205() {
    let mut h = Harness::new();
    let mut r = req(1, true, 3, libiscsi_single_pdu("Normal"));
    r.version_min = 1;
    r.version_max = 2;
    assert_failed(&h.step(&r), LoginStatus::UNSUPPORTED_VERSION);
}

#[test]
fn missing_initiator_name_fails_0207() {
    let mut h = Harness::new();
    let s = h.step(&req(
        0,
        true,
        1,
        text(&[("TargetName", TARGET), ("AuthMethod", "None")]),
    ));
    assert_failed(&s, LoginStatus::MISSING_PARAMETER);
}

#[test]
fn missing_target_name_in_normal_session_fails_0207() {
    let mut h = Harness::new();
    let s = h.step(&req(
        0,
        true,
        1,
        text(&[("InitiatorName", INITIATOR), ("SessionType", "Normal")]),
    ));
    assert_failed(&s, LoginStatus::MISSING_PARAMETER);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::MissingTargetName)
    );
}

#[test]
fn target_name_missing_from_first_pdu_fails_even_if_sent_later() {
    let mut h = Harness::new();
    let s = h.step(&req(0, true, 1, text(&[("InitiatorName", INITIATOR)])));
    assert_failed(&s, LoginStatus::MISSING_PARAMETER);
}

#[test]
fn unknown_target_fails_0203() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2024-01.io.shoal:nope"),
    ]);
    assert_failed(&h.step(&req(1, true, 3, data)), LoginStatus::NOT_FOUND);
}

#[test]
fn target_name_in_discovery_session_fails_0200() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("SessionType", "Discovery"),
        ("TargetName", TARGET),
    ]);
    let s = h.step(&req(0, true, 1, data));
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::TargetNameInDiscovery)
    );
}

#[test]
fn unknown_session_type_fails_0209() {
    let mut h = Harness::new();
    let data = text(&[("InitiatorName", INITIATOR), ("SessionType", "Bogus")]);
    assert_failed(
        &h.step(&req(0, true, 1, data)),
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
    );
}

#[test]
fn overlong_initiator_name_fails_0200() {
    let mut h = Harness::new();
    let name = format!("iqn.2024-01.io.example:{}", "x".repeat(220));
    let data = text(&[("InitiatorName", &name), ("TargetName", TARGET)]);
    assert_failed(
        &h.step(&req(1, true, 3, data)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn unknown_tsih_fails_020a() {
    let mut h = Harness::new();
    let mut r = req(1, true, 3, libiscsi_single_pdu("Normal"));
    r.tsih = 0x42;
    let s = h.step(&r);
    assert_failed(&s, LoginStatus::SESSION_DOES_NOT_EXIST);
    assert_eq!(s.response.tsih, 0x42);
}

#[test]
fn full_session_fails_0206() {
    let mut h = Harness::with_sessions(SessionJoin::TooManyConnections);
    let mut r = req(1, true, 3, libiscsi_single_pdu("Normal"));
    r.tsih = 0x42;
    assert_failed(&h.step(&r), LoginStatus::TOO_MANY_CONNECTIONS);
}

#[test]
fn joining_with_other_initiator_fails_0208() {
    let session = SessionParams {
        initiator_name: "iqn.2005-03.org.open-iscsi:other".into(),
        target_name: Some(TARGET.into()),
        ..SessionParams::default()
    };
    let mut h = Harness::with_sessions(SessionJoin::Join(Box::new(session)));
    let mut r = req(1, true, 3, libiscsi_single_pdu("Normal"));
    r.tsih = 0x42;
    assert_failed(&h.step(&r), LoginStatus::CANT_INCLUDE_IN_SESSION);
}

#[test]
fn transit_with_continue_fails_0200() {
    let mut h = Harness::new();
    let mut r = req(1, true, 3, libiscsi_single_pdu("Normal"));
    r.cont = true;
    let s = h.step(&r);
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::TransitWithContinue)
    );
}

#[test]
fn reserved_next_stage_fails_0200() {
    let mut h = Harness::new();
    assert_failed(
        &h.step(&req(0, true, 2, normal_security_text("None"))),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn transit_to_same_or_earlier_stage_fails_0200() {
    let mut h = Harness::new();
    assert_failed(
        &h.step(&req(1, true, 1, libiscsi_single_pdu("Normal"))),
        LoginStatus::INITIATOR_ERROR,
    );
    let mut h = Harness::new();
    assert_failed(
        &h.step(&req(1, true, 0, libiscsi_single_pdu("Normal"))),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn first_request_in_ffp_or_reserved_stage_fails_0200() {
    for csg in [2, 3] {
        let mut h = Harness::new();
        assert_failed(
            &h.step(&req(csg, false, 0, Vec::new())),
            LoginStatus::INITIATOR_ERROR,
        );
    }
}

#[test]
fn stage_going_backwards_fails_0200() {
    let mut h = Harness::new();
    assert_ok_continue(&h.step(&req(0, true, 1, normal_security_text("None"))));
    let s = h.step(&req(0, true, 1, Vec::new()));
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::StageMismatch {
            expected: 1,
            got: 0
        })
    );
}

#[test]
fn stage_jumping_without_target_transit_fails_0200() {
    let mut h = Harness::new();
    assert_ok_continue(&h.step(&req(0, false, 0, normal_security_text("None"))));
    assert_failed(
        &h.step(&req(1, true, 3, Vec::new())),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn no_acceptable_auth_method_fails_0201() {
    let mut h = Harness::new();
    assert_failed(
        &h.step(&req(0, true, 1, normal_security_text("CHAP"))),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
}

#[test]
fn target_only_key_from_initiator_fails_0200() {
    for key in ["TargetAlias", "TargetPortalGroupTag", "TargetAddress"] {
        let mut h = Harness::new();
        let data = text(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            (key, "1"),
        ]);
        let s = h.step(&req(1, true, 3, data));
        assert_failed(&s, LoginStatus::INITIATOR_ERROR);
        assert!(
            matches!(s.outcome, LoginOutcome::Failed(LoginError::Key(_))),
            "{key}"
        );
    }
}

#[test]
fn repeated_key_in_one_text_fails_0200() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxBurstLength", "4096"),
        ("MaxBurstLength", "8192"),
    ]);
    let s = h.step(&req(1, true, 3, data));
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::RepeatedKey("MaxBurstLength".into()))
    );
}

#[test]
fn operational_key_in_security_stage_fails_0200() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
        ("HeaderDigest", "None"),
    ]);
    assert_failed(
        &h.step(&req(0, true, 1, data)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn auth_method_in_operational_stage_fails_0200() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("AuthMethod", "None"),
    ]);
    assert_failed(
        &h.step(&req(1, true, 3, data)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn renegotiating_a_key_in_a_later_request_fails_0200() {
    let mut h = Harness::new();
    let first = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxBurstLength", "4096"),
    ]);
    assert_ok_continue(&h.step(&req(1, false, 0, first)));
    let s = h.step(&req(1, true, 3, text(&[("MaxBurstLength", "8192")])));
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::Renegotiated("MaxBurstLength".into()))
    );
}

#[test]
fn redeclaring_identity_with_other_value_fails_0200() {
    let mut h = Harness::new();
    assert_ok_continue(&h.step(&req(0, true, 1, normal_security_text("None"))));
    let s = h.step(&req(
        1,
        true,
        3,
        text(&[("TargetName", "iqn.2024-01.io.shoal:disk2")]),
    ));
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
}

#[test]
fn changing_isid_during_login_fails_0200() {
    let mut h = Harness::new();
    assert_ok_continue(&h.step(&req(0, true, 1, normal_security_text("None"))));
    let mut r = req(1, true, 3, Vec::new());
    r.isid[5] = 9;
    let s = h.step(&r);
    assert_eq!(s.response.status(), LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::IdentityChanged("ISID"))
    );
}

#[test]
fn malformed_text_fails_0200() {
    let mut h = Harness::new();
    assert_failed(
        &h.step(&req(1, true, 3, b"InitiatorName\0".to_vec())),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn oversized_text_fails_0200() {
    let mut h = Harness::with_limits(TargetLimits {
        max_text_length: 64,
        ..TargetLimits::default()
    });
    let mut r = req(1, false, 0, vec![b'a'; 60]);
    r.cont = true;
    assert_ok_continue(&h.step(&r));
    let s = h.step(&r);
    assert_failed(&s, LoginStatus::INITIATOR_ERROR);
    assert!(matches!(
        s.outcome,
        LoginOutcome::Failed(LoginError::Text(_))
    ));
}

#[test]
fn illegal_max_recv_data_segment_length_declaration_fails_0200() {
    let mut h = Harness::new();
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("MaxRecvDataSegmentLength", "16"),
    ]);
    assert_failed(
        &h.step(&req(1, true, 3, data)),
        LoginStatus::INITIATOR_ERROR,
    );
}

#[test]
fn required_digest_refused_fails_0200() {
    let limits = TargetLimits {
        data_digest: DigestSupport::Crc32cOnly,
        ..TargetLimits::default()
    };
    let mut h = Harness::with_limits(limits.clone());
    // libiscsi offers DataDigest=None only: answered Reject, and the login cannot complete.
    let s = h.step(&req(1, true, 3, libiscsi_single_pdu("Normal")));
    assert_eq!(s.response.status(), LoginStatus::INITIATOR_ERROR);
    assert_eq!(
        s.outcome,
        LoginOutcome::Failed(LoginError::DigestRequired("DataDigest"))
    );
    let mut h = Harness::with_limits(limits);
    let data = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", TARGET),
        ("DataDigest", "None,CRC32C"),
    ]);
    assert!(complete(&h.step(&req(1, true, 3, data))).data_digest);
}

#[test]
fn request_after_completion_fails() {
    let mut h = Harness::new();
    complete(&h.step(&req(1, true, 3, libiscsi_single_pdu("Normal"))));
    let s = h.step(&req(1, true, 3, Vec::new()));
    assert_eq!(s.outcome, LoginOutcome::Failed(LoginError::AlreadyFinished));
}

#[test]
fn non_login_pdu_during_login_fails_020b() {
    let mut h = Harness::new();
    assert_ok_continue(&h.step(&req(0, true, 1, normal_security_text("None"))));
    let s = h.machine.fail_invalid_during_login();
    assert_failed(&s, LoginStatus::INVALID_DURING_LOGIN);
    assert!(h.machine.is_finished());
}

#[test]
fn initiator_left_out_of_the_access_list_fails_0202() {
    let dir = FakeDirectory {
        denied: vec![(INITIATOR.into(), TARGET.into())],
        ..FakeDirectory::two_targets()
    };
    let login = |initiator: &str| {
        let mut m = LoginMachine::new(TargetLimits::default(), AuthPolicy::None);
        let data = text(&[("InitiatorName", initiator), ("TargetName", TARGET)]);
        m.step(&req(1, true, 3, data), &dir, &NoSessions)
    };
    assert_failed(&login(INITIATOR), LoginStatus::AUTHORIZATION_FAILURE);
    assert_eq!(
        login("iqn.2005-03.org.open-iscsi:other").response.status(),
        LoginStatus::SUCCESS
    );
}

/// A login request's keys, by name.
type Keys<'a> = Vec<(&'a str, String)>;

proptest::proptest! {
    /// Under a CHAP policy a login whose response cannot know the secret never reaches full
    /// feature phase, and nothing panics: a CHAP conversation in the order initiators use,
    /// with random names, algorithms, responses (hex or base64, any length), mutual keys and
    /// T bits. (With the response check disabled, this finds a login that gets through.)
    #[test]
    fn chap_conversations_without_the_secret_never_log_in(
        method in 0usize..3,
        algorithm in 0usize..4,
        name in 0usize..2,
        response in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        base64 in proptest::prelude::any::<bool>(),
        mutual in proptest::prelude::any::<bool>(),
        transits in proptest::collection::vec(proptest::prelude::any::<bool>(), 4),
    ) {
        use base64::Engine;
        let policy = AuthPolicy::Chap {
            initiator: ChapSecret { user: "alice".into(), secret: b"initiator-secret".to_vec() },
            target: Some(ChapSecret { user: "shoal".into(), secret: b"target-secret-x".to_vec() }),
        };
        let mut machine = LoginMachine::new(TargetLimits::default(), policy);
        let dir = FakeDirectory::two_targets();
        let response = if base64 {
            format!("0b{}", base64::engine::general_purpose::STANDARD.encode(&response))
        } else {
            format!("0x{}", response.iter().map(|x| format!("{x:02x}")).collect::<String>())
        };
        let mut last = vec![
            ("CHAP_N", ["alice", "bob"][name].to_string()),
            ("CHAP_R", response),
        ];
        if mutual {
            last.push(("CHAP_I", "7".to_string()));
            last.push(("CHAP_C", "0x0102030405060708".to_string()));
        }
        let script: Vec<(u8, u8, Keys)> = vec![
            (0, 1, vec![
                ("InitiatorName", INITIATOR.to_string()),
                ("TargetName", TARGET.to_string()),
                ("AuthMethod", ["CHAP", "CHAP,None", "None"][method].to_string()),
            ]),
            (0, 1, vec![("CHAP_A", ["5", "7", "7,5", "6"][algorithm].to_string())]),
            (0, 3, last),
            (1, 3, vec![("HeaderDigest", "None".to_string())]),
        ];
        for ((csg, nsg, pairs), transit) in script.into_iter().zip(transits) {
            let list: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let step = machine.step(&req(csg, transit, nsg, text(&list)), &dir, &NoSessions);
            proptest::prop_assert!(!matches!(step.outcome, LoginOutcome::Complete(_)));
            if matches!(step.outcome, LoginOutcome::Failed(_)) {
                break;
            }
        }
    }
}

/// [`FakeDirectory`] whose target [`TARGET`] has CHAP credentials of its own.
struct ChapTargetDirectory(FakeDirectory);

impl TargetDirectory for ChapTargetDirectory {
    fn target_exists(&self, name: &str) -> bool {
        self.0.target_exists(name)
    }
    fn target_alias(&self, name: &str) -> Option<String> {
        self.0.target_alias(name)
    }
    fn portal_group_tag(&self) -> u16 {
        self.0.portal_group_tag()
    }
    fn send_targets(&self, scope: SendTargetsScope<'_>) -> Vec<TargetRecord> {
        self.0.send_targets(scope)
    }
    fn may_access(&self, initiator: &str, target: &str) -> bool {
        self.0.may_access(initiator, target)
    }
    fn target_auth(&self, target: &str) -> Option<AuthPolicy> {
        (target == TARGET).then(|| AuthPolicy::Chap {
            initiator: ChapSecret {
                user: "bob".into(),
                secret: b"bob-secret-123".to_vec(),
            },
            target: None,
        })
    }
}

#[test]
fn a_target_with_chap_of_its_own_refuses_a_login_that_skips_security() {
    let dir = ChapTargetDirectory(FakeDirectory::two_targets());
    let mut m = LoginMachine::new(TargetLimits::default(), AuthPolicy::None);
    let s = m.step(
        &req(1, true, 3, libiscsi_single_pdu("Normal")),
        &dir,
        &NoSessions,
    );
    assert_failed(&s, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn a_target_with_chap_of_its_own_chooses_chap_over_none() {
    let dir = ChapTargetDirectory(FakeDirectory::two_targets());
    let mut m = LoginMachine::new(TargetLimits::default(), AuthPolicy::None);
    let s = m.step(
        &req(0, false, 0, normal_security_text("CHAP,None")),
        &dir,
        &NoSessions,
    );
    assert_ok_continue(&s);
    assert_eq!(get(&answers(&s), "AuthMethod"), Some("CHAP"));
    // The portal's policy (none) still applies to its other targets.
    let mut m = LoginMachine::new(TargetLimits::default(), AuthPolicy::None);
    let other = text(&[
        ("InitiatorName", INITIATOR),
        ("TargetName", "iqn.2024-01.io.shoal:disk2"),
        ("AuthMethod", "CHAP,None"),
    ]);
    let s = m.step(&req(0, true, 1, other), &dir, &NoSessions);
    assert_eq!(get(&answers(&s), "AuthMethod"), Some("None"));
}

/// With CHAP required, an initiator the access list leaves out learns it (0202) only once it
/// has authenticated; without the secret it gets 0201 like anyone else.
#[test]
fn an_access_list_refusal_waits_for_chap() {
    use md5::{Digest, Md5};
    let dir = ChapTargetDirectory(FakeDirectory {
        denied: vec![(INITIATOR.into(), TARGET.into())],
        ..FakeDirectory::two_targets()
    });
    let converse = |secret: &[u8]| -> LoginStep {
        let mut m = LoginMachine::new(TargetLimits::default(), AuthPolicy::None);
        let first = text(&[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "CHAP"),
        ]);
        assert_ok_continue(&m.step(&req(0, false, 0, first), &dir, &NoSessions));
        let s = m.step(
            &req(0, false, 0, text(&[("CHAP_A", "5")])),
            &dir,
            &NoSessions,
        );
        assert_ok_continue(&s);
        let a = answers(&s);
        let id: u8 = get(&a, "CHAP_I").unwrap().parse().unwrap();
        let hex = get(&a, "CHAP_C").unwrap().trim_start_matches("0x");
        let challenge: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let digest = Md5::digest([&[id][..], secret, &challenge].concat());
        let response: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let last = text(&[("CHAP_N", "bob"), ("CHAP_R", &format!("0x{response}"))]);
        m.step(&req(0, true, 1, last), &dir, &NoSessions)
    };
    assert_failed(
        &converse(b"wrong-secret-99"),
        LoginStatus::AUTHENTICATION_FAILURE,
    );
    assert_failed(
        &converse(b"bob-secret-123"),
        LoginStatus::AUTHORIZATION_FAILURE,
    );
}
