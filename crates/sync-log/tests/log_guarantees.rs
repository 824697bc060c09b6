//! Guarantees of the sync log that a hostile caller of the public API would probe: large
//! batches with known origin keys, reused keys, foreign files, re-delivery around the pruned
//! floor, failed transactions, durability. Each test names the property it proves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use sync_log::{Change, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Seq, SyncLog, SyncLogStore};

use common::device;

fn change(dev: u128, origin_seq: u64) -> Change {
    common::change(dev, origin_seq, 32)
}

fn changes(dev: u128, range: std::ops::Range<u64>) -> Vec<Change> {
    common::changes(dev, range, 32)
}

fn sql(path: &Path, script: &str) {
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(script).unwrap();
}

fn all_entries(log: &mut SyncLogStore) -> Vec<LogEntry> {
    log.read_after(log.floor().seq, usize::MAX).unwrap()
}

/// `max_origin_seq` is the highest origin seq of a device that the log holds or ever pruned:
/// pruning every entry of a device does not lower it, other devices do not change it, and a
/// device the log never saw has none. It survives a reopen, and the async handle agrees.
#[tokio::test]
async fn max_origin_seq_covers_held_and_pruned_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    let mut log = SyncLogStore::create(&path, library).unwrap();
    assert_eq!(log.max_origin_seq(device(1)).unwrap(), None);
    log.append(Epoch(1), &changes(1, 1..6)).unwrap();
    log.append(Epoch(1), &changes(2, 1..3)).unwrap();
    assert_eq!(log.max_origin_seq(device(1)).unwrap(), Some(5));
    assert_eq!(log.max_origin_seq(device(2)).unwrap(), Some(2));
    assert_eq!(log.max_origin_seq(device(3)).unwrap(), None);

    // Prune every entry of device 1 and the first of device 2.
    log.prune_below(Seq(7)).unwrap();
    assert_eq!(log.max_origin_seq(device(1)).unwrap(), Some(5));
    assert_eq!(log.max_origin_seq(device(2)).unwrap(), Some(2));
    log.append(Epoch(1), &changes(2, 3..5)).unwrap();
    log.prune_below(Seq(9)).unwrap();
    assert_eq!(log.max_origin_seq(device(2)).unwrap(), Some(4));
    drop(log);

    let log = SyncLog::new(SyncLogStore::open(&path, library).unwrap());
    assert_eq!(log.max_origin_seq(device(1)).await.unwrap(), Some(5));
    assert_eq!(log.max_origin_seq(device(2)).await.unwrap(), Some(4));
    assert_eq!(log.max_origin_seq(device(3)).await.unwrap(), None);
}

/// A file written by the first schema version (without the table of pruned origins) opens: it
/// is migrated to the current version in place, keeps its entries and head, and then records
/// pruned origins like a new file.
#[test]
fn version_1_files_open_and_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    let head = {
        let mut log = SyncLogStore::create(&path, library).unwrap();
        log.append(Epoch(1), &changes(1, 1..11)).unwrap();
        log.head()
    };
    // Turn the file back into what version 1 wrote.
    sql(
        &path,
        "DROP TABLE sync_pruned_origin;
         DELETE FROM __diesel_schema_migrations WHERE version > '20261125000001';
         UPDATE sync_meta SET value = '1' WHERE key = 'schema_version';",
    );
    let mut log = SyncLogStore::open(&path, library).unwrap();
    assert_eq!(log.head(), head);
    assert_eq!(all_entries(&mut log).len(), 10);
    log.prune_below(Seq(11)).unwrap();
    assert_eq!(log.max_origin_seq(device(1)).unwrap(), Some(10));
    drop(log);
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    #[derive(diesel::QueryableByName)]
    struct V {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }
    let v: V = diesel::RunQueryDsl::get_result(
        diesel::sql_query("SELECT value FROM sync_meta WHERE key = 'schema_version'"),
        &mut conn,
    )
    .unwrap();
    assert_eq!(v.value, sync_log::SCHEMA_VERSION.to_string());
}

