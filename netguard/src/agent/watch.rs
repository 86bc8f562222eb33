//! Watching the netns bind-mount directories, so that a container's netns coming or going
//! wakes the reconciler at once.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::Shared;
use crate::netns::BIND_MOUNT_DIRS;

/// Wakes the reconciler when a netns bind mount appears or goes. Dropping our connection to a
/// deleted netns is what lets the kernel destroy it (and refund its NICs); a new netns at a
/// known path is a container restart to repair. A bind mount is made just after its file is
/// created, so the reconciler is woken again a little later too ([`FOLLOW_UPS`]); inotify is
/// read meanwhile, so the next container's restart is noticed at once.
pub(super) async fn watch_bind_mounts(shared: &Shared) {
    let inotify = match Inotify::new() {
        Ok(inotify) => inotify,
        Err(e) => {
            tracing::warn!("cannot watch netns bind mounts ({e}); relying on the interval");
            return std::future::pending().await;
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    // When to wake the reconciler again, earliest first, and when what they follow happened.
    let mut follow_ups: Vec<Instant> = Vec::new();
    let mut seen_at = Instant::now();
    loop {
        for dir in BIND_MOUNT_DIRS {
            let Ok(real) = std::fs::canonicalize(dir) else {
                continue;
            };
            if !watched.contains(&real) && inotify.watch(&real, COMINGS_AND_GOINGS).is_ok() {
                watched.push(real);
            }
        }
        // At the latest in a second: directories that did not exist yet are looked for again
        // (the first `ip netns add` makes one).
        let next = follow_ups
            .first()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            read = inotify.readable() => match read {
                Ok(()) => {
                    let now = Instant::now();
                    shared.wake_for(now);
                    seen_at = now;
                    follow_ups = FOLLOW_UPS.iter().map(|delay| now + *delay).collect();
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

/// After a bind mount came or went, the reconciler looks again this much later: the mount
/// follows its file's creation, and a deleted netns's teardown takes a while.
const FOLLOW_UPS: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];

/// Files appearing and going in a watched directory.
pub(super) const COMINGS_AND_GOINGS: u32 =
    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO;

pub(super) struct Inotify(AsyncFd<OwnedFd>);

impl Inotify {
    pub(super) fn new() -> std::io::Result<Inotify> {
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns; the OwnedFd keeps it open for
        // as long as the AsyncFd lives.
        Ok(Inotify(unsafe {
            AsyncFd::register(OwnedFd::from_raw_fd(fd))
        }?))
    }

    pub(super) fn watch(&self, dir: &Path, mask: u32) -> std::io::Result<()> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until something happened, and drains the queue (what happened does not matter).
    pub(super) async fn readable(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.0.readable().await?;
            let mut buf = [0u8; 4096];
            // SAFETY: reading into a buffer we own, within its length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                while unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
                    > 0
                {}
                guard.clear_ready();
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err);
            }
            guard.clear_ready();
        }
    }
}
