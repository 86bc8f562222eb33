//! `netguard trace`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use netguard::config::{seconds, Setting};
use netguard::recording::Recorder;
use netguard::trace::{BackendChoice, TraceOptions, Tracer};
use tokio::signal::unix::{signal, SignalKind};

use super::output;

/// From a millisecond to a year.
const DURATION_RANGE: (f64, f64) = (0.001, 31_536_000.0);

#[derive(Args)]
pub struct TraceArgs {
    /// auto, fentry, kprobe or netlink.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Also append every event as a JSON line to FILE (fsynced on exit).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// A netns standing in for the host's init_net (e.g. /run/netns/host, for tests).
    #[arg(long, value_name = "PATH")]
    host_netns: Option<PathBuf>,
}

pub fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    // Everything that can be checked is checked before a probe is attached.
    let choice: BackendChoice = args.backend.parse()?;
    let duration = args
        .duration
        .map(|secs| seconds(Setting::Flag("duration"), secs, DURATION_RANGE))
        .transpose()?;
    let mut recorder = args.record.as_deref().map(Recorder::open).transpose()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let options = TraceOptions {
            host_netns: args.host_netns.clone(),
        };
        let mut tracer = Tracer::start(choice, options).await?;
        eprintln!("netguard: tracing with the {} backend", tracer.backend);
        for skipped in &tracer.unavailable {
            eprintln!("netguard: not using {skipped}");
        }
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let deadline = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                event = tracer.next() => {
                    let Some(event) = event else { break };
                    if args.json {
                        println!("{}", serde_json::to_string(&event)?);
                    } else {
                        println!("{}", output::event_line(&event));
                    }
                    if let Some(rec) = recorder.as_mut() {
                        rec.append(&event)?;
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = &mut deadline => break,
            }
        }
        if let Some(rec) = recorder.as_mut() {
            rec.sync()?;
        }
        eprintln!(
            "netguard: {} events seen, {} dropped",
            tracer.seen(),
            tracer.dropped()
        );
        Ok(ExitCode::SUCCESS)
    })
}
