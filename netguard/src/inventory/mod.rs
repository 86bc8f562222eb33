//! What the kernel says now, per netns: links, addresses and routes, dumped through one
//! rtnetlink connection per netns.
//!
//! A connection's socket is created on a thread that entered the netns, then driven from tokio;
//! [`Pool`] keeps one per netns and hands it out again, so nothing re-enters a netns per
//! request. Lookups go through the [`NetnsInventory`] already dumped (by index or name), never
//! a dump per lookup. A held socket pins its netns (and the devices in it), so connections
//! live for one pass: [`Pool::release`] drops all but the host's after it, and
//! [`Pool::prune`] drops any whose netns is no longer found at its locator.

use std::collections::HashMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoMacVlan, InfoVlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::Serialize;

use crate::model::{IpNet, Locator, Mac, MacvlanMode, NicIdentity, RouteSpec, VlanProtocol};
use crate::netns::{self, NetnsError};
use crate::rtnl::listen::{listen_all_nsid, recv_tagged, Datagram};
use crate::rtnl::message::macvlan_mode_from;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot open an rtnetlink socket in netns {netns}: {source}")]
    Socket {
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
    #[serde(skip)]
    by_index: HashMap<u32, usize>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
}

impl NetnsInventory {
    pub fn new(
        inode: u64,
        links: Vec<LiveLink>,
        addresses: Vec<LiveAddr>,
        routes: Vec<LiveRoute>,
    ) -> Self {
        let by_index = links
            .iter()
            .enumerate()
            .map(|(i, l)| (l.ifindex, i))
            .collect();
        let by_name = links
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

    pub fn link(&self, ifindex: u32) -> Option<&LiveLink> {
        self.by_index.get(&ifindex).map(|i| &self.links[*i])
    }

    pub fn link_by_name(&self, name: &str) -> Option<&LiveLink> {
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
        // Each message is boiled down as it arrives: the decoded messages are many times the
        // size of what we keep (a host with a thousand veths answers megabytes).
        let links: Vec<LiveLink> = self
            .link_get()
            .execute()
            .try_filter_map(|m| futures::future::ok(parse_link(&m)))
            .try_collect()
            .await
            .map_err(self.err("link dump"))?;
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
        Ok(NetnsInventory::new(self.inode, links, addrs, routes))
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
        match netns::open(path) {
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
async fn socket_in(netns: &File, path: &Path) -> Result<netlink_sys::Socket, InventoryError> {
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

const OWN_NETNS: &str = "/proc/self/ns/net";

/// A connection per netns, opened once and reused.
pub struct Pool {
    host: PathBuf,
    conns: Mutex<HashMap<Locator, Arc<NetnsConn>>>,
}

/// A connection [`Pool::prune`] dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub locator: Locator,
    pub old_inode: u64,
    /// The netns found at the locator now, if any.
    pub now: Option<u64>,
}

impl Pool {
    /// `host`: the netns standing in for the host (`None`: our own, i.e. init_net).
    pub fn new(host: Option<PathBuf>) -> Pool {
        Pool {
            host: host.unwrap_or_else(|| PathBuf::from(OWN_NETNS)),
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub fn path_of<'a>(&'a self, locator: &'a Locator) -> &'a Path {
        match locator {
            Locator::Host => &self.host,
            Locator::Path(p) => p,
        }
    }

    /// How the host netns is named in status and events: `init_net`, or the stand-in's path.
    pub fn host_name(&self) -> String {
        if self.host == Path::new(OWN_NETNS) {
            crate::event::INIT_NET.to_string()
        } else {
            self.host.display().to_string()
        }
    }

    /// The inode of the netns found at `locator` now (one `stat`), if any.
    pub fn inode_at(&self, locator: &Locator) -> Option<u64> {
        netns::inode_of(self.path_of(locator)).ok()
    }

    /// The connection to the netns at `locator`, opened on first use.
    pub async fn get(&self, locator: &Locator) -> Result<Arc<NetnsConn>, InventoryError> {
        if let Some(conn) = self.lock().get(locator) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(NetnsConn::open(locator.clone(), self.path_of(locator)).await?);
        // Two tasks may race to open the same netns: keep the first, drop ours.
        Ok(self.lock().entry(locator.clone()).or_insert(conn).clone())
    }

    /// Keeps a connection opened elsewhere (until [`release`](Self::release)), unless one to
    /// the same netns is kept already.
    pub fn adopt(&self, conn: NetnsConn) {
        let mut conns = self.lock();
        if conns
            .get(&conn.locator)
            .is_none_or(|kept| kept.inode != conn.inode)
        {
            conns.insert(conn.locator.clone(), Arc::new(conn));
        }
    }

    pub async fn host(&self) -> Result<Arc<NetnsConn>, InventoryError> {
        self.get(&Locator::Host).await
    }

    /// Drops connections whose locator is gone or now finds another netns: a held socket
    /// would keep a dead netns (and its devices) alive.
    pub fn prune(&self) -> Vec<Pruned> {
        let mut conns = self.lock();
        let mut pruned = Vec::new();
        conns.retain(|locator, conn| {
            let now = netns::inode_of(match locator {
                Locator::Host => &self.host,
                Locator::Path(p) => p,
            })
            .ok();
            if now == Some(conn.inode) {
                return true;
            }
            tracing::debug!(
                "dropping rtnetlink connection to {locator} (inode {} -> {now:?})",
                conn.inode
            );
            pruned.push(Pruned {
                locator: locator.clone(),
                old_inode: conn.inode,
                now,
            });
            false
        });
        pruned
    }

    /// Drops every connection but the host's. A held connection keeps its netns alive, and
    /// with it the devices a container restart should have destroyed: nothing between passes
    /// may hold one.
    pub fn release(&self) {
        self.lock().retain(|locator, _| *locator == Locator::Host);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Locator, Arc<NetnsConn>>> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

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
