use super::*;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};

const HOST: u64 = 4026531840;
const INIT: u64 = 4026531999;
const A: u64 = 4026532001;
const B: u64 = 4026532002;
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const MAC_STR: &str = "52:54:00:12:34:56";

struct Fixture {
    tracker: Tracker,
    now: Instant,
}

/// A tracker watching HOST (no nsid), A (nsid 1) and B (nsid 2), all empty; INIT is
/// init_net (nsid 3).
fn fixture() -> Fixture {
    let resolver = Resolver::new(None).unwrap();
    let now = Instant::now();
    // Not this machine's sysfs: its bus devices are none of the tests' business.
    let mut tracker = Tracker::new(resolver, HOST, INIT, |bus| {
        (bus == BUS).then(|| "e1000".to_string())
    });
    for (netns, nsid) in [(HOST, None), (A, Some(1)), (B, Some(2)), (INIT, Some(3))] {
        assert!(tracker.add_netns(netns, nsid, &[], false, now).is_empty());
    }
    Fixture { tracker, now }
}

impl Fixture {
    fn feed(&mut self, nsid: Option<i32>, msg: RouteNetlinkMessage) -> Vec<Event> {
        self.tracker.on_message(nsid, &msg, self.now).unwrap()
    }
    fn later(&mut self, by: Duration) -> Vec<Event> {
        self.now += by;
        self.tracker.expire(self.now)
    }
}

fn link(ifindex: u32, name: &str, attrs: Vec<LinkAttribute>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    msg.header.link_layer_type = LinkLayerType::Ether;
    msg.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::Address(MAC.to_vec()),
    ];
    msg.attributes.extend(attrs);
    msg
}

fn veth(ifindex: u32, name: &str, peer: u32) -> LinkMessage {
    link(
        ifindex,
        name,
        vec![
            LinkAttribute::Link(peer),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ],
    )
}

fn nic(ifindex: u32, name: &str) -> LinkMessage {
    link(
        ifindex,
        name,
        vec![LinkAttribute::PermAddress(MAC.to_vec())],
    )
}

fn leaving(mut msg: LinkMessage, new_nsid: i32, new_ifindex: i32) -> RouteNetlinkMessage {
    msg.attributes.push(LinkAttribute::NewNetnsId(new_nsid));
    msg.attributes.push(LinkAttribute::NewIfIndex(new_ifindex));
    RouteNetlinkMessage::DelLink(msg)
}

fn nsid_gone(id: i32) -> RouteNetlinkMessage {
    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Id(id)];
    RouteNetlinkMessage::DelNsId(msg)
}

fn at(place: &Option<Place>) -> (Option<&str>, Option<u32>, u64) {
    let place = place.as_ref().expect("place");
    (place.name.as_deref(), place.ifindex, place.netns.inode)
}

#[test]
fn new_link_registers_and_same_name_again_says_nothing() {
    let mut f = fixture();
    let events = f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)));
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!((ev.kind, ev.cause), (EventKind::Register, Cause::Explicit));
    assert_eq!(ev.link_kind.as_deref(), Some("veth"));
    assert_eq!(ev.perm_addr, None);
    assert_eq!(at(&ev.to), (Some("va"), Some(5), A));
    assert!(ev.from.is_none() && ev.device.is_some());
    // Link up/down and the like: same name, nothing to say.
    assert!(f
        .feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)))
        .is_empty());
}

#[test]
fn move_between_two_containers_is_one_event_with_the_register_key() {
    let mut f = fixture();
    let key = f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(6, "vb", 5)))[0].device;
    // A calls B "nsid 7": meaningless to us, so B is found by the NEWLINK that follows.
    assert!(f.feed(Some(1), leaving(veth(6, "vb", 5), 7, 6)).is_empty());
    assert_eq!(f.tracker.next_deadline(), Some(f.now + MOVE_WAIT));
    let events = f.feed(Some(2), RouteNetlinkMessage::NewLink(veth(6, "vb", 5)));
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(
        (ev.kind, ev.cause, ev.device),
        (EventKind::Move, Cause::Explicit, key)
    );
    assert_eq!(at(&ev.from), (Some("vb"), Some(6), A));
    assert_eq!(at(&ev.to), (Some("vb"), Some(6), B));
    assert_eq!(f.tracker.next_deadline(), None);
    // Renamed in B afterwards: same key still.
    let renamed = f.feed(Some(2), RouteNetlinkMessage::NewLink(veth(6, "eth0", 5)));
    assert_eq!(
        (renamed[0].kind, renamed[0].device),
        (EventKind::Rename, key)
    );
}

