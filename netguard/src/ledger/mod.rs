//! What netguard remembers, on disk: guarded physical NICs (identity, home name, where they
//! are, state) and guarded virtual links (full specs to rebuild them).
//!
//! One JSON document (`state.json`, atomic writes, checksummed) plus an append-only journal
//! (`journal.jsonl`, rotated by size). Every change goes to the journal at once; the document is
//! written by [`Ledger::save`], once per pass, not per change. A document that reads fine but
//! is damaged is moved aside untouched and the ledger is rebuilt from the journal; one that
//! cannot be read (an I/O error) stops the open, and stays where it is.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::Serialize;

use crate::event::{Event, EventKind, Place};

pub mod journal;
pub mod learn;
pub mod model;
pub mod store;
#[cfg(test)]
pub(crate) mod testutil;

use journal::{Journal, JournalEntry};
pub use model::*;

/// Where the ledger lives unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/netguard";
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot {action} {path}: {source} (check the ledger directory exists, is writable by root, and the disk is not full)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the ledger document {path}: {source}; it was left where it is (only a document that reads fine and fails its checksum or layout is moved aside): fix the disk or the path, then start again")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path}: sequence number {seq} leaves no room for another entry (a damaged or hand-edited line); move the journal files away to start from the document")]
    SeqExhausted { path: PathBuf, seq: u64 },
    #[error("cannot encode ledger data for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {problem}; netguard will not overwrite it: upgrade netguard, or move the file away to start from the journal")]
    Newer {
        path: PathBuf,
        problem: store::DocProblem,
    },
}

/// Physical NICs never guarded, by name or MAC.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    pub names: Vec<String>,
    pub macs: Vec<Mac>,
}

#[derive(Debug, Clone)]
pub struct LedgerOptions {
    pub dir: PathBuf,
    /// Rotate the journal past this size.
    pub journal_max_bytes: u64,
    /// Rotated journal files kept.
    pub journal_keep: usize,
    pub exclude: Exclusions,
}

impl LedgerOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LedgerOptions {
            dir: dir.into(),
            journal_max_bytes: 8 << 20,
            journal_keep: 4,
            exclude: Exclusions::default(),
        }
    }
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions::new(DEFAULT_DIR)
    }
}

/// How [`Ledger::open`] found things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No document and no journal: an empty ledger.
    Fresh,
    /// The document, plus `replayed` newer journal changes.
    Loaded { replayed: usize },
    /// The document was unusable: moved aside, ledger rebuilt from the journal.
    Rebuilt {
        file: PathBuf,
        problem: String,
        moved_to: Option<PathBuf>,
        replayed: usize,
    },
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Fresh => f.write_str("new empty ledger"),
            Opened::Loaded { replayed } => write!(
                f,
                "ledger loaded ({replayed} newer journal changes replayed)"
            ),
            Opened::Rebuilt {
                file,
                problem,
                moved_to,
                replayed,
            } => {
                write!(
                    f,
                    "ledger document {} is unusable ({problem}); ",
                    file.display()
                )?;
                if let Some(to) = moved_to {
                    write!(f, "kept aside untouched as {}; ", to.display())?;
                }
                write!(
                    f,
                    "ledger rebuilt from the journal ({replayed} changes); the next pass re-learns the rest from the live kernel"
                )
            }
        }
    }
}

/// One row of `netguard status`: a guarded NIC or link and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    pub since: chrono::DateTime<Utc>,
}

pub struct Ledger {
    options: LedgerOptions,
    content: LedgerContent,
    journal: Journal,
    dirty: bool,
}

