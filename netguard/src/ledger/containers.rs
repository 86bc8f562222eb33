//! Containers netguard knows from their OCI hooks: which runtime runs each, its bundle, and its
//! netns while it runs. `learn --container` and `lend --container` name one by a unique
//! prefix of its ID, as `podman ps` shows 12 digits of it.

use std::path::PathBuf;

use chrono::Utc;

use super::journal::JournalEntry;
use super::{ContainerRecord, Incarnation, Ledger, Workload};
use crate::runtime::oci_hook::{DEFAULT_HOOKS_DIR, GUARD_ANNOTATION};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    #[error("netguard knows no container {id}: it learns containers from its OCI hooks, which have not run for this one; install them with `netguard install oci-hooks` (writes netguard-*.json into {DEFAULT_HOOKS_DIR}, where podman and CRI-O look; --dir for another hooks dir), then start the container with the annotation {GUARD_ANNOTATION}=true (`podman run --annotation {GUARD_ANNOTATION}=true`; the hooks run only for containers that carry it, unless installed with --every-container)")]
    Unknown { id: String },
    #[error("{prefix} is the start of several containers' IDs ({candidates}): give more of it")]
    Ambiguous { prefix: String, candidates: String },
    #[error("container {id} is stopped, so it has no netns to act in: start it, then try again")]
    Stopped { id: String },
}

impl From<&ContainerRecord> for Workload {
    fn from(c: &ContainerRecord) -> Workload {
        Workload::Container {
            runtime: c.runtime.clone(),
            id: c.id.clone(),
            bundle: Some(c.bundle.clone()),
        }
    }
}

impl Ledger {
    pub fn containers(&self) -> &[ContainerRecord] {
        &self.content.containers
    }

