//! Which namespaces the kernel announced changes in, through one host socket.

use std::os::fd::AsRawFd;
use std::path::Path;

use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netns;
use crate::rtnl::listen::{listen_all_nsid, parse_datagram, recv_tagged, Datagram};

use super::conn::socket_in;
use super::snapshot::{parse_link, LinkNews, LINK_ATTRIBUTES};
use super::InventoryError;

/// Which namespaces changed since last asked: a socket in the host netns subscribed to the
/// link, address and route notifications of the host and of every netns the host has an nsid
/// for (NETLINK_LISTEN_ALL_NSID). It holds no netns but the host's.
pub struct Changes {
    socket: netlink_sys::Socket,
    buf: Vec<u8>,
}

/// What [`Changes::take`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Notifications were lost (the socket overran): anything may have changed.
    pub anything: bool,
    /// Something was announced about the host netns.
    pub host: bool,
    /// The host's links as announced, in order (the host holds every container's host side:
    /// reading them from the announcements spares a dump of thousands of links).
    pub host_links: Vec<LinkNews>,
    /// An address or a route of the host's was announced.
    pub host_addresses_routes: bool,
    /// Namespaces by the nsid the host gives them.
    pub nsids: std::collections::HashSet<i32>,
}

impl Changes {
    /// Queued notifications are kept up to this size; beyond, an overrun says "anything".
    const RECEIVE_BUFFER: libc::c_int = 4 << 20;

    pub async fn open(host: &Path) -> Result<Changes, InventoryError> {
        let io = |source| InventoryError::Socket {
            netns: host.display().to_string(),
            source,
        };
        let file = netns::open(host)?;
        let mut socket = socket_in(&file, host).await?;
        let groups = [
            libc::RTNLGRP_LINK,
            libc::RTNLGRP_IPV4_IFADDR,
            libc::RTNLGRP_IPV4_ROUTE,
            libc::RTNLGRP_IPV6_IFADDR,
            libc::RTNLGRP_IPV6_ROUTE,
        ];
        listen_all_nsid(&mut socket, &groups, Self::RECEIVE_BUFFER).map_err(io)?;
        Ok(Changes {
            socket,
            buf: vec![0; 64 << 10],
        })
    }

    /// Every netns something was announced about since the last call (never blocks).
    pub fn take(&mut self) -> Changed {
        let mut changed = Changed::default();
        loop {
            match recv_tagged(self.socket.as_raw_fd(), &mut self.buf) {
                Ok(Datagram {
                    truncated: true, ..
                }) => changed.anything = true,
                Ok(Datagram {
                    nsid: None, len, ..
                }) => {
                    changed.host = true;
                    if !changed.anything {
                        changed.hear_host(&self.buf[..len]);
                    }
                }
                Ok(Datagram {
                    nsid: Some(nsid), ..
                }) => {
                    changed.nsids.insert(nsid);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return changed,
                // The kernel dropped notifications for us; what is still queued reads on.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => changed.anything = true,
                Err(e) => {
                    tracing::warn!("reading netlink notifications: {e}");
                    changed.anything = true;
                    return changed;
                }
            }
        }
    }
}

impl Changed {
    /// Notes what one datagram from the host says.
    fn hear_host(&mut self, datagram: &[u8]) {
        let messages = parse_datagram(datagram, LINK_ATTRIBUTES);
        if messages.len() != frames(datagram) {
            // One did not decode (logged): what it said is unknown.
            self.anything = true;
            return;
        }
        for message in messages {
            match message {
                // A bridge's own notifications about its ports (family AF_BRIDGE) carry only
                // part of a link, and a port's DELLINK means it left the bridge: the port's
                // own link notification follows.
                RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link)
                    if link.header.interface_family == AddressFamily::Bridge => {}
                RouteNetlinkMessage::NewLink(link) => {
                    if let Some(live) = parse_link(&link) {
                        self.host_links.push(LinkNews::Now(live));
                    }
                }
                RouteNetlinkMessage::DelLink(link) => {
                    self.host_links.push(LinkNews::Gone(link.header.index))
                }
                _ => self.host_addresses_routes = true,
            }
        }
    }
}

/// How many netlink messages `datagram` holds.
fn frames(mut datagram: &[u8]) -> usize {
    let mut n = 0;
    while let Ok(frame) = netlink_packet_core::NetlinkBuffer::new_checked(datagram) {
        n += 1;
        let len = (frame.length() as usize).next_multiple_of(4);
        datagram = datagram.get(len..).unwrap_or_default();
    }
    n
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    use super::*;
    use crate::rtnl::listen::bytes_of;

    fn link(family: AddressFamily, master: Option<u32>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = 4;
        link.header.interface_family = family;
        link.attributes = vec![LinkAttribute::IfName("vh0".into())];
        link.attributes
            .extend(master.map(LinkAttribute::Controller));
        link
    }

    #[test]
    fn the_host_links_are_heard_in_order_and_a_bridges_own_port_notices_are_not() {
        // `ip link set vh0 nomaster`, as the kernel announces it, then an address.
        let mut datagram = bytes_of(RouteNetlinkMessage::DelLink(link(
            AddressFamily::Bridge,
            Some(2),
        )));
        datagram.extend(bytes_of(RouteNetlinkMessage::NewLink(link(
            AddressFamily::Unspec,
            None,
        ))));
        let mut changed = Changed::default();
        changed.hear_host(&datagram);
        let mut vh0 = parse_link(&link(AddressFamily::Unspec, None)).unwrap();
        assert_eq!(changed.host_links, vec![LinkNews::Now(vh0.clone())]);
        assert!(!changed.host_addresses_routes && !changed.anything);

        changed.hear_host(&bytes_of(RouteNetlinkMessage::NewLink(link(
            AddressFamily::Bridge,
            Some(2),
        ))));
        changed.hear_host(&bytes_of(RouteNetlinkMessage::DelLink(link(
            AddressFamily::Unspec,
            None,
        ))));
        changed.hear_host(&bytes_of(RouteNetlinkMessage::NewAddress(
            AddressMessage::default(),
        )));
        vh0.master = None;
        assert_eq!(
            changed.host_links,
            vec![LinkNews::Now(vh0), LinkNews::Gone(4)]
        );
        assert!(changed.host_addresses_routes && !changed.anything);

        // A message that does not decode: anything may have changed.
        let mut bad = bytes_of(RouteNetlinkMessage::NewLink(LinkMessage::default()));
        bad.extend([64, 0, 3, 0]);
        let len = bad.len() as u32;
        bad[..4].copy_from_slice(&len.to_ne_bytes());
        changed.hear_host(&bad);
        assert!(changed.anything);
    }
}