#[test]
fn move_whose_arrival_is_not_seen_is_reported_after_the_wait() {
    let mut f = fixture();
    f.feed(None, RouteNetlinkMessage::NewLink(nic(3, "eth1")));
    // From the host the nsid is ours: B.
    assert!(f.feed(None, leaving(nic(3, "eth1"), 2, 9)).is_empty());
    assert!(f.later(MOVE_WAIT / 2).is_empty());
    let events = f.later(MOVE_WAIT);
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!((ev.kind, ev.cause), (EventKind::Move, Cause::Explicit));
    assert_eq!(ev.perm_addr.as_deref(), Some(MAC_STR));
    assert_eq!(at(&ev.from), (Some("eth1"), Some(3), HOST));
    assert_eq!(at(&ev.to), (None, Some(9), B));
}

#[test]
fn move_into_a_netns_found_later_completes_from_its_dump() {
    let mut f = fixture();
    f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(6, "vb", 5)));
    f.feed(Some(1), leaving(veth(6, "vb", 5), 0, 2));
    const C: u64 = 4026532003;
    let mut lo = link(1, "lo", vec![]);
    lo.header.link_layer_type = LinkLayerType::Loopback;
    let events = f
        .tracker
        .add_netns(C, Some(4), &seen([lo, veth(2, "eth0", 5)]), true, f.now);
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].kind, at(&events[0].to)),
        (EventKind::Register, (Some("lo"), Some(1), C))
    );
    assert_eq!(events[1].kind, EventKind::Move);
    assert_eq!(at(&events[1].from), (Some("vb"), Some(6), A));
    assert_eq!(at(&events[1].to), (Some("eth0"), Some(2), C));
    assert!(f.later(MOVE_WAIT * 2).is_empty());
}

#[test]
fn delete_is_unregister_of_a_live_netns() {
    let mut f = fixture();
    let key = f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)))[0].device;
    let events = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(5, "va", 0)));
    assert_eq!(events.len(), 1);
    let ev = &events[0];
    assert_eq!(
        (ev.kind, ev.cause, ev.device, ev.netns_dying),
        (EventKind::Unregister, Cause::Explicit, key, Some(false))
    );
    assert_eq!(ev.link_kind.as_deref(), Some("veth"));
    assert_eq!(at(&ev.from), (Some("va"), Some(5), A));
    // Never seen before: still reported from what the message says.
    let events = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(8, "vz", 0)));
    assert_eq!(at(&events[0].from), (Some("vz"), Some(8), A));
}

#[test]
fn a_port_joining_or_leaving_a_bridge_is_not_a_device_coming_or_going() {
    let mut f = fixture();
    f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)));
    let mut port = link(5, "va", vec![LinkAttribute::Controller(9)]);
    port.header.interface_family = AddressFamily::Bridge;
    assert!(f
        .feed(Some(1), RouteNetlinkMessage::NewLink(port.clone()))
        .is_empty());
    assert!(f
        .feed(Some(1), RouteNetlinkMessage::DelLink(port))
        .is_empty());
    // The device is still known as it was: deleting it now is one unregister of "va".
    let events = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(5, "va", 0)));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Unregister);
    assert_eq!(events[0].link_kind.as_deref(), Some("veth"));
}

