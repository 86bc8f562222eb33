//! Host tests of the ledger + inventory + restorer, as root. Each test builds its own world: a
//! netns standing in for the host (`host_netns`) and "container" netns, all removed on drop.
//! Traffic stays in 198.18.0.0/15 between the test's own namespaces.

use std::sync::Arc;

use netguard::capture::{learn, Learned};
use netguard::inventory::Pool;
use netguard::ledger::{
    Ledger, LedgerOptions, LinkKey, LinkState, Locator, NicState, Opened, STATE_FILE,
};
use netguard::restore::{ItemResult, Outcome, PassReport, Restorer, Target};
use netguard_tests::{dumps, has_addr, is_up, link, pings, World};

/// A ledger in the world's directory and a restorer whose host is the world's.
fn start(w: &World) -> (Ledger, Restorer) {
    let (ledger, _) = Ledger::open(LedgerOptions::new(w.dir.0.clone())).expect("open ledger");
    let pool = Arc::new(Pool::new(Some(w.host.path())));
    (ledger, Restorer::new(pool, 8))
}

/// [`start`], and the links of the world's containers learned into the ledger.
async fn start_guarding(w: &World) -> (Ledger, Restorer, Learned) {
    let (mut ledger, restorer) = start(w);
    let netns: Vec<Locator> = w.containers().map(|ns| Locator::Path(ns.path())).collect();
    let learned = learn(restorer.pool(), &mut ledger, &netns)
        .await
        .expect("learn the containers' links");
    (ledger, restorer, learned)
}

/// The actions a pass applied for `name`, as `ip` commands.
fn applied(report: &PassReport, name: &str) -> Vec<String> {
    result_for(report, name)
        .applied
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn result_for<'a>(report: &'a PassReport, name: &str) -> &'a ItemResult {
    report
        .results
        .iter()
        .find(|r| match &r.target {
            Target::Link { key, .. } => key.name == name,
            Target::Nic { home_name, .. } => home_name == name,
        })
        .unwrap_or_else(|| panic!("no result for {name} in:\n{report}"))
}

#[tokio::test]
async fn container_reboot_brings_the_veth_back_into_the_new_netns() {
    let w = World::bridged("rb");
    let bystanders = w.bystanders();
    let (mut ledger, restorer, learned) = start_guarding(&w).await;
    assert_eq!(
        learned.guarded,
        vec![LinkKey {
            netns: w.c_loc(),
            name: "eth0".into()
        }],
        "{learned:?}"
    );
    let mac = link(w.c(), "eth0")["address"].clone();
    let host_mac = link(&w.host, "vh0")["address"].clone();

    let old_inode = w.c().inode();
    w.c().recreate();
    assert_ne!(w.c().inode(), old_inode);
    assert!(!w.c().ip_out(&["link"]).contains("eth0"));

    let report = restorer.pass(&mut ledger).await.unwrap();
    let eth0 = result_for(&report, "eth0");
    assert_eq!(eth0.outcome, Outcome::Restored, "{report}");
    assert!(
        eth0.reason.as_deref().unwrap_or("").contains("replaced"),
        "{report}"
    );

    let eth0_now = link(w.c(), "eth0");
    assert_eq!(eth0_now["address"], mac);
    assert!(is_up(&eth0_now));
    assert!(has_addr(w.c(), "eth0", "198.18.1.2", 24));
    assert!(w
        .c()
        .ip_out(&["route", "show", "dev", "eth0"])
        .contains("198.19.1.0/24 via 198.18.1.1"));
    let vh0 = link(&w.host, "vh0");
    assert_eq!(vh0["master"], "br0");
    assert_eq!(vh0["address"], host_mac);
    assert!(is_up(&vh0));
    assert!(
        pings(w.c(), "198.18.1.1"),
        "no ping from the re-created eth0 to the bridge"
    );

    // Level-triggered: a second pass finds it whole and does nothing.
    let again = restorer.pass(&mut ledger).await.unwrap();
    let eth0 = result_for(&again, "eth0");
    assert_eq!(eth0.outcome, Outcome::Intact, "{again}");
    assert!(eth0.applied.is_empty());
    let record = ledger.link(&w.c_loc(), "eth0").unwrap();
    assert_eq!(record.state, LinkState::Restored);
    assert_eq!(record.spec.netns_inode, Some(w.c().inode()));
    ledger.save().unwrap();
    bystanders.assert_unchanged();
}

