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
}

/// The validated configuration.
#[derive(Debug, Default, Clone)]
pub struct Config {
    pub sysctl_policy: SysctlPolicy,
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
        Ok(Self { sysctl_policy: SysctlPolicy::compile(&file.sysctl_policy, text)? })
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
    fn bad_values_are_refused_with_their_line() {
        let err = Config::parse("[sysctl_policy]\nenabled = \"yes\"\n").unwrap_err();
        assert!(err.starts_with("line 2: invalid type"), "{err}");
    }
}