#[test]
fn dying_netns_takes_its_veths_and_their_peers_and_refunds_its_nic() {
    let mut f = fixture();
    f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)));
    let mut lo = link(1, "lo", vec![]);
    lo.header.link_layer_type = LinkLayerType::Loopback;
    f.tracker.add_netns(
        4026532009,
        Some(9),
        &seen([lo, veth(6, "vb", 5), nic(4, "eth0")]),
        false,
        f.now,
    );
    let nic_key = f.tracker.views[&4026532009][&4].key;

    // Another netns' view of the same death is not ours to act on.
    assert!(f.feed(Some(1), nsid_gone(9)).is_empty());
    let events = f.feed(None, nsid_gone(9));
    let kinds: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.current_name().map(str::to_owned)))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::TeardownBegin, None),
            (EventKind::Unregister, Some("lo".into())),
            (EventKind::Unregister, Some("vb".into())),
        ]
    );
    assert_eq!(events[0].from.as_ref().unwrap().netns.inode, 4026532009);
    assert!(events.iter().all(|e| e.cause == Cause::NetnsTeardown));
    assert_eq!(events[2].netns_dying, Some(true));

    // The peer in A goes down with it.
    let peer = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(5, "va", 0)));
    assert_eq!(
        (peer[0].cause, peer[0].netns_dying),
        (Cause::NetnsTeardown, Some(false))
    );

    // The NIC comes back to init_net under a fallback name.
    let back = f.feed(Some(3), RouteNetlinkMessage::NewLink(nic(4, "dev4")));
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].kind, back[0].cause, back[0].device),
        (EventKind::Move, Cause::NetnsTeardown, Some(nic_key))
    );
    assert_eq!(at(&back[0].from), (Some("eth0"), Some(4), 4026532009));
    assert_eq!(at(&back[0].to), (Some("dev4"), Some(4), INIT));
    // Its nsid is gone with it.
    assert_eq!(
        f.tracker
            .on_message(Some(9), &RouteNetlinkMessage::NewLink(nic(4, "x")), f.now),
        Err(UnknownNsid(9))
    );
}

#[test]
fn a_veth_end_announced_before_its_pair_was_linked_still_takes_its_peer_down() {
    let mut f = fixture();
    // `ip -n A link add e0 type veth peer name e1 netns B`: e1 first, unlinked.
    f.feed(Some(2), RouteNetlinkMessage::NewLink(veth(2, "e1", 0)));
    f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(7, "e0", 2)));
    f.feed(None, nsid_gone(2));
    let peer = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(7, "e0", 0)));
    assert_eq!(
        (peer[0].cause, peer[0].netns_dying),
        (Cause::NetnsTeardown, Some(false))
    );
}

#[test]
fn refund_not_seen_is_reported_towards_init_net() {
    let mut f = fixture();
    f.feed(Some(1), RouteNetlinkMessage::NewLink(nic(4, "eth0")));
    assert_eq!(f.feed(None, nsid_gone(1)).len(), 1);
    let events = f.later(TEARDOWN_WAIT);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].cause),
        (EventKind::Move, Cause::NetnsTeardown)
    );
    assert_eq!(at(&events[0].to), (None, None, INIT));
}

#[test]
fn unrelated_or_late_delete_after_a_teardown_is_explicit() {
    let mut f = fixture();
    f.tracker
        .add_netns(4026532009, Some(9), &seen([veth(6, "vb", 5)]), false, f.now);
    f.feed(None, nsid_gone(9));
    f.feed(Some(2), RouteNetlinkMessage::NewLink(veth(5, "other", 2)));
    let events = f.feed(Some(2), RouteNetlinkMessage::DelLink(veth(5, "other", 0)));
    assert_eq!(events[0].cause, Cause::Explicit);
    // The right peer, but long after the teardown.
    f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)));
    f.now += TEARDOWN_WAIT;
    let events = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(5, "va", 0)));
    assert_eq!(events[0].cause, Cause::Explicit);
}

