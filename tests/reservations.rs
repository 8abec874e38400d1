//! Persistent reservations against the real binary with the raw initiator: a registration
//! belongs to the initiator port and survives its session, READ FULL STATUS names that port, and
//! a reservation holds off another initiator's writes until it is released, and with APTPL the
//! registrations and the reservation survive `kill -9` of the target. (libiscsi's
//! Prin*/Prout*/Reserve6 suites run in tests/clients.rs.)

mod support;

use support::Target;
use support::initiator::{RawInitiator, Reply, session};

const WRITE_EXCLUSIVE: u8 = 1;

/// PERSISTENT RESERVE OUT with the basic 24-byte parameter list.
fn prout(ini: &mut RawInitiator, action: u8, kind: u8, key: u64, sa_key: u64) -> Reply {
    prout_flags(ini, action, kind, key, sa_key, 0)
}

/// The same with byte 20 of the parameter list (APTPL is bit 0).
fn prout_flags(
    ini: &mut RawInitiator,
    action: u8,
    kind: u8,
    key: u64,
    sa_key: u64,
    flags: u8,
) -> Reply {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = action;
    cdb[2] = kind;
    cdb[8] = 24;
    let mut param = [0u8; 24];
    param[..8].copy_from_slice(&key.to_be_bytes());
    param[8..16].copy_from_slice(&sa_key.to_be_bytes());
    param[20] = flags;
    ini.command(&cdb, 24, false, &param)
}

/// PERSISTENT RESERVE IN: the parameter data.
fn prin(ini: &mut RawInitiator, action: u8) -> Vec<u8> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5E;
    cdb[1] = action;
    cdb[7..9].copy_from_slice(&1024u16.to_be_bytes());
    let r = ini.command(&cdb, 1024, true, &[]);
    assert_eq!(r.status(), 0, "PRIN {action}: {:?}", r.sense());
    r.data
}

/// `shoal volume reservations default --json` plus `extra`, as JSON.
fn reservations_cli(t: &Target, extra: &[&str]) -> serde_json::Value {
    let args = [&["volume", "reservations", "default", "--json"][..], extra].concat();
    serde_json::from_str(&t.cli_ok(&args)).unwrap()
}

fn keys(data: &[u8]) -> Vec<u64> {
    let len = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
    data[8..8 + len]
        .chunks(8)
        .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
        .collect()
}

#[test]
fn a_registration_outlives_its_session_and_a_reservation_holds_off_other_writers() {
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    assert_eq!(prout(&mut a, 0x00, 0, 0, 0xA1).status(), 0, "REGISTER");
    assert_eq!(keys(&prin(&mut a, 0x00)), vec![0xA1]);
    drop(a); // connection lost: the registration stays with the initiator port
    // Let the target end that session first (a login meanwhile would reinstate it instead).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut a = session(t.addr, 1);
    assert_eq!(keys(&prin(&mut a, 0x00)), vec![0xA1]);
    let full = prin(&mut a, 0x03);
    let text = String::from_utf8_lossy(&full);
    assert!(
        text.contains(",i,0x"),
        "READ FULL STATUS names the initiator port: {text:?}"
    );
    // Write Exclusive by A: B (another port, unregistered) may read but not write.
    assert_eq!(
        prout(&mut a, 0x01, WRITE_EXCLUSIVE, 0xA1, 0).status(),
        0,
        "RESERVE"
    );
    let mut b = session(t.addr, 2);
    assert_eq!(b.read10(0, 1).status(), 0);
    assert_eq!(
        b.write10(0, &[7u8; 512]).status(),
        0x18,
        "RESERVATION CONFLICT"
    );
    assert_eq!(a.write10(0, &[8u8; 512]).status(), 0);
    // B cannot release or take it with a key it does not hold.
    assert_eq!(prout(&mut b, 0x02, WRITE_EXCLUSIVE, 0xA1, 0).status(), 0x18);
    // The administrator sees who holds what.
    let info = reservations_cli(&t, &[]);
    assert_eq!(info["reservation"]["type"], "Write Exclusive", "{info}");
    let holder = info["reservation"]["holder"].as_str().unwrap_or_default();
    assert!(holder.contains(",i,0x"), "{info}");
    assert_eq!(
        info["registrations"][0]["key"], "0x00000000000000a1",
        "{info}"
    );
    assert_eq!(
        prout(&mut a, 0x02, WRITE_EXCLUSIVE, 0xA1, 0).status(),
        0,
        "RELEASE"
    );
    assert_eq!(b.write10(0, &[7u8; 512]).status(), 0);
    // CLEAR drops every registration.
    assert_eq!(prout(&mut a, 0x03, 0, 0xA1, 0).status(), 0, "CLEAR");
    assert!(keys(&prin(&mut a, 0x00)).is_empty());
}

