//! Desired (ledger) vs actual (inventory) -> a [`Plan`] of typed actions. Pure: no kernel
//! access, so every case is unit-tested on made-up inventories.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::inventory::{LiveLink, NetnsInventory};
use crate::ledger::{
    IpNet, KindSpec, LedgerContent, LinkKey, LinkRecord, LinkSpec, Locator, Mac, MacvlanMode,
    NicIdentity, NicRecord, NicState, Parent, RouteSpec, VethPeer, VlanProtocol,
};

/// What the kernel says now: the host netns and every other netns a guarded link needs.
#[derive(Debug, Default)]
pub struct World {
    pub host: NetnsInventory,
    pub netns: HashMap<Locator, NetnsInventory>,
    /// Netns that could not be opened or dumped, and why.
    pub unreachable: HashMap<Locator, String>,
}

impl World {
    pub fn inventory(&self, locator: &Locator) -> Result<&NetnsInventory, String> {
        match locator {
            Locator::Host => Ok(&self.host),
            Locator::Path(_) => {
                self.netns
                    .get(locator)
                    .ok_or_else(|| match self.unreachable.get(locator) {
                        Some(why) => format!("netns {locator} is not there ({why})"),
                        None => format!("netns {locator} was not looked at"),
                    })
            }
        }
    }
}

/// One kernel change, on one device in one netns. Devices are named, not indexed: an ifindex
/// is only known once a device exists, and names are what the ledger keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    SetUp {
        netns: Locator,
        dev: String,
    },
    SetDown {
        netns: Locator,
        dev: String,
    },
    Rename {
        netns: Locator,
        dev: String,
        to: String,
    },
    SetMaster {
        netns: Locator,
        dev: String,
        master: String,
    },
    SetMac {
        netns: Locator,
        dev: String,
        mac: Mac,
    },
    SetMtu {
        netns: Locator,
        dev: String,
        mtu: u32,
    },
    /// A veth pair whose host side's peer died with a replaced netns (the kernel would remove
    /// it once the old netns is freed); removed so the pair can be re-created.
    DeleteStaleVeth {
        netns: Locator,
        dev: String,
        mac: Option<Mac>,
    },
    /// A veth pair: `name` in `netns`, `peer` created directly in `peer_netns` (IFLA_NET_NS_FD).
    CreateVeth {
        netns: Locator,
        name: String,
        mac: Option<Mac>,
        mtu: Option<u32>,
        peer: String,
        peer_netns: Locator,
        peer_mac: Option<Mac>,
        peer_mtu: Option<u32>,
    },
    /// A vlan on `parent` (in `parent_netns`), created directly in `netns`.
    CreateVlan {
        parent_netns: Locator,
        parent: String,
        netns: Locator,
        name: String,
        id: u16,
        protocol: VlanProtocol,
        mac: Option<Mac>,
        mtu: Option<u32>,
    },
    /// A macvlan on `parent` (in `parent_netns`), created directly in `netns`.
    CreateMacvlan {
        parent_netns: Locator,
        parent: String,
        netns: Locator,
        name: String,
        mode: MacvlanMode,
        mac: Option<Mac>,
        mtu: Option<u32>,
    },
    AddAddress {
        netns: Locator,
        dev: String,
        addr: IpNet,
    },
    AddRoute {
        netns: Locator,
        dev: String,
        route: RouteSpec,
    },
}

impl Action {
    /// The netns the request goes to.
    pub fn netns(&self) -> &Locator {
        match self {
            Action::SetUp { netns, .. }
            | Action::SetDown { netns, .. }
            | Action::Rename { netns, .. }
            | Action::SetMaster { netns, .. }
            | Action::SetMac { netns, .. }
            | Action::SetMtu { netns, .. }
            | Action::DeleteStaleVeth { netns, .. }
            | Action::CreateVeth { netns, .. }
            | Action::AddAddress { netns, .. }
            | Action::AddRoute { netns, .. } => netns,
            Action::CreateVlan { parent_netns, .. }
            | Action::CreateMacvlan { parent_netns, .. } => parent_netns,
        }
    }