#[test]
fn unknown_nsid_is_reported_to_the_caller() {
    let mut f = fixture();
    let err = f
        .tracker
        .on_message(
            Some(42),
            &RouteNetlinkMessage::NewLink(veth(5, "va", 6)),
            f.now,
        )
        .unwrap_err();
    assert_eq!(err, UnknownNsid(42));
    // nsid traffic from unknown namespaces is simply not ours.
    assert!(f
        .tracker
        .on_message(Some(42), &nsid_gone(1), f.now)
        .unwrap()
        .is_empty());
}

#[test]
fn resync_reports_what_changed_unseen() {
    let mut f = fixture();
    f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)));
    f.feed(
        Some(1),
        RouteNetlinkMessage::NewLink(link(
            7,
            "gone",
            vec![LinkAttribute::Address(vec![2, 0, 0, 0, 0, 7])],
        )),
    );
    let moved_key = f.feed(None, RouteNetlinkMessage::NewLink(nic(3, "eth1")))[0].device;
    let dumps = vec![
        (HOST, vec![]),
        (A, vec![veth(5, "renamed", 6)]),
        (
            B,
            vec![
                nic(2, "eth1"),
                link(
                    9,
                    "new",
                    vec![LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9])],
                ),
            ],
        ),
    ];
    let dumps = dumps
        .into_iter()
        .map(|(netns, msgs)| (netns, seen(msgs)))
        .collect();
    let events = f.tracker.resync(dumps, f.now);
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.kind, e.cause, e.current_name().unwrap().to_owned()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventKind::Rename, Cause::Unknown, "renamed".into()),
            (EventKind::Move, Cause::Unknown, "eth1".into()),
            (EventKind::Register, Cause::Unknown, "new".into()),
        ]
    );
    assert_eq!(events[1].device, moved_key);
    assert_eq!(at(&events[1].from), (Some("eth1"), Some(3), HOST));
    let later = f.later(MOVE_WAIT);
    assert_eq!(later.len(), 1);
    assert_eq!(
        (later[0].kind, later[0].cause, at(&later[0].from)),
        (
            EventKind::Unregister,
            Cause::Unknown,
            (Some("gone"), Some(7), A)
        )
    );
}

#[test]
fn a_dump_naming_a_reused_nsid_ends_the_old_netns() {
    let mut f = fixture();
    f.feed(Some(2), RouteNetlinkMessage::NewLink(veth(5, "vb", 6)));
    let events = f.tracker.add_netns(4026532077, Some(2), &[], false, f.now);
    assert_eq!(events[0].kind, EventKind::TeardownBegin);
    assert_eq!(events[0].from.as_ref().unwrap().netns.inode, B);
    assert_eq!(events[1].current_name(), Some("vb"));
    assert!(!f.tracker.knows(B));
    assert!(f.tracker.watched().contains(&(4026532077, Some(2))));
}

// ---- causes --------------------------------------------------------------------------

const BUS: &str = "0000:00:04.0";

fn on_bus(mut msg: LinkMessage) -> LinkMessage {
    msg.attributes
        .push(LinkAttribute::ParentDevName(BUS.into()));
    msg
}

fn upper(ifindex: u32, name: &str, kind: InfoKind, lower: u32, elsewhere: bool) -> LinkMessage {
    let mut attrs = vec![
        LinkAttribute::Link(lower),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(kind)]),
    ];
    if elsewhere {
        attrs.push(LinkAttribute::LinkNetNsId(0));
    }
    link(ifindex, name, attrs)
}

/// A bind names its driver; an unbind does not (the kernel cleared it before sending).
fn driver(bound: bool) -> DriverChange {
    DriverChange {
        bound,
        bus_addr: BUS.into(),
        driver: bound.then(|| "e1000".into()),
    }
}

fn parent_of(e: &Event) -> Option<(&str, u32)> {
    let p = e.parent.as_ref()?;
    Some((p.name.as_deref()?, p.ifindex?))
}

