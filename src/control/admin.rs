//! The admin HTTP/JSON server: routes requests to an [`AdminBackend`], one at a time.
//!
//! The API is documented in `docs/admin-api.md`; its vocabulary lives in [`super::api`].
//!
//! Threads:
//! - `shoal-admin` executes admin operations strictly one after another: the backend never sees
//!   two concurrent calls. It never touches a socket.
//! - `shoal-admin-http` accepts requests from tiny_http and hands each to a short-lived
//!   `shoal-admin-io` thread, which checks it, reads its body, submits the operation to
//!   `shoal-admin` and writes the response. A slow, stalled or hostile client therefore holds up
//!   only its own I/O thread, and no input (a panic in a handler included) stops the server.
//!
//! The daemon publishes its address in `<data-dir>/admin.addr` ([`write_addr_file`]); the CLI
//! reads it back with [`read_addr_file`].

use super::api::{
    AccessInfo, AdminBackend, AdminError, CreateClone, CreateSnapshot, CreateSnapshotGroup,
    CreateVolume, ErrorBody, ErrorCode, Export, PoolSettings, Rename, Resize, SnapshotSchedule,
    StatsClass, StatsQuery, VolumeChap, VolumePatch,
};
use super::metrics;
use crate::cli::CliError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;
use thiserror::Error;

/// Default admin address: loopback, an ephemeral port (published in `admin.addr`).
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));

/// Name of the file, in the data directory, that holds the running daemon's admin address.
pub const ADDR_FILE: &str = "admin.addr";

/// Largest request body accepted (1 MiB); larger ones get 413.
pub const MAX_BODY: usize = 1 << 20;

/// A declared body up to this size that is refused is still read and discarded, so that the
/// client (which sends its body before reading the response) sees the 413. Above it the
/// connection is abandoned instead (see [`refuse_huge`]).
const DRAIN_LIMIT: usize = 16 << 20;

/// Why the admin server did not start.
#[derive(Debug, Error)]
pub enum AdminStartError {
    /// The address could not be bound.
    #[error("cannot listen for the admin API on {addr}: {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        reason: String,
    },
    /// A server thread could not be started.
    #[error("cannot start the admin API threads: {0}")]
    Thread(#[source] io::Error),
}

