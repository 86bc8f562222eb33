//! Benchmark 3: the agent's reaction, per backend. (a) eth1 lent with plain `ip` and its netns
//! deleted -> eth1 home under its name; (b) vlan + pod macvlan guarded, e1000 reloaded -> the
//! macvlan back in its pod with its address.
//!
//! Each contender's trials of one round run in one agent session (started, trials, stopped,
//! guest cleaned up): an agent start costs seconds under TCG, so it is not paid per trial.
//! Warm-up: one untimed refund at the start of each session, one untimed driver reload (no
//! agent) before the first round.

use std::collections::HashMap;
use std::time::Duration;

use netguard::trace::BackendKind;

use super::results::{Plan, Reaction};
use super::stats::Samples;
use super::{info, rotated, Outcome};
use crate::agent::{self, Agent, ETH1_MAC, VLAN_POD};
use crate::scenarios::cleanup;

#[derive(Default)]
struct Timings {
    refund: Vec<Duration>,
    reload: Vec<Duration>,
    after_modprobe: Vec<Duration>,
    failures: Vec<String>,
}

pub async fn run(plan: Plan, backends: &[BackendKind]) -> Vec<Reaction> {
    let mut timings: HashMap<BackendKind, Timings> = HashMap::new();
    if plan.reloads > 0 {
        // The first reload of a boot also reads the module from the initramfs: not timed.
        if let Err(why) = agent::reload_e1000() {
            info(format_args!("warm-up reload: {why}"));
        }
        cleanup();
    }
    for round in 0..plan.rounds {
        for backend in rotated(backends, round) {
            let refunds = plan.share(plan.refunds, round);
            let reloads = plan.share(plan.reloads, round);
            if refunds + reloads == 0 {
                continue;
            }
            let all = timings.entry(backend).or_default();
            if let Err(why) = session(backend, refunds, reloads, all).await {
                info(format_args!("{backend} round {round}: {why}"));
                all.failures.push(format!("round {round}: {why}"));
            }
        }
    }
    backends
        .iter()
        .map(|backend| {
            let t = timings.remove(backend).unwrap_or_default();
            Reaction {
                backend: backend.to_string(),
                refund_home: Samples::of(&t.refund),
                driver_reload: Samples::of(&t.reload),
                after_modprobe: Samples::of(&t.after_modprobe),
                failures: t.failures,
            }
        })
        .collect()
}

/// One agent with `backend`: `refunds` refund trials, then `reloads` driver-reload trials.
async fn session(
    backend: BackendKind,
    refunds: usize,
    reloads: usize,
    timings: &mut Timings,
) -> Outcome {
    let agent = Agent::start(backend)?;
    info(format_args!("{backend} agent started"));
    let result = trials(&agent, refunds, reloads, timings)
        .await
        .map_err(|why| format!("{why}\n  agent log:\n{}", agent.log_tail()));
    // The agent would restore what the cleanup removes: stop it first.
    drop(agent);
    cleanup();
    result
}

async fn trials(agent: &Agent, refunds: usize, reloads: usize, timings: &mut Timings) -> Outcome {
    let backend = agent.backend;
    // One untimed refund first: this agent's first repair warms what later ones reuse.
    for trial in 0..=refunds {
        agent::lend_with_ip(agent, "eth1", "c1").await?;
        let took = agent::refund_home_time("eth1", ETH1_MAC, "c1").await?;
        let warm_up = trial == 0;
        info(format_args!(
            "{backend} refund home {} ms{}",
            took.as_millis(),
            if warm_up { " (warm-up)" } else { "" }
        ));
        if !warm_up {
            timings.refund.push(took);
        }
    }
    if reloads > 0 {
        agent::guard_vlan_pod(agent)?;
        for _ in 0..reloads {
            let took = agent::reload_until_back(&[&VLAN_POD]).await?;
            agent::vlan_back()?;
            info(format_args!(
                "{backend} driver reload: macvlan back {} ms (modprobe {} ms)",
                took.pods_back.as_millis(),
                took.driver.as_millis()
            ));
            timings.reload.push(took.pods_back);
            timings.after_modprobe.push(took.pods_back - took.driver);
        }
    }
    Ok(())
}
