//! The one vocabulary every tracer backend speaks: what happened to which device, where, why, by whom.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A device left one netns for another (`from` -> `to`).
    Move,
    /// A netns started handing back / destroying its devices (`from.netns`).
    TeardownBegin,
    /// That netns teardown finished.
    TeardownEnd,
    /// A device changed its name inside one netns.
    Rename,
    /// A device was created (`to`).
    Register,
    /// A device was destroyed (`from`).
    Unregister,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Move => "move",
            EventKind::TeardownBegin => "teardown-begin",
            EventKind::TeardownEnd => "teardown-end",
            EventKind::Rename => "rename",
            EventKind::Register => "register",
            EventKind::Unregister => "unregister",
        }
    }
}

/// Why it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Somebody asked for it (`ip link set ... netns`, a rename, a delete).
    Explicit,
    /// The kernel did it because a netns was being destroyed.
    NetnsTeardown,
    /// A vlan/macvlan/ipvlan went because its lower device did (`parent` names it).
    ParentGone,
    /// A NIC went because its driver let go of its bus device: module unload, `unbind` in
    /// sysfs, hot removal (`driver` and `bus_addr` name them).
    DriverUnbind,
    /// A NIC came because a driver bound its bus device (`driver`, `bus_addr`).
    DriverBind,
    /// The backend cannot tell (`why` says why).
    Unknown,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Explicit => "explicit",
            Cause::NetnsTeardown => "netns-teardown",
            Cause::ParentGone => "parent-gone",
            Cause::DriverUnbind => "driver-unbind",
            Cause::DriverBind => "driver-bind",
            Cause::Unknown => "unknown",
        }
    }
}

/// Stable identity of one kernel `net_device` across renames and moves: a keyed hash of its
/// address, never the raw pointer. Only meaningful within one tracer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceKey(#[serde(with = "hex_u64")] pub u64);

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

/// A network namespace: its nsfs inode, plus the names it can be found by
/// (`init_net`, `/run/netns/c1`, `/proc/123/ns/net`, ...), as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netns {
    pub inode: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// The pseudo-name the namespace resolver gives the host's own netns.
pub const INIT_NET: &str = "init_net";

impl Netns {
    pub fn is_init(&self) -> bool {
        self.names.iter().any(|n| n == INIT_NET)
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_init() {
            return f.write_str(INIT_NET);
        }
        write!(f, "{}", self.inode)?;
        if let Some(first) = self.names.first() {
            write!(f, " ({first})")?;
        }
        Ok(())
    }
}

/// Where a device was (or is): its name and ifindex inside one netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    pub netns: Netns,
}

/// Who made it happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.comm, self.tgid)
    }
}

/// The lower device whose going took an upper one with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// The parent's own device key, so a report can hang this event under the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKey>,
}

impl fmt::Display for Parent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name.as_deref().unwrap_or("?"))?;
        if let Some(ifindex) = self.ifindex {
            write!(f, " ifindex {ifindex}")?;
        }
        Ok(())
    }
}

