//! The library database schema: migrations, the newer-schema refusal, the LWW apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

/// The larger `(version, hlc, device)` wins whatever the order; equal stamps are duplicates;
/// a delete is a tombstone that keeps its stamp; batch and single apply agree.
#[test]
fn lww_apply_is_order_independent() {
    let tag = Tag::with_id(Id::new_v7(), "a".into(), None);
    let mut renamed = tag.clone();
    renamed.name = "b".into();
    let a = change(&tag, 1, 10, 1, ChangeType::Insert);
    let b = change(&renamed, 2, 5, 2, ChangeType::Update);
    let del = change(&tag, 2, 5, 3, ChangeType::Delete);
    let mut one = open_library(":memory:".as_ref()).unwrap();
    let mut two = open_library(":memory:".as_ref()).unwrap();
    assert_eq!(Tag::apply(&mut one, &a).unwrap(), Applied::Won);
    assert_eq!(Tag::apply(&mut one, &b).unwrap(), Applied::Won);
    assert_eq!(Tag::apply(&mut one, &del).unwrap(), Applied::Won);
    assert_eq!(Tag::apply(&mut one, &b).unwrap(), Applied::Lost);
    assert_eq!(Tag::apply(&mut one, &del).unwrap(), Applied::Duplicate);
    Tag::apply_batch(&mut two, &[&del, &b, &a, &del]).unwrap();
    assert_eq!(content_hash(&mut one).unwrap(), content_hash(&mut two).unwrap());
    let stored = Tag::load(&mut one, tag.uuid).unwrap().unwrap();
    assert!(stored.tombstone);
    assert_eq!(stored.device_id, Id(uuid::Uuid::from_u128(3)));
}
