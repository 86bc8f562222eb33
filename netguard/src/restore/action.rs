//! The typed kernel changes a plan is made of, each printable as the `ip` command that
//! would do the same.

use std::fmt;

use serde::Serialize;

use crate::inventory::LiveLink;
use crate::ledger::Flight;
use crate::model::{DeviceIdentity, IpNet, Locator, Mac, MacvlanMode, RouteSpec, VlanProtocol};

/// A live device as a log line or error names it: name, ifindex, identity.
pub fn describe(link: &LiveLink) -> String {
    format!(
        "{} (ifindex {}, {})",
        link.name,
        link.ifindex,
        link.identity()
    )
}

/// The device an action changes, by identity: `apply` checks it on a fresh read right before
/// the change and skips the action (conflict) if another device is found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dev {
    /// Its name where the action runs (the label `ip` would use).
    pub name: String,
    /// Its ifindex there when the plan saw it; `None` for a device that an earlier action of
    /// the same item creates or moves, which `apply` then knows from its own read-back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    pub identity: DeviceIdentity,
}

impl Dev {
    /// A device the plan saw live.
    pub fn live(live: &LiveLink, identity: DeviceIdentity) -> Dev {
        Dev {
            name: live.name.clone(),
            ifindex: Some(live.ifindex),
            identity,
        }
    }

    /// A device an earlier action of the same item brings about under `name`.
    pub fn expected(name: &str, identity: DeviceIdentity) -> Dev {
        Dev {
            name: name.to_string(),
            ifindex: None,
            identity,
        }
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// One kernel change, on one device in one netns. An existing device is named by identity
/// ([`Dev`]); a device to create by the name it will have.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    SetUp {
        netns: Locator,
        dev: Dev,
    },
    SetDown {
        netns: Locator,
        dev: Dev,
    },
    Rename {
        netns: Locator,
        dev: Dev,
        to: String,
    },
    SetMaster {
        netns: Locator,
        dev: Dev,
        master: String,
    },
    SetMac {
        netns: Locator,
        dev: Dev,
        mac: Mac,
    },
    SetMtu {
        netns: Locator,
        dev: Dev,
        mtu: u32,
    },
    /// `dev` moved into `to_netns` under `name`: a name nobody there uses, as the device's
    /// own may be taken there until it arrives (lend, reclaim).
    MoveTo {
        netns: Locator,
        dev: Dev,
        to_netns: Locator,
        name: String,
    },
    /// A veth pair whose host side's peer died with a replaced netns (the kernel would remove
    /// it once the old netns is freed); removed so the pair can be re-created. Only a veth
    /// whose MAC netguard knows is ever deleted: `dev`'s identity carries it.
    DeleteStaleVeth {
        netns: Locator,
        dev: Dev,
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
        parent: Dev,
        netns: Locator,
        name: String,
        id: u16,
        protocol: VlanProtocol,
        mac: Option<Mac>,
        mtu: Option<u32>,
        /// Its name in the parent's netns until it moves into `netns`, when that is another.
        temp: Option<String>,
    },
    /// A macvlan on `parent` (in `parent_netns`), created directly in `netns`.
    CreateMacvlan {
        parent_netns: Locator,
        parent: Dev,
        netns: Locator,
        name: String,
        mode: MacvlanMode,
        mac: Option<Mac>,
        mtu: Option<u32>,
        /// Its name in the parent's netns until it moves into `netns`, when that is another.
        temp: Option<String>,
    },
    /// A device netguard created under a temporary name and never finished: removed.
    DeleteOurs {
        netns: Locator,
        dev: Dev,
    },
    AddAddress {
        netns: Locator,
        dev: Dev,
        addr: IpNet,
    },
    AddRoute {
        netns: Locator,
        dev: Dev,
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
            | Action::MoveTo { netns, .. }
            | Action::DeleteStaleVeth { netns, .. }
            | Action::DeleteOurs { netns, .. }
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
            | Action::MoveTo { dev, .. }
            | Action::DeleteStaleVeth { dev, .. }
            | Action::DeleteOurs { dev, .. }
            | Action::AddAddress { dev, .. }
            | Action::AddRoute { dev, .. } => &dev.name,
            Action::CreateVeth { name, .. }
            | Action::CreateVlan { name, .. }
            | Action::CreateMacvlan { name, .. } => name,
        }
    }
}

impl Action {
    /// The device this action gives a temporary name, to be in the ledger before it does.
    pub fn flight(&self) -> Option<Flight> {
        let (parent_netns, temp, kind, mac) = match self {
            Action::CreateVlan {
                parent_netns,
                temp,
                mac,
                ..
            } => (parent_netns, temp, "vlan", mac),
            Action::CreateMacvlan {
                parent_netns,
                temp,
                mac,
                ..
            } => (parent_netns, temp, "macvlan", mac),
            _ => return None,
        };
        Some(Flight {
            netns: parent_netns.clone(),
            name: temp.clone()?,
            identity: DeviceIdentity::Virtual {
                kind: kind.into(),
                mac: *mac,
            },
            from: None,
        })
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
            Action::MoveTo {
                dev,
                to_netns,
                name,
                ..
            } => write!(f, "ip link set {dev} netns {to_netns} name {name}"),
            Action::DeleteStaleVeth { dev, .. } => write!(
                f,
                "ip link del {dev} (stale veth: its peer's netns was replaced)"
            ),
            Action::DeleteOurs { dev, .. } => {
                write!(f, "ip link del {dev} (left under a temporary name)")
            }
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
                ..
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
                ..
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NicIdentity;

    #[test]
    fn a_move_reads_like_ip_link_set_netns() {
        let moving = Action::MoveTo {
            netns: Locator::Host,
            dev: Dev::expected(
                "eth2",
                DeviceIdentity::Nic(NicIdentity {
                    perm_mac: None,
                    bus: Some("0000:00:05.0".into()),
                    driver: None,
                }),
            ),
            to_netns: Locator::Path("/run/netns/c1".into()),
            name: "ngtmp1.0".into(),
        };
        assert_eq!(
            moving.to_string(),
            "[host] ip link set eth2 netns /run/netns/c1 name ngtmp1.0"
        );
        assert_eq!(moving.device(), "eth2");
    }
}
