//! Crash consistency, the fast part for CI: `tools/crash-test` kills the real binary with
//! SIGKILL while fio (libiscsi engine, crc32c verify headers) writes and a loop creates and
//! deletes snapshots and clones, three times; after each kill `shoal check` must pass, and after
//! each restart every acknowledged write, snapshot and clone must read back (see the script's
//! header for the checks). The full run is `tools/crash-test --iterations 100`.

mod support;

use std::process::Command;
use std::time::Duration;
use support::run;

#[test]
fn sigkill_under_fio_and_snapshot_clone_churn_loses_nothing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/crash-test");
    // The binary cargo test just built: a nested `cargo build --release` could take minutes on
    // a cold cache. The script fails loudly when fio with the libiscsi engine or qemu-img is
    // missing (tools/fio-libiscsi builds that fio, tools/test installs qemu-img).
    let out = run(
        Command::new(script)
            .args(["--iterations", "3", "--seconds-per-run", "3"])
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_shoal")),
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tools/crash-test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("3 iterations ok"), "{stdout}\n{stderr}");
}
