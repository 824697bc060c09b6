//! The clock through the write path: persisted across restarts, merged on receive, clamped
//! when a peer is too far ahead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use library_models as _;
use library_models::{LibraryModel, Tag};
use sync_log::{DeviceId, Hlc};
use txn_manager::{Clock, Config, DEFAULT_MAX_DRIFT_MS, Library, ManualClock, Op};

fn open_file(path: &Path, device: DeviceId, millis: u64) -> (Library, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(millis));
    let registry = syncable::Registry::from_inventory().unwrap();
    let config = Config { clock: clock.clone(), ..Config::default() };
    let mut log = sync_log::SyncLogStore::in_memory(common::LIBRARY).unwrap();
    (Library::open(path, &mut log, device, registry, config).unwrap(), clock)
}

fn put_tag(lib: &mut Library, name: &str) -> Hlc {
    lib.commit(vec![Op::put(Tag::new(name.into(), None))]).unwrap()[0].hlc
}

/// The default maximum drift is ten minutes, and `Config::default` uses it.
#[test]
fn default_max_drift_is_ten_minutes() {
    assert_eq!(DEFAULT_MAX_DRIFT_MS, 600_000);
    assert_eq!(Config::default().max_drift_ms, DEFAULT_MAX_DRIFT_MS);
}

/// Reopening the library on the same file with a physical clock set an hour EARLIER than
/// before still gives a stamp larger than every stamp handed out or merged before the
/// restart: the last reading is persisted with every commit and every apply.
#[test]
fn clock_is_monotonic_across_a_restart_with_an_earlier_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("library.db");
    let device = DeviceId::new_v7();
    let t = 5_000_000_000;

    let (mut lib, _) = open_file(&path, device, t);
    put_tag(&mut lib, "a");
    let before = put_tag(&mut lib, "b");
    assert_eq!(lib.hlc(), before);
    drop(lib);

    let (mut lib, clock) = open_file(&path, device, t - 3_600_000);
    assert_eq!(lib.hlc(), before, "the last reading is read back");
    let after = put_tag(&mut lib, "c");
    assert!(after > before, "{after:?} must follow {before:?}");

    // A reading merged from a peer (ahead of us, within the drift) is persisted by the
    // apply, too.
    clock.set(t);
    let (mut peer, _) = common::memory_library(DeviceId::new_v7(), t + 120_000);
    let remote = put_tag(&mut peer, "remote");
    let entries = common::sequence(&peer.outbox(10).unwrap());
    lib.apply_entries(&entries).unwrap();
    assert!(lib.hlc() >= remote, "merged, not clamped");
    drop(lib);
    let (mut lib, _) = open_file(&path, device, t - 3_600_000);
    let next = put_tag(&mut lib, "d");
    assert!(next > remote, "{next:?} must follow the merged {remote:?}");
}

/// A device that receives a change stamped ahead of its own clock (within the drift) stamps
/// its next change later than it: causality survives a slow physical clock.
#[test]
fn receiving_merges_a_stamp_ahead_within_the_drift() {
    let t = 1_000_000_000;
    let (mut ahead, _) = common::memory_library(DeviceId::new_v7(), t + 300_000);
    let (mut behind, clock) = common::memory_library(DeviceId::new_v7(), t);
    let remote = put_tag(&mut ahead, "from the future");
    assert!(put_tag(&mut behind, "before receiving") < remote);

    let entries = common::sequence(&ahead.outbox(10).unwrap());
    behind.apply_entries(&entries).unwrap();
    assert!(behind.hlc() >= remote);
    let next = put_tag(&mut behind, "after receiving");
    assert!(next > remote, "{next:?} must follow {remote:?}");
    assert_eq!(clock.now_millis(), t, "the physical clock did not move: the merge did it");
}

/// A peer stamp more than the maximum drift ahead (an hour, with the default ten minutes)
/// is clamped: the change is still applied with its own stamp (convergence needs that), but
/// our clock moves at most to `now + max drift`, and a later local edit of the same record
/// still wins: an edit is stamped past the stamp it overwrites (recency is causal), while
/// the clock itself stays clamped.
#[test]
fn a_peer_stamp_beyond_the_drift_is_clamped_but_its_change_applied() {
    let t = 2_000_000_000;
    let (mut broken, _) = common::memory_library(DeviceId::new_v7(), t + 3_600_000);
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), t);
    let tag = Tag::new("skewed".into(), None);
    let id = tag.uuid;
    let remote = broken.commit(vec![Op::put(tag)]).unwrap()[0].hlc;

    let report = lib.apply_entries(&common::sequence(&broken.outbox(10).unwrap())).unwrap();
    assert_eq!(report.written, 1);
    let stored = Tag::load(lib.conn(), id).unwrap().unwrap();
    assert_eq!(stored.hlc as u64, remote.0, "applied with the peer's own stamp");

    let limit = t + DEFAULT_MAX_DRIFT_MS;
    assert!(lib.hlc() <= Hlc::new(limit, 0), "clock moved to {:?}", lib.hlc());
    let next = put_tag(&mut lib, "local");
    assert!(next.millis() <= limit && next < remote, "{next:?}");

    let mut edit = Tag::load(lib.conn(), id).unwrap().unwrap();
    edit.name = "edited here".into();
    let change = lib.commit(vec![Op::put(edit)]).unwrap().remove(0);
    assert!(change.hlc > remote && change.version == 2, "{:?} vs {remote:?}", change.hlc);
    assert!(lib.hlc().millis() <= limit, "the clock itself stays clamped");
    let (mut other, _) = common::memory_library(DeviceId::new_v7(), t);
    let mut both = broken.outbox(10).unwrap();
    both.push(change);
    other.apply_entries(&common::sequence(&both)).unwrap();
    assert_eq!(Tag::load(other.conn(), id).unwrap().unwrap().name, "edited here");
}

/// A physical clock beyond the HLC's range (2^47 ms, a broken clock) fails the commit with
/// `ClockOutOfRange` and writes nothing — no model row, no outbox row, no counter — instead of
/// storing a stamp no device accepts; once the clock is sane again commits work.
#[test]
fn a_clock_beyond_the_hlc_range_fails_the_commit_and_writes_nothing() {
    let (mut lib, clock) = common::memory_library(DeviceId::new_v7(), 1_000);
    clock.set(1 << 47);
    let tag = Tag::new("future".into(), None);
    match lib.commit(vec![Op::put(tag.clone())]) {
        Err(txn_manager::Error::ClockOutOfRange { millis, .. }) => assert_eq!(millis, 1 << 47),
        other => panic!("expected ClockOutOfRange, got {other:?}"),
    }
    assert!(Tag::load(lib.conn(), tag.uuid).unwrap().is_none());
    assert!(lib.outbox(10).unwrap().is_empty());
    assert_eq!(lib.origin_seq(), 0);

    clock.set(2_000);
    let change = lib.commit(vec![Op::put(tag)]).unwrap().remove(0);
    assert!(i64::try_from(change.hlc.0).is_ok());
}

/// From the largest reading (`Hlc::MAX`, or `u64::MAX` read back from a damaged database) the
/// clock never goes backwards: the next reading fails.
#[test]
fn the_clock_fails_rather_than_go_backwards() {
    for last in [Hlc::new(Hlc::MAX_MILLIS, u16::MAX), Hlc(u64::MAX)] {
        let clock = Arc::new(ManualClock::new(1_000));
        let mut hlc = txn_manager::HybridClock::new(clock, last, DEFAULT_MAX_DRIFT_MS);
        assert!(hlc.now().is_err(), "a reading after {last:?}");
        assert_eq!(hlc.last(), last);
    }
}
