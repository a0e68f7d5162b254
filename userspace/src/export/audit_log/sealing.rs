//! Sealing in the writer: the key at start, a seal written and synced
//! before its key is evolved, and a seal the previous run left behind.

use std::time::Instant;

use super::{records, records::Previous, records::Seal, to_json, AuditLog, AuditOptions};
use crate::{
    audit::seal::{with_tag, KeyError, SealingKey},
    event::clock::rfc3339,
    sys::clock::realtime_ns,
};

/// How far a start moves the key to catch up with a seal the previous run
/// wrote (the key file's own epoch when it crashed between writing the seal
/// and replacing the key; further only when it could not replace the key
/// file for a while): 2^24 seals, a few seconds of derivation.
const MAX_CATCH_UP: u64 = 1 << 24;

/// Room a seal line needs (about 330 bytes).
const SEAL_ROOM: u64 = 512;

pub(super) struct Sealer {
    key: SealingKey,
    pub last: Instant,
    /// Lines written since the last seal.
    pub unsealed: u64,
}

impl Sealer {
    pub fn key_id(&self) -> &str {
        self.key.key_id()
    }

    pub fn epoch(&self) -> u64 {
        self.key.epoch()
    }
}

impl AuditLog {
    /// The sealing key, when there is one; else why a sealed log goes on unsealed.
    pub(super) fn sealer(options: &AuditOptions, previous: Option<&Previous>) -> (Option<Sealer>, Option<String>) {
        let Some(path) = &options.seal_key else { return (None, None) };
        let sealed_before = previous.is_some_and(|p| p.last_seal.is_some());
        match SealingKey::open(path) {
            Ok(key) => {
                log::info!("audit log sealed with {} (key id {}, epoch {})", path.display(), key.key_id(), key.epoch());
                (Some(Sealer { key, last: Instant::now(), unsealed: 0 }), None)
            }
            Err(KeyError::Missing(_)) if !sealed_before => (None, None),
            Err(err) => {
                log::error!("audit log {}: {err}; this run does not seal it", options.path.display());
                (None, Some(err.to_string()))
            }
        }
    }

    /// The previous run wrote a seal and stopped before it could evolve
    /// the key (or could not save it): move the key past that seal.
    pub(super) fn catch_up(&mut self, seal: &records::TailSeal) {
        let Some(sealer) = &mut self.sealer else { return };
        if seal.key_id != sealer.key.key_id() || seal.epoch < sealer.key.epoch() {
            return;
        }
        if seal.epoch - sealer.key.epoch() > MAX_CATCH_UP {
            // Not what a run that could not save its key leaves behind: do
            // not spend the start deriving keys for an altered record.
            log::error!(
                "audit log {}: its last seal claims epoch {}, {} past the key in {} (epoch {}): the log or the key was altered",
                self.options.path.display(),
                seal.epoch,
                seal.epoch - sealer.key.epoch(),
                sealer.key.path().display(),
                sealer.key.epoch()
            );
            return;
        }
        // The key of the seal's epoch, from the one in the file.
        let mut probe = sealer.key.key().duplicate();
        probe.advance_to(seal.epoch);
        if !probe.verifies(&seal.prev_hash, &seal.body, &seal.tag) {
            log::error!(
                "audit log {}: its last seal (epoch {}) does not verify with {}: the log or the key was altered",
                self.options.path.display(),
                seal.epoch,
                sealer.key.path().display()
            );
            return;
        }
        log::info!("the previous run sealed epoch {} but did not evolve its key; evolving it now", seal.epoch);
        if let Err(err) = sealer.key.advance_to(seal.epoch + 1) {
            log::error!("cannot replace the sealing key {}: {err}", sealer.key.path().display());
        }
    }

    /// Seals, unless nothing was written since the last seal (an interval
    /// seal) or there is no key. A seal that would not fit in the file
    /// becomes the rotation's closing seal.
    pub(super) fn seal(&mut self, reason: &str) -> std::io::Result<()> {
        let Some(sealer) = &self.sealer else { return Ok(()) };
        if sealer.unsealed == 0 && reason == "interval" {
            return Ok(());
        }
        if self.size > 0 && self.size + SEAL_ROOM > self.options.max_bytes {
            return self.rotate();
        }
        self.seal_here(reason)
    }

    /// Writes a seal with the current key, syncs it, then evolves the key.
    pub(super) fn seal_here(&mut self, reason: &str) -> std::io::Result<()> {
        let Some(sealer) = &self.sealer else { return Ok(()) };
        let now = realtime_ns();
        let epoch = sealer.key.epoch();
        let seal = Seal {
            ts: rfc3339(now),
            kind: "audit_seal",
            reason,
            epoch,
            key_id: sealer.key.key_id(),
            sealed_seq: self.written_seq,
            file_offset: self.size,
        };
        let body = to_json(&seal);
        let json = with_tag(&body, &sealer.key.key().tag(&self.prev_hash, &body));
        self.write_here(&json)?;
        // The seal is on disk before its key is gone: a seal never goes missing after a crash.
        if let Err(err) = self.file.sync_data() {
            log::error!("audit log {}: cannot sync its seal of epoch {epoch}: {err}", self.options.path.display());
        }
        let sealer = self.sealer.as_mut().expect("checked above");
        sealer.unsealed = 0;
        sealer.last = Instant::now();
        if let Err(err) = sealer.key.advance_to(epoch + 1) {
            log::error!(
                "cannot replace the sealing key {}: {err}; the key of epoch {epoch} may still be on disk",
                sealer.key.path().display()
            );
        }
        if let Some(metrics) = &self.metrics {
            metrics.audit_seal_epoch.set(epoch as i64);
            metrics.audit_last_sealed_seq.set(self.written_seq.unwrap_or(0) as i64);
            metrics.audit_last_seal_time.set(now as f64 / 1e9);
        }
        Ok(())
    }
}
