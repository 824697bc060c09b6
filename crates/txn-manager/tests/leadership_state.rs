//! The local leadership column of the device row through the write path: never in a payload,
//! never in the content hash, never overwritten by local writes or by apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use library_models as _;
use library_models::{Device, Id, LibraryModel, leadership_state, set_leadership_state};
use sync_log::DeviceId;
use txn_manager::Op;

const STATE: &[u8] = b"leadership-state-marker:epoch=3";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Setting the leadership state changes no content hash and writes no outbox row; a later
/// local update of the device row keeps the state and its outbox payload does not carry it;
/// the device's changes applied on another device bring no state along, and applying a newer
/// version of a row whose state is set keeps that state.
#[test]
fn leadership_state_stays_local_through_the_write_path() {
    let device = DeviceId::new_v7();
    let me = Id(device.0);
    let (mut lib, _) = common::memory_library(device, 1_000);
    lib.commit(vec![Op::put(Device::with_id(me, "laptop".into(), "linux".into(), Vec::new()))])
        .unwrap();
    let hash = lib.content_hash().unwrap();
    let outbox = lib.outbox(10).unwrap().len();

    set_leadership_state(lib.conn(), me, Some(STATE)).unwrap();
    assert_eq!(lib.content_hash().unwrap(), hash, "not in the content hash");
    assert_eq!(lib.outbox(10).unwrap().len(), outbox, "not a change");

    let mut renamed = Device::load(lib.conn(), me).unwrap().unwrap();
    renamed.name = "laptop 2".into();
    lib.commit(vec![Op::put(renamed)]).unwrap();
    assert_eq!(leadership_state(lib.conn(), me).unwrap().as_deref(), Some(STATE));
    let changes = lib.outbox(10).unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| !contains(&c.payload, STATE)), "not in any payload");

    // Another device that knows the first version and has its own state for that row.
    let entries = common::sequence(&changes);
    let (mut other, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    other.apply_entries(&entries[..1]).unwrap();
    assert_eq!(leadership_state(other.conn(), me).unwrap(), None, "nothing travelled");
    set_leadership_state(other.conn(), me, Some(b"other")).unwrap();
    other.apply_entries(&entries).unwrap();
    assert_eq!(Device::load(other.conn(), me).unwrap().unwrap().name, "laptop 2");
    assert_eq!(leadership_state(other.conn(), me).unwrap().as_deref(), Some(&b"other"[..]));
    assert_eq!(other.content_hash().unwrap(), lib.content_hash().unwrap());
}

/// The members are the device rows that are not tombstoned, with their endpoint ids; a
/// removed (tombstoned) device is no member.
#[test]
fn members_are_the_live_device_rows() {
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let (a, b) = (Id::new_v7(), Id::new_v7());
    lib.commit(vec![
        Op::put(Device::with_id(a, "laptop".into(), "linux".into(), vec![1; 32])),
        Op::put(Device::with_id(b, "phone".into(), "ios".into(), vec![2; 32])),
    ])
    .unwrap();
    let ids: Vec<Id> = lib.members().unwrap().iter().map(|d| d.uuid).collect();
    assert_eq!(ids.len(), 2);
    lib.commit(vec![Op::delete::<Device>(b)]).unwrap();
    let members = lib.members().unwrap();
    assert_eq!(members.iter().map(|d| d.uuid).collect::<Vec<_>>(), vec![a]);
    assert_eq!(members[0].endpoint, vec![1; 32]);
}

/// The roster lists every device row: a paired one with its 32-byte endpoint id, one whose
/// endpoint field is empty or of another length with none (never a truncated or padded key),
/// and a tombstoned one as removed — also after the removal arrived from another device.
#[test]
fn the_roster_lists_paired_unpaired_and_removed_devices() {
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let (a, b, c) = (Id::new_v7(), Id::new_v7(), Id::new_v7());
    lib.commit(vec![
        Op::put(Device::with_id(a, "laptop".into(), "linux".into(), vec![1; 32])),
        Op::put(Device::with_id(b, "phone".into(), "ios".into(), Vec::new())),
        Op::put(Device::with_id(c, "tablet".into(), "ios".into(), vec![3; 31])),
    ])
    .unwrap();
    lib.commit(vec![Op::delete::<Device>(a)]).unwrap();
    let roster = lib.roster().unwrap();
    let by_id = |id: Id| roster.iter().find(|r| r.device == DeviceId(id.0)).unwrap();
    assert_eq!(roster.len(), 3);
    assert!(by_id(a).removed);
    assert_eq!((by_id(b).endpoint, by_id(b).removed), (None, false));
    assert_eq!(by_id(c).endpoint, None, "a malformed key is no key");

    let entries = common::sequence(&lib.outbox(10).unwrap());
    let (mut other, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    other.apply_entries(&entries).unwrap();
    assert_eq!(other.roster().unwrap(), roster, "the same roster on a device that applied it");
    assert!(entries.iter().all(|e| e.change.model == txn_manager::DEVICE_MODEL));
}
