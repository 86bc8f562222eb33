//! Benchmark 5, scale: N guarded links in N netns (1,000 by default, 10,000 for a fleet node),
//! all healthy. The CPU of one idle reconcile pass, what an idle agent costs (memory, CPU),
//! `netguard status --json`, a scrape of its metrics, the ledger on disk; then 1,000 of the
//! containers re-created at once and the time until the agent has every link back.

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
use crate::watch::{self, Watch};
use crate::world::{World, IFNAME};

/// How many containers the burst re-creates at once.
const BURST: usize = 1000;

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
    /// Wall time of one GET /metrics from the idle agent.
    pub scrape: Samples,
    pub scrape_bytes: usize,
    /// Mean wall time of the idle agent's passes over the measuring window, from its own
    /// `netguard_reconcile_pass_duration_seconds` (the scrape after the window less the one
    /// before it: its first, full pass left out).
    pub agent_pass_seconds: f64,
    /// Containers re-created at once, and the time from the last one mounted to every one
    /// of their links back (as the notifications show it).
    pub burst: usize,
    pub burst_back_seconds: f64,
    /// The agent's RSS after the burst.
    pub agent_rss_after_burst_bytes: u64,
}

/// The agent's log is kept in `failed_log` if it does not bring the burst back.
pub async fn run(
    netguard: &Path,
    failed_log: &Path,
    links: usize,
    window: Duration,
    repeats: usize,
) -> anyhow::Result<ScaleResult> {
    eprintln!("scale, {links} links: building the world");
    let started = Instant::now();
    let world = World::build(links).await?;
    eprintln!(
        "scale, {links} links: world built and learned in {:.1} s; idle passes and saves",
        started.elapsed().as_secs_f64()
    );
    let ledger_bytes = std::fs::metadata(world.state_dir.join(STATE_FILE))?.len();
    // Before the agent starts: it holds the ledger from then on.
    let idle_pass_cpu = idle_passes(&world, repeats).await?;
    let save = save_times(&world, repeats)?;

    eprintln!("scale, {links} links: starting the agent");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let agent = Agent::start(netguard, &world, &["--metrics", &metrics.to_string()]).await?;
    let agent_rss_bytes = agent::rss(agent.pid())?;
    eprintln!(
        "scale, {links} links: agent up, RSS {} MiB",
        agent_rss_bytes >> 20
    );
    let passes0 = passes(&get_metrics(metrics).await?)?;
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
            // `status` checks that the agent answering is the one for this ledger and host.
            .arg("--state-dir")
            .arg(&world.state_dir)
            .arg("--host-netns")
            .arg(&world.host_path)
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
    let mut scrape = Vec::with_capacity(repeats);
    let mut text = String::new();
    for _ in 0..repeats {
        let started = Instant::now();
        text = get_metrics(metrics).await?;
        scrape.push(started.elapsed());
    }
    let passes1 = passes(&text)?;
    ensure!(
        passes1.1 > passes0.1,
        "the idle agent ran no pass in {window:?}"
    );
    let agent_pass_seconds = (passes1.0 - passes0.0) / (passes1.1 - passes0.1);

    eprintln!("scale, {links} links: re-creating {BURST} containers at once");
    let burst: Vec<usize> = (0..BURST.min(links)).collect();
    let watch = Watch::start(&world).await?;
    let born = burst
        .iter()
        .map(|&i| world.recreate(i, watch::subscribe))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let since = Instant::now();
    let back = watch
        .until_back(&world, &burst, born, since, Duration::from_secs(120))
        .await;
    let agent_rss_after_burst_bytes = agent::rss(agent.pid())?;
    let burst_back_seconds = match back {
        Ok(took) => took.as_secs_f64(),
        Err(e) => {
            agent.keep_log(failed_log);
            agent.stop().await?;
            return Err(e.context(format!("{BURST} containers re-created at {links} links")));
        }
    };
    agent.stop().await?;
    Ok(ScaleResult {
        scrape: Samples::of(&scrape),
        scrape_bytes: text.len(),
        agent_pass_seconds,
        burst: burst.len(),
        burst_back_seconds,
        agent_rss_after_burst_bytes,
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

/// One scrape, as Prometheus does it: the whole body.
async fn get_metrics(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    ensure!(raw.starts_with("HTTP/1.1 200"), "GET /metrics: {raw:.200}");
    Ok(raw)
}

/// The agent's pass durations so far: its histogram's `_sum` and `_count`.
fn passes(scrape: &str) -> anyhow::Result<(f64, f64)> {
    let value = |name: &str| {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    match (
        value("netguard_reconcile_pass_duration_seconds_sum"),
        value("netguard_reconcile_pass_duration_seconds_count"),
    ) {
        (Some(sum), Some(count)) => Ok((sum, count)),
        _ => bail!("the scrape has no pass durations"),
    }
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
