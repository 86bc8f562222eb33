//! Host tests of rolling the agent out and of what it must leave alone: `--observe-only`
//! changes nothing and logs its plan, repairs that do not hold back off (`flapping`), and
//! devices netguard does not guard keep their identity and state through every scenario.

use std::process::Command;
use std::time::{Duration, Instant};

use netguard_tests::{is_up, link, wait_until, Bystanders, Netguard, World, IP};

/// The bridged world, eth0 of its container learned, a veth pair `by0`/`by1` that is never
/// learned, and the bystander check watching it.
fn learned(tag: &str) -> (World, Netguard, Bystanders) {
    let w = World::bridged(tag);
    let ng = Netguard::new(&w);
    let c = w.c().path().display().to_string();
    ng.run_ok(&["learn", "--netns", &c]);
    let bystanders = w.bystanders();
    (w, ng, bystanders)
}

#[test]
fn observe_only_leaves_a_broken_world_broken_and_logs_the_plan() {
    let (w, ng, bystanders) = learned("oo");
    let agent = ng.start_agent_with(&["--observe-only"]);
    w.host.ip(&["link", "set", "vh0", "nomaster"]);
    let explain = || ng.explain(&[&w.host, w.c()]);
    wait_until(
        "the log names the repair it would make",
        || {
            ng.log().lines().any(|l| {
                l.contains("observe-only, nothing changed")
                    && l.contains("would repair")
                    && l.contains("ip link set vh0 master br0")
            })
        },
        explain,
    );
    // Several passes later, still broken.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        link(&w.host, "vh0")["master"],
        serde_json::Value::Null,
        "{}",
        explain()
    );
    // An operator's restore through it is refused, and says why.
    let ran = ng.run(&["restore"]);
    assert!(!ran.status.success(), "{ran}");
    assert!(ran.stderr.contains("--observe-only"), "{ran}");
    assert_eq!(link(&w.host, "vh0")["master"], serde_json::Value::Null);
    bystanders.assert_unchanged();
    assert!(agent.stop().success(), "{}", ng.log());
}

#[test]
fn a_link_lost_again_after_each_restore_backs_off_and_shows_flapping() {
    let (w, ng, bystanders) = learned("fl");
    let _agent = ng.start_agent();
    let explain = || ng.explain(&[&w.host, w.c()]);
    // Not `link()`: vh0 is absent part of the time.
    let restored = || {
        let out = Command::new(IP)
            .args(["-n", &w.host.name, "-j", "link", "show", "dev", "vh0"])
            .output()
            .expect("run ip");
        let vh0: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        vh0[0]["master"] == "br0" && is_up(&vh0[0])
    };
    let mut took = Vec::new();
    for _ in 0..4 {
        // Deleting the host side takes the container's eth0 with it.
        w.host.ip(&["link", "del", "vh0"]);
        let start = Instant::now();
        wait_until("vh0 re-created on br0", restored, explain);
        took.push(start.elapsed());
    }
    eprintln!("veth deleted four times: restored after {took:?}");
    // Each restore after the first was lost again at once: 1 s, 2 s, 4 s back-off.
    assert!(took[1] >= Duration::from_millis(900), "{took:?}");
    assert!(took[3] >= Duration::from_millis(3500), "{took:?}");
    assert!(took[3] > took[2] && took[2] > took[1], "{took:?}");
    let row = ng
        .status_row(w.c(), "eth0")
        .unwrap_or_else(|| panic!("eth0 not in status: {}", explain()));
    assert_eq!(row["state"], "flapping", "{row}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("back off"),
        "{row}"
    );
    bystanders.assert_unchanged();
}

#[test]
fn a_device_that_took_a_guarded_name_while_the_agent_was_stopped_is_left_alone() {
    let (w, ng, bystanders) = learned("tn");
    // While no agent runs: the pair goes, and a device netguard never saw takes vh0.
    w.host.ip(&["link", "del", "vh0"]);
    w.host
        .ip(&["link", "add", "vh0", "type", "veth", "peer", "name", "st1"]);
    w.host.ip(&["link", "set", "vh0", "up"]);
    let bystanders = bystanders
        .watch(Some(&w.host.name), "vh0")
        .watch(Some(&w.host.name), "st1");
    let _agent = ng.start_agent();
    let explain = || ng.explain(&[&w.host, w.c()]);
    wait_until(
        "status says eth0 is in conflict with the stranger",
        || {
            ng.status_row(w.c(), "eth0")
                .is_some_and(|r| r["state"] == "conflict")
        },
        explain,
    );
    std::thread::sleep(Duration::from_secs(2));
    bystanders.assert_unchanged();
}
