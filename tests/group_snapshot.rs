//! Snapshots of several volumes at one instant (`shoal snapshot create A@s B@s`): a host writes
//! a sequence number to volume A, and once that is acknowledged the same number to volume B
//! (as a database writes its log, then its data), without pause, while the group snapshot is
//! taken. B's snapshot may hold no later number than A's: a write issued only after another was
//! acknowledged is never in the group without it. The two volumes sit on two shards.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::Target;
use support::initiator::{RawInitiator, session_as};

/// The host's initiator name.
const HOST: &str = "iqn.2026-11.dev.shoal:host";

/// Block 0 holding `n`.
fn block(n: u64) -> Vec<u8> {
    let mut b = vec![0u8; 512];
    b[..8].copy_from_slice(&n.to_be_bytes());
    b
}

fn number(ini: &mut RawInitiator) -> u64 {
    let r = ini.read10(0, 1);
    assert_eq!(r.status(), 0);
    u64::from_be_bytes(r.data[..8].try_into().unwrap())
}

#[test]
fn a_group_snapshot_never_holds_a_write_without_the_one_it_followed() {
    let t = Target::start(&["--size", "16M", "--shards", "2"]);
    t.cli_ok(&["volume", "create", "logs", "--size", "16M"]);
    let mut a = session_as(t.addr, HOST, "default", 1);
    let mut b = session_as(t.addr, HOST, "logs", 2);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                assert_eq!(a.write10(0, &block(n)).status(), 0, "A {n}");
                assert_eq!(b.write10(0, &block(n)).status(), 0, "B {n}");
            }
            n
        })
    };
    for round in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        let snap = format!("g{round}");
        t.cli_ok(&[
            "snapshot",
            "create",
            &format!("default@{snap}"),
            &format!("logs@{snap}"),
        ]);
        t.cli_ok(&["snapshot", "export", &format!("default@{snap}")]);
        t.cli_ok(&["snapshot", "export", &format!("logs@{snap}")]);
        let in_a = number(&mut session_as(t.addr, HOST, &format!("default:{snap}"), 3));
        let in_b = number(&mut session_as(t.addr, HOST, &format!("logs:{snap}"), 4));
        assert!(
            in_b <= in_a && in_a <= in_b + 1,
            "round {round}: A's snapshot holds write {in_a}, B's {in_b}"
        );
        assert!(in_a > 0, "the writer had started");
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 10, "{written} writes");
    // A group naming a volume twice, or one that does not exist, is refused whole.
    let out = t.cli(&["snapshot", "create", "default@x", "default@y"]);
    assert!(!out.status.success());
    let out = t.cli(&["snapshot", "create", "default@z", "nope@z"]);
    assert!(!out.status.success());
    let list = t.cli_ok(&["snapshot", "list", "default"]);
    assert!(
        !list.contains("default@x") && !list.contains("default@z"),
        "{list}"
    );
}
