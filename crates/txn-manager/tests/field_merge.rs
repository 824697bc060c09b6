//! Merges per field: records people edit by hand (here `UserMetadata`) keep, per field, the
//! value of the latest change that set that field — so concurrent edits of different fields
//! all survive and, of one field, the later stamp wins — and the tombstone is a field with its
//! own stamp (every edit sets it alive, a delete sets it dead). Any order, with duplicates,
//! gives the same tables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use library_models as _;
use library_models::{FieldPatch, Id, LibraryModel, UserMetadata};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sync_log::{Change, DeviceId, Hlc};
use txn_manager::{Library, ManualClock, Op};

#[derive(Clone, Debug)]
enum Edit {
    Note(u8),
    Favorite(bool),
    Hidden(bool),
    Delete,
    /// Receive every change of another device made so far.
    Sync(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => any::<u8>().prop_map(Edit::Note),
        3 => any::<bool>().prop_map(Edit::Favorite),
        2 => any::<bool>().prop_map(Edit::Hidden),
        1 => Just(Edit::Delete),
        3 => (0usize..3).prop_map(Edit::Sync),
    ]
}

struct Device {
    lib: Library,
    clock: Arc<ManualClock>,
    /// How many of each device's changes this one has applied.
    seen: [usize; 3],
}

/// Runs the edits on three devices that all start from one shared record; returns every change
/// made (creation first).
fn simulate(record: Id, edits: &[(usize, Edit, u16)]) -> Vec<Change> {
    let mut devices: Vec<Device> = (0..3)
        .map(|i| {
            let (lib, clock) =
                common::memory_library(DeviceId(uuid::Uuid::from_u128(i as u128 + 1)), 1_000);
            Device { lib, clock, seen: [0; 3] }
        })
        .collect();
    let created = devices[0]
        .lib
        .commit(vec![Op::put(UserMetadata::with_id(record, None, None, false, false))])
        .unwrap();
    let mut made: [Vec<Change>; 3] = [created, Vec::new(), Vec::new()];
    let everything =
        |made: &[Vec<Change>; 3]| -> Vec<Change> { made.iter().flatten().cloned().collect() };
    // Everyone has the creation.
    for device in devices.iter_mut().skip(1) {
        device.lib.apply_entries(&common::sequence(&made[0])).unwrap();
        device.seen[0] = made[0].len();
    }
    devices[0].seen[0] = made[0].len();
    // Each device applies into its own sequence of entries: keep a per-device applied list.
    let mut applied: Vec<Vec<Change>> = vec![made[0].clone(); 3];
    for (device, edit, skew) in edits {
        let d = *device;
        // Clocks move forward, sometimes by a lot, sometimes not at all (counter ticks).
        devices[d].clock.advance(u64::from(*skew % 50));
        let current = UserMetadata::load(devices[d].lib.conn(), record).unwrap().unwrap();
        let op = match edit {
            Edit::Note(n) => {
                Some(Op::put(UserMetadata { note: Some(format!("note {n}")), ..current.clone() }))
            }
            Edit::Favorite(f) => Some(Op::put(UserMetadata { favorite: *f, ..current.clone() })),
            Edit::Hidden(h) => Some(Op::put(UserMetadata { hidden: *h, ..current.clone() })),
            Edit::Delete => Some(Op::delete::<UserMetadata>(record)),
            Edit::Sync(from) => {
                let from = *from;
                if from != d {
                    let fresh: Vec<Change> = made[from][devices[d].seen[from]..].to_vec();
                    devices[d].seen[from] = made[from].len();
                    applied[d].extend(fresh);
                    let entries = common::sequence(&applied[d]);
                    let at = devices[d].lib.applied_seq().0 as usize;
                    devices[d].lib.apply_entries(&entries[at..]).unwrap();
                }
                None
            }
        };
        let Some(op) = op else { continue };
        if current.tombstone && !matches!(edit, Edit::Delete) {
            continue; // a deleted record cannot be edited locally
        }
        let changes = devices[d].lib.commit(vec![op]).unwrap();
        // A device applies its own changes too (as the leader's log brings them back).
        applied[d].extend(changes.iter().cloned());
        let entries = common::sequence(&applied[d]);
        let at = devices[d].lib.applied_seq().0 as usize;
        devices[d].lib.apply_entries(&entries[at..]).unwrap();
        made[d].extend(changes);
        devices[d].seen[d] = made[d].len();
    }
    everything(&made)
}

