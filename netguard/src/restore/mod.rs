//! The restorer, level-triggered: each pass looks at the kernel (host netns and every netns a
//! guarded link lives in; what it saw before where nothing changed since), compares it with the
//! ledger, plans, applies, and records how each guarded thing stands. Running a pass again on a
//! healthy system does nothing.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::DEFAULT_FULL_PASS_EVERY;
use crate::event::Netns;
use crate::inventory::{InventoryError, Pool, Pruned};
use crate::ledger::{
    Flight, Ledger, LinkState, Locator, Mac, NicIdentity, NicLocation, NicRecord, NicState,
};

pub mod action;
pub mod apply;
mod backoff;
mod flight;
mod mounts;
pub mod plan;
mod survey;

pub use action::{describe, Action, Dev};
pub use apply::{ActionError, Executor, ItemResult, Outcome};
pub use mounts::MountNotices;
pub use plan::{Item, Plan, Target, Verdict, World};
use survey::Known;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot read the host netns: {0}")]
    Host(#[source] InventoryError),
    #[error("{0}; nothing was repaired in this pass")]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// The result of one pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub results: Vec<ItemResult>,
    /// Connections dropped because their netns is gone or was replaced.
    #[serde(skip)]
    pub pruned: Vec<Pruned>,
    pub took: Duration,
    /// When a repair held back by flapping is due (the next pass should not wait longer).
    #[serde(skip)]
    pub next_due: Option<Duration>,
}

impl PassReport {
    /// Items that are not as they should be after this pass.
    pub fn broken(&self) -> impl Iterator<Item = &ItemResult> {
        self.results.iter().filter(|r| {
            !matches!(
                r.outcome,
                Outcome::Intact | Outcome::Restored | Outcome::Lent
            )
        })
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
    known: tokio::sync::Mutex<Known>,
    flaps: std::sync::Mutex<backoff::Flaps>,
    /// What the agent's bind-mount watch said (see [`MountNotices`]).
    mounts: std::sync::Mutex<MountNotices>,
    /// How often everything is read and planned, however quiet the kernel.
    full_pass_every: Duration,
}

/// After reading this many namespaces in a pass, memory is handed back to the system.
const GIVE_BACK_AFTER: usize = 64;

/// Reading many namespaces decodes megabytes of netlink messages that are dropped as soon as
/// they are boiled down; the allocator keeps the freed pages unless told to give them back,
/// and an agent would carry the peak of its busiest pass for the rest of its life.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Restorer {
    /// Links are repaired up to `concurrency` at a time.
    pub fn new(pool: Arc<Pool>, concurrency: usize) -> Restorer {
        Restorer::with_executor(Executor::new(pool.clone(), concurrency), pool)
    }

    /// A restorer that plans and logs every change and makes none (`agent --observe-only`).
    pub fn observing(pool: Arc<Pool>, concurrency: usize) -> Restorer {
        Restorer::with_executor(Executor::new(pool.clone(), concurrency).observing(), pool)
    }

    fn with_executor(executor: Executor, pool: Arc<Pool>) -> Restorer {
        Restorer {
            executor,
            pool,
            known: Default::default(),
            flaps: Default::default(),
            mounts: Default::default(),
            full_pass_every: DEFAULT_FULL_PASS_EVERY,
        }
    }

