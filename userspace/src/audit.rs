//! The audit log: one JSON event per line, every line chained to the one
//! before by SHA-256, so `nstrail verify` finds the first record that was
//! deleted, altered or moved. Rotates by size, keeps a number of old files,
//! survives restarts (a new run starts a marked segment linked to the old
//! chain) and a full disk (records wait in memory, bounded; what could not
//! be kept is marked as a gap in the chain when writing resumes).
//!
//! Line format: the event's JSON with two fields appended,
//!     {...event...,"prev_hash":"<64 hex>","hash":"<64 hex>"}
//! where hash = SHA-256(prev_hash as hex, then the event's JSON exactly as
//! written before the appended fields, closed with `}`).

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    correlate::WallClock,
    event::Event,
    export::{ExportError, Exporter},
    metrics::Metrics,
};

pub const DEFAULT_PATH: &str = "/var/log/nstrail/events.jsonl";
/// The hash before the first record of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const SUFFIX_LEN: usize = r#","prev_hash":""#.len() + 64 + r#"","hash":""#.len() + 64 + r#""}"#.len();

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// After every batch of records.
    Always,
    /// At most once a second.
    Interval,
    /// Leave it to the kernel.
    Never,
}

#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub path: PathBuf,
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (events.jsonl.1 ... .N).
    pub keep: u32,
    pub fsync: Fsync,
    /// Records held in memory while the disk refuses writes.
    pub backlog_limit: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self { path: PathBuf::from(DEFAULT_PATH), max_bytes: 64 * 1024 * 1024, keep: 5, fsync: Fsync::Interval, backlog_limit: 100_000 }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The chain hash of a record.
pub fn chain_hash(prev: &str, event_json: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(event_json.as_bytes());
    hex(&hasher.finalize())
}

/// A line of the log for `event_json` following `prev`; returns (line, hash).
pub fn chained_line(prev: &str, event_json: &str) -> (String, String) {
    let hash = chain_hash(prev, event_json);
    let body = event_json.strip_suffix('}').unwrap_or(event_json);
    (format!("{body},\"prev_hash\":\"{prev}\",\"hash\":\"{hash}\"}}\n"), hash)
}

/// Splits a log line into (event JSON, prev_hash, hash).
pub fn split_line(line: &str) -> Option<(String, &str, &str)> {
    if line.len() < SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return None;
    }
    let (body, suffix) = line.split_at(line.len() - SUFFIX_LEN);
    let prev = suffix.strip_prefix(r#","prev_hash":""#)?.get(..64)?;
    let hash = suffix.get(SUFFIX_LEN - 66..SUFFIX_LEN - 2)?;
    if !suffix[14 + 64..].starts_with(r#"","hash":""#) {
        return None;
    }
    Some((format!("{body}}}"), prev, hash))
}

/// The record that starts each run's part of the log.
#[derive(Serialize)]
struct SegmentStart<'a> {
    ts: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Why a segment starts: `new_log` or `agent_start`.
    reason: &'a str,
    /// The previous run's last record was cut short (the agent was killed mid-write).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    previous_truncated: bool,
    pid: u32,
}

/// Records the disk could not take and that did not fit in memory.
#[derive(Serialize)]
struct Gap {
    ts: String,
    #[serde(rename = "type")]
    kind: &'static str,
    /// Records lost between the previous line and the next.
    records_lost: u64,
    reason: &'static str,
}

pub struct AuditLog {
    options: AuditOptions,
    file: File,
    size: u64,
    prev_hash: String,
    /// Lines chained but not yet on disk, oldest first, with their hashes.
    pending: VecDeque<(String, String)>,
    /// Hash of the last record on disk: where pending records are re-chained
    /// from after a gap.
    pending_base: String,
    dropped: u64,
    last_sync: Instant,
    metrics: Option<Arc<Metrics>>,
    failing: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// The last hash of a log file, and whether its last line was cut short.
fn last_hash(path: &Path) -> std::io::Result<Option<(String, bool)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = String::new();
    file.take(64 * 1024).read_to_string(&mut tail).ok();
    let truncated = !tail.is_empty() && !tail.ends_with('\n');
    let found = tail.lines().rev().find_map(|l| split_line(l).map(|(_, _, h)| h.to_owned()));
    Ok(found.map(|h| (h, truncated)))
}

