//! Turns a recording into one timeline per device (every name, netns and cause it went
//! through, a NIC's across driver reloads) and the cascades: what went because what.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::event::{Cause, DeviceKey, Event, EventKind, Place};

/// How a device is told apart in a recording: a NIC by its bus address and permanent MAC (the
/// same card after a driver reload, under a new ifindex and device key); else the tracer's
/// device key where it has one, else the permanent MAC and the first ifindex seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum DeviceId {
    Card {
        bus_addr: String,
        perm_addr: Option<String>,
    },
    Key(DeviceKey),
    Hardware {
        perm_addr: Option<String>,
        ifindex: Option<u32>,
    },
}

/// One device's history.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub id: DeviceId,
    pub perm_addr: Option<String>,
    pub link_kind: Option<String>,
    /// Every name it carried, in order, without repeats in a row.
    pub names: Vec<String>,
    /// Its way in short: `eth1 ifindex 3 -> (driver e1000 unbound) -> eth1 ifindex 8`.
    pub path: Vec<String>,
    pub events: Vec<Event>,
}

/// Groups events by device, in order of first appearance; teardown windows (no device) are
/// left out.
pub fn timelines(events: &[Event]) -> Vec<Timeline> {
    // A card's events all go to it, also those of its keys that came without a bus address.
    let cards: HashMap<DeviceKey, DeviceId> = events
        .iter()
        .filter_map(|e| Some((e.device?, card_id(e)?)))
        .collect();
    let mut order: Vec<DeviceId> = Vec::new();
    let mut by_id: BTreeMap<DeviceId, Timeline> = BTreeMap::new();
    for event in events {
        let card = event.device.and_then(|key| cards.get(&key).cloned());
        let Some(id) = card.or_else(|| device_id(event)) else {
            continue;
        };
        let timeline = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            Timeline {
                id,
                perm_addr: None,
                link_kind: None,
                names: Vec::new(),
                path: Vec::new(),
                events: Vec::new(),
            }
        });
        timeline.perm_addr = timeline
            .perm_addr
            .take()
            .or_else(|| event.perm_addr.clone());
        timeline.link_kind = timeline
            .link_kind
            .take()
            .or_else(|| event.link_kind.clone());
        for place in [&event.from, &event.to].into_iter().flatten() {
            if let Some(name) = &place.name {
                if timeline.names.last() != Some(name) {
                    timeline.names.push(name.clone());
                }
            }
        }
        for step in path_steps(event, timeline.path.is_empty()) {
            if timeline.path.last() != Some(&step) {
                timeline.path.push(step);
            }
        }
        timeline.events.push(event.clone());
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect()
}

fn card_id(event: &Event) -> Option<DeviceId> {
    Some(DeviceId::Card {
        bus_addr: event.bus_addr.clone()?,
        perm_addr: event.perm_addr.clone(),
    })
}

/// `eth1 ifindex 3`, and the netns unless it is init_net.
fn place_text(place: &Place) -> String {
    let mut text = place.name.clone().unwrap_or_else(|| "?".into());
    if let Some(ifindex) = place.ifindex {
        text += &format!(" ifindex {ifindex}");
    }
    if !place.netns.is_init() {
        text += &format!(" netns {}", place.netns);
    }
    text
}

/// What one event adds to a device's path: where it went, or how it ended.
fn path_steps(event: &Event, first: bool) -> Vec<String> {
    let mut steps = Vec::new();
    if first {
        steps.extend(event.from.as_ref().map(place_text));
    }
    match event.kind {
        EventKind::Unregister => steps.push(match event.cause {
            Cause::DriverUnbind => format!(
                "(driver {} unbound)",
                event.driver.as_deref().unwrap_or("?")
            ),
            Cause::ParentGone => format!(
                "(gone with parent {})",
                event
                    .parent
                    .as_ref()
                    .map_or_else(|| "?".to_string(), |p| p.to_string())
            ),
            Cause::NetnsTeardown => "(destroyed with its netns)".into(),
            Cause::Explicit => "(deleted)".into(),
            Cause::DriverBind | Cause::Unknown => "(gone)".into(),
        }),
        _ => steps.extend(event.to.as_ref().map(place_text)),
    }
    steps
}

/// One unregister and what went because of it (the uppers whose parent it was, theirs, ...).
#[derive(Debug, Clone, Serialize)]
pub struct Cascade {
    pub event: Event,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<Cascade>,
}

impl Cascade {
    /// The tree as indented lines, each event rendered by `line`.
    pub fn lines(&self, line: &dyn Fn(&Event) -> String) -> Vec<String> {
        let mut out = Vec::new();
        self.push_lines(0, line, &mut out);
        out
    }

    fn push_lines(&self, depth: usize, line: &dyn Fn(&Event) -> String, out: &mut Vec<String>) {
        out.push(format!("{}{}", "  ".repeat(depth), line(&self.event)));
        for child in &self.then {
            child.push_lines(depth + 1, line, out);
        }
    }
}

/// Every unregister that took others with it, as a tree under the first cause: a driver's
/// unbind, a delete, a netns teardown.
pub fn cascades(events: &[Event]) -> Vec<Cascade> {
    let unregisters: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == EventKind::Unregister)
        .collect();
    let parent_of = |e: &Event| e.parent.as_ref().and_then(|p| p.device);
    let known = |key: Option<DeviceKey>| {
        key.is_some_and(|k| unregisters.iter().any(|e| e.device == Some(k)))
    };
    fn grow(event: &Event, all: &[&Event]) -> Cascade {
        let then = all
            .iter()
            .filter(|child| {
                child.cause == Cause::ParentGone
                    && event.device.is_some()
                    && child.parent.as_ref().and_then(|p| p.device) == event.device
            })
            .map(|child| grow(child, all))
            .collect();
        Cascade {
            event: event.clone(),
            then,
        }
    }
    unregisters
        .iter()
        .filter(|e| !known(parent_of(e)))
        .map(|root| grow(root, &unregisters))
        .filter(|tree| !tree.then.is_empty())
        .collect()
}

