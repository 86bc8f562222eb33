//! The bystander check: devices netguard does not guard (a veth never learned, a device that
//! took a guarded name while the agent was stopped, a NIC excluded) must come out of every
//! scenario exactly as they went in: same ifindex, name, MAC, admin state, netns.

use std::fmt;
use std::process::Command;

use serde_json::Value;

use crate::IP;

/// What a bystander is, as `ip` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ifindex: u64,
    name: String,
    mac: String,
    up: bool,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.up { "up" } else { "down" };
        write!(
            f,
            "{} (ifindex {}, {}, {state})",
            self.name, self.ifindex, self.mac
        )
    }
}

/// One netns's links (`None`: the caller's own netns, e.g. init_net in the guest).
fn links(netns: Option<&str>) -> Result<Vec<Seen>, String> {
    let mut cmd = Command::new(IP);
    cmd.arg("-j");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(["link", "show"])
        .output()
        .map_err(|e| format!("cannot run {IP}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip link show in {}: {}",
            netns.unwrap_or("this netns"),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let parsed: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("ip -j link show is not JSON: {e}"))?;
    Ok(parsed
        .as_array()
        .map(|links| {
            links
                .iter()
                .map(|l| Seen {
                    ifindex: l["ifindex"].as_u64().unwrap_or_default(),
                    name: l["ifname"].as_str().unwrap_or_default().to_string(),
                    mac: l["address"].as_str().unwrap_or_default().to_string(),
                    up: l["flags"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|f| f == "UP")),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Devices snapshotted before a scenario, to check after it.
#[derive(Debug, Default)]
pub struct Bystanders {
    watched: Vec<(Option<String>, Seen)>,
}

impl Bystanders {
    pub fn new() -> Bystanders {
        Bystanders::default()
    }

    /// Watches `dev` as it is now in `netns` (`None`: the caller's netns). Panics if it is
    /// not there: a bystander check of nothing would pass vacuously.
    pub fn watch(mut self, netns: Option<&str>, dev: &str) -> Bystanders {
        let seen = links(netns)
            .unwrap_or_else(|e| panic!("bystander {dev}: {e}"))
            .into_iter()
            .find(|l| l.name == dev)
            .unwrap_or_else(|| {
                panic!(
                    "bystander {dev} is not in {}",
                    netns.unwrap_or("this netns")
                )
            });
        self.watched.push((netns.map(str::to_string), seen));
        self
    }

    /// What changed about any bystander since it was watched (it is looked for by ifindex in
    /// the netns it was in); empty if nothing did.
    pub fn changes(&self) -> Vec<String> {
        let mut changes = Vec::new();
        for (netns, before) in &self.watched {
            let place = netns.as_deref().unwrap_or("this netns");
            let now = match links(netns.as_deref()) {
                Ok(now) => now,
                Err(e) => {
                    changes.push(format!("bystander {before}: {e}"));
                    continue;
                }
            };
            match now.iter().find(|l| l.ifindex == before.ifindex) {
                Some(after) if after == before => {}
                Some(after) => {
                    changes.push(format!("bystander in {place}: {before} is now {after}"))
                }
                None => changes.push(format!(
                    "bystander {before} is gone from {place} (moved or deleted)"
                )),
            }
        }
        changes
    }

    /// Panics naming every bystander that changed.
    pub fn assert_unchanged(&self) {
        let changes = self.changes();
        assert!(changes.is_empty(), "{}", changes.join("\n"));
    }

    /// `Err` naming every bystander that changed (for the VM suite's verdicts).
    pub fn check(&self) -> Result<(), String> {
        match self.changes() {
            changes if changes.is_empty() => Ok(()),
            changes => Err(changes.join("; ")),
        }
    }
}
