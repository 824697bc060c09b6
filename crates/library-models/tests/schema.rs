//! The library database schema: migrations, the newer-schema refusal, the LWW apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::Connection;
use diesel::connection::SimpleConnection;
use library_models::{Error, Id, LibraryModel, SCHEMA_VERSION, Tag, content_hash, open_library};
use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey, Stamp};
use syncable::{Applied, Syncable};

/// Migrations run from an empty file to the latest version, and reopening is a no-op.
#[test]
fn migrations_run_from_empty_to_latest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let mut conn = open_library(&path).unwrap();
    assert_eq!(library_models::schema_version(&mut conn).unwrap(), Some(SCHEMA_VERSION));
    assert_eq!(Tag::page(&mut conn, None, 10).unwrap(), Vec::new());
    drop(conn);
    let mut again = open_library(&path).unwrap();
    assert_eq!(library_models::schema_version(&mut again).unwrap(), Some(SCHEMA_VERSION));
}

/// A database written by a newer build is refused with an error naming both versions.
#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let mut conn = open_library(&path).unwrap();
    conn.batch_execute("UPDATE library_meta SET value = '99' WHERE key = 'schema_version'")
        .unwrap();
    drop(conn);
    match open_library(&path) {
        Err(e @ Error::NewerSchema { file: 99, supported, .. }) => {
            assert_eq!(supported, SCHEMA_VERSION);
            assert!(e.to_string().contains("99"));
        }
        Err(other) => panic!("expected NewerSchema, got {other:?}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

fn change(tag: &Tag, version: u64, hlc: u64, device: u128, kind: ChangeType) -> Change {
    let d = DeviceId(uuid::Uuid::from_u128(device));
    let mut t = tag.clone();
    t.set_meta(Stamp { version, hlc: Hlc(hlc), device: d }, kind == ChangeType::Delete);
    Change {
        origin: OriginKey { device: d, seq: version },
        hlc: Hlc(hlc),
        model: "tag".into(),
        record: tag.uuid.0,
        change: kind,
        version,
        payload: t.encode().unwrap(),
    }
}

/// Recency wins: the larger `(hlc, device)` wins whatever the order and whatever the edit
/// counts (five offline edits made earlier lose to one later rename); a tie of `hlc` goes to
/// the larger device; equal stamps are duplicates; a delete is a tombstone with its own stamp
/// — a change stamped before it never revives the record, an edit stamped after it does;
/// batch and single apply agree.
#[test]
fn lww_apply_is_order_independent() {
    let tag = Tag::with_id(Id::new_v7(), "a".into(), None);
    let renamed = |name: &str| Tag { name: name.into(), ..tag.clone() };
    let a = change(&tag, 1, 10, 1, ChangeType::Insert);
    let many_edits_earlier = change(&renamed("monday"), 5, 5, 2, ChangeType::Update);
    let later_rename = change(&renamed("tuesday"), 2, 20, 2, ChangeType::Update);
    let del = change(&tag, 2, 20, 3, ChangeType::Delete);
    let stale = change(&renamed("stale"), 9, 15, 4, ChangeType::Update);
    let revive = change(&renamed("after delete"), 3, 30, 1, ChangeType::Update);

    let mut one = open_library(":memory:".as_ref()).unwrap();
    assert_eq!(Tag::apply(&mut one, &a).unwrap(), Applied::Won);
    assert_eq!(Tag::apply(&mut one, &many_edits_earlier).unwrap(), Applied::Lost);
    assert_eq!(Tag::apply(&mut one, &later_rename).unwrap(), Applied::Won);
    assert_eq!(Tag::apply(&mut one, &del).unwrap(), Applied::Won, "same hlc, larger device");
    assert_eq!(Tag::apply(&mut one, &later_rename).unwrap(), Applied::Lost);
    assert_eq!(Tag::apply(&mut one, &del).unwrap(), Applied::Duplicate);
    assert_eq!(Tag::apply(&mut one, &stale).unwrap(), Applied::Lost, "older than the tombstone");
    let stored = Tag::load(&mut one, tag.uuid).unwrap().unwrap();
    assert!(stored.tombstone);
    assert_eq!(stored.device_id, Id(uuid::Uuid::from_u128(3)));
    let tombstoned = content_hash(&mut one).unwrap();

    let mut two = open_library(":memory:".as_ref()).unwrap();
    Tag::apply_batch(&mut two, &[&stale, &del, &many_edits_earlier, &later_rename, &a, &del])
        .unwrap();
    assert_eq!(content_hash(&mut two).unwrap(), tombstoned);

    assert_eq!(Tag::apply(&mut one, &revive).unwrap(), Applied::Won, "edited after the delete");
    let stored = Tag::load(&mut one, tag.uuid).unwrap().unwrap();
    assert!(!stored.tombstone);
    assert_eq!(stored.name, "after delete");
    Tag::apply_batch(&mut two, &[&revive, &del]).unwrap();
    assert_eq!(content_hash(&mut two).unwrap(), content_hash(&mut one).unwrap());
}

/// A sync log (or any other SQLite database) opened as a library database at a swapped path
/// is refused with `NotALibrary` and left untouched: no library table is migrated into it.
#[test]
fn a_sync_log_is_not_opened_as_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    {
        // What a sync log holds (its tables and diesel's bookkeeping of its migrations).
        let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        conn.batch_execute(
            "CREATE TABLE __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, \
               run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
             INSERT INTO __diesel_schema_migrations (version) VALUES ('20261125000001'); \
             CREATE TABLE sync_log (seq INTEGER PRIMARY KEY NOT NULL, payload BLOB NOT NULL); \
             CREATE TABLE sync_meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);",
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    match open_library(&path) {
        Err(Error::NotALibrary { path: p }) => assert_eq!(p, path),
        Err(other) => panic!("expected NotALibrary, got {other:?}"),
        Ok(_) => panic!("a sync log was opened as a library database"),
    }
    assert!(std::fs::read(&path).unwrap() == before, "the file was modified");
}

/// A per-field change whose field value does not decode (a hostile or broken peer) is
/// rejected whole — the record keeps every field as it was, including fields the change set
/// before the broken one — while the other changes of the batch apply.
#[test]
fn a_per_field_change_with_an_unreadable_field_is_rejected_whole() {
    use library_models::{FieldPatch, PatchField};
    let tag = Tag::with_id(Id::new_v7(), "a".into(), None);
    let good = change(&tag, 1, 10, 1, ChangeType::Insert);
    let bad_patch = FieldPatch {
        record: tag.uuid,
        fields: vec![
            PatchField { index: 0, value: sync_log::codec::encode(&"renamed".to_owned()).unwrap() },
            PatchField { index: 1, value: vec![0xff, 0xff, 0xff] },
        ],
        tombstone: Some(false),
    };
    let bad = Change {
        payload: sync_log::codec::encode(&bad_patch).unwrap(),
        hlc: Hlc(20),
        ..good.clone()
    };
    let mut conn = open_library(":memory:".as_ref()).unwrap();
    let out = Tag::apply_batch(&mut conn, &[&good, &bad]).unwrap();
    assert_eq!((out.written, out.rejected.len()), (1, 1));
    assert_eq!(out.rejected[0].0, 1);
    let stored = Tag::load(&mut conn, tag.uuid).unwrap().unwrap();
    assert_eq!(stored.name, "a", "nothing of the rejected change was written");
}
