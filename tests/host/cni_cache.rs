//! Host tests of the agent following libcni's result cache: the suite's CNI runner runs
//! Debian's real plugins (bridge + host-local, tuning, bandwidth) for a netns the test made and
//! keeps its cache in the test's own directory (never the host's `/var/lib/cni`); the agent
//! is told `--cni-cache` that directory and guards what it records, with no learn.

use std::time::Duration;

use netguard_tests::cni::{bridge_network, plugin_dir, Attachment, CniRunner};
use netguard_tests::{has_addr, link, wait_until, Netguard, TestNetns, World};
use serde_json::{json, Value};

/// A bridge network in the test's host stand-in, with `tuning` (a sysctl) and `bandwidth`
/// (an ingress rate) after it: what those two set up netguard cannot re-create.
fn conflist(w: &World, bridge: &str, subnet: &str) -> Value {
    bridge_network(
        w,
        bridge,
        subnet,
        &[
            json!({ "type": "tuning", "sysctl": { "net.ipv4.conf.eth0.arp_notify": "1" } }),
            json!({ "type": "bandwidth", "ingressRate": 8000000, "ingressBurst": 1000000 }),
        ],
    )
}

fn row(ng: &Netguard, netns: &TestNetns) -> Option<Value> {
    ng.status_row(netns, "eth0")
}

/// A cache entry written by a real ADD -> guarded with no learn, with what the chain's other
/// plugins did listed as not re-created; the netns re-created -> eth0 back with its MAC and
/// address; the cache file removed (libcni's DEL) -> released, nothing restored afterwards.
#[test]
fn the_agent_guards_what_libcni_s_cache_records() {
    let w = World::new("cca").with(&["pod"]);
    let pod = w.ns("pod");
    let ng = Netguard::new(&w);
    let cache = w.dir.0.join("results");
    std::fs::create_dir(&cache).unwrap();
    let _agent = ng.start_agent_with(&["--cni-cache", &cache.display().to_string()]);
    let plugins = plugin_dir(&w.dir.0, &["bridge", "host-local", "tuning", "bandwidth"]);
    let runner = CniRunner::new(vec![plugins])
        .in_netns(w.host.path())
        .with_cache(cache.clone());
    let net = conflist(&w, "ngbr5", "198.18.25.0/24");
    let att = Attachment {
        container_id: "cafe0001".into(),
        netns: Some(pod.path()),
        ifname: "eth0".into(),
        args: None,
    };
    runner
        .add(&net, &att)
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    let file = runner.cache_file(&net, &att).unwrap();
    assert!(file.exists(), "the runner keeps libcni's cache");

    wait_until(
        "eth0 guarded from the cache",
        || row(&ng, pod).is_some(),
        || ng.explain(&[pod]),
    );
    let guarded = row(&ng, pod).unwrap();
    assert_eq!(guarded["kind"], "veth", "{guarded}");
    assert_eq!(
        guarded["workload"],
        json!({ "kind": "cni-attachment", "network": net["name"], "container_id": "cafe0001",
                "ifname": "eth0" })
    );
    assert_eq!(
        guarded["cannot_restore"],
        json!([
            "sysctls of the tuning plugin (net.ipv4.conf.eth0.arp_notify)",
            "tc qdiscs of the bandwidth plugin (rate limits)"
        ]),
        "{guarded}"
    );
    let text = ng.run_ok(&["status"]).stdout;
    assert!(
        text.contains("not re-created by netguard: tc qdiscs of the bandwidth plugin"),
        "{text}"
    );
    let mac = link(pod, "eth0")["address"].clone();
    let addr = pod.ip_json(&["-4", "addr", "show", "dev", "eth0"])[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap_or_else(|| panic!("eth0 has no address: {}", ng.explain(&[pod])))
        .to_string();
    assert!(addr.starts_with("198.18.25."), "{addr}");

    pod.recreate();
    wait_until(
        "eth0 back in the re-created netns",
        || pod.ip_out(&["link", "show"]).contains("eth0"),
        || ng.explain(&[pod]),
    );
    assert_eq!(link(pod, "eth0")["address"], mac);
    wait_until(
        "its address back",
        || has_addr(pod, "eth0", &addr, 24),
        || ng.explain(&[pod]),
    );

    std::fs::remove_file(&file).unwrap();
    wait_until(
        "released once its cache file is gone",
        || row(&ng, pod).is_none(),
        || ng.explain(&[pod]),
    );
    pod.recreate();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !pod.ip_out(&["link", "show"]).contains("eth0"),
        "nothing restored after the release: {}",
        ng.explain(&[pod])
    );
}

