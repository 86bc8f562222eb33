//! The benchmark's world: a netns standing in for the host, with bridges `br0`, `br1`..., and
//! N "container" netns, each with a veth `eth0` whose host side `vb<i>` is a port of
//! `br<i / PORTS_PER_BRIDGE>`, one
//! address, a default route and a subnet route, all guarded in a ledger. Everything is made
//! in namespaces the benchmark creates and removed when the [`World`] is dropped, also on
//! error or Ctrl-C (the future holding it is dropped). Addresses come from 198.18.0.0/15.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::StreamExt;
use netguard::capture::learn;
use netguard::inventory::{NetnsConn, NetnsInventory, Pool};
use netguard::ledger::{IpNet, Ledger, LedgerOptions, Locator, Mac, RouteSpec};
use rtnetlink::LinkBridge;

use crate::{floor, netns};

/// A Linux bridge takes at most 1,023 ports (`BR_MAX_PORTS`, port 0 reserved): containers
/// are spread over as many bridges as it takes, this many each.
pub const PORTS_PER_BRIDGE: usize = 1000;
pub const IFNAME: &str = "eth0";
pub const MTU: u32 = 1500;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PREFIX: u8 = 16;
/// The "subnet route" every container has beside its default route.
const ROUTED_SUBNET: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 0);

/// How long the kernel may take to tear down the namespaces of one re-creation.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One container: where its netns is and what its link must look like. Derived from the
/// world's name and its index alone, so a separate process (the floor) finds the same.
#[derive(Debug, Clone)]
pub struct Container {
    pub netns: String,
    pub path: PathBuf,
    pub host_side: String,
    pub host_mac: Mac,
    pub mac: Mac,
    pub addr: IpNet,
    /// Which of the world's bridges its host side is a port of.
    pub bridge: usize,
}

impl Container {
    fn new(world: &str, i: usize) -> Container {
        let netns = format!("{world}-c{i}");
        let (hi, lo) = ((i >> 8) as u8, i as u8);
        Container {
            path: netns::path_of(&netns),
            netns,
            host_side: format!("vb{i}"),
            bridge: i / PORTS_PER_BRIDGE,
            host_mac: Mac([0x02, 0x6e, 0x67, 0x00, hi, lo]),
            mac: Mac([0x02, 0x6e, 0x67, 0x01, hi, lo]),
            addr: IpNet::new(
                IpAddr::V4(Ipv4Addr::new(
                    198,
                    18,
                    1 + (i / 250) as u8,
                    2 + (i % 250) as u8,
                )),
                PREFIX,
            )
            .expect("a valid prefix"),
        }
    }

    pub fn locator(&self) -> Locator {
        Locator::Path(self.path.clone())
    }

    pub fn bridge_name(&self) -> String {
        bridge_name(self.bridge)
    }

    /// Its routes: default and the subnet route, both via the bridge's address.
    pub fn routes() -> [RouteSpec; 2] {
        let via = |dst: Ipv4Addr, prefix| RouteSpec {
            dst: IpNet::new(IpAddr::V4(dst), prefix).expect("a valid prefix"),
            gateway: Some(IpAddr::V4(GATEWAY)),
            onlink: false,
            metric: None,
        };
        [via(Ipv4Addr::UNSPECIFIED, 0), via(ROUTED_SUBNET, PREFIX)]
    }

