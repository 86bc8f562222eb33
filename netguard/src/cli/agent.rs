//! `netguard agent`: settings from the config file, overridden by flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use netguard::agent::{self, AgentOptions};
use netguard::config::{FileConfig, Flags, Settings, DEFAULT_CONFIG};
use netguard::ledger::LedgerOptions;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
pub struct AgentArgs {
    /// TOML config (absent is fine for the default path).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the ledger lives (default /var/lib/netguard).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The socket `status` and the other commands talk to (default /run/netguard/netguard.sock).
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
    /// Seconds between full passes, which read every netns and plan every link whether or
    /// not the kernel announced a change there (default 300).
    #[arg(long, value_name = "SECS")]
    full_pass_every: Option<f64>,
    /// A NIC never guarded, by name or MAC (repeatable).
    #[arg(long, value_name = "NAME|MAC")]
    exclude: Vec<String>,
    /// Trace, plan and log what would be done, and change nothing (a first rollout).
    #[arg(long)]
    observe_only: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9476); off unless given
    /// here or as `metrics` in the config file.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// A libcni result cache directory to watch for attachments (repeatable; default
    /// /var/lib/cni/results and /var/lib/cni/multus/results, none with --host-netns).
    #[arg(long, value_name = "DIR")]
    cni_cache: Vec<PathBuf>,
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    super::require_root()?;
    let path = args.config.as_deref().unwrap_or(DEFAULT_CONFIG.as_ref());
    let file = FileConfig::load(path, args.config.is_some())?;
    let flags = Flags {
        state_dir: args.state_dir,
        socket: args.socket,
        backend: args.backend,
        host_netns: args.host_netns,
        interval: args.interval,
        full_pass_every: args.full_pass_every,
        exclude: args.exclude,
        // Only a flag given overrides the file.
        observe_only: args.observe_only.then_some(true),
        cni_cache: args.cni_cache,
        metrics: args.metrics.map(|addr| addr.to_string()),
    };
    let settings = Settings::resolve(file, path, flags)?;
    let mut ledger = LedgerOptions::new(settings.state_dir);
    ledger.exclude = settings.exclude;
    let options = AgentOptions {
        ledger,
        socket: settings.socket,
        backend: settings.backend,
        host_netns: settings.host_netns,
        interval: settings.interval,
        full_pass_every: settings.full_pass_every,
        observe_only: settings.observe_only,
        metrics: settings.metrics,
        cni_caches: settings.cni_cache,
    };
    // Each thread that allocates may get a malloc arena of its own (up to 8 per core: the
    // runtime's workers, the blocking pool's threads), and each keeps what a burst freed in
    // it. Two arenas serve two cores; set before the runtime's threads exist.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let ended = runtime.block_on(async move {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        // One message per signal: the first stops the agent gracefully, a second at once.
        let (stop, stops) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                }
                if stop.send(()).await.is_err() {
                    return;
                }
            }
        });
        match agent::run(options, stops).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            // Not bad input: the agent ran and broke down, or was told to stop at once.
            Err(e @ (agent::AgentError::TaskEnded(_) | agent::AgentError::StoppedAtOnce)) => {
                eprintln!("netguard: {e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        }
    });
    // Not waiting for blocking threads: one may hang in an open (a netns path on a stuck
    // filesystem) and would keep a stopped agent from exiting. What is on disk is complete.
    runtime.shutdown_background();
    ended
}
