//! `netguard oci-hook --stage STAGE`: called by the container runtime (oci-hooks(5)) with the
//! container's state on stdin. It never fails a container because of netguard: whatever goes
//! wrong is logged and it exits 0, within [`PATIENCE`].

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use netguard::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use netguard::control::Operation;
use netguard::runtime::oci_hook::{ContainerEvent, Stage};

use super::ops::{self, Place};

/// A runtime kills a hook at its timeout and may fail the container: give up well before.
const PATIENCE: Duration = Duration::from_secs(5);
/// The OCI state is a few hundred bytes; anything past this is not one.
const MAX_STATE: u64 = 1 << 20;

#[derive(Args)]
pub struct OciHookArgs {
    /// createRuntime, poststart or poststop.
    #[arg(long, value_parser = parse_stage)]
    stage: Stage,
    /// The agent's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The ledger's directory when no agent runs.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

fn parse_stage(s: &str) -> Result<Stage, String> {
    s.parse()
        .map_err(|e: netguard::runtime::oci_hook::HookError| e.to_string())
}

pub fn run(args: OciHookArgs) -> anyhow::Result<ExitCode> {
    let mut state = Vec::new();
    let read = std::io::stdin()
        .take(MAX_STATE)
        .read_to_end(&mut state)
        .map_err(|e| format!("cannot read the OCI state on stdin: {e}"));
    let event =
        read.and_then(|_| ContainerEvent::parse(args.stage, &state).map_err(|e| e.to_string()));
    let event = match event {
        Ok(event) => event,
        Err(why) => {
            tracing::warn!("netguard oci-hook {}: {why}; nothing done", args.stage);
            return Ok(ExitCode::SUCCESS);
        }
    };
    let place = Place {
        state_dir: args.state_dir,
        socket: args.socket,
        // The runtime runs hooks in the host's netns: ours.
        host_netns: None,
    };
    let what = format!("netguard oci-hook {} {}", event.stage, event.id);
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| {
            runtime.block_on(async {
                let operation = Operation::Container { event };
                tokio::time::timeout(PATIENCE, ops::submit(&place, &operation))
                    .await
                    .map_err(|_| format!("no answer within {PATIENCE:?}"))?
                    .map_err(|e| super::one_line(&e))
            })
        });
    match done {
        Ok(reply) if reply.ok => tracing::info!("{what}: {}", reply.text),
        Ok(reply) => tracing::warn!("{what}: {}", reply.text),
        Err(why) => tracing::warn!("{what}: {why}"),
    }
    Ok(ExitCode::SUCCESS)
}
