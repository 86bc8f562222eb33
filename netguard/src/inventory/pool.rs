//! One connection per netns, opened once and reused for a pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::Locator;
use crate::netns::{self};

use super::conn::NetnsConn;
use super::InventoryError;

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
