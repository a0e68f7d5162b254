//! Whether the log file the agent holds open is still the one at its path:
//! one `stat` of the path before each batch is written (5 ms after new
//! records, or every 1,024 records under load; about a microsecond each).

use std::{
    fs::File,
    io::{BufRead, BufReader, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::Path,
};

use super::{open_append, records::Gap, to_json, AuditLog};
use crate::{audit::split_line, event::clock::rfc3339, sys::clock::realtime_ns};

/// What happened to the file at the log's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Unlinked: nothing names the file the agent writes any more.
    Deleted,
    /// Renamed away: the path is free, the file lives on under another name.
    Moved,
    /// Another file is at the path now.
    Replaced,
    /// Same file, shorter than what the agent wrote.
    Truncated { bytes: u64 },
}

impl Change {
    pub fn cause(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Moved => "moved",
            Self::Replaced => "replaced",
            Self::Truncated { .. } => "truncated",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Deleted => "the log file was deleted while the agent wrote it; the agent reopened its path",
            Self::Moved => "the log file was moved away while the agent wrote it; the agent reopened its path",
            Self::Replaced => "another file replaced the log file while the agent wrote it; the agent appends to it",
            Self::Truncated { .. } => "the log file was cut shorter while the agent wrote it",
        }
    }
}

/// (device, inode)
pub(super) fn identity(file: &File) -> std::io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

/// Compares the path with the open file; `None` when all is as it was (or
/// the path cannot be checked).
pub(super) fn check(path: &Path, file: &File, identity: (u64, u64), written: u64) -> Option<Change> {
    match std::fs::metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == identity => {
            (meta.len() < written).then(|| Change::Truncated { bytes: written - meta.len() })
        }
        Ok(_) => Some(Change::Replaced),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let linked = file.metadata().map(|m| m.nlink() > 0).unwrap_or(false);
            Some(if linked { Change::Moved } else { Change::Deleted })
        }
        Err(_) => None,
    }
}

/// Whether the open file still has a name somewhere.
pub(super) fn still_linked(file: &File) -> bool {
    file.metadata().map(|m| m.nlink() > 0).unwrap_or(false)
}

/// The chained records in the open file, and the `prev_hash` of its first one.
pub(super) fn summarize(file: &File) -> (u64, Option<String>) {
    let Ok(mut reader) = file.try_clone() else { return (0, None) };
    // The clone shares the offset; the writer appends (O_APPEND), so moving it is harmless.
    if reader.seek(SeekFrom::Start(0)).is_err() {
        return (0, None);
    }
    let mut records = 0;
    let mut first = None;
    for line in BufReader::with_capacity(256 * 1024, reader).split(b'\n').map_while(Result::ok) {
        if let Some((_, prev, _)) = split_line(&String::from_utf8_lossy(&line)) {
            records += 1;
            first.get_or_insert_with(|| prev.to_owned());
        }
    }
    (records, first)
}

impl AuditLog {
    /// The path no longer names the file being written: go on at the path,
    /// with a gap record that says what happened (first in line).
    pub(super) fn reopen(&mut self, change: Change) -> std::io::Result<()> {
        let path = self.options.path.clone();
        let mut gap = Gap {
            ts: rfc3339(realtime_ns()),
            kind: "audit_gap",
            cause: change.cause(),
            records_lost: 0,
            file_records: None,
            from_hash: None,
            bytes_lost: None,
            reason: change.reason(),
        };
        if let Change::Truncated { bytes } = change {
            self.size -= bytes;
            gap.bytes_lost = Some(bytes);
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let file = open_append(&path)?;
            let (identity, size) = (identity(&file)?, file.metadata()?.len());
            let (records, from_hash) = summarize(&self.file);
            gap.records_lost = if still_linked(&self.file) { 0 } else { records };
            gap.file_records = Some(records);
            gap.from_hash = from_hash;
            (self.identity, self.size, self.file) = (identity, size, file);
        }
        log::warn!("audit log {}: {}", path.display(), change.reason());
        if let Some(metrics) = &self.metrics {
            metrics.audit_log_reopened.with_label_values(&[change.cause()]).inc();
        }
        self.pending.push_front((to_json(&gap), None));
        Ok(())
    }
}
