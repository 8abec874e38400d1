//! CHAP against the real binary with libiscsi's clients (`iscsi-inq`, `iscsi-ls`): the right
//! name and secret log in, a wrong secret, a wrong name or no credentials do not; with mutual
//! CHAP the target proves it knows its own secret (libiscsi checks our answer); discovery asks
//! for the same credentials; bad settings are refused at start with a clear message.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{Target, run, tool};

const T: Duration = Duration::from_secs(30);
const SECRET: &str = "initiator-secret-1";
const TARGET_SECRET: &str = "target-secret-22";

/// A target requiring CHAP (`alice` / [`SECRET`]), with mutual credentials (`shoal` /
/// [`TARGET_SECRET`]) when `mutual`.
fn chap_target(mutual: bool) -> (Target, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut toml = format!("[chap]\nuser = \"alice\"\nsecret = \"{SECRET}\"\n");
    if mutual {
        toml += &format!("target_user = \"shoal\"\ntarget_secret = \"{TARGET_SECRET}\"\n");
    }
    let path = dir.path().join("shoal.toml");
    std::fs::write(&path, toml).unwrap();
    let t = Target::start_logged(&["--config", path.to_str().unwrap()]);
    (t, dir)
}

/// `iscsi-inq` of the default volume as `user%password` (no credentials when None), with
/// `env` set; whether it succeeded, and what it printed.
fn inq(t: &Target, creds: Option<&str>, env: &[(&str, &str)]) -> (bool, String) {
    let at = creds.map(|c| format!("{c}@")).unwrap_or_default();
    let url = format!("iscsi://{at}{}/iqn.2026-11.dev.shoal:default/0", t.addr);
    let out = run(
        Command::new(tool("iscsi-inq"))
            .arg(url)
            .envs(env.iter().copied()),
        T,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn only_the_right_credentials_log_in() {
    let (t, _dir) = chap_target(false);
    let (ok, text) = inq(&t, Some(&format!("alice%{SECRET}")), &[]);
    assert!(ok && text.contains("SHOAL"), "{text}");
    for creds in [
        Some("alice%wrong-secret-000".to_owned()),
        Some(format!("mallory%{SECRET}")),
        None,
    ] {
        let (ok, text) = inq(&t, creds.as_deref(), &[]);
        assert!(!ok, "{creds:?} logged in: {text}");
    }
    // The administrator sees why.
    let log = t.wait_for_stderr("refused: authentication failed: wrong CHAP", T);
    assert!(!log.contains(SECRET), "{log}");
    // Discovery asks for them too.
    let ls = |url: String| run(Command::new(tool("iscsi-ls")).arg(url), T);
    let good = ls(format!("iscsi://alice%{SECRET}@{}/", t.addr));
    let listed = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success() && listed.contains("shoal:default"),
        "{listed}"
    );
    assert!(!ls(format!("iscsi://{}/", t.addr)).status.success());
}

#[test]
fn mutual_chap_proves_the_target() {
    let (t, _dir) = chap_target(true);
    let creds = format!("alice%{SECRET}");
    let right = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "shoal"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET_SECRET),
    ];
    let (ok, text) = inq(&t, Some(&creds), &right);
    assert!(ok && text.contains("SHOAL"), "{text}");
    // The initiator expects another secret: our answer does not check out for it.
    let wrong = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "shoal"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "not-the-target-secret"),
    ];
    let (ok, text) = inq(&t, Some(&creds), &wrong);
    assert!(
        !ok,
        "accepted a target that does not know the expected secret: {text}"
    );
    // Without target credentials configured, a request for mutual CHAP is refused.
    let (t, _dir) = chap_target(false);
    let (ok, _) = inq(&t, Some(&creds), &right);
    assert!(!ok);
}

