//! What netguard adds to a container start: podman (runc, the CNI backend, Debian's plugins),
//! each world in a netns of its own with its own storage, run root, CNI config and hooks dirs
//! (the host tests' `PodmanWorld`). One world starts a container on `bridge` + `host-local`
//! alone (or on the chain `podman network create` writes); the other on the same chain with
//! netguard after it, its OCI hooks and an agent. Starts alternate between the two (each
//! container is stopped, untimed, between its starts), and so do the CNI ADDs of the two
//! chains run by hand into a netns of their own.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netguard::config::DEFAULT_INTERVAL;
use netguard::install::GUARD_ANNOTATION;
use netguard_tests::cni::{Attachment, CniRunner};
use netguard_tests::podman::{PodmanWorld, IMAGE};
use netguard_tests::{AgentProcess, Netguard};
use serde::Serialize;
use serde_json::{json, Value};

use crate::agent::cpu_time;
use crate::shift;
use crate::stats::Samples;

/// Starts and ADDs before the timed ones (image layers, plugin binaries into the page cache).
const WARM_UP: usize = 3;

/// A part of netguard the guarded side can be measured without (the agent always runs), to
/// see what each costs a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// `{"type": "netguard"}` in the chain.
    Plugin,
    /// The OCI hooks (createRuntime, poststop).
    Hooks,
}

/// What is compared.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// Timed container starts per side.
    pub starts: usize,
    /// What the guarded side ran without (nothing: the whole of netguard).
    pub without: Vec<Component>,
    /// Whether the guarded side's container carries the annotation netguard's hooks run for
    /// (else it is a container they leave alone, as most are).
    pub annotated: bool,
    /// Whether both sides' network is the chain `podman network create` writes (bridge,
    /// portmap, firewall, tuning) rather than bridge alone.
    pub podman_chain: bool,
}

#[derive(Debug, Serialize)]
pub struct PodmanCost {
    #[serde(flatten)]
    pub setup: Setup,
    /// `podman start`, seconds: without netguard, and with it chained + hooks + agent.
    pub start_plain: Samples,
    pub start_guarded: Samples,
    /// The 95 % interval of the guarded median minus the plain one, seconds (`shift.rs`).
    pub start_added_95: Option<(f64, f64)>,
    /// The CNI ADD of the chain, seconds.
    pub add_plain: Samples,
    pub add_guarded: Samples,
    /// The agent's CPU time (user + system) per start and stop of its container, and per
    /// ADD and DEL of its chain, seconds: work done beside the runtime, on the same cores.
    pub agent_cpu_per_start: f64,
    pub agent_cpu_per_add: f64,
    /// The agent's restore passes per start and stop, and per ADD and DEL: each one a wake-up
    /// and a look at the ledger beside the runtime.
    pub agent_passes_per_start: f64,
    pub agent_passes_per_add: f64,
}

impl PodmanCost {
    /// The table's section.
    pub fn table(&self) -> String {
        let line = |what: &str, plain: &Samples, guarded: &Samples| {
            format!(
                "{what:<30}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.3}x{:>+9.1}%\n",
                plain.median * 1e3,
                plain.p99 * 1e3,
                guarded.median * 1e3,
                guarded.p99 * 1e3,
                guarded.median / plain.median,
                (guarded.median - plain.median) / plain.median * 100.0,
            )
        };
        let interval = self.start_added_95.map_or(String::new(), |(lo, hi)| {
            let percent = |s: f64| s / self.start_plain.median * 100.0;
            format!(
                "podman start, added p50 at 95 %: {:+.1} .. {:+.1} ms ({:+.1} .. {:+.1} %)\n",
                lo * 1e3,
                hi * 1e3,
                percent(lo),
                percent(hi)
            )
        });
        let setup = &self.setup;
        let mut variant = if setup.without.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = setup.without.iter().map(|p| format!("{p:?}")).collect();
            format!(" (its {} left out)", parts.join(" and ").to_lowercase())
        };
        if setup.annotated {
            variant.push_str(", the container annotated for its hooks");
        }
        if setup.podman_chain {
            variant.push_str(", on the chain `podman network create` writes");
        }
        format!(
            "\n7. Cost: podman start and CNI ADD without / with netguard{} (ms, {} each, alternating)\n\
             {:<30}{:>10}{:>10}{:>10}{:>10}{:>11}{:>10}\n{}{}{}\
             the agent's CPU per start + stop {:.1} ms ({:.1} passes), per ADD + DEL {:.1} ms ({:.1} passes)\n",
            variant,
            setup.starts,
            "",
            "p50",
            "p99",
            "ng p50",
            "ng p99",
            "ratio",
            "added",
            line("podman start", &self.start_plain, &self.start_guarded),
            interval,
            line("CNI ADD of the chain", &self.add_plain, &self.add_guarded),
            self.agent_cpu_per_start * 1e3,
            self.agent_passes_per_start,
            self.agent_cpu_per_add * 1e3,
            self.agent_passes_per_add,
        )
    }
}

/// One side: a podman world, its network and its stopped container.
struct Side {
    world: PodmanWorld,
    conflist: Value,
    /// The guarded side's agent, running until the side is dropped.
    agent: Option<AgentProcess>,
}

