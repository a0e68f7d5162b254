//! Forward-secure sealing of the audit log: a MAC chain with one-way key
//! evolution (Bellare & Yee 1997, "Forward integrity for secure audit
//! logs"; the construction journald's Forward Secure Sealing also follows,
//! with a seekable key generator instead of a plain hash chain: Marson &
//! Poettering 2013).
//!
//! - `K_0`: 32 random bytes, made by `nstrail audit setup-keys`. It is the
//!   verification key: the operator keeps it off the host.
//! - `K_{i+1} = HMAC-SHA256(K_i, "nstrail-seal-v1 evolve")`. The agent holds
//!   only the current `K_i` (in the sealing key file) and replaces it with
//!   `K_{i+1}` right after sealing with it; HMAC is a one-way function of its
//!   key, so a thief of `K_j` cannot compute any earlier key.
//! - A seal of epoch `i` is a record of the chain (`"type":"audit_seal"`)
//!   whose `tag` is `HMAC-SHA256(M_i, prev_hash || the seal's JSON without
//!   its tag)`, `M_i = HMAC-SHA256(K_i, "nstrail-seal-v1 mac")`. `prev_hash`
//!   is the chain hash of the line before, so a seal vouches for every line
//!   before it; epochs count up by one, so a deleted seal shows.
//! - The key id (in every seal) is the first 8 bytes of
//!   `HMAC-SHA256(K_0, "nstrail-seal-v1 key id")`, in hex.
//!
//! Key file (mode 0600, replaced atomically at every evolution: a new file,
//! fsync, rename, fsync of the folder), one JSON object:
//!     {"format":"nstrail-seal-key/1","key_id":"<16 hex>","epoch":N,"key":"<64 hex: K_N>"}
//! `epoch` is the epoch of the next seal. The agent holds an exclusive
//! `flock` on `<key file>.lock` while it runs.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::{
        fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::hex;

/// Where the agent looks for its sealing key (`[audit_log] seal_key`).
pub const DEFAULT_KEY_PATH: &str = "/var/lib/nstrail/seal.key";
/// No genuine seal has an epoch beyond this: 2^32 seals are 13 years of
/// seals every 100 ms (the shortest interval), and deriving their key takes
/// about half an hour. An epoch beyond it is an altered record or key file,
/// not a reason to derive keys for ever.
pub const MAX_EPOCH: u64 = 1 << 32;
const FORMAT: &str = "nstrail-seal-key/1";
const LABEL_EVOLVE: &[u8] = b"nstrail-seal-v1 evolve";
const LABEL_MAC: &[u8] = b"nstrail-seal-v1 mac";
const LABEL_ID: &[u8] = b"nstrail-seal-v1 key id";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn prf(key: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = hmac(key);
    mac.update(label);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

fn unhex32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn key_id_of(k0: &[u8; 32]) -> String {
    hex(&prf(k0, LABEL_ID)[..8])
}

/// The key of one epoch.
pub struct EpochKey {
    epoch: u64,
    key: Zeroizing<[u8; 32]>,
}

impl EpochKey {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A copy, to evolve apart from the original.
    pub(crate) fn duplicate(&self) -> Self {
        Self { epoch: self.epoch, key: self.key.clone() }
    }

    fn evolve(&mut self) {
        let next = prf(&self.key, LABEL_EVOLVE);
        self.key.copy_from_slice(&*next);
        self.epoch += 1;
    }

    /// Evolves forward to `epoch` (never back: that is the point).
    pub fn advance_to(&mut self, epoch: u64) {
        while self.epoch < epoch {
            self.evolve();
        }
    }

    fn mac(&self, prev_hash: &str, body: &str) -> HmacSha256 {
        let mut mac = hmac(&*prf(&self.key, LABEL_MAC));
        mac.update(prev_hash.as_bytes());
        mac.update(body.as_bytes());
        mac
    }

    /// The tag of a seal whose JSON without the tag is `body`, following the line hashed `prev_hash`.
    pub fn tag(&self, prev_hash: &str, body: &str) -> String {
        hex(&self.mac(prev_hash, body).finalize().into_bytes())
    }

    /// Checks a tag in constant time.
    pub fn verifies(&self, prev_hash: &str, body: &str, tag: &str) -> bool {
        match unhex32(tag) {
            Some(tag) => self.mac(prev_hash, body).verify_slice(&*tag).is_ok(),
            None => false,
        }
    }
}

/// `K_0`, from which every epoch's key follows.
pub struct VerificationKey {
    k0: Zeroizing<[u8; 32]>,
    id: String,
}

impl VerificationKey {
    /// From the 64 hex digits `setup-keys` printed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let k0 =
            unhex32(text).ok_or("a verification key is 64 hex digits, as `nstrail audit setup-keys` printed it")?;
        Ok(Self { id: key_id_of(&k0), k0 })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex(&*self.k0))
    }

    /// The key of `epoch` (`epoch` HMACs).
    pub fn at(&self, epoch: u64) -> EpochKey {
        let mut key = EpochKey { epoch: 0, key: self.k0.clone() };
        key.advance_to(epoch);
        key
    }
}

