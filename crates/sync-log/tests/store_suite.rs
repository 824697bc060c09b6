//! The storage test suite of the sync log. Tests that do not need a file run against both the
//! file-backed store and the in-memory stand-in (see [`both`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use proptest::prelude::*;
use sync_log::{
    Change, Checksum, Epoch, Error, LibraryId, LogEntry, Position, Seq, SyncLog, SyncLogStore,
};
use uuid::Uuid;

fn change(dev: u128, origin_seq: u64) -> Change {
    common::change(dev, origin_seq, 200)
}

fn changes(dev: u128, range: std::ops::Range<u64>) -> Vec<Change> {
    common::changes(dev, range, 200)
}

/// Runs `test` against a file-backed store and the in-memory stand-in.
fn both(test: impl Fn(SyncLogStore)) {
    let library = LibraryId(Uuid::from_u128(7));
    let dir = tempfile::tempdir().unwrap();
    test(SyncLogStore::create(&dir.path().join("sync.db"), library).unwrap());
    test(SyncLogStore::in_memory(library).unwrap());
}

fn all_entries(log: &mut SyncLogStore) -> Vec<LogEntry> {
    log.read_after(log.floor().seq, usize::MAX).unwrap()
}

/// Appending gives consecutive seqs from 1 and a checksum chain that anyone can recompute.
#[test]
fn append_assigns_consecutive_seqs_and_chains_checksums() {
    both(|mut log| {
        assert_eq!(log.head(), Position::default());
        let out = log.append(Epoch(1), &changes(1, 1..6)).unwrap();
        assert_eq!(out.iter().map(|a| a.seq.0).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert!(out.iter().all(|a| a.new));
        log.append(Epoch(2), &changes(2, 1..3)).unwrap();
        let entries = all_entries(&mut log);
        let mut prev = Checksum::GENESIS;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, Seq(i as u64 + 1));
            assert_eq!(e.checksum, LogEntry::chain(&prev, e.seq, e.epoch, &e.change));
            prev = e.checksum;
        }
        assert_eq!(entries[5].epoch, Epoch(2));
        assert_eq!(log.head(), entries[6].position());
        log.verify().unwrap();
    });
}

/// Reading after a seq with a limit pages through the whole log in order, without gaps.
#[test]
fn read_after_pages_in_order() {
    both(|mut log| {
        log.append(Epoch(1), &changes(1, 1..1_001)).unwrap();
        let mut after = Seq(0);
        let mut seen = 0;
        loop {
            let page = log.read_after(after, 64).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 64);
            for e in &page {
                assert_eq!(e.seq, after.next());
                after = e.seq;
                seen += 1;
            }
        }
        assert_eq!(seen, 1_000);
        assert!(log.read_after(Seq(1_000), 10).unwrap().is_empty());
        assert!(log.read_after(Seq(5_000), 10).unwrap().is_empty());
    });
}

/// The same origin key is sequenced once: in a later batch or twice in one batch, it returns
/// the existing seq, writes nothing, and consumes no seq.
#[test]
fn origin_keys_are_idempotent() {
    both(|mut log| {
        log.append(Epoch(1), &changes(1, 1..4)).unwrap();
        let again = log.append(Epoch(2), &[change(1, 2)]).unwrap();
        assert_eq!(again[0].seq, Seq(2));
        assert!(!again[0].new);
        assert_eq!(log.head().seq, Seq(3));

        // A mixed batch: old, new, repeat of new, old.
        let batch = vec![change(1, 1), change(1, 4), change(1, 4), change(1, 3), change(1, 5)];
        let out = log.append(Epoch(2), &batch).unwrap();
        let got: Vec<(u64, bool)> = out.iter().map(|a| (a.seq.0, a.new)).collect();
        assert_eq!(got, vec![(1, false), (4, true), (4, false), (3, false), (5, true)]);
        assert_eq!(log.head().seq, Seq(5));
        assert_eq!(all_entries(&mut log).len(), 5);
        assert_eq!(log.find_origin(&change(1, 4).origin).unwrap(), Some(Seq(4)));
        assert_eq!(log.find_origin(&change(9, 9).origin).unwrap(), None);
        log.verify().unwrap();
    });
}

