//! Plans for NICs: home names, adoption, admin state, what is never the NIC.

use super::*;

fn nic_only(content: &mut LedgerContent) {
    content.links.clear();
    content.nics[0].location = Some(NicLocation {
        netns: crate::event::Netns {
            inode: 1,
            names: vec![],
        },
        name: "eth2".into(),
        ifindex: Some(4),
    });
}

#[test]
fn refunded_nic_goes_home_down_rename_up() {
    let mut content = sample_content();
    nic_only(&mut content);
    let mut dev4 = nic(4, "dev4", "52:54:00:12:34:56");
    dev4.up = false;
    let host = NetnsInventory::new(1, vec![live(1, "lo", None), dev4], vec![], vec![]);
    let plan = super::plan(
        &content,
        &World {
            host,
            ..World::default()
        },
    );
    let text: Vec<String> = plan.items[0]
        .actions
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        text,
        vec![
            "[host] ip link set dev4 name eth2",
            "[host] ip link set eth2 up"
        ]
    );
}

#[test]
fn home_name_held_by_another_device_is_a_conflict_with_no_action() {
    let mut content = sample_content();
    nic_only(&mut content);
    let host = NetnsInventory::new(
        1,
        vec![
            nic(4, "dev4", "52:54:00:12:34:56"),
            live(5, "eth2", Some("veth")),
        ],
        vec![],
        vec![],
    );
    let plan = super::plan(
        &content,
        &World {
            host,
            ..World::default()
        },
    );
    assert_eq!(plan.items[0].verdict, Verdict::Conflict);
    assert!(plan.items[0].actions.is_empty());
    assert!(
        plan.items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("held by another device"),
        "{plan}"
    );
    // A lent NIC that is not in the host netns is not lost.
    content.nics[0].state = NicState::Lent;
    let plan = super::plan(&content, &World::default());
    assert_eq!(plan.items[0].verdict, Verdict::Lent);
    // Nor one netguard lent whose lend was not recorded as done (an agent killed in between).
    content.nics[0].state = NicState::Home;
    content.nics[0].lent = Some(crate::ledger::Lend {
        netns: c1(),
        name: "eth0".into(),
        persistent: false,
        container: None,
    });
    let plan = super::plan(&content, &World::default());
    assert_eq!(plan.items[0].verdict, Verdict::Lent);
}

#[test]
fn a_repair_stopped_after_the_rename_is_finished() {
    let mut content = sample_content();
    nic_only(&mut content);
    content.nics[0].up = Some(true);
    let mut eth2 = nic(4, "eth2", "52:54:00:12:34:56");
    eth2.up = false;
    // Refunded when last seen, home under its name now, but down: set up.
    content.nics[0].state = NicState::Refunded;
    let plan = plan_host(&content, vec![live(1, "lo", None), eth2.clone()], vec![]);
    let actions: Vec<String> = plan.items[0]
        .actions
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(plan.items[0].verdict, Verdict::Repair, "{plan}");
    assert_eq!(actions, vec!["[host] ip link set eth2 up"]);
    // Seen at home (an admin set it down there): left alone.
    content.nics[0].state = NicState::Restored;
    let plan = plan_host(&content, vec![live(1, "lo", None), eth2], vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Intact, "{plan}");
}

#[test]
fn a_vlan_carrying_its_nics_permanent_mac_is_not_the_nic() {
    let mut content = sample_content();
    nic_only(&mut content);
    let eth2 = nic(4, "eth2", "52:54:00:12:34:56");
    // As 6.12 shows a vlan over it: the NIC's permanent MAC, no bus address.
    let mut vlan = live(5, "eth2.3", Some("vlan"));
    vlan.perm_mac = eth2.perm_mac;
    vlan.mac = eth2.mac;
    let plan = plan_host(&content, vec![live(1, "lo", None), eth2, vlan], vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Intact, "{plan}");
}

fn plan_host(content: &LedgerContent, links: Vec<LiveLink>, addresses: Vec<LiveAddr>) -> Plan {
    let host = NetnsInventory::new(1, links, addresses, vec![]);
    super::plan(
        content,
        &World {
            host,
            ..World::default()
        },
    )
}