/// The guest's driver reload: eth1 (NIC) <- eth1.9 (vlan) <- A's eth0 (macvlan); the
/// kernel sends the uppers' DELLINKs first and the unbind uevent last.
#[test]
fn a_driver_reload_reads_as_unbind_parent_gone_and_bind() {
    let mut f = fixture();
    assert!(f
        .feed(None, RouteNetlinkMessage::NewLink(on_bus(nic(3, "eth1"))))
        .is_empty());
    let nic_key = f.tracker.on_driver_change(driver(true), f.now)[0].device;
    // Bound before the tracer started: the driver is found by the bus address.
    let mut f2 = fixture();
    f2.tracker
        .add_netns(HOST, None, &seen([on_bus(nic(4, "eth2"))]), false, f2.now);
    f2.feed(None, RouteNetlinkMessage::DelLink(on_bus(nic(4, "eth2"))));
    let gone = f2.tracker.on_driver_change(driver(false), f2.now);
    assert_eq!(gone[0].driver.as_deref(), Some("e1000"));
    f.feed(
        None,
        RouteNetlinkMessage::NewLink(upper(5, "eth1.9", InfoKind::Vlan, 3, false)),
    );
    f.feed(
        Some(1),
        RouteNetlinkMessage::NewLink(upper(6, "eth0", InfoKind::MacVlan, 5, true)),
    );

    let del = |m| RouteNetlinkMessage::DelLink(m);
    assert!(f
        .feed(Some(1), del(upper(6, "eth0", InfoKind::MacVlan, 5, true)))
        .is_empty());
    let pod = f.feed(None, del(upper(5, "eth1.9", InfoKind::Vlan, 3, false)));
    assert_eq!(pod.len(), 1, "{pod:?}");
    assert_eq!(
        (pod[0].cause, at(&pod[0].from)),
        (Cause::ParentGone, (Some("eth0"), Some(6), A))
    );
    assert_eq!(parent_of(&pod[0]), Some(("eth1.9", 5)));
    f.now += Duration::from_millis(5);
    let vlan = f.feed(None, del(on_bus(nic(3, "eth1"))));
    assert_eq!(vlan.len(), 1, "{vlan:?}");
    assert_eq!(
        (vlan[0].cause, parent_of(&vlan[0])),
        (Cause::ParentGone, Some(("eth1", 3)))
    );
    assert_eq!(vlan[0].parent.as_ref().unwrap().device, nic_key);
    assert_eq!(f.tracker.next_deadline(), Some(f.now + UEVENT_WAIT));

    let nic_gone = f.tracker.on_driver_change(driver(false), f.now);
    assert_eq!(nic_gone.len(), 1);
    let e = &nic_gone[0];
    assert_eq!(
        (e.kind, e.cause),
        (EventKind::Unregister, Cause::DriverUnbind)
    );
    assert_eq!(
        (e.driver.as_deref(), e.bus_addr.as_deref()),
        (Some("e1000"), Some(BUS))
    );
    assert_eq!(e.perm_addr.as_deref(), Some(MAC_STR));

    assert!(f
        .feed(None, RouteNetlinkMessage::NewLink(on_bus(nic(8, "eth1"))))
        .is_empty());
    let back = f.tracker.on_driver_change(driver(true), f.now);
    assert_eq!(
        (back[0].kind, back[0].cause),
        (EventKind::Register, Cause::DriverBind)
    );
    assert_eq!(
        (at(&back[0].to), back[0].bus_addr.as_deref()),
        ((Some("eth1"), Some(8), HOST), Some(BUS))
    );
    assert!(f.later(UEVENT_WAIT * 2).is_empty());
}

#[test]
fn an_upper_deleted_alone_is_explicit_once_its_wait_is_over() {
    let mut f = fixture();
    f.feed(None, RouteNetlinkMessage::NewLink(nic(3, "veth0")));
    f.feed(
        None,
        RouteNetlinkMessage::NewLink(upper(7, "mv0", InfoKind::MacVlan, 3, false)),
    );
    let del = RouteNetlinkMessage::DelLink(upper(7, "mv0", InfoKind::MacVlan, 3, false));
    assert!(f.feed(None, del).is_empty());
    assert!(f.later(PARENT_WAIT / 2).is_empty());
    let events = f.later(PARENT_WAIT);
    assert_eq!(
        (events[0].cause, events[0].parent.clone()),
        (Cause::Explicit, None)
    );
    // Its lower going later is no cause of it.
    assert_eq!(
        f.feed(None, RouteNetlinkMessage::DelLink(nic(3, "veth0")))
            .len(),
        1
    );
}

