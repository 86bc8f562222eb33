//! The restorer, level-triggered: each pass looks at the kernel (host netns and every netns a
//! guarded link lives in), compares it with the ledger, plans, applies, and records how each
//! guarded thing stands. Running a pass again on a healthy system does nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::event::Netns;
use crate::inventory::{InventoryError, Pool, Pruned};
use crate::ledger::{KindSpec, Ledger, LedgerContent, LinkState, Locator, Mac, NicIdentity, NicLocation, NicRecord, NicState, Parent};

pub mod apply;
pub mod plan;

pub use apply::{ActionError, Executor, ItemResult, Outcome};
pub use plan::{Action, Item, Plan, Target, Verdict, World};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read the host netns: {0}")]
    Host(#[source] InventoryError),
}

/// The result of one pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub results: Vec<ItemResult>,
    /// Connections dropped because their netns is gone or was replaced.
    #[serde(skip)]
    pub pruned: Vec<Pruned>,
    pub took: Duration,
}

impl PassReport {
    /// Items that are not as they should be after this pass.
    pub fn broken(&self) -> impl Iterator<Item = &ItemResult> {
        self.results.iter().filter(|r| !matches!(r.outcome, Outcome::Intact | Outcome::Restored | Outcome::Lent))
    }
}

impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.results {
            write!(f, "{}: {:?}", r.target, r.outcome)?;
            if let Some(reason) = &r.reason {
                write!(f, " ({reason})")?;
            }
            writeln!(f)?;
        }
        write!(f, "pass took {:?}", self.took)
    }
}

pub struct Restorer {
    pool: Arc<Pool>,
    executor: Executor,
}

