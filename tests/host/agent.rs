//! Host tests of `netguard agent` and the commands, as root, through the binary as a user runs
//! it. Each test builds its own world (a netns standing in for the host, passed as
//! `--host-netns`, and container netns), keeps the ledger, socket and agent log in its own
//! directory, and stops its agent on drop. Traffic stays in 198.18.0.0/15.

use std::path::PathBuf;
use std::time::Duration;

use netguard::agent::StateLock;
use netguard_tests::{
    dumps, has_addr, is_up, link, pings, wait_until, wait_until_every, Bystanders, Netguard, Ran,
    TestNetns, World,
};
use serde_json::{json, Value};

/// The bridged world and the `netguard` command on a ledger of its own.
struct Setup {
    w: World,
    ng: Netguard,
    /// Checked when a test ends well: no scenario touches what is not guarded.
    bystanders: Bystanders,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let w = World::bridged(tag);
        Setup {
            ng: Netguard::new(&w),
            bystanders: w.bystanders(),
            w,
        }
    }

    fn c_path(&self) -> String {
        self.w.c().path().display().to_string()
    }

    /// `netguard learn --netns C`: guards eth0 (and its host side vh0 on br0).
    fn learn(&self) {
        let ran = self.ng.run_ok(&["learn", "--netns", &self.c_path()]);
        assert!(
            ran.stdout.contains(&format!("eth0 in {}", self.c_path())),
            "{ran}"
        );
    }

    fn explain(&self) -> String {
        self.ng.explain(&[&self.w.host, self.w.c()])
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Not while a failed test unwinds: a second panic would abort the run.
        if !std::thread::panicking() {
            self.bystanders.assert_unchanged();
        }
    }
}

/// The one line a refused command printed on stderr.
fn one_line(ran: &Ran) -> &str {
    let lines: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line expected: {ran}");
    lines[0]
}

/// Whether `ns` has a route to `dst` via `gateway` through `dev` (false while `dev` is absent).
fn has_route(ns: &TestNetns, dev: &str, dst: &str, gateway: &str) -> bool {
    ns.ip_out(&["route", "show"]).lines().any(|l| {
        l.split_whitespace()
            .take(5)
            .eq([dst, "via", gateway, "dev", dev])
    })
}

#[test]
fn container_reboot_gets_its_veth_back_from_the_agent() {
    let s = Setup::new("rb");
    let w = &s.w;
    s.learn();
    let (eth0, vh0) = (link(w.c(), "eth0"), link(&w.host, "vh0"));
    let agent = s.ng.start_agent();

    w.c().recreate();
    let took = wait_until(
        "the container pings the bridge through its re-created eth0",
        || w.c().ping("198.18.1.1"),
        || s.explain(),
    );
    eprintln!("container netns re-created -> ping through the re-created veth: {took:?}");

    let eth0_now = link(w.c(), "eth0");
    assert_eq!(eth0_now["linkinfo"]["info_kind"], "veth", "{}", s.explain());
    assert_eq!(
        (&eth0_now["address"], &eth0_now["mtu"]),
        (&eth0["address"], &eth0["mtu"]),
        "{}",
        s.explain()
    );
    assert!(is_up(&eth0_now));
    assert!(has_addr(w.c(), "eth0", "198.18.1.2", 24), "{}", s.explain());
    assert!(
        has_route(w.c(), "eth0", "default", "198.18.1.1"),
        "{}",
        s.explain()
    );
    assert!(
        has_route(w.c(), "eth0", "198.19.1.0/24", "198.18.1.1"),
        "{}",
        s.explain()
    );
    let vh0_now = link(&w.host, "vh0");
    assert_eq!(vh0_now["master"], "br0", "{}", s.explain());
    assert_eq!(
        (&vh0_now["address"], &vh0_now["mtu"]),
        (&vh0["address"], &vh0["mtu"])
    );
    assert!(is_up(&vh0_now));

    let status = s.ng.status_json();
    assert_eq!(status["agent"]["backend"], "netlink", "{status:#}");
    assert_eq!(status["agent"]["pid"], agent.pid());
    let row =
        s.ng.status_row(w.c(), "eth0")
            .unwrap_or_else(|| panic!("eth0 not in status: {status:#}"));
    assert_eq!(row["state"], "restored", "{status:#}\n{}", s.explain());

    // SIGTERM: the agent saves its ledger, removes its socket and exits 0.
    assert!(agent.stop().success(), "{}", s.ng.log());
    assert!(!s.ng.socket.exists());
}

