//! Benchmark 1, mass restore: every container netns deleted and re-created at the same path
//! (a host-wide container restart), then the time each contender takes to put every link back.
//! Contenders alternate within each round, on the same world, after the same settling.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netguard::inventory::Pool;
use netguard::ledger::{Ledger, LedgerOptions};
use netguard::restore::Restorer;
use serde::Serialize;
use tokio::process::Command;

use crate::baseline;
use crate::stats::Samples;
use crate::world::World;

/// Links the restorer repairs at a time.
const CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// One restore pass, started after the restart.
    Netguard,
    /// The operator's `ip` script.
    Baseline,
    /// The same requests, unchecked.
    Floor,
}

impl Contender {
    pub fn label(self) -> &'static str {
        match self {
            Contender::Netguard => "netguard restore",
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

/// Builds a world of `n` containers and times each contender `rounds` times.
pub async fn run(n: usize, rounds: usize, contenders: &[Contender]) -> anyhow::Result<MassResult> {
    eprintln!("mass restore, N={n}: building the world");
    let world = World::build(n).await?;
    let mut times: BTreeMap<Contender, Vec<Duration>> = BTreeMap::new();
    // Round 0 warms up (page cache, allocator, the kernel's caches) and is not counted. The
    // order rotates every round, so no contender always runs right after the same one.
    for round in 0..=rounds {
        for k in 0..contenders.len() {
            let who = contenders[(k + round) % contenders.len()];
            let took = trial(&world, who).await.with_context(|| format!("{} at N={n}, round {round}", who.label()))?;
            world.verify().await.with_context(|| format!("after {} at N={n}, round {round}", who.label()))?;
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
    let seconds: BTreeMap<Contender, Samples> = times.iter().map(|(c, t)| (*c, Samples::of(t))).collect();
    let ratio = |a: Contender, b: Contender| Some(seconds.get(&a)?.median / seconds.get(&b)?.median);
    Ok(MassResult {
        n,
        rounds,
        baseline_over_netguard: ratio(Contender::Baseline, Contender::Netguard),
        netguard_over_floor: ratio(Contender::Netguard, Contender::Floor),
        seconds,
    })
}

/// One restart and one contender's restore, timed from its start to its end.
async fn trial(world: &World, who: Contender) -> anyhow::Result<Duration> {
    world.recreate_all(|| Ok(()))?;
    world.settle().await?;
    match who {
        Contender::Netguard => netguard_pass(world).await,
        Contender::Baseline => {
            let script = world.state_dir.join("baseline.sh");
            std::fs::write(&script, baseline::script(world))?;
            timed(Command::new("sh").arg("-e").arg(&script)).await
        }
        Contender::Floor => {
            let me = std::env::current_exe().context("finding our own executable")?;
            timed(
                Command::new(me)
                    .args(["floor", "--world", &world.name, "--n", &world.containers.len().to_string(), "--host"])
                    .arg(&world.host_path),
            )
            .await
        }
    }
}

/// One restore pass through the library, as `netguard restore` does it: open the ledger,
/// survey, plan, apply, verify, save.
async fn netguard_pass(world: &World) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (mut ledger, _) = Ledger::open(LedgerOptions::new(&world.state_dir))?;
    let restorer = Restorer::new(Arc::new(Pool::new(Some(world.host_path.clone()))), CONCURRENCY);
    let report = restorer.pass(&mut ledger).await?;
    ledger.save()?;
    let took = started.elapsed();
    if let Some(first) = report.broken().next() {
        bail!(
            "{} links not restored; first: {} {:?} {}",
            report.broken().count(),
            first.target,
            first.outcome,
            first.reason.as_deref().unwrap_or("")
        );
    }
    Ok(took)
}

/// Runs a command to its end; its wall time, or its stderr if it fails.
async fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true).output().await?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{:?} failed ({}): {}", cmd.as_std(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(took)
}
