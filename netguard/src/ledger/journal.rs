//! Append-only JSON-lines journal of events, ledger changes and restore actions, rotated by
//! size. Every line has a sequence number; the ledger document records the last one it folded
//! in, so the journal alone can rebuild (or bring forward) the ledger. Each rotated-to file
//! starts with a snapshot of the whole ledger, so rotating never loses state.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::LedgerError;
use super::{
    ContainerRecord, Flight, LedgerContent, LinkKey, LinkRecord, Locator, NicIdentity, NicRecord,
};
use crate::event::Event;

pub const FILE_NAME: &str = "journal.jsonl";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum JournalEntry {
    /// The whole ledger (first line of every journal file).
    Snapshot {
        content: LedgerContent,
    },
    PutNic {
        nic: NicRecord,
    },
    ForgetNic {
        identity: NicIdentity,
    },
    PutLink {
        link: LinkRecord,
    },
    ForgetLink {
        key: LinkKey,
    },
    /// A device about to get a temporary name (fsynced before it does).
    TakeOff {
        flight: Flight,
    },
    /// The device that had temporary name `name` in `netns` has landed (or was put back).
    Landed {
        netns: Locator,
        name: String,
    },
    PutContainer {
        container: ContainerRecord,
    },
    ForgetContainer {
        id: String,
    },
    /// A kernel event the ledger was told about.
    Event {
        event: Event,
    },
    /// A restore item's actions, in order, and how the last one went (`ok`, or the kernel's
    /// words).
    Actions {
        target: String,
        actions: serde_json::Value,
        outcome: String,
    },
    /// One restore action, as journals written before `Actions` have them (read, not written).
    Action {
        action: serde_json::Value,
        outcome: String,
    },
    /// Something worth knowing later (ledger rebuilt, document moved aside, ...).
    Note {
        message: String,
    },
}

