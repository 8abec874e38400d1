//! Scheduled snapshots against the real binary: `shoal snapshot schedule` takes a snapshot every
//! interval, keeps the newest N scheduled ones and deletes older ones (never a snapshot taken by
//! hand), the schedule survives `kill -9`, bad schedules are refused with a clear error, and
//! `--off` stops it.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::Target;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

/// The scheduled snapshots of `default`, oldest first.
fn scheduled(t: &Target) -> Vec<String> {
    let info = json(&t.cli_ok(&["--json", "snapshot", "schedule", "default"]));
    info["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// Every snapshot of `default`.
fn all_snapshots(t: &Target) -> Vec<String> {
    let list = json(&t.cli_ok(&["--json", "snapshot", "list", "default"]));
    list.as_array()
        .expect("list")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits (up to 15 s) until `ok` holds of the scheduled snapshots; returns them.
fn wait_for(t: &Target, what: &str, ok: impl Fn(&[String]) -> bool) -> Vec<String> {
    let start = Instant::now();
    loop {
        let now = scheduled(t);
        if ok(&now) {
            return now;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what}: scheduled snapshots {now:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_schedule_takes_snapshots_keeps_the_newest_and_survives_a_restart() {
    let t = Target::start(&[]);
    t.cli_ok(&["snapshot", "create", "default@by-hand"]);

    // Bad schedules: a clear error, nothing set.
    for args in [
        &["--every", "0s", "--keep", "2"][..],
        &["--every", "1s"][..],
    ] {
        let out = t.cli(&[&["snapshot", "schedule", "default"][..], args].concat());
        assert!(!out.status.success(), "{args:?} accepted");
    }
    let r = ureq::put(&format!("{}/v1/volumes/default/schedule", t.admin()))
        .send_json(serde_json::json!({"every_secs": 60, "keep": 0}));
    match r {
        Err(ureq::Error::Status(400, resp)) => {
            let body: Value = resp.into_json().unwrap();
            assert_eq!(body["error"]["code"], "invalid_argument", "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let info = json(&t.cli_ok(&["--json", "snapshot", "schedule", "default"]));
    assert!(info["schedule"].is_null(), "{info}");

    let info = json(&t.cli_ok(&[
        "--json", "snapshot", "schedule", "default", "--every", "1s", "--keep", "2",
    ]));
    assert_eq!(info["schedule"]["every_secs"], 1, "{info}");
    assert_eq!(info["schedule"]["keep"], 2, "{info}");
    let volume = json(&t.cli_ok(&["--json", "volume", "show", "default"]));
    assert_eq!(volume["snapshot_schedule"]["keep"], 2, "{volume}");

    // The first one comes within a second or two; once the retention has deleted it, two
    // newer ones are kept.
    let first = wait_for(&t, "a first scheduled snapshot", |s| !s.is_empty())[0].clone();
    let name = first.strip_prefix("default@auto-").expect("auto- name");
    assert!(
        name.len() >= 15 && name[..8].bytes().all(|b| b.is_ascii_digit()),
        "{first}"
    );
    let kept = wait_for(&t, "the first one expired", |s| {
        s.len() == 2 && !s.contains(&first)
    });
    assert!(kept[0] < kept[1], "oldest first: {kept:?}");
    assert!(
        all_snapshots(&t).contains(&"default@by-hand".to_string()),
        "a snapshot taken by hand is never deleted"
    );

    // kill -9: the schedule is kept (with the volume's settings) and goes on.
    let t = Target::start_in(t.kill(), &[]);
    let info = json(&t.cli_ok(&["--json", "snapshot", "schedule", "default"]));
    assert_eq!(info["schedule"]["every_secs"], 1, "{info}");
    let before = scheduled(&t);
    wait_for(&t, "a snapshot after the restart", |s| {
        s.last() != before.last()
    });

    // --off stops it; the scheduled snapshots stay.
    let info = json(&t.cli_ok(&["--json", "snapshot", "schedule", "default", "--off"]));
    assert!(info["schedule"].is_null(), "{info}");
    // (A run that started before --off may still be deleting its oldest.)
    let left = wait_for(&t, "the retention done", |s| s.len() == 2);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(scheduled(&t), left, "no snapshot after --off");
}
