//! Per-volume QoS against the real binary: `shoal volume set --iops-limit/--bandwidth-limit`
//! holds a volume's READs and WRITEs to the limit (checked as a lower bound on elapsed time:
//! a busy machine only makes it slower), leaves other volumes alone, is kept across `kill -9`,
//! and a LUN RESET ends the commands a limit holds back at once, without running them.

mod support;

use serde_json::Value;
use shoal::iscsi::pdu::Opcode;
use std::time::{Duration, Instant};
use support::Target;
use support::initiator::RawInitiator;

fn session(t: &Target, volume: &str, isid: u16) -> RawInitiator {
    let mut ini = RawInitiator::login(
        t.addr,
        &format!("iqn.2026-11.dev.shoal:{volume}"),
        isid as u8,
        &[],
    );
    assert_eq!(ini.test_unit_ready(), 0);
    ini
}

/// Seconds `n` 4 KiB reads at QD1 take.
fn reads(ini: &mut RawInitiator, n: u32) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        assert_eq!(ini.read10(i * 8, 8).status(), 0);
    }
    start.elapsed().as_secs_f64()
}

fn volume(t: &Target, name: &str) -> Value {
    serde_json::from_str(&t.cli_ok(&["--json", "volume", "show", name])).unwrap()
}

#[test]
fn an_iops_limit_holds_its_volume_back_and_survives_a_restart() {
    let t = Target::start(&[]);
    t.cli_ok(&["volume", "create", "other", "--size", "16M"]);
    let set = t.cli_ok(&["--json", "volume", "set", "default", "--iops-limit", "100"]);
    let v: Value = serde_json::from_str(&set).unwrap();
    assert_eq!(v["iops_limit"], 100, "{v}");
    let mut ini = session(&t, "default", 1);
    // 60 reads at 100/s, after a burst of at most 5: at least 0.5 s.
    let took = reads(&mut ini, 60);
    assert!(took >= 0.5, "60 reads at 100 IOPS took {took:.3} s");
    // Another volume is not held back (it may still be slow on a busy machine: no bound).
    let mut other = session(&t, "other", 2);
    reads(&mut other, 60);
    // The statistics say how many commands the limit held back, and on which volume.
    let stats: Value = serde_json::from_str(&t.cli_ok(&["stats", "--json"])).unwrap();
    let held = |volume: &str| {
        stats["luns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["volume"] == volume)
            .map(|l| l["qos"]["held"].as_u64().unwrap_or(0))
    };
    assert!(held("default").unwrap_or(0) >= 40, "{stats}");
    assert_eq!(held("other"), Some(0), "{stats}");

    // A byte limit: 8 writes of 64 KiB at 256 KiB/s take at least 1.5 s.
    t.cli_ok(&[
        "volume",
        "set",
        "default",
        "--iops-limit",
        "0",
        "--bandwidth-limit",
        "256K",
    ]);
    let v = volume(&t, "default");
    assert!(
        v["iops_limit"].is_null() && v["bandwidth_limit"] == 256 << 10,
        "{v}"
    );
    let start = Instant::now();
    for i in 0..8u32 {
        assert_eq!(ini.write10(i * 128, &[7u8; 64 << 10]).status(), 0);
    }
    let took = start.elapsed().as_secs_f64();
    assert!(took >= 1.5, "512 KiB at 256 KiB/s took {took:.3} s");

    drop((ini, other));
    let t = Target::start_in(t.kill(), &[]);
    let v = volume(&t, "default");
    assert_eq!(v["bandwidth_limit"], 256 << 10, "kept: {v}");
    t.cli_ok(&["volume", "set", "default", "--bandwidth-limit", "0"]);
    let v = volume(&t, "default");
    assert!(v["bandwidth_limit"].is_null(), "{v}");
}

/// A target whose volume is limited to 1 IOPS, and a session that sent `n` READs at once (the
/// limit holds all but the first back); their ITTs.
fn reads_held_back(n: usize) -> (Target, RawInitiator, Vec<u32>) {
    let t = Target::start(&[]);
    t.cli_ok(&["volume", "set", "default", "--iops-limit", "1"]);
    let mut ini = session(&t, "default", 1);
    let cdb = support::scsi::read10(0, 8);
    let itts = (0..n)
        .map(|_| ini.send_command(&cdb, 4096, true, false, &[], false))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    (t, ini, itts)
}

/// Receives until the FUNCTION COMPLETE of task management request `tmf_itt`, handing every
/// other PDU to `other`.
fn until_tmf_done(
    ini: &mut RawInitiator,
    tmf_itt: u32,
    mut other: impl FnMut(&support::initiator::Pdu),
) {
    loop {
        let p = ini.expect_pdu();
        if p.bhs.opcode() == Opcode::TASK_MGMT_RESPONSE {
            assert_eq!(p.bhs.itt(), tmf_itt);
            assert_eq!(p.bhs.0[2], 0, "FUNCTION COMPLETE");
            return;
        }
        other(&p);
    }
}

#[test]
fn a_lun_reset_ends_the_commands_a_limit_holds_back_without_running_them() {
    // 10 READs queued at once: at 1 per second the limit would let them go over 9 s.
    let (_t, mut ini, _) = reads_held_back(10);
    let start = Instant::now();
    let tmf_itt = ini.send_tmf(5, 0, 0xFFFF_FFFF, 0); // LOGICAL UNIT RESET
    let mut answered = 0;
    until_tmf_done(&mut ini, tmf_itt, |_| answered += 1);
    let took = start.elapsed();
    assert!(
        answered <= 2,
        "{answered} READs ran: the held ones should end unrun"
    );
    assert!(
        took < Duration::from_secs(4),
        "the reset waited {took:?}, as if for the limit to let the held READs go"
    );
    // The session goes on (the reset's unit attention first).
    let r = ini.read10(0, 8);
    assert_eq!(
        r.sense().map(|s| s.0),
        Some(0x06),
        "unit attention after the reset"
    );
}

#[test]
fn an_abort_task_ends_a_command_a_limit_holds_back_without_running_it() {
    // Five READs at once: at 1 per second the last would go after 4 s.
    let (_t, mut ini, itts) = reads_held_back(5);
    let last = itts[4];
    let start = Instant::now();
    let tmf_itt = ini.send_tmf(1, 0, last, 0); // ABORT TASK
    let mut answered = Vec::new();
    // READs answer with Data-In (the status in the last) or a SCSI Response.
    let note = |p: &support::initiator::Pdu, answered: &mut Vec<u32>| {
        let itt = p.bhs.itt();
        let answer = [Opcode::SCSI_DATA_IN, Opcode::SCSI_RESPONSE].contains(&p.bhs.opcode());
        assert!(!answer || itt != last, "the aborted READ ran");
        if answer && !answered.contains(&itt) {
            answered.push(itt);
        }
    };
    until_tmf_done(&mut ini, tmf_itt, |p| note(p, &mut answered));
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the abort waited {took:?}, as if for the limit to let the READ go"
    );
    // The other READs still run (at the limit), and the aborted one never answers.
    while answered.len() < 4 {
        let p = ini.expect_pdu();
        note(&p, &mut answered);
    }
    answered.sort_unstable();
    assert_eq!(answered, itts[..4].to_vec());
    let r = ini.read10(0, 8);
    assert_eq!(r.status(), 0, "the session goes on");
}
