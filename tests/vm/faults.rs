//! Fault runs: the agent SIGKILLed at one step of a repair (through the `fault-points` kill
//! points, `netguard::fault`), then started again; what it converges to is checked as an
//! operator would look at it: the ledger opens, the NIC is home under its name and up, the
//! links are back with MAC, address and route, no device twice, no `ngtmp*` left, bystanders
//! untouched. Many runs share one guest boot; each sets its world up from scratch.
//!
//! Each run has three agents on one ledger: A sets the scene and is stopped; the world
//! changes while no agent runs (a refund, a driver reload), so B, started with the kill point
//! armed, repairs it in its first pass (a record on disk counts as having seen the NIC
//! leave); for a lend, B is asked to lend. B dies at the point; C starts on what B left.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use netguard::trace::BackendKind;
use netguard_tests::{is_up, Bystanders, IP};
use serde_json::Value;

use crate::agent::{
    bystanders, guard_vlan_pod, lend_with_ip, link, nic_home, reload_e1000, until, vlan_back,
    Agent, Outcome, ETH1_MAC, VLAN_POD,
};
use crate::scenarios::{cleanup, ip};

/// The agents' tracer: what a kill interrupts is the same with any backend, and attaching the
/// eBPF probes costs tens of seconds per agent start under TCG (three starts per run).
const BACKEND: BackendKind = BackendKind::Netlink;

/// How long an agent gets to repair (its start included).
const REPAIR: Duration = Duration::from_secs(60);

/// The repairs a kill can interrupt.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// eth1 refunded as devN while no agent ran: renamed home, set up.
    Refund,
    /// `netguard lend eth1` into c3 as eth0.
    Lend,
    /// vlan eth1.3 + macvlan in pod netns p1 gone with `modprobe -r e1000; modprobe e1000`
    /// while no agent ran: both re-created.
    Reload,
}

pub const KINDS: [Kind; 3] = [Kind::Refund, Kind::Lend, Kind::Reload];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Refund => "refund",
            Kind::Lend => "lend",
            Kind::Reload => "reload",
        }
    }

    /// The one kill point a short run (the VM suite's) uses: one the repair is sure to reach.
    pub fn short_point(self) -> &'static str {
        match self {
            Kind::Refund => "action:1",
            Kind::Lend => "temp-named:1",
            Kind::Reload => "temp-named:1",
        }
    }
}

/// Whether this is the 6.1 guest (~3x slower than 6.12 under TCG).
pub fn slow_guest() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").is_ok_and(|r| r.starts_with("6.1."))
}

/// Where a run's ledger and log live.
fn state_dir(kind: Kind) -> String {
    format!("/tmp/faults-{}", kind.name())
}

/// The NIC every kind works on was up before the scene.
fn eth1_up() -> bool {
    link(None, "eth1").is_some_and(|l| nic_home("eth1", ETH1_MAC) && is_up(&l))
}

/// Sets the scene with agent A; leaves the world in need of a repair (or, for a lend, an
/// operator about to lend), no agent running.
async fn scene(kind: Kind) -> Outcome {
    let dir = state_dir(kind);
    let _ = std::fs::remove_file(format!("{dir}.log"));
    // Up before A first sees it, so that up is what A records as its state at home.
    ip(&["link", "set", "eth1", "up"])?;
    let a = Agent::start_in(BACKEND, &dir, true)?;
    match kind {
        Kind::Refund => {
            until("A records eth1 up at home", || {
                a.row("eth1").is_ok_and(|r| r["state"] == "home")
            })
            .await?;
            lend_with_ip(&a, "eth1", "c1").await?;
            a.stop()?;
            ip(&["netns", "del", "c1"])?;
            until("eth1 refunded to the host", || {
                std::fs::read_dir("/sys/class/net").is_ok_and(|d| {
                    d.flatten().any(|e| {
                        std::fs::read_to_string(e.path().join("address"))
                            .is_ok_and(|m| m.trim() == ETH1_MAC)
                    })
                })
            })
            .await?;
        }
        Kind::Lend => {
            until("A records eth1 up at home", || {
                a.row("eth1").is_ok_and(|r| r["state"] == "home")
            })
            .await?;
            a.stop()?;
            ip(&["netns", "add", "c3"])?;
        }
        Kind::Reload => {
            guard_vlan_pod(&a)?;
            a.stop()?;
            reload_e1000()?;
        }
    }
    Ok(())
}

