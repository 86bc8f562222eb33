//! What netguard remembers: guarded physical NICs (by hardware identity) and guarded virtual
//! links with everything needed to rebuild them. Plain data, serialised as-is into the ledger
//! document and the journal.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Netns;

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A MAC from kernel bytes; `None` unless six bytes, not all zero.
    pub fn from_bytes(bytes: &[u8]) -> Option<Mac> {
        let arr: [u8; 6] = bytes.try_into().ok()?;
        (arr != [0; 6]).then_some(Mac(arr))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        if parts.next().is_some() {
            return Err(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        Ok(Mac(out))
    }
}

/// Serde as the text form, for every type here that has `Display` + `FromStr`.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_text!(Mac);
serde_as_text!(IpNet);

/// An address with its prefix length, `198.18.0.2/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpNet, String> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is too long for {addr}"));
        }
        Ok(IpNet { addr, prefix })
    }

    /// The same prefix with the host bits cleared (`198.18.0.2/24` -> `198.18.0.0/24`).
    pub fn network(&self) -> IpNet {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        IpNet {
            addr,
            prefix: self.prefix,
        }
    }

    pub fn is_default(&self) -> bool {
        self.prefix == 0
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// `A/N`, or a bare address as a host prefix (/32, /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an IP address with prefix"))?;
        let prefix = match prefix {
            Some(p) => p
                .parse()
                .map_err(|_| format!("'{s}' has a bad prefix length"))?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix)
    }
}

/// A route through a guarded link (main table).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination prefix (network address); `0.0.0.0/0` is the default route.
    pub dst: IpNet,
    /// Next hop; `None` for an on-link (subnet) route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The gateway is on-link even outside every address's subnet (RTNH_F_ONLINK).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub onlink: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dst.is_default() {
            f.write_str("default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        Ok(())
    }
}

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

/// Where a guarded NIC stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicState {
    /// In the host netns under its home name.
    Home,
    /// Moved into another netns (lent to a container).
    Lent,
    /// Back in the host netns under another name (the kernel's `devN`).
    Refunded,
    /// Not seen anywhere we can look.
    Lost,
    /// A rename home is under way.
    Restoring,
    /// Renamed home by netguard.
    Restored,
    /// Another device holds the home name: nothing renamed, retried later.
    Conflict,
}

/// How a guarded virtual link stands after the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkState {
    /// As recorded.
    Intact,
    /// Seen gone or broken; not yet repaired.
    Missing,
    /// Being repaired.
    Restoring,
    /// Repaired by netguard and verified.
    Restored,
    /// Cannot be repaired yet (netns or parent absent); retried later.
    Waiting,
    /// A device netguard does not own is in the way; nothing touched, retried later.
    Conflict,
    /// The kernel refused a repair step.
    Failed,
}

macro_rules! kebab_display {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // serde's kebab-case name is the one word users see everywhere.
                match serde_json::to_value(self) {
                    Ok(serde_json::Value::String(s)) => f.write_str(&s),
                    _ => write!(f, "{self:?}"),
                }
            }
        }
    };
}

kebab_display!(NicState);
kebab_display!(LinkState);
kebab_display!(MacvlanMode);
kebab_display!(VlanProtocol);

/// Where a NIC is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicLocation {
    pub netns: Netns,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
}

/// A guarded physical NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicRecord {
    pub identity: NicIdentity,
    /// Its name in the host netns, recorded when it leaves or at first sight.
    pub home_name: String,
    /// Admin state at home, restored after a rename home.
    pub up: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<NicLocation>,
    pub state: NicState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
    /// Set while lent with `netguard lend`: where to, under which name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lent: Option<Lend>,
}

/// A NIC lent to a container netns by `netguard lend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lend {
    pub netns: Locator,
    pub name: String,
    /// Lend it again when the container's netns is re-created at the same locator.
    pub persistent: bool,
}

impl NicRecord {
    /// A NIC guarded from now on: home if it carries its home name, else refunded.
    pub fn new(
        identity: NicIdentity,
        home_name: &str,
        up: bool,
        location: Option<NicLocation>,
    ) -> NicRecord {
        let state = match &location {
            Some(loc) if loc.name != home_name => NicState::Refunded,
            _ => NicState::Home,
        };
        NicRecord {
            identity,
            home_name: home_name.to_string(),
            up,
            location,
            state,
            reason: None,
            since: Utc::now(),
            lent: None,
        }
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

/// A guarded link and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub spec: LinkSpec,
    pub state: LinkState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: DateTime<Utc>,
}

/// Everything the ledger holds; `journal_seq` is the last journal entry folded in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerContent {
    #[serde(default)]
    pub journal_seq: u64,
    #[serde(default)]
    pub nics: Vec<NicRecord>,
    #[serde(default, with = "links_as_list")]
    pub links: BTreeMap<LinkKey, LinkRecord>,
}

/// Links are keyed in memory, listed on disk (JSON object keys must be strings).
mod links_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{LinkKey, LinkRecord};

    pub fn serialize<S: Serializer>(
        links: &BTreeMap<LinkKey, LinkRecord>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(links.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<LinkKey, LinkRecord>, D::Error> {
        let list = Vec::<LinkRecord>::deserialize(d)?;
        Ok(list.into_iter().map(|r| (r.spec.key(), r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_and_prefix_text_forms_round_trip() {
        let mac: Mac = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd:0f:11".parse::<Mac>().is_err());
        assert_eq!(Mac::from_bytes(&[0; 6]), None);

        let net: IpNet = "198.18.3.7/24".parse().unwrap();
        assert_eq!(net.network().to_string(), "198.18.3.0/24");
        assert_eq!("10.0.0.1".parse::<IpNet>().unwrap().prefix, 32);
        assert_eq!(
            "fd00::1/64".parse::<IpNet>().unwrap().network().to_string(),
            "fd00::/64"
        );
        assert!("10.0.0.1/33".parse::<IpNet>().is_err());
        assert_eq!(
            "0.0.0.0/0".parse::<IpNet>().unwrap().network().to_string(),
            "0.0.0.0/0"
        );
    }

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
        assert_eq!(LinkState::Waiting.to_string(), "waiting");
        assert_eq!(VlanProtocol::Dot1ad.to_string(), "802.1ad");
    }
}
