//! What the two files do when one of them goes back in time — what a power loss can leave
//! (each file may lose its last commits, independently) and what restoring a backup of one
//! file does: nothing is sequenced at a seq the library counts as applied, no origin key is
//! reused, and no outbox row is stranded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use library_models as _;
use library_models::Tag;
use sync_log::{DeviceId, Epoch, Seq, SyncLogStore};
use txn_manager::{Config, Library, Op};

const DEVICE: DeviceId = DeviceId(uuid::Uuid::from_u128(0xD2));

fn open(dir: &Path) -> (Library, SyncLogStore) {
    let mut log = SyncLogStore::open_or_create(&dir.join("sync.db"), common::LIBRARY).unwrap();
    let registry = syncable::Registry::from_inventory().unwrap();
    let lib = Library::open(&dir.join("library.db"), &mut log, DEVICE, registry, Config::default())
        .unwrap();
    (lib, log)
}

/// Copies a closed SQLite file (every handle dropped, so no WAL is left) to `to`, replacing it.
fn copy_db(from: &Path, to: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
    }
    std::fs::copy(from, to).unwrap();
}

fn backup(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(format!("{name}.backup"));
    copy_db(&dir.join(name), &to);
    to
}

/// The leader's sync log goes back to before an append while the library keeps the apply
/// (a restored `sync.db`; a power loss can no longer leave this, because an append is durable
/// before the library relies on it). At open the library notices it is ahead of its log and
/// lowers its applied seq; the next change is sequenced at the freed seq AND applied (its
/// outbox row removed), under an origin key the lost entry never had.
#[test]
fn a_log_behind_its_library_is_detected_and_the_next_change_applied() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    {
        let (mut lib, mut log) = open(dir);
        lib.commit(vec![Op::put(Tag::new("a".into(), None))]).unwrap();
        lib.sequence(&mut log, Epoch(1)).unwrap();
    }
    let log_backup = backup(dir, "sync.db");
    let lost = {
        let (mut lib, mut log) = open(dir);
        let lost = lib.commit(vec![Op::put(Tag::new("b".into(), None))]).unwrap().remove(0);
        assert_eq!(lib.sequence(&mut log, Epoch(1)).unwrap(), Seq(2));
        assert_eq!(lib.applied_seq(), Seq(2));
        lost
    };
    copy_db(&log_backup, &dir.join("sync.db"));

    let (mut lib, mut log) = open(dir);
    assert_eq!(log.head().seq, Seq(1));
    assert_eq!(lib.applied_seq(), Seq(1), "the applied seq follows the log back");
    let next = lib.commit(vec![Op::put(Tag::new("c".into(), None))]).unwrap().remove(0);
    assert!(next.origin.seq > lost.origin.seq, "the lost entry's origin key is not reused");
    assert_eq!(lib.sequence(&mut log, Epoch(1)).unwrap(), Seq(2));
    assert_eq!(lib.applied_seq(), Seq(2));
    assert!(lib.outbox(10).unwrap().is_empty(), "the new change's outbox row is removed");
    let entry = log.read_after(Seq(1), 10).unwrap().remove(0);
    assert_eq!(entry.change, next);
}

/// The library database goes back to before its last commits while the log keeps them (a
/// power loss on the library file, or a restored backup): at open the origin counter moves
/// past the log's keys, catch-up applies what the log holds, and the tables equal what they
/// were before the loss.
#[test]
fn a_library_behind_its_log_catches_up_to_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    {
        let (mut lib, mut log) = open(dir);
        lib.commit(vec![Op::put(Tag::new("a".into(), None))]).unwrap();
        lib.sequence(&mut log, Epoch(1)).unwrap();
    }
    let library_backup = backup(dir, "library.db");
    let before = {
        let (mut lib, mut log) = open(dir);
        lib.commit(vec![Op::put(Tag::new("b".into(), None))]).unwrap();
        lib.commit(vec![Op::put(Tag::new("c".into(), None))]).unwrap();
        lib.sequence(&mut log, Epoch(1)).unwrap();
        lib.content_hash().unwrap()
    };
    copy_db(&library_backup, &dir.join("library.db"));

    let (mut lib, mut log) = open(dir);
    assert_eq!(lib.origin_seq(), 3, "the counter moved past the log's keys");
    assert_eq!(lib.applied_seq(), Seq(1));
    lib.catch_up(&mut log).unwrap();
    assert_eq!(lib.content_hash().unwrap(), before);
    assert!(lib.outbox(10).unwrap().is_empty());
}

/// A leader pushes between appending to its log and applying it (`sequence_log`, then
/// `catch_up`). A crash in between leaves the library behind its log with the outbox rows in
/// place: at the next open they are applied and removed, never sequenced a second time.
#[test]
fn a_crash_between_sequencing_and_applying_sequences_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    {
        let (mut lib, mut log) = open(dir);
        lib.commit(vec![Op::put(Tag::new("a".into(), None)), Op::put(Tag::new("b".into(), None))])
            .unwrap();
        lib.commit(vec![Op::put(Tag::new("c".into(), None))]).unwrap();
        assert_eq!(lib.sequence_log(&mut log, Epoch(1)).unwrap(), Seq(3));
        assert_eq!(lib.applied_seq(), Seq(0), "sequence_log applies nothing");
        assert_eq!(lib.outbox_len().unwrap(), 3, "the changes wait until they are applied");
        // Crash: dropped before `catch_up`.
    }
    let (mut lib, mut log) = open(dir);
    lib.catch_up(&mut log).unwrap();
    assert_eq!(lib.applied_seq(), Seq(3));
    assert_eq!(lib.outbox_len().unwrap(), 0);
    // Sequencing again appends nothing: every change is in the log once.
    assert_eq!(lib.sequence(&mut log, Epoch(1)).unwrap(), Seq(3));
    let entries = log.read_after(Seq(0), 10).unwrap();
    assert_eq!(entries.len(), 3);
    let mut keys: Vec<_> = entries.iter().map(|e| e.change.origin).collect();
    keys.dedup();
    assert_eq!(keys.len(), 3);
}
