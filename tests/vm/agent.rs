//! The agent against real NICs: refunded NICs renamed home, lend/reclaim, and vlan + macvlan
//! brought back in their pod netns after a driver reload, each checked as `ip` shows it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netguard::trace::BackendKind;
use netguard_tests::{Bystanders, IP};
use serde_json::Value;

use crate::scenarios::{cleanup, ip};

use crate::pods::{guard_cni_pod, CNI_POD};
pub use crate::pods::{guard_vlan_pod, Pod, VLAN_POD};

pub type Outcome = Result<(), String>;

const NETGUARD: &str = "/bin/netguard";
const WAIT: Duration = Duration::from_secs(20);

/// A running `netguard agent`, stopped (SIGTERM) on drop.
pub struct Agent {
    pub backend: BackendKind,
    child: Child,
    pub state_dir: String,
    pub socket: String,
    log: String,
}

impl Agent {
    pub fn start(backend: BackendKind) -> Result<Agent, String> {
        Agent::start_in(backend, &format!("/tmp/agent-{backend}"), true)
    }

    /// An agent on the ledger in `state_dir` (emptied first if `fresh`), eth0 excluded (the
    /// bystander NIC); its log is appended to.
    pub fn start_in(backend: BackendKind, state_dir: &str, fresh: bool) -> Result<Agent, String> {
        let agent = Agent::spawn(backend, state_dir, fresh, None)?;
        agent.answering()?;
        Ok(agent)
    }

    /// [`Agent::start_in`] without waiting for it to answer, with a kill point armed if
    /// `fault` names one (`NETGUARD_FAULT`, see `netguard::fault`).
    pub fn spawn(
        backend: BackendKind,
        state_dir: &str,
        fresh: bool,
        fault: Option<&str>,
    ) -> Result<Agent, String> {
        let state_dir = state_dir.to_string();
        let socket = format!("{state_dir}.sock");
        let log = format!("{state_dir}.log");
        if fresh {
            let _ = std::fs::remove_dir_all(&state_dir);
        }
        let log_file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let mut command = Command::new(NETGUARD);
        if let Some(fault) = fault {
            command.env("NETGUARD_FAULT", fault);
        }
        let child = command
            .args(["agent", "--backend", backend.as_str(), "--interval", "1"])
            .args(["--exclude", EXCLUDED_MAC])
            .args(["--state-dir", &state_dir, "--socket", &socket])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start the agent: {e}"))?;
        Ok(Agent {
            backend,
            child,
            state_dir,
            socket,
            log,
        })
    }

