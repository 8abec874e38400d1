//! Initiator access lists (LUN masking) against the real binary: a volume restricted to some
//! initiators logs in only those (libiscsi's `iscsi-inq -i NAME`), discovery shows it only to
//! them (`iscsi-ls -i NAME`), the list survives a restart, `--any` opens the volume again, a bad
//! name changes nothing, and a deleted volume's list goes with it.

mod support;

use std::process::{Command, Output};
use std::time::Duration;
use support::{Target, run, tool};

const T: Duration = Duration::from_secs(30);
const HOST1: &str = "iqn.2026-11.test:host1";
const HOST2: &str = "iqn.2026-11.test:host2";

fn cli(t: &Target, args: &[&str]) -> Output {
    run(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data")
            .arg(t.dir.path())
            .args(args),
        T,
    )
}

fn cli_ok(t: &Target, args: &[&str]) -> String {
    let out = cli(t, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
    cli_ok(&t, &["volume", "create", "open", "--size", "16M"]);
    assert!(logs_in(&t, HOST2, "default"), "no list: open to all");
    let shown = cli_ok(&t, &["volume", "access", "default", "--allow", HOST1]);
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

    // Kept across a restart.
    let data = t.kill();
    let t = Target::start_in(data, &[]);
    assert!(logs_in(&t, HOST1, "default"));
    assert!(!logs_in(&t, HOST2, "default"));
    let json = cli_ok(&t, &["volume", "access", "default", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["initiators"], serde_json::json!([HOST1]));

    // A bad name is refused and changes nothing; --any opens the volume again.
    let out = cli(&t, &["volume", "access", "default", "--allow", "host1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an iSCSI initiator name"));
    assert!(!logs_in(&t, HOST2, "default"));
    cli_ok(&t, &["volume", "access", "default", "--any"]);
    assert!(logs_in(&t, HOST2, "default"));
}

#[test]
fn a_deleted_volume_takes_its_list_along() {
    let t = Target::start(&[]);
    cli_ok(&t, &["volume", "create", "vm", "--size", "16M"]);
    cli_ok(&t, &["volume", "access", "vm", "--allow", HOST1]);
    assert!(!logs_in(&t, HOST2, "vm"));
    cli_ok(&t, &["volume", "delete", "vm"]);
    cli_ok(&t, &["volume", "create", "vm", "--size", "16M"]);
    assert!(logs_in(&t, HOST2, "vm"), "a new volume starts open");
    let out = cli(&t, &["volume", "access", "nosuch"]);
    assert!(!out.status.success());
}
