//! The way to the agent for what a runtime starts once per container (the chained CNI plugin,
//! the OCI hooks): blocking, with no async runtime, because every container start waits on
//! these processes. Used by both binaries: `netguard-shim`, the small one runtimes are pointed
//! at, and `netguard`, which carries the call out itself when no agent answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::api::{self, ApiError, Meant, Request};
use crate::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use crate::control::{Operation, Reply};
use crate::runtime::cni_plugin::{self, AttachmentRef, GcAttachment, Invocation, PrevResult};
use crate::runtime::oci_hook::{ContainerEvent, Stage};
use crate::runtime_failures;
use crate::status::Status;

/// A runtime waits on its plugins and kills a hook at its timeout: netguard gives up well
/// before either (fail-open).
pub const PATIENCE: Duration = Duration::from_secs(5);
/// The OCI state is a few hundred bytes; anything past this is not one.
const MAX_STATE: u64 = 1 << 20;

/// What is done with an operation when no agent listens on the socket: `meant` says which
/// ledger, `stdin` is what the runtime gave this process (for one that runs it again).
pub trait NoAgent {
    fn operate(&self, meant: &Meant, stdin: &[u8], operation: &Operation) -> Result<Reply, String>;
}

/// The agent on `socket`, which must be the one `meant`.
pub struct AgentClient<'a, F> {
    socket: PathBuf,
    meant: Meant,
    stdin: &'a [u8],
    no_agent: F,
}

impl<F: NoAgent> AgentClient<'_, F> {
    /// Carries `operation` out through the agent, or through [`NoAgent`] when none runs.
    pub fn submit(&self, operation: Operation) -> Result<Reply, String> {
        // One round trip: the agent checks itself against what this call means.
        let request = Request::Operate {
            operation: operation.clone(),
            expected: Some(self.meant.expected()),
        };
        let asked = Connection::open(&self.socket)
            .and_then(|mut conn| conn.ask::<Result<Reply, String>>(&request));
        let done = match asked {
            Ok(answer) => answer,
            Err(ApiError::NoAgent { .. }) => {
                self.no_agent.operate(&self.meant, self.stdin, &operation)
            }
            Err(e) => Err(e.to_string()),
        };
        let failed = match &done {
            Ok(reply) if !reply.ok => Some(reply.text.replace('\n', "; ")),
            Ok(_) => None,
            Err(why) => Some(why.clone()),
        };
        if let Some(why) = failed {
            note_failure(&self.meant.state_dir, &operation.name(), &why);
        }
        done
    }
}

impl<F: NoAgent> cni_plugin::Recorder for AgentClient<'_, F> {
    type Error = String;

    fn add(&self, att: &AttachmentRef, _prev: &PrevResult) -> Result<String, String> {
        let reply = self.submit(Operation::CniAdd {
            attachment: att.clone(),
        })?;
        let text = reply.text.replace('\n', "; ");
        if reply.ok {
            Ok(text)
        } else {
            Err(text)
        }
    }

    fn del(&self, att: &AttachmentRef) -> Result<(), String> {
        self.submit(Operation::CniDel {
            attachment: att.clone(),
        })
        .map(drop)
    }

    fn check(&self, att: &AttachmentRef, _prev: &PrevResult) -> Result<Option<String>, String> {
        let netns = att.netns.as_ref().ok_or("no netns")?.display().to_string();
        let status: Status = Connection::open(&self.socket)
            .and_then(|mut conn| conn.ask(&Request::Status))
            .map_err(|e| e.to_string())?;
        let row = status
            .rows
            .iter()
            .find(|r| r.row.name == att.ifname && r.row.netns == netns);
        Ok(row.and_then(|r| {
            matches!(
                r.row.state.as_str(),
                "missing" | "waiting" | "conflict" | "failed"
            )
            .then(|| {
                format!(
                    "{} in {netns} is {}{}",
                    att.ifname,
                    r.row.state,
                    r.row
                        .reason
                        .as_ref()
                        .map(|why| format!(": {why}"))
                        .unwrap_or_default()
                )
            })
        }))
    }

    fn gc(&self, network: &str, valid: &[GcAttachment]) -> Result<usize, String> {
        let reply = self.submit(Operation::CniGc {
            network: network.to_string(),
            valid: valid.to_vec(),
        })?;
        Ok(reply.detail.as_array().map_or(0, Vec::len))
    }
}

