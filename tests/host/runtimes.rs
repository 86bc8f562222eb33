//! Host tests against real container runtimes: Debian's podman with runc and the CNI backend,
//! Debian's CNI plugins, each test in its own private podman world inside a test netns (see
//! `netguard_tests::podman`). Addresses stay in 198.18.0.0/15.

use std::path::Path;
use std::process::Command;

use netguard_tests::cni::{bridge_network, plugin_dir, Attachment, CniRunner};
use netguard_tests::podman::PodmanWorld;
use netguard_tests::{ip_in, netguard_bin, shim_bin, wait_until, Netguard, World};
use serde_json::json;

/// The harness itself: a busybox container on a bridge + host-local network gets its address
/// inside the test netns, and `podman restart` gives it a new netns under the same ID.
#[test]
fn podman_runs_a_container_on_a_bridge_inside_the_test_netns() {
    let mut world = PodmanWorld::new("pmh");
    let net = world.network_name("br");
    let bridge = world.bridge_plugin("ngbr0", "198.18.20.0/24");
    world.add_network(&net, vec![bridge]);

    let id = world.run("c1", &net, &["sleep", "600"]);
    let first = world.sandbox("c1");
    let addr = world.exec("c1", &["ip", "-4", "addr", "show", "eth0"]);
    assert!(
        addr.contains("inet 198.18.20."),
        "eth0 in the container: {addr}"
    );
    // The bridge is in the test netns, not the host's.
    let bridge = world.host().ip_json(&["link", "show", "dev", "ngbr0"]);
    assert_eq!(bridge[0]["ifname"], "ngbr0");
    assert!(first.starts_with("/run/netns/"), "{}", first.display());

    world.podman_ok(&["restart", "--time", "0", "c1"]);
    let second = world.sandbox("c1");
    assert_ne!(first, second, "a restart makes a new netns");
    assert_eq!(world.id("c1"), id, "same container ID after a restart");
    assert!(!first.exists(), "the old netns {} is gone", first.display());
    let addr = world.exec("c1", &["ip", "-4", "addr", "show", "eth0"]);
    assert!(
        addr.contains("inet 198.18.20."),
        "eth0 after restart: {addr}"
    );
}

