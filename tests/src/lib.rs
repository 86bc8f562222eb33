//! Helpers for tests that need root: network namespaces the test creates and always removes.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

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
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new(IP).args(["netns", "del", &self.name]).status();
    }
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
