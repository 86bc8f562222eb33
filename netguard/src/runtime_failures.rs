//! What went wrong in a runtime's call (a CNI plugin run, an OCI hook) that the ledger never
//! heard of: another agent answered, no answer in time, nothing to hand the call to. Such a
//! call fails open and its stderr is the runtime's, which keeps it at best in its own log; so
//! it is also noted here, one JSON line per failure in the state directory, and `netguard
//! status` shows the latest.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The file in the state directory.
pub const FILE: &str = "runtime-failures.jsonl";
/// Past this size the file becomes `FILE.1` (replacing the one before): bounded on disk.
const MAX_BYTES: u64 = 64 << 10;

/// One call that went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeFailure {
    pub time: DateTime<Utc>,
    /// What the runtime asked (`CNI ADD of NET/ID/IF`, `hook CreateRuntime of ID`).
    pub call: String,
    pub why: String,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn older(state_dir: &Path) -> PathBuf {
    state_dir.join(format!("{FILE}.1"))
}

/// Notes a failure of `call` in `state_dir` (one line, appended whole, so calls running at
/// once do not mix their lines).
pub fn note(state_dir: &Path, call: &str, why: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let file = path(state_dir);
    if std::fs::metadata(&file).is_ok_and(|m| m.len() > MAX_BYTES) {
        std::fs::rename(&file, older(state_dir))?;
    }
    let failure = RuntimeFailure {
        time: Utc::now(),
        call: call.to_string(),
        why: why.to_string(),
    };
    let mut line = serde_json::to_vec(&failure).map_err(std::io::Error::other)?;
    line.push(b'\n');
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)?
        .write_all(&line)
}

/// The last `n` failures noted in `state_dir`, oldest first; lines that do not read (a
/// file cut short by a crash) are passed over.
pub fn recent(state_dir: &Path, n: usize) -> Vec<RuntimeFailure> {
    let mut all: Vec<RuntimeFailure> = [older(state_dir), path(state_dir)]
        .iter()
        .filter_map(|p| std::fs::File::open(p).ok())
        .flat_map(|f| BufReader::new(f).lines().map_while(Result::ok))
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let skip = all.len().saturating_sub(n);
    all.drain(..skip);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_come_back_newest_last_and_the_file_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("netguard-rf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(recent(&dir, 5).is_empty(), "nothing noted yet");
        for i in 0..3 {
            note(&dir, &format!("CNI ADD of n/c{i}/eth0"), "no answer").unwrap();
        }
        let got = recent(&dir, 2);
        assert_eq!(
            got.iter().map(|f| f.call.as_str()).collect::<Vec<_>>(),
            ["CNI ADD of n/c1/eth0", "CNI ADD of n/c2/eth0"]
        );
        // A torn last line is passed over.
        std::fs::OpenOptions::new()
            .append(true)
            .open(path(&dir))
            .unwrap()
            .write_all(b"{\"time\":")
            .unwrap();
        assert_eq!(recent(&dir, 10).len(), 3);
        let long = "x".repeat(1000);
        for _ in 0..200 {
            note(&dir, "hook CreateRuntime of c", &long).unwrap();
        }
        let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(path(&dir)) <= MAX_BYTES + 2000 && size(older(&dir)) > 0);
        assert_eq!(recent(&dir, 10).len(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