impl AuditLog {
    pub fn open(options: AuditOptions, metrics: Option<Arc<Metrics>>) -> std::io::Result<Self> {
        if let Some(dir) = options.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Continue the chain of the current file, or of the newest rotated one.
        let previous = match last_hash(&options.path)? {
            Some(found) => Some(found),
            None => last_hash(&rotated(&options.path, 1))?,
        };
        let file = open_append(&options.path)?;
        let size = file.metadata()?.len();
        let base = previous.as_ref().map_or(GENESIS.to_owned(), |(h, _)| h.clone());
        let mut log = Self {
            size,
            file,
            pending_base: base.clone(),
            prev_hash: base,
            pending: VecDeque::new(),
            dropped: 0,
            last_sync: Instant::now(),
            metrics,
            failing: false,
            options,
        };
        if size > 0 && previous.as_ref().is_some_and(|(_, truncated)| *truncated) {
            // Finish the cut line so the new segment starts on its own line.
            log.file.write_all(b"\n")?;
            log.size += 1;
        }
        let start = SegmentStart {
            ts: WallClock::now_rfc3339(),
            kind: "audit_segment",
            reason: if previous.is_some() { "agent_start" } else { "new_log" },
            previous_truncated: previous.is_some_and(|(_, t)| t),
            pid: std::process::id(),
        };
        log.append_json(&serde_json::to_string(&start).map_err(std::io::Error::from)?);
        if !log.write_pending() {
            return Err(std::io::Error::other(format!("cannot write to {}", log.options.path.display())));
        }
        Ok(log)
    }

    fn append_json(&mut self, json: &str) {
        let (line, hash) = chained_line(&self.prev_hash, json);
        self.prev_hash = hash.clone();
        if self.pending.len() >= self.options.backlog_limit {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back((line, hash));
    }

    /// Writes what is pending; on failure (a full disk) keeps it for later.
    fn write_pending(&mut self) -> bool {
        if self.dropped > 0 {
            // Records were dropped while the disk refused writes: name the loss
            // in the chain, right after the last record on disk, then re-chain
            // what is still waiting on top of it.
            let gap = Gap {
                ts: WallClock::now_rfc3339(),
                kind: "audit_gap",
                records_lost: self.dropped,
                reason: "the disk refused writes and the in-memory backlog was full",
            };
            let (line, hash) = chained_line(&self.pending_base, &serde_json::to_string(&gap).unwrap_or_default());
            if let Err(err) = self.write_line(&line) {
                return self.failed(err);
            }
            self.pending_base = hash;
            self.dropped = 0;
            let waiting: Vec<String> =
                self.pending.drain(..).filter_map(|(line, _)| split_line(line.trim_end()).map(|(json, _, _)| json)).collect();
            self.prev_hash = self.pending_base.clone();
            for json in waiting {
                self.append_json(&json);
            }
        }
        while let Some((line, hash)) = self.pending.front().cloned() {
            if let Err(err) = self.write_line(&line) {
                return self.failed(err);
            }
            self.pending_base = hash;
            self.pending.pop_front();
        }
        if self.failing {
            log::info!("audit log {} is writable again", self.options.path.display());
            self.failing = false;
        }
        true
    }

    /// Appends one whole line, rotating first when it would not fit.
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.options.max_bytes {
            self.rotate()?;
        }
        if let Err(err) = self.file.write_all(line.as_bytes()) {
            // Do not leave half a line behind: cut back to the last whole one.
            let _ = self.file.set_len(self.size);
            return Err(err);
        }
        self.size += line.len() as u64;
        Ok(())
    }

    fn failed(&mut self, err: std::io::Error) -> bool {
        if let Some(metrics) = &self.metrics {
            metrics.log_write_errors.inc();
        }
        if !self.failing {
            log::error!(
                "audit log {}: {err}; holding up to {} records in memory until it can be written",
                self.options.path.display(),
                self.options.backlog_limit
            );
            self.failing = true;
        }
        false
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let path = &self.options.path;
        if self.options.keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(rotated(path, self.options.keep));
            for n in (1..self.options.keep).rev() {
                let from = rotated(path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(path, n + 1))?;
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
        }
        self.file = open_append(path)?;
        self.size = 0;
        Ok(())
    }

    fn sync(&mut self, force: bool) {
        let due = match self.options.fsync {
            Fsync::Always => true,
            Fsync::Interval => force || self.last_sync.elapsed() >= Duration::from_secs(1),
            Fsync::Never => false,
        };
        if due && !self.failing {
            let _ = self.file.sync_data();
            self.last_sync = Instant::now();
        }
    }
}

/// `events.jsonl.N`
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl Exporter for AuditLog {
    fn name(&self) -> &'static str {
        "audit log"
    }

    fn export(&mut self, _event: &Event, json: &str) -> Result<(), ExportError> {
        self.append_json(json);
        if self.pending.len() >= 1024 {
            self.write_pending();
        }
        Ok(())
    }

    /// Never fails: a full disk is counted and retried, not fatal.
    fn flush(&mut self) -> Result<(), ExportError> {
        if self.write_pending() {
            self.sync(false);
        }
        Ok(())
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        if self.write_pending() {
            self.sync(true);
        }
    }
}