#[test]
fn the_administrator_can_clear_a_dead_hosts_reservation() {
    const EXCLUSIVE_ACCESS: u8 = 3;
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    assert_eq!(prout(&mut a, 0x00, 0, 0, 0xA1).status(), 0, "REGISTER");
    assert_eq!(
        prout(&mut a, 0x01, EXCLUSIVE_ACCESS, 0xA1, 0).status(),
        0,
        "RESERVE"
    );
    let mut b = session(t.addr, 2);
    assert_eq!(b.read10(0, 1).status(), 0x18, "B is locked out");
    let info = reservations_cli(&t, &["--clear"]);
    assert!(info["reservation"].is_null(), "{info}");
    assert_eq!(
        info["registrations"].as_array().map(Vec::len),
        Some(0),
        "{info}"
    );
    assert_eq!(b.read10(0, 1).status(), 0, "B reads again");
    // A learns that its reservation was preempted.
    let r = a.read10(0, 1);
    assert_eq!((r.status(), r.sense()), (0x02, Some((0x06, 0x2A, 0x03))));
    assert!(keys(&prin(&mut a, 0x00)).is_empty());
}

const APTPL: u8 = 0x01;

/// REPORT CAPABILITIES: (PTPL_C, PTPL_A).
fn ptpl(ini: &mut RawInitiator) -> (bool, bool) {
    let caps = prin(ini, 0x02);
    (caps[2] & 0x01 != 0, caps[3] & 0x01 != 0)
}

#[test]
fn with_aptpl_a_reservation_survives_kill_9_until_a_register_turns_it_off() {
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    assert_eq!(ptpl(&mut a), (true, false), "capable, not active");
    assert_eq!(
        prout_flags(&mut a, 0x00, 0, 0, 0xA1, APTPL).status(),
        0,
        "REGISTER with APTPL"
    );
    assert_eq!(ptpl(&mut a), (true, true));
    assert_eq!(
        prout(&mut a, 0x01, WRITE_EXCLUSIVE, 0xA1, 0).status(),
        0,
        "RESERVE"
    );
    drop(a);
    let t = Target::start_in(t.kill(), &[]);

    // Another initiator port is held off after the restart; the holder is recognised.
    let mut b = session(t.addr, 2);
    assert_eq!(
        b.read10(0, 1).status(),
        0,
        "Write Exclusive lets others read"
    );
    assert_eq!(
        b.write10(0, &[7u8; 512]).status(),
        0x18,
        "RESERVATION CONFLICT"
    );
    let mut a = session(t.addr, 1);
    assert_eq!(keys(&prin(&mut a, 0x00)), vec![0xA1]);
    let r = prin(&mut a, 0x01);
    assert_eq!(
        (&r[8..16], r[21]),
        (&0xA1u64.to_be_bytes()[..], WRITE_EXCLUSIVE),
        "READ RESERVATION"
    );
    assert_eq!(a.write10(0, &[8u8; 512]).status(), 0, "the holder writes");
    assert_eq!(ptpl(&mut a), (true, true));
    let info = reservations_cli(&t, &[]);
    assert_eq!(info["reservation"]["type"], "Write Exclusive", "{info}");

    // A REGISTER without APTPL turns persistence off: the next restart starts unreserved.
    assert_eq!(prout(&mut a, 0x00, 0, 0xA1, 0xA1).status(), 0, "REGISTER");
    assert_eq!(ptpl(&mut a), (true, false));
    drop((a, b));
    let t = Target::start_in(t.kill(), &[]);
    let mut b = session(t.addr, 2);
    assert_eq!(b.write10(0, &[7u8; 512]).status(), 0);
    assert!(keys(&prin(&mut b, 0x00)).is_empty());
}