/// The head the store reports is the table's last entry (or the floor), and a fresh open of
/// the same file agrees with it and with the whole chain.
fn assert_head_is_table(log: &mut SyncLogStore) {
    let entries = log.read_after(log.floor().seq, usize::MAX).unwrap();
    let table_head = entries.last().map_or(log.floor(), LogEntry::position);
    assert_eq!(log.head(), table_head, "the in-memory head equals the table");
    log.verify().unwrap();
    if log.path() != Path::new(":memory:") {
        let mut again = SyncLogStore::open(log.path(), log.library()).unwrap();
        assert_eq!(again.head(), log.head(), "a reopen agrees");
        assert_eq!(again.floor(), log.floor());
        assert_eq!(all_entries(&mut again), entries);
    }
}

fn file_log(dir: &tempfile::TempDir) -> SyncLogStore {
    SyncLogStore::create(&dir.path().join("sync.db"), LibraryId::new_v7()).unwrap()
}

/// A batch larger than one insert chunk in which a change after the first full chunk is
/// already in the log, or repeats an earlier change of the same batch, is sequenced exactly
/// once per origin key: every new change gets the next seq, known ones their existing seq, the
/// head equals the table, the next append continues after it, and a reopen agrees. Sizes go
/// past every internal chunk.
#[test]
fn append_past_a_chunk_with_known_keys_keeps_the_head_on_the_table() {
    for size in [2_500u64, 10_001] {
        for repeat_in_batch in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = file_log(&dir);
            log.append(Epoch(1), &changes(1, 1..6)).unwrap();
            // Device 2's changes, with a known key spliced in after the first full chunk.
            let mut batch = changes(2, 1..size + 1);
            let known = if repeat_in_batch { change(2, 7) } else { change(1, 3) };
            let known_seq = if repeat_in_batch { Seq(5 + 7) } else { Seq(3) };
            batch.insert(1_500, known.clone());
            let out = log.append(Epoch(1), &batch).unwrap();
            assert_eq!(out.len(), batch.len());
            let mut next = 6;
            for (i, a) in out.iter().enumerate() {
                if i == 1_500 {
                    assert_eq!((a.seq, a.new), (known_seq, false), "size {size}");
                } else {
                    assert_eq!((a.seq, a.new), (Seq(next), true), "size {size}, index {i}");
                    next += 1;
                }
            }
            assert_eq!(log.head().seq, Seq(5 + size));
            assert_head_is_table(&mut log);
            // The next append continues after the head.
            let more = log.append(Epoch(2), &changes(3, 1..3)).unwrap();
            assert_eq!(more[0].seq, Seq(6 + size));
            assert!(more.iter().all(|a| a.new));
            assert_head_is_table(&mut log);
        }
    }
}

/// One origin key with a different change inside one batch is refused with
/// `OriginConflict`, exactly as across batches, and nothing of the batch is written; an
/// identical repeat inside one batch stays `new: false` with the first occurrence's seq. Both
/// hold for small batches and for batches past one insert chunk.
#[test]
fn reused_origin_key_inside_one_batch_is_a_conflict() {
    for size in [10u64, 2_500] {
        let mut log = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
        log.append(Epoch(1), &changes(1, 1..4)).unwrap();
        let mut batch = changes(2, 1..size + 1);
        let mut other = change(2, 2);
        other.payload = b"another change".to_vec();
        batch.push(other);
        let err = log.append(Epoch(1), &batch).unwrap_err();
        assert!(
            matches!(err, sync_log::Error::OriginConflict { origin, seq: Seq(5) }
                if origin == change(2, 2).origin),
            "size {size}: {err}"
        );
        assert_eq!(log.head().seq, Seq(3), "nothing of the batch was written");
        assert_eq!(all_entries(&mut log).len(), 3);

        // The identical repeat is harmless.
        let mut batch = changes(2, 1..size + 1);
        batch.push(change(2, 2));
        let out = log.append(Epoch(1), &batch).unwrap();
        assert_eq!(*out.last().unwrap(), sync_log::Appended { seq: Seq(5), new: false });
        assert_eq!(log.head().seq, Seq(3 + size));
        assert_head_is_table(&mut log);
    }
}

