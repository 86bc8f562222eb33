//! What is guarded and how it stands: looking records up, guarding, forgetting, and the
//! states the restorer and lend set. Every change goes through the journal.

use chrono::Utc;
use serde::Serialize;

use super::journal::JournalEntry;
use super::{
    Flight, Ledger, Lend, LinkKey, LinkRecord, LinkSpec, LinkState, Locator, Mac, NicIdentity,
    NicLocation, NicRecord, NicState,
};

impl Ledger {
    pub fn nics(&self) -> &[NicRecord] {
        &self.content.nics
    }

    /// The guarded NIC a live device (its identity as seen now) is.
    pub fn find_nic(&self, live: &NicIdentity) -> Option<&NicRecord> {
        self.content.nics.iter().find(|n| n.identity.matches(live))
    }

    pub fn links(&self) -> impl Iterator<Item = &LinkRecord> {
        self.content.links.values()
    }

    pub fn link(&self, netns: &Locator, name: &str) -> Option<&LinkRecord> {
        self.content.links.get(&LinkKey {
            netns: netns.clone(),
            name: name.to_string(),
        })
    }

    /// Guards a link from now on (replacing any earlier spec under the same netns + name).
    pub fn record_link(&mut self, spec: LinkSpec) {
        // A workload's link learned again stays that workload's, with what is known of it.
        let old = self.content.links.get(&spec.key());
        let record = LinkRecord {
            spec,
            state: LinkState::Intact,
            reason: None,
            since: Utc::now(),
            workload: old.and_then(|r| r.workload.clone()),
            cannot_restore: old.map(|r| r.cannot_restore.clone()).unwrap_or_default(),
            history: old.map(|r| r.history.clone()).unwrap_or_default(),
            cni_cache_file: old.and_then(|r| r.cni_cache_file.clone()),
        };
        if self.content.links.get(&record.spec.key()).map(|r| &r.spec) == Some(&record.spec) {
            return;
        }
        tracing::info!("guarding {} {}", record.spec.kind.name(), record.spec.key());
        self.put_link(record);
    }

    /// Stops guarding a link; `false` if it was not guarded.
    pub fn forget_link(&mut self, netns: &Locator, name: &str) -> bool {
        let key = LinkKey {
            netns: netns.clone(),
            name: name.to_string(),
        };
        if self.content.links.remove(&key).is_none() {
            return false;
        }
        tracing::info!("no longer guarding {key}");
        self.append(JournalEntry::ForgetLink { key });
        true
    }

    /// Sets how a guarded link stands (journalled only when it changes).
    pub fn set_link_state(&mut self, key: &LinkKey, state: LinkState, reason: Option<String>) {
        self.set_link_state_seen(key, state, reason, None);
    }

    /// Like [`set_link_state`](Self::set_link_state), also recording the netns inode the link
    /// was just seen in: one journal line for both.
    pub fn set_link_state_seen(
        &mut self,
        key: &LinkKey,
        state: LinkState,
        reason: Option<String>,
        netns_inode: Option<u64>,
    ) {
        let Some(record) = self.content.links.get(key) else {
            return;
        };
        let new_inode = netns_inode.filter(|inode| record.spec.netns_inode != Some(*inode));
        let new_state = record.state != state || record.reason != reason;
        if !new_state && new_inode.is_none() {
            return;
        }
        let mut record = record.clone();
        if new_state {
            record.state = state;
            record.reason = reason;
            record.since = Utc::now();
        }
        if new_inode.is_some() {
            record.spec.netns_inode = new_inode;
        }
        self.put_link(record);
    }

    /// Whether a NIC is excluded from guarding by name or MAC.
    pub fn is_excluded(&self, name: &str, macs: &[Option<Mac>]) -> bool {
        let ex = &self.options.exclude;
        ex.names.iter().any(|n| n == name) || macs.iter().flatten().any(|m| ex.macs.contains(m))
    }

    /// Guards a NIC explicitly (also how tests stand a veth in for a NIC), at home under
    /// `home_name`. Replaces any record with the same identity.
    pub fn guard_nic(
        &mut self,
        identity: NicIdentity,
        home_name: &str,
        up: Option<bool>,
        location: Option<NicLocation>,
    ) {
        tracing::info!("guarding NIC {identity} (home name {home_name})");
        self.put_nic(NicRecord::new(identity, home_name, up, location));
    }

    /// Whether a physical NIC seen live would be guarded on first sight: not known yet and
    /// not excluded.
    pub fn is_new_nic(&self, live: &NicIdentity, mac: Option<Mac>, name: &str) -> bool {
        self.find_nic(live).is_none() && !self.is_excluded(name, &[live.perm_mac, mac])
    }

    /// A physical NIC seen in the host netns (inventory or event): guarded from first sight
    /// unless excluded, its home name being the name it has now.
    pub fn see_host_nic(
        &mut self,
        live: &NicIdentity,
        mac: Option<Mac>,
        up: bool,
        location: NicLocation,
    ) {
        if self.is_new_nic(live, mac, &location.name) {
            let home = location.name.clone();
            self.guard_nic(live.clone(), &home, Some(up), Some(location));
        }
    }

