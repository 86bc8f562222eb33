//! The reconciler's pass: one restore pass over the ledger (or, observe-only, one plan
//! logged).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::{Shared, RELEASED_PODS_KEPT};
use crate::control;
use crate::restore::{Outcome, Verdict};
use crate::status;

/// One pass (or, observe-only, one plan logged); when a held-back repair is due.
pub(super) async fn reconcile(shared: &Shared) -> Option<Duration> {
    let mut ledger = shared.ledger.lock().await;
    if shared.stopping.load(Ordering::SeqCst) {
        return None;
    }
    shared.fold_events(&mut ledger, shared.host_inode);
    // `podman rm` of a stopped container runs no hook: its bundle going is the sign.
    ledger.release_removed_containers();
    ledger.forget_released_before(Utc::now() - RELEASED_PODS_KEPT);
    if shared.observe_only {
        match shared.restorer.dry_run(&ledger).await {
            Ok(plan) => log_plan(shared, &plan),
            Err(e) => tracing::error!("planning: {e}"),
        }
        shared.info.lock().unwrap_or_else(|p| p.into_inner()).passes += 1;
        return None;
    }
    let mut next_due = None;
    let mut changed = false;
    let triggered = shared
        .woken_at
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(Instant::now);
    let started = Instant::now();
    match shared.restorer.pass(&mut ledger).await {
        Ok(report) => {
            next_due = report.next_due;
            if let Some(m) = &shared.metrics {
                m.pass_duration.observe(started.elapsed().as_secs_f64());
            }
            // Outcomes tell restores, failures and new states: none after a pass that
            // repaired nothing and left the ledger as the last one told.
            let mut told = shared.told_at.lock().unwrap_or_else(|p| p.into_inner());
            let news = report
                .results
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Restored | Outcome::Failed));
            if news || *told != Some(ledger.revision()) {
                shared
                    .outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .after_pass(
                        &report,
                        &status::ledger_rows(ledger.content()),
                        triggered.into_std(),
                    );
                *told = Some(ledger.revision());
            }
            drop(told);
            for item in report.broken() {
                tracing::warn!(
                    "{}: {:?}{}",
                    item.target,
                    item.outcome,
                    item.reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
            }
            for item in report.results.iter().filter(|r| !r.applied.is_empty()) {
                changed = true;
                tracing::info!("{}: {:?} in {:?}", item.target, item.outcome, report.took);
            }
        }
        Err(e) => tracing::error!("restore pass: {e}"),
    }
    for relent in control::lend::relend_persistent(&shared.restorer, &mut ledger).await {
        match relent {
            Ok(text) => tracing::info!("{text} again"),
            Err(e) => tracing::warn!("lending again: {e}"),
        }
    }
    // What the tracer saw during the pass: the next pass acts on it (it woke the reconciler).
    shared.fold_events(&mut ledger, shared.host_inode);
    shared.keep_rows(&ledger);
    if changed {
        crate::fault::point("before-save");
    }
    let saving = Instant::now();
    match ledger.save_when_due() {
        Ok(true) => {
            if let Some(m) = &shared.metrics {
                m.ledger_save_duration
                    .observe(saving.elapsed().as_secs_f64());
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!("{e}"),
    }
    shared.info.lock().unwrap_or_else(|p| p.into_inner()).passes += 1;
    tracing::debug!("the pass held the ledger for {:?}", started.elapsed());
    next_due
}

/// Observe-only: what a pass would do, logged when it differs from the last plan logged.
fn log_plan(shared: &Shared, plan: &crate::restore::Plan) {
    let todo: Vec<String> = plan
        .items
        .iter()
        .filter(|i| !matches!(i.verdict, Verdict::Intact | Verdict::Lent))
        .map(|i| {
            let mut text = format!("{}: would {}", i.target, i.verdict);
            if let Some(reason) = &i.reason {
                text += &format!(" ({reason})");
            }
            for action in &i.actions {
                text += &format!("; {action}");
            }
            text
        })
        .collect();
    let text = todo.join("\n");
    let mut last = shared.last_plan.lock().unwrap_or_else(|p| p.into_inner());
    if *last != text {
        for line in &todo {
            tracing::warn!("observe-only, nothing changed: {line}");
        }
        if todo.is_empty() {
            tracing::info!("observe-only: everything guarded is as recorded");
        }
        *last = text;
    }
}