/// With `K8S_POD_UID` the pod's interface is one workload across sandboxes: libcni's DEL of
/// the first sandbox (its cache file goes) and the ADD of the next -> the new sandbox is
/// guarded with the first one in its history; a cache file whose netns is gone (a failed
/// DEL leaves one behind) is over, not guarded.
#[test]
fn a_pods_next_sandbox_continues_its_history() {
    let w = World::new("ccp").with(&["sb1", "sb2", "stale"]);
    let (sb1, sb2, stale) = (w.ns("sb1"), w.ns("sb2"), w.ns("stale"));
    let ng = Netguard::new(&w);
    let cache = w.dir.0.join("results");
    std::fs::create_dir(&cache).unwrap();
    let _agent = ng.start_agent_with(&["--cni-cache", &cache.display().to_string()]);
    let runner = CniRunner::new(vec![plugin_dir(&w.dir.0, &["bridge", "host-local"])])
        .in_netns(w.host.path())
        .with_cache(cache.clone());
    let mut net = conflist(&w, "ngbr6", "198.18.26.0/24");
    net["plugins"].as_array_mut().unwrap().truncate(1);
    let sandbox = |id: &str, ns: &TestNetns| Attachment {
        container_id: id.into(),
        netns: Some(ns.path()),
        ifname: "eth0".into(),
        args: Some("IgnoreUnknown=1;K8S_POD_NAMESPACE=t;K8S_POD_NAME=p;K8S_POD_UID=7d1e".into()),
    };

    let first = sandbox("sandbox1", sb1);
    let result = runner
        .add(&net, &first)
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    wait_until(
        "the first sandbox guarded",
        || row(&ng, sb1).is_some(),
        || ng.explain(&[sb1]),
    );
    assert_eq!(row(&ng, sb1).unwrap()["workload"]["pod_uid"], "7d1e");
    runner
        .del(&net, &first, Some(&result))
        .unwrap_or_else(|run| panic!("DEL: {run:?}"));
    wait_until(
        "the first sandbox released",
        || row(&ng, sb1).is_some_and(|r| r["state"] == "released"),
        || ng.explain(&[sb1]),
    );

    runner
        .add(&net, &sandbox("sandbox2", sb2))
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    wait_until(
        "the next sandbox guarded",
        || row(&ng, sb2).is_some(),
        || ng.explain(&[sb2]),
    );
    let now = row(&ng, sb2).unwrap();
    assert_eq!(now["state"], "intact", "{now}");
    let history = now["history"].as_array().cloned().unwrap_or_default();
    assert!(
        history.len() == 1
            && history[0]
                .as_str()
                .unwrap()
                .starts_with(&format!("sandbox sandbox1 in {}", sb1.path().display())),
        "{now}"
    );
    assert!(
        row(&ng, sb1).is_none(),
        "the first sandbox is history, not a row"
    );
    let text = ng.run_ok(&["status"]).stdout;
    assert!(text.contains("earlier: sandbox sandbox1"), "{text}");

    // A file left behind by a failed DEL, seen after its netns went: not guarded.
    let staging = w.dir.0.join("staging");
    let elsewhere = CniRunner::new(runner.plugin_dirs.clone())
        .in_netns(w.host.path())
        .with_cache(staging);
    let left = Attachment {
        args: None,
        ..sandbox("sandbox0", stale)
    };
    elsewhere
        .add(&net, &left)
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    stale.delete();
    let file = elsewhere.cache_file(&net, &left).unwrap();
    std::fs::copy(&file, cache.join(file.file_name().unwrap())).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let rows = ng.status_json()["rows"].clone();
    assert!(
        !rows.to_string().contains("sandbox0"),
        "a cache file whose netns is gone is over: {rows}"
    );
    assert_eq!(row(&ng, sb2).unwrap()["state"], "intact");
}

/// An attachment deleted while no agent ran (libcni's DEL removed its cache file; the pod's
/// netns lives on): the next agent releases it and says why, and re-creates nothing.
#[test]
fn a_cache_file_removed_while_no_agent_ran_is_a_release() {
    let w = World::new("ccw").with(&["pod"]);
    let pod = w.ns("pod");
    let ng = Netguard::new(&w);
    let cache = w.dir.0.join("results");
    std::fs::create_dir(&cache).unwrap();
    let cache_flag = ["--cni-cache", cache.to_str().unwrap()];
    let agent = ng.start_agent_with(&cache_flag);
    let runner = CniRunner::new(vec![plugin_dir(&w.dir.0, &["bridge", "host-local"])])
        .in_netns(w.host.path())
        .with_cache(cache.clone());
    let mut net = conflist(&w, "ngbr7", "198.18.27.0/24");
    net["plugins"].as_array_mut().unwrap().truncate(1);
    let att = Attachment {
        container_id: "cafe0003".into(),
        netns: Some(pod.path()),
        ifname: "eth0".into(),
        args: Some("IgnoreUnknown=1;K8S_POD_UID=5c2b".into()),
    };
    let result = runner
        .add(&net, &att)
        .unwrap_or_else(|run| panic!("ADD: {run:?}"));
    let file = runner.cache_file(&net, &att).unwrap();
    wait_until(
        "eth0 guarded from the cache",
        || row(&ng, pod).is_some_and(|r| r["state"] == "intact"),
        || ng.explain(&[pod]),
    );

    agent.stop();
    runner
        .del(&net, &att, Some(&result))
        .unwrap_or_else(|run| panic!("DEL: {run:?}"));
    assert!(!file.exists(), "libcni's DEL removes the cache file");
    assert!(!pod.ip_out(&["link", "show"]).contains("eth0"));

    let _agent = ng.start_agent_with(&cache_flag);
    wait_until(
        "released by the next agent",
        || row(&ng, pod).is_some_and(|r| r["state"] == "released"),
        || ng.explain(&[pod]),
    );
    let released = row(&ng, pod).unwrap();
    assert_eq!(
        released["reason"],
        format!(
            "libcni cache: {} was removed while no agent ran",
            file.display()
        ),
        "{released}"
    );
    // Two passes later eth0 is still gone.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !pod.ip_out(&["link", "show"]).contains("eth0"),
        "nothing re-created: {}",
        ng.explain(&[pod])
    );
}