    /// Stops guarding the NIC named `nic` (its home name or where it is now) or with that
    /// permanent MAC; the identity forgotten, or `None` if no guarded NIC answers to it.
    pub fn forget_nic(&mut self, nic: &str) -> Option<NicIdentity> {
        let mac = nic.parse::<Mac>().ok();
        let identity = self
            .content
            .nics
            .iter()
            .find(|n| match mac {
                Some(mac) => n.identity.perm_mac == Some(mac),
                None => n.home_name == nic || n.location.as_ref().is_some_and(|l| l.name == nic),
            })?
            .identity
            .clone();
        self.drop_nic(&identity, "forgotten at an operator's request");
        Some(identity)
    }

    /// Stops guarding every recorded NIC that the exclusions now name (by home name, name
    /// where it is, or permanent MAC): an excluded NIC is never touched.
    pub fn forget_excluded_nics(&mut self) {
        let excluded: Vec<NicIdentity> = self
            .content
            .nics
            .iter()
            .filter(|n| {
                let macs = [n.identity.perm_mac];
                self.is_excluded(&n.home_name, &macs)
                    || n.location
                        .as_ref()
                        .is_some_and(|l| self.is_excluded(&l.name, &macs))
            })
            .map(|n| n.identity.clone())
            .collect();
        for identity in &excluded {
            self.drop_nic(identity, "excluded");
        }
    }

    fn drop_nic(&mut self, identity: &NicIdentity, why: &str) {
        self.content.nics.retain(|n| &n.identity != identity);
        tracing::info!("no longer guarding NIC {identity}: {why}");
        self.append(JournalEntry::ForgetNic {
            identity: identity.clone(),
        });
    }

    /// A NIC found at home under a name netguard did not see it take, and that it did not
    /// see leave: someone renamed it (an admin, udev) while netguard was not looking. That
    /// name is its home name now; nothing in the kernel is changed.
    pub fn adopt_nic(&mut self, identity: &NicIdentity, location: NicLocation, up: bool) {
        self.update_nic(identity, |rec| {
            tracing::warn!(
                "NIC {identity} is at home as {} (was {}) and netguard did not see it leave: \
                 adopted {} as its home name, nothing changed",
                location.name,
                rec.home_name,
                location.name
            );
            rec.home_name = location.name.clone();
            rec.up = Some(up);
            rec.state = NicState::Home;
            rec.reason = None;
            rec.location = Some(location);
        });
    }

    /// Records the admin state of a NIC seen at home under its home name: what a rename home
    /// later restores.
    pub fn note_nic_up(&mut self, identity: &NicIdentity, up: bool) {
        self.update_nic(identity, |rec| rec.up = Some(up));
    }

    /// Sets where a guarded NIC is and how it stands (journalled only when it changes).
    pub fn set_nic(
        &mut self,
        identity: &NicIdentity,
        state: NicState,
        reason: Option<String>,
        location: Option<NicLocation>,
    ) {
        self.update_nic(identity, |rec| {
            rec.state = state;
            rec.reason = reason;
            rec.location = location;
        });
    }

    /// Says in `status` why a NIC is not where it should be (a hook's lend that failed).
    pub fn note_nic_reason(&mut self, identity: &NicIdentity, why: &str) {
        self.update_nic(identity, |rec| rec.reason = Some(why.to_string()));
    }

    /// Records (or, with `None`, clears) a lend of the NIC with `identity`.
    pub fn set_nic_lend(&mut self, identity: &NicIdentity, lend: Option<Lend>) {
        self.update_nic(identity, |rec| rec.lent = lend);
    }

    /// Applies `change` to the NIC recorded with `identity`; journals it if anything changed.
    pub(super) fn update_nic(
        &mut self,
        identity: &NicIdentity,
        change: impl FnOnce(&mut NicRecord),
    ) {
        let Some(current) = self.content.nics.iter().find(|n| &n.identity == identity) else {
            return;
        };
        let mut next = current.clone();
        change(&mut next);
        if &next == current {
            return;
        }
        if next.state != current.state {
            next.since = Utc::now();
        }
        self.put_nic(next);
    }

    /// Journals what a restore item did: its actions in order and how the last one went.
    pub fn note_actions(&mut self, target: &str, actions: &impl Serialize, outcome: &str) {
        match serde_json::to_value(actions) {
            Ok(actions) => self.append(JournalEntry::Actions {
                target: target.to_string(),
                actions,
                outcome: outcome.to_string(),
            }),
            Err(e) => tracing::error!("cannot journal the actions on {target}: {e}"),
        }
    }

    /// Records that these devices are about to get a temporary name. Durable once
    /// [`commit`](Self::commit)ted, which must come before any of them gets it: nothing would
    /// find them after a crash otherwise.
    pub fn take_off(&mut self, flights: impl IntoIterator<Item = Flight>) {
        for flight in flights {
            let entry = JournalEntry::TakeOff { flight };
            entry.apply(&mut self.content);
            self.append(entry);
        }
    }

    /// The device under temporary name `name` in `netns` has landed or was put back.
    pub fn landed(&mut self, netns: &Locator, name: &str) {
        if self
            .content
            .flights
            .iter()
            .any(|f| (&f.netns, f.name.as_str()) == (netns, name))
        {
            let entry = JournalEntry::Landed {
                netns: netns.clone(),
                name: name.to_string(),
            };
            entry.apply(&mut self.content);
            self.append(entry);
        }
    }
}
