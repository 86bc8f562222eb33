//! Where a device lives and what it is: netns locators, NIC identities, and the specs of
//! the virtual links netguard rebuilds.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{IpNet, Mac, RouteSpec};

/// Where a netns is found: the host's own (init_net, or the `--host-netns` stand-in), or a
/// path that opens it: a bind mount (`/run/netns/NAME`, `/var/run/netns/cni-*`,
/// `/var/run/docker/netns/*`) or `/proc/PID/ns/net`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Locator {
    Host,
    Path(PathBuf),
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locator::Host => f.write_str("host"),
            Locator::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What identifies a physical NIC across renames, moves and driver reloads: never the current
/// MAC or the ifindex alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NicIdentity {
    /// IFLA_PERM_ADDRESS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perm_mac: Option<Mac>,
    /// Bus address: basename of `/sys/class/net/IF/device` (e.g. `0000:03:00.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// Basename of `/sys/class/net/IF/device/driver` (e.g. `i40e`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// What makes a device the one an action or a record is about: a name is only a label that
/// anyone can give to another device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeviceIdentity {
    /// A NIC: permanent MAC and bus address (and driver), as the ledger records it.
    Nic(NicIdentity),
    /// A virtual link: its kind and, when known, its MAC.
    Virtual { kind: String, mac: Option<Mac> },
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceIdentity::Nic(id) => write!(f, "NIC {id}"),
            DeviceIdentity::Virtual { kind, mac: Some(m) } => write!(f, "{kind} MAC {m}"),
            DeviceIdentity::Virtual { kind, mac: None } => write!(f, "{kind}"),
        }
    }
}

impl NicIdentity {
    /// Whether a device seen live (`live`) is this NIC: the permanent MAC must match when we
    /// know it, bus and driver must match when both sides know them, and at least one of
    /// permanent MAC or bus must have been compared.
    pub fn matches(&self, live: &NicIdentity) -> bool {
        fn agree<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> Option<bool> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a == b),
                _ => None,
            }
        }
        let perm = match (&self.perm_mac, &live.perm_mac) {
            (Some(a), Some(b)) => Some(a == b),
            (Some(_), None) => Some(false),
            _ => None,
        };
        let bus = agree(&self.bus, &live.bus);
        let driver = agree(&self.driver, &live.driver);
        perm != Some(false)
            && bus != Some(false)
            && driver != Some(false)
            && (perm == Some(true) || bus == Some(true))
    }
}

impl fmt::Display for NicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = &self.perm_mac {
            parts.push(format!("permaddr {m}"));
        }
        if let Some(b) = &self.bus {
            parts.push(format!("bus {b}"));
        }
        if let Some(d) = &self.driver {
            parts.push(format!("driver {d}"));
        }
        if parts.is_empty() {
            return f.write_str("(no identity)");
        }
        f.write_str(&parts.join(" "))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum VlanProtocol {
    #[default]
    #[serde(rename = "802.1q")]
    Dot1q,
    #[serde(rename = "802.1ad")]
    Dot1ad,
}

/// The device a vlan or macvlan sits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parent {
    /// A physical NIC, wherever its name or ifindex went.
    Nic(NicIdentity),
    /// A link by name in a netns: a guarded vlan (re-created first) or any other device
    /// (waited for).
    Link { netns: Locator, name: String },
}

impl fmt::Display for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Parent::Nic(id) => write!(f, "NIC {id}"),
            Parent::Link { netns, name } => write!(f, "{name} in {netns}"),
        }
    }
}

/// The far end of a veth pair (normally the host side, on a bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VethPeer {
    pub name: String,
    pub netns: Locator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub up: bool,
    /// Bridge the peer is a port of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum KindSpec {
    Veth {
        peer: VethPeer,
    },
    Vlan {
        parent: Parent,
        id: u16,
        #[serde(default)]
        protocol: VlanProtocol,
    },
    Macvlan {
        parent: Parent,
        mode: MacvlanMode,
    },
}

