//! Why a device went or came, where one rtnetlink message does not say: from the messages
//! and uevents around it. An event whose cause may still be told is held until then.
//!
//! - parent-gone: an upper device (a link whose IFLA_LINK names its lower device: vlan,
//!   macvlan, ipvlan; not a veth, whose IFLA_LINK is its peer) whose DELLINK and its lower
//!   device's DELLINK arrive within [`PARENT_WAIT`] of each other, in either order. The
//!   lower is that ifindex in the netns the upper was created in beside it (kept across
//!   moves); for an upper created with its lower elsewhere, in any other netns. The
//!   kernel unregisters uppers inside the lower's NETDEV_UNREGISTER notification, before it
//!   sends the lower's DELLINK, so the upper's normally comes first.
//! - driver-unbind / driver-bind: a NIC (a link with IFLA_PARENT_DEV_NAME, its bus device)
//!   whose DELLINK / NEWLINK and an `unbind` / `bind` uevent for that bus device arrive
//!   within [`UEVENT_WAIT`] of each other. The kernel sends the uevent once the driver's
//!   remove / probe returned, so it normally comes after. An unbind uevent names no driver
//!   (the kernel cleared it first): the driver is the one last seen bound to that device.
//! - explicit: what is none of these, once its wait is over. A NIC without rtnl_link_ops
//!   cannot be deleted by request: without an unbind it is unknown, and `why` says so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::link::Link;
use crate::event::{Cause, Event, Parent};
use crate::trace::netlink::uevent::DriverChange;

/// How far apart an upper's DELLINK and its lower's may be: both come from one rtnl-locked
/// unregister and are queued back to back; the margin covers a busy reader.
pub(crate) const PARENT_WAIT: Duration = Duration::from_millis(500);

/// How far apart a NIC's link message and its driver's uevent may be: the driver's remove
/// or probe finishes between them (waiting for the last references to the device, too).
pub(crate) const UEVENT_WAIT: Duration = Duration::from_secs(2);

/// What a held event waits for.
#[derive(Debug)]
enum Wait {
    /// The DELLINK of `ifindex` in `netns`, or where that is not known, in any netns but
    /// the upper's own (`own`).
    Lower {
        own: u64,
        netns: Option<u64>,
        ifindex: u32,
    },
    /// A driver binding (`bound`) or unbinding the bus device `bus`.
    Driver { bus: String, bound: bool },
}

#[derive(Debug)]
struct Held {
    event: Event,
    wait: Wait,
    deadline: Instant,
    /// Why the cause is unknown if the wait ends with nothing; `None`: explicit then.
    otherwise: Option<String>,
}

/// A device that went recently, as an upper's parent.
#[derive(Debug)]
struct Gone {
    netns: u64,
    ifindex: u32,
    parent: Parent,
    at: Instant,
}

/// Finds the driver bound to a bus device now (sysfs; a stand-in in tests).
pub(super) type DriverLookup = fn(&str) -> Option<String>;

#[derive(Debug)]
pub(super) struct Causes {
    held: Vec<Held>,
    gone: Vec<Gone>,
    drivers: Vec<(Instant, DriverChange)>,
    /// bus address -> the driver last seen bound to it.
    bound: HashMap<String, String>,
    lookup: DriverLookup,
    /// Why uevents cannot be read here, if they cannot.
    no_uevents: Option<String>,
}

impl Causes {
    pub(super) fn new(lookup: DriverLookup) -> Causes {
        Causes {
            held: Vec::new(),
            gone: Vec::new(),
            drivers: Vec::new(),
            bound: HashMap::new(),
            lookup,
            no_uevents: None,
        }
    }

    /// A NIC seen: learns which driver its bus device has while it has one.
    pub(super) fn learn(&mut self, link: &Link) {
        let Some(bus) = &link.attrs.bus else { return };
        if !self.bound.contains_key(bus) {
            if let Some(driver) = (self.lookup)(bus) {
                self.bound.insert(bus.clone(), driver);
            }
        }
    }

    /// Uevents cannot be read: NICs are not held for them, and their causes say why.
    pub(super) fn without_uevents(&mut self, why: String) {
        self.no_uevents = Some(why);
    }

