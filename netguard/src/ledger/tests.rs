use super::testutil::{sample_content, TempDir};
use super::*;
use crate::event::{Cause, Event, EventKind, Netns, Place};

const HOST: u64 = 4026531840;
const C1: u64 = 4026532118;

fn open(dir: &Path) -> (Ledger, Opened) {
    Ledger::open(LedgerOptions::new(dir)).unwrap()
}

fn place(name: &str, ifindex: u32, inode: u64) -> Option<Place> {
    Some(Place {
        name: Some(name.into()),
        ifindex: Some(ifindex),
        netns: Netns {
            inode,
            names: vec![],
        },
    })
}

fn nic_event(kind: EventKind, cause: Cause, from: Option<Place>, to: Option<Place>) -> Event {
    let mut ev = Event::new(kind, cause);
    ev.perm_addr = Some("52:54:00:12:34:56".into());
    ev.from = from;
    ev.to = to;
    ev
}

#[test]
fn fresh_then_saved_then_loaded() {
    let dir = TempDir::new("ledger-fresh");
    let (mut ledger, opened) = open(dir.path());
    assert_eq!(opened, Opened::Fresh);
    let link = sample_content().links.into_values().next().unwrap();
    ledger.record_link(link.spec.clone());
    assert!(ledger.save().unwrap());
    assert!(!ledger.save().unwrap(), "nothing changed, nothing written");
    drop(ledger);
    let (ledger, opened) = open(dir.path());
    assert_eq!(opened, Opened::Loaded { replayed: 0 });
    assert_eq!(
        ledger.link(&link.spec.netns, &link.spec.name).unwrap().spec,
        link.spec
    );
}

#[test]
fn changes_after_the_last_save_come_back_from_the_journal() {
    let dir = TempDir::new("ledger-forward");
    let (mut ledger, _) = open(dir.path());
    let spec = sample_content().links.into_values().next().unwrap().spec;
    ledger.record_link(spec.clone());
    ledger.save().unwrap();
    ledger.set_link_state(&spec.key(), LinkState::Waiting, Some("netns gone".into()));
    drop(ledger); // crash: no save
    let (ledger, opened) = open(dir.path());
    assert_eq!(opened, Opened::Loaded { replayed: 1 });
    assert_eq!(
        ledger.link(&spec.netns, &spec.name).unwrap().state,
        LinkState::Waiting
    );
}

#[test]
fn corrupt_document_is_kept_aside_and_the_ledger_rebuilt() {
    let dir = TempDir::new("ledger-corrupt");
    let (mut ledger, _) = open(dir.path());
    let content = sample_content();
    for link in content.links.values() {
        ledger.record_link(link.spec.clone());
    }
    let nic = &content.nics[0];
    ledger.guard_nic(nic.identity.clone(), &nic.home_name, Some(true), None);
    ledger.save().unwrap();
    drop(ledger);

    let state = dir.path().join(STATE_FILE);
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&state, &bytes).unwrap();

    let (ledger, opened) = open(dir.path());
    let Opened::Rebuilt {
        file,
        moved_to: Some(aside),
        replayed,
        ..
    } = &opened
    else {
        panic!("{opened:?}")
    };
    assert_eq!(file, &state);
    assert_eq!(std::fs::read(aside).unwrap(), bytes, "kept aside untouched");
    assert!(*replayed >= 2);
    let text = opened.to_string();
    assert!(
        text.contains("state.json") && text.contains("rebuilt from the journal"),
        "{text}"
    );
    assert_eq!(ledger.links().count(), content.links.len());
    assert_eq!(ledger.nics().len(), 1);
    // The rebuilt ledger was saved again and loads cleanly.
    drop(ledger);
    assert!(matches!(open(dir.path()).1, Opened::Loaded { .. }));
}

#[test]
fn unreadable_document_is_an_error_and_stays_in_place() {
    let dir = TempDir::new("ledger-unreadable");
    let (mut ledger, _) = open(dir.path());
    ledger.record_link(sample_content().links.into_values().next().unwrap().spec);
    drop(ledger);
    // A directory where the file should be: reading it fails with EISDIR, an I/O error like
    // EIO, which says nothing about the document.
    let state = dir.path().join(STATE_FILE);
    std::fs::create_dir(&state).unwrap();
    let err = Ledger::open(LedgerOptions::new(dir.path())).err().unwrap();
    assert!(matches!(err, LedgerError::Unreadable { .. }), "{err:?}");
    assert!(err.to_string().contains("left where it is"), "{err}");
    assert!(state.is_dir(), "left in place");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("corrupt")), "{names:?}");
}

