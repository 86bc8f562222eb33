//! A connection to one netns: its rtnetlink socket is made on a thread that entered the
//! netns, then driven from tokio.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkExtentMask, LinkMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::model::{IpNet, Locator};
use crate::netns::{self, NetnsError};

use super::snapshot::{
    parse_addr, parse_link, parse_route, LiveAddr, LiveLink, LiveRoute, NetnsInventory,
};
use super::InventoryError;

/// One rtnetlink connection inside one netns, plus an open fd of that netns (for creating
/// devices directly in it with IFLA_NET_NS_FD).
pub struct NetnsConn {
    pub locator: Locator,
    pub path: PathBuf,
    pub inode: u64,
    file: File,
    handle: rtnetlink::Handle,
    /// The kernel runs one dump at a time per socket (a second one gets EBUSY).
    dump_lock: tokio::sync::Mutex<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NetnsConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NetnsConn {
    /// Opens the netns at `path` and a strict-checking rtnetlink socket inside it.
    pub async fn open(locator: Locator, path: &Path) -> Result<NetnsConn, InventoryError> {
        let name = path.display().to_string();
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(InventoryError::NoRuntime(name));
        }
        let file = open_mounted(path).await?;
        let inode = file
            .metadata()
            .map_err(|source| NetnsError::Open {
                path: path.into(),
                source,
            })?
            .ino();
        // Made in the netns we opened, even if the path is re-pointed meanwhile.
        let socket = socket_in(&file, path).await?;
        // Lets the kernel filter dumps by ifindex instead of sending everything.
        socket
            .set_netlink_get_strict_chk(true)
            .map_err(|source| InventoryError::Socket {
                netns: name.clone(),
                source,
            })?;
        // SAFETY: `socket` is a netlink socket fd we own; ownership moves into TokioSocket.
        let socket = unsafe { netlink_sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        let task = tokio::spawn(connection);
        tracing::debug!("rtnetlink connection open in netns {name} (inode {inode})");
        Ok(NetnsConn {
            locator,
            path: path.into(),
            inode,
            file,
            handle,
            dump_lock: tokio::sync::Mutex::new(()),
            task,
        })
    }

    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// fd of this netns, for IFLA_NET_NS_FD.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> InventoryError + '_ {
        let what = what.into();
        move |source| InventoryError::Netlink {
            netns: self.locator.to_string(),
            what,
            source,
        }
    }

    /// Links, addresses and routes of this netns.
    pub async fn dump(&self) -> Result<NetnsInventory, InventoryError> {
        let _one_dump_at_a_time = self.dump_lock.lock().await;
        let links = self.read_links().await?;
        let (addrs, routes) = self.read_addresses_routes().await?;
        Ok(NetnsInventory::new(self.inode, links, addrs, routes))
    }

    /// The addresses and main-table routes, without the links.
    pub async fn dump_addresses_routes(
        &self,
    ) -> Result<(Vec<LiveAddr>, Vec<LiveRoute>), InventoryError> {
        let _one_dump_at_a_time = self.dump_lock.lock().await;
        self.read_addresses_routes().await
    }

