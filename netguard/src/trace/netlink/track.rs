//! Turns rtnetlink link and nsid messages into [`Event`]s: a view of every watched netns,
//! moves correlated from their two halves, and what a dying netns does to its devices.
//! No I/O here: the caller feeds messages, dumps and the time.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::event::{format_mac, Cause, DeviceKey, Event, EventKind, Place};
use crate::netns::Resolver;

/// How long the second half of a move may lag behind the first. Both are queued on our socket
/// back to back; the wait covers a destination we must first discover and dump.
pub(super) const MOVE_WAIT: Duration = Duration::from_millis(500);

/// How long after a netns stopped being visible its teardown still hands devices back or
/// takes veth peers down (cleanup_net runs from a workqueue, after RCU grace periods).
pub(super) const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// A message came from a netns whose nsid (in the host netns) is not mapped to an inode yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rtnetlink message from nsid {0}, which no known netns carries")]
pub(super) struct UnknownNsid(pub i32);

/// What one RTM_NEWLINK / RTM_DELLINK says about a device.
#[derive(Debug, Default)]
struct Seen {
    ifindex: u32,
    name: Option<String>,
    mac: Option<String>,
    perm: Option<String>,
    kind: Option<String>,
    /// IFLA_LINK: a veth's peer ifindex (in the peer's netns), a macvlan's lower device.
    link: Option<u32>,
    loopback: bool,
    /// IFLA_NEW_NETNSID: the destination of a move, as an nsid of the *source* netns.
    new_nsid: Option<i32>,
    new_ifindex: Option<u32>,
}

impl Seen {
    fn read(msg: &LinkMessage) -> Seen {
        let mut seen = Seen {
            ifindex: msg.header.index,
            loopback: msg.header.link_layer_type == LinkLayerType::Loopback,
            ..Seen::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => seen.name = Some(name.clone()),
                LinkAttribute::Address(bytes) => seen.mac = format_mac(bytes),
                LinkAttribute::PermAddress(bytes) => seen.perm = format_mac(bytes),
                LinkAttribute::LinkInfo(infos) => {
                    seen.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    })
                }
                // A veth whose peer is already gone reports 0.
                LinkAttribute::Link(index) if *index != 0 => seen.link = Some(*index),
                LinkAttribute::NewNetnsId(id) => seen.new_nsid = Some(*id),
                LinkAttribute::NewIfIndex(index) => {
                    seen.new_ifindex = u32::try_from(*index).ok().filter(|i| *i != 0)
                }
                _ => {}
            }
        }
        seen
    }
}

/// A device as last seen in one netns.
#[derive(Debug, Clone)]
struct Link {
    key: DeviceKey,
    name: Option<String>,
    mac: Option<String>,
    perm: Option<String>,
    kind: Option<String>,
    link: Option<u32>,
    loopback: bool,
}

impl Link {
    fn new(key: DeviceKey, seen: &Seen) -> Link {
        Link {
            key,
            name: seen.name.clone(),
            mac: seen.mac.clone(),
            perm: seen.perm.clone(),
            kind: seen.kind.clone(),
            link: seen.link,
            loopback: seen.loopback,
        }
    }

    /// Takes what the message says, keeping what it leaves out.
    fn refresh(&mut self, seen: &Seen) {
        fn keep<T: Clone>(old: &mut Option<T>, new: &Option<T>) {
            if new.is_some() {
                old.clone_from(new);
            }
        }
        keep(&mut self.name, &seen.name);
        keep(&mut self.mac, &seen.mac);
        keep(&mut self.perm, &seen.perm);
        keep(&mut self.kind, &seen.kind);
        keep(&mut self.link, &seen.link);
    }

    /// Same hardware: the permanent addresses when both have one, else the current ones.
    fn same_hardware(&self, seen: &Seen) -> bool {
        match (&self.perm, &seen.perm) {
            (Some(a), Some(b)) => a == b,
            _ => self.mac == seen.mac,
        }
    }

    fn has_hardware_address(&self) -> bool {
        self.perm.is_some() || self.mac.is_some()
    }

    fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

/// A device that left a netns and has not (yet) been seen arriving anywhere.
#[derive(Debug)]
struct Departure {
    /// Described when it left: a dying netns is forgotten by the resolver right after.
    from: Place,
    link: Link,
    way: Way,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Way {
    /// RTM_DELLINK with IFLA_NEW_NETNSID: somebody moved it. `dest` is known only when it
    /// left the host netns (the nsid is relative to the source).
    Moved {
        new_ifindex: Option<u32>,
        dest: Option<u64>,
    },
    /// A physical NIC of a dying netns, which the kernel hands back to init_net.
    Refund,
    /// Missing from a re-dump after an overrun: moved or destroyed, we cannot tell.
    Vanished,
}

impl Way {
    fn cause(self) -> Cause {
        match self {
            Way::Moved { .. } => Cause::Explicit,
            Way::Refund => Cause::NetnsTeardown,
            Way::Vanished => Cause::Unknown,
        }
    }
}

/// A veth destroyed with its netns; its peer elsewhere goes down with it.
#[derive(Debug)]
struct DeadVeth {
    ifindex: u32,
    peer: u32,
    until: Instant,
}

/// Everything the netlink backend knows about the watched namespaces.
pub(super) struct Tracker {
    resolver: Resolver,
    host: u64,
    init: u64,
    /// nsid (as assigned in the host netns) -> netns inode.
    nsids: HashMap<i32, u64>,
    /// netns inode -> ifindex -> device.
    views: HashMap<u64, BTreeMap<u32, Link>>,
    departures: Vec<Departure>,
    dead_veths: Vec<DeadVeth>,
    /// The first end of a veth pair being created: the kernel announces it before the pair is
    /// linked (IFLA_LINK 0); the other end follows at once and names it.
    unpaired: Option<(u64, u32)>,
    serial: u64,
}

impl Tracker {
    /// `host` is the netns the socket listens in; `init` where dying namespaces hand physical
    /// NICs back to.
    pub(super) fn new(resolver: Resolver, host: u64, init: u64) -> Tracker {
        Tracker {
            resolver,
            host,
            init,
            nsids: HashMap::new(),
            views: HashMap::new(),
            departures: Vec::new(),
            dead_veths: Vec::new(),
            unpaired: None,
            serial: 0,
        }
    }

    /// Whether the netns is watched already (it has a view).
    pub(super) fn knows(&self, netns: u64) -> bool {
        self.views.contains_key(&netns)
    }

    /// Every watched netns with the nsid to address it by (`None`: the host itself).
    pub(super) fn watched(&self) -> Vec<(u64, Option<i32>)> {
        let mut all: Vec<_> = self
            .nsids
            .iter()
            .map(|(id, inode)| (*inode, Some(*id)))
            .collect();
        all.push((self.host, None));
        all
    }

    /// Starts watching a netns from a dump of its links, completing moves into it whose
    /// arrival we could not see. The other links are reported as registered when `announce`
    /// (a netns found after start was made since, and sent nothing before it had an nsid).
    pub(super) fn add_netns(
        &mut self,
        netns: u64,
        nsid: Option<i32>,
        links: &[LinkMessage],
        announce: bool,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(id) = nsid {
            // The id was free to hand out again: the netns that had it died unseen (overrun).
            if let Some(old) = self.nsids.insert(id, netns).filter(|old| *old != netns) {
                events.extend(self.teardown(old, now));
            }
        }
        self.views.entry(netns).or_default();
        for msg in links {
            events.extend(self.arrive(netns, &Seen::read(msg), announce, now));
        }
        events
    }

    /// One message from the listening socket; `nsid` is the sender's nsid (`None`: the host).
    pub(super) fn on_message(
        &mut self,
        nsid: Option<i32>,
        msg: &RouteNetlinkMessage,
        now: Instant,
    ) -> Result<Vec<Event>, UnknownNsid> {
        Ok(match msg {
            // A bridge reports its ports in AF_BRIDGE link messages: a port joining sends
            // NEWLINK, one leaving DELLINK. The device itself neither appears nor goes.
            RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link)
                if link.header.interface_family == AddressFamily::Bridge =>
            {
                Vec::new()
            }
            RouteNetlinkMessage::NewLink(link) => {
                let netns = self.netns_of(nsid)?;
                self.link_added(netns, &Seen::read(link), now)
            }
            RouteNetlinkMessage::DelLink(link) => {
                let netns = self.netns_of(nsid)?;
                self.link_removed(netns, &Seen::read(link), now)
            }
            // Only the host's own table says which netns is going; other namespaces report
            // their own ids for it, which mean nothing here.
            RouteNetlinkMessage::DelNsId(ids) if self.netns_of(nsid) == Ok(self.host) => {
                match nsid_of(ids) {
                    Some(id) => match self.nsids.remove(&id) {
                        Some(netns) => self.teardown(netns, now),
                        None => Vec::new(),
                    },
                    None => Vec::new(),
                }
            }
            _ => Vec::new(),
        })
    }