fn device_id(event: &Event) -> Option<DeviceId> {
    if let Some(key) = event.device {
        return Some(DeviceId::Key(key));
    }
    let place = event.from.as_ref().or(event.to.as_ref())?;
    place.name.as_ref()?;
    Some(DeviceId::Hardware {
        perm_addr: event.perm_addr.clone(),
        ifindex: place.ifindex,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Cause, EventKind, Netns, Place, INIT_NET};

    fn place(name: &str, ifindex: u32, netns: u64) -> Place {
        let names = if netns == 1 {
            vec![INIT_NET.to_string()]
        } else {
            vec![format!("/run/netns/c{netns}")]
        };
        Place {
            name: Some(name.into()),
            ifindex: Some(ifindex),
            netns: Netns {
                inode: netns,
                names,
            },
        }
    }

    fn event(kind: EventKind, key: u64, from: Option<Place>, to: Option<Place>) -> Event {
        let mut e = Event::new(kind, Cause::Explicit);
        e.device = Some(DeviceKey(key));
        e.from = from;
        e.to = to;
        e
    }

    #[test]
    fn one_device_through_lend_rename_and_refund() {
        let events = vec![
            event(
                EventKind::Move,
                7,
                Some(place("eth1", 3, 1)),
                Some(place("eth1", 3, 2)),
            ),
            event(
                EventKind::Rename,
                7,
                Some(place("eth1", 3, 2)),
                Some(place("eth0", 3, 2)),
            ),
            event(EventKind::Register, 9, None, Some(place("veth0", 5, 1))),
            event(
                EventKind::Move,
                7,
                Some(place("eth0", 3, 2)),
                Some(place("dev3", 3, 1)),
            ),
        ];
        let lines = timelines(&events);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].id, DeviceId::Key(DeviceKey(7)));
        assert_eq!(lines[0].names, ["eth1", "eth0", "dev3"]);
        assert_eq!(lines[0].events.len(), 3);
        assert_eq!(lines[1].names, ["veth0"]);
    }

    /// The guest's driver reload: eth1 (card 0000:00:04.0) <- eth1.9 <- the pod's eth0, and
    /// eth1 back under a new ifindex and key.
    fn driver_reload() -> Vec<Event> {
        let mut nic = event(EventKind::Unregister, 3, Some(place("eth1", 3, 1)), None);
        nic.cause = Cause::DriverUnbind;
        nic.driver = Some("e1000".into());
        nic.bus_addr = Some("0000:00:04.0".into());
        nic.perm_addr = Some("52:54:00:12:34:57".into());
        let parent = |name: &str, ifindex: u32, key: u64| {
            Some(crate::event::Parent {
                name: Some(name.into()),
                ifindex: Some(ifindex),
                device: Some(DeviceKey(key)),
            })
        };
        let mut vlan = event(EventKind::Unregister, 5, Some(place("eth1.9", 5, 1)), None);
        vlan.cause = Cause::ParentGone;
        vlan.parent = parent("eth1", 3, 3);
        let mut pod = event(EventKind::Unregister, 6, Some(place("eth0", 6, 4)), None);
        pod.cause = Cause::ParentGone;
        pod.parent = parent("eth1.9", 5, 5);
        let mut back = event(EventKind::Register, 8, None, Some(place("eth1", 8, 1)));
        back.cause = Cause::DriverBind;
        back.bus_addr = nic.bus_addr.clone();
        back.perm_addr = nic.perm_addr.clone();
        // The kernel's order for netlink: uppers first.
        vec![pod, vlan, nic, back]
    }

    #[test]
    fn a_card_is_one_timeline_across_a_driver_reload() {
        let lines = timelines(&driver_reload());
        let card = lines
            .iter()
            .find(|t| matches!(t.id, DeviceId::Card { .. }))
            .unwrap();
        assert_eq!(card.events.len(), 2);
        assert_eq!(
            card.path,
            ["eth1 ifindex 3", "(driver e1000 unbound)", "eth1 ifindex 8"]
        );
        let pod = lines.iter().find(|t| t.names == ["eth0"]).unwrap();
        assert_eq!(
            pod.path,
            [
                "eth0 ifindex 6 netns 4 (/run/netns/c4)",
                "(gone with parent eth1.9 ifindex 5)"
            ]
        );
    }

    #[test]
    fn the_cascade_hangs_under_the_unbind() {
        let trees = cascades(&driver_reload());
        assert_eq!(trees.len(), 1);
        let name = |e: &Event| e.current_name().unwrap_or("?").to_string();
        assert_eq!(trees[0].lines(&name), ["eth1", "  eth1.9", "    eth0"]);
        // Without parents there is no cascade to show.
        let mut alone = driver_reload();
        alone.iter_mut().for_each(|e| e.parent = None);
        assert!(cascades(&alone).is_empty());
    }

    #[test]
    fn without_keys_devices_are_told_apart_by_mac_and_ifindex() {
        let mut a = event(EventKind::Register, 0, None, Some(place("a", 4, 1)));
        a.device = None;
        a.perm_addr = Some("52:54:00:00:00:01".into());
        let mut b = a.clone();
        b.to = Some(place("b", 5, 1));
        b.perm_addr = None;
        let lines = timelines(&[a, b]);
        assert_eq!(lines.len(), 2);
    }
}