#[test]
fn nic_renamed_at_home_while_unseen_is_adopted_untouched() {
    let mut content = sample_content();
    nic_only(&mut content);
    // Recorded at home as eth2 (ifindex 4); now eth2 is uplink1, same ifindex, up, addressed.
    let uplink = nic(4, "uplink1", "52:54:00:12:34:56");
    let addr = LiveAddr {
        ifindex: 4,
        net: "198.18.5.1/24".parse().unwrap(),
        link_scope: false,
    };
    let plan = plan_host(&content, vec![live(1, "lo", None), uplink], vec![addr]);
    let item = &plan.items[0];
    assert_eq!(item.verdict, Verdict::Adopt, "{plan}");
    assert!(item.actions.is_empty());
    assert!(
        item.reason.as_deref().unwrap().contains("uplink1"),
        "{plan}"
    );
}

#[test]
fn nic_is_renamed_home_only_after_being_away() {
    let mut content = sample_content();
    nic_only(&mut content);
    let back = |name: &str, ifindex: u32| {
        let mut l = nic(ifindex, name, "52:54:00:12:34:56");
        l.up = false;
        vec![live(1, "lo", None), l]
    };
    // Lent when last seen (a refund while netguard was stopped): renamed home.
    content.nics[0].state = NicState::Lent;
    let plan = plan_host(&content, back("eth0", 4), vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Repair, "{plan}");
    // Home when last seen, but a lend on record: renamed home.
    content.nics[0].state = NicState::Home;
    content.nics[0].lent = Some(crate::ledger::Lend {
        netns: c1(),
        name: "eth0".into(),
        persistent: false,
        container: None,
    });
    let plan = plan_host(&content, back("eth0", 4), vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Repair, "{plan}");
    content.nics[0].lent = None;
    // The kernel's fallback name: renamed home.
    let plan = plan_host(&content, back("dev12", 4), vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Repair, "{plan}");
    // A new ifindex: re-registered (driver unbind and bind), same permanent MAC and bus.
    let plan = plan_host(&content, back("eth7", 9), vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Repair, "{plan}");
    assert!(plan.items[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("re-registered"));
    // None of these: adopted.
    let plan = plan_host(&content, back("devices", 4), vec![]);
    assert_eq!(plan.items[0].verdict, Verdict::Adopt, "{plan}");
}

#[test]
fn admin_state_comes_from_home_or_stays_as_the_kernel_gave_it() {
    let mut content = sample_content();
    nic_only(&mut content);
    content.nics[0].state = NicState::Lent;
    let actions = |content: &LedgerContent, up: bool| -> Vec<String> {
        let mut l = nic(4, "dev4", "52:54:00:12:34:56");
        l.up = up;
        let plan = plan_host(content, vec![l], vec![]);
        plan.items[0]
            .actions
            .iter()
            .map(|a| a.to_string())
            .collect()
    };
    content.nics[0].up = Some(false);
    assert_eq!(
        actions(&content, false),
        ["[host] ip link set dev4 name eth2"]
    );
    content.nics[0].up = None;
    assert_eq!(
        actions(&content, false),
        ["[host] ip link set dev4 name eth2"]
    );
    assert_eq!(
        actions(&content, true),
        [
            "[host] ip link set dev4 down",
            "[host] ip link set dev4 name eth2",
            "[host] ip link set eth2 up"
        ]
    );
}

#[test]
fn a_running_nic_with_addresses_is_never_set_down_by_a_pass() {
    let mut content = sample_content();
    nic_only(&mut content);
    content.nics[0].state = NicState::Refunded;
    let addr = LiveAddr {
        ifindex: 4,
        net: "198.18.5.1/24".parse().unwrap(),
        link_scope: false,
    };
    let plan = plan_host(
        &content,
        vec![nic(4, "dev4", "52:54:00:12:34:56")],
        vec![addr],
    );
    assert_eq!(plan.items[0].verdict, Verdict::Conflict, "{plan}");
    assert!(plan.items[0].actions.is_empty());
    assert!(plan.items[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("addresses"));
}
