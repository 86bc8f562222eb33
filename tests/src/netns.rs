//! Namespaces and directories a test creates and always removes, and what `ip` says of them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// Path of iproute2's `ip` (busybox in the VM guest shadows a bare `ip`).
pub const IP: &str = "/sbin/ip";

/// Runs `ip ARGS`, panicking with its stderr on failure (a test setup step that fails is a
/// failed test).
fn ip(args: &[&str]) {
    let out = Command::new(IP).args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS` inside the netns at `netns` (`/proc/PID/ns/net` of a container, say) through
/// `nsenter`, panicking with its stderr on failure.
pub fn ip_in(netns: &str, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg(IP)
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "ip {} in {netns}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named netns (`/run/netns/NAME`) deleted on drop, even when the test panics.
pub struct TestNetns {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNetns {
    /// Creates `ngt<pid>-<tag><n>`: unique per process and call. Tests get theirs from a
    /// [`World`](crate::World), which checks first that they can.
    pub(crate) fn new(tag: &str) -> TestNetns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = TestNetns {
            name: format!("ngt{}-{tag}{n}", std::process::id()),
        };
        ns.add();
        ns
    }

    /// `ip netns add` under its name (again, after [`delete`](Self::delete)), `lo` up.
    pub fn add(&self) {
        ip(&["netns", "add", &self.name]);
        ip(&["-n", &self.name, "link", "set", "lo", "up"]);
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    pub fn inode(&self) -> u64 {
        netguard::netns::inode_of(&self.path()).expect("test netns inode")
    }

    /// `ip -n NAME ARGS`, returning stdout (for comparing dumps).
    pub fn ip_out(&self, args: &[&str]) -> String {
        let out = Command::new(IP)
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -n NAME ARGS`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ip_out(&all)).expect("ip -j output is JSON")
    }

    /// Deletes the netns and creates a new one at the same path (a container reboot): every
    /// device in the old one goes with it.
    pub fn recreate(&self) {
        self.delete();
        self.add();
    }

    /// `ping -c1 -W1 ADDR` from inside this netns.
    pub fn ping(&self, addr: &str) -> bool {
        Command::new(IP)
            .args(["netns", "exec", &self.name, "ping", "-c1", "-W1", addr])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `ip netns del NAME` now (the test watches it die); dropping it later is a no-op.
    pub fn delete(&self) {
        ip(&["netns", "del", &self.name]);
    }
}

/// A scratch directory (a ledger's, say) removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub(crate) fn new(tag: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ngt{}-{tag}{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if self.path().exists() {
            let _ = Command::new(IP).args(["netns", "del", &self.name]).status();
        }
    }
}

/// `ip -d link show dev DEV` in `ns`, parsed.
pub fn link(ns: &TestNetns, dev: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", "dev", dev])[0].clone()
}

pub fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

pub fn has_addr(ns: &TestNetns, dev: &str, addr: &str, prefix: u64) -> bool {
    let info = ns.ip_json(&["addr", "show", "dev", dev]);
    info[0]["addr_info"].as_array().is_some_and(|a| {
        a.iter()
            .any(|i| i["local"] == addr && i["prefixlen"] == prefix)
    })
}

/// Pings a few times: the first packet may wait on ARP.
pub fn pings(ns: &TestNetns, addr: &str) -> bool {
    (0..3).any(|_| ns.ping(addr))
}

/// What a restore could change in a netns (links, their admin state, masters, MACs,
/// addresses, routes), leaving out what the kernel changes on its own (carrier, timers, DAD).
pub fn dumps(ns: &TestNetns) -> Vec<String> {
    let mut out = Vec::new();
    for l in ns.ip_json(&["-d", "link", "show"]).as_array().unwrap() {
        out.push(format!(
            "link {} {} {} {} master={} up={}",
            l["ifindex"],
            l["ifname"],
            l["address"],
            l["linkinfo"]["info_kind"],
            l["master"],
            is_up(l)
        ));
    }
    for l in ns.ip_json(&["addr", "show"]).as_array().unwrap() {
        for a in l["addr_info"].as_array().unwrap() {
            out.push(format!(
                "addr {} {}/{}",
                l["ifname"], a["local"], a["prefixlen"]
            ));
        }
    }
    for family in ["-4", "-6"] {
        for r in ns.ip_json(&[family, "route", "show"]).as_array().unwrap() {
            out.push(format!(
                "route {} via {} dev {}",
                r["dst"], r["gateway"], r["dev"]
            ));
        }
    }
    out
}
