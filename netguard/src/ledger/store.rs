//! The ledger document on disk: `{"version", "checksum", "ledger"}`, written atomically
//! (temp file, fsync, rename, fsync the directory) so a crash leaves the old or the new
//! document, never a mix.
//!
//! Reading tells three things apart: no document, a document that read fine but is damaged
//! (moved aside by the caller, the ledger rebuilt from the journal), and a document that could
//! not be read at all (an I/O error: said, and the file is left where it is, since the disk
//! and not the document is what failed).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::LedgerContent;
use super::LedgerError;

/// The document layout this build writes. It reads every earlier one, and refuses a later one.
///
/// - 1: the checksum sums the content re-serialised (sorted keys).
/// - 2: the checksum sums the content as written.
/// - 3: links carry their workload, NICs an unknown admin state, the ledger its devices in
///   flight (c493b68 wrote 2). Layout 2 reads as 3 unchanged (every new field has a default);
///   the number changed so that an older netguard refuses a document with these fields
///   instead of loading it and dropping them at its next save.
pub const VERSION: u64 = 3;

/// Why a document that was read could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DocProblem {
    #[error("it is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("it has no \"{0}\" field")]
    MissingField(&'static str),
    #[error("its checksum {found} does not match its content ({computed}): it was damaged or edited by hand")]
    Checksum { found: String, computed: String },
    #[error("its content does not fit the ledger layout: {0}")]
    Layout(serde_json::Error),
    #[error("it was written by a newer netguard (layout version {0}, this one reads {VERSION})")]
    Newer(u64),
}

/// Checksum of the `ledger` value exactly as it stands in the file, so the content is encoded
/// once per save and parsed once per load.
fn checksum(ledger: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(ledger))
}

/// Layout 1 summed the content re-serialised from a `Value` (sorted keys, compact).
fn checksum_v1(ledger: &RawValue) -> Result<String, DocProblem> {
    let value: Value = serde_json::from_str(ledger.get()).map_err(DocProblem::NotJson)?;
    let canonical = serde_json::to_vec(&value).map_err(DocProblem::NotJson)?;
    Ok(checksum(&canonical))
}

pub fn encode(content: &LedgerContent) -> Result<Vec<u8>, serde_json::Error> {
    let ledger = serde_json::to_vec_pretty(content)?;
    let mut bytes = Vec::with_capacity(ledger.len() + 80);
    bytes.extend_from_slice(
        format!(
            "{{\n  \"version\": {VERSION},\n  \"checksum\": \"{}\",\n  \"ledger\": ",
            checksum(&ledger)
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&ledger);
    bytes.extend_from_slice(b"\n}\n");
    Ok(bytes)
}

/// The document's fields, the ledger left unparsed until its checksum is known good.
#[derive(Deserialize)]
struct RawDoc<'a> {
    version: Option<u64>,
    checksum: Option<String>,
    #[serde(borrow)]
    ledger: Option<&'a RawValue>,
}

pub fn decode(bytes: &[u8]) -> Result<LedgerContent, DocProblem> {
    decode_with_layout(bytes).map(|(content, _)| content)
}

/// The content, and the layout version the document was written in.
fn decode_with_layout(bytes: &[u8]) -> Result<(LedgerContent, u64), DocProblem> {
    let doc: RawDoc = serde_json::from_slice(bytes).map_err(DocProblem::NotJson)?;
    let version = doc.version.ok_or(DocProblem::MissingField("version"))?;
    if version > VERSION {
        return Err(DocProblem::Newer(version));
    }
    let found = doc.checksum.ok_or(DocProblem::MissingField("checksum"))?;
    let ledger = doc.ledger.ok_or(DocProblem::MissingField("ledger"))?;
    let computed = match version {
        1 => checksum_v1(ledger)?,
        _ => checksum(ledger.get().as_bytes()),
    };
    if found != computed {
        return Err(DocProblem::Checksum { found, computed });
    }
    let content = serde_json::from_str(ledger.get()).map_err(DocProblem::Layout)?;
    Ok((content, version))
}

/// What [`load`] found.
#[derive(Debug)]
pub enum Loaded {
    Absent,
    /// Usable, and the layout it was written in (earlier ones are migrated by reading them).
    Good(LedgerContent, u64),
    /// Read in full, but damaged or not a ledger: safe to move aside and rebuild.
    Corrupt(DocProblem),
}