    /// The container whose ID is `prefix` or starts with it, if exactly one does.
    pub fn container(&self, prefix: &str) -> Result<&ContainerRecord, ContainerError> {
        if let Some(exact) = self.content.containers.iter().find(|c| c.id == prefix) {
            return Ok(exact);
        }
        let found: Vec<&ContainerRecord> = self
            .content
            .containers
            .iter()
            .filter(|c| !prefix.is_empty() && c.id.starts_with(prefix))
            .collect();
        match found.as_slice() {
            [] => Err(ContainerError::Unknown { id: prefix.into() }),
            [one] => Ok(one),
            many => Err(ContainerError::Ambiguous {
                prefix: prefix.into(),
                candidates: many
                    .iter()
                    .map(|c| format!("{} {}", c.runtime, c.id))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The running container named by `prefix` and its netns.
    pub fn running_container(
        &self,
        prefix: &str,
    ) -> Result<(&ContainerRecord, &Incarnation), ContainerError> {
        let record = self.container(prefix)?;
        let incarnation = record
            .incarnation
            .as_ref()
            .ok_or_else(|| ContainerError::Stopped {
                id: record.id.clone(),
            })?;
        Ok((record, incarnation))
    }

    /// A container started (createRuntime) in `incarnation`.
    pub fn container_started(
        &mut self,
        runtime: &str,
        id: &str,
        bundle: PathBuf,
        incarnation: Incarnation,
    ) {
        self.put_container(ContainerRecord {
            runtime: runtime.into(),
            id: id.into(),
            bundle,
            incarnation: Some(incarnation),
            since: Utc::now(),
        });
    }

    /// A container stopped (poststop): known still, with no netns until its next start.
    pub fn container_stopped(&mut self, runtime: &str, id: &str, bundle: PathBuf) {
        self.put_container(ContainerRecord {
            runtime: runtime.into(),
            id: id.into(),
            bundle,
            incarnation: None,
            since: Utc::now(),
        });
    }

    /// A container removed: forgotten, and every NIC lent to it no longer follows it.
    pub fn forget_container(&mut self, id: &str) {
        if self.content.containers.iter().any(|c| c.id == id) {
            let entry = JournalEntry::ForgetContainer { id: id.into() };
            entry.apply(&mut self.content);
            self.append(entry);
        }
        let lent: Vec<_> = self
            .content
            .nics
            .iter()
            .filter(|n| n.lent.as_ref().and_then(|l| l.container.as_deref()) == Some(id))
            .map(|n| n.identity.clone())
            .collect();
        for identity in lent {
            self.set_nic_lend(&identity, None);
        }
    }

    /// Forgets the containers whose bundle is gone (removed while stopped, which runs no
    /// hook); their IDs.
    pub fn forget_removed_containers(&mut self) -> Vec<String> {
        let removed: Vec<String> = self
            .content
            .containers
            .iter()
            .filter(|c| !c.bundle.exists())
            .map(|c| c.id.clone())
            .collect();
        for id in &removed {
            tracing::info!("container {id} is removed (its bundle is gone): forgotten");
            self.forget_container(id);
        }
        removed
    }

    fn put_container(&mut self, record: ContainerRecord) {
        let entry = JournalEntry::PutContainer { container: record };
        entry.apply(&mut self.content);
        self.append(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{sample_content, TempDir};
    use super::super::{LedgerOptions, Lend, Locator};
    use super::*;

    const A: &str = "f2b837f649a1fe33dc2cab1ee590084fb8291ef2fc79f91fc01a9df57f9f0b9c";
    const B: &str = "f2b8aa0000000000000000000000000000000000000000000000000000000000";

    fn started(ledger: &mut Ledger, id: &str, bundle: PathBuf) {
        let incarnation = Incarnation {
            netns: "/proc/42/ns/net".into(),
            inode: 4026532000,
            since: Utc::now(),
        };
        ledger.container_started("podman", id, bundle, incarnation);
    }

    #[test]
    fn a_unique_prefix_names_a_container_an_ambiguous_one_lists_them() {
        let dir = TempDir::new("ct-prefix");
        let (mut ledger, _) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
        started(&mut ledger, A, dir.path().into());
        started(&mut ledger, B, dir.path().into());
        assert_eq!(ledger.container("f2b837").unwrap().id, A);
        assert_eq!(ledger.container(B).unwrap().id, B);
        let err = ledger.container("f2b8").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("f2b8 is the start of several containers' IDs (podman {A}, podman {B}): give more of it")
        );
        let err = ledger.container("0abc").unwrap_err().to_string();
        assert!(
            err.starts_with("netguard knows no container 0abc")
                && err.contains("`netguard install oci-hooks`")
                && err.contains(DEFAULT_HOOKS_DIR),
            "{err}"
        );
        assert!(matches!(
            ledger.container(""),
            Err(ContainerError::Unknown { .. })
        ));
    }

    #[test]
    fn a_stopped_container_has_no_netns_and_survives_a_reopen() {
        let dir = TempDir::new("ct-stop");
        let (mut ledger, _) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
        started(&mut ledger, A, dir.path().into());
        assert_eq!(
            ledger.running_container("f2b8").unwrap().1.inode,
            4026532000
        );
        ledger.container_stopped("podman", A, dir.path().into());
        // Journalled, not saved: the reopen replays it.
        ledger.commit().unwrap();
        drop(ledger);
        let (ledger, _) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
        assert_eq!(
            ledger.running_container("f2b8").unwrap_err(),
            ContainerError::Stopped { id: A.into() }
        );
    }

    #[test]
    fn a_removed_container_is_forgotten_with_its_lends() {
        let dir = TempDir::new("ct-removed");
        let (mut ledger, _) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
        let nic = sample_content().nics.remove(0);
        ledger.guard_nic(nic.identity.clone(), "eth2", Some(true), None);
        ledger.set_nic_lend(
            &nic.identity,
            Some(Lend {
                netns: Locator::Path("/proc/42/ns/net".into()),
                name: "eth0".into(),
                persistent: false,
                container: Some(A.into()),
            }),
        );
        started(&mut ledger, A, dir.path().join("gone"));
        started(&mut ledger, B, dir.path().into());
        assert_eq!(ledger.forget_removed_containers(), [A]);
        assert_eq!(ledger.containers().len(), 1);
        assert_eq!(ledger.nics()[0].lent, None);
        // A document without containers (written before them) reads as none.
        let mut doc = serde_json::to_value(ledger.content()).unwrap();
        doc.as_object_mut().unwrap().remove("containers");
        let read: super::super::LedgerContent = serde_json::from_value(doc).unwrap();
        assert!(read.containers.is_empty());
    }
}
