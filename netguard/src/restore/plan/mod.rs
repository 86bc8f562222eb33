//! Desired (ledger) vs actual (inventory) -> a [`Plan`] of typed actions. Pure: no kernel
//! access, so every case is unit-tested on made-up inventories.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::inventory::{LiveLink, NetnsInventory};
use crate::ledger::{
    LedgerContent, LinkKey, LinkRecord, LinkState, Locator, NicIdentity, NicRecord, NicState,
};
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
    /// A NIC at home under a name netguard did not see it take, that it did not see leave:
    /// renamed by someone else; that name becomes its home name, nothing is changed.
    Adopt,
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

    /// Whether every item an item waits for is in the plan.
    pub fn is_whole(&self) -> bool {
        let keys: HashSet<&LinkKey> = self
            .items
            .iter()
            .filter_map(|i| match &i.target {
                Target::Link { key, .. } => Some(key),
                Target::Nic { .. } => None,
            })
            .collect();
        self.items
            .iter()
            .filter_map(|i| i.after.as_ref())
            .all(|after| keys.contains(after))
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
    plan_where(ledger, world, |_| true)
}

/// Compares every guarded NIC, and the guarded links `include` accepts, with the kernel's
/// view.
pub fn plan_where(
    ledger: &LedgerContent,
    world: &World,
    include: impl Fn(&LinkRecord) -> bool,
) -> Plan {
    let mut items: Vec<Item> = ledger
        .nics
        .iter()
        .map(|n| plan_nic(n, &world.host))
        .collect();
    let links: Vec<Item> = ledger
        .links
        .values()
        // A stopped container's links wait for its next start (its createRuntime hook); a
        // released one is never re-created.
        .filter(|r| !matches!(r.state, LinkState::Dormant | LinkState::Released) && include(r))
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
        .filter(|l| !l.may_pass_for_its_nic() && nic.identity.matches(&l.nic_identity()))
        .collect();
    let live = match found.as_slice() {
        // Lent by netguard counts even before the lend recorded where the NIC went (an agent
        // killed in between).
        [] if nic.state == NicState::Lent || nic.lent.is_some() => {
            return Item::new(target, Verdict::Lent, None)
        }
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
        // Home under its name but down, though it was up at home and is on record as away:
        // a repair stopped after the rename (an agent killed there) is finished.
        if nic.up == Some(true) && !live.up && seen_away(nic) {
            let why = format!("home as {} but down, as a repair left it", live.name);
            let mut item = Item::new(target, Verdict::Repair, why);
            item.actions.push(Action::SetUp {
                netns: Locator::Host,
                dev: Dev::live(live, DeviceIdentity::Nic(nic.identity.clone())),
            });
            return item;
        }
        return Item::new(target, Verdict::Intact, None);
    }
    if let Some(why) = came_back(nic, live) {
        return repair_nic(target, nic, live, host, why);
    }
    let why = format!(
        "at home as {} and netguard did not see it leave: renamed by someone else, adopted",
        live.name
    );
    Item::new(target, Verdict::Adopt, why)
}

/// Why a NIC found at home under another name is known to have been away (so the name is the
/// kernel's, not someone's choice), or `None`: netguard saw it leave (any state but at home)
/// or holds a lend for it; the name is the kernel's fallback `devN`; or its ifindex changed,
/// which only a re-registration does (a driver unbind and bind: identity matched on permanent
/// MAC and bus address).
fn came_back(nic: &NicRecord, live: &LiveLink) -> Option<String> {
    if nic.lent.is_some() {
        return Some(format!("lent with netguard, back as {}", live.name));
    }
    if seen_away(nic) {
        return Some(format!(
            "{} when last seen, back as {}",
            nic.state, live.name
        ));
    }
    if is_fallback_name(&live.name) {
        return Some(format!("came back as {}", live.name));
    }
    let was = nic.location.as_ref().and_then(|l| l.ifindex);
    match was {
        Some(was) if was != live.ifindex => Some(format!(
            "re-registered (ifindex {was} -> {}) as {}",
            live.ifindex, live.name
        )),
        _ => None,
    }
}

/// Whether the ledger last saw the NIC away from home (lent, refunded, lost, being restored).
fn seen_away(nic: &NicRecord) -> bool {
    !matches!(nic.state, NicState::Home | NicState::Restored)
}

/// The name the kernel gives a device whose name is taken where it arrives: `dev` + digits.
fn is_fallback_name(name: &str) -> bool {
    name.strip_prefix("dev")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Renames a NIC that came back home: down if it must be (the kernel refuses to rename a
/// running device), renamed, then in the admin state recorded at home, or, never seen at
/// home, as the kernel gave it back. A running device that carries addresses or routes is
/// never set down by a pass.
fn repair_nic(
    target: Target,
    nic: &NicRecord,
    live: &LiveLink,
    host: &NetnsInventory,
    why: String,
) -> Item {
    if let Some(holder) = host.link_by_name(&nic.home_name) {
        let why = format!(
            "it is {} now; its home name {} is held by another device (ifindex {}): nothing renamed, retried later",
            live.name, nic.home_name, holder.ifindex
        );
        return Item::new(target, Verdict::Conflict, why);
    }
    let busy = host.addresses_of(live.ifindex).next().is_some()
        || host.routes_of(live.ifindex).next().is_some();
    if live.up && busy {
        let why = format!(
            "{why}; it is up and carries addresses or routes: not set down to rename it home to {}",
            nic.home_name
        );
        return Item::new(target, Verdict::Conflict, why);
    }
    let up = nic.up.unwrap_or(live.up);
    let why = match nic.up {
        Some(_) => why,
        None => format!(
            "{why}; its admin state at home was never seen: left {} as the kernel gave it back",
            if live.up { "up" } else { "down" }
        ),
    };
    let mut item = Item::new(target, Verdict::Repair, why);
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
    if up {
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