    /// `netns`'s device `ifindex` went (in any way): settles the uppers held for it.
    pub(super) fn gone(
        &mut self,
        netns: u64,
        ifindex: u32,
        link: &Link,
        now: Instant,
    ) -> Vec<Event> {
        self.gone
            .retain(|g| now.duration_since(g.at) <= PARENT_WAIT);
        let parent = Parent {
            name: link.attrs.name.clone(),
            ifindex: Some(ifindex),
            device: Some(link.key),
        };
        let (uppers, rest): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| lower_is(&h.wait, netns, ifindex) && h.deadline >= now);
        self.held = rest;
        self.gone.push(Gone {
            netns,
            ifindex,
            parent: parent.clone(),
            at: now,
        });
        uppers
            .into_iter()
            .map(|h| parent_gone(h.event, parent.clone()))
            .collect()
    }

    /// A device went outside a netns teardown: `event` (cause explicit) settled now, or held
    /// for what may tell more.
    pub(super) fn unregistered(
        &mut self,
        event: Event,
        netns: u64,
        link: &Link,
        now: Instant,
    ) -> Option<Event> {
        if let Some((ifindex, lower_netns)) = link.lower() {
            let wait = Wait::Lower {
                own: netns,
                netns: lower_netns,
                ifindex,
            };
            if let Some(gone) = self.gone.iter().find(|g| {
                lower_is(&wait, g.netns, g.ifindex) && now.duration_since(g.at) <= PARENT_WAIT
            }) {
                return Some(parent_gone(event, gone.parent.clone()));
            }
            return self.hold(event, wait, now + PARENT_WAIT, None);
        }
        // Virtual links can be deleted by request; a NIC cannot.
        let otherwise = |bus: &str| {
            link.attrs.kind.is_none().then(|| {
                format!("no unbind uevent for its bus device {bus} within {UEVENT_WAIT:?}")
            })
        };
        self.for_driver(event, link, false, now, otherwise)
    }

    /// A device appeared while watched: `event` (cause explicit) settled now, or held for a
    /// driver's bind.
    pub(super) fn registered(&mut self, event: Event, link: &Link, now: Instant) -> Option<Event> {
        let otherwise = |bus: &str| {
            Some(format!(
                "no bind uevent for its bus device {bus} within {UEVENT_WAIT:?}"
            ))
        };
        self.for_driver(event, link, true, now, otherwise)
    }

    fn for_driver(
        &mut self,
        mut event: Event,
        link: &Link,
        bound: bool,
        now: Instant,
        otherwise: impl Fn(&str) -> Option<String>,
    ) -> Option<Event> {
        let Some(bus) = link.attrs.bus.clone() else {
            return Some(event);
        };
        let Some(otherwise) = otherwise(&bus) else {
            return Some(event);
        };
        if let Some(why) = &self.no_uevents {
            event.cause = Cause::Unknown;
            event.why = Some(format!("uevents cannot be read here ({why})"));
            return Some(event);
        }
        self.drivers
            .retain(|(at, _)| now.duration_since(*at) <= UEVENT_WAIT);
        if let Some((_, change)) = self
            .drivers
            .iter()
            .find(|(_, c)| c.bound == bound && c.bus_addr == bus)
        {
            return Some(driver_changed(event, change));
        }
        self.hold(
            event,
            Wait::Driver { bus, bound },
            now + UEVENT_WAIT,
            Some(otherwise),
        )
    }

    fn hold(
        &mut self,
        event: Event,
        wait: Wait,
        deadline: Instant,
        otherwise: Option<String>,
    ) -> Option<Event> {
        self.held.push(Held {
            event,
            wait,
            deadline,
            otherwise,
        });
        None
    }

    /// A driver bound or let go of a bus device: settles the NICs held for it, or is kept
    /// for the link message that may still come.
    pub(super) fn driver_change(&mut self, mut change: DriverChange, now: Instant) -> Vec<Event> {
        match (&change.driver, change.bound) {
            (Some(driver), true) => {
                self.bound.insert(change.bus_addr.clone(), driver.clone());
            }
            (None, false) => change.driver = self.bound.remove(&change.bus_addr),
            _ => {}
        }
        let (settled, rest): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| {
                matches!(&h.wait, Wait::Driver { bus, bound }
                    if *bound == change.bound && *bus == change.bus_addr)
            });
        self.held = rest;
        let events: Vec<Event> = settled
            .into_iter()
            .map(|h| driver_changed(h.event, &change))
            .collect();
        if events.is_empty() {
            self.drivers
                .retain(|(at, _)| now.duration_since(*at) <= UEVENT_WAIT);
            self.drivers.push((now, change));
        }
        events
    }

    /// Held events whose wait is over, with the cause they are left with.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Event> {
        let (due, waiting): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.deadline <= now);
        self.held = waiting;
        due.into_iter()
            .map(|h| {
                let mut event = h.event;
                if let Some(why) = h.otherwise {
                    event.cause = Cause::Unknown;
                    event.why = Some(why);
                }
                event
            })
            .collect()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.deadline).min()
    }
}

fn lower_is(wait: &Wait, netns: u64, ifindex: u32) -> bool {
    match wait {
        Wait::Lower {
            own,
            netns: lower_netns,
            ifindex: lower,
        } => *lower == ifindex && lower_netns.map_or(*own != netns, |n| n == netns),
        Wait::Driver { .. } => false,
    }
}

fn parent_gone(mut event: Event, parent: Parent) -> Event {
    event.cause = Cause::ParentGone;
    event.parent = Some(parent);
    event
}

fn driver_changed(mut event: Event, change: &DriverChange) -> Event {
    event.cause = if change.bound {
        Cause::DriverBind
    } else {
        Cause::DriverUnbind
    };
    event.driver.clone_from(&change.driver);
    event
}
