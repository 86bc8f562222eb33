//! Turns rtnetlink link and nsid messages into [`Event`]s: a view of every watched netns,
//! moves correlated from their two halves, what a dying netns does to its devices, and why
//! devices go and come (`causes`). No I/O here: the caller feeds messages, dumps, driver
//! uevents and the time, and gives the function that reads a bus device's driver.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

mod causes;
mod link;
mod view;

use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::event::{Cause, DeviceKey, Event, EventKind, Place};
use crate::netns::Resolver;
use crate::trace::netlink::uevent::DriverChange;
use causes::Causes;
use causes::DriverLookup;
#[cfg(test)]
use causes::{PARENT_WAIT, UEVENT_WAIT};
use link::Link;
pub(super) use link::Seen;
use view::View;

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

    /// For cause unknown: why.
    fn why(self) -> Option<&'static str> {
        matches!(self, Way::Vanished).then_some(VANISHED)
    }
}

const VANISHED: &str =
    "missing from a re-read after an rtnetlink overrun: moved or destroyed unseen";

/// Why a device is reported as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announce {
    /// Its NEWLINK arrived while watching.
    Live,
    /// It was in a netns found after start (made since, but silent until it had an nsid).
    Discovered,
    /// It showed up in a re-read after an overrun.
    Resynced,
}

impl Announce {
    fn why(self) -> Option<&'static str> {
        match self {
            Announce::Live => None,
            Announce::Discovered => {
                Some("created in a netns before it was watched (it had no nsid to listen by)")
            }
            Announce::Resynced => Some("seen in a re-read after an rtnetlink overrun"),
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
    views: HashMap<u64, View>,
    departures: Vec<Departure>,
    dead_veths: Vec<DeadVeth>,
    /// The first end of a veth pair being created: the kernel announces it before the pair is
    /// linked (IFLA_LINK 0); the other end follows at once and names it.
    unpaired: Option<(u64, u32)>,
    causes: Causes,
    serial: u64,
}

impl Tracker {
    /// `host` is the netns the socket listens in; `init` where dying namespaces hand physical
    /// NICs back to.
    pub(super) fn new(
        resolver: Resolver,
        host: u64,
        init: u64,
        driver_lookup: DriverLookup,
    ) -> Tracker {
        Tracker {
            resolver,
            host,
            init,
            nsids: HashMap::new(),
            views: HashMap::new(),
            departures: Vec::new(),
            dead_veths: Vec::new(),
            unpaired: None,
            causes: Causes::new(driver_lookup),
            serial: 0,
        }
    }

    /// Uevents cannot be read here: NICs' driver causes are unknown, and say why.
    pub(super) fn without_uevents(&mut self, why: String) {
        self.causes.without_uevents(why);
    }

    /// A driver bound or unbound a bus device (from the uevent socket).
    pub(super) fn on_driver_change(&mut self, change: DriverChange, now: Instant) -> Vec<Event> {
        self.causes.driver_change(change, now)
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
        links: &[Seen],
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
        for seen in links {
            let announce = announce.then_some(Announce::Discovered);
            events.extend(self.arrive(netns, seen, announce, now));
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
            let from = self.place(netns, link.attrs.name.clone(), Some(ifindex));
            if link.attrs.kind.is_none() && !link.attrs.loopback {
                self.departures.push(Departure {
                    from,
                    link,
                    way: Way::Refund,
                    deadline: now + TEARDOWN_WAIT,
                });
                continue;
            }
            if let (true, Some(peer)) = (link.is_veth(), link.attrs.link) {
                self.dead_veths.push(DeadVeth {
                    ifindex,
                    peer,
                    until: now + TEARDOWN_WAIT,
                });
            }
            events.push(self.unregistered(from, &link, Cause::NetnsTeardown, Some(true)));
            events.extend(self.causes.gone(netns, ifindex, &link, now));
        }
        // Its inode is free for the next netns, which must not be described by these names.
        self.resolver.forget(netns);
        events
    }

