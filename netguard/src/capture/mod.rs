//! Capturing what to guard: snapshot the links of some netns (and what they hang on in the
//! host netns: a veth's peer and its bridge, a macvlan's vlan parent) into specs, or turn a CNI
//! result into one. The specs go to whoever asked (the ledger records them).

use std::collections::VecDeque;

use serde::Serialize;

use crate::model::{KindSpec, LinkKey, LinkSpec, Locator, MacvlanMode, Parent, VethPeer};

pub mod cni;

use crate::inventory::{InventoryError, LiveLink, NetnsInventory, Pool};
use cni::Attachment;

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("cannot guard {ifname} in {netns} from {source_file}: {why}")]
    Cni {
        ifname: String,
        netns: String,
        source_file: String,
        why: String,
    },
}

/// What [`learn`] guarded, and what it left out and why.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Learned {
    pub guarded: Vec<LinkKey>,
    pub skipped: Vec<String>,
}

/// How the netns being learned relates to the host: its inventory, and the nsid by which it
/// names the host netns in `link_netnsid`.
struct Ctx<'a> {
    host: &'a NetnsInventory,
    locator: Locator,
    inv: &'a NetnsInventory,
    host_nsid: Option<i32>,
}

impl Ctx<'_> {
    /// Where IFLA_LINK of `link` points: (netns, device), or why it cannot be told.
    fn linked(&self, link: &LiveLink) -> Result<(Locator, &LiveLink), String> {
        // The kernel leaves IFLA_LINK out when it equals the device's own ifindex, which a
        // peer in another netns may well have (both 2 in two fresh netns).
        let index = link
            .link
            .or(link.link_netnsid.map(|_| link.ifindex))
            .ok_or_else(|| format!("{} names no peer/parent", link.name))?;
        let (locator, inv) = match link.link_netnsid {
            None => (self.locator.clone(), self.inv),
            Some(id) if Some(id) == self.host_nsid => (Locator::Host, self.host),
            Some(id) => {
                return Err(format!(
                    "{}'s peer/parent is in a netns other than the host's (nsid {id})",
                    link.name
                ))
            }
        };
        let other = inv.link(index).ok_or_else(|| {
            format!(
                "{}'s peer/parent (ifindex {index}) is not in {locator}",
                link.name
            )
        })?;
        Ok((locator, other))
    }

    /// The host-side vlan or macvlan `link` stands on, which is guarded with it.
    fn host_parent_to_guard(&self, link: &LiveLink) -> Option<&LiveLink> {
        if !matches!(link.kind.as_deref(), Some("vlan" | "macvlan")) {
            return None;
        }
        match self.linked(link) {
            Ok((Locator::Host, parent))
                if matches!(parent.kind.as_deref(), Some("vlan" | "macvlan")) =>
            {
                Some(parent)
            }
            _ => None,
        }
    }

    fn spec(&self, link: &LiveLink) -> Result<LinkSpec, String> {
        let kind = match link.kind.as_deref() {
            Some("veth") => {
                let (netns, peer) = self.linked(link)?;
                if netns != Locator::Host || self.locator == Locator::Host {
                    return Err(format!(
                        "{} is a veth whose peer is not in the host netns",
                        link.name
                    ));
                }
                let master = peer
                    .master
                    .and_then(|m| self.host.link(m))
                    .map(|m| m.name.clone());
                KindSpec::Veth {
                    peer: VethPeer {
                        name: peer.name.clone(),
                        netns,
                        mac: peer.mac,
                        mtu: peer.mtu,
                        up: peer.up,
                        master,
                    },
                }
            }
            Some("vlan") => {
                let (id, protocol) = link
                    .vlan
                    .ok_or_else(|| format!("{} is a vlan without an id", link.name))?;
                KindSpec::Vlan {
                    parent: self.parent(link)?,
                    id,
                    protocol,
                }
            }
            Some("macvlan") => KindSpec::Macvlan {
                parent: self.parent(link)?,
                mode: link.macvlan_mode.unwrap_or(MacvlanMode::Bridge),
            },
            other => {
                return Err(format!(
                    "{} is a {} link, not one netguard rebuilds",
                    link.name,
                    other.unwrap_or("physical")
                ))
            }
        };
        Ok(LinkSpec {
            name: link.name.clone(),
            netns: self.locator.clone(),
            netns_inode: (self.locator != Locator::Host).then_some(self.inv.inode),
            mac: link.mac,
            mtu: link.mtu,
            up: link.up,
            addresses: self.inv.addresses_of(link.ifindex).collect(),
            routes: self.inv.routes_of(link.ifindex).cloned().collect(),
            kind,
        })
    }

    fn parent(&self, link: &LiveLink) -> Result<Parent, String> {
        let (netns, parent) = self.linked(link)?;
        Ok(if parent.is_physical() {
            Parent::Nic(parent.nic_identity())
        } else {
            Parent::Link {
                netns,
                name: parent.name.clone(),
            }
        })
    }
}

