//! The rtnetlink backend: RTNLGRP_LINK of the host netns and of every netns it can find.
//!
//! A socket opened inside a container netns would keep that netns alive, and with it the very
//! behaviour we observe (a lent NIC comes back only when its netns dies). So both sockets live
//! in the host netns: the listener uses NETLINK_LISTEN_ALL_NSID, which delivers notifications
//! of every netns that has an nsid in the host netns, tagged with it. We give every netns we
//! find an nsid, dump its links by that nsid, and learn of its death from RTM_DELNSID (the
//! kernel drops the nsid as cleanup_net begins).
//!
//! New namespaces are found without rescanning every netns of the machine all the time (the
//! cost of that grew with their number: 11-16 ms of CPU a second at 1,000): a bind mount is
//! announced by inotify on the directories runtimes keep them in, and looked at alone; a
//! netns that announces itself with an nsid nobody told us of sends us to look; and the full
//! rescan (`/proc` too, for namespaces no file names) runs only every [`RESCAN_EVERY`].

pub(crate) mod socket;
mod track;
mod uevent;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink_packet_route::RouteNetlinkMessage;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::event::Event;
use crate::inotify::Inotify;
use crate::netns::{self, NetnsError, Resolver};
use crate::trace::{Running, TraceOptions};
use socket::{Listener, Received, Requests};
use track::{Seen, Tracker, UnknownNsid};
use uevent::{DriverChange, Uevents};

/// How often every netns of the machine is looked for: the safety net under inotify, and what
/// finds a netns only a process holds (it sends nothing until it has an nsid).
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// How often the bind-mount directories that did not exist are looked for again.
const DIRS_EVERY: Duration = Duration::from_secs(1);

/// A bind mount is made just after its file is created: an announced file that is no netns
/// yet is looked at again this often, for this long (then the full rescan will find it).
const MOUNT_POLL: Duration = Duration::from_millis(20);
const MOUNT_WAIT: Duration = Duration::from_secs(2);