#[test]
fn newer_document_is_refused_not_overwritten() {
    let dir = TempDir::new("ledger-newer");
    let state = dir.path().join(STATE_FILE);
    let newer = br#"{"version": 9, "checksum": "x", "ledger": {}}"#;
    std::fs::write(&state, newer).unwrap();
    let err = Ledger::open(LedgerOptions::new(dir.path())).err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("newer netguard") && text.contains("will not overwrite"),
        "{text}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), newer, "untouched");
    assert!(
        !dir.path().join(journal::FILE_NAME).exists(),
        "nothing journalled either"
    );
}

#[test]
fn nic_lent_refunded_and_admin_rename() {
    let dir = TempDir::new("ledger-nic");
    let (mut ledger, _) = open(dir.path());
    // First sight as it leaves home (eth2 -> container, renamed eth0 there).
    let moved = nic_event(
        EventKind::Move,
        Cause::Explicit,
        place("eth2", 4, HOST),
        place("eth2", 4, C1),
    );
    assert!(ledger.observe(&moved, HOST));
    let nic = ledger.nics()[0].clone();
    assert_eq!(
        (nic.home_name.as_str(), nic.state),
        ("eth2", NicState::Lent)
    );
    // Renamed inside the container: home name unchanged.
    let renamed = nic_event(
        EventKind::Rename,
        Cause::Explicit,
        place("eth2", 4, C1),
        place("eth0", 4, C1),
    );
    ledger.observe(&renamed, HOST);
    assert_eq!(ledger.nics()[0].home_name, "eth2");
    // Container exits: the kernel hands it back as dev4.
    let back = nic_event(
        EventKind::Move,
        Cause::NetnsTeardown,
        place("eth0", 4, C1),
        place("dev4", 4, HOST),
    );
    ledger.observe(&back, HOST);
    let nic = &ledger.nics()[0];
    assert_eq!(nic.state, NicState::Refunded);
    assert_eq!(nic.location.as_ref().unwrap().name, "dev4");
    // Renamed home (by us): home.
    let home = nic_event(
        EventKind::Rename,
        Cause::Explicit,
        place("dev4", 4, HOST),
        place("eth2", 4, HOST),
    );
    ledger.observe(&home, HOST);
    assert_eq!(ledger.nics()[0].state, NicState::Home);
    // An admin renames it at home: that is its home name from now on.
    let admin = nic_event(
        EventKind::Rename,
        Cause::Explicit,
        place("eth2", 4, HOST),
        place("lan0", 4, HOST),
    );
    ledger.observe(&admin, HOST);
    assert_eq!(ledger.nics()[0].home_name, "lan0");
    assert_eq!(ledger.nics()[0].state, NicState::Home);
    // Driver unloaded.
    let gone = nic_event(
        EventKind::Unregister,
        Cause::Explicit,
        place("lan0", 4, HOST),
        None,
    );
    ledger.observe(&gone, HOST);
    assert_eq!(ledger.nics()[0].state, NicState::Lost);
}

#[test]
fn excluded_nics_are_not_guarded() {
    let dir = TempDir::new("ledger-exclude");
    let mut options = LedgerOptions::new(dir.path());
    options.exclude.names.push("eth2".into());
    let (mut ledger, _) = Ledger::open(options).unwrap();
    let moved = nic_event(
        EventKind::Move,
        Cause::Explicit,
        place("eth2", 4, HOST),
        place("eth0", 4, C1),
    );
    assert!(!ledger.observe(&moved, HOST));
    assert!(ledger.nics().is_empty());
}