/// Guards every veth, vlan and macvlan in the given netns as it is now, and the host-side
/// vlan/macvlan they stand on. Links that cannot be rebuilt are listed in `skipped`.
pub async fn learn(
    pool: &Pool,
    guarded: &mut impl Extend<LinkSpec>,
    netns: &[Locator],
) -> Result<Learned, InventoryError> {
    let host_conn = pool.host().await?;
    // A container's links need only the host's links (a veth's peer and bridge, a parent):
    // every CNI ADD learns, and a node's addresses and routes are read only when a host-side
    // link is guarded too.
    let mut host = host_conn.links().await?;
    let mut host_whole = false;
    let mut learned = Learned::default();
    for locator in netns {
        let pod = if *locator == Locator::Host {
            None
        } else {
            let conn = pool.get(locator).await?;
            Some((conn.dump().await?, conn.nsid_of(&host_conn).await?))
        };
        let guards_host_links = match &pod {
            None => true,
            Some((inv, host_nsid)) => {
                let ctx = Ctx {
                    host: &host,
                    locator: locator.clone(),
                    inv,
                    host_nsid: *host_nsid,
                };
                inv.links
                    .iter()
                    .any(|l| ctx.host_parent_to_guard(l).is_some())
            }
        };
        if guards_host_links && !host_whole {
            host = host_conn.dump().await?;
            host_whole = true;
        }
        let (inv, host_nsid) = match &pod {
            Some((inv, host_nsid)) => (inv, *host_nsid),
            None => (&host, None),
        };
        let ctx = Ctx {
            host: &host,
            locator: locator.clone(),
            inv,
            host_nsid,
        };
        let host_ctx = Ctx {
            host: &host,
            locator: Locator::Host,
            inv: &host,
            host_nsid: None,
        };
        // Host-side parents (a macvlan's vlan) are guarded too, so they come back first.
        let mut queue: VecDeque<(&Ctx, &LiveLink)> = inv
            .links
            .iter()
            .filter(|l| l.name != "lo")
            .map(|l| (&ctx, l))
            .collect();
        while let Some((ctx, link)) = queue.pop_front() {
            if ctx.locator == Locator::Host && link.is_physical() {
                continue;
            }
            match ctx.spec(link) {
                Ok(spec) => {
                    if let Some(parent) = ctx.host_parent_to_guard(link) {
                        queue.push_back((&host_ctx, parent));
                    }
                    // Two macvlans on one vlan reach that vlan twice.
                    if !learned.guarded.contains(&spec.key()) {
                        learned.guarded.push(spec.key());
                    }
                    guarded.extend([spec]);
                }
                Err(why) => learned.skipped.push(why),
            }
        }
    }
    Ok(learned)
}

/// Guards a pod interface from a CNI result: MAC, addresses and routes from the result; kind
/// and parent from the live link, or from the plugin config when the link is already gone.
pub async fn import_cni(
    pool: &Pool,
    guarded: &mut impl Extend<LinkSpec>,
    att: &Attachment,
) -> Result<LinkKey, LearnError> {
    let locator = Locator::Path(att.netns.clone());
    let fail = |why: String| LearnError::Cni {
        ifname: att.ifname.clone(),
        netns: att.netns.display().to_string(),
        source_file: att.source.display().to_string(),
        why,
    };
    let host_conn = pool.host().await?;
    let host = host_conn.dump().await?;
    // A netns that is gone leaves only the config to go by.
    let live = match pool.get(&locator).await {
        Ok(conn) => Some((conn.dump().await?, conn.nsid_of(&host_conn).await?)),
        Err(e) => {
            tracing::info!(
                "importing {}: {e}; using its plugin config",
                att.source.display()
            );
            None
        }
    };
    let from_kernel = live.as_ref().and_then(|(inv, host_nsid)| {
        let ctx = Ctx {
            host: &host,
            locator: locator.clone(),
            inv,
            host_nsid: *host_nsid,
        };
        inv.link_by_name(&att.ifname).map(|link| ctx.spec(link))
    });
    let mut spec = match from_kernel {
        Some(spec) => spec.map_err(fail)?,
        None => {
            spec_from_config(att, &host, live.as_ref().map(|(inv, _)| inv.inode)).map_err(fail)?
        }
    };
    if att.mac.is_some() {
        spec.mac = att.mac;
    }
    if !att.addresses.is_empty() {
        spec.addresses = att.addresses.clone();
    }
    if !att.routes.is_empty() {
        spec.routes = att.routes.clone();
    }
    let key = spec.key();
    guarded.extend([spec]);
    Ok(key)
}

