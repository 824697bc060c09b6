//! Convergence of the LWW apply: the same set of changes, in any order and with duplicates,
//! gives byte-identical syncable tables (compared by `content_hash`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use library_models as _;
use library_models::{
    Collection, Entry, Id, LibraryModel, Location, Tag, UserMetadata, UserMetadataTag,
};
use proptest::prelude::*;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use sync_log::{Change, DeviceId};
use txn_manager::Clock;
use txn_manager::{Error, Library, Op};

#[derive(Clone, Debug)]
enum Action {
    CreateTag,
    RenameTag(usize),
    DeleteTag(usize),
    CreateMeta,
    Link(usize, usize),
    Unlink(usize, usize),
    CreateLocation,
    UpdateLocation(usize),
    DeleteLocation(usize),
    CreateCollection,
    UpdateCollection(usize),
    DeleteCollection(usize),
    /// A new entry in a location (possibly one this device has not seen yet).
    CreateEntry {
        location: usize,
        parent: ParentPick,
        /// Take the id of an entry that some other entry already names as its parent (a
        /// parent created after its child), when there is one.
        fill_future: bool,
    },
    /// Rename/resize an entry; `Some` also moves it under another entry.
    UpdateEntry(usize, Option<usize>),
    DeleteEntry(usize),
    /// Receive every change another device has made so far (not all devices sync, so many
    /// writes are concurrent).
    Sync(usize),
}

/// The parent of a new entry.
#[derive(Clone, Debug)]
enum ParentPick {
    /// At the location root.
    Root,
    /// An entry created earlier (on any device: maybe not seen here yet).
    Existing(usize),
    /// An entry that does not exist anywhere yet: its id is reserved now and a later
    /// `CreateEntry { fill_future: true }` creates it, so the child's change is made (and
    /// often applied) before its parent's.
    Future,
}

fn parent_pick() -> impl Strategy<Value = ParentPick> {
    prop_oneof![
        1 => Just(ParentPick::Root),
        2 => any::<usize>().prop_map(ParentPick::Existing),
        1 => Just(ParentPick::Future),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::CreateTag),
        2 => any::<usize>().prop_map(Action::RenameTag),
        1 => any::<usize>().prop_map(Action::DeleteTag),
        1 => Just(Action::CreateMeta),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(m, t)| Action::Link(m, t)),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(m, t)| Action::Unlink(m, t)),
        1 => Just(Action::CreateLocation),
        1 => any::<usize>().prop_map(Action::UpdateLocation),
        1 => any::<usize>().prop_map(Action::DeleteLocation),
        1 => Just(Action::CreateCollection),
        1 => any::<usize>().prop_map(Action::UpdateCollection),
        1 => any::<usize>().prop_map(Action::DeleteCollection),
        3 => (any::<usize>(), parent_pick(), any::<bool>()).prop_map(
            |(location, parent, fill_future)| Action::CreateEntry { location, parent, fill_future }
        ),
        2 => (any::<usize>(), prop::option::of(any::<usize>()))
            .prop_map(|(e, p)| Action::UpdateEntry(e, p)),
        1 => any::<usize>().prop_map(Action::DeleteEntry),
        3 => (0usize..3).prop_map(Action::Sync),
    ]
}

/// Tolerates the refusals a real user would see (record unknown here, or deleted).
fn commit_ok(lib: &mut Library, op: Op) -> Vec<Change> {
    match lib.commit(vec![op]) {
        Ok(c) => c,
        Err(Error::NotFound { .. } | Error::Deleted { .. }) => Vec::new(),
        Err(e) => panic!("commit failed: {e}"),
    }
}

/// Applies `changes` directly through the registry (a device learning another's changes
/// without sequencing), so later local writes build on them.
fn receive(lib: &mut Library, changes: &[Change]) {
    let registry = lib.registry().clone();
    lib.conn()
        .immediate_transaction(|conn| {
            for c in changes {
                registry.apply(conn, c)?;
            }
            Ok::<_, syncable::Error>(())
        })
        .unwrap();
}

fn pick<T: Copy>(v: &[T], i: usize) -> Option<T> {
    if v.is_empty() { None } else { Some(v[i % v.len()]) }
}

/// Loads `id` of model `T` on this device, lets `edit` change it, and commits it (nothing if
/// this device has not seen the record).
fn edit<T: LibraryModel + 'static>(
    lib: &mut Library,
    id: Id,
    edit: impl FnOnce(&mut T),
) -> Vec<Change> {
    match T::load(lib.conn(), id).unwrap() {
        Some(mut record) => {
            edit(&mut record);
            commit_ok(lib, Op::put(record))
        }
        None => Vec::new(),
    }
}