/// One CNI call (CNI_COMMAND is set): the environment and the config on stdin in, what to
/// print and the exit code out. The config's `socket` and `stateDir` name the agent.
pub fn cni_call<F: NoAgent>(no_agent: F) -> cni_plugin::Outcome {
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let e = cni_plugin::CniError::Decode(format!("cannot read stdin: {e}"));
        return cni_plugin::error_outcome(&stdin, &e);
    }
    let inv = match Invocation::from_env(|k| std::env::var(k).ok()) {
        Ok(inv) => inv,
        Err(e) => return cni_plugin::error_outcome(&stdin, &e),
    };
    // A config that does not parse is the protocol's to report; the defaults stand in here.
    let conf = cni_plugin::parse_config(&stdin).ok();
    let (socket, state_dir) = conf.map_or((None, None), |c| (c.socket, c.state_dir));
    let client = AgentClient {
        socket: socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        // The runtime runs its plugins in the host's netns: ours.
        meant: Meant {
            state_dir: state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            host_netns: None,
        },
        stdin: &stdin,
        no_agent,
    };
    cni_plugin::handle(&inv, &stdin, &client)
}

/// One OCI hook call at `stage`, the container's state on stdin, through the agent on
/// `socket` keeping the ledger in `state_dir`. It never fails a container: whatever goes
/// wrong is logged.
pub fn oci_hook_call<F: NoAgent>(stage: Stage, socket: PathBuf, state_dir: PathBuf, no_agent: F) {
    let mut state = Vec::new();
    let event = std::io::stdin()
        .take(MAX_STATE)
        .read_to_end(&mut state)
        .map_err(|e| format!("cannot read the OCI state on stdin: {e}"))
        .and_then(|_| ContainerEvent::parse(stage, &state).map_err(|e| e.to_string()));
    let event = match event {
        Ok(event) => event,
        Err(why) => {
            tracing::warn!("netguard oci-hook {stage}: {why}; nothing done");
            note_failure(&state_dir, &format!("hook {stage}"), &why);
            return;
        }
    };
    let client = AgentClient {
        socket,
        // The runtime runs hooks in the host's netns: ours.
        meant: Meant {
            state_dir,
            host_netns: None,
        },
        stdin: &state,
        no_agent,
    };
    let what = format!("netguard oci-hook {} {}", event.stage, event.id);
    match client.submit(Operation::Container { event }) {
        Ok(reply) if reply.ok => tracing::info!("{what}: {}", reply.text),
        Ok(reply) => tracing::warn!("{what}: {}", reply.text),
        Err(why) => tracing::warn!("{what}: {why}"),
    }
}

/// Notes a failed call for `status` (runtime_failures); only logged if even that fails.
fn note_failure(state_dir: &Path, call: &str, why: &str) {
    if let Err(e) = runtime_failures::note(state_dir, call, why) {
        tracing::warn!("cannot note this failure in {}: {e}", state_dir.display());
    }
}

/// A connection to the agent: one request line, one answer line, within [`PATIENCE`] in all.
struct Connection {
    path: PathBuf,
    stream: BufReader<UnixStream>,
    deadline: Instant,
}

impl Connection {
    fn open(path: &Path) -> Result<Connection, ApiError> {
        let stream = UnixStream::connect(path).map_err(|source| ApiError::NoAgent {
            path: path.into(),
            source,
        })?;
        Ok(Connection {
            path: path.into(),
            stream: BufReader::new(stream),
            deadline: Instant::now() + PATIENCE,
        })
    }

    fn ask<R: DeserializeOwned>(&mut self, request: &Request) -> Result<R, ApiError> {
        let io = |source| ApiError::Io {
            path: self.path.clone(),
            source,
        };
        let left = self.deadline.saturating_duration_since(Instant::now());
        let late = || {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {PATIENCE:?}"),
            )
        };
        if left.is_zero() {
            return Err(io(late()));
        }
        let socket = self.stream.get_ref();
        socket
            .set_read_timeout(Some(left))
            .and_then(|_| socket.set_write_timeout(Some(left)))
            .map_err(io)?;
        let timed_out = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => late(),
            _ => e,
        };
        self.stream
            .get_mut()
            .write_all(&api::request_line(request))
            .map_err(|e| io(timed_out(e)))?;
        let mut answer = String::new();
        self.stream
            .read_line(&mut answer)
            .map_err(|e| io(timed_out(e)))?;
        api::parse_answer(&self.path, &answer)
    }
}
