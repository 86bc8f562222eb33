//! Host tests of the tracer's causes on its netlink backend (this host has no kprobes or
//! fentry): a macvlan in a pod netns goes with its veth parent (parent-gone), a macvlan
//! deleted by itself is explicit. Each test in namespaces it creates.

use netguard::event::{Cause, Event, EventKind};
use netguard::trace::{BackendChoice, BackendKind};
use netguard_tests::{is_at, EventWatch, World};

const NETLINK: BackendChoice = BackendChoice::Only(BackendKind::Netlink);

fn unregister_of(name: &'static str, netns: u64) -> impl Fn(&Event) -> bool {
    move |e| e.kind == EventKind::Unregister && is_at(&e.from, name, netns)
}

#[tokio::test]
async fn a_macvlan_goes_with_its_veth_parent_and_an_explicit_delete_is_explicit() {
    // The veth and macvlans start in `lan` (a container netns: the watch counts those).
    let w = World::new("cz").with(&["lan", "pod"]);
    let (lan, pod) = (w.ns("lan"), w.ns("pod"));
    let mut watch = EventWatch::start(NETLINK, &w).await;

    lan.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    lan.ip(&[
        "link", "add", "link", "v0", "name", "mv0", "type", "macvlan", "mode", "bridge",
    ]);
    lan.ip(&[
        "link", "add", "link", "v0", "name", "mv1", "type", "macvlan", "mode", "bridge",
    ]);
    lan.ip(&["link", "set", "mv0", "netns", &pod.name]);
    let v0 = watch
        .expect("register of v0", |e| {
            e.kind == EventKind::Register && is_at(&e.to, "v0", lan.inode())
        })
        .await;
    watch
        .expect("mv0 in the pod", |e| {
            e.kind == EventKind::Move && is_at(&e.to, "mv0", pod.inode())
        })
        .await;

    lan.ip(&["link", "del", "mv1"]);
    let deleted = watch
        .expect("unregister of mv1", unregister_of("mv1", lan.inode()))
        .await;
    assert_eq!(
        (deleted.cause, deleted.parent.clone()),
        (Cause::Explicit, None),
        "{deleted:?}"
    );

    lan.ip(&["link", "del", "v0"]);
    let gone = watch
        .expect(
            "unregister of the pod's mv0",
            unregister_of("mv0", pod.inode()),
        )
        .await;
    assert_eq!(gone.cause, Cause::ParentGone, "{gone:?}");
    assert_eq!(gone.link_kind.as_deref(), Some("macvlan"));
    let parent = gone.parent.as_ref().expect("parent named");
    assert_eq!(parent.name.as_deref(), Some("v0"));
    assert_eq!(parent.ifindex, v0.to.as_ref().and_then(|p| p.ifindex));
    assert_eq!(parent.device, v0.device, "the parent's own device key");
    // The veth itself was deleted by request.
    let v0_gone = watch
        .expect("unregister of v0", unregister_of("v0", lan.inode()))
        .await;
    assert_eq!(v0_gone.cause, Cause::Explicit, "{v0_gone:?}");
}