    /// The device it is about.
    pub fn device(&self) -> &str {
        match self {
            Action::SetUp { dev, .. }
            | Action::SetDown { dev, .. }
            | Action::Rename { dev, .. }
            | Action::SetMaster { dev, .. }
            | Action::SetMac { dev, .. }
            | Action::SetMtu { dev, .. }
            | Action::DeleteStaleVeth { dev, .. }
            | Action::AddAddress { dev, .. }
            | Action::AddRoute { dev, .. } => dev,
            Action::CreateVeth { name, .. }
            | Action::CreateVlan { name, .. }
            | Action::CreateMacvlan { name, .. } => name,
        }
    }
}

fn opt<T: fmt::Display>(label: &str, v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| format!(" {label} {v}"))
        .unwrap_or_default()
}

fn other_netns(here: &Locator, there: &Locator) -> String {
    if here == there {
        String::new()
    } else {
        format!(" netns {there}")
    }
}

impl fmt::Display for Action {
    /// Reads like the `ip` command that would do the same, prefixed by the netns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] ", self.netns())?;
        match self {
            Action::SetUp { dev, .. } => write!(f, "ip link set {dev} up"),
            Action::SetDown { dev, .. } => write!(f, "ip link set {dev} down"),
            Action::Rename { dev, to, .. } => write!(f, "ip link set {dev} name {to}"),
            Action::SetMaster { dev, master, .. } => write!(f, "ip link set {dev} master {master}"),
            Action::SetMac { dev, mac, .. } => write!(f, "ip link set {dev} address {mac}"),
            Action::SetMtu { dev, mtu, .. } => write!(f, "ip link set {dev} mtu {mtu}"),
            Action::DeleteStaleVeth { dev, .. } => write!(
                f,
                "ip link del {dev} (stale veth: its peer's netns was replaced)"
            ),
            Action::CreateVeth {
                name,
                mac,
                mtu,
                peer,
                peer_netns,
                peer_mac,
                peer_mtu,
                ..
            } => write!(
                f,
                "ip link add {name}{}{} type veth peer name {peer}{}{} netns {peer_netns}",
                opt("address", mac),
                opt("mtu", mtu),
                opt("address", peer_mac),
                opt("mtu", peer_mtu)
            ),
            Action::CreateVlan {
                parent_netns,
                parent,
                netns,
                name,
                id,
                protocol,
                mac,
                mtu,
            } => write!(
                f,
                "ip link add link {parent} name {name}{}{}{} type vlan id {id} protocol {protocol}",
                opt("address", mac),
                opt("mtu", mtu),
                other_netns(parent_netns, netns)
            ),
            Action::CreateMacvlan {
                parent_netns,
                parent,
                netns,
                name,
                mode,
                mac,
                mtu,
            } => write!(
                f,
                "ip link add link {parent} name {name}{}{}{} type macvlan mode {mode}",
                opt("address", mac),
                opt("mtu", mtu),
                other_netns(parent_netns, netns)
            ),
            Action::AddAddress { dev, addr, .. } => write!(f, "ip addr add {addr} dev {dev}"),
            Action::AddRoute { dev, route, .. } => write!(f, "ip route add {route} dev {dev}"),
        }
    }
}

/// What a plan item is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Target {
    Nic {
        home_name: String,
        identity: NicIdentity,
    },
    Link {
        kind: &'static str,
        key: LinkKey,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Nic {
                home_name,
                identity,
            } => write!(f, "NIC {home_name} ({identity})"),
            Target::Link { kind, key } => write!(f, "{kind} {key}"),
        }
    }
}

/// What the planner concluded about one guarded thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// As it should be; nothing to do.
    Intact,
    /// Broken; the actions repair it.
    Repair,
    /// Cannot be repaired yet (netns, parent or bridge absent).
    Waiting,
    /// Something netguard does not own is in the way: nothing touched.
    Conflict,
    /// A NIC lent to another netns: nothing to do.
    Lent,
    /// A NIC not seen anywhere.
    Lost,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub target: Target,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// A guarded link this item needs first (a macvlan's vlan parent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<LinkKey>,
}

