//! `learn --container` and `lend --container` name a container netguard knows from its OCI
//! hooks, by a unique prefix of its ID. The test stands in for the runtime: processes in netns
//! of their own are the containers, and it calls the hook as the installed hook files do
//! (`netguard-shim oci-hook`) with the OCI state on stdin as runc would, against an agent
//! whose host is the test's netns.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netguard_tests::{shim_bin, Netguard, World};
use serde_json::json;

const A: &str = "aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111";
const B: &str = "aaaa2222aaaa2222aaaa2222aaaa2222aaaa2222aaaa2222aaaa2222aaaa2222";

/// A process in a netns of its own, killed on drop.
struct Container(Child);

impl Container {
    fn start() -> Container {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("unshare --net sleep");
        let netns = format!("/proc/{}/ns/net", child.id());
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let started = Instant::now();
        // unshare execs sleep once its netns is made.
        while std::fs::read_link(&netns).is_ok_and(|ns| ns == own) {
            assert!(started.elapsed() < Duration::from_secs(5), "unshare hangs");
            std::thread::sleep(Duration::from_millis(10));
        }
        Container(child)
    }

    fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `netguard-shim oci-hook --stage STAGE` as a runtime runs it; its stderr.
fn hook(ng: &Netguard, stage: &str, id: &str, pid: Option<u32>, bundle: &Path) -> String {
    let mut state = json!({
        "ociVersion": "1.0.2", "id": id, "status": "created",
        "bundle": bundle, "annotations": { "io.container.manager": "libpod" },
    });
    if let Some(pid) = pid {
        state["pid"] = json!(pid);
    }
    // The runtime runs its hooks in its own netns: the agent's host.
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ng.host_netns.display()))
        .arg(shim_bin())
        .args(["oci-hook", "--stage", stage, "--socket"])
        .arg(&ng.socket)
        .arg("--state-dir")
        .arg(&ng.state_dir)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run the hook");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(state.to_string().as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the hook always exits 0: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The status row of the guarded `eth1`.
fn eth1_row(ng: &Netguard) -> serde_json::Value {
    let status = ng.status_json();
    status["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "eth1")
        .cloned()
        .unwrap_or_else(|| panic!("eth1 not guarded: {status}"))
}

#[test]
fn learn_and_lend_name_a_known_container_by_a_unique_prefix_of_its_id() {
    let w = World::new("oci");
    let ng = Netguard::new(&w);
    let _agent = ng.start_agent();
    let bundle = w.dir.0.join("bundle");
    std::fs::create_dir(&bundle).unwrap();

    // Not seen by the hooks yet: the error names the hook and where it goes.
    let unknown = ng.run(&["learn", "--container", "aaaa1111"]);
    assert_eq!(unknown.code(), Some(2), "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("netguard knows no container aaaa1111")
            && unknown.stderr.contains("`netguard install oci-hooks`")
            && unknown.stderr.contains("/usr/share/containers/oci/hooks.d"),
        "{unknown}"
    );
    let unknown = ng.run(&["lend", "eth9", "--container", "aaaa1111"]);
    assert!(
        unknown.stderr.contains("netguard knows no container"),
        "{unknown}"
    );

    let (a, b) = (Container::start(), Container::start());
    for (id, c) in [(A, &a), (B, &b)] {
        let said = hook(&ng, "createRuntime", id, Some(c.0.id()), &bundle);
        assert!(!said.contains("WARN"), "createRuntime of {id}: {said}");
    }
    // A veth whose peer is inside container A, as a neutron-like tool attaches it.
    w.host.ip(&[
        "link",
        "add",
        "vah",
        "type",
        "veth",
        "peer",
        "name",
        "eth1",
        "netns",
        &a.0.id().to_string(),
    ]);

    let ambiguous = ng.run(&["learn", "--container", "aaaa"]);
    assert!(
        ambiguous.stderr.contains(&format!(
            "aaaa is the start of several containers' IDs (podman {A}, podman {B})"
        )),
        "{ambiguous}"
    );
    // No --netns: the one container A runs in.
    let learned = ng.run_ok(&["learn", "--container", "aaaa1"]);
    assert!(
        learned.stdout.contains("podman container aaaa1111aaaa"),
        "{learned}"
    );
    let eth1 = eth1_row(&ng);
    assert_eq!(eth1["netns"], a.netns().as_str(), "{eth1}");
    assert_eq!(eth1["workload"]["id"], A, "bound by its full ID: {eth1}");
    assert_eq!(eth1["workload"]["runtime"], "podman", "{eth1}");

    // B is found (the error is about the device, past the container).
    let lend = ng.run(&["lend", "vah", "--container", "aaaa2", "--name", "eth0"]);
    assert!(
        lend.stderr
            .contains("vah is a veth link: netguard lends physical NICs only"),
        "{lend}"
    );
    // Stopped: no netns to lend into.
    drop(b);
    let said = hook(&ng, "poststop", B, None, &bundle);
    assert!(!said.contains("WARN"), "poststop: {said}");
    let stopped = ng.run(&["lend", "vah", "--container", "aaaa2"]);
    assert!(
        stopped
            .stderr
            .contains(&format!("container {B} is stopped")),
        "{stopped}"
    );
    let clash = ng.run(&["lend", "vah", "--container", "aaaa2", "--persistent"]);
    assert_eq!(
        clash.code(),
        Some(2),
        "--persistent is for --netns: {clash}"
    );
}

/// `--observe-only` holds for a container's start too: the createRuntime hook records the new
/// netns, and the veth it would re-create there is only planned and said.
#[test]
fn an_observe_only_agent_re_attaches_nothing_at_a_container_start() {
    let w = World::new("ocio");
    let ng = Netguard::new(&w);
    let bundle = w.dir.0.join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let agent = ng.start_agent();
    let first = Container::start();
    hook(&ng, "createRuntime", A, Some(first.0.id()), &bundle);
    let pid = first.0.id().to_string();
    w.host.ip(&[
        "link", "add", "vah", "type", "veth", "peer", "name", "eth1", "netns", &pid,
    ]);
    ng.run_ok(&["learn", "--container", "aaaa1"]);
    assert!(agent.stop().success());
    // The container stops (its netns and the veth with it) and starts again, now under an
    // agent that only observes.
    drop(first);
    hook(&ng, "poststop", A, None, &bundle);
    let _agent = ng.start_agent_with(&["--observe-only"]);
    let again = Container::start();
    let said = hook(&ng, "createRuntime", A, Some(again.0.id()), &bundle);

    let inside = Command::new("nsenter")
        .arg(format!("--net={}", again.netns()))
        .args(["ip", "-o", "link"])
        .output()
        .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        !inside.contains("eth1"),
        "re-created while observing: {inside}\n{said}"
    );
    assert!(
        !w.host.ip_out(&["-o", "link"]).contains("vah"),
        "host side re-created while observing\n{said}"
    );
    let eth1 = eth1_row(&ng);
    assert_eq!(
        eth1["netns"],
        again.netns().as_str(),
        "follows the new netns: {eth1}"
    );
    assert!(
        eth1["reason"]
            .as_str()
            .is_some_and(|r| r.contains("observe-only: not done")),
        "status says why: {eth1}\n{said}"
    );
}

