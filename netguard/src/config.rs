//! The agent's settings: an optional TOML file, overridden by command-line flags, validated
//! here once, with ranges, into [`Settings`]: a bad value is an error naming the flag or the
//! file and key, and saying what to give instead; nothing is silently read as something else.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ledger::{Exclusions, Mac};
use crate::trace::BackendChoice;

pub const DEFAULT_CONFIG: &str = "/etc/netguard/netguard.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netguard";
pub const DEFAULT_SOCKET: &str = "/run/netguard/netguard.sock";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// However quiet the kernel, the agent reads every netns and plans every link again this
/// often: what no notification announced (one the kernel dropped without saying so) is
/// repaired by then at the latest.
pub const DEFAULT_FULL_PASS_EVERY: Duration = Duration::from_secs(300);

/// Seconds between restore passes: more often than this is a busy loop, less often than once
/// a day is not guarding.
pub const INTERVAL_RANGE: (f64, f64) = (0.1, 86_400.0);

/// A Unix socket path fits `sockaddr_un.sun_path` (108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The kernel's limit on an interface name (IFNAMSIZ less the NUL).
const MAX_IFNAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{setting} {value}: {expected}")]
    Invalid {
        /// `--interval`, or `config FILE: interval`.
        setting: Setting,
        value: String,
        expected: String,
    },
}

/// Where a value came from, as the error names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Flag(&'static str),
    Key { file: PathBuf, key: &'static str },
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Flags spell the file's `state_dir` as `--state-dir`.
            Setting::Flag(flag) => write!(f, "--{}", flag.replace('_', "-")),
            Setting::Key { file, key } => write!(f, "config {}: {key}", file.display()),
        }
    }
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
    /// Seconds between full passes (everything read and planned, announced or not).
    pub full_pass_every: Option<f64>,
    /// Interface names or MAC addresses never guarded.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Trace, plan and log; change nothing in the kernel.
    pub observe_only: Option<bool>,
    /// libcni result cache directories to watch (default: libcni's and Multus's).
    #[serde(default)]
    pub cni_cache: Vec<PathBuf>,
    /// Serve Prometheus metrics at this address and port (`127.0.0.1:9476`).
    pub metrics: Option<String>,
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
        FileConfig::parse(path, &text)
    }

    /// Parses the text of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().to_string(),
        })
    }
}

/// The agent's flags: the file's keys again, each given one overriding the file's (the
/// `exclude` list adding to it).
pub type Flags = FileConfig;

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub backend: BackendChoice,
    pub host_netns: Option<PathBuf>,
    pub interval: Duration,
    pub full_pass_every: Duration,
    pub exclude: Exclusions,
    pub observe_only: bool,
    /// libcni result cache directories to watch.
    pub cni_cache: Vec<PathBuf>,
    pub metrics: Option<SocketAddr>,
}

