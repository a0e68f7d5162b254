//! The API's questions about one namespace, next to `inventory`:
//!
//!   -> {"op":"show","netns":"blue"}
//!   <- {"ok":true,"story":{...}}                 (crate::answers::Story)
//!   -> {"op":"sysctl","netns":"blue","all":false}
//!   <- {"ok":true,"report":{...}}                (crate::answers::SysctlReport)
//!   <- {"ok":false,"error":"no namespace matches blue: ..."}
//!
//! Each is answered on a blocking-pool thread that scans /proc, steps into
//! the namespace and back (the agent's own entries are not events), and
//! reads the audit log; the event loop never waits for it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::Value;

use super::api::{ApiContext, ApiError};
use crate::{
    answers::{self, timeline::Records, Sources, Story, SysctlReport},
    inventory::scan,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Question {
    op: String,
    netns: String,
    #[serde(default)]
    all: bool,
}

/// The answer to a `show` or `sysctl` request, as one JSON line; None for
/// any other request (the rest of the API answers those).
pub async fn answer(line: &[u8], context: &ApiContext) -> Option<Vec<u8>> {
    let op = serde_json::from_slice::<Value>(line).ok()?.get("op")?.as_str().map(str::to_owned)?;
    if op != "show" && op != "sysctl" {
        return None;
    }
    let reply = match serde_json::from_slice::<Question>(line) {
        Err(err) => serde_json::json!({
            "ok": false,
            "error": format!("bad request ({err}); send {{\"op\":\"{op}\",\"netns\":\"NAME\"}}"),
        }),
        Ok(question) => {
            let context = context.clone();
            tokio::task::spawn_blocking(move || ask_here(&question, &context))
                .await
                .unwrap_or_else(|_| serde_json::json!({"ok": false, "error": "the question's worker panicked"}))
        }
    };
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    Some(bytes)
}

fn ask_here(question: &Question, context: &ApiContext) -> Value {
    let scan = scan::scan();
    let (live, destroyed) = {
        let mut inventory = context.inventory.lock().expect("inventory lock");
        (inventory.live_records(&scan), inventory.destroyed_records())
    };
    let records = Records {
        log: context.audit_log.clone(),
        agent_pid: Some(std::process::id()),
        memory: Some(context.hub.recent()),
    };
    let sources = Sources { scan: &scan, live, destroyed, records, offline: false };
    let answer = match question.op.as_str() {
        "show" => answers::show(&question.netns, &sources).map(|story| ("story", serde_json::to_value(story))),
        _ => answers::sysctl(&question.netns, question.all, &sources)
            .map(|report| ("report", serde_json::to_value(report))),
    };
    match answer {
        Ok((key, Ok(value))) => serde_json::json!({ "ok": true, key: value }),
        Ok((_, Err(err))) => serde_json::json!({ "ok": false, "error": err.to_string() }),
        Err(error) => serde_json::json!({ "ok": false, "error": error }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no agent is running at {path} ({source}); start one with `nstrail run`, or add --offline to answer from /proc and the audit log")]
    NoAgent { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Api(ApiError),
    /// The agent's answer: no such namespace, an ambiguous argument, ...
    #[error("{0}")]
    Refused(String),
}

/// Sends one question to a running agent and returns the `key` of its answer.
fn ask(socket: &Path, request: Value, key: &str) -> Result<Value, AskError> {
    use std::io::{BufRead, Write};
    let bad = |message: String| AskError::Api(ApiError::BadReply { path: socket.to_path_buf(), message });
    let mut stream = super::api::connect(socket).map_err(|err| match err {
        ApiError::NoAgent { path, source } => AskError::NoAgent { path, source },
        other => AskError::Api(other),
    })?;
    // Long audit logs take a while to read.
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| bad(e.to_string()))?;
    stream.write_all(format!("{request}\n").as_bytes()).map_err(|e| bad(e.to_string()))?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).map_err(|e| bad(e.to_string()))?;
    let mut reply: Value = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
    if reply["ok"] != true {
        return Err(AskError::Refused(reply["error"].as_str().unwrap_or("the agent refused").to_owned()));
    }
    Ok(reply[key].take())
}

/// `nstrail show`: asks the agent at `socket`.
pub fn ask_show(socket: &Path, netns: &str) -> Result<Story, AskError> {
    let value = ask(socket, serde_json::json!({"op": "show", "netns": netns}), "story")?;
    serde_json::from_value(value)
        .map_err(|e| AskError::Api(ApiError::BadReply { path: socket.to_path_buf(), message: e.to_string() }))
}

/// `nstrail sysctl`: asks the agent at `socket`.
pub fn ask_sysctl(socket: &Path, netns: &str, all: bool) -> Result<SysctlReport, AskError> {
    let value = ask(socket, serde_json::json!({"op": "sysctl", "netns": netns, "all": all}), "report")?;
    serde_json::from_value(value)
        .map_err(|e| AskError::Api(ApiError::BadReply { path: socket.to_path_buf(), message: e.to_string() }))
}
