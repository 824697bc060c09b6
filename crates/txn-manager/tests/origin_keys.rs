//! Origin keys are never reused, and an outbox row is never deleted because of a different
//! change under its key: a library database restored from a backup or re-created, on a
//! follower and on a leader, and a database bound to its library.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use library_models as _;
use library_models::Tag;
use sync_log::{Change, DeviceId, Epoch, LibraryId, Seq, SyncLogStore};
use txn_manager::{Config, Error, Library, Op};

const DEVICE: DeviceId = DeviceId(uuid::Uuid::from_u128(0xD1));

struct Files {
    _dir: tempfile::TempDir,
    library: PathBuf,
    log: PathBuf,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    Files { library: dir.path().join("library.db"), log: dir.path().join("sync.db"), _dir: dir }
}

fn open(library: &Path, log: &mut SyncLogStore) -> Library {
    let registry = syncable::Registry::from_inventory().unwrap();
    Library::open(library, log, DEVICE, registry, Config::default()).unwrap()
}

fn tag(lib: &mut Library, name: &str) -> Change {
    lib.commit(vec![Op::put(Tag::new(name.into(), None))]).unwrap().remove(0)
}

/// Copies a closed SQLite file (no WAL left behind: every handle was dropped).
fn copy_db(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
    }
}

fn every_change_in_log(log: &mut SyncLogStore, changes: &[&Change]) {
    let entries = log.read_after(Seq(0), usize::MAX).unwrap();
    for c in changes {
        assert!(
            entries.iter().any(|e| e.change == **c),
            "change {:?} ({}) is not in the log",
            c.origin,
            c.model
        );
    }
}

/// A follower's library database restored from a backup while its sync log holds this
/// device's later changes: a change written before any catch-up (offline) takes a fresh origin
/// key, catch-up applies the old entries without deleting the new change's outbox row, and
/// the new change reaches the log.
#[test]
fn a_restored_library_database_never_reuses_an_origin_key_on_a_follower() {
    let f = files();
    let mut log = SyncLogStore::create(&f.log, common::LIBRARY).unwrap();
    let backup = f.library.with_extension("backup");
    let first;
    {
        let mut lib = open(&f.library, &mut log);
        first = tag(&mut lib, "before the backup");
    }
    copy_db(&f.library, &backup);
    let (second, third);
    {
        let mut lib = open(&f.library, &mut log);
        second = tag(&mut lib, "after the backup");
        third = tag(&mut lib, "after the backup too");
        // The leader (elsewhere) sequenced them; this follower's log copy has them.
        let mut leader = SyncLogStore::in_memory(common::LIBRARY).unwrap();
        leader.append(Epoch(1), &lib.outbox(10).unwrap()).unwrap();
        lib.receive(&mut log, &leader.read_after(Seq(0), 10).unwrap()).unwrap();
        assert!(lib.outbox(10).unwrap().is_empty());
    }
    copy_db(&backup, &f.library);

    let mut lib = open(&f.library, &mut log);
    assert_eq!(lib.origin_seq(), 3, "the counter moved past the log's keys at open");
    let offline = tag(&mut lib, "written offline after the restore");
    assert_eq!(offline.origin.seq, 4);
    let report = lib.catch_up(&mut log).unwrap();
    assert_eq!(report.rekeyed, 0);
    assert_eq!(lib.outbox(10).unwrap(), vec![offline.clone()], "the new change still waits");

    // Its leader sequences it and every device ends with all four changes.
    let mut leader = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    leader.append_sequenced(&log.read_after(Seq(0), 10).unwrap()).unwrap();
    leader.append(Epoch(1), &lib.outbox(10).unwrap()).unwrap();
    lib.receive(&mut log, &leader.read_after(Seq(0), 10).unwrap()).unwrap();
    assert!(lib.outbox(10).unwrap().is_empty());
    every_change_in_log(&mut log, &[&first, &second, &third, &offline]);
}

