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
    inventory::{scan, Inventory, NetnsRecord},
    metrics::Metrics,
    stream::EventHub,
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

/// What the API serves.
#[derive(Clone)]
pub struct ApiContext {
    pub inventory: Arc<Mutex<Inventory>>,
    pub hub: Arc<EventHub>,
    pub metrics: Arc<Metrics>,
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
    #[error("the agent at {path} answered badly: {message}")]
    BadReply { path: PathBuf, message: String },
}

/// Binds the socket, replacing a stale one but never a live agent's.
pub async fn bind(path: &Path) -> Result<UnixListener, ApiError> {
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
    Ok(listener)
}

/// Answers clients until the task is dropped.
pub async fn serve(listener: UnixListener, context: ApiContext) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(stream, context.clone()));
            }
            Err(err) => {
                // Out of descriptors (thousands of clients): wait for some to go.
                log::warn!("API accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Counts a connected client for as long as it lives.
struct ClientGauge(Arc<Metrics>);

impl Drop for ClientGauge {
    fn drop(&mut self) {
        self.0.api_clients.dec();
    }
}

async fn handle(stream: UnixStream, context: ApiContext) {
    context.metrics.api_clients.inc();
    let _gauge = ClientGauge(context.metrics.clone());
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 * 16)).split(b'\n');
    loop {
        let line = match tokio::time::timeout(IDLE, lines.next_segment()).await {
            Ok(Ok(Some(line))) => line,
            _ => return,
        };
        if line.len() <= MAX_REQUEST {
            if let Ok(Request { op, after_seq }) = serde_json::from_slice::<Request>(&line) {
                if op == "subscribe" {
                    stream_events(&context.hub, after_seq, &mut lines, &mut write).await;
                    return;
                }
            }
        }
        let reply = if line.len() > MAX_REQUEST {
            error_reply(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            answer(&line, &context.inventory).await
        };
        let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
        bytes.push(b'\n');
        if write.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

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
        Err(err) => return error_reply(format!("bad request ({err}); send {{\"op\":\"inventory\"}} or {{\"op\":\"subscribe\"}}")),
    };
    match request.op.as_str() {
        "inventory" => {
            let scan = tokio::task::spawn_blocking(|| {
                let mut scan = scan::scan();
                scan::with_devices(&mut scan);
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
        other => error_reply(format!("unknown op `{other}`; known: inventory, subscribe")),
    }
}

/// Subscribes to a running agent's event stream (blocking client for the CLI):
/// returns the reader positioned after the acknowledgement.
pub fn subscribe(path: &Path, after_seq: Option<u64>) -> Result<std::io::BufReader<std::os::unix::net::UnixStream>, ApiError> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| ApiError::NoAgent { path: path.to_path_buf(), source })?;
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
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|source| ApiError::NoAgent { path: path.to_path_buf(), source })?;
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