#[test]
fn link_events_follow_renames_and_mark_teardown() {
    let dir = TempDir::new("ledger-link-events");
    let (mut ledger, _) = open(dir.path());
    let mut spec = sample_content()
        .links
        .into_values()
        .find(|l| l.spec.kind.name() == "veth")
        .unwrap()
        .spec;
    spec.netns_inode = Some(C1);
    ledger.record_link(spec.clone());
    let mut ev = Event::new(EventKind::Rename, Cause::Explicit);
    ev.from = place(&spec.name, 2, C1);
    ev.to = place("eth9", 2, C1);
    assert!(ledger.observe(&ev, HOST));
    assert!(ledger.link(&spec.netns, &spec.name).is_none());
    let renamed = ledger.link(&spec.netns, "eth9").unwrap().spec.key();

    let mut teardown = Event::new(EventKind::TeardownBegin, Cause::NetnsTeardown);
    teardown.from = Some(Place {
        name: None,
        ifindex: None,
        netns: Netns {
            inode: C1,
            names: vec![],
        },
    });
    assert!(ledger.observe(&teardown, HOST));
    assert_eq!(
        ledger.link(&renamed.netns, &renamed.name).unwrap().state,
        LinkState::Missing
    );
    // Unrelated events are not journalled.
    let mut other = Event::new(EventKind::Unregister, Cause::Explicit);
    other.from = place("veth123", 9, HOST);
    assert!(!ledger.observe(&other, HOST));
}

#[test]
fn a_nic_first_seen_leaving_has_no_known_admin_state() {
    let dir = TempDir::new("ledger-first-leave");
    let (mut ledger, _) = open(dir.path());
    let moved = nic_event(
        EventKind::Move,
        Cause::Explicit,
        place("eth2", 4, HOST),
        place("eth0", 4, C1),
    );
    assert!(ledger.observe(&moved, HOST));
    assert_eq!(ledger.nics()[0].up, None, "never seen at home: unknown");
    assert_eq!(ledger.nics()[0].state, NicState::Lent);
}

#[test]
fn forgotten_or_excluded_nics_stop_being_guarded_across_restarts() {
    let dir = TempDir::new("ledger-forget-nic");
    let nic = sample_content().nics.remove(0);
    let (mut ledger, _) = open(dir.path());
    ledger.guard_nic(nic.identity.clone(), "eth2", Some(true), None);
    ledger.guard_nic(
        NicIdentity {
            perm_mac: Some("52:54:00:00:00:09".parse().unwrap()),
            ..nic.identity.clone()
        },
        "eth3",
        Some(true),
        None,
    );
    assert!(ledger.forget_nic("eth9").is_none());
    assert_eq!(
        ledger
            .forget_nic("52:54:00:00:00:09")
            .unwrap()
            .perm_mac
            .unwrap()
            .to_string(),
        "52:54:00:00:00:09"
    );
    ledger.save().unwrap();
    drop(ledger);
    let (ledger, _) = open(dir.path());
    assert_eq!(ledger.nics().len(), 1, "the forget was kept");
    drop(ledger);
    // Excluded after being guarded: dropped when the ledger opens with the exclusion.
    let mut options = LedgerOptions::new(dir.path());
    options.exclude.macs.push(nic.identity.perm_mac.unwrap());
    let (ledger, _) = Ledger::open(options).unwrap();
    assert!(ledger.nics().is_empty());
}

#[test]
fn an_adopted_nic_takes_its_new_name_as_home() {
    let dir = TempDir::new("ledger-adopt");
    let (mut ledger, _) = open(dir.path());
    let nic = sample_content().nics.remove(0);
    ledger.guard_nic(nic.identity.clone(), "eth2", None, None);
    let location = NicLocation {
        netns: Netns {
            inode: HOST,
            names: vec![],
        },
        name: "uplink1".into(),
        ifindex: Some(4),
    };
    ledger.adopt_nic(&nic.identity, location, true);
    let rec = &ledger.nics()[0];
    assert_eq!(
        (rec.home_name.as_str(), rec.up, rec.state),
        ("uplink1", Some(true), NicState::Home)
    );
}

/// What `lend` records before the NIC leaves, committed; then the process dies (no save, no
/// drop): the next open finds the home name and the lend.
fn lend_then_kill(dir: &Path, journal_failed: bool) {
    let (mut ledger, _) = open(dir);
    ledger.journal_failed = journal_failed;
    let nic = &sample_content().nics[0];
    ledger.guard_nic(nic.identity.clone(), "eth2", Some(true), None);
    let lend = Lend {
        netns: Locator::Path("/run/netns/box".into()),
        name: "eth0".into(),
        persistent: false,
        container: None,
    };
    ledger.set_nic_lend(&nic.identity, Some(lend.clone()));
    ledger.commit().unwrap();
    std::mem::forget(ledger);
    let (ledger, _) = open(dir);
    let found = ledger.find_nic(&nic.identity).expect("the NIC is on disk");
    assert_eq!(
        (found.home_name.as_str(), found.lent.as_ref()),
        ("eth2", Some(&lend))
    );
}

