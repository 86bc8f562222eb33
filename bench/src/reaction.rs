//! Benchmark 2, reaction latency: the agent running; one container netns re-created; the
//! time from the new netns being mounted to its veth verified back, over many trials.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::agent::Agent;
use crate::stats::Samples;
use crate::watch::{self, Watch};
use crate::world::World;

/// Containers in the world; trials restart them in turn.
const CONTAINERS: usize = 10;
/// Untimed trials first.
const WARM_UP: usize = 3;
/// Between trials: the agent looks again 50, 250 and 1000 ms after a bind mount comes or goes;
/// waiting that out keeps one trial's follow-ups out of the next.
const GAP: Duration = Duration::from_millis(1400);
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize)]
pub struct ReactionResult {
    pub containers: usize,
    pub trials: usize,
    pub latency: Samples,
}

pub async fn run(netguard: &Path, trials: usize) -> anyhow::Result<ReactionResult> {
    eprintln!("reaction latency: {trials} trials");
    let world = World::build(CONTAINERS).await?;
    let agent = Agent::start(netguard, &world, &[]).await?;
    let mut times = Vec::with_capacity(trials);
    for t in 0..WARM_UP + trials {
        let i = t % CONTAINERS;
        let watch = Watch::start(&world).await?;
        let born = world.recreate(i, watch::subscribe)?;
        let since = std::time::Instant::now();
        let took = watch
            .until_back(&world, &[i], vec![born], since, TIMEOUT)
            .await?;
        if t >= WARM_UP {
            times.push(took);
        }
        tokio::time::sleep(GAP).await;
    }
    agent.stop().await?;
    Ok(ReactionResult {
        containers: CONTAINERS,
        trials,
        latency: Samples::of(&times),
    })
}
