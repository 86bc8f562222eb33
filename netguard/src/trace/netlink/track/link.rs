//! What one link message says about a device, and a device as last seen.

use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};

use crate::event::{format_mac, DeviceKey};

/// What one RTM_NEWLINK / RTM_DELLINK says about a device.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) ifindex: u32,
    pub(super) name: Option<String>,
    pub(super) mac: Option<String>,
    pub(super) perm: Option<String>,
    pub(super) kind: Option<String>,
    /// IFLA_LINK: a veth's peer ifindex (in the peer's netns), a macvlan's lower device.
    pub(super) link: Option<u32>,
    /// IFLA_LINK_NETNSID: the device IFLA_LINK names is in another netns.
    pub(super) link_elsewhere: bool,
    /// IFLA_PARENT_DEV_NAME: the bus device a NIC sits on (`0000:00:04.0`).
    pub(super) bus: Option<String>,
    pub(super) loopback: bool,
    /// IFLA_NEW_NETNSID: the destination of a move, as an nsid of the *source* netns.
    pub(super) new_nsid: Option<i32>,
    pub(super) new_ifindex: Option<u32>,
}

impl Seen {
    pub(super) fn read(msg: &LinkMessage) -> Seen {
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
                LinkAttribute::LinkNetNsId(_) => seen.link_elsewhere = true,
                LinkAttribute::ParentDevName(name) => seen.bus = Some(name.clone()),
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
pub(super) struct Link {
    pub(super) key: DeviceKey,
    pub(super) name: Option<String>,
    pub(super) mac: Option<String>,
    pub(super) perm: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) link: Option<u32>,
    pub(super) link_elsewhere: bool,
    pub(super) bus: Option<String>,
    pub(super) loopback: bool,
}

impl Link {
    pub(super) fn new(key: DeviceKey, seen: &Seen) -> Link {
        Link {
            key,
            name: seen.name.clone(),
            mac: seen.mac.clone(),
            perm: seen.perm.clone(),
            kind: seen.kind.clone(),
            link: seen.link,
            link_elsewhere: seen.link_elsewhere,
            bus: seen.bus.clone(),
            loopback: seen.loopback,
        }
    }

    /// Takes what the message says, keeping what it leaves out.
    pub(super) fn refresh(&mut self, seen: &Seen) {
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
        keep(&mut self.bus, &seen.bus);
        if seen.link.is_some() {
            self.link_elsewhere = seen.link_elsewhere;
        }
    }

    /// The device this one sits on (a vlan's, macvlan's, ipvlan's): its ifindex, and whether
    /// it is in another netns. A veth's IFLA_LINK is its peer, not a lower device.
    pub(super) fn lower(&self) -> Option<(u32, bool)> {
        (!self.is_veth())
            .then_some(self.link?)
            .map(|ifindex| (ifindex, self.link_elsewhere))
    }

    /// Same hardware: the permanent addresses when both have one, else the current ones.
    pub(super) fn same_hardware(&self, seen: &Seen) -> bool {
        match (&self.perm, &seen.perm) {
            (Some(a), Some(b)) => a == b,
            _ => self.mac == seen.mac,
        }
    }

    pub(super) fn has_hardware_address(&self) -> bool {
        self.perm.is_some() || self.mac.is_some()
    }

    pub(super) fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }
}

