//! Planning one guarded virtual link: a veth pair, a vlan or macvlan, and their drift.

use crate::inventory::{LiveLink, NetnsInventory};
use crate::ledger::{
    IpNet, KindSpec, LedgerContent, LinkKey, LinkRecord, LinkSpec, Locator, Mac, Parent, VethPeer,
};

use super::{Item, Target, Verdict, World};
use crate::model::DeviceIdentity;
use crate::restore::action::{Action, Dev};
use crate::rtnl::temporary_link_name;

pub(super) fn plan_link(record: &LinkRecord, ledger: &LedgerContent, world: &World) -> Item {
    let spec = &record.spec;
    let target = Target::Link {
        kind: spec.kind.name(),
        key: spec.key(),
    };
    let inv = match world.inventory(&spec.netns) {
        Ok(inv) => inv,
        Err(why) => return Item::new(target, Verdict::Waiting, why),
    };
    if unexplained(record, inv) {
        return Item::new(target, Verdict::Waiting, UNEXPLAINED.to_string());
    }
    let result = match &spec.kind {
        KindSpec::Veth { peer } => plan_veth(spec, peer, inv, world),
        KindSpec::Vlan { parent, .. } | KindSpec::Macvlan { parent, .. } => {
            plan_stacked(spec, parent, inv, ledger, world)
        }
    };
    match result {
        Ok((actions, after, why)) => {
            let verdict = if actions.is_empty() {
                Verdict::Intact
            } else {
                Verdict::Repair
            };
            Item {
                target,
                verdict,
                reason: why,
                actions,
                after,
            }
        }
        Err((verdict, why)) => Item::new(target, verdict, why),
    }
}

/// Why a workload's link found gone before the tracer said why is not re-created yet.
pub(crate) const UNEXPLAINED: &str = "gone; waiting to hear whether it was deleted on purpose";

/// How long a workload's link may be gone unexplained before it is restored anyway: a
/// backend holds a delete until it can tell its cause (the netlink one up to
/// `PARENT_WAIT`, or a NIC's uevent wait); a delete on purpose releases it meanwhile.
const UNEXPLAINED_WAIT: chrono::TimeDelta = chrono::TimeDelta::seconds(3);

/// Whether `record` belongs to a workload, is gone from `inv`, and no event said why yet (it
/// is still recorded as whole, or has waited less than [`UNEXPLAINED_WAIT`] for one).
fn unexplained(record: &LinkRecord, inv: &NetnsInventory) -> bool {
    use crate::ledger::LinkState;
    if record.workload.is_none() || inv.link_by_name(&record.spec.name).is_some() {
        return false;
    }
    match record.state {
        LinkState::Intact | LinkState::Restored => true,
        LinkState::Waiting => {
            record.reason.as_deref() == Some(UNEXPLAINED)
                && chrono::Utc::now() - record.since < UNEXPLAINED_WAIT
        }
        _ => false,
    }
}

/// Actions, the item to wait for, and why repairs are needed; or why nothing can be done.
type Planned = Result<(Vec<Action>, Option<LinkKey>, Option<String>), (Verdict, String)>;

fn replaced(spec: &LinkSpec, inv: &NetnsInventory) -> Option<String> {
    match spec.netns_inode {
        Some(old) if old != inv.inode && spec.netns != Locator::Host => Some(format!(
            "netns {} was replaced (inode {old} -> {})",
            spec.netns, inv.inode
        )),
        _ => None,
    }
}

