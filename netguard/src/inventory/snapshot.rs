//! What one dump of a netns holds: its links, addresses and routes, parsed from the
//! kernel's messages, and the lookups the planner and capture make on it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoMacVlan, InfoVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::AddressFamily;
use serde::Serialize;

use crate::model::{DeviceIdentity, IpNet, Mac, MacvlanMode, NicIdentity, RouteSpec, VlanProtocol};
use crate::rtnl::message::macvlan_mode_from;

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveLink {
    pub ifindex: u32,
    pub name: String,
    /// `rtnl_link_ops` kind (veth, macvlan, vlan, bridge, ...); `None` for physical NICs and lo.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub perm_mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// ifindex of the bridge (or other master) this link is a port of.
    pub master: Option<u32>,
    /// IFLA_LINK: the parent of a vlan/macvlan, the peer of a veth; in the netns named by
    /// `link_netnsid` when set, else in this one.
    pub link: Option<u32>,
    /// The nsid (as this netns numbers them) of the netns `link` lives in.
    pub link_netnsid: Option<i32>,
    pub vlan: Option<(u16, VlanProtocol)>,
    pub macvlan_mode: Option<MacvlanMode>,
    /// IFLA_PARENT_DEV_NAME: the bus address (`/sys/class/net/IF/device` basename), which
    /// netlink reports for any netns while sysfs only shows the reader's own.
    pub bus: Option<String>,
    /// IFLA_PARENT_DEV_BUS_NAME (`pci`, `virtio`, ...).
    pub bus_kind: Option<String>,
}

impl LiveLink {
    /// A NIC: backed by a bus device, with no rtnl_link_ops kind.
    pub fn is_physical(&self) -> bool {
        self.kind.is_none() && self.bus.is_some()
    }

    /// A link stacked on a NIC (vlan, macvlan, ipvlan and their taps) may report its NIC's bus
    /// address or permanent MAC (a vlan does on 6.12): it is never that NIC.
    pub fn may_pass_for_its_nic(&self) -> bool {
        const STACKED: [&str; 5] = ["vlan", "macvlan", "macvtap", "ipvlan", "ipvtap"];
        self.kind
            .as_deref()
            .is_some_and(|kind| STACKED.contains(&kind) || self.bus.is_some())
    }

    /// What this device is, as a log line names it: a NIC's identity, or its kind and MAC.
    pub fn identity(&self) -> DeviceIdentity {
        match self.kind {
            None => DeviceIdentity::Nic(self.nic_identity()),
            Some(_) => self.virtual_identity(),
        }
    }

    /// This device as a virtual link: its kind and MAC.
    pub fn virtual_identity(&self) -> DeviceIdentity {
        DeviceIdentity::Virtual {
            kind: self.kind.clone().unwrap_or_else(|| "device".into()),
            mac: self.mac,
        }
    }

    /// Whether this device is the one `identity` describes.
    pub fn is(&self, identity: &DeviceIdentity) -> bool {
        match identity {
            DeviceIdentity::Nic(id) => {
                !self.may_pass_for_its_nic() && id.matches(&self.nic_identity())
            }
            DeviceIdentity::Virtual { kind, mac } => {
                self.kind.as_deref().unwrap_or("device") == kind
                    && mac.is_none_or(|m| self.mac == Some(m))
            }
        }
    }

    /// The identity a guarded NIC is matched against. A device with neither a permanent
    /// address nor a bus (a virtual device that tests register as a NIC) is known by its
    /// current MAC, the only thing it has.
    pub fn nic_identity(&self) -> NicIdentity {
        let driver = match (&self.bus_kind, &self.bus) {
            (Some(kind), Some(bus)) => driver_of(kind, bus),
            _ => None,
        };
        let perm_mac = self
            .perm_mac
            .or(if self.bus.is_none() { self.mac } else { None });
        NicIdentity {
            perm_mac,
            bus: self.bus.clone(),
            driver,
        }
    }
}

