//! A NIC is renamed home only after it was away, and never brought up on a guess: an admin's
//! rename while the agent was stopped is adopted (the NIC stays up under its new name), and a
//! NIC that was down when lent comes home down. Each scenario runs its own agents.

use std::time::Duration;

use netguard::trace::BackendKind;
use netguard_tests::{is_up, Bystanders};

use crate::agent::{bystanders, lend_with_ip, link, nic_home, refund_home_time, until, Agent};
use crate::scenarios::{cleanup, ip};

type Outcome = Result<(), String>;

const ETH2_MAC: &str = "52:54:00:12:34:58";

/// With the agent's log tail, for a failure.
fn failed(agent: &Agent, why: String) -> String {
    format!("{why}\n  agent log:\n{}", agent.log_tail())
}

/// Agent started (records eth1), stopped; the admin renames eth1 uplink1, gives it an address
/// and sets it up; agent started again: uplink1 stays up under its new name, adopted.
async fn adopt_rename(backend: BackendKind) -> Outcome {
    let dir = format!("/tmp/adopt-{backend}");
    let others = bystanders(true)?;
    let agent = Agent::start_in(backend, &dir, true)?;
    until("the agent records eth1 at home", || {
        agent.row("eth1").is_ok_and(|r| r["state"] == "home")
    })
    .await
    .map_err(|e| failed(&agent, e))?;
    agent.stop()?;
    ip(&["link", "set", "eth1", "name", "uplink1"])?;
    ip(&["addr", "add", "198.18.9.1/24", "dev", "uplink1"])?;
    ip(&["link", "set", "uplink1", "up"])?;
    let uplink = Bystanders::new().watch(None, "uplink1");
    let agent = Agent::start_in(backend, &dir, false)?;
    until("status shows uplink1 at home", || {
        agent.row("uplink1").is_ok_and(|r| r["state"] == "home")
    })
    .await
    .map_err(|e| failed(&agent, e))?;
    // A few passes later, still so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    uplink
        .check()
        .map_err(|e| failed(&agent, format!("the adopted NIC was touched: {e}")))?;
    if agent.row("eth1").is_ok() {
        return Err(failed(
            &agent,
            "status still guards a NIC named eth1".into(),
        ));
    }
    if !agent
        .log_tail()
        .contains("adopted uplink1 as its home name")
    {
        return Err(failed(
            &agent,
            "the log does not say uplink1 was adopted".into(),
        ));
    }
    others.check()?;
    agent.stop()?;
    ip(&["addr", "flush", "dev", "uplink1"])
}

/// eth2 down, lent with plain `ip` while the agent is starting, its netns deleted: renamed
/// home and left down; then again with the agent running.
async fn down_stays_down(backend: BackendKind) -> Outcome {
    let others = bystanders(true)?;
    ip(&["link", "set", "eth2", "down"])?;
    ip(&["netns", "add", "c2"])?;
    let agent = Agent::start_in(backend, &format!("/tmp/down-{backend}"), true)?;
    ip(&["link", "set", "eth2", "netns", "c2", "name", "eth0"])?;
    until("the agent sees eth2 lent", || {
        agent.row("eth2").is_ok_and(|r| r["state"] == "lent")
    })
    .await
    .map_err(|e| failed(&agent, e))?;
    for round in ["while the agent was starting", "with the agent running"] {
        if round == "with the agent running" {
            lend_with_ip(&agent, "eth2", "c2").await?;
        }
        refund_home_time("eth2", ETH2_MAC, "c2")
            .await
            .map_err(|e| failed(&agent, e))?;
        // Passes that might set it up come every second.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let eth2 = link(None, "eth2").ok_or("eth2 gone")?;
        if is_up(&eth2) || !nic_home("eth2", ETH2_MAC) {
            return Err(failed(
                &agent,
                format!("eth2 lent down {round} came home as: {eth2}"),
            ));
        }
    }
    others.check()?;
    agent.stop()
}

pub async fn run_all(
    backend: BackendKind,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<(&'static str, Outcome)> {
    let mut results = Vec::new();
    if wanted("agent-adopt-rename") {
        results.push(("agent-adopt-rename", adopt_rename(backend).await));
        cleanup();
    }
    if wanted("agent-down-stays-down") {
        results.push(("agent-down-stays-down", down_stays_down(backend).await));
        cleanup();
    }
    results
}
