//! Tracer backends (eBPF fentry/fexit, eBPF kprobe/kretprobe, rtnetlink multicast) behind one
//! stream of [`Event`]s. `auto` tries them in that order and remembers why each one it skipped
//! is unavailable.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::sync::mpsc;

use crate::event::Event;
use crate::netns::Resolver;

pub mod ebpf;
pub mod netlink;

/// One way of observing the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Fentry,
    Kprobe,
    Netlink,
}

impl BackendKind {
    pub const ALL: [BackendKind; 3] = [
        BackendKind::Fentry,
        BackendKind::Kprobe,
        BackendKind::Netlink,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Fentry => "fentry",
            BackendKind::Kprobe => "kprobe",
            BackendKind::Netlink => "netlink",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `auto`, or one backend and no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Only(BackendKind),
}

impl FromStr for BackendChoice {
    type Err = TraceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "fentry" => Ok(BackendChoice::Only(BackendKind::Fentry)),
            "kprobe" => Ok(BackendChoice::Only(BackendKind::Kprobe)),
            "netlink" => Ok(BackendChoice::Only(BackendKind::Netlink)),
            other => Err(TraceError::UnknownBackend(other.to_string())),
        }
    }
}

/// A backend that could not be used, and why, in plain words.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unavailable {
    pub backend: BackendKind,
    pub reason: String,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.backend, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("unknown backend '{0}': use auto, fentry, kprobe or netlink")]
    UnknownBackend(String),
    #[error("netguard must run as root (it loads eBPF programs and listens to rtnetlink in every netns); run it with sudo")]
    NotRoot,
    #[error("{0}")]
    Unavailable(Unavailable),
    #[error("no tracer backend works here: {}", .0.iter().map(|u| u.to_string()).collect::<Vec<_>>().join("; "))]
    NoBackend(Vec<Unavailable>),
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
}

/// What every backend is started with.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// A netns standing in for the host's init_net (tests); `None` is the real init_net.
    pub host_netns: Option<PathBuf>,
}

/// A started backend: its events, and how many it lost.
pub struct Running {
    pub events: mpsc::Receiver<Event>,
    /// Events the backend knows it lost (ring buffer full, netlink overrun), so far.
    pub dropped: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Whatever must stay alive for the backend to keep running (programs, links, tasks).
    pub keep_alive: Box<dyn Send + Sync>,
}

/// The running tracer: the backend in use, why the others are not, and the events.
pub struct Tracer {
    pub backend: BackendKind,
    pub unavailable: Vec<Unavailable>,
    pub resolver: Resolver,
    running: Running,
    seen: u64,
}

impl Tracer {
    /// Starts the chosen backend, or with `auto` the first of fentry, kprobe, netlink that
    /// works here. Fails before attaching anything when not root.
    pub async fn start(choice: BackendChoice, options: TraceOptions) -> Result<Tracer, TraceError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(TraceError::NotRoot);
        }
        // Its first /proc scan, on a blocking thread.
        let host = options.host_netns.clone();
        let resolver = tokio::task::spawn_blocking(move || Resolver::new(host.as_deref()))
            .await
            .map_err(|_| crate::netns::NetnsError::ThreadDied {
                path: PathBuf::from("/proc"),
            })??;
        let candidates: Vec<BackendKind> = match choice {
            BackendChoice::Auto => BackendKind::ALL.to_vec(),
            BackendChoice::Only(kind) => vec![kind],
        };
        let mut unavailable = Vec::new();
        for backend in candidates {
            let started = match backend {
                BackendKind::Fentry => {
                    ebpf::start(ebpf::ProbeMode::Fentry, &options, resolver.clone()).await
                }
                BackendKind::Kprobe => {
                    ebpf::start(ebpf::ProbeMode::Kprobe, &options, resolver.clone()).await
                }
                BackendKind::Netlink => netlink::start(&options, resolver.clone()).await,
            };
            match started {
                Ok(running) => {
                    for skipped in &unavailable {
                        tracing::info!("tracer backend {skipped}");
                    }
                    return Ok(Tracer {
                        backend,
                        unavailable,
                        resolver,
                        running,
                        seen: 0,
                    });
                }
                Err(reason) => unavailable.push(Unavailable { backend, reason }),
            }
        }
        match choice {
            BackendChoice::Only(_) => Err(TraceError::Unavailable(unavailable.remove(0))),
            BackendChoice::Auto => Err(TraceError::NoBackend(unavailable)),
        }
    }

    /// The next event; `None` once the backend stopped.
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.running.events.recv().await;
        if event.is_some() {
            self.seen += 1;
        }
        event
    }

    /// Events handed out so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Events the backend lost so far.
    pub fn dropped(&self) -> u64 {
        (self.running.dropped)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_unknown_ones_are_named() {
        assert_eq!(
            "auto".parse::<BackendChoice>().unwrap(),
            BackendChoice::Auto
        );
        assert_eq!(
            "kprobe".parse::<BackendChoice>().unwrap(),
            BackendChoice::Only(BackendKind::Kprobe)
        );
        let err = "ebpf".parse::<BackendChoice>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown backend 'ebpf': use auto, fentry, kprobe or netlink"
        );
    }
}
