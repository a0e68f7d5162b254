//! The agent's configuration file (TOML). Every setting has a working
//! default, so no file is needed; unknown keys and bad values are refused
//! with the line and the reason.

pub mod duration;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{
    export::audit_log::{AuditOptions, Fsync},
    metrics::MetricsOptions,
    sensors::sysctl_write::policy::{self, SysctlPolicy},
};

/// Where the agent looks when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/nstrail/nstrail.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    sysctl_policy: policy::PolicySection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    audit_log: AuditSection,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    inventory: InventorySection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventorySection {
    /// How long a namespace may have no member process before it is reported as leaked.
    #[serde(default = "default_leak_age")]
    leak_age: toml::Spanned<String>,
    /// The container runtime's CRI socket, asked for pods: a path, "auto"
    /// (the default: containerd's or CRI-O's, whichever exists) or "none".
    #[serde(default)]
    cri_socket: Option<toml::Spanned<String>>,
}

/// A namespace without a member process for this long is leaked, by default.
pub const DEFAULT_LEAK_AGE: &str = "10m";

fn default_leak_age() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, DEFAULT_LEAK_AGE.to_owned())
}

impl Default for InventorySection {
    fn default() -> Self {
        Self { leak_age: default_leak_age(), cri_socket: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    /// Events queued per stream client before its events are dropped.
    #[serde(default = "default_client_buffer")]
    client_buffer: toml::Spanned<usize>,
    /// A group whose members may use the socket (mode 0660); root only without.
    #[serde(default)]
    group: Option<toml::Spanned<String>>,
    /// Clients served at once.
    #[serde(default = "default_max_clients")]
    max_clients: toml::Spanned<usize>,
}

/// Clients the local API serves at once by default.
pub const DEFAULT_MAX_CLIENTS: usize = 256;

fn default_max_clients() -> toml::Spanned<usize> {
    toml::Spanned::new(0..0, DEFAULT_MAX_CLIENTS)
}

fn default_client_buffer() -> toml::Spanned<usize> {
    toml::Spanned::new(0..0, 4096)
}

impl Default for ApiSection {
    fn default() -> Self {
        Self { client_buffer: default_client_buffer(), group: None, max_clients: default_max_clients() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_audit_path")]
    path: PathBuf,
    #[serde(default = "default_max_bytes")]
    max_bytes: toml::Spanned<u64>,
    #[serde(default = "default_keep")]
    keep: toml::Spanned<u32>,
    #[serde(default = "default_fsync")]
    fsync: Fsync,
    /// The sealing key (`nstrail audit setup-keys`); sealing is on when it exists. "" never seals.
    #[serde(default = "default_seal_key")]
    seal_key: PathBuf,
    #[serde(default = "default_seal_interval")]
    seal_interval: toml::Spanned<String>,
}

fn default_seal_key() -> PathBuf {
    PathBuf::from(crate::audit::seal::DEFAULT_KEY_PATH)
}

fn default_seal_interval() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, "15s".to_owned())
}

/// `500ms`, `15s`, `2m`, `1h` (the one parser, [`duration::parse`]).
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    duration::parse(text).ok()
}

fn default_audit_path() -> PathBuf {
    PathBuf::from(crate::audit::DEFAULT_PATH)
}

fn default_max_bytes() -> toml::Spanned<u64> {
    toml::Spanned::new(0..0, 64 * 1024 * 1024)
}

fn default_keep() -> toml::Spanned<u32> {
    toml::Spanned::new(0..0, 5)
}

fn default_fsync() -> Fsync {
    Fsync::Interval
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_audit_path(),
            max_bytes: default_max_bytes(),
            keep: default_keep(),
            fsync: default_fsync(),
            seal_key: default_seal_key(),
            seal_interval: default_seal_interval(),
        }
    }
}

/// Default address of the metrics endpoint (loopback only).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9717";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_listen")]
    listen: toml::Spanned<String>,
    #[serde(default)]
    netns_info: bool,
    #[serde(default = "default_info_limit")]
    netns_info_limit: usize,
    #[serde(default)]
    sysctl_labels: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

