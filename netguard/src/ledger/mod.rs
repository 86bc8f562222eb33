//! What netguard remembers, on disk: guarded physical NICs (identity, home name, where they
//! are, state) and guarded virtual links (full specs to rebuild them).
//!
//! One JSON document (`state.json`, atomic writes, checksummed) plus an append-only journal
//! (`journal.jsonl`, rotated by size). Every change goes to the journal at once; the document,
//! which compacts it, is written by [`Ledger::save`] (a command, at its end) or, in the agent,
//! by [`Ledger::save_when_due`]. A document that reads fine but
//! is damaged is moved aside untouched and the ledger is rebuilt from the journal; one that
//! cannot be read (an I/O error) stops the open, and stays where it is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod containers;
mod guarded;
pub mod journal;
mod observe;
pub mod record;
pub mod store;
#[cfg(test)]
pub(crate) mod testutil;
mod workloads;

use crate::blocking::off_runtime;
use journal::{Journal, JournalEntry};
// Re-exported: the records are written in the vocabulary's types.
pub use crate::model::*;
pub use containers::ContainerError;
pub use record::*;

/// The agent writes the document once this many journal entries, or this much time, have gone
/// by since it last did (and at its stop): the journal, fsynced, is the durable record, and the
/// whole document after every pass cost each container start ~1.5 ms of the agent's CPU and
/// each pass of a burst at 10,000 links 60-80 ms (docs/benchmarks.md).
const DOCUMENT_AFTER_ENTRIES: u64 = 4096;
const DOCUMENT_AFTER: Duration = Duration::from_secs(30);

/// The agent fsyncs the journal after a pass once its oldest line not yet fsynced is this old
/// (every interval has a pass): a container start sets off several passes, and an fsync after
/// each queued with the runtime's own on the same disk. What waits is what the kernel tells
/// again or what a crash of the machine ends anyway; a kernel change has what it relies on
/// fsynced before it ([`Ledger::commit`]).
const JOURNAL_SYNC_AFTER: Duration = Duration::from_secs(1);

/// Where the ledger lives unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/netguard";
pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot {action} {path}: {source} (check the ledger directory exists, is writable by root, and the disk is not full)")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the ledger document {path}: {source}; it was left where it is (only a document that reads fine and fails its checksum or layout is moved aside): fix the disk or the path, then start again")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path}: sequence number {seq} leaves no room for another entry (a damaged or hand-edited line); move the journal files away to start from the document")]
    SeqExhausted { path: PathBuf, seq: u64 },
    #[error("cannot encode ledger data for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {problem}; netguard will not overwrite it: upgrade netguard, or move the file away to start from the journal")]
    Newer {
        path: PathBuf,
        problem: store::DocProblem,
    },
}

/// Physical NICs never guarded, by name or MAC.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    pub names: Vec<String>,
    pub macs: Vec<Mac>,
}

#[derive(Debug, Clone)]
pub struct LedgerOptions {
    pub dir: PathBuf,
    /// Rotate the journal past this size.
    pub journal_max_bytes: u64,
    /// Rotated journal files kept.
    pub journal_keep: usize,
    pub exclude: Exclusions,
}

impl LedgerOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LedgerOptions {
            dir: dir.into(),
            journal_max_bytes: 8 << 20,
            journal_keep: 4,
            exclude: Exclusions::default(),
        }
    }
}

impl Default for LedgerOptions {
    fn default() -> Self {
        LedgerOptions::new(DEFAULT_DIR)
    }
}

/// How [`Ledger::open`] found things.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// No document and no journal: an empty ledger.
    Fresh,
    /// The document, plus `replayed` newer journal changes.
    Loaded { replayed: usize },
    /// The document was unusable: moved aside, ledger rebuilt from the journal.
    Rebuilt {
        file: PathBuf,
        problem: String,
        moved_to: Option<PathBuf>,
        replayed: usize,
    },
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Fresh => f.write_str("new empty ledger"),
            Opened::Loaded { replayed } => write!(
                f,
                "ledger loaded ({replayed} newer journal changes replayed)"
            ),
            Opened::Rebuilt {
                file,
                problem,
                moved_to,
                replayed,
            } => {
                write!(
                    f,
                    "ledger document {} is unusable ({problem}); ",
                    file.display()
                )?;
                if let Some(to) = moved_to {
                    write!(f, "kept aside untouched as {}; ", to.display())?;
                }
                write!(
                    f,
                    "ledger rebuilt from the journal ({replayed} changes); the next pass re-learns the rest from the live kernel"
                )
            }
        }
    }
}

