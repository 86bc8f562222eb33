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

    /// The links of the workload `pred` accepts wait while it is stopped: nothing is created
    /// for them.
    pub fn set_dormant_where(
        &mut self,
        pred: impl Fn(&Workload) -> bool,
        why: &str,
    ) -> Vec<LinkKey> {
        let keys = self.keys_of(pred);
        for key in &keys {
            self.set_link_state(key, LinkState::Dormant, Some(why.to_string()));
        }
        keys
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
            };
            tracing::info!("{key} of {workload} moves to {}", record.spec.key());
            moved.push(record.spec.key());
            self.put_link(record);
        }
        moved
    }
}
