//! Benchmark 1, mass restore: every container netns deleted and re-created at the same path
//! (a host-wide container restart), then the time each contender takes to put every link back.
//! Contenders alternate within each round, on the same world, after the same settling.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::process::Command;

use crate::agent::Agent;
use crate::baseline;
use crate::stats::Samples;
use crate::watch::{self, Watch};
use crate::world::World;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// `netguard restore`, started after the restart.
    Netguard,
    /// `netguard agent`, running before the restart.
    Agent,
    /// The operator's `ip` script.
    Baseline,
    /// The same requests, unchecked.
    Floor,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Netguard => "netguard restore",
            Contender::Agent => "agent (already running)",
            Contender::Baseline => "baseline (ip script)",
            Contender::Floor => "floor (netlink, no checks)",
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MassResult {
    pub n: usize,
    /// Timed rounds (one untimed warm-up round before them).
    pub rounds: usize,
    pub seconds: BTreeMap<Contender, Samples>,
    pub baseline_over_netguard: Option<f64>,
    pub netguard_over_floor: Option<f64>,
}

/// Builds a world of `n` containers and times each contender `rounds` times; the log of an
/// agent that did not bring every link back is kept in `failed_log` (the world's directory
/// goes with the world).
pub async fn run(
    netguard: &Path,
    failed_log: &Path,
    n: usize,
    rounds: usize,
    contenders: &[Contender],
) -> anyhow::Result<MassResult> {
    eprintln!("mass restore, N={n}: building the world");
    let world = World::build(n).await?;
    let mut times: BTreeMap<Contender, Vec<Duration>> = BTreeMap::new();
    // Round 0 warms up (page cache, allocator, the kernel's caches) and is not counted. The
    // order rotates every round, so no contender always runs right after the same one.
    for round in 0..=rounds {
        for k in 0..contenders.len() {
            let who = contenders[(k + round) % contenders.len()];
            let took = trial(netguard, failed_log, &world, who)
                .await
                .with_context(|| format!("{} at N={n}, round {round}", who.label()))?;
            world
                .verify()
                .await
                .with_context(|| format!("after {} at N={n}, round {round}", who.label()))?;
            eprintln!(
                "  N={n} round {round}{}: {:<28} {:8.3} s",
                if round == 0 { " (warm-up)" } else { "" },
                who.label(),
                took.as_secs_f64()
            );
            if round > 0 {
                times.entry(who).or_default().push(took);
            }
        }
    }
    let seconds: BTreeMap<Contender, Samples> =
        times.iter().map(|(c, t)| (*c, Samples::of(t))).collect();
    let ratio =
        |a: Contender, b: Contender| Some(seconds.get(&a)?.median / seconds.get(&b)?.median);
    Ok(MassResult {
        n,
        rounds,
        baseline_over_netguard: ratio(Contender::Baseline, Contender::Netguard),
        netguard_over_floor: ratio(Contender::Netguard, Contender::Floor),
        seconds,
    })
}

/// One restart and one contender's restore. A one-shot contender starts once the kernel
/// has torn the old namespaces down and is timed from its start to its exit; the agent runs
/// through the restart and is timed from the last netns mounted to the last link back.
async fn trial(
    netguard: &Path,
    failed_log: &Path,
    world: &World,
    who: Contender,
) -> anyhow::Result<Duration> {
    let mut cmd = match who {
        Contender::Agent => return agent_trial(netguard, failed_log, world).await,
        Contender::Netguard => {
            let mut cmd = Command::new(netguard);
            cmd.arg("restore")
                .arg("--host-netns")
                .arg(&world.host_path)
                .arg("--state-dir")
                .arg(&world.state_dir);
            // Never the system's agent: a socket nobody listens on, so the command works alone.
            cmd.arg("--socket").arg(world.state_dir.join("agent.sock"));
            cmd
        }
        Contender::Baseline => {
            let script = world.state_dir.join("baseline.sh");
            std::fs::write(&script, baseline::script(world))?;
            let mut cmd = Command::new("sh");
            cmd.arg("-e").arg(&script);
            cmd
        }
        Contender::Floor => {
            let mut cmd =
                Command::new(std::env::current_exe().context("finding our own executable")?);
            cmd.args([
                "floor",
                "--world",
                &world.name,
                "--n",
                &world.containers.len().to_string(),
                "--host",
            ]);
            cmd.arg(&world.host_path);
            cmd
        }
    };
    world.recreate_all(|| Ok(()))?;
    world.settle().await?;
    timed(&mut cmd).await
}

async fn agent_trial(
    netguard: &Path,
    failed_log: &Path,
    world: &World,
) -> anyhow::Result<Duration> {
    let agent = Agent::start(netguard, world, &[]).await?;
    let watch = Watch::start(world).await?;
    let born = world.recreate_all(watch::subscribe)?;
    let since = Instant::now();
    let all: Vec<usize> = (0..world.containers.len()).collect();
    let timeout = Duration::from_secs(30) + Duration::from_millis(50) * all.len() as u32;
    let took = watch.until_back(world, &all, born, since, timeout).await;
    if let Err(e) = took {
        agent.keep_log(failed_log);
        // Whether the kernel agrees tells a watch that missed notifications from links that
        // are not back.
        let kernel = match world.verify().await {
            Ok(()) => "yet the kernel has every link whole".to_string(),
            Err(e) => format!("and the kernel says: {e:#}"),
        };
        agent.stop().await?;
        bail!("{e:#}; {kernel}");
    }
    agent.stop().await?;
    took
}

/// Runs a command to its end; its wall time, or its stderr if it fails.
async fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd.as_std(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}
