//! Watching libcni's result cache: runtimes whose chain cannot carry the netguard plugin
//! (containerd, CRI-O, Multus) still leave one file per attachment there. A new file whose
//! netns lives is an attachment to guard; a file removed (a successful DEL) releases it; a
//! file whose netns is gone (a failed DEL leaves it behind) is an attachment that is over.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Shared;
use crate::capture::cni;
use crate::control::runtime::{cni_add, cni_del, note_cache_entry};
use crate::inotify::{Inotify, CHANGES};
use crate::ledger::{Ledger, LinkState, Workload};
use crate::runtime::cni_plugin::AttachmentRef;

/// What the cache held at the last look, by file.
#[derive(Default)]
struct Seen {
    /// Whether the ledger was compared with the cache once since the agent started.
    compared: bool,
    attachments: HashMap<PathBuf, AttachmentRef>,
    /// Files that did not parse, with why (logged once per reason).
    bad: HashMap<PathBuf, String>,
}

/// Follows the cache directories `dirs` (those that do not exist yet are looked for every
/// second: libcni makes its directory at the first ADD).
pub(super) async fn watch_cni_caches(shared: &Shared, dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return std::future::pending().await;
    }
    let mut inotify = match Inotify::new() {
        Ok(inotify) => inotify,
        Err(e) => {
            tracing::warn!(
                "cannot watch libcni's cache ({e}): attachments only from the netguard CNI plugin"
            );
            return std::future::pending().await;
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    let mut seen = Seen::default();
    loop {
        watched.retain(|dir| dir.is_dir());
        let mut more = false;
        for dir in &dirs {
            if watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            // A file is read once written whole (libcni writes it in place).
            match inotify.watch(dir, CHANGES | libc::IN_CLOSE_WRITE) {
                Ok(()) => {
                    tracing::info!("watching libcni's cache in {}", dir.display());
                    watched.push(dir.clone());
                    more = true;
                }
                Err(e) => tracing::warn!("cannot watch {}: {e}", dir.display()),
            }
        }
        if more {
            sync(shared, &watched, &mut seen).await;
        }
        tokio::select! {
            read = inotify.read() => match read {
                Ok(_) => sync(shared, &watched, &mut seen).await,
                Err(e) => {
                    tracing::warn!("watching libcni's cache failed ({e}); its changes are not followed any more");
                    return std::future::pending().await;
                }
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Brings the ledger in line with the cache files in `dirs`.
async fn sync(shared: &Shared, dirs: &[PathBuf], seen: &mut Seen) {
    let files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    let mut ledger = shared.ledger.lock().await;
    if !seen.compared {
        seen.compared = true;
        release_deleted_while_away(&mut ledger, dirs, &files);
    }
    let gone: Vec<PathBuf> = seen
        .attachments
        .keys()
        .filter(|p| !files.contains(p))
        .cloned()
        .collect();
    for path in gone {
        if let Some(att) = seen.attachments.remove(&path) {
            release(
                &mut ledger,
                &att,
                &format!("{} was removed", path.display()),
            );
        }
    }
    seen.bad.retain(|p, _| files.contains(p));
    for path in files {
        let entry = match read(&path) {
            Ok(entry) => {
                seen.bad.remove(&path);
                entry
            }
            // Created, not yet written: it comes back at its close.
            Err(_) if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) => continue,
            Err(why) => {
                // A known attachment stays whatever its file says meanwhile.
                if seen.bad.get(&path) != Some(&why) {
                    tracing::warn!("libcni cache: {why}");
                    seen.bad.insert(path, why);
                }
                continue;
            }
        };
        let (att, cannot_restore) = entry;
        let workload = att.workload();
        let netns = att.netns.as_deref().unwrap_or(Path::new(""));
        if crate::netns::open(netns).is_err() {
            let known = seen.attachments.remove(&path).is_some();
            let guarded = ledger
                .links_of(&workload)
                .iter()
                .any(|key| ledger.content().links[key].state != LinkState::Released);
            if known || guarded {
                let why = format!(
                    "its netns {} is gone (the attachment is over)",
                    netns.display()
                );
                release(&mut ledger, &att, &why);
            }
            continue;
        }
        if seen.attachments.get(&path) == Some(&att) {
            continue;
        }
        if let Some(old) = seen.attachments.insert(path.clone(), att.clone()) {
            if old.workload() != workload {
                release(
                    &mut ledger,
                    &old,
                    &format!("{} now names another", path.display()),
                );
            }
        }
        // The netguard plugin in the chain may have guarded it already.
        if ledger.links_of(&workload).is_empty() {
            match cni_add(&mut ledger, &shared.restorer, &att).await {
                Ok(reply) if reply.ok => {
                    tracing::info!("libcni cache {}: {}", path.display(), reply.text)
                }
                Ok(reply) => tracing::warn!("libcni cache {}: {}", path.display(), reply.text),
                Err(e) => tracing::warn!("libcni cache {}: {att} not guarded: {e}", path.display()),
            }
        }
        note_cache_entry(&mut ledger, &workload, &path, &cannot_restore);
    }
    if let Err(e) = ledger.save_when_due() {
        tracing::error!("{e}");
    }
    drop(ledger);
    shared.wake.notify_one();
}

/// Attachments a cache file in `dirs` recorded before this agent started, whose file is gone
/// now: deleted (a successful DEL) while no agent ran, so released, not restored.
fn release_deleted_while_away(ledger: &mut Ledger, dirs: &[PathBuf], files: &[PathBuf]) {
    let away: Vec<(AttachmentRef, PathBuf)> = ledger
        .links()
        .filter(|r| r.state != LinkState::Released)
        .filter_map(|r| match (&r.workload, &r.cni_cache_file) {
            (
                Some(Workload::CniAttachment {
                    network,
                    container_id,
                    ifname,
                    pod_uid,
                }),
                Some(file),
            ) if file.parent().is_some_and(|d| dirs.iter().any(|w| w == d))
                && !files.contains(file) =>
            {
                let att = AttachmentRef {
                    network: network.clone(),
                    container_id: container_id.clone(),
                    ifname: ifname.clone(),
                    netns: None,
                    pod_uid: pod_uid.clone(),
                };
                Some((att, file.clone()))
            }
            _ => None,
        })
        .collect();
    for (att, file) in away {
        release(
            ledger,
            &att,
            &format!("{} was removed while no agent ran", file.display()),
        );
    }
}

fn release(ledger: &mut Ledger, att: &AttachmentRef, why: &str) {
    let reply = cni_del(ledger, att, &format!("libcni cache: {why}"));
    tracing::info!("libcni cache: {why}: {}", reply.text);
}

/// One cache file as the attachment it records, and what its network's plugins set up that
/// netguard cannot re-create.
fn read(path: &Path) -> Result<(AttachmentRef, Vec<String>), String> {
    let entry = cni::read(path).map_err(|e| e.to_string())?;
    let (Some(network), Some(container_id)) = (entry.network, entry.container_id) else {
        return Err(format!(
            "{} names no network or container ID: not a libcni cache entry",
            path.display()
        ));
    };
    let att = AttachmentRef {
        network,
        container_id,
        ifname: entry.ifname,
        netns: Some(entry.netns),
        pod_uid: entry.pod_uid,
    };
    Ok((att, entry.cannot_restore))
}
