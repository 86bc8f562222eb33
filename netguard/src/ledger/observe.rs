//! Folding the tracer's events in: home names as NICs leave, refunds, renames, links lost.

use crate::event::{Cause, Event, EventKind, Place};

use super::journal::JournalEntry;
use super::{
    Ledger, LinkKey, LinkSpec, LinkState, Locator, Mac, NicIdentity, NicLocation, NicRecord,
    NicState,
};

impl Ledger {
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
                // Its admin state at home was never seen: a rename home leaves it as the
                // kernel gives it back.
                self.guard_nic(identity.clone(), &home, None, Some(from));
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
                // A released link is history: whatever happens to its name is not about it.
                .filter(|r| {
                    r.state != LinkState::Released
                        && in_netns(&r.spec, place.netns.inode)
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
                    if let Some(why) = self.released_on_purpose(key, event) {
                        tracing::info!("{key}: {why}");
                        self.set_link_state(key, LinkState::Released, Some(why));
                        continue;
                    }
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
                    .filter(|r| {
                        r.state != LinkState::Released && in_netns(&r.spec, from.netns.inode)
                    })
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

    /// Why a workload's link deleted by an explicit command (its netns and parent alive, else
    /// the cause would be a teardown or parent-gone) is released rather than lost; `None` for
    /// anything else, and for links without a workload, which are restored as ever.
    fn released_on_purpose(&self, key: &LinkKey, event: &Event) -> Option<String> {
        let record = self.content.links.get(key)?;
        if event.kind != EventKind::Unregister
            || event.cause != Cause::Explicit
            || record.workload.is_none()
        {
            return None;
        }
        Some(match &event.by {
            Some(actor) => format!("deleted by {actor}"),
            None => "deleted by a command while its netns and parent lived; \
                     this tracer backend cannot tell which"
                .to_string(),
        })
    }
}
