//! The seals' part of `verify`: where each seal sits in its file, that
//! epochs follow one another, and, with the verification key, each tag.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::audit::seal::{read_state, split_tag, EpochKey, KeyState, VerificationKey, MAX_EPOCH};

/// A line: its file and 1-based number.
#[derive(Debug, Clone)]
pub(super) struct At {
    pub file: PathBuf,
    pub line: u64,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone)]
pub(super) struct SealSeen {
    pub epoch: u64,
    pub ts: String,
    pub key_id: String,
    pub reason: String,
    pub sealed_seq: Option<u64>,
    pub at: At,
}

impl SealSeen {
    /// "seq S (last seal, epoch E at TIME)"
    pub fn describe(&self) -> String {
        let after = self.sealed_seq.map_or_else(|| self.at.to_string(), |s| format!("seq {s}"));
        format!("{after} (last seal, epoch {} at {})", self.epoch, self.ts)
    }
}

/// A problem at a line: (where, what).
pub(super) type Problem = (At, String);

pub(super) struct SealCheck<'a> {
    keys: &'a [VerificationKey],
    derived: Option<EpochKey>,
    pub first: Option<SealSeen>,
    pub last: Option<SealSeen>,
    pub count: u64,
    /// Chained records after the last seal.
    pub since_last: u64,
    /// A gap that bridges a lost file since the last seal: its seals went with it.
    bridged: bool,
    seen_in_file: bool,
    /// The host's key file, read before the log: a running agent may seal
    /// meanwhile, and then the key is ahead, never behind.
    host_key: Option<(PathBuf, Result<KeyState, String>)>,
}

impl<'a> SealCheck<'a> {
    pub fn new(keys: &'a [VerificationKey], host_key: Option<&Path>) -> Self {
        Self {
            keys,
            derived: None,
            first: None,
            last: None,
            count: 0,
            since_last: 0,
            bridged: false,
            seen_in_file: false,
            host_key: host_key.map(|p| (p.to_path_buf(), read_state(p).map_err(|e| e.to_string()))),
        }
    }

    pub fn new_file(&mut self) {
        self.seen_in_file = false;
    }

    pub fn bridged(&mut self) {
        self.bridged = true;
    }

    pub fn record(&mut self) {
        self.since_last += 1;
    }

    /// One seal at `offset` bytes into its file, following the line hashed `prev`.
    pub fn seal(&mut self, at: At, offset: u64, value: &Value, json: &str, prev: &str) -> Result<(), Problem> {
        let fail = |problem: String| Err((at.clone(), problem));
        let (Some(epoch), Some(key_id), Some(written_at)) =
            (value["epoch"].as_u64(), value["key_id"].as_str(), value["file_offset"].as_u64())
        else {
            return fail("a seal without epoch, key_id or file_offset (record altered)".into());
        };
        if epoch > MAX_EPOCH {
            return fail(format!(
                "seal epoch {epoch} is beyond any an agent reaches (at most {MAX_EPOCH}): the record was altered"
            ));
        }
        if written_at != offset {
            if !self.seen_in_file && offset < written_at {
                return fail(format!(
                    "the first {} bytes of this file are missing (head truncation): seal epoch {epoch} was written at byte {written_at} and is at byte {offset}",
                    written_at - offset
                ));
            }
            return fail(format!(
                "bytes were removed from or inserted into this file before this seal: it was written at byte {written_at} and is at byte {offset}"
            ));
        }
        if let Some(last) = self.last.as_ref().filter(|l| l.key_id == key_id) {
            if epoch <= last.epoch {
                return fail(format!("seal epoch {epoch} after epoch {}: a seal was repeated or moved", last.epoch));
            }
            if epoch > last.epoch + 1 && !self.bridged {
                return fail(format!(
                    "seal epochs {} to {} are missing: sealed records were deleted after {} (the log was cut there and continued)",
                    last.epoch + 1,
                    epoch - 1,
                    last.at
                ));
            }
        }
        if !self.keys.is_empty() {
            let Some(key) = self.keys.iter().find(|k| k.id() == key_id) else {
                let given: Vec<&str> = self.keys.iter().map(VerificationKey::id).collect();
                return fail(format!(
                    "this seal was made with another key (key id {key_id}; the verification key given has id {}): the log was re-sealed, or the keys were replaced (setup-keys --force)",
                    given.join(", ")
                ));
            };
            if self.last.as_ref().is_some_and(|l| l.key_id != key_id) {
                self.derived = None;
            }
            let derived = match self.derived.take() {
                Some(mut k) if k.epoch() <= epoch => {
                    k.advance_to(epoch);
                    k
                }
                _ => key.at(epoch),
            };
            let genuine = split_tag(json).is_some_and(|(body, tag)| derived.verifies(prev, &body, tag));
            self.derived = Some(derived);
            if !genuine {
                return fail(format!(
                    "seal epoch {epoch} does not verify with the key: the records before it were altered and re-chained, or the seal was forged"
                ));
            }
        }
        let seen = SealSeen {
            epoch,
            ts: value["ts"].as_str().unwrap_or_default().to_owned(),
            key_id: key_id.to_owned(),
            reason: value["reason"].as_str().unwrap_or_default().to_owned(),
            sealed_seq: value["sealed_seq"].as_u64(),
            at,
        };
        self.first.get_or_insert_with(|| seen.clone());
        self.last = Some(seen);
        self.count += 1;
        self.since_last = 0;
        self.bridged = false;
        self.seen_in_file = true;
        Ok(())
    }

