//! Host tests of identity at the moment of acting: a plan names each device by identity, and
//! the executor checks it on a fresh read right before each change. A device that is not the
//! one planned for is left exactly as it was and the item ends `conflict`. As root, each test
//! in its own world.

use std::sync::Arc;

use netguard::inventory::Pool;
use netguard::ledger::{Flight, Ledger, LedgerOptions, LinkKey, Locator, NicState, Origin};
use netguard::model::DeviceIdentity;
use netguard::restore::{Action, Dev, Executor, Item, Outcome, Plan, Restorer, Target, Verdict};
use netguard_tests::{is_up, link, World};

fn start(w: &World) -> (Ledger, Restorer) {
    let (ledger, _) = Ledger::open(LedgerOptions::new(w.dir.0.clone())).expect("open ledger");
    let pool = Arc::new(Pool::new(Some(w.host.path())));
    (ledger, Restorer::new(pool, 8))
}

/// A veth standing in for a NIC (no real NICs here).
fn add_veth(w: &World, name: &str, peer: &str) {
    w.host
        .ip(&["link", "add", name, "type", "veth", "peer", "name", peer]);
}

/// What a bystander looks like: name, ifindex, MAC, admin state.
fn looks(w: &World, name: &str) -> (String, u64, String, bool) {
    let l = link(&w.host, name);
    (
        l["ifname"].as_str().unwrap().to_string(),
        l["ifindex"].as_u64().unwrap(),
        l["address"].as_str().unwrap().to_string(),
        is_up(&l),
    )
}

#[tokio::test]
async fn a_device_swapped_under_the_name_between_plan_and_apply_is_left_alone() {
    let w = World::new("sw");
    add_veth(&w, "nic7", "nic7p");
    w.host.ip(&["link", "set", "nic7", "up"]);
    let (mut ledger, restorer) = start(&w);
    let host = restorer.pool().host().await.unwrap();
    let nic = host.get_link_by_name("nic7").await.unwrap().unwrap();
    // Guarded with home name lan7: the plan renames nic7 home.
    ledger.guard_nic(nic.nic_identity(), "lan7", Some(true), None);
    // Known to have been away (a refund): only then is a NIC renamed home.
    ledger.set_nic(&nic.nic_identity(), NicState::Refunded, None, None);
    let plan = restorer.dry_run(&ledger).await.unwrap();
    let text = plan.to_string();
    assert!(text.contains("ip link set nic7 name lan7"), "{text}");

    // Between plan and apply: the admin renames the NIC, and a stranger takes its name.
    w.host.ip(&["link", "set", "nic7", "name", "uplink7"]);
    add_veth(&w, "nic7", "stranger7p");
    w.host.ip(&["link", "set", "nic7", "up"]);
    let (stranger, renamed) = (looks(&w, "nic7"), looks(&w, "uplink7"));

    let results = Executor::new(restorer.pool().clone(), 8).apply(&plan).await;
    let result = &results[0];
    assert_eq!(result.outcome, Outcome::Conflict, "{result:?}");
    assert!(result.applied.is_empty(), "{result:?}");
    let why = result.reason.as_deref().unwrap();
    // Both devices are named: the one planned for and what was found.
    assert!(
        why.contains(&format!("expected nic7 (ifindex {}", nic.ifindex)),
        "{why}"
    );
    assert!(
        why.contains(&format!("found uplink7 (ifindex {}", nic.ifindex)),
        "{why}"
    );
    assert!(
        why.contains(&format!("nic7 (ifindex {}", stranger.1)),
        "{why}"
    );
    assert_eq!(looks(&w, "nic7"), stranger, "the stranger is untouched");
    assert_eq!(
        looks(&w, "uplink7"),
        renamed,
        "the renamed NIC is untouched"
    );
    assert!(host.get_link_by_name("lan7").await.unwrap().is_none());

    // A pass plans afresh, by identity: whatever it does with the NIC, the stranger that
    // holds its old name is no part of it.
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert_ne!(ledger.nics()[0].state, NicState::Lost, "{report}");
    assert_eq!(
        looks(&w, "nic7"),
        stranger,
        "the stranger is still untouched"
    );
}

