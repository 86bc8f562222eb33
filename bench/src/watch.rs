//! Knowing the moment links are back without polling the agent's netns: sockets subscribed to
//! link, address and route notifications, one opened inside each new container netns before
//! it is mounted (so nothing done there is missed) and one in the host stand-in. What the
//! kernel announces is assembled into inventories and checked as [`World::verify`] checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use netguard::inventory::{
    parse_addr, parse_link, parse_route, LiveAddr, LiveLink, LiveRoute, NetnsConn, NetnsInventory,
};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr, TokioSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::world::World;

const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

/// A socket subscribed to link, IPv4 address and route notifications in the calling
/// thread's netns: pass it as the `at_birth` of a re-creation.
pub fn subscribe() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(
        0,
        RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE,
    ))?;
    socket.set_rx_buf_sz(4 << 20)?;
    Ok(socket)
}

/// Where a notification came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Host,
    Container(usize),
}

/// One netns as its notifications (or a dump, after an overrun) describe it.
#[derive(Debug, Default)]
struct Live {
    links: BTreeMap<u32, LiveLink>,
    addrs: Vec<LiveAddr>,
    routes: Vec<LiveRoute>,
}

impl Live {
    fn from_dump(inv: NetnsInventory) -> Live {
        Live {
            links: inv.links.into_iter().map(|l| (l.ifindex, l)).collect(),
            addrs: inv.addresses,
            routes: inv.routes,
        }
    }

    /// Folds one notification in; returns the name of the link it was about, if a link.
    fn apply(&mut self, msg: &RouteNetlinkMessage) -> Option<String> {
        fn put<T: PartialEq>(v: &mut Vec<T>, item: T) {
            if !v.contains(&item) {
                v.push(item);
            }
        }
        match msg {
            // A bridge's word on its port (AF_BRIDGE): not the link's own description.
            RouteNetlinkMessage::NewLink(m) | RouteNetlinkMessage::DelLink(m)
                if m.header.interface_family == AddressFamily::Bridge => {}
            RouteNetlinkMessage::NewLink(m) => {
                let link = parse_link(m)?;
                let name = link.name.clone();
                self.links.insert(link.ifindex, link);
                return Some(name);
            }
            RouteNetlinkMessage::DelLink(m) => {
                return self.links.remove(&m.header.index).map(|l| l.name)
            }
            RouteNetlinkMessage::NewAddress(m) => put(&mut self.addrs, parse_addr(m)?),
            RouteNetlinkMessage::DelAddress(m) => {
                let gone = parse_addr(m)?;
                self.addrs.retain(|a| *a != gone);
            }
            RouteNetlinkMessage::NewRoute(m) => put(&mut self.routes, parse_route(m)?),
            RouteNetlinkMessage::DelRoute(m) => {
                let gone = parse_route(m)?;
                self.routes.retain(|r| *r != gone);
            }
            _ => {}
        }
        None
    }

    fn inventory(&self) -> NetnsInventory {
        NetnsInventory::new(
            0,
            self.links.values().cloned().collect(),
            self.addrs.clone(),
            self.routes.clone(),
        )
    }
}

type Notification = (Source, NetlinkPayload<RouteNetlinkMessage>);

/// Host notifications, subscribed before the restart.
pub struct Watch {
    events: mpsc::UnboundedReceiver<Notification>,
    sender: mpsc::UnboundedSender<Notification>,
    host: Live,
    /// The sockets' tasks: a socket held open would keep a replaced netns alive.
    tasks: JoinSet<()>,
}

impl Watch {
    /// Subscribes in the host stand-in, then reads its current state (a notification that
    /// crosses the dump is applied twice, which changes nothing).
    pub async fn start(world: &World) -> anyhow::Result<Watch> {
        let socket = netguard::netns::run_in(&world.host_path, subscribe).await??;
        let (sender, events) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        forward(&mut tasks, socket, Source::Host, sender.clone());
        Ok(Watch {
            events,
            sender,
            host: Live::from_dump(world.host().dump().await?),
            tasks,
        })
    }