/// The running admin HTTP server. Dropping it shuts it down (like [`AdminServer::shutdown`]).
pub struct AdminServer {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    jobs: mpsc::Sender<Msg>,
    acceptor: Option<JoinHandle<()>>,
    executor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; [`DEFAULT_ADDR`] is loopback) and starts serving
    /// `backend`, one operation at a time, on a thread named `shoal-admin`.
    pub fn start(
        addr: SocketAddr,
        backend: Arc<dyn AdminBackend>,
    ) -> Result<AdminServer, AdminStartError> {
        Self::start_with_token(addr, backend, None)
    }

    /// [`AdminServer::start`], with requests from other machines (not loopback) accepted only
    /// with `Authorization: Bearer TOKEN` (without a token, refused).
    pub fn start_with_token(
        addr: SocketAddr,
        backend: Arc<dyn AdminBackend>,
        token: Option<String>,
    ) -> Result<AdminServer, AdminStartError> {
        let token: Arc<Option<String>> = Arc::new(token);
        let bind_error = |reason: String| AdminStartError::Bind { addr, reason };
        let listener = std::net::TcpListener::bind(addr).map_err(|e| bind_error(e.to_string()))?;
        set_nodelay(&listener);
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| bind_error(e.to_string()))?;
        let local = http.server_addr().to_ip().unwrap_or(addr);
        let http = Arc::new(http);
        let stop = Arc::new(AtomicBool::new(false));
        let (jobs, queue) = mpsc::channel();
        let executor = thread::Builder::new()
            .name("shoal-admin".into())
            .spawn(move || execute_loop(&*backend, &queue))
            .map_err(AdminStartError::Thread)?;
        let acceptor = {
            let http = Arc::clone(&http);
            let stop = Arc::clone(&stop);
            let jobs = jobs.clone();
            thread::Builder::new()
                .name("shoal-admin-http".into())
                .spawn(move || accept_loop(&http, &jobs, &stop, &token))
        };
        let acceptor = match acceptor {
            Ok(a) => a,
            Err(e) => {
                let _ = jobs.send(Msg::Stop);
                let _ = executor.join();
                return Err(AdminStartError::Thread(e));
            }
        };
        Ok(AdminServer {
            addr: local,
            http,
            stop,
            jobs,
            acceptor: Some(acceptor),
            executor: Some(executor),
        })
    }

    /// The bound address (with the actual port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting requests, lets the operation being executed finish, joins the threads and
    /// closes the listening socket. Requests still in flight get 503.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            self.stop.store(true, Ordering::SeqCst);
            self.http.unblock();
            let _ = acceptor.join();
        }
        if let Some(executor) = self.executor.take() {
            let _ = self.jobs.send(Msg::Stop);
            let _ = executor.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Path of the address file in `data_dir`.
pub fn addr_file(data_dir: &Path) -> PathBuf {
    data_dir.join(ADDR_FILE)
}

/// Publishes the admin address in `<data_dir>/admin.addr` (one line, `IP:PORT`), atomically:
/// a reader never sees a partial file.
pub fn write_addr_file(data_dir: &Path, addr: SocketAddr) -> io::Result<()> {
    let tmp = data_dir.join(format!(".{ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, addr_file(data_dir))
}

/// Removes `<data_dir>/admin.addr` (at daemon shutdown); a missing file is not an error.
pub fn remove_addr_file(data_dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(addr_file(data_dir)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads the admin address the daemon serving `data_dir` published. An unspecified address
/// (`0.0.0.0`, `::`) is replaced by loopback of the same family.
pub fn read_addr_file(data_dir: &Path) -> Result<SocketAddr, CliError> {
    let file = addr_file(data_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CliError::NoDaemon {
                data_dir: data_dir.to_path_buf(),
                file,
            });
        }
        Err(e) => {
            return Err(CliError::AddrFile {
                file,
                reason: e.to_string(),
            });
        }
    };
    let mut addr: SocketAddr = text.trim().parse().map_err(|_| CliError::AddrFile {
        file: file.clone(),
        reason: format!("expected IP:PORT, found {:?}", text.trim()),
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Serving

/// What the I/O threads send the executor.
enum Msg {
    /// An operation to run.
    Job(Job),
    /// Shut down.
    Stop,
}

/// One admin operation: a complete request and where to send its reply.
struct Job {
    method: String,
    target: String,
    body: Vec<u8>,
    reply: mpsc::SyncSender<Reply>,
}

/// `shoal-admin`: runs the operations one at a time.
fn execute_loop(backend: &dyn AdminBackend, queue: &mpsc::Receiver<Msg>) {
    while let Ok(Msg::Job(job)) = queue.recv() {
        let reply = catch_unwind(AssertUnwindSafe(|| {
            dispatch(backend, &job.method, &job.target, &job.body)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Reply::error(AdminError::new(
                ErrorCode::Internal,
                format!(
                    "internal error while serving {} {}: {what}",
                    job.method, job.target
                ),
            ))
        });
        let _ = job.reply.send(reply);
    }
}

/// `shoal-admin-http`: hands each request to its own I/O thread.
/// TCP_NODELAY on the listening socket, which Linux passes on to every accepted connection:
/// tiny_http writes a response's header and a body over 1 KiB in two `write`s, and with Nagle's
/// algorithm the second waits for the client's delayed ACK (40 ms per list request).
fn set_nodelay(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, reading a live c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!(
            "shoal: admin: TCP_NODELAY: {} (list requests may take 40 ms more)",
            std::io::Error::last_os_error()
        );
    }
}

fn accept_loop(
    http: &tiny_http::Server,
    jobs: &mpsc::Sender<Msg>,
    stop: &AtomicBool,
    token: &Arc<Option<String>>,
) {
    loop {
        let rq = http.recv();
        let stopping = stop.load(Ordering::SeqCst);
        match rq {
            Ok(rq) if stopping => spawn_io(rq, |rq| respond(rq, Reply::unavailable())),
            Ok(rq) => {
                let jobs = jobs.clone();
                let token = Arc::clone(token);
                spawn_io(rq, move |rq| serve_request(rq, &jobs, token.as_deref()));
            }
            Err(_) if stopping => {}
            // An accept error (e.g. out of file descriptors): back off a little.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
        if stopping {
            break;
        }
    }
}

/// `shoal-admin-io`: checks the request, reads its body, has the executor run it, responds.
fn serve_request(mut rq: tiny_http::Request, jobs: &mpsc::Sender<Msg>, token: Option<&str>) {
    let peer = rq.remote_addr().map(SocketAddr::ip);
    let authorization = rq
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_owned());
    // A request with the token may name the daemon by host name (DNS rebinding cannot forge
    // the token); any other must use an IP address or localhost.
    let with_token = carries_token(authorization.as_deref(), token);
    if let Some(reply) = check_headers(rq.headers(), !with_token) {
        respond(rq, reply);
        return;
    }
    if let Some(reply) = check_remote(peer, with_token, token.is_some()) {
        respond(rq, reply);
        return;
    }
    if rq.body_length().is_some_and(|n| n > DRAIN_LIMIT) {
        refuse_huge(rq);
        return;
    }
    let body = if has_body(&rq) {
        let mut body = Vec::new();
        let res = rq
            .as_reader()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body);
        match res {
            Ok(_) if body.len() > MAX_BODY => {
                respond(rq, Reply::too_large());
                return;
            }
            Ok(_) => body,
            Err(e) => {
                let reply = Reply::error(AdminError::new(
                    ErrorCode::InvalidArgument,
                    format!("cannot read the request body: {e}"),
                ));
                respond(rq, reply);
                return;
            }
        }
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::sync_channel(1);
    let job = Job {
        method: rq.method().as_str().to_owned(),
        target: rq.url().to_owned(),
        body,
        reply: tx,
    };
    let reply = match jobs.send(Msg::Job(job)) {
        Ok(()) => rx.recv().ok(),
        Err(_) => None,
    };
    respond(rq, reply.unwrap_or_else(Reply::unavailable));
}

fn respond(rq: tiny_http::Request, reply: Reply) {
    let _ = rq.respond(reply.into_response());
}

/// Refuses requests a browser could send on a web page's behalf (cross-site request forgery
/// and DNS rebinding against a loopback service): any request with an `Origin` header, and any
/// whose `Host` is a name other than `localhost` (unless `check_host` is false: the request
/// carries the admin token).
fn check_headers(headers: &[tiny_http::Header], check_host: bool) -> Option<Reply> {
    let refuse = |message: String| {
        Some(Reply::error_with_status(
            403,
            AdminError::new(ErrorCode::InvalidArgument, message),
        ))
    };
    for h in headers {
        if h.field.equiv("Origin") {
            return refuse(
                "requests from web browsers (with an Origin header) are refused by the admin API"
                    .into(),
            );
        }
        if check_host && h.field.equiv("Host") && !host_allowed(h.value.as_str()) {
            return refuse(format!(
                "Host {:?} refused: address the admin API by IP address or as localhost",
                h.value.as_str()
            ));
        }
        if h.field.equiv("Connection") && h.value.as_str().to_ascii_lowercase().contains("upgrade")
        {
            return Some(Reply::error(AdminError::new(
                ErrorCode::InvalidArgument,
                "protocol upgrades are not supported",
            )));
        }
    }
    None
}

/// Whether an `Authorization` header value is `Bearer TOKEN` with the daemon's admin token
/// (compared in the same time wherever the first difference is).
fn carries_token(authorization: Option<&str>, token: Option<&str>) -> bool {
    let given = authorization.and_then(|a| a.strip_prefix("Bearer "));
    matches!((token, given), (Some(token), Some(given))
        if same_secret(token.as_bytes(), given.trim().as_bytes()))
}

/// Requests from this machine (loopback) are the local administrator's; a request from another
/// machine must carry the daemon's admin token (`with_token`, see [`carries_token`]), and
/// without a token configured none is accepted (401).
fn check_remote(peer: Option<IpAddr>, with_token: bool, token_configured: bool) -> Option<Reply> {
    if with_token || peer.is_some_and(|ip| ip.is_loopback()) {
        return None;
    }
    if !token_configured {
        Some(Reply::error(AdminError::new(
            ErrorCode::Unauthorized,
            "the admin API takes requests from other machines only with an admin token \
             (serve --admin-token-file)",
        )))
    } else {
        Some(Reply::error(AdminError::new(
            ErrorCode::Unauthorized,
            "a request from another machine needs Authorization: Bearer <admin token>",
        )))
    }
}

/// Equal secrets, compared without an early exit.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` header names an IP address or localhost (with or without a port).
fn host_allowed(host: &str) -> bool {
    let host = host.trim();
    if host.parse::<SocketAddr>().is_ok() || host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<Ipv4Addr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<Ipv6Addr>().is_ok())
}

/// Whether tiny_http will hand us body bytes for this request.
fn has_body(rq: &tiny_http::Request) -> bool {
    match rq.body_length() {
        Some(n) => n > 0,
        None => rq
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding")),
    }
}

/// Answers a request whose declared body exceeds [`DRAIN_LIMIT`] without ever dropping its body
/// reader: tiny_http's reader, when dropped, allocates a buffer of the whole unread length to
/// discard it, which aborts the process for absurd lengths. The connection is abandoned (its
/// socket and tiny_http thread are leaked), a small price for one deliberately hostile request.
fn refuse_huge(rq: tiny_http::Request) {
    let stream = rq.upgrade("close", Reply::too_large().into_response());
    std::mem::forget(stream);
}

/// Runs `f(rq)` on a new `shoal-admin-io` thread. If no thread can be started the request is
/// dropped (tiny_http answers it 500), or leaked if dropping its body could abort the process.
fn spawn_io<F>(rq: tiny_http::Request, f: F)
where
    F: FnOnce(tiny_http::Request) + Send + 'static,
{
    let huge = rq.body_length().is_some_and(|n| n > DRAIN_LIMIT);
    let slot = Arc::new(std::sync::Mutex::new(Some(rq)));
    let theirs = Arc::clone(&slot);
    let spawned = thread::Builder::new()
        .name("shoal-admin-io".into())
        .spawn(move || {
            let rq = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(rq) = rq {
                f(rq);
            }
        });
    if spawned.is_err() {
        let rq = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if huge {
            std::mem::forget(rq);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses

/// A response, before it is turned into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: u16,
    /// JSON body (or text, see `content_type`); empty for 204.
    body: Vec<u8>,
    /// `Allow` header, for 405.
    allow: Option<&'static str>,
    /// `Content-Type` of a non-empty body.
    content_type: &'static str,
    /// File name offered for download (`Content-Disposition: attachment`).
    attachment: Option<String>,
}

impl Reply {
    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        match serde_json::to_vec_pretty(value) {
            Ok(mut body) => {
                body.push(b'\n');
                Reply {
                    status,
                    body,
                    ..Reply::no_content()
                }
            }
            Err(e) => Reply::error(AdminError::new(
                ErrorCode::Internal,
                format!("cannot encode the response: {e}"),
            )),
        }
    }

    fn no_content() -> Reply {
        Reply {
            status: 204,
            body: Vec::new(),
            allow: None,
            content_type: "application/json",
            attachment: None,
        }
    }

    /// A 200 text body.
    fn text(content_type: &'static str, body: String) -> Reply {
        Reply {
            status: 200,
            body: body.into_bytes(),
            content_type,
            ..Reply::no_content()
        }
    }

    fn error(error: AdminError) -> Reply {
        Reply::error_with_status(error.code.http_status(), error)
    }

    fn error_with_status(status: u16, error: AdminError) -> Reply {
        let body = ErrorBody { error };
        let mut body = serde_json::to_vec_pretty(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"cannot encode an error"}}"#.to_vec()
        });
        body.push(b'\n');
        Reply {
            status,
            body,
            ..Reply::no_content()
        }
    }

    fn unavailable() -> Reply {
        Reply::error_with_status(
            503,
            AdminError::new(ErrorCode::Internal, "the admin server is shutting down"),
        )
    }

    fn too_large() -> Reply {
        Reply::error_with_status(
            413,
            AdminError::new(
                ErrorCode::InvalidArgument,
                format!("request body larger than {MAX_BODY} bytes"),
            ),
        )
    }

    fn into_response(self) -> tiny_http::Response<io::Cursor<Vec<u8>>> {
        let has_body = !self.body.is_empty();
        let mut resp = tiny_http::Response::from_data(self.body).with_status_code(self.status);
        if has_body {
            add_header(&mut resp, "Content-Type", self.content_type);
        }
        if let Some(name) = &self.attachment {
            let value = format!("attachment; filename=\"{name}\"");
            add_header(&mut resp, "Content-Disposition", &value);
        }
        if let Some(allow) = self.allow {
            add_header(&mut resp, "Allow", allow);
        }
        if self.status == 401 {
            // RFC 9110 §11.6.1: a 401 names the scheme it wants.
            add_header(
                &mut resp,
                "WWW-Authenticate",
                "Bearer realm=\"shoal admin\"",
            );
        }
        resp
    }
}

fn add_header<R: Read>(resp: &mut tiny_http::Response<R>, field: &str, value: &str) {
    if let Ok(h) = tiny_http::Header::from_bytes(field.as_bytes(), value.as_bytes()) {
        resp.add_header(h);
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

/// A matched route, with its decoded path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Pool,
    Volumes,
    Volume(String),
    VolumeResize(String),
    VolumeRename(String),
    VolumeReservations(String),
    VolumeAccess(String),
    VolumeSchedule(String),
    VolumeChap(String),
    Snapshots,
    SnapshotGroups,
    Snapshot(String),
    SnapshotRollback(String),
    SnapshotExport(String),
    SnapshotDiff(String),
    Clones,
    Stats,
    /// `/v1/stats/{name}`: a volume's statistics (GET), or `reset` (POST).
    StatsEntry(String),
    StatsHistogram(String),
    StatsVolumeReset(String),
    Metrics,
    Sessions,
    /// `/v1/sessions/{tsih}`.
    Session(String),
}

impl Route {
    /// The methods this route answers, as for an `Allow` header.
    fn allow(&self) -> &'static str {
        match self {
            Route::Pool => "GET, PATCH",
            Route::Stats | Route::StatsHistogram(_) | Route::Metrics | Route::SnapshotDiff(_) => {
                "GET"
            }
            Route::VolumeReservations(_) => "GET, DELETE",
            Route::Sessions => "GET",
            Route::Session(_) => "DELETE",
            Route::VolumeAccess(_) => "GET, PUT",
            Route::VolumeSchedule(_) | Route::VolumeChap(_) => "GET, PUT, DELETE",
            Route::StatsEntry(name) if name == "reset" => "GET, POST",
            Route::StatsEntry(_) => "GET",
            Route::StatsVolumeReset(_) => "POST",
            Route::Volumes | Route::Snapshots => "GET, POST",
            Route::Volume(_) => "GET, PATCH, DELETE",
            Route::Snapshot(_) => "GET, DELETE",
            Route::VolumeResize(_)
            | Route::VolumeRename(_)
            | Route::SnapshotRollback(_)
            | Route::SnapshotExport(_)
            | Route::SnapshotGroups
            | Route::Clones => "POST",
        }
    }

    /// Query parameters this route accepts.
    fn params(&self, method: &str) -> &'static [&'static str] {
        match (self, method) {
            (Route::Volume(_), "DELETE") => &["force"],
            (Route::Snapshots | Route::Sessions, "GET") => &["volume"],
            (Route::Stats | Route::StatsEntry(_), "GET") => &["window"],
            (Route::StatsHistogram(_), "GET") => &["class", "window", "format"],
            (Route::StatsEntry(_), "POST") => &["volume"],
            (Route::SnapshotDiff(_), "GET") => &["base"],
            _ => &[],
        }
    }
}

/// Decoded query parameters, in order.
type Params = Vec<(String, String)>;

/// Splits a request target into its route and query parameters. `Ok(None)`: no such route.
fn parse_target(target: &str) -> Result<(Option<Route>, Params), AdminError> {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let route = parse_path(path)?;
    let mut params = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Ok((route, params))
}

fn parse_path(path: &str) -> Result<Option<Route>, AdminError> {
    let Some(path) = path.strip_prefix('/') else {
        return Ok(None);
    };
    let path = path.strip_suffix('/').unwrap_or(path);
    let segs = path
        .split('/')
        .map(|s| percent_decode(s, false))
        .collect::<Result<Vec<_>, _>>()?;
    if segs.iter().any(String::is_empty) {
        return Ok(None);
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let route = match segs.as_slice() {
        ["v1", "pool"] => Route::Pool,
        ["v1", "stats"] => Route::Stats,
        ["v1", "stats", name] => Route::StatsEntry(name.to_string()),
        ["v1", "stats", name, "histogram"] => Route::StatsHistogram(name.to_string()),
        ["v1", "stats", name, "reset"] => Route::StatsVolumeReset(name.to_string()),
        ["metrics"] => Route::Metrics,
        ["v1", "volumes"] => Route::Volumes,
        ["v1", "volumes", name] => Route::Volume(name.to_string()),
        ["v1", "volumes", name, "resize"] => Route::VolumeResize(name.to_string()),
        ["v1", "volumes", name, "rename"] => Route::VolumeRename(name.to_string()),
        ["v1", "volumes", name, "reservations"] => Route::VolumeReservations(name.to_string()),
        ["v1", "volumes", name, "access"] => Route::VolumeAccess(name.to_string()),
        ["v1", "volumes", name, "schedule"] => Route::VolumeSchedule(name.to_string()),
        ["v1", "volumes", name, "chap"] => Route::VolumeChap(name.to_string()),
        ["v1", "snapshots"] => Route::Snapshots,
        ["v1", "snapshot-groups"] => Route::SnapshotGroups,
        ["v1", "snapshots", snap] => Route::Snapshot(snap.to_string()),
        ["v1", "snapshots", snap, "rollback"] => Route::SnapshotRollback(snap.to_string()),
        ["v1", "snapshots", snap, "export"] => Route::SnapshotExport(snap.to_string()),
        ["v1", "snapshots", snap, "diff"] => Route::SnapshotDiff(snap.to_string()),
        ["v1", "clones"] => Route::Clones,
        ["v1", "sessions"] => Route::Sessions,
        ["v1", "sessions", tsih] => Route::Session(tsih.to_string()),
        _ => return Ok(None),
    };
    Ok(Some(route))
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); the result must be UTF-8.
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, AdminError> {
    let bad = || {
        AdminError::new(
            ErrorCode::InvalidArgument,
            format!("malformed percent-encoding in {s:?}"),
        )
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Splits `VOLUME@SNAP`.
fn split_snapshot(s: &str) -> Result<(&str, &str), AdminError> {
    match s.split_once('@') {
        Some((v, n)) if !v.is_empty() && !n.is_empty() => Ok((v, n)),
        _ => Err(AdminError::new(
            ErrorCode::InvalidArgument,
            format!("invalid snapshot {s:?}: expected VOLUME@SNAPSHOT"),
        )),
    }
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| {
        AdminError::new(
            ErrorCode::InvalidArgument,
            format!("invalid request body: {e}"),
        )
    })
}

/// `?window=N`: the last N seconds (the backend checks the range).
fn parse_window(v: Option<&str>) -> Result<Option<u32>, AdminError> {
    match v {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            AdminError::new(
                ErrorCode::InvalidArgument,
                format!("invalid query parameter window={v:?}: expected a number of seconds"),
            )
        }),
    }
}

fn class_param(class: StatsClass) -> &'static str {
    match class {
        StatsClass::Read => "read",
        StatsClass::Write => "write",
        StatsClass::Other => "other",
        StatsClass::All => "all",
    }
}

fn parse_bool(name: &str, v: &str) -> Result<bool, AdminError> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(AdminError::new(
            ErrorCode::InvalidArgument,
            format!("invalid query parameter {name}={v:?}: expected true or false"),
        )),
    }
}

