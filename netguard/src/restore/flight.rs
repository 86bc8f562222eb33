//! Devices under a temporary (`ngtmp*`) name are ours: each was recorded in the ledger before
//! it got that name. One that a failed move or a killed agent left in flight is put back as it
//! was (netns, name, admin state), after checking it is the device recorded.

use crate::inventory::NetnsConn;
use crate::ledger::{Flight, Ledger, LinkKey, Locator};
use crate::model::DeviceIdentity;

use super::{describe, Action, Dev, Item, Restorer, Target, Verdict};

impl Restorer {
    /// Puts the device of `flight` back where it came from, and says what was done. Nothing
    /// is done to a device that is not the one recorded.
    pub async fn put_back(&self, flight: &Flight) -> Result<String, String> {
        let Flight {
            netns,
            name,
            identity,
            from,
        } = flight;
        let conn = match self.pool.get(netns).await {
            Ok(conn) => conn,
            // The netns is gone, and the device with it (a NIC back in the host netns, where
            // the passes repair it; a virtual link deleted).
            Err(e) => return Ok(format!("{name}: its netns {netns} is gone ({e})")),
        };
        let live = conn
            .get_link_by_name(name)
            .await
            .map_err(|e| format!("{name} in {netns}: {e}"))?;
        let mut actions = Vec::new();
        match (live, from) {
            (Some(l), _) if !l.is(identity) => {
                return Err(format!(
                    "{name} in {netns} is {}, not the device netguard gave that name ({identity}): left alone",
                    describe(&l)
                ))
            }
            // Created under that name and never finished: ours to remove.
            (Some(l), None) => actions.push(Action::DeleteOurs {
                netns: netns.clone(),
                dev: Dev::live(&l, identity.clone()),
            }),
            (None, None) => return Ok(format!("nothing under {name} in {netns}: nothing to undo")),
            (Some(l), Some(from)) => actions.push(Action::MoveTo {
                netns: netns.clone(),
                dev: Dev::live(&l, identity.clone()),
                to_netns: from.netns.clone(),
                name: from.name.clone(),
            }),
            (None, Some(from)) => {
                // It never left, or moved on: at its origin it is only given its state back.
                let home = self.pool.get(&from.netns).await.map_err(|e| e.to_string())?;
                let at_origin = home
                    .get_link_by_name(&from.name)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|l| l.is(identity));
                match at_origin {
                    Some(l) if l.up == from.up => {
                        return Ok(format!("nothing under {name} in {netns}: nothing to put back"))
                    }
                    Some(_) => {}
                    None => return self.finish_state(&conn, flight, from.up).await,
                }
            }
        }
        let Some(from) = from else {
            return self.carry(actions, identity, netns, name).await.map(|()| {
                format!("{name} in {netns}, created by netguard and never finished, removed")
            });
        };
        let back = Dev::expected(&from.name, identity.clone());
        actions.push(admin_state(&from.netns, back, from.up));
        self.carry(actions, identity, &from.netns, &from.name)
            .await?;
        Ok(format!(
            "{name} in {netns} put back as {} in {} ({})",
            from.name,
            from.netns,
            if from.up { "up" } else { "down" }
        ))
    }

    /// A device neither under its temporary name nor at its origin finished its move and was
    /// renamed where it went (an agent killed before it set the admin state back): found by
    /// identity in the flight's netns, it gets the admin state it had at its origin.
    async fn finish_state(
        &self,
        conn: &NetnsConn,
        flight: &Flight,
        up: bool,
    ) -> Result<String, String> {
        let Flight {
            netns,
            name,
            identity,
            ..
        } = flight;
        let links = conn.dump().await.map_err(|e| e.to_string())?.links;
        let Some(moved) = links.into_iter().find(|l| l.is(identity)) else {
            return Ok(format!(
                "nothing under {name} in {netns}: nothing to put back"
            ));
        };
        if moved.up == up {
            return Ok(format!(
                "{name} in {netns} had become {}: nothing to finish",
                moved.name
            ));
        }
        let action = admin_state(netns, Dev::live(&moved, identity.clone()), up);
        self.carry(vec![action], identity, netns, &moved.name)
            .await?;
        Ok(format!(
            "{name} in {netns} had become {}, set {} as it was before its move",
            moved.name,
            if up { "up" } else { "down" }
        ))
    }

    /// Carries out the actions that put a device in flight back (`at`, `called`: where it
    /// belongs).
    async fn carry(
        &self,
        actions: Vec<Action>,
        identity: &DeviceIdentity,
        at: &Locator,
        called: &str,
    ) -> Result<(), String> {
        let target = match identity {
            DeviceIdentity::Nic(id) => Target::Nic {
                home_name: called.to_string(),
                identity: id.clone(),
            },
            DeviceIdentity::Virtual { .. } => Target::Link {
                kind: "device",
                key: LinkKey {
                    netns: at.clone(),
                    name: called.to_string(),
                },
            },
        };
        let result = self
            .carry_out(Item {
                target,
                verdict: Verdict::Move,
                reason: Some("put back from a temporary name".into()),
                actions,
                after: None,
            })
            .await;
        match result.error {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// At start: every device the ledger says is in flight is put back (or found gone), and
    /// its flight closed. Returns one line per device, for the log.
    pub async fn land_flights(&self, ledger: &mut Ledger) -> Vec<Result<String, String>> {
        let mut said = Vec::new();
        for flight in ledger.content().flights.clone() {
            said.push(self.put_back(&flight).await);
            ledger.landed(&flight.netns, &flight.name);
        }
        said
    }
}

/// The action that sets `dev` in `netns` up or down.
fn admin_state(netns: &Locator, dev: Dev, up: bool) -> Action {
    let netns = netns.clone();
    match up {
        true => Action::SetUp { netns, dev },
        false => Action::SetDown { netns, dev },
    }
}