/// An origin key that comes back with a different change is refused, naming the key and the
/// seq of the original, and nothing of the batch is written: a reused key never loses a change
/// silently.
#[test]
fn reused_origin_key_with_other_change_is_refused() {
    both(|mut log| {
        log.append(Epoch(1), &changes(1, 1..4)).unwrap();
        let mut reused = change(1, 2);
        reused.payload = b"something else".to_vec();
        let err = log.append(Epoch(1), &[change(1, 4), reused]).unwrap_err();
        assert!(
            matches!(err, Error::OriginConflict { seq: Seq(2), origin } if origin.seq == 2),
            "{err}"
        );
        assert!(!err.is_retryable());
        assert_eq!(log.head().seq, Seq(3), "nothing of the batch was written");
    });
}

/// A crash while creating the log can leave an SQLite file with no table (SQLite writes its
/// header before the creating transaction commits); `open_or_create` creates the log there,
/// while `open` refuses it as not a sync log.
#[test]
fn open_or_create_finishes_an_interrupted_creation() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    {
        let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        c.batch_execute("PRAGMA journal_mode = WAL;").unwrap();
    }
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    assert!(matches!(SyncLogStore::open(&path, library), Err(Error::Corrupt { .. })));
    let mut log = SyncLogStore::open_or_create(&path, library).unwrap();
    log.append(Epoch(1), &changes(1, 1..3)).unwrap();
    drop(log);
    assert_eq!(SyncLogStore::open(&path, library).unwrap().head().seq, Seq(2));
}

/// Sequence numbers and the chain continue after the file is closed and opened again.
#[test]
fn restart_continues_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    let head = {
        let mut log = SyncLogStore::create(&path, library).unwrap();
        log.append(Epoch(1), &changes(1, 1..11)).unwrap();
        log.head()
    };
    let mut log = SyncLogStore::open(&path, library).unwrap();
    assert_eq!(log.head(), head);
    let out = log.append(Epoch(1), &changes(1, 11..13)).unwrap();
    assert_eq!(out[0].seq, Seq(11));
    // Origin keys from before the restart are still known.
    assert!(!log.append(Epoch(1), &[change(1, 3)]).unwrap()[0].new);
    log.verify().unwrap();
}

/// A follower's copy built with `append_sequenced` is identical to the leader's; re-delivery is
/// harmless; a gap or a different chain is a typed error that writes nothing.
#[test]
fn follower_copy_checks_the_chain() {
    both(|mut leader| {
        let mut follower = SyncLogStore::in_memory(leader.library()).unwrap();
        leader.append(Epoch(1), &changes(1, 1..21)).unwrap();
        let entries = all_entries(&mut leader);
        follower.append_sequenced(&entries[..10]).unwrap();
        // Overlapping re-delivery.
        follower.append_sequenced(&entries[5..20]).unwrap();
        assert_eq!(follower.head(), leader.head());
        assert_eq!(all_entries(&mut follower), entries);

        leader.append(Epoch(1), &changes(1, 21..23)).unwrap();
        let more = leader.read_after(Seq(20), 10).unwrap();
        // Skipping an entry is a gap.
        let err = follower.append_sequenced(&more[1..]).unwrap_err();
        assert!(matches!(err, Error::Gap { expected: Seq(21), got: Seq(22) }), "{err}");
        // A tampered entry is a divergence, and nothing of the batch is written.
        let mut forged = more.clone();
        forged[1].change.payload.push(0);
        let err = follower.append_sequenced(&forged).unwrap_err();
        assert!(matches!(err, Error::Diverged { seq: Seq(22), .. }), "{err}");
        assert_eq!(follower.head().seq, Seq(20));
        // Re-delivery of an old entry that differs from ours is a divergence too.
        let mut old = entries[3].clone();
        old.checksum = Checksum([9; 32]);
        assert!(matches!(follower.append_sequenced(&[old]), Err(Error::Diverged { .. })));
    });
}