/// Routes one request to the backend. Pure apart from the backend call: unit-testable.
fn dispatch(backend: &dyn AdminBackend, method: &str, target: &str, body: &[u8]) -> Reply {
    match route_and_call(backend, method, target, body) {
        Ok(reply) => reply,
        Err(reply) => reply,
    }
}

fn route_and_call(
    backend: &dyn AdminBackend,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<Reply, Reply> {
    let (route, params) = parse_target(target).map_err(Reply::error)?;
    let Some(route) = route else {
        return Err(Reply::error(AdminError::new(
            ErrorCode::NotFound,
            format!("no such route: {method} {target}"),
        )));
    };
    let allowed = route.allow().split(", ").any(|m| m == method);
    if !allowed {
        let mut reply = Reply::error_with_status(
            405,
            AdminError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "method {method} not allowed on {target} (allowed: {})",
                    route.allow()
                ),
            ),
        );
        reply.allow = Some(route.allow());
        return Err(reply);
    }
    let accepted = route.params(method);
    if let Some((k, _)) = params.iter().find(|(k, _)| !accepted.contains(&k.as_str())) {
        return Err(Reply::error(AdminError::new(
            ErrorCode::InvalidArgument,
            format!("unknown query parameter {k:?} for {method} {target}"),
        )));
    }
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let err = Reply::error;
    let reply = match (method, &route) {
        ("GET", Route::Pool) => Reply::json(200, &backend.pool_status().map_err(err)?),
        ("PATCH", Route::Pool) => {
            let req: PoolSettings = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.update_pool(&req).map_err(err)?)
        }
        ("GET", Route::Stats) => {
            let query = StatsQuery {
                volume: None,
                window: parse_window(param("window")).map_err(err)?,
            };
            Reply::json(200, &backend.stats(&query).map_err(err)?)
        }
        ("GET", Route::StatsEntry(name)) => {
            let query = StatsQuery {
                volume: Some(name.clone()),
                window: parse_window(param("window")).map_err(err)?,
            };
            Reply::json(200, &backend.stats(&query).map_err(err)?)
        }
        ("POST", Route::StatsEntry(_)) => {
            let volume = match param("volume") {
                Some("") => {
                    return Err(err(AdminError::new(
                        ErrorCode::InvalidArgument,
                        "empty query parameter volume",
                    )));
                }
                v => v,
            };
            Reply::json(200, &backend.reset_stats(volume).map_err(err)?)
        }
        ("POST", Route::StatsVolumeReset(name)) => {
            Reply::json(200, &backend.reset_stats(Some(name)).map_err(err)?)
        }
        ("GET", Route::StatsHistogram(name)) => {
            let class = match param("class") {
                None => StatsClass::All,
                Some(c) => c
                    .parse()
                    .map_err(|m: String| err(AdminError::new(ErrorCode::InvalidArgument, m)))?,
            };
            let window = parse_window(param("window")).map_err(err)?;
            let report = backend.stats_histogram(name, class, window).map_err(err)?;
            match param("format") {
                None | Some("json") => Reply::json(200, &report),
                Some("hlog") => {
                    let file = format!("{}-{}.hlog", report.volume, class_param(class));
                    let mut reply = Reply::text("text/plain; charset=utf-8", report.interval_log);
                    reply.attachment = Some(file.replace(['"', '/', '\\'], "_"));
                    reply
                }
                Some(other) => {
                    return Err(err(AdminError::new(
                        ErrorCode::InvalidArgument,
                        format!("invalid format {other:?}: expected json or hlog"),
                    )));
                }
            }
        }
        ("GET", Route::Metrics) => {
            let query = StatsQuery {
                volume: None,
                window: Some(metrics::METRICS_WINDOW_SECS),
            };
            let stats = backend.stats(&query).map_err(err)?;
            let pool = backend.pool_status().map_err(err)?;
            // Not `list_volumes`: its usage figures walk every served volume's map.
            let sessions = backend.session_counts().map_err(err)?;
            Reply::text(
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::prometheus(&stats, &pool, &sessions),
            )
        }
        ("GET", Route::Sessions) => {
            Reply::json(200, &backend.sessions(param("volume")).map_err(err)?)
        }
        ("DELETE", Route::Session(tsih)) => {
            let tsih = tsih.parse::<u16>().map_err(|_| {
                err(AdminError::new(
                    ErrorCode::InvalidArgument,
                    format!("invalid TSIH {tsih:?}: expected a number from 0 to 65535"),
                ))
            })?;
            backend.drop_session(tsih).map_err(err)?;
            Reply::no_content()
        }
        ("GET", Route::Volumes) => Reply::json(200, &backend.list_volumes().map_err(err)?),
        ("POST", Route::Volumes) => {
            let req: CreateVolume = parse_body(body).map_err(err)?;
            Reply::json(201, &backend.create_volume(&req).map_err(err)?)
        }
        ("GET", Route::Volume(name)) => Reply::json(200, &backend.volume(name).map_err(err)?),
        ("PATCH", Route::Volume(name)) => {
            let req: VolumePatch = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.update_volume(name, &req).map_err(err)?)
        }
        ("DELETE", Route::Volume(name)) => {
            let force = match param("force") {
                Some(v) => parse_bool("force", v).map_err(err)?,
                None => false,
            };
            backend.delete_volume(name, force).map_err(err)?;
            Reply::no_content()
        }
        ("GET", Route::VolumeAccess(name)) => Reply::json(200, &backend.access(name).map_err(err)?),
        ("PUT", Route::VolumeAccess(name)) => {
            let req: AccessInfo = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.set_access(name, &req).map_err(err)?)
        }
        ("GET", Route::VolumeChap(name)) => Reply::json(200, &backend.chap(name).map_err(err)?),
        ("PUT", Route::VolumeChap(name)) => {
            let req: VolumeChap = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.set_chap(name, Some(req)).map_err(err)?)
        }
        ("DELETE", Route::VolumeChap(name)) => {
            Reply::json(200, &backend.set_chap(name, None).map_err(err)?)
        }
        ("GET", Route::VolumeSchedule(name)) => {
            Reply::json(200, &backend.snapshot_schedule(name).map_err(err)?)
        }
        ("PUT", Route::VolumeSchedule(name)) => {
            let req: SnapshotSchedule = parse_body(body).map_err(err)?;
            Reply::json(
                200,
                &backend
                    .set_snapshot_schedule(name, Some(req))
                    .map_err(err)?,
            )
        }
        ("DELETE", Route::VolumeSchedule(name)) => Reply::json(
            200,
            &backend.set_snapshot_schedule(name, None).map_err(err)?,
        ),
        ("GET", Route::VolumeReservations(name)) => {
            Reply::json(200, &backend.reservations(name, false).map_err(err)?)
        }
        ("DELETE", Route::VolumeReservations(name)) => {
            Reply::json(200, &backend.reservations(name, true).map_err(err)?)
        }
        ("POST", Route::VolumeResize(name)) => {
            let req: Resize = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.resize_volume(name, &req).map_err(err)?)
        }
        ("POST", Route::VolumeRename(name)) => {
            let req: Rename = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.rename_volume(name, &req).map_err(err)?)
        }
        ("GET", Route::Snapshots) => {
            let volume = param("volume");
            if volume == Some("") {
                return Err(err(AdminError::new(
                    ErrorCode::InvalidArgument,
                    "empty query parameter volume",
                )));
            }
            Reply::json(200, &backend.list_snapshots(volume).map_err(err)?)
        }
        ("POST", Route::Snapshots) => {
            let req: CreateSnapshot = parse_body(body).map_err(err)?;
            Reply::json(201, &backend.create_snapshot(&req).map_err(err)?)
        }
        ("POST", Route::SnapshotGroups) => {
            let req: CreateSnapshotGroup = parse_body(body).map_err(err)?;
            Reply::json(201, &backend.create_snapshot_group(&req).map_err(err)?)
        }
        ("GET", Route::Snapshot(s)) => {
            let (vol, snap) = split_snapshot(s).map_err(err)?;
            let all = backend.list_snapshots(Some(vol)).map_err(err)?;
            let wanted = format!("{vol}@{snap}");
            match all.into_iter().find(|i| i.name == wanted) {
                Some(info) => Reply::json(200, &info),
                None => {
                    return Err(err(AdminError::new(
                        ErrorCode::NotFound,
                        format!("no snapshot {wanted:?}"),
                    )));
                }
            }
        }
        ("DELETE", Route::Snapshot(s)) => {
            let (vol, snap) = split_snapshot(s).map_err(err)?;
            backend.delete_snapshot(vol, snap).map_err(err)?;
            Reply::no_content()
        }
        ("POST", Route::SnapshotRollback(s)) => {
            let (vol, snap) = split_snapshot(s).map_err(err)?;
            Reply::json(200, &backend.rollback(vol, snap).map_err(err)?)
        }
        ("GET", Route::SnapshotDiff(s)) => {
            let (vol, snap) = split_snapshot(s).map_err(err)?;
            let base = param("base").map(split_snapshot).transpose().map_err(err)?;
            Reply::json(200, &backend.snapshot_diff(vol, snap, base).map_err(err)?)
        }
        ("POST", Route::SnapshotExport(s)) => {
            let (vol, snap) = split_snapshot(s).map_err(err)?;
            let req: Export = parse_body(body).map_err(err)?;
            Reply::json(200, &backend.export_snapshot(vol, snap, &req).map_err(err)?)
        }
        ("POST", Route::Clones) => {
            let req: CreateClone = parse_body(body).map_err(err)?;
            Reply::json(201, &backend.create_clone(&req).map_err(err)?)
        }
        _ => {
            return Err(err(AdminError::new(
                ErrorCode::Internal,
                format!("route {method} {target} has no handler"),
            )));
        }
    };
    Ok(reply)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_request_with_the_token_may_name_the_daemon_by_host_name() {
        let host: tiny_http::Header = "Host: san1.example:7000".parse().unwrap();
        let origin: tiny_http::Header = "Origin: http://evil.example".parse().unwrap();
        assert!(check_headers(std::slice::from_ref(&host), true).is_some());
        assert!(check_headers(std::slice::from_ref(&host), false).is_none());
        assert!(
            check_headers(&[host, origin], false).is_some(),
            "browsers are refused"
        );
    }

    #[test]
    fn other_machines_need_the_admin_token_and_this_one_does_not() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let local6: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let token = Some("s3cret-token-0123456789");
        let status = |r: Option<Reply>| {
            r.map(|r| {
                let resp = r.into_response();
                let challenge = resp
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("WWW-Authenticate"))
                    .map(|h| h.value.to_string());
                assert!(
                    challenge.is_some_and(|c| c.starts_with("Bearer ")),
                    "a 401 names its scheme"
                );
                resp.status_code().0
            })
        };
        let check_remote = |peer, authorization, token: Option<&str>| {
            check_remote(peer, carries_token(authorization, token), token.is_some())
        };
        assert_eq!(status(check_remote(Some(local), None, None)), None);
        assert_eq!(status(check_remote(Some(local6), None, token)), None);
        assert_eq!(status(check_remote(Some(remote), None, None)), Some(401));
        assert_eq!(status(check_remote(Some(remote), None, token)), Some(401));
        let wrong = Some("Bearer s3cret-token-0123456788");
        assert_eq!(status(check_remote(Some(remote), wrong, token)), Some(401));
        let right = Some("Bearer s3cret-token-0123456789");
        assert_eq!(status(check_remote(Some(remote), right, token)), None);
        assert_eq!(
            status(check_remote(
                Some(remote),
                Some("s3cret-token-0123456789"),
                token
            )),
            Some(401),
            "the Bearer scheme is required"
        );
        assert_eq!(status(check_remote(None, right, token)), None);
        assert_eq!(
            status(check_remote(None, None, token)),
            Some(401),
            "unknown peer"
        );
        assert!(same_secret(b"abc", b"abc") && !same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
    use crate::control::api::{
        HistogramReport, PoolStatus, ResetReport, SessionInfo, SnapshotInfo, StatsReport,
        VolumeInfo,
    };
    use std::sync::Mutex;

    /// Records the last call; answers `not_found` for every named object. Its sessions are a
    /// fixed list: TSIH 3 to `vm1`, none to `vm2`.
    struct Recorder {
        calls: Mutex<Vec<String>>,
        sessions: Vec<SessionInfo>,
        /// The TSIHs `drop_session` ended.
        dropped: Mutex<Vec<u16>>,
    }

    impl Default for Recorder {
        fn default() -> Self {
            Recorder {
                calls: Mutex::default(),
                sessions: vec![SessionInfo {
                    tsih: 3,
                    volume: "vm1".into(),
                    target: "iqn.2026-11.dev.shoal:vm1".into(),
                    initiator: "iqn.1998-01.com.vmware:esx1".into(),
                    isid: "400001370000".into(),
                    initiator_alias: None,
                    peer: None,
                    logged_in_at: None,
                    header_digest: false,
                    data_digest: false,
                    shard: 0,
                }],
                dropped: Mutex::default(),
            }
        }
    }

    impl Recorder {
        /// The volumes it knows of (for sessions).
        const VOLUMES: [&str; 2] = ["vm1", "vm2"];

        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
        fn last(&self) -> String {
            self.calls
                .lock()
                .unwrap()
                .last()
                .cloned()
                .unwrap_or_default()
        }
        fn missing<T>(&self, call: String) -> Result<T, AdminError> {
            self.record(call.clone());
            Err(AdminError::new(ErrorCode::NotFound, call))
        }
    }

    /// A served thin volume of 1 GiB with default settings (shared with the CLI's tests).
    pub(crate) fn volume(name: &str) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            target: format!("iqn.2026-11.dev.shoal:{name}"),
            size_bytes: 1 << 30,
            block_size: 512,
            thin: true,
            mapped_bytes: 0,
            exclusive_bytes: 0,
            reserved_bytes: 0,
            shard: Some(0),
            origin: None,
            snapshots: 0,
            sessions: 0,
            naa: "6".into(),
            created: 0,
            initiators: Vec::new(),
            write_cache: true,
            snapshot_schedule: None,
            chap_user: None,
            iops_limit: None,
            bandwidth_limit: None,
            read_only: false,
        }
    }

    impl AdminBackend for Recorder {
        fn pool_status(&self) -> Result<PoolStatus, AdminError> {
            self.record("pool_status".into());
            Ok(PoolStatus {
                size_bytes: 1,
                used_bytes: 0,
                free_bytes: 1,
                reserved_bytes: 0,
                extent_size: 65536,
                soft_threshold_percent: 85,
                volumes: 0,
                snapshots: 0,
            })
        }
        fn update_pool(&self, req: &PoolSettings) -> Result<PoolStatus, AdminError> {
            self.record(format!(
                "update_pool {:?} {:?}",
                req.soft_threshold_percent, req.size_bytes
            ));
            self.pool_status()
        }
        fn list_volumes(&self) -> Result<Vec<VolumeInfo>, AdminError> {
            self.record("list_volumes".into());
            Ok(vec![])
        }
        fn volume(&self, name: &str) -> Result<VolumeInfo, AdminError> {
            self.missing(format!("volume {name}"))
        }
        fn create_volume(&self, req: &CreateVolume) -> Result<VolumeInfo, AdminError> {
            self.record(format!("create_volume {} {}", req.name, req.size_bytes));
            Ok(volume(&req.name))
        }
        fn resize_volume(&self, name: &str, req: &Resize) -> Result<VolumeInfo, AdminError> {
            self.missing(format!("resize_volume {name} {}", req.size_bytes))
        }
        fn delete_volume(&self, name: &str, force: bool) -> Result<(), AdminError> {
            self.record(format!("delete_volume {name} {force}"));
            Ok(())
        }
        fn list_snapshots(&self, volume: Option<&str>) -> Result<Vec<SnapshotInfo>, AdminError> {
            self.record(format!("list_snapshots {volume:?}"));
            Ok(vec![])
        }
        fn create_snapshot(&self, req: &CreateSnapshot) -> Result<SnapshotInfo, AdminError> {
            self.missing(format!("create_snapshot {}@{}", req.volume, req.name))
        }
        fn create_snapshot_group(
            &self,
            req: &CreateSnapshotGroup,
        ) -> Result<Vec<SnapshotInfo>, AdminError> {
            self.missing(format!("create_snapshot_group {}", req.snapshots.join(",")))
        }
        fn delete_snapshot(&self, volume: &str, snapshot: &str) -> Result<(), AdminError> {
            self.record(format!("delete_snapshot {volume} {snapshot}"));
            Ok(())
        }
        fn rollback(&self, volume: &str, snapshot: &str) -> Result<VolumeInfo, AdminError> {
            self.record(format!("rollback {volume} {snapshot}"));
            Ok(super::tests::volume(volume))
        }
        fn export_snapshot(
            &self,
            volume: &str,
            snapshot: &str,
            req: &Export,
        ) -> Result<SnapshotInfo, AdminError> {
            self.missing(format!("export {volume} {snapshot} {}", req.enabled))
        }
        fn create_clone(&self, req: &CreateClone) -> Result<VolumeInfo, AdminError> {
            self.record(format!("create_clone {} {}", req.source, req.name));
            if req.name == "boom" {
                panic!("boom");
            }
            Ok(volume(&req.name))
        }
        fn stats(&self, query: &StatsQuery) -> Result<StatsReport, AdminError> {
            self.record(format!("stats {:?} {:?}", query.volume, query.window));
            if query.volume.as_deref() == Some("nope") {
                return Err(AdminError::new(ErrorCode::NotFound, "no served volume"));
            }
            Ok(StatsReport::default())
        }
        fn stats_histogram(
            &self,
            volume: &str,
            class: StatsClass,
            window: Option<u32>,
        ) -> Result<HistogramReport, AdminError> {
            self.record(format!("stats_histogram {volume} {class:?} {window:?}"));
            Ok(HistogramReport {
                volume: volume.into(),
                target: "t".into(),
                window_seconds: window,
                start_time: 0.0,
                seconds: 1.0,
                histograms: vec![],
                interval_log: "#[Histogram log format version 1.3]\n".into(),
            })
        }
        fn reset_stats(&self, volume: Option<&str>) -> Result<ResetReport, AdminError> {
            self.record(format!("reset_stats {volume:?}"));
            Ok(ResetReport::default())
        }
        fn sessions(&self, volume: Option<&str>) -> Result<Vec<SessionInfo>, AdminError> {
            if let Some(v) = volume
                && !Self::VOLUMES.contains(&v)
            {
                return self.missing(format!("sessions {volume:?}"));
            }
            self.record(format!("sessions {volume:?}"));
            Ok(self
                .sessions
                .iter()
                .filter(|s| volume.is_none_or(|v| s.volume == v))
                .cloned()
                .collect())
        }
        fn session_counts(&self) -> Result<Vec<(String, u64)>, AdminError> {
            self.record("session_counts".into());
            Ok(Self::VOLUMES
                .iter()
                .map(|v| {
                    let n = self.sessions.iter().filter(|s| s.volume == *v).count();
                    (v.to_string(), n as u64)
                })
                .collect())
        }
        fn drop_session(&self, tsih: u16) -> Result<(), AdminError> {
            if !self.sessions.iter().any(|s| s.tsih == tsih) {
                return self.missing(format!("drop_session {tsih}"));
            }
            self.record(format!("drop_session {tsih}"));
            self.dropped.lock().unwrap().push(tsih);
            Ok(())
        }
    }

    fn code(reply: &Reply) -> ErrorCode {
        let body: ErrorBody = serde_json::from_slice(&reply.body).unwrap();
        body.error.code
    }

    #[test]
    fn routes_parse() {
        let r = |p: &str| parse_target(p).unwrap().0;
        assert_eq!(r("/v1/pool"), Some(Route::Pool));
        assert_eq!(r("/v1/pool/"), Some(Route::Pool));
        assert_eq!(r("/v1/stats"), Some(Route::Stats));
        assert_eq!(r("/v1/stats/vm1"), Some(Route::StatsEntry("vm1".into())));
        assert_eq!(
            r("/v1/stats/vm1/histogram?class=read"),
            Some(Route::StatsHistogram("vm1".into()))
        );
        assert_eq!(
            r("/v1/stats/vm1/reset"),
            Some(Route::StatsVolumeReset("vm1".into()))
        );
        assert_eq!(r("/metrics"), Some(Route::Metrics));
        assert_eq!(r("/v1/volumes"), Some(Route::Volumes));
        assert_eq!(r("/v1/volumes/vm1"), Some(Route::Volume("vm1".into())));
        assert_eq!(
            r("/v1/volumes/vm%31/resize"),
            Some(Route::VolumeResize("vm1".into()))
        );
        assert_eq!(r("/v1/snapshots?volume=a"), Some(Route::Snapshots));
        assert_eq!(
            r("/v1/snapshots/a%40b"),
            Some(Route::Snapshot("a@b".into()))
        );
        assert_eq!(
            r("/v1/snapshots/a@b/rollback"),
            Some(Route::SnapshotRollback("a@b".into()))
        );
        assert_eq!(
            r("/v1/snapshots/a@b/export"),
            Some(Route::SnapshotExport("a@b".into()))
        );
        assert_eq!(r("/v1/clones"), Some(Route::Clones));
        assert_eq!(r("/v1/sessions?volume=a"), Some(Route::Sessions));
        assert_eq!(r("/v1/sessions/7"), Some(Route::Session("7".into())));
        assert_eq!(
            r("/v1/volumes/a%2Fb"),
            Some(Route::Volume("a/b".into())),
            "an encoded slash stays inside its segment"
        );
        for missing in [
            "",
            "v1/pool",
            "/",
            "/v1",
            "/v2/pool",
            "/v1/pools",
            "/v1//pool",
            "/v1/volumes//resize",
            "/v1/volumes/a/b",
            "/v1/volumes/a/resize/x",
            "http://localhost/v1/pool",
        ] {
            assert_eq!(r(missing), None, "{missing}");
        }
        for bad in [
            "/v1/volumes/%",
            "/v1/volumes/%4",
            "/v1/volumes/%zz",
            "/v1/volumes/%ff",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
        let (_, q) = parse_target("/v1/snapshots?volume=a+b%21&x&").unwrap();
        assert_eq!(
            q,
            vec![("volume".into(), "a b!".into()), ("x".into(), "".into())]
        );
    }

    #[test]
    fn dispatch_calls_the_backend() {
        let b = Recorder::default();
        let d = |m: &str, t: &str, body: &str| dispatch(&b, m, t, body.as_bytes());

        assert_eq!(d("GET", "/v1/pool", "").status, 200);
        assert_eq!(b.last(), "pool_status");
        assert_eq!(d("GET", "/v1/stats", "").status, 200);
        assert_eq!(b.last(), "stats None None");
        assert_eq!(d("GET", "/v1/stats?window=10", "").status, 200);
        assert_eq!(b.last(), "stats None Some(10)");
        assert_eq!(d("GET", "/v1/stats/vm1?window=1", "").status, 200);
        assert_eq!(b.last(), r#"stats Some("vm1") Some(1)"#);
        // A volume named "reset" is still readable; POST resets.
        assert_eq!(d("GET", "/v1/stats/reset", "").status, 200);
        assert_eq!(b.last(), r#"stats Some("reset") None"#);
        assert_eq!(d("POST", "/v1/stats/reset", "").status, 200);
        assert_eq!(b.last(), "reset_stats None");
        assert_eq!(d("POST", "/v1/stats/reset?volume=vm1", "").status, 200);
        assert_eq!(b.last(), r#"reset_stats Some("vm1")"#);
        assert_eq!(d("POST", "/v1/stats/vm2/reset", "").status, 200);
        assert_eq!(b.last(), r#"reset_stats Some("vm2")"#);
        let r = d("GET", "/v1/stats/vm1/histogram?class=write&window=5", "");
        assert_eq!(r.status, 200);
        assert_eq!(b.last(), "stats_histogram vm1 Write Some(5)");
        let r = d("GET", "/v1/stats/vm1/histogram?format=hlog", "");
        assert_eq!(
            (r.status, r.content_type),
            (200, "text/plain; charset=utf-8")
        );
        assert_eq!(r.attachment.as_deref(), Some("vm1-all.hlog"));
        assert!(r.body.starts_with(b"#[Histogram log format version 1.3]"));
        assert_eq!(b.last(), "stats_histogram vm1 All None");
        let r = d("GET", "/metrics", "");
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
        assert_eq!(
            b.last(),
            "session_counts",
            "sessions per volume come last, from session_counts"
        );
        assert!(
            !b.calls.lock().unwrap().iter().any(|c| c == "list_volumes"),
            "a scrape walks no volume's map"
        );
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.contains("shoal_pool_bytes{state=\"free\"} 1\n"));
        assert!(
            text.contains("shoal_sessions{volume=\"vm1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_sessions{volume=\"vm2\"} 0\n"),
            "{text}"
        );
        let r = d("GET", "/v1/sessions", "");
        assert_eq!(r.status, 200);
        assert_eq!(b.last(), "sessions None");
        let all: Vec<SessionInfo> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(all, b.sessions);
        let r = d("GET", "/v1/sessions?volume=vm1", "");
        assert_eq!(r.status, 200);
        assert_eq!(b.last(), r#"sessions Some("vm1")"#);
        let one: Vec<SessionInfo> = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(one.iter().map(|s| s.tsih).collect::<Vec<_>>(), [3]);
        let r = d("GET", "/v1/sessions?volume=vm2", "");
        assert_eq!(r.status, 200);
        let none: Vec<SessionInfo> = serde_json::from_slice(&r.body).unwrap();
        assert!(none.is_empty());
        let r = d("GET", "/v1/sessions?volume=nope", "");
        assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
        assert_eq!(d("DELETE", "/v1/sessions/x", "").status, 400);
        assert_eq!(d("DELETE", "/v1/sessions/70000", "").status, 400);
        let r = d("DELETE", "/v1/sessions/7", "");
        assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
        assert_eq!(b.last(), "drop_session 7", "the backend's own answer");
        let r = d("DELETE", "/v1/sessions/3", "");
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert_eq!(b.last(), "drop_session 3");
        assert_eq!(*b.dropped.lock().unwrap(), [3]);
        assert_eq!(d("POST", "/v1/sessions", "").status, 405);
        assert_eq!(d("GET", "/v1/volumes", "").status, 200);
        assert_eq!(b.last(), "list_volumes");
        let r = d("POST", "/v1/volumes", r#"{"name":"a","size_bytes":4096}"#);
        assert_eq!(r.status, 201);
        assert_eq!(b.last(), "create_volume a 4096");
        let v: VolumeInfo = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v.name, "a");
        let r = d("GET", "/v1/volumes/nope", "");
        assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
        let r = d("DELETE", "/v1/volumes/a?force=true", "");
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert_eq!(b.last(), "delete_volume a true");
        d("DELETE", "/v1/volumes/a", "");
        assert_eq!(b.last(), "delete_volume a false");
        d("DELETE", "/v1/volumes/a?force", "");
        assert_eq!(b.last(), "delete_volume a true");
        d("DELETE", "/v1/volumes/a?force=false", "");
        assert_eq!(b.last(), "delete_volume a false");
        let r = d("DELETE", "/v1/volumes/a?force=maybe", "");
        assert_eq!((r.status, code(&r)), (400, ErrorCode::InvalidArgument));
        d("POST", "/v1/volumes/a/resize", r#"{"size_bytes":8192}"#);
        assert_eq!(b.last(), "resize_volume a 8192");
        d("GET", "/v1/snapshots", "");
        assert_eq!(b.last(), "list_snapshots None");
        d("GET", "/v1/snapshots?volume=a", "");
        assert_eq!(b.last(), r#"list_snapshots Some("a")"#);
        let r = d("GET", "/v1/snapshots?volume=", "");
        assert_eq!(r.status, 400);
        d("POST", "/v1/snapshots", r#"{"volume":"a","name":"s"}"#);
        assert_eq!(b.last(), "create_snapshot a@s");
        let r = d("GET", "/v1/snapshots/a@s", "");
        assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
        assert_eq!(d("DELETE", "/v1/snapshots/a@s", "").status, 204);
        assert_eq!(b.last(), "delete_snapshot a s");
        assert_eq!(d("POST", "/v1/snapshots/a@s/rollback", "").status, 200);
        assert_eq!(b.last(), "rollback a s");
        d("POST", "/v1/snapshots/a@s/export", r#"{"enabled":false}"#);
        assert_eq!(b.last(), "export a s false");
        assert_eq!(
            d("POST", "/v1/clones", r#"{"source":"a@s","name":"c"}"#).status,
            201
        );
        assert_eq!(b.last(), "create_clone a@s c");
    }

    #[test]
    fn dispatch_errors() {
        let b = Recorder::default();
        let d = |m: &str, t: &str, body: &str| dispatch(&b, m, t, body.as_bytes());

        let r = d("GET", "/v1/nothing", "");
        assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
        let r = d("PUT", "/v1/volumes", "");
        assert_eq!((r.status, code(&r)), (405, ErrorCode::InvalidArgument));
        assert_eq!(r.allow, Some("GET, POST"));
        let r = d("GET", "/v1/volumes/a/resize", "");
        assert_eq!((r.status, r.allow), (405, Some("POST")));
        let r = d("POST", "/v1/volumes", "{not json");
        assert_eq!((r.status, code(&r)), (400, ErrorCode::InvalidArgument));
        let r = d("POST", "/v1/volumes", r#"{"name":"a"}"#);
        assert_eq!(r.status, 400);
        let msg: ErrorBody = serde_json::from_slice(&r.body).unwrap();
        assert!(
            msg.error.message.contains("missing field `size_bytes`"),
            "{}",
            msg.error.message
        );
        let r = d("POST", "/v1/volumes", "");
        assert_eq!(r.status, 400);
        let r = d("POST", "/v1/snapshots/nosnap/rollback", "");
        assert_eq!((r.status, code(&r)), (400, ErrorCode::InvalidArgument));
        let r = d("DELETE", "/v1/snapshots/@s", "");
        assert_eq!(r.status, 400);
        let r = d("GET", "/v1/volumes?x=1", "");
        assert_eq!(r.status, 400);
        let r = d("GET", "/v1/volumes/%e9", "");
        assert_eq!(r.status, 400);
        for bad in [
            "/v1/stats?window=x",
            "/v1/stats?window=-1",
            "/v1/stats?volume=a",
            "/v1/stats/vm1/histogram?class=reads",
            "/v1/stats/vm1/histogram?format=png",
        ] {
            let r = d("GET", bad, "");
            assert_eq!(
                (r.status, code(&r)),
                (400, ErrorCode::InvalidArgument),
                "{bad}"
            );
        }
        let r = d("GET", "/v1/stats/nope", "");
        assert_eq!((r.status, code(&r)), (404, ErrorCode::NotFound));
        let r = d("POST", "/v1/stats/vm1", "");
        assert_eq!((r.status, r.allow), (405, Some("GET")));
        let r = d("POST", "/v1/stats/reset?volume=", "");
        assert_eq!(r.status, 400);
    }

    #[test]
    fn hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7000",
            "[::1]:7000",
            "[::1]",
            "::1",
            "localhost",
            "LOCALHOST:80",
            "localhost.",
            "10.1.2.3:1",
        ] {
            assert!(host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7000",
            "localhost.evil",
            "",
            "[::1",
        ] {
            assert!(!host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn addr_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_addr_file(dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("missing"), "{err}");
        let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        write_addr_file(dir.path(), addr).unwrap();
        assert_eq!(
            std::fs::read_to_string(addr_file(dir.path())).unwrap(),
            "127.0.0.1:7000\n"
        );
        assert_eq!(read_addr_file(dir.path()).unwrap(), addr);
        write_addr_file(dir.path(), "0.0.0.0:9".parse().unwrap()).unwrap();
        assert_eq!(
            read_addr_file(dir.path()).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        std::fs::write(addr_file(dir.path()), "garbage").unwrap();
        let err = read_addr_file(dir.path()).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        remove_addr_file(dir.path()).unwrap();
        remove_addr_file(dir.path()).unwrap();
    }

    #[test]
    fn handler_panic_is_an_internal_error() {
        let b: Arc<dyn AdminBackend> = Arc::new(Recorder::default());
        let server = AdminServer::start("127.0.0.1:0".parse().unwrap(), b).unwrap();
        let url = format!("http://{}/v1/clones", server.local_addr());
        let err = ureq::post(&url)
            .send_string(r#"{"source":"a@s","name":"boom"}"#)
            .unwrap_err();
        let ureq::Error::Status(500, resp) = err else {
            panic!("{err:?}")
        };
        let body: ErrorBody = resp.into_json().unwrap();
        assert_eq!(body.error.code, ErrorCode::Internal);
        assert!(
            body.error.message.contains("boom"),
            "{}",
            body.error.message
        );
        let resp = ureq::get(&format!("http://{}/v1/pool", server.local_addr()))
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200);
        server.shutdown();
    }
}