fn plan_veth(spec: &LinkSpec, peer: &VethPeer, inv: &NetnsInventory, world: &World) -> Planned {
    let peer_inv = world
        .inventory(&peer.netns)
        .map_err(|why| (Verdict::Waiting, why))?;
    let bridge = match &peer.master {
        Some(name) => match peer_inv.link_by_name(name) {
            Some(br) => Some(br),
            None => {
                return Err((
                    Verdict::Waiting,
                    format!("bridge {name} is not in {}", peer.netns),
                ))
            }
        },
        None => None,
    };
    let ours = inv.link_by_name(&spec.name);
    let theirs = peer_inv.link_by_name(&peer.name);
    let mut actions = Vec::new();
    let why = match (ours, theirs) {
        (Some(ours), Some(theirs)) => {
            let paired = ours.kind.as_deref() == Some("veth")
                && theirs.kind.as_deref() == Some("veth")
                && ours.link == Some(theirs.ifindex)
                && theirs.link == Some(ours.ifindex);
            if !paired {
                return Err((
                    Verdict::Conflict,
                    format!(
                        "{} in {} and {} in {} are not the guarded veth pair",
                        spec.name, spec.netns, peer.name, peer.netns
                    ),
                ));
            }
            configure_peer(peer, Some(theirs), bridge, &mut actions);
            configure(spec, inv, Some(ours), &mut actions);
            (!actions.is_empty()).then(|| "repairing".to_string())
        }
        (Some(_), None) => {
            return Err((
                Verdict::Conflict,
                format!(
                    "{} in {} exists but its peer {} does not",
                    spec.name, spec.netns, peer.name
                ),
            ));
        }
        (None, theirs) => {
            let replaced = replaced(spec, inv);
            if let Some(theirs) = theirs {
                // Its peer died with the old netns, which may still be tearing down. Only a
                // veth that is provably ours (same MAC when we know it) is removed.
                // Without a recorded MAC (a CNI-imported peer) nothing proves it ours: the
                // kernel removes it with the old netns, and the pair is re-created then.
                let ours_by_mac = peer.mac.is_some_and(|m| theirs.mac == Some(m));
                if replaced.is_none() || theirs.kind.as_deref() != Some("veth") || !ours_by_mac {
                    let known = if peer.mac.is_none() {
                        " (no MAC on record for it)"
                    } else {
                        ""
                    };
                    return Err((
                        Verdict::Conflict,
                        format!(
                            "{} is missing from {} but {} exists in {}{known}: not touching it",
                            spec.name, spec.netns, peer.name, peer.netns
                        ),
                    ));
                }
                actions.push(Action::DeleteStaleVeth {
                    netns: peer.netns.clone(),
                    dev: Dev::live(
                        theirs,
                        DeviceIdentity::Virtual {
                            kind: "veth".into(),
                            mac: peer.mac,
                        },
                    ),
                });
            }
            actions.push(Action::CreateVeth {
                netns: peer.netns.clone(),
                name: peer.name.clone(),
                mac: peer.mac,
                mtu: peer.mtu,
                peer: spec.name.clone(),
                peer_netns: spec.netns.clone(),
                peer_mac: spec.mac,
                peer_mtu: spec.mtu,
            });
            configure_peer(peer, None, bridge, &mut actions);
            configure(spec, inv, None, &mut actions);
            Some(replaced.unwrap_or_else(|| format!("{} is missing", spec.name)))
        }
    };
    Ok((actions, None, why))
}

/// MAC and MTU of a link that exists but drifted (re-created by someone else, say).
fn fix_drift(
    netns: &Locator,
    dev: &Dev,
    mac: Option<Mac>,
    mtu: Option<u32>,
    live: Option<&LiveLink>,
    actions: &mut Vec<Action>,
) {
    let Some(live) = live else { return };
    if let Some(mac) = mac.filter(|m| live.mac != Some(*m)) {
        actions.push(Action::SetMac {
            netns: netns.clone(),
            dev: dev.clone(),
            mac,
        });
    }
    if let Some(mtu) = mtu.filter(|m| live.mtu != Some(*m)) {
        actions.push(Action::SetMtu {
            netns: netns.clone(),
            dev: dev.clone(),
            mtu,
        });
    }
}

/// A guarded link as its actions name it: as seen live, or (`live: None`) as an earlier
/// action of the item creates it, of `kind` with the MAC on record.
fn device(name: &str, kind: &str, mac: Option<Mac>, live: Option<&LiveLink>) -> Dev {
    match live {
        Some(l) => Dev::live(l, l.virtual_identity()),
        None => Dev::expected(
            name,
            DeviceIdentity::Virtual {
                kind: kind.to_string(),
                mac,
            },
        ),
    }
}

/// Host side of a veth: up, THEN enslaved (a port enslaved while down may not attach).
fn configure_peer(
    peer: &VethPeer,
    live: Option<&LiveLink>,
    bridge: Option<&LiveLink>,
    actions: &mut Vec<Action>,
) {
    let dev = || device(&peer.name, "veth", peer.mac, live);
    fix_drift(&peer.netns, &dev(), peer.mac, peer.mtu, live, actions);
    if peer.up && !live.is_some_and(|l| l.up) {
        actions.push(Action::SetUp {
            netns: peer.netns.clone(),
            dev: dev(),
        });
    }
    if let Some(bridge) = bridge {
        if live.and_then(|l| l.master) != Some(bridge.ifindex) {
            actions.push(Action::SetMaster {
                netns: peer.netns.clone(),
                dev: dev(),
                master: bridge.name.clone(),
            });
        }
    }
}