impl JournalEntry {
    /// Folds a change into `content`; events, actions and notes change nothing.
    pub fn apply(&self, content: &mut LedgerContent) {
        match self {
            JournalEntry::Snapshot { content: snap } => *content = snap.clone(),
            JournalEntry::PutNic { nic } => {
                match content.nics.iter_mut().find(|n| n.identity == nic.identity) {
                    Some(slot) => *slot = nic.clone(),
                    None => content.nics.push(nic.clone()),
                }
            }
            JournalEntry::ForgetNic { identity } => {
                content.nics.retain(|n| &n.identity != identity)
            }
            JournalEntry::PutLink { link } => {
                content.links.insert(link.spec.key(), link.clone());
            }
            JournalEntry::ForgetLink { key } => {
                content.links.remove(key);
            }
            JournalEntry::TakeOff { flight } => {
                content
                    .flights
                    .retain(|f| (&f.netns, &f.name) != (&flight.netns, &flight.name));
                content.flights.push(flight.clone());
            }
            JournalEntry::Landed { netns, name } => {
                content
                    .flights
                    .retain(|f| (&f.netns, &f.name) != (netns, name));
            }
            JournalEntry::PutContainer { container } => {
                content.containers.retain(|c| c.id != container.id);
                content.containers.push(container.clone());
            }
            JournalEntry::ForgetContainer { id } => content.containers.retain(|c| &c.id != id),
            JournalEntry::Event { .. }
            | JournalEntry::Actions { .. }
            | JournalEntry::Action { .. }
            | JournalEntry::Note { .. } => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalLine {
    pub seq: u64,
    pub time: DateTime<Utc>,
    #[serde(flatten)]
    pub entry: JournalEntry,
}

/// What reading the journal files found.
#[derive(Debug, Default)]
pub struct Replay {
    pub lines: Vec<JournalLine>,
    /// Lines that did not parse (a torn last write, damage); skipped.
    pub skipped: usize,
    /// The highest sequence number read (0: none).
    pub last_seq: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: usize,
    next_seq: u64,
    /// When the first line since the last fsync was written.
    unsynced_since: Option<Instant>,
}

impl Journal {
    /// Opens `dir/journal.jsonl` for appending; sequence numbers continue after `last_seq`.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        keep: usize,
        last_seq: u64,
    ) -> Result<Journal, LedgerError> {
        let path = dir.join(FILE_NAME);
        let file = open_append(&path)?;
        let size = file
            .metadata()
            .map_err(|source| LedgerError::Io {
                action: "stat",
                path: path.clone(),
                source,
            })?
            .len();
        let next_seq = last_seq
            .checked_add(1)
            .ok_or_else(|| LedgerError::SeqExhausted {
                path: path.clone(),
                seq: last_seq,
            })?;
        let mut journal = Journal {
            path,
            file,
            size,
            max_bytes,
            keep,
            next_seq,
            unsynced_since: None,
        };
        journal.close_torn_line()?;
        Ok(journal)
    }

    /// A crash mid-write leaves a last line without its newline: end it, so that the next
    /// entry starts a line of its own instead of being glued to the fragment (and skipped with
    /// it on replay). The fragment stays, skipped as damaged.
    fn close_torn_line(&mut self) -> Result<(), LedgerError> {
        if self.size == 0 {
            return Ok(());
        }
        let mut last = [0u8];
        self.file
            .read_exact_at(&mut last, self.size - 1)
            .map_err(|source| LedgerError::Io {
                action: "read the end of",
                path: self.path.clone(),
                source,
            })?;
        if last[0] == b'\n' {
            return Ok(());
        }
        tracing::warn!(
            "{}: the last line was torn by a crash; it is closed and skipped",
            self.path.display()
        );
        self.write_line(b"\n")?;
        self.sync()
    }

    /// Appends one line; returns its sequence number. One `write` per line, so a crash tears
    /// at most the last line (skipped on replay).
    pub fn append(&mut self, entry: JournalEntry) -> Result<u64, LedgerError> {
        let after = self
            .next_seq
            .checked_add(1)
            .ok_or_else(|| LedgerError::SeqExhausted {
                path: self.path.clone(),
                seq: self.next_seq,
            })?;
        let line = JournalLine {
            seq: self.next_seq,
            time: Utc::now(),
            entry,
        };
        let mut text = serde_json::to_vec(&line).map_err(|e| LedgerError::Encode {
            path: self.path.clone(),
            source: e,
        })?;
        text.push(b'\n');
        self.write_line(&text)?;
        self.next_seq = after;
        Ok(line.seq)
    }

    fn write_line(&mut self, bytes: &[u8]) -> Result<(), LedgerError> {
        self.file
            .write_all(bytes)
            .map_err(|source| LedgerError::Io {
                action: "append to",
                path: self.path.clone(),
                source,
            })?;
        self.size += bytes.len() as u64;
        self.unsynced_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// How long the oldest line not yet fsynced has waited; `None` when every line is.
    pub fn unsynced_for(&self) -> Option<Duration> {
        self.unsynced_since.map(|since| since.elapsed())
    }

    /// Makes the lines not yet fsynced look `age` older, for tests of when they are.
    #[cfg(test)]
    pub(crate) fn age_unsynced(&mut self, age: Duration) {
        self.unsynced_since = self.unsynced_since.and_then(|since| since.checked_sub(age));
    }

    /// Makes every line written so far durable (nothing to do when none was written since).
    pub fn sync(&mut self) -> Result<(), LedgerError> {
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| LedgerError::Io {
            action: "fsync",
            path: self.path.clone(),
            source,
        })?;
        self.unsynced_since = None;
        Ok(())
    }

    pub fn needs_rotation(&self) -> bool {
        self.size >= self.max_bytes
    }

    /// Shifts `journal.jsonl` -> `.1` -> `.2` ... (dropping the oldest beyond `keep`) and
    /// starts a new file with `snapshot`.
    pub fn rotate(&mut self, snapshot: &LedgerContent) -> Result<(), LedgerError> {
        self.sync()?;
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for n in (1..=self.keep).rev() {
            let from = if n == 1 {
                self.path.clone()
            } else {
                rotated(&dir, n - 1)
            };
            let to = rotated(&dir, n);
            match fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(LedgerError::Io {
                        action: "rotate",
                        path: from,
                        source,
                    })
                }
            }
        }
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.append(JournalEntry::Snapshot {
            content: snapshot.clone(),
        })?;
        self.sync()?;
        super::store::sync_dir(&dir)
    }
}