    /// After an overrun: fresh dumps of the watched namespaces, compared with the views.
    /// What changed unseen is reported with cause unknown.
    pub(super) fn resync(&mut self, dumps: Vec<(u64, Vec<Seen>)>, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let mut arrivals = Vec::new();
        for (netns, msgs) in dumps {
            let mut old = self.views.remove(&netns).unwrap_or_default();
            let mut fresh = View::default();
            for seen in msgs {
                match old.remove(&seen.ifindex) {
                    Some(mut link) if link.same_hardware(&seen) => {
                        let before = link.attrs.name.clone();
                        link.refresh(&seen);
                        events.extend(
                            self.renamed(netns, seen.ifindex, before, &link, Cause::Unknown)
                                .map(|mut event| {
                                    event.why = Announce::Resynced.why().map(str::to_owned);
                                    event
                                }),
                        );
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
            events.extend(self.arrive(netns, &seen, Some(Announce::Resynced), now));
        }
        events
    }

    /// Reports departures whose other half did not come in time, with what is known.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Event> {
        let (due, waiting) = std::mem::take(&mut self.departures)
            .into_iter()
            .partition(|d| d.deadline <= now);
        self.departures = waiting;
        let mut events: Vec<Event> = due
            .into_iter()
            .map(|dep| {
                let to = match dep.way {
                    Way::Moved { new_ifindex, dest } => {
                        dest.map(|d| self.place(d, None, new_ifindex))
                    }
                    Way::Refund => Some(self.place(self.init, None, None)),
                    Way::Vanished => {
                        let mut event =
                            self.unregistered(dep.from, &dep.link, Cause::Unknown, None);
                        event.why = dep.way.why().map(str::to_owned);
                        return event;
                    }
                };
                let mut event = self.device_event(EventKind::Move, dep.way.cause(), &dep.link);
                event.from = Some(dep.from);
                event.to = to;
                event
            })
            .collect();
        events.extend(self.causes.expire(now));
        events
    }

    /// When [`expire`](Self::expire) has something to report next.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.departures
            .iter()
            .map(|d| d.deadline)
            .chain(self.causes.next_deadline())
            .min()
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
            return self
                .arrive(netns, seen, Some(Announce::Live), now)
                .into_iter()
                .collect();
        };
        let before = link.attrs.name.clone();
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
            None => Link::new(self.new_key(netns, seen.ifindex), netns, seen),
        };
        if seen.new_nsid.is_some() {
            let dest = if netns == self.host {
                seen.new_nsid.and_then(|id| self.nsids.get(&id).copied())
            } else {
                None
            };
            let from = self.place(netns, link.attrs.name.clone(), Some(seen.ifindex));
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
            && link.attrs.link.is_some_and(|peer| {
                self.dead_veths
                    .iter()
                    .any(|d| d.ifindex == peer && d.peer == seen.ifindex && d.until > now)
            });
        // Messages from a netns stop once its teardown began, so this one is alive.
        let from = self.place(netns, link.attrs.name.clone(), Some(seen.ifindex));
        let mut events = self.causes.gone(netns, seen.ifindex, &link, now);
        if peer_died {
            events.push(self.unregistered(from, &link, Cause::NetnsTeardown, Some(false)));
        } else {
            let event = self.unregistered(from, &link, Cause::Explicit, Some(false));
            events.extend(self.causes.unregistered(event, netns, &link, now));
        }
        events
    }

    /// A device shows up in `netns`: the arrival of a departure we wait for, or a new device
    /// (reported only when `announce`; a live one may be held for its driver's bind).
    fn arrive(
        &mut self,
        netns: u64,
        seen: &Seen,
        announce: Option<Announce>,
        now: Instant,
    ) -> Option<Event> {
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
            event.to = Some(self.place(netns, link.attrs.name.clone(), Some(seen.ifindex)));
            self.views
                .entry(netns)
                .or_default()
                .insert(seen.ifindex, link);
            return Some(event);
        }
        let link = Link::new(self.new_key(netns, seen.ifindex), netns, seen);
        self.causes.learn(&link);
        if link.is_veth() {
            self.pair(netns, seen.ifindex, link.attrs.link);
        }
        let event = announce.and_then(|announce| {
            let cause = match announce.why() {
                Some(_) => Cause::Unknown,
                None => Cause::Explicit,
            };
            let mut event = self.device_event(EventKind::Register, cause, &link);
            event.why = announce.why().map(str::to_owned);
            event.to = Some(self.place(netns, link.attrs.name.clone(), Some(seen.ifindex)));
            match announce {
                Announce::Live => self.causes.registered(event, &link, now),
                _ => Some(event),
            }
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
                first.attrs.link = Some(ifindex);
            }
        }
    }

    fn vanished(&mut self, netns: u64, ifindex: u32, link: Link, now: Instant) {
        let from = self.place(netns, link.attrs.name.clone(), Some(ifindex));
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
        if before.is_none() || before == link.attrs.name {
            return None;
        }
        let mut event = self.device_event(EventKind::Rename, cause, link);
        event.from = Some(self.place(netns, before, Some(ifindex)));
        event.to = Some(self.place(netns, link.attrs.name.clone(), Some(ifindex)));
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
        event.link_kind.clone_from(&link.attrs.kind);
        event.perm_addr.clone_from(&link.attrs.perm);
        event.bus_addr.clone_from(&link.attrs.bus);
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
mod tests;
