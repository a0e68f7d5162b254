//! The audit log's own records (docs/events.md, "Records outside the event
//! stream's types"), and what a new run learns from the end of the log it
//! continues.

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::Path,
};

use serde::Serialize;

use crate::audit::{seal::split_tag, split_line};

/// The record that starts each run's part of the log.
#[derive(Serialize)]
pub(super) struct SegmentStart {
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Why a segment starts: `new_log` or `agent_start`.
    pub reason: &'static str,
    /// The previous run's last record was cut short (the agent was killed mid-write).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub previous_truncated: bool,
    /// `clean` (it wrote its `audit_stop`) or `crashed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_run: Option<&'static str>,
    /// The last event the previous run wrote, and the time of its last record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_last_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_last_ts: Option<String>,
    pub pid: u32,
    /// Sealed runs: the key and the epoch of this run's first seal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_epoch: Option<u64>,
    /// Why this run does not seal a log that was sealed (or that it was told to seal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_missing: Option<String>,
}

/// Records that are not in the log: lost to a full disk, or in a log file
/// that was deleted, moved or replaced while the agent wrote it.
#[derive(Serialize)]
pub(super) struct Gap {
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `backlog`, `deleted`, `moved`, `replaced` or `truncated`.
    pub cause: &'static str,
    /// Records lost between the previous line and the next.
    pub records_lost: u64,
    /// Records the file held when it went (deleted, moved, replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_records: Option<u64>,
    /// `prev_hash` of that file's first line: where the chain continues
    /// when the file itself is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_hash: Option<String>,
    /// Bytes cut off the end of the file (truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_lost: Option<u64>,
    pub reason: &'static str,
}

/// A seal (before its tag is appended; see [`crate::audit::seal`]).
#[derive(Serialize)]
pub(super) struct Seal<'a> {
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `agent_start`, `interval`, `rotation` (the last line of a full file) or `agent_stop`.
    pub reason: &'a str,
    pub epoch: u64,
    pub key_id: &'a str,
    /// The last event record before the seal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sealed_seq: Option<u64>,
    /// Where the seal starts in its file: a file cut at the head shows.
    pub file_offset: u64,
}

/// The last record of a run that stopped cleanly (before its last seal).
#[derive(Serialize)]
pub(super) struct Stop {
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
    pub pid: u32,
}

/// The last seal found at the end of a log.
pub(super) struct TailSeal {
    pub epoch: u64,
    pub key_id: String,
    pub prev_hash: String,
    pub body: String,
    pub tag: String,
}

/// What the end of the log says about the run that wrote it.
pub(super) struct Previous {
    pub last_hash: String,
    /// The last line was cut short.
    pub truncated: bool,
    /// The last record other than seals is an `audit_stop`.
    pub clean_stop: bool,
    pub last_seq: Option<u64>,
    pub last_ts: Option<String>,
    pub last_seal: Option<TailSeal>,
}

const TAIL: u64 = 64 * 1024;

/// Reads the last 64 KiB of a log file; `None` when it has no chained record.
pub(super) fn previous(path: &Path) -> std::io::Result<Option<Previous>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut bytes = Vec::new();
    file.take(TAIL).read_to_end(&mut bytes)?;
    let tail = String::from_utf8_lossy(&bytes);
    let truncated = !tail.is_empty() && !tail.ends_with('\n');
    let mut records = tail.lines().rev().filter_map(split_line).filter_map(|(json, prev, hash)| {
        let value: serde_json::Value = serde_json::from_str(&json).ok()?;
        Some((value, json, prev.to_owned(), hash.to_owned()))
    });
    let Some(first) = records.next() else { return Ok(None) };
    let mut found = Previous {
        last_hash: first.3.clone(),
        truncated,
        clean_stop: false,
        last_seq: None,
        last_ts: first.0["ts"].as_str().map(str::to_owned),
        last_seal: None,
    };
    let mut decided = false;
    for (value, json, prev, _) in std::iter::once(first).chain(records) {
        let kind = value["type"].as_str().unwrap_or_default();
        if kind == "audit_seal" {
            if found.last_seal.is_none() {
                if let Some((body, tag)) = split_tag(&json) {
                    found.last_seal = Some(TailSeal {
                        epoch: value["epoch"].as_u64().unwrap_or_default(),
                        key_id: value["key_id"].as_str().unwrap_or_default().to_owned(),
                        prev_hash: prev,
                        tag: tag.to_owned(),
                        body,
                    });
                }
            }
            continue;
        }
        if !decided {
            found.clean_stop = kind == "audit_stop" && !truncated;
            decided = true;
        }
        if found.last_seq.is_none() {
            found.last_seq = value["seq"].as_u64().or_else(|| value["last_seq"].as_u64());
        }
        // The previous run's records end at its segment start.
        if kind == "audit_segment" || (found.last_seq.is_some() && found.last_seal.is_some()) {
            break;
        }
    }
    Ok(Some(found))
}