fn rotated(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("{FILE_NAME}.{n}"))
}

/// Opened for reading too: [`Journal::close_torn_line`] looks at the last byte.
fn open_append(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LedgerError::Io {
            action: "open",
            path: path.to_path_buf(),
            source,
        })
}

/// The journal lines newer than `after` (all of them for 0), oldest first. Files are read
/// newest first, and an older one only while the lines found do not yet reach back to `after`
/// or to a snapshot (which stands for everything before it). Lines at or before `after` are
/// skipped on their sequence number alone: the document already holds them, and parsing a long
/// journal at every start would cost more than the work the command came to do.
pub fn read_since(dir: &Path, after: u64) -> Result<Replay, LedgerError> {
    let mut replay = Replay::default();
    // Newest first; each file's lines are kept apart until the order is restored below.
    let mut newest_first: Vec<Vec<JournalLine>> = Vec::new();
    for path in files_newest_first(dir)? {
        let mut lines = Vec::new();
        let mut first_line = true;
        let mut first_seq = None;
        let mut starts_with_snapshot = false;
        for line in read_lines(&path)? {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let seq = leading_seq(&line);
            let is_first = std::mem::take(&mut first_line);
            if is_first {
                first_seq = seq;
            }
            if let Some(folded) = seq.filter(|seq| *seq <= after) {
                replay.last_seq = replay.last_seq.max(folded);
                continue;
            }
            match serde_json::from_slice::<JournalLine>(&line) {
                Ok(parsed) => {
                    if is_first {
                        first_seq = Some(parsed.seq);
                        starts_with_snapshot =
                            matches!(parsed.entry, JournalEntry::Snapshot { .. });
                    }
                    replay.last_seq = replay.last_seq.max(parsed.seq);
                    lines.push(parsed);
                }
                Err(e) => {
                    tracing::warn!("skipping a damaged line in {}: {e}", path.display());
                    replay.skipped += 1;
                }
            }
        }
        newest_first.push(lines);
        if starts_with_snapshot || first_seq.is_some_and(|seq| seq <= after.saturating_add(1)) {
            break;
        }
    }
    replay.lines = newest_first.into_iter().rev().flatten().collect();
    Ok(replay)
}

/// `journal.jsonl`, then `journal.jsonl.1`, `.2`, ... (a higher suffix is older).
fn files_newest_first(dir: &Path) -> Result<Vec<PathBuf>, LedgerError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LedgerError::Io {
                action: "list",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files: Vec<(usize, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == FILE_NAME {
            files.push((0, entry.path()));
        } else if let Some(n) = name
            .strip_prefix(&format!("{FILE_NAME}."))
            .and_then(|n| n.parse().ok())
        {
            files.push((n, entry.path()));
        }
    }
    files.sort_by_key(|f| f.0);
    Ok(files.into_iter().map(|(_, path)| path).collect())
}

fn read_lines(path: &Path) -> Result<Vec<Vec<u8>>, LedgerError> {
    let io_error = |source| LedgerError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    BufReader::new(file)
        .split(b'\n')
        .collect::<Result<_, _>>()
        .map_err(io_error)
}

/// The sequence number at the start of a line as [`Journal::append`] writes it
/// (`{"seq":N,...`), without parsing the rest; `None` for anything else.
fn leading_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(br#"{"seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b',') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// Folds every change after `content.journal_seq` into `content`; returns how many.
pub fn replay_into(content: &mut LedgerContent, lines: &[JournalLine]) -> usize {
    let mut applied = 0;
    for line in lines {
        if line.seq <= content.journal_seq {
            continue;
        }
        line.entry.apply(content);
        content.journal_seq = line.seq;
        applied += 1;
    }
    applied
}

#[cfg(test)]
mod tests;