// ---- verification ------------------------------------------------------------

/// What `nstrail verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact { records: u64, segments: u64, gaps: u64 },
    Broken { file: PathBuf, line: u64, problem: String },
}

/// Checks the chain through `files` (oldest first, e.g. events.jsonl.2,
/// events.jsonl.1, events.jsonl) and names the first bad record.
pub fn verify(files: &[PathBuf]) -> std::io::Result<Verdict> {
    let (mut records, mut segments, mut gaps) = (0u64, 0u64, 0u64);
    let mut prev_hash: Option<String> = None;
    let mut prev_seq: Option<u64> = None;
    for path in files {
        let bytes = std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
        let ends_with_newline = bytes.last().is_none_or(|b| *b == b'\n');
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let lines: Vec<String> =
            if body.is_empty() { Vec::new() } else { body.split(|b| *b == b'\n').map(|l| String::from_utf8_lossy(l).into_owned()).collect() };
        for (index, line) in lines.iter().enumerate() {
            let number = index as u64 + 1;
            let broken = |problem: String| Ok(Verdict::Broken { file: path.clone(), line: number, problem });
            let last = index + 1 == lines.len();
            let Some((json, prev, hash)) = split_line(line) else {
                if last && !ends_with_newline {
                    return broken("the file ends in a cut-off record (truncated)".into());
                }
                if next_is_segment_after_cut(&lines, index) {
                    // The agent was killed mid-write; the next run marked it.
                    gaps += 1;
                    continue;
                }
                return broken("not a chained record (line damaged or inserted)".into());
            };
            let value: serde_json::Value = match serde_json::from_str(&json) {
                Ok(v) => v,
                Err(_) => return broken("not valid JSON (record altered)".into()),
            };
            if chain_hash(prev, &json) != hash {
                let seq = value["seq"].as_u64().map(|s| format!(" (seq {s})")).unwrap_or_default();
                return broken(format!("record{seq} was altered: its hash does not match its content"));
            }
            let kind = value["type"].as_str().unwrap_or_default();
            if kind == "audit_segment" {
                segments += 1;
                prev_seq = None;
            }
            if kind == "audit_gap" {
                gaps += 1;
                prev_seq = None;
            }
            let seq = value["seq"].as_u64();
            if let Some(expected) = &prev_hash {
                if prev != expected {
                    let problem = match (prev_seq, seq) {
                        (Some(p), Some(s)) if s <= p => format!("record seq {s} after seq {p}: records were reordered"),
                        (Some(p), Some(s)) if s == p + 2 && next_seq(&lines, index) == Some(p + 1) => {
                            format!("record seq {s} comes before seq {}: records were reordered", p + 1)
                        }
                        (Some(p), Some(s)) if s > p + 1 => format!("records seq {} to {} are missing (deleted)", p + 1, s - 1),
                        _ if kind == "audit_segment" && prev == GENESIS => "a new chain starts here: earlier files are missing or were replaced".into(),
                        _ => "the chain is broken before this record (a record was deleted or moved)".into(),
                    };
                    return broken(problem);
                }
            }
            // With no record before it, a record may link to anything: the
            // first file given can be a later rotation.
            if let (Some(p), Some(s)) = (prev_seq, seq) {
                if s != p + 1 {
                    return broken(format!("seq jumps from {p} to {s}"));
                }
            }
            if seq.is_some() {
                prev_seq = seq;
            }
            prev_hash = Some(hash.to_owned());
            records += 1;
        }
    }
    Ok(Verdict::Intact { records, segments, gaps })
}

fn next_is_segment_after_cut(lines: &[String], index: usize) -> bool {
    let Some((json, _, _)) = lines.get(index + 1).and_then(|l| split_line(l)) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&json)
        .is_ok_and(|v| v["type"] == "audit_segment" && v["previous_truncated"] == true)
}

fn next_seq(lines: &[String], index: usize) -> Option<u64> {
    let (json, _, _) = split_line(lines.get(index + 1)?)?;
    serde_json::from_str::<serde_json::Value>(&json).ok()?["seq"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_back_into_their_parts() {
        let (line, hash) = chained_line(GENESIS, r#"{"seq":1,"type":"x"}"#);
        let (json, prev, h) = split_line(line.trim_end()).unwrap();
        assert_eq!((json.as_str(), prev, h), (r#"{"seq":1,"type":"x"}"#, GENESIS, hash.as_str()));
        assert_eq!(hash, chain_hash(GENESIS, r#"{"seq":1,"type":"x"}"#));
        assert!(split_line(r#"{"seq":1}"#).is_none());
    }
}