/// Ids of every record created so far, on any device (a device may name one it has not seen).
#[derive(Default)]
struct Ids {
    tags: Vec<Id>,
    metas: Vec<Id>,
    locations: Vec<Id>,
    collections: Vec<Id>,
    entries: Vec<Id>,
    /// Entry ids named as a parent before any device created them.
    future: Vec<Id>,
}

/// Runs the simulation: three devices, independent clocks, random ops; returns every change.
fn simulate(actions: &[(usize, Action, u16)]) -> Vec<Change> {
    let mut devices: Vec<(Library, _)> =
        (0..3).map(|i| common::memory_library(DeviceId(devices_id(i)), 1_000 + i as u64)).collect();
    let mut made: Vec<Vec<Change>> = vec![Vec::new(); 3];
    let mut seen: Vec<Vec<usize>> = vec![vec![0; 3]; 3];
    let mut ids = Ids::default();
    for (dev, action, advance) in actions {
        let d = dev % 3;
        let (lib, clock) = &mut devices[d];
        // Sometimes the clock stands still or goes backwards: the HLC must cope.
        if advance % 7 == 0 {
            clock.set(clock.now_millis().saturating_sub(u64::from(*advance % 50)));
        } else {
            clock.advance(u64::from(advance % 20));
        }
        let changes = match action {
            Action::CreateTag => {
                let tag = Tag::new(format!("t{}", ids.tags.len()), None);
                ids.tags.push(tag.uuid);
                commit_ok(lib, Op::put(tag))
            }
            Action::RenameTag(i) => match pick(&ids.tags, *i) {
                Some(id) => edit(lib, id, |t: &mut Tag| {
                    t.name = format!("{}-{}", t.name, d);
                    t.color = Some(format!("#{advance:04x}"));
                }),
                None => Vec::new(),
            },
            Action::DeleteTag(i) => match pick(&ids.tags, *i) {
                Some(id) => commit_ok(lib, Op::delete::<Tag>(id)),
                None => Vec::new(),
            },
            Action::CreateMeta => {
                // Describes an entry that may not exist here (or anywhere) yet.
                let entry = pick(&ids.entries, usize::from(*advance));
                let m = UserMetadata::new(entry, Some(format!("m{d}")), d == 0, false);
                ids.metas.push(m.uuid);
                commit_ok(lib, Op::put(m))
            }
            Action::Link(m, t) => match (pick(&ids.metas, *m), pick(&ids.tags, *t)) {
                // Links may be made before this device has seen the tag or the metadata:
                // the missing-parent rule says that is fine.
                (Some(m), Some(t)) => commit_ok(lib, Op::put(UserMetadataTag::link(m, t))),
                _ => Vec::new(),
            },
            Action::Unlink(m, t) => match (pick(&ids.metas, *m), pick(&ids.tags, *t)) {
                (Some(m), Some(t)) => {
                    commit_ok(lib, Op::delete::<UserMetadataTag>(UserMetadataTag::link_id(m, t)))
                }
                _ => Vec::new(),
            },
            Action::CreateLocation => {
                let owner = Id(devices_id(d));
                let l = Location::new(owner, format!("l{}", ids.locations.len()), format!("/{d}"));
                ids.locations.push(l.uuid);
                commit_ok(lib, Op::put(l))
            }
            Action::UpdateLocation(i) => match pick(&ids.locations, *i) {
                Some(id) => edit(lib, id, |l: &mut Location| {
                    l.name = format!("{}-{d}", l.name);
                    l.path = format!("/{advance}");
                }),
                None => Vec::new(),
            },
            Action::DeleteLocation(i) => match pick(&ids.locations, *i) {
                Some(id) => commit_ok(lib, Op::delete::<Location>(id)),
                None => Vec::new(),
            },
            Action::CreateCollection => {
                let c = Collection::new(format!("c{}", ids.collections.len()), None);
                ids.collections.push(c.uuid);
                commit_ok(lib, Op::put(c))
            }
            Action::UpdateCollection(i) => match pick(&ids.collections, *i) {
                Some(id) => edit(lib, id, |c: &mut Collection| {
                    c.name = format!("{}-{d}", c.name);
                    c.description = (advance % 2 == 0).then(|| format!("by {d}"));
                }),
                None => Vec::new(),
            },
            Action::DeleteCollection(i) => match pick(&ids.collections, *i) {
                Some(id) => commit_ok(lib, Op::delete::<Collection>(id)),
                None => Vec::new(),
            },
            Action::CreateEntry { location, parent, fill_future } => {
                // A location this device may not have seen; a dangling one if none exists.
                let location =
                    pick(&ids.locations, *location).unwrap_or(Id(uuid::Uuid::from_u128(0x10c)));
                let parent = match parent {
                    ParentPick::Root => None,
                    ParentPick::Existing(i) => pick(&ids.entries, *i),
                    ParentPick::Future => {
                        let id = Id::new_v7();
                        ids.future.push(id);
                        Some(id)
                    }
                };
                let id = match ids.future.pop() {
                    Some(id) if *fill_future && Some(id) != parent => id,
                    Some(id) => {
                        ids.future.push(id);
                        Id::new_v7()
                    }
                    None => Id::new_v7(),
                };
                let n = ids.entries.len();
                let kind = i16::from(parent.is_none());
                let hash = (n % 3 == 0).then(|| vec![n as u8; 4]);
                let e = Entry::with_id(id, location, parent, format!("e{n}"), kind, 0, 1, 1, hash);
                ids.entries.push(id);
                commit_ok(lib, Op::put(e))
            }
            Action::UpdateEntry(i, move_to) => match pick(&ids.entries, *i) {
                Some(id) => {
                    let new_parent =
                        move_to.and_then(|p| pick(&ids.entries, p)).filter(|p| *p != id);
                    edit(lib, id, |e: &mut Entry| {
                        e.name = format!("{}-{d}", e.name);
                        e.size += i64::from(*advance);
                        e.modified_at += 1;
                        if new_parent.is_some() {
                            e.parent = new_parent;
                        }
                    })
                }
                None => Vec::new(),
            },
            Action::DeleteEntry(i) => match pick(&ids.entries, *i) {
                Some(id) => commit_ok(lib, Op::delete::<Entry>(id)),
                None => Vec::new(),
            },
            Action::Sync(from) => {
                let from = from % 3;
                let new: Vec<Change> = made[from][seen[d][from]..].to_vec();
                seen[d][from] = made[from].len();
                receive(lib, &new);
                Vec::new()
            }
        };
        made[d].extend(changes);
    }
    made.into_iter().flatten().collect()
}