#[tokio::test]
async fn bridge_port_lost_is_brought_up_and_enslaved_again() {
    let w = World::bridged("bp");
    let bystanders = w.bystanders();
    let (mut ledger, restorer, _) = start_guarding(&w).await;
    w.host.ip(&["link", "set", "vh0", "nomaster"]);
    w.host.ip(&["link", "set", "vh0", "down"]);
    assert!(!pings(w.c(), "198.18.1.1"));

    let report = restorer.pass(&mut ledger).await.unwrap();
    let eth0 = result_for(&report, "eth0");
    assert_eq!(eth0.outcome, Outcome::Restored, "{report}");
    assert_eq!(
        applied(&report, "eth0"),
        vec![
            "[host] ip link set vh0 up",
            "[host] ip link set vh0 master br0"
        ]
    );
    let vh0 = link(&w.host, "vh0");
    assert_eq!(vh0["master"], "br0");
    assert!(is_up(&vh0));
    assert!(pings(w.c(), "198.18.1.1"));
    bystanders.assert_unchanged();
}

#[tokio::test]
async fn macvlan_comes_back_in_the_living_pod_netns_when_its_parent_returns() {
    let w = World::macvlan_pod("mv");
    let bystanders = w.bystanders();
    let (host, pod) = (&w.host, w.pod());
    assert!(
        pings(pod, "198.18.2.1"),
        "test setup: macvlan over veth does not ping"
    );

    let (mut ledger, restorer, learned) = start_guarding(&w).await;
    let pod_loc = Locator::Path(pod.path());
    assert_eq!(
        learned.guarded,
        vec![LinkKey {
            netns: pod_loc.clone(),
            name: "mv0".into()
        }],
        "{learned:?}"
    );
    let mac = link(pod, "mv0")["address"].clone();
    let inode = pod.inode();

    // The "driver reload": the parent goes, taking the macvlan with it; the pod netns stays.
    host.ip(&["link", "del", "pv0"]);
    assert!(!pod.ip_out(&["link"]).contains("mv0"));
    let waiting = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&waiting, "mv0").outcome,
        Outcome::Waiting,
        "{waiting}"
    );
    assert_eq!(
        ledger.link(&pod_loc, "mv0").unwrap().state,
        LinkState::Waiting
    );

    w.add_parent();
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&report, "mv0").outcome,
        Outcome::Restored,
        "{report}"
    );
    assert_eq!(pod.inode(), inode, "the pod netns is never replaced");
    let mv0 = link(pod, "mv0");
    assert_eq!(mv0["address"], mac);
    assert_eq!(mv0["linkinfo"]["info_kind"], "macvlan");
    assert!(is_up(&mv0));
    assert!(has_addr(pod, "mv0", "198.18.2.2", 24));
    assert!(pod
        .ip_out(&["route", "show", "dev", "mv0"])
        .contains("198.19.2.0/24 via 198.18.2.1"));
    assert!(pings(pod, "198.18.2.1"));
    bystanders.assert_unchanged();
}

#[tokio::test]
async fn home_name_held_by_another_device_is_a_conflict_then_renamed_home_once_free() {
    let w = World::new("nic");
    let bystanders = w.bystanders();
    let host = &w.host;
    // A veth stands in for a physical NIC (no real NICs here), registered through the API.
    host.ip(&[
        "link", "add", "nic7", "type", "veth", "peer", "name", "nic7p",
    ]);
    host.ip(&["link", "set", "nic7", "up"]);
    host.ip(&[
        "link", "add", "lan7", "type", "veth", "peer", "name", "lan7p",
    ]);
    let (mut ledger, restorer) = start(&w);
    let live = restorer
        .pool()
        .host()
        .await
        .unwrap()
        .get_link_by_name("nic7")
        .await
        .unwrap()
        .unwrap();
    ledger.guard_nic(live.nic_identity(), "lan7", Some(true), None);
    // Known to have been away (a refund): only then is a NIC renamed home.
    ledger.set_nic(&live.nic_identity(), NicState::Refunded, None, None);
    let mac = link(host, "nic7")["address"].clone();
    let holder_mac = link(host, "lan7")["address"].clone();

    let report = restorer.pass(&mut ledger).await.unwrap();
    let nic = result_for(&report, "lan7");
    assert_eq!(nic.outcome, Outcome::Conflict, "{report}");
    assert!(nic.applied.is_empty());
    assert!(
        nic.reason
            .as_deref()
            .unwrap()
            .contains("held by another device"),
        "{report}"
    );
    assert_eq!(link(host, "nic7")["address"], mac, "nothing renamed");
    assert_eq!(
        link(host, "lan7")["address"],
        holder_mac,
        "the holder is left alone"
    );
    assert_eq!(ledger.nics()[0].state, NicState::Conflict);

    // Retried later: once the name is free the NIC goes home, up again.
    host.ip(&["link", "del", "lan7"]);
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&report, "lan7").outcome,
        Outcome::Restored,
        "{report}"
    );
    let home = link(host, "lan7");
    assert_eq!(home["address"], mac);
    assert!(is_up(&home));
    assert_eq!(ledger.nics()[0].state, NicState::Restored);
    assert_eq!(ledger.nics()[0].location.as_ref().unwrap().name, "lan7");
    bystanders.assert_unchanged();
}

