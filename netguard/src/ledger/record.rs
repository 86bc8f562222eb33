//! What the ledger holds: guarded physical NICs (by hardware identity) and guarded virtual
//! links with everything needed to rebuild them, each with how it stands. Plain data,
//! serialised as-is into the ledger document and the journal.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Netns;
use crate::model::{
    kebab_display, DeviceIdentity, Incarnation, LinkKey, LinkSpec, Locator, NicIdentity, Workload,
};

/// Where a guarded NIC stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicState {
    /// In the host netns under its home name.
    Home,
    /// Moved into another netns (lent to a container).
    Lent,
    /// Back in the host netns under another name (the kernel's `devN`).
    Refunded,
    /// Not seen anywhere we can look.
    Lost,
    /// A rename home is under way.
    Restoring,
    /// Renamed home by netguard.
    Restored,
    /// Another device holds the home name: nothing renamed, retried later.
    Conflict,
}

/// How a guarded virtual link stands after the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// As recorded.
    Intact,
    /// Seen gone or broken; not yet repaired.
    Missing,
    /// Being repaired.
    Restoring,
    /// Repaired by netguard and verified.
    Restored,
    /// Cannot be repaired yet (netns or parent absent); retried later.
    Waiting,
    /// A device netguard does not own is in the way; nothing touched, retried later.
    Conflict,
    /// The kernel refused a repair step.
    Failed,
    /// Its container is stopped: nothing is created until its next start.
    Dormant,
    /// Lost again soon after each restore: repairs back off.
    Flapping,
    /// Deleted on purpose (an explicit delete of a workload's link while its netns and
    /// parent live): never re-created; shown until its workload ends.
    Released,
}

kebab_display!(NicState);
kebab_display!(LinkState);

/// Where a NIC is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicLocation {
    pub netns: Netns,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
}

/// A guarded physical NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRecord {
    pub identity: NicIdentity,
    /// Its name in the host netns, recorded when it leaves or at first sight.
    pub home_name: String,
    /// Admin state last seen at home, restored after a rename home; `None`: never seen at
    /// home (first seen leaving), so a NIC renamed home keeps the state the kernel gave it.
    /// (Older ledgers wrote a plain bool, which still reads.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<NicLocation>,
    pub state: NicState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
    /// Set while lent with `netguard lend`: where to, under which name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lent: Option<Lend>,
}

/// A NIC lent to a container netns by `netguard lend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lend {
    pub netns: Locator,
    pub name: String,
    /// Lend it again when the container's netns is re-created at the same locator.
    pub persistent: bool,
    /// Lent to this container (its full ID): lent again into its new netns at each start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// A container netguard knows from its OCI hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub runtime: String,
    pub id: String,
    pub bundle: std::path::PathBuf,
    /// Its netns while it runs; `None` once stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<Incarnation>,
    pub since: DateTime<Utc>,
}

impl NicRecord {
    /// A NIC guarded from now on: home if it carries its home name, else refunded.
    pub fn new(
        identity: NicIdentity,
        home_name: &str,
        up: Option<bool>,
        location: Option<NicLocation>,
    ) -> NicRecord {
        let state = match &location {
            Some(loc) if loc.name != home_name => NicState::Refunded,
            _ => NicState::Home,
        };
        NicRecord {
            identity,
            home_name: home_name.to_string(),
            up,
            location,
            state,
            reason: None,
            since: Utc::now(),
            lent: None,
        }
    }
}

/// A guarded link and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub spec: LinkSpec,
    pub state: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
    /// Who it belongs to; `None`: its netns path (`learn --netns`), as in ledgers written
    /// before workloads, which therefore load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// What was set up with it that netguard does not re-create (from the CNI config).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cannot_restore: Vec<String>,
    /// Earlier sandboxes of its pod (`K8S_POD_UID`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    /// The libcni cache file that records its attachment: gone while no agent ran, the
    /// attachment was deleted meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_cache_file: Option<PathBuf>,
}

/// Everything the ledger holds; `journal_seq` is the last journal entry folded in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerContent {
    #[serde(default)]
    pub journal_seq: u64,
    #[serde(default)]
    pub nics: Vec<NicRecord>,
    #[serde(default, with = "links_as_list")]
    pub links: BTreeMap<LinkKey, LinkRecord>,
    /// Devices netguard is giving a temporary name: on disk before they get it, so an agent
    /// killed mid-move finds them at start and puts them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flights: Vec<Flight>,
    /// Containers seen by the OCI hooks (absent from ledgers written before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerRecord>,
}

/// A device about to carry a temporary (`ngtmp*`) name: where, under which name, what it is,
/// and where it came from (name, netns, admin state) to be put back; `from: None` for one
/// netguard creates under that name (undone by removing it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flight {
    pub netns: Locator,
    pub name: String,
    pub identity: DeviceIdentity,
    pub from: Option<Origin>,
}

/// Where a device in flight was before it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub netns: Locator,
    pub name: String,
    pub up: bool,
}

/// Links are keyed in memory, listed on disk (JSON object keys must be strings).
mod links_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{LinkKey, LinkRecord};

    pub fn serialize<S: Serializer>(
        links: &BTreeMap<LinkKey, LinkRecord>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(links.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<LinkKey, LinkRecord>, D::Error> {
        let list = Vec::<LinkRecord>::deserialize(d)?;
        Ok(list.into_iter().map(|r| (r.spec.key(), r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_print_as_their_kebab_case_names() {
        assert_eq!(LinkState::Waiting.to_string(), "waiting");
        assert_eq!(NicState::Refunded.to_string(), "refunded");
    }

    #[test]
    fn a_nic_record_of_the_previous_layout_reads_its_admin_state() {
        let mut nic = super::super::testutil::sample_content().nics.remove(0);
        let mut old = serde_json::to_value(&nic).unwrap();
        old["up"] = serde_json::json!(false);
        let read: NicRecord = serde_json::from_value(old).unwrap();
        assert_eq!(read.up, Some(false));
        nic.up = None;
        let unknown = serde_json::to_value(&nic).unwrap();
        assert!(unknown.get("up").is_none());
        assert_eq!(
            serde_json::from_value::<NicRecord>(unknown).unwrap().up,
            None
        );
    }
}
