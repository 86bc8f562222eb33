//! Request messages: how a spec in netguard's vocabulary is put to the kernel. Public, so
//! that the benchmark's floor sends exactly the requests the restorer sends.

use std::os::fd::RawFd;

use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::model::{Mac, MacvlanMode, RouteSpec, VlanProtocol};

pub fn with_mac_mtu<T>(
    msg: LinkMessageBuilder<T>,
    mac: &Option<Mac>,
    mtu: &Option<u32>,
) -> LinkMessageBuilder<T> {
    let msg = match mac {
        Some(mac) => msg.address(mac.0.to_vec()),
        None => msg,
    };
    match mtu {
        Some(mtu) => msg.mtu(*mtu),
        None => msg,
    }
}

/// The RTM_NEWLINK that creates the veth pair `name` + `peer`, the peer directly in the netns
/// of `peer_netns_fd` when given (IFLA_NET_NS_FD).
#[allow(clippy::too_many_arguments)]
pub fn veth_message(
    name: &str,
    mac: &Option<Mac>,
    mtu: &Option<u32>,
    peer: &str,
    peer_mac: &Option<Mac>,
    peer_mtu: &Option<u32>,
    peer_netns_fd: Option<RawFd>,
) -> LinkMessage {
    let mut peer_msg = LinkUnspec::new_with_name(peer);
    if let Some(fd) = peer_netns_fd {
        peer_msg = peer_msg.setns_by_fd(fd);
    }
    let peer_msg = with_mac_mtu(peer_msg, peer_mac, peer_mtu).build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)));
    with_mac_mtu(msg, mac, mtu).build()
}

/// `ip route add` of one route through `oif` (main table, proto boot as iproute2 does).
pub fn route_message(route: &RouteSpec, oif: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if route.dst.addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    msg.header.destination_prefix_length = route.dst.prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.kind = RouteType::Unicast;
    msg.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    if route.onlink {
        msg.header.flags |= RouteFlags::Onlink;
    }
    if route.dst.prefix > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                route.dst.network().addr,
            )));
    }
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    if let Some(metric) = route.metric {
        msg.attributes.push(RouteAttribute::Priority(metric));
    }
    msg
}

pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// The kernel's answer in words (`File exists (os error 17)`), not the library's wrapping.
pub fn kernel_says(e: &rtnetlink::Error) -> String {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    }
}

pub fn macvlan_mode_from(mode: netlink_packet_route::link::MacVlanMode) -> Option<MacvlanMode> {
    use netlink_packet_route::link::MacVlanMode as K;
    Some(match mode {
        K::Private => MacvlanMode::Private,
        K::Vepa => MacvlanMode::Vepa,
        K::Bridge => MacvlanMode::Bridge,
        K::Passthrough => MacvlanMode::Passthru,
        K::Source => MacvlanMode::Source,
        _ => return None,
    })
}

pub fn macvlan_mode_to(mode: MacvlanMode) -> netlink_packet_route::link::MacVlanMode {
    use netlink_packet_route::link::MacVlanMode as K;
    match mode {
        MacvlanMode::Private => K::Private,
        MacvlanMode::Vepa => K::Vepa,
        MacvlanMode::Bridge => K::Bridge,
        MacvlanMode::Passthru => K::Passthrough,
        MacvlanMode::Source => K::Source,
    }
}

pub fn vlan_protocol_to(protocol: VlanProtocol) -> netlink_packet_route::link::VlanProtocol {
    match protocol {
        VlanProtocol::Dot1q => netlink_packet_route::link::VlanProtocol::Ieee8021Q,
        VlanProtocol::Dot1ad => netlink_packet_route::link::VlanProtocol::Ieee8021Ad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_built_like_ip_route_add() {
        let default = RouteSpec {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("198.18.0.1".parse().unwrap()),
            onlink: false,
            metric: None,
        };
        let msg = route_message(&default, 7);
        assert_eq!(msg.header.scope, RouteScope::Universe);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        let subnet = RouteSpec {
            dst: "198.18.5.9/24".parse().unwrap(),
            gateway: None,
            onlink: false,
            metric: Some(10),
        };
        let msg = route_message(&subnet, 7);
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert!(msg
            .attributes
            .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                "198.18.5.0".parse().unwrap()
            ))));
        assert!(msg.attributes.contains(&RouteAttribute::Priority(10)));
    }
}
