//! Desired (ledger) vs actual (inventory) -> a [`Plan`] of typed actions. Pure: no kernel
//! access, so every case is unit-tested on made-up inventories.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::inventory::{LiveLink, NetnsInventory};
use crate::ledger::{LedgerContent, LinkKey, Locator, NicIdentity, NicRecord, NicState};
use crate::model::DeviceIdentity;
use crate::restore::action::{Action, Dev};
use link::plan_link;

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
    /// An operator's lend or reclaim: the actions move the NIC.
    Move,
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
    // Every action names the NIC by the identity on record and the ifindex seen now.
    let identity = DeviceIdentity::Nic(nic.identity.clone());
    let here = Dev::live(live, identity.clone());
    // The kernel refuses to rename a running device (EBUSY).
    if live.up {
        item.actions.push(Action::SetDown {
            netns: Locator::Host,
            dev: here.clone(),
        });
    }
    item.actions.push(Action::Rename {
        netns: Locator::Host,
        dev: here,
        to: nic.home_name.clone(),
    });
    if live.up || nic.up {
        item.actions.push(Action::SetUp {
            netns: Locator::Host,
            dev: Dev {
                name: nic.home_name.clone(),
                ifindex: Some(live.ifindex),
                identity,
            },
        });
    }
    item
}

mod link;
#[cfg(test)]
mod tests;