/// What B is asked to do once it answers (the other kinds repair at start).
fn act(kind: Kind, b: &Agent) {
    if let Kind::Lend = kind {
        // Killed mid-lend, the command fails (its agent is gone): what counts is what C makes
        // of it.
        let _ = b.netguard(&["lend", "eth1", "--netns", "/run/netns/c3", "--name", "eth0"]);
    }
}

/// Whether the repair is done as the operator would see it (the kind's links and NIC).
fn converged(kind: Kind, c: &Agent) -> Result<(), String> {
    let row = |name: &str| {
        c.row(name)
            .map(|r| r["state"].as_str().unwrap_or("").to_string())
    };
    match kind {
        Kind::Refund => {
            if !eth1_up() {
                return Err(format!("eth1 not home and up: {:?}", link(None, "eth1")));
            }
            match row("eth1")?.as_str() {
                "home" | "restored" => Ok(()),
                other => Err(format!("eth1's row says {other}")),
            }
        }
        // Either lent (eth0 in c3, up as it was at home) or never left: both are whole.
        Kind::Lend => {
            let lent =
                link(Some("c3"), "eth0").is_some_and(|l| l["address"] == ETH1_MAC && is_up(&l));
            match (lent, eth1_up(), row("eth1")?.as_str()) {
                (true, false, "lent") => Ok(()),
                (false, true, "home" | "restored") => Ok(()),
                (lent, home, state) => Err(format!(
                    "eth1 lent and up: {lent}, home and up: {home}, its row says {state}"
                )),
            }
        }
        Kind::Reload => {
            if !VLAN_POD.is_back() {
                return Err(format!(
                    "p1's macvlan not back: {:?}",
                    link(Some("p1"), "eth0")
                ));
            }
            vlan_back()?;
            if !eth1_up() {
                return Err("eth1 not up".into());
            }
            Ok(())
        }
    }
}

/// Every netns a run can leave a device in: the host's (`None`) and the named ones.
fn every_netns() -> Vec<Option<String>> {
    let mut all = vec![None];
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        all.extend(
            dir.flatten()
                .map(|e| Some(e.file_name().to_string_lossy().into_owned())),
        );
    }
    all
}

/// No `ngtmp*` device anywhere, and no device twice: no two links of one kind share a MAC
/// across all netns (loopbacks aside).
fn nothing_left_over() -> Outcome {
    let mut seen: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for netns in every_netns() {
        let mut cmd = Command::new(IP);
        cmd.args(["-j", "-d"]);
        if let Some(ns) = &netns {
            cmd.args(["-n", ns]);
        }
        let out = cmd
            .args(["link", "show"])
            .output()
            .map_err(|e| e.to_string())?;
        let links: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let place = netns.as_deref().unwrap_or("host");
        for l in links.as_array().into_iter().flatten() {
            let name = l["ifname"].as_str().unwrap_or_default();
            if netguard::rtnl::is_temporary_link_name(name) {
                return Err(format!("{name} left in {place}: {l}"));
            }
            if l["link_type"] == "loopback" {
                continue;
            }
            let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("nic");
            let mac = l["address"].as_str().unwrap_or_default();
            seen.entry((kind.to_string(), mac.to_string()))
                .or_default()
                .push(format!("{name} in {place}"));
        }
    }
    match seen.into_iter().find(|(_, at)| at.len() > 1) {
        Some(((kind, mac), at)) => Err(format!("{kind} {mac} twice: {}", at.join(", "))),
        None => Ok(()),
    }
}

