//! Which tracer events wake the reconciler beyond those about a guarded device (the ledger
//! tells those as it folds them in). A container start makes a dozen events about devices no
//! guarded link names (the bridge plugin's host veth, the new netns's loopback, the devices
//! a new netns shows when it is first found); a pass for each costs the start CPU and finds
//! nothing, and the interval looks at everything anyway.
//!
//! An event wakes it when it may change what a guarded link needs:
//! - a device arriving (registered, moved or renamed in) under a name a guarded link refers
//!   to in that netns: its parent, its veth peer or the peer's bridge, or its own name while
//!   it is not intact (back, or in the way); or arriving in a netns where a guarded link is
//!   not intact (the netns may be back);
//! - a device leaving the host netns under such a name, or its own;
//! - anything leaving a netns where a guarded link lives (a teardown, a deletion);
//! - a physical NIC arriving in or leaving the host netns (a parent back after a driver
//!   reload, under a new ifindex; a refund);
//! - an event whose place has no name to tell.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::event::{Event, EventKind, Place};
use crate::ledger::{KindSpec, LedgerContent, LinkKey, LinkState, Locator, Parent};

/// The names guarded links refer to, made from one revision of the ledger.
#[derive(Default)]
pub(super) struct WakeIndex {
    revision: Option<u64>,
    /// Whether the arrival of a device under that name wakes (a guarded link's own name
    /// while intact: only its leaving does).
    names: HashMap<(Locator, String), bool>,
}

impl WakeIndex {
    /// Whether `event` calls for a pass; the index follows `ledger` at `revision`.
    pub(super) fn concerns_us(
        &mut self,
        ledger: &LedgerContent,
        revision: u64,
        event: &Event,
        host_inode: u64,
    ) -> bool {
        let leaving = event
            .from
            .as_ref()
            .filter(|_| event.kind != EventKind::Register);
        let arriving = event
            .to
            .as_ref()
            .filter(|_| event.kind != EventKind::Unregister);
        leaving.is_some_and(|place| self.wakes(ledger, revision, event, place, host_inode, false))
            || arriving
                .is_some_and(|place| self.wakes(ledger, revision, event, place, host_inode, true))
    }

    fn wakes(
        &mut self,
        ledger: &LedgerContent,
        revision: u64,
        event: &Event,
        place: &Place,
        host_inode: u64,
        arriving: bool,
    ) -> bool {
        let at_host = place.netns.inode == host_inode;
        if !at_host {
            let wanted = if arriving {
                links_to_repair_in
            } else {
                links_in
            };
            if place
                .netns
                .names
                .iter()
                .any(|n| wanted(ledger, Path::new(n)))
            {
                return true;
            }
            if !arriving {
                return false;
            }
        }
        let Some(name) = &place.name else {
            return true;
        };
        if at_host && event.link_kind.is_none() {
            return true;
        }
        if self.revision != Some(revision) {
            self.rebuild(ledger, revision);
        }
        let wakes = |netns: Locator| {
            self.names
                .get(&(netns, name.clone()))
                .is_some_and(|on_arrival| *on_arrival || !arriving)
        };
        if at_host {
            wakes(Locator::Host)
        } else {
            place
                .netns
                .names
                .iter()
                .any(|n| wakes(Locator::Path(PathBuf::from(n))))
        }
    }

    fn rebuild(&mut self, ledger: &LedgerContent, revision: u64) {
        self.names.clear();
        let mut refer = |netns: &Locator, name: &str, on_arrival: bool| {
            let entry = self
                .names
                .entry((netns.clone(), name.to_string()))
                .or_default();
            *entry |= on_arrival;
        };
        for record in ledger
            .links
            .values()
            .filter(|r| r.state != LinkState::Released)
        {
            let spec = &record.spec;
            let as_recorded = matches!(record.state, LinkState::Intact | LinkState::Restored);
            refer(&spec.netns, &spec.name, !as_recorded);
            match &spec.kind {
                KindSpec::Veth { peer } => {
                    refer(&peer.netns, &peer.name, true);
                    if let Some(bridge) = &peer.master {
                        refer(&peer.netns, bridge, true);
                    }
                }
                KindSpec::Vlan { parent, .. } | KindSpec::Macvlan { parent, .. } => {
                    if let Parent::Link { netns, name } = parent {
                        refer(netns, name, true);
                    }
                }
            }
        }
        self.revision = Some(revision);
    }
}

/// Whether a guarded link (not released) lives in the netns at `path`.
pub(super) fn links_in(ledger: &LedgerContent, path: &Path) -> bool {
    any_link_in(ledger, path, |state| state != LinkState::Released)
}

/// Whether a guarded link in the netns at `path` is not as recorded: a device arriving there
/// may be the netns itself coming (back), or what the link waits for.
fn links_to_repair_in(ledger: &LedgerContent, path: &Path) -> bool {
    any_link_in(ledger, path, |state| {
        !matches!(
            state,
            LinkState::Intact | LinkState::Restored | LinkState::Released
        )
    })
}