#[test]
fn a_commit_before_a_kernel_change_survives_a_kill() {
    let dir = TempDir::new("ledger-commit");
    lend_then_kill(dir.path(), false);
}

#[test]
fn a_commit_after_a_failed_append_writes_the_document() {
    let dir = TempDir::new("ledger-commit-doc");
    lend_then_kill(dir.path(), true);
    let loaded = store::load(&dir.path().join(STATE_FILE)).unwrap();
    assert!(
        matches!(&loaded, store::Loaded::Good(c, _) if c.nics.len() == 1),
        "{loaded:?}"
    );
}

#[test]
fn the_agent_writes_the_document_only_when_due_and_the_journal_holds_the_rest() {
    let dir = TempDir::new("ledger-due");
    let state = dir.path().join(STATE_FILE);
    let (mut ledger, _) = open(dir.path());
    let spec = sample_content().links.into_values().next().unwrap().spec;
    ledger.record_link(spec.clone());
    assert!(!ledger.save_when_due().unwrap(), "one change is not due");
    assert!(!state.exists());
    // A crash now: the journal has the change.
    std::mem::forget(ledger);
    let (mut ledger, _) = open(dir.path());
    assert!(ledger.link(&spec.netns, &spec.name).is_some());

    let mut waiting = true;
    while ledger.revision - ledger.documented_revision < DOCUMENT_AFTER_ENTRIES {
        waiting = !waiting;
        let state = if waiting {
            LinkState::Waiting
        } else {
            LinkState::Intact
        };
        ledger.set_link_state(&spec.key(), state, None);
    }
    assert!(ledger.save_when_due().unwrap(), "written once due");
    assert!(matches!(
        store::load(&state).unwrap(),
        store::Loaded::Good(..)
    ));
    assert!(!ledger.save_when_due().unwrap(), "and not again");
}

#[test]
fn the_agent_fsyncs_the_journal_once_its_oldest_unsynced_line_is_due() {
    let dir = TempDir::new("ledger-sync-due");
    let (mut ledger, _) = open(dir.path());
    let spec = sample_content().links.into_values().next().unwrap().spec;
    ledger.record_link(spec.clone());
    ledger.save_when_due().unwrap();
    assert!(
        ledger.journal.unsynced_for().is_some(),
        "a line just written waits for a later pass"
    );
    ledger.set_link_state(&spec.key(), LinkState::Waiting, None);
    ledger.journal.age_unsynced(JOURNAL_SYNC_AFTER);
    ledger.save_when_due().unwrap();
    assert_eq!(ledger.journal.unsynced_for(), None, "fsynced once due");
    // Not fsynced, still written: a crash of the agent loses nothing.
    ledger.set_link_state(&spec.key(), LinkState::Intact, None);
    ledger.save_when_due().unwrap();
    std::mem::forget(ledger);
    let (ledger, _) = open(dir.path());
    assert_eq!(
        ledger.link(&spec.netns, &spec.name).unwrap().state,
        LinkState::Intact
    );
}

#[test]
fn a_runtime_change_is_written_without_fsync_or_into_the_document_when_the_journal_failed() {
    let dir = TempDir::new("ledger-written");
    let (mut ledger, _) = open(dir.path());
    let spec = sample_content().links.into_values().next().unwrap().spec;
    ledger.record_link(spec.clone());
    ledger.ensure_written().unwrap();
    assert!(!dir.path().join(STATE_FILE).exists(), "the journal has it");
    ledger.journal_failed = true;
    ledger.ensure_written().unwrap();
    std::mem::forget(ledger);
    let loaded = store::load(&dir.path().join(STATE_FILE)).unwrap();
    assert!(
        matches!(&loaded, store::Loaded::Good(c, _) if c.links.len() == 1),
        "{loaded:?}"
    );
}
