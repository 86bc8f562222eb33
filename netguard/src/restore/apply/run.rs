//! Each action carried out: the request, then the read-back that says it took.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rtnetlink::{LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVlan};

use crate::inventory::{InventoryError, LiveLink, NetnsConn};
use crate::model::{DeviceIdentity, Locator, Mac};
use crate::restore::action::Action;
use crate::rtnl::message::{
    kernel_says, macvlan_mode_to, route_message, veth_message, vlan_protocol_to, with_mac_mtu,
};

use super::readback::Ctx;
use super::{ActionError, Builder, Executor, Masters, Seen};

impl Executor {
    /// Carries out one action and reads the result back.
    pub(super) async fn run(
        &self,
        action: &Action,
        seen: &mut Seen,
        masters: &Masters,
    ) -> Result<(), ActionError> {
        let fail = |kernel: String| ActionError {
            tried: action.to_string(),
            netns: action.netns().to_string(),
            device: action.device().to_string(),
            kernel,
            conflict: false,
        };
        let conn = self.conn(action.netns()).await.map_err(fail)?;
        let ctx = Ctx {
            conn: &conn,
            fail: &fail,
        };
        match action {
            Action::SetUp { netns, dev } | Action::SetDown { netns, dev } => {
                let want = matches!(action, Action::SetUp { .. });
                let change = |m: Builder| if want { m.up() } else { m.down() };
                ctx.set_link(
                    netns,
                    dev,
                    seen,
                    |l| l.up == want,
                    change,
                    "admin state unchanged",
                )
                .await
            }
            Action::Rename { netns, dev, to } => {
                let change = |m: Builder| m.name(to.clone());
                ctx.set_link(
                    netns,
                    dev,
                    seen,
                    |l| l.name == *to,
                    change,
                    "name unchanged",
                )
                .await
            }
            Action::SetMaster { netns, dev, master } => {
                let key = (netns.clone(), master.clone());
                let known = masters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .cloned();
                let bridge = match known {
                    Some(bridge) => bridge,
                    None => {
                        let bridge = ctx.need(netns, master, seen).await?;
                        masters
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key, bridge.clone());
                        bridge
                    }
                };
                let is_port = |l: &LiveLink| l.master == Some(bridge.ifindex);
                let change = |m: Builder| m.controller(bridge.ifindex);
                ctx.set_link(netns, dev, seen, is_port, change, "not a port of it")
                    .await
            }
            Action::SetMac { netns, dev, mac } => {
                let change = |m: Builder| m.address(mac.0.to_vec());
                ctx.set_link(
                    netns,
                    dev,
                    seen,
                    |l| l.mac == Some(*mac),
                    change,
                    "MAC unchanged",
                )
                .await
            }
            Action::SetMtu { netns, dev, mtu } => {
                let change = |m: Builder| m.mtu(*mtu);
                ctx.set_link(
                    netns,
                    dev,
                    seen,
                    |l| l.mtu == Some(*mtu),
                    change,
                    "MTU unchanged",
                )
                .await
            }
            Action::MoveTo {
                netns,
                dev,
                to_netns,
                name,
            } => {
                let link = ctx.resolve(netns, dev, seen).await?;
                seen.remove(&(netns.clone(), dev.name.clone()));
                let target = self.conn(to_netns).await.map_err(fail)?;
                ctx.kernel(relocate(&conn, link.ifindex, &target, name).await)?;
                if crate::rtnl::is_temporary_link_name(name) {
                    crate::fault::point("temp-named");
                }
                let arrived = Ctx {
                    conn: &target,
                    fail: &fail,
                }
                .need(to_netns, name, seen)
                .await?;
                if arrived.mac != link.mac || arrived.kind != link.kind {
                    return Err(fail(format!(
                        "{name} in {to_netns} is not the device moved (MAC {:?}, kind {:?})",
                        arrived.mac, arrived.kind
                    )));
                }
                Ok(())
            }
            Action::DeleteStaleVeth { netns, dev } => {
                // A veth is deleted only when we know its MAC: without one, any veth that took
                // the name would do.
                if !matches!(&dev.identity, DeviceIdentity::Virtual { kind, mac: Some(_) } if kind == "veth")
                {
                    let mut e = fail(format!(
                        "{dev} is not known by a veth MAC ({}): never deleted",
                        dev.identity
                    ));
                    e.conflict = true;
                    return Err(e);
                }
                let Some(link) = ctx.resolve_opt(netns, dev, seen).await? else {
                    return Ok(());
                };
                seen.remove(&(netns.clone(), dev.name.clone()));
                // The kernel removes the pair itself when it tears the replaced netns down, all
                // dying netns in one batch: far cheaper than a delete of ours (each waits for
                // RCU, holding RTNL). Only a netns that someone keeps alive never gets there.
                if vanishes(&conn, link.ifindex, STALE_GRACE)
                    .await
                    .map_err(|e| fail(e.to_string()))?
                {
                    return Ok(());
                }
                ctx.delete(link.ifindex).await
            }
            Action::DeleteOurs { netns, dev } => {
                let Some(link) = ctx.resolve_opt(netns, dev, seen).await? else {
                    return Ok(());
                };
                seen.remove(&(netns.clone(), dev.name.clone()));
                ctx.delete(link.ifindex).await
            }
            Action::CreateVeth {
                netns,
                name,
                mac,
                mtu,
                peer,
                peer_netns,
                peer_mac,
                peer_mtu,
            } => {
                let peer_conn = self.conn(peer_netns).await.map_err(fail)?;
                // Created directly in its netns: never visible, even briefly, in ours.
                let peer_fd = (peer_netns != netns).then(|| peer_conn.fd());
                let msg = veth_message(name, mac, mtu, peer, peer_mac, peer_mtu, peer_fd);
                ctx.created(conn.handle().link().add(msg).execute().await)?;
                let ours = ctx.verify_new(netns, name, "veth", mac, seen).await?;
                let peer_ctx = Ctx {
                    conn: &peer_conn,
                    fail: &fail,
                };
                let theirs = peer_ctx
                    .verify_new(peer_netns, peer, "veth", peer_mac, seen)
                    .await?;
                if ours.link != Some(theirs.ifindex) {
                    return Err(fail(format!(
                        "{name} and {peer} exist but are not peers of each other"
                    )));
                }
                Ok(())
            }
            Action::CreateVlan {
                parent_netns,
                parent,
                netns,
                name,
                id,
                protocol,
                mac,
                mtu,
                temp,
            } => {
                let lower = ctx.resolve(parent_netns, parent, seen).await?;
                self.parent_up(&ctx, &lower).await?;
                let msg =
                    LinkVlan::new(name, lower.ifindex, *id).protocol(vlan_protocol_to(*protocol));
                let msg = with_mac_mtu(msg, mac, mtu);
                let new = (netns, name.as_str(), "vlan", temp);
                self.create_stacked(&ctx, msg, parent_netns, new, mac, seen)
                    .await
            }
            Action::CreateMacvlan {
                parent_netns,
                parent,
                netns,
                name,
                mode,
                mac,
                mtu,
                temp,
            } => {
                let lower = ctx.resolve(parent_netns, parent, seen).await?;
                self.parent_up(&ctx, &lower).await?;
                let msg = LinkMacVlan::new(name, lower.ifindex, macvlan_mode_to(*mode));
                let msg = with_mac_mtu(msg, mac, mtu);
                let new = (netns, name.as_str(), "macvlan", temp);
                self.create_stacked(&ctx, msg, parent_netns, new, mac, seen)
                    .await
            }
            Action::AddAddress { netns, dev, addr } => {
                let link = ctx.resolve(netns, dev, seen).await?;
                let added = conn
                    .handle()
                    .address()
                    .add(link.ifindex, addr.addr, addr.prefix)
                    .execute()
                    .await;
                ctx.created(added)?;
                let now = conn
                    .addresses_of_link(link.ifindex)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if now.contains(addr) {
                    Ok(())
                } else {
                    Err(fail(format!(
                        "the kernel accepted it but {dev} has {now:?}"
                    )))
                }
            }
            Action::AddRoute { netns, dev, route } => {
                let link = ctx.resolve(netns, dev, seen).await?;
                ctx.created(
                    conn.handle()
                        .route()
                        .add(route_message(route, link.ifindex))
                        .execute()
                        .await,
                )?;
                let now = conn
                    .routes_of_link(link.ifindex, route.dst.addr)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if now.has_route(link.ifindex, route) {
                    Ok(())
                } else {
                    Err(fail(
                        "the kernel accepted it but the route is not there".into(),
                    ))
                }
            }
        }
    }

    /// A vlan or macvlan (`msg` with its MAC and MTU; `new`: its netns, name, kind and
    /// temporary name): sent to the parent's netns, created directly in `netns`.
    async fn create_stacked<T>(
        &self,
        ctx: &Ctx<'_, impl Fn(String) -> ActionError>,
        msg: LinkMessageBuilder<T>,
        parent_netns: &Locator,
        (netns, name, kind, temp): (&Locator, &str, &str, &Option<String>),
        mac: &Option<Mac>,
        seen: &mut Seen,
    ) -> Result<(), ActionError> {
        let target = self.conn(netns).await.map_err(ctx.fail)?;
        if netns == parent_netns {
            ctx.created(ctx.conn.handle().link().add(msg.build()).execute().await)?;
        } else {
            // The kernel looks a new link's name up in the netns the request is sent to, so
            // a pod's `eth0` would collide with the host's: create it under a name of our
            // own (in the ledger before it exists), then move it in under its real one.
            let Some(temp) = temp else {
                return Err((ctx.fail)("no temporary name was planned for it".into()));
            };
            ctx.kernel(
                ctx.conn
                    .handle()
                    .link()
                    .add(msg.name(temp.clone()).build())
                    .execute()
                    .await,
            )?;
            let made = ctx.need(parent_netns, temp, seen).await?;
            crate::fault::point("temp-named");
            seen.remove(&(parent_netns.clone(), temp.clone()));
            if let Err(e) = relocate(ctx.conn, made.ifindex, &target, name).await {
                // Leave nothing of ours behind in the parent's netns.
                let _ = ctx.conn.handle().link().del(made.ifindex).execute().await;
                return Err((ctx.fail)(kernel_says(&e)));
            }
        }
        Ctx {
            conn: &target,
            fail: ctx.fail,
        }
        .verify_new(netns, name, kind, mac, seen)
        .await
        .map(|_| ())
    }

    /// A guarded vlan/macvlan carries nothing over a parent that is down (a NIC comes back
    /// down after a driver reload), and a vlan cannot even be set up on one.
    async fn parent_up(
        &self,
        ctx: &Ctx<'_, impl Fn(String) -> ActionError>,
        parent: &LiveLink,
    ) -> Result<(), ActionError> {
        if parent.up {
            return Ok(());
        }
        ctx.kernel(
            ctx.conn
                .handle()
                .link()
                .set(LinkUnspec::new_with_index(parent.ifindex).up().build())
                .execute()
                .await,
        )
    }

    async fn conn(&self, netns: &Locator) -> Result<Arc<NetnsConn>, String> {
        self.pool.get(netns).await.map_err(|e| e.to_string())
    }
}

/// Moves device `ifindex` from `from`'s netns into `to`'s under `name` (IFLA_NET_NS_FD with
/// IFLA_IFNAME: the name is looked up only in `to`).
async fn relocate(
    from: &NetnsConn,
    ifindex: u32,
    to: &NetnsConn,
    name: &str,
) -> Result<(), rtnetlink::Error> {
    let moving = LinkUnspec::new_with_index(ifindex)
        .setns_by_fd(to.fd())
        .name(name.to_string())
        .build();
    from.handle().link().set(moving).execute().await
}

/// How long a stale host-side veth is given to go away with its old netns before we delete it.
const STALE_GRACE: Duration = Duration::from_secs(1);

/// Whether device `ifindex` is gone within `grace`, looking at growing intervals.
async fn vanishes(conn: &NetnsConn, ifindex: u32, grace: Duration) -> Result<bool, InventoryError> {
    let deadline = Instant::now() + grace;
    let mut pause = Duration::from_millis(1);
    loop {
        if conn.get_link(ifindex).await?.is_none() {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
