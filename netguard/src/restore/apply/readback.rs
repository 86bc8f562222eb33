//! Reading a device back after a change: an action succeeds when the kernel shows it, not
//! when the kernel accepts it.

use rtnetlink::LinkUnspec;

use crate::inventory::{LiveLink, NetnsConn};
use crate::model::{DeviceIdentity, Locator, Mac};
use crate::restore::action::{describe, Dev};
use crate::rtnl::message::{errno, kernel_says};

use super::{ActionError, Builder, Seen};

/// One action's connection and how it reports failure.
pub(super) struct Ctx<'a, F: Fn(String) -> ActionError> {
    pub(super) conn: &'a NetnsConn,
    pub(super) fail: &'a F,
}

impl<F: Fn(String) -> ActionError> Ctx<'_, F> {
    pub(super) async fn get(
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

    pub(super) async fn need(
        &self,
        netns: &Locator,
        name: &str,
        seen: &mut Seen,
    ) -> Result<LiveLink, ActionError> {
        self.get(netns, name, seen)
            .await?
            .ok_or_else(|| (self.fail)(format!("there is no device {name} in {netns}")))
    }

    /// The device `dev` names, read fresh (one RTM_GETLINK by ifindex, or by name for a
    /// device this item made) right before a change, or `None` if there is none. A device
    /// that is not `dev` (another name at that ifindex, another identity under that name) is
    /// a conflict: nothing is done to it.
    pub(super) async fn resolve_opt(
        &self,
        netns: &Locator,
        dev: &Dev,
        seen: &mut Seen,
    ) -> Result<Option<LiveLink>, ActionError> {
        let key = (netns.clone(), dev.name.clone());
        // This item's own last read-back of it (after our rename, MAC change or move).
        let ours = seen
            .get(&key)
            .filter(|o| dev.ifindex.is_none_or(|i| i == o.ifindex))
            .cloned();
        let fresh = match ours.as_ref().map(|o| o.ifindex).or(dev.ifindex) {
            Some(ifindex) => self.conn.get_link(ifindex).await,
            None => self.conn.get_link_by_name(&dev.name).await,
        }
        .map_err(|e| (self.fail)(e.to_string()))?;
        let Some(fresh) = fresh else {
            seen.remove(&key);
            return Ok(None);
        };
        let same = fresh.name == dev.name
            && match (&dev.identity, &ours) {
                // Our own MAC change is part of what it is now.
                (DeviceIdentity::Virtual { .. }, Some(o)) => {
                    fresh.kind == o.kind && fresh.mac == o.mac
                }
                (identity, _) => fresh.is(identity),
            };
        if !same {
            return Err(self.conflict(netns, dev, Some(&fresh)).await);
        }
        seen.insert(key, fresh.clone());
        Ok(Some(fresh))
    }

    /// [`Self::resolve_opt`], where a device that is gone is a conflict too.
    pub(super) async fn resolve(
        &self,
        netns: &Locator,
        dev: &Dev,
        seen: &mut Seen,
    ) -> Result<LiveLink, ActionError> {
        match self.resolve_opt(netns, dev, seen).await? {
            Some(link) => Ok(link),
            None => Err(self.conflict(netns, dev, None).await),
        }
    }

    /// What was found where `dev` was expected (`at`: at its ifindex), and whatever holds its
    /// name now, named in one error: nothing is done to either.
    async fn conflict(&self, netns: &Locator, dev: &Dev, at: Option<&LiveLink>) -> ActionError {
        let holder = match self.conn.get_link_by_name(&dev.name).await {
            Ok(holder) => holder.filter(|h| at.is_none_or(|a| a.ifindex != h.ifindex)),
            Err(e) => return (self.fail)(e.to_string()),
        };
        let mut found: Vec<String> = at.into_iter().chain(&holder).map(describe).collect();
        if found.is_empty() {
            found.push("no such device".into());
        }
        let mut e = (self.fail)(format!(
            "expected {} in {netns}, found {}: left alone",
            expected(dev),
            found.join(" and, under its name, ")
        ));
        e.conflict = true;
        e
    }

    /// Changes `dev` unless it already `holds`, then reads it back: it must hold now.
    pub(super) async fn set_link(
        &self,
        netns: &Locator,
        dev: &Dev,
        seen: &mut Seen,
        holds: impl Fn(&LiveLink) -> bool,
        change: impl FnOnce(Builder) -> Builder,
        otherwise: &str,
    ) -> Result<(), ActionError> {
        let link = self.resolve(netns, dev, seen).await?;
        if !holds(&link) {
            let msg = change(LinkUnspec::new_with_index(link.ifindex)).build();
            self.kernel(self.conn.handle().link().set(msg).execute().await)?;
        }
        // A rename leaves nothing under the old name.
        seen.remove(&(netns.clone(), dev.name.clone()));
        self.verify(netns, link.ifindex, seen, holds, otherwise)
            .await
    }

    /// Deletes device `ifindex` (gone already counts) and reads back that it is gone.
    pub(super) async fn delete(&self, ifindex: u32) -> Result<(), ActionError> {
        match self.conn.handle().link().del(ifindex).execute().await {
            Err(e) if errno(&e) == Some(libc::ENODEV) => {}
            other => self.kernel(other)?,
        }
        match self
            .conn
            .get_link(ifindex)
            .await
            .map_err(|e| (self.fail)(e.to_string()))?
        {
            None => Ok(()),
            Some(_) => Err((self.fail)(
                "still there after the kernel accepted the delete".into(),
            )),
        }
    }

    pub(super) fn kernel(&self, result: Result<(), rtnetlink::Error>) -> Result<(), ActionError> {
        result.map_err(|e| (self.fail)(kernel_says(&e)))
    }

    /// A create/add the kernel may find already done (EEXIST): the read-back decides.
    pub(super) fn created(&self, result: Result<(), rtnetlink::Error>) -> Result<(), ActionError> {
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

    pub(super) async fn verify_new(
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

/// `dev` as the plan expected it: name, ifindex, identity.
fn expected(dev: &Dev) -> String {
    match dev.ifindex {
        Some(i) => format!("{} (ifindex {i}, {})", dev.name, dev.identity),
        None => format!("{} ({})", dev.name, dev.identity),
    }
}
