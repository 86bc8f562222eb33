//! Host tests against real container runtimes: Debian's podman with runc and the CNI backend,
//! Debian's CNI plugins, each test in its own private podman world inside a test netns (see
//! `netguard_tests::podman`). Addresses stay in 198.18.0.0/15.

use netguard_tests::podman::PodmanWorld;
use netguard_tests::skip_unless_root;

/// The harness itself: a busybox container on a bridge + host-local network gets its address
/// inside the test netns, and `podman restart` gives it a new netns under the same ID.
#[test]
fn podman_runs_a_container_on_a_bridge_inside_the_test_netns() {
    if skip_unless_root() {
        return;
    }
    let mut world = PodmanWorld::new("pmh");
    let net = world.network_name("br");
    let bridge = world.bridge_plugin("ngbr0", "198.18.20.0/24");
    world.add_network(&net, vec![bridge]);

    let id = world.run("c1", &net, &["sleep", "600"]);
    let first = world.sandbox("c1");
    let addr = world.exec("c1", &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 198.18.20."), "eth0 in the container: {addr}");
    // The bridge is in the test netns, not the host's.
    let bridge = world.netns.ip_json(&["link", "show", "dev", "ngbr0"]);
    assert_eq!(bridge[0]["ifname"], "ngbr0");
    assert!(first.starts_with("/run/netns/"), "{}", first.display());

    world.podman_ok(&["restart", "--time", "0", "c1"]);
    let second = world.sandbox("c1");
    assert_ne!(first, second, "a restart makes a new netns");
    assert_eq!(world.id("c1"), id, "same container ID after a restart");
    assert!(!first.exists(), "the old netns {} is gone", first.display());
    let addr = world.exec("c1", &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("inet 198.18.20."), "eth0 after restart: {addr}");
}