#[tokio::test]
async fn a_change_between_passes_is_seen_though_the_last_look_is_kept() {
    let w = World::bridged("ch");
    let (mut ledger, restorer, _) = start_guarding(&w).await;
    let first = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&first, "eth0").outcome,
        Outcome::Intact,
        "{first}"
    );

    // Inside the container, and then on the host side: each announced by the kernel.
    w.c().ip(&["route", "del", "198.19.1.0/24"]);
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        applied(&report, "eth0"),
        vec![format!(
            "[{}] ip route add 198.19.1.0/24 via 198.18.1.1 dev eth0",
            w.c().path().display()
        )]
    );
    w.host.ip(&["link", "set", "vh0", "nomaster"]);
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        applied(&report, "eth0"),
        vec!["[host] ip link set vh0 master br0"]
    );

    // A container restart between passes: a new netns at the same path.
    w.c().recreate();
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&report, "eth0").outcome,
        Outcome::Restored,
        "{report}"
    );
    assert!(has_addr(w.c(), "eth0", "198.18.1.2", 24));
    let again = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&again, "eth0").outcome,
        Outcome::Intact,
        "{again}"
    );
}

#[tokio::test]
async fn dry_run_plans_but_changes_nothing() {
    let w = World::bridged("dr");
    let bystanders = w.bystanders();
    let (ledger, restorer, _) = start_guarding(&w).await;
    w.host.ip(&["link", "set", "vh0", "nomaster"]);
    w.c().ip(&["route", "del", "198.19.1.0/24"]);
    let (host_before, c_before) = (dumps(&w.host), dumps(w.c()));
    let status_before = netguard::status::ledger_rows(ledger.content());

    let plan = restorer.dry_run(&ledger).await.unwrap();
    let text = plan.to_string();
    assert!(text.contains("ip link set vh0 master br0"), "{text}");
    assert!(
        text.contains("ip route add 198.19.1.0/24 via 198.18.1.1 dev eth0"),
        "{text}"
    );
    assert!(serde_json::to_string(&plan)
        .unwrap()
        .contains("\"action\":\"set-master\""));

    assert_eq!(dumps(&w.host), host_before);
    assert_eq!(dumps(w.c()), c_before);
    assert_eq!(
        netguard::status::ledger_rows(ledger.content()),
        status_before
    );
    bystanders.assert_unchanged();
}

#[tokio::test]
async fn corrupt_state_file_is_kept_aside_and_the_ledger_rebuilt() {
    let w = World::bridged("cs");
    let (mut ledger, restorer, _) = start_guarding(&w).await;
    ledger.save().unwrap();
    drop(ledger);

    let state = w.dir.0.join(STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    let cut = bytes.len() / 3;
    bytes.truncate(cut);
    std::fs::write(&state, &bytes).unwrap();

    let (mut ledger, opened) = Ledger::open(LedgerOptions::new(w.dir.0.clone())).unwrap();
    let Opened::Rebuilt {
        moved_to: Some(aside),
        ..
    } = &opened
    else {
        panic!("{opened:?}")
    };
    assert_eq!(
        std::fs::read(aside).unwrap(),
        bytes,
        "the corrupt file is kept untouched"
    );
    assert!(
        opened.to_string().contains("rebuilt from the journal"),
        "{opened}"
    );
    assert!(
        ledger.link(&w.c_loc(), "eth0").is_some(),
        "the guarded veth survived"
    );

    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_eq!(
        result_for(&report, "eth0").outcome,
        Outcome::Intact,
        "{report}"
    );
}

#[tokio::test]
async fn a_bounded_pool_learns_more_netns_than_it_keeps_open() {
    let w = World::new("pb").with(&["a", "b", "c"]);
    // A peer with the container end's own ifindex (2) would be left out of IFLA_LINK by the
    // kernel: the bridge takes ifindex 2.
    w.host.ip(&["link", "add", "br0", "type", "bridge"]);
    for (i, ns) in w.containers().enumerate() {
        let veth = format!("link add pb{i} type veth peer name eth0 netns {}", ns.name);
        w.host.ip(&veth.split(' ').collect::<Vec<_>>());
    }
    let (mut ledger, _) = Ledger::open(LedgerOptions::new(w.dir.0.clone())).expect("open ledger");
    let pool = Pool::bounded(Some(w.host.path()), 2);
    let netns: Vec<Locator> = w.containers().map(|ns| Locator::Path(ns.path())).collect();
    let learned = learn(&pool, &mut ledger, &netns)
        .await
        .expect("learn three netns through a pool of two");
    for ns in w.containers() {
        let key = LinkKey {
            netns: Locator::Path(ns.path()),
            name: "eth0".into(),
        };
        assert!(learned.guarded.contains(&key), "{key:?} not in {learned:?}");
    }
    assert_eq!(pool.open_count(), 3, "the host's and the two last used");
}
