//! Which namespaces the kernel announced changes in, through one host socket.

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::netns;
use crate::rtnl::listen::{listen_all_nsid, recv_tagged, Datagram};

use super::conn::socket_in;
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
    pub host: bool,
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
                Ok(Datagram { nsid: None, .. }) => changed.host = true,
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