/// `/sys/bus/KIND/devices/BUS/driver` basename: global, unlike `/sys/class/net`.
fn driver_of(bus_kind: &str, bus: &str) -> Option<String> {
    let target = std::fs::read_link(
        Path::new("/sys/bus")
            .join(bus_kind)
            .join("devices")
            .join(bus)
            .join("driver"),
    )
    .ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveAddr {
    pub ifindex: u32,
    pub net: IpNet,
    /// Scope link (IPv6 fe80::/10 and the like): made by the kernel, never restored.
    pub link_scope: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveRoute {
    pub oif: Option<u32>,
    pub table: u32,
    /// Added by the kernel for an address's subnet (proto kernel).
    pub by_kernel: bool,
    pub unicast: bool,
    pub route: RouteSpec,
}

/// Everything in one netns at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetnsInventory {
    pub inode: u64,
    pub links: Vec<LiveLink>,
    pub addresses: Vec<LiveAddr>,
    /// Main-table routes.
    pub routes: Vec<LiveRoute>,
    /// Lookups for a netns with many links (the host's); a container's few are scanned (the
    /// views of 10,000 netns are kept from pass to pass, and maps would double their size).
    #[serde(skip)]
    by_index: HashMap<u32, usize>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
}

/// Up to this many links, lookups scan them rather than keep maps.
const SCANNED: usize = 16;

/// A link's news from a notification: what it is now, or that it is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkNews {
    Now(LiveLink),
    Gone(u32),
}

impl LinkNews {
    fn ifindex(&self) -> u32 {
        match self {
            LinkNews::Now(link) => link.ifindex,
            LinkNews::Gone(ifindex) => *ifindex,
        }
    }
}

impl NetnsInventory {
    pub fn new(
        inode: u64,
        mut links: Vec<LiveLink>,
        mut addresses: Vec<LiveAddr>,
        mut routes: Vec<LiveRoute>,
    ) -> Self {
        // Kept for as long as nothing changes there: no room to grow.
        links.shrink_to_fit();
        addresses.shrink_to_fit();
        routes.shrink_to_fit();
        let mapped = if links.len() > SCANNED {
            &links[..]
        } else {
            &[]
        };
        let by_index = mapped
            .iter()
            .enumerate()
            .map(|(i, l)| (l.ifindex, i))
            .collect();
        let by_name = mapped
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        NetnsInventory {
            inode,
            links,
            addresses,
            routes,
            by_index,
            by_name,
        }
    }

    /// The same netns after `news`, in the order announced: each notification carries a
    /// link's whole state, so replaying every one since the read gives each link's latest.
    /// The host's maps are updated in place (rebuilding them per pass cost a burst at 10,000
    /// links its allocations).
    pub fn with_news(mut self, news: &[LinkNews]) -> Self {
        if self.by_index.is_empty() {
            let mut links = std::mem::take(&mut self.links);
            for item in news {
                links.retain(|l| l.ifindex != item.ifindex());
                if let LinkNews::Now(link) = item {
                    links.push(link.clone());
                }
            }
            return NetnsInventory::new(self.inode, links, self.addresses, self.routes);
        }
        for item in news {
            if let Some(i) = self.by_index.remove(&item.ifindex()) {
                self.unname(i);
                self.links.swap_remove(i);
                if let Some(moved) = self.links.get(i) {
                    self.by_index.insert(moved.ifindex, i);
                    self.by_name.insert(moved.name.clone(), i);
                }
            }
            if let LinkNews::Now(link) = item {
                let i = self.links.len();
                self.by_index.insert(link.ifindex, i);
                self.by_name.insert(link.name.clone(), i);
                self.links.push(link.clone());
            }
        }
        self
    }

    /// Forgets the name of link `i` if it still maps to it.
    fn unname(&mut self, i: usize) {
        let name = &self.links[i].name;
        if self.by_name.get(name) == Some(&i) {
            self.by_name.remove(name);
        }
    }

