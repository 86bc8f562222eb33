use super::*;
use crate::inventory::{LiveAddr, LiveRoute};
use crate::ledger::testutil::sample_content;
use crate::ledger::NicLocation;
use crate::model::{KindSpec, RouteSpec};

const C1: u64 = 4026532118;

fn live(ifindex: u32, name: &str, kind: Option<&str>) -> LiveLink {
    LiveLink {
        ifindex,
        name: name.into(),
        kind: kind.map(str::to_string),
        mac: None,
        perm_mac: None,
        mtu: Some(1500),
        up: true,
        master: None,
        link: None,
        link_netnsid: None,
        vlan: None,
        macvlan_mode: None,
        bus: None,
        bus_kind: None,
    }
}

fn nic(ifindex: u32, name: &str, perm: &str) -> LiveLink {
    LiveLink {
        perm_mac: Some(perm.parse().unwrap()),
        bus: Some("0000:00:03.0".into()),
        ..live(ifindex, name, None)
    }
}

fn veth_only(content: &mut LedgerContent) {
    content.nics.clear();
    content.links.retain(|_, l| l.spec.kind.name() == "veth");
}

fn c1() -> Locator {
    Locator::Path("/run/netns/c1".into())
}

/// Host with bridge br0 and the veth's host side vc1 in it; c1 with eth0 configured.
fn healthy_veth_world() -> World {
    let mut br = live(3, "br0", Some("bridge"));
    br.mac = Some("02:00:00:00:00:aa".parse().unwrap());
    let vc1 = LiveLink {
        master: Some(3),
        link: Some(2),
        mac: Some("02:00:00:00:00:02".parse().unwrap()),
        ..live(10, "vc1", Some("veth"))
    };
    let host = NetnsInventory::new(1, vec![live(1, "lo", None), br, vc1], vec![], vec![]);
    let eth0 = LiveLink {
        link: Some(10),
        mac: Some("02:00:00:00:00:01".parse().unwrap()),
        ..live(2, "eth0", Some("veth"))
    };
    let addrs = vec![LiveAddr {
        ifindex: 2,
        net: "198.18.0.2/24".parse().unwrap(),
        link_scope: false,
    }];
    let routes = vec![LiveRoute {
        oif: Some(2),
        table: 254,
        by_kernel: false,
        unicast: true,
        route: RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("198.18.0.1".parse().unwrap()),
            onlink: false,
            metric: None,
        },
    }];
    let c1_inv = NetnsInventory::new(C1, vec![live(1, "lo", None), eth0], addrs, routes);
    World {
        host,
        netns: HashMap::from([(c1(), c1_inv)]),
        unreachable: HashMap::new(),
    }
}

#[test]
fn intact_veth_needs_nothing() {
    let mut content = sample_content();
    veth_only(&mut content);
    let plan = super::plan(&content, &healthy_veth_world());
    assert_eq!(plan.items.len(), 1);
    assert_eq!(plan.items[0].verdict, Verdict::Intact, "{plan}");
}