/// netguard chained after bridge + host-local: `podman run` -> the agent guards the
/// container's eth0 with no learn; `podman restart` -> status follows the new netns and
/// nothing stale is restored; `podman rm` -> the CNI DEL releases it.
#[test]
fn chained_plugin_guards_a_podman_container_with_no_learn() {
    let mut world = PodmanWorld::new("pmc");
    let ng = Netguard::new(&world.world);
    let _agent = ng.start_agent();
    let net = world.network_name("br");
    let bridge = world.bridge_plugin("ngbr1", "198.18.21.0/24");
    let netguard = PodmanWorld::netguard_plugin(&ng.socket, &ng.state_dir);
    world.add_network(&net, vec![bridge, netguard]);

    world.run("c1", &net, &["sleep", "600"]);
    let first = world.sandbox("c1").display().to_string();
    let rows = |ng: &Netguard| ng.status_json()["rows"].as_array().unwrap().clone();
    let row = |ng: &Netguard, netns: &str| {
        rows(ng)
            .into_iter()
            .find(|r| r["name"] == "eth0" && r["netns"] == netns)
    };
    let guarded =
        row(&ng, &first).unwrap_or_else(|| panic!("eth0 not guarded: {}", ng.explain(&[])));
    assert_eq!(guarded["kind"], "veth");
    assert_eq!(guarded["workload"]["kind"], "cni-attachment", "{guarded}");
    assert_eq!(guarded["workload"]["network"], net.as_str());
    assert_eq!(guarded["state"], "intact", "{guarded}");
    let mac = world.exec("c1", &["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(guarded["mac"], mac.as_str());

    world.podman_ok(&["restart", "--time", "0", "c1"]);
    let second = world.sandbox("c1").display().to_string();
    assert_ne!(first, second);
    let now = row(&ng, &second).unwrap_or_else(|| panic!("not followed: {}", ng.explain(&[])));
    assert_eq!(now["state"], "intact", "{now}");
    // Two agent passes later the old netns has nothing restored into it and no row.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let all = rows(&ng);
    assert_eq!(all.len(), 1, "only the live attachment is guarded: {all:?}");
    let log = ng.log();
    assert!(
        !log.contains("Restored") && !log.contains("Waiting"),
        "nothing restored or waited for: {log}"
    );

    world.podman_ok(&["rm", "--force", "--time", "0", "c1"]);
    assert!(rows(&ng).is_empty(), "released at DEL: {}", ng.explain(&[]));
}

/// The plugin through the suite's CNI runner, with no agent: ADD records under the ledger's
/// lock; with an unusable ledger it still passes the result on (fail-open); DEL succeeds with
/// the netns gone; GC releases what the runtime no longer lists; VERSION and STATUS answer
/// per CNI 1.1.
#[test]
fn chained_plugin_speaks_cni_and_fails_open() {
    let w = World::new("cnr").with(&["pod"]);
    let (host, pod, dir) = (&w.host, w.ns("pod"), &w.dir);
    let ng = Netguard::new(&w);
    let plugins = plugin_dir(&dir.0, &["bridge", "host-local", "netguard"]);
    let runner = CniRunner::new(vec![plugins]).in_netns(host.path());
    let conflist = |state_dir: &Path| {
        bridge_then_netguard(&w, "ngbr2", "198.18.22.0/24", &ng.socket, state_dir)
    };
    let good = conflist(&ng.state_dir);
    let att = Attachment {
        container_id: "c0ffee01".into(),
        netns: Some(pod.path()),
        ifname: "eth0".into(),
        args: Some("IgnoreUnknown=1;K8S_POD_UID=9a7e".into()),
    };

    let result = runner
        .add(&good, &att)
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    let bridge_result = runner.exec("ADD", Some(&att), &CniRunner::plugin_config(&good, 0, None));
    assert!(
        !bridge_result.ok(),
        "a second bridge ADD of the same eth0 fails"
    );
    assert_eq!(result["interfaces"][2]["name"], "eth0", "{result}");
    let row = ng
        .status_row(pod, "eth0")
        .unwrap_or_else(|| panic!("eth0 not guarded: {}", ng.explain(&[pod])));
    assert_eq!(row["kind"], "veth");
    assert_eq!(
        row["workload"],
        json!({ "kind": "cni-attachment", "network": good["name"], "container_id": "c0ffee01",
                "ifname": "eth0", "pod_uid": "9a7e" })
    );
    runner
        .check(&good, &att, &result)
        .unwrap_or_else(|run| panic!("CHECK: {run:?}"));

    // An unusable ledger: the pod still gets its result.
    let blocked = dir.0.join("a-file");
    std::fs::write(&blocked, "not a directory").unwrap();
    let bad = conflist(&blocked.join("state"));
    let prev = result.clone();
    let run = runner.exec(
        "ADD",
        Some(&att),
        &CniRunner::plugin_config(&bad, 1, Some(&prev)),
    );
    assert!(run.ok(), "fail-open: {run:?}");
    assert_eq!(run.json(), prev);
    assert!(run.stderr.contains("not guarded"), "logged: {}", run.stderr);

    // What runtimes run: the shim answers VERSION itself.
    let version = runner.exec_binary(&shim_bin(), "VERSION", None, br#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(
        version.json()["supportedVersions"],
        json!(["0.4.0", "1.0.0", "1.1.0"])
    );
    let v1_1 =
        json!({ "cniVersion": "1.1.0", "name": good["name"], "plugins": [good["plugins"][1]] });
    let status = runner.exec("STATUS", None, &CniRunner::plugin_config(&v1_1, 0, None));
    assert!(status.ok() && status.stdout.is_empty(), "{status:?}");
    runner
        .gc(&v1_1, &[("c0ffee01", "eth0")])
        .unwrap_or_else(|run| panic!("GC: {run:?}"));
    assert!(
        ng.status_row(pod, "eth0").is_some(),
        "a valid attachment stays"
    );
    runner
        .gc(&v1_1, &[("another", "eth0")])
        .unwrap_or_else(|run| panic!("GC: {run:?}"));
    assert!(
        ng.status_row(pod, "eth0").is_none(),
        "GC released what the runtime no longer lists: {}",
        ng.explain(&[pod])
    );
    let status = runner.exec("STATUS", None, &CniRunner::plugin_config(&good, 1, None));
    assert_eq!(
        status.json()["code"],
        1,
        "STATUS is a 1.1 command: {status:?}"
    );

    runner
        .del(&good, &att, Some(&result))
        .unwrap_or_else(|run| panic!("DEL: {run:?}"));
    // Again, with the netns gone: still a success.
    pod.delete();
    let gone = Attachment { netns: None, ..att };
    let run = runner.exec(
        "DEL",
        Some(&gone),
        &CniRunner::plugin_config(&good, 1, None),
    );
    assert!(run.ok() && run.stdout.is_empty(), "{run:?}");
}

/// A bridge network with netguard after it, on `socket` keeping its ledger in `state_dir`.
fn bridge_then_netguard(
    w: &World,
    bridge: &str,
    subnet: &str,
    socket: &Path,
    state_dir: &Path,
) -> serde_json::Value {
    let netguard = json!({
        "type": "netguard",
        "socket": socket.display().to_string(),
        "stateDir": state_dir.display().to_string()
    });
    bridge_network(w, bridge, subnet, &[netguard])
}

/// With an agent, a CNI ADD is answered as soon as the agent holds the ledger and recorded
/// after: what asks next (`status`, CHECK, DEL) finds it recorded, and an attachment that
/// cannot be guarded (no eth7 in the pod) still gets its result, with the failure in `status`.
#[test]
fn an_add_answered_before_it_is_recorded_is_seen_recorded_by_what_comes_next() {
    let w = World::new("cna").with(&["pod"]);
    let (host, pod, dir) = (&w.host, w.ns("pod"), &w.dir);
    let ng = Netguard::new(&w);
    let _agent = ng.start_agent();
    let plugins = plugin_dir(&dir.0, &["bridge", "host-local", "netguard"]);
    let runner = CniRunner::new(vec![plugins]).in_netns(host.path());
    let conflist = bridge_then_netguard(&w, "ngbr3", "198.18.24.0/24", &ng.socket, &ng.state_dir);
    let att = Attachment {
        container_id: "c0ffee04".into(),
        netns: Some(pod.path()),
        ifname: "eth0".into(),
        args: None,
    };
    let result = runner
        .add(&conflist, &att)
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    let row = ng
        .status_row(pod, "eth0")
        .unwrap_or_else(|| panic!("eth0 not guarded right after ADD: {}", ng.explain(&[pod])));
    assert_eq!(row["workload"]["container_id"], "c0ffee04", "{row}");
    runner
        .check(&conflist, &att, &result)
        .unwrap_or_else(|run| panic!("CHECK: {run:?}"));

    let absent = Attachment {
        container_id: "c0ffee05".into(),
        ifname: "eth7".into(),
        ..att.clone()
    };
    let run = runner.exec(
        "ADD",
        Some(&absent),
        &CniRunner::plugin_config(&conflist, 1, Some(&result)),
    );
    assert!(run.ok(), "fail-open: {run:?}");
    assert_eq!(run.json(), result);
    let text = ng.run_ok(&["status"]).stdout;
    assert!(
        text.contains("runtime calls that went wrong")
            && text.contains(&format!(
                "CNI ADD of {}-net/c0ffee05/eth7: eth7 in {} is not guarded",
                host.name,
                pod.path().display()
            )),
        "{text}\n{}",
        ng.log()
    );

    runner
        .del(&conflist, &att, Some(&result))
        .unwrap_or_else(|run| panic!("DEL: {run:?}"));
    assert!(
        ng.status_row(pod, "eth0").is_none(),
        "released by DEL: {}",
        ng.explain(&[pod])
    );
}

/// Field report 000 with a real runtime: a `--network none` container (annotated for netguard's
/// hooks) gets a veth attached from outside after it started, learned with `--container`; at
/// `podman restart` the OCI hooks re-attach it in the new netns before the container's command
/// runs, which then sees the veth with its address and pings the bridge, first thing. A
/// container without the annotation is not known: the hooks did not run for it.
#[test]
fn oci_hooks_reattach_a_learned_veth_before_the_container_restarts() {
    let world = PodmanWorld::new("pmo");
    let ng = Netguard::new(&world.world);
    let _agent = ng.start_agent();
    world.install_netguard_hooks(&ng.socket, &ng.state_dir);
    world.host().ip(&["link", "add", "ngbr3", "type", "bridge"]);
    world
        .host()
        .ip(&["addr", "add", "198.18.23.1/24", "dev", "ngbr3"]);
    world.host().ip(&["link", "set", "ngbr3", "up"]);

    // What the command sees first, at every start.
    let first_thing = "ip -4 addr show dev eth1 > /first 2>&1; \
                       ping -c1 -W2 198.18.23.1 >> /first 2>&1; echo rc=$? >> /first; sleep 600";
    let id = world.run_guarded("c3", "none", &["sh", "-c", first_thing]);
    // The hooks run only for annotated containers: one without is not known to netguard.
    let plain = world.run("c4", "none", &["sleep", "600"]);
    let unknown = ng.run(&["learn", "--container", &plain]);
    assert!(
        unknown.code() == Some(2)
            && unknown
                .stderr
                .contains(&format!("netguard knows no container {plain}"))
            && unknown.stderr.contains("io.netguard.guard=true"),
        "{unknown}"
    );
    let pid = world.podman_ok(&["inspect", "--format", "{{.State.Pid}}", "c3"]);
    let netns = format!("/proc/{pid}/ns/net");
    world.host().ip(&[
        "link", "add", "vc3h", "type", "veth", "peer", "name", "eth1", "netns", &pid,
    ]);
    world
        .host()
        .ip(&["link", "set", "vc3h", "master", "ngbr3", "up"]);
    let inside = |args: &[&str]| ip_in(&netns, args);
    inside(&["addr", "add", "198.18.23.2/24", "dev", "eth1"]);
    inside(&["link", "set", "eth1", "up"]);
    ng.run_ok(&["learn", "--netns", &netns, "--container", &id]);
    let before = world.exec("c3", &["cat", "/first"]);
    assert!(
        before.contains("rc=1"),
        "no veth at the first start: {before}"
    );

    world.podman_ok(&["restart", "--time", "0", "c3"]);
    let seen = world.exec("c3", &["cat", "/first"]);
    assert!(
        seen.contains("inet 198.18.23.2/24") && seen.contains("rc=0"),
        "the command's first look after restart: {seen}\n{}",
        ng.explain(&[])
    );
    let new_pid = world.podman_ok(&["inspect", "--format", "{{.State.Pid}}", "c3"]);
    assert_ne!(new_pid, pid);
    let rows = ng.status_json()["rows"].clone();
    let eth1 = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "eth1")
        .unwrap_or_else(|| panic!("eth1 not in status: {rows}"));
    assert_ne!(
        eth1["netns"],
        netns.as_str(),
        "status follows the new netns: {eth1}"
    );
    assert_eq!(eth1["workload"]["id"], id.as_str(), "{eth1}");

    // Stopped: its veth waits, nothing is created.
    world.podman_ok(&["stop", "--time", "0", "c3"]);
    let eth1 = |ng: &Netguard| {
        ng.status_json()["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "eth1")
            .cloned()
    };
    let stopped = eth1(&ng).unwrap_or_else(|| panic!("eth1 gone at stop: {}", ng.explain(&[])));
    assert_eq!(stopped["state"], "dormant", "{stopped}");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        eth1(&ng).unwrap()["state"],
        "dormant",
        "still waiting after a pass"
    );
    let links = world.host().ip_out(&["link", "show"]);
    assert!(
        !links.contains("vc3h"),
        "nothing created while stopped: {links}"
    );
    // Removed while stopped (no hook runs): released at the agent's next pass.
    world.podman_ok(&["rm", "c3"]);
    wait_until(
        "eth1 released once the container is removed",
        || eth1(&ng).is_none(),
        || ng.explain(&[]),
    );
}

/// Scenarios (b) and (e): a container's eth0 is a `macvlan` over a parent standing in for a
/// NIC (a veth in the test's host netns), netguard chained. The parent deleted and created
/// again with the same MAC -> eth0 is back in the container's netns with the same MAC,
/// address and routes, and the container's process never restarted; no learn. Then an
/// operator deletes eth0 inside the container's netns -> it is released, not re-created,
/// and status says why.
#[test]
fn a_podman_macvlan_follows_its_parent_and_stays_deleted_when_deleted_on_purpose() {
    let mut world = PodmanWorld::new("pmm");
    let ng = Netguard::new(&world.world);
    let _agent = ng.start_agent();
    let parent_mac = "02:00:00:00:27:01";
    let add_parent = |host: &netguard_tests::TestNetns| {
        host.ip(&[
            "link", "add", "nic0", "address", parent_mac, "type", "veth", "peer", "name", "nic0p",
        ]);
        host.ip(&["link", "set", "nic0p", "up"]);
        host.ip(&["link", "set", "nic0", "up"]);
    };
    add_parent(world.host());
    let net = world.network_name("mv");
    let macvlan = json!({
        "type": "macvlan", "master": "nic0", "mode": "bridge",
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": "198.18.27.0/24", "gateway": "198.18.27.1" }]],
            "routes": [{ "dst": "198.19.27.0/24" }],
            "dataDir": world.path("ipam").display().to_string(),
        }
    });
    let netguard = PodmanWorld::netguard_plugin(&ng.socket, &ng.state_dir);
    world.add_network(&net, vec![macvlan, netguard]);
    world.run("c1", &net, &["sleep", "600"]);
    let pid = world.podman_ok(&["inspect", "--format", "{{.State.Pid}}", "c1"]);
    let sandbox = world.sandbox("c1").display().to_string();
    let eth0 = |ng: &Netguard| {
        ng.status_json()["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "eth0" && r["netns"] == sandbox.as_str())
            .cloned()
    };
    let guarded = eth0(&ng).unwrap_or_else(|| panic!("eth0 not guarded: {}", ng.explain(&[])));
    assert_eq!(
        (guarded["kind"].as_str(), guarded["state"].as_str()),
        (Some("macvlan"), Some("intact")),
        "{guarded}"
    );
    let seen = |world: &PodmanWorld| {
        (
            world.exec("c1", &["cat", "/sys/class/net/eth0/address"]),
            // Without its ifindex (`N: eth0 inet ...`): a new device has a new one.
            world
                .exec("c1", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
                .split_once(": ")
                .map(|(_, addr)| addr.to_string())
                .unwrap_or_default(),
            world.exec("c1", &["ip", "route"]),
        )
    };
    let before = seen(&world);
    assert!(before.1.contains("198.18.27."), "{before:?}");
    assert!(before.2.contains("198.19.27.0/24"), "{before:?}");

    // (b) The NIC goes (a driver reload) and comes back with its MAC.
    world.host().ip(&["link", "del", "nic0"]);
    let has_eth0 =
        |world: &PodmanWorld| world.exec("c1", &["ls", "/sys/class/net"]).contains("eth0");
    wait_until(
        "eth0 gone with its parent",
        || !has_eth0(&world),
        || ng.explain(&[]),
    );
    add_parent(world.host());
    wait_until(
        "eth0 back once its parent is",
        || has_eth0(&world) && seen(&world).1.contains("198.18.27."),
        || ng.explain(&[]),
    );
    assert_eq!(seen(&world), before, "same MAC, address and routes");
    let now = world.podman_ok(&["inspect", "--format", "{{.State.Pid}}", "c1"]);
    assert_eq!(now, pid, "the container's process never restarted");
    assert_eq!(eth0(&ng).unwrap()["state"], "restored");

    // (e) An operator deletes it inside the container's netns.
    ip_in(&format!("/proc/{pid}/ns/net"), &["link", "del", "eth0"]);
    wait_until(
        "eth0 released",
        || eth0(&ng).is_some_and(|r| r["state"] == "released"),
        || ng.explain(&[]),
    );
    // Past the agent's wait for a cause, over several passes: still gone.
    std::thread::sleep(std::time::Duration::from_millis(4000));
    assert!(!has_eth0(&world), "re-created: {}", ng.explain(&[]));
    let row = eth0(&ng).unwrap();
    let reason = row["reason"].as_str().unwrap_or_default();
    assert_eq!(row["state"], "released", "{row}");
    // The netlink backend cannot name the process; what it knows is said.
    assert!(
        reason.starts_with("deleted by ") && reason.contains("netns and parent lived"),
        "{reason}"
    );
    let text = ng.run_ok(&["status"]).stdout;
    assert!(text.contains("released (deleted by a command"), "{text}");
}

/// The shim copied alone into a CNI bin dir (as `netguard install cni --copy` does from a
/// container), with no agent and no netguard to hand the call to: the pod still gets its
/// result, and stderr and `netguard status` say what is missing.
#[test]
fn a_lone_shim_with_no_agent_fails_open_and_says_why() {
    assert!(
        !Path::new("/usr/bin/netguard").exists(),
        "this test needs a machine without the netguard package installed"
    );
    let w = World::new("cns").with(&["pod"]);
    let (pod, dir) = (w.ns("pod"), &w.dir);
    let bin = dir.0.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(shim_bin(), bin.join("netguard")).unwrap();
    let runner = CniRunner::new(vec![bin.clone()]).in_netns(w.host.path());
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{ "name": "eth0", "sandbox": pod.path() }],
        "ips": [{ "address": "198.18.23.2/24", "interface": 0 }]
    });
    let state_dir = dir.0.join("state");
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": format!("{}-net", w.host.name),
        "plugins": [{
            "type": "netguard",
            "socket": dir.0.join("no-agent.sock").display().to_string(),
            "stateDir": state_dir.display().to_string(),
        }]
    });
    let att = Attachment {
        container_id: "c0ffee02".into(),
        netns: Some(pod.path()),
        ifname: "eth0".into(),
        args: None,
    };
    let run = runner.exec(
        "ADD",
        Some(&att),
        &CniRunner::plugin_config(&conflist, 0, Some(&prev)),
    );
    assert!(run.ok(), "fail-open: {run:?}");
    assert_eq!(run.json(), prev);
    assert!(
        run.stderr.contains("not guarded")
            && run.stderr.contains(&format!(
                "no netguard binary is beside {}",
                std::fs::canonicalize(bin.join("netguard"))
                    .unwrap()
                    .display()
            )),
        "{}",
        run.stderr
    );
    let status = Command::new(netguard_bin())
        .args(["status", "--state-dir"])
        .arg(&state_dir)
        .args(["--socket"])
        .arg(dir.0.join("no-agent.sock"))
        .arg("--host-netns")
        .arg(w.host.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("runtime calls that went wrong")
            && text.contains(&format!(
                "CNI ADD of {}-net/c0ffee02/eth0: no agent answers, and no netguard binary",
                w.host.name
            )),
        "{text}"
    );
}