    /// Waits until the links of the containers `which` are all back, each watched through
    /// the socket `born` with its netns (same order); returns how long after `since`. Every
    /// socket is closed when it returns.
    pub async fn until_back(
        mut self,
        world: &World,
        which: &[usize],
        born: Vec<Socket>,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let result = self.wait(world, which, born, since, timeout).await;
        self.tasks.shutdown().await;
        result
    }

    async fn wait(
        &mut self,
        world: &World,
        which: &[usize],
        born: Vec<Socket>,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let mut live: HashMap<usize, Live> = HashMap::new();
        for (&i, socket) in which.iter().zip(born) {
            forward(
                &mut self.tasks,
                socket,
                Source::Container(i),
                self.sender.clone(),
            );
            live.insert(i, Live::default());
        }
        let by_host_side: HashMap<&str, usize> = which
            .iter()
            .map(|&i| (world.containers[i].host_side.as_str(), i))
            .collect();
        let mut pending: Vec<usize> = which.to_vec();
        let deadline = tokio::time::Instant::from_std(since + timeout);
        while !pending.is_empty() {
            let Ok(Some(first)) = tokio::time::timeout_at(deadline, self.events.recv()).await
            else {
                let c = &world.containers[pending[0]];
                let seen = c.check(
                    &live[&pending[0]].inventory(),
                    &self.host.inventory(),
                    world.bridges[c.bridge],
                );
                bail!(
                    "{} of {} links not back after {timeout:?}; first: {} ({})",
                    pending.len(),
                    which.len(),
                    c.netns,
                    seen.err()
                        .map(|e| format!("{e:#}"))
                        .unwrap_or_else(|| "whole as seen".into())
                );
            };
            // Everything queued is folded in before checking, once.
            let mut batch = vec![first];
            while let Ok(more) = self.events.try_recv() {
                batch.push(more);
            }
            let mut dirty = HashSet::new();
            for (source, payload) in batch {
                match (source, payload) {
                    (Source::Host, NetlinkPayload::Overrun(_)) => {
                        self.host = Live::from_dump(world.host().dump().await?);
                        dirty.extend(pending.iter().copied());
                    }
                    (Source::Container(i), NetlinkPayload::Overrun(_)) => {
                        let c = &world.containers[i];
                        let dump = NetnsConn::open(c.locator(), &c.path).await?.dump().await?;
                        live.insert(i, Live::from_dump(dump));
                        dirty.insert(i);
                    }
                    (Source::Host, NetlinkPayload::InnerMessage(msg)) => {
                        if let Some(&i) = self
                            .host
                            .apply(&msg)
                            .and_then(|name| by_host_side.get(name.as_str()))
                        {
                            dirty.insert(i);
                        }
                    }
                    (Source::Container(i), NetlinkPayload::InnerMessage(msg)) => {
                        live.get_mut(&i).expect("a watched container").apply(&msg);
                        dirty.insert(i);
                    }
                    _ => {}
                }
            }
            if dirty.is_empty() {
                continue;
            }
            let host = self.host.inventory();
            pending.retain(|i| {
                !dirty.contains(i)
                    || world.containers[*i]
                        .check(
                            &live[i].inventory(),
                            &host,
                            world.bridges[world.containers[*i].bridge],
                        )
                        .is_err()
            });
        }
        Ok(since.elapsed())
    }
}

/// Moves a subscribed socket onto the runtime, in `tasks`; its notifications go to `sender`.
fn forward(
    tasks: &mut JoinSet<()>,
    socket: Socket,
    source: Source,
    sender: mpsc::UnboundedSender<Notification>,
) {
    // SAFETY: the fd comes from a Socket we own; ownership moves into the TokioSocket.
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (connection, _handle, mut messages) = rtnetlink::from_socket(socket);
    tasks.spawn(connection);
    tasks.spawn(async move {
        while let Some((NetlinkMessage { payload, .. }, _)) = messages.next().await {
            if sender.send((source, payload)).is_err() {
                break;
            }
        }
    });
}
