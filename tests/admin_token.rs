//! The admin API off loopback: `shoal serve` refuses a non-loopback `--admin-listen` without a
//! token; with one, requests from this machine need none, and requests from another address
//! get 401 unless they carry `Authorization: Bearer TOKEN` (the CLI sends `SHOAL_ADMIN_TOKEN`).

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;
use support::{Target, run};

const TOKEN: &str = "admin-token-0123456789abcdef";

/// A non-loopback IPv4 address of this machine, if it has one: the source address the kernel
/// picks for a route off the machine (connecting a UDP socket sends nothing).
fn own_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn off_loopback_the_admin_api_asks_for_its_token() {
    // Without a token, a non-loopback admin address is refused at start.
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data")
            .arg(dir.path())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "0.0.0.0:0",
            ]),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("token"),
        "{stderr}"
    );

    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let t = Target::start(&[
        "--admin-listen",
        "0.0.0.0:0",
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]);
    // From this machine (the address file says 0.0.0.0: the CLI connects over loopback).
    t.cli_ok(&["volume", "list"]);
    let Some(own) = own_address() else {
        eprintln!("no non-loopback address here: the remote half is covered by unit tests");
        return;
    };
    let port = std::fs::read_to_string(t.dir.path().join("admin.addr"))
        .unwrap()
        .trim()
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .unwrap();
    let url = format!("http://{own}:{port}");
    let cli = |env: &[(&str, &str)]| {
        run(
            Command::new(env!("CARGO_BIN_EXE_shoal"))
                .args(["--admin", &url, "volume", "list"])
                .env_remove("SHOAL_ADMIN_TOKEN")
                .envs(env.iter().copied()),
            Duration::from_secs(20),
        )
    };
    let out = cli(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Bearer"),
        "no token: {stderr}"
    );
    let out = cli(&[("SHOAL_ADMIN_TOKEN", "admin-token-wrong-456789abcdef")]);
    assert!(!out.status.success(), "a wrong token is refused");
    let out = cli(&[("SHOAL_ADMIN_TOKEN", TOKEN)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));
}
