//! Network namespaces made the way a container runtime makes them: a bind mount under
//! `/run/netns`, created and removed in-process (what `ip netns add` and `ip netns del` do), so
//! that re-creating a thousand of them takes milliseconds, not a thousand processes.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const RUN_NETNS: &str = "/run/netns";

/// Every benchmark netns is named `ngb<pid>-...`, so that one left by a killed run is known.
pub const PREFIX: &str = "ngb";

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL")
}

/// The last OS error unless `ret` is 0 (raw, so callers can match on errno).
fn sys(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(cstr);
    let target = cstr(target);
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    sys(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            c"none".as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so that the namespaces
/// mounted under it are seen from other mount namespaces too. Idempotent.
pub fn prepare() -> io::Result<()> {
    let dir = Path::new(RUN_NETNS);
    std::fs::create_dir_all(dir)?;
    match mount(None, dir, libc::MS_SHARED | libc::MS_REC) {
        // Not a mount point yet: make it one, then shared.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            mount(Some(dir), dir, libc::MS_BIND | libc::MS_REC)?;
            mount(None, dir, libc::MS_SHARED | libc::MS_REC)
        }
        other => other,
    }
    .map_err(context(format!("making {RUN_NETNS} a shared mount point")))
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new(RUN_NETNS).join(name)
}

/// Creates a netns and mounts it at `path`. `at_birth` runs inside it first, before any
/// other process can find it (the agent benchmark opens its watching socket there).
pub fn create<T: Send + 'static>(
    path: &Path,
    at_birth: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    // The mount point, made first so that a failure leaves no netns behind.
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create {}: {e} (is a netns of that name left over?)",
                    path.display()
                ),
            )
        })?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> io::Result<T> {
        // SAFETY: unshare affects only this thread, which ends right after.
        sys(unsafe { libc::unshare(libc::CLONE_NEWNET) })
            .map_err(context("unshare(CLONE_NEWNET)".into()))?;
        let value = at_birth()?;
        mount(
            Some(Path::new("/proc/thread-self/ns/net")),
            &target,
            libc::MS_BIND,
        )
        .map_err(context(format!(
            "bind-mounting the new netns on {}",
            target.display()
        )))?;
        Ok(value)
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the thread creating a netns panicked")));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts the netns at `path` (it dies once nothing else holds it) and removes the mount
/// point. Absent already is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    let target = cstr(path);
    // SAFETY: a NUL-terminated path.
    match sys(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }) {
        // EINVAL: not mounted (a half-made netns); ENOENT: gone already.
        Err(e) if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
            return Err(context(format!("umount {}", path.display()))(e));
        }
        _ => {}
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the namespaces that earlier runs left when they were killed before cleaning up:
/// `ngb<pid>-*` whose process is gone. Returns their names.
pub fn remove_stale() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(RUN_NETNS) else {
        return vec![];
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.is_empty()
            || !pid.bytes().all(|b| b.is_ascii_digit())
            || Path::new("/proc").join(pid).exists()
        {
            continue;
        }
        if remove(&entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}
