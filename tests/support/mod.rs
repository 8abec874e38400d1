//! Test support: start the real `shoal` binary on an ephemeral loopback port with a temporary
//! data directory, find the libiscsi tools, and a minimal raw initiator for malformed input.

#![allow(dead_code)]

pub mod initiator;
pub mod scsi;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running target process, killed on drop.
pub struct Target {
    child: Child,
    /// Its portal.
    pub addr: SocketAddr,
    /// Its data directory.
    pub dir: tempfile::TempDir,
}

impl Target {
    /// Starts `shoal serve` with extra args on 127.0.0.1:0.
    pub fn start(extra: &[&str]) -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        Target::start_in(dir, extra)
    }

    /// Starts `shoal serve` with the TOML configuration `toml` (its file kept in the data
    /// directory).
    pub fn start_with_config(toml: &str) -> Target {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, toml).expect("write the config file");
        let path = path.to_str().expect("UTF-8 temp path").to_owned();
        Target::start_in(dir, &["--config", &path])
    }

    /// Starts `shoal serve` in an existing data directory.
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Target {
        Target::spawn(dir, extra, false)
    }

    /// Starts `shoal serve` with its stderr going to `<data>/stderr.log` (see
    /// [`Target::wait_for_stderr`]).
    pub fn start_logged(extra: &[&str]) -> Target {
        Target::spawn(tempfile::tempdir().expect("tempdir"), extra, true)
    }

    /// What the target wrote on stderr, once it contains `needle` (panics after `timeout`).
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> String {
        let start = std::time::Instant::now();
        loop {
            let text =
                std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                start.elapsed() < timeout,
                "{needle:?} not on the target's stderr within {timeout:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn spawn(dir: tempfile::TempDir, extra: &[&str], logged: bool) -> Target {
        let stderr = if logged {
            let file = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr.log");
            Stdio::from(file)
        } else {
            Stdio::inherit()
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data")
            .arg(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(if extra.contains(&"--size") {
                &[][..]
            } else {
                &["--size", "64M"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shoal");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("shoal exited before listening")
                .expect("read stdout");
            if let Some(rest) = line.strip_prefix("shoal: listening on ") {
                break rest.trim().parse().expect("portal address");
            }
        };
        // Keep draining stdout so the target never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Target { child, addr, dir }
    }

    /// `iscsi://127.0.0.1:PORT/iqn.2026-11.dev.shoal:VOLUME/0`
    pub fn url(&self, volume: &str) -> String {
        format!("iscsi://{}/iqn.2026-11.dev.shoal:{}/0", self.addr, volume)
    }

    /// Base URL of the admin API (`http://127.0.0.1:PORT`), from `<data>/admin.addr`.
    pub fn admin(&self) -> String {
        let addr = std::fs::read_to_string(self.dir.path().join("admin.addr")).expect("admin.addr");
        format!("http://{}", addr.trim())
    }

    /// The default volume's URL.
    pub fn default_url(&self) -> String {
        self.url("default")
    }

    /// `shoal --data <its data directory> ARGS` (the admin CLI), run to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(
            Command::new(env!("CARGO_BIN_EXE_shoal"))
                .arg("--data")
                .arg(self.dir.path())
                .args(args),
            Duration::from_secs(30),
        )
    }

    /// [`Target::cli`], asserting success; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a tool, or None when it is not installed (the test then fails loudly: the README's
/// test command installs them).
pub fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed: run the README's test command (tools/test), which installs it"
    );
}

/// Runs a command with a timeout, returning its output. Both pipes are drained while it runs
/// (a chatty tool must never block on a full pipe).
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tool");
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "command timed out after {timeout:?}: {cmd:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `shoal check` of the (stopped) pool in data directory `dir` must find nothing wrong.
pub fn check_pool(dir: &Path) {
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("--data")
            .arg(dir)
            .arg("check"),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "shoal check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a command and asserts success, returning stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let desc = format!("{cmd:?}");
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{desc} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