#[tokio::test]
async fn a_stale_veth_without_a_known_mac_is_never_deleted() {
    let w = World::new("st");
    add_veth(&w, "vs0", "vs0p");
    let (_, restorer) = start(&w);
    let host = restorer.pool().host().await.unwrap();
    let live = host.get_link_by_name("vs0").await.unwrap().unwrap();
    let before = looks(&w, "vs0");
    let key = LinkKey {
        netns: Locator::Host,
        name: "vs0".into(),
    };
    let item = |mac| Item {
        target: Target::Link {
            kind: "veth",
            key: key.clone(),
        },
        verdict: Verdict::Repair,
        reason: None,
        actions: vec![Action::DeleteStaleVeth {
            netns: Locator::Host,
            dev: Dev::live(
                &live,
                DeviceIdentity::Virtual {
                    kind: "veth".into(),
                    mac,
                },
            ),
        }],
        after: None,
    };
    let executor = Executor::new(restorer.pool().clone(), 1);

    let refused = |mac, says: &'static str| {
        let executor = &executor;
        let item = item(mac);
        async move {
            let results = executor.apply(&Plan { items: vec![item] }).await;
            assert_eq!(results[0].outcome, Outcome::Conflict, "{:?}", results[0]);
            let why = results[0].reason.as_deref().unwrap();
            assert!(why.contains(says), "{why}");
        }
    };
    // No MAC on record: any veth under that name would do, so none is deleted.
    refused(None, "never deleted").await;
    assert_eq!(looks(&w, "vs0"), before);
    // A MAC on record that the device under the name does not have: not ours either.
    refused(Some("02:99:00:00:00:01".parse().unwrap()), "expected vs0").await;
    assert_eq!(looks(&w, "vs0"), before);

    // Its own MAC: provably ours, removed (its peer's netns is alive: deleted by us).
    let results = executor
        .apply(&Plan {
            items: vec![item(live.mac)],
        })
        .await;
    assert_eq!(results[0].outcome, Outcome::Restored, "{:?}", results[0]);
    assert!(host.get_link_by_name("vs0").await.unwrap().is_none());
}

