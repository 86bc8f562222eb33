//! Ledgers written by earlier netguards: the fixture in `tests/data/ledger-c493b68` is what
//! c493b68's own binary wrote (`learn` of a veth and a macvlan, then an agent that restored
//! both): its document from after the `learn` (layout 2), its journal from after the restores
//! (as an agent killed before its save would leave them).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::store::VERSION;
use super::testutil::TempDir;
use super::{Ledger, LedgerError, LedgerOptions, Opened, STATE_FILE};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/ledger-c493b68")
}

/// A copy of the fixture to open (opening migrates it in place).
fn copy_of_fixture(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    for name in [STATE_FILE, "journal.jsonl"] {
        std::fs::copy(fixture().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// The last record the fixture's journal holds for each link, as c493b68 wrote it.
fn last_records_in_journal() -> Vec<Value> {
    let journal = std::fs::read_to_string(fixture().join("journal.jsonl")).unwrap();
    let mut last: Vec<Value> = Vec::new();
    for line in journal.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        if entry["type"] != "put-link" {
            continue;
        }
        let link = entry["link"].clone();
        last.retain(|l| l["spec"]["name"] != link["spec"]["name"]);
        last.push(link);
    }
    last
}

#[test]
fn a_ledger_written_by_c493b68_opens_migrates_and_keeps_every_link() {
    let original = std::fs::read(fixture().join(STATE_FILE)).unwrap();
    assert!(String::from_utf8_lossy(&original).contains("\"version\": 2"));
    let dir = copy_of_fixture("migrate");
    let (ledger, opened) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
    assert_eq!(
        opened,
        Opened::Loaded { replayed: 8 },
        "the newer journal lines count"
    );

    let expected = last_records_in_journal();
    assert_eq!(expected.len(), 2);
    let links = &ledger.content().links;
    assert_eq!(links.len(), expected.len(), "{links:?}");
    for old in &expected {
        let found = links
            .values()
            .find(|l| l.spec.name == old["spec"]["name"])
            .unwrap_or_else(|| panic!("{} is not guarded any more", old["spec"]["name"]));
        // Every field c493b68 wrote reads back the same: spec, state, since.
        assert_eq!(serde_json::to_value(&found.spec).unwrap(), old["spec"]);
        assert_eq!(serde_json::to_value(found.state).unwrap(), old["state"]);
        assert_eq!(serde_json::to_value(found.since).unwrap(), old["since"]);
        assert_eq!(
            found.workload, None,
            "a plain netns path, as before workloads"
        );
    }
    assert_eq!(ledger.content().journal_seq, 10);

    // Rewritten in this layout at once; the layout-2 document kept as it was.
    let now = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
    assert!(now.contains(&format!("\"version\": {VERSION}")), "{now}");
    let kept = std::fs::read(dir.path().join("state.json.layout-2")).unwrap();
    assert_eq!(kept, original);
    let content = ledger.content().clone();
    drop(ledger);
    let (again, opened) = Ledger::open(LedgerOptions::new(dir.path())).unwrap();
    assert_eq!(opened, Opened::Loaded { replayed: 0 });
    assert_eq!(again.content(), &content);
}

#[test]
fn a_newer_layout_is_refused_and_left_untouched() {
    let dir = copy_of_fixture("newer");
    let path = dir.path().join(STATE_FILE);
    let newer = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"version\": 2", &format!("\"version\": {}", VERSION + 1));
    std::fs::write(&path, &newer).unwrap();
    let Err(err) = Ledger::open(LedgerOptions::new(dir.path())) else {
        panic!("a document of layout {} was opened", VERSION + 1);
    };
    assert!(matches!(err, LedgerError::Newer { .. }), "{err}");
    let said = err.to_string();
    assert!(
        said.contains(&format!(
            "written by a newer netguard (layout version {}, this one reads {VERSION})",
            VERSION + 1
        )) && said.contains("will not overwrite it"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !files
            .iter()
            .any(|f| f.contains("corrupt") || f.contains("layout-")),
        "nothing moved aside or copied: {files:?}"
    );
}