    /// The netns is being destroyed: say so, destroy its virtual devices and loopback, and
    /// expect its physical NICs back in init_net.
    pub(super) fn teardown(&mut self, netns: u64, now: Instant) -> Vec<Event> {
        self.nsids.retain(|_, inode| *inode != netns);
        self.dead_veths.retain(|dead| dead.until > now);
        let links = self.views.remove(&netns).unwrap_or_default();
        let mut begin = Event::new(EventKind::TeardownBegin, Cause::NetnsTeardown);
        begin.from = Some(self.place(netns, None, None));
        let mut events = vec![begin];
        for (ifindex, link) in links {
            // default_device_exit_net refunds only devices without rtnl_link_ops; the
            // loopback and every virtual device die with the netns.
            let from = self.place(netns, link.name.clone(), Some(ifindex));
            if link.kind.is_none() && !link.loopback {
                self.departures.push(Departure {
                    from,
                    link,
                    way: Way::Refund,
                    deadline: now + TEARDOWN_WAIT,
                });
                continue;
            }
            if let (true, Some(peer)) = (link.is_veth(), link.link) {
                self.dead_veths.push(DeadVeth {
                    ifindex,
                    peer,
                    until: now + TEARDOWN_WAIT,
                });
            }
            events.push(self.unregistered(from, &link, Cause::NetnsTeardown, Some(true)));
        }
        // Its inode is free for the next netns, which must not be described by these names.
        self.resolver.forget(netns);
        events
    }

    /// After an overrun: fresh dumps of the watched namespaces, compared with the views.
    /// What changed unseen is reported with cause unknown.
    pub(super) fn resync(
        &mut self,
        dumps: Vec<(u64, Vec<LinkMessage>)>,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut arrivals = Vec::new();
        for (netns, msgs) in dumps {
            let mut old = self.views.remove(&netns).unwrap_or_default();
            let mut fresh = BTreeMap::new();
            for seen in msgs.iter().map(Seen::read) {
                match old.remove(&seen.ifindex) {
                    Some(mut link) if link.same_hardware(&seen) => {
                        let before = link.name.clone();
                        link.refresh(&seen);
                        events.extend(self.renamed(
                            netns,
                            seen.ifindex,
                            before,
                            &link,
                            Cause::Unknown,
                        ));
                        fresh.insert(seen.ifindex, link);
                    }
                    stale => {
                        if let Some(link) = stale {
                            self.vanished(netns, seen.ifindex, link, now);
                        }
                        arrivals.push((netns, seen));
                    }
                }
            }
            for (ifindex, link) in old {
                self.vanished(netns, ifindex, link, now);
            }
            self.views.insert(netns, fresh);
        }
        // Arrivals last, so that a device seen leaving one netns and arriving in another
        // pairs up whichever netns was dumped first.
        for (netns, seen) in arrivals {
            events.extend(self.arrive(netns, &seen, true, now));
        }
        events
    }

    /// Reports departures whose other half did not come in time, with what is known.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Event> {
        let (due, waiting) = std::mem::take(&mut self.departures)
            .into_iter()
            .partition(|d| d.deadline <= now);
        self.departures = waiting;
        due.into_iter()
            .map(|dep| {
                let to = match dep.way {
                    Way::Moved { new_ifindex, dest } => {
                        dest.map(|d| self.place(d, None, new_ifindex))
                    }
                    Way::Refund => Some(self.place(self.init, None, None)),
                    Way::Vanished => {
                        return self.unregistered(dep.from, &dep.link, Cause::Unknown, None)
                    }
                };
                let mut event = self.device_event(EventKind::Move, dep.way.cause(), &dep.link);
                event.from = Some(dep.from);
                event.to = to;
                event
            })
            .collect()
    }