/// The device id of simulated device `d`.
fn devices_id(d: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(d as u128 + 1)
}

/// Sequences `changes` in a random order with random duplicates (including re-sequenced
/// copies of the same origin key) and applies them to a fresh library in random batches,
/// re-delivering some batches; returns the content hash.
fn replay(changes: &[Change], seed: u64) -> library_models::ContentHash {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<Change> = changes.to_vec();
    for _ in 0..rng.random_range(0..=changes.len().min(8)) {
        let dup = order[rng.random_range(0..order.len())].clone();
        order.push(dup);
    }
    order.shuffle(&mut rng);
    let entries = common::sequence(&order);
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 5);
    let mut at = 0;
    while at < entries.len() {
        let n = rng.random_range(1..=entries.len() - at);
        // Re-deliver some already-applied entries in front of the batch: a no-op.
        let back = rng.random_range(0..=at.min(3));
        lib.apply_entries(&entries[at - back..at + n]).unwrap();
        at += n;
    }
    assert_eq!(lib.applied_seq().0, entries.len() as u64);
    lib.content_hash().unwrap()
}

proptest! {
    // XorShift: the default ChaCha generator, unoptimised in debug builds, cost ~10% of the run.
    #![proptest_config(ProptestConfig {
        cases: 500,
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    })]

    /// Three devices make random creates, updates, deletes, tag links and unlinks of tags,
    /// user metadata, locations, collections and entries (entries moved between parents,
    /// children made before their parents, rows naming locations or entries a device has not
    /// seen), many of them concurrent (devices sync only now and then, clocks drift and go
    /// backwards); every resulting change applied on fresh databases in random orders, with
    /// duplicates and re-deliveries, gives the same content hash — and the same as applying
    /// them in the order they were made.
    #[test]
    fn any_order_with_duplicates_converges(
        actions in prop::collection::vec((0usize..3, action(), any::<u16>()), 1..40),
        seeds in prop::array::uniform3(any::<u64>()),
    ) {
        let changes = simulate(&actions);
        prop_assume!(!changes.is_empty());
        let reference = {
            let entries = common::sequence(&changes);
            let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 5);
            lib.apply_entries(&entries).unwrap();
            lib.content_hash().unwrap()
        };
        for seed in seeds {
            prop_assert_eq!(replay(&changes, seed), reference);
        }
    }
}