    /// Whether the kernel's view shows this container's link back exactly: name, kind, MAC,
    /// MTU, up, address, routes, its peer in the host netns with its MAC, up and a port of the
    /// bridge (`bridge` = its ifindex), the two ends peers of each other.
    pub fn check(
        &self,
        inv: &NetnsInventory,
        host: &NetnsInventory,
        bridge: u32,
    ) -> Result<(), String> {
        let fail = |what: String| Err(format!("{}: {what}", self.netns));
        let Some(eth) = inv.link_by_name(IFNAME) else {
            return fail(format!("no {IFNAME}"));
        };
        let Some(vb) = host.link_by_name(&self.host_side) else {
            return fail(format!("no {} in the host", self.host_side));
        };
        for (link, mac) in [(eth, self.mac), (vb, self.host_mac)] {
            if link.kind.as_deref() != Some("veth")
                || link.mac != Some(mac)
                || link.mtu != Some(MTU)
                || !link.up
            {
                return fail(format!(
                    "{} is {:?} {:?} mtu {:?} up {}",
                    link.name, link.kind, link.mac, link.mtu, link.up
                ));
            }
        }
        if eth.link != Some(vb.ifindex) || vb.link != Some(eth.ifindex) {
            return fail(format!("{IFNAME} and {} are not peers", self.host_side));
        }
        if vb.master != Some(bridge) {
            return fail(format!(
                "{} is not a port of {}",
                self.host_side,
                self.bridge_name()
            ));
        }
        if !inv.addresses_of(eth.ifindex).any(|a| a == self.addr) {
            return fail(format!("{IFNAME} lacks {}", self.addr));
        }
        match Container::routes()
            .iter()
            .find(|r| !inv.has_route(eth.ifindex, r))
        {
            Some(missing) => fail(format!("no route {missing}")),
            None => Ok(()),
        }
    }
}

pub fn bridge_name(k: usize) -> String {
    format!("br{k}")
}

/// The containers of the world named `name`, without making anything.
pub fn containers(name: &str, n: usize) -> Vec<Container> {
    (0..n).map(|i| Container::new(name, i)).collect()
}

pub struct World {
    pub name: String,
    pub host_path: PathBuf,
    pub containers: Vec<Container>,
    /// The ledger's directory.
    pub state_dir: PathBuf,
    /// Our connection to the host stand-in (never re-created, so holding it pins nothing
    /// that matters).
    host: Arc<NetnsConn>,
    /// The bridges' ifindexes, `br0` first.
    pub bridges: Vec<u32>,
}

impl World {
    /// Builds the world of `n` containers, its links made by the floor's requests, and
    /// guards them all with `learn` into a fresh ledger.
    pub async fn build(n: usize) -> anyhow::Result<World> {
        netns::prepare()?;
        let name = format!("{}{}-n{n}", netns::PREFIX, std::process::id());
        let host_path = netns::path_of(&format!("{name}-host"));
        let state_dir = std::env::temp_dir().join(&name);
        // From here on, dropping `guard` removes whatever was made.
        let mut guard = Partial {
            paths: vec![],
            dir: None,
        };
        netns::create(&host_path, without_ipv6)?;
        guard.paths.push(host_path.clone());
        let host = Arc::new(NetnsConn::open(Locator::Host, &host_path).await?);
        let handle = host.handle();
        let mut bridges = Vec::new();
        for k in 0..n.div_ceil(PORTS_PER_BRIDGE).max(1) {
            let name = bridge_name(k);
            handle
                .link()
                .add(LinkBridge::new(&name).mtu(MTU).up().build())
                .execute()
                .await
                .with_context(|| format!("creating {name}"))?;
            let bridge = host
                .get_link_by_name(&name)
                .await?
                .with_context(|| format!("{name} vanished"))?
                .ifindex;
            bridges.push(bridge);
        }
        // The gateway address lives on br0 only: the containers' routes name it, nothing
        // has to answer it, and one address keeps one prefix route.
        handle
            .address()
            .add(bridges[0], IpAddr::V4(GATEWAY), PREFIX)
            .execute()
            .await
            .context("addressing br0")?;

        let containers = containers(&name, n);
        for c in &containers {
            netns::create(&c.path, without_ipv6)?;
            guard.paths.push(c.path.clone());
        }
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        guard.dir = Some(state_dir.clone());
        floor::restore(&host, &containers)
            .await
            .context("building the world's links")?;

        let world = World {
            name,
            host_path,
            containers,
            state_dir,
            host,
            bridges,
        };
        guard.disarm();
        world.verify().await.context("the world just built")?;
        let (mut ledger, _) = Ledger::open(LedgerOptions::new(&world.state_dir))?;
        let locators: Vec<Locator> = world.containers.iter().map(Container::locator).collect();
        let learned = learn(
            &Pool::new(Some(world.host_path.clone())),
            &mut ledger,
            &locators,
        )
        .await?;
        ensure!(
            learned.guarded.len() == n,
            "learn guarded {} links of {n}: {:?}",
            learned.guarded.len(),
            learned.skipped
        );
        ledger.save()?;
        Ok(world)
    }