/// Pruning drops old entries but not the head; reading below the floor asks for a snapshot;
/// the chain goes on from the floor, also after a restart.
#[test]
fn prune_keeps_head_and_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    let mut log = SyncLogStore::create(&path, library).unwrap();
    log.append(Epoch(1), &changes(1, 1..101)).unwrap();
    let at_60 = log.checksum_at(Seq(60)).unwrap().unwrap();
    let head = log.head();
    log.prune_below(Seq(61)).unwrap();
    assert_eq!(log.head(), head);
    assert_eq!(log.floor(), Position { seq: Seq(60), checksum: at_60 });
    assert!(matches!(
        log.read_after(Seq(10), 5),
        Err(Error::Pruned { requested: Seq(10), floor: Seq(60) })
    ));
    assert_eq!(log.read_after(Seq(60), 1000).unwrap().len(), 40);
    assert!(matches!(log.checksum_at(Seq(5)), Err(Error::Pruned { .. })));
    assert_eq!(log.checksum_at(Seq(60)).unwrap(), Some(at_60));
    // Pruning backwards is a no-op; past the head an error.
    log.prune_below(Seq(10)).unwrap();
    assert!(matches!(log.prune_below(Seq(500)), Err(Error::InvalidArgument(_))));
    drop(log);

    let mut log = SyncLogStore::open(&path, library).unwrap();
    assert_eq!(log.floor().seq, Seq(60));
    assert_eq!(log.head(), head);
    // Prune everything: the head survives in the floor.
    log.prune_below(Seq(101)).unwrap();
    assert!(log.read_after(Seq(100), 10).unwrap().is_empty());
    drop(log);
    let mut log = SyncLogStore::open(&path, library).unwrap();
    assert_eq!(log.head(), head);
    let out = log.append(Epoch(2), &changes(2, 1..3)).unwrap();
    assert_eq!(out[0].seq, Seq(101));
    log.verify().unwrap();
}

/// Truncating after a seq returns the discarded suffix and the log goes on from there.
#[test]
fn truncate_after_returns_suffix() {
    both(|mut log| {
        log.append(Epoch(1), &changes(1, 1..11)).unwrap();
        let at_6 = log.checksum_at(Seq(6)).unwrap().unwrap();
        let removed = log.truncate_after(Seq(6)).unwrap();
        assert_eq!(removed.iter().map(|e| e.seq.0).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        assert_eq!(log.head(), Position { seq: Seq(6), checksum: at_6 });
        // The removed origin keys can be sequenced again.
        let again: Vec<Change> = removed.into_iter().map(|e| e.change).collect();
        let out = log.append(Epoch(2), &again).unwrap();
        assert!(out.iter().all(|a| a.new));
        assert_eq!(log.head().seq, Seq(10));
        log.verify().unwrap();
    });
}

/// Opening another library's log is refused with an error naming both libraries.
#[test]
fn foreign_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let ours = LibraryId(Uuid::from_u128(1));
    let theirs = LibraryId(Uuid::from_u128(2));
    SyncLogStore::create(&path, theirs).unwrap();
    let err = SyncLogStore::open(&path, ours).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ForeignLibrary { expected, found, .. } if expected == ours && found == theirs)
    );
    assert!(msg.contains(&ours.to_string()) && msg.contains(&theirs.to_string()), "{msg}");
    assert!(!err.is_retryable());
}

fn set_meta(path: &Path, key: &str, value: &str) {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(&format!("REPLACE INTO sync_meta (key, value) VALUES ('{key}', '{value}')"))
        .unwrap();
}

