//! The agent's configuration file (TOML). Every setting has a working
//! default, so no file is needed; unknown keys and bad values are refused
//! with the line and the reason.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::{self, SysctlPolicy};

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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    /// Events queued per stream client before its events are dropped.
    #[serde(default = "default_client_buffer")]
    client_buffer: toml::Spanned<usize>,
}

fn default_client_buffer() -> toml::Spanned<usize> {
    toml::Spanned::new(0..0, 4096)
}

impl Default for ApiSection {
    fn default() -> Self {
        Self { client_buffer: default_client_buffer() }
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
    keep: u32,
    #[serde(default = "default_fsync")]
    fsync: crate::audit::Fsync,
}

fn default_audit_path() -> PathBuf {
    PathBuf::from(crate::audit::DEFAULT_PATH)
}

fn default_max_bytes() -> toml::Spanned<u64> {
    toml::Spanned::new(0..0, 64 * 1024 * 1024)
}

fn default_keep() -> u32 {
    5
}

fn default_fsync() -> crate::audit::Fsync {
    crate::audit::Fsync::Interval
}

impl Default for AuditSection {
    fn default() -> Self {
        Self { enabled: true, path: default_audit_path(), max_bytes: default_max_bytes(), keep: 5, fsync: default_fsync() }
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
    pub metrics: crate::metrics::MetricsOptions,
    /// The audit log; `None` when disabled.
    pub audit_log: Option<crate::audit::AuditOptions>,
    /// Events queued per API stream client.
    pub api_client_buffer: usize,
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

/// 1-based line of a byte offset in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
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
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
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
                format!("line {}: metrics listen {addr:?} is not an address:port such as {DEFAULT_METRICS_LISTEN}", line_of(text, m.listen.span().start))
            })?)
        } else {
            None
        };
        let mut metrics = crate::metrics::MetricsOptions { netns_info: m.netns_info, netns_info_limit: m.netns_info_limit, ..Default::default() };
        if let Some(labels) = &m.sysctl_labels {
            metrics.sysctl_labels = labels.iter().cloned().collect();
        }
        let a = &file.audit_log;
        if *a.max_bytes.get_ref() < 4096 {
            return Err(format!("line {}: audit_log max_bytes must be at least 4096", line_of(text, a.max_bytes.span().start)));
        }
        let audit_log = a.enabled.then(|| crate::audit::AuditOptions {
            path: a.path.clone(),
            max_bytes: *a.max_bytes.get_ref(),
            keep: a.keep,
            fsync: a.fsync,
            ..Default::default()
        });
        let api_client_buffer = *file.api.client_buffer.get_ref();
        if api_client_buffer == 0 || api_client_buffer > 1_000_000 {
            return Err(format!("line {}: api client_buffer must be from 1 to 1000000", line_of(text, file.api.client_buffer.span().start)));
        }
        Ok(Self {
            sysctl_policy: SysctlPolicy::compile(&file.sysctl_policy, text)?,
            metrics_listen,
            metrics,
            audit_log,
            api_client_buffer,
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
        let config = Config::parse("[metrics]\nlisten = \"127.0.0.1:1\"\nnetns_info = true\nsysctl_labels = [\"net.core.somaxconn\"]\n").unwrap();
        assert_eq!(config.metrics_listen, Some("127.0.0.1:1".parse().unwrap()));
        assert!(config.metrics.netns_info);
        assert_eq!(config.metrics.sysctl_labels.len(), 1);
        assert_eq!(Config::parse("[metrics]\nenabled = false\n").unwrap().metrics_listen, None);
        let err = Config::parse("[metrics]\n\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.starts_with("line 3: metrics listen \"localhost\" is not an address:port"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_their_line() {
        let err = Config::parse("[sysctl_policy]\nenabled = \"yes\"\n").unwrap_err();
        assert!(err.starts_with("line 2: invalid type"), "{err}");
    }
}