/// A hook call that cannot do its work (no pid at createRuntime: a runtime bug or a hook file
/// at the wrong stage; the socket of an agent keeping another ledger) exits 0, and `status`
/// lists it: the runtime keeps no hook stderr.
#[test]
fn a_hook_that_could_do_nothing_is_listed_by_status() {
    let w = World::new("och");
    let ng = Netguard::new(&w);
    let _agent = ng.start_agent();
    let stderr = hook(&ng, "createRuntime", A, None, &w.dir.0);
    assert!(stderr.contains("has no pid"), "{stderr}");
    let text = ng.run_ok(&["status"]).stdout;
    assert!(
        text.contains("runtime calls that went wrong")
            && text.contains("hook createRuntime: the OCI state at createRuntime has no pid"),
        "{text}"
    );
    let json = ng.status_json();
    assert_eq!(
        json["runtime_failures"][0]["call"], "hook createRuntime",
        "{json}"
    );

    // A hook file naming this agent's socket but another ledger: the agent refuses, in the
    // one round trip of the call; the failure is noted where that hook means.
    let mut elsewhere = Netguard::new(&w);
    elsewhere.state_dir = w.dir.0.join("other-ledger");
    let container = Container::start();
    let stderr = hook(
        &elsewhere,
        "createRuntime",
        B,
        Some(container.0.id()),
        &w.dir.0,
    );
    assert!(
        stderr.contains("is not the one this command means"),
        "{stderr}"
    );
    elsewhere.socket = w.dir.0.join("no-agent.sock");
    let text = elsewhere.run_ok(&["status"]).stdout;
    assert!(
        text.contains(&format!(
            "hook CreateRuntime of {B}: the agent answering on"
        )) && text.contains("is not the one this command means"),
        "{text}"
    );
    // The agent's ledger (document and journal) never heard of the container.
    for file in std::fs::read_dir(&ng.state_dir).unwrap().flatten() {
        let name = file.file_name().to_string_lossy().into_owned();
        if name.starts_with("state") || name.starts_with("journal") {
            let text = std::fs::read_to_string(file.path()).unwrap_or_default();
            assert!(!text.contains(B), "{name} records {B}");
        }
    }
    // ... which the same call through the right ledger does.
    hook(&ng, "createRuntime", B, Some(container.0.id()), &w.dir.0);
    let journal = std::fs::read_to_string(ng.state_dir.join("journal.jsonl")).unwrap();
    assert!(journal.contains(B), "{journal}");
}