    /// The same links with addresses and routes read anew.
    pub fn with_addresses_routes(self, addresses: Vec<LiveAddr>, routes: Vec<LiveRoute>) -> Self {
        NetnsInventory::new(self.inode, self.links, addresses, routes)
    }

    pub fn link(&self, ifindex: u32) -> Option<&LiveLink> {
        if self.by_index.is_empty() {
            return self.links.iter().rev().find(|l| l.ifindex == ifindex);
        }
        self.by_index.get(&ifindex).map(|i| &self.links[*i])
    }

    pub fn link_by_name(&self, name: &str) -> Option<&LiveLink> {
        if self.by_name.is_empty() {
            return self.links.iter().rev().find(|l| l.name == name);
        }
        self.by_name.get(name).map(|i| &self.links[*i])
    }

    /// Addresses a link carries, except the kernel's link-scope ones.
    pub fn addresses_of(&self, ifindex: u32) -> impl Iterator<Item = IpNet> + '_ {
        self.addresses
            .iter()
            .filter(move |a| a.ifindex == ifindex && !a.link_scope)
            .map(|a| a.net)
    }

    /// Main-table unicast routes out of a link that someone added (not the kernel's subnet
    /// routes).
    pub fn routes_of(&self, ifindex: u32) -> impl Iterator<Item = &RouteSpec> + '_ {
        self.routes
            .iter()
            .filter(move |r| {
                r.oif == Some(ifindex)
                    && r.unicast
                    && !r.by_kernel
                    && r.table == u32::from(RouteHeader::RT_TABLE_MAIN)
            })
            .map(|r| &r.route)
    }

    /// Whether a route through `ifindex` equal to `want` is present (the kernel's own subnet
    /// route counts: a CNI "subnet route" is the same route).
    pub fn has_route(&self, ifindex: u32, want: &RouteSpec) -> bool {
        self.routes.iter().any(|r| {
            r.oif == Some(ifindex)
                && r.table == u32::from(RouteHeader::RT_TABLE_MAIN)
                && r.route.dst == want.dst
                && r.route.gateway == want.gateway
        })
    }

    /// Physical NICs here, with the identity guarded NICs are matched against.
    pub fn nics(&self) -> impl Iterator<Item = (&LiveLink, NicIdentity)> + '_ {
        self.links
            .iter()
            .filter(|l| l.is_physical())
            .map(|l| (l, l.nic_identity()))
    }
}

/// The link attributes (`IFLA_*`) [`parse_link`] reads: a listener need decode no others.
pub const LINK_ATTRIBUTES: &[u16] = &[
    libc::IFLA_IFNAME,
    libc::IFLA_ADDRESS,
    libc::IFLA_PERM_ADDRESS,
    libc::IFLA_MTU,
    libc::IFLA_MASTER,
    libc::IFLA_LINK,
    libc::IFLA_LINK_NETNSID,
    libc::IFLA_PARENT_DEV_NAME,
    libc::IFLA_PARENT_DEV_BUS_NAME,
    libc::IFLA_LINKINFO,
];