/// One observed transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub cause: Cause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceKey>,
    /// `rtnl_link_ops->kind` (veth, macvlan, vlan, ...); absent for physical NICs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_kind: Option<String>,
    /// Permanent hardware address (IFLA_PERM_ADDRESS / `dev->perm_addr`), when the device has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perm_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Place>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Place>,
    /// For unregister: whether the device's netns was being destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_dying: Option<bool>,
    /// The kernel's return code where the probe saw one (0, or a negative errno).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Actor>,
    /// For parent-gone: the lower device that went first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// The bus device a NIC sits on, as the kernel names it (`0000:00:04.0` on PCI): the same
    /// card keeps it across a driver reload, when its ifindex and device key change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus_addr: Option<String>,
    /// The driver of that bus device (`e1000`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// For cause unknown: why the backend cannot tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Event {
    /// A new event of `kind` stamped now; the backend fills in the rest.
    pub fn new(kind: EventKind, cause: Cause) -> Self {
        Event {
            time: Utc::now(),
            kind,
            cause,
            device: None,
            link_kind: None,
            perm_addr: None,
            from: None,
            to: None,
            netns_dying: None,
            result: None,
            by: None,
            parent: None,
            bus_addr: None,
            driver: None,
            why: None,
        }
    }

    /// The cause with what it names: `parent-gone (parent eth1 ifindex 3)`,
    /// `driver-unbind (driver e1000, bus 0000:00:04.0)`, `unknown (why)`.
    pub fn cause_text(&self) -> String {
        let cause = self.cause.as_str();
        match self.cause {
            Cause::ParentGone => match &self.parent {
                Some(parent) => format!("{cause} (parent {parent})"),
                None => cause.to_string(),
            },
            Cause::DriverUnbind | Cause::DriverBind => {
                let driver = self.driver.as_deref().unwrap_or("?");
                match &self.bus_addr {
                    Some(bus) => format!("{cause} (driver {driver}, bus {bus})"),
                    None => format!("{cause} (driver {driver})"),
                }
            }
            Cause::Unknown => match &self.why {
                Some(why) => format!("{cause} ({why})"),
                None => cause.to_string(),
            },
            Cause::Explicit | Cause::NetnsTeardown => cause.to_string(),
        }
    }

    /// The name the device carries after the event, else before it.
    pub fn current_name(&self) -> Option<&str> {
        self.to
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .or_else(|| self.from.as_ref().and_then(|p| p.name.as_deref()))
    }
}

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`; `None` for an empty or all-zero one.
pub fn format_mac(bytes: &[u8]) -> Option<String> {
    if bytes.iter().all(|b| *b == 0) {
        return None;
    }
    Some(
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut ev = Event::new(EventKind::Move, Cause::NetnsTeardown);
        ev.device = Some(DeviceKey(0xdead_beef));
        ev.from = Some(Place {
            name: Some("eth0".into()),
            ifindex: Some(3),
            netns: Netns {
                inode: 4026532118,
                names: vec!["/run/netns/c1".into()],
            },
        });
        ev.to = Some(Place {
            name: Some("dev3".into()),
            ifindex: Some(3),
            netns: Netns {
                inode: 4026531840,
                names: vec![INIT_NET.into()],
            },
        });
        ev.by = Some(Actor {
            pid: 57,
            tgid: 57,
            comm: "kworker/u4:1".into(),
        });
        ev.parent = Some(Parent {
            name: Some("eth1".into()),
            ifindex: Some(3),
            device: Some(DeviceKey(7)),
        });
        ev.bus_addr = Some("0000:00:04.0".into());
        ev.driver = Some("e1000".into());
        ev.why = Some("test".into());
        let line = serde_json::to_string(&ev).unwrap();
        assert!(line.contains(r#""kind":"move""#), "{line}");
        assert!(line.contains(r#""cause":"netns-teardown""#), "{line}");
        assert!(line.contains(r#""device":"00000000deadbeef""#), "{line}");
        assert!(
            line.contains(r#""parent":{"name":"eth1","ifindex":3,"#),
            "{line}"
        );
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn causes_are_kebab_case_everywhere() {
        for (cause, text) in [
            (Cause::ParentGone, "parent-gone"),
            (Cause::DriverUnbind, "driver-unbind"),
            (Cause::DriverBind, "driver-bind"),
        ] {
            assert_eq!(cause.as_str(), text);
            assert_eq!(
                serde_json::to_string(&cause).unwrap(),
                format!("\"{text}\"")
            );
        }
    }

    #[test]
    fn cause_text_names_parent_driver_and_why() {
        let mut ev = Event::new(EventKind::Unregister, Cause::ParentGone);
        ev.parent = Some(Parent {
            name: Some("eth1".into()),
            ifindex: Some(3),
            device: None,
        });
        assert_eq!(ev.cause_text(), "parent-gone (parent eth1 ifindex 3)");
        ev.cause = Cause::DriverUnbind;
        ev.driver = Some("e1000".into());
        ev.bus_addr = Some("0000:00:04.0".into());
        assert_eq!(
            ev.cause_text(),
            "driver-unbind (driver e1000, bus 0000:00:04.0)"
        );
        let mut ev = Event::new(EventKind::Register, Cause::Unknown);
        ev.why = Some("seen in a re-read".into());
        assert_eq!(ev.cause_text(), "unknown (seen in a re-read)");
    }

    #[test]
    fn netns_display_names_init_net_and_paths() {
        let init = Netns {
            inode: 1,
            names: vec![INIT_NET.into()],
        };
        assert_eq!(init.to_string(), "init_net");
        let c1 = Netns {
            inode: 4026532118,
            names: vec!["/run/netns/c1".into()],
        };
        assert_eq!(c1.to_string(), "4026532118 (/run/netns/c1)");
        let anon = Netns {
            inode: 7,
            names: vec![],
        };
        assert_eq!(anon.to_string(), "7");
    }

    #[test]
    fn mac_formatting_skips_zero_addresses() {
        assert_eq!(format_mac(&[0; 6]), None);
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]).as_deref(),
            Some("52:54:00:12:34:56")
        );
    }
}
