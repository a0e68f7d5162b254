//! The audit log writer: rotates by size, keeps a number of old files,
//! survives restarts (a new run starts a marked segment linked to the old
//! chain, saying whether the previous run stopped cleanly), a full disk
//! (records wait in memory, bounded, and writing is retried at a bounded
//! rate; what could not be kept is marked as a gap in the chain when writing
//! resumes) and its file being deleted, moved or replaced (reopened at its
//! path, marked as a gap). With a sealing key it seals the chain at an
//! interval ([`crate::audit::seal`]). The line format is [`crate::audit`]'s.

mod records;
mod sealing;
mod watch;

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use records::{Gap, SegmentStart, Stop};
use sealing::Sealer;

use super::{ExportError, Exporter};
use crate::{
    audit::{chained_line, line_len, rotated, DEFAULT_PATH, GENESIS},
    event::{clock::rfc3339, Event},
    metrics::Metrics,
    sys::clock::realtime_ns,
};

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
    /// The sealing key file: the log is sealed when it exists. `None`: never.
    pub seal_key: Option<PathBuf>,
    /// A seal at most this long after the first record it covers.
    pub seal_interval: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            path: PathBuf::from(DEFAULT_PATH),
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
            fsync: Fsync::Interval,
            backlog_limit: 100_000,
            seal_key: None,
            seal_interval: Duration::from_secs(15),
        }
    }
}

/// While writes fail, the first retry comes this long after the failure;
/// each further failure doubles the wait, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Records pending before an export writes without waiting for the flush.
const WRITE_BATCH: usize = 1024;
/// At most this much is written with one system call.
const BATCH_BYTES: usize = 1024 * 1024;

