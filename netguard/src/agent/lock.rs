//! The ledger directory's lock: one agent, or one command working without an agent, at a time.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use super::{AgentOptions, LOCK_PATIENCE};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ledger in {dir} is in use by another netguard (an agent, or a command still running); stop it or use another --state-dir")]
    Busy { dir: PathBuf },
}

/// An exclusive hold on a ledger directory for as long as it lives: the agent holds it while it
/// runs, a command holds it while it changes the ledger without an agent.
pub struct StateLock(#[allow(dead_code, reason = "held for its flock")] File);

impl StateLock {
    /// Waits a little for a command that holds the lock to finish (a `status` run while the
    /// agent starts, say); a holder that stays is another agent.
    pub async fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        const PATIENCE: Duration = Duration::from_secs(10);
        let started = tokio::time::Instant::now();
        loop {
            match StateLock::try_acquire(dir) {
                Err(LockError::Busy { .. }) if started.elapsed() < PATIENCE => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                locked => return locked,
            }
        }
    }

    /// One attempt: `Busy` if somebody holds it now.
    pub fn try_acquire(dir: &Path) -> Result<StateLock, LockError> {
        let path = dir.join("lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(StateLock(file));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Err(LockError::Busy { dir: dir.into() })
        } else {
            Err(io(err))
        }
    }
}

/// The ledger's lock. A command working without an agent holds it for a moment: wait for it.
/// Another agent holds it for good: refuse, at once if it answers on our socket.
pub(super) async fn lock_ledger(options: &AgentOptions) -> Result<StateLock, LockError> {
    let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
    let mut told = false;
    loop {
        match StateLock::try_acquire(&options.ledger.dir) {
            Err(LockError::Busy { dir })
                if tokio::time::Instant::now() < deadline
                    && UnixStream::connect(&options.socket).await.is_err() =>
            {
                if !std::mem::replace(&mut told, true) {
                    let dir = dir.display();
                    tracing::info!("the ledger in {dir} is in use by a netguard command; waiting up to {LOCK_PATIENCE:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            locked => return locked,
        }
    }
}
