//! The leadership record persisted in this device's row: it meets the `leadership` crate's
//! store contract, survives reopening the file, and never goes backwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use leadership::{Epoch, LeadershipStore, PersistedLeadership, store_suite};
use library_models as _;
use library_models::{Device, Id};
use sync_log::DeviceId;
use txn_manager::{Config, DeviceLeadershipStore, Library, Op};

fn library_with_device_row(path: &std::path::Path, device: DeviceId) -> Library {
    let registry = syncable::Registry::from_inventory().unwrap();
    let mut log = sync_log::SyncLogStore::in_memory(sync_log::LibraryId::NIL).unwrap();
    let mut lib = Library::open(path, &mut log, device, registry, Config::default()).unwrap();
    lib.commit(vec![Op::put(Device::with_id(
        Id(device.0),
        "laptop".into(),
        "linux".into(),
        Vec::new(),
    ))])
    .unwrap();
    lib
}

/// `DeviceLeadershipStore` passes `leadership::store_suite`, and what it saved is loaded again
/// by a store opened on the same file later (a restart).
#[test]
fn device_row_store_meets_the_contract_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let device = DeviceId::new_v7();
    let _lib = library_with_device_row(&path, device);
    let store = DeviceLeadershipStore::open(&path, device).unwrap();
    store_suite(&store).unwrap();
    let saved = store.load().unwrap();
    drop(store);
    let reopened = DeviceLeadershipStore::open(&path, device).unwrap();
    assert_eq!(reopened.load().unwrap(), saved);
}

/// A save that would lower the saved epoch is refused and keeps the old record: a device can
/// never be made to reuse an epoch through its store.
#[test]
fn saved_epoch_never_goes_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let device = DeviceId::new_v7();
    let _lib = library_with_device_row(&path, device);
    let store = DeviceLeadershipStore::open(&path, device).unwrap();
    let high = PersistedLeadership { max_epoch: Epoch(9), last_leader: None };
    store.save(&high).unwrap();
    let low = PersistedLeadership { max_epoch: Epoch(3), last_leader: None };
    assert!(store.save(&low).is_err());
    assert_eq!(store.load().unwrap(), Some(high));
}

/// Before the device row exists there is nothing to load, and a save is an error, not a
/// silent no-op (the machine must not believe an epoch is saved when it is not).
#[test]
fn save_without_device_row_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let device = DeviceId::new_v7();
    let registry = syncable::Registry::from_inventory().unwrap();
    let mut log = sync_log::SyncLogStore::in_memory(sync_log::LibraryId::NIL).unwrap();
    let _lib = Library::open(&path, &mut log, device, registry, Config::default()).unwrap();
    let store = DeviceLeadershipStore::open(&path, device).unwrap();
    assert_eq!(store.load().unwrap(), None);
    let err = store.save(&PersistedLeadership::default()).unwrap_err();
    assert!(err.to_string().contains("device row"), "{err}");
}