impl Item {
    fn new(target: Target, verdict: Verdict, reason: impl Into<Option<String>>) -> Item {
        Item {
            target,
            verdict,
            reason: reason.into(),
            actions: vec![],
            after: None,
        }
    }
}

/// The plan of one pass: one item per guarded NIC and link.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub items: Vec<Item>,
}

impl Plan {
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.items.iter().flat_map(|i| &i.actions)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            write!(f, "{}: {}", item.target, item.verdict)?;
            if let Some(reason) = &item.reason {
                write!(f, " ({reason})")?;
            }
            if let Some(after) = &item.after {
                write!(f, " [after {after}]")?;
            }
            writeln!(f)?;
            for action in &item.actions {
                writeln!(f, "    {action}")?;
            }
        }
        Ok(())
    }
}

/// Compares every guarded NIC and link with the kernel's view.
pub fn plan(ledger: &LedgerContent, world: &World) -> Plan {
    let mut items: Vec<Item> = ledger
        .nics
        .iter()
        .map(|n| plan_nic(n, &world.host))
        .collect();
    let links: Vec<Item> = ledger
        .links
        .values()
        .map(|r| plan_link(r, ledger, world))
        .collect();
    // A link that waits on a parent being re-created in this same pass is planned as if the
    // parent were there; the executor runs it after the parent.
    items.extend(links);
    Plan { items }
}

fn plan_nic(nic: &NicRecord, host: &NetnsInventory) -> Item {
    let target = Target::Nic {
        home_name: nic.home_name.clone(),
        identity: nic.identity.clone(),
    };
    let found: Vec<&LiveLink> = host
        .links
        .iter()
        // A vlan or macvlan inherits its NIC's bus address: it is not the NIC.
        .filter(|l| {
            !(l.kind.is_some() && l.bus.is_some()) && nic.identity.matches(&l.nic_identity())
        })
        .collect();
    let live = match found.as_slice() {
        [] if nic.state == NicState::Lent => return Item::new(target, Verdict::Lent, None),
        [] => return Item::new(target, Verdict::Lost, "not in the host netns".to_string()),
        [one] => *one,
        many => {
            let names: Vec<&str> = many.iter().map(|l| l.name.as_str()).collect();
            let why = format!(
                "its identity matches several devices ({}): not renaming any",
                names.join(", ")
            );
            return Item::new(target, Verdict::Conflict, why);
        }
    };
    if live.name == nic.home_name {
        return Item::new(target, Verdict::Intact, None);
    }
    if let Some(holder) = host.link_by_name(&nic.home_name) {
        let why = format!(
            "it is {} now; its home name {} is held by another device (ifindex {}): nothing renamed, retried later",
            live.name, nic.home_name, holder.ifindex
        );
        return Item::new(target, Verdict::Conflict, why);
    }
    let mut item = Item::new(
        target,
        Verdict::Repair,
        format!("came back as {}", live.name),
    );
    // The kernel refuses to rename a running device (EBUSY).
    if live.up {
        item.actions.push(Action::SetDown {
            netns: Locator::Host,
            dev: live.name.clone(),
        });
    }
    item.actions.push(Action::Rename {
        netns: Locator::Host,
        dev: live.name.clone(),
        to: nic.home_name.clone(),
    });
    if live.up || nic.up {
        item.actions.push(Action::SetUp {
            netns: Locator::Host,
            dev: nic.home_name.clone(),
        });
    }
    item
}

