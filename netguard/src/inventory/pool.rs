//! One connection per netns, opened once and reused for a pass, a bounded number of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::Locator;
use crate::netns::{self};

use super::conn::NetnsConn;
use super::InventoryError;

const OWN_NETNS: &str = "/proc/self/ns/net";

/// Connections to other netns kept open at most: each holds two fds (its socket and the
/// netns), and a fleet host has more netns than a process may have fds (10,000 netns against
/// a 20,000 hard limit here). Beyond it the least recently used one is let go: opening it
/// again costs about a millisecond.
pub const MAX_OPEN: usize = 256;

/// A connection per netns, opened once and reused, at most [`MAX_OPEN`] besides the host's.
pub struct Pool {
    host: PathBuf,
    max_open: usize,
    conns: Mutex<Conns>,
}

/// The open connections, each with when it was last handed out (a use counter).
#[derive(Default)]
struct Conns {
    open: HashMap<Locator, (Arc<NetnsConn>, u64)>,
    uses: u64,
}

impl Conns {
    fn get(&mut self, locator: &Locator) -> Option<Arc<NetnsConn>> {
        self.uses += 1;
        let uses = self.uses;
        self.open.get_mut(locator).map(|(conn, used)| {
            *used = uses;
            conn.clone()
        })
    }

    /// Keeps `conn`, letting go of the least recently used other netns beyond the bound. A
    /// task still holding an evicted connection keeps it until it is done.
    fn insert(&mut self, conn: Arc<NetnsConn>, max_open: usize) -> Arc<NetnsConn> {
        self.uses += 1;
        let others = self.open.len() - usize::from(self.open.contains_key(&Locator::Host));
        if conn.locator != Locator::Host && others >= max_open {
            let oldest = self
                .open
                .iter()
                .filter(|(locator, _)| **locator != Locator::Host)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(locator, _)| locator.clone());
            if let Some(oldest) = oldest {
                tracing::trace!("letting go of the rtnetlink connection to {oldest}");
                self.open.remove(&oldest);
            }
        }
        self.open
            .insert(conn.locator.clone(), (conn.clone(), self.uses));
        conn
    }
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
        Pool::bounded(host, MAX_OPEN)
    }

    /// A pool keeping at most `max_open` connections besides the host's.
    pub fn bounded(host: Option<PathBuf>, max_open: usize) -> Pool {
        Pool {
            host: host.unwrap_or_else(|| PathBuf::from(OWN_NETNS)),
            max_open: max_open.max(1),
            conns: Mutex::new(Conns::default()),
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
            return Ok(conn);
        }
        let conn = Arc::new(NetnsConn::open(locator.clone(), self.path_of(locator)).await?);
        // Two tasks may race to open the same netns: keep the first, drop ours.
        let mut conns = self.lock();
        match conns.get(locator) {
            Some(kept) => Ok(kept),
            None => Ok(conns.insert(conn, self.max_open)),
        }
    }

    /// Keeps a connection opened elsewhere (until [`release`](Self::release)), unless one to
    /// the same netns is kept already.
    pub fn adopt(&self, conn: NetnsConn) {
        let mut conns = self.lock();
        if conns
            .get(&conn.locator)
            .is_none_or(|kept| kept.inode != conn.inode)
        {
            conns.insert(Arc::new(conn), self.max_open);
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
        conns.open.retain(|locator, (conn, _)| {
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
        self.lock()
            .open
            .retain(|locator, _| *locator == Locator::Host);
    }

    /// How many connections are open now, the host's included.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