impl Settings {
    /// Flags over the file `file` read from `path`, then defaults; every value checked.
    pub fn resolve(file: FileConfig, path: &Path, flags: Flags) -> Result<Settings, ConfigError> {
        let key = |key| Setting::Key {
            file: path.into(),
            key,
        };
        let backend = match pick(flags.backend, file.backend, "backend", path) {
            Some((text, setting)) => text.parse().map_err(|_| ConfigError::Invalid {
                setting,
                value: text,
                expected: "give auto, fentry, kprobe or netlink".into(),
            })?,
            None => BackendChoice::Auto,
        };
        let interval = match pick(flags.interval, file.interval, "interval", path) {
            Some((secs, setting)) => seconds(setting, secs, INTERVAL_RANGE)?,
            None => DEFAULT_INTERVAL,
        };
        let full_pass_every = match pick(
            flags.full_pass_every,
            file.full_pass_every,
            "full_pass_every",
            path,
        ) {
            Some((secs, setting)) => seconds(setting, secs, INTERVAL_RANGE)?,
            None => DEFAULT_FULL_PASS_EVERY,
        };
        let socket = match pick(flags.socket, file.socket, "socket", path) {
            Some((socket, setting)) => socket_path(setting, socket)?,
            None => DEFAULT_SOCKET.into(),
        };
        let state_dir = match pick(flags.state_dir, file.state_dir, "state_dir", path) {
            Some((dir, setting)) if dir.as_os_str().is_empty() => {
                return Err(ConfigError::Invalid {
                    setting,
                    value: "\"\"".into(),
                    expected: "give the ledger's directory".into(),
                })
            }
            Some((dir, _)) => dir,
            None => DEFAULT_STATE_DIR.into(),
        };
        let metrics = match pick(flags.metrics, file.metrics, "metrics", path) {
            Some((text, setting)) => Some(text.parse().map_err(|_| ConfigError::Invalid {
                setting,
                value: text,
                expected: "give an address and a port, e.g. 127.0.0.1:9476 or [::1]:9476".into(),
            })?),
            None => None,
        };
        let mut exclude = Exclusions::default();
        let listed = (file.exclude.into_iter().map(|item| (item, key("exclude")))).chain(
            flags
                .exclude
                .into_iter()
                .map(|item| (item, Setting::Flag("exclude"))),
        );
        for (item, setting) in listed {
            match exclusion(setting, item)? {
                Excluded::Mac(mac) => exclude.macs.push(mac),
                Excluded::Name(name) => exclude.names.push(name),
            }
        }
        let cni_cache = cni_caches(
            &flags.cni_cache,
            &file.cni_cache,
            path,
            flags.host_netns.is_some() || file.host_netns.is_some(),
        )?;
        Ok(Settings {
            state_dir,
            socket,
            backend,
            host_netns: flags.host_netns.or(file.host_netns),
            interval,
            full_pass_every,
            exclude,
            observe_only: flags.observe_only.or(file.observe_only).unwrap_or(false),
            cni_cache,
            metrics,
        })
    }
}

/// libcni's result cache and Multus's.
pub const DEFAULT_CNI_CACHES: &[&str] = &[
    crate::capture::cni::RESULT_CACHE_DIR,
    "/var/lib/cni/multus/results",
];

/// The cache directories given by flag, else in the file, else the defaults, except for an
/// agent standing in a test netns for the host (`host_netns`): the host's cache belongs to
/// its real netns, so it watches only what it is told.
fn cni_caches(
    flags: &[PathBuf],
    file: &[PathBuf],
    path: &Path,
    stand_in: bool,
) -> Result<Vec<PathBuf>, ConfigError> {
    let (given, setting) = match (flags, file) {
        ([], []) if stand_in => return Ok(Vec::new()),
        ([], []) => return Ok(DEFAULT_CNI_CACHES.iter().map(PathBuf::from).collect()),
        ([], file) => (
            file,
            Setting::Key {
                file: path.into(),
                key: "cni_cache",
            },
        ),
        (flags, _) => (flags, Setting::Flag("cni_cache")),
    };
    if let Some(bad) = given.iter().find(|d| !d.is_absolute()) {
        return Err(ConfigError::Invalid {
            setting,
            value: format!("{:?}", bad.display().to_string()),
            expected: "give an absolute directory path".into(),
        });
    }
    Ok(given.to_vec())
}

/// The flag's value, else the file's, with where it came from (for the error).
fn pick<T>(
    flag: Option<T>,
    file: Option<T>,
    name: &'static str,
    path: &Path,
) -> Option<(T, Setting)> {
    flag.map(|v| (v, Setting::Flag(name))).or_else(|| {
        file.map(|v| {
            let key = Setting::Key {
                file: path.into(),
                key: name,
            };
            (v, key)
        })
    })
}

/// A number of seconds within `(min, max)` as a `Duration` (NaN, infinities, zero, negative
/// and huge values refused: `Duration::from_secs_f64` would panic on some of them).
pub fn seconds(
    setting: Setting,
    secs: f64,
    (min, max): (f64, f64),
) -> Result<Duration, ConfigError> {
    if !(min..=max).contains(&secs) {
        return Err(ConfigError::Invalid {
            setting,
            value: secs.to_string(),
            expected: format!("give a number of seconds from {min} to {max}"),
        });
    }
    Ok(Duration::from_secs_f64(secs))
}

fn socket_path(setting: Setting, path: PathBuf) -> Result<PathBuf, ConfigError> {
    let len = path.as_os_str().len();
    if len == 0 || len > MAX_SOCKET_PATH {
        return Err(ConfigError::Invalid {
            setting,
            value: path.display().to_string(),
            expected: format!(
                "a Unix socket path has 1 to {MAX_SOCKET_PATH} bytes; give a shorter one"
            ),
        });
    }
    Ok(path)
}

