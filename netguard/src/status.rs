//! What `netguard status` shows: the agent (if one runs) and one row per guarded NIC or link.

use std::collections::HashMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};
use crate::ledger::{Ledger, LedgerContent, NicRecord, NicState};
use crate::model::{Locator, Workload};
use crate::restore::{Plan, Target};
use crate::runtime_failures::RuntimeFailure;
use crate::trace::{BackendKind, Unavailable};

/// One row of `netguard status`: a guarded NIC or link and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRow {
    /// `nic`, `veth`, `vlan`, `macvlan`.
    pub kind: String,
    /// Home name of a NIC, name of a link.
    pub name: String,
    /// Where it belongs: `host` or the netns locator.
    pub netns: String,
    /// For a NIC: where it is now (`name in netns`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
    /// Permanent MAC of a NIC, MAC of a link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
    /// Who a link belongs to (`None`: its netns path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// What netguard does not re-create for this link (tc qdiscs, sysctls, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cannot_restore: Vec<String>,
    /// Earlier sandboxes of its pod, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
}

/// The container a NIC is lent to by ID, and what that means for it now.
fn lent_to_container(content: &LedgerContent, nic: &NicRecord) -> Option<(Workload, String)> {
    let lend = nic.lent.as_ref()?;
    let id = lend.container.as_ref()?;
    let workload = match content.containers.iter().find(|c| &c.id == id) {
        Some(container) => Workload::from(container),
        None => Workload::Container {
            runtime: "oci".into(),
            id: id.clone(),
            bundle: None,
        },
    };
    let why = match nic.state {
        NicState::Lent => format!("lent to {workload} as {}", lend.name),
        _ => format!("lent to {workload} again at its next start"),
    };
    Some((workload, why))
}