/// Builds an SQLite file shaped like a library database: diesel's migration table and model
/// tables, in WAL mode (as the library runs) or in the default rollback mode.
fn library_like_db(path: &Path, wal: bool, with_sync_meta: bool) {
    let mut script = String::new();
    if wal {
        script.push_str("PRAGMA journal_mode = WAL;");
    }
    script.push_str(
        "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL,
                                                  run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
         INSERT INTO __diesel_schema_migrations (version) VALUES ('20261125000001');
         CREATE TABLE tag (uuid BLOB PRIMARY KEY NOT NULL, name TEXT NOT NULL);
         INSERT INTO tag VALUES (x'01', 'holiday');
         CREATE TABLE outbox (origin_seq INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
    );
    if with_sync_meta {
        script.push_str(
            "CREATE TABLE sync_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
             INSERT INTO sync_meta VALUES ('schema_version', '1');",
        );
    }
    sql(path, &script);
}

fn dir_snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// `open` and `open_or_create` on a library database (any SQLite file with other tables,
/// diesel's migration table included, in WAL or rollback mode, even one that has a table named
/// like ours) refuse it with `NotASyncLog`, and the file is byte-identical afterwards.
#[test]
fn library_database_is_refused_and_left_untouched() {
    for (wal, with_sync_meta) in [(true, false), (false, false), (false, true), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("library.db");
        library_like_db(&path, wal, with_sync_meta);
        let before = dir_snapshot(dir.path());
        let library = LibraryId::new_v7();
        for attempt in 0..3 {
            let err = match attempt {
                0 => SyncLogStore::open(&path, library).unwrap_err(),
                1 => SyncLogStore::open_or_create(&path, library).unwrap_err(),
                _ => SyncLogStore::create(&path, library).unwrap_err(),
            };
            match (attempt, &err) {
                (0 | 1, sync_log::Error::NotASyncLog { tables, .. }) => {
                    assert!(tables.iter().any(|t| t == "tag"), "{err}");
                    assert!(err.to_string().contains("library.db"), "{err}");
                }
                (2, sync_log::Error::InvalidArgument(_)) => {}
                _ => panic!("wal {wal}, attempt {attempt}: unexpected {err}"),
            }
            assert!(!err.is_retryable());
            assert_eq!(dir_snapshot(dir.path()), before, "wal {wal}: the file was not touched");
        }
    }
}

/// A leader's log of `n` changes of device 1, and its entries.
fn leader_with(n: u64) -> (SyncLogStore, Vec<LogEntry>) {
    let mut leader = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
    leader.append(Epoch(1), &changes(1, 1..n + 1)).unwrap();
    let entries = all_entries(&mut leader);
    (leader, entries)
}

/// A re-delivery that starts below a follower's pruned floor is accepted: the pruned part is
/// skipped, the entry at the floor is compared with the floor's checksum (a different one is a
/// divergence), the rest is checked and appended as usual — also when everything was pruned.
#[test]
fn redelivery_from_below_the_floor_skips_the_pruned_part() {
    let (_leader, entries) = leader_with(30);
    let dir = tempfile::tempdir().unwrap();
    let mut follower = file_log(&dir);
    follower.append_sequenced(&entries[..20]).unwrap();
    follower.prune_below(Seq(11)).unwrap();
    assert_eq!(follower.floor().seq, Seq(10));
    // From seq 1: below the floor, at the floor, known, new.
    let head = follower.append_sequenced(&entries[..25]).unwrap();
    assert_eq!(head, entries[24].position());
    assert_head_is_table(&mut follower);

    // Everything pruned: floor == head; re-delivery from 1 goes on after it.
    follower.prune_below(Seq(26)).unwrap();
    assert_eq!(follower.floor(), follower.head());
    let head = follower.append_sequenced(&entries).unwrap();
    assert_eq!(head, entries[29].position());
    assert_head_is_table(&mut follower);

    // The entry at the floor must carry the floor's checksum.
    let mut forged = entries[24].clone();
    forged.checksum = sync_log::Checksum([7; 32]);
    let err = follower.append_sequenced(&[forged]).unwrap_err();
    assert!(matches!(err, sync_log::Error::Diverged { seq: Seq(25), .. }), "{err}");
    assert_head_is_table(&mut follower);
}

/// A batch holding two different entries at one seq is refused as a divergence, wherever the
/// second one sits in the batch and whether the first is stored or earlier in the batch, and
/// nothing of it is written; the identical entry twice is a harmless re-delivery.
#[test]
fn two_different_entries_at_one_seq_are_refused() {
    let (mut leader, entries) = leader_with(6);
    // Another history from seq 5 on: same seq, different change.
    leader.truncate_after(Seq(4)).unwrap();
    leader.append(Epoch(2), &[change(9, 1), change(9, 2)]).unwrap();
    let fork = leader.read_after(Seq(4), 10).unwrap();
    assert_ne!(fork[0], entries[4]);

    let mut follower = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
    follower.append_sequenced(&entries[..4]).unwrap();
    let bad_batches: Vec<Vec<LogEntry>> = vec![
        vec![entries[4].clone(), entries[5].clone(), fork[0].clone()],
        vec![entries[4].clone(), fork[0].clone()],
        vec![entries[4].clone(), entries[5].clone(), fork[1].clone()],
        // Same checksum, different content.
        vec![entries[4].clone(), entries[5].clone(), {
            let mut e = entries[4].clone();
            e.change.payload.push(1);
            e
        }],
    ];
    for batch in bad_batches {
        let err = follower.append_sequenced(&batch).unwrap_err();
        assert!(matches!(err, sync_log::Error::Diverged { .. }), "{err}");
        assert_eq!(follower.head(), entries[3].position(), "nothing was written");
    }
    // Stored, then re-delivered with a different entry at a stored seq.
    follower.append_sequenced(&entries[4..6]).unwrap();
    let mut same_sum = entries[4].clone();
    same_sum.epoch = Epoch(7);
    for bad in [fork[0].clone(), same_sum] {
        let err = follower.append_sequenced(&[bad]).unwrap_err();
        assert!(matches!(err, sync_log::Error::Diverged { seq: Seq(5), .. }), "{err}");
    }
    // The identical entry twice is fine.
    let mut again = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
    let batch = [&entries[..5], &entries[2..6], &entries[4..5]].concat();
    assert_eq!(again.append_sequenced(&batch).unwrap(), entries[5].position());
    assert_head_is_table(&mut again);
}

/// An origin key that was sequenced and then pruned is never sequenced again when it is
/// forwarded again (alone, in a large batch, after a reopen): it is `new: false` with the
/// floor's seq (an upper bound of its pruned seq), and new changes go on after the head.
#[test]
fn pruned_origin_keys_are_not_sequenced_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = file_log(&dir);
    log.append(Epoch(1), &changes(1, 1..1_501)).unwrap();
    log.append(Epoch(1), &changes(2, 1..11)).unwrap();
    log.prune_below(Seq(1_201)).unwrap();
    let floor = log.floor().seq;
    assert_eq!(floor, Seq(1_200));

    let again = log.append(Epoch(2), &[change(1, 5)]).unwrap();
    assert_eq!(again, vec![sync_log::Appended { seq: floor, new: false }]);
    assert_eq!(log.head().seq, Seq(1_510));

    // A large re-forward: pruned, held and new keys of device 1.
    let out = log.append(Epoch(2), &changes(1, 1..2_501)).unwrap();
    for (i, a) in out.iter().enumerate() {
        let origin_seq = i as u64 + 1;
        let expected = match origin_seq {
            ..=1_200 => (floor, false),
            1_201..=1_500 => (Seq(origin_seq), false),
            _ => (Seq(10 + origin_seq), true),
        };
        assert_eq!((a.seq, a.new), expected, "origin seq {origin_seq}");
    }
    assert_head_is_table(&mut log);
    let path = log.path().to_owned();
    let library = log.library();
    drop(log);
    let mut log = SyncLogStore::open(&path, library).unwrap();
    assert!(!log.append(Epoch(3), &[change(1, 1)]).unwrap()[0].new);
    assert_eq!(log.max_origin_seq(device(1)).unwrap(), Some(2_500));
}