/// Specs captured from the kernel or a CNI result go in as guarded links.
impl Extend<LinkSpec> for Ledger {
    fn extend<I: IntoIterator<Item = LinkSpec>>(&mut self, specs: I) {
        for spec in specs {
            self.record_link(spec);
        }
    }
}

pub struct Ledger {
    options: LedgerOptions,
    content: LedgerContent,
    journal: Journal,
    dirty: bool,
    /// A change since the last save or commit could not be journalled.
    journal_failed: bool,
    /// Counts the changes to the content since it was opened (not stored).
    revision: u64,
    /// When the document was last written (or found current, at open), and the revision then
    /// (every journalled change counts one).
    documented_at: Instant,
    documented_revision: u64,
}

impl Ledger {
    /// Opens the ledger in `options.dir` (created if needed): the document, brought forward
    /// with newer journal entries; or, when the document is unusable, moved aside and rebuilt
    /// from the journal. Only a document from a newer netguard stops it.
    pub fn open(options: LedgerOptions) -> Result<(Ledger, Opened), LedgerError> {
        std::fs::create_dir_all(&options.dir).map_err(|source| LedgerError::Io {
            action: "create",
            path: options.dir.clone(),
            source,
        })?;
        let path = options.dir.join(STATE_FILE);
        let loaded = store::load(&path)?;
        // A usable document already holds everything up to its `journal_seq`.
        let (after, layout) = match &loaded {
            store::Loaded::Good(content, layout) => (content.journal_seq, *layout),
            _ => (0, store::VERSION),
        };
        let replay = journal::read_since(&options.dir, after)?;
        let (mut content, opened) = match loaded {
            store::Loaded::Good(content, _) => (content, Opened::Loaded { replayed: 0 }),
            store::Loaded::Absent if replay.lines.is_empty() => {
                (LedgerContent::default(), Opened::Fresh)
            }
            store::Loaded::Absent => (
                LedgerContent::default(),
                Opened::Rebuilt {
                    file: path.clone(),
                    problem: "it does not exist".into(),
                    moved_to: None,
                    replayed: 0,
                },
            ),
            store::Loaded::Corrupt(problem) => {
                let moved_to = Some(store::move_aside(&path)?);
                let problem = problem.to_string();
                (
                    LedgerContent::default(),
                    Opened::Rebuilt {
                        file: path.clone(),
                        problem,
                        moved_to,
                        replayed: 0,
                    },
                )
            }
        };
        let replayed = journal::replay_into(&mut content, &replay.lines);
        let last_seq = replay.last_seq.max(content.journal_seq);
        let journal = Journal::open(
            &options.dir,
            options.journal_max_bytes,
            options.journal_keep,
            last_seq,
        )?;
        let opened = match opened {
            Opened::Loaded { .. } => Opened::Loaded { replayed },
            Opened::Rebuilt {
                file,
                problem,
                moved_to,
                ..
            } => Opened::Rebuilt {
                file,
                problem,
                moved_to,
                replayed,
            },
            Opened::Fresh => Opened::Fresh,
        };
        let mut ledger = Ledger {
            dirty: replayed > 0 || layout < store::VERSION,
            journal_failed: false,
            revision: 0,
            documented_at: Instant::now(),
            documented_revision: 0,
            options,
            content,
            journal,
        };
        ledger.forget_excluded_nics();
        match &opened {
            Opened::Rebuilt { .. } => {
                tracing::warn!("{opened}");
                ledger.append(JournalEntry::Note {
                    message: opened.to_string(),
                });
                ledger.save()?;
            }
            _ => tracing::info!("{}: {opened}", path.display()),
        }
        if layout < store::VERSION {
            // Written at once, so that an older netguard refuses it from now on rather than
            // loading it and dropping what it does not know.
            let kept = store::keep_older(&path, layout)?;
            ledger.save()?;
            tracing::info!(
                "{}: layout {layout} migrated to layout {}; the document as it was is kept as {}",
                path.display(),
                store::VERSION,
                kept.display()
            );
        }
        Ok((ledger, opened))
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Writes the document if anything changed since the last save; `Ok(true)` if written.
    pub fn save(&mut self) -> Result<bool, LedgerError> {
        if !self.dirty {
            return Ok(false);
        }
        off_runtime(|| self.write_document())
    }

    fn write_document(&mut self) -> Result<bool, LedgerError> {
        self.journal.sync()?;
        self.content.journal_seq = self.journal.last_seq();
        let path = self.options.dir.join(STATE_FILE);
        let bytes = store::encode(&self.content).map_err(|source| LedgerError::Encode {
            path: path.clone(),
            source,
        })?;
        store::write_atomic(&path, &bytes)?;
        self.documented_at = Instant::now();
        self.documented_revision = self.revision;
        self.dirty = false;
        self.journal_failed = false;
        Ok(true)
    }

    /// The agent's save after a pass: every change written, and durable (the journal fsynced)
    /// once it is [`JOURNAL_SYNC_AFTER`] old; the document written only when due
    /// ([`DOCUMENT_AFTER_ENTRIES`], [`DOCUMENT_AFTER`]) or when a change could not be
    /// journalled. `Ok(true)` if the document was written.
    pub fn save_when_due(&mut self) -> Result<bool, LedgerError> {
        if self.journal_failed
            || self.revision - self.documented_revision >= DOCUMENT_AFTER_ENTRIES
            || self.documented_at.elapsed() >= DOCUMENT_AFTER
        {
            return self.save();
        }
        if self
            .journal
            .unsynced_for()
            .is_some_and(|waited| waited >= JOURNAL_SYNC_AFTER)
        {
            off_runtime(|| self.journal.sync())?;
        }
        Ok(false)
    }

    /// Makes sure every change so far is written (journalled, or in the document when it could
    /// not be), without waiting for the disk: what only outlives the agent, not the machine.
    pub fn ensure_written(&mut self) -> Result<(), LedgerError> {
        if self.journal_failed {
            self.save()?;
        }
        Ok(())
    }

    /// Makes every change so far durable, for a kernel change about to rely on it (a NIC's
    /// home name before it leaves, its state before a repair): fsyncs the journal, or, when a
    /// change could not be journalled, writes the whole document. An error means the kernel
    /// change must not be made: it would rest on a record that exists only in memory.
    pub fn commit(&mut self) -> Result<(), LedgerError> {
        if self.journal_failed {
            self.save()?;
            return Ok(());
        }
        off_runtime(|| self.journal.sync())
    }

    pub fn content(&self) -> &LedgerContent {
        &self.content
    }

    /// Differs from one call to the next only if the content changed in between (every
    /// change is journalled, so every change counts): a pass need not look again at what
    /// it already planned for an unchanged ledger.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn put_nic(&mut self, record: NicRecord) {
        let entry = JournalEntry::PutNic { nic: record };
        entry.apply(&mut self.content);
        self.append(entry);
    }

    fn put_link(&mut self, record: LinkRecord) {
        let entry = JournalEntry::PutLink { link: record };
        entry.apply(&mut self.content);
        self.append(entry);
    }

    /// Journals one entry. A journal that cannot be written is logged, not fatal: the
    /// in-memory ledger has the change and the next [`save`](Self::save) makes it durable.
    fn append(&mut self, entry: JournalEntry) {
        self.dirty = true;
        self.revision += 1;
        off_runtime(|| self.append_now(entry))
    }

    fn append_now(&mut self, entry: JournalEntry) {
        if let Err(e) = self.journal.append(entry) {
            tracing::error!("{e}");
            self.journal_failed = true;
            return;
        }
        if self.journal.needs_rotation() {
            self.content.journal_seq = self.journal.last_seq();
            if let Err(e) = self.journal.rotate(&self.content) {
                tracing::error!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod migration;
#[cfg(test)]
mod tests;