pub fn parse_link(msg: &LinkMessage) -> Option<LiveLink> {
    let mut link = LiveLink {
        ifindex: msg.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        perm_mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        link: None,
        link_netnsid: None,
        vlan: None,
        macvlan_mode: None,
        bus: None,
        bus_kind: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) => link.mac = Mac::from_bytes(b),
            LinkAttribute::PermAddress(b) => link.perm_mac = Mac::from_bytes(b),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::Controller(i) if *i != 0 => link.master = Some(*i),
            // A NIC reports itself as its own IFLA_LINK.
            LinkAttribute::Link(i) if *i != 0 && *i != msg.header.index => link.link = Some(*i),
            LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(*id),
            LinkAttribute::ParentDevName(s) => link.bus = Some(s.clone()),
            LinkAttribute::ParentDevBusName(s) => link.bus_kind = Some(s.clone()),
            LinkAttribute::LinkInfo(infos) => parse_link_info(infos, &mut link),
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

fn parse_link_info(infos: &[LinkInfo], link: &mut LiveLink) {
    for info in infos {
        match info {
            LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
            LinkInfo::Data(InfoData::Vlan(data)) => {
                let id = data.iter().find_map(|d| {
                    if let InfoVlan::Id(id) = d {
                        Some(*id)
                    } else {
                        None
                    }
                });
                let proto = data
                    .iter()
                    .find_map(|d| match d {
                        InfoVlan::Protocol(
                            netlink_packet_route::link::VlanProtocol::Ieee8021Ad,
                        ) => Some(VlanProtocol::Dot1ad),
                        InfoVlan::Protocol(_) => Some(VlanProtocol::Dot1q),
                        _ => None,
                    })
                    .unwrap_or_default();
                link.vlan = id.map(|id| (id, proto));
            }
            LinkInfo::Data(InfoData::MacVlan(data)) => {
                link.macvlan_mode = data.iter().find_map(|d| match d {
                    InfoMacVlan::Mode(m) => macvlan_mode_from(*m),
                    _ => None,
                });
            }
            _ => {}
        }
    }
}

pub fn parse_addr(msg: &AddressMessage) -> Option<LiveAddr> {
    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer on point-to-point links.
    let addr = msg
        .attributes
        .iter()
        .find_map(|a| {
            if let AddressAttribute::Local(ip) = a {
                Some(*ip)
            } else {
                None
            }
        })
        .or_else(|| {
            msg.attributes.iter().find_map(|a| {
                if let AddressAttribute::Address(ip) = a {
                    Some(*ip)
                } else {
                    None
                }
            })
        })?;
    Some(LiveAddr {
        ifindex: msg.header.index,
        net: IpNet::new(addr, msg.header.prefix_len).ok()?,
        link_scope: msg.header.scope != AddressScope::Universe,
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

pub fn parse_route(msg: &RouteMessage) -> Option<LiveRoute> {
    let h = &msg.header;
    let unspecified: IpAddr = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst = unspecified;
    let mut route = LiveRoute {
        oif: None,
        table: u32::from(h.table),
        by_kernel: h.protocol == RouteProtocol::Kernel,
        unicast: h.kind == RouteType::Unicast,
        route: RouteSpec {
            dst: IpNet {
                addr: unspecified,
                prefix: 0,
            },
            gateway: None,
            onlink: h.flags.contains(RouteFlags::Onlink),
            metric: None,
        },
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_ip(a)?,
            RouteAttribute::Gateway(a) => route.route.gateway = route_ip(a),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            RouteAttribute::Priority(p) => route.route.metric = Some(*p),
            _ => {}
        }
    }
    route.route.dst = IpNet::new(dst, h.destination_prefix_length).ok()?;
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str) -> LiveLink {
        let mut msg = LinkMessage::default();
        msg.header.index = ifindex;
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        parse_link(&msg).unwrap()
    }

    #[test]
    fn lookups_use_the_dump_we_have() {
        let inv = NetnsInventory::new(7, vec![link(1, "lo"), link(5, "eth0")], vec![], vec![]);
        assert_eq!(inv.link(5).unwrap().name, "eth0");
        assert_eq!(inv.link_by_name("lo").unwrap().ifindex, 1);
        assert!(inv.link(9).is_none());
        // A host's many links are looked up through maps, with the same answers.
        let many: Vec<LiveLink> = (1..=40).map(|i| link(i, &format!("v{i}"))).collect();
        let inv = NetnsInventory::new(7, many, vec![], vec![]);
        assert_eq!(inv.link(33).unwrap().name, "v33");
        assert_eq!(inv.link_by_name("v7").unwrap().ifindex, 7);
        assert!(inv.link(41).is_none() && inv.link_by_name("eth0").is_none());
    }

    #[test]
    fn news_replayed_in_order_give_each_link_its_latest_state() {
        let many: Vec<LiveLink> = (1..=40).map(|i| link(i, &format!("v{i}"))).collect();
        let inv = NetnsInventory::new(7, many, vec![], vec![]);
        let inv = inv.with_news(&[
            // v3 renamed, v5 gone, a new v41 that is renamed and then goes, v42 stays.
            LinkNews::Now(link(3, "vh3")),
            LinkNews::Gone(5),
            LinkNews::Now(link(41, "v41")),
            LinkNews::Now(link(41, "w41")),
            LinkNews::Now(link(42, "v42")),
            LinkNews::Gone(41),
            LinkNews::Gone(99),
        ]);
        assert_eq!(inv.links.len(), 40);
        assert_eq!(inv.link(3).unwrap().name, "vh3");
        assert!(inv.link_by_name("v3").is_none());
        assert!(inv.link(5).is_none() && inv.link_by_name("v5").is_none());
        assert!(inv.link(41).is_none() && inv.link_by_name("w41").is_none());
        assert_eq!(inv.link_by_name("v42").unwrap().ifindex, 42);
        // The one moved into v5's place by its removal is still found.
        assert_eq!(inv.link(40).unwrap().name, "v40");
        assert_eq!(inv.link_by_name("v40").unwrap().ifindex, 40);
        // Every link is found by both its ifindex and its name, and by nothing else.
        for l in &inv.links {
            assert_eq!(inv.link(l.ifindex), Some(l));
            assert_eq!(inv.link_by_name(&l.name), Some(l));
        }
        assert_eq!((inv.by_index.len(), inv.by_name.len()), (40, 40));

        // Two names swapped by way of a third, as `ip link set name` does it.
        let inv = inv.with_news(&[
            LinkNews::Now(link(1, "tmp")),
            LinkNews::Now(link(2, "v1")),
            LinkNews::Now(link(1, "v2")),
        ]);
        assert_eq!(inv.link_by_name("v1").unwrap().ifindex, 2);
        assert_eq!(inv.link_by_name("v2").unwrap().ifindex, 1);
        assert!(inv.link_by_name("tmp").is_none());

        // A container's few links are scanned: the same answers.
        let few = NetnsInventory::new(9, vec![link(1, "lo"), link(2, "eth0")], vec![], vec![]);
        let few = few.with_news(&[LinkNews::Now(link(2, "eth1")), LinkNews::Gone(1)]);
        assert_eq!(few.links, vec![link(2, "eth1")]);
        assert!(few.link_by_name("eth0").is_none());
    }

    #[test]
    fn link_attributes_parse_and_nics_report_themselves_as_their_own_link() {
        let mut msg = LinkMessage::default();
        msg.header.index = 3;
        msg.header.flags = LinkFlags::Up;
        msg.attributes = vec![
            LinkAttribute::IfName("eth1".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::PermAddress(vec![0x52, 0x54, 0, 0, 0, 1]),
            LinkAttribute::Link(3),
            LinkAttribute::Mtu(9000),
            LinkAttribute::ParentDevName("0000:00:04.0".into()),
        ];
        let l = parse_link(&msg).unwrap();
        assert!(l.up && l.is_physical());
        assert_eq!(l.link, None);
        assert_eq!(l.mtu, Some(9000));
        let id = l.nic_identity();
        assert_eq!(id.perm_mac, Some("52:54:00:00:00:01".parse().unwrap()));
        assert_eq!(id.bus.as_deref(), Some("0000:00:04.0"));

        // No name: not a link we can use.
        assert!(parse_link(&LinkMessage::default()).is_none());
    }

    #[test]
    fn routes_parse_with_gateway_and_table() {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.kind = RouteType::Unicast;
        msg.header.protocol = RouteProtocol::Boot;
        msg.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet("198.18.0.1".parse().unwrap())),
            RouteAttribute::Oif(4),
        ];
        let r = parse_route(&msg).unwrap();
        assert_eq!(r.route.to_string(), "default via 198.18.0.1");
        let inv = NetnsInventory::new(1, vec![], vec![], vec![r.clone()]);
        assert_eq!(inv.routes_of(4).count(), 1);
        assert!(inv.has_route(4, &r.route));
        assert!(!inv.has_route(5, &r.route));
    }
}