/// A link's own configuration: addresses, up, then routes (a gateway route needs the link up
/// and the gateway's subnet present). `live: None` means it is about to be created.
fn configure(
    spec: &LinkSpec,
    inv: &NetnsInventory,
    live: Option<&LiveLink>,
    actions: &mut Vec<Action>,
) {
    let dev = || device(&spec.name, spec.kind.name(), spec.mac, live);
    let netns = || spec.netns.clone();
    fix_drift(&spec.netns, &dev(), spec.mac, spec.mtu, live, actions);
    let have: Vec<IpNet> = live
        .map(|l| inv.addresses_of(l.ifindex).collect())
        .unwrap_or_default();
    for addr in spec.addresses.iter().filter(|a| !have.contains(a)) {
        actions.push(Action::AddAddress {
            netns: netns(),
            dev: dev(),
            addr: *addr,
        });
    }
    if spec.up && !live.is_some_and(|l| l.up) {
        actions.push(Action::SetUp {
            netns: netns(),
            dev: dev(),
        });
    }
    for route in &spec.routes {
        if !live.is_some_and(|l| inv.has_route(l.ifindex, route)) {
            actions.push(Action::AddRoute {
                netns: netns(),
                dev: dev(),
                route: route.clone(),
            });
        }
    }
}

/// A vlan or macvlan: needs its parent; re-created directly in its netns.
fn plan_stacked(
    spec: &LinkSpec,
    parent: &Parent,
    inv: &NetnsInventory,
    ledger: &LedgerContent,
    world: &World,
) -> Planned {
    if let Some(live) = inv.link_by_name(&spec.name) {
        let kind_ok = live.kind.as_deref() == Some(spec.kind.name());
        let vlan_ok = match &spec.kind {
            KindSpec::Vlan { id, .. } => live.vlan.map(|(i, _)| i) == Some(*id),
            _ => true,
        };
        if !kind_ok || !vlan_ok {
            return Err((
                Verdict::Conflict,
                format!(
                    "{} in {} is not the guarded {}",
                    spec.name,
                    spec.netns,
                    spec.kind.name()
                ),
            ));
        }
        let mut actions = Vec::new();
        configure(spec, inv, Some(live), &mut actions);
        let why = (!actions.is_empty()).then(|| "repairing".to_string());
        return Ok((actions, None, why));
    }

    // Gone: find the parent, by identity or by name, as it is now.
    let (parent_netns, parent, after) = match parent {
        Parent::Nic(identity) => {
            let found = world.host.nics().find(|(_, id)| identity.matches(id));
            match found {
                Some((l, _)) => (
                    Locator::Host,
                    Dev::live(l, DeviceIdentity::Nic(identity.clone())),
                    None,
                ),
                None => {
                    return Err((
                        Verdict::Waiting,
                        format!("its parent NIC ({identity}) is not back in the host netns"),
                    ))
                }
            }
        }
        Parent::Link { netns, name } => {
            let key = LinkKey {
                netns: netns.clone(),
                name: name.clone(),
            };
            let present = world
                .inventory(netns)
                .ok()
                .and_then(|i| i.link_by_name(name));
            match (present, ledger.links.get(&key)) {
                (Some(l), _) => (netns.clone(), Dev::live(l, l.virtual_identity()), None),
                // A guarded parent: re-created first, in the same pass, as recorded.
                (None, Some(record)) => {
                    let identity = DeviceIdentity::Virtual {
                        kind: record.spec.kind.name().to_string(),
                        mac: record.spec.mac,
                    };
                    (netns.clone(), Dev::expected(name, identity), Some(key))
                }
                (None, None) => {
                    return Err((
                        Verdict::Waiting,
                        format!("its parent {name} is not in {netns}"),
                    ))
                }
            }
        }
    };
    // Created in the parent's netns, it takes a name of ours there before it moves in.
    let temp = (parent_netns != spec.netns).then(temporary_link_name);
    let create = match &spec.kind {
        KindSpec::Vlan { id, protocol, .. } => Action::CreateVlan {
            parent_netns,
            parent: parent.clone(),
            netns: spec.netns.clone(),
            name: spec.name.clone(),
            id: *id,
            protocol: *protocol,
            mac: spec.mac,
            mtu: spec.mtu,
            temp: temp.clone(),
        },
        KindSpec::Macvlan { mode, .. } => Action::CreateMacvlan {
            parent_netns,
            parent: parent.clone(),
            netns: spec.netns.clone(),
            name: spec.name.clone(),
            mode: *mode,
            mac: spec.mac,
            mtu: spec.mtu,
            temp: temp.clone(),
        },
        KindSpec::Veth { .. } => unreachable!("veths are planned by plan_veth"),
    };
    let mut actions = vec![create];
    configure(spec, inv, None, &mut actions);
    Ok((actions, after, Some(format!("{} is missing", spec.name))))
}
