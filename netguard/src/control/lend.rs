//! Lending a host NIC to a container netns and bringing it home, without name races: the NIC
//! goes down, moves under a temporary name no container uses, and only then takes its name
//! inside. Its home name is recorded before it leaves.

use std::path::Path;

use rtnetlink::LinkUnspec;

use crate::inventory::{InventoryError, LiveLink, NetnsConn, Pool};
use crate::ledger::{Ledger, Lend, Locator, NicLocation, NicState};

#[derive(Debug, thiserror::Error)]
pub enum LendError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("no interface {name} in {netns}")]
    NoSuchInterface { name: String, netns: String },
    #[error("{name} is a {kind} link: netguard lends physical NICs only (guard virtual links with `netguard learn`)")]
    NotPhysical { name: String, kind: String },
    #[error("netns {netns} already has an interface {name}: choose another with --name")]
    NameTaken { name: String, netns: String },
    #[error("{name} is not a NIC netguard lent or guards: see `netguard status`")]
    NotLent { name: String },
    #[error("home name {home} of {name} is held by another device in the host netns: rename that device first")]
    HomeTaken { name: String, home: String },
    #[error("{step} of {name} in netns {netns} failed: {source}")]
    Kernel {
        step: &'static str,
        name: String,
        netns: String,
        // Boxed: the kernel's error is large and rare, and every Result here carries its size.
        source: Box<rtnetlink::Error>,
    },
    #[error("{name} was moved to netns {netns} but is not found there under {temp}")]
    Vanished {
        name: String,
        netns: String,
        temp: String,
    },
}

async fn kernel(
    step: &'static str,
    name: &str,
    conn: &NetnsConn,
    request: impl std::future::Future<Output = Result<(), rtnetlink::Error>>,
) -> Result<(), LendError> {
    request.await.map_err(|source| LendError::Kernel {
        step,
        name: name.into(),
        netns: conn.locator.to_string(),
        source: Box::new(source),
    })
}

/// Moves `link` (in `from`) to `to` under `final_name`: down, move under a temporary name,
/// rename, up again if it was. Returns the device as it is in `to`.
async fn relocate(
    from: &NetnsConn,
    link: &LiveLink,
    to: &NetnsConn,
    final_name: &str,
) -> Result<LiveLink, LendError> {
    let temp = crate::rtnl::temporary_link_name();
    let name = &link.name;
    kernel(
        "set down",
        name,
        from,
        from.handle()
            .link()
            .set(LinkUnspec::new_with_index(link.ifindex).down().build())
            .execute(),
    )
    .await?;
    let moving = LinkUnspec::new_with_index(link.ifindex)
        .setns_by_fd(to.fd())
        .name(temp.clone())
        .build();
    kernel(
        "move",
        name,
        from,
        from.handle().link().set(moving).execute(),
    )
    .await?;
    let arrived = to
        .get_link_by_name(&temp)
        .await?
        .ok_or_else(|| LendError::Vanished {
            name: name.clone(),
            netns: to.locator.to_string(),
            temp: temp.clone(),
        })?;
    let mut rename = LinkUnspec::new_with_index(arrived.ifindex).name(final_name.to_string());
    if link.up {
        rename = rename.up();
    }
    kernel(
        "rename",
        final_name,
        to,
        to.handle().link().set(rename.build()).execute(),
    )
    .await?;
    to.get_link(arrived.ifindex)
        .await?
        .ok_or_else(|| LendError::Vanished {
            name: final_name.into(),
            netns: to.locator.to_string(),
            temp,
        })
}

