//! What the kernel says now, per netns: links, addresses and routes, dumped through one
//! rtnetlink connection per netns.
//!
//! A connection's socket is created on a thread that entered the netns, then driven from tokio;
//! [`Pool`] keeps one per netns and hands it out again, so nothing re-enters a netns per
//! request. Lookups go through the [`NetnsInventory`] already dumped (by index or name), never
//! a dump per lookup. A held socket pins its netns (and the devices in it), so connections
//! live for one pass: [`Pool::release`] drops all but the host's after it, and
//! [`Pool::prune`] drops any whose netns is no longer found at its locator. A pool keeps at
//! most [`MAX_OPEN`] of them (a fleet host's netns outnumber a process's fds).

use crate::netns::NetnsError;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot open an rtnetlink socket in netns {netns}: {source}")]
    Socket {
        netns: String,
        source: std::io::Error,
    },
    #[error("the link dump in netns {netns} failed: {source}")]
    LinkDump {
        netns: String,
        source: std::io::Error,
    },
    #[error("the netlink connection to netns {0} must be opened inside a tokio runtime")]
    NoRuntime(String),
    #[error("{what} in netns {netns} failed: {source}")]
    Netlink {
        netns: String,
        what: String,
        source: rtnetlink::Error,
    },
}

mod changes;
mod conn;
mod linkdump;
mod pool;
mod snapshot;

pub use changes::{Changed, Changes};
pub use conn::NetnsConn;
pub use pool::{Pool, Pruned, MAX_OPEN};
pub use snapshot::{
    parse_addr, parse_link, parse_route, LinkNews, LiveAddr, LiveLink, LiveRoute, NetnsInventory,
};