#[test]
fn bridge_port_lost_is_put_back_within_the_interval() {
    let s = Setup::new("bp");
    let w = &s.w;
    s.learn();
    let _agent = s.ng.start_agent();

    w.host.ip(&["link", "set", "vh0", "nomaster"]);
    wait_until(
        "vh0 is a port of br0 again",
        || link(&w.host, "vh0")["master"] == "br0",
        || s.explain(),
    );
    assert!(is_up(&link(&w.host, "vh0")));
    assert!(pings(w.c(), "198.18.1.1"), "{}", s.explain());
    assert_eq!(s.ng.status_row(w.c(), "eth0").unwrap()["state"], "restored");
}

/// Whether the world is whole again after repairs by several agents: one eth0 in the
/// container, one veth on the host (vh0, up, a port of br0), nothing left under a temporary
/// name; else what is wrong.
fn whole(w: &World) -> Result<(), String> {
    let c_links = w.c().ip_json(&["-d", "link", "show"]);
    let host_links = w.host.ip_json(&["-d", "link", "show"]);
    let names = |links: &Value| -> Vec<String> {
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let (c_names, host_names) = (names(&c_links), names(&host_links));
    if c_names
        .iter()
        .chain(&host_names)
        .any(|n| n.starts_with("ngtmp"))
    {
        return Err(format!(
            "a temporary name is left: {c_names:?} {host_names:?}"
        ));
    }
    if c_names.iter().filter(|n| *n == "eth0").count() != 1 {
        return Err(format!("the container has {c_names:?}"));
    }
    let veths: Vec<&Value> = host_links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| {
            l["linkinfo"]["info_kind"] == "veth"
                && !l["ifname"].as_str().is_some_and(|n| n.starts_with("by"))
        })
        .collect();
    match veths.as_slice() {
        [vh0] if vh0["ifname"] == "vh0" && vh0["master"] == "br0" && is_up(vh0) => Ok(()),
        _ => Err(format!("the host has veths {veths:?}")),
    }
}

#[test]
fn agent_killed_during_a_repair_converges_when_started_again() {
    let s = Setup::new("k9");
    let w = &s.w;
    s.learn();
    let mut agent = s.ng.start_agent();
    let creations = || s.ng.log().matches("ip link add vh0").count();
    // Killed right after the re-creation (before it noticed), then as soon as its log shows
    // the pair re-created (in the middle of configuring it).
    for mid_repair in [false, true] {
        let before = creations();
        w.c().recreate();
        if mid_repair {
            let started = || creations() > before;
            wait_until_every(
                Duration::from_millis(1),
                "the agent starts re-creating the veth",
                started,
                || s.explain(),
            );
        }
        agent.kill9();
        agent = s.ng.start_agent();
        wait_until(
            &format!(
                "converged after a SIGKILL {}",
                if mid_repair {
                    "mid-repair"
                } else {
                    "right after the re-creation"
                }
            ),
            || whole(w).is_ok() && w.c().ping("198.18.1.1"),
            || format!("{:?}\n{}", whole(w), s.explain()),
        );
    }
}

#[test]
fn corrupt_state_file_is_kept_aside_and_the_agent_guards_on() {
    let s = Setup::new("cs");
    let garbage = b"{\"version\": 1, \"ledger\": {\"links\": [\x00 garbage";
    std::fs::write(s.ng.state_dir.join("state.json"), garbage).unwrap();
    let _agent = s.ng.start_agent();

    let aside: Vec<PathBuf> = std::fs::read_dir(&s.ng.state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        garbage,
        "the corrupt file is kept untouched"
    );
    let log = s.ng.log();
    assert!(
        log.contains(&format!("kept aside untouched as {}", aside[0].display())),
        "{log}"
    );
    assert!(
        !log.contains('\x1b'),
        "terminal colours in a log file: {log}"
    );

    // The agent holds the ledger: this learn goes through it.
    s.learn();
    let row =
        s.ng.status_row(s.w.c(), "eth0")
            .unwrap_or_else(|| panic!("eth0 not in status: {}", s.explain()));
    assert_eq!(row["kind"], "veth");
    s.w.host.ip(&["link", "set", "vh0", "nomaster"]);
    wait_until(
        "vh0 is a port of br0 again",
        || link(&s.w.host, "vh0")["master"] == "br0",
        || s.explain(),
    );
}

