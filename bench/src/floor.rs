//! The floor: for every container, the requests the restorer sends to re-create its link (the
//! same messages, built by the same functions), sent back to back over one connection per
//! netns, with nothing read back and nothing checked: the least work the kernel can be asked
//! for. Used both to build the world and, as `netguard-bench floor`, as a contender.

use anyhow::{bail, Context};
use netguard::inventory::NetnsConn;
use netguard::rtnl::message::{route_message, veth_message};
use rtnetlink::LinkUnspec;

use std::collections::HashMap;

use crate::world::{Container, IFNAME, MTU};

pub async fn restore(host: &NetnsConn, containers: &[Container]) -> anyhow::Result<()> {
    // The lookups any restorer needs: each bridge once, each new eth0 once.
    let mut bridges: HashMap<usize, u32> = HashMap::new();
    for c in containers {
        if let std::collections::hash_map::Entry::Vacant(entry) = bridges.entry(c.bridge) {
            let bridge = host
                .get_link_by_name(&c.bridge_name())
                .await?
                .with_context(|| format!("no {} in the host netns", c.bridge_name()))?;
            entry.insert(bridge.ifindex);
        }
    }
    let mut refused: Vec<String> = Vec::new();
    let mut note = |what: &str, c: &Container, result: Result<(), String>| {
        if let Err(e) = result {
            refused.push(format!("{what} for {}: {e}", c.netns));
        }
    };
    let says = |r: Result<(), rtnetlink::Error>| r.map_err(|e| e.to_string());
    let h = host.handle();
    for c in containers {
        let conn = NetnsConn::open(c.locator(), &c.path).await?;
        let veth = veth_message(
            &c.host_side,
            &Some(c.host_mac),
            &Some(MTU),
            IFNAME,
            &Some(c.mac),
            &Some(MTU),
            Some(conn.fd()),
        );
        note("create veth", c, says(h.link().add(veth).execute().await));
        note(
            "host side up",
            c,
            says(
                h.link()
                    .set(LinkUnspec::new_with_name(&c.host_side).up().build())
                    .execute()
                    .await,
            ),
        );
        let port = LinkUnspec::new_with_name(&c.host_side)
            .controller(bridges[&c.bridge])
            .build();
        note("set master", c, says(h.link().set(port).execute().await));
        let Some(eth) = conn.get_link_by_name(IFNAME).await? else {
            note("finding eth0", c, Err("it is not there".into()));
            continue;
        };
        let ch = conn.handle();
        note(
            "address",
            c,
            says(
                ch.address()
                    .add(eth.ifindex, c.addr.addr, c.addr.prefix)
                    .execute()
                    .await,
            ),
        );
        note(
            "eth0 up",
            c,
            says(
                ch.link()
                    .set(LinkUnspec::new_with_index(eth.ifindex).up().build())
                    .execute()
                    .await,
            ),
        );
        for route in Container::routes() {
            note(
                "route",
                c,
                says(
                    ch.route()
                        .add(route_message(&route, eth.ifindex))
                        .execute()
                        .await,
                ),
            );
        }
    }
    match refused.as_slice() {
        [] => Ok(()),
        [first, ..] => bail!(
            "the kernel refused {} requests; first: {first}",
            refused.len()
        ),
    }
}
