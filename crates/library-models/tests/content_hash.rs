//! The content hash is driven by the registry: every registered reference model's table is in
//! it, with no hand-written list, and nothing else is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::SqliteConnection;
use library_models::{
    Collection, Device, Entry, Id, LibraryModel, Location, REFERENCE_MODELS, Tag, UserMetadata,
    UserMetadataTag, content_hash, open_library,
};
use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey, Stamp};
use syncable::{ModelRegistration, Registry};

/// One write to a library database.
type Write<'a> = Box<dyn Fn(&mut SqliteConnection) + 'a>;

fn memory() -> SqliteConnection {
    open_library(":memory:".as_ref()).unwrap()
}

/// Applies `record` as a change of `version` from device 1 (a delete when `delete`).
fn apply<T: LibraryModel>(conn: &mut SqliteConnection, record: &T, version: u64, delete: bool) {
    let device = DeviceId(uuid::Uuid::from_u128(1));
    let stamp = Stamp { version, hlc: Hlc::new(1_000 + version, 0), device };
    let mut record = record.clone();
    record.set_meta(stamp, delete);
    let change = Change {
        origin: OriginKey { device, seq: version },
        hlc: stamp.hlc,
        model: T::MODEL.into(),
        record: record.uuid().0,
        change: if delete { ChangeType::Delete } else { ChangeType::Insert },
        version,
        payload: record.encode().unwrap(),
    };
    T::apply(conn, &change).unwrap();
}

/// One record of every reference model, applied to `conn` in the order given by `reverse`.
fn one_of_each(conn: &mut SqliteConnection, reverse: bool) {
    let ids: Vec<Id> = (1..=7).map(|i| Id(uuid::Uuid::from_u128(i))).collect();
    let mut steps: Vec<Write<'_>> = vec![
        Box::new(|c| {
            apply(c, &Device::with_id(ids[0], "d".into(), "os".into(), Vec::new()), 1, false)
        }),
        Box::new(|c| {
            apply(c, &Location::with_id(ids[1], ids[0], "l".into(), "/".into()), 1, false)
        }),
        Box::new(|c| apply(c, &Tag::with_id(ids[2], "t".into(), None), 1, false)),
        Box::new(|c| apply(c, &Collection::with_id(ids[3], "c".into(), None), 1, false)),
        Box::new(|c| apply(c, &UserMetadata::with_id(ids[4], None, None, true, false), 1, false)),
        Box::new(|c| apply(c, &UserMetadataTag::link(ids[4], ids[2]), 1, false)),
        Box::new(|c| {
            apply(c, &Entry::with_id(ids[6], ids[1], None, "e".into(), 0, 1, 2, 3, None), 1, false)
        }),
    ];
    if reverse {
        steps.reverse();
    }
    for step in steps {
        step(conn);
    }
}

/// `REFERENCE_MODELS` is exactly what this crate registers, so `require` checks the truth.
#[test]
fn reference_models_are_what_this_crate_registers() {
    let registry = Registry::from_inventory().unwrap();
    registry.require(REFERENCE_MODELS).unwrap();
    let ours: Vec<&str> = syncable::inventory::iter::<ModelRegistration>
        .into_iter()
        .filter(|r| r.registered_at.starts_with("library_models"))
        .map(|r| r.name)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(ours, REFERENCE_MODELS);
}

/// A row in any one reference table changes the hash (no table is left out), and so does
/// turning a row into a tombstone; the same rows written in another order hash the same.
#[test]
fn every_registered_table_is_hashed_order_independently() {
    let mut empty = memory();
    let blank = content_hash(&mut empty).unwrap();

    let id = Id(uuid::Uuid::from_u128(42));
    let mut seen = vec![blank];
    let per_model: Vec<Write<'_>> = vec![
        Box::new(|c| apply(c, &Device::with_id(id, "d".into(), "os".into(), Vec::new()), 1, false)),
        Box::new(|c| apply(c, &Location::with_id(id, id, "l".into(), "/".into()), 1, false)),
        Box::new(|c| apply(c, &Tag::with_id(id, "t".into(), None), 1, false)),
        Box::new(|c| apply(c, &Collection::with_id(id, "c".into(), None), 1, false)),
        Box::new(|c| apply(c, &UserMetadata::with_id(id, None, None, false, false), 1, false)),
        Box::new(|c| apply(c, &UserMetadataTag::link(id, id), 1, false)),
        Box::new(|c| {
            apply(c, &Entry::with_id(id, id, None, "e".into(), 0, 1, 2, 3, None), 1, false)
        }),
    ];
    assert_eq!(per_model.len(), REFERENCE_MODELS.len());
    for write in &per_model {
        let mut conn = memory();
        write(&mut conn);
        let h = content_hash(&mut conn).unwrap();
        assert!(!seen.contains(&h), "a table's row did not change the hash (or collided)");
        seen.push(h);
    }

    let mut forward = memory();
    let mut backward = memory();
    one_of_each(&mut forward, false);
    one_of_each(&mut backward, true);
    let h = content_hash(&mut forward).unwrap();
    assert_eq!(content_hash(&mut backward).unwrap(), h);

    let tag = Tag::with_id(Id(uuid::Uuid::from_u128(3)), "t".into(), None);
    apply(&mut forward, &tag, 2, true);
    assert_ne!(content_hash(&mut forward).unwrap(), h, "a tombstone is state");
}

/// What the hash covers is the registry, not a list: a registry without `entry` does not see
/// entry rows, and `content_hash` is the full registry's hash.
#[test]
fn the_registry_decides_what_is_hashed() {
    let mut conn = memory();
    let blank = content_hash(&mut conn).unwrap();
    let id = Id(uuid::Uuid::from_u128(9));
    apply(&mut conn, &Entry::with_id(id, id, Some(id), "e".into(), 1, 0, 0, 0, None), 1, false);
    let full = Registry::from_inventory().unwrap();
    let without_entry = Registry::from_registrations(
        syncable::inventory::iter::<ModelRegistration>.into_iter().filter(|r| r.name != "entry"),
    )
    .unwrap();
    assert_eq!(full.content_hash(&mut conn).unwrap(), content_hash(&mut conn).unwrap());
    assert_ne!(full.content_hash(&mut conn).unwrap(), blank);
    assert_eq!(without_entry.content_hash(&mut conn).unwrap(), blank);
}