/// The expected record: per field, the value of the change with the largest `(hlc, device)`
/// among those that set it (ties between equal stamps cannot happen: one device's readings
/// strictly increase).
fn oracle(changes: &[Change]) -> (Option<String>, bool, bool, bool) {
    type Best = Option<((Hlc, DeviceId), Vec<u8>)>;
    let mut best: [Best; 5] = Default::default();
    for c in changes {
        let patch: FieldPatch = sync_log::codec::decode(&c.payload).unwrap();
        let stamp = (c.hlc, c.origin.device);
        let mut set = |i: usize, v: Vec<u8>| {
            if best[i].as_ref().is_none_or(|(s, _)| stamp > *s) {
                best[i] = Some((stamp, v));
            }
        };
        for f in &patch.fields {
            set(usize::from(f.index), f.value.clone());
        }
        if let Some(t) = patch.tombstone {
            set(4, vec![u8::from(t)]);
        }
    }
    let value = |i: usize| best[i].as_ref().map(|(_, v)| v.clone()).unwrap();
    let note: Option<String> = sync_log::codec::decode(&value(1)).unwrap();
    let favorite: bool = sync_log::codec::decode(&value(2)).unwrap();
    let hidden: bool = sync_log::codec::decode(&value(3)).unwrap();
    (note, favorite, hidden, value(4) == [1])
}

fn replay(
    changes: &[Change],
    seed: u64,
    record: Id,
) -> (library_models::ContentHash, UserMetadata) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<Change> = changes.to_vec();
    let dups: Vec<Change> = order.iter().take(3).cloned().collect();
    order.extend(dups);
    order.shuffle(&mut rng);
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 5);
    lib.apply_entries(&common::sequence(&order)).unwrap();
    let row = UserMetadata::load(lib.conn(), record).unwrap().unwrap();
    (lib.content_hash().unwrap(), row)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Three devices edit the note, the favourite flag and the hidden flag of one record and
    /// delete it, concurrently (they sync only now and then); every field ends with the value
    /// of the latest change that set it (so concurrent edits of different fields both survive,
    /// and the later of two edits of one field wins), the record is deleted exactly when the
    /// latest change is a delete, and every order of the changes, with duplicates, gives the
    /// same tables.
    #[test]
    fn every_field_keeps_its_latest_write_in_any_order(
        edits in prop::collection::vec((0usize..3, edit(), any::<u16>()), 1..30),
        seeds in prop::array::uniform3(any::<u64>()),
    ) {
        let record = Id(uuid::Uuid::from_u128(0xFEED));
        let changes = simulate(record, &edits);
        let (note, favorite, hidden, deleted) = oracle(&changes);
        let mut hashes = Vec::new();
        for seed in seeds {
            let (hash, row) = replay(&changes, seed, record);
            prop_assert_eq!(&row.note, &note);
            prop_assert_eq!(row.favorite, favorite);
            prop_assert_eq!(row.hidden, hidden);
            prop_assert_eq!(row.tombstone, deleted);
            hashes.push(hash);
        }
        prop_assert!(hashes.windows(2).all(|w| w[0] == w[1]));
    }
}

/// The example from the design card: "favourite on the phone" and "a note on the laptop",
/// made concurrently on the same record, both survive on both devices.
#[test]
fn favourite_on_the_phone_and_a_note_on_the_laptop_both_survive() {
    let record = Id::new_v7();
    let (mut phone, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let (mut laptop, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let created = phone
        .commit(vec![Op::put(UserMetadata::with_id(record, None, None, false, false))])
        .unwrap();
    let entries = common::sequence(&created);
    phone.apply_entries(&entries).unwrap();
    laptop.apply_entries(&entries).unwrap();

    let row = UserMetadata::load(phone.conn(), record).unwrap().unwrap();
    let fav = phone.commit(vec![Op::put(UserMetadata { favorite: true, ..row.clone() })]).unwrap();
    let note = laptop
        .commit(vec![Op::put(UserMetadata { note: Some("from the laptop".into()), ..row })])
        .unwrap();
    assert_eq!(fav.len(), 1);
    let patch: FieldPatch = sync_log::codec::decode(&fav[0].payload).unwrap();
    assert_eq!(patch.fields.len(), 1, "the change carries only the field it set");

    let all: Vec<Change> = created.iter().chain(&fav).chain(&note).cloned().collect();
    let entries = common::sequence(&all);
    phone.apply_entries(&entries[1..]).unwrap();
    laptop.apply_entries(&entries[1..]).unwrap();
    for lib in [&mut phone, &mut laptop] {
        let row = UserMetadata::load(lib.conn(), record).unwrap().unwrap();
        assert!(row.favorite);
        assert_eq!(row.note.as_deref(), Some("from the laptop"));
    }
    assert_eq!(phone.content_hash().unwrap(), laptop.content_hash().unwrap());
}

/// Records written by `insert_batch` (per-field model, stamped whole on the way in) are, on a
/// device that applies their changes, the very same rows: equal content hashes.
#[test]
fn a_batch_insert_is_the_same_rows_where_it_is_applied() {
    let (mut origin, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let tags: Vec<library_models::Tag> =
        (0..50).map(|i| library_models::Tag::new(format!("t{i}"), None)).collect();
    let changes = origin.insert_batch(tags).unwrap();
    let (mut other, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    other.apply_entries(&common::sequence(&changes)).unwrap();
    assert_eq!(other.content_hash().unwrap(), origin.content_hash().unwrap());
}