/// Pruned origin keys are remembered exactly (as ranges), not as "everything up to the
/// highest": a change of the same device that was never pruned — because it was sequenced out
/// of order, after a divergence, and then truncated away — is sequenced when re-submitted.
#[test]
fn out_of_order_changes_are_not_mistaken_for_pruned_ones() {
    let mut log = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
    log.append(Epoch(1), &changes(1, 1..5)).unwrap(); // seqs 1..=4: d1 1..=4
    log.append(Epoch(1), &changes(1, 7..11)).unwrap(); // seqs 5..=8: d1 7..=10
    log.append(Epoch(2), &[change(1, 5), change(1, 6)]).unwrap(); // seqs 9, 10
    log.prune_below(Seq(9)).unwrap();
    assert_eq!(log.max_origin_seq(device(1)).unwrap(), Some(10));
    // The suffix with d1:5 and d1:6 is discarded and re-submitted.
    let removed = log.truncate_after(Seq(8)).unwrap();
    let resubmit: Vec<Change> = removed.into_iter().map(|e| e.change).collect();
    let out = log.append(Epoch(3), &resubmit).unwrap();
    assert_eq!(
        out.iter().map(|a| (a.seq.0, a.new)).collect::<Vec<_>>(),
        vec![(9, true), (10, true)]
    );
    // Those pruned stay known.
    assert!(!log.append(Epoch(3), &[change(1, 8)]).unwrap()[0].new);
    assert_head_is_table(&mut log);
}

