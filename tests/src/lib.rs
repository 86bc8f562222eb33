//! Helpers for tests that need root: network namespaces the test creates and always removes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netguard::event::{Event, Place};
use netguard::trace::{BackendChoice, TraceOptions, Tracer};

/// Path of iproute2's `ip` (busybox in the VM guest shadows a bare `ip`).
pub const IP: &str = "/sbin/ip";

/// Runs `ip ARGS`, panicking with its stderr on failure (a test setup step that fails is a
/// failed test).
pub fn ip(args: &[&str]) {
    let out = Command::new(IP).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs `ip ARGS` and returns whether it succeeded.
pub fn ip_ok(args: &[&str]) -> bool {
    Command::new(IP).args(args).output().map(|o| o.status.success()).unwrap_or(false)
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
        let out = Command::new(IP).args(["-n", &self.name]).args(args).output().expect("run ip");
        assert!(out.status.success(), "ip -n {} {}: {}", self.name, args.join(" "), String::from_utf8_lossy(&out.stderr));
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
        let options = TraceOptions { host_netns: Some(host.path()) };
        let tracer = Tracer::start(choice, options).await.expect("start the tracer");
        EventWatch { tracer, ours: ours.iter().map(|ns| ns.inode()).collect(), seen: Vec::new() }
    }

    /// The next event about our namespaces that `wanted` accepts; panics after
    /// [`EVENT_TIMEOUT`] with `what` and every event seen about them.
    pub async fn expect(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.tracer.next()).await;
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => panic!("the tracer stopped while waiting for {what}; seen:\n{}", self.seen_lines()),
                Err(_) => panic!("no {what} within {EVENT_TIMEOUT:?}; seen:\n{}", self.seen_lines()),
            };
            let place_is_ours = |p: &Option<Place>| p.as_ref().is_some_and(|p| self.ours.contains(&p.netns.inode));
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
    place.as_ref().is_some_and(|p| p.name.as_deref() == Some(name) && p.netns.inode == netns)
}

/// The workspace's `netguard` binary, built first (a no-op when up to date) so that a test
/// never runs a stale one: `cargo test -p netguard-tests` alone does not build it.
pub fn netguard_bin() -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe.parent().and_then(Path::parent).expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "netguard", "--bin", "netguard", "--target-dir"])
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
