//! Host tests of the agent's quiet passes: a pass plans again only the links a netns read
//! again or the ledger changed for, so a change the kernel announces must still be repaired
//! at once, and one it does not announce by the next full pass (`--full-pass-every`).
//! Each test builds its own world (see `host_agent`) and stops its agent on drop.

use std::process::Command;
use std::time::Duration;

use netguard_tests::{has_addr, pings, wait_until, AgentProcess, Netguard, TestNetns, World};

/// The bridged world with its eth0/vh0 learned, and an agent with these extra flags whose
/// first passes are over.
fn guarded(w: &World, agent_flags: &[&str]) -> (Netguard, AgentProcess) {
    let ng = Netguard::new(w);
    let c = w.c().path().display().to_string();
    let ran = ng.run_ok(&["learn", "--netns", &c]);
    assert!(ran.stdout.contains(&format!("eth0 in {c}")), "{ran}");
    let agent = ng.start_agent_with(agent_flags);
    wait_until(
        "the agent has made two passes",
        || ng.status_json()["agent"]["passes"].as_u64() >= Some(2),
        || ng.log(),
    );
    (ng, agent)
}

#[test]
fn a_change_in_a_quiet_netns_is_repaired_at_once() {
    let w = World::bridged("iq");
    // No full pass during the test: only the announcement can bring the repair.
    let (ng, _agent) = guarded(&w, &["--full-pass-every", "3600"]);
    // Quiet passes meanwhile: the agent plans nothing again until told.
    std::thread::sleep(Duration::from_secs(3));

    w.c().ip(&["addr", "del", "198.18.1.2/24", "dev", "eth0"]);
    let took = wait_until(
        "eth0 has its address back and the bridge answers",
        || has_addr(w.c(), "eth0", "198.18.1.2", 24) && pings(w.c(), "198.18.1.1"),
        || ng.explain(&[&w.host, w.c()]),
    );
    eprintln!("address deleted in a quiet netns -> back: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}\n{}", ng.log());
    assert_eq!(ng.status_row(w.c(), "eth0").unwrap()["state"], "restored");
}

/// A bind mount stacked on a netns path: the path names another netns from then on, and
/// nothing announces it (no file is created in the watched directory, no device changes).
struct Stacked(String);

impl Stacked {
    fn on(path: &str, from: &TestNetns) -> Stacked {
        let from = from.path().display().to_string();
        let out = Command::new("mount")
            .args(["--bind", &from, path])
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount --bind {from} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Stacked(path.to_string())
    }
}

impl Drop for Stacked {
    /// Before the world drops: `ip netns del` could not remove a path still mounted twice.
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_netns_swapped_without_a_word_is_repaired_by_the_full_pass() {
    let mut w = World::bridged("is");
    w.add("spare");
    let full_pass = Duration::from_secs(3);
    let every = full_pass.as_secs().to_string();
    let (ng, _agent) = guarded(&w, &["--full-pass-every", &every]);
    let c = w.c().path().display().to_string();

    // Declared after the world: unmounted before it drops.
    let _stacked = Stacked::on(&c, w.ns("spare"));
    assert!(
        !pings(w.c(), "198.18.1.1"),
        "the spare netns has no eth0 yet"
    );
    let took = wait_until(
        "the netns now at the container's path pings the bridge through a new eth0",
        || pings(w.c(), "198.18.1.1"),
        || ng.explain(&[&w.host, w.c()]),
    );
    eprintln!("netns swapped unannounced -> repaired by the full pass: {took:?}");
    // The full pass comes within its period; a pass's interval and the repair on top.
    assert!(
        took < full_pass + Duration::from_secs(4),
        "{took:?}\n{}",
        ng.log()
    );
    assert!(has_addr(w.c(), "eth0", "198.18.1.2", 24));
    assert_eq!(ng.status_row(w.c(), "eth0").unwrap()["state"], "restored");
}