/// Installs, through a second connection on the same file, a trigger that makes the given
/// statement fail.
fn inject(path: &Path, name: &str, trigger: &str) {
    sql(
        path,
        &format!(
            "CREATE TRIGGER {name} {trigger} BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ),
    );
}

fn heal(path: &Path, name: &str) {
    sql(path, &format!("DROP TRIGGER {name};"));
}

/// No in-memory state survives a write that failed midway (a failure injected in the second
/// insert chunk, on the fast and on the slow path; in a follower's append; in a prune; in a
/// truncate): the table is unchanged, the head equals the table, and the retry after the
/// failure is gone applies everything with the right seqs — never treating it as a duplicate.
#[test]
fn failed_writes_leave_no_state_and_the_retry_applies_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = file_log(&dir);
    let path = log.path().to_owned();
    log.append(Epoch(1), &changes(1, 1..11)).unwrap();
    let before = log.head();

    // Fast path (all new) and slow path (a known key after the first chunk).
    for with_known in [false, true] {
        let mut batch = changes(2, 1..2_501);
        if with_known {
            batch.insert(1_700, change(1, 4));
        }
        let start = log.head().seq.0;
        inject(
            &path,
            "fail_insert",
            &format!("BEFORE INSERT ON sync_log WHEN NEW.seq = {}", start + 1_600),
        );
        let err = log.append(Epoch(1), &batch).unwrap_err();
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(log.head().seq.0, start, "nothing was written");
        assert_head_is_table(&mut log);
        heal(&path, "fail_insert");
        let out = log.append(Epoch(1), &batch).unwrap();
        let new: Vec<u64> = out.iter().filter(|a| a.new).map(|a| a.seq.0).collect();
        assert_eq!(new, (start + 1..start + 2_501).collect::<Vec<_>>(), "known {with_known}");
        assert_head_is_table(&mut log);
        log.truncate_after(before.seq).unwrap();
    }

    // A follower's append.
    let (_leader, entries) = leader_with(3_000);
    let dir2 = tempfile::tempdir().unwrap();
    let mut follower = file_log(&dir2);
    let fpath = follower.path().to_owned();
    follower.append_sequenced(&entries[..100]).unwrap();
    inject(&fpath, "fail_insert", "BEFORE INSERT ON sync_log WHEN NEW.seq = 2500");
    assert!(follower.append_sequenced(&entries).is_err());
    assert_eq!(follower.head(), entries[99].position());
    assert_head_is_table(&mut follower);
    heal(&fpath, "fail_insert");
    assert_eq!(follower.append_sequenced(&entries).unwrap(), entries[2_999].position());
    assert_head_is_table(&mut follower);

    // A prune and a truncate.
    inject(&fpath, "fail_delete", "BEFORE DELETE ON sync_log WHEN OLD.seq = 1500");
    assert!(follower.prune_below(Seq(2_001)).is_err());
    assert_eq!(follower.floor().seq, Seq(0));
    assert_eq!(follower.max_origin_seq(device(1)).unwrap(), Some(3_000));
    assert!(follower.truncate_after(Seq(1_000)).is_err());
    assert_eq!(follower.head(), entries[2_999].position());
    assert_head_is_table(&mut follower);
    heal(&fpath, "fail_delete");
    follower.prune_below(Seq(2_001)).unwrap();
    assert_eq!(follower.floor(), entries[1_999].position());
    assert_eq!(follower.truncate_after(Seq(2_500)).unwrap().len(), 500);
    assert_head_is_table(&mut follower);
    // Pruned keys are known, truncated ones can be sequenced again.
    let out = follower.append(Epoch(2), &changes(1, 1_999..2_502)).unwrap();
    assert_eq!(out[0], sync_log::Appended { seq: Seq(2_000), new: false });
    assert_eq!(out.last().unwrap(), &sync_log::Appended { seq: Seq(2_501), new: true });
}