/// Whether a link in the netns at `path` is in a state `wanted` accepts: the links are ordered
/// by netns first, so the search starts at (`path`, "") (a scan of every key per event cost
/// seconds in a burst at 10,000 links).
fn any_link_in(ledger: &LedgerContent, path: &Path, wanted: impl Fn(LinkState) -> bool) -> bool {
    let first = LinkKey {
        netns: Locator::Path(path.to_path_buf()),
        name: String::new(),
    };
    ledger
        .links
        .range(&first..)
        .take_while(|(key, _)| key.netns == first.netns)
        .any(|(_, record)| wanted(record.state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Cause, Netns};
    use crate::ledger::testutil::sample_content;

    const HOST: u64 = 1;
    const C1: u64 = 4026532118;

    fn place(inode: u64, path: Option<&str>, name: &str) -> Place {
        Place {
            name: Some(name.into()),
            ifindex: Some(7),
            netns: Netns {
                inode,
                names: path.into_iter().map(String::from).collect(),
            },
        }
    }

    fn event(
        kind: EventKind,
        link_kind: Option<&str>,
        from: Option<Place>,
        to: Option<Place>,
    ) -> Event {
        let mut event = Event::new(kind, Cause::Explicit);
        event.link_kind = link_kind.map(String::from);
        event.from = from;
        event.to = to;
        event
    }

    fn wakes(ledger: &LedgerContent, event: &Event) -> bool {
        WakeIndex::default().concerns_us(ledger, 0, event, HOST)
    }

    #[test]
    fn a_start_s_devices_that_no_guarded_link_names_wake_nothing() {
        let ledger = sample_content();
        // The bridge plugin's host veth of another container, coming and going.
        let host_veth = || Some(place(HOST, None, "veth1234"));
        assert!(!wakes(
            &ledger,
            &event(EventKind::Register, Some("veth"), None, host_veth())
        ));
        assert!(!wakes(
            &ledger,
            &event(EventKind::Unregister, Some("veth"), host_veth(), None)
        ));
        // Found in a guarded container's netns as it was recorded: its loopback, its eth0.
        for name in ["lo", "eth0"] {
            let found = place(C1, Some("/run/netns/c1"), name);
            assert!(!wakes(
                &ledger,
                &event(EventKind::Register, Some("veth"), None, Some(found))
            ));
        }
        // Anything in a netns no guarded link lives in.
        let other = place(77, Some("/run/netns/other"), "eth0");
        assert!(!wakes(
            &ledger,
            &event(EventKind::Unregister, Some("veth"), Some(other), None)
        ));
    }

    #[test]
    fn what_a_guarded_link_refers_to_wakes() {
        let mut ledger = sample_content();
        let arrive = |name: &str, kind: &str| {
            event(
                EventKind::Register,
                Some(kind),
                None,
                Some(place(HOST, None, name)),
            )
        };
        // The veth's host peer, its bridge, the macvlan's parent vlan (guarded in the host).
        assert!(wakes(&ledger, &arrive("vc1", "veth")));
        assert!(wakes(&ledger, &arrive("br0", "bridge")));
        let vlan_gone = event(
            EventKind::Unregister,
            Some("vlan"),
            Some(place(HOST, None, "eth0.3")),
            None,
        );
        assert!(wakes(&ledger, &vlan_gone));
        // A physical NIC arriving: perhaps a parent back after a driver reload.
        assert!(wakes(
            &ledger,
            &event(
                EventKind::Register,
                None,
                None,
                Some(place(HOST, None, "eth7"))
            )
        ));
        // A renamed device taking the bridge's name.
        let renamed = event(
            EventKind::Rename,
            Some("bridge"),
            Some(place(HOST, None, "tmp0")),
            Some(place(HOST, None, "br0")),
        );
        assert!(wakes(&ledger, &renamed));
        // Anything leaving a guarded netns, and its own name arriving while it is missing.
        let c1 = |name: &str| Some(place(C1, Some("/run/netns/c1"), name));
        assert!(wakes(
            &ledger,
            &event(EventKind::Unregister, Some("dummy"), c1("lo"), None)
        ));
        let back = event(EventKind::Register, Some("veth"), None, c1("eth0"));
        let key = ledger
            .links
            .keys()
            .find(|k| k.netns == Locator::Path("/run/netns/c1".into()))
            .unwrap()
            .clone();
        ledger.links.get_mut(&key).unwrap().state = LinkState::Missing;
        assert!(wakes(&ledger, &back));
        // Its netns back (found with its loopback) while the link waits for it.
        ledger.links.get_mut(&key).unwrap().state = LinkState::Waiting;
        let lo = event(EventKind::Register, None, None, c1("lo"));
        assert!(wakes(&ledger, &lo));
    }

    #[test]
    fn released_links_refer_to_nothing() {
        let mut ledger = sample_content();
        for record in ledger.links.values_mut() {
            record.state = LinkState::Released;
        }
        let peer_gone = event(
            EventKind::Unregister,
            Some("veth"),
            Some(place(HOST, None, "vc1")),
            None,
        );
        assert!(!wakes(&ledger, &peer_gone));
        let c1_gone = event(
            EventKind::Unregister,
            Some("veth"),
            Some(place(C1, Some("/run/netns/c1"), "eth0")),
            None,
        );
        assert!(!wakes(&ledger, &c1_gone));
    }

    #[test]
    fn the_index_follows_the_ledger_s_revision() {
        let mut ledger = sample_content();
        let mut index = WakeIndex::default();
        let peer = event(
            EventKind::Register,
            Some("veth"),
            None,
            Some(place(HOST, None, "vc1")),
        );
        assert!(index.concerns_us(&ledger, 1, &peer, HOST));
        for record in ledger.links.values_mut() {
            record.state = LinkState::Released;
        }
        assert!(!index.concerns_us(&ledger, 2, &peer, HOST));
    }
}
