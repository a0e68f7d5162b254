//! The agent's local API: a Unix socket (mode 0600) taking one JSON request
//! per line. `nstrail ls` and `nstrail tail` are its clients.
//!
//!   -> {"op":"inventory"}
//!   <- {"ok":true,"namespaces":[...],"destroyed":[...]}
//!   -> {"op":"subscribe"}                 (or with "after_seq":N to replay first)
//!   <- {"ok":true,"subscribed":true,"replayed":N,"replay_incomplete":false}
//!   <- one event per line, and {"type":"client_dropped","count":N} when this
//!      client read too slowly and N events were dropped for it
//!   <- {"ok":false,"error":"..."}       for anything else
//!
//! Questions about one namespace (`show`, `sysctl`): [`super::questions`].

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    export::stream::EventHub,
    inventory::{scan, Inventory, NetnsRecord},
    metrics::Metrics,
};

pub const DEFAULT_SOCKET: &str = "/run/nstrail/nstrail.sock";
/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// A client that sends nothing for this long is dropped.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
    #[serde(default)]
    after_seq: Option<u64>,
}

/// A request line as the agent reads it: its op and, for `subscribe`,
/// the seq to replay from.
pub fn request_of(line: &[u8]) -> Result<(String, Option<u64>), String> {
    serde_json::from_slice::<Request>(line).map(|r| (r.op, r.after_seq)).map_err(|e| e.to_string())
}

/// What the API serves.
#[derive(Clone)]
pub struct ApiContext {
    pub inventory: Arc<Mutex<Inventory>>,
    pub hub: Arc<EventHub>,
    pub metrics: Arc<Metrics>,
    /// The audit log the agent writes, if any (`show` reads it).
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InventoryReply {
    pub ok: bool,
    #[serde(default)]
    pub namespaces: Vec<NetnsRecord>,
    #[serde(default)]
    pub destroyed: Vec<NetnsRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another agent is already serving at {0}")]
    InUse(PathBuf),
    #[error("cannot serve the API at {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("no agent is running at {path} ({source}); start one with `nstrail run`, or use `nstrail ls --offline` to scan /proc directly")]
    NoAgent { path: PathBuf, source: std::io::Error },
    #[error("permission denied on {path}: the agent's socket is for root and, when the agent is configured with `[api] group = \"NAME\"`, that group; run as root (sudo) or ask for that group")]
    PermissionDenied { path: PathBuf },
    #[error("no group {0} on this host (`[api] group`); create it (groupadd) or name another")]
    NoGroup(String),
    #[error("the agent at {path} answered badly: {message}")]
    BadReply { path: PathBuf, message: String },
}

/// Connects to the agent's socket as a blocking client, telling "no agent"
/// from "not allowed".
pub(crate) fn connect(path: &Path) -> Result<std::os::unix::net::UnixStream, ApiError> {
    std::os::unix::net::UnixStream::connect(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::PermissionDenied => ApiError::PermissionDenied { path: path.to_path_buf() },
        _ => ApiError::NoAgent { path: path.to_path_buf(), source },
    })
}

/// Who may use the socket besides root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// A group whose members may connect (socket mode 0660, that group);
    /// `None`: root only (0600).
    pub group: Option<String>,
    /// Clients served at once; a client beyond it is told so and closed.
    pub max_clients: usize,
}

/// The gid of a group by name.
fn gid_of(group: &str) -> Option<libc::gid_t> {
    let name = std::ffi::CString::new(group).ok()?;
    // SAFETY: getgrnam returns a pointer to static storage or NULL; read at once.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null entries point at a valid struct group.
    (!entry.is_null()).then(|| unsafe { (*entry).gr_gid })
}

/// Binds the socket, replacing a stale one but never a live agent's.
pub async fn bind(path: &Path, access: &Access) -> Result<UnixListener, ApiError> {
    let gid = match &access.group {
        Some(group) => Some(gid_of(group).ok_or_else(|| ApiError::NoGroup(group.clone()))?),
        None => None,
    };
    let bind_err = |source| ApiError::Bind { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ApiError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(bind_err)?;
        // The folder must let the group reach the socket, and no one else change it.
        if let Some(dir) = path.parent() {
            let _ = std::os::unix::fs::chown(dir, None, Some(gid));
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750));
        }
    }
    Ok(listener)
}

/// Connected clients, and those of them that have not sent a request yet
/// (oldest first): when the agent serves the most clients it will, a new
/// connection takes the place of the oldest one that said nothing, so a
/// flood of idle connections cannot keep `nstrail ls` or `tail` out.
#[derive(Default)]
struct Clients {
    connected: usize,
    /// Of them, streaming events.
    subscribed: usize,
    silent: std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
    next_id: u64,
}

/// One client's place: frees it when the client goes.
struct Place {
    clients: Arc<Mutex<Clients>>,
    id: u64,
}

