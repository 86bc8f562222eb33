//! Carries out a [`Plan`] through rtnetlink (never `ip` subprocesses): items concurrently,
//! each item's actions in order; every action idempotent (already done = done) and verified by
//! reading the device back. A failure says what was tried, where, and what the kernel said.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rtnetlink::{LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVlan};
use serde::Serialize;

use super::action::Action;
use super::plan::{Item, Plan, Target, Verdict};
use crate::inventory::{InventoryError, LiveLink, NetnsConn, Pool};
use crate::model::{LinkKey, Locator, Mac};
use crate::rtnl::message::{
    errno, kernel_says, macvlan_mode_to, route_message, veth_message, vlan_protocol_to,
    with_mac_mtu,
};
use crate::rtnl::temporary_link_name;

/// One failed action: what was tried, on which netns and device, and what the kernel said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{tried} (netns {netns}, device {device}) failed: {kernel}")]
pub struct ActionError {
    pub tried: String,
    pub netns: String,
    pub device: String,
    pub kernel: String,
}

/// How one plan item ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Intact,
    Restored,
    Waiting,
    Conflict,
    Failed,
    Lent,
    Lost,
    /// Moved as an operator asked (lend, reclaim), and verified.
    Moved,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemResult {
    pub target: Target,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Actions carried out and verified, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ActionError>,
}

impl ItemResult {
    fn unapplied(item: &Item, outcome: Outcome, reason: Option<String>) -> ItemResult {
        ItemResult {
            target: item.target.clone(),
            outcome,
            reason,
            applied: vec![],
            error: None,
        }
    }
}

/// Devices read back during one item, by netns and name: later actions of the same item start
/// from what the last read-back said instead of asking again.
type Seen = HashMap<(Locator, String), LiveLink>;

/// A link change being built.
type Builder = LinkMessageBuilder<LinkUnspec>;

/// Bridges looked up during one pass, shared by its items: ports join a bridge, the bridge
/// itself is not changed, so a thousand re-created ports ask for it once.
type Masters = std::sync::Mutex<HashMap<(Locator, String), LiveLink>>;

pub struct Executor {
    pool: Arc<Pool>,
    concurrency: usize,
}

impl Executor {
    pub fn new(pool: Arc<Pool>, concurrency: usize) -> Executor {
        Executor {
            pool,
            concurrency: concurrency.max(1),
        }
    }

