//! `netguard oci-hook --stage STAGE`: called by the container runtime (oci-hooks(5)) with the
//! container's state on stdin. It never fails a container because of netguard: whatever goes
//! wrong is logged and it exits 0, within the client's patience.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use netguard::client;
use netguard::config::{DEFAULT_SOCKET, DEFAULT_STATE_DIR};
use netguard::runtime::oci_hook::Stage;

use super::ops::RunHere;

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
    client::oci_hook_call(args.stage, args.socket, args.state_dir, RunHere);
    Ok(ExitCode::SUCCESS)
}