impl Side {
    /// A world without netguard (`guarded` false), or with it but for the parts `setup`
    /// leaves out.
    fn new(tag: &str, subnet: &str, setup: &Setup, guarded: bool) -> anyhow::Result<Side> {
        let mut world = PodmanWorld::new(tag);
        let network = world.network_name("br");
        let bridge = format!("{tag}br");
        let mut plugins = if setup.podman_chain {
            world.podman_bridge_chain(&bridge, subnet)
        } else {
            vec![world.bridge_plugin(&bridge, subnet)]
        };
        let without = &setup.without;
        let agent = guarded.then(|| {
            let ng = Netguard::new(&world.world);
            // As installed: the tests' one-second interval would add passes an operator's
            // agent does not make.
            let interval = DEFAULT_INTERVAL.as_secs_f64().to_string();
            let agent = ng.start_agent_with(&["--interval", &interval]);
            if !without.contains(&Component::Hooks) {
                world.install_netguard_hooks(&ng.socket, &ng.state_dir);
            }
            if !without.contains(&Component::Plugin) {
                plugins.push(json!({
                    "type": "netguard",
                    "socket": ng.socket,
                    "stateDir": ng.state_dir,
                }));
            }
            agent
        });
        world.add_network(&network, plugins);
        let annotation = format!("{GUARD_ANNOTATION}=true");
        let mut create = vec!["create", "--name", "c", "--network", &network];
        if guarded && setup.annotated {
            create.extend(["--annotation", &annotation]);
        }
        create.extend([IMAGE, "sleep", "100000"]);
        world.podman_ok(&create);
        let conflist = serde_json::from_slice(&std::fs::read(
            world.path("net").join(format!("{network}.conflist")),
        )?)?;
        Ok(Side {
            world,
            conflist,
            agent,
        })
    }

    /// One `podman start` (timed), then a stop (not timed).
    fn start(&self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        let out = self.world.podman(&["start", "c"]);
        let took = began.elapsed();
        if !out.status.success() {
            bail!(
                "podman start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.world.podman_ok(&["stop", "--time", "0", "c"]);
        Ok(took)
    }

    /// One ADD of the chain into `pod` (timed), then its DEL (not timed).
    fn add(&self, runner: &CniRunner, pod: &Path, n: usize) -> anyhow::Result<Duration> {
        let att = Attachment {
            container_id: format!("ngbench{n}"),
            netns: Some(pod.to_path_buf()),
            ifname: "eth0".into(),
            args: None,
        };
        let began = Instant::now();
        let result = runner
            .add(&self.conflist, &att)
            .map_err(|run| anyhow::anyhow!("CNI ADD: {}", run.stderr))?;
        let took = began.elapsed();
        runner
            .del(&self.conflist, &att, Some(&result))
            .map_err(|run| anyhow::anyhow!("CNI DEL: {}", run.stderr))?;
        Ok(took)
    }

    fn runner(&self) -> CniRunner {
        CniRunner::new(vec![self.world.path("cni")]).in_netns(self.world.host().path())
    }
}

/// Runs the comparison `setup` describes.
pub fn run(netguard: &Path, setup: Setup) -> anyhow::Result<PodmanCost> {
    // The host tests' helpers run this netguard (the release build), not a debug one.
    let netguard = std::fs::canonicalize(netguard)
        .with_context(|| format!("no netguard binary at {}", netguard.display()))?;
    std::env::set_var("NETGUARD_BIN", netguard);
    let mut plain =
        Side::new("pp", "198.18.40.0/24", &setup, false).context("the world without netguard")?;
    let mut guarded =
        Side::new("pg", "198.18.41.0/24", &setup, true).context("the world with netguard")?;
    let starts = setup.starts;
    let pods = [
        plain.world.world.add("pod").path(),
        guarded.world.world.add("pod").path(),
    ];
    let sides = [&plain, &guarded];
    let agent = guarded
        .agent
        .as_ref()
        .context("the guarded side has an agent")?
        .pid();
    let rounds = (WARM_UP + starts) as f64;
    let agent_cpu_per_round = |since: Duration| -> anyhow::Result<f64> {
        Ok((cpu_time(agent)? - since).as_secs_f64() / rounds)
    };
    let ng = Netguard::new(&guarded.world.world);
    let passes = || {
        ng.status_json()["agent"]["passes"]
            .as_f64()
            .unwrap_or_default()
    };
    let passes_before = passes();
    let cpu_before = cpu_time(agent)?;
    let mut times: [Vec<Duration>; 2] = Default::default();
    for i in 0..WARM_UP + starts {
        // Alternating which goes first, so neither always follows the other.
        for k in [i % 2, 1 - i % 2] {
            let took = sides[k].start()?;
            if i >= WARM_UP {
                times[k].push(took);
            }
        }
    }
    let seconds = |t: &[Duration]| t.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
    let start_added_95 = shift::median_shift_95(&seconds(&times[0]), &seconds(&times[1]));
    let [start_plain, start_guarded] = times.map(|t| Samples::of(&t));
    let agent_cpu_per_start = agent_cpu_per_round(cpu_before)?;
    let agent_passes_per_start = (passes() - passes_before) / rounds;

    let passes_before = passes();
    let cpu_before = cpu_time(agent)?;
    let runners = [plain.runner(), guarded.runner()];
    let mut times: [Vec<Duration>; 2] = Default::default();
    for i in 0..WARM_UP + starts {
        for k in [i % 2, 1 - i % 2] {
            let took = sides[k].add(&runners[k], &pods[k], i)?;
            if i >= WARM_UP {
                times[k].push(took);
            }
        }
    }
    let [add_plain, add_guarded] = times.map(|t| Samples::of(&t));
    let agent_cpu_per_add = agent_cpu_per_round(cpu_before)?;
    let agent_passes_per_add = (passes() - passes_before) / rounds;
    Ok(PodmanCost {
        setup,
        start_plain,
        start_guarded,
        start_added_95,
        add_plain,
        add_guarded,
        agent_cpu_per_start,
        agent_cpu_per_add,
        agent_passes_per_start,
        agent_passes_per_add,
    })
}
