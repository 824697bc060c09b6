//! The out-of-tree model end to end: its table made by its own migration, committed on one
//! library, applied on another (equal content hashes), kept — not lost, not blocking — on a
//! library whose database lacks the table, and applied there once the table exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use album_example::Album;
use diesel::Connection;
use diesel::connection::SimpleConnection;
use library_models::{Encoded, Id, Tag};
use sync_log::{DeviceId, Epoch, LibraryId, Seq, SyncLogStore};
use txn_manager::{Config, Library, Op};

const LIBRARY: LibraryId = LibraryId(uuid::Uuid::from_u128(0xA1B));

fn open(path: &Path, log: &mut SyncLogStore, device: DeviceId) -> Library {
    let registry = syncable::Registry::from_inventory().unwrap();
    registry.require(["album"]).unwrap();
    Library::open(path, log, device, registry, Config::default()).unwrap()
}

fn sql(path: &Path, statements: &str) {
    let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute(statements).unwrap();
}

/// An album and a tag committed on A (the leader) reach B with equal content; on C, whose
/// database lacks the album table, the tag is applied and the album entry kept with a clear
/// reason — and applied once the table exists.
#[test]
fn an_out_of_tree_model_syncs_and_is_kept_where_its_table_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut a_log = SyncLogStore::open_or_create(&dir.path().join("a-sync.db"), LIBRARY).unwrap();
    let mut a = open(&dir.path().join("a.db"), &mut a_log, DeviceId::new_v7());
    let photos = Id::new_v7();
    let mut album = Album::new("Holidays".into(), Encoded(vec![photos]));
    a.commit(vec![Op::put(album.clone()), Op::put(Tag::new("summer".into(), None))]).unwrap();
    album.name = "Holidays 2026".into();
    a.commit(vec![Op::put(album.clone())]).unwrap();
    a.sequence(&mut a_log, Epoch(1)).unwrap();
    let entries = a_log.read_after(Seq(0), 100).unwrap();
    assert_eq!(entries.len(), 3);

    let mut b_log = SyncLogStore::open_or_create(&dir.path().join("b-sync.db"), LIBRARY).unwrap();
    let mut b = open(&dir.path().join("b.db"), &mut b_log, DeviceId::new_v7());
    b.receive(&mut b_log, &entries).unwrap();
    assert_eq!(b.content_hash().unwrap(), a.content_hash().unwrap());

    // C: the model is registered but the database has no album table.
    let c_path = dir.path().join("c.db");
    let mut c_log = SyncLogStore::open_or_create(&dir.path().join("c-sync.db"), LIBRARY).unwrap();
    let c_device = DeviceId::new_v7();
    drop(open(&c_path, &mut c_log, c_device));
    sql(&c_path, "DROP TABLE album;");
    let mut c = open(&c_path, &mut c_log, c_device);
    let report = c.receive(&mut c_log, &entries).unwrap();
    assert_eq!((report.kept, report.written), (2, 1), "the album kept, the tag applied");
    assert_eq!(c.applied_seq(), Seq(3), "nothing blocked");
    let kept = c.kept().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].model.as_str(), kept[0].entries), ("album", 2));
    assert!(kept[0].reason.contains("table missing"), "{}", kept[0].reason);
    drop(c);

    // A build whose migration runs: the kept entries are applied at open.
    sql(&c_path, "DELETE FROM library_meta WHERE key = 'schema_version:album-example';");
    let mut c = open(&c_path, &mut c_log, c_device);
    assert!(c.kept().unwrap().is_empty());
    assert_eq!(c.content_hash().unwrap(), a.content_hash().unwrap());
}

/// The album merges per field: a rename on one device and a new entry list on another,
/// made concurrently, both survive — in either order of arrival.
#[test]
fn concurrent_edits_of_two_album_fields_both_survive() {
    let mut log = SyncLogStore::in_memory(LIBRARY).unwrap();
    let mut origin = open(":memory:".as_ref(), &mut log, DeviceId::new_v7());
    let album = Album::new("Trip".into(), Encoded(vec![]));
    origin.commit(vec![Op::put(album.clone())]).unwrap();
    origin.sequence(&mut log, Epoch(1)).unwrap();
    let created = log.read_after(Seq(0), 10).unwrap();

    let edit = |f: &dyn Fn(&mut Album)| {
        let mut l = SyncLogStore::in_memory(LIBRARY).unwrap();
        let mut lib = open(":memory:".as_ref(), &mut l, DeviceId::new_v7());
        lib.receive(&mut l, &created).unwrap();
        let mut a: Album = lib.load(album.uuid).unwrap().unwrap();
        f(&mut a);
        lib.commit(vec![Op::put(a)]).unwrap().remove(0)
    };
    let renamed = edit(&|a| a.name = "Road trip".into());
    let listed = edit(&|a| a.entries = Encoded(vec![Id::new_v7(), Id::new_v7()]));

    let mut hashes = Vec::new();
    for order in [[&renamed, &listed], [&listed, &renamed]] {
        let mut l = SyncLogStore::in_memory(LIBRARY).unwrap();
        let mut lib = open(":memory:".as_ref(), &mut l, DeviceId::new_v7());
        lib.receive(&mut l, &created).unwrap();
        let mut leader = SyncLogStore::in_memory(LIBRARY).unwrap();
        leader.append_sequenced(&created).unwrap();
        leader.append(Epoch(1), &[order[0].clone(), order[1].clone()]).unwrap();
        lib.receive(&mut l, &leader.read_after(Seq(1), 10).unwrap()).unwrap();
        let a: Album = lib.load(album.uuid).unwrap().unwrap();
        assert_eq!(a.name, "Road trip");
        assert_eq!(a.entries.0.len(), 2);
        hashes.push(lib.content_hash().unwrap());
    }
    assert_eq!(hashes[0], hashes[1]);
}