/// A file written by a newer build is refused with an error naming both schema versions.
#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    drop(SyncLogStore::create(&path, library).unwrap());
    set_meta(&path, "schema_version", "99");
    let err = SyncLogStore::open(&path, library).unwrap_err();
    assert!(
        matches!(err, Error::NewerSchema { file: 99, supported: sync_log::SCHEMA_VERSION, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("99"));
}

/// Missing, empty-but-not-ours, garbage and truncated files give clear errors, never a panic.
#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let library = LibraryId::new_v7();

    let missing = dir.path().join("missing.db");
    assert!(matches!(SyncLogStore::open(&missing, library), Err(Error::Missing(_))));

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 64 * 1024]).unwrap();
    let err = SyncLogStore::open(&garbage, library).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");

    // A valid SQLite file that is not a sync log.
    let other = dir.path().join("other.db");
    {
        use diesel::connection::SimpleConnection;
        use diesel::{Connection, SqliteConnection};
        let mut c = SqliteConnection::establish(other.to_str().unwrap()).unwrap();
        c.batch_execute("CREATE TABLE t (x INTEGER)").unwrap();
    }
    let err = SyncLogStore::open(&other, library).unwrap_err();
    assert!(matches!(err, Error::NotASyncLog { .. }), "{err}");

    // A truncated log.
    let path = dir.path().join("sync.db");
    {
        let mut log = SyncLogStore::create(&path, library).unwrap();
        log.append(Epoch(1), &changes(1, 1..2_001)).unwrap();
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let err = SyncLogStore::open(&path, library).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("sync.db"), "the error names the file: {err}");
}

/// Bytes overwritten inside the file are caught: by the checks at open, or at the latest by
/// `verify`, which recomputes the whole chain.
#[test]
fn overwritten_bytes_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    {
        let mut log = SyncLogStore::create(&path, library).unwrap();
        log.append(Epoch(1), &changes(1, 1..2_001)).unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip payload bytes (0x01 × 200 in every row) somewhere in the middle of the file.
    let mid = bytes.len() / 2;
    let at = mid + bytes[mid..].windows(16).position(|w| w.iter().all(|&b| b == 1)).unwrap();
    bytes[at + 4] = 0xEE;
    std::fs::write(&path, &bytes).unwrap();
    let detected = match SyncLogStore::open(&path, library) {
        Err(Error::Corrupt { .. }) => true,
        Err(other) => panic!("unexpected error {other}"),
        Ok(mut log) => matches!(log.verify(), Err(Error::Corrupt { .. })),
    };
    assert!(detected, "a flipped payload byte went unnoticed");
}

/// The async handle serialises concurrent appends from many tasks: every change gets exactly
/// one seq, with no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_handle_serialises_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        SyncLog::open_or_create(dir.path().join("sync.db"), LibraryId::new_v7()).await.unwrap();
    let mut tasks = Vec::new();
    for dev in 1..=4u128 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for batch in 0..10u64 {
                log.append(Epoch(1), changes(dev, batch * 10 + 1..batch * 10 + 11)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.head().await.unwrap().seq, Seq(400));
    let entries = log.read_after(Seq(0), 1_000).await.unwrap();
    assert_eq!(entries.len(), 400);
    log.with(|s| s.verify()).await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever mix of batches and re-submissions arrives, the log holds each origin key once,
    /// with consecutive seqs, a valid chain, and every append reporting the key's one seq.
    #[test]
    fn any_batches_keep_the_log_consistent(
        batches in prop::collection::vec(
            prop::collection::vec((1u128..4, 1u64..30), 0..20), 1..12)
    ) {
        let mut log = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
        let mut seq_of = std::collections::HashMap::new();
        for (i, batch) in batches.iter().enumerate() {
            let cs: Vec<Change> = batch.iter().map(|&(d, s)| change(d, s)).collect();
            let out = log.append(Epoch(i as u64 + 1), &cs).unwrap();
            prop_assert_eq!(out.len(), cs.len());
            for (c, a) in cs.iter().zip(&out) {
                let first = *seq_of.entry(c.origin).or_insert(a.seq);
                prop_assert_eq!(first, a.seq);
            }
        }
        let entries = all_entries(&mut log);
        prop_assert_eq!(entries.len(), seq_of.len());
        for (i, e) in entries.iter().enumerate() {
            prop_assert_eq!(e.seq, Seq(i as u64 + 1));
            prop_assert_eq!(seq_of[&e.change.origin], e.seq);
        }
        log.verify().unwrap();
    }
}