/// Splits a seal's JSON into (the JSON its tag covers, the tag).
pub fn split_tag(json: &str) -> Option<(String, &str)> {
    let (body, tag) = json.strip_suffix("\"}")?.rsplit_once(",\"tag\":\"")?;
    (tag.len() == 64).then(|| (format!("{body}}}"), tag))
}

/// A seal's JSON: `body` with its tag appended.
pub fn with_tag(body: &str, tag: &str) -> String {
    format!("{},\"tag\":\"{tag}\"}}", body.strip_suffix('}').unwrap_or(body))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no sealing key at {0}")]
    Missing(PathBuf),
    #[error("{0} exists (the agent may be sealing with it); pass --force to replace it: seals made with the old key then verify only with the old verification key")]
    Exists(PathBuf),
    #[error("the sealing key {0} is in use by a running agent ({0}.lock is locked)")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a sealing key file: {why}")]
    Invalid { path: PathBuf, why: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

#[derive(serde::Deserialize)]
struct KeyFileData {
    format: String,
    key_id: String,
    epoch: u64,
    key: String,
}

/// What a sealing key file holds: its key id and the key of its epoch.
pub struct KeyState {
    pub key_id: String,
    pub key: EpochKey,
}

impl KeyState {
    /// Whether this state belongs to `verification` and holds the genuine key of its epoch.
    pub fn genuine_for(&self, verification: &VerificationKey) -> bool {
        self.key_id == verification.id
            && self.key.epoch <= MAX_EPOCH
            && *verification.at(self.key.epoch).key == *self.key.key
    }
}

/// Reads a sealing key file (without locking it: `verify --seal-key`).
pub fn read_state(path: &Path) -> Result<KeyState, KeyError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyError::Missing(path.to_path_buf())),
        Err(e) => return Err(io_error(path)(e)),
    };
    let invalid = |why: String| KeyError::Invalid { path: path.to_path_buf(), why };
    let mut data: KeyFileData = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let key = unhex32(&data.key);
    data.key.zeroize();
    if data.format != FORMAT {
        return Err(invalid(format!("format {:?}, expected {FORMAT:?}", data.format)));
    }
    let key = key.ok_or_else(|| invalid("its key is not 64 hex digits".into()))?;
    Ok(KeyState { key_id: data.key_id, key: EpochKey { epoch: data.epoch, key } })
}

/// Replaces `path` atomically with `text`: a new file, fsync, rename, fsync of the folder.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?.sync_all()
}

fn state_text(key_id: &str, key: &EpochKey) -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{{\"format\":\"{FORMAT}\",\"key_id\":\"{key_id}\",\"epoch\":{},\"key\":\"{}\"}}\n",
        key.epoch,
        hex(&*key.key)
    ))
}

/// Takes `<path>.lock` exclusively, or says who holds it.
fn lock(path: &Path) -> Result<File, KeyError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(KeyError::InUse(path.to_path_buf()));
        }
        return Err(io_error(&lock_path)(err));
    }
    Ok(file)
}

