//! Helpers for tests that need root: network namespaces the test creates and always removes.

use std::fmt;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use netguard::event::{Event, Place};
use netguard::ledger::Locator;
use netguard::trace::{BackendChoice, TraceOptions, Tracer};
use serde_json::Value;

pub mod cni;
pub mod podman;

/// Path of iproute2's `ip` (busybox in the VM guest shadows a bare `ip`).
pub const IP: &str = "/sbin/ip";

/// Runs `ip ARGS`, panicking with its stderr on failure (a test setup step that fails is a
/// failed test).
pub fn ip(args: &[&str]) {
    let out = Command::new(IP).args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip ARGS` and returns whether it succeeded.
pub fn ip_ok(args: &[&str]) -> bool {
    Command::new(IP)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A named netns (`/run/netns/NAME`) deleted on drop, even when the test panics.
pub struct TestNetns {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestNetns {
    /// Creates `ngt<pid>-<tag><n>`: unique per process and call, at most 15 characters of tag.
    pub fn new(tag: &str) -> TestNetns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("ngt{}-{tag}{n}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        TestNetns { name }
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
        ip(&["netns", "del", &self.name]);
        ip(&["netns", "add", &self.name]);
        ip(&["-n", &self.name, "link", "set", "lo", "up"]);
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
    pub fn new(tag: &str) -> TestDir {
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

/// A host stand-in with bridge br0 (198.18.1.1/24) and a container whose eth0 (198.18.1.2/24,
/// MTU 1400, a default route and 198.19.1.0/24 via the bridge) is a veth with host side vh0
/// (MTU 1400) on br0.
pub struct Bridged {
    pub host: TestNetns,
    pub c: TestNetns,
}

impl Bridged {
    pub fn new(tag: &str) -> Bridged {
        let host = TestNetns::new(&format!("{tag}h"));
        let c = TestNetns::new(&format!("{tag}c"));
        host.ip(&["link", "add", "br0", "type", "bridge"]);
        host.ip(&["addr", "add", "198.18.1.1/24", "dev", "br0"]);
        host.ip(&["link", "set", "br0", "up"]);
        host.ip(&[
            "link", "add", "vh0", "mtu", "1400", "type", "veth", "peer", "name", "eth0", "mtu",
            "1400", "netns", &c.name,
        ]);
        host.ip(&["link", "set", "vh0", "master", "br0"]);
        host.ip(&["link", "set", "vh0", "up"]);
        c.ip(&["addr", "add", "198.18.1.2/24", "dev", "eth0"]);
        c.ip(&["link", "set", "eth0", "up"]);
        c.ip(&["route", "add", "default", "via", "198.18.1.1"]);
        c.ip(&["route", "add", "198.19.1.0/24", "via", "198.18.1.1"]);
        Bridged { host, c }
    }

    pub fn c_loc(&self) -> Locator {
        Locator::Path(self.c.path())
    }
}

/// A host stand-in with a parent link pv0 (a veth standing in for a NIC; its peer pv1 has
/// 198.18.2.1/24) and a pod whose macvlan mv0 on pv0 has 198.18.2.2/24, a default route and
/// 198.19.2.0/24 via pv1.
pub struct MacvlanPod {
    pub host: TestNetns,
    pub pod: TestNetns,
}

impl MacvlanPod {
    pub fn new(tag: &str) -> MacvlanPod {
        let w = MacvlanPod {
            host: TestNetns::new(&format!("{tag}h")),
            pod: TestNetns::new(&format!("{tag}p")),
        };
        w.add_parent();
        w.host.ip(&[
            "link",
            "add",
            "link",
            "pv0",
            "name",
            "mv0",
            "netns",
            &w.pod.name,
            "type",
            "macvlan",
            "mode",
            "bridge",
        ]);
        w.pod.ip(&["addr", "add", "198.18.2.2/24", "dev", "mv0"]);
        w.pod.ip(&["link", "set", "mv0", "up"]);
        w.pod.ip(&["route", "add", "default", "via", "198.18.2.1"]);
        w.pod
            .ip(&["route", "add", "198.19.2.0/24", "via", "198.18.2.1"]);
        w
    }

    /// Creates the parent pv0 (again, after a "driver reload" removed it).
    pub fn add_parent(&self) {
        self.host
            .ip(&["link", "add", "pv0", "type", "veth", "peer", "name", "pv1"]);
        self.host
            .ip(&["addr", "add", "198.18.2.1/24", "dev", "pv1"]);
        self.host.ip(&["link", "set", "pv0", "up"]);
        self.host.ip(&["link", "set", "pv1", "up"]);
    }
}

/// How long a test waits for an event before failing.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running tracer with `host` standing in for init_net, and the events it gave about the
/// test's own namespaces (other tests run in parallel and make their own).
pub struct EventWatch {
    pub tracer: Tracer,
    ours: Vec<u64>,
    pub seen: Vec<Event>,
}

impl EventWatch {
    /// Starts the tracer; `ours` are the namespaces whose events count (read their inodes
    /// now: they may be deleted later in the test).
    pub async fn start(choice: BackendChoice, host: &TestNetns, ours: &[&TestNetns]) -> EventWatch {
        let options = TraceOptions {
            host_netns: Some(host.path()),
        };
        let tracer = Tracer::start(choice, options)
            .await
            .expect("start the tracer");
        EventWatch {
            tracer,
            ours: ours.iter().map(|ns| ns.inode()).collect(),
            seen: Vec::new(),
        }
    }

    /// The next event about our namespaces that `wanted` accepts; panics after
    /// [`EVENT_TIMEOUT`] with `what` and every event seen about them.
    pub async fn expect(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.tracer.next()).await;
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => panic!(
                    "the tracer stopped while waiting for {what}; seen:\n{}",
                    self.seen_lines()
                ),
                Err(_) => panic!(
                    "no {what} within {EVENT_TIMEOUT:?}; seen:\n{}",
                    self.seen_lines()
                ),
            };
            let place_is_ours = |p: &Option<Place>| {
                p.as_ref()
                    .is_some_and(|p| self.ours.contains(&p.netns.inode))
            };
            if !(place_is_ours(&event.from) || place_is_ours(&event.to)) {
                continue;
            }
            self.seen.push(event.clone());
            if wanted(&event) {
                return event;
            }
        }
    }

    fn seen_lines(&self) -> String {
        if self.seen.is_empty() {
            return "  (nothing)".into();
        }
        self.seen
            .iter()
            .map(|e| format!("  {}", serde_json::to_string(e).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether a place is `name` in the netns with that inode.
pub fn is_at(place: &Option<Place>, name: &str, netns: u64) -> bool {
    place
        .as_ref()
        .is_some_and(|p| p.name.as_deref() == Some(name) && p.netns.inode == netns)
}

/// The workspace's `netguard` binary, built first (a no-op when up to date) so that a test
/// never runs a stale one: `cargo test -p netguard-tests` alone does not build it. Built once
/// per test process: tests run in parallel and would queue on cargo's lock.
pub fn netguard_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_netguard).clone()
}

fn build_netguard() -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "netguard",
            "--bin",
            "netguard",
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build -p netguard failed");
    profile_dir.join("netguard")
}

/// Skips (returns true) when not root: these tests need CAP_NET_ADMIN and CAP_SYS_ADMIN.
pub fn skip_unless_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

/// How long a test waits for netguard to do something (start, repair) before failing.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `done` every 50 ms until it holds and returns how long that took; panics after
/// [`AGENT_TIMEOUT`] with `what` and what `explain` shows then.
pub fn wait_until(
    what: &str,
    done: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) -> Duration {
    wait_until_every(Duration::from_millis(50), what, done, explain)
}

/// [`wait_until`], polling every `poll`.
pub fn wait_until_every(
    poll: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) -> Duration {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > AGENT_TIMEOUT {
            panic!("{what}: not within {AGENT_TIMEOUT:?}\n{}", explain());
        }
        std::thread::sleep(poll);
    }
    started.elapsed()
}

/// What one `netguard` command did.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// The `netguard` command as a test runs it: ledger, socket and agent log in the test's own
/// directory, a test netns standing in for init_net.
pub struct Netguard {
    bin: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    host_netns: PathBuf,
}

impl Netguard {
    pub fn new(dir: &TestDir, host: &TestNetns) -> Netguard {
        Netguard {
            bin: netguard_bin(),
            state_dir: dir.0.clone(),
            socket: dir.0.join("agent.sock"),
            host_netns: host.path(),
        }
    }

    /// The same command on the ledger in `state_dir`.
    pub fn with_state_dir(&self, state_dir: PathBuf) -> Netguard {
        Netguard {
            bin: self.bin.clone(),
            state_dir,
            socket: self.socket.clone(),
            host_netns: self.host_netns.clone(),
        }
    }

    /// `netguard ARGS --state-dir .. --socket .. --host-netns ..`.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--host-netns")
            .arg(&self.host_netns)
            // The agent logs at its default level whatever the test runner's environment says.
            .env_remove("RUST_LOG");
        command
    }

    pub fn run(&self, args: &[&str]) -> Ran {
        let out = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run netguard");
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs ARGS and panics unless it exits 0.
    pub fn run_ok(&self, args: &[&str]) -> Ran {
        let ran = self.run(args);
        assert!(ran.status.success(), "netguard {}: {ran}", args.join(" "));
        ran
    }

    /// `netguard status --json`, parsed.
    pub fn status_json(&self) -> Value {
        let ran = self.run_ok(&["status", "--json"]);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {ran}"))
    }

    /// The status row of the link `name` in `netns`, if listed.
    pub fn status_row(&self, netns: &TestNetns, name: &str) -> Option<Value> {
        let netns = netns.path().display().to_string();
        let status = self.status_json();
        status["rows"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == name && r["netns"] == netns.as_str())
            .cloned()
    }

    /// Where an agent started by [`Netguard::start_agent`] logs (every start appends).
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `netguard agent --backend netlink --interval 1` and waits until it answers
    /// `status` itself.
    pub fn start_agent(&self) -> AgentProcess {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the agent log");
        let child = self
            .command(&["agent", "--backend", "netlink", "--interval", "1"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log)
            .spawn()
            .expect("spawn netguard agent");
        let mut agent = AgentProcess { child };
        let pid = agent.child.id();
        wait_until(
            "the agent answers status",
            || {
                if let Ok(Some(exit)) = agent.child.try_wait() {
                    panic!(
                        "netguard agent exited ({exit}) while starting; log:\n{}",
                        self.log()
                    );
                }
                // Only a live socket: `status` without an agent takes the ledger's lock,
                // which the starting agent needs.
                UnixStream::connect(&self.socket).is_ok()
                    && self.status_json()["agent"]["pid"] == pid
            },
            || format!("log:\n{}", self.log()),
        );
        agent
    }

    /// `netguard status`, the agent's log and `ip` of the given netns, for failure messages.
    pub fn explain(&self, netns: &[&TestNetns]) -> String {
        let mut text = format!("netguard status: {}\n", self.run(&["status"]));
        for ns in netns {
            for what in [&["-d", "link"][..], &["addr"], &["route"]] {
                let out = Command::new(IP)
                    .args(["-n", &ns.name])
                    .args(what)
                    .output()
                    .expect("run ip");
                text += &format!(
                    "--- ip -n {} {}:\n{}",
                    ns.name,
                    what.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        text + &format!("--- agent log:\n{}", self.log())
    }
}

/// A running `netguard agent`, stopped on drop: SIGTERM, then SIGKILL if it has not exited
/// within 5 s.
pub struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and how it exited.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// SIGKILL: it gets no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> ExitStatus {
        if let Ok(Some(exit)) = self.child.try_wait() {
            return exit;
        }
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return exit;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait for the killed agent")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}
