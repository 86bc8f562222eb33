//! Watching the netns bind-mount directories, so that a container's netns coming or going
//! wakes the reconciler at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::wake::links_in;
use super::Shared;
use crate::inotify::Inotify;

/// Wakes the reconciler when a netns bind mount appears or goes. Dropping our connection to a
/// deleted netns is what lets the kernel destroy it (and refund its NICs); a new netns at a
/// known path is a container restart to repair. A bind mount is made just after its file is
/// created, so the reconciler is woken again a little later too ([`FOLLOW_UPS`]); inotify is
/// read meanwhile, so the next container's restart is noticed at once.
pub(super) async fn watch_bind_mounts(shared: &Shared) {
    let mut inotify = match Inotify::new() {
        Ok(inotify) => inotify,
        Err(e) => {
            tracing::warn!("cannot watch netns bind mounts ({e}); relying on the interval");
            return std::future::pending().await;
        }
    };
    // When to wake the reconciler again, earliest first, and when what they follow happened.
    let mut follow_ups: Vec<Instant> = Vec::new();
    let mut seen_at = Instant::now();
    loop {
        if inotify.watch_bind_mount_dirs() {
            let dirs = inotify.bind_mount_dirs().map(Path::to_path_buf);
            shared.restorer.mounts().watching(dirs);
        }
        // At the latest in a second: directories that did not exist yet are looked for again
        // (the first `ip netns add` makes one).
        let next = follow_ups
            .first()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            read = inotify.read() => match read {
                Ok(notices) => {
                    let changed: Vec<PathBuf> = notices
                        .changed
                        .iter()
                        .flat_map(|path| inotify.aliases_of(path))
                        .collect();
                    let wanted = notices.overflow || concerns_guarded(shared, &changed);
                    shared.restorer.mounts().heard(changed, notices.overflow);
                    if wanted {
                        let now = Instant::now();
                        shared.wake_for(now);
                        seen_at = now;
                        follow_ups = FOLLOW_UPS.iter().map(|delay| now + *delay).collect();
                    }
                }
                Err(e) => {
                    tracing::warn!("watching netns bind mounts failed ({e}); relying on the interval");
                    return std::future::pending().await;
                }
            },
            _ = tokio::time::sleep_until(next) => {
                if !follow_ups.is_empty() {
                    follow_ups.remove(0);
                    shared.wake_for(seen_at);
                }
            }
        }
    }
}

/// Whether a guarded link (not released) lives at one of `paths` (other users' namespaces
/// coming and going are no reason for a pass). While a pass holds the ledger, assumed so.
fn concerns_guarded(shared: &Shared, paths: &[PathBuf]) -> bool {
    let Ok(ledger) = shared.ledger.try_lock() else {
        return true;
    };
    paths.iter().any(|path| links_in(ledger.content(), path))
}

/// After a bind mount came or went, the reconciler looks again this much later: the mount
/// follows its file's creation, and a deleted netns's teardown takes a while.
const FOLLOW_UPS: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];