impl KindSpec {
    pub fn name(&self) -> &'static str {
        match self {
            KindSpec::Veth { .. } => "veth",
            KindSpec::Vlan { .. } => "vlan",
            KindSpec::Macvlan { .. } => "macvlan",
        }
    }

    pub fn parent(&self) -> Option<&Parent> {
        match self {
            KindSpec::Veth { .. } => None,
            KindSpec::Vlan { parent, .. } | KindSpec::Macvlan { parent, .. } => Some(parent),
        }
    }
}

/// Everything needed to rebuild one guarded link exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSpec {
    pub name: String,
    pub netns: Locator,
    /// nsfs inode of the netns at `netns` when last seen; a different one now means the
    /// namespace was replaced (container reboot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    pub up: bool,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(flatten)]
    pub kind: KindSpec,
}

impl LinkSpec {
    pub fn key(&self) -> LinkKey {
        LinkKey {
            netns: self.netns.clone(),
            name: self.name.clone(),
        }
    }
}

/// A guarded link is found by its netns and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinkKey {
    pub netns: Locator,
    pub name: String,
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.name, self.netns)
    }
}

crate::model::kebab_display!(MacvlanMode);
crate::model::kebab_display!(VlanProtocol);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_identity_needs_a_strong_key_and_no_disagreement() {
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let rec = NicIdentity {
            perm_mac: Some(mac),
            bus: Some("0000:00:03.0".into()),
            driver: Some("e1000".into()),
        };
        // Driver reload: same NIC, nothing else known yet.
        assert!(rec.matches(&NicIdentity {
            perm_mac: Some(mac),
            bus: None,
            driver: None
        }));
        // Same slot, other card.
        let other: Mac = "52:54:00:00:00:02".parse().unwrap();
        assert!(!rec.matches(&NicIdentity {
            perm_mac: Some(other),
            bus: Some("0000:00:03.0".into()),
            driver: None
        }));
        // Same permaddr, other driver: not the same device.
        assert!(!rec.matches(&NicIdentity {
            perm_mac: Some(mac),
            bus: None,
            driver: Some("igb".into())
        }));
        // Bus only is enough when we never knew a permaddr.
        let by_bus = NicIdentity {
            perm_mac: None,
            bus: Some("0000:00:04.0".into()),
            driver: None,
        };
        assert!(by_bus.matches(&NicIdentity {
            perm_mac: Some(mac),
            bus: Some("0000:00:04.0".into()),
            driver: None
        }));
        // Driver alone identifies nothing.
        let weak = NicIdentity {
            perm_mac: None,
            bus: None,
            driver: Some("e1000".into()),
        };
        assert!(!weak.matches(&NicIdentity {
            perm_mac: None,
            bus: None,
            driver: Some("e1000".into())
        }));
    }

    #[test]
    fn link_spec_json_is_flat_and_round_trips() {
        let spec = LinkSpec {
            name: "eth0".into(),
            netns: Locator::Path("/run/netns/c1".into()),
            netns_inode: Some(4026532118),
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            mtu: Some(1500),
            up: true,
            addresses: vec!["198.18.0.2/24".parse().unwrap()],
            routes: vec![RouteSpec {
                dst: "0.0.0.0/0".parse().unwrap(),
                gateway: Some("198.18.0.1".parse().unwrap()),
                onlink: false,
                metric: None,
            }],
            kind: KindSpec::Veth {
                peer: VethPeer {
                    name: "veth-c1".into(),
                    netns: Locator::Host,
                    mac: None,
                    mtu: Some(1500),
                    up: true,
                    master: Some("br0".into()),
                },
            },
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""type":"veth""#), "{text}");
        assert!(
            text.contains(r#""netns":{"path":"/run/netns/c1"}"#),
            "{text}"
        );
        assert!(text.contains(r#""addresses":["198.18.0.2/24"]"#), "{text}");
        let back: LinkSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, spec);
        assert_eq!(spec.routes[0].to_string(), "default via 198.18.0.1");
        assert_eq!(serde_json::to_string(&Locator::Host).unwrap(), r#""host""#);
        assert_eq!(VlanProtocol::Dot1ad.to_string(), "802.1ad");
    }
}
