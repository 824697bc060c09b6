//! The local conflict log: an applied change that overwrote a local change no other device had
//! seen yet, or that lost to one, is recorded (both changes, who won, when) — per field for
//! models that merge per field — bounded, listed and cleared through the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use library_models as _;
use library_models::{Id, Tag, UserMetadata};
use sync_log::{Change, DeviceId, SyncLogStore};
use txn_manager::{Config, Library, ManualClock, Op};

fn library(device: DeviceId, millis: u64, capacity: usize) -> Library {
    let clock = Arc::new(ManualClock::new(millis));
    let config = Config { clock, conflict_log_capacity: capacity, ..Config::default() };
    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    Library::open(
        ":memory:".as_ref(),
        &mut log,
        device,
        syncable::Registry::from_inventory().unwrap(),
        config,
    )
    .unwrap()
}

fn rename(lib: &mut Library, id: Id, to: &str) -> Vec<Change> {
    let t: Tag = lib.load(id).unwrap().unwrap();
    lib.commit(vec![Op::put(Tag { name: to.into(), ..t })]).unwrap()
}

/// Two devices rename one tag concurrently. On the device whose rename is still unsent, the
/// other's rename arriving from the log is recorded — as having won when its stamp is later,
/// as having lost when it is earlier — with both changes whole.
#[test]
fn a_concurrent_edit_of_an_unsent_change_is_recorded_with_the_winner() {
    for remote_later in [true, false] {
        let tag = Tag::new("a".into(), None);
        let (early, late) = (10_000, 20_000);
        let (t_laptop, t_phone) = if remote_later { (early, late) } else { (late, early) };
        let mut laptop = library(DeviceId::new_v7(), t_laptop, 100);
        let mut phone = library(DeviceId::new_v7(), t_phone, 100);
        let created =
            library(DeviceId::new_v7(), 1_000, 100).commit(vec![Op::put(tag.clone())]).unwrap();
        let entries = common::sequence(&created);
        laptop.apply_entries(&entries).unwrap();
        phone.apply_entries(&entries).unwrap();

        let local = rename(&mut laptop, tag.uuid, "laptop");
        let remote = rename(&mut phone, tag.uuid, "phone");
        let mut all = created.clone();
        all.extend(remote.iter().cloned());
        let report = laptop.apply_entries(&common::sequence(&all)[1..]).unwrap();
        assert_eq!(report.conflicts, 1);
        let conflicts = laptop.conflicts(10).unwrap();
        assert_eq!(conflicts.len(), 1);
        let c = &conflicts[0];
        assert_eq!((c.model.as_str(), c.record), ("tag", tag.uuid.0));
        assert_eq!((&c.local, &c.remote), (&local[0], &remote[0]));
        assert_eq!(c.remote_won, remote_later);
        assert_eq!(c.at_ms, t_laptop);
        let name = laptop.load::<Tag>(tag.uuid).unwrap().unwrap().name;
        assert_eq!(name, if remote_later { "phone" } else { "laptop" });

        assert_eq!(laptop.clear_conflicts().unwrap(), 1);
        assert!(laptop.conflicts(10).unwrap().is_empty());
    }
}

/// Not conflicts: concurrent edits of two different fields of a per-field record (both
/// survive, nothing is lost), and a remote edit that comes after our own change in the log
/// (it saw ours).
#[test]
fn edits_of_different_fields_and_causally_later_edits_are_not_conflicts() {
    let record = Id::new_v7();
    let mut phone = library(DeviceId::new_v7(), 10_000, 100);
    let mut laptop = library(DeviceId::new_v7(), 10_000, 100);
    let created = phone
        .commit(vec![Op::put(UserMetadata::with_id(record, None, None, false, false))])
        .unwrap();
    let entries = common::sequence(&created);
    phone.apply_entries(&entries).unwrap();
    laptop.apply_entries(&entries).unwrap();
    let row: UserMetadata = phone.load(record).unwrap().unwrap();
    let fav = phone.commit(vec![Op::put(UserMetadata { favorite: true, ..row.clone() })]).unwrap();
    let note = laptop
        .commit(vec![Op::put(UserMetadata { note: Some("n".into()), ..row.clone() })])
        .unwrap();
    let mut all = created.clone();
    all.extend(fav.iter().cloned());
    assert_eq!(laptop.apply_entries(&common::sequence(&all)[1..]).unwrap().conflicts, 0);

    // Our note reaches the log first; a later remote edit of the note saw it.
    all.extend(note.iter().cloned());
    let after: Vec<Change> = {
        let mut lib = library(DeviceId::new_v7(), 30_000, 100);
        lib.apply_entries(&common::sequence(&all)).unwrap();
        let r: UserMetadata = lib.load(record).unwrap().unwrap();
        lib.commit(vec![Op::put(UserMetadata { note: Some("later".into()), ..r })]).unwrap()
    };
    let current: UserMetadata = laptop.load(record).unwrap().unwrap();
    laptop.commit(vec![Op::put(UserMetadata { hidden: true, ..current })]).unwrap();
    all.extend(after);
    let report = laptop.apply_entries(&common::sequence(&all)[2..]).unwrap();
    assert_eq!(report.conflicts, 0, "the later note saw ours; hidden was not touched remotely");
    assert!(laptop.conflicts(10).unwrap().is_empty());
}

/// The log is bounded: with room for 3, five conflicts keep the newest three and count two
/// as dropped.
#[test]
fn the_conflict_log_keeps_the_newest_and_counts_the_dropped() {
    let mut laptop = library(DeviceId::new_v7(), 10_000, 3);
    let mut phone = library(DeviceId::new_v7(), 20_000, 3);
    let tags: Vec<Tag> = (0..5).map(|i| Tag::new(format!("t{i}"), None)).collect();
    let created = laptop.commit(tags.iter().cloned().map(Op::put).collect()).unwrap();
    let entries = common::sequence(&created);
    laptop.apply_entries(&entries).unwrap();
    phone.apply_entries(&entries).unwrap();
    let mut all = created.clone();
    for t in &tags {
        rename(&mut laptop, t.uuid, "laptop");
        all.extend(rename(&mut phone, t.uuid, "phone"));
    }
    let report = laptop.apply_entries(&common::sequence(&all)[5..]).unwrap();
    assert_eq!(report.conflicts, 5);
    let kept = laptop.conflicts(10).unwrap();
    assert_eq!(kept.len(), 3);
    let records: Vec<uuid::Uuid> = kept.iter().map(|c| c.record).collect();
    assert_eq!(records, vec![tags[4].uuid.0, tags[3].uuid.0, tags[2].uuid.0], "newest first");
    assert_eq!(laptop.conflicts_dropped().unwrap(), 2);
}
