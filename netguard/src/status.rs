//! What `netguard status` shows: the agent (if one runs) and one row per guarded NIC or link.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};
use crate::ledger::{Ledger, StatusRow};
use crate::restore::{Plan, Target};
use crate::trace::{BackendKind, Unavailable};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `None`: no agent is running; the rows come from the ledger on disk and the live kernel.
    pub agent: Option<AgentInfo>,
    pub rows: Vec<StatusEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub pid: u32,
    pub backend: BackendKind,
    pub unavailable: Vec<Unavailable>,
    pub started: DateTime<Utc>,
    pub passes: u64,
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    #[serde(flatten)]
    pub row: StatusRow,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
    /// Without an agent: what a restore pass would make of it now (from a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    pub time: DateTime<Utc>,
    pub what: String,
}

/// The last event seen per device, found by permanent MAC or by any name it carried.
#[derive(Debug, Default)]
pub struct LastEvents {
    by_key: HashMap<String, LastEvent>,
}

impl LastEvents {
    pub fn note(&mut self, event: &Event) {
        if matches!(
            event.kind,
            EventKind::TeardownBegin | EventKind::TeardownEnd
        ) {
            return;
        }
        let names = [&event.from, &event.to]
            .into_iter()
            .flatten()
            .filter_map(|p| p.name.clone());
        let what = describe(event);
        for key in event.perm_addr.iter().cloned().chain(names) {
            self.by_key.insert(
                key,
                LastEvent {
                    time: event.time,
                    what: what.clone(),
                },
            );
        }
    }

    fn for_row(&self, row: &StatusRow) -> Option<LastEvent> {
        let mut keys = row.mac.iter().chain(std::iter::once(&row.name));
        keys.find_map(|k| self.by_key.get(k)).cloned()
    }
}

/// `move eth0 -> dev3 (netns-teardown)`.
fn describe(event: &Event) -> String {
    let from = event.from.as_ref().and_then(|p| p.name.as_deref());
    let to = event.to.as_ref().and_then(|p| p.name.as_deref());
    let names = match (from, to) {
        (Some(a), Some(b)) if a != b => format!("{a} -> {b}"),
        (Some(a), _) | (None, Some(a)) => a.to_string(),
        (None, None) => String::new(),
    };
    format!("{} {names} ({})", event.kind.as_str(), event.cause.as_str())
}

/// Rows from the ledger, with the last events an agent saw.
pub fn rows(ledger: &Ledger, last: &LastEvents) -> Vec<StatusEntry> {
    ledger
        .status()
        .into_iter()
        .map(|row| StatusEntry {
            last_event: last.for_row(&row),
            row,
            live: None,
        })
        .collect()
}

/// Rows from the ledger, each with what a dry-run plan says of it now.
pub fn rows_with_plan(ledger: &Ledger, plan: &Plan) -> Vec<StatusEntry> {
    ledger
        .status()
        .into_iter()
        .map(|row| {
            let item = plan.items.iter().find(|item| match &item.target {
                Target::Nic { home_name, .. } => row.kind == "nic" && *home_name == row.name,
                Target::Link { key, .. } => {
                    row.kind != "nic" && key.name == row.name && key.netns.to_string() == row.netns
                }
            });
            let live = item.map(|i| match &i.reason {
                Some(reason) => format!("{} ({reason})", i.verdict),
                None => i.verdict.to_string(),
            });
            StatusEntry {
                row,
                last_event: None,
                live,
            }
        })
        .collect()
}
