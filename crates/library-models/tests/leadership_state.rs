//! The local leadership column of the device row: stored and read back, durable, and never
//! part of what syncs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diesel::SqliteConnection;
use library_models::{
    Device, Error, Id, LibraryModel, content_hash, leadership_state, open_library,
    set_leadership_state,
};
use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey, Stamp};
use syncable::Syncable;

const STATE: &[u8] = b"leadership-state-marker:epoch=7";

fn apply_device(conn: &mut SqliteConnection, device: &Device, version: u64) -> Change {
    let d = DeviceId(device.uuid.0);
    let mut record = device.clone();
    record.set_meta(Stamp { version, hlc: Hlc::new(version, 0), device: d }, false);
    let change = Change {
        origin: OriginKey { device: d, seq: version },
        hlc: Hlc::new(version, 0),
        model: "device".into(),
        record: device.uuid.0,
        change: if version == 1 { ChangeType::Insert } else { ChangeType::Update },
        version,
        payload: record.encode().unwrap(),
    };
    Device::apply(conn, &change).unwrap();
    change
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Set, read back, overwritten, cleared; an unknown device is a typed error, not a silent
/// no-op; the value survives closing and reopening the file.
#[test]
fn leadership_state_round_trips_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let mut conn = open_library(&path).unwrap();
    let me = Device::with_id(Id::new_v7(), "laptop".into(), "linux".into(), Vec::new());
    apply_device(&mut conn, &me, 1);

    assert_eq!(leadership_state(&mut conn, me.uuid).unwrap(), None);
    set_leadership_state(&mut conn, me.uuid, Some(b"first")).unwrap();
    assert_eq!(leadership_state(&mut conn, me.uuid).unwrap().as_deref(), Some(&b"first"[..]));
    set_leadership_state(&mut conn, me.uuid, None).unwrap();
    assert_eq!(leadership_state(&mut conn, me.uuid).unwrap(), None);
    set_leadership_state(&mut conn, me.uuid, Some(STATE)).unwrap();

    let stranger = Id::new_v7();
    assert!(matches!(
        set_leadership_state(&mut conn, stranger, Some(b"x")),
        Err(Error::NoDeviceRow(id)) if id == stranger
    ));
    assert_eq!(leadership_state(&mut conn, stranger).unwrap(), None);

    drop(conn);
    let mut reopened = open_library(&path).unwrap();
    assert_eq!(leadership_state(&mut reopened, me.uuid).unwrap().as_deref(), Some(STATE));
}

/// The column is local: setting it leaves the content hash unchanged, the device record's
/// payload does not carry it, and applying a newer version of the device row keeps it.
#[test]
fn leadership_state_is_not_synced_state() {
    let mut conn = open_library(":memory:".as_ref()).unwrap();
    let me = Device::with_id(Id::new_v7(), "laptop".into(), "linux".into(), Vec::new());
    apply_device(&mut conn, &me, 1);
    let before = content_hash(&mut conn).unwrap();
    set_leadership_state(&mut conn, me.uuid, Some(STATE)).unwrap();
    assert_eq!(content_hash(&mut conn).unwrap(), before, "not part of the content hash");

    let stored = Device::load(&mut conn, me.uuid).unwrap().unwrap();
    assert!(!contains(&stored.encode().unwrap(), STATE), "not in the record's payload");

    let mut renamed = me.clone();
    renamed.name = "laptop 2".into();
    let change = apply_device(&mut conn, &renamed, 2);
    assert!(!contains(&change.payload, STATE));
    assert_eq!(leadership_state(&mut conn, me.uuid).unwrap().as_deref(), Some(STATE));
    assert_eq!(Device::load(&mut conn, me.uuid).unwrap().unwrap().name, "laptop 2");
}
