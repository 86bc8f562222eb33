//! Links by the workload they belong to: bound at CNI ADD (or `learn`), released at CNI DEL
//! or GC, dormant while their container is stopped, moved to its new netns when it starts
//! again. A link whose record has no workload belongs to its netns path (`learn --netns`).

use chrono::Utc;

use super::journal::JournalEntry;
use super::{Ledger, LinkKey, LinkRecord, LinkState, Locator, Workload};

impl Ledger {
    /// Records with a workload `pred` accepts.
    fn keys_of(&self, pred: impl Fn(&Workload) -> bool) -> Vec<LinkKey> {
        self.content
            .links
            .iter()
            .filter(|(_, r)| r.workload.as_ref().is_some_and(&pred))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Binds the guarded link `key` to `workload` (no-op if not guarded or bound already).
    pub fn bind_link(&mut self, key: &LinkKey, workload: &Workload) {
        let Some(record) = self.content.links.get(key) else {
            return;
        };
        if record.workload.as_ref() == Some(workload) {
            return;
        }
        let mut record = record.clone();
        record.workload = Some(workload.clone());
        self.put_link(record);
    }

    /// Changes the record of `key` with `change`, journalled if it changed anything.
    pub fn update_link(&mut self, key: &LinkKey, change: impl FnOnce(&mut LinkRecord)) {
        let Some(record) = self.content.links.get(key) else {
            return;
        };
        let mut new = record.clone();
        change(&mut new);
        if &new != record {
            self.put_link(new);
        }
    }

    /// The guarded links bound to exactly `workload`.
    pub fn links_of(&self, workload: &Workload) -> Vec<LinkKey> {
        self.keys_of(|w| w == workload)
    }

    /// Releases (stops guarding, never re-creates) every link whose workload `pred` accepts;
    /// the keys released. A release is on purpose: nothing is restored afterwards.
    pub fn release_where(&mut self, pred: impl Fn(&Workload) -> bool, why: &str) -> Vec<LinkKey> {
        let keys = self.keys_of(pred);
        for key in &keys {
            if let Some(record) = self.content.links.remove(key) {
                let workload = record.workload.map(|w| w.to_string()).unwrap_or_default();
                tracing::info!("released {key} of {workload}: {why}");
                self.append(JournalEntry::ForgetLink { key: key.clone() });
            }
        }
        keys
    }

    /// Releases every link whose workload `pred` accepts but keeps it listed, as released
    /// (never re-created), until [`forget_released_before`](Self::forget_released_before).
    pub fn mark_released_where(
        &mut self,
        pred: impl Fn(&Workload) -> bool,
        why: &str,
    ) -> Vec<LinkKey> {
        tracing::info!("releasing: {why}");
        self.set_state_where(pred, LinkState::Released, why)
    }

    /// Sets the state of every link whose workload `pred` accepts, except one released on
    /// purpose, which stays released; the keys `pred` accepted.
    fn set_state_where(
        &mut self,
        pred: impl Fn(&Workload) -> bool,
        state: LinkState,
        why: &str,
    ) -> Vec<LinkKey> {
        let keys = self.keys_of(pred);
        for key in &keys {
            if self.content.links[key].state != LinkState::Released {
                self.set_link_state(key, state, Some(why.to_string()));
            }
        }
        keys
    }

    /// Forgets the pod attachments released before `cutoff`: a sandbox that long gone has
    /// no successor coming.
    pub fn forget_released_before(&mut self, cutoff: chrono::DateTime<Utc>) -> Vec<LinkKey> {
        let stale: Vec<LinkKey> = self
            .content
            .links
            .values()
            .filter(|r| {
                r.state == LinkState::Released
                    && r.since < cutoff
                    && matches!(
                        r.workload,
                        Some(Workload::CniAttachment {
                            pod_uid: Some(_),
                            ..
                        })
                    )
            })
            .map(|r| r.spec.key())
            .collect();
        for key in &stale {
            self.content.links.remove(key);
            self.append(JournalEntry::ForgetLink { key: key.clone() });
        }
        stale
    }

    /// Releases the links of containers whose bundle is gone (removed while stopped, which runs
    /// no hook), and forgets those containers.
    pub fn release_removed_containers(&mut self) -> Vec<LinkKey> {
        self.forget_removed_containers();
        self.release_where(
            |w| matches!(w, Workload::Container { bundle: Some(b), .. } if !b.exists()),
            "the container is removed (its bundle is gone)",
        )
    }

    /// The links of the workload `pred` accepts wait while it is stopped: nothing is created
    /// for them.
    pub fn set_dormant_where(
        &mut self,
        pred: impl Fn(&Workload) -> bool,
        why: &str,
    ) -> Vec<LinkKey> {
        self.set_state_where(pred, LinkState::Dormant, why)
    }

    /// Moves the links of the workload `pred` accepts to its new netns (a container started
    /// again): each is re-keyed there and marked missing, so the next restore pass creates it.
    /// The keys there.
    pub fn reincarnate_where(
        &mut self,
        pred: impl Fn(&Workload) -> bool,
        netns: &Locator,
        inode: u64,
    ) -> Vec<LinkKey> {
        let mut moved = Vec::new();
        for key in self.keys_of(pred) {
            let Some(old) = self.content.links.remove(&key) else {
                continue;
            };
            self.append(JournalEntry::ForgetLink { key: key.clone() });
            if old.state == LinkState::Released {
                tracing::info!("{key} was released on purpose: not re-created in {netns}");
                continue;
            }
            let mut spec = old.spec;
            spec.netns = netns.clone();
            spec.netns_inode = Some(inode);
            let workload = old
                .workload
                .as_ref()
                .map(|w| w.to_string())
                .unwrap_or_default();
            let record = LinkRecord {
                spec,
                state: LinkState::Missing,
                reason: Some(format!("{workload} started again in {netns}")),
                since: Utc::now(),
                workload: old.workload,
                cannot_restore: old.cannot_restore,
                history: old.history,
                cni_cache_file: old.cni_cache_file,
            };
            tracing::info!("{key} of {workload} moves to {}", record.spec.key());
            moved.push(record.spec.key());
            self.put_link(record);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{sample_content, TempDir};
    use super::super::{LedgerOptions, LinkSpec};
    use super::*;

    fn container(id: &str) -> Workload {
        Workload::Container {
            runtime: "podman".into(),
            id: id.into(),
            bundle: None,
        }
    }

    /// A ledger guarding the sample veth (eth0 in /run/netns/c1), bound to container `c1`.
    fn bound(dir: &TempDir) -> (Ledger, LinkKey, LinkSpec) {
        let (mut ledger, _) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
        let spec = sample_content()
            .links
            .into_values()
            .find(|l| l.spec.kind.name() == "veth")
            .unwrap()
            .spec;
        ledger.record_link(spec.clone());
        ledger.bind_link(&spec.key(), &container("c1"));
        (ledger, spec.key(), spec)
    }

    #[test]
    fn a_workloads_link_learned_again_stays_bound_and_survives_a_reopen() {
        let dir = TempDir::new("wl-bind");
        let (mut ledger, key, mut spec) = bound(&dir);
        spec.mtu = Some(1400);
        ledger.record_link(spec);
        ledger.save().unwrap();
        drop(ledger);
        let (ledger, _) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
        let record = ledger.content().links.get(&key).unwrap();
        assert_eq!(record.workload, Some(container("c1")));
        assert_eq!(record.spec.mtu, Some(1400));
    }

    #[test]
    fn release_forgets_only_the_workloads_links() {
        let dir = TempDir::new("wl-release");
        let (mut ledger, key, _) = bound(&dir);
        let before = ledger.content().links.len();
        assert!(ledger
            .release_where(|w| w == &container("other"), "test")
            .is_empty());
        assert_eq!(
            ledger.release_where(|w| w == &container("c1"), "test"),
            [key]
        );
        assert_eq!(ledger.content().links.len(), before - 1);
        // Unbound links (netns workloads) are never released by workload.
        assert!(ledger.release_where(|_| true, "test").is_empty());
    }

    #[test]
    fn a_restarted_container_s_links_move_to_its_new_netns_as_missing() {
        let dir = TempDir::new("wl-move");
        let (mut ledger, key, spec) = bound(&dir);
        let dormant = ledger.set_dormant_where(|w| w == &container("c1"), "stopped");
        assert_eq!(dormant, std::slice::from_ref(&key));
        assert_eq!(ledger.content().links[&key].state, LinkState::Dormant);
        let new = Locator::Path("/run/netns/c1-again".into());
        let moved = ledger.reincarnate_where(|w| w == &container("c1"), &new, 77);
        assert_eq!(moved.len(), 1);
        assert!(!ledger.content().links.contains_key(&key));
        let record = &ledger.content().links[&moved[0]];
        assert_eq!(
            (&record.spec.netns, record.spec.netns_inode, record.state),
            (&new, Some(77), LinkState::Missing)
        );
        assert_eq!(
            record.spec.kind, spec.kind,
            "the same link, in the new netns"
        );
        assert_eq!(record.workload, Some(container("c1")));
    }

    #[test]
    fn a_workloads_link_deleted_on_purpose_is_released_and_stays_so() {
        use crate::event::{Actor, Cause, Event, EventKind, Netns, Place};
        let dir = TempDir::new("wl-explicit");
        let (mut ledger, key, mut spec) = bound(&dir);
        spec.netns_inode = Some(77);
        ledger.record_link(spec.clone());
        let deleted = |cause, by: Option<Actor>| {
            let mut ev = Event::new(EventKind::Unregister, cause);
            ev.from = Some(Place {
                name: Some(spec.name.clone()),
                ifindex: Some(3),
                netns: Netns {
                    inode: 77,
                    names: vec![],
                },
            });
            ev.by = by;
            ev
        };
        // Lost with its parent: restored, not released.
        ledger.observe(&deleted(Cause::ParentGone, None), 1);
        assert_eq!(ledger.content().links[&key].state, LinkState::Missing);
        let ip = Actor {
            pid: 4242,
            tgid: 4242,
            comm: "ip".into(),
        };
        ledger.observe(&deleted(Cause::Explicit, Some(ip)), 1);
        let record = &ledger.content().links[&key];
        assert_eq!(
            (record.state, record.reason.as_deref()),
            (LinkState::Released, Some("deleted by ip[4242]"))
        );
        // Stopped and started again: still not re-created, and gone from the ledger.
        ledger.set_dormant_where(|w| w == &container("c1"), "stopped");
        assert_eq!(ledger.content().links[&key].state, LinkState::Released);
        let new = Locator::Path("/run/netns/c1-again".into());
        assert!(ledger
            .reincarnate_where(|w| w == &container("c1"), &new, 78)
            .is_empty());
        assert!(!ledger.content().links.contains_key(&key));
        // A link without a workload deleted the same way is lost, as ever (restored).
        let (mut plain, _) =
            Ledger::open(LedgerOptions::new(TempDir::new("wl-plain").path())).unwrap();
        plain.record_link(spec.clone());
        plain.observe(&deleted(Cause::Explicit, None), 1);
        assert_eq!(plain.content().links[&key].state, LinkState::Missing);
    }

    #[test]
    fn a_pods_released_attachment_is_listed_until_it_is_stale() {
        let dir = TempDir::new("wl-pod");
        let (mut ledger, key, _) = bound(&dir);
        let pod = Workload::CniAttachment {
            network: "n".into(),
            container_id: "sandbox1".into(),
            ifname: "eth0".into(),
            pod_uid: Some("7d1e".into()),
        };
        ledger.bind_link(&key, &pod);
        assert_eq!(
            ledger.mark_released_where(|w| w == &pod, "CNI DEL"),
            std::slice::from_ref(&key)
        );
        let record = &ledger.content().links[&key];
        assert_eq!(
            (record.state, record.reason.as_deref()),
            (LinkState::Released, Some("CNI DEL"))
        );
        let since = record.since;
        assert!(
            ledger.forget_released_before(since).is_empty(),
            "not stale yet"
        );
        let later = since + chrono::TimeDelta::seconds(1);
        assert_eq!(
            ledger.forget_released_before(later),
            std::slice::from_ref(&key)
        );
        assert!(!ledger.content().links.contains_key(&key));
    }
}
