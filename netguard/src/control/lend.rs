//! Lending a host NIC to a container netns and bringing it home, without name races: the NIC
//! goes down, moves under a temporary name no container uses, and only then takes its name
//! inside. Its home name is recorded before it leaves. The moves are planned as typed actions
//! and carried out by the restorer's executor, each read back, like every other kernel change.

use std::path::Path;

use crate::inventory::{InventoryError, LiveLink, NetnsConn, Pool};
use crate::ledger::{
    ContainerRecord, Flight, Ledger, LedgerError, Lend, NicLocation, NicState, Origin, Workload,
};
use crate::model::{DeviceIdentity, Locator, NicIdentity};
use crate::restore::{
    describe, Action, ActionError, Dev, Item, Outcome, Restorer, Target, Verdict,
};
use crate::rtnl::temporary_link_name;

#[derive(Debug, thiserror::Error)]
pub enum LendError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("{0}; the NIC was left where it is")]
    Ledger(#[from] LedgerError),
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
    #[error("moving {name} failed: {source}; {put_back}")]
    Move {
        name: String,
        // Boxed: large and rare, and every Result here carries its size.
        source: Box<ActionError>,
        /// What became of the device: put back as it was, or why not.
        put_back: String,
    },
    #[error("{name} in {netns} is not the NIC lent as it: {found}; nothing moved")]
    NotTheNic {
        name: String,
        netns: String,
        /// The NIC's identity, the device found, and where the NIC is if it is there.
        found: String,
    },
    #[error("{name} was moved to netns {netns} but is not found there")]
    Vanished { name: String, netns: String },
}

/// The actions that move the NIC `dev` (in `from`) to `to` under `final_name` without a name
/// race: down, into `to` under `temp`, renamed there, and up again if `up`. Each names the NIC
/// by `dev`'s identity, checked by the executor on a fresh read before it acts.
fn moves(
    (from, dev): (&Locator, &Dev),
    to: &Locator,
    temp: String,
    final_name: &str,
    up: bool,
) -> Vec<Action> {
    let there = |name: &str| Dev::expected(name, dev.identity.clone());
    let mut actions = vec![
        Action::SetDown {
            netns: from.clone(),
            dev: dev.clone(),
        },
        Action::MoveTo {
            netns: from.clone(),
            dev: dev.clone(),
            to_netns: to.clone(),
            name: temp.clone(),
        },
        Action::Rename {
            netns: to.clone(),
            dev: there(&temp),
            to: final_name.to_string(),
        },
    ];
    if up {
        actions.push(Action::SetUp {
            netns: to.clone(),
            dev: there(final_name),
        });
    }
    actions
}

/// Moves `link` (in `from`) to `to` under `final_name`: down, move under a temporary name,
/// rename, up again if `up`. The temporary name is on disk first; a move that fails is put
/// back as it was (netns, name, admin state). Returns the device as it is in `to`.
async fn relocate(
    restorer: &Restorer,
    ledger: &mut Ledger,
    (identity, home_name): (&NicIdentity, &str),
    (from, link): (&NetnsConn, &LiveLink),
    to: &NetnsConn,
    final_name: &str,
    up: bool,
) -> Result<LiveLink, LendError> {
    let dev = Dev::live(link, DeviceIdentity::Nic(identity.clone()));
    let flight = Flight {
        netns: to.locator.clone(),
        name: temporary_link_name(),
        identity: dev.identity.clone(),
        from: Some(Origin {
            netns: from.locator.clone(),
            name: link.name.clone(),
            up: link.up,
        }),
    };
    // On disk before the NIC gets the name.
    ledger.take_off([flight.clone()]);
    ledger.commit()?;
    crate::fault::point("journalled");
    let actions = moves(
        (&from.locator, &dev),
        &to.locator,
        flight.name.clone(),
        final_name,
        up,
    );
    let item = Item {
        target: Target::Nic {
            home_name: home_name.to_string(),
            identity: identity.clone(),
        },
        verdict: Verdict::Move,
        reason: Some(format!("{} to {} as {final_name}", link.name, to.locator)),
        actions,
        after: None,
    };
    let result = restorer.carry_out(item).await;
    if let Some(error) = result.error {
        let put_back = match restorer.put_back(&flight).await {
            Ok(done) => done,
            Err(why) => format!("not put back: {why}"),
        };
        ledger.landed(&flight.netns, &flight.name);
        return Err(LendError::Move {
            name: link.name.clone(),
            source: Box::new(error),
            put_back,
        });
    }
    ledger.landed(&flight.netns, &flight.name);
    debug_assert_eq!(result.outcome, Outcome::Moved);
    to.get_link_by_name(final_name)
        .await?
        .ok_or_else(|| LendError::Vanished {
            name: final_name.into(),
            netns: to.locator.to_string(),
        })
}

fn host_location(pool: &Pool, host: &NetnsConn, link: &LiveLink) -> NicLocation {
    NicLocation {
        netns: crate::event::Netns {
            inode: host.inode,
            names: vec![pool.host_name()],
        },
        name: link.name.clone(),
        ifindex: Some(link.ifindex),
    }
}