#[test]
fn restore_dry_run_changes_nothing_then_restore_repairs_or_says_why_not() {
    let s = Setup::new("dr");
    let w = &s.w;
    s.learn();
    w.host.ip(&["link", "set", "vh0", "nomaster"]);
    w.c().ip(&["route", "del", "198.19.1.0/24"]);
    let ledger_files = || {
        ["state.json", "journal.jsonl"]
            .map(|f| std::fs::read(s.ng.state_dir.join(f)).unwrap_or_default())
    };
    let before = (dumps(&w.host), dumps(w.c()), ledger_files());

    let ran = s.ng.run_ok(&["restore", "--dry-run", "--json"]);
    let plan: Value =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {ran}"));
    let actions: Vec<&Value> = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["actions"].as_array().into_iter().flatten())
        .collect();
    let planned = |what: Value| {
        actions
            .iter()
            // An action names its device by identity: `dev` is matched by its name.
            .any(|a| {
                what.as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, v)| match k.as_str() {
                        "dev" => &a[k]["name"] == v,
                        _ => &a[k] == v,
                    })
            })
    };
    assert!(
        planned(json!({ "action": "set-master", "dev": "vh0", "master": "br0" })),
        "{ran}"
    );
    assert!(
        planned(
            json!({ "action": "add-route", "dev": "eth0", "route": { "dst": "198.19.1.0/24", "gateway": "198.18.1.1" } })
        ),
        "{ran}"
    );
    assert_eq!(
        (dumps(&w.host), dumps(w.c()), ledger_files()),
        before,
        "the dry run changed something"
    );

    let ran = s.ng.run(&["restore"]);
    assert_eq!(ran.code(), Some(0), "{ran}");
    assert_eq!(link(&w.host, "vh0")["master"], "br0", "{}", s.explain());
    assert!(
        has_route(w.c(), "eth0", "198.19.1.0/24", "198.18.1.1"),
        "{}",
        s.explain()
    );
    assert!(pings(w.c(), "198.18.1.1"));

    // The container is gone for good: nothing to restore into, and it is said.
    w.c().delete();
    let ran = s.ng.run(&["restore"]);
    assert_eq!(ran.code(), Some(1), "{ran}");
    let eth0 = ran
        .stdout
        .lines()
        .find(|l| l.contains("eth0"))
        .unwrap_or_else(|| panic!("eth0 not named: {ran}"));
    assert!(
        eth0.contains(&format!("netns {} is not there", s.c_path())),
        "{ran}"
    );
}

#[test]
fn status_without_an_agent_says_so_and_shows_the_live_verdict() {
    let s = Setup::new("st");
    s.learn();
    let eth0_line = |ran: &Ran| {
        ran.stdout
            .lines()
            .find(|l| l.starts_with("eth0 "))
            .map(str::to_string)
    };

    let ran = s.ng.run_ok(&["status"]);
    assert!(ran.stdout.starts_with("no agent is running"), "{ran}");
    let row = eth0_line(&ran).unwrap_or_else(|| panic!("eth0 not listed: {ran}"));
    assert!(
        row.contains(&s.c_path()) && row.ends_with("intact"),
        "{ran}"
    );

    s.w.host.ip(&["link", "set", "vh0", "nomaster"]);
    let ran = s.ng.run_ok(&["status"]);
    assert!(
        eth0_line(&ran).is_some_and(|row| row.ends_with("repair (repairing)")),
        "{ran}"
    );
    let status = s.ng.status_json();
    assert!(status["agent"].is_null(), "{status:#}");
    assert_eq!(
        status["rows"][0]["live"], "repair (repairing)",
        "{status:#}"
    );
    assert!(
        link(&s.w.host, "vh0")["master"].is_null(),
        "status repaired something"
    );
}

