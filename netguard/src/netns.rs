//! Network namespace identity (nsfs inode), the names a namespace can be found by, and running
//! code inside one.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::event::{Netns, INIT_NET};

/// Directories where runtimes keep netns bind mounts.
pub const BIND_MOUNT_DIRS: &[&str] = &["/run/netns", "/var/run/netns", "/var/run/docker/netns"];

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open netns {path}: {source} (does the namespace exist, and are you root?)")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter netns {path}: {source}")]
    Enter {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace (expected an nsfs file such as /run/netns/NAME or /proc/PID/ns/net)")]
    NotNetns { path: PathBuf },
    #[error("opening netns {path} did not finish in {waited:?} (is it a FIFO, or on a filesystem that hangs?); that netns is skipped for now")]
    OpenHangs {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("the thread that entered netns {path} died")]
    ThreadDied { path: PathBuf },
}

/// nsfs inode of the netns a path (bind mount or `/proc/PID/ns/net`) refers to. By stat(2)
/// alone, and only for a namespace file: what else sits where a bind mount is expected (a
/// file not mounted yet, a FIFO whose open(2) would block) is no netns.
pub fn inode_of(path: &Path) -> Result<u64, NetnsError> {
    let meta = std::fs::metadata(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    if nsfs_dev().is_some_and(|dev| meta.dev() != dev) {
        return Err(NetnsError::NotNetns { path: path.into() });
    }
    Ok(meta.ino())
}

/// The device of the kernel's namespace filesystem (`None`: it could not be told).
fn nsfs_dev() -> Option<u64> {
    static DEV: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *DEV.get_or_init(|| {
        std::fs::metadata("/proc/self/ns/net")
            .ok()
            .map(|meta| meta.dev())
    })
}

/// How long opening a netns file may take before it is given up on for now.
const OPEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a netns file on a blocking thread: an open can hang (a FIFO or a file on a stuck
/// filesystem where a runtime's bind mount should be), and must not take a runtime worker
/// with it. One that hangs past [`OPEN_PATIENCE`] is an error; its thread is left to finish.
pub async fn open_off_runtime(path: &Path) -> Result<File, NetnsError> {
    let owned = path.to_path_buf();
    let opening = tokio::task::spawn_blocking(move || open(&owned));
    match tokio::time::timeout(OPEN_PATIENCE, opening).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(_)) => Err(NetnsError::ThreadDied { path: path.into() }),
        Err(_) => Err(NetnsError::OpenHangs {
            path: path.into(),
            waited: OPEN_PATIENCE,
        }),
    }
}

/// The inode of the netns standing in for the host: `host`, or else our own (init_net for
/// the agent and the commands as they are run).
pub fn host_inode(host: Option<&Path>) -> Result<u64, NetnsError> {
    inode_of(host.unwrap_or(Path::new("/proc/self/ns/net")))
}

/// Opens a netns file, checking it really is a network namespace.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.into(),
        source,
    })?;
    // NS_GET_NSTYPE answers CLONE_NEWNET only for a network namespace.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: ioctl on an fd we own, no pointers passed.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind != libc::CLONE_NEWNET {
        return Err(NetnsError::NotNetns { path: path.into() });
    }
    Ok(file)
}

/// Moves the calling thread into the netns `file` refers to. Only call this on a thread that
/// is dedicated to that netns (see [`spawn_in`]).
pub fn enter(file: &File, path: &Path) -> Result<(), NetnsError> {
    // SAFETY: setns on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter {
            path: path.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs `f` on a new OS thread that first entered the netns at `path`, and returns its
/// result. Sockets created by `f` stay bound to that netns after the thread ends.
/// The caller awaits the thread's answer instead of joining it.
pub async fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let owned = path.to_path_buf();
    let (reply, done) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = reply.send(open(&owned).and_then(|file| {
            enter(&file, &owned)?;
            Ok(f())
        }));
    });
    done.await
        .map_err(|_| NetnsError::ThreadDied { path: path.into() })?
}

/// Knows, for each netns inode seen, the names it can be found by. Names are kept after the
/// namespace dies, so an event about a dead netns still says which one it was.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: Arc<Mutex<ResolverState>>,
}

#[derive(Debug)]
struct ResolverState {
    host_inode: u64,
    host_name: String,
    init_inode: Option<u64>,
    names: HashMap<u64, Vec<String>>,
}

