//! Host tests of the tracer (netlink backend), each in namespaces it creates.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use netguard::event::{Cause, Event, EventKind};
use netguard::trace::{BackendChoice, BackendKind};
use netguard_tests::{is_at, netguard_bin, EventWatch, World, EVENT_TIMEOUT};

const NETLINK: BackendChoice = BackendChoice::Only(BackendKind::Netlink);

fn kind_is(kind: EventKind) -> impl Fn(&Event) -> bool {
    move |e| e.kind == kind
}

/// The register of `name` in the netns with that inode.
fn registered(name: &'static str, netns: u64) -> impl Fn(&Event) -> bool {
    move |e| e.kind == EventKind::Register && is_at(&e.to, name, netns)
}

/// The unregister of `name` from the netns with that inode.
fn unregistered(name: &str, netns: u64) -> impl Fn(&Event) -> bool + '_ {
    move |e| e.kind == EventKind::Unregister && is_at(&e.from, name, netns)
}

#[tokio::test]
async fn a_move_between_namespaces_is_one_event_with_the_key_of_its_register() {
    let w = World::new("mv").with(&["a", "b"]);
    let (a, b) = (w.ns("a"), w.ns("b"));
    let mut watch = EventWatch::start(NETLINK, &w).await;

    a.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"]);
    let register = watch
        .expect("register of vb in A", registered("vb", a.inode()))
        .await;
    assert_eq!(register.link_kind.as_deref(), Some("veth"));
    let ifindex = register.to.as_ref().and_then(|p| p.ifindex);
    assert!(ifindex.is_some(), "{register:?}");

    a.ip(&["link", "set", "vb", "netns", &b.name]);
    let moved = watch.expect("move of vb", kind_is(EventKind::Move)).await;
    assert!(is_at(&moved.from, "vb", a.inode()), "{moved:?}");
    assert!(is_at(&moved.to, "vb", b.inode()), "{moved:?}");
    assert_eq!(moved.from.as_ref().unwrap().ifindex, ifindex);
    assert_eq!(
        moved.device, register.device,
        "the move carries the key of the register"
    );
    assert_eq!(moved.cause, Cause::Explicit);
    let a_names = &moved.from.as_ref().unwrap().netns.names;
    assert!(
        a_names.contains(&a.path().display().to_string()),
        "{a_names:?}"
    );
}

#[tokio::test]
async fn a_netns_made_after_the_start_is_watched_at_once() {
    let mut w = World::new("late");
    let mut watch = EventWatch::start(NETLINK, &w).await;
    // Nothing in it reaches the host: only looking at the new bind mount finds it (the full
    // rescan of every netns runs only every 30 s).
    let late = w.add("n");
    watch.also(late);
    late.ip(&["link", "add", "l0", "type", "veth", "peer", "name", "l1"]);
    let register = watch
        .expect(
            "register of l0 in the new netns",
            registered("l0", late.inode()),
        )
        .await;
    assert_eq!(register.link_kind.as_deref(), Some("veth"));
}

#[tokio::test]
async fn a_rename_inside_a_netns_says_old_and_new_name() {
    let w = World::new("rn").with(&["a"]);
    let a = w.ns("a");
    let mut watch = EventWatch::start(NETLINK, &w).await;

    a.ip(&["link", "add", "r0", "type", "veth", "peer", "name", "r1"]);
    let register = watch
        .expect("register of r0", registered("r0", a.inode()))
        .await;
    a.ip(&["link", "set", "r0", "name", "r0new"]);
    let rename = watch
        .expect("rename of r0", kind_is(EventKind::Rename))
        .await;
    assert!(is_at(&rename.from, "r0", a.inode()), "{rename:?}");
    assert!(is_at(&rename.to, "r0new", a.inode()), "{rename:?}");
    assert_eq!(rename.device, register.device);
    assert_eq!(
        rename.from.as_ref().unwrap().ifindex,
        register.to.as_ref().unwrap().ifindex
    );
}

#[tokio::test]
async fn a_port_joining_and_leaving_a_bridge_is_neither_registered_nor_unregistered() {
    let w = World::new("br").with(&["a"]);
    let a = w.ns("a");
    let mut watch = EventWatch::start(NETLINK, &w).await;

    a.ip(&["link", "add", "br0", "type", "bridge"]);
    a.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    let register = watch
        .expect("register of p0", registered("p0", a.inode()))
        .await;
    a.ip(&["link", "set", "p0", "master", "br0"]);
    a.ip(&["link", "set", "p0", "nomaster"]);
    // A rename is surely reported: whatever was said of p0 before it comes first.
    a.ip(&["link", "set", "p0", "name", "p0x"]);
    let next = watch
        .expect("the next event about p0", |e| {
            is_at(&e.from, "p0", a.inode()) || is_at(&e.to, "p0", a.inode())
        })
        .await;
    assert_eq!(next.kind, EventKind::Rename, "{next:?}");
    assert_eq!(next.device, register.device, "{next:?}");
}

