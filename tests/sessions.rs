//! Sessions as an administrator sees them, against the real binary: `shoal session list` (and
//! `GET /v1/sessions`) names each session's volume, initiator, ISID, alias, address and login
//! time; `--volume` narrows it and an unknown volume is an error; `shoal session drop TSIH`
//! closes that session's connection and no other, and the list follows; `/metrics` counts
//! sessions per volume.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::Target;
use support::initiator::{INITIATOR_NAME, RawInitiator, isid};

fn sessions(t: &Target, extra: &[&str]) -> Vec<serde_json::Value> {
    let args = [&["--json", "session", "list"][..], extra].concat();
    let v: serde_json::Value = serde_json::from_str(&t.cli_ok(&args)).unwrap();
    v.as_array().expect("a list").clone()
}

#[test]
fn sessions_are_listed_and_one_can_be_ended() {
    let t = Target::start(&[]);
    t.cli_ok(&["volume", "create", "--size", "16M", "other"]);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut esx = RawInitiator::login_default(t.addr, 1, &[("InitiatorAlias", "esx-07")]);
    let mut other = RawInitiator::login_as(
        t.addr,
        "iqn.2026-11.test:host2",
        isid(2),
        "iqn.2026-11.dev.shoal:other",
        &[],
    );
    assert_eq!(esx.test_unit_ready(), 0);
    assert_eq!(other.test_unit_ready(), 0);

    let all = sessions(&t, &[]);
    assert_eq!(all.len(), 2, "{all:?}");
    let s = all
        .iter()
        .find(|s| s["volume"] == "default")
        .expect("the session to default");
    assert_eq!(s["initiator"], INITIATOR_NAME, "{s}");
    assert_eq!(s["target"], "iqn.2026-11.dev.shoal:default", "{s}");
    assert_eq!(s["initiator_alias"], "esx-07", "{s}");
    assert_eq!(s["isid"].as_str().map(str::len), Some(12), "{s}");
    assert!(
        s["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{s}"
    );
    let at = s["logged_in_at"].as_u64().expect("login time");
    assert!(at >= before && at <= before + 60, "{s}");
    let tsih = s["tsih"].as_u64().unwrap();

    // Monitoring counts them per volume (a datastore losing a path shows as a drop).
    let metrics = ureq::get(&format!("{}/metrics", t.admin()))
        .call()
        .expect("GET /metrics")
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("shoal_sessions{volume=\"default\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("shoal_sessions{volume=\"other\"} 1\n"),
        "{metrics}"
    );

    // One volume's sessions; the table names them too.
    let only = sessions(&t, &["--volume", "other"]);
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0]["initiator"], "iqn.2026-11.test:host2");
    let table = t.cli_ok(&["session", "list"]);
    assert!(
        table.contains("esx-07") && table.contains("127.0.0.1:"),
        "{table}"
    );
    let out = t.cli(&["session", "list", "--volume", "nope"]);
    assert!(!out.status.success(), "an unknown volume is an error");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Ending the session closes its connection, and only its own.
    t.cli_ok(&["session", "drop", &tsih.to_string()]);
    assert!(
        esx.closes_within(Duration::from_secs(5)),
        "session left open"
    );
    assert_eq!(other.test_unit_ready(), 0, "the other session goes on");
    let deadline = Instant::now() + Duration::from_secs(5);
    while sessions(&t, &[]).len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the ended session is still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = t.cli(&["session", "drop", &tsih.to_string()]);
    assert!(!out.status.success(), "no such session any more");
    let out = t.cli(&["session", "drop", "not-a-number"]);
    assert!(!out.status.success());
}