    /// A container restart: its netns deleted and a new one made at the same path, with
    /// IPv6 off; `at_birth` runs inside the new one before it is mounted, and its result is
    /// returned.
    pub fn recreate<T: Send + 'static>(
        &self,
        i: usize,
        at_birth: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = &self.containers[i].path;
        netns::remove(path)?;
        Ok(netns::create(path, move || {
            without_ipv6()?;
            at_birth()
        })?)
    }

    /// The host-wide container restart: [`recreate`](Self::recreate) of every container, one
    /// after the other. Returns when the last one is mounted.
    pub fn recreate_all<T: Send + 'static>(
        &self,
        at_birth: impl Fn() -> std::io::Result<T> + Send + Clone + 'static,
    ) -> anyhow::Result<Vec<T>> {
        (0..self.containers.len())
            .map(|i| self.recreate(i, at_birth.clone()))
            .collect()
    }

    /// Waits until the kernel has torn down the namespaces that were replaced: their veths
    /// (and so every host side) are gone. What it does meanwhile is not any contender's work.
    pub async fn settle(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let host = self.host.dump().await?;
            let left = self
                .containers
                .iter()
                .filter(|c| host.link_by_name(&c.host_side).is_some())
                .count();
            if left == 0 {
                return Ok(());
            }
            if started.elapsed() > SETTLE_TIMEOUT {
                bail!("{left} host-side veths of replaced namespaces still exist after {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn host(&self) -> &NetnsConn {
        &self.host
    }

    /// Checks every container's link against the kernel (fresh connections, dropped after).
    pub async fn verify(&self) -> anyhow::Result<()> {
        let pool = Pool::new(Some(self.host_path.clone()));
        let host = self.host.dump().await?;
        let problems: Vec<String> = futures::stream::iter(&self.containers)
            .map(|c| {
                let pool = &pool;
                let host = &host;
                async move {
                    let inv = pool
                        .get(&c.locator())
                        .await
                        .map_err(|e| e.to_string())?
                        .dump()
                        .await
                        .map_err(|e| e.to_string())?;
                    c.check(&inv, host, self.bridges[c.bridge])
                }
            })
            .buffer_unordered(16)
            .filter_map(|r| async move { r.err() })
            .collect()
            .await;
        match problems.as_slice() {
            [] => Ok(()),
            [first, ..] => bail!(
                "{} of {} links are not back; first: {first}",
                problems.len(),
                self.containers.len()
            ),
        }
    }
}

/// Turns IPv6 off in the calling thread's (new) netns, for the devices made in it later. With
/// IPv6 on, every new bridge port's DAD and MLD packets are flooded to every other port and
/// into every container: kernel work that grows with N squared, contends for RTNL, and is no
/// contender's (see docs/benchmarks.md).
fn without_ipv6() -> std::io::Result<()> {
    for conf in ["all", "default"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
    }
    Ok(())
}

/// What a world being built has made so far; removed if building fails.
struct Partial {
    paths: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Partial {
    fn disarm(&mut self) {
        self.paths.clear();
        self.dir = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        remove(&self.paths, self.dir.as_deref());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let mut paths: Vec<PathBuf> = self.containers.iter().map(|c| c.path.clone()).collect();
        paths.push(self.host_path.clone());
        remove(&paths, Some(&self.state_dir));
    }
}

fn remove(paths: &[PathBuf], dir: Option<&Path>) {
    for path in paths {
        if let Err(e) = netns::remove(path) {
            eprintln!(
                "netguard-bench: cannot remove netns {}: {e}",
                path.display()
            );
        }
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}