fn plan_link(record: &LinkRecord, ledger: &LedgerContent, world: &World) -> Item {
    let spec = &record.spec;
    let target = Target::Link {
        kind: spec.kind.name(),
        key: spec.key(),
    };
    let inv = match world.inventory(&spec.netns) {
        Ok(inv) => inv,
        Err(why) => return Item::new(target, Verdict::Waiting, why),
    };
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
                let ours_by_mac = peer.mac.is_none_or(|m| theirs.mac == Some(m));
                if replaced.is_none() || theirs.kind.as_deref() != Some("veth") || !ours_by_mac {
                    return Err((
                        Verdict::Conflict,
                        format!(
                            "{} is missing from {} but {} exists in {}: not touching it",
                            spec.name, spec.netns, peer.name, peer.netns
                        ),
                    ));
                }
                actions.push(Action::DeleteStaleVeth {
                    netns: peer.netns.clone(),
                    dev: peer.name.clone(),
                    mac: theirs.mac,
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
    dev: &str,
    mac: Option<Mac>,
    mtu: Option<u32>,
    live: Option<&LiveLink>,
    actions: &mut Vec<Action>,
) {
    let Some(live) = live else { return };
    if let Some(mac) = mac.filter(|m| live.mac != Some(*m)) {
        actions.push(Action::SetMac {
            netns: netns.clone(),
            dev: dev.to_string(),
            mac,
        });
    }
    if let Some(mtu) = mtu.filter(|m| live.mtu != Some(*m)) {
        actions.push(Action::SetMtu {
            netns: netns.clone(),
            dev: dev.to_string(),
            mtu,
        });
    }
}

/// Host side of a veth: up, THEN enslaved (a port enslaved while down may not attach).
fn configure_peer(
    peer: &VethPeer,
    live: Option<&LiveLink>,
    bridge: Option<&LiveLink>,
    actions: &mut Vec<Action>,
) {
    let dev = || peer.name.clone();
    fix_drift(&peer.netns, &peer.name, peer.mac, peer.mtu, live, actions);
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
    let dev = || spec.name.clone();
    let netns = || spec.netns.clone();
    fix_drift(&spec.netns, &spec.name, spec.mac, spec.mtu, live, actions);
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
    let (parent_netns, parent_name, after) = match parent {
        Parent::Nic(identity) => {
            let found = world
                .host
                .nics()
                .find(|(_, id)| identity.matches(id))
                .map(|(l, _)| l.name.clone());
            match found {
                Some(name) => (Locator::Host, name, None),
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
                .and_then(|i| i.link_by_name(name))
                .is_some();
            match (present, ledger.links.contains_key(&key)) {
                (true, _) => (netns.clone(), name.clone(), None),
                // A guarded parent: re-created first, in the same pass.
                (false, true) => (netns.clone(), name.clone(), Some(key)),
                (false, false) => {
                    return Err((
                        Verdict::Waiting,
                        format!("its parent {name} is not in {netns}"),
                    ))
                }
            }
        }
    };
    let create = match &spec.kind {
        KindSpec::Vlan { id, protocol, .. } => Action::CreateVlan {
            parent_netns,
            parent: parent_name,
            netns: spec.netns.clone(),
            name: spec.name.clone(),
            id: *id,
            protocol: *protocol,
            mac: spec.mac,
            mtu: spec.mtu,
        },
        KindSpec::Macvlan { mode, .. } => Action::CreateMacvlan {
            parent_netns,
            parent: parent_name,
            netns: spec.netns.clone(),
            name: spec.name.clone(),
            mode: *mode,
            mac: spec.mac,
            mtu: spec.mtu,
        },
        KindSpec::Veth { .. } => unreachable!("veths are planned by plan_veth"),
    };
    let mut actions = vec![create];
    configure(spec, inv, None, &mut actions);
    Ok((actions, after, Some(format!("{} is missing", spec.name))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{LiveAddr, LiveRoute};
    use crate::ledger::testutil::sample_content;
    use crate::ledger::NicLocation;

    const C1: u64 = 4026532118;

    fn live(ifindex: u32, name: &str, kind: Option<&str>) -> LiveLink {
        LiveLink {
            ifindex,
            name: name.into(),
            kind: kind.map(str::to_string),
            mac: None,
            perm_mac: None,
            mtu: Some(1500),
            up: true,
            master: None,
            link: None,
            link_netnsid: None,
            vlan: None,
            macvlan_mode: None,
            bus: None,
            bus_kind: None,
        }
    }

    fn nic(ifindex: u32, name: &str, perm: &str) -> LiveLink {
        LiveLink {
            perm_mac: Some(perm.parse().unwrap()),
            bus: Some("0000:00:03.0".into()),
            ..live(ifindex, name, None)
        }
    }

    fn veth_only(content: &mut LedgerContent) {
        content.nics.clear();
        content.links.retain(|_, l| l.spec.kind.name() == "veth");
    }

    fn c1() -> Locator {
        Locator::Path("/run/netns/c1".into())
    }

    /// Host with bridge br0 and the veth's host side vc1 in it; c1 with eth0 configured.
    fn healthy_veth_world() -> World {
        let mut br = live(3, "br0", Some("bridge"));
        br.mac = Some("02:00:00:00:00:aa".parse().unwrap());
        let vc1 = LiveLink {
            master: Some(3),
            link: Some(2),
            mac: Some("02:00:00:00:00:02".parse().unwrap()),
            ..live(10, "vc1", Some("veth"))
        };
        let host = NetnsInventory::new(1, vec![live(1, "lo", None), br, vc1], vec![], vec![]);
        let eth0 = LiveLink {
            link: Some(10),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            ..live(2, "eth0", Some("veth"))
        };
        let addrs = vec![LiveAddr {
            ifindex: 2,
            net: "198.18.0.2/24".parse().unwrap(),
            link_scope: false,
        }];
        let routes = vec![LiveRoute {
            oif: Some(2),
            table: 254,
            by_kernel: false,
            unicast: true,
            route: RouteSpec {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("198.18.0.1".parse().unwrap()),
                onlink: false,
                metric: None,
            },
        }];
        let c1_inv = NetnsInventory::new(C1, vec![live(1, "lo", None), eth0], addrs, routes);
        World {
            host,
            netns: HashMap::from([(c1(), c1_inv)]),
            unreachable: HashMap::new(),
        }
    }

    #[test]
    fn intact_veth_needs_nothing() {
        let mut content = sample_content();
        veth_only(&mut content);
        let plan = super::plan(&content, &healthy_veth_world());
        assert_eq!(plan.items.len(), 1);
        assert_eq!(plan.items[0].verdict, Verdict::Intact, "{plan}");
    }

    #[test]
    fn container_reboot_recreates_the_pair_host_side_up_then_enslaved() {
        let mut content = sample_content();
        veth_only(&mut content);
        let mut world = healthy_veth_world();
        // New netns at the same path: only lo. The pair died with the old one.
        world.netns.insert(
            c1(),
            NetnsInventory::new(C1 + 7, vec![live(1, "lo", None)], vec![], vec![]),
        );
        world.host = NetnsInventory::new(
            1,
            world
                .host
                .links
                .iter()
                .filter(|l| l.name != "vc1")
                .cloned()
                .collect(),
            vec![],
            vec![],
        );
        let plan = super::plan(&content, &world);
        let item = &plan.items[0];
        assert_eq!(item.verdict, Verdict::Repair);
        assert!(
            item.reason.as_deref().unwrap().contains("replaced (inode"),
            "{plan}"
        );
        let text: Vec<String> = item.actions.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "[host] ip link add vc1 address 02:00:00:00:00:02 mtu 1500 type veth peer name eth0 address 02:00:00:00:00:01 mtu 1500 netns /run/netns/c1",
                "[host] ip link set vc1 up",
                "[host] ip link set vc1 master br0",
                "[/run/netns/c1] ip addr add 198.18.0.2/24 dev eth0",
                "[/run/netns/c1] ip link set eth0 up",
                "[/run/netns/c1] ip route add default via 198.18.0.1 dev eth0",
            ]
        );
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains(r#""action":"create-veth""#), "{json}");
    }

    #[test]
    fn stale_host_side_of_a_replaced_netns_is_removed_only_if_provably_ours() {
        let mut content = sample_content();
        veth_only(&mut content);
        let mut world = healthy_veth_world();
        world.netns.insert(
            c1(),
            NetnsInventory::new(C1 + 7, vec![live(1, "lo", None)], vec![], vec![]),
        );
        let plan1 = super::plan(&content, &world);
        assert!(
            matches!(plan1.items[0].actions[0], Action::DeleteStaleVeth { .. }),
            "{plan1}"
        );

        // Same situation but vc1 has another MAC: not ours.
        let links = world
            .host
            .links
            .iter()
            .cloned()
            .map(|mut l| {
                if l.name == "vc1" {
                    l.mac = Some("02:99:00:00:00:02".parse().unwrap());
                }
                l
            })
            .collect();
        world.host = NetnsInventory::new(1, links, vec![], vec![]);
        let plan2 = super::plan(&content, &world);
        assert_eq!(plan2.items[0].verdict, Verdict::Conflict, "{plan2}");
        assert!(plan2.items[0].actions.is_empty());
    }

    #[test]
    fn port_lost_from_its_bridge_is_brought_up_then_enslaved() {
        let mut content = sample_content();
        veth_only(&mut content);
        let mut world = healthy_veth_world();
        let links = world
            .host
            .links
            .iter()
            .cloned()
            .map(|mut l| {
                if l.name == "vc1" {
                    l.master = None;
                    l.up = false;
                }
                l
            })
            .collect();
        world.host = NetnsInventory::new(1, links, vec![], vec![]);
        let plan = super::plan(&content, &world);
        let text: Vec<String> = plan.items[0]
            .actions
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            text,
            vec![
                "[host] ip link set vc1 up",
                "[host] ip link set vc1 master br0"
            ]
        );
    }

    #[test]
    fn missing_netns_or_bridge_waits() {
        let mut content = sample_content();
        veth_only(&mut content);
        let mut world = healthy_veth_world();
        world.netns.clear();
        world
            .unreachable
            .insert(c1(), "No such file or directory".into());
        let plan1 = super::plan(&content, &world);
        assert_eq!(plan1.items[0].verdict, Verdict::Waiting);
        assert!(
            plan1.items[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("No such file"),
            "{plan1}"
        );

        let mut world = healthy_veth_world();
        world.host = NetnsInventory::new(1, vec![live(1, "lo", None)], vec![], vec![]);
        let plan2 = super::plan(&content, &world);
        assert_eq!(plan2.items[0].verdict, Verdict::Waiting, "{plan2}");
        assert!(plan2.items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("bridge br0"));
    }

    #[test]
    fn driver_reload_recreates_vlan_then_macvlan_in_the_living_pod_netns() {
        let mut content = sample_content();
        content.links.retain(|_, l| l.spec.kind.name() != "veth");
        let pod = Locator::Path("/proc/111576/ns/net".into());
        // The NIC is back under a new ifindex; no vlan; the pod netns has only lo.
        let host = NetnsInventory::new(
            1,
            vec![live(1, "lo", None), nic(9, "eth0", "52:54:00:12:34:56")],
            vec![],
            vec![],
        );
        let pod_inv = NetnsInventory::new(4026532300, vec![live(1, "lo", None)], vec![], vec![]);
        let world = World {
            host,
            netns: HashMap::from([(pod.clone(), pod_inv)]),
            unreachable: HashMap::new(),
        };
        let plan = super::plan(&content, &world);
        let vlan = plan
            .items
            .iter()
            .find(|i| matches!(&i.target, Target::Link { kind: "vlan", .. }))
            .unwrap();
        let macvlan = plan
            .items
            .iter()
            .find(|i| {
                matches!(
                    &i.target,
                    Target::Link {
                        kind: "macvlan",
                        ..
                    }
                )
            })
            .unwrap();
        assert_eq!(
            vlan.actions[0].to_string(),
            "[host] ip link add link eth0 name eth0.3 mtu 1500 type vlan id 3 protocol 802.1q"
        );
        assert_eq!(
            macvlan.after,
            Some(LinkKey {
                netns: Locator::Host,
                name: "eth0.3".into()
            })
        );
        let text: Vec<String> = macvlan.actions.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "[host] ip link add link eth0.3 name eth0 address 6e:92:1a:b4:fc:34 netns /proc/111576/ns/net type macvlan mode bridge",
                "[/proc/111576/ns/net] ip addr add 10.161.75.155/22 dev eth0",
                "[/proc/111576/ns/net] ip link set eth0 up",
                "[/proc/111576/ns/net] ip route add default via 10.161.72.1 dev eth0",
            ]
        );

        // Parent NIC not back yet: both wait; nothing is created.
        let world = World {
            host: NetnsInventory::new(1, vec![live(1, "lo", None)], vec![], vec![]),
            netns: world.netns,
            unreachable: HashMap::new(),
        };
        let plan = super::plan(&content, &world);
        let vlan = plan
            .items
            .iter()
            .find(|i| matches!(&i.target, Target::Link { kind: "vlan", .. }))
            .unwrap();
        assert_eq!(vlan.verdict, Verdict::Waiting);
        assert!(
            vlan.reason.as_deref().unwrap().contains("parent NIC"),
            "{plan}"
        );
    }

    #[test]
    fn a_link_recreated_by_someone_else_gets_its_mac_and_mtu_back() {
        let mut content = sample_content();
        veth_only(&mut content);
        let mut world = healthy_veth_world();
        let inv = &world.netns[&c1()];
        let links = inv
            .links
            .iter()
            .cloned()
            .map(|mut l| {
                if l.name == "eth0" {
                    l.mac = Some("02:77:00:00:00:01".parse().unwrap());
                    l.mtu = Some(1400);
                }
                l
            })
            .collect();
        let fixed =
            NetnsInventory::new(inv.inode, links, inv.addresses.clone(), inv.routes.clone());
        world.netns.insert(c1(), fixed);
        let plan = super::plan(&content, &world);
        let text: Vec<String> = plan.items[0]
            .actions
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            text,
            vec![
                "[/run/netns/c1] ip link set eth0 address 02:00:00:00:00:01",
                "[/run/netns/c1] ip link set eth0 mtu 1500"
            ]
        );
    }

    fn nic_only(content: &mut LedgerContent) {
        content.links.clear();
        content.nics[0].location = Some(NicLocation {
            netns: crate::event::Netns {
                inode: 1,
                names: vec![],
            },
            name: "eth2".into(),
            ifindex: Some(4),
        });
    }

    #[test]
    fn refunded_nic_goes_home_down_rename_up() {
        let mut content = sample_content();
        nic_only(&mut content);
        let mut dev4 = nic(4, "dev4", "52:54:00:12:34:56");
        dev4.up = false;
        let host = NetnsInventory::new(1, vec![live(1, "lo", None), dev4], vec![], vec![]);
        let plan = super::plan(
            &content,
            &World {
                host,
                ..World::default()
            },
        );
        let text: Vec<String> = plan.items[0]
            .actions
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            text,
            vec![
                "[host] ip link set dev4 name eth2",
                "[host] ip link set eth2 up"
            ]
        );
    }

    #[test]
    fn home_name_held_by_another_device_is_a_conflict_with_no_action() {
        let mut content = sample_content();
        nic_only(&mut content);
        let host = NetnsInventory::new(
            1,
            vec![
                nic(4, "dev4", "52:54:00:12:34:56"),
                live(5, "eth2", Some("veth")),
            ],
            vec![],
            vec![],
        );
        let plan = super::plan(
            &content,
            &World {
                host,
                ..World::default()
            },
        );
        assert_eq!(plan.items[0].verdict, Verdict::Conflict);
        assert!(plan.items[0].actions.is_empty());
        assert!(
            plan.items[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("held by another device"),
            "{plan}"
        );
        // A lent NIC that is not in the host netns is not lost.
        content.nics[0].state = NicState::Lent;
        let plan = super::plan(&content, &World::default());
        assert_eq!(plan.items[0].verdict, Verdict::Lent);
    }
}
