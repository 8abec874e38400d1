//! Initiator access lists (LUN masking) against the real binary: a volume restricted to some
//! initiators logs in only those (libiscsi's `iscsi-inq -i NAME`), discovery shows it only to
//! them (`iscsi-ls -i NAME`), revoking an initiator closes its session, the list survives a
//! restart, `--any` opens the volume again, a bad name changes nothing, and a deleted volume's
//! list goes with it.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{Target, run, tool};

const T: Duration = Duration::from_secs(30);
const HOST1: &str = "iqn.2026-11.test:host1";
const HOST2: &str = "iqn.2026-11.test:host2";

/// Whether `initiator` can log in to volume `volume` (an INQUIRY through it succeeds).
fn logs_in(t: &Target, initiator: &str, volume: &str) -> bool {
    run(
        Command::new(tool("iscsi-inq"))
            .args(["-i", initiator])
            .arg(t.url(volume)),
        T,
    )
    .status
    .success()
}

/// The targets discovery shows `initiator`.
fn discovered(t: &Target, initiator: &str) -> String {
    let out = run(
        Command::new(tool("iscsi-ls"))
            .args(["-i", initiator])
            .arg(format!("iscsi://{}/", t.addr)),
        T,
    );
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_listed_initiators_log_in_and_see_the_volume() {
    let t = Target::start(&[]);
    t.cli_ok(&["volume", "create", "open", "--size", "16M"]);
    assert!(logs_in(&t, HOST2, "default"), "no list: open to all");
    let shown = t.cli_ok(&["volume", "access", "default", "--allow", HOST1]);
    assert!(shown.contains(HOST1), "{shown}");
    assert!(logs_in(&t, HOST1, "default"));
    assert!(!logs_in(&t, HOST2, "default"));
    assert!(logs_in(&t, HOST2, "open"), "other volumes stay open");
    let seen = discovered(&t, HOST2);
    assert!(
        seen.contains("shoal:open") && !seen.contains("shoal:default"),
        "{seen}"
    );
    assert!(discovered(&t, HOST1).contains("shoal:default"));
    // Counted for monitoring (also `shoal_logins_total` in /metrics).
    let stats: serde_json::Value = serde_json::from_str(&t.cli_ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["logins"]["not_authorized"], 1, "{stats}");
    assert!(
        stats["logins"]["accepted"].as_u64().unwrap() >= 5,
        "{stats}"
    );

    // Kept across a restart.
    let data = t.kill();
    let t = Target::start_in(data, &[]);
    assert!(logs_in(&t, HOST1, "default"));
    assert!(!logs_in(&t, HOST2, "default"));
    let json = t.cli_ok(&["volume", "access", "default", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["initiators"], serde_json::json!([HOST1]));
    let show = t.cli_ok(&["volume", "show", "default", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(
        v["initiators"],
        serde_json::json!([HOST1]),
        "shown with the volume"
    );

    // A bad name is refused and changes nothing; --any opens the volume again.
    let out = t.cli(&["volume", "access", "default", "--allow", "host1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an iSCSI initiator name"));
    assert!(!logs_in(&t, HOST2, "default"));
    t.cli_ok(&["volume", "access", "default", "--any"]);
    assert!(logs_in(&t, HOST2, "default"));
}

#[test]
fn revoking_an_initiator_closes_its_session() {
    use support::initiator::RawInitiator;
    let t = Target::start(&[]);
    let target = "iqn.2026-11.dev.shoal:default";
    let mut kept = RawInitiator::login_as(t.addr, HOST1, support::initiator::isid(1), target, &[]);
    let mut revoked =
        RawInitiator::login_as(t.addr, HOST2, support::initiator::isid(2), target, &[]);
    assert_eq!(kept.test_unit_ready(), 0);
    assert_eq!(revoked.test_unit_ready(), 0);
    t.cli_ok(&["volume", "access", "default", "--allow", HOST1]);
    assert!(
        revoked.closes_within(Duration::from_secs(5)),
        "session left open"
    );
    assert_eq!(kept.test_unit_ready(), 0, "an allowed session goes on");
}

#[test]
fn an_exported_snapshot_has_its_volumes_list() {
    let t = Target::start(&[]);
    t.cli_ok(&["snapshot", "create", "default@s1"]);
    t.cli_ok(&["snapshot", "export", "default@s1"]);
    assert!(logs_in(&t, HOST2, "default:s1"));
    t.cli_ok(&["volume", "access", "default", "--allow", HOST1]);
    assert!(logs_in(&t, HOST1, "default:s1"));
    assert!(!logs_in(&t, HOST2, "default:s1"));
    // Exported after the list was set: the same.
    t.cli_ok(&["snapshot", "create", "default@s2"]);
    t.cli_ok(&["snapshot", "export", "default@s2"]);
    assert!(!logs_in(&t, HOST2, "default:s2"));
    assert!(logs_in(&t, HOST1, "default:s2"));
}

#[test]
fn a_deleted_volume_takes_its_list_along() {
    let t = Target::start(&[]);
    t.cli_ok(&["volume", "create", "vm", "--size", "16M"]);
    t.cli_ok(&["volume", "access", "vm", "--allow", HOST1]);
    assert!(!logs_in(&t, HOST2, "vm"));
    t.cli_ok(&["volume", "delete", "vm"]);
    t.cli_ok(&["volume", "create", "vm", "--size", "16M"]);
    assert!(logs_in(&t, HOST2, "vm"), "a new volume starts open");
    let out = t.cli(&["volume", "access", "nosuch"]);
    assert!(!out.status.success());
}