enum Excluded {
    Mac(Mac),
    Name(String),
}

/// A MAC address, or else an interface name the kernel would accept. A name cannot contain
/// `:`, so anything with one is meant as a MAC and must be a valid one.
fn exclusion(setting: Setting, item: String) -> Result<Excluded, ConfigError> {
    if item.contains(':') {
        return item.parse().map(Excluded::Mac).map_err(|_| ConfigError::Invalid {
            setting,
            value: item,
            expected: "not a MAC address: give six hex bytes like 52:54:00:12:34:56, or an interface name".into(),
        });
    }
    let valid_name = !item.is_empty()
        && item.len() <= MAX_IFNAME
        && item != "."
        && item != ".."
        && !item
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control());
    if !valid_name {
        return Err(ConfigError::Invalid {
            setting,
            value: format!("{item:?}"),
            expected: format!("give an interface name (1 to {MAX_IFNAME} bytes, no '/' or spaces) or a MAC address"),
        });
    }
    Ok(Excluded::Name(item))
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

    fn resolve(file: &str, flags: Flags) -> Result<Settings, ConfigError> {
        let path = Path::new("/etc/ng.toml");
        Settings::resolve(FileConfig::parse(path, file).unwrap(), path, flags)
    }

    /// The error for a file alone.
    fn refused(file: &str) -> String {
        resolve(file, Flags::default()).unwrap_err().to_string()
    }

    fn interval_flag(secs: f64) -> Flags {
        Flags {
            interval: Some(secs),
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_and_flags_over_the_file() {
        let settings = resolve("", Flags::default()).unwrap();
        assert_eq!(settings.interval, DEFAULT_INTERVAL);
        assert_eq!(settings.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(settings.backend, BackendChoice::Auto);
        let settings = resolve("interval = 2\nbackend = \"kprobe\"\n", interval_flag(0.5)).unwrap();
        assert_eq!(settings.interval, Duration::from_millis(500));
        assert_eq!(
            settings.backend,
            BackendChoice::Only(crate::trace::BackendKind::Kprobe)
        );
    }

    #[test]
    fn an_interval_out_of_range_names_the_flag_or_the_key() {
        for bad in [1e20, f64::NAN, f64::INFINITY, -1.0, 0.0, 0.01, 86_401.0] {
            let err = resolve("", interval_flag(bad)).unwrap_err().to_string();
            assert!(
                err.starts_with("--interval ")
                    && err.contains("give a number of seconds from 0.1 to 86400"),
                "{bad}: {err}"
            );
        }
        let err = refused("interval = 0\n");
        assert!(
            err.starts_with("config /etc/ng.toml: interval 0: give"),
            "{err}"
        );
        let err = refused("interval = -3.5\n");
        assert!(err.contains("interval -3.5"), "{err}");
    }

    #[test]
    fn the_full_pass_period_is_checked_like_the_interval() {
        let settings = resolve("", Flags::default()).unwrap();
        assert_eq!(settings.full_pass_every, DEFAULT_FULL_PASS_EVERY);
        let flags = Flags {
            full_pass_every: Some(3.0),
            ..Flags::default()
        };
        let settings = resolve("full_pass_every = 60\n", flags).unwrap();
        assert_eq!(settings.full_pass_every, Duration::from_secs(3));
        let settings = resolve("full_pass_every = 60\n", Flags::default()).unwrap();
        assert_eq!(settings.full_pass_every, Duration::from_secs(60));
        let err = refused("full_pass_every = 0\n");
        assert!(
            err.starts_with("config /etc/ng.toml: full_pass_every 0: give a number of seconds"),
            "{err}"
        );
    }

    #[test]
    fn exclusions_are_macs_or_interface_names_nothing_else() {
        let flags = Flags {
            exclude: vec!["eth9".into(), "52:54:00:00:00:0a".into()],
            ..Flags::default()
        };
        let settings = resolve("exclude = [\"uplink0\"]\n", flags).unwrap();
        assert_eq!(settings.exclude.names, ["uplink0", "eth9"]);
        assert_eq!(
            settings.exclude.macs,
            ["52:54:00:00:00:0a".parse().unwrap()]
        );
        let cases = [
            ("52:54:00:zz:00:01", "not a MAC address"),
            ("52:54:00:00:01", "not a MAC address"),
            ("a-name-far-too-long", "give an interface name"),
            ("", "give an interface name"),
            ("eth 1", "give an interface name"),
            ("../x", "give an interface name"),
        ];
        for (bad, says) in cases {
            let flags = Flags {
                exclude: vec![bad.into()],
                ..Flags::default()
            };
            let err = resolve("", flags).unwrap_err().to_string();
            assert!(
                err.starts_with("--exclude ") && err.contains(says),
                "{bad}: {err}"
            );
        }
        let err = refused("exclude = [\"aa:bb\"]\n");
        assert!(
            err.starts_with("config /etc/ng.toml: exclude aa:bb: not a MAC"),
            "{err}"
        );
    }

    #[test]
    fn backend_and_socket_are_checked() {
        let flags = Flags {
            backend: Some("ebpf".into()),
            ..Flags::default()
        };
        let err = resolve("", flags).unwrap_err().to_string();
        assert_eq!(err, "--backend ebpf: give auto, fentry, kprobe or netlink");
        let long = format!("/run/{}.sock", "x".repeat(120));
        let err = resolve(&format!("socket = \"{long}\"\n"), Flags::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config /etc/ng.toml: socket /run/xxx")
                && err.contains("1 to 107 bytes"),
            "{err}"
        );
        let flags = Flags {
            state_dir: Some(PathBuf::new()),
            ..Flags::default()
        };
        assert!(resolve("", flags)
            .unwrap_err()
            .to_string()
            .starts_with("--state-dir"));
    }

    #[test]
    fn observe_only_comes_from_the_flag_or_the_file_and_is_off_by_default() {
        assert!(!resolve("", Flags::default()).unwrap().observe_only);
        assert!(
            resolve("observe_only = true\n", Flags::default())
                .unwrap()
                .observe_only
        );
        let flag = Flags {
            observe_only: Some(true),
            ..Flags::default()
        };
        assert!(
            resolve("observe_only = false\n", flag)
                .unwrap()
                .observe_only
        );
        assert!(FileConfig::parse(Path::new("/etc/ng.toml"), "observe_only = 1\n").is_err());
    }

    #[test]
    fn cni_caches_are_flags_else_the_file_else_the_defaults_unless_standing_in() {
        let defaults = resolve("", Flags::default()).unwrap().cni_cache;
        assert_eq!(
            defaults,
            DEFAULT_CNI_CACHES
                .iter()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        );
        let file = "cni_cache = [\"/srv/cni\"]\n";
        assert_eq!(
            resolve(file, Flags::default()).unwrap().cni_cache,
            [PathBuf::from("/srv/cni")]
        );
        let flags = Flags {
            cni_cache: vec!["/a".into(), "/b".into()],
            ..Flags::default()
        };
        assert_eq!(
            resolve(file, flags).unwrap().cni_cache,
            [PathBuf::from("/a"), "/b".into()]
        );
        let stand_in = Flags {
            host_netns: Some("/run/netns/t".into()),
            ..Flags::default()
        };
        assert!(resolve("", stand_in).unwrap().cni_cache.is_empty());
        let err = refused("cni_cache = [\"relative\"]\n");
        assert!(
            err.contains("cni_cache") && err.contains("absolute"),
            "{err}"
        );
    }

    #[test]
    fn metrics_comes_from_the_flag_or_the_file_and_is_checked() {
        assert_eq!(resolve("", Flags::default()).unwrap().metrics, None);
        let from_file = resolve("metrics = \"127.0.0.1:9476\"\n", Flags::default()).unwrap();
        assert_eq!(from_file.metrics, Some("127.0.0.1:9476".parse().unwrap()));
        let flag = Flags {
            metrics: Some("[::1]:9100".into()),
            ..Flags::default()
        };
        let settings = resolve("metrics = \"127.0.0.1:9476\"\n", flag).unwrap();
        assert_eq!(settings.metrics, Some("[::1]:9100".parse().unwrap()));
        assert_eq!(
            refused("metrics = \"localhost\"\n"),
            "config /etc/ng.toml: metrics localhost: give an address and a port, e.g. 127.0.0.1:9476 or [::1]:9476"
        );
        assert!(refused("metrics = \"127.0.0.1:99999\"\n").contains("metrics 127.0.0.1:99999"));
        assert!(FileConfig::parse(Path::new("/etc/ng.toml"), "metrics = 9476\n").is_err());
    }
}