impl Restorer {
    /// Links are repaired up to `concurrency` at a time.
    pub fn new(pool: Arc<Pool>, concurrency: usize) -> Restorer {
        Restorer { executor: Executor::new(pool.clone(), concurrency), pool }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Dumps the host netns and every netns the ledger's links need, concurrently, after
    /// dropping connections to netns that are gone. A netns that cannot be opened is noted,
    /// not fatal: its links wait.
    pub async fn survey(&self, ledger: &LedgerContent) -> Result<(World, Vec<Pruned>), RestoreError> {
        let pruned = self.pool.prune();
        let host = self.pool.host().await.map_err(RestoreError::Host)?;
        let mut wanted = BTreeSet::new();
        for record in ledger.links.values() {
            let spec = &record.spec;
            wanted.insert(spec.netns.clone());
            match &spec.kind {
                KindSpec::Veth { peer } => {
                    wanted.insert(peer.netns.clone());
                }
                KindSpec::Vlan { parent: Parent::Link { netns, .. }, .. }
                | KindSpec::Macvlan { parent: Parent::Link { netns, .. }, .. } => {
                    wanted.insert(netns.clone());
                }
                _ => {}
            }
        }
        wanted.remove(&Locator::Host);
        let dumps = futures::future::join_all(wanted.into_iter().map(|locator| async move {
            let dumped = match self.pool.get(&locator).await {
                Ok(conn) => conn.dump().await,
                Err(e) => Err(e),
            };
            (locator, dumped)
        }));
        let (host_inv, others) = futures::join!(host.dump(), dumps);
        let mut world = World { host: host_inv.map_err(RestoreError::Host)?, ..World::default() };
        for (locator, dumped) in others {
            match dumped {
                Ok(inv) => {
                    world.netns.insert(locator, inv);
                }
                Err(e) => {
                    world.unreachable.insert(locator, e.to_string());
                }
            }
        }
        Ok((world, pruned))
    }

    /// What a pass would do, changing nothing (kernel or ledger): for `--dry-run`.
    pub async fn dry_run(&self, ledger: &Ledger) -> Result<Plan, RestoreError> {
        let (world, _) = self.survey(ledger.content()).await?;
        let mut content = ledger.content().clone();
        let see = &mut |identity: NicIdentity, mac, up, location: NicLocation| {
            if ledger.is_new_nic(&identity, mac, &location.name) {
                let home = location.name.clone();
                content.nics.push(NicRecord::new(identity, &home, up, Some(location)));
            }
        };
        see_host_nics(see, &world, self.host_netns(&world));
        self.pool.release();
        Ok(plan::plan(&content, &world))
    }

    /// One pass: survey, guard newly seen NICs, plan, apply, record states in the ledger
    /// (journalled; the caller saves the ledger once afterwards).
    pub async fn pass(&self, ledger: &mut Ledger) -> Result<PassReport, RestoreError> {
        let started = Instant::now();
        let (world, pruned) = self.survey(ledger.content()).await?;
        let host_netns = self.host_netns(&world);
        let see = &mut |identity: NicIdentity, mac, up, location| ledger.see_host_nic(&identity, mac, up, location);
        see_host_nics(see, &world, host_netns.clone());
        let plan = plan::plan(ledger.content(), &world);
        for item in &plan.items {
            if item.verdict == Verdict::Repair {
                if let Target::Link { key, .. } = &item.target {
                    ledger.set_link_state(key, LinkState::Restoring, item.reason.clone());
                }
            }
        }
        let results = self.executor.apply(&plan).await;
        for (item, result) in plan.items.iter().zip(&results) {
            record(ledger, item, result, &world, &host_netns);
        }
        self.pool.release();
        let report = PassReport { results, pruned, took: started.elapsed() };
        tracing::debug!("restore pass: {} items, {} not fine, {:?}", report.results.len(), report.broken().count(), report.took);
        Ok(report)
    }

    fn host_netns(&self, world: &World) -> Netns {
        Netns { inode: world.host.inode, names: vec![self.pool.host_name()] }
    }
}

/// Every physical NIC in the host netns, as `see(identity, mac, up, location)`.
fn see_host_nics(
    see: &mut dyn FnMut(NicIdentity, Option<Mac>, bool, NicLocation),
    world: &World,
    host: Netns,
) {
    for (link, identity) in world.host.nics() {
        let location = NicLocation { netns: host.clone(), name: link.name.clone(), ifindex: Some(link.ifindex) };
        see(identity, link.mac, link.up, location);
    }
}

/// Writes how one item stands into the ledger, and journals the actions taken.
fn record(ledger: &mut Ledger, item: &Item, result: &ItemResult, world: &World, host: &Netns) {
    for action in &result.applied {
        ledger.note_action(action, "ok");
    }
    if let Some(error) = &result.error {
        ledger.note_action(&item.actions[result.applied.len()], &error.kernel);
    }
    match &item.target {
        Target::Link { key, .. } => {
            let previous = ledger.link(&key.netns, &key.name).map(|r| r.state);
            let state = match result.outcome {
                // A repaired link stays "restored" (with its reason) until it breaks again.
                Outcome::Intact if previous == Some(LinkState::Restored) => LinkState::Restored,
                Outcome::Intact => LinkState::Intact,
                Outcome::Restored => LinkState::Restored,
                Outcome::Waiting => LinkState::Waiting,
                Outcome::Conflict => LinkState::Conflict,
                Outcome::Failed | Outcome::Lent | Outcome::Lost => LinkState::Failed,
            };
            let reason = if result.outcome == Outcome::Intact && state == LinkState::Restored {
                ledger.link(&key.netns, &key.name).and_then(|r| r.reason.clone())
            } else {
                result.reason.clone()
            };
            ledger.set_link_state(key, state, reason);
            if matches!(result.outcome, Outcome::Intact | Outcome::Restored) {
                if let Ok(inv) = world.inventory(&key.netns) {
                    ledger.set_link_netns_inode(key, inv.inode);
                }
            }
        }
        Target::Nic { identity, home_name } => {
            let previous = ledger.nics().iter().find(|n| &n.identity == identity).map(|n| (n.state, n.location.clone()));
            let live = world.host.nics().find(|(_, id)| identity.matches(id)).map(|(l, _)| l);
            let at = |name: &str| Some(NicLocation { netns: host.clone(), name: name.to_string(), ifindex: live.map(|l| l.ifindex) });
            let (state, location) = match result.outcome {
                Outcome::Intact if previous.as_ref().is_some_and(|p| p.0 == NicState::Restored) => (NicState::Restored, at(home_name)),
                Outcome::Intact => (NicState::Home, at(home_name)),
                Outcome::Restored => (NicState::Restored, at(home_name)),
                Outcome::Conflict | Outcome::Waiting => (NicState::Conflict, live.and_then(|l| at(&l.name))),
                Outcome::Failed => (NicState::Refunded, live.and_then(|l| at(&l.name))),
                Outcome::Lent => (NicState::Lent, previous.and_then(|p| p.1)),
                Outcome::Lost => (NicState::Lost, None),
            };
            ledger.set_nic(identity, state, result.reason.clone(), location);
        }
    }
}