/// `netguard lend IFACE --netns PATH [--name NAME] [--persistent]`; with `container`, the NIC
/// is lent to that container (in its netns `netns`) and follows it to each new netns.
pub async fn lend(
    restorer: &Restorer,
    ledger: &mut Ledger,
    iface: &str,
    (netns, container): (&Path, Option<&ContainerRecord>),
    name: Option<&str>,
    persistent: bool,
) -> Result<String, LendError> {
    let pool = restorer.pool();
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
    // The home name is on disk before the NIC leaves.
    if ledger.find_nic(&identity).is_none() {
        let at_home = host_location(pool, &host, &link);
        ledger.guard_nic(identity.clone(), iface, Some(link.up), Some(at_home));
    }
    // What a reclaim or a refund restores.
    ledger.note_nic_up(&identity, link.up);
    let lend = Lend {
        netns: locator.clone(),
        name: name.into(),
        persistent,
        container: container.map(|c| c.id.clone()),
    };
    ledger.set_nic_lend(&identity, Some(lend));
    ledger.commit()?;
    crate::fault::point("journalled");
    let moved = relocate(
        restorer,
        ledger,
        (&identity, iface),
        (&host, &link),
        &target,
        name,
        link.up,
    )
    .await?;
    let there = NicLocation {
        netns: crate::event::Netns {
            inode: target.inode,
            names: vec![locator.to_string()],
        },
        name: moved.name.clone(),
        ifindex: Some(moved.ifindex),
    };
    let to = match container {
        Some(c) => format!("{} in {locator}", Workload::from(c)),
        None => locator.to_string(),
    };
    ledger.set_nic(
        &identity,
        NicState::Lent,
        Some(format!("lent to {to} as {name}")),
        Some(there),
    );
    Ok(format!(
        "{iface} lent to {to} as {name}{}",
        if persistent { " (persistent)" } else { "" }
    ))
}

/// `netguard reclaim IFACE`: IFACE is the name it has in the netns it was lent to, or its home name.
pub async fn reclaim(
    restorer: &Restorer,
    ledger: &mut Ledger,
    iface: &str,
) -> Result<String, LendError> {
    let pool = restorer.pool();
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
    // Whatever holds the lent name now may be a stranger (the NIC renamed inside, another
    // device given its name): only the NIC itself is brought home.
    if !record.identity.matches(&link.nic_identity()) {
        let inventory = there.dump().await?;
        let nic = inventory
            .nics()
            .find(|(_, id)| record.identity.matches(id))
            .map(|(l, _)| l);
        return Err(LendError::NotTheNic {
            name: lend.name.clone(),
            netns: lend.netns.to_string(),
            found: format!(
                "it is {}, found {}{}",
                record.identity,
                describe(&link),
                nic.map(|n| format!("; the NIC is there as {}", describe(n)))
                    .unwrap_or_default()
            ),
        });
    }
    let back = relocate(
        restorer,
        ledger,
        (&record.identity, &record.home_name),
        (&there, &link),
        &host,
        &record.home_name,
        record.up.unwrap_or(link.up),
    )
    .await?;
    ledger.set_nic_lend(&record.identity, None);
    let home = host_location(pool, &host, &back);
    ledger.set_nic(&record.identity, NicState::Home, None, Some(home));
    Ok(format!(
        "{} reclaimed from {} as {}",
        lend.name, lend.netns, record.home_name
    ))
}

/// Lends again every NIC lent with `--persistent` that is home while a netns is at its
/// locator again (the container was re-created): the NIC follows its container.
pub async fn relend_persistent(
    restorer: &Restorer,
    ledger: &mut Ledger,
) -> Vec<Result<String, LendError>> {
    let pool = restorer.pool();
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
        let to = (path.as_path(), None);
        results.push(self::lend(restorer, ledger, &name, to, Some(&lend.name), true).await);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lend_is_down_move_under_a_temporary_name_rename_up() {
        let c1 = Locator::Path("/run/netns/c1".into());
        let nic = |name: &str| Dev {
            name: name.into(),
            ifindex: Some(3),
            identity: DeviceIdentity::Nic(NicIdentity {
                perm_mac: Some("52:54:00:12:34:58".parse().unwrap()),
                bus: Some("0000:00:05.0".into()),
                driver: None,
            }),
        };
        let eth2 = nic("eth2");
        let lines: Vec<String> = moves(
            (&Locator::Host, &eth2),
            &c1,
            "ngtmp7.0".into(),
            "eth0",
            true,
        )
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            lines,
            [
                "[host] ip link set eth2 down",
                "[host] ip link set eth2 netns /run/netns/c1 name ngtmp7.0",
                "[/run/netns/c1] ip link set ngtmp7.0 name eth0",
                "[/run/netns/c1] ip link set eth0 up",
            ]
        );
        // A NIC that was down at home comes back down.
        let eth0 = nic("eth0");
        let back = moves(
            (&c1, &eth0),
            &Locator::Host,
            "ngtmp7.1".into(),
            "eth2",
            false,
        );
        assert_eq!(back.len(), 3);
        assert!(!back.iter().any(|a| matches!(a, Action::SetUp { .. })));
        // After the move, the NIC is named by its identity alone: its ifindex may differ there.
        let Action::Rename { dev, .. } = &back[2] else {
            panic!("{back:?}")
        };
        assert_eq!((dev.ifindex, &dev.identity), (None, &eth0.identity));
    }
}
