//! inotify on directories, read from tokio: what the agent and the netlink tracer use to hear
//! of netns bind mounts coming and going without rescanning.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use crate::netns::BIND_MOUNT_DIRS;

/// Files created in, moved into, deleted from or moved out of a directory.
pub const CHANGES: u32 =
    libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_FROM | libc::IN_MOVED_TO;

/// What one read told: the paths created (or moved in) in the watched directories, those
/// changed in any way (deleted and moved out too), and whether the kernel's queue overflowed
/// (then anything may have been missed).
#[derive(Debug, Default)]
pub struct Notices {
    pub created: Vec<PathBuf>,
    pub changed: Vec<PathBuf>,
    pub overflow: bool,
}

pub struct Inotify {
    fd: AsyncFd<OwnedFd>,
    dirs: HashMap<i32, PathBuf>,
    /// Each of [`BIND_MOUNT_DIRS`] watched, and the real directory it is (`/var/run/netns`
    /// is `/run/netns` on most systems).
    aliases: Vec<(PathBuf, PathBuf)>,
}

impl Inotify {
    pub fn new() -> std::io::Result<Inotify> {
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns; the OwnedFd keeps it open for
        // as long as the AsyncFd lives.
        let fd = unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd)) }?;
        Ok(Inotify {
            fd,
            dirs: HashMap::new(),
            aliases: Vec::new(),
        })
    }

    /// Watches `dir` for `mask` (e.g. [`CHANGES`]); watching it again is harmless.
    pub fn watch(&mut self, dir: &Path, mask: u32) -> std::io::Result<()> {
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, dir.to_path_buf());
        Ok(())
    }

    pub fn watches(&self, dir: &Path) -> bool {
        self.dirs.values().any(|d| d == dir)
    }

    /// Watches those of [`BIND_MOUNT_DIRS`] that exist and are not watched yet (`/var/run`
    /// is usually a link to `/run`: each real directory once). Call it again to pick up a
    /// directory made since (the first `ip netns add` makes `/run/netns`).
    /// Returns whether a directory was added.
    pub fn watch_bind_mount_dirs(&mut self) -> bool {
        let mut added = false;
        for dir in BIND_MOUNT_DIRS {
            if self
                .aliases
                .iter()
                .any(|(alias, _)| alias == Path::new(dir))
            {
                continue;
            }
            if let Ok(real) = std::fs::canonicalize(dir) {
                if !self.watches(&real) {
                    if let Err(e) = self.watch(&real, CHANGES) {
                        tracing::debug!("cannot watch {}: {e}", real.display());
                        continue;
                    }
                }
                self.aliases.push((PathBuf::from(dir), real));
                added = true;
            }
        }
        added
    }

    /// The bind-mount directories watched, by the names a ledger may know them by.
    pub fn bind_mount_dirs(&self) -> impl Iterator<Item = &Path> {
        self.aliases.iter().map(|(alias, _)| alias.as_path())
    }

    /// `path` (in a watched directory) under each name its directory is known by.
    pub fn aliases_of(&self, path: &Path) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Vec::new();
        };
        self.aliases
            .iter()
            .filter(|(_, real)| real == dir)
            .map(|(alias, _)| alias.join(name))
            .collect()
    }

    /// Waits until something happened, then reads all that is queued.
    pub async fn read(&self) -> std::io::Result<Notices> {
        loop {
            let mut guard = self.fd.readable().await?;
            let notices = self.try_read()?;
            if let Some(notices) = notices {
                return Ok(notices);
            }
            guard.clear_ready();
        }
    }

    /// Reads what is queued now, `None` if nothing is.
    pub fn try_read(&self) -> std::io::Result<Option<Notices>> {
        let mut notices: Option<Notices> = None;
        // Room for many events at once: a burst of container starts queues hundreds.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, within its length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                return match err.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(notices),
                    _ => Err(err),
                };
            }
            let got = notices.get_or_insert_with(Notices::default);
            self.parse(&buf[..n as usize], got);
        }
    }

    /// Walks the `inotify_event` records of one read.
    fn parse(&self, mut bytes: &[u8], notices: &mut Notices) {
        const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
        while bytes.len() >= HEADER {
            // SAFETY: at least HEADER bytes are there; read_unaligned copes with any alignment.
            let event: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let end = (HEADER + event.len as usize).min(bytes.len());
            let name = &bytes[HEADER..end];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                notices.overflow = true;
            } else if let Some(dir) = self.dirs.get(&event.wd) {
                let path = dir.join(OsStr::from_bytes(name));
                if event.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0 {
                    notices.created.push(path.clone());
                }
                notices.changed.push(path);
            }
            bytes = &bytes[end..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_created_in_a_watched_directory_is_named() {
        let dir = std::env::temp_dir().join(format!("netguard-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut inotify = Inotify::new().unwrap();
        inotify.watch(&dir, CHANGES).unwrap();
        assert!(inotify.watches(&dir));
        assert!(
            inotify.try_read().unwrap().is_none(),
            "nothing happened yet"
        );
        std::fs::write(dir.join("ns1"), b"").unwrap();
        std::fs::remove_file(dir.join("ns1")).unwrap();
        let notices = inotify.read().await.unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(notices.created, vec![dir.join("ns1")]);
        assert_eq!(notices.changed, vec![dir.join("ns1"), dir.join("ns1")]);
        assert!(!notices.overflow);
    }
}
