//! Turns a recording into one timeline per device: every name, netns and cause it went
//! through.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::{DeviceKey, Event};

/// How a device is told apart in a recording: the tracer's device key where it has one, else
/// the permanent MAC and the first ifindex seen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(untagged)]
pub enum DeviceId {
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
    pub events: Vec<Event>,
}

/// Groups events by device, in order of first appearance; teardown windows (no device) are
/// left out.
pub fn timelines(events: &[Event]) -> Vec<Timeline> {
    let mut order: Vec<DeviceId> = Vec::new();
    let mut by_id: BTreeMap<DeviceId, Timeline> = BTreeMap::new();
    for event in events {
        let Some(id) = device_id(event) else { continue };
        let timeline = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            Timeline {
                id,
                perm_addr: None,
                link_kind: None,
                names: Vec::new(),
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
        timeline.events.push(event.clone());
    }
    order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
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