    async fn read_addresses_routes(
        &self,
    ) -> Result<(Vec<LiveAddr>, Vec<LiveRoute>), InventoryError> {
        let addrs: Vec<LiveAddr> = self
            .handle
            .address()
            .get()
            .execute()
            .try_filter_map(|m| futures::future::ok(parse_addr(&m)))
            .try_collect()
            .await
            .map_err(self.err("address dump"))?;
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            // Only the main table is ever looked at; the kernel skips the others (strict check).
            query.header.table = RouteHeader::RT_TABLE_MAIN;
            let part: Vec<LiveRoute> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_filter_map(|m| futures::future::ok(parse_route(&m)))
                .try_collect()
                .await
                .map_err(self.err("route dump"))?;
            routes.extend(part);
        }
        Ok((addrs, routes))
    }

    /// The links alone: an inventory with no addresses or routes read.
    pub async fn links(&self) -> Result<NetnsInventory, InventoryError> {
        let _one_dump_at_a_time = self.dump_lock.lock().await;
        let links = self.read_links().await?;
        Ok(NetnsInventory::new(self.inode, links, vec![], vec![]))
    }

    async fn read_links(&self) -> Result<Vec<LiveLink>, InventoryError> {
        // Each message is boiled down as it arrives: the decoded messages are many times the
        // size of what we keep (a host with a thousand veths answers megabytes).
        if self.locator == Locator::Host {
            // The host's thousands of links, not queued decoded (see `linkdump`).
            super::linkdump::links(&self.file, &self.path).await
        } else {
            self.link_get()
                .execute()
                .try_filter_map(|m| futures::future::ok(parse_link(&m)))
                .try_collect()
                .await
                .map_err(self.err("link dump"))
        }
    }

    /// RTM_GETLINK without the statistics we never read: a much smaller reply.
    fn link_get(&self) -> rtnetlink::LinkGetRequest {
        self.handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
    }

    /// One link by ifindex (a single RTM_GETLINK, not a dump).
    pub async fn get_link(&self, ifindex: u32) -> Result<Option<LiveLink>, InventoryError> {
        let query = self.link_get().match_index(ifindex).execute();
        first_link(query)
            .await
            .map_err(self.err(format!("reading link {ifindex}")))
    }

    /// One link by name (a single RTM_GETLINK, not a dump).
    pub async fn get_link_by_name(&self, name: &str) -> Result<Option<LiveLink>, InventoryError> {
        let query = self.link_get().match_name(name).execute();
        first_link(query)
            .await
            .map_err(self.err(format!("reading link {name}")))
    }

    /// Addresses of one link (a dump the kernel filters by ifindex).
    pub async fn addresses_of_link(&self, ifindex: u32) -> Result<Vec<IpNet>, InventoryError> {
        let _one_dump_at_a_time = self.dump_lock.lock().await;
        let mut query = self.handle.address().get().set_link_index_filter(ifindex);
        query.message_mut().header.index = ifindex;
        let addrs: Vec<AddressMessage> = query
            .execute()
            .try_collect()
            .await
            .map_err(self.err(format!("reading addresses of link {ifindex}")))?;
        Ok(addrs
            .iter()
            .filter_map(parse_addr)
            .filter(|a| a.ifindex == ifindex)
            .map(|a| a.net)
            .collect())
    }

    /// Routes out of one link in the family of `like` (a dump the kernel filters by oif).
    pub async fn routes_of_link(
        &self,
        ifindex: u32,
        like: IpAddr,
    ) -> Result<NetnsInventory, InventoryError> {
        let _one_dump_at_a_time = self.dump_lock.lock().await;
        let mut query = RouteMessage::default();
        query.header.address_family = if like.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        query.attributes.push(RouteAttribute::Oif(ifindex));
        let found: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(self.err(format!("reading routes of link {ifindex}")))?;
        let routes = found
            .iter()
            .filter_map(parse_route)
            .filter(|r| r.oif == Some(ifindex))
            .collect();
        Ok(NetnsInventory::new(self.inode, vec![], vec![], routes))
    }

    /// The nsid this netns gives `other` (how `link_netnsid` values here name it); `None`
    /// when it has none.
    pub async fn nsid_of(&self, other: &NetnsConn) -> Result<Option<i32>, InventoryError> {
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(other.fd() as u32));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let what = format!("asking the nsid of {}", other.locator);
        let mut responses = self
            .handle
            .clone()
            .request(req)
            .map_err(self.err(what.clone()))?;
        let mut id = None;
        while let Some(resp) = responses.next().await {
            match resp.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(self.err(what)(rtnetlink::Error::NetlinkError(e)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    id = m.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(i) if *i >= 0 => Some(*i),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(id)
    }
}

async fn first_link(
    mut stream: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>> + Unpin,
) -> Result<Option<LiveLink>, rtnetlink::Error> {
    match stream.next().await {
        Some(Ok(msg)) => Ok(parse_link(&msg)),
        Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code() == -libc::ENODEV => Ok(None),
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

/// Opens the netns at `path`. A runtime creates the file first and mounts the netns on it
/// right after: a plain file where a netns is expected is waited for a little, so that a pass
/// woken by the file's creation does not find its container missing and wait for the next.
async fn open_mounted(path: &Path) -> Result<File, NetnsError> {
    const MOUNT_GRACE: std::time::Duration = std::time::Duration::from_millis(20);
    let deadline = tokio::time::Instant::now() + MOUNT_GRACE;
    loop {
        match netns::open_off_runtime(path).await {
            Err(NetnsError::NotNetns { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            opened => return opened,
        }
    }
}

/// A NETLINK_ROUTE socket in the netns `netns` (opened from `path`). Sockets are made on one
/// thread kept for that: it enters the netns, makes the socket and goes back to its own netns
/// (a thread left inside would keep that netns alive). A thread per socket cost more than the
/// socket.
pub(super) async fn socket_in(
    netns: &File,
    path: &Path,
) -> Result<netlink_sys::Socket, InventoryError> {
    type Job = (
        File,
        PathBuf,
        tokio::sync::oneshot::Sender<Result<netlink_sys::Socket, InventoryError>>,
    );
    static ENTERING: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> =
        std::sync::OnceLock::new();
    let jobs = ENTERING.get_or_init(|| {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("netguard-netns".into())
            .spawn(move || {
                let home_path = Path::new("/proc/thread-self/ns/net");
                let home = match netns::open(home_path) {
                    Ok(home) => home,
                    Err(e) => {
                        return tracing::error!("cannot keep a thread for entering namespaces: {e}")
                    }
                };
                for (netns, path, reply) in queue {
                    let made = netns::enter(&netns, &path)
                        .map_err(InventoryError::from)
                        .and_then(|()| {
                            netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).map_err(
                                |source| InventoryError::Socket {
                                    netns: path.display().to_string(),
                                    source,
                                },
                            )
                        });
                    if let Err(e) = netns::enter(&home, home_path) {
                        // Stuck elsewhere: every later request finds this thread gone.
                        return tracing::error!(
                            "the thread entering namespaces cannot go back: {e}"
                        );
                    }
                    let _ = reply.send(made);
                }
            })
            .expect("spawning a thread");
        Mutex::new(jobs)
    });
    let gone = || InventoryError::Netns(NetnsError::ThreadDied { path: path.into() });
    // Our own fd for the job: the caller's may be closed if it stops waiting.
    let netns = netns.try_clone().map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    let (reply, made) = tokio::sync::oneshot::channel();
    jobs.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((netns, path.into(), reply))
        .map_err(|_| gone())?;
    made.await.map_err(|_| gone())?
}
