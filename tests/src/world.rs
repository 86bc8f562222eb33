//! The world a host test runs in: a netns standing in for init_net, the test's container
//! netns, the links between them and a scratch directory, removed together when it drops.

use netguard::ledger::Locator;

use crate::{Bystanders, TestDir, TestNetns};

/// A test's own world. Everything in it goes when it drops, whether the test passed or
/// panicked (a half-built one too): the container netns first, with the links in them, then
/// the host stand-in with its bridge, then the directory.
pub struct World {
    /// Declared first: dropped first.
    containers: Vec<(String, TestNetns)>,
    /// Stands in for init_net (the agent's `--host-netns`, the tracer's `host_netns`).
    pub host: TestNetns,
    /// For a ledger, an agent's socket and its log.
    pub dir: TestDir,
    tag: String,
}

impl World {
    /// A host stand-in and a directory. Fails the test with "needs root" unless it can create
    /// network namespaces: a host test that does not run must not count as passed.
    pub fn new(tag: &str) -> World {
        needs_root();
        World {
            host: TestNetns::new(&format!("{tag}h")),
            dir: TestDir::new(tag),
            containers: Vec::new(),
            tag: tag.to_string(),
        }
    }

    /// This world with container netns of these names.
    pub fn with(mut self, names: &[&str]) -> World {
        for name in names {
            self.add(name);
        }
        self
    }

    /// Adds a container netns `name` to this world now (e.g. after a tracer started).
    pub fn add(&mut self, name: &str) -> &TestNetns {
        let ns = TestNetns::new(&format!("{}{name}", self.tag));
        self.containers.push((name.to_string(), ns));
        &self.containers.last().expect("just pushed").1
    }

    /// The container netns `name`.
    pub fn ns(&self, name: &str) -> &TestNetns {
        self.containers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns)
            .unwrap_or_else(|| panic!("this test world has no netns {name}"))
    }

    pub fn containers(&self) -> impl Iterator<Item = &TestNetns> {
        self.containers.iter().map(|(_, ns)| ns)
    }

    /// A host with bridge br0 (198.18.1.1/24) and a container `c` whose eth0 (198.18.1.2/24,
    /// MTU 1400, a default route and 198.19.1.0/24 via the bridge) is a veth with host side
    /// vh0 (MTU 1400) on br0.
    pub fn bridged(tag: &str) -> World {
        let w = World::new(tag).with(&["c"]);
        let (host, c) = (&w.host, w.c());
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["addr", "add", "198.18.1.1/24", "dev", "br0"]);
        host.ip(&["link", "set", "br0", "up"]);
        host.ip(&[
            "link", "add", "vh0", "mtu", "1400", "type", "veth", "peer", "name", "eth0", "mtu",
            "1400", "netns", &c.name,
        ]);
        host.ip(&["link", "set", "vh0", "master", "br0"]);
        host.ip(&["link", "set", "vh0", "up"]);
        configure(c, "eth0", "198.18.1.2/24", "198.18.1.1", "198.19.1.0/24");
        w
    }

    /// A veth pair by0/by1 in the host stand-in that nothing learns, watched by the
    /// bystander check (with whatever else a test adds).
    pub fn bystanders(&self) -> Bystanders {
        self.host
            .ip(&["link", "add", "by0", "type", "veth", "peer", "name", "by1"]);
        self.host.ip(&["link", "set", "by0", "up"]);
        Bystanders::new()
            .watch(Some(&self.host.name), "by0")
            .watch(Some(&self.host.name), "by1")
    }

    /// The container of a [`World::bridged`].
    pub fn c(&self) -> &TestNetns {
        self.ns("c")
    }

    pub fn c_loc(&self) -> Locator {
        Locator::Path(self.c().path())
    }

    /// A host with a parent link pv0 (a veth standing in for a NIC; its peer pv1 has
    /// 198.18.2.1/24) and a container `pod` whose macvlan mv0 on pv0 has 198.18.2.2/24, a
    /// default route and 198.19.2.0/24 via pv1.
    pub fn macvlan_pod(tag: &str) -> World {
        let w = World::new(tag).with(&["pod"]);
        w.add_parent();
        let pod = w.pod();
        w.host.ip(&[
            "link", "add", "link", "pv0", "name", "mv0", "netns", &pod.name, "type", "macvlan",
            "mode", "bridge",
        ]);
        configure(pod, "mv0", "198.18.2.2/24", "198.18.2.1", "198.19.2.0/24");
        w
    }

    /// The pod of a [`World::macvlan_pod`].
    pub fn pod(&self) -> &TestNetns {
        self.ns("pod")
    }

    /// Creates the parent pv0 of a [`World::macvlan_pod`] (again, after a "driver reload"
    /// removed it).
    pub fn add_parent(&self) {
        self.host
            .ip(&["link", "add", "pv0", "type", "veth", "peer", "name", "pv1"]);
        self.host
            .ip(&["addr", "add", "198.18.2.1/24", "dev", "pv1"]);
        self.host.ip(&["link", "set", "pv0", "up"]);
        self.host.ip(&["link", "set", "pv1", "up"]);
    }
}

/// Brings `dev` in `ns` up with `addr`, a default route and one to `net`, both via `gateway`:
/// a container's view of its link, for a restore to get back.
fn configure(ns: &TestNetns, dev: &str, addr: &str, gateway: &str, net: &str) {
    ns.ip(&["addr", "add", addr, "dev", dev]);
    ns.ip(&["link", "set", dev, "up"]);
    ns.ip(&["route", "add", "default", "via", gateway]);
    ns.ip(&["route", "add", net, "via", gateway]);
}

/// Fails the calling test unless it runs as root: host tests need CAP_NET_ADMIN and
/// CAP_SYS_ADMIN to create namespaces, and one that returned early would count as passed.
fn needs_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "needs root: this host test creates network namespaces (CAP_NET_ADMIN, \
         CAP_SYS_ADMIN) and runs as uid {euid}; run it as root (`cargo xtask test` does)"
    );
}
