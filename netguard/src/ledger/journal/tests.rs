use super::*;
use crate::ledger::testutil::{sample_content, TempDir};

#[test]
fn append_replay_and_torn_last_line() {
    let dir = TempDir::new("journal");
    let content = sample_content();
    let mut journal = Journal::open(dir.path(), 1 << 20, 3, 0).unwrap();
    let link = content.links.values().next().unwrap().clone();
    journal
        .append(JournalEntry::PutLink { link: link.clone() })
        .unwrap();
    journal
        .append(JournalEntry::Note {
            message: "hello".into(),
        })
        .unwrap();
    journal
        .append(JournalEntry::ForgetLink {
            key: link.spec.key(),
        })
        .unwrap();
    journal
        .append(JournalEntry::PutNic {
            nic: content.nics[0].clone(),
        })
        .unwrap();
    assert_eq!(journal.last_seq(), 4);
    // A crash in the middle of a write.
    let mut raw = OpenOptions::new()
        .append(true)
        .open(dir.path().join(FILE_NAME))
        .unwrap();
    raw.write_all(br#"{"seq":5,"time":"2025-"#).unwrap();

    let replay = read_since(dir.path(), 0).unwrap();
    assert_eq!(replay.lines.len(), 4);
    assert_eq!(replay.skipped, 1);
    let mut rebuilt = LedgerContent::default();
    assert_eq!(replay_into(&mut rebuilt, &replay.lines), 4);
    assert!(rebuilt.links.is_empty());
    assert_eq!(rebuilt.nics, content.nics);
    assert_eq!(rebuilt.journal_seq, 4);
    // Already folded in: nothing more.
    assert_eq!(replay_into(&mut rebuilt, &replay.lines), 0);
}

#[test]
fn an_entry_appended_after_a_torn_line_is_replayed() {
    let dir = TempDir::new("torn");
    let mut journal = Journal::open(dir.path(), 1 << 20, 3, 0).unwrap();
    let note = |message: &str| JournalEntry::Note {
        message: message.into(),
    };
    journal.append(note("before")).unwrap();
    drop(journal);
    // The crash: half a line, no newline.
    let path = dir.path().join(FILE_NAME);
    let mut raw = OpenOptions::new().append(true).open(&path).unwrap();
    raw.write_all(br#"{"seq":2,"time":"2025-"#).unwrap();
    drop(raw);

    let replay = read_since(dir.path(), 0).unwrap();
    let mut journal = Journal::open(dir.path(), 1 << 20, 3, replay.last_seq).unwrap();
    assert_eq!(journal.append(note("after")).unwrap(), 2);
    // Opening an intact journal adds nothing.
    drop(journal);
    let len = fs::metadata(&path).unwrap().len();
    drop(Journal::open(dir.path(), 1 << 20, 3, 2).unwrap());
    assert_eq!(fs::metadata(&path).unwrap().len(), len);

    let replay = read_since(dir.path(), 0).unwrap();
    let entries: Vec<_> = replay.lines.iter().map(|l| (l.seq, &l.entry)).collect();
    assert_eq!(entries, [(1, &note("before")), (2, &note("after"))]);
    assert_eq!(replay.skipped, 1, "the fragment alone is skipped");
}

#[test]
fn a_sequence_number_at_the_end_of_the_range_is_refused_not_a_panic() {
    let dir = TempDir::new("seq-max");
    let line = format!(
        r#"{{"seq":{},"time":"2026-12-01T12:00:00Z","type":"note","message":"x"}}"#,
        u64::MAX
    );
    fs::write(dir.path().join(FILE_NAME), line + "\n").unwrap();
    let replay = read_since(dir.path(), 0).unwrap();
    assert_eq!(replay.last_seq, u64::MAX);
    let err = Journal::open(dir.path(), 1 << 20, 3, replay.last_seq)
        .err()
        .unwrap();
    assert!(err.to_string().contains("leaves no room"), "{err}");
    let mut journal = Journal::open(dir.path(), 1 << 20, 3, u64::MAX - 1).unwrap();
    let note = JournalEntry::Note {
        message: "y".into(),
    };
    assert!(matches!(
        journal.append(note),
        Err(LedgerError::SeqExhausted { .. })
    ));
}

#[test]
fn rotation_keeps_state_through_a_snapshot() {
    let dir = TempDir::new("rotate");
    let content = sample_content();
    let mut journal = Journal::open(dir.path(), 300, 2, 0).unwrap();
    let link = content.links.values().next().unwrap().clone();
    let mut state = LedgerContent::default();
    for _ in 0..5 {
        let entry = JournalEntry::PutLink { link: link.clone() };
        entry.apply(&mut state);
        state.journal_seq = journal.append(entry).unwrap();
        if journal.needs_rotation() {
            journal.rotate(&state).unwrap();
        }
    }
    assert!(dir.path().join(format!("{FILE_NAME}.1")).exists());
    assert!(dir.path().join(format!("{FILE_NAME}.2")).exists());
    assert!(
        !dir.path().join(format!("{FILE_NAME}.3")).exists(),
        "only `keep` rotated files"
    );
    let replay = read_since(dir.path(), 0).unwrap();
    let mut rebuilt = LedgerContent::default();
    replay_into(&mut rebuilt, &replay.lines);
    assert_eq!(rebuilt.links, state.links);
    // Sequence numbers stay increasing across files, oldest first.
    assert!(replay.lines.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn reading_since_a_seq_returns_only_newer_lines_and_the_last_seq() {
    let dir = TempDir::new("since");
    let content = sample_content();
    let link = content.links.values().next().unwrap().clone();
    // Small files: the 12 lines spread over rotated files, each starting with a snapshot.
    let mut journal = Journal::open(dir.path(), 600, 10, 0).unwrap();
    let mut state = LedgerContent::default();
    for n in 0..12 {
        let entry = if n % 2 == 0 {
            JournalEntry::PutLink { link: link.clone() }
        } else {
            JournalEntry::ForgetLink {
                key: link.spec.key(),
            }
        };
        entry.apply(&mut state);
        state.journal_seq = journal.append(entry).unwrap();
        if journal.needs_rotation() {
            journal.rotate(&state).unwrap();
        }
    }
    assert!(dir.path().join(format!("{FILE_NAME}.2")).exists());
    let last = journal.last_seq();

    let everything = read_since(dir.path(), 0).unwrap();
    assert_eq!(everything.last_seq, last);
    let mut rebuilt = LedgerContent::default();
    replay_into(&mut rebuilt, &everything.lines);
    assert_eq!(rebuilt.links, state.links);

    let newer = read_since(dir.path(), last - 2).unwrap();
    let seqs: Vec<u64> = newer.lines.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [last - 1, last]);
    assert_eq!(newer.last_seq, last);
    assert_eq!(read_since(dir.path(), last).unwrap().lines.len(), 0);
}

#[test]
fn a_line_without_the_usual_start_is_parsed_in_full() {
    assert_eq!(leading_seq(br#"{"seq":42,"time":"x"}"#), Some(42));
    assert_eq!(leading_seq(br#"{"time":"x","seq":42}"#), None);
    assert_eq!(leading_seq(br#"{"seq":42"#), None);
    assert_eq!(leading_seq(br#"{"seq":,"#), None);
    let dir = TempDir::new("reordered");
    let line = JournalLine {
        seq: 7,
        time: Utc::now(),
        entry: JournalEntry::Note {
            message: "hand-written".into(),
        },
    };
    let mut value = serde_json::to_value(&line).unwrap();
    // Keys in another order (a hand edit, another writer): still read, by full parsing.
    let text = format!(
        r#"{{"time":{},"type":"note","message":"hand-written","seq":7}}"#,
        value["time"].take()
    );
    fs::write(dir.path().join(FILE_NAME), text + "\n").unwrap();
    let replay = read_since(dir.path(), 3).unwrap();
    assert_eq!(replay.lines, [line]);
    assert_eq!(replay.last_seq, 7);
}
