//! The agent's settings: an optional TOML file, overridden by command-line flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DEFAULT_CONFIG: &str = "/etc/netguard/netguard.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netguard";
pub const DEFAULT_SOCKET: &str = "/run/netguard/netguard.sock";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: interval must be a positive number of seconds, not {value}")]
    Interval { path: PathBuf, value: f64 },
}

/// The file's keys, every one optional; an unknown key is an error naming it.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub backend: Option<String>,
    pub host_netns: Option<PathBuf>,
    /// Seconds between reconcile passes.
    pub interval: Option<f64>,
    /// Interface names or MAC addresses never guarded.
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl FileConfig {
    /// Reads `path`; a missing file is an empty config only when `path` is the default one
    /// (an explicitly named file must exist).
    pub fn load(path: &Path, explicit: bool) -> Result<FileConfig, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(FileConfig::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.into(),
                    source,
                })
            }
        };
        let config: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })?;
        if let Some(value) = config.interval {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::Interval {
                    path: path.into(),
                    value,
                });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "netguard-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn every_key_is_read() {
        let path = write(
            "full",
            "state_dir = \"/tmp/s\"\nsocket = \"/tmp/s.sock\"\nbackend = \"netlink\"\ninterval = 2.5\nexclude = [\"eth9\", \"52:54:00:00:00:09\"]\n",
        );
        let config = FileConfig::load(&path, true).unwrap();
        assert_eq!(config.state_dir.as_deref(), Some(Path::new("/tmp/s")));
        assert_eq!(config.backend.as_deref(), Some("netlink"));
        assert_eq!(config.interval, Some(2.5));
        assert_eq!(config.exclude, ["eth9", "52:54:00:00:00:09"]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let path = write("unknown", "intervall = 3\n");
        let err = FileConfig::load(&path, true).unwrap_err().to_string();
        assert!(
            err.contains("intervall") && err.contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_named_file_is_not() {
        let path = Path::new("/nonexistent/netguard.toml");
        assert_eq!(
            FileConfig::load(path, false).unwrap(),
            FileConfig::default()
        );
        assert!(FileConfig::load(path, true)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/netguard.toml"));
    }

    #[test]
    fn zero_interval_is_refused() {
        let path = write("zero", "interval = 0\n");
        assert!(FileConfig::load(&path, true)
            .unwrap_err()
            .to_string()
            .contains("interval must be a positive"));
        std::fs::remove_file(path).unwrap();
    }
}