#[test]
fn chap_flags_and_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let t = Target::start(&[
        "--chap-user",
        "alice",
        "--chap-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    assert!(inq(&t, Some(&format!("alice%{SECRET}")), &[]).0);
    assert!(!inq(&t, None, &[]).0);
    // Too short a secret, and the same secret both ways: exit 2, the setting named, no secret
    // printed.
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort").unwrap();
    let same = dir.path().join("same.toml");
    std::fs::write(
        &same,
        format!(
            "[chap]\nuser = \"a\"\nsecret = \"{SECRET}\"\ntarget_user = \"t\"\n\
             target_secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let cases: [(Vec<&str>, &str); 2] = [
        (
            vec![
                "--chap-user",
                "alice",
                "--chap-secret-file",
                short.to_str().unwrap(),
            ],
            "12 to 255 bytes",
        ),
        (vec!["--config", same.to_str().unwrap()], "must differ"),
    ];
    for (args, why) in cases {
        let out = run(
            Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("--data")
                .arg(dir.path().join("data"))
                .arg("serve")
                .args(&args),
            T,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(why) && !err.contains("tooshort") && !err.contains(SECRET),
            "{err}"
        );
    }
}

#[test]
fn sighup_rereads_the_chap_settings() {
    let (t, dir) = chap_target(false);
    let path = dir.path().join("shoal.toml");
    let new_secret = "rotated-secret-2026";
    std::fs::write(
        &path,
        format!("[chap]\nuser = \"alice\"\nsecret = \"{new_secret}\"\n"),
    )
    .unwrap();
    let hup = || {
        // SAFETY: kill(2) on the target's pid with a signal number; no memory is involved.
        let rc = unsafe { libc::kill(t.pid() as i32, libc::SIGHUP) };
        assert_eq!(rc, 0);
    };
    hup();
    t.wait_for_stderr("configuration reloaded: CHAP required", T);
    assert!(inq(&t, Some(&format!("alice%{new_secret}")), &[]).0);
    assert!(
        !inq(&t, Some(&format!("alice%{SECRET}")), &[]).0,
        "the old secret still works"
    );
    // A broken file changes nothing.
    std::fs::write(&path, "[chap]\nuser = \"alice\"\nsecret = \"short\"\n").unwrap();
    hup();
    t.wait_for_stderr("configuration not reloaded", T);
    assert!(inq(&t, Some(&format!("alice%{new_secret}")), &[]).0);
}

/// `iscsi-inq` of `target` (a full IQN) as `user%password` (no credentials when None).
fn inq_target(t: &Target, target: &str, creds: Option<&str>, env: &[(&str, &str)]) -> bool {
    let at = creds.map(|c| format!("{c}@")).unwrap_or_default();
    let url = format!("iscsi://{at}{}/{target}/0", t.addr);
    run(
        Command::new(tool("iscsi-inq"))
            .arg(url)
            .envs(env.iter().copied()),
        T,
    )
    .status
    .success()
}

/// `shoal [before...] volume chap default --user bob --secret-file SECRET [after...]`.
fn volume_chap(t: &Target, secret: &str, before: &[&str], after: &[&str]) -> std::process::Output {
    let set = [
        "volume",
        "chap",
        "default",
        "--user",
        "bob",
        "--secret-file",
        secret,
    ];
    t.cli(&[before, &set, after].concat())
}

/// [`volume_chap`], asserting success; its stdout.
fn set_volume_chap(t: &Target, secret: &str, before: &[&str], after: &[&str]) -> String {
    let out = volume_chap(t, secret, before, after);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_volume_with_chap_of_its_own_asks_for_it_and_the_others_do_not() {
    const DEFAULT: &str = "iqn.2026-11.dev.shoal:default";
    const OTHER: &str = "iqn.2026-11.dev.shoal:other";
    const SNAPSHOT: &str = "iqn.2026-11.dev.shoal:default:s1";
    let t = Target::start_logged(&[]);
    t.cli_ok(&["volume", "create", "other", "--size", "16M"]);
    t.cli_ok(&["snapshot", "create", "default@s1"]);
    t.cli_ok(&["snapshot", "export", "default@s1"]);
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = files.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let secret = file("secret", &format!("{SECRET}\n"));
    let short = file("short", "tooshort");
    let target_secret = file("target-secret", TARGET_SECRET);

    // A secret under 12 bytes is refused with the rule; nothing changes.
    let out = volume_chap(&t, &short, &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("12 to 255"),
        "{stderr}"
    );
    assert!(inq_target(&t, DEFAULT, None, &[]));

    let info = set_volume_chap(&t, &secret, &["--json"], &[]);
    let shown: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(shown["user"] == "bob" && !info.contains(SECRET), "{info}");
    let volume = t.cli_ok(&["--json", "volume", "show", "default"]);
    assert!(
        volume.contains("\"chap_user\": \"bob\"") && !volume.contains(SECRET),
        "{volume}"
    );
    let bob = format!("bob%{SECRET}");
    assert!(
        inq_target(&t, DEFAULT, Some(&bob), &[]),
        "the right credentials"
    );
    assert!(!inq_target(&t, DEFAULT, None, &[]), "no credentials");
    assert!(!inq_target(&t, DEFAULT, Some("bob%wrong-secret-000"), &[]));
    assert!(
        !inq_target(&t, SNAPSHOT, None, &[]),
        "its exported snapshot too"
    );
    assert!(inq_target(&t, SNAPSHOT, Some(&bob), &[]));
    assert!(
        inq_target(&t, OTHER, None, &[]),
        "another volume stays open"
    );
    t.wait_for_stderr("refused: authentication failed", T);

    // Mutual CHAP with the volume's own target credentials.
    let mutual = [
        "--target-user",
        "vault",
        "--target-secret-file",
        &target_secret,
    ];
    set_volume_chap(&t, &secret, &[], &mutual);
    let proves = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "vault"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", TARGET_SECRET),
    ];
    assert!(inq_target(&t, DEFAULT, Some(&bob), &proves));
    let wrong = [
        ("LIBISCSI_CHAP_TARGET_USERNAME", "vault"),
        ("LIBISCSI_CHAP_TARGET_PASSWORD", "not-the-target-secret"),
    ];
    assert!(!inq_target(&t, DEFAULT, Some(&bob), &wrong));

    // Kept across kill -9, in a settings file only its owner can read.
    let dir = t.kill();
    let mode = std::fs::metadata(dir.path().join("settings.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let t = Target::start_in(dir, &[]);
    assert!(!inq_target(&t, DEFAULT, None, &[]));
    assert!(inq_target(&t, DEFAULT, Some(&bob), &[]));
    let info = t.cli_ok(&["--json", "volume", "chap", "default", "--off"]);
    let shown: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(shown["user"].is_null(), "{info}");
    assert!(inq_target(&t, DEFAULT, None, &[]), "open again");
}