/// A leader's library database re-created from nothing while its sync log holds its changes:
/// the first `sequence` works (no `OriginConflict`, then or ever), the new change is
/// sequenced after the old ones, and the old ones are applied back into the tables.
#[test]
fn a_recreated_library_database_sequences_on_a_leader() {
    let f = files();
    let mut log = SyncLogStore::create(&f.log, common::LIBRARY).unwrap();
    let old = {
        let mut lib = open(&f.library, &mut log);
        let old = tag(&mut lib, "old");
        lib.sequence(&mut log, Epoch(1)).unwrap();
        old
    };
    let reference = {
        let mut lib = open(&f.library, &mut log);
        lib.content_hash().unwrap()
    };
    std::fs::remove_file(&f.library).unwrap();

    let mut lib = open(&f.library, &mut log);
    let new = tag(&mut lib, "new");
    assert_eq!(new.origin.seq, 2);
    for _ in 0..3 {
        assert_eq!(lib.sequence(&mut log, Epoch(1)).unwrap(), Seq(2));
    }
    assert!(lib.outbox(10).unwrap().is_empty());
    every_change_in_log(&mut log, &[&old, &new]);
    assert_ne!(lib.content_hash().unwrap(), reference, "the new tag is there too");
    let names: Vec<String> = {
        use diesel::prelude::*;
        library_models::schema::tag::table
            .select(library_models::schema::tag::name)
            .order(library_models::schema::tag::name)
            .load(lib.conn())
            .unwrap()
    };
    assert_eq!(names, ["new", "old"]);
}

/// When the reuse is only discovered when the log delivers our own older change under the
/// key (the leader held it, this device's log copy did not), the outbox row holding the new
/// change is re-keyed — never deleted — and the new change is sequenced under its new key.
#[test]
fn an_outbox_row_under_a_taken_key_is_rekeyed_not_deleted() {
    let (mut old, _) = common::memory_library(DEVICE, 1_000);
    let original = tag(&mut old, "sequenced by the leader");
    let mut leader = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    leader.append(Epoch(1), &old.outbox(10).unwrap()).unwrap();

    // A new database of the same device, whose own log copy knows nothing yet.
    let (mut lib, _) = common::memory_library(DEVICE, 2_000);
    let reused = tag(&mut lib, "written offline");
    assert_eq!(reused.origin, original.origin, "the same key (nothing local says otherwise)");
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let report = lib.receive(&mut log, &leader.read_after(Seq(0), 10).unwrap()).unwrap();
    assert_eq!(report.rekeyed, 1);

    let waiting = lib.outbox(10).unwrap();
    assert_eq!(waiting.len(), 1, "the new change was not dropped");
    assert_eq!(waiting[0].origin.seq, 2, "re-keyed past the taken key");
    assert_eq!((&waiting[0].payload, waiting[0].hlc), (&reused.payload, reused.hlc));
    leader.append(Epoch(1), &waiting).unwrap();
    lib.receive(&mut log, &leader.read_after(Seq(0), 10).unwrap()).unwrap();
    assert!(lib.outbox(10).unwrap().is_empty());
    assert_eq!(lib.origin_seq(), 2);
    assert_eq!(tag(&mut lib, "next").origin.seq, 3);
}

