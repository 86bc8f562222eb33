//! `netguard` run as a chained CNI plugin (CNI_COMMAND is set): the protocol is the
//! library's; here is netguard's side of it, through the agent or under the ledger's lock.

use std::cell::OnceCell;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use netguard::api::{self, Request};
use netguard::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use netguard::control::{Operation, Reply};
use netguard::runtime::cni_plugin::{
    self, AttachmentRef, GcAttachment, Invocation, PrevResult, Recorder,
};
use netguard::status::Status;

use super::ops::{self, Place};

/// A runtime waits on its plugins; netguard gives up well before it would (fail-open).
const AGENT_PATIENCE: Duration = Duration::from_secs(5);

pub fn main() -> ExitCode {
    super::init_logging("warn", super::LogFormat::Text);
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => match Invocation::from_env(|k| std::env::var(k).ok()) {
            Ok(inv) => cni_plugin::handle(&inv, &stdin, &Side::new(place_of(&stdin))),
            Err(e) => cni_plugin::error_outcome(&stdin, &e),
        },
        Err(e) => cni_plugin::error_outcome(
            &stdin,
            &cni_plugin::CniError::Decode(format!("cannot read stdin: {e}")),
        ),
    };
    let mut out = std::io::stdout().lock();
    // Nothing more can be said if stdout is closed.
    let _ = out.write_all(&outcome.stdout).and_then(|_| out.flush());
    ExitCode::from(outcome.code)
}

/// The socket and ledger the config names (defaults when it does not parse: the protocol
/// reports that).
fn place_of(stdin: &[u8]) -> Place {
    let conf = cni_plugin::parse_config(stdin).ok();
    let socket = conf.as_ref().and_then(|c| c.socket.clone());
    let state_dir = conf.and_then(|c| c.state_dir);
    Place {
        state_dir: state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        socket: socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
        // The runtime runs its plugins in the host's netns: ours.
        host_netns: None,
    }
}

/// netguard's side: operations on the ledger, by the agent if one answers.
struct Side {
    place: Place,
    /// Built at the first command that talks to the agent: every container start runs
    /// `VERSION`, which needs none. Why there is none: every command then fails open.
    runtime: OnceCell<Result<tokio::runtime::Runtime, String>>,
}

impl Side {
    fn new(place: Place) -> Side {
        Side {
            place,
            runtime: OnceCell::new(),
        }
    }

    /// Runs `work` for at most [`AGENT_PATIENCE`].
    fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, String> {
        let runtime = self
            .runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the async runtime: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)?;
        runtime
            .block_on(async { tokio::time::timeout(AGENT_PATIENCE, work).await })
            .map_err(|_| format!("netguard gave no answer within {AGENT_PATIENCE:?}"))
    }

    fn submit(&self, operation: Operation) -> Result<Reply, String> {
        self.block_on(ops::submit(&self.place, &operation))?
            .map_err(|e| super::one_line(&e))
    }
}

impl Recorder for Side {
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
        let status: Status = self
            .block_on(api::request::<Status>(&self.place.socket, &Request::Status))?
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