#[test]
fn container_reboot_recreates_the_pair_host_side_up_then_enslaved() {
    let mut content = sample_content();
    veth_only(&mut content);
    let mut world = healthy_veth_world();
    // New netns at the same path: only lo. The pair died with the old one.
    world.netns.insert(
        c1(),
        NetnsInventory::new(C1 + 7, vec![live(1, "lo", None)], vec![], vec![]),
    );
    world.host = NetnsInventory::new(
        1,
        world
            .host
            .links
            .iter()
            .filter(|l| l.name != "vc1")
            .cloned()
            .collect(),
        vec![],
        vec![],
    );
    let plan = super::plan(&content, &world);
    let item = &plan.items[0];
    assert_eq!(item.verdict, Verdict::Repair);
    assert!(
        item.reason.as_deref().unwrap().contains("replaced (inode"),
        "{plan}"
    );
    let text: Vec<String> = item.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "[host] ip link add vc1 address 02:00:00:00:00:02 mtu 1500 type veth peer name eth0 address 02:00:00:00:00:01 mtu 1500 netns /run/netns/c1",
            "[host] ip link set vc1 up",
            "[host] ip link set vc1 master br0",
            "[/run/netns/c1] ip addr add 198.18.0.2/24 dev eth0",
            "[/run/netns/c1] ip link set eth0 up",
            "[/run/netns/c1] ip route add default via 198.18.0.1 dev eth0",
        ]
    );
    let json = serde_json::to_string(&plan).unwrap();
    assert!(json.contains(r#""action":"create-veth""#), "{json}");
}

#[test]
fn stale_host_side_of_a_replaced_netns_is_removed_only_if_provably_ours() {
    let mut content = sample_content();
    veth_only(&mut content);
    let mut world = healthy_veth_world();
    world.netns.insert(
        c1(),
        NetnsInventory::new(C1 + 7, vec![live(1, "lo", None)], vec![], vec![]),
    );
    let plan1 = super::plan(&content, &world);
    assert!(
        matches!(plan1.items[0].actions[0], Action::DeleteStaleVeth { .. }),
        "{plan1}"
    );

    // Same situation but vc1 has another MAC: not ours.
    let links = world
        .host
        .links
        .iter()
        .cloned()
        .map(|mut l| {
            if l.name == "vc1" {
                l.mac = Some("02:99:00:00:00:02".parse().unwrap());
            }
            l
        })
        .collect();
    world.host = NetnsInventory::new(1, links, vec![], vec![]);
    let plan2 = super::plan(&content, &world);
    assert_eq!(plan2.items[0].verdict, Verdict::Conflict, "{plan2}");
    assert!(plan2.items[0].actions.is_empty());
}

#[test]
fn stale_host_side_without_a_recorded_mac_is_never_deleted() {
    let mut content = sample_content();
    veth_only(&mut content);
    // A CNI-imported peer: no MAC on record.
    for record in content.links.values_mut() {
        if let KindSpec::Veth { peer } = &mut record.spec.kind {
            peer.mac = None;
        }
    }
    let mut world = healthy_veth_world();
    world.netns.insert(
        c1(),
        NetnsInventory::new(C1 + 7, vec![live(1, "lo", None)], vec![], vec![]),
    );
    let plan = super::plan(&content, &world);
    assert_eq!(plan.items[0].verdict, Verdict::Conflict, "{plan}");
    assert!(plan.items[0].actions.is_empty(), "{plan}");
    assert!(
        plan.items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("no MAC on record"),
        "{plan}"
    );
}

#[test]
fn port_lost_from_its_bridge_is_brought_up_then_enslaved() {
    let mut content = sample_content();
    veth_only(&mut content);
    let mut world = healthy_veth_world();
    let links = world
        .host
        .links
        .iter()
        .cloned()
        .map(|mut l| {
            if l.name == "vc1" {
                l.master = None;
                l.up = false;
            }
            l
        })
        .collect();
    world.host = NetnsInventory::new(1, links, vec![], vec![]);
    let plan = super::plan(&content, &world);
    let text: Vec<String> = plan.items[0]
        .actions
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        text,
        vec![
            "[host] ip link set vc1 up",
            "[host] ip link set vc1 master br0"
        ]
    );
}

