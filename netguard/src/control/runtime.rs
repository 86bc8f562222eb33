//! What container runtimes report, carried out on the ledger: the chained CNI plugin's ADD, DEL
//! and GC, and the OCI hooks' stages. Links are bound to their workload, so a container's new
//! netns is the same container and a DEL is a release, not a loss.

use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::capture;
use crate::ledger::{ContainerRecord, Incarnation, Ledger, LinkSpec, Locator, Workload};
use crate::netns;
use crate::restore::Restorer;
use crate::runtime::cni_plugin::{AttachmentRef, GcAttachment};
use crate::runtime::oci_hook::{ContainerEvent, Stage};

use super::{container, ControlError, Reply};

/// Where runtimes bind-mount the netns they make (podman, containerd): a container's netns is
/// named by its path there rather than by `/proc/PID/ns/net`, which outlives no restart.
const NETNS_DIRS: &[&str] = &["/run/netns", "/var/run/netns"];

/// CNI ADD: the attachment's interface as the kernel has it now (with its host side: a veth's
/// peer and bridge, a macvlan's vlan), bound to the attachment. An earlier incarnation of the
/// same workload (a new sandbox of the same pod) is released first.
pub async fn cni_add(
    ledger: &mut Ledger,
    restorer: &Restorer,
    att: &AttachmentRef,
) -> Result<Reply, ControlError> {
    let netns = att.netns.clone().ok_or(ControlError::NoNetns {
        what: att.to_string(),
    })?;
    let workload = att.workload();
    let locator = Locator::Path(netns);
    let history = earlier_sandboxes(ledger, &workload);
    ledger.release_where(
        |w| w.same(&workload) && w != &workload,
        "replaced by a new sandbox of the same pod",
    );
    let mut specs: Vec<LinkSpec> = Vec::new();
    let learned =
        capture::learn(restorer.pool(), &mut specs, std::slice::from_ref(&locator)).await?;
    let mut ours = None;
    for spec in specs {
        let in_pod = spec.netns == locator;
        // Another attachment's interface in the same pod is that attachment's business.
        if in_pod && spec.name != att.ifname {
            continue;
        }
        let key = spec.key();
        ledger.record_link(spec);
        if in_pod {
            ledger.bind_link(&key, &workload);
            if !history.is_empty() {
                ledger.update_link(&key, |r| r.history = history.clone());
            }
            ours = Some(key);
        }
    }
    Ok(match ours {
        Some(key) => Reply::done(format!("guarding {key} for {workload}"), &key),
        None => Reply {
            ok: false,
            text: format!(
                "{} in {locator} is not guarded: {}",
                att.ifname,
                learned.skipped.join("; ")
            ),
            detail: serde_json::json!({ "skipped": learned.skipped }),
        },
    })
}

/// The history of the pod `workload` belongs to (a pod UID's earlier sandboxes, oldest
/// first), with the sandboxes guarded now, which a new one replaces.
fn earlier_sandboxes(ledger: &Ledger, workload: &Workload) -> Vec<String> {
    let mut history: Vec<String> = Vec::new();
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    for record in ledger.links() {
        let Some(
            earlier @ Workload::CniAttachment {
                container_id,
                pod_uid: Some(_),
                ..
            },
        ) = &record.workload
        else {
            continue;
        };
        if !earlier.same(workload) || earlier == workload {
            continue;
        }
        for line in record.history.iter().cloned().chain([format!(
            "sandbox {container_id} in {} until {now}",
            record.spec.netns
        )]) {
            if !history.contains(&line) {
                history.push(line);
            }
        }
    }
    history
}

/// The libcni cache file recording the attachment `workload`, and what it says cannot be
/// re-created, on the attachment's links.
pub fn note_cache_entry(ledger: &mut Ledger, workload: &Workload, file: &Path, what: &[String]) {
    for key in ledger.links_of(workload) {
        ledger.update_link(&key, |r| {
            r.cannot_restore = what.to_vec();
            r.cni_cache_file = Some(file.to_path_buf());
        });
    }
}

/// CNI DEL (or what stands for one: `why`): the attachment is released (idempotent; its
/// netns may be gone). A pod's (`K8S_POD_UID`) stays listed as released for a while, so that
/// its next sandbox continues its history.
pub fn cni_del(ledger: &mut Ledger, att: &AttachmentRef, why: &str) -> Reply {
    let is_it = |w: &Workload| w.is_attachment(&att.network, &att.container_id, &att.ifname);
    let released = match att.pod_uid {
        Some(_) => ledger.mark_released_where(is_it, why),
        None => ledger.release_where(is_it, why),
    };
    Reply::done(
        format!("released {} link(s) of {att}", released.len()),
        &released,
    )
}

/// CNI GC: this network's attachments the runtime no longer lists are released.
pub fn cni_gc(ledger: &mut Ledger, network: &str, valid: &[GcAttachment]) -> Reply {
    let released = ledger.release_where(
        |w| match w {
            Workload::CniAttachment {
                network: n,
                container_id,
                ifname,
                ..
            } => {
                n == network
                    && !valid
                        .iter()
                        .any(|v| &v.container_id == container_id && &v.ifname == ifname)
            }
            _ => false,
        },
        "CNI GC: no longer a valid attachment",
    );
    Reply::done(
        format!("released {} link(s) of network {network}", released.len()),
        &released,
    )
}