#[test]
fn unknown_config_key_is_named_with_its_file() {
    let w = World::new("cf");
    let ng = Netguard::new(&w);
    let config = w.dir.0.join("netguard.toml");
    std::fs::write(&config, "interval = 2\nintervall = 3\n").unwrap();

    let ran = ng.run(&["agent", "--config", config.to_str().unwrap()]);
    assert_eq!(ran.code(), Some(2), "{ran}");
    let line = one_line(&ran);
    assert!(
        line.contains("intervall") && line.contains(config.to_str().unwrap()),
        "{ran}"
    );
    assert!(!ng.socket.exists(), "the agent started anyway");

    // Values out of range are refused before anything starts, naming the flag or the key.
    std::fs::write(&config, "interval = -1\n").unwrap();
    let config = config.to_str().unwrap();
    for (args, says) in [
        (
            &["--interval", "1e20"][..],
            "--interval 100000000000000000000: give a number of seconds from 0.1 to 86400",
        ),
        (&["--interval", "NaN"], "--interval NaN: give"),
        (
            &["--interval", "5", "--exclude", "52:54:00:zz:00:01"],
            "--exclude 52:54:00:zz:00:01: not a MAC address",
        ),
        (&[], "interval -1: give a number of seconds"),
    ] {
        let ran = ng.run(&[&["agent", "--config", config][..], args].concat());
        assert_eq!(ran.code(), Some(2), "{ran}");
        assert!(one_line(&ran).contains(says), "{says}: {ran}");
        assert!(!ng.socket.exists(), "the agent started anyway");
    }
}

#[test]
fn bad_requests_to_a_running_agent_get_one_clear_line() {
    let s = Setup::new("br");
    s.learn();
    let agent = s.ng.start_agent();

    let ran = s.ng.run(&["learn", "--netns", "/nonexistent"]);
    assert_ne!(ran.code(), Some(0), "{ran}");
    assert!(one_line(&ran).contains("/nonexistent"), "{ran}");

    let ran = s.ng.run(&["forget", "nosuch0"]);
    assert_ne!(ran.code(), Some(0), "{ran}");
    assert!(
        one_line(&ran).contains("no guarded link is named nosuch0"),
        "{ran}"
    );

    // A second agent on the same ledger and socket, then on the same socket only.
    let ran = s.ng.run(&["agent", "--backend", "netlink"]);
    assert_ne!(ran.code(), Some(0), "{ran}");
    assert!(
        one_line(&ran).contains("in use by another netguard"),
        "{ran}"
    );
    let ran =
        s.ng.with_state_dir(s.ng.state_dir.join("other"))
            .run(&["agent", "--backend", "netlink"]);
    assert_ne!(ran.code(), Some(0), "{ran}");
    assert!(
        one_line(&ran).contains(&format!("already listens on {}", s.ng.socket.display())),
        "{ran}"
    );
    assert_eq!(
        s.ng.status_json()["agent"]["pid"],
        agent.pid(),
        "the first agent is still the one answering"
    );

    // A command meant for another ledger never goes to this agent: exit 2, saying which
    // agent answered and what differs.
    let other = s.ng.state_dir.join("other");
    let c = s.c_path();
    for args in [&["learn", "--netns", c.as_str()][..], &["status"]] {
        let ran = s.ng.with_state_dir(other.clone()).run(args);
        assert_eq!(ran.code(), Some(2), "{ran}");
        let line = one_line(&ran);
        assert!(
            line.contains(&format!(
                "(pid {}) is not the one this command means",
                agent.pid()
            )) && line.contains(&format!(
                "its ledger is in {}, this command's in {}",
                s.ng.state_dir.display(),
                other.display()
            )),
            "{ran}"
        );
    }

    // What is guarded can be forgotten.
    s.ng.run_ok(&["forget", "eth0"]);
    assert!(
        s.ng.status_row(s.w.c(), "eth0").is_none(),
        "{}",
        s.explain()
    );
}

