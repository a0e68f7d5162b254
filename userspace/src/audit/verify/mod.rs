//! `nstrail verify`: checks the chain through the log files; the seals'
//! places and epochs always, their tags with the verification key
//! ([`seals`]); and reports crashes, gaps and what the seals protect.

mod seals;

use std::path::PathBuf;

use serde_json::Value;

use super::{chain_hash, seal::VerificationKey, split_line, GENESIS};
use seals::{At, SealCheck};

/// What `nstrail verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Intact { records: u64, segments: u64, gaps: u64 },
    Broken { file: PathBuf, line: u64, problem: String },
}

#[derive(Default)]
pub struct VerifyOptions {
    /// Checks every seal's tag, each with the key of its key id (more than
    /// one after `setup-keys --force`).
    pub keys: Vec<VerificationKey>,
    /// The host's sealing key file: its epoch says how many seals were made,
    /// so a log cut after an earlier seal shows.
    pub seal_key: Option<PathBuf>,
    /// The log must reach this seal epoch (e.g. the last
    /// `nstrail_audit_seal_epoch` Prometheus saw).
    pub expect_epoch: Option<u64>,
}

/// The verdict, and what else a reader should know, one line each.
#[derive(Debug)]
pub struct Report {
    pub verdict: Verdict,
    pub notes: Vec<String>,
    /// Segments that say the run before did not stop cleanly.
    pub crashes: u64,
}

/// Checks the chain through `files` (oldest first, e.g. events.jsonl.2,
/// events.jsonl.1, events.jsonl) and names the first bad record.
pub fn verify(files: &[PathBuf]) -> std::io::Result<Verdict> {
    Ok(verify_with(files, &VerifyOptions::default())?.verdict)
}

fn report(verdict: Verdict, notes: Vec<String>, crashes: u64) -> std::io::Result<Report> {
    Ok(Report { verdict, notes, crashes })
}

fn record_seq(value: &Value) -> String {
    value["seq"].as_u64().map(|s| format!(" (seq {s})")).unwrap_or_default()
}

/// A gap's line in the report; `linked`: Some(true) when the line before
/// is the file's last, Some(false) when the gap bridges a file not given.
fn gap_note(at: &At, value: &Value, linked: Option<bool>) -> String {
    let n = value["records_lost"].as_u64().unwrap_or_default();
    let held = value["file_records"].as_u64().unwrap_or_default();
    let whereabouts = match linked {
        Some(true) => "in the file before",
        Some(false) => "not among these files",
        None => "in a file not given",
    };
    match value["cause"].as_str() {
        Some("deleted") => format!("gap: {at}: the log file was deleted while the agent wrote it: its {n} records are lost"),
        Some("moved") => format!(
            "gap: {at}: the log file was moved away while the agent wrote it; its {held} records are {whereabouts}"
        ),
        Some("replaced") if n > 0 => {
            format!("gap: {at}: another file replaced the log file while the agent wrote it: its {n} records are lost")
        }
        Some("replaced") => format!(
            "gap: {at}: another file replaced the log file while the agent wrote it; its {held} records are {whereabouts}"
        ),
        Some("truncated") => format!(
            "gap: {at}: the log file was cut shorter by {} bytes while the agent wrote it",
            value["bytes_lost"].as_u64().unwrap_or_default()
        ),
        _ => format!("gap: {at}: {n} records lost: {}", value["reason"].as_str().unwrap_or("(no reason given)")),
    }
}

fn crash_note(at: &At, value: &Value) -> String {
    let last = match (value["previous_last_seq"].as_u64(), value["previous_last_ts"].as_str()) {
        (Some(seq), Some(ts)) => format!("its last record was seq {seq}, written at {ts}"),
        (None, Some(ts)) => format!("its last record was written at {ts}"),
        _ => "its last record is unknown".into(),
    };
    let cut = if value["previous_truncated"] == true { " and was cut off mid-record" } else { "" };
    format!(
        "crash: {at}: the run before this segment did not stop cleanly{cut}; {last}; the agent started again at {} (an outage in between)",
        value["ts"].as_str().unwrap_or("?")
    )
}

