//! The journal (`journal.jsonl`) as the agent reads it at start: whatever the file holds
//! (damaged lines, a torn end), it replays without panicking, and an entry appended after
//! opening it is the last one read back.
#![no_main]
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use netguard::ledger::journal::{self, Journal, JournalEntry};
use netguard::ledger::LedgerContent;

/// One scratch directory per process, on tmpfs when there is one.
fn scratch() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("netguard-fuzz-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    std::fs::write(dir.join(journal::FILE_NAME), data).expect("write the journal");
    let replay = journal::read_since(&dir, 0).expect("a readable journal replays");
    let mut content = LedgerContent::default();
    journal::replay_into(&mut content, &replay.lines);
    let Ok(mut opened) = Journal::open(&dir, 1 << 30, 1, replay.last_seq) else {
        // The journal's numbers are used up: refused, said, nothing appended.
        return;
    };
    let note = JournalEntry::Note {
        message: "appended by the fuzzer".into(),
    };
    let seq = opened.append(note.clone()).expect("append");
    drop(opened);
    let again = journal::read_since(&dir, 0).expect("replays again");
    let last = again.lines.last().expect("the appended line is read back");
    assert_eq!((last.seq, &last.entry), (seq, &note));
});