#[test]
fn agent_started_while_a_command_holds_the_ledger_waits_for_it() {
    let s = Setup::new("lk");
    s.learn();
    // What `netguard status` or `restore` hold while they work without an agent.
    let held = StateLock::try_acquire(&s.ng.state_dir).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(held);
    });
    let _agent = s.ng.start_agent();
    release.join().unwrap();
    assert!(
        s.ng.status_row(s.w.c(), "eth0").is_some(),
        "{}",
        s.explain()
    );
}

#[test]
fn imported_cni_checkpoint_is_guarded_and_its_link_rebuilt_from_it() {
    let w = World::macvlan_pod("cni");
    let ng = Netguard::new(&w);
    let explain = || ng.explain(&[&w.host, w.pod()]);
    let pod = w.pod().path().display().to_string();
    let mac = link(w.pod(), "mv0")["address"]
        .as_str()
        .unwrap()
        .to_string();
    // Field report 001's per-sandbox checkpoint.
    let checkpoint = json!({
        "netns": pod,
        "podname": "web-0",
        "sandbox": "06c9b8d0a800735982222588c28e70140820acfd04a120264b87a20306322f55",
        "ifname": "mv0",
        "result": {
            "interfaces": [{ "name": "mv0", "mac": mac, "sandbox": pod }],
            "ips": [{ "version": "4", "interface": 0, "address": "198.18.2.2/24", "gateway": "198.18.2.1" }],
            "routes": [{ "dst": "0.0.0.0/0", "gw": "198.18.2.1" }, { "dst": "198.19.2.0/24", "gw": "198.18.2.1" }],
            "dns": {}
        }
    });
    let file = w.dir.0.join("checkpoint-06c9b8d0a800");
    std::fs::write(&file, serde_json::to_vec_pretty(&checkpoint).unwrap()).unwrap();
    let _agent = ng.start_agent();

    let ran = ng.run_ok(&["import-cni", file.to_str().unwrap()]);
    assert!(
        ran.stdout.contains(&format!("guarding mv0 in {pod}")),
        "{ran}"
    );
    let row = ng
        .status_row(w.pod(), "mv0")
        .unwrap_or_else(|| panic!("mv0 not in status: {}", explain()));
    assert_eq!(
        (row["kind"].as_str(), row["mac"].as_str()),
        (Some("macvlan"), Some(mac.as_str()))
    );

    w.pod().ip(&["link", "del", "mv0"]);
    wait_until(
        "mv0 is back with its routes",
        || has_route(w.pod(), "mv0", "198.19.2.0/24", "198.18.2.1"),
        explain,
    );
    let mv0 = link(w.pod(), "mv0");
    assert_eq!(mv0["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(mv0["address"], mac.as_str());
    assert!(is_up(&mv0));
    assert!(has_addr(w.pod(), "mv0", "198.18.2.2", 24), "{}", explain());
    assert!(
        has_route(w.pod(), "mv0", "default", "198.18.2.1"),
        "{}",
        explain()
    );
    assert!(pings(w.pod(), "198.18.2.1"), "{}", explain());
}

#[test]
fn a_learn_that_guards_nothing_says_so_and_fails() {
    // A veth pair between two container netns: neither side is the host's, nothing to guard
    // (the issue's case of a command run against the wrong host netns).
    let w = World::new("ln").with(&["a", "b"]);
    let ng = Netguard::new(&w);
    let (a, b) = (w.ns("a"), w.ns("b"));
    a.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &b.path().display().to_string(),
    ]);
    let ran = ng.run(&["learn", "--netns", &a.path().display().to_string()]);
    assert_eq!(ran.code(), Some(1), "{ran}");
    assert!(
        ran.stdout
            .starts_with("guarding nothing: no link in the given netns could be guarded")
            && ran.stdout.contains("skipped: "),
        "{ran}"
    );
    // With an agent answering, the same.
    let _agent = ng.start_agent();
    let ran = ng.run(&["learn", "--netns", &a.path().display().to_string()]);
    assert_eq!(ran.code(), Some(1), "{ran}");
    assert!(ran.stdout.starts_with("guarding nothing"), "{ran}");
}