/// Reads the document. An I/O error and a document from a newer netguard are errors: neither
/// says the document is bad, so neither may lead to it being moved or overwritten.
pub fn load(path: &Path) -> Result<Loaded, LedgerError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Loaded::Absent),
        Err(source) => {
            return Err(LedgerError::Unreadable {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match decode_with_layout(&bytes) {
        Ok((content, layout)) => Ok(Loaded::Good(content, layout)),
        Err(problem @ DocProblem::Newer(_)) => Err(LedgerError::Newer {
            path: path.to_path_buf(),
            problem,
        }),
        Err(problem) => Ok(Loaded::Corrupt(problem)),
    }
}

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LedgerError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| LedgerError::Io {
            action,
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tmp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    sync_dir(dir)
}

/// Makes a rename or a new file in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| LedgerError::Io {
            action: "fsync directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Keeps a copy of a document in an earlier layout, before it is rewritten in this one, as
/// `NAME.layout-<N>` (a netguard that reads only that layout can be put back with it).
pub fn keep_older(path: &Path, layout: u64) -> Result<PathBuf, LedgerError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".layout-{layout}"));
    let kept = path.with_file_name(name);
    let bytes = fs::read(path).map_err(|source| LedgerError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(&kept, &bytes)?;
    Ok(kept)
}

/// Moves a bad document aside, untouched, as `NAME.corrupt-<UTC time>`; returns where to.
pub fn move_aside(path: &Path) -> Result<PathBuf, LedgerError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{stamp}"));
    let aside = path.with_file_name(name);
    fs::rename(path, &aside).map_err(|source| LedgerError::Io {
        action: "move aside",
        path: path.to_path_buf(),
        source,
    })?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::testutil::{sample_content, TempDir};

    #[test]
    fn round_trip_and_checksum_catches_edits() {
        let content = sample_content();
        let bytes = encode(&content).unwrap();
        assert_eq!(decode(&bytes).unwrap(), content);

        let text = String::from_utf8(bytes).unwrap();
        let edited = text.replace("198.18.0.2/24", "198.18.0.9/24");
        assert_ne!(edited, text);
        let err = decode(edited.as_bytes()).unwrap_err();
        assert!(matches!(err, DocProblem::Checksum { .. }), "{err}");

        let truncated = &text.as_bytes()[..text.len() / 2];
        assert!(matches!(
            decode(truncated).unwrap_err(),
            DocProblem::NotJson(_)
        ));

        let newer = text.replacen(&format!("\"version\": {VERSION}"), "\"version\": 7", 1);
        assert!(matches!(
            decode(newer.as_bytes()).unwrap_err(),
            DocProblem::Newer(7)
        ));
    }

    #[test]
    fn a_layout_1_document_still_loads() {
        let content = sample_content();
        let value = serde_json::to_value(&content).unwrap();
        let canonical = serde_json::to_vec(&value).unwrap();
        let doc =
            serde_json::json!({ "version": 1, "checksum": checksum(&canonical), "ledger": value });
        let bytes = serde_json::to_vec_pretty(&doc).unwrap();
        assert_eq!(decode(&bytes).unwrap(), content);
        let edited = String::from_utf8(bytes)
            .unwrap()
            .replace("198.18.0.2/24", "198.18.0.9/24");
        assert!(matches!(
            decode(edited.as_bytes()).unwrap_err(),
            DocProblem::Checksum { .. }
        ));
    }

    #[test]
    fn atomic_write_leaves_no_temp_file_and_replaces_content() {
        let dir = TempDir::new("store");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!tmp_path(&path).exists());
        assert!(matches!(
            load(&dir.path().join("absent.json")).unwrap(),
            Loaded::Absent
        ));
    }

    #[test]
    fn only_a_document_read_in_full_can_be_corrupt() {
        let dir = TempDir::new("load");
        let path = dir.path().join("state.json");
        fs::write(&path, b"{garbage").unwrap();
        assert!(matches!(
            load(&path).unwrap(),
            Loaded::Corrupt(DocProblem::NotJson(_))
        ));
        // EISDIR on read: the same error class as EIO, deterministic as root.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, LedgerError::Unreadable { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("state.json") && text.contains("left where it is"),
            "{text}"
        );
        // A document from a newer netguard is an error too, not damage.
        fs::remove_dir(&path).unwrap();
        fs::write(&path, br#"{"version": 9, "checksum": "x", "ledger": {}}"#).unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            err.to_string().contains("newer netguard (layout version 9"),
            "{err}"
        );
    }

    #[test]
    fn moved_aside_file_keeps_its_bytes() {
        let dir = TempDir::new("aside");
        let path = dir.path().join("state.json");
        fs::write(&path, b"{garbage").unwrap();
        let aside = move_aside(&path).unwrap();
        assert!(!path.exists());
        assert!(aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.json.corrupt-"));
        assert_eq!(fs::read(&aside).unwrap(), b"{garbage");
    }
}
