//! `netguard agent`: settings from the config file, overridden by flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use netguard::agent::{self, AgentOptions};
use netguard::config::{
    FileConfig, DEFAULT_CONFIG, DEFAULT_INTERVAL, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
};
use netguard::ledger::{Exclusions, LedgerOptions, Mac};
use netguard::trace::BackendChoice;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
pub struct AgentArgs {
    /// TOML config (absent is fine for the default path).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// auto, fentry, kprobe or netlink.
    #[arg(long)]
    backend: Option<String>,
    /// A netns standing in for the host's init_net (tests).
    #[arg(long, value_name = "PATH")]
    host_netns: Option<PathBuf>,
    /// Seconds between restore passes when nothing happens.
    #[arg(long, value_name = "SECS")]
    interval: Option<f64>,
    /// A NIC never guarded, by name or MAC (repeatable).
    #[arg(long, value_name = "NAME|MAC")]
    exclude: Vec<String>,
    /// Trace, plan and log what would be done, and change nothing (a first rollout).
    #[arg(long)]
    observe_only: bool,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    super::require_root()?;
    let explicit = args.config.is_some();
    let file = FileConfig::load(
        args.config.as_deref().unwrap_or(DEFAULT_CONFIG.as_ref()),
        explicit,
    )?;
    let backend: BackendChoice = args
        .backend
        .or(file.backend)
        .as_deref()
        .unwrap_or("auto")
        .parse()?;
    let interval = match args.interval.or(file.interval) {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            anyhow::bail!("--interval {secs}: give a positive number of seconds")
        }
        Some(secs) => Duration::from_secs_f64(secs),
        None => DEFAULT_INTERVAL,
    };
    let mut exclude = Exclusions::default();
    for item in file.exclude.iter().chain(&args.exclude) {
        match item.parse::<Mac>() {
            Ok(mac) => exclude.macs.push(mac),
            Err(_) => exclude.names.push(item.clone()),
        }
    }
    let mut ledger = LedgerOptions::new(
        args.state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
    );
    ledger.exclude = exclude;
    let options = AgentOptions {
        ledger,
        socket: args
            .socket
            .or(file.socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        backend,
        host_netns: args.host_netns.or(file.host_netns),
        interval,
        observe_only: args.observe_only,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
        };
        match agent::run(options, shutdown).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            // Not bad input: the agent ran and broke down.
            Err(e @ agent::AgentError::TaskEnded(_)) => {
                eprintln!("netguard: {e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        }
    })
}
