//! Recordings: events as JSON lines in a file, appended as they come and fsynced on exit.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error(
        "cannot open recording {path} for writing: {source} (is the directory there and writable?)"
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write recording {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read recording {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a netguard event ({source}); was it written by `netguard trace --record`?")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// Appends events to a recording.
pub struct Recorder {
    path: PathBuf,
    file: File,
}

impl Recorder {
    pub fn open(path: &Path) -> Result<Recorder, RecordingError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RecordingError::Create {
                path: path.into(),
                source,
            })?;
        Ok(Recorder {
            path: path.into(),
            file,
        })
    }

    /// Writes one event as one line (a single write, so a crash never leaves half a line
    /// in the middle of the file).
    pub fn append(&mut self, event: &Event) -> Result<(), RecordingError> {
        let mut line = serde_json::to_vec(event).expect("events always serialize");
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|source| RecordingError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Makes everything appended so far durable.
    pub fn sync(&mut self) -> Result<(), RecordingError> {
        self.file
            .sync_all()
            .map_err(|source| RecordingError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// Reads a whole recording. A torn last line (the writer was killed mid-write) is ignored;
/// any other bad line is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<Event>, RecordingError> {
    let file = File::open(path).map_err(|source| RecordingError::Read {
        path: path.into(),
        source,
    })?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|source| RecordingError::Read {
            path: path.into(),
            source,
        })?;
    let mut events = Vec::with_capacity(lines.len());
    for (index, text) in lines.iter().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(text) {
            Ok(event) => events.push(event),
            Err(source) if index + 1 == lines.len() && source.is_eof() => break,
            Err(source) => {
                return Err(RecordingError::Parse {
                    path: path.into(),
                    line: index + 1,
                    source,
                })
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Cause, EventKind};

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("netguard-rec-{}-{name}", std::process::id()))
    }

    #[test]
    fn appended_events_read_back_and_torn_tail_is_ignored() {
        let path = temp_path("roundtrip");
        let _ = std::fs::remove_file(&path);
        let mut rec = Recorder::open(&path).unwrap();
        rec.append(&Event::new(EventKind::Register, Cause::Unknown))
            .unwrap();
        rec.append(&Event::new(EventKind::Unregister, Cause::Explicit))
            .unwrap();
        rec.sync().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"time\":")
            .unwrap();
        let events = read(&path).unwrap();
        assert_eq!(
            events.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [EventKind::Register, EventKind::Unregister]
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_foreign_line_is_named_by_file_and_line() {
        let path = temp_path("foreign");
        std::fs::write(&path, "hello\n{}\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{}:1: not a netguard event", path.display())),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unwritable_recording_names_the_file() {
        let err = Recorder::open(Path::new("/nonexistent-dir/rec.jsonl"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("/nonexistent-dir/rec.jsonl"), "{err}");
    }
}