#[test]
fn an_upper_whose_lower_went_first_is_parent_gone_at_once() {
    let mut f = fixture();
    let mut lower = veth(3, "veth0", 4);
    lower.header.index = 3;
    assert_eq!(f.feed(None, RouteNetlinkMessage::DelLink(lower)).len(), 1);
    let events = f.feed(
        None,
        RouteNetlinkMessage::DelLink(upper(7, "mv0", InfoKind::MacVlan, 3, false)),
    );
    assert_eq!(
        (events[0].cause, parent_of(&events[0])),
        (Cause::ParentGone, Some(("veth0", 3)))
    );
    // A lower of that ifindex in another netns is another device.
    let events = f.feed(
        Some(1),
        RouteNetlinkMessage::DelLink(upper(8, "mv1", InfoKind::MacVlan, 3, false)),
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn a_nic_without_an_unbind_is_unknown_and_says_why() {
    let mut f = fixture();
    f.tracker.on_driver_change(driver(false), f.now);
    // The uevent came first this time.
    let gone = f.feed(None, RouteNetlinkMessage::DelLink(on_bus(nic(3, "eth1"))));
    assert_eq!(gone[0].cause, Cause::DriverUnbind);
    f.now += UEVENT_WAIT * 2;
    assert!(f
        .feed(None, RouteNetlinkMessage::DelLink(on_bus(nic(4, "eth2"))))
        .is_empty());
    let events = f.later(UEVENT_WAIT);
    assert_eq!(events[0].cause, Cause::Unknown);
    assert_eq!(
        events[0].why.as_deref(),
        Some("no unbind uevent for its bus device 0000:00:04.0 within 2s")
    );
    f.tracker.without_uevents("EPERM".into());
    let events = f.feed(None, RouteNetlinkMessage::NewLink(on_bus(nic(9, "eth3"))));
    assert_eq!(events[0].cause, Cause::Unknown);
    assert_eq!(
        events[0].why.as_deref(),
        Some("uevents cannot be read here (EPERM)")
    );
}

/// A macvlan moved into a pod keeps knowing where its lower is: a device of the same ifindex
/// going in a third netns (another test's, say) is not its parent.
#[test]
fn a_moved_upper_waits_for_its_own_lower_only() {
    let mut f = fixture();
    f.feed(None, RouteNetlinkMessage::NewLink(nic(3, "v0")));
    let mv = |elsewhere| upper(7, "mv0", InfoKind::MacVlan, 3, elsewhere);
    f.feed(None, RouteNetlinkMessage::NewLink(mv(false)));
    f.feed(None, leaving(mv(false), 1, 7));
    let moved = f.feed(Some(1), RouteNetlinkMessage::NewLink(mv(true)));
    assert_eq!(moved[0].kind, EventKind::Move);
    assert!(f
        .feed(Some(1), RouteNetlinkMessage::DelLink(mv(true)))
        .is_empty());
    let other = f.feed(Some(2), RouteNetlinkMessage::DelLink(veth(3, "x", 4)));
    assert_eq!(other.len(), 1, "only B's own device: {other:?}");
    let events = f.feed(None, RouteNetlinkMessage::DelLink(nic(3, "v0")));
    let gone = events.iter().find(|e| e.current_name() == Some("mv0"));
    assert_eq!(gone.and_then(parent_of), Some(("v0", 3)), "{events:?}");
}

/// What the tracer's dumps hand the tracker: each message boiled down.
fn seen(msgs: impl IntoIterator<Item = LinkMessage>) -> Vec<Seen> {
    msgs.into_iter().map(|m| Seen::read(&m)).collect()
}