fn default_listen() -> toml::Spanned<String> {
    toml::Spanned::new(0..0, DEFAULT_METRICS_LISTEN.to_owned())
}

fn default_info_limit() -> usize {
    1000
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { enabled: true, listen: default_listen(), netns_info: false, netns_info_limit: 1000, sysctl_labels: None }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub sysctl_policy: SysctlPolicy,
    /// Where to serve /metrics; `None` when disabled.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub metrics: MetricsOptions,
    /// The audit log; `None` when disabled.
    pub audit_log: Option<AuditOptions>,
    /// Events queued per API stream client.
    pub api_client_buffer: usize,
    /// Who may use the local API.
    pub api_access: crate::serve::api::Access,
    /// A namespace without a member process for this long, claimed by no
    /// running container, is reported as leaked.
    pub leak_age: std::time::Duration,
    /// Where pods come from.
    pub cri_socket: crate::inventory::pods::CriSocket,
}

impl Default for Config {
    fn default() -> Self {
        Self::parse("").expect("the defaults are valid")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The largest config file accepted.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The most rotated audit log files kept.
pub const MAX_KEEP: u32 = 1000;

/// Reads a config file: a regular file of at most [`MAX_FILE_BYTES`], in
/// UTF-8 (the first byte that is not names its line).
fn read_limited(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let meta = file.metadata().map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(invalid(format!("{} bytes; a config file has at most {MAX_FILE_BYTES}", meta.len())));
    }
    let mut bytes = Vec::new();
    // The size checked above may change under us: read one byte more than allowed at most.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(invalid(format!("more than {MAX_FILE_BYTES} bytes")));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
        invalid(format!("line {line}: not UTF-8 text (byte {at})"))
    })
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