    /// Everything is read and planned at least this often (see [`DEFAULT_FULL_PASS_EVERY`]).
    pub fn with_full_pass_every(self, every: Duration) -> Restorer {
        Restorer {
            full_pass_every: every,
            ..self
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Where the bind-mount watch tells what changed (the agent's watcher writes to it).
    pub fn mounts(&self) -> std::sync::MutexGuard<'_, MountNotices> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one item planned outside a pass (lend, reclaim), every action read back like
    /// a pass's.
    pub async fn carry_out(&self, item: Item) -> ItemResult {
        let plan = Plan { items: vec![item] };
        let mut results = self.executor.apply(&plan).await;
        results.pop().expect("one result per item")
    }

    /// What a pass would do, changing nothing (kernel or ledger): for `--dry-run`.
    pub async fn dry_run(&self, ledger: &Ledger) -> Result<Plan, RestoreError> {
        let (mut known, _) = self.survey(ledger).await?;
        // What this survey read again is news to the next pass too.
        known.plan_all_next();
        let world = &known.world;
        let mut content = ledger.content().clone();
        let see = &mut |identity: NicIdentity, mac, up, location: NicLocation| {
            if ledger.is_new_nic(&identity, mac, &location.name) {
                let home = location.name.clone();
                content
                    .nics
                    .push(NicRecord::new(identity, &home, Some(up), Some(location)));
            }
        };
        see_host_nics(see, world, self.host_netns(world));
        self.pool.release();
        Ok(plan::plan(&content, world))
    }

    /// One pass: survey, guard newly seen NICs, plan, apply, record states in the ledger
    /// (journalled; the caller saves the ledger once afterwards).
    pub async fn pass(&self, ledger: &mut Ledger) -> Result<PassReport, RestoreError> {
        let started = Instant::now();
        let (mut known, surveyed) = self.survey(ledger).await?;
        let world = &known.world;
        let host_netns = self.host_netns(world);
        let see = &mut |identity: NicIdentity, mac, up, location| {
            ledger.see_host_nic(&identity, mac, up, location)
        };
        see_host_nics(see, world, host_netns.clone());
        let revision = ledger.revision();
        let mut plan = plan::plan_where(ledger.content(), world, |record| {
            known.needs_planning(record, &surveyed.fresh, revision)
        });
        if !plan.is_whole() {
            // A link waits for a parent this pass did not plan: plan them all.
            plan = plan::plan(ledger.content(), world);
        }
        self.hold_flapping(&mut plan);
        // Temporary names are on disk (the commit below) before any device gets one.
        let flights: Vec<Flight> = plan.actions().filter_map(Action::flight).collect();
        ledger.take_off(flights.iter().cloned());
        for item in &plan.items {
            if item.verdict == Verdict::Repair {
                if let Target::Link { key, .. } = &item.target {
                    ledger.set_link_state(key, LinkState::Restoring, item.reason.clone());
                }
            }
        }
        if plan
            .items
            .iter()
            .any(|item| item.verdict == Verdict::Repair)
        {
            // Home names first seen in this pass, the states above and the temporary names
            // are on disk before the kernel changes that rest on them.
            ledger.commit()?;
            crate::fault::point("journalled");
        }
        let results = self.executor.apply(&plan).await;
        for flight in &flights {
            ledger.landed(&flight.netns, &flight.name);
        }
        let (flapping, next_due) = self.note_flaps(&plan, &results);
        for ((item, result), flapping) in plan.items.iter().zip(&results).zip(flapping) {
            record(ledger, item, result, world, &host_netns, flapping);
        }
        // What was changed or is not whole is looked at again, notifications or not.
        for (item, result) in plan.items.iter().zip(&results) {
            if result.outcome != Outcome::Intact {
                let netns = match &item.target {
                    Target::Link { key, .. } => key.netns.clone(),
                    Target::Nic { .. } => Locator::Host,
                };
                known.again.insert(netns);
                known.again.insert(Locator::Host);
            }
        }
        {
            let flaps = self.flaps.lock().unwrap_or_else(|p| p.into_inner());
            known.settle(&plan, &results, |t| flaps.follows(t), ledger.revision());
        }
        drop(known);
        self.pool.release();
        if surveyed.fresh.read() >= GIVE_BACK_AFTER {
            give_back_memory();
        }
        let report = PassReport {
            results,
            pruned: surveyed.pruned,
            took: started.elapsed(),
            next_due,
        };
        tracing::debug!(
            "restore pass: {} items, {} not fine, {:?}",
            report.results.len(),
            report.broken().count(),
            report.took
        );
        Ok(report)
    }

    /// Repairs of things whose restores have not held wait out their back-off.
    fn hold_flapping(&self, plan: &mut Plan) {
        let mut flaps = self.flaps.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for item in &mut plan.items {
            if item.verdict != Verdict::Repair || !backoff::restores_a_loss(item) {
                continue;
            }
            if let Some(why) = flaps.hold(&item.target, now) {
                tracing::info!("{}: {why}", item.target);
                item.verdict = Verdict::Waiting;
                item.actions.clear();
                item.reason = Some(why);
            }
        }
    }

    /// Notes what a pass restored and found whole; returns, per result, why it is flapping
    /// (if it is), and when the next held repair is due.
    fn note_flaps(
        &self,
        plan: &Plan,
        results: &[ItemResult],
    ) -> (Vec<Option<String>>, Option<Duration>) {
        let mut flaps = self.flaps.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let flapping = plan
            .items
            .iter()
            .zip(results)
            .map(|(item, r)| flaps.note(item, r.outcome, now))
            .collect();
        (flapping, flaps.next_due(now))
    }

    fn host_netns(&self, world: &World) -> Netns {
        Netns {
            inode: world.host.inode,
            names: vec![self.pool.host_name()],
        }
    }
}

/// Every physical NIC in the host netns, as `see(identity, mac, up, location)`.
fn see_host_nics(
    see: &mut dyn FnMut(NicIdentity, Option<Mac>, bool, NicLocation),
    world: &World,
    host: Netns,
) {
    for (link, identity) in world.host.nics() {
        let location = NicLocation {
            netns: host.clone(),
            name: link.name.clone(),
            ifindex: Some(link.ifindex),
        };
        see(identity, link.mac, link.up, location);
    }
}

/// Writes how one item stands into the ledger, and journals the actions taken.
/// `flapping`: why a link's restores have not held lately, shown instead of its state.
fn record(
    ledger: &mut Ledger,
    item: &Item,
    result: &ItemResult,
    world: &World,
    host: &Netns,
    flapping: Option<String>,
) {
    let mut tried: Vec<&Action> = result.applied.iter().collect();
    let outcome = match &result.error {
        Some(error) => {
            tried.extend(item.actions.get(result.applied.len()));
            error.kernel.as_str()
        }
        None => "ok",
    };
    if !tried.is_empty() {
        ledger.note_actions(&item.target.to_string(), &tried, outcome);
    }
    match &item.target {
        Target::Link { key, .. } => {
            let record = ledger.content().links.get(key);
            let inode = world.inventory(&key.netns).ok().map(|inv| inv.inode);
            // Found whole and recorded so: nothing to write (the common case, looked up once).
            if result.outcome == Outcome::Intact
                && record.is_some_and(|r| {
                    r.spec.netns_inode == inode
                        && (r.state == LinkState::Restored
                            || (r.state == LinkState::Intact && r.reason.is_none()))
                })
            {
                return;
            }
            let previous = record.map(|r| r.state);
            let state = match result.outcome {
                // A repaired link stays "restored" (with its reason) until it breaks again.
                Outcome::Intact
                    if matches!(previous, Some(LinkState::Restored | LinkState::Flapping)) =>
                {
                    LinkState::Restored
                }
                Outcome::Intact => LinkState::Intact,
                Outcome::Restored => LinkState::Restored,
                Outcome::Waiting => LinkState::Waiting,
                Outcome::Conflict => LinkState::Conflict,
                Outcome::Failed | Outcome::Lent | Outcome::Lost => LinkState::Failed,
                // Only lend and reclaim plan moves, and they record what they moved.
                Outcome::Moved => return,
            };
            let reason = if result.outcome == Outcome::Intact && state == LinkState::Restored {
                record.and_then(|r| r.reason.clone())
            } else {
                result.reason.clone()
            };
            let (state, reason) = match flapping {
                Some(why) => (LinkState::Flapping, Some(why)),
                None => (state, reason),
            };
            let seen_in =
                inode.filter(|_| matches!(result.outcome, Outcome::Intact | Outcome::Restored));
            ledger.set_link_state_seen(key, state, reason, seen_in);
        }
        Target::Nic {
            identity,
            home_name,
        } => {
            let previous = ledger
                .nics()
                .iter()
                .find(|n| &n.identity == identity)
                .map(|n| (n.state, n.location.clone()));
            let live = world
                .host
                .nics()
                .find(|(_, id)| identity.matches(id))
                .map(|(l, _)| l);
            let at = |name: &str| {
                Some(NicLocation {
                    netns: host.clone(),
                    name: name.to_string(),
                    ifindex: live.map(|l| l.ifindex),
                })
            };
            if item.verdict == Verdict::Adopt {
                if let (Some(live), Some(location)) = (live, live.and_then(|l| at(&l.name))) {
                    ledger.adopt_nic(identity, location, live.up);
                }
                return;
            }
            if result.outcome == Outcome::Intact {
                if let Some(live) = live {
                    ledger.note_nic_up(identity, live.up);
                }
            }
            let (state, location) = match result.outcome {
                Outcome::Intact if previous.as_ref().is_some_and(|p| p.0 == NicState::Restored) => {
                    (NicState::Restored, at(home_name))
                }
                Outcome::Intact => (NicState::Home, at(home_name)),
                Outcome::Restored => (NicState::Restored, at(home_name)),
                Outcome::Conflict | Outcome::Waiting => {
                    (NicState::Conflict, live.and_then(|l| at(&l.name)))
                }
                Outcome::Failed => (NicState::Refunded, live.and_then(|l| at(&l.name))),
                Outcome::Lent => (NicState::Lent, previous.and_then(|p| p.1)),
                Outcome::Lost => (NicState::Lost, None),
                Outcome::Moved => return,
            };
            ledger.set_nic(identity, state, result.reason.clone(), location);
        }
    }
}
