//! What each restore pass changed, told once: a log line per restore, new conflict and
//! release (with the fields of `status --json`), and the metrics that count them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::SecondsFormat;

use crate::metrics::Metrics;
use crate::restore::{Outcome, PassReport, Target};
use crate::status::{is_row_of, StatusRow};

/// Ledger states whose arrival is logged (restores are logged from the pass's results, which
/// see every repair even when the state was already `restored`).
const TOLD_STATES: [(&str, &str); 2] = [("conflict", "conflict"), ("released", "release")];

/// The case a repair belongs to: the target's kind (`nic` for a renamed refunded NIC).
pub fn case_of(target: &Target) -> &'static str {
    match target {
        Target::Nic { .. } => "nic",
        Target::Link { kind, .. } => kind,
    }
}

/// Remembers the guarded things in a told state (conflict, released) after the last pass:
/// the only ones whose state's arrival is not news (a fleet's healthy thousands need no
/// entry).
pub struct Outcomes {
    metrics: Option<Arc<Metrics>>,
    states: HashMap<(String, String, String), String>,
    /// The (kind, state) series `netguard_guarded` has now.
    series: HashSet<(String, String)>,
}

fn key(row: &StatusRow) -> (String, String, String) {
    (row.kind.clone(), row.netns.clone(), row.name.clone())
}

impl Outcomes {
    /// `rows`: how things stand before the first pass (nothing in them is news).
    pub fn new(metrics: Option<Arc<Metrics>>, rows: &[StatusRow]) -> Outcomes {
        let mut outcomes = Outcomes {
            metrics,
            states: HashMap::new(),
            series: HashSet::new(),
        };
        outcomes.remember(rows);
        outcomes
    }

    /// After a pass: `rows` are the status rows after it, `triggered` when the event that
    /// woke the pass happened.
    pub fn after_pass(&mut self, report: &PassReport, rows: &[StatusRow], triggered: Instant) {
        // Looked up once per restore: a burst restores hundreds among thousands of rows.
        let mut by_link: HashMap<(&str, &str), &StatusRow> = HashMap::new();
        if report
            .results
            .iter()
            .any(|r| r.outcome == Outcome::Restored)
        {
            by_link = rows
                .iter()
                .filter(|row| row.kind != "nic")
                .map(|row| ((row.netns.as_str(), row.name.as_str()), row))
                .collect();
        }
        for item in &report.results {
            let case = case_of(&item.target);
            let outcome = match item.outcome {
                Outcome::Restored if !item.applied.is_empty() => "restored",
                Outcome::Failed => "failed",
                _ => continue,
            };
            let latency = triggered.elapsed().as_secs_f64();
            if let Some(m) = &self.metrics {
                m.restores.with_label_values(&[case, outcome]).inc();
                if outcome == "restored" {
                    m.restore_latency
                        .with_label_values(&[case])
                        .observe(latency);
                }
            }
            if outcome == "restored" {
                let row = match &item.target {
                    Target::Link { key, .. } => by_link
                        .get(&(key.netns.to_string().as_str(), key.name.as_str()))
                        .copied(),
                    Target::Nic { .. } => rows.iter().find(|row| is_row_of(&item.target, row)),
                };
                if let Some(row) = row {
                    tell("restore", row, Some(latency));
                }
            }
        }
        for row in rows {
            let Some((_, what)) = TOLD_STATES.iter().find(|(state, _)| *state == row.state) else {
                continue;
            };
            let before = self.states.get(&key(row)).map(String::as_str);
            if before == Some(row.state.as_str()) {
                continue;
            }
            if *what == "conflict" {
                if let Some(m) = &self.metrics {
                    m.conflicts.with_label_values(&[row.kind.as_str()]).inc();
                }
            }
            tell(what, row, None);
        }
        self.remember(rows);
    }

    fn remember(&mut self, rows: &[StatusRow]) {
        self.states = rows
            .iter()
            .filter(|r| TOLD_STATES.iter().any(|(state, _)| *state == r.state))
            .map(|r| (key(r), r.state.clone()))
            .collect();
        if let Some(m) = &self.metrics {
            let mut counts: HashMap<(String, String), i64> = HashMap::new();
            for row in rows {
                *counts
                    .entry((row.kind.clone(), row.state.clone()))
                    .or_default() += 1;
            }
            for ((kind, state), n) in &counts {
                m.guarded.with_label_values(&[kind, state]).set(*n);
            }
            // States that no longer occur go (an alert on `conflict` then clears); removed
            // one by one, after the others are set, so no scrape sees the family empty.
            for (kind, state) in self.series.difference(&counts.keys().cloned().collect()) {
                let _ = m.guarded.remove_label_values(&[kind, state]);
            }
            self.series = counts.into_keys().collect();
        }
    }
}

/// One line, with the fields `status --json` gives the row (same names, same formats), plus
/// the latency of a restore.
fn tell(what: &str, row: &StatusRow, latency_seconds: Option<f64>) {
    let since = row.since.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let level_warn = what == "conflict";
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                event = what,
                kind = row.kind.as_str(),
                name = row.name.as_str(),
                netns = row.netns.as_str(),
                now = row.now.as_deref(),
                mac = row.mac.as_deref(),
                state = row.state.as_str(),
                reason = row.reason.as_deref(),
                since = since.as_str(),
                latency_seconds,
                "{what}: {} {} in {}",
                row.kind,
                row.name,
                row.netns
            )
        };
    }
    if level_warn {
        line!(warn)
    } else {
        line!(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, state: &str) -> StatusRow {
        StatusRow {
            kind: "veth".into(),
            name: name.into(),
            netns: "/run/netns/c1".into(),
            now: None,
            mac: None,
            state: state.into(),
            reason: None,
            since: chrono::Utc::now(),
            workload: None,
            cannot_restore: Vec::new(),
            history: Vec::new(),
        }
    }

    fn empty_pass() -> PassReport {
        PassReport {
            results: vec![],
            pruned: vec![],
            took: std::time::Duration::ZERO,
            next_due: None,
        }
    }

    #[test]
    fn counts_states_and_new_conflicts_once_and_drops_states_gone() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mut outcomes = Outcomes::new(
            Some(metrics.clone()),
            &[row("eth0", "intact"), row("eth1", "intact")],
        );
        let conflicts = || metrics.conflicts.with_label_values(&["veth"]).get();
        let guarded = |state: &str| {
            metrics
                .encode()
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "netguard_guarded{{kind=\"veth\",state=\"{state}\"}}"
                    ))
                })
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
        };
        let now = Instant::now();
        let rows = [row("eth0", "intact"), row("eth1", "conflict")];
        outcomes.after_pass(&empty_pass(), &rows, now);
        outcomes.after_pass(&empty_pass(), &rows, now);
        assert_eq!(conflicts(), 1, "a conflict that stays is counted once");
        assert_eq!(guarded("conflict").as_deref(), Some("1"));
        assert_eq!(guarded("intact").as_deref(), Some("1"));
        outcomes.after_pass(
            &empty_pass(),
            &[row("eth0", "intact"), row("eth1", "intact")],
            now,
        );
        assert_eq!(guarded("conflict"), None);
        assert_eq!(guarded("intact").as_deref(), Some("2"));
    }
}
