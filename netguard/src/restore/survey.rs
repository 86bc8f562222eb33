//! The survey: the kernel's view kept from pass to pass and brought up to date where it may
//! have changed, and which guarded links a pass plans again (those the view or the ledger
//! changed for since they were last planned and found whole).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use futures::StreamExt;

use super::plan::{Plan, Target, World};
use super::{ItemResult, Outcome, RestoreError, Restorer};
use crate::inventory::{Changed, Changes, InventoryError, NetnsConn, Pruned};
use crate::ledger::{KindSpec, Ledger, LedgerContent, LinkRecord, Locator, Parent};

/// The kernel's view kept from pass to pass, read again only where it may have changed: a
/// netns the kernel announced a change in (link, address or route), one mounted anew at its
/// path, one whose last pass left something not whole; everything when notifications were
/// lost, and every full-pass period ([`crate::config::DEFAULT_FULL_PASS_EVERY`]) regardless. A pass on an
/// idle host then reads nothing, and `stat`s only the netns paths the agent's bind-mount
/// watch does not vouch for.
#[derive(Default)]
pub(super) struct Known {
    pub(super) world: World,
    /// The nsid the host gives each netns read: its notifications carry it. `None`: it has
    /// none, so nothing would say it changed, and it is read every pass.
    nsids: HashMap<Locator, Option<i32>>,
    /// Read again at the next pass (`Locator::Host`: the host netns).
    pub(super) again: HashSet<Locator>,
    changes: Option<Changes>,
    read_all_at: Option<Instant>,
    /// The ledger's revision when the last pass ended; `None`: every link is planned next.
    planned: Option<u64>,
    /// Netns with a link the last pass did not find whole, or whose back-off still follows
    /// it: planned every pass until settled.
    unsettled: HashSet<Locator>,
    /// The ledger revision of the last survey when it left nothing to look at again: every
    /// netns it wanted read, each with an nsid its changes would be announced by, each at a
    /// path the bind-mount watch covers. Until the ledger, the host, an announcement or a
    /// mount notice says otherwise, or a full read is due, the next survey looks at nothing
    /// (at 10,000 netns, checking each one cost an idle pass ~40 ms).
    quiet_at: Option<u64>,
    /// `world.host` is a whole read, brought up to date since by the host's announcements:
    /// its links are not dumped again (at 10,000 containers the host holds 10,000 host sides,
    /// and the kernel looks up each one's peer netns among all 10,000: a dump per pass of a
    /// burst was most of the agent's time).
    host_kept: bool,
}

/// What a survey reads of the host netns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostRead {
    Nothing,
    /// Its addresses and routes; its links come from the announcements.
    AddressesRoutes,
    Whole,
}

/// Namespaces read at once during a survey (each read holds a socket in its netns).
const READ_CONCURRENCY: usize = 16;

/// What a survey found besides the view.
pub(super) struct Surveyed {
    /// Connections dropped because their netns is gone or was replaced.
    pub pruned: Vec<Pruned>,
    pub fresh: Fresh,
}

/// What a survey read again: the only parts of the view that may differ from the last pass's.
pub(super) struct Fresh {
    pub host: bool,
    pub netns: HashSet<Locator>,
}

impl Fresh {
    /// How many namespaces were read.
    pub fn read(&self) -> usize {
        self.netns.len() + usize::from(self.host)
    }

    fn contains(&self, locator: &Locator) -> bool {
        match locator {
            Locator::Host => self.host,
            Locator::Path(_) => self.netns.contains(locator),
        }
    }
}

impl Known {
    /// Whether a pass over a ledger at `revision` plans `record` again. Planning is pure: an
    /// unchanged ledger and an unchanged view give the plan of the last pass, so a link found
    /// whole then (and no longer followed by a back-off) is whole now, unless a netns it lives
    /// in or hangs on was read again. A NIC parent is looked up by identity wherever it is:
    /// such links are always planned (they are few).
    pub(super) fn needs_planning(&self, record: &LinkRecord, fresh: &Fresh, revision: u64) -> bool {
        if self.planned != Some(revision) || self.unsettled.contains(&record.spec.netns) {
            return true;
        }
        on_a_nic(record) || netns_of(record).into_iter().any(|at| fresh.contains(at))
    }

    /// After a pass over a ledger now at `revision`: which netns must be planned again.
    /// `followed`: whether a back-off still follows a target (until its restore held).
    pub(super) fn settle(
        &mut self,
        plan: &Plan,
        results: &[ItemResult],
        followed: impl Fn(&Target) -> bool,
        revision: u64,
    ) {
        self.unsettled = plan
            .items
            .iter()
            .zip(results)
            .filter_map(|(item, result)| match &item.target {
                Target::Link { key, .. }
                    if result.outcome != Outcome::Intact || followed(&item.target) =>
                {
                    Some(key.netns.clone())
                }
                _ => None,
            })
            .collect();
        self.planned = Some(revision);
    }

