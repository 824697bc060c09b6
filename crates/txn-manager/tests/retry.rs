//! A transaction that fails midway (a full disk, a busy database: injected here with a trigger
//! that aborts) leaves no in-memory state behind, so the retry does everything and never takes
//! its own work for a duplicate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use diesel::Connection;
use diesel::connection::SimpleConnection;
use library_models as _;
use library_models::{Entry, Id, LibraryModel, Tag};
use sync_log::{DeviceId, Epoch, Seq, SyncLogStore};
use txn_manager::{BULK_TXN_ROWS, BulkDescription, Config, Library, Op};

/// Runs `sql` on a second connection to the library file (how a test reaches under the
/// library's own connection to inject a fault).
fn inject(path: &Path, sql: &str) {
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(sql).unwrap();
}

fn open(path: &Path, log: &mut SyncLogStore, device: DeviceId) -> Library {
    let registry = syncable::Registry::from_inventory().unwrap();
    Library::open(path, log, device, registry, Config::default()).unwrap()
}

/// An apply that fails at its last statement (the applied seq) after it deleted re-submission
/// rows and wrote model rows is rolled back whole; the retry applies every entry, removes every
/// re-submission row it covers, and the in-memory counts (applied seq, re-submissions waiting)
/// equal the tables.
#[test]
fn a_failed_apply_is_retried_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let device = DeviceId::new_v7();
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let mut lib = open(&path, &mut log, device);
    for i in 0..5 {
        lib.commit(vec![Op::put(Tag::new(format!("t{i}"), None))]).unwrap();
    }
    lib.sequence(&mut log, Epoch(1)).unwrap();
    // A divergence: everything after seq 0 goes to `resubmit`.
    lib.rewind(&mut log, Seq(0)).unwrap();
    assert_eq!(lib.resubmit_count(), 5);

    // The winner sequenced the same changes.
    let mut winner = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    winner.append(Epoch(2), &lib.resubmit(10).unwrap()).unwrap();
    let entries = winner.read_after(Seq(0), 10).unwrap();

    inject(
        &path,
        "CREATE TRIGGER injected BEFORE UPDATE OF applied_seq ON local_state \
         BEGIN SELECT RAISE(ABORT, 'injected: database or disk is full'); END;",
    );
    let err = lib.receive(&mut log, &entries).unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(lib.applied_seq(), Seq(0));
    assert_eq!(lib.resubmit_count(), 5, "the rolled-back deletes are not counted");

    inject(&path, "DROP TRIGGER injected;");
    let report = lib.receive(&mut log, &entries).unwrap();
    assert_eq!((report.written + report.unchanged, report.skipped), (5, 0));
    assert_eq!(lib.applied_seq(), Seq(5));
    assert_eq!(lib.resubmit_count(), 0);
    assert!(lib.resubmit(10).unwrap().is_empty());
    assert!(lib.outbox(10).unwrap().is_empty());
    drop(lib);
    let lib = open(&path, &mut log, device);
    assert_eq!((lib.applied_seq(), lib.resubmit_count()), (Seq(5), 0));
}

/// A commit that fails (its outbox row refused) consumes no origin key and no clock reading
/// that anyone sees: the retry commits under origin seq 1, and nothing of the failed attempt
/// is left in any table.
#[test]
fn a_failed_commit_consumes_no_origin_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let mut lib = open(&path, &mut log, DeviceId::new_v7());
    inject(
        &path,
        "CREATE TRIGGER injected BEFORE INSERT ON outbox \
         BEGIN SELECT RAISE(ABORT, 'injected: disk I/O error'); END;",
    );
    let tag = Tag::new("t".into(), None);
    assert!(lib.commit(vec![Op::put(tag.clone())]).is_err());
    assert_eq!(lib.origin_seq(), 0);
    assert!(Tag::load(lib.conn(), tag.uuid).unwrap().is_none(), "the model write rolled back");

    inject(&path, "DROP TRIGGER injected;");
    let changes = lib.commit(vec![Op::put(tag)]).unwrap();
    assert_eq!(changes[0].origin.seq, 1);
    assert_eq!(lib.outbox(10).unwrap(), changes);
}

/// A bulk write whose second transaction fails leaves the first transaction's rows with their
/// bulk entry (so other devices can learn of every row that exists here) and nothing of the
/// second; redoing the operation writes exactly the missing rows, and the bulk entries'
/// counts add up to every row.
#[test]
fn a_failed_bulk_transaction_leaves_no_row_without_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let mut lib = open(&path, &mut log, DeviceId::new_v7());
    let n = 2 * BULK_TXN_ROWS + 100;
    let location = Id::new_v7();
    let records: Vec<Entry> = (0..n)
        .map(|i| Entry::new(location, None, format!("f{i}"), 0, i as i64, 1, 1, None))
        .collect();
    let poisoned = BULK_TXN_ROWS + 7;
    inject(
        &path,
        &format!(
            "CREATE TRIGGER injected BEFORE INSERT ON entry WHEN NEW.name = 'f{poisoned}' \
             BEGIN SELECT RAISE(ABORT, 'injected: disk full'); END;"
        ),
    );
    assert!(lib.bulk_write(records.clone(), "index /").is_err());
    let rows = Entry::page(lib.conn(), None, i64::MAX).unwrap().len();
    let counted = |lib: &mut Library| -> u64 {
        lib.outbox(usize::MAX)
            .unwrap()
            .iter()
            .map(|c| sync_log::codec::decode::<BulkDescription>(&c.payload).unwrap().count)
            .sum()
    };
    assert_eq!(rows, BULK_TXN_ROWS, "the first transaction committed, the second did not");
    assert_eq!(counted(&mut lib), rows as u64, "every row is covered by a bulk entry");

    inject(&path, "DROP TRIGGER injected;");
    let redo = lib.bulk_write(records, "index /").unwrap();
    assert_eq!(redo.len(), 2);
    assert_eq!(Entry::page(lib.conn(), None, i64::MAX).unwrap().len(), n);
    assert_eq!(counted(&mut lib), n as u64);
}