    /// When [`expire`](Self::expire) has something to report next.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.departures.iter().map(|d| d.deadline).min()
    }

    fn netns_of(&self, nsid: Option<i32>) -> Result<u64, UnknownNsid> {
        match nsid {
            None => Ok(self.host),
            Some(id) => self.nsids.get(&id).copied().ok_or(UnknownNsid(id)),
        }
    }

    fn link_added(&mut self, netns: u64, seen: &Seen, now: Instant) -> Vec<Event> {
        let known = self
            .views
            .get_mut(&netns)
            .and_then(|view| view.get_mut(&seen.ifindex));
        let Some(link) = known else {
            return self.arrive(netns, seen, true, now).into_iter().collect();
        };
        let before = link.name.clone();
        link.refresh(seen);
        let link = link.clone();
        self.renamed(netns, seen.ifindex, before, &link, Cause::Explicit)
            .into_iter()
            .collect()
    }

    fn link_removed(&mut self, netns: u64, seen: &Seen, now: Instant) -> Vec<Event> {
        let link = match self
            .views
            .get_mut(&netns)
            .and_then(|view| view.remove(&seen.ifindex))
        {
            Some(mut link) => {
                link.refresh(seen);
                link
            }
            None => Link::new(self.new_key(netns, seen.ifindex), seen),
        };
        if seen.new_nsid.is_some() {
            let dest = if netns == self.host {
                seen.new_nsid.and_then(|id| self.nsids.get(&id).copied())
            } else {
                None
            };
            let from = self.place(netns, link.name.clone(), Some(seen.ifindex));
            let way = Way::Moved {
                new_ifindex: seen.new_ifindex,
                dest,
            };
            self.departures.push(Departure {
                from,
                link,
                way,
                deadline: now + MOVE_WAIT,
            });
            return Vec::new();
        }
        let peer_died = link.is_veth()
            && link.link.is_some_and(|peer| {
                self.dead_veths
                    .iter()
                    .any(|d| d.ifindex == peer && d.peer == seen.ifindex && d.until > now)
            });
        let cause = if peer_died {
            Cause::NetnsTeardown
        } else {
            Cause::Unknown
        };
        // Messages from a netns stop once its teardown began, so this one is alive.
        let from = self.place(netns, link.name.clone(), Some(seen.ifindex));
        vec![self.unregistered(from, &link, cause, Some(false))]
    }

    /// A device shows up in `netns`: the arrival of a departure we wait for, or a new device
    /// (reported only when `announce`).
    fn arrive(&mut self, netns: u64, seen: &Seen, announce: bool, now: Instant) -> Option<Event> {
        let matched = self
            .departures
            .iter()
            .position(|dep| self.is_arrival_of(dep, netns, seen, now));
        if let Some(index) = matched {
            let dep = self.departures.remove(index);
            let mut link = dep.link.clone();
            link.refresh(seen);
            let mut event = self.device_event(EventKind::Move, dep.way.cause(), &link);
            event.from = Some(dep.from);
            event.to = Some(self.place(netns, link.name.clone(), Some(seen.ifindex)));
            self.views
                .entry(netns)
                .or_default()
                .insert(seen.ifindex, link);
            return Some(event);
        }
        let link = Link::new(self.new_key(netns, seen.ifindex), seen);
        if link.is_veth() {
            self.pair(netns, seen.ifindex, link.link);
        }
        let event = announce.then(|| {
            let mut event = self.device_event(EventKind::Register, Cause::Unknown, &link);
            event.to = Some(self.place(netns, link.name.clone(), Some(seen.ifindex)));
            event
        });
        self.views
            .entry(netns)
            .or_default()
            .insert(seen.ifindex, link);
        event
    }

    fn is_arrival_of(&self, dep: &Departure, netns: u64, seen: &Seen, now: Instant) -> bool {
        if dep.from.netns.inode == netns || dep.deadline < now || !dep.link.same_hardware(seen) {
            return false;
        }
        match dep.way {
            Way::Moved { new_ifindex, dest } => {
                dest.is_none_or(|d| d == netns)
                    && new_ifindex.map_or(dep.link.has_hardware_address(), |index| {
                        index == seen.ifindex
                    })
            }
            Way::Refund => netns == self.init && dep.link.has_hardware_address(),
            Way::Vanished => dep.link.has_hardware_address(),
        }
    }

    /// Remembers the first end of a new veth pair, or links it with the second.
    fn pair(&mut self, netns: u64, ifindex: u32, peer: Option<u32>) {
        let Some(peer) = peer else {
            self.unpaired = Some((netns, ifindex));
            return;
        };
        if let Some((first_netns, first)) = self.unpaired.take().filter(|(_, first)| *first == peer)
        {
            if let Some(first) = self
                .views
                .get_mut(&first_netns)
                .and_then(|view| view.get_mut(&first))
            {
                first.link = Some(ifindex);
            }
        }
    }

    fn vanished(&mut self, netns: u64, ifindex: u32, link: Link, now: Instant) {
        let from = self.place(netns, link.name.clone(), Some(ifindex));
        self.departures.push(Departure {
            from,
            link,
            way: Way::Vanished,
            deadline: now + MOVE_WAIT,
        });
    }

    fn renamed(
        &self,
        netns: u64,
        ifindex: u32,
        before: Option<String>,
        link: &Link,
        cause: Cause,
    ) -> Option<Event> {
        if before.is_none() || before == link.name {
            return None;
        }
        let mut event = self.device_event(EventKind::Rename, cause, link);
        event.from = Some(self.place(netns, before, Some(ifindex)));
        event.to = Some(self.place(netns, link.name.clone(), Some(ifindex)));
        Some(event)
    }

    fn unregistered(&self, from: Place, link: &Link, cause: Cause, dying: Option<bool>) -> Event {
        let mut event = self.device_event(EventKind::Unregister, cause, link);
        event.from = Some(from);
        event.netns_dying = dying;
        event
    }

    fn device_event(&self, kind: EventKind, cause: Cause, link: &Link) -> Event {
        let mut event = Event::new(kind, cause);
        event.device = Some(link.key);
        event.link_kind.clone_from(&link.kind);
        event.perm_addr.clone_from(&link.perm);
        event
    }

    fn place(&self, netns: u64, name: Option<String>, ifindex: Option<u32>) -> Place {
        Place {
            name,
            ifindex,
            netns: self.resolver.describe(netns),
        }
    }

    /// A key for a device first seen now; the serial keeps a reused inode/ifindex pair apart.
    fn new_key(&mut self, netns: u64, ifindex: u32) -> DeviceKey {
        self.serial += 1;
        let mut hasher = DefaultHasher::new();
        (netns, ifindex, self.serial).hash(&mut hasher);
        DeviceKey(hasher.finish())
    }
}