/// An OCI hook stage of a container. createRuntime: the container is known from now on in its
/// new netns; its links move there and are created, and its lent NICs lent again, now, before
/// its process starts. poststop: the links wait (dormant) and the lent NICs go home; or, when
/// its bundle is gone (removed), the links are released and the container forgotten.
pub async fn container(
    ledger: &mut Ledger,
    restorer: &Restorer,
    event: &ContainerEvent,
) -> Result<Reply, ControlError> {
    let workload = Workload::Container {
        runtime: event.runtime.clone(),
        id: event.id.clone(),
        bundle: Some(event.bundle.clone()),
    };
    let is_it = |w: &Workload| w.same(&workload);
    let (text, followed) = match event.stage {
        Stage::CreateRuntime => {
            let Some(proc_netns) = event.netns() else {
                return Err(ControlError::NoNetns {
                    what: workload.to_string(),
                });
            };
            let inode = netns::inode_of(&proc_netns)?;
            let path = named_netns(ledger, &event.id, inode).unwrap_or(proc_netns);
            let locator = Locator::Path(path.clone());
            let incarnation = Incarnation {
                netns: path,
                inode,
                since: Utc::now(),
            };
            let record = ContainerRecord {
                runtime: event.runtime.clone(),
                id: event.id.clone(),
                bundle: event.bundle.clone(),
                incarnation: Some(incarnation.clone()),
                since: incarnation.since,
            };
            ledger.container_started(
                &record.runtime,
                &record.id,
                record.bundle.clone(),
                incarnation,
            );
            let moved = ledger.reincarnate_where(is_it, &locator, inode);
            // The hook tells the runtime and the bundle: kept for when the container goes.
            for key in &moved {
                ledger.bind_link(key, &workload);
            }
            let followed =
                container::at_start(restorer, ledger, &record, !moved.is_empty()).await?;
            (format!("{workload} in {locator}"), followed)
        }
        Stage::Poststart => return Ok(Reply::done(String::new(), serde_json::Value::Null)),
        Stage::Poststop if event.bundle.exists() => {
            let dormant = ledger.set_dormant_where(is_it, "the container is stopped");
            for key in &dormant {
                ledger.bind_link(key, &workload);
            }
            ledger.container_stopped(&event.runtime, &event.id, event.bundle.clone());
            let followed = container::at_stop(restorer, ledger, &event.id).await?;
            let text = format!(
                "{} link(s) of {workload} wait for its next start",
                dormant.len()
            );
            (text, followed)
        }
        Stage::Poststop => {
            let released =
                ledger.release_where(is_it, "the container is removed (its bundle is gone)");
            let followed = container::at_stop(restorer, ledger, &event.id).await?;
            ledger.forget_container(&event.id);
            let text = format!(
                "released {} link(s) of {workload}, forgotten",
                released.len()
            );
            (text, followed)
        }
    };
    let mut lines = vec![text];
    lines.extend(followed.lines);
    let ok = followed.ok
        && followed
            .report
            .as_ref()
            .is_none_or(|r| r.broken().next().is_none());
    if let Some(report) = &followed.report {
        lines.push(report.to_string());
    }
    Ok(Reply {
        ok,
        text: lines.join("\n"),
        detail: serde_json::to_value(&followed.report).unwrap_or_default(),
    })
}

/// `learn --container ID [--netns PATH]`: the links of the container's netns (by default the
/// one it runs in now), bound to it so they follow it to its next netns. The container must be
/// one netguard knows (from its hooks); a unique prefix of its ID names it.
pub async fn learn_container(
    ledger: &mut Ledger,
    restorer: &Restorer,
    netns: Option<&Path>,
    container: &str,
) -> Result<Reply, ControlError> {
    let netns = match netns {
        Some(path) => path.to_path_buf(),
        None => ledger.running_container(container)?.1.netns.clone(),
    };
    let workload = Workload::from(ledger.container(container)?);
    let locator = Locator::Path(netns);
    let mut specs: Vec<LinkSpec> = Vec::new();
    let learned =
        capture::learn(restorer.pool(), &mut specs, std::slice::from_ref(&locator)).await?;
    let mut text = format!("guarding for {workload} in {locator}:");
    for spec in specs {
        let key = spec.key();
        let in_container = spec.netns == locator;
        ledger.record_link(spec);
        if in_container {
            ledger.bind_link(&key, &workload);
        }
        text += &format!("\n  {key}");
    }
    for skipped in &learned.skipped {
        text += &format!("\n  skipped: {skipped}");
    }
    Ok(Reply::done(text, &learned))
}

/// The path under which a runtime bind-mounted the netns with `inode`, if it did: first the
/// CNI_NETNS of container `id`'s attachments (podman's CNI ADD, just before, gives the
/// container's ID), then the runtimes' netns directories, one `stat` per netns on the host.
fn named_netns(ledger: &Ledger, id: &str, inode: u64) -> Option<PathBuf> {
    let attached =
        ledger
            .links()
            .filter_map(|record| match (&record.workload, &record.spec.netns) {
                (Some(Workload::CniAttachment { container_id, .. }), Locator::Path(path))
                    if container_id == id =>
                {
                    Some(path.clone())
                }
                _ => None,
            });
    let bind_mounted = NETNS_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .map(|entry| entry.path());
    attached
        .chain(bind_mounted)
        .find(|path| netns::inode_of(path).is_ok_and(|i| i == inode))
}