impl Ledger {
    /// Opens the ledger in `options.dir` (created if needed): the document, brought forward
    /// with newer journal entries; or, when the document is unusable, moved aside and rebuilt
    /// from the journal. Only a document from a newer netguard stops it.
    pub fn open(options: LedgerOptions) -> Result<(Ledger, Opened), LedgerError> {
        std::fs::create_dir_all(&options.dir).map_err(|source| LedgerError::Io {
            action: "create",
            path: options.dir.clone(),
            source,
        })?;
        let path = options.dir.join(STATE_FILE);
        let loaded = store::load(&path)?;
        // A usable document already holds everything up to its `journal_seq`.
        let after = match &loaded {
            store::Loaded::Good(content) => content.journal_seq,
            _ => 0,
        };
        let replay = journal::read_since(&options.dir, after)?;
        let (mut content, opened) = match loaded {
            store::Loaded::Good(content) => (content, Opened::Loaded { replayed: 0 }),
            store::Loaded::Absent if replay.lines.is_empty() => {
                (LedgerContent::default(), Opened::Fresh)
            }
            store::Loaded::Absent => (
                LedgerContent::default(),
                Opened::Rebuilt {
                    file: path.clone(),
                    problem: "it does not exist".into(),
                    moved_to: None,
                    replayed: 0,
                },
            ),
            store::Loaded::Corrupt(problem) => {
                let moved_to = Some(store::move_aside(&path)?);
                let problem = problem.to_string();
                (
                    LedgerContent::default(),
                    Opened::Rebuilt {
                        file: path.clone(),
                        problem,
                        moved_to,
                        replayed: 0,
                    },
                )
            }
        };
        let replayed = journal::replay_into(&mut content, &replay.lines);
        let last_seq = replay.last_seq.max(content.journal_seq);
        let journal = Journal::open(
            &options.dir,
            options.journal_max_bytes,
            options.journal_keep,
            last_seq,
        )?;
        let opened = match opened {
            Opened::Loaded { .. } => Opened::Loaded { replayed },
            Opened::Rebuilt {
                file,
                problem,
                moved_to,
                ..
            } => Opened::Rebuilt {
                file,
                problem,
                moved_to,
                replayed,
            },
            Opened::Fresh => Opened::Fresh,
        };
        let mut ledger = Ledger {
            dirty: replayed > 0,
            options,
            content,
            journal,
        };
        match &opened {
            Opened::Rebuilt { .. } => {
                tracing::warn!("{opened}");
                ledger.append(JournalEntry::Note {
                    message: opened.to_string(),
                });
                ledger.save()?;
            }
            _ => tracing::info!("{}: {opened}", path.display()),
        }
        Ok((ledger, opened))
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Writes the document if anything changed since the last save; `Ok(true)` if written.
    pub fn save(&mut self) -> Result<bool, LedgerError> {
        if !self.dirty {
            return Ok(false);
        }
        self.journal.sync()?;
        self.content.journal_seq = self.journal.last_seq();
        let path = self.options.dir.join(STATE_FILE);
        let bytes = store::encode(&self.content).map_err(|source| LedgerError::Encode {
            path: path.clone(),
            source,
        })?;
        store::write_atomic(&path, &bytes)?;
        self.dirty = false;
        Ok(true)
    }

    pub fn content(&self) -> &LedgerContent {
        &self.content
    }

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
        let record = LinkRecord {
            spec,
            state: LinkState::Intact,
            reason: None,
            since: Utc::now(),
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
        up: bool,
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
            self.guard_nic(live.clone(), &home, up, Some(location));
        }
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

    /// Records (or, with `None`, clears) a lend of the NIC with `identity`.
    pub fn set_nic_lend(&mut self, identity: &NicIdentity, lend: Option<Lend>) {
        self.update_nic(identity, |rec| rec.lent = lend);
    }

    /// Applies `change` to the NIC recorded with `identity`; journals it if anything changed.
    fn update_nic(&mut self, identity: &NicIdentity, change: impl FnOnce(&mut NicRecord)) {
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

    /// Folds a kernel event into what we remember; `true` if it concerned a guarded device
    /// (and was journalled). `host_inode` is the host netns (init_net or its stand-in).
    pub fn observe(&mut self, event: &Event, host_inode: u64) -> bool {
        let changed = self.observe_nic(event, host_inode) | self.observe_link(event, host_inode);
        if changed {
            self.append(JournalEntry::Event {
                event: event.clone(),
            });
        }
        changed
    }

    fn observe_nic(&mut self, event: &Event, host_inode: u64) -> bool {
        let at_host = |p: &Option<Place>| p.as_ref().is_some_and(|p| p.netns.inode == host_inode);
        let location = |p: &Place| {
            p.name.clone().map(|name| NicLocation {
                netns: p.netns.clone(),
                name,
                ifindex: p.ifindex,
            })
        };
        let perm_mac = event
            .perm_addr
            .as_deref()
            .and_then(|m| m.parse::<Mac>().ok());
        let known = self
            .nic_for_event(event, perm_mac)
            .map(|n| n.identity.clone());
        let physical = event.link_kind.is_none() && perm_mac.is_some();

        match (event.kind, known) {
            (EventKind::Move, Some(identity)) => {
                let to = event.to.as_ref().and_then(location);
                let leaving_home = at_host(&event.from) && !at_host(&event.to);
                self.update_nic(&identity, |rec| {
                    if leaving_home && rec.state == NicState::Home {
                        if let Some(name) = event.from.as_ref().and_then(|p| p.name.clone()) {
                            rec.home_name = name;
                        }
                    }
                    rec.state = match &to {
                        Some(loc) if at_host(&event.to) && loc.name == rec.home_name => {
                            NicState::Home
                        }
                        Some(_) if at_host(&event.to) => NicState::Refunded,
                        _ => NicState::Lent,
                    };
                    rec.reason = None;
                    rec.location = to.clone();
                });
                true
            }
            (EventKind::Move, None) if physical && at_host(&event.from) => {
                // First sight of a NIC as it leaves home: home is where it came from.
                let (Some(from), Some(id)) = (event.from.as_ref().and_then(location), perm_mac)
                else {
                    return false;
                };
                if self.is_excluded(&from.name, &[Some(id)]) {
                    return false;
                }
                let identity = NicIdentity {
                    perm_mac: Some(id),
                    bus: None,
                    driver: None,
                };
                let home = from.name.clone();
                self.guard_nic(identity.clone(), &home, true, Some(from));
                self.set_nic(
                    &identity,
                    NicState::Lent,
                    None,
                    event.to.as_ref().and_then(location),
                );
                true
            }
            (EventKind::Rename, Some(identity)) => {
                let Some(to) = event.to.as_ref().and_then(location) else {
                    return false;
                };
                let in_host = at_host(&event.to);
                let from_name = event.from.as_ref().and_then(|p| p.name.clone());
                self.update_nic(&identity, |rec| {
                    if in_host
                        && rec.state == NicState::Home
                        && from_name.as_deref() == Some(rec.home_name.as_str())
                    {
                        // An admin renamed it at home: that is its home name now.
                        rec.home_name = to.name.clone();
                    } else if in_host {
                        // Our own rename home (the pass may have recorded it before this
                        // event, or before the refund that preceded it, was read).
                        let by_us = event
                            .by
                            .as_ref()
                            .is_some_and(|a| a.tgid == std::process::id());
                        rec.state = match rec.state {
                            _ if to.name != rec.home_name => NicState::Refunded,
                            NicState::Restored => NicState::Restored,
                            _ if by_us => NicState::Restored,
                            _ => NicState::Home,
                        };
                    }
                    rec.location = Some(to.clone());
                });
                true
            }
            (EventKind::Register, Some(identity)) => {
                let Some(to) = event.to.as_ref().and_then(location) else {
                    return false;
                };
                let state = match at_host(&event.to) {
                    true if self.nic_home_name(&identity) == Some(to.name.as_str()) => {
                        NicState::Home
                    }
                    true => NicState::Refunded,
                    false => NicState::Lent,
                };
                self.set_nic(&identity, state, None, Some(to));
                true
            }
            (EventKind::Register, None) if physical && at_host(&event.to) => {
                let (Some(to), Some(id)) = (event.to.as_ref().and_then(location), perm_mac) else {
                    return false;
                };
                let identity = NicIdentity {
                    perm_mac: Some(id),
                    bus: None,
                    driver: None,
                };
                let new = self.is_new_nic(&identity, None, &to.name);
                self.see_host_nic(&identity, None, false, to);
                new
            }
            (EventKind::Unregister, Some(identity)) => {
                let reason =
                    Some("device unregistered (driver unloaded or device removed)".to_string());
                self.set_nic(&identity, NicState::Lost, reason, None);
                true
            }
            _ => false,
        }
    }

    fn nic_home_name(&self, identity: &NicIdentity) -> Option<&str> {
        self.content
            .nics
            .iter()
            .find(|n| &n.identity == identity)
            .map(|n| n.home_name.as_str())
    }

    /// The guarded NIC an event is about: by permanent MAC, else by where it was last seen.
    fn nic_for_event(&self, event: &Event, perm_mac: Option<Mac>) -> Option<&NicRecord> {
        if let Some(mac) = perm_mac {
            return self
                .content
                .nics
                .iter()
                .find(|n| n.identity.perm_mac == Some(mac));
        }
        let place = event.from.as_ref().or(event.to.as_ref())?;
        self.content.nics.iter().find(|n| {
            n.location.as_ref().is_some_and(|loc| {
                loc.netns.inode == place.netns.inode
                    && match (loc.ifindex, place.ifindex) {
                        (Some(a), Some(b)) => a == b,
                        _ => place.name.as_deref() == Some(loc.name.as_str()),
                    }
            })
        })
    }

    /// Guarded links that an event names: a rename follows the device; an unregister or a
    /// netns teardown marks them missing for the next pass to repair.
    fn observe_link(&mut self, event: &Event, host_inode: u64) -> bool {
        let in_netns = |spec: &LinkSpec, inode: u64| match spec.netns {
            Locator::Host => inode == host_inode,
            Locator::Path(_) => spec.netns_inode == Some(inode),
        };
        let matching = |place: &Option<Place>| -> Vec<LinkKey> {
            let Some(place) = place else { return vec![] };
            self.content
                .links
                .values()
                .filter(|r| {
                    in_netns(&r.spec, place.netns.inode)
                        && place.name.as_deref() == Some(r.spec.name.as_str())
                })
                .map(|r| r.spec.key())
                .collect()
        };
        match event.kind {
            EventKind::Rename => {
                let Some(new_name) = event.to.as_ref().and_then(|p| p.name.clone()) else {
                    return false;
                };
                let keys = matching(&event.from);
                for key in &keys {
                    if let Some(mut record) = self.content.links.remove(key) {
                        tracing::info!("guarded link {key} renamed to {new_name}; following it");
                        self.append(JournalEntry::ForgetLink { key: key.clone() });
                        record.spec.name = new_name.clone();
                        self.put_link(record);
                    }
                }
                !keys.is_empty()
            }
            EventKind::Unregister | EventKind::Move => {
                let keys = matching(&event.from);
                for key in &keys {
                    let why = if event.kind == EventKind::Move {
                        "moved out of its netns"
                    } else {
                        "unregistered"
                    };
                    self.set_link_state(key, LinkState::Missing, Some(why.to_string()));
                }
                !keys.is_empty()
            }
            EventKind::TeardownBegin => {
                let Some(from) = &event.from else {
                    return false;
                };
                let keys: Vec<LinkKey> = self
                    .content
                    .links
                    .values()
                    .filter(|r| in_netns(&r.spec, from.netns.inode))
                    .map(|r| r.spec.key())
                    .collect();
                for key in &keys {
                    self.set_link_state(
                        key,
                        LinkState::Missing,
                        Some(format!("netns {} torn down", from.netns)),
                    );
                }
                !keys.is_empty()
            }
            _ => false,
        }
    }

    /// Journals a restore action and its outcome.
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

    /// One row per guarded NIC and link.
    pub fn status(&self) -> Vec<StatusRow> {
        let nics = self.content.nics.iter().map(|n| StatusRow {
            kind: "nic".to_string(),
            mac: n.identity.perm_mac.map(|m| m.to_string()),
            name: n.home_name.clone(),
            netns: Locator::Host.to_string(),
            now: n
                .location
                .as_ref()
                .map(|l| format!("{} in {}", l.name, l.netns)),
            state: n.state.to_string(),
            reason: n.reason.clone(),
            since: n.since,
        });
        let links = self.content.links.values().map(|l| StatusRow {
            kind: l.spec.kind.name().to_string(),
            mac: l.spec.mac.map(|m| m.to_string()),
            name: l.spec.name.clone(),
            netns: l.spec.netns.to_string(),
            now: None,
            state: l.state.to_string(),
            reason: l.reason.clone(),
            since: l.since,
        });
        nics.chain(links).collect()
    }

    fn put_nic(&mut self, record: NicRecord) {
        let entry = JournalEntry::PutNic { nic: record };
        entry.apply(&mut self.content);
        self.append(entry);
    }

    fn put_link(&mut self, record: LinkRecord) {
        let entry = JournalEntry::PutLink { link: record };
        entry.apply(&mut self.content);
        self.append(entry);
    }

    /// Journals one entry. A journal that cannot be written is logged, not fatal: the
    /// in-memory ledger has the change and the next [`save`](Self::save) makes it durable.
    fn append(&mut self, entry: JournalEntry) {
        self.dirty = true;
        if let Err(e) = self.journal.append(entry) {
            tracing::error!("{e}");
            return;
        }
        if self.journal.needs_rotation() {
            self.content.journal_seq = self.journal.last_seq();
            if let Err(e) = self.journal.rotate(&self.content) {
                tracing::error!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{sample_content, TempDir};
    use super::*;
    use crate::event::{Cause, Netns};

    const HOST: u64 = 4026531840;
    const C1: u64 = 4026532118;

    fn open(dir: &Path) -> (Ledger, Opened) {
        Ledger::open(LedgerOptions::new(dir)).unwrap()
    }

    fn place(name: &str, ifindex: u32, inode: u64) -> Option<Place> {
        Some(Place {
            name: Some(name.into()),
            ifindex: Some(ifindex),
            netns: Netns {
                inode,
                names: vec![],
            },
        })
    }

    fn nic_event(kind: EventKind, cause: Cause, from: Option<Place>, to: Option<Place>) -> Event {
        let mut ev = Event::new(kind, cause);
        ev.perm_addr = Some("52:54:00:12:34:56".into());
        ev.from = from;
        ev.to = to;
        ev
    }

    #[test]
    fn fresh_then_saved_then_loaded() {
        let dir = TempDir::new("ledger-fresh");
        let (mut ledger, opened) = open(dir.path());
        assert_eq!(opened, Opened::Fresh);
        let link = sample_content().links.into_values().next().unwrap();
        ledger.record_link(link.spec.clone());
        assert!(ledger.save().unwrap());
        assert!(!ledger.save().unwrap(), "nothing changed, nothing written");
        drop(ledger);
        let (ledger, opened) = open(dir.path());
        assert_eq!(opened, Opened::Loaded { replayed: 0 });
        assert_eq!(
            ledger.link(&link.spec.netns, &link.spec.name).unwrap().spec,
            link.spec
        );
    }

    #[test]
    fn changes_after_the_last_save_come_back_from_the_journal() {
        let dir = TempDir::new("ledger-forward");
        let (mut ledger, _) = open(dir.path());
        let spec = sample_content().links.into_values().next().unwrap().spec;
        ledger.record_link(spec.clone());
        ledger.save().unwrap();
        ledger.set_link_state(&spec.key(), LinkState::Waiting, Some("netns gone".into()));
        drop(ledger); // crash: no save
        let (ledger, opened) = open(dir.path());
        assert_eq!(opened, Opened::Loaded { replayed: 1 });
        assert_eq!(
            ledger.link(&spec.netns, &spec.name).unwrap().state,
            LinkState::Waiting
        );
    }

    #[test]
    fn corrupt_document_is_kept_aside_and_the_ledger_rebuilt() {
        let dir = TempDir::new("ledger-corrupt");
        let (mut ledger, _) = open(dir.path());
        let content = sample_content();
        for link in content.links.values() {
            ledger.record_link(link.spec.clone());
        }
        let nic = &content.nics[0];
        ledger.guard_nic(nic.identity.clone(), &nic.home_name, true, None);
        ledger.save().unwrap();
        drop(ledger);

        let state = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&state).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&state, &bytes).unwrap();

        let (ledger, opened) = open(dir.path());
        let Opened::Rebuilt {
            file,
            moved_to: Some(aside),
            replayed,
            ..
        } = &opened
        else {
            panic!("{opened:?}")
        };
        assert_eq!(file, &state);
        assert_eq!(std::fs::read(aside).unwrap(), bytes, "kept aside untouched");
        assert!(*replayed >= 2);
        let text = opened.to_string();
        assert!(
            text.contains("state.json") && text.contains("rebuilt from the journal"),
            "{text}"
        );
        assert_eq!(ledger.links().count(), content.links.len());
        assert_eq!(ledger.nics().len(), 1);
        // The rebuilt ledger was saved again and loads cleanly.
        drop(ledger);
        assert!(matches!(open(dir.path()).1, Opened::Loaded { .. }));
    }

    #[test]
    fn unreadable_document_is_an_error_and_stays_in_place() {
        let dir = TempDir::new("ledger-unreadable");
        let (mut ledger, _) = open(dir.path());
        ledger.record_link(sample_content().links.into_values().next().unwrap().spec);
        drop(ledger);
        // A directory where the file should be: reading it fails with EISDIR, an I/O error
        // like EIO, which says nothing about the document.
        let state = dir.path().join(STATE_FILE);
        std::fs::create_dir(&state).unwrap();
        let err = Ledger::open(LedgerOptions::new(dir.path())).err().unwrap();
        assert!(matches!(err, LedgerError::Unreadable { .. }), "{err:?}");
        assert!(err.to_string().contains("left where it is"), "{err}");
        assert!(state.is_dir(), "left in place");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
    }

    #[test]
    fn newer_document_is_refused_not_overwritten() {
        let dir = TempDir::new("ledger-newer");
        let state = dir.path().join(STATE_FILE);
        let newer = br#"{"version": 9, "checksum": "x", "ledger": {}}"#;
        std::fs::write(&state, newer).unwrap();
        let err = Ledger::open(LedgerOptions::new(dir.path())).err().unwrap();
        let text = err.to_string();
        assert!(
            text.contains("newer netguard") && text.contains("will not overwrite"),
            "{text}"
        );
        assert_eq!(std::fs::read(&state).unwrap(), newer, "untouched");
        assert!(
            !dir.path().join(journal::FILE_NAME).exists(),
            "nothing journalled either"
        );
    }

    #[test]
    fn nic_lent_refunded_and_admin_rename() {
        let dir = TempDir::new("ledger-nic");
        let (mut ledger, _) = open(dir.path());
        // First sight as it leaves home (eth2 -> container, renamed eth0 there).
        let moved = nic_event(
            EventKind::Move,
            Cause::Explicit,
            place("eth2", 4, HOST),
            place("eth2", 4, C1),
        );
        assert!(ledger.observe(&moved, HOST));
        let nic = ledger.nics()[0].clone();
        assert_eq!(
            (nic.home_name.as_str(), nic.state),
            ("eth2", NicState::Lent)
        );
        // Renamed inside the container: home name unchanged.
        let renamed = nic_event(
            EventKind::Rename,
            Cause::Explicit,
            place("eth2", 4, C1),
            place("eth0", 4, C1),
        );
        ledger.observe(&renamed, HOST);
        assert_eq!(ledger.nics()[0].home_name, "eth2");
        // Container exits: the kernel hands it back as dev4.
        let back = nic_event(
            EventKind::Move,
            Cause::NetnsTeardown,
            place("eth0", 4, C1),
            place("dev4", 4, HOST),
        );
        ledger.observe(&back, HOST);
        let nic = &ledger.nics()[0];
        assert_eq!(nic.state, NicState::Refunded);
        assert_eq!(nic.location.as_ref().unwrap().name, "dev4");
        // Renamed home (by us): home.
        let home = nic_event(
            EventKind::Rename,
            Cause::Explicit,
            place("dev4", 4, HOST),
            place("eth2", 4, HOST),
        );
        ledger.observe(&home, HOST);
        assert_eq!(ledger.nics()[0].state, NicState::Home);
        // An admin renames it at home: that is its home name from now on.
        let admin = nic_event(
            EventKind::Rename,
            Cause::Explicit,
            place("eth2", 4, HOST),
            place("lan0", 4, HOST),
        );
        ledger.observe(&admin, HOST);
        assert_eq!(ledger.nics()[0].home_name, "lan0");
        assert_eq!(ledger.nics()[0].state, NicState::Home);
        // Driver unloaded.
        let gone = nic_event(
            EventKind::Unregister,
            Cause::Explicit,
            place("lan0", 4, HOST),
            None,
        );
        ledger.observe(&gone, HOST);
        assert_eq!(ledger.nics()[0].state, NicState::Lost);
    }

    #[test]
    fn excluded_nics_are_not_guarded() {
        let dir = TempDir::new("ledger-exclude");
        let mut options = LedgerOptions::new(dir.path());
        options.exclude.names.push("eth2".into());
        let (mut ledger, _) = Ledger::open(options).unwrap();
        let moved = nic_event(
            EventKind::Move,
            Cause::Explicit,
            place("eth2", 4, HOST),
            place("eth0", 4, C1),
        );
        assert!(!ledger.observe(&moved, HOST));
        assert!(ledger.nics().is_empty());
    }

    #[test]
    fn link_events_follow_renames_and_mark_teardown() {
        let dir = TempDir::new("ledger-link-events");
        let (mut ledger, _) = open(dir.path());
        let mut spec = sample_content()
            .links
            .into_values()
            .find(|l| l.spec.kind.name() == "veth")
            .unwrap()
            .spec;
        spec.netns_inode = Some(C1);
        ledger.record_link(spec.clone());
        let mut ev = Event::new(EventKind::Rename, Cause::Explicit);
        ev.from = place(&spec.name, 2, C1);
        ev.to = place("eth9", 2, C1);
        assert!(ledger.observe(&ev, HOST));
        assert!(ledger.link(&spec.netns, &spec.name).is_none());
        let renamed = ledger.link(&spec.netns, "eth9").unwrap().spec.key();

        let mut teardown = Event::new(EventKind::TeardownBegin, Cause::NetnsTeardown);
        teardown.from = Some(Place {
            name: None,
            ifindex: None,
            netns: Netns {
                inode: C1,
                names: vec![],
            },
        });
        assert!(ledger.observe(&teardown, HOST));
        assert_eq!(
            ledger.link(&renamed.netns, &renamed.name).unwrap().state,
            LinkState::Missing
        );
        // Unrelated events are not journalled.
        let mut other = Event::new(EventKind::Unregister, Cause::Explicit);
        other.from = place("veth123", 9, HOST);
        assert!(!ledger.observe(&other, HOST));
    }

    #[test]
    fn status_has_a_row_per_guarded_thing() {
        let dir = TempDir::new("ledger-status");
        let (mut ledger, _) = open(dir.path());
        let content = sample_content();
        ledger.guard_nic(content.nics[0].identity.clone(), "eth2", true, None);
        for link in content.links.values() {
            ledger.record_link(link.spec.clone());
        }
        let rows = ledger.status();
        assert_eq!(rows.len(), 1 + content.links.len());
        assert_eq!(
            (
                rows[0].kind.as_str(),
                rows[0].name.as_str(),
                rows[0].state.as_str()
            ),
            ("nic", "eth2", "home")
        );
        let json = serde_json::to_string(&rows).unwrap();
        assert!(json.contains(r#""state":"intact""#), "{json}");
    }
}