/// Places kept for requests (`inventory`), never taken by event streams,
/// so `nstrail ls` is answered however many streams are open.
const KEPT_FOR_REQUESTS: usize = 16;

impl Place {
    /// The client sent its first request: it no longer gives way to newcomers.
    fn spoke(&self) {
        self.clients.lock().expect("clients lock").silent.retain(|(id, _)| *id != self.id);
    }

    /// Takes one of the places streams may have; false when they are all taken.
    fn subscribe(&self, max_clients: usize) -> bool {
        let mut clients = self.clients.lock().expect("clients lock");
        if clients.subscribed + KEPT_FOR_REQUESTS >= max_clients.max(KEPT_FOR_REQUESTS + 1) {
            return false;
        }
        clients.subscribed += 1;
        true
    }

    fn unsubscribe(&self) {
        self.clients.lock().expect("clients lock").subscribed -= 1;
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().expect("clients lock");
        clients.connected -= 1;
        clients.silent.retain(|(id, _)| *id != self.id);
    }
}

/// Answers clients until the task is dropped, at most `max_clients` at
/// once (see [`Clients`]); one more when none can give way is told so and
/// closed, so a flood of connections cannot take the agent's descriptors.
pub async fn serve(listener: UnixListener, context: ApiContext, max_clients: usize) {
    let clients = Arc::new(Mutex::new(Clients::default()));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let admitted = {
                    let mut all = clients.lock().expect("clients lock");
                    let room = all.connected < max_clients.max(1) || {
                        // Make room: the oldest silent client leaves.
                        // (It counts itself out when its task ends, a moment later.)
                        match all.silent.pop_front() {
                            Some((_, leave)) => {
                                let _ = leave.send(());
                                context.metrics.api_clients_refused.inc();
                                true
                            }
                            None => false,
                        }
                    };
                    room.then(|| {
                        all.connected += 1;
                        all.next_id += 1;
                        let id = all.next_id;
                        let (leave, told) = tokio::sync::oneshot::channel();
                        all.silent.push_back((id, leave));
                        (Place { clients: clients.clone(), id }, told)
                    })
                };
                match admitted {
                    Some((place, told_to_leave)) => {
                        let context = context.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = handle(stream, context, &place, max_clients) => {}
                                // (A client that spoke drops its sender: no eviction.)
                                Ok(()) = told_to_leave => {}
                            }
                            drop(place);
                        });
                    }
                    None => {
                        context.metrics.api_clients_refused.inc();
                        let refusal = format!(
                            "{{\"ok\":false,\"error\":\"the agent serves {max_clients} clients at most; try again later\"}}\n"
                        );
                        // Best effort, never waiting: the client may not read.
                        let _ = stream.try_write(refusal.as_bytes());
                    }
                }
            }
            Err(err) => {
                // Out of descriptors (thousands of clients): wait for some to go.
                log::warn!("API accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A stream's place, given back however the stream ends.
struct Streaming<'a>(&'a Place);

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.unsubscribe();
    }
}

/// Counts a connected client for as long as it lives.
struct ClientGauge(Arc<Metrics>);

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.api_clients.dec();
    }
}