    /// Runs every item; an item with `after` runs once that item is done, and waits (does
    /// nothing) if it did not end intact or restored. Results are in plan order.
    pub async fn apply(&self, plan: &Plan) -> Vec<ItemResult> {
        let key_of = |item: &Item| match &item.target {
            Target::Link { key, .. } => Some(key.clone()),
            Target::Nic { .. } => None,
        };
        let mut results: Vec<Option<ItemResult>> = vec![None; plan.items.len()];
        let masters = Masters::default();
        let mut done: HashMap<LinkKey, (Outcome, Option<String>)> = HashMap::new();
        loop {
            let mut ready = Vec::new();
            for (i, item) in plan.items.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                match item.after.as_ref().map(|dep| done.get(dep)) {
                    None => ready.push(i),
                    Some(None) => {}
                    Some(Some((Outcome::Intact | Outcome::Restored, _))) => ready.push(i),
                    Some(Some((outcome, why))) => {
                        let dep = item
                            .after
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        let why = format!(
                            "waits for its parent {dep}, which is {outcome:?}: {}",
                            why.as_deref().unwrap_or("-")
                        );
                        results[i] = Some(ItemResult::unapplied(item, Outcome::Waiting, Some(why)));
                    }
                }
            }
            if ready.is_empty() {
                break;
            }
            let finished: Vec<(usize, ItemResult)> = futures::stream::iter(ready)
                .map(|i| {
                    let masters = &masters;
                    async move { (i, self.run_item(&plan.items[i], masters).await) }
                })
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            for (i, result) in finished {
                if let Some(key) = key_of(&plan.items[i]) {
                    done.insert(key, (result.outcome, result.reason.clone()));
                }
                results[i] = Some(result);
            }
        }
        // Whatever is left waits on something that never ran (a cycle, or a dependency
        // outside the plan).
        results
            .into_iter()
            .zip(&plan.items)
            .map(|(r, item)| {
                r.unwrap_or_else(|| {
                    ItemResult::unapplied(
                        item,
                        Outcome::Waiting,
                        Some("waits for a parent that was not planned".into()),
                    )
                })
            })
            .collect()
    }

    async fn run_item(&self, item: &Item, masters: &Masters) -> ItemResult {
        let outcome = match item.verdict {
            Verdict::Intact => Outcome::Intact,
            Verdict::Waiting => Outcome::Waiting,
            Verdict::Conflict => Outcome::Conflict,
            Verdict::Lent => Outcome::Lent,
            Verdict::Lost => Outcome::Lost,
            Verdict::Repair => Outcome::Restored,
            Verdict::Move => Outcome::Moved,
        };
        let mut result = ItemResult::unapplied(item, outcome, item.reason.clone());
        if !matches!(item.verdict, Verdict::Repair | Verdict::Move) {
            return result;
        }
        let mut seen = Seen::new();
        for action in &item.actions {
            match self.run(action, &mut seen, masters).await {
                Ok(()) => {
                    tracing::info!("{}: {action}", item.target);
                    result.applied.push(action.clone());
                }
                Err(e) => {
                    tracing::warn!("{}: {e}", item.target);
                    result.outcome = Outcome::Failed;
                    result.reason = Some(e.to_string());
                    result.error = Some(e);
                    break;
                }
            }
        }
        result
    }

    /// Carries out one action and reads the result back.
    async fn run(
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
                let link = ctx.need(netns, dev, seen).await?;
                seen.remove(&(netns.clone(), dev.clone()));
                let target = self.conn(to_netns).await.map_err(fail)?;
                ctx.kernel(relocate(&conn, link.ifindex, &target, name).await)?;
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
            Action::DeleteStaleVeth { netns, dev, mac } => {
                let Some(link) = ctx.get(netns, dev, seen).await? else {
                    return Ok(());
                };
                if link.kind.as_deref() != Some("veth") || (mac.is_some() && link.mac != *mac) {
                    return Err(fail(format!(
                        "{dev} is no longer the stale veth (kind {:?}, MAC {:?}): left alone",
                        link.kind, link.mac
                    )));
                }
                seen.remove(&(netns.clone(), dev.clone()));
                // The kernel removes the pair itself when it tears the replaced netns down, all
                // dying netns in one batch: far cheaper than a delete of ours (each waits for
                // RCU, holding RTNL). Only a netns that someone keeps alive never gets there.
                if vanishes(&conn, link.ifindex, STALE_GRACE)
                    .await
                    .map_err(|e| fail(e.to_string()))?
                {
                    return Ok(());
                }
                match conn.handle().link().del(link.ifindex).execute().await {
                    Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                    other => ctx.kernel(other)?,
                }
                match conn
                    .get_link(link.ifindex)
                    .await
                    .map_err(|e| fail(e.to_string()))?
                {
                    None => Ok(()),
                    Some(_) => Err(fail(
                        "still there after the kernel accepted the delete".into(),
                    )),
                }
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
            } => {
                let lower = ctx.need(parent_netns, parent, seen).await?;
                self.parent_up(&ctx, &lower).await?;
                let msg =
                    LinkVlan::new(name, lower.ifindex, *id).protocol(vlan_protocol_to(*protocol));
                self.create_stacked(&ctx, msg, parent_netns, netns, name, "vlan", mac, mtu, seen)
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
            } => {
                let lower = ctx.need(parent_netns, parent, seen).await?;
                self.parent_up(&ctx, &lower).await?;
                let msg = LinkMacVlan::new(name, lower.ifindex, macvlan_mode_to(*mode));
                self.create_stacked(
                    &ctx,
                    msg,
                    parent_netns,
                    netns,
                    name,
                    "macvlan",
                    mac,
                    mtu,
                    seen,
                )
                .await
            }
            Action::AddAddress { netns, dev, addr } => {
                let link = ctx.need(netns, dev, seen).await?;
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
                let link = ctx.need(netns, dev, seen).await?;
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

    /// A vlan or macvlan: sent to the parent's netns, created directly in `netns`.
    #[allow(clippy::too_many_arguments)]
    async fn create_stacked<T>(
        &self,
        ctx: &Ctx<'_, impl Fn(String) -> ActionError>,
        msg: LinkMessageBuilder<T>,
        parent_netns: &Locator,
        netns: &Locator,
        name: &str,
        kind: &str,
        mac: &Option<Mac>,
        mtu: &Option<u32>,
        seen: &mut Seen,
    ) -> Result<(), ActionError> {
        let target = self.conn(netns).await.map_err(ctx.fail)?;
        if netns == parent_netns {
            ctx.created(
                ctx.conn
                    .handle()
                    .link()
                    .add(with_mac_mtu(msg, mac, mtu).build())
                    .execute()
                    .await,
            )?;
        } else {
            // The kernel looks a new link's name up in the netns the request is sent to, so
            // a pod's `eth0` would collide with the host's: create it under a name of our
            // own, then move it in under its real one.
            let temp = temporary_link_name();
            ctx.kernel(
                ctx.conn
                    .handle()
                    .link()
                    .add(with_mac_mtu(msg.name(temp.clone()), mac, mtu).build())
                    .execute()
                    .await,
            )?;
            let made = ctx.need(parent_netns, &temp, seen).await?;
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

/// One action's connection and how it reports failure.
struct Ctx<'a, F: Fn(String) -> ActionError> {
    conn: &'a NetnsConn,
    fail: &'a F,
}

impl<F: Fn(String) -> ActionError> Ctx<'_, F> {
    async fn get(
        &self,
        netns: &Locator,
        name: &str,
        seen: &mut Seen,
    ) -> Result<Option<LiveLink>, ActionError> {
        if let Some(link) = seen.get(&(netns.clone(), name.to_string())) {
            return Ok(Some(link.clone()));
        }
        let link = self
            .conn
            .get_link_by_name(name)
            .await
            .map_err(|e| (self.fail)(e.to_string()))?;
        if let Some(l) = &link {
            seen.insert((netns.clone(), name.to_string()), l.clone());
        }
        Ok(link)
    }

    async fn need(
        &self,
        netns: &Locator,
        name: &str,
        seen: &mut Seen,
    ) -> Result<LiveLink, ActionError> {
        self.get(netns, name, seen)
            .await?
            .ok_or_else(|| (self.fail)(format!("there is no device {name} in {netns}")))
    }

    /// Changes `dev` unless it already `holds`, then reads it back: it must hold now.
    async fn set_link(
        &self,
        netns: &Locator,
        dev: &str,
        seen: &mut Seen,
        holds: impl Fn(&LiveLink) -> bool,
        change: impl FnOnce(Builder) -> Builder,
        otherwise: &str,
    ) -> Result<(), ActionError> {
        let link = self.need(netns, dev, seen).await?;
        if !holds(&link) {
            let msg = change(LinkUnspec::new_with_index(link.ifindex)).build();
            self.kernel(self.conn.handle().link().set(msg).execute().await)?;
        }
        // A rename leaves nothing under the old name.
        seen.remove(&(netns.clone(), dev.to_string()));
        self.verify(netns, link.ifindex, seen, holds, otherwise)
            .await
    }

    fn kernel(&self, result: Result<(), rtnetlink::Error>) -> Result<(), ActionError> {
        result.map_err(|e| (self.fail)(kernel_says(&e)))
    }

    /// A create/add the kernel may find already done (EEXIST): the read-back decides.
    fn created(&self, result: Result<(), rtnetlink::Error>) -> Result<(), ActionError> {
        match result {
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            other => self.kernel(other),
        }
    }

    async fn verify(
        &self,
        netns: &Locator,
        ifindex: u32,
        seen: &mut Seen,
        ok: impl Fn(&LiveLink) -> bool,
        otherwise: &str,
    ) -> Result<(), ActionError> {
        let link = self
            .conn
            .get_link(ifindex)
            .await
            .map_err(|e| (self.fail)(e.to_string()))?;
        let Some(link) = link else {
            return Err((self.fail)(format!("device (ifindex {ifindex}) vanished")));
        };
        let good = ok(&link);
        seen.insert((netns.clone(), link.name.clone()), link);
        if good {
            Ok(())
        } else {
            Err((self.fail)(format!(
                "the kernel accepted it but on reading back: {otherwise}"
            )))
        }
    }

    async fn verify_new(
        &self,
        netns: &Locator,
        name: &str,
        kind: &str,
        mac: &Option<Mac>,
        seen: &mut Seen,
    ) -> Result<LiveLink, ActionError> {
        let link = self
            .conn
            .get_link_by_name(name)
            .await
            .map_err(|e| (self.fail)(e.to_string()))?;
        let Some(link) = link else {
            return Err((self.fail)(format!(
                "{name} is not in {netns} after the kernel accepted it"
            )));
        };
        if link.kind.as_deref() != Some(kind) || (mac.is_some() && link.mac != *mac) {
            return Err((self.fail)(format!(
                "{name} in {netns} is a {} with MAC {}, not the {kind} asked for",
                link.kind.as_deref().unwrap_or("device"),
                link.mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into())
            )));
        }
        seen.insert((netns.clone(), name.to_string()), link.clone());
        Ok(link)
    }
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