/// The NETNSA_NSID of an nsid message.
pub(super) fn nsid_of(msg: &NsidMessage) -> Option<i32> {
    msg.attributes.iter().find_map(|attr| match attr {
        NsidAttribute::Id(id) => Some(*id),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;

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
        let mut tracker = Tracker::new(resolver, HOST, INIT);
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
        assert_eq!((ev.kind, ev.cause), (EventKind::Register, Cause::Unknown));
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
            .add_netns(C, Some(4), &[lo, veth(2, "eth0", 5)], true, f.now);
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
            (EventKind::Unregister, Cause::Unknown, key, Some(false))
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
            &[lo, veth(6, "vb", 5), nic(4, "eth0")],
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
    fn unrelated_or_late_delete_after_a_teardown_keeps_cause_unknown() {
        let mut f = fixture();
        f.tracker
            .add_netns(4026532009, Some(9), &[veth(6, "vb", 5)], false, f.now);
        f.feed(None, nsid_gone(9));
        f.feed(Some(2), RouteNetlinkMessage::NewLink(veth(5, "other", 2)));
        let events = f.feed(Some(2), RouteNetlinkMessage::DelLink(veth(5, "other", 0)));
        assert_eq!(events[0].cause, Cause::Unknown);
        // The right peer, but long after the teardown.
        f.feed(Some(1), RouteNetlinkMessage::NewLink(veth(5, "va", 6)));
        f.now += TEARDOWN_WAIT;
        let events = f.feed(Some(1), RouteNetlinkMessage::DelLink(veth(5, "va", 0)));
        assert_eq!(events[0].cause, Cause::Unknown);
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
}