    /// After the last line: what outside witnesses say about the end.
    pub fn finish(&self, end: At, expect_epoch: Option<u64>) -> Result<(), Problem> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let Some(last) = &self.last else {
            return Err((
                end,
                "no seal in these files: they are not sealed, or everything up to the last seal was cut off".into(),
            ));
        };
        if let Some((path, state)) = &self.host_key {
            let state =
                state.as_ref().map_err(|e| (end.clone(), format!("cannot check the host's sealing key: {e}")))?;
            if !self.keys.iter().any(|k| state.genuine_for(k)) {
                return Err((
                    end,
                    format!(
                        "the sealing key {} is not this verification key's at its epoch {} (key id {}): it was replaced or altered",
                        path.display(),
                        state.key.epoch(),
                        state.key_id
                    ),
                ));
            }
            let next = state.key.epoch();
            if state.key_id != last.key_id {
                return Err((
                    last.at.clone(),
                    format!(
                        "the host's sealing key (key id {}) is not the one of these files' last seal (key id {}): the keys were replaced after it",
                        state.key_id, last.key_id
                    ),
                ));
            }
            if last.epoch + 1 < next {
                return Err((
                    last.at.clone(),
                    format!(
                        "tail truncation: the host's sealing key is at epoch {next}, so seals up to epoch {} were written, but these files end at seal epoch {}: seals {} to {} and the records they sealed were deleted",
                        next - 1,
                        last.epoch,
                        last.epoch + 1,
                        next - 1
                    ),
                ));
            }
            // Read again: a running agent may have sealed while the files were read.
            let now = read_state(path).map(|s| s.key.epoch()).unwrap_or(next).max(next);
            if last.epoch > now {
                return Err((
                    last.at.clone(),
                    format!(
                        "the host's sealing key is at epoch {now}, behind this log's last seal (epoch {}): the key file was rolled back to an old copy, so seals from epoch {now} on may be forged",
                        last.epoch
                    ),
                ));
            }
        }
        if let Some(expected) = expect_epoch.filter(|e| last.epoch < *e) {
            return Err((
                last.at.clone(),
                format!(
                    "tail truncation: seal epoch {expected} was written (--expect-epoch), but these files end at seal epoch {}: the seals after it and the records they sealed were deleted",
                    last.epoch
                ),
            ));
        }
        Ok(())
    }

    /// What the seals say, for the report.
    /// `witnessed`: [`Self::finish`] found the end consistent with the host's key.
    pub fn notes(&self, starts_at_genesis: Option<&At>, witnessed: bool, notes: &mut Vec<String>) {
        let (Some(first), Some(last)) = (&self.first, &self.last) else {
            notes.push(if !self.keys.is_empty() {
                "unsealed: no seal in these files".into()
            } else {
                "unsealed: no seal in these files; the chain shows edits, but whoever can write the files can rewrite it (see `nstrail audit setup-keys`)".into()
            });
            return;
        };
        if self.keys.is_empty() {
            notes.push(format!(
                "sealed ({} seal{}, epochs {} to {}, key id {}), not verified with a key: pass --key to check the seals",
                self.count,
                if self.count == 1 { "" } else { "s" },
                first.epoch,
                last.epoch,
                last.key_id
            ));
            return;
        };
        let ids = if first.key_id == last.key_id {
            format!("key id {}", last.key_id)
        } else {
            format!("key ids {} (first) to {} (last)", first.key_id, last.key_id)
        };
        notes.push(format!(
            "sealed: {} seal{} verified with {ids}, epochs {} to {}",
            self.count,
            if self.count == 1 { "" } else { "s" },
            first.epoch,
            last.epoch
        ));
        notes.push(match starts_at_genesis {
            Some(at) => format!("start: the log is complete from its first record ({at}); first seal: epoch {}", first.epoch),
            None => format!(
                "start: these files begin after the log's start: earlier files were rotated away or not given; the first verifiable seal is epoch {} at {} ({})",
                first.epoch, first.ts, first.at
            ),
        });
        notes.push(format!("last validated: seal epoch {} at {} ({})", last.epoch, last.ts, last.at));
        if self.since_last == 0 {
            let stop = if last.reason == "agent_stop" { ": the log ends with the agent's clean stop" } else { "" };
            notes.push(format!("end: every record is sealed{stop}"));
        } else {
            notes.push(format!(
                "unprotected: {} record{} after {} {} not sealed: a truncation there cannot be detected",
                self.since_last,
                if self.since_last == 1 { "" } else { "s" },
                last.describe(),
                if self.since_last == 1 { "is" } else { "are" },
            ));
        }
        if let Some((path, Ok(state))) = self.host_key.as_ref().filter(|_| witnessed) {
            notes.push(format!(
                "host key: {} is at epoch {}: no seal is missing at the end",
                path.display(),
                state.key.epoch()
            ));
        }
    }
}