/// `nstrail audit setup-keys`: a new `K_0` in a new key file at epoch 0.
/// Returns the verification key, which is not stored anywhere.
pub fn setup_keys(path: &Path, force: bool) -> Result<VerificationKey, KeyError> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error(dir))?;
    }
    let _lock = lock(path)?;
    if path.exists() && !force {
        return Err(KeyError::Exists(path.to_path_buf()));
    }
    let mut k0 = Zeroizing::new([0u8; 32]);
    let mut filled = 0;
    while filled < k0.len() {
        // SAFETY: getrandom writes at most the given length into our buffer.
        let n = unsafe { libc::getrandom(k0[filled..].as_mut_ptr().cast(), k0.len() - filled, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_error(path)(err));
            }
            continue;
        }
        filled += n as usize;
    }
    let verification = VerificationKey { id: key_id_of(&k0), k0 };
    write_atomic(path, &state_text(&verification.id, &verification.at(0))).map_err(io_error(path))?;
    Ok(verification)
}

/// The agent's sealing key: locked while it runs, evolved after each seal.
pub struct SealingKey {
    path: PathBuf,
    state: KeyState,
    _lock: File,
}

impl SealingKey {
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        if !path.exists() {
            return Err(KeyError::Missing(path.to_path_buf()));
        }
        let lock = lock(path)?;
        let state = read_state(path)?;
        Ok(Self { path: path.to_path_buf(), state, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn key_id(&self) -> &str {
        &self.state.key_id
    }

    /// The epoch of the next seal.
    pub fn epoch(&self) -> u64 {
        self.state.key.epoch
    }

    pub fn key(&self) -> &EpochKey {
        &self.state.key
    }

    /// Moves to the key of `epoch` (after the current one) and erases the
    /// current one from the file. In memory the key has moved on even when
    /// the file cannot be written.
    pub fn advance_to(&mut self, epoch: u64) -> std::io::Result<()> {
        self.state.key.advance_to(epoch);
        write_atomic(&self.path, &state_text(&self.state.key_id, &self.state.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_evolve_one_way_and_tags_verify_only_with_their_epoch() {
        let k0 = VerificationKey::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(k0.id().len(), 16);
        let mut key = k0.at(0);
        let tag = key.tag("00", r#"{"epoch":0}"#);
        assert!(key.verifies("00", r#"{"epoch":0}"#, &tag));
        assert!(!key.verifies("01", r#"{"epoch":0}"#, &tag));
        key.advance_to(3);
        assert_eq!(*key.key, *k0.at(3).key);
        assert!(!key.verifies("00", r#"{"epoch":0}"#, &tag));
        assert!(VerificationKey::parse("abc").is_err());
    }

    #[test]
    fn tags_split_off_and_back() {
        let json = with_tag(r#"{"type":"audit_seal","epoch":1}"#, &"0f".repeat(32));
        let (body, tag) = split_tag(&json).unwrap();
        assert_eq!(body, r#"{"type":"audit_seal","epoch":1}"#);
        assert_eq!(tag, "0f".repeat(32));
    }

    #[test]
    fn setup_writes_a_locked_key_file_at_epoch_zero() {
        let dir = std::env::temp_dir().join(format!("nstrail-seal-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("keys/seal.key");
        let verification = setup_keys(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(setup_keys(&path, false), Err(KeyError::Exists(_))));
        let mut sealing = SealingKey::open(&path).unwrap();
        assert!(matches!(SealingKey::open(&path), Err(KeyError::InUse(_))));
        assert!(matches!(setup_keys(&path, true), Err(KeyError::InUse(_))));
        assert_eq!((sealing.epoch(), sealing.key_id()), (0, verification.id()));
        sealing.advance_to(2).unwrap();
        let state = read_state(&path).unwrap();
        assert_eq!(state.key.epoch, 2);
        assert!(state.genuine_for(&verification));
        drop(sealing);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
