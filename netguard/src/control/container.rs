//! NICs lent to a container by its ID: lent at once into the netns it runs in, lent again into
//! its new netns at each start (createRuntime, before its process runs), and home under their
//! home names when it stops (the kernel refunds them as its netns dies; a pass names them home).

use std::time::{Duration, Instant};

use crate::ledger::{ContainerRecord, Ledger, Lend, NicIdentity};
use crate::netns;
use crate::restore::{PassReport, Restorer};

use super::lend;
use super::ControlError;

/// How long a hook waits for the kernel to hand a NIC back from a dead netns (netns cleanup
/// runs on a kernel workqueue, after the last process left): well within a hook's patience.
const REFUND_WAIT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

/// `netguard lend IFACE --container ID [--name NAME]`: into the netns the container runs in.
pub async fn lend_to(
    restorer: &Restorer,
    ledger: &mut Ledger,
    iface: &str,
    container: &str,
    name: Option<&str>,
) -> Result<String, ControlError> {
    let (record, incarnation) = ledger.running_container(container)?;
    let (record, path) = (record.clone(), incarnation.netns.clone());
    // A container that died without its poststop still looks running: its netns says.
    if netns::inode_of(&path).ok() != Some(incarnation.inode) {
        return Err(crate::ledger::ContainerError::Stopped { id: record.id }.into());
    }
    let text = lend::lend(restorer, ledger, iface, (&path, Some(&record)), name, false).await?;
    Ok(format!("{text}; lent again into its netns at each start"))
}

/// The NICs lent to container `id`, with their lends.
fn lent_to(ledger: &Ledger, id: &str) -> Vec<(NicIdentity, String, Lend)> {
    ledger
        .nics()
        .iter()
        .filter_map(|nic| {
            let lend = nic.lent.clone()?;
            (lend.container.as_deref() == Some(id))
                .then(|| (nic.identity.clone(), nic.home_name.clone(), lend))
        })
        .collect()
}

/// Waits until every NIC in `nics` is in the host netns (up to [`REFUND_WAIT`]); the ones
/// still away.
async fn wait_home<'a>(
    restorer: &Restorer,
    nics: &'a [(NicIdentity, String, Lend)],
) -> Result<Vec<&'a str>, ControlError> {
    let started = Instant::now();
    loop {
        let host = restorer.pool().host().await?.dump().await?;
        let away: Vec<&str> = nics
            .iter()
            .filter(|(identity, _, _)| !host.nics().any(|(_, live)| identity.matches(&live)))
            .map(|(_, home, _)| home.as_str())
            .collect();
        if away.is_empty() || started.elapsed() >= REFUND_WAIT {
            return Ok(away);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What became of a container's lent NICs at one of its hooks.
pub struct Followed {
    /// One line per NIC.
    pub lines: Vec<String>,
    pub ok: bool,
    /// The pass that named them home (and, at a start, created the container's links).
    pub report: Option<PassReport>,
}

/// At createRuntime of `container` (in its new netns `to`): its lent NICs, back home by now
/// or within [`REFUND_WAIT`], are named home by a pass (with `links_moved`, the same pass
/// creates the container's links there) and lent into `to` under their names inside.
pub async fn at_start(
    restorer: &Restorer,
    ledger: &mut Ledger,
    container: &ContainerRecord,
    links_moved: bool,
) -> Result<Followed, ControlError> {
    let due = lent_to(ledger, &container.id);
    let (mut followed, away) = home(restorer, ledger, &due, links_moved).await?;
    let Some(incarnation) = &container.incarnation else {
        return Ok(followed);
    };
    for (identity, home_name, lend) in &due {
        if away.contains(&home_name.as_str()) {
            continue;
        }
        let to = (incarnation.netns.as_path(), Some(container));
        match lend::lend(restorer, ledger, home_name, to, Some(&lend.name), false).await {
            Ok(text) => followed.lines.push(text),
            Err(e) => {
                followed.ok = false;
                let why = format!("not lent again to {}: {e}", container.id);
                ledger.note_nic_reason(identity, &why);
                followed.lines.push(format!("{home_name} {why}"));
            }
        }
    }
    Ok(followed)
}

/// At poststop of `id` (its netns gone): its lent NICs named home once the kernel refunded them.
pub async fn at_stop(
    restorer: &Restorer,
    ledger: &mut Ledger,
    id: &str,
) -> Result<Followed, ControlError> {
    let due = lent_to(ledger, id);
    let (mut followed, _) = home(restorer, ledger, &due, false).await?;
    if let Some(report) = &followed.report {
        for (identity, home_name, _) in &due {
            if let Some(nic) = ledger.nics().iter().find(|n| &n.identity == identity) {
                let now = nic.location.as_ref().map(|l| l.name.as_str());
                followed.lines.push(format!(
                    "{home_name}: {} ({})",
                    nic.state,
                    now.unwrap_or("?")
                ));
            }
        }
        followed.ok &= report.broken().next().is_none();
    }
    Ok(followed)
}

/// Waits for `due` to be back in the host netns and runs a pass (also when `pass_anyway`);
/// the home names of those still away.
async fn home<'a>(
    restorer: &Restorer,
    ledger: &mut Ledger,
    due: &'a [(NicIdentity, String, Lend)],
    pass_anyway: bool,
) -> Result<(Followed, Vec<&'a str>), ControlError> {
    let mut followed = Followed {
        lines: Vec::new(),
        ok: true,
        report: None,
    };
    if due.is_empty() && !pass_anyway {
        return Ok((followed, Vec::new()));
    }
    let away = wait_home(restorer, due).await?;
    for name in &away {
        followed.ok = false;
        let why = format!("not back in the host netns after {REFUND_WAIT:?}");
        followed.lines.push(format!("{name} is {why}"));
        if let Some((identity, _, _)) = due.iter().find(|(_, home, _)| home == name) {
            ledger.note_nic_reason(identity, &why);
        }
    }
    followed.report = Some(restorer.pass(ledger).await?);
    Ok((followed, away))
}