/// One row per guarded NIC and link.
pub fn ledger_rows(content: &LedgerContent) -> Vec<StatusRow> {
    let nics = content.nics.iter().map(|n| {
        let container = lent_to_container(content, n);
        StatusRow {
            kind: "nic".to_string(),
            mac: n.identity.perm_mac.map(|m| m.to_string()),
            name: n.home_name.clone(),
            netns: Locator::Host.to_string(),
            now: n
                .location
                .as_ref()
                .map(|l| format!("{} in {}", l.name, l.netns)),
            state: n.state.to_string(),
            reason: n
                .reason
                .clone()
                .or_else(|| container.as_ref().map(|c| c.1.clone())),
            since: n.since,
            workload: container.map(|c| c.0),
            cannot_restore: Vec::new(),
            history: Vec::new(),
        }
    });
    let links = content.links.values().map(|l| StatusRow {
        kind: l.spec.kind.name().to_string(),
        mac: l.spec.mac.map(|m| m.to_string()),
        name: l.spec.name.clone(),
        netns: l.spec.netns.to_string(),
        now: None,
        state: l.state.to_string(),
        reason: l.reason.clone(),
        since: l.since,
        workload: l.workload.clone(),
        cannot_restore: l.cannot_restore.clone(),
        history: l.history.clone(),
    });
    nics.chain(links).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `None`: no agent is running; the rows come from the ledger on disk and the live kernel.
    pub agent: Option<AgentInfo>,
    pub rows: Vec<StatusEntry>,
    /// The latest runtime calls that went wrong outside the ledger (read from the state
    /// directory by `netguard status`, not sent by the agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtime_failures: Vec<RuntimeFailure>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub pid: u32,
    pub backend: BackendKind,
    pub unavailable: Vec<Unavailable>,
    pub started: DateTime<Utc>,
    pub passes: u64,
    pub events: u64,
    /// Where it keeps its ledger (absolute), so that a command can tell it is the agent it
    /// means; absent from agents older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Its `--host-netns` (`None`: init_net) and that netns's inode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_netns: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_netns_inode: Option<u64>,
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

/// The last event seen per device, found by permanent MAC or by a name it carried in a netns:
/// every container has its `eth0`, so a name alone would show one container another's event.
#[derive(Debug)]
pub struct LastEvents {
    /// How the resolver names the host netns (`init_net`, or the stand-in's path).
    host: String,
    by_key: HashMap<String, LastEvent>,
}

impl LastEvents {
    pub fn new(host: String) -> LastEvents {
        LastEvents {
            host,
            by_key: HashMap::new(),
        }
    }

    pub fn note(&mut self, event: &Event) {
        if matches!(
            event.kind,
            EventKind::TeardownBegin | EventKind::TeardownEnd
        ) {
            return;
        }
        let last = LastEvent {
            time: event.time,
            what: describe(event),
        };
        let mut keys: Vec<String> = event.perm_addr.iter().cloned().collect();
        for place in [&event.from, &event.to].into_iter().flatten() {
            let Some(name) = &place.name else { continue };
            for netns in &place.netns.names {
                keys.push(self.name_key(netns, name));
            }
        }
        for key in keys {
            self.by_key.insert(key, last.clone());
        }
    }

    fn for_row(&self, row: &StatusRow) -> Option<LastEvent> {
        let by_name = format!("{} {}", row.netns, row.name);
        let mut keys = row.mac.iter().chain(std::iter::once(&by_name));
        keys.find_map(|k| self.by_key.get(k)).cloned()
    }

    /// Rows name the host netns `host` (see `Locator`); events by the resolver's names.
    fn name_key(&self, netns: &str, name: &str) -> String {
        let netns = if netns == self.host { "host" } else { netns };
        format!("{netns} {name}")
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

/// Ledger rows, each with the last event an agent saw about it.
pub fn with_last_events(rows: Vec<StatusRow>, last: &LastEvents) -> Vec<StatusEntry> {
    rows.into_iter()
        .map(|row| StatusEntry {
            last_event: last.for_row(&row),
            row,
            live: None,
        })
        .collect()
}

/// Whether `row` is the status row of a restore target.
pub fn is_row_of(target: &Target, row: &StatusRow) -> bool {
    match target {
        Target::Nic { home_name, .. } => row.kind == "nic" && *home_name == row.name,
        Target::Link { key, .. } => {
            row.kind != "nic" && key.name == row.name && key.netns.to_string() == row.netns
        }
    }
}

/// Rows from the ledger, each with what a dry-run plan says of it now.
pub fn rows_with_plan(ledger: &Ledger, plan: &Plan) -> Vec<StatusEntry> {
    ledger_rows(ledger.content())
        .into_iter()
        .map(|row| {
            let item = plan.items.iter().find(|item| is_row_of(&item.target, &row));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Cause, Netns, Place};

    fn rename_in(netns: &str, from: &str, to: &str) -> Event {
        let place = |name: &str| Place {
            name: Some(name.into()),
            ifindex: Some(2),
            netns: Netns {
                inode: 1,
                names: vec![netns.into()],
            },
        };
        Event {
            from: Some(place(from)),
            to: Some(place(to)),
            ..Event::new(EventKind::Rename, Cause::Explicit)
        }
    }

    fn row(netns: &str, name: &str) -> StatusRow {
        StatusRow {
            kind: "veth".into(),
            name: name.into(),
            netns: netns.into(),
            now: None,
            mac: None,
            state: "intact".into(),
            reason: None,
            since: Utc::now(),
            workload: None,
            cannot_restore: Vec::new(),
            history: Vec::new(),
        }
    }

    #[test]
    fn each_container_eth0_gets_its_own_last_event() {
        let mut last = LastEvents::new("init_net".into());
        last.note(&rename_in("/run/netns/a", "tmp0", "eth0"));
        last.note(&rename_in("/run/netns/b", "eth9", "eth0"));
        last.note(&rename_in("init_net", "dev3", "eth1"));
        let what = |r: &StatusRow| last.for_row(r).map(|e| e.what);
        assert_eq!(
            what(&row("/run/netns/a", "eth0")).unwrap(),
            "rename tmp0 -> eth0 (explicit)"
        );
        assert_eq!(
            what(&row("/run/netns/b", "eth0")).unwrap(),
            "rename eth9 -> eth0 (explicit)"
        );
        assert_eq!(
            what(&row("host", "eth1")).unwrap(),
            "rename dev3 -> eth1 (explicit)"
        );
        assert_eq!(what(&row("/run/netns/c", "eth0")), None);
    }

    #[test]
    fn a_nic_lent_by_container_id_names_the_container() {
        let mut content = crate::ledger::testutil::sample_content();
        let id = "d0c4e2f1a7b3d0c4e2f1a7b3d0c4e2f1a7b3d0c4e2f1a7b3d0c4e2f1a7b3d0c4";
        content.nics[0].lent = Some(crate::ledger::Lend {
            netns: Locator::Path("/proc/191/ns/net".into()),
            name: "eth0".into(),
            persistent: false,
            container: Some(id.into()),
        });
        content.containers.push(crate::ledger::ContainerRecord {
            runtime: "podman".into(),
            id: id.into(),
            bundle: "/b".into(),
            incarnation: None,
            since: Utc::now(),
        });
        content.nics[0].state = NicState::Lent;
        let row = &ledger_rows(&content)[0];
        assert_eq!(
            row.reason.as_deref(),
            Some("lent to podman container d0c4e2f1a7b3 as eth0")
        );
        assert!(matches!(&row.workload, Some(Workload::Container { id: i, .. }) if i == id));
        content.nics[0].state = NicState::Restored;
        assert_eq!(
            ledger_rows(&content)[0].reason.as_deref(),
            Some("lent to podman container d0c4e2f1a7b3 again at its next start")
        );
    }

    #[test]
    fn status_has_a_row_per_guarded_thing() {
        let content = crate::ledger::testutil::sample_content();
        let rows = ledger_rows(&content);
        assert_eq!(rows.len(), content.nics.len() + content.links.len());
        assert_eq!(
            (rows[0].kind.as_str(), rows[0].netns.as_str()),
            ("nic", "host")
        );
        let json = serde_json::to_string(&rows).unwrap();
        assert!(json.contains(r#""state":"intact""#), "{json}");
    }
}