#[test]
fn a_damaged_reservations_record_stops_the_start_with_its_path() {
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    assert_eq!(prout_flags(&mut a, 0x00, 0, 0, 0xA1, APTPL).status(), 0);
    drop(a);
    let dir = t.kill();
    let file = dir
        .path()
        .join("reservations/iqn.2026-11.dev.shoal%3Adefault.json");
    let text = std::fs::read_to_string(&file).expect("the record");
    assert!(text.contains(",i,0x"), "{text}");
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let out = support::run(
        std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data")
            .arg(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--size", "64M"]),
        std::time::Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("default.json") && stderr.contains("reservations"),
        "{stderr}"
    );
    // Removing the record lets the target start (unreserved).
    std::fs::remove_file(&file).unwrap();
    let t = Target::start_in(dir, &[]);
    let mut b = session(t.addr, 2);
    assert_eq!(b.write10(0, &[7u8; 512]).status(), 0);
}

#[test]
fn a_change_that_cannot_be_stored_fails_and_changes_nothing() {
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    let mut b = session(t.addr, 2);
    assert_eq!(prout_flags(&mut a, 0x00, 0, 0, 0xA1, APTPL).status(), 0);
    assert_eq!(prout_flags(&mut b, 0x00, 0, 0, 0xB2, APTPL).status(), 0);
    // The record can no longer be written: the directory is now a plain file.
    let dir = t.dir.path().join("reservations");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    let r = prout(&mut a, 0x01, WRITE_EXCLUSIVE, 0xA1, 0);
    assert_eq!(
        r.sense(),
        Some((0x04, 0x44, 0x00)),
        "INTERNAL TARGET FAILURE"
    );
    let res = prin(&mut a, 0x01);
    assert_eq!(
        &res[4..8],
        &[0, 0, 0, 0],
        "no reservation: the RESERVE was undone"
    );
    assert_eq!(b.write10(0, &[1u8; 512]).status(), 0, "nobody holds the LU");
    // A PREEMPT that cannot be stored removes nobody, and tells nobody it did.
    let r = prout(&mut a, 0x04, WRITE_EXCLUSIVE, 0xA1, 0xB2);
    assert_eq!(r.sense(), Some((0x04, 0x44, 0x00)));
    let tur = b.command(&[0u8; 6], 0, false, &[]);
    assert_eq!(
        tur.status(),
        0,
        "no REGISTRATIONS PREEMPTED for B: {:?}",
        tur.sense()
    );
    let mut registered = keys(&prin(&mut a, 0x00));
    registered.sort_unstable();
    assert_eq!(registered, vec![0xA1, 0xB2]);
}

#[test]
fn state_left_under_a_name_by_a_rename_cut_short_is_dropped_at_start() {
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    assert_eq!(prout_flags(&mut a, 0x00, 0, 0, 0xA1, APTPL).status(), 0);
    assert_eq!(prout(&mut a, 0x01, WRITE_EXCLUSIVE, 0xA1, 0).status(), 0);
    drop(a);
    t.cli_ok(&["volume", "set", "default", "--iops-limit", "1000"]);
    let dir = t.kill();
    // What a crash leaves after a rename of `default` to `db` copied the volume's settings and
    // APTPL record to the new name, before the catalog record.
    let settings = dir.path().join("settings.json");
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    let entry = file["volumes"]["default"].clone();
    assert_eq!(entry["qos"]["iops"], 1000, "{file}");
    file["volumes"]["db"] = entry;
    std::fs::write(&settings, file.to_string()).unwrap();
    let records = dir.path().join("reservations");
    let db_record = records.join("iqn.2026-11.dev.shoal%3Adb.json");
    std::fs::copy(
        records.join("iqn.2026-11.dev.shoal%3Adefault.json"),
        &db_record,
    )
    .unwrap();
    // A sanitize record too (the volume had an erase in progress): a new volume of the name
    // must not come up sanitizing.
    let sanitize_record = dir
        .path()
        .join("sanitize")
        .join("iqn.2026-11.dev.shoal%3Adb.json");
    std::fs::write(&sanitize_record, r#"{"state": "running", "ause": false}"#).unwrap();

    let t = Target::start_in(dir, &[]);
    assert!(
        !sanitize_record.exists(),
        "the orphaned sanitize record is removed"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert!(file["volumes"].get("db").is_none(), "{file}");
    assert_eq!(file["volumes"]["default"]["qos"]["iops"], 1000, "{file}");
    assert!(!db_record.exists(), "the orphaned record is removed");
    // The volume keeps its reservation...
    let mut b = session(t.addr, 2);
    assert_eq!(b.write10(0, &[7u8; 512]).status(), 0x18, "still reserved");
    // ...and a new volume of the other name inherits neither.
    t.cli_ok(&["volume", "create", "db", "--size", "1M"]);
    let v: serde_json::Value =
        serde_json::from_str(&t.cli_ok(&["--json", "volume", "show", "db"])).unwrap();
    assert!(v["iops_limit"].is_null(), "{v}");
    let mut c = RawInitiator::login_as(
        t.addr,
        "iqn.2026-11.dev.shoal:test-initiator",
        [0x80, 0, 0, 0, 0, 3],
        "iqn.2026-11.dev.shoal:db",
        &[],
    );
    assert_eq!(c.test_unit_ready(), 0);
    assert_eq!(c.write10(0, &[9u8; 512]).status(), 0, "not reserved");
}

/// PREEMPT AND ABORT, the way a cluster fences a node (Pacemaker's fence_scsi): node A takes over
/// node B's Write Exclusive – Registrants Only reservation and removes B's key, and B's WRITE
/// caught waiting for its data is aborted, so it never reaches the disk, even when B's data
/// arrives after the fence. B is not answered for it (TAS=0); its next commands learn
/// REGISTRATIONS PREEMPTED, then COMMANDS CLEARED BY ANOTHER INITIATOR, and it may no longer
/// write.
#[test]
fn preempt_and_abort_fences_a_node_and_its_write_in_flight() {
    use shoal::iscsi::pdu::Opcode;
    use std::time::Duration;
    use support::initiator::Event;
    const WERO: u8 = 5; // Write Exclusive – Registrants Only
    const PREEMPT_AND_ABORT: u8 = 0x05;
    let t = Target::start(&[]);
    let mut a = session(t.addr, 1);
    // B sends no data before an R2T asks for it: its WRITE waits in the task set.
    let mut b = RawInitiator::login_default(t.addr, 2, &[("ImmediateData", "No")]);
    assert_eq!(b.test_unit_ready(), 0);
    assert_eq!(prout(&mut a, 0x00, 0, 0, 0xA1).status(), 0, "A registers");
    assert_eq!(prout(&mut b, 0x00, 0, 0, 0xB2).status(), 0, "B registers");
    assert_eq!(prout(&mut b, 0x01, WERO, 0xB2, 0).status(), 0, "B reserves");
    let caps = prin(&mut a, 0x02);
    assert_eq!(caps[2] & 0x04, 0x04, "REPORT CAPABILITIES: ATP_C");

    let fenced = vec![0xEEu8; 4096];
    let cdb = support::scsi::write10(100, 8);
    let write_itt = b.send_command(&cdb, 4096, false, true, &[], false);
    let r2t = b.expect_pdu();
    assert_eq!(r2t.bhs.opcode(), Opcode::R2T, "{:?}", r2t.bhs);

    let r = prout(&mut a, PREEMPT_AND_ABORT, WERO, 0xA1, 0xB2);
    assert_eq!(r.status(), 0, "PREEMPT AND ABORT: {:?}", r.sense());
    // The reservation is A's, and B's key is gone.
    assert_eq!(keys(&prin(&mut a, 0x00)), vec![0xA1]);
    let info = reservations_cli(&t, &[]);
    assert_eq!(
        info["reservation"]["type"], "Write Exclusive - Registrants Only",
        "{info}"
    );

    // B's data arrives late: dropped without a word, and its WRITE is never answered.
    b.answer_r2t(&r2t, &fenced);
    match b.next_non_ping(Duration::from_millis(300)) {
        Event::Timeout => {}
        other => panic!("nothing is owed to B for its aborted WRITE, got {other:?}"),
    }
    let tur = |b: &mut RawInitiator| b.command(&[0u8; 6], 0, false, &[]);
    let first = tur(&mut b);
    assert_eq!(
        first.sense(),
        Some((0x06, 0x2A, 0x05)),
        "REGISTRATIONS PREEMPTED"
    );
    let second = tur(&mut b);
    assert_eq!(
        second.sense(),
        Some((0x06, 0x2F, 0x00)),
        "COMMANDS CLEARED BY ANOTHER INITIATOR"
    );
    assert_eq!(tur(&mut b).status(), 0);
    assert_ne!(first.status_pdu.bhs.itt(), write_itt);
    // Fenced: B may read but not write; the WRITE it had in flight never landed.
    assert_eq!(
        b.write10(100, &[0x55u8; 512]).status(),
        0x18,
        "RESERVATION CONFLICT"
    );
    let r = a.read10(100, 8);
    assert_eq!(r.status(), 0);
    assert!(
        r.data.iter().all(|&x| x == 0),
        "the fenced WRITE reached the disk"
    );
    // A, the new holder, writes.
    assert_eq!(a.write10(100, &[0x11u8; 512]).status(), 0);
}

/// PREEMPT AND ABORT while the fenced node has reads at the disk: the fence waits for the
/// aborted commands' storage I/O to finish, then answers (it must not hang), the aborted reads
/// are never answered, and the fenced session goes on.
#[test]
fn preempt_and_abort_with_the_fenced_nodes_io_in_flight_answers_and_the_session_goes_on() {
    use shoal::iscsi::pdu::Opcode;
    use std::time::{Duration, Instant};
    const WE: u8 = 1;
    let t = Target::start(&["--size", "64M"]);
    let mut a = session(t.addr, 1);
    let mut b = session(t.addr, 2);
    for lba in (0..32 * 2048).step_by(2048) {
        assert_eq!(b.write10(lba, &vec![0x5Au8; 1 << 20]).status(), 0);
    }
    assert_eq!(prout(&mut a, 0x00, 0, 0, 0xA1).status(), 0);
    assert_eq!(prout(&mut b, 0x00, 0, 0, 0xB2).status(), 0);
    assert_eq!(prout(&mut b, 0x01, WE, 0xB2, 0).status(), 0);
    let reads: Vec<u32> = (0..32u32)
        .map(|i| {
            let cdb = support::scsi::read10(i * 2048, 2048);
            b.send_command(&cdb, 1 << 20, true, false, &[], false)
        })
        .collect();
    let start = Instant::now();
    let r = prout(&mut a, 0x05, WE, 0xA1, 0xB2);
    assert_eq!(r.status(), 0, "PREEMPT AND ABORT: {:?}", r.sense());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    // B: the reads that finished before the fence are answered and those aborted never; a
    // read that reached the target after the fence, or the TEST UNIT READY sent now, carries
    // REGISTRATIONS PREEMPTED.
    let tur_itt = b.send_command(&[0u8; 6], 0, false, false, &[], false);
    let mut statuses = 0;
    let mut preempted_told = false;
    let mut tur_answered = false;
    // Until B has heard everything it is owed (reads that reached the target after the fence
    // run normally and may finish after the TEST UNIT READY).
    while let support::initiator::Event::Pdu(p) = b.next_non_ping(Duration::from_millis(500)) {
        let itt = p.bhs.itt();
        assert!(
            itt == tur_itt || reads.contains(&itt),
            "unexpected PDU {:?}",
            p.bhs
        );
        if p.bhs.opcode() == Opcode::SCSI_RESPONSE {
            statuses += 1;
            // Fixed-format sense after the 2-byte SenseLength: key, then ASC/ASCQ.
            let sense = p.data.get(2..).unwrap_or_default();
            if p.bhs.0[3] == 0x02 && sense.len() >= 14 {
                preempted_told |= (sense[2] & 0x0F, sense[12], sense[13]) == (0x06, 0x2A, 0x05);
            }
        } else if p.bhs.0[1] & 0x01 != 0 {
            statuses += 1; // a READ's status in its last Data-In
        }
        tur_answered |= itt == tur_itt;
    }
    assert!(tur_answered);
    assert!(statuses <= reads.len() + 1);
    assert!(preempted_told, "B was never told REGISTRATIONS PREEMPTED");
    let tur = |b: &mut RawInitiator| b.command(&[0u8; 6], 0, false, &[]);
    while tur(&mut b).status() != 0 {}
    assert_eq!(b.read10(0, 8).status(), 0, "Write Exclusive: B still reads");
    assert_eq!(b.write10(0, &[1u8; 512]).status(), 0x18);
}