#[test]
fn missing_netns_or_bridge_waits() {
    let mut content = sample_content();
    veth_only(&mut content);
    let mut world = healthy_veth_world();
    world.netns.clear();
    world
        .unreachable
        .insert(c1(), "No such file or directory".into());
    let plan1 = super::plan(&content, &world);
    assert_eq!(plan1.items[0].verdict, Verdict::Waiting);
    assert!(
        plan1.items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("No such file"),
        "{plan1}"
    );

    let mut world = healthy_veth_world();
    world.host = NetnsInventory::new(1, vec![live(1, "lo", None)], vec![], vec![]);
    let plan2 = super::plan(&content, &world);
    assert_eq!(plan2.items[0].verdict, Verdict::Waiting, "{plan2}");
    assert!(plan2.items[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("bridge br0"));
}

#[test]
fn driver_reload_recreates_vlan_then_macvlan_in_the_living_pod_netns() {
    let mut content = sample_content();
    content.links.retain(|_, l| l.spec.kind.name() != "veth");
    let pod = Locator::Path("/proc/111576/ns/net".into());
    // The NIC is back under a new ifindex; no vlan; the pod netns has only lo.
    let host = NetnsInventory::new(
        1,
        vec![live(1, "lo", None), nic(9, "eth0", "52:54:00:12:34:56")],
        vec![],
        vec![],
    );
    let pod_inv = NetnsInventory::new(4026532300, vec![live(1, "lo", None)], vec![], vec![]);
    let world = World {
        host,
        netns: HashMap::from([(pod.clone(), pod_inv)]),
        unreachable: HashMap::new(),
    };
    let plan = super::plan(&content, &world);
    let vlan = plan
        .items
        .iter()
        .find(|i| matches!(&i.target, Target::Link { kind: "vlan", .. }))
        .unwrap();
    let macvlan = plan
        .items
        .iter()
        .find(|i| {
            matches!(
                &i.target,
                Target::Link {
                    kind: "macvlan",
                    ..
                }
            )
        })
        .unwrap();
    assert_eq!(
        vlan.actions[0].to_string(),
        "[host] ip link add link eth0 name eth0.3 mtu 1500 type vlan id 3 protocol 802.1q"
    );
    assert_eq!(
        macvlan.after,
        Some(LinkKey {
            netns: Locator::Host,
            name: "eth0.3".into()
        })
    );
    let text: Vec<String> = macvlan.actions.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        text,
        vec![
            "[host] ip link add link eth0.3 name eth0 address 6e:92:1a:b4:fc:34 netns /proc/111576/ns/net type macvlan mode bridge",
            "[/proc/111576/ns/net] ip addr add 10.161.75.155/22 dev eth0",
            "[/proc/111576/ns/net] ip link set eth0 up",
            "[/proc/111576/ns/net] ip route add default via 10.161.72.1 dev eth0",
        ]
    );
    assert!(plan.is_whole(), "{plan}");
    let without_parent = super::plan_where(&content, &world, |r| r.spec.kind.name() != "vlan");
    assert!(
        !without_parent.is_whole(),
        "the macvlan waits for a vlan not planned: {without_parent}"
    );

    // Parent NIC not back yet: both wait; nothing is created.
    let world = World {
        host: NetnsInventory::new(1, vec![live(1, "lo", None)], vec![], vec![]),
        netns: world.netns,
        unreachable: HashMap::new(),
    };
    let plan = super::plan(&content, &world);
    let vlan = plan
        .items
        .iter()
        .find(|i| matches!(&i.target, Target::Link { kind: "vlan", .. }))
        .unwrap();
    assert_eq!(vlan.verdict, Verdict::Waiting);
    assert!(
        vlan.reason.as_deref().unwrap().contains("parent NIC"),
        "{plan}"
    );
}

#[test]
fn a_link_recreated_by_someone_else_gets_its_mac_and_mtu_back() {
    let mut content = sample_content();
    veth_only(&mut content);
    let mut world = healthy_veth_world();
    let inv = &world.netns[&c1()];
    let links = inv
        .links
        .iter()
        .cloned()
        .map(|mut l| {
            if l.name == "eth0" {
                l.mac = Some("02:77:00:00:00:01".parse().unwrap());
                l.mtu = Some(1400);
            }
            l
        })
        .collect();
    let fixed = NetnsInventory::new(inv.inode, links, inv.addresses.clone(), inv.routes.clone());
    world.netns.insert(c1(), fixed);
    let plan = super::plan(&content, &world);
    let text: Vec<String> = plan.items[0]
        .actions
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        text,
        vec![
            "[/run/netns/c1] ip link set eth0 address 02:00:00:00:00:01",
            "[/run/netns/c1] ip link set eth0 mtu 1500"
        ]
    );
}

mod nic;