#[tokio::test]
async fn deleted_veths_and_veths_of_a_deleted_netns_are_unregistered() {
    let w = World::new("un").with(&["a", "b"]);
    let (a, b) = (w.ns("a"), w.ns("b"));
    let (a_inode, b_inode) = (a.inode(), b.inode());
    let mut watch = EventWatch::start(NETLINK, &w).await;

    // An explicit delete takes both ends.
    a.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    a.ip(&["link", "del", "d0"]);
    for end in ["d0", "d1"] {
        let gone = watch
            .expect(&format!("unregister of {end}"), unregistered(end, a_inode))
            .await;
        assert_eq!(gone.netns_dying, Some(false), "{gone:?}");
        assert_eq!(gone.link_kind.as_deref(), Some("veth"));
    }

    // A veth across A and B; B dies with its end, which takes A's end along.
    a.ip(&[
        "link", "add", "e0", "type", "veth", "peer", "name", "e1", "netns", &b.name,
    ]);
    watch
        .expect("register of e1 in B", registered("e1", b_inode))
        .await;
    b.delete();
    let begin = watch
        .expect("teardown-begin of B", kind_is(EventKind::TeardownBegin))
        .await;
    assert_eq!(begin.from.as_ref().unwrap().netns.inode, b_inode);
    let dead = watch
        .expect("unregister of e1 in B", unregistered("e1", b_inode))
        .await;
    assert_eq!(
        (dead.netns_dying, dead.cause),
        (Some(true), Cause::NetnsTeardown),
        "{dead:?}"
    );
    let peer = watch
        .expect("unregister of e0 in A", unregistered("e0", a_inode))
        .await;
    assert_eq!(
        (peer.netns_dying, peer.cause),
        (Some(false), Cause::NetnsTeardown),
        "{peer:?}"
    );
}

#[tokio::test]
async fn auto_falls_back_to_netlink_and_says_why() {
    let w = World::new("au").with(&["a"]);
    let a = w.ns("a");
    let mut watch = EventWatch::start(BackendChoice::Auto, &w).await;
    assert_eq!(watch.tracer.backend, BackendKind::Netlink);
    for backend in [BackendKind::Fentry, BackendKind::Kprobe] {
        let skipped = watch
            .tracer
            .unavailable
            .iter()
            .find(|u| u.backend == backend);
        assert!(
            skipped.is_some_and(|u| !u.reason.is_empty()),
            "{backend} missing from {:?}",
            watch.tracer.unavailable
        );
    }
    // And it traces.
    a.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u1"]);
    watch
        .expect("register of u0", registered("u0", a.inode()))
        .await;
}

#[test]
fn the_trace_command_prints_a_move_as_json() {
    let w = World::new("cmd").with(&["a", "b"]);
    let (a, b) = (w.ns("a"), w.ns("b"));
    a.ip(&["link", "add", "c0", "type", "veth", "peer", "name", "c1"]);
    let bin = netguard_bin();
    let host_path = w.host.path();
    let mut child = Command::new(&bin)
        .args([
            "trace",
            "--backend",
            "netlink",
            "--json",
            "--duration",
            "3",
            "--host-netns",
        ])
        .arg(&host_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("run {}: {err}", bin.display()));
    let (lines, stderr_lines) = mpsc::channel();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut stderr_seen = Vec::new();
    while !stderr_seen
        .iter()
        .any(|l: &String| l.contains("tracing with"))
    {
        match stderr_lines.recv_timeout(EVENT_TIMEOUT * 2) {
            Ok(line) => stderr_seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "netguard trace did not start; stderr:\n{}",
                    stderr_seen.join("\n")
                );
            }
        }
    }
    a.ip(&["link", "set", "c1", "netns", &b.name]);
    let output = child.wait_with_output().expect("wait for netguard trace");
    reader.join().unwrap();
    stderr_seen.extend(stderr_lines.try_iter());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {}; stderr:\n{}",
        output.status,
        stderr_seen.join("\n")
    );
    assert!(
        stderr_seen
            .iter()
            .any(|l| l == "netguard: tracing with the netlink backend"),
        "stderr does not name the backend:\n{}",
        stderr_seen.join("\n")
    );
    let events: Vec<Event> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not an event ({err}): {line}"))
        })
        .collect();
    let moved = events
        .iter()
        .find(|e| e.kind == EventKind::Move && is_at(&e.from, "c1", a.inode()));
    let moved = moved.unwrap_or_else(|| panic!("no move of c1 from A in:\n{stdout}"));
    assert!(is_at(&moved.to, "c1", b.inode()), "{moved:?}");
}