/// Every valid clock reading fits SQLite's signed 64-bit column with its order: `Hlc::new`
/// clamps to `Hlc::MAX` (2^63 - 1), and the log refuses to sequence a change whose hand-made
/// `Hlc` is above it, while `Hlc::MAX` itself round-trips.
#[test]
fn every_valid_hlc_fits_a_signed_column() {
    assert_eq!(Hlc::MAX_MILLIS, (1 << 47) - 1);
    assert_eq!(Hlc::MAX.0, i64::MAX as u64);
    assert_eq!(Hlc::new(u64::MAX, u16::MAX), Hlc::MAX);
    assert!(Hlc::new(u64::MAX, 0).is_valid());
    assert!(!Hlc(1 << 63).is_valid() && !Hlc(u64::MAX).is_valid());
    let mut log = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
    let mut bad = change(1, 1);
    bad.hlc = Hlc(1 << 63);
    let err = log.append(Epoch(1), &[bad]).unwrap_err();
    assert!(matches!(err, sync_log::Error::InvalidArgument(_)), "{err}");
    assert_eq!(log.head().seq, Seq(0));
    let mut max = change(1, 1);
    max.hlc = Hlc::MAX;
    log.append(Epoch(1), &[max.clone()]).unwrap();
    assert_eq!(all_entries(&mut log)[0].change, max);
}