/// Agent C's part: it opens the ledger, converges, leaves nothing over; a lent NIC is then
/// reclaimed home as an operator would.
async fn converge(kind: Kind, watched: &Bystanders) -> Outcome {
    let c = Agent::start_in(BACKEND, &state_dir(kind), false)
        .map_err(|e| format!("C (after the kill): {e}"))?;
    let fail = |why: String| format!("{why}\n  log (A, B, C):\n{}", c.log_tail());
    let start = Instant::now();
    while let Err(why) = converged(kind, &c) {
        if start.elapsed() > REPAIR {
            return Err(fail(format!("not converged within {REPAIR:?}: {why}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nothing_left_over().map_err(fail)?;
    watched.check().map_err(fail)?;
    if let Kind::Lend = kind {
        if link(Some("c3"), "eth0").is_some() {
            c.netguard(&["reclaim", "eth0"]).map_err(fail)?;
            if !eth1_up() {
                return Err(fail("eth1 not home and up after reclaim".into()));
            }
        }
    }
    c.stop()
}

/// One run: scene, B killed at `point` (`None`: B runs to the end, the baseline), C.
/// Returns the kill points B passed through (read from its log).
async fn run_once(kind: Kind, point: Option<&str>) -> Result<Vec<String>, String> {
    cleanup();
    let watched = bystanders(!matches!(kind, Kind::Reload))?;
    scene(kind).await?;
    let dir = state_dir(kind);
    let log = format!("{dir}.log");
    let before_b = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let mut b = Agent::spawn(BACKEND, &dir, false, point)?;
    if let Kind::Lend = kind {
        b.answering()?;
        act(kind, &b);
    }
    let passed = match point {
        Some(point) => {
            let Some(ended) = b.ended(REPAIR).await else {
                return Err(format!(
                    "B never reached {point}; its log:\n{}",
                    b.log_tail()
                ));
            };
            if ended.signal() != Some(libc::SIGKILL) {
                return Err(format!(
                    "B ended {ended}, not killed at {point}:\n{}",
                    b.log_tail()
                ));
            }
            vec![point.to_string()]
        }
        None => {
            // The baseline: B repairs alone; the points it passed are the ones to kill at.
            converged_by(kind, &b).await?;
            b.stop()?;
            points_in_log(&log, before_b)
        }
    };
    let outcome = converge(kind, &watched).await;
    cleanup();
    outcome.map(|()| passed)
}

/// Waits until B alone has done the repair (for a lend: the lend returned).
async fn converged_by(kind: Kind, b: &Agent) -> Outcome {
    let start = Instant::now();
    while let Err(why) = converged(kind, b) {
        if start.elapsed() > REPAIR {
            return Err(format!(
                "B did not repair within {REPAIR:?}: {why}\n{}",
                b.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `fault point NAME:N` lines of a log from byte `from` on, in order, as `NAME:N`.
fn points_in_log(path: &str, from: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("fault point ").nth(1))
        .map(|p| p.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// `runs` kill runs of `kind`, spread over the kill points a baseline run passed through
/// (`short`: one run at [`Kind::short_point`], no baseline). One verdict per run.
pub async fn run_kind(kind: Kind, runs: u32, short: bool) -> Vec<(String, Outcome)> {
    let name = kind.name();
    let mut verdicts = Vec::new();
    let points = if short {
        vec![kind.short_point().to_string()]
    } else {
        match run_once(kind, None).await {
            Ok(points) if !points.is_empty() => {
                verdicts.push((format!("faults-{name}-baseline"), Ok(())));
                points
            }
            Ok(_) => {
                return vec![(
                    format!("faults-{name}-baseline"),
                    Err("no kill point passed".into()),
                )]
            }
            Err(why) => return vec![(format!("faults-{name}-baseline"), Err(why))],
        }
    };
    let started = Instant::now();
    let mut converged = 0;
    for i in 0..runs {
        let point = &points[i as usize % points.len()];
        let outcome = run_once(kind, Some(point)).await.map(|_| ());
        converged += u32::from(outcome.is_ok());
        verdicts.push((format!("faults-{name}-{i}-at-{point}"), outcome));
    }
    println!(
        "NGVM INFO faults {name}: {converged} of {runs} runs converged, kill points {}, {} s",
        points.join(" "),
        started.elapsed().as_secs()
    );
    verdicts
}