pub struct AuditLog {
    options: AuditOptions,
    file: File,
    /// (device, inode) of `file`.
    identity: (u64, u64),
    size: u64,
    /// Hash of the last line written.
    prev_hash: String,
    /// Records not written yet, oldest first: their JSON (chained when
    /// written) and seq.
    pending: VecDeque<(String, Option<u64>)>,
    dropped: u64,
    /// seq of the last event handed over, and of the last one written.
    appended_seq: Option<u64>,
    written_seq: Option<u64>,
    last_sync: Instant,
    metrics: Option<Arc<Metrics>>,
    failing: bool,
    /// While writes fail, no attempt before this.
    retry_at: Option<Instant>,
    backoff: Duration,
    sealer: Option<Sealer>,
    closed: bool,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    // Readable too: what a deleted file held is counted from it.
    let file = OpenOptions::new().create(true).read(true).append(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn to_json(record: &impl serde::Serialize) -> String {
    serde_json::to_string(record).unwrap_or_default()
}

impl AuditLog {
    pub fn open(options: AuditOptions, metrics: Option<Arc<Metrics>>) -> std::io::Result<Self> {
        if let Some(dir) = options.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Continue the chain of the current file, or of the newest rotated one.
        let previous = match records::previous(&options.path)? {
            Some(found) => Some(found),
            None => records::previous(&rotated(&options.path, 1))?,
        };
        let file = open_append(&options.path)?;
        let size = file.metadata()?.len();
        let (sealer, seal_missing) = Self::sealer(&options, previous.as_ref());
        let base = previous.as_ref().map_or(GENESIS.to_owned(), |p| p.last_hash.clone());
        let mut log = Self {
            size,
            identity: watch::identity(&file)?,
            file,
            prev_hash: base,
            pending: VecDeque::new(),
            dropped: 0,
            appended_seq: None,
            written_seq: None,
            last_sync: Instant::now(),
            metrics,
            failing: false,
            retry_at: None,
            backoff: RETRY_FIRST,
            sealer,
            closed: false,
            options,
        };
        if let Some(metrics) = &log.metrics {
            metrics.audit_sealed.set(log.sealer.is_some() as i64);
        }
        if let Some(seal) = previous.as_ref().and_then(|p| p.last_seal.as_ref()) {
            log.catch_up(seal);
        }
        let truncated = previous.as_ref().is_some_and(|p| p.truncated);
        if size > 0 && truncated {
            // Finish the cut line so the new segment starts on its own line.
            log.file.write_all(b"\n")?;
            log.size += 1;
        }
        let start = SegmentStart {
            ts: rfc3339(realtime_ns()),
            kind: "audit_segment",
            reason: if previous.is_some() { "agent_start" } else { "new_log" },
            previous_truncated: truncated,
            previous_run: previous.as_ref().map(|p| if p.clean_stop { "clean" } else { "crashed" }),
            previous_last_seq: previous.as_ref().and_then(|p| p.last_seq),
            previous_last_ts: previous.as_ref().and_then(|p| p.last_ts.clone()),
            pid: std::process::id(),
            seal_key_id: log.sealer.as_ref().map(|s| s.key_id().to_owned()),
            seal_epoch: log.sealer.as_ref().map(Sealer::epoch),
            seal_missing,
        };
        if start.previous_run == Some("crashed") {
            log::warn!(
                "audit log {}: the previous run did not stop cleanly (its last record: seq {}, at {}); the new segment says so",
                log.options.path.display(),
                start.previous_last_seq.map_or("-".into(), |s| s.to_string()),
                start.previous_last_ts.as_deref().unwrap_or("-")
            );
        }
        log.append(to_json(&start), None);
        if !log.write_pending(true) || log.seal("agent_start").is_err() {
            return Err(std::io::Error::other(format!("cannot write to {}", log.options.path.display())));
        }
        Ok(log)
    }

    fn append(&mut self, json: String, seq: Option<u64>) {
        if seq.is_some() {
            self.appended_seq = seq;
        }
        if self.pending.len() >= self.options.backlog_limit {
            self.pending.pop_front();
            self.dropped += 1;
        }
        self.pending.push_back((json, seq));
    }

    /// Writes what is pending; on failure (a full disk) keeps it for later.
    /// Unless `force`, nothing is tried before the retry time of the last failure.
    fn write_pending(&mut self, force: bool) -> bool {
        if !force && self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        if let Some(change) = watch::check(&self.options.path, &self.file, self.identity, self.size) {
            if let Err(err) = self.reopen(change) {
                // Nothing goes into a file the path no longer names: retried like a full disk.
                return self.failed(err);
            }
        }
        if self.dropped > 0 {
            // Records were dropped while the disk refused writes: name the
            // loss in the chain, before what is still waiting.
            let gap = Gap {
                ts: rfc3339(realtime_ns()),
                kind: "audit_gap",
                cause: "backlog",
                records_lost: self.dropped,
                file_records: None,
                from_hash: None,
                bytes_lost: None,
                reason: "the disk refused writes and the in-memory backlog was full",
            };
            if let Err(err) = self.write_record(&to_json(&gap)) {
                return self.failed(err);
            }
            self.dropped = 0;
        }
        while !self.pending.is_empty() {
            if let Err(err) = self.write_batch() {
                return self.failed(err);
            }
        }
        if self.failing {
            log::info!("audit log {} is writable again", self.options.path.display());
            self.failing = false;
        }
        self.retry_at = None;
        self.backoff = RETRY_FIRST;
        true
    }

    /// Chains as many pending records as fit before the next rotation (up
    /// to [`BATCH_BYTES`]) and writes them with one system call. On failure
    /// none of them stays in the file and all stay pending.
    fn write_batch(&mut self) -> std::io::Result<()> {
        let mut batch = String::new();
        let mut hash = self.prev_hash.clone();
        let (mut taken, mut seq) = (0, None);
        for (json, record_seq) in &self.pending {
            let at = self.size + batch.len() as u64;
            if at > 0 && at + line_len(json) as u64 > self.options.max_bytes {
                break;
            }
            let (line, next) = chained_line(&hash, json);
            batch.push_str(&line);
            hash = next;
            taken += 1;
            if record_seq.is_some() {
                seq = *record_seq;
            }
            if batch.len() >= BATCH_BYTES {
                break;
            }
        }
        if taken == 0 {
            // The next record does not fit in this file any more.
            return self.rotate();
        }
        if let Err(err) = self.file.write_all(batch.as_bytes()) {
            // Do not leave part of it behind: cut back to the last whole line.
            let _ = self.file.set_len(self.size);
            return Err(err);
        }
        self.size += batch.len() as u64;
        self.prev_hash = hash;
        self.pending.drain(..taken);
        if seq.is_some() {
            self.written_seq = seq;
        }
        if let Some(sealer) = &mut self.sealer {
            sealer.unsealed += taken as u64;
        }
        Ok(())
    }

    /// Chains and appends one record, rotating first when it would not fit.
    fn write_record(&mut self, json: &str) -> std::io::Result<()> {
        if self.size > 0 && self.size + line_len(json) as u64 > self.options.max_bytes {
            self.rotate()?;
        }
        self.write_here(json)
    }

    /// Chains and appends one record to the current file.
    fn write_here(&mut self, json: &str) -> std::io::Result<()> {
        let (line, hash) = chained_line(&self.prev_hash, json);
        if let Err(err) = self.file.write_all(line.as_bytes()) {
            // Do not leave half a line behind: cut back to the last whole one.
            let _ = self.file.set_len(self.size);
            return Err(err);
        }
        self.size += line.len() as u64;
        self.prev_hash = hash;
        if let Some(sealer) = &mut self.sealer {
            sealer.unsealed += 1;
        }
        Ok(())
    }

    fn failed(&mut self, err: std::io::Error) -> bool {
        if let Some(metrics) = &self.metrics {
            metrics.log_write_errors.inc();
        }
        if self.failing {
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
        } else {
            log::error!(
                "audit log {}: {err}; holding up to {} records in memory until it can be written (retrying at most every {RETRY_MAX:?})",
                self.options.path.display(),
                self.options.backlog_limit
            );
            self.failing = true;
            self.backoff = RETRY_FIRST;
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        false
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        // A full file ends with a seal: every file can be checked on its own.
        self.seal_here("rotation")?;
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
        self.identity = watch::identity(&self.file)?;
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

    /// A clean stop: everything written, then an `audit_stop` record and the
    /// last seal, synced. The next run's segment says `"previous_run":"clean"`.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let stop = Stop {
            ts: rfc3339(realtime_ns()),
            kind: "audit_stop",
            last_seq: self.appended_seq,
            pid: std::process::id(),
        };
        self.append(to_json(&stop), None);
        if !self.write_pending(true) {
            log::error!(
                "audit log {}: {} records could not be written before the agent stopped",
                self.options.path.display(),
                self.pending.len() as u64 + self.dropped
            );
            return;
        }
        if let Err(err) = self.seal("agent_stop") {
            self.failed(err);
        }
        self.sync(true);
    }
}

impl Exporter for AuditLog {
    fn name(&self) -> &'static str {
        "audit log"
    }

    fn export(&mut self, event: &Event, json: &str) -> Result<(), ExportError> {
        self.append(json.to_owned(), Some(event.seq));
        if self.pending.len() >= WRITE_BATCH {
            self.write_pending(false);
        }
        Ok(())
    }

    /// Never fails: a full disk is counted and retried, not fatal.
    fn flush(&mut self) -> Result<(), ExportError> {
        if self.write_pending(false) {
            let due = self.sealer.as_ref().is_some_and(|s| s.last.elapsed() >= self.options.seal_interval);
            if due {
                if let Err(err) = self.seal("interval") {
                    self.failed(err);
                    return Ok(());
                }
            }
            self.sync(false);
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), ExportError> {
        AuditLog::close(self);
        Ok(())
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Not a clean stop (that is `close`): the next run says `crashed`.
        if !self.closed && self.write_pending(true) {
            self.sync(true);
        }
    }
}
