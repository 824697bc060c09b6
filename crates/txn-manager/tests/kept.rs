//! Entries of a model this build does not know are kept, and applied by a build that knows it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use library_models as _;
use library_models::{Tag, content_hash};
use sync_log::DeviceId;
use syncable::{ModelRegistration, Registry};
use txn_manager::{Config, Library, Op};

/// A build without the `tag` model keeps tag entries (not applied, not lost, later entries not
/// blocked); reopening the same file with a build that knows `tag` applies them, and the
/// result equals a library that knew `tag` all along.
#[test]
fn unknown_model_is_kept_then_applied_by_a_knowing_build() {
    let (mut writer, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let mut changes = writer.commit(vec![Op::put(Tag::new("x".into(), None))]).unwrap();
    changes.extend(
        writer.commit(vec![Op::put(library_models::Collection::new("c".into(), None))]).unwrap(),
    );
    let entries = common::sequence(&changes);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let device = DeviceId::new_v7();
    let full = Registry::from_inventory().unwrap();
    let without_tag = Registry::from_registrations(
        syncable::inventory::iter::<ModelRegistration>.into_iter().filter(|r| r.name != "tag"),
    )
    .unwrap();
    let mut log = sync_log::SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let mut old = Library::open(&path, &mut log, device, without_tag, Config::default()).unwrap();
    let report = old.receive(&mut log, &entries).unwrap();
    assert_eq!((report.kept, report.written), (1, 1));
    assert_eq!(old.applied_seq().0, 2, "the unknown entry does not block the applied seq");
    assert_eq!(old.pending_count().unwrap(), 1);
    drop(old);

    let mut new = Library::open(&path, &mut log, device, full, Config::default()).unwrap();
    assert_eq!(new.pending_count().unwrap(), 0);
    let (mut reference, _) = common::memory_library(DeviceId::new_v7(), 1);
    reference.apply_entries(&entries).unwrap();
    assert_eq!(content_hash(new.conn()).unwrap(), content_hash(reference.conn()).unwrap());
}