/// A veth `name` in the host netns, up, and its MAC.
fn up_veth(w: &World, name: &str, peer: &str) -> netguard::model::Mac {
    add_veth(w, name, peer);
    w.host.ip(&["link", "set", name, "up"]);
    link(&w.host, name)["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn flight(w: &World, temp: &str, mac: netguard::model::Mac, from: &str) -> Flight {
    Flight {
        netns: w.c_loc(),
        name: temp.into(),
        identity: DeviceIdentity::Virtual {
            kind: "veth".into(),
            mac: Some(mac),
        },
        from: Some(Origin {
            netns: Locator::Host,
            name: from.into(),
            up: true,
        }),
    }
}

fn c_names(w: &World) -> Vec<String> {
    w.c()
        .ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_device_left_under_a_temporary_name_by_a_killed_run_is_put_back_at_start() {
    let w = World::new("fl").with(&["c"]);
    let mac = up_veth(&w, "vf0", "vf0p");
    let before = looks(&w, "vf0");
    let (mut ledger, _) = start(&w);
    ledger.take_off([flight(&w, "ngtmp9.9", mac, "vf0")]);
    ledger.commit().unwrap();
    // The move happens, then the process dies: no save, no drop.
    w.host.ip(&[
        "link",
        "set",
        "vf0",
        "netns",
        &w.c().name,
        "name",
        "ngtmp9.9",
    ]);
    std::mem::forget(ledger);

    let (mut ledger, restorer) = start(&w);
    assert_eq!(ledger.content().flights.len(), 1, "the flight is on disk");
    let said = restorer.land_flights(&mut ledger).await;
    assert!(
        said[0]
            .as_ref()
            .is_ok_and(|s| s.contains("put back as vf0")),
        "{said:?}"
    );
    let back = looks(&w, "vf0");
    assert_eq!(
        (&back.0, &back.2, back.3),
        (&before.0, &before.2, true),
        "home, up"
    );
    assert!(!c_names(&w).iter().any(|n| n.starts_with("ngtmp")));
    assert!(ledger.content().flights.is_empty());
    drop(ledger);
    let (ledger, _) = start(&w);
    assert!(ledger.content().flights.is_empty(), "landed on disk too");
}

#[tokio::test]
async fn a_stranger_under_a_temporary_name_is_left_alone() {
    let w = World::new("fs").with(&["c"]);
    let mac = up_veth(&w, "vf1", "vf1p");
    let (mut ledger, restorer) = start(&w);
    ledger.take_off([flight(&w, "ngtmp9.8", mac, "vf1")]);
    ledger.commit().unwrap();
    // Someone else's veth under that name in the container; ours never left.
    w.c().ip(&[
        "link", "add", "ngtmp9.8", "type", "veth", "peer", "name", "other8",
    ]);
    let theirs = w.c().ip_json(&["link", "show", "dev", "ngtmp9.8"])[0].clone();
    let said = restorer.land_flights(&mut ledger).await;
    let why = said[0].as_ref().unwrap_err();
    assert!(
        why.contains("left alone") && why.contains(&mac.to_string()),
        "{why}"
    );
    let now = w.c().ip_json(&["link", "show", "dev", "ngtmp9.8"])[0].clone();
    assert_eq!(
        (&now["ifindex"], &now["address"]),
        (&theirs["ifindex"], &theirs["address"])
    );
    assert!(is_up(&link(&w.host, "vf1")), "ours untouched");
}

#[tokio::test]
async fn a_move_that_failed_after_setting_the_device_down_is_put_back_up() {
    let w = World::new("fd").with(&["c"]);
    let mac = up_veth(&w, "vf2", "vf2p");
    let (mut ledger, restorer) = start(&w);
    let f = flight(&w, "ngtmp9.7", mac, "vf2");
    ledger.take_off([f.clone()]);
    ledger.commit().unwrap();
    // Down for the move, then the move itself failed: it never left.
    w.host.ip(&["link", "set", "vf2", "down"]);
    let said = restorer.put_back(&f).await;
    assert!(
        said.as_ref().is_ok_and(|s| s.contains("put back")),
        "{said:?}"
    );
    assert!(is_up(&link(&w.host, "vf2")), "up again, as it was");
}

#[tokio::test]
async fn a_link_created_under_a_temporary_name_and_never_finished_is_removed_at_start() {
    let w = World::macvlan_pod("fc");
    let (mut ledger, restorer) = start(&w);
    // A re-created macvlan, made in the parent's netns under a name of ours, then the kill.
    let temp = "ngtmp9.6";
    let identity = DeviceIdentity::Virtual {
        kind: "macvlan".into(),
        mac: Some("02:00:00:00:96:01".parse().unwrap()),
    };
    let f = Flight {
        netns: Locator::Host,
        name: temp.into(),
        identity,
        from: None,
    };
    ledger.take_off([f]);
    ledger.commit().unwrap();
    w.host.ip(&[
        "link",
        "add",
        "link",
        "pv0",
        "name",
        temp,
        "address",
        "02:00:00:00:96:01",
        "type",
        "macvlan",
        "mode",
        "bridge",
    ]);
    // A stranger of the same kind under another of our names, never recorded: not ours.
    w.host.ip(&[
        "link", "add", "link", "pv0", "name", "ngtmp9.5", "type", "macvlan", "mode", "bridge",
    ]);
    let stranger = looks(&w, "ngtmp9.5");
    std::mem::forget(ledger);

    let (mut ledger, _) = start(&w);
    let said = restorer.land_flights(&mut ledger).await;
    assert!(
        said[0].as_ref().is_ok_and(|s| s.contains("removed")),
        "{said:?}"
    );
    let gone = restorer.pool().host().await.unwrap();
    assert!(gone.get_link_by_name(temp).await.unwrap().is_none());
    assert_eq!(
        looks(&w, "ngtmp9.5"),
        stranger,
        "an unrecorded device is left alone"
    );
    assert!(ledger.content().flights.is_empty());
}

#[tokio::test]
async fn a_pass_that_recreates_a_macvlan_leaves_no_flight_and_no_temporary_name() {
    let w = World::macvlan_pod("fp");
    let (mut ledger, restorer) = start(&w);
    let netns = vec![Locator::Path(w.pod().path())];
    netguard::capture::learn(restorer.pool(), &mut ledger, &netns)
        .await
        .unwrap();
    w.pod().ip(&["link", "del", "mv0"]);
    let report = restorer.pass(&mut ledger).await.unwrap();
    assert!(report.broken().next().is_none(), "{report}");
    assert!(ledger.content().flights.is_empty());
    let host_names = w.host.ip_out(&["-o", "link", "show"]);
    assert!(!host_names.contains("ngtmp"), "{host_names}");
    let journal = std::fs::read_to_string(w.dir.0.join("journal.jsonl")).unwrap();
    assert!(journal.contains(r#""type":"take-off""#), "journaled first");
}