/// Stamps compare by recency first: a later hlc beats any number of earlier edits; equal
/// clocks are decided by the device, and `version` only breaks the last tie.
#[test]
fn stamps_order_by_recency_then_device_then_version() {
    use sync_log::Stamp;
    let s = |version, millis, dev| Stamp { version, hlc: Hlc::new(millis, 0), device: device(dev) };
    assert!(s(1, 20, 1) > s(5, 10, 2), "Tuesday's rename beats Monday's five edits");
    assert!(s(1, 10, 2) > s(9, 10, 1), "equal clocks: the larger device wins");
    assert!(s(2, 10, 1) > s(1, 10, 1), "version is the last tie-break");
    assert_eq!(s(2, 10, 1).cmp(&s(2, 10, 1)), std::cmp::Ordering::Equal);
    let mut all = vec![s(5, 10, 2), s(1, 20, 1), s(9, 10, 1), s(1, 10, 2)];
    all.sort();
    assert_eq!(all, vec![s(9, 10, 1), s(1, 10, 2), s(5, 10, 2), s(1, 20, 1)]);
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<(u128, u64)>),
    Prune(u64),
    Truncate(u64),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => prop::collection::vec((1u128..4, 1u64..40), 0..40).prop_map(Op::Append),
        1 => (0u64..=100).prop_map(Op::Prune),
        1 => (0u64..=100).prop_map(Op::Truncate),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever mix of appends (with re-submissions and in-batch repeats), prunes and
    /// truncations runs, every origin key is sequenced at most once while it is in the log or
    /// pruned, every append reports exactly what a model of the log predicts (`new` for unknown
    /// keys at the next seq, the stored seq for held ones, the floor for pruned ones), and the
    /// head always equals the table.
    #[test]
    fn any_mix_of_writes_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        use std::collections::HashMap;
        let mut log = SyncLogStore::in_memory(LibraryId::new_v7()).unwrap();
        // origin key -> Some(seq) while held, None once pruned.
        let mut model: HashMap<OriginKey, Option<Seq>> = HashMap::new();
        for op in ops {
            let (floor, head) = (log.floor().seq.0, log.head().seq.0);
            match op {
                Op::Append(keys) => {
                    let batch: Vec<Change> = keys.iter().map(|&(d, s)| change(d, s)).collect();
                    let out = log.append(Epoch(1), &batch).unwrap();
                    let mut next = head;
                    for (c, a) in batch.iter().zip(&out) {
                        let expected = match model.get(&c.origin) {
                            Some(Some(seq)) => (*seq, false),
                            Some(None) => (Seq(floor), false),
                            None => {
                                next += 1;
                                model.insert(c.origin, Some(Seq(next)));
                                (Seq(next), true)
                            }
                        };
                        proptest::prop_assert_eq!((a.seq, a.new), expected);
                    }
                }
                Op::Prune(pct) => {
                    let to = floor + (head - floor) * pct / 100;
                    log.prune_below(Seq(to + 1)).unwrap();
                    for v in model.values_mut() {
                        if v.is_some_and(|s| s.0 <= to) {
                            *v = None;
                        }
                    }
                }
                Op::Truncate(pct) => {
                    let to = floor + (head - floor) * pct / 100;
                    log.truncate_after(Seq(to)).unwrap();
                    model.retain(|_, v| v.is_none_or(|s| s.0 <= to));
                }
            }
            let entries = all_entries(&mut log);
            let held: HashMap<OriginKey, Option<Seq>> =
                entries.iter().map(|e| (e.change.origin, Some(e.seq))).collect();
            proptest::prop_assert_eq!(held.len(), entries.len(), "a key is held twice");
            proptest::prop_assert_eq!(
                held,
                model.iter().filter(|(_, v)| v.is_some()).map(|(k, v)| (*k, *v)).collect()
            );
            proptest::prop_assert_eq!(log.head(), entries.last().map_or(log.floor(), LogEntry::position));
        }
        log.verify().unwrap();
    }
}
