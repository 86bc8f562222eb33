//! Carries out a [`Plan`] through rtnetlink (never `ip` subprocesses): items concurrently,
//! each item's actions in order; every action idempotent (already done = done) and verified by
//! reading the device back. A failure says what was tried, where, and what the kernel said.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use serde::Serialize;

use crate::inventory::{LiveLink, Pool};
use crate::model::{LinkKey, Locator};
use crate::restore::action::Action;
use crate::restore::plan::{Item, Plan, Target, Verdict};

/// One failed action: what was tried, on which netns and device, and what the kernel said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{tried} (netns {netns}, device {device}) failed: {kernel}")]
pub struct ActionError {
    pub tried: String,
    pub netns: String,
    pub device: String,
    pub kernel: String,
    /// Not the device the action is meant for: skipped, nothing changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
}

/// How one plan item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Intact,
    Restored,
    Waiting,
    Conflict,
    Failed,
    Lent,
    Lost,
    /// Moved as an operator asked (lend, reclaim), and verified.
    Moved,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemResult {
    pub target: Target,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Actions carried out and verified, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ActionError>,
}

impl ItemResult {
    fn unapplied(item: &Item, outcome: Outcome, reason: Option<String>) -> ItemResult {
        ItemResult {
            target: item.target.clone(),
            outcome,
            reason,
            applied: vec![],
            error: None,
        }
    }
}

/// Devices read back during one item, by netns and name: later actions of the same item start
/// from what the last read-back said instead of asking again.
type Seen = HashMap<(Locator, String), LiveLink>;

/// A link change being built.
type Builder = LinkMessageBuilder<LinkUnspec>;

/// Bridges looked up during one pass, shared by its items: ports join a bridge, the bridge
/// itself is not changed, so a thousand re-created ports ask for it once.
type Masters = std::sync::Mutex<HashMap<(Locator, String), LiveLink>>;

pub struct Executor {
    pool: Arc<Pool>,
    concurrency: usize,
    /// `agent --observe-only`: every change is logged as what would be done, none is made.
    /// Here, in the one place that changes the kernel, so no path (a pass, a hook's re-lend)
    /// can go around it.
    observe_only: bool,
}

/// Why an item was not carried out under `--observe-only`.
pub const OBSERVE_ONLY: &str = "observe-only: not done";

impl Executor {
    pub fn new(pool: Arc<Pool>, concurrency: usize) -> Executor {
        Executor {
            pool,
            concurrency: concurrency.max(1),
            observe_only: false,
        }
    }

    /// This executor only says what it would do.
    pub fn observing(self) -> Executor {
        Executor {
            observe_only: true,
            ..self
        }
    }

    /// Runs every item; an item with `after` runs once that item is done, and waits (does
    /// nothing) if it did not end intact or restored. Results are in plan order.
    pub async fn apply(&self, plan: &Plan) -> Vec<ItemResult> {
        let key_of = |item: &Item| match &item.target {
            Target::Link { key, .. } => Some(key.clone()),
            Target::Nic { .. } => None,
        };
        let mut results: Vec<Option<ItemResult>> = vec![None; plan.items.len()];
        let masters = Masters::default();
        let mut done: HashMap<LinkKey, (Outcome, Option<String>)> = HashMap::new();
        loop {
            let mut ready = Vec::new();
            for (i, item) in plan.items.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                match item.after.as_ref().map(|dep| done.get(dep)) {
                    None => ready.push(i),
                    Some(None) => {}
                    Some(Some((Outcome::Intact | Outcome::Restored, _))) => ready.push(i),
                    Some(Some((outcome, why))) => {
                        let dep = item
                            .after
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        let why = format!(
                            "waits for its parent {dep}, which is {outcome:?}: {}",
                            why.as_deref().unwrap_or("-")
                        );
                        results[i] = Some(ItemResult::unapplied(item, Outcome::Waiting, Some(why)));
                    }
                }
            }
            if ready.is_empty() {
                break;
            }
            let finished: Vec<(usize, ItemResult)> = futures::stream::iter(ready)
                .map(|i| {
                    let masters = &masters;
                    async move { (i, self.run_item(&plan.items[i], masters).await) }
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            for (i, result) in finished {
                if let Some(key) = key_of(&plan.items[i]) {
                    done.insert(key, (result.outcome, result.reason.clone()));
                }
                results[i] = Some(result);
            }
        }
        // Whatever is left waits on something that never ran (a cycle, or a dependency
        // outside the plan).
        results
            .into_iter()
            .zip(&plan.items)
            .map(|(r, item)| {
                r.unwrap_or_else(|| {
                    ItemResult::unapplied(
                        item,
                        Outcome::Waiting,
                        Some("waits for a parent that was not planned".into()),
                    )
                })
            })
            .collect()
    }

    async fn run_item(&self, item: &Item, masters: &Masters) -> ItemResult {
        let outcome = match item.verdict {
            Verdict::Intact | Verdict::Adopt => Outcome::Intact,
            Verdict::Waiting => Outcome::Waiting,
            Verdict::Conflict => Outcome::Conflict,
            Verdict::Lent => Outcome::Lent,
            Verdict::Lost => Outcome::Lost,
            Verdict::Repair => Outcome::Restored,
            Verdict::Move => Outcome::Moved,
        };
        let mut result = ItemResult::unapplied(item, outcome, item.reason.clone());
        if !matches!(item.verdict, Verdict::Repair | Verdict::Move) {
            return result;
        }
        if self.observe_only {
            let would: Vec<String> = item.actions.iter().map(ToString::to_string).collect();
            tracing::info!("{}: {OBSERVE_ONLY}: {}", item.target, would.join("; "));
            result.outcome = Outcome::Waiting;
            result.reason = Some(format!("{OBSERVE_ONLY}: {}", would.join("; ")));
            return result;
        }
        let mut seen = Seen::new();
        for action in &item.actions {
            match self.run(action, &mut seen, masters).await {
                Ok(()) => {
                    tracing::info!("{}: {action}", item.target);
                    result.applied.push(action.clone());
                    crate::fault::point("action");
                }
                Err(e) => {
                    tracing::warn!("{}: {e}", item.target);
                    result.outcome = if e.conflict {
                        Outcome::Conflict
                    } else {
                        Outcome::Failed
                    };
                    result.reason = Some(e.to_string());
                    result.error = Some(e);
                    break;
                }
            }
        }
        result
    }
}

mod readback;
mod run;