    /// Every link is planned at the next pass (what this survey read is not fresh to it).
    pub(super) fn plan_all_next(&mut self) {
        self.planned = None;
    }
}

/// The netns a link lives in and the one it hangs on (its peer's, its parent's; its own
/// again for a NIC parent).
fn netns_of(record: &LinkRecord) -> [&Locator; 2] {
    let spec = &record.spec;
    match &spec.kind {
        KindSpec::Veth { peer } => [&spec.netns, &peer.netns],
        KindSpec::Vlan { parent, .. } | KindSpec::Macvlan { parent, .. } => match parent {
            Parent::Link { netns, .. } => [&spec.netns, netns],
            Parent::Nic(_) => [&spec.netns, &spec.netns],
        },
    }
}

fn on_a_nic(record: &LinkRecord) -> bool {
    matches!(
        &record.spec.kind,
        KindSpec::Vlan {
            parent: Parent::Nic(_),
            ..
        } | KindSpec::Macvlan {
            parent: Parent::Nic(_),
            ..
        }
    )
}

impl Restorer {
    /// Brings the kept view of the host netns and of every netns the ledger's links need up
    /// to date (see [`Known`]), reading what may have changed concurrently. A netns that
    /// cannot be opened is noted, not fatal: its links wait.
    pub(super) async fn survey(
        &self,
        ledger: &Ledger,
    ) -> Result<(tokio::sync::MutexGuard<'_, Known>, Surveyed), RestoreError> {
        let revision = ledger.revision();
        let ledger = ledger.content();
        let mut known = self.known.lock().await;
        let pruned = self.pool.prune();
        let mounts = self.mounts().take();
        let host = self.pool.host().await.map_err(RestoreError::Host)?;
        // Listening before reading: whatever changes during the reads is announced after.
        if known.changes.is_none() {
            match Changes::open(self.pool.path_of(&Locator::Host)).await {
                Ok(changes) => known.changes = Some(changes),
                Err(e) => {
                    tracing::warn!("not listening for changes ({e}): this pass reads every netns")
                }
            }
        }
        let mut changed = match &mut known.changes {
            Some(changes) => changes.take(),
            None => Changed {
                anything: true,
                ..Changed::default()
            },
        };
        let due = known
            .read_all_at
            .is_none_or(|at| at.elapsed() >= self.full_pass_every);
        let quiet = known.quiet_at.take() == Some(revision)
            && changed == Changed::default()
            && !due
            && known.world.host.inode == host.inode
            && known.again.is_empty()
            && pruned.is_empty()
            && mounts.nothing_heard();
        if quiet {
            known.quiet_at = Some(revision);
            let fresh = Fresh {
                host: false,
                netns: HashSet::new(),
            };
            return Ok((known, Surveyed { pruned, fresh }));
        }
        if changed.anything || due || known.world.host.inode != host.inode {
            let changes = known.changes.take();
            *known = Known {
                changes,
                read_all_at: Some(Instant::now()),
                ..Known::default()
            };
            known.again.insert(Locator::Host);
        }
        let wanted = wanted(ledger);
        // A netns outside the watched directories is looked at every pass.
        let all_watched = wanted.iter().all(|l| mounts.watches(l));
        let Known {
            world,
            nsids,
            again,
            quiet_at,
            host_kept,
            ..
        } = &mut *known;
        world.netns.retain(|locator, _| wanted.contains(locator));
        world.unreachable.clear();
        nsids.retain(|locator, _| wanted.contains(locator));
        let stale: Vec<Locator> = wanted
            .into_iter()
            .filter(|locator| {
                let Some(inv) = world.netns.get(*locator) else {
                    return true;
                };
                let announced = match nsids.get(*locator) {
                    Some(Some(nsid)) => changed.nsids.contains(nsid),
                    _ => true,
                };
                announced
                    || again.contains(*locator)
                    || (mounts.may_have_moved(locator)
                        && self.pool.inode_at(locator) != Some(inv.inode))
            })
            .cloned()
            .collect();
        let host_read = if !*host_kept {
            // What was announced before this read is in it.
            HostRead::Whole
        } else {
            let news = std::mem::take(&mut changed.host_links);
            if !news.is_empty() {
                world.host = std::mem::take(&mut world.host).with_news(&news);
            }
            if changed.host_addresses_routes || again.contains(&Locator::Host) {
                HostRead::AddressesRoutes
            } else {
                HostRead::Nothing
            }
        };
        let read_host =
            changed.host || again.contains(&Locator::Host) || host_read == HostRead::Whole;
        again.clear();
        let fresh = Fresh {
            host: read_host,
            netns: stale.iter().cloned().collect(),
        };
        let host = &host;
        // Only for what is read (an idle pass reads nothing).
        let guarded = &if stale.is_empty() {
            HashMap::new()
        } else {
            guarded_names(ledger)
        };
        let reads = futures::stream::iter(stale)
            .map(|locator: Locator| async move {
                let path = self.pool.path_of(&locator).to_path_buf();
                let read = async {
                    let conn = NetnsConn::open(locator.clone(), &path).await?;
                    let inventory = conn.dump().await?;
                    let nsid = host.nsid_of(&conn).await?;
                    // A netns missing a guarded link is about to be repaired: this pass keeps
                    // the connection rather than open another (released with the rest).
                    let missing = guarded.get(&locator).is_some_and(|names| {
                        names.iter().any(|n| inventory.link_by_name(n).is_none())
                    });
                    if missing {
                        self.pool.adopt(conn);
                    }
                    Ok::<_, InventoryError>((inventory, nsid))
                }
                .await;
                (locator, read)
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect::<Vec<_>>();
        // The view as it stands goes into the read and comes back brought up to date.
        let kept = std::mem::take(&mut world.host);
        let host_view = async move {
            match host_read {
                HostRead::Nothing => Ok(kept),
                HostRead::AddressesRoutes => host
                    .dump_addresses_routes()
                    .await
                    .map(|(addresses, routes)| kept.with_addresses_routes(addresses, routes)),
                HostRead::Whole => host.dump().await,
            }
        };
        let (host_view, reads) = futures::join!(host_view, reads);
        // A view left half-read is read whole next time.
        *host_kept = host_view.is_ok();
        world.host = host_view.map_err(RestoreError::Host)?;
        let mut quiet = all_watched;
        for (locator, read) in reads {
            quiet &= matches!(read, Ok((_, Some(_))));
            match read {
                Ok((inv, nsid)) => {
                    world.netns.insert(locator.clone(), inv);
                    nsids.insert(locator, nsid);
                }
                Err(e) => {
                    world.netns.remove(&locator);
                    nsids.remove(&locator);
                    world.unreachable.insert(locator, e.to_string());
                }
            }
        }
        *quiet_at = quiet.then_some(revision);
        Ok((known, Surveyed { pruned, fresh }))
    }
}

/// The names of the links guarded in each netns.
fn guarded_names(ledger: &LedgerContent) -> HashMap<&Locator, Vec<&str>> {
    let mut names: HashMap<&Locator, Vec<&str>> = HashMap::new();
    for record in ledger.links.values() {
        names
            .entry(&record.spec.netns)
            .or_default()
            .push(&record.spec.name);
    }
    names
}

/// Every netns but the host's that the ledger's links live in or hang on.
fn wanted(ledger: &LedgerContent) -> HashSet<&Locator> {
    let mut wanted: HashSet<&Locator> = ledger.links.values().flat_map(netns_of).collect();
    wanted.remove(&Locator::Host);
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testutil::sample_content;
    use crate::restore::plan::{self, Item};

    fn result(item: &Item, outcome: Outcome) -> ItemResult {
        ItemResult {
            target: item.target.clone(),
            outcome,
            reason: None,
            applied: vec![],
            error: None,
        }
    }

    fn quiet() -> Fresh {
        Fresh {
            host: false,
            netns: HashSet::new(),
        }
    }

    #[test]
    fn only_links_something_changed_for_are_planned_again() {
        let content = sample_content();
        let veth = content
            .links
            .values()
            .find(|r| r.spec.kind.name() == "veth")
            .unwrap();
        let on_nic = content
            .links
            .values()
            .find(|r| r.spec.kind.name() == "vlan")
            .unwrap();
        let plan = plan::plan(&content, &World::default());
        let whole: Vec<ItemResult> = plan
            .items
            .iter()
            .map(|i| result(i, Outcome::Intact))
            .collect();
        let mut known = Known::default();
        assert!(
            known.needs_planning(veth, &quiet(), 7),
            "nothing planned yet"
        );

        known.settle(&plan, &whole, |_| false, 7);
        assert!(
            !known.needs_planning(veth, &quiet(), 7),
            "whole, nothing new"
        );
        assert!(
            known.needs_planning(on_nic, &quiet(), 7),
            "on a NIC: always"
        );
        assert!(
            known.needs_planning(veth, &quiet(), 8),
            "the ledger changed"
        );
        let own = Fresh {
            netns: HashSet::from([veth.spec.netns.clone()]),
            ..quiet()
        };
        assert!(
            known.needs_planning(veth, &own, 7),
            "its netns was read again"
        );
        let host = Fresh {
            host: true,
            ..quiet()
        };
        assert!(
            known.needs_planning(veth, &host, 7),
            "its peer's netns was read"
        );

        known.settle(&plan, &whole, |_| true, 7);
        assert!(
            known.needs_planning(veth, &quiet(), 7),
            "a back-off follows it"
        );

        let restored: Vec<ItemResult> = plan
            .items
            .iter()
            .map(|i| result(i, Outcome::Restored))
            .collect();
        known.settle(&plan, &restored, |_| false, 7);
        assert!(known.needs_planning(veth, &quiet(), 7), "not found whole");

        known.settle(&plan, &whole, |_| false, 7);
        known.plan_all_next();
        assert!(
            known.needs_planning(veth, &quiet(), 7),
            "a dry run read meanwhile"
        );
    }
}
