//! Benchmark 5, scale: 1,000 guarded links in 1,000 netns, all healthy. The CPU of one idle
//! reconcile pass, what an idle agent costs (memory, CPU), `netguard status --json`, and the
//! ledger on disk.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use netguard::inventory::Pool;
use netguard::ledger::{Ledger, LedgerOptions, LinkKey, LinkState, STATE_FILE};
use netguard::restore::Restorer;
use serde::Serialize;
use tokio::process::Command;

use crate::agent::{self, Agent};
use crate::stats::Samples;
use crate::world::{World, IFNAME};

/// Links the agent repairs at a time (as `netguard agent` does).
const CONCURRENCY: usize = 64;

#[derive(Debug, Serialize)]
pub struct ScaleResult {
    pub links: usize,
    /// CPU (user + system) of one reconcile pass that finds everything whole, by the
    /// restorer an agent runs, after its first pass.
    pub idle_pass_cpu: Samples,
    /// Resident memory of the agent once its first pass found everything whole.
    pub agent_rss_bytes: u64,
    /// The idle agent's CPU per second of wall time (default interval between passes; the
    /// tracer's own rescans included).
    pub agent_idle_cpu_per_second: f64,
    /// Wall time of `netguard status --json` against the running agent.
    pub status: Samples,
    /// `state.json` holding every link.
    pub ledger_bytes: u64,
    /// Writing it after one change (encode, write, fsync, rename, fsync of the directory).
    pub save: Samples,
}

pub async fn run(
    netguard: &Path,
    links: usize,
    window: Duration,
    repeats: usize,
) -> anyhow::Result<ScaleResult> {
    eprintln!("scale, {links} links: building the world");
    let world = World::build(links).await?;
    let ledger_bytes = std::fs::metadata(world.state_dir.join(STATE_FILE))?.len();
    // Before the agent starts: it holds the ledger from then on.
    let idle_pass_cpu = idle_passes(&world, repeats).await?;
    let save = save_times(&world, repeats)?;

    let agent = Agent::start(netguard, &world, None).await?;
    let agent_rss_bytes = agent::rss(agent.pid())?;
    let cpu0 = agent::cpu_time(agent.pid())?;
    tokio::time::sleep(window).await;
    let agent_idle_cpu_per_second =
        (agent::cpu_time(agent.pid())? - cpu0).as_secs_f64() / window.as_secs_f64();

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
            bail!(
                "netguard status failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    agent.stop().await?;
    Ok(ScaleResult {
        links,
        idle_pass_cpu,
        agent_rss_bytes,
        agent_idle_cpu_per_second,
        status: Samples::of(&status),
        ledger_bytes,
        save,
    })
}

/// CPU of `repeats` passes of one restorer over the healthy world, after a first pass.
async fn idle_passes(world: &World, repeats: usize) -> anyhow::Result<Samples> {
    let (mut ledger, _) = Ledger::open(LedgerOptions::new(&world.state_dir))?;
    let restorer = Restorer::new(
        Arc::new(Pool::new(Some(world.host_path.clone()))),
        CONCURRENCY,
    );
    let mut times = Vec::with_capacity(repeats);
    for pass in 0..=repeats {
        let before = cpu_time();
        let report = restorer.pass(&mut ledger).await?;
        let took = cpu_time() - before;
        ensure!(
            report
                .results
                .iter()
                .all(|r| r.applied.is_empty() && report.broken().count() == 0),
            "an idle pass was not idle:\n{report}"
        );
        if pass > 0 {
            times.push(took);
        }
    }
    ledger.save()?;
    Ok(Samples::of(&times))
}

/// Times `repeats` saves of the world's ledger, each after one state change.
fn save_times(world: &World, repeats: usize) -> anyhow::Result<Samples> {
    let (mut ledger, _) = Ledger::open(LedgerOptions::new(&world.state_dir))?;
    let key = LinkKey {
        netns: world.containers[0].locator(),
        name: IFNAME.into(),
    };
    let mut times = Vec::with_capacity(repeats);
    for i in 0..repeats {
        let state = if i % 2 == 0 {
            LinkState::Restored
        } else {
            LinkState::Intact
        };
        ledger.set_link_state(&key, state, None);
        let started = Instant::now();
        ensure!(
            ledger.save()?,
            "the ledger had a change but was not written"
        );
        times.push(started.elapsed());
    }
    // Leave it as learned, for the agent.
    ledger.set_link_state(&key, LinkState::Intact, None);
    ledger.save()?;
    Ok(Samples::of(&times))
}

/// CPU time of this process so far, user + system, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
