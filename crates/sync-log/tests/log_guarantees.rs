//! Guarantees of the sync log that a hostile caller of the public API would probe: large
//! batches with known origin keys, reused keys, foreign files, re-delivery around the pruned
//! floor, failed transactions, durability. Each test names the property it proves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use sync_log::{
    Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Seq, SyncLog,
    SyncLogStore,
};
use uuid::Uuid;

fn device(n: u128) -> DeviceId {
    DeviceId(Uuid::from_u128(n))
}

fn change(dev: u128, origin_seq: u64) -> Change {
    Change {
        origin: OriginKey { device: device(dev), seq: origin_seq },
        hlc: Hlc::new(1_700_000_000_000 + origin_seq, 0),
        model: "tag".into(),
        record: Uuid::from_u128(u128::from(origin_seq) << 8 | dev),
        change: ChangeType::Update,
        version: origin_seq,
        payload: vec![dev as u8; 32],
    }
}

fn changes(dev: u128, range: std::ops::Range<u64>) -> Vec<Change> {
    range.map(|s| change(dev, s)).collect()
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