impl Resolver {
    /// `host` is the netns standing in for the host (`None`: init_net, via `/proc/1/ns/net`).
    pub fn new(host: Option<&Path>) -> Result<Self, NetnsError> {
        let init_inode = inode_of(Path::new("/proc/1/ns/net")).ok();
        let host_inode = host_inode(host)?;
        let host_name = host.map_or_else(|| INIT_NET.to_string(), |p| p.display().to_string());
        let resolver = Resolver {
            inner: Arc::new(Mutex::new(ResolverState {
                host_inode,
                host_name,
                init_inode,
                names: HashMap::new(),
            })),
        };
        resolver.rescan();
        Ok(resolver)
    }

    /// The inode of the host netns (init_net, or the `--host-netns` stand-in).
    pub fn host_inode(&self) -> u64 {
        self.lock().host_inode
    }

    /// The inode of the real init_net (where the kernel hands back physical NICs of a dying
    /// netns), when `/proc/1/ns/net` is readable.
    pub fn init_inode(&self) -> Option<u64> {
        self.lock().init_inode
    }

    /// Re-reads every place namespaces are found by; returns the live ones (inode -> one path
    /// that opens it), host first.
    pub fn rescan(&self) -> BTreeMap<u64, PathBuf> {
        let found = scan();
        let mut live = BTreeMap::new();
        let mut state = self.lock();
        for (inode, paths) in &found {
            state.name(*inode, paths);
            live.insert(*inode, paths[0].clone());
        }
        live
    }

    /// Notes one more path the netns with this inode is found by (a bind mount just seen).
    pub fn note(&self, inode: u64, path: &Path) {
        self.lock().name(inode, &[path.to_path_buf()]);
    }

    /// Describes a netns inode with the names it was last found by.
    pub fn describe(&self, inode: u64) -> Netns {
        let state = self.lock();
        let mut names = Vec::new();
        if inode == state.host_inode {
            names.push(state.host_name.clone());
        }
        if Some(inode) == state.init_inode && state.host_name != INIT_NET {
            names.push(INIT_NET.to_string());
        }
        if let Some(known) = state.names.get(&inode) {
            names.extend(
                known
                    .iter()
                    .filter(|n| !names.contains(n))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        Netns { inode, names }
    }

    /// Drops the names of a netns seen dying, so that a new netns reusing its inode is not
    /// described by them. Events made before keep their own copy.
    pub fn forget(&self, inode: u64) {
        self.lock().names.remove(&inode);
    }

    /// Like [`describe`](Self::describe), rescanning first when the inode is unknown.
    pub fn describe_fresh(&self, inode: u64) -> Netns {
        let known = {
            let state = self.lock();
            inode == state.host_inode || state.names.contains_key(&inode)
        };
        if !known {
            self.rescan();
        }
        self.describe(inode)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ResolverState> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ResolverState {
    fn name(&mut self, inode: u64, paths: &[PathBuf]) {
        let entry = self.names.entry(inode).or_default();
        for p in paths {
            let name = p.display().to_string();
            if !entry.contains(&name) {
                entry.push(name);
            }
        }
        // Bind mounts name a netns better than a process that may be gone soon.
        entry.sort_by(|a, b| (a.starts_with("/proc/"), a).cmp(&(b.starts_with("/proc/"), b)));
    }
}

/// Every netns reachable now: bind mounts first, then `/proc/PID/ns/net`; inode -> paths.
fn scan() -> BTreeMap<u64, Vec<PathBuf>> {
    let mut found: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(inode) = inode_of(&path) {
            found.entry(inode).or_default().push(path);
        }
    };
    // /var/run is usually a link to /run: read each real directory once.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in BIND_MOUNT_DIRS {
        if let Ok(real) = std::fs::canonicalize(dir) {
            if !dirs.contains(&real) {
                dirs.push(real);
            }
        }
    }
    for dir in dirs {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                add(entry.path());
            }
        }
    }
    let mut seen_proc = std::collections::HashSet::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let path = entry.path().join("ns/net");
            if let Ok(inode) = inode_of(&path) {
                // One process per netns is enough to find it by.
                if seen_proc.insert(inode) {
                    found.entry(inode).or_default().push(path);
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_is_found_and_named() {
        let resolver = Resolver::new(None).unwrap();
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let ns = resolver.describe(own);
        assert!(ns.is_init(), "{ns:?}");
        let live = resolver.rescan();
        assert!(live.contains_key(&own));
    }

    #[test]
    fn a_regular_file_is_not_a_netns() {
        let err = open(Path::new("/proc/self/status")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/proc/self/status is not a network namespace"),
            "{err}"
        );
    }

    #[test]
    fn unknown_inode_is_described_by_number() {
        let resolver = Resolver::new(None).unwrap();
        assert_eq!(resolver.describe(12345).to_string(), "12345");
    }
}