/// `netguard lend IFACE --netns PATH [--name NAME] [--persistent]`.
pub async fn lend(
    pool: &Pool,
    ledger: &mut Ledger,
    iface: &str,
    netns: &Path,
    name: Option<&str>,
    persistent: bool,
) -> Result<String, LendError> {
    let host = pool.host().await?;
    let link = host
        .get_link_by_name(iface)
        .await?
        .ok_or_else(|| LendError::NoSuchInterface {
            name: iface.into(),
            netns: pool.host_name(),
        })?;
    if let Some(kind) = &link.kind {
        return Err(LendError::NotPhysical {
            name: iface.into(),
            kind: kind.clone(),
        });
    }
    let locator = Locator::Path(netns.to_path_buf());
    let target = pool.get(&locator).await?;
    let name = name.unwrap_or(iface);
    if target.get_link_by_name(name).await?.is_some() {
        return Err(LendError::NameTaken {
            name: name.into(),
            netns: locator.to_string(),
        });
    }
    let identity = link.nic_identity();
    let host_netns = crate::event::Netns {
        inode: host.inode,
        names: vec![pool.host_name()],
    };
    // The home name is on disk before the NIC leaves.
    let at_home = NicLocation {
        netns: host_netns,
        name: iface.into(),
        ifindex: Some(link.ifindex),
    };
    if ledger.find_nic(&identity).is_none() {
        ledger.guard_nic(identity.clone(), iface, link.up, Some(at_home));
    }
    let lend = Lend {
        netns: locator.clone(),
        name: name.into(),
        persistent,
    };
    ledger.set_nic_lend(&identity, Some(lend));
    let moved = relocate(&host, &link, &target, name).await?;
    let there = NicLocation {
        netns: crate::event::Netns {
            inode: target.inode,
            names: vec![locator.to_string()],
        },
        name: moved.name.clone(),
        ifindex: Some(moved.ifindex),
    };
    ledger.set_nic(
        &identity,
        NicState::Lent,
        Some(format!("lent to {locator} as {name}")),
        Some(there),
    );
    Ok(format!(
        "{iface} lent to {locator} as {name}{}",
        if persistent { " (persistent)" } else { "" }
    ))
}

/// `netguard reclaim IFACE`: IFACE is the name it has in the netns it was lent to, or its home name.
pub async fn reclaim(pool: &Pool, ledger: &mut Ledger, iface: &str) -> Result<String, LendError> {
    let record = ledger
        .nics()
        .iter()
        .find(|n| {
            n.lent
                .as_ref()
                .is_some_and(|l| l.name == iface || n.home_name == iface)
        })
        .cloned()
        .ok_or_else(|| LendError::NotLent { name: iface.into() })?;
    let lend = record.lent.clone().expect("found by its lend");
    let host = pool.host().await?;
    if host.get_link_by_name(&record.home_name).await?.is_some() {
        return Err(LendError::HomeTaken {
            name: lend.name.clone(),
            home: record.home_name.clone(),
        });
    }
    let there = pool.get(&lend.netns).await?;
    let link =
        there
            .get_link_by_name(&lend.name)
            .await?
            .ok_or_else(|| LendError::NoSuchInterface {
                name: lend.name.clone(),
                netns: lend.netns.to_string(),
            })?;
    let mut homeward = link.clone();
    homeward.up = record.up;
    let back = relocate(&there, &homeward, &host, &record.home_name).await?;
    let home = NicLocation {
        netns: crate::event::Netns {
            inode: host.inode,
            names: vec![pool.host_name()],
        },
        name: back.name.clone(),
        ifindex: Some(back.ifindex),
    };
    ledger.set_nic_lend(&record.identity, None);
    ledger.set_nic(&record.identity, NicState::Home, None, Some(home));
    Ok(format!(
        "{} reclaimed from {} as {}",
        lend.name, lend.netns, record.home_name
    ))
}

/// Lends again every NIC lent with `--persistent` that is home while a netns is at its
/// locator again (the container was re-created): the NIC follows its container.
pub async fn relend_persistent(pool: &Pool, ledger: &mut Ledger) -> Vec<Result<String, LendError>> {
    let host_inode = match pool.host().await {
        Ok(host) => host.inode,
        Err(e) => return vec![Err(e.into())],
    };
    let due: Vec<(String, Lend)> = ledger
        .nics()
        .iter()
        .filter_map(|nic| {
            let lend = nic.lent.clone().filter(|l| l.persistent)?;
            let at_home = matches!(nic.state, NicState::Home | NicState::Restored);
            let location = nic
                .location
                .as_ref()
                .filter(|l| l.netns.inode == host_inode && l.name == nic.home_name)?;
            (at_home && pool.inode_at(&lend.netns).is_some()).then(|| (location.name.clone(), lend))
        })
        .collect();
    let mut results = Vec::new();
    for (name, lend) in due {
        let Locator::Path(path) = &lend.netns else {
            continue;
        };
        results.push(self::lend(pool, ledger, &name, path, Some(&lend.name), true).await);
    }
    results
}
