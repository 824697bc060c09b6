//! Regressions found in the write-path review: LWW apply of one record twice in one batch,
//! version overflow on a local edit, and origin seqs reused by a fresh library database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use library_models as _;
use library_models::schema::tag;
use library_models::{LibraryModel, Tag};
use sync_log::{Change, ChangeType, DeviceId, Epoch, Hlc, OriginKey, Stamp};
use syncable::Syncable;
use txn_manager::{Error, Op};

/// A hand-made tag change from `device` with the given stamp (what a peer could send).
fn tag_change(
    record: &Tag,
    device: DeviceId,
    origin_seq: u64,
    version: u64,
    hlc: u64,
    kind: ChangeType,
) -> Change {
    let mut r = record.clone();
    r.set_meta(Stamp { version, hlc: Hlc(hlc), device }, kind == ChangeType::Delete);
    Change {
        origin: OriginKey { device, seq: origin_seq },
        hlc: Hlc(hlc),
        model: "tag".into(),
        record: r.uuid.0,
        change: kind,
        version,
        payload: r.encode().unwrap(),
    }
}

fn stored_tag(lib: &mut txn_manager::Library, record: &Tag) -> Tag {
    Tag::load(lib.conn(), record.uuid).unwrap().unwrap()
}

/// LWW in the batched multi-row upsert: when one record appears several times in ONE
/// `apply_entries` batch with different stamps (version, then hlc, then device deciding, and a
/// tombstone among them), the stored row is the change with the largest stamp whatever the
/// order in the batch, and equals applying the changes one batch each.
#[test]
fn same_record_twice_in_one_batch_keeps_the_largest_stamp_in_any_order() {
    let a = DeviceId(uuid::Uuid::from_u128(1));
    let b = DeviceId(uuid::Uuid::from_u128(2));
    let t = Tag::new("x".into(), None);
    let mut renamed = t.clone();
    renamed.name = "y".into();
    let cases: Vec<Vec<Change>> = vec![
        // Version decides (a higher hlc on the lower version must not win).
        vec![
            tag_change(&t, a, 1, 2, 10, ChangeType::Update),
            tag_change(&renamed, b, 1, 1, 99, ChangeType::Insert),
        ],
        // Hlc decides.
        vec![
            tag_change(&t, a, 1, 3, 50, ChangeType::Update),
            tag_change(&renamed, b, 1, 3, 51, ChangeType::Update),
        ],
        // Device decides (exact tie on version and hlc).
        vec![
            tag_change(&t, a, 1, 3, 50, ChangeType::Update),
            tag_change(&renamed, b, 1, 3, 50, ChangeType::Update),
        ],
        // A tombstone with the larger stamp is not revived by an older update, and an older
        // tombstone does not kill a newer update.
        vec![
            tag_change(&t, a, 1, 4, 10, ChangeType::Delete),
            tag_change(&renamed, b, 1, 3, 99, ChangeType::Update),
        ],
        vec![
            tag_change(&t, a, 1, 4, 10, ChangeType::Delete),
            tag_change(&renamed, b, 1, 5, 1, ChangeType::Update),
            tag_change(&t, a, 2, 6, 1, ChangeType::Delete),
            tag_change(&renamed, b, 2, 6, 0, ChangeType::Update),
        ],
    ];
    for changes in cases {
        let winner = changes.iter().max_by_key(|c| c.stamp()).unwrap().clone();
        let mut orders = vec![changes.clone(), changes.iter().rev().cloned().collect()];
        // Duplicates inside the batch too.
        orders.push(changes.iter().chain(changes.iter().rev()).cloned().collect());
        let mut hashes = Vec::new();
        for order in orders {
            let entries = common::sequence(&order);
            let (mut batched, _) = common::memory_library(DeviceId::new_v7(), 1);
            batched.apply_entries(&entries).unwrap();
            let row = stored_tag(&mut batched, &t);
            // Tags merge per field: the record carries the largest stamp and the largest
            // version of any change; every field holds the value of the largest stamp that set it.
            let max_version = changes.iter().map(|c| c.version).max().unwrap();
            assert_eq!(
                (row.stamp().hlc, row.stamp().device, row.stamp().version),
                (winner.hlc, winner.origin.device, max_version),
                "order {order:?}"
            );
            assert_eq!(row.tombstone, winner.change == ChangeType::Delete);
            let (mut one_by_one, _) = common::memory_library(DeviceId::new_v7(), 1);
            for e in &entries {
                one_by_one.apply_entries(std::slice::from_ref(e)).unwrap();
            }
            let h = batched.content_hash().unwrap();
            assert_eq!(h, one_by_one.content_hash().unwrap());
            hashes.push(h);
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    }
}

/// A peer may legally send a change at version `i64::MAX` (the largest the apply accepts).
/// A local edit or delete of that record cannot bump the version past it: the commit is
/// refused and nothing is written — instead of storing a wrapped, negative version that loses
/// to every later change here and is refused as invalid by every other device.
#[test]
fn local_write_on_top_of_the_largest_version_is_refused_not_wrapped() {
    let peer = DeviceId(uuid::Uuid::from_u128(7));
    let t = Tag::new("x".into(), None);
    let max = i64::MAX as u64;
    let change = tag_change(&t, peer, 1, max, Hlc::new(1_000, 0).0, ChangeType::Insert);
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    assert_eq!(lib.apply_entries(&common::sequence(&[change])).unwrap().written, 1);

    let mut edit = stored_tag(&mut lib, &t);
    edit.name = "mine".into();
    let put = lib.commit(vec![Op::put(edit)]);
    assert!(matches!(put, Err(Error::Invalid(_))), "{put:?}");
    let del = lib.commit(vec![Op::delete::<Tag>(t.uuid)]);
    assert!(matches!(del, Err(Error::Invalid(_))), "{del:?}");

    let row = stored_tag(&mut lib, &t);
    assert_eq!((row.version, row.name.as_str(), row.tombstone), (i64::MAX, "x", false));
    assert!(lib.outbox(10).unwrap().is_empty(), "nothing written, nothing to forward");
    use diesel::prelude::*;
    let n: i64 = tag::table.filter(tag::version.lt(0)).count().get_result(lib.conn()).unwrap();
    assert_eq!(n, 0);
}

/// Origin seqs are never reused. A device whose library database is new (lost, re-joined,
/// restored from an older backup) while the global log already holds its changes continues
/// its origin counter after the highest of its own origin seqs it applies from the log: a new
/// local change must not take an origin key the log already has — the leader would take it
/// for a duplicate (`new: false`), drop it, and its outbox row would never be removed.
#[test]
fn fresh_database_does_not_reuse_origin_seqs_already_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceId::new_v7();
    let mut log =
        sync_log::SyncLogStore::open_or_create(&dir.path().join("sync.db"), common::LIBRARY)
            .unwrap();
    {
        let (mut old, _) = common::memory_library(device, 1_000);
        old.commit(vec![Op::put(Tag::new("a".into(), None))]).unwrap();
        old.commit(vec![Op::put(Tag::new("b".into(), None))]).unwrap();
        old.sequence(&mut log, Epoch(1)).unwrap();
    }
    // The same device, a new library database: catch up from the log, then write.
    let (mut fresh, _) = common::memory_library(device, 2_000);
    fresh.catch_up(&mut log).unwrap();
    assert_eq!(fresh.origin_seq(), 2, "the counter continues after the log's origin seqs");
    let new = Tag::new("c".into(), None);
    let changes = fresh.commit(vec![Op::put(new.clone())]).unwrap();
    assert_eq!(changes[0].origin.seq, 3);
    let head = fresh.sequence(&mut log, Epoch(1)).unwrap();
    assert_eq!(head.0, 3, "the new change is sequenced, not taken for a duplicate");
    assert!(fresh.outbox(10).unwrap().is_empty(), "no orphan outbox row");

    // The counter is persisted with the apply: a reopened database keeps it.
    let path = dir.path().join("library.db");
    let registry = syncable::Registry::from_inventory().unwrap();
    let mut lib =
        txn_manager::Library::open(&path, &mut log, device, registry.clone(), Default::default())
            .unwrap();
    lib.catch_up(&mut log).unwrap();
    drop(lib);
    let lib =
        txn_manager::Library::open(&path, &mut log, device, registry, Default::default()).unwrap();
    assert_eq!(lib.origin_seq(), 3);
}
