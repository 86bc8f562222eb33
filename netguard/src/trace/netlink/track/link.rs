//! What one link message says about a device, and a device as last seen.

use netlink_packet_route::link::{LinkAttribute, LinkInfo, LinkLayerType, LinkMessage};

use crate::event::{format_mac, DeviceKey};

/// What a device is, as link messages describe it (each may leave parts out).
#[derive(Debug, Clone, Default)]
pub(super) struct Attrs {
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
}

impl Attrs {
    /// Takes what `new` says, keeping what it leaves out.
    fn refresh(&mut self, new: &Attrs) {
        fn keep<T: Clone>(old: &mut Option<T>, new: &Option<T>) {
            if new.is_some() {
                old.clone_from(new);
            }
        }
        keep(&mut self.name, &new.name);
        keep(&mut self.mac, &new.mac);
        keep(&mut self.perm, &new.perm);
        keep(&mut self.kind, &new.kind);
        keep(&mut self.link, &new.link);
        keep(&mut self.bus, &new.bus);
        if new.link.is_some() {
            self.link_elsewhere = new.link_elsewhere;
        }
    }
}

/// What one RTM_NEWLINK / RTM_DELLINK says about a device.
#[derive(Debug, Default)]
pub(in crate::trace::netlink) struct Seen {
    pub(super) ifindex: u32,
    pub(super) attrs: Attrs,
    /// IFLA_NEW_NETNSID: the destination of a move, as an nsid of the *source* netns.
    pub(super) new_nsid: Option<i32>,
    pub(super) new_ifindex: Option<u32>,
}

impl Seen {
    /// The link attributes [`Seen::read`] reads: the listener decodes no others.
    pub(in crate::trace::netlink) const ATTRIBUTES: &'static [u16] = &[
        libc::IFLA_IFNAME,
        libc::IFLA_ADDRESS,
        libc::IFLA_PERM_ADDRESS,
        libc::IFLA_LINKINFO,
        libc::IFLA_LINK,
        libc::IFLA_LINK_NETNSID,
        libc::IFLA_PARENT_DEV_NAME,
        libc::IFLA_NEW_NETNSID,
        libc::IFLA_NEW_IFINDEX,
    ];

    pub(in crate::trace::netlink) fn read(msg: &LinkMessage) -> Seen {
        let mut seen = Seen {
            ifindex: msg.header.index,
            ..Seen::default()
        };
        let attrs = &mut seen.attrs;
        attrs.loopback = msg.header.link_layer_type == LinkLayerType::Loopback;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => attrs.name = Some(name.clone()),
                LinkAttribute::Address(bytes) => attrs.mac = format_mac(bytes),
                LinkAttribute::PermAddress(bytes) => attrs.perm = format_mac(bytes),
                LinkAttribute::LinkInfo(infos) => {
                    attrs.kind = infos.iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind.to_string()),
                        _ => None,
                    })
                }
                // A veth whose peer is already gone reports 0.
                LinkAttribute::Link(index) if *index != 0 => attrs.link = Some(*index),
                LinkAttribute::LinkNetNsId(_) => attrs.link_elsewhere = true,
                LinkAttribute::ParentDevName(name) => attrs.bus = Some(name.clone()),
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
    pub(super) attrs: Attrs,
    /// The netns its lower device is in, when known: the one it was created in with its
    /// lower beside it, kept when it moves (IFLA_LINK_NETNSID then says only "elsewhere").
    pub(super) lower_netns: Option<u64>,
}

impl Link {
    /// A device first seen in `netns`.
    pub(super) fn new(key: DeviceKey, netns: u64, seen: &Seen) -> Link {
        let attrs = &seen.attrs;
        Link {
            key,
            attrs: attrs.clone(),
            lower_netns: (attrs.link.is_some() && !attrs.link_elsewhere).then_some(netns),
        }
    }

    /// Takes what the message says, keeping what it leaves out.
    pub(super) fn refresh(&mut self, seen: &Seen) {
        self.attrs.refresh(&seen.attrs);
    }

    /// The device this one sits on (a vlan's, macvlan's, ipvlan's): its ifindex, and its
    /// netns when known (`None`: another one than this device's). A veth's IFLA_LINK is its
    /// peer, not a lower device.
    pub(super) fn lower(&self) -> Option<(u32, Option<u64>)> {
        (!self.is_veth())
            .then_some(self.attrs.link?)
            .map(|ifindex| (ifindex, self.lower_netns))
    }

    /// Same hardware: the permanent addresses when both have one, else the current ones.
    pub(super) fn same_hardware(&self, seen: &Seen) -> bool {
        match (&self.attrs.perm, &seen.attrs.perm) {
            (Some(a), Some(b)) => a == b,
            _ => self.attrs.mac == seen.attrs.mac,
        }
    }

    pub(super) fn has_hardware_address(&self) -> bool {
        self.attrs.perm.is_some() || self.attrs.mac.is_some()
    }

    pub(super) fn is_veth(&self) -> bool {
        self.attrs.kind.as_deref() == Some("veth")
    }
}