    /// Waits until the agent answers `status`.
    pub fn answering(&self) -> Outcome {
        let started = Instant::now();
        while self.status().is_err() {
            if started.elapsed() > WAIT {
                return Err(format!(
                    "the agent never answered; its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// How the agent ended, if it has (within `within`).
    pub async fn ended(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `netguard ARGS` against this agent.
    pub fn netguard(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(NETGUARD)
            .args(args)
            .args(["--state-dir", &self.state_dir, "--socket", &self.socket])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "netguard {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn status(&self) -> Result<Value, String> {
        let text = self.netguard(&["status", "--json"])?;
        let status: Value =
            serde_json::from_str(&text).map_err(|e| format!("status --json: {e}: {text}"))?;
        if status["agent"].is_null() {
            return Err("status says no agent".into());
        }
        Ok(status)
    }

    /// Stops guarding every link (NICs stay: the cleanup renames them home). Scenarios share
    /// one agent; without this it re-creates what the last scenario guarded while the cleanup
    /// deletes it, and the next scenario starts against a busy agent.
    pub fn forget_links(&self) -> Outcome {
        let status = self.status()?;
        let mut links: Vec<(String, Option<String>)> = status["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["kind"] != "nic")
            .filter_map(|r| {
                let netns = r["netns"].as_str()?;
                Some((
                    r["name"].as_str()?.to_string(),
                    (netns != "host").then(|| netns.to_string()),
                ))
            })
            .collect();
        // A host link is named without its netns: forget the pods' first, so its name is unique.
        links.sort_by_key(|(_, netns)| netns.is_none());
        for (name, netns) in &links {
            let mut args = vec!["forget", name.as_str()];
            if let Some(netns) = netns {
                args.extend(["--netns", netns.as_str()]);
            }
            self.netguard(&args)?;
        }
        Ok(())
    }

    /// The status row of a guarded NIC or link by name.
    pub fn row(&self, name: &str) -> Result<Value, String> {
        let status = self.status()?;
        status["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == name).cloned())
            .ok_or_else(|| format!("status has no row {name}: {status}"))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }
}

impl Agent {
    /// SIGTERM, then SIGKILL if it has not exited within [`WAIT`]: a stuck agent fails the
    /// scenario instead of hanging the suite.
    pub fn stop(mut self) -> Outcome {
        self.terminate()
    }

    fn terminate(&mut self) -> Outcome {
        if let Ok(Some(_)) = self.child.try_wait() {
            return Ok(());
        }
        // SAFETY: signalling our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < WAIT {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("the agent exited {status} on SIGTERM")),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err(format!(
            "the agent did not exit within {}s of SIGTERM (killed); its log:\n{}",
            WAIT.as_secs(),
            self.log_tail()
        ))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// `ip -j [-n NETNS] addr show dev NAME`: the link with its addresses, if it exists.
pub fn link(netns: Option<&str>, name: &str) -> Option<Value> {
    let mut cmd = Command::new(IP);
    cmd.arg("-j");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["addr", "show", "dev", name])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let parsed: Value = serde_json::from_slice(&out.stdout).ok()?;
    parsed.as_array()?.first().cloned()
}

pub fn has_address(link: &Value, addr: &str, prefix: u64) -> bool {
    link["addr_info"].as_array().is_some_and(|a| {
        a.iter()
            .any(|i| i["local"] == addr && i["prefixlen"] == prefix)
    })
}

pub fn has_default_route(netns: &str, dev: &str, via: &str) -> bool {
    let out = Command::new(IP)
        .args(["-j", "-n", netns, "route", "show", "default"])
        .output();
    let Ok(out) = out else { return false };
    let routes: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    routes
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r["dev"] == dev && r["gateway"] == via))
}

/// Polls `check` until it holds; returns how long that took.
pub async fn until(what: &str, check: impl Fn() -> bool) -> Result<Duration, String> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > WAIT {
            return Err(format!("not within {}s: {what}", WAIT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

/// Whether the NIC with `mac` is in init_net under `name`. Read from sysfs (the guest's, mounted
/// in init_net) rather than by running `ip`: a process start costs tens of ms under TCG, which
/// would blur the reaction times measured with it.
pub fn nic_home(name: &str, mac: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/address")).is_ok_and(|a| a.trim() == mac)
}

type Scenario =
    for<'a> fn(&'a Agent) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + 'a>>;

pub async fn run_all(
    backend: BackendKind,
    wanted: &dyn Fn(&str) -> bool,
) -> Vec<(&'static str, Outcome)> {
    let scenarios: [(&'static str, Scenario); 7] = [
        ("agent-refund-home", |a| Box::pin(refund_home(a))),
        ("agent-two-refunds", |a| Box::pin(two_refunds(a))),
        ("agent-lend-reclaim", |a| Box::pin(lend_reclaim(a))),
        ("agent-persistent-lend", |a| Box::pin(persistent_lend(a))),
        ("agent-reclaim-stranger", |a| Box::pin(reclaim_stranger(a))),
        ("agent-driver-reload", |a| Box::pin(driver_reload(a))),
        ("agent-cni-chain", |a| {
            Box::pin(crate::cni::chained_driver_reload(a))
        }),
    ];
    let chosen: Vec<_> = scenarios
        .into_iter()
        .filter(|(name, _)| wanted(name))
        .collect();
    if chosen.is_empty() {
        return Vec::new();
    }
    let agent = match Agent::start(backend) {
        Ok(agent) => agent,
        Err(why) => return vec![("agent-start", Err(why))],
    };
    let mut results = Vec::new();
    for (name, scenario) in chosen {
        let outcome = scenario(&agent)
            .await
            .map_err(|why| format!("{why}\n  agent log:\n{}", agent.log_tail()));
        results.push((name, outcome));
        if let Err(why) = agent.forget_links() {
            results.push(("agent-forget-links", Err(why)));
        }
        cleanup();
    }
    // The agent would restore what the last cleanup removes: stop it first, then clean again.
    if let Err(why) = agent.stop() {
        results.push(("agent-stop", Err(why)));
    }
    cleanup();
    results
}

/// The NIC every agent is started with `--exclude`d (eth0): a bystander.
pub const EXCLUDED_MAC: &str = "52:54:00:12:34:56";

/// A veth pair in init_net no agent learns, and the excluded NIC (unless `with_nic` is false:
/// a driver reload re-registers every e1000 NIC, a new ifindex netguard has no part in).
pub fn bystanders(with_nic: bool) -> Result<Bystanders, String> {
    if link(None, "by0").is_none() {
        ip(&["link", "add", "by0", "type", "veth", "peer", "name", "by1"])?;
        ip(&["link", "set", "by0", "up"])?;
    }
    let watched = Bystanders::new().watch(None, "by0").watch(None, "by1");
    Ok(if with_nic {
        watched.watch(None, "eth0")
    } else {
        watched
    })
}

/// The NIC lent and refunded by the agent scenarios and the benchmark.
pub const ETH1_MAC: &str = "52:54:00:12:34:57";

/// Lends `nic` into a new netns `netns` as eth0 with plain `ip` (no netguard), and waits until
/// the agent has seen it leave (so it knows its home name).
pub async fn lend_with_ip(agent: &Agent, nic: &str, netns: &str) -> Outcome {
    ip(&["netns", "add", netns])?;
    ip(&["link", "set", nic, "netns", netns, "name", "eth0"])?;
    until(&format!("the agent sees {nic} lent"), || {
        agent.row(nic).is_ok_and(|r| r["state"] == "lent")
    })
    .await?;
    Ok(())
}

/// Deletes `netns`, whose death refunds a lent NIC as devN: how long until the NIC with `mac`
/// carries its home name `nic` again.
pub async fn refund_home_time(nic: &str, mac: &str, netns: &str) -> Result<Duration, String> {
    let start = Instant::now();
    ip(&["netns", "del", netns])?;
    until(&format!("{nic} home under its name"), || nic_home(nic, mac)).await?;
    Ok(start.elapsed())
}

/// (a) eth1 lent as eth0 with plain `ip`, its netns deleted: the kernel refunds it as devN and
/// the agent renames it eth1.
async fn refund_home(agent: &Agent) -> Outcome {
    let bystanders = bystanders(true)?;
    lend_with_ip(agent, "eth1", "c1").await?;
    let took = refund_home_time("eth1", ETH1_MAC, "c1").await?;
    println!(
        "NGVM INFO agent: eth1 renamed home {} ms after `ip netns del`",
        took.as_millis()
    );
    let row = agent.row("eth1")?;
    if row["state"] != "restored" {
        return Err(format!("status row: {row}"));
    }
    bystanders.check()
}

/// Two NICs refunded at once: both home.
async fn two_refunds(agent: &Agent) -> Outcome {
    for (ns, nic) in [("c1", "eth1"), ("c2", "eth2")] {
        ip(&["netns", "add", ns])?;
        ip(&["link", "set", nic, "netns", ns, "name", "eth0"])?;
    }
    until("the agent sees both lent", || {
        ["eth1", "eth2"]
            .iter()
            .all(|n| agent.row(n).is_ok_and(|r| r["state"] == "lent"))
    })
    .await?;
    let start = Instant::now();
    ip(&["netns", "del", "c1"])?;
    ip(&["netns", "del", "c2"])?;
    until("eth1 and eth2 home", || {
        nic_home("eth1", ETH1_MAC) && nic_home("eth2", "52:54:00:12:34:58")
    })
    .await?;
    println!(
        "NGVM INFO agent: two refunded NICs home {} ms after the deletes",
        start.elapsed().as_millis()
    );
    Ok(())
}

/// `netguard lend` then `netguard reclaim`: in the container under the asked name, then home.
async fn lend_reclaim(agent: &Agent) -> Outcome {
    let bystanders = bystanders(true)?;
    ip(&["netns", "add", "c3"])?;
    agent.netguard(&["lend", "eth2", "--netns", "/run/netns/c3", "--name", "eth0"])?;
    let inside = link(Some("c3"), "eth0").ok_or("no eth0 in c3 after lend")?;
    if inside["address"] != "52:54:00:12:34:58" {
        return Err(format!("eth0 in c3 is not eth2: {inside}"));
    }
    if link(None, "eth2").is_some() {
        return Err("eth2 still in the host after lend".into());
    }
    let row = agent.row("eth2")?;
    if row["state"] != "lent" {
        return Err(format!("status after lend: {row}"));
    }
    agent.netguard(&["reclaim", "eth0"])?;
    if !nic_home("eth2", "52:54:00:12:34:58") {
        return Err("eth2 not home after reclaim".into());
    }
    if link(Some("c3"), "eth0").is_some() {
        return Err("eth0 still in c3 after reclaim".into());
    }
    bystanders.check()
}

/// eth2 lent as eth0; inside, eth0 renamed and a veth given the name eth0: `reclaim eth0`
/// refuses, naming both, and moves nothing.
async fn reclaim_stranger(agent: &Agent) -> Outcome {
    ip(&["netns", "add", "c4"])?;
    agent.netguard(&["lend", "eth2", "--netns", "/run/netns/c4", "--name", "eth0"])?;
    ip(&["-n", "c4", "link", "set", "eth0", "down"])?;
    ip(&["-n", "c4", "link", "set", "eth0", "name", "nic0"])?;
    ip(&[
        "-n", "c4", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])?;
    let stranger = link(Some("c4"), "eth0").ok_or("no veth eth0 in c4")?;
    let Err(why) = agent.netguard(&["reclaim", "eth0"]) else {
        return Err("reclaim of a stranger under the lent name succeeded".into());
    };
    let mac = stranger["address"].as_str().unwrap_or("-");
    for named in ["eth0", "nic0", "veth", mac, "52:54:00:12:34:58"] {
        if !why.contains(named) {
            return Err(format!("the refusal does not name {named}: {why}"));
        }
    }
    let still = link(Some("c4"), "eth0").ok_or("the veth left c4")?;
    if still["ifindex"] != stranger["ifindex"] || still["address"] != stranger["address"] {
        return Err(format!("the stranger changed: {stranger} -> {still}"));
    }
    if link(None, "eth2").is_some() {
        return Err("something came home as eth2".into());
    }
    let nic = link(Some("c4"), "nic0").ok_or("the NIC left c4")?;
    if nic["address"] != "52:54:00:12:34:58" {
        return Err(format!("nic0 in c4 is not eth2: {nic}"));
    }
    println!(
        "NGVM INFO agent: reclaim of a stranger refused: {}",
        why.trim()
    );
    Ok(())
}

/// A NIC lent with --persistent follows its container: home when the netns dies, lent again
/// when a netns is re-created at the same path.
async fn persistent_lend(agent: &Agent) -> Outcome {
    ip(&["netns", "add", "c3"])?;
    agent.netguard(&[
        "lend",
        "eth2",
        "--netns",
        "/run/netns/c3",
        "--name",
        "eth0",
        "--persistent",
    ])?;
    ip(&["netns", "del", "c3"])?;
    until("eth2 home after its container died", || {
        nic_home("eth2", "52:54:00:12:34:58")
    })
    .await?;
    ip(&["netns", "add", "c3"])?;
    let took = until("eth2 lent again as eth0 in the new c3", || {
        link(Some("c3"), "eth0").is_some_and(|l| l["address"] == "52:54:00:12:34:58")
    })
    .await?;
    println!(
        "NGVM INFO agent: persistent lend renewed {} ms after the netns came back",
        took.as_millis()
    );
    agent.netguard(&["reclaim", "eth0"])?;
    Ok(())
}

/// How long a driver reload took, and until the pods were back.
pub struct ReloadTimes {
    /// `modprobe -r e1000 && modprobe e1000` (the emulated NICs' probe is most of it).
    pub driver: Duration,
    /// From the reload's start until every pod's macvlan was back.
    pub pods_back: Duration,
}

/// `modprobe -r e1000 && modprobe e1000`: the NICs go and come back (as eth0.. again).
pub fn reload_e1000() -> Outcome {
    let reload = Command::new("sh")
        .args(["-c", "modprobe -r e1000 && modprobe e1000"])
        .output()
        .map_err(|e| e.to_string())?;
    if !reload.status.success() {
        return Err(format!(
            "driver reload failed: {}",
            String::from_utf8_lossy(&reload.stderr)
        ));
    }
    Ok(())
}

/// Reloads e1000 (every vlan and macvlan over its NICs goes with it) and waits until the agent
/// has brought `pods` back in their netns.
pub async fn reload_until_back(pods: &[&Pod]) -> Result<ReloadTimes, String> {
    let start = Instant::now();
    reload_e1000()?;
    let driver = start.elapsed();
    for pod in pods {
        let what = format!(
            "{}'s macvlan back with MAC, address, default route",
            pod.netns
        );
        until(&what, || pod.is_back()).await?;
    }
    Ok(ReloadTimes {
        driver,
        pods_back: start.elapsed(),
    })
}

/// The vlan eth1.3 is back in init_net as vlan id 3.
pub fn vlan_back() -> Outcome {
    let vlan = link(None, "eth1.3").ok_or("vlan eth1.3 not back in the host")?;
    let detail = Command::new(IP)
        .args(["-d", "link", "show", "eth1.3"])
        .output()
        .map_err(|e| e.to_string())?;
    if !String::from_utf8_lossy(&detail.stdout).contains("vlan protocol 802.1Q id 3") {
        return Err(format!("eth1.3 is not vlan id 3: {vlan}"));
    }
    Ok(())
}

/// (c) vlan eth1.3 + macvlan in pod netns p1 (learned), and a macvlan over eth2 in p2 (imported
/// from a CNI checkpoint); `modprobe -r e1000 && modprobe e1000` removes them all; the agent
/// brings them back in the same netns with the same MAC, address and default route.
async fn driver_reload(agent: &Agent) -> Outcome {
    let bystanders = bystanders(false)?;
    guard_vlan_pod(agent)?;
    guard_cni_pod(agent)?;
    let inodes = (VLAN_POD.inode(), CNI_POD.inode());
    let took = reload_until_back(&[&VLAN_POD, &CNI_POD]).await?.pods_back;
    vlan_back()?;
    if (VLAN_POD.inode(), CNI_POD.inode()) != inodes {
        return Err("a pod netns was replaced".into());
    }
    println!(
        "NGVM INFO agent: vlan + 2 macvlans back {} ms after the driver reload started",
        took.as_millis()
    );
    let status = agent.status()?;
    let restored = status["rows"].as_array().map_or(0, |rows| {
        rows.iter()
            .filter(|r| r["name"] == "eth0" && r["kind"] == "macvlan" && r["state"] == "restored")
            .count()
    });
    if restored != 2 {
        return Err(format!(
            "status does not show both macvlans restored: {status}"
        ));
    }
    bystanders.check()
}