/// A library database is bound to its library: opening it with another library's log, or
/// handing another library's log to `catch_up`, `receive`, `sequence` or `rewind`, is
/// `ForeignLog` naming both libraries, and nothing is applied or deleted.
#[test]
fn a_library_database_refuses_another_librarys_log() {
    let f = files();
    let mut ours = SyncLogStore::create(&f.log, common::LIBRARY).unwrap();
    let mut lib = open(&f.library, &mut ours);
    tag(&mut lib, "ours");

    let other_library = LibraryId::new_v7();
    let mut theirs = SyncLogStore::in_memory(other_library).unwrap();
    let (mut stranger, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    theirs.append(Epoch(1), &[tag(&mut stranger, "theirs")]).unwrap();

    let foreign = |e: Error| match e {
        Error::ForeignLog { database, log } => {
            assert_eq!((database, log), (common::LIBRARY, other_library));
        }
        other => panic!("expected ForeignLog, got {other:?}"),
    };
    let before = lib.content_hash().unwrap();
    foreign(lib.catch_up(&mut theirs).unwrap_err());
    foreign(lib.receive(&mut theirs, &[]).unwrap_err());
    foreign(lib.sequence(&mut theirs, Epoch(1)).unwrap_err());
    foreign(lib.rewind(&mut theirs, Seq(0)).unwrap_err());
    assert_eq!(lib.content_hash().unwrap(), before);
    assert_eq!(lib.outbox(10).unwrap().len(), 1, "our outbox row is still there");
    drop(lib);

    let registry = syncable::Registry::from_inventory().unwrap();
    let err = Library::open(&f.library, &mut theirs, DEVICE, registry, Config::default());
    foreign(err.unwrap_err());
    let mut lib = open(&f.library, &mut ours);
    assert_eq!(lib.outbox(10).unwrap().len(), 1);
}

/// A leader whose re-submissions (a discarded suffix) hold changes under origin keys the log
/// already holds with other changes is not wedged: it sequences the rest, re-keys its own
/// conflicting change into the outbox (and sequences it), and keeps another device's for that
/// device to re-key — every later `sequence` succeeds.
#[test]
fn a_resubmission_under_a_taken_key_does_not_wedge_the_leader() {
    use sync_log::OriginKey;
    let (e, f) = (DeviceId::new_v7(), DeviceId::new_v7());
    let change = |device: DeviceId, seq: u64, name: &str| {
        let (mut lib, _) = common::memory_library(device, 1_000 + seq);
        let mut c = tag(&mut lib, name);
        c.origin = OriginKey { device, seq };
        c
    };
    let chain = |changes: &[Change], epoch: u64| common::sequence_at(changes, Epoch(epoch));
    let (y, z, w) = (change(e, 1, "y"), change(DEVICE, 1, "z"), change(f, 1, "w"));
    let (x, z_other) = (change(e, 1, "x"), change(DEVICE, 1, "z'"));

    let (mut lib, _) = common::memory_library(DEVICE, 5_000);
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    lib.receive(&mut log, &chain(&[y.clone(), z.clone(), w.clone()], 1)).unwrap();
    lib.rewind(&mut log, Seq(0)).unwrap();
    assert_eq!(lib.resubmit_count(), 3);
    // The winner's log holds other changes under e's and our first keys.
    lib.receive(&mut log, &chain(&[x.clone(), z_other.clone()], 2)).unwrap();

    let head = lib.sequence(&mut log, Epoch(3)).unwrap();
    let entries = log.read_after(Seq(0), 10).unwrap();
    let has = |c: &Change| entries.iter().any(|en| en.change.payload == c.payload);
    assert!(has(&w), "the other re-submission was sequenced");
    assert!(has(&z), "our own conflicting change was re-keyed and sequenced");
    assert!(!has(&y));
    assert_eq!(head, Seq(4));
    assert_eq!(lib.resubmit_count(), 1, "e's change waits for e to re-key it");
    assert!(lib.outbox(10).unwrap().is_empty());
    for _ in 0..2 {
        assert_eq!(lib.sequence(&mut log, Epoch(3)).unwrap(), Seq(4));
    }
}

/// Past every internal batch: the log brings 2,500 of our older changes (three apply batches)
/// under the keys a new database reused; the reused row is re-keyed once, past every key the
/// log holds — not onto keys that later batches bring — and then sequenced.
#[test]
fn a_reused_row_is_rekeyed_past_every_key_the_log_holds() {
    let mut old_tags: Vec<Tag> = Vec::new();
    for i in 0..2_500 {
        old_tags.push(Tag::new(format!("old {i}"), None));
    }
    let (mut old, _) = common::memory_library(DEVICE, 1_000);
    let sequenced = old.insert_batch(old_tags).unwrap();
    let mut leader = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    leader.append(Epoch(1), &sequenced).unwrap();

    let (mut lib, _) = common::memory_library(DEVICE, 2_000);
    let reused =
        lib.commit((0..3).map(|i| Op::put(Tag::new(format!("new {i}"), None))).collect()).unwrap();
    assert_eq!(reused[0].origin.seq, 1);
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let report = lib.receive(&mut log, &leader.read_after(Seq(0), usize::MAX).unwrap()).unwrap();
    assert_eq!(report.rekeyed, 1, "re-keyed once, not once per batch");
    let waiting = lib.outbox(10).unwrap();
    let keys: Vec<u64> = waiting.iter().map(|c| c.origin.seq).collect();
    assert_eq!(keys, vec![2_501, 2_502, 2_503]);
    leader.append(Epoch(1), &waiting).unwrap();
    lib.receive(&mut log, &leader.read_after(Seq(2_500), 10).unwrap()).unwrap();
    assert!(lib.outbox(10).unwrap().is_empty());
    assert_eq!(log.head().seq, Seq(2_503));
}
