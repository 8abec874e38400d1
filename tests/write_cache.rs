//! A volume the configuration declares with `write_cache = false` reports WCE=0 in the caching
//! mode page, and keeps it through a snapshot rollback (which serves the volume anew).

mod support;

use std::time::{Duration, Instant};
use support::Target;
use support::initiator::RawInitiator;

/// WCE of the caching mode page (MODE SENSE (6), DBD, page 08h).
fn wce(ini: &mut RawInitiator) -> bool {
    let r = ini.command(&[0x1A, 0x08, 0x08, 0x00, 0xFF, 0x00], 255, true, &[]);
    assert_eq!(r.status(), 0, "{:?}", r.sense());
    assert_eq!(r.data[4] & 0x3F, 0x08, "caching page");
    r.data[4 + 2] & 0x04 != 0
}

#[test]
fn a_declared_write_cache_setting_survives_a_rollback() {
    let t = Target::start_with_config(
        "[[volume]]\nname = \"default\"\nsize = \"64M\"\nwrite_cache = false\n",
    );
    let mut ini = RawInitiator::login_default(t.addr, 1, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    assert!(!wce(&mut ini));
    drop(ini);
    t.cli_ok(&["snapshot", "create", "default@s1"]);
    // A rollback needs the volume without sessions: the one above ends asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t
        .cli(&["snapshot", "rollback", "default@s1"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "rollback refused for 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut ini = RawInitiator::login_default(t.addr, 2, &[]);
    assert_eq!(ini.test_unit_ready(), 0);
    assert!(
        !wce(&mut ini),
        "the rolled-back volume lost its write cache setting"
    );
}

#[test]
fn the_write_cache_is_set_at_creation_and_changed_live() {
    let t = Target::start(&[]);
    t.cli_ok(&[
        "volume",
        "create",
        "ds01",
        "--size",
        "16M",
        "--no-write-cache",
    ]);
    let target = "iqn.2026-11.dev.shoal:ds01";
    let mut ini = RawInitiator::login_as(
        t.addr,
        "iqn.2026-11.test:esx1",
        support::initiator::isid(1),
        target,
        &[],
    );
    assert_eq!(ini.test_unit_ready(), 0);
    assert!(!wce(&mut ini), "created without write cache");
    let shown = t.cli_ok(&["volume", "show", "ds01", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["write_cache"], false);

    // Live: the session is told MODE PARAMETERS CHANGED, then sees WCE=1.
    t.cli_ok(&["volume", "set", "ds01", "--write-cache", "on"]);
    let r = ini.command(&[0x00, 0, 0, 0, 0, 0], 0, false, &[]);
    assert_eq!(
        r.sense(),
        Some((0x06, 0x2A, 0x01)),
        "MODE PARAMETERS CHANGED"
    );
    assert!(wce(&mut ini));
    t.cli_ok(&["volume", "set", "ds01", "--write-cache", "off"]);
    let _ = ini.command(&[0x00, 0, 0, 0, 0, 0], 0, false, &[]);
    assert!(!wce(&mut ini));
    drop(ini);

    // Kept across a restart.
    let data = t.kill();
    let t = Target::start_in(data, &[]);
    let mut ini = RawInitiator::login_as(
        t.addr,
        "iqn.2026-11.test:esx1",
        support::initiator::isid(2),
        target,
        &[],
    );
    assert_eq!(ini.test_unit_ready(), 0);
    assert!(!wce(&mut ini), "the setting survives a restart");
}