/// Like [`verify`], with the seals checked against `options` and a report.
pub fn verify_with(files: &[PathBuf], options: &VerifyOptions) -> std::io::Result<Report> {
    let (mut records, mut segments, mut gaps, mut crashes) = (0u64, 0u64, 0u64, 0u64);
    let mut notes = Vec::new();
    let mut seals = SealCheck::new(&options.keys, options.seal_key.as_deref());
    let mut prev_hash: Option<String> = None;
    let mut prev_seq: Option<u64> = None;
    let mut genesis: Option<At> = None;
    let mut end = At { file: files.last().cloned().unwrap_or_default(), line: 0 };
    for (file_index, path) in files.iter().enumerate() {
        let bytes = std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
        let ends_with_newline = bytes.last().is_none_or(|b| *b == b'\n');
        let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let raw: Vec<&[u8]> = if body.is_empty() { Vec::new() } else { body.split(|b| *b == b'\n').collect() };
        let lines: Vec<String> = raw.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        seals.new_file();
        let mut offset = 0u64;
        for (index, line) in lines.iter().enumerate() {
            let number = index as u64 + 1;
            let at = At { file: path.clone(), line: number };
            end = at.clone();
            let line_offset = offset;
            offset += raw[index].len() as u64 + 1;
            let broken = |problem: String| Verdict::Broken { file: path.clone(), line: number, problem };
            let last = index + 1 == lines.len();
            let Some((json, prev, hash)) = split_line(line) else {
                if last && !ends_with_newline {
                    return report(broken("the file ends in a cut-off record (truncated)".into()), notes, crashes);
                }
                if next_is_segment_after_cut(&lines, index) {
                    // The agent was killed mid-write; the next run marked it.
                    gaps += 1;
                    continue;
                }
                return report(broken("not a chained record (line damaged or inserted)".into()), notes, crashes);
            };
            let value: Value = match serde_json::from_str(&json) {
                Ok(v) => v,
                Err(_) => return report(broken("not valid JSON (record altered)".into()), notes, crashes),
            };
            if chain_hash(prev, &json) != hash {
                let problem = format!("record{} was altered: its hash does not match its content", record_seq(&value));
                return report(broken(problem), notes, crashes);
            }
            let kind = value["type"].as_str().unwrap_or_default();
            if file_index == 0 && index == 0 && kind == "audit_segment" && prev == GENESIS {
                genesis = Some(at.clone());
            }
            if kind == "audit_segment" {
                segments += 1;
                prev_seq = None;
                if value["previous_run"] == "crashed" || value["previous_truncated"] == true {
                    crashes += 1;
                    notes.push(crash_note(&at, &value));
                }
                if let Some(why) = value["seal_missing"].as_str() {
                    let problem = format!("this run of the agent did not seal the log ({why}): nothing after the last seal before it can be verified");
                    if !options.keys.is_empty() {
                        return report(broken(problem), notes, crashes);
                    }
                    notes.push(format!("unsealed run: {at}: {problem}"));
                }
            }
            // A gap for a file that went away links to where that file began.
            let mut bridged = false;
            if kind == "audit_gap" {
                gaps += 1;
                prev_seq = None;
                bridged = prev_hash.as_deref().is_some_and(|e| e != prev && value["from_hash"].as_str() == Some(e));
                if bridged {
                    seals.bridged();
                }
                notes.push(gap_note(&at, &value, prev_hash.as_ref().map(|_| !bridged)));
            }
            let seq = value["seq"].as_u64();
            if prev_hash.as_ref().is_some_and(|e| e != prev && !bridged) {
                let problem = match (prev_seq, seq) {
                    _ if kind == "audit_gap" && value["cause"] == "truncated" => format!(
                        "the file was cut while the agent wrote it: {} bytes before this record were removed",
                        value["bytes_lost"].as_u64().unwrap_or_default()
                    ),
                    (Some(p), Some(s)) if s <= p => format!("record seq {s} after seq {p}: records were reordered"),
                    (Some(p), Some(s)) if s == p + 2 && next_seq(&lines, index) == Some(p + 1) => {
                        format!("record seq {s} comes before seq {}: records were reordered", p + 1)
                    }
                    (Some(p), Some(s)) if s > p + 1 => {
                        format!("records seq {} to {} are missing (deleted)", p + 1, s - 1)
                    }
                    _ if kind == "audit_segment" && prev == GENESIS => {
                        "a new chain starts here: earlier files are missing or were replaced".into()
                    }
                    _ => "the chain is broken before this record (a record was deleted or moved)".into(),
                };
                return report(broken(problem), notes, crashes);
            }
            // With no record before it, a record may link to anything: the
            // first file given can be a later rotation.
            if let (Some(p), Some(s)) = (prev_seq, seq) {
                if s != p + 1 {
                    return report(broken(format!("seq jumps from {p} to {s}")), notes, crashes);
                }
            }
            if kind == "audit_seal" {
                if let Err((at, problem)) = seals.seal(at, line_offset, &value, &json, prev) {
                    return report(Verdict::Broken { file: at.file, line: at.line, problem }, notes, crashes);
                }
            } else {
                seals.record();
            }
            if seq.is_some() {
                prev_seq = seq;
            }
            prev_hash = Some(hash.to_owned());
            records += 1;
        }
    }
    if let Err((at, problem)) = seals.finish(end, options.expect_epoch) {
        seals.notes(genesis.as_ref(), false, &mut notes);
        return report(Verdict::Broken { file: at.file, line: at.line, problem }, notes, crashes);
    }
    seals.notes(genesis.as_ref(), true, &mut notes);
    report(Verdict::Intact { records, segments, gaps }, notes, crashes)
}

fn next_is_segment_after_cut(lines: &[String], index: usize) -> bool {
    let Some((json, _, _)) = lines.get(index + 1).and_then(|l| split_line(l)) else {
        return false;
    };
    serde_json::from_str::<Value>(&json).is_ok_and(|v| v["type"] == "audit_segment" && v["previous_truncated"] == true)
}

fn next_seq(lines: &[String], index: usize) -> Option<u64> {
    let (json, _, _) = split_line(lines.get(index + 1)?)?;
    serde_json::from_str::<Value>(&json).ok()?["seq"].as_u64()
}