fn spec_from_config(
    att: &Attachment,
    host: &NetnsInventory,
    inode: Option<u64>,
) -> Result<LinkSpec, String> {
    let plugin = att
        .plugin
        .as_ref()
        .ok_or("the link is gone and the file has no plugin config to rebuild it from")?;
    let parent = || -> Result<Parent, String> {
        let master = plugin
            .master
            .as_deref()
            .ok_or(format!("{} config has no master", plugin.kind))?;
        Ok(match host.link_by_name(master) {
            Some(nic) if nic.is_physical() => Parent::Nic(nic.nic_identity()),
            _ => Parent::Link {
                netns: Locator::Host,
                name: master.to_string(),
            },
        })
    };
    let kind = match plugin.kind.as_str() {
        "macvlan" => {
            let mode = plugin.mode.as_deref().unwrap_or("bridge");
            let mode = serde_json::from_value(serde_json::Value::String(mode.to_string()))
                .map_err(|_| format!("unknown macvlan mode '{mode}'"))?;
            KindSpec::Macvlan {
                parent: parent()?,
                mode,
            }
        }
        "vlan" => KindSpec::Vlan {
            parent: parent()?,
            id: plugin.vlan_id.ok_or("vlan config has no vlanId")?,
            protocol: Default::default(),
        },
        "bridge" | "ptp" => {
            let bridge = (plugin.kind == "bridge")
                .then(|| plugin.bridge.clone().unwrap_or_else(|| "cni0".into()));
            let peer = att
                .host_interfaces
                .iter()
                .find(|n| Some(*n) != bridge.as_ref())
                .ok_or("the result names no host-side veth")?;
            KindSpec::Veth {
                peer: VethPeer {
                    name: peer.clone(),
                    netns: Locator::Host,
                    mac: None,
                    mtu: plugin.mtu,
                    up: true,
                    master: bridge,
                },
            }
        }
        other => {
            return Err(format!(
                "netguard cannot rebuild links made by the {other} plugin"
            ))
        }
    };
    Ok(LinkSpec {
        name: att.ifname.clone(),
        netns: Locator::Path(att.netns.clone()),
        netns_inode: inode,
        mac: att.mac,
        mtu: plugin.mtu,
        up: true,
        addresses: att.addresses.clone(),
        routes: att.routes.clone(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn att(file: &str) -> Attachment {
        cni::read(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/cni")
                .join(file),
        )
        .unwrap()
    }

    #[test]
    fn cni_config_rebuilds_a_gone_macvlan_on_its_vlan() {
        let a = att("cache-macvlan-eth0");
        let spec = spec_from_config(&a, &NetnsInventory::default(), None).unwrap();
        assert_eq!(
            spec.kind,
            KindSpec::Macvlan {
                parent: Parent::Link {
                    netns: Locator::Host,
                    name: "eth0.3".into()
                },
                mode: MacvlanMode::Bridge
            }
        );
        assert_eq!(spec.mac, Some("9a:3c:11:22:33:44".parse().unwrap()));
        assert_eq!(spec.routes.len(), 2);
    }

    #[test]
    fn cni_bridge_config_gives_the_host_side_and_bridge() {
        let spec =
            spec_from_config(&att("cache-bridge-eth0"), &NetnsInventory::default(), None).unwrap();
        let KindSpec::Veth { peer } = spec.kind else {
            panic!()
        };
        assert_eq!(
            (peer.name.as_str(), peer.master.as_deref()),
            ("veth1a2b3c4d", Some("cni0"))
        );
    }

    #[test]
    fn a_checkpoint_without_config_needs_the_live_link() {
        let err = spec_from_config(
            &att("checkpoint-06c9b8d0a800"),
            &NetnsInventory::default(),
            None,
        )
        .unwrap_err();
        assert!(err.contains("no plugin config"), "{err}");
    }
}
