//! The audit log's format: one JSON event per line, every line chained to
//! the one before by SHA-256, so `nstrail verify` finds the first record
//! that was deleted, altered or moved. Written by
//! [`crate::export::audit_log`], read by `verify` and `tail --since`.
//!
//! Line format: the event's JSON with two fields appended,
//!     {...event...,"prev_hash":"<64 hex>","hash":"<64 hex>"}
//! where hash = SHA-256(prev_hash as hex, then the event's JSON exactly as
//! written before the appended fields, closed with `}`).

pub mod seal;
mod verify;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use verify::{verify, verify_with, Report, Verdict, VerifyOptions};

pub const DEFAULT_PATH: &str = "/var/log/nstrail/events.jsonl";
/// The hash before the first record of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const SUFFIX_LEN: usize = r#","prev_hash":""#.len() + 64 + r#"","hash":""#.len() + 64 + r#""}"#.len();

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
    String::from_utf8(out).expect("hex digits are ASCII")
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

/// The length of the line [`chained_line`] makes of `event_json` (without hashing).
pub fn line_len(event_json: &str) -> usize {
    event_json.strip_suffix('}').unwrap_or(event_json).len() + SUFFIX_LEN + 1
}

/// Splits a log line into (event JSON, prev_hash, hash).
pub fn split_line(line: &str) -> Option<(String, &str, &str)> {
    if line.len() < SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return None;
    }
    // Not a boundary: no suffix of ours (a damaged line, lossily decoded).
    let (body, suffix) = line.split_at_checked(line.len() - SUFFIX_LEN)?;
    let prev = suffix.strip_prefix(r#","prev_hash":""#)?.get(..64)?;
    let hash = suffix.get(SUFFIX_LEN - 66..SUFFIX_LEN - 2)?;
    if !suffix[14 + 64..].starts_with(r#"","hash":""#) {
        return None;
    }
    Some((format!("{body}}}"), prev, hash))
}

/// `events.jsonl.N`
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The log's files oldest first: events.jsonl.N ... events.jsonl.1, events.jsonl
/// (those that exist).
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=1000).map(|n| rotated(path, n)).take_while(|p| p.exists()).collect();
    files.reverse();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_whose_suffix_would_split_a_character_is_not_ours() {
        // Found by the audit_lines fuzz target: a damaged line, lossily
        // decoded, ending where the suffix would start inside U+FFFD.
        let line = format!("ab\u{fffd}{}\"}}", "z".repeat(SUFFIX_LEN - 4));
        assert!(!line.is_char_boundary(line.len() - SUFFIX_LEN));
        assert_eq!(split_line(&line), None);
    }

    #[test]
    fn lines_split_back_into_their_parts() {
        let (line, hash) = chained_line(GENESIS, r#"{"seq":1,"type":"x"}"#);
        let (json, prev, h) = split_line(line.trim_end()).unwrap();
        assert_eq!((json.as_str(), prev, h), (r#"{"seq":1,"type":"x"}"#, GENESIS, hash.as_str()));
        assert_eq!(hash, chain_hash(GENESIS, r#"{"seq":1,"type":"x"}"#));
        assert!(split_line(r#"{"seq":1}"#).is_none());
        assert_eq!(line_len(r#"{"seq":1,"type":"x"}"#), line.len());
    }
}
