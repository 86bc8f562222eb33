//! Benchmark 5, scale: 1,000 guarded links in 1,000 netns, all healthy. What an idle agent
//! costs (memory, CPU per reconcile pass), `netguard status --json`, and the ledger on disk.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use netguard::ledger::{Ledger, LedgerOptions, LinkKey, LinkState, STATE_FILE};
use serde::Serialize;
use tokio::process::Command;

use crate::agent::{self, Agent};
use crate::stats::Samples;
use crate::world::{World, IFNAME};

/// Seconds between the agent's idle passes while its CPU is measured.
const INTERVAL: f64 = 0.5;

#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub links: usize,
    /// Resident memory of the agent once its first pass found everything whole.
    pub agent_rss_bytes: u64,
    /// The agent's CPU (user + system) over a window of idle passes, per pass.
    pub idle_pass_cpu_seconds: f64,
    pub idle_passes: u64,
    /// Wall time of `netguard status --json` against the running agent.
    pub status: Samples,
    /// `state.json` holding every link.
    pub ledger_bytes: u64,
    /// Writing it after one change (encode, write, fsync, rename, fsync of the directory).
    pub save: Samples,
}

pub async fn run(netguard: &Path, links: usize, window: Duration, repeats: usize) -> anyhow::Result<ScaleResult> {
    eprintln!("scale, {links} links: building the world");
    let world = World::build(links).await?;
    let ledger_bytes = std::fs::metadata(world.state_dir.join(STATE_FILE))?.len();
    // Before the agent starts: it holds the ledger from then on.
    let save = save_times(&world, repeats)?;

    let agent = Agent::start(netguard, &world, Some(INTERVAL)).await?;
    let agent_rss_bytes = agent::rss(agent.pid())?;
    let passes = |status: netguard::status::Status| status.agent.map_or(0, |a| a.passes);
    let (passes0, cpu0) = (passes(agent.status().await?), agent::cpu_time(agent.pid())?);
    tokio::time::sleep(window).await;
    let (cpu1, passes1) = (agent::cpu_time(agent.pid())?, passes(agent.status().await?));
    let idle_passes = passes1 - passes0;
    ensure!(idle_passes > 0, "the agent made no pass in {window:?}");

    let mut status = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        let out = Command::new(netguard)
            .args(["status", "--json", "--socket"])
            .arg(agent.socket())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await?;
        status.push(started.elapsed());
        if !out.status.success() {
            bail!("netguard status failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    agent.stop().await?;
    Ok(ScaleResult {
        links,
        agent_rss_bytes,
        idle_pass_cpu_seconds: (cpu1 - cpu0).as_secs_f64() / idle_passes as f64,
        idle_passes,
        status: Samples::of(&status),
        ledger_bytes,
        save,
    })
}

/// Times `repeats` saves of the world's ledger, each after one state change.
fn save_times(world: &World, repeats: usize) -> anyhow::Result<Samples> {
    let (mut ledger, _) = Ledger::open(LedgerOptions::new(&world.state_dir))?;
    let key = LinkKey { netns: world.containers[0].locator(), name: IFNAME.into() };
    let mut times = Vec::with_capacity(repeats);
    for i in 0..repeats {
        let state = if i % 2 == 0 { LinkState::Restored } else { LinkState::Intact };
        ledger.set_link_state(&key, state, None);
        let started = Instant::now();
        ensure!(ledger.save()?, "the ledger had a change but was not written");
        times.push(started.elapsed());
    }
    // Leave it as learned, for the agent.
    ledger.set_link_state(&key, LinkState::Intact, None);
    ledger.save()?;
    Ok(Samples::of(&times))
}
