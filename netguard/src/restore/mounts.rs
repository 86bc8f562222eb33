//! What the agent's watch on the netns bind-mount directories tells the restorer, so that an
//! idle pass need not `stat` every netns path to learn that none was mounted anew.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::ledger::Locator;

/// Until told otherwise every path is looked at (one `stat` each pass): a one-shot
/// `netguard restore`, or an agent that could not watch the directories.
#[derive(Debug, Default)]
pub struct MountNotices {
    /// Directories watched, by the names a ledger may use.
    watched: HashSet<PathBuf>,
    /// Paths in them created or removed since the last pass.
    changed: HashSet<PathBuf>,
    /// Something may have been missed (the watch overflowed, a directory is new).
    everything: bool,
}

impl MountNotices {
    /// The watcher now covers `dirs` (every one of them, from now on).
    pub fn watching(&mut self, dirs: impl IntoIterator<Item = PathBuf>) {
        let before = self.watched.len();
        self.watched.extend(dirs);
        // A file made in a directory before its watch began went unannounced.
        self.everything |= self.watched.len() != before;
    }

    /// Paths changed (already under each name their directory has), or everything.
    pub fn heard(&mut self, paths: impl IntoIterator<Item = PathBuf>, everything: bool) {
        self.changed.extend(paths);
        self.everything |= everything;
    }

    /// What a pass goes by, leaving nothing heard for the next one.
    pub(super) fn take(&mut self) -> MountNotices {
        MountNotices {
            watched: self.watched.clone(),
            changed: std::mem::take(&mut self.changed),
            everything: std::mem::take(&mut self.everything),
        }
    }

    /// Whether the netns at `locator` may have been replaced since the last pass without a
    /// word from the watch: a path outside the watched directories, one announced, or any
    /// after a loss.
    pub(super) fn may_have_moved(&self, locator: &Locator) -> bool {
        self.everything
            || !self.watches(locator)
            || matches!(locator, Locator::Path(path) if self.changed.contains(path))
    }

    /// Whether a new mount at `locator` would be announced (the host's netns is no path).
    pub(super) fn watches(&self, locator: &Locator) -> bool {
        match locator {
            Locator::Host => false,
            Locator::Path(path) => path.parent().is_some_and(|dir| self.watched.contains(dir)),
        }
    }

    /// Nothing mounted or unmounted since the last pass, as far as the watch knows.
    pub(super) fn nothing_heard(&self) -> bool {
        !self.everything && self.changed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: &str) -> Locator {
        Locator::Path(p.into())
    }

    #[test]
    fn only_announced_paths_in_watched_directories_are_looked_at() {
        let mut mounts = MountNotices::default();
        assert!(
            mounts.take().may_have_moved(&at("/run/netns/a")),
            "not watching yet"
        );
        mounts.watching([PathBuf::from("/run/netns"), PathBuf::from("/var/run/netns")]);
        assert!(
            mounts.take().may_have_moved(&at("/run/netns/a")),
            "the watch is new"
        );
        let quiet = mounts.take();
        assert!(quiet.nothing_heard());
        assert!(quiet.watches(&at("/run/netns/a")));
        assert!(!quiet.watches(&at("/proc/42/ns/net")));
        assert!(!quiet.may_have_moved(&at("/run/netns/a")));
        assert!(!quiet.may_have_moved(&at("/var/run/netns/a")));
        assert!(quiet.may_have_moved(&at("/proc/42/ns/net")), "not watched");
        assert!(quiet.may_have_moved(&Locator::Host));
        mounts.heard([PathBuf::from("/run/netns/b")], false);
        let heard = mounts.take();
        assert!(!heard.nothing_heard());
        assert!(heard.may_have_moved(&at("/run/netns/b")));
        assert!(!heard.may_have_moved(&at("/run/netns/a")));
        assert!(
            !mounts.take().may_have_moved(&at("/run/netns/b")),
            "heard once"
        );
        mounts.heard([], true);
        let overflowed = mounts.take();
        assert!(!overflowed.nothing_heard());
        assert!(
            overflowed.may_have_moved(&at("/run/netns/a")),
            "after an overflow"
        );
    }
}