/// Events waiting for the consumer; when full the listener stops reading and the kernel
/// queues, then overruns.
const CHANNEL: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open an rtnetlink socket in the host netns: {0}")]
    Socket(#[source] std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot read the links of the host netns: {0}")]
    HostDump(#[source] std::io::Error),
    #[error("rtnetlink request failed: {0}")]
    Request(#[source] std::io::Error),
}

/// Starts listening; `Err` is the reason in plain words.
pub async fn start(options: &TraceOptions, resolver: Resolver) -> Result<Running, String> {
    start_listening(options, resolver)
        .await
        .map_err(|err| err.to_string())
}

async fn start_listening(
    options: &TraceOptions,
    resolver: Resolver,
) -> Result<Running, NetlinkError> {
    let opened = in_host_netns(options, socket::open).await?;
    let (listener, connection, mut requests) = opened.map_err(NetlinkError::Socket)?;
    let listener = Listener::new(listener).map_err(NetlinkError::Socket)?;
    let connection = AbortOnDrop(tokio::spawn(connection));

    let host = resolver.host_inode();
    let init = resolver.init_inode().unwrap_or(host);
    let mut tracker = Tracker::new(resolver.clone(), host, init, uevent::bound_driver);
    // Uevents tell a driver's unbind/bind; without them the NICs' causes are only coarser.
    let uevents = match in_host_netns(options, Uevents::open).await? {
        Ok(uevents) => Some(uevents),
        Err(err) => {
            tracing::warn!("cannot read uevents (NETLINK_KOBJECT_UEVENT): {err}; driver unbind/bind causes are unknown");
            tracker.without_uevents(err.to_string());
            None
        }
    };
    // The listener is subscribed already, so nothing falls between this dump and it.
    let links = requests
        .dump_links(None)
        .await
        .map_err(NetlinkError::HostDump)?;
    let host_path = options
        .host_netns
        .as_deref()
        .unwrap_or(Path::new("/proc/self/ns/net"));
    // Rare, but a host that gave itself an nsid tags its own notifications with it.
    let own_nsid = match netns::open(host_path) {
        Ok(file) => requests.nsid(&file).await.ok().flatten(),
        Err(_) => None,
    };
    tracker.add_netns(host, own_nsid, &links, false, Instant::now());

    // Watching before the first discovery: a bind mount made meanwhile is announced.
    let mounts = match Inotify::new() {
        Ok(mut inotify) => {
            inotify.watch_bind_mount_dirs();
            Some(inotify)
        }
        Err(err) => {
            tracing::warn!("cannot watch the netns bind-mount directories ({err}): new namespaces are found by the rescan every {RESCAN_EVERY:?}");
            None
        }
    };
    let (events, receiver) = mpsc::channel(CHANNEL);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut driver = Driver {
        tracker,
        resolver,
        listener,
        uevents,
        requests,
        events,
        dropped: dropped.clone(),
        unresolved: HashSet::new(),
        mounts,
        announced: HashMap::new(),
        started: false,
        resync_due: false,
    };
    driver.discover().await;
    driver.started = true;
    let driver = AbortOnDrop(tokio::spawn(driver.run()));
    Ok(Running {
        events: receiver,
        dropped: Box::new(move || dropped.load(Ordering::Relaxed)),
        keep_alive: Box::new((driver, connection)),
    })
}

/// Runs `open` in the host netns (the stand-in's, for tests) with the runtime entered, so the
/// sockets it opens live there and register with this runtime.
async fn in_host_netns<T: Send + 'static>(
    options: &TraceOptions,
    open: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let runtime = tokio::runtime::Handle::current();
    let open = move || {
        let _context = runtime.enter();
        open()
    };
    match &options.host_netns {
        Some(path) => netns::run_in(path, open).await,
        None => Ok(open()),
    }
}

/// Stops a task when the tracer is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Owns the sockets and the tracker; feeds one to the other and events to the channel.
struct Driver {
    tracker: Tracker,
    resolver: Resolver,
    listener: Listener,
    uevents: Option<Uevents>,
    requests: Requests,
    events: mpsc::Sender<Event>,
    dropped: Arc<AtomicU64>,
    /// nsids a rescan could not place since the last periodic rescan: not worth another.
    unresolved: HashSet<i32>,
    /// inotify on the bind-mount directories.
    mounts: Option<Inotify>,
    /// Files announced there that were no netns yet (not mounted yet), and when announced.
    announced: HashMap<PathBuf, Instant>,
    /// Past the first discovery: what new namespaces hold was made while we watched.
    started: bool,
    /// Notifications were lost: re-read every netns once the queue is drained.
    resync_due: bool,
}

enum Wake {
    Received(std::io::Result<Received>),
    Uevent(std::io::Result<DriverChange>),
    Mounts(std::io::Result<crate::inotify::Notices>),
    Announced,
    Dirs,
    Rescan,
    Deadline,
}

/// The driver's steps return whether to go on: `false` once the consumer is gone or the
/// listener failed.
impl Driver {
    async fn run(mut self) {
        let mut rescan =
            tokio::time::interval_at(tokio::time::Instant::now() + RESCAN_EVERY, RESCAN_EVERY);
        rescan.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut dirs =
            tokio::time::interval_at(tokio::time::Instant::now() + DIRS_EVERY, DIRS_EVERY);
        dirs.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let deadline = self.tracker.next_deadline();
            let poll = (!self.announced.is_empty()).then(|| Instant::now() + MOUNT_POLL);
            let wake = tokio::select! {
                received = self.listener.recv() => Wake::Received(received),
                change = next_uevent(&mut self.uevents) => Wake::Uevent(change),
                notices = next_notices(&self.mounts) => Wake::Mounts(notices),
                _ = sleep_until(poll) => Wake::Announced,
                _ = dirs.tick() => Wake::Dirs,
                _ = rescan.tick() => Wake::Rescan,
                _ = sleep_until(deadline) => Wake::Deadline,
            };
            let go_on = match wake {
                Wake::Received(received) => self.received(received).await,
                Wake::Uevent(Ok(change)) => {
                    let events = self.tracker.on_driver_change(change, Instant::now());
                    self.emit(events).await
                }
                Wake::Uevent(Err(err)) => {
                    tracing::warn!("the uevent socket failed: {err}; driver unbind/bind causes are unknown from now on");
                    self.uevents = None;
                    self.tracker.without_uevents(err.to_string());
                    true
                }
                Wake::Mounts(Ok(notices)) => self.announce(notices).await,
                Wake::Mounts(Err(err)) => {
                    tracing::warn!("watching the netns bind-mount directories failed: {err}; new namespaces are found by the rescan every {RESCAN_EVERY:?}");
                    self.mounts = None;
                    true
                }
                Wake::Announced => self.look_at_announced().await,
                Wake::Dirs => {
                    // A directory just made may hold a netns made before we watched it.
                    let added = self
                        .mounts
                        .as_mut()
                        .is_some_and(Inotify::watch_bind_mount_dirs);
                    !added || self.discover().await
                }
                Wake::Rescan => {
                    self.unresolved.clear();
                    self.discover().await
                }
                // A move whose destination we did not hear from may have gone to a netns
                // that is new to us: look before giving up on it.
                Wake::Deadline => {
                    self.discover().await && {
                        let events = self.tracker.expire(Instant::now());
                        self.emit(events).await
                    }
                }
            };
            if !go_on {
                return;
            }
            // What is still queued after an overrun predates the loss: apply it first, so
            // that the re-read comes last and nothing older overwrites it.
            while self.resync_due {
                let go_on = match self.listener.try_recv() {
                    Some(received) => self.received(received).await,
                    None => {
                        self.resync_due = false;
                        self.resync().await
                    }
                };
                if !go_on {
                    return;
                }
            }
        }
    }

    async fn handle(&mut self, messages: Vec<(Option<i32>, RouteNetlinkMessage)>) -> bool {
        for (nsid, message) in messages {
            let events = match self.tracker.on_message(nsid, &message, Instant::now()) {
                Ok(events) => events,
                Err(UnknownNsid(id)) if self.unresolved.insert(id) => {
                    // Somebody else gave a netns new to us an nsid before we looked at it:
                    // most likely a bind mount just announced (cheap to look at), else
                    // everything is rescanned.
                    let notices = self.mounts.as_ref().map(Inotify::try_read);
                    let looked = match notices {
                        Some(Ok(Some(notices))) => self.announce(notices).await,
                        _ => self.look_at_announced().await,
                    };
                    if !looked {
                        return false;
                    }
                    match self.tracker.on_message(nsid, &message, Instant::now()) {
                        Err(UnknownNsid(_)) => {
                            if !self.discover().await {
                                return false;
                            }
                            self.tracker
                                .on_message(nsid, &message, Instant::now())
                                .unwrap_or_else(|err| {
                                    tracing::debug!("{err}: message skipped");
                                    Vec::new()
                                })
                        }
                        found => found.unwrap_or_else(|err| {
                            tracing::debug!("{err}: message skipped");
                            Vec::new()
                        }),
                    }
                }
                Err(err) => {
                    tracing::debug!("{err}: message skipped");
                    Vec::new()
                }
            };
            if !self.emit(events).await {
                return false;
            }
        }
        true
    }

    async fn received(&mut self, received: std::io::Result<Received>) -> bool {
        match received {
            Ok(Received::Messages(messages)) => self.handle(messages).await,
            // The kernel does not say how many notifications it dropped: each overrun counts one.
            Ok(Received::Overrun) => {
                let overruns = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!("rtnetlink overrun (ENOBUFS): events were lost; re-reading the links of every watched netns ({overruns} overruns so far)");
                self.resync_due = true;
                true
            }
            Err(err) => {
                tracing::error!("the rtnetlink listener failed, the netlink tracer stops: {err}");
                false
            }
        }
    }

    /// After an overrun: re-reads every watched netns and reports the difference.
    async fn resync(&mut self) -> bool {
        let mut dumps = Vec::new();
        let mut gone = Vec::new();
        for (netns, nsid) in self.tracker.watched() {
            match self.requests.dump_links(nsid).await {
                Ok(links) => dumps.push((netns, links)),
                // The kernel rejects an nsid nobody carries: that netns died unseen.
                Err(err) if nsid.is_some() && err.raw_os_error() == Some(libc::EINVAL) => {
                    gone.push(netns)
                }
                Err(err) => tracing::warn!("cannot re-read the links of netns {netns}: {err}"),
            }
        }
        let now = Instant::now();
        let mut events: Vec<Event> = gone
            .into_iter()
            .flat_map(|netns| self.tracker.teardown(netns, now))
            .collect();
        events.extend(self.tracker.resync(dumps, now));
        self.emit(events).await && self.discover().await
    }

    /// Finds namespaces not watched yet, gives each an nsid in the host netns and reads its
    /// links.
    async fn discover(&mut self) -> bool {
        let resolver = self.resolver.clone();
        let live = match tokio::task::spawn_blocking(move || resolver.rescan()).await {
            Ok(live) => live,
            Err(err) => {
                tracing::warn!("netns rescan failed: {err}");
                return true;
            }
        };
        let mut events = Vec::new();
        for (inode, path) in live {
            events.extend(self.add(inode, &path, Instant::now()).await);
        }
        self.emit(events).await
    }

    /// Files created in the bind-mount directories: each is looked at alone (a full rescan if
    /// the kernel's queue overflowed).
    async fn announce(&mut self, notices: crate::inotify::Notices) -> bool {
        let now = Instant::now();
        for path in notices.created {
            self.announced.entry(path).or_insert(now);
        }
        if notices.overflow {
            tracing::debug!("inotify queue overflow: rescanning every netns");
            self.announced.clear();
            return self.discover().await;
        }
        self.look_at_announced().await
    }

    /// Watches the announced files that are a netns now; drops those gone or waited for
    /// long enough.
    async fn look_at_announced(&mut self) -> bool {
        let now = Instant::now();
        let mut events = Vec::new();
        let paths: Vec<(PathBuf, Instant)> = self.announced.drain().collect();
        for (path, since) in paths {
            let inode = match netns::inode_of(&path) {
                Ok(inode) => inode,
                Err(NetnsError::Open { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                // Not mounted yet, most likely.
                _ => {
                    if since.elapsed() < MOUNT_WAIT {
                        self.announced.insert(path, since);
                    }
                    continue;
                }
            };
            self.resolver.note(inode, &path);
            events.extend(self.add(inode, &path, now).await);
        }
        self.emit(events).await
    }

    /// Starts watching the netns at `path` unless it is watched already; its links are
    /// registered if it was made after we started.
    async fn add(&mut self, inode: u64, path: &Path, now: Instant) -> Vec<Event> {
        if self.tracker.knows(inode) {
            return Vec::new();
        }
        match self.watch(path).await {
            Ok((nsid, links)) => {
                self.tracker
                    .add_netns(inode, Some(nsid), &links, self.started, now)
            }
            // It may have died since it was found; the next rescan tries again otherwise.
            Err(err) => {
                tracing::debug!("not watching netns {}: {err}", path.display());
                Vec::new()
            }
        }
    }

    async fn watch(&mut self, path: &Path) -> Result<(i32, Vec<Seen>), NetlinkError> {
        // Open only as long as the kernel needs the fd: a held fd would keep the netns alive.
        let nsid = {
            let file = netns::open_off_runtime(path).await?;
            self.requests
                .nsid_assigned(&file)
                .await
                .map_err(NetlinkError::Request)?
        };
        let links = self
            .requests
            .dump_links(Some(nsid))
            .await
            .map_err(NetlinkError::Request)?;
        Ok((nsid, links))
    }

    async fn emit(&mut self, events: Vec<Event>) -> bool {
        for event in events {
            tracing::debug!(?event, "netlink event");
            if self.events.send(event).await.is_err() {
                return false;
            }
        }
        true
    }
}

async fn next_uevent(uevents: &mut Option<Uevents>) -> std::io::Result<DriverChange> {
    match uevents {
        Some(uevents) => uevents.next().await,
        None => std::future::pending().await,
    }
}

async fn next_notices(mounts: &Option<Inotify>) -> std::io::Result<crate::inotify::Notices> {
    match mounts {
        Some(mounts) => mounts.read().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