impl Config {
    /// Reads `path`, or the default path if it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(Self::default()),
        };
        let text = read_limited(&path)?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path, message })
    }

    /// Parses config text; the error names the line and the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| format!("line {}: ", line_of(text, s.start))).unwrap_or_default();
            format!("{line}{}", e.message().trim_end())
        })?;
        let m = &file.metrics;
        let metrics_listen = if m.enabled {
            let addr = m.listen.get_ref();
            Some(addr.parse().map_err(|_| {
                format!(
                    "line {}: metrics listen {addr:?} is not an address:port such as {DEFAULT_METRICS_LISTEN}",
                    line_of(text, m.listen.span().start)
                )
            })?)
        } else {
            None
        };
        let mut metrics =
            MetricsOptions { netns_info: m.netns_info, netns_info_limit: m.netns_info_limit, ..Default::default() };
        if let Some(labels) = &m.sysctl_labels {
            metrics.sysctl_labels = labels.iter().cloned().collect();
        }
        let a = &file.audit_log;
        if *a.keep.get_ref() > MAX_KEEP {
            return Err(format!(
                "line {}: audit_log keep must be at most {MAX_KEEP}",
                line_of(text, a.keep.span().start)
            ));
        }
        if *a.max_bytes.get_ref() < 4096 {
            return Err(format!(
                "line {}: audit_log max_bytes must be at least 4096",
                line_of(text, a.max_bytes.span().start)
            ));
        }
        let seal_interval = parse_duration(a.seal_interval.get_ref())
            .filter(|d| (std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(3600)).contains(d))
            .ok_or_else(|| {
                format!(
                    "line {}: audit_log seal_interval {:?} is not a duration from 100ms to 1h, such as \"15s\"",
                    line_of(text, a.seal_interval.span().start),
                    a.seal_interval.get_ref()
                )
            })?;
        let audit_log = a.enabled.then(|| AuditOptions {
            path: a.path.clone(),
            max_bytes: *a.max_bytes.get_ref(),
            keep: *a.keep.get_ref(),
            fsync: a.fsync,
            seal_key: (!a.seal_key.as_os_str().is_empty()).then(|| a.seal_key.clone()),
            seal_interval,
            ..Default::default()
        });
        let api_client_buffer = *file.api.client_buffer.get_ref();
        if api_client_buffer == 0 || api_client_buffer > 1_000_000 {
            return Err(format!(
                "line {}: api client_buffer must be from 1 to 1000000",
                line_of(text, file.api.client_buffer.span().start)
            ));
        }
        let max_clients = *file.api.max_clients.get_ref();
        if max_clients == 0 || max_clients > 65536 {
            return Err(format!(
                "line {}: api max_clients must be from 1 to 65536",
                line_of(text, file.api.max_clients.span().start)
            ));
        }
        let group = match &file.api.group {
            Some(group) if group.get_ref().is_empty() || group.get_ref().contains(['\n', ':']) => {
                return Err(format!(
                    "line {}: api group {:?} is not a group name",
                    line_of(text, group.span().start),
                    group.get_ref()
                ));
            }
            Some(group) => Some(group.get_ref().clone()),
            None => None,
        };
        let api_access = crate::serve::api::Access { group, max_clients };
        let age = &file.inventory.leak_age;
        let leak_age = duration::parse(age.get_ref())
            .and_then(|d| {
                if d < std::time::Duration::from_secs(1) {
                    Err(format!("{:?} is shorter than 1s", age.get_ref()))
                } else {
                    Ok(d)
                }
            })
            .map_err(|e| format!("line {}: inventory leak_age {e}", line_of(text, age.span().start)))?;
        let cri_socket = match file.inventory.cri_socket.as_ref() {
            None => crate::inventory::pods::CriSocket::Auto,
            Some(socket) => match socket.get_ref().as_str() {
                "auto" => crate::inventory::pods::CriSocket::Auto,
                "none" => crate::inventory::pods::CriSocket::Off,
                path if path.starts_with('/') => crate::inventory::pods::CriSocket::At(path.into()),
                other => {
                    return Err(format!(
                        "line {}: inventory cri_socket {other:?} is not an absolute path, \"auto\" or \"none\"",
                        line_of(text, socket.span().start)
                    ))
                }
            },
        };
        Ok(Self {
            cri_socket,
            sysctl_policy: SysctlPolicy::compile(&file.sysctl_policy)
                .map_err(|e| format!("line {}: {}", line_of(text, e.at), e.message))?,
            metrics_listen,
            metrics,
            audit_log,
            api_client_buffer,
            api_access,
            leak_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_file_means_defaults() {
        let config = Config::parse("").unwrap();
        assert!(config.sysctl_policy.rules.is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = Config::parse("\n[sysctl_policy]\nenabled = true\ncolour = 1\n").unwrap_err();
        assert!(err.starts_with("line 4: unknown field `colour`"), "{err}");
        let err = Config::parse("[nope]\n").unwrap_err();
        assert!(err.starts_with("line 1: unknown field `nope`"), "{err}");
    }

    #[test]
    fn metrics_defaults_and_overrides() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.metrics_listen, Some(DEFAULT_METRICS_LISTEN.parse().unwrap()));
        assert!(!config.metrics.netns_info);
        let config = Config::parse(
            "[metrics]\nlisten = \"127.0.0.1:1\"\nnetns_info = true\nsysctl_labels = [\"net.core.somaxconn\"]\n",
        )
        .unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:1".parse().unwrap()));
        assert!(config.metrics.netns_info);
        assert_eq!(config.metrics.sysctl_labels.len(), 1);
        assert_eq!(Config::parse("[metrics]\nenabled = false\n").unwrap().metrics_listen, None);
        let err = Config::parse("[metrics]\n\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.starts_with("line 3: metrics listen \"localhost\" is not an address:port"), "{err}");
    }

    #[test]
    fn limits_are_refused_with_their_line() {
        let err = Config::parse("[audit_log]\n\nkeep = 4294967295\n").unwrap_err();
        assert!(err.starts_with("line 3: audit_log keep must be at most 1000"), "{err}");
        assert_eq!(Config::parse("[audit_log]\nkeep = 1000\n").unwrap().audit_log.unwrap().keep, 1000);
    }

    #[test]
    fn files_that_are_not_small_utf8_text_are_refused() {
        let dir = std::env::temp_dir().join(format!("nstrail-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let refused = |path: &Path| Config::load(Some(path)).unwrap_err().to_string();
        assert!(refused(Path::new("/dev/zero")).ends_with("not a regular file"), "{}", refused(Path::new("/dev/zero")));
        assert!(refused(&dir).ends_with("not a regular file"));
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(refused(&big).contains("bytes; a config file has at most 1048576"), "{}", refused(&big));
        let latin1 = dir.join("latin1.toml");
        std::fs::write(&latin1, b"[metrics]\n# caf\xe9\n").unwrap();
        assert!(refused(&latin1).ends_with("line 2: not UTF-8 text (byte 15)"), "{}", refused(&latin1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sealing_defaults_and_overrides() {
        let audit = Config::parse("").unwrap().audit_log.unwrap();
        assert_eq!(audit.seal_key.as_deref(), Some(Path::new("/var/lib/nstrail/seal.key")));
        assert_eq!(audit.seal_interval, std::time::Duration::from_secs(15));
        let audit =
            Config::parse("[audit_log]\nseal_key = \"\"\nseal_interval = \"250ms\"\n").unwrap().audit_log.unwrap();
        assert_eq!((audit.seal_key, audit.seal_interval), (None, std::time::Duration::from_millis(250)));
        let err = Config::parse("[audit_log]\n\nseal_interval = \"5\"\n").unwrap_err();
        assert!(err.starts_with("line 3: audit_log seal_interval \"5\" is not a duration"), "{err}");
        assert!(Config::parse("[audit_log]\nseal_interval = \"10ms\"\n").is_err());
    }

    #[test]
    fn cri_socket_defaults_to_auto_and_is_checked() {
        use crate::inventory::pods::CriSocket;
        assert_eq!(Config::parse("").unwrap().cri_socket, CriSocket::Auto);
        assert_eq!(Config::parse("[inventory]\ncri_socket = \"none\"\n").unwrap().cri_socket, CriSocket::Off);
        let at = Config::parse("[inventory]\ncri_socket = \"/run/k3s/containerd/containerd.sock\"\n").unwrap();
        assert_eq!(at.cri_socket, CriSocket::At("/run/k3s/containerd/containerd.sock".into()));
        let err = Config::parse("[inventory]\n\ncri_socket = \"containerd.sock\"\n").unwrap_err();
        assert_eq!(
            err,
            "line 3: inventory cri_socket \"containerd.sock\" is not an absolute path, \"auto\" or \"none\""
        );
    }

    #[test]
    fn leak_age_defaults_to_ten_minutes_and_is_checked() {
        assert_eq!(Config::parse("").unwrap().leak_age, std::time::Duration::from_secs(600));
        assert_eq!(Config::parse("[inventory]\nleak_age = \"2s\"\n").unwrap().leak_age.as_secs(), 2);
        let err = Config::parse("[inventory]\n\nleak_age = \"soon\"\n").unwrap_err();
        assert_eq!(err, "line 3: inventory leak_age \"soon\" is not a duration such as 90s, 10m, 2h or 1d");
        let err = Config::parse("[inventory]\nleak_age = \"500ms\"\n").unwrap_err();
        assert_eq!(err, "line 2: inventory leak_age \"500ms\" is shorter than 1s");
        let err = Config::parse("[inventory]\nleak_age = 5\n").unwrap_err();
        assert!(err.starts_with("line 2: invalid type"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let err = Config::parse("[sysctl_policy]\nenabled = \"yes\"\n").unwrap_err();
        assert!(err.starts_with("line 2: invalid type"), "{err}");
    }
}
