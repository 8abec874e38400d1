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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        "[[volume]]\nname = \"default\"\nsize = \"64M\"\nwrite_cache = false\n",
    )
    .unwrap();
    let t = Target::start(&["--config", config.to_str().unwrap()]);
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