async fn handle(stream: UnixStream, context: ApiContext, place: &Place, max_clients: usize) {
    context.metrics.api_clients.inc();
    let _gauge = ClientGauge(context.metrics.clone());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 16)).split(b'\n');
    loop {
        let line = match tokio::time::timeout(IDLE, lines.next_segment()).await {
            Ok(Ok(Some(line))) => line,
            _ => return,
        };
        place.spoke();
        if line.len() <= MAX_REQUEST {
            if let Ok(Request { op, after_seq }) = serde_json::from_slice::<Request>(&line) {
                if op == "subscribe" {
                    if !place.subscribe(max_clients) {
                        context.metrics.api_clients_refused.inc();
                        let refusal = format!(
                            "{{\"ok\":false,\"error\":\"the agent streams to {} clients at most; try again later\"}}\n",
                            max_clients.saturating_sub(KEPT_FOR_REQUESTS).max(1)
                        );
                        let _ = write.write_all(refusal.as_bytes()).await;
                        return;
                    }
                    let _streaming = Streaming(place);
                    stream_events(&context.hub, after_seq, &mut lines, &mut write).await;
                    return;
                }
            }
        }
        if line.len() <= MAX_REQUEST {
            if let Some(answer) = super::questions::answer(&line, &context).await {
                if write.write_all(&answer).await.is_err() {
                    return;
                }
                continue;
            }
        }
        let reply = if line.len() > MAX_REQUEST {
            error_reply(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            answer(&line, &context.inventory).await
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        drop(reply);
        let written = write.write_all(&bytes).await;
        if bytes.len() >= LARGE_REPLY {
            drop(bytes);
            crate::sys::heap::release_free_pages();
        }
        if written.is_err() {
            return;
        }
    }
}

/// A reply this large (an inventory of thousands of namespaces) leaves its
/// freed pages to the kernel once sent.
const LARGE_REPLY: usize = 1 << 20;

/// Streams events to one client until it goes away.
async fn stream_events<R: tokio::io::AsyncBufRead + Unpin>(
    hub: &EventHub,
    after_seq: Option<u64>,
    lines: &mut tokio::io::Split<R>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) {
    use std::sync::atomic::Ordering;
    let mut subscription = hub.subscribe(after_seq);
    let ack = serde_json::json!({
        "ok": true,
        "subscribed": true,
        "replayed": subscription.replay.len(),
        "replay_incomplete": subscription.replay_incomplete,
    });
    if write.write_all(format!("{ack}\n").as_bytes()).await.is_err() {
        return;
    }
    for line in std::mem::take(&mut subscription.replay) {
        if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            return;
        }
    }
    let mut told = 0;
    loop {
        tokio::select! {
            next = subscription.live.recv() => {
                let Some(line) = next else { return };
                let dropped = subscription.dropped.load(Ordering::Relaxed);
                let mut out = String::new();
                if dropped > told {
                    out.push_str(&format!("{{\"type\":\"client_dropped\",\"count\":{}}}\n", dropped - told));
                    told = dropped;
                }
                out.push_str(&line);
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
            // Anything more from the client is ignored; its end ends the stream.
            input = lines.next_segment() => {
                if !matches!(input, Ok(Some(_))) {
                    return;
                }
            }
        }
    }
}

fn error_reply(error: String) -> InventoryReply {
    InventoryReply { ok: false, namespaces: Vec::new(), destroyed: Vec::new(), error: Some(error) }
}

async fn answer(line: &[u8], inventory: &Arc<Mutex<Inventory>>) -> InventoryReply {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(err) => {
            return error_reply(format!(
                "bad request ({err}); send {{\"op\":\"inventory\"}} or {{\"op\":\"subscribe\"}}"
            ))
        }
    };
    match request.op.as_str() {
        "inventory" => {
            let known = inventory.lock().expect("inventory lock").nsids();
            let scan = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let mut scan = scan::scan();
                let scanned = started.elapsed();
                scan::with_devices(&mut scan, &known);
                log::debug!(
                    "inventory of {} namespaces: /proc scan {scanned:?}, devices {:?}",
                    scan.namespaces.len(),
                    started.elapsed() - scanned
                );
                scan
            })
            .await
            .unwrap_or_default();
            let mut inventory = inventory.lock().expect("inventory lock");
            InventoryReply {
                ok: true,
                namespaces: inventory.live_records(&scan),
                destroyed: inventory.destroyed_records(),
                error: None,
            }
        }
        other => error_reply(format!("unknown op `{other}`; known: inventory, show, sysctl, subscribe")),
    }
}

/// Subscribes to a running agent's event stream (blocking client for the CLI):
/// returns the reader positioned after the acknowledgement.
pub fn subscribe(
    path: &Path,
    after_seq: Option<u64>,
) -> Result<std::io::BufReader<std::os::unix::net::UnixStream>, ApiError> {
    use std::io::{BufRead, Write};
    let mut stream = connect(path)?;
    let bad = |message: String| ApiError::BadReply { path: path.to_path_buf(), message };
    let request = match after_seq {
        Some(seq) => format!("{{\"op\":\"subscribe\",\"after_seq\":{seq}}}\n"),
        None => "{\"op\":\"subscribe\"}\n".to_owned(),
    };
    stream.write_all(request.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let mut reader = std::io::BufReader::new(stream);
    let mut ack = String::new();
    reader.read_line(&mut ack).map_err(|e| bad(e.to_string()))?;
    let ack: serde_json::Value = serde_json::from_str(&ack).map_err(|e| bad(e.to_string()))?;
    if ack["ok"] != true {
        return Err(bad(ack["error"].as_str().unwrap_or("subscription refused").to_owned()));
    }
    if ack["replay_incomplete"] == true {
        log::warn!("the agent no longer holds every event after the audit log's last one: the output may have a gap");
    }
    Ok(reader)
}

/// Asks a running agent for its inventory (blocking client for the CLI).
pub fn fetch_inventory(path: &Path) -> Result<InventoryReply, ApiError> {
    use std::io::{BufRead, Write};
    let mut stream = connect(path)?;
    let bad = |message: String| ApiError::BadReply { path: path.to_path_buf(), message };
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| bad(e.to_string()))?;
    stream.write_all(b"{\"op\":\"inventory\"}\n").map_err(|e| bad(e.to_string()))?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(|e| bad(e.to_string()))?;
    let reply: InventoryReply = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
    if !reply.ok {
        return Err(bad(reply.error.unwrap_or_default()));
    }
    Ok(reply)
}
