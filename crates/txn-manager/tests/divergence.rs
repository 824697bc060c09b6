//! Divergence after a split brain (design rule 5): every device whose log diverged from the
//! winner's rewinds to the common seq, applies the winner's log, and re-submits every change of
//! the discarded suffix — whatever its origin — so nothing is lost and everyone converges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use diesel::prelude::*;
use library_models as _;
use library_models::schema::pending_entries;
use library_models::{LibraryModel, PendingRow, Tag};
use sync_log::{
    Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Seq, SyncLogStore,
};
use txn_manager::{Config, Error, Library, Op};

const LIBRARY: LibraryId = LibraryId(uuid::Uuid::from_u128(0x11B));
const A: DeviceId = DeviceId(uuid::Uuid::from_u128(0xA));
const B: DeviceId = DeviceId(uuid::Uuid::from_u128(0xB));
const C: DeviceId = DeviceId(uuid::Uuid::from_u128(0xC));

/// One device: its library database and its copy of the log, both files (so it can crash).
struct Dev {
    dir: PathBuf,
    id: DeviceId,
    lib: Library,
    log: SyncLogStore,
}

impl Dev {
    fn open(root: &Path, id: DeviceId) -> Self {
        let dir = root.join(id.0.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let registry = syncable::Registry::from_inventory().unwrap();
        let mut log = SyncLogStore::open_or_create(&dir.join("sync.db"), LIBRARY).unwrap();
        let lib = Library::open(&dir.join("library.db"), &mut log, id, registry, Config::default())
            .unwrap();
        Self { dir, id, lib, log }
    }

    /// Drops both handles (what a crash leaves is what was committed) and opens them again.
    fn reopen(self) -> Self {
        let (root, id) = (self.dir.parent().unwrap().to_owned(), self.id);
        drop(self);
        Self::open(&root, id)
    }

    fn put(&mut self, made: &mut Vec<Change>, tag: Tag) {
        made.extend(self.lib.commit(vec![Op::put(tag)]).unwrap());
    }

    fn rename(&mut self, made: &mut Vec<Change>, id: library_models::Id, name: &str) {
        let mut t = Tag::load(self.lib.conn(), id).unwrap().unwrap();
        t.name = name.into();
        self.put(made, t);
    }

    /// Everything a follower forwards: its outbox and its re-submissions.
    fn forwards(&mut self) -> Vec<Change> {
        let mut changes = self.lib.resubmit(usize::MAX).unwrap();
        changes.extend(self.lib.outbox(usize::MAX).unwrap());
        changes
    }
}

/// The leader sequences what `followers` forward, then its own outbox (and re-submissions).
fn lead(leader: &mut Dev, epoch: Epoch, followers: &mut [&mut Dev]) {
    for f in followers.iter_mut() {
        let changes = f.forwards();
        leader.log.append(epoch, &changes).unwrap();
    }
    leader.lib.sequence(&mut leader.log, epoch).unwrap();
}

/// The leader pushes what `follower` lacks; the follower stores and applies it.
fn push(leader: &mut Dev, follower: &mut Dev) {
    let entries = leader.log.read_after(follower.log.head().seq, usize::MAX).unwrap();
    follower.lib.receive(&mut follower.log, &entries).unwrap();
}

/// The last seq at which `dev`'s log and the winner's carry the same running checksum.
fn common_seq(dev: &mut Dev, winner: &mut Dev) -> Seq {
    let top = dev.log.head().seq.min(winner.log.head().seq).0;
    (0..=top)
        .rev()
        .map(Seq)
        .find(|&s| dev.log.checksum_at(s).unwrap() == winner.log.checksum_at(s).unwrap())
        .unwrap()
}

/// The split brain of the brief, up to the moment the partition heals. Epoch 1: A leads, B and
/// C follow; a common prefix. Then A (with C following it) and B both lead epoch 2: each side
/// sequences different changes, among them C's changes forwarded to A and applied by C (so C
/// no longer has their outbox rows), an edit of one shared record on both sides, and a change
/// of C that A sequenced but C never received. Returns the devices, the common seq and every
/// change ever made.
fn split_brain(root: &Path) -> (Dev, Dev, Dev, Seq, Vec<Change>) {
    let (mut a, mut b, mut c) = (Dev::open(root, A), Dev::open(root, B), Dev::open(root, C));
    let mut made = Vec::new();
    let shared = Tag::new("shared".into(), None);
    a.put(&mut made, shared.clone());
    a.put(&mut made, Tag::new("a0".into(), None));
    b.put(&mut made, Tag::new("b0".into(), None));
    c.put(&mut made, Tag::new("c0".into(), None));
    lead(&mut a, Epoch(1), &mut [&mut b, &mut c]);
    push(&mut a, &mut b);
    push(&mut a, &mut c);
    let common = a.log.head().seq;
    assert_eq!(common, Seq(4));

    // Partition {A, C} | {B}; both lead epoch 2.
    a.put(&mut made, Tag::new("a1".into(), None));
    a.rename(&mut made, shared.uuid, "by-a");
    c.put(&mut made, Tag::new("c1".into(), None));
    c.put(&mut made, Tag::new("c2".into(), None));
    lead(&mut a, Epoch(2), &mut [&mut c]);
    push(&mut a, &mut c);
    assert!(c.lib.outbox(usize::MAX).unwrap().is_empty(), "C applied its changes from A's log");
    a.put(&mut made, Tag::new("a2".into(), None));
    c.put(&mut made, Tag::new("c3".into(), None));
    lead(&mut a, Epoch(2), &mut [&mut c]);
    assert!(c.log.head().seq < a.log.head().seq, "C never received A's last entries");

    b.put(&mut made, Tag::new("b1".into(), None));
    b.rename(&mut made, shared.uuid, "by-b");
    b.put(&mut made, Tag::new("b2".into(), None));
    lead(&mut b, Epoch(2), &mut []);
    assert_eq!(a.log.head().seq, Seq(10));
    assert_eq!(b.log.head().seq, Seq(7));
    (a, b, c, common, made)
}

/// After the losers rewound: they apply the winner's log, re-submit, the winner sequences, and
/// everyone receives. Then all content hashes are equal, the logs are identical, nothing waits
/// anywhere, and every change ever made is in the winner's log by origin key.
fn heal_and_check(mut a: Dev, mut b: Dev, mut c: Dev, made: &[Change]) {
    for loser in [&mut a, &mut c] {
        push(&mut b, loser);
    }
    lead(&mut b, Epoch(2), &mut [&mut a, &mut c]);
    for loser in [&mut a, &mut c] {
        push(&mut b, loser);
    }
    let hash = b.lib.content_hash().unwrap();
    let head = b.log.head();
    for dev in [&mut a, &mut b, &mut c] {
        assert_eq!(dev.lib.content_hash().unwrap(), hash, "device {}", dev.id);
        assert_eq!(dev.log.head(), head, "device {}", dev.id);
        assert_eq!(dev.lib.applied_seq(), head.seq, "device {}", dev.id);
        assert_eq!(dev.lib.resubmit_count(), 0, "device {}", dev.id);
        assert!(dev.lib.resubmit(usize::MAX).unwrap().is_empty());
        assert!(dev.lib.outbox(usize::MAX).unwrap().is_empty(), "device {}", dev.id);
        assert_eq!(dev.lib.pending_rewind(), None);
    }
    for change in made {
        assert!(b.log.find_origin(&change.origin).unwrap().is_some(), "lost {:?}", change.origin);
    }
    assert_eq!(b.log.head().seq.0, made.len() as u64, "each change sequenced exactly once");
    b.log.verify().unwrap();
    // The shared record converged to its largest stamp, on every device.
    let names: Vec<String> =
        Tag::page(a.lib.conn(), None, i64::MAX).unwrap().into_iter().map(|t| t.name).collect();
    for n in ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2", "c3"] {
        assert!(names.iter().any(|m| m == n), "{n} missing from {names:?}");
    }
}

/// Split brain, A's side loses: A (the losing leader) and C (its follower, which dropped the
/// outbox rows of changes A sequenced) find their logs diverged from B's, rewind to the common
/// seq, apply B's log, re-submit their whole suffix to B, B sequences, everyone receives: all
/// content hashes are equal and every change ever made is in B's final log by origin key.
#[test]
fn split_brain_losers_rewind_resubmit_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c, common, made) = split_brain(dir.path());

    // The handshake would show it; receiving shows it too: A's log diverged from B's.
    let theirs = b.log.read_after(common, usize::MAX).unwrap();
    let refused = a.lib.receive(&mut a.log, &theirs);
    assert!(
        matches!(refused, Err(Error::Log(sync_log::Error::Diverged { seq: Seq(5), .. }))),
        "{refused:?}"
    );
    assert_eq!(common_seq(&mut a, &mut b), common);
    assert_eq!(common_seq(&mut c, &mut b), common);

    let ra = a.lib.rewind(&mut a.log, common).unwrap();
    assert_eq!((ra.discarded, ra.stored), (6, 6));
    assert_eq!((ra.applied_before, ra.applied_after), (Seq(10), common));
    let rc = c.lib.rewind(&mut c.log, common).unwrap();
    assert_eq!((rc.discarded, rc.stored), (4, 4), "C holds the part of A's suffix it received");
    for dev in [&mut a, &mut c] {
        assert_eq!(dev.log.head().seq, common);
        assert_eq!(dev.lib.applied_seq(), common);
    }
    // C's own changes that A sequenced have no outbox row any more; they wait in `resubmit`.
    let waiting = c.lib.resubmit(usize::MAX).unwrap();
    assert!(waiting.iter().filter(|ch| ch.origin.device == C).count() == 2);

    heal_and_check(a, b, c, &made);
}

/// A crash after step 1 of the rewind (suffix stored, applied seq lowered, target recorded)
/// and before the log is truncated: after reopening, nothing re-applies the untruncated suffix
/// (`apply_entries` refuses, `catch_up` finishes the rewind first and leaves the applied seq at
/// the common seq), and the same convergence holds. Likewise for a crash after the truncation,
/// before the target is cleared.
#[test]
fn crash_inside_a_rewind_completes_on_restart_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, mut c, common, made) = split_brain(dir.path());
    let a_suffix = a.log.read_after(common, usize::MAX).unwrap();

    // A: crash between step 1 and the truncation.
    a.lib.stage_rewind(&mut a.log, common).unwrap();
    let mut a = a.reopen();
    assert_eq!(a.lib.pending_rewind(), Some(common));
    assert_eq!(a.lib.applied_seq(), common);
    assert_eq!(a.log.head().seq, Seq(10), "the log still holds the suffix");
    assert!(
        matches!(a.lib.apply_entries(&a_suffix), Err(Error::RewindPending { to }) if to == common)
    );
    let report = a.lib.catch_up(&mut a.log).unwrap();
    assert_eq!(report, Default::default(), "nothing of the discarded suffix was applied");
    assert_eq!(a.lib.pending_rewind(), None);
    assert_eq!(a.log.head().seq, common);
    assert_eq!(a.lib.applied_seq(), common);
    assert_eq!(a.lib.resubmit_count(), 6);
    let a = a.reopen();
    assert_eq!((a.lib.pending_rewind(), a.lib.applied_seq()), (None, common));

    // C: crash between the truncation and clearing the target.
    c.lib.stage_rewind(&mut c.log, common).unwrap();
    c.log.truncate_after(common).unwrap();
    let mut c = c.reopen();
    assert_eq!(c.lib.pending_rewind(), Some(common));
    assert!(c.lib.finish_rewind(&mut c.log).unwrap());
    assert_eq!(c.lib.pending_rewind(), None);
    assert_eq!(c.lib.resubmit_count(), 4);
    let c = c.reopen();
    assert_eq!(c.lib.pending_rewind(), None);

    heal_and_check(a, b, c, &made);
}

/// Rewinding is idempotent: a second rewind to the same seq, and a rewind to the head with
/// nothing applied beyond it, change nothing (log, applied seq, stored changes, content). A
/// target above the head or below the pruned floor is a typed error that changes nothing.
#[test]
fn rewinding_twice_or_with_nothing_after_common_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _c, common, _) = split_brain(dir.path());

    a.lib.rewind(&mut a.log, common).unwrap();
    let before = (a.log.head(), a.lib.applied_seq(), a.lib.resubmit(usize::MAX).unwrap());
    let hash = a.lib.content_hash().unwrap();
    let again = a.lib.rewind(&mut a.log, common).unwrap();
    assert_eq!((again.discarded, again.stored), (0, 0));
    assert_eq!((a.log.head(), a.lib.applied_seq(), a.lib.resubmit(usize::MAX).unwrap()), before);
    assert_eq!(a.lib.content_hash().unwrap(), hash);
    assert_eq!(a.lib.pending_rewind(), None);

    // Nothing after `common`: the winner rewinding to its own head.
    let head = b.log.head();
    let hash = b.lib.content_hash().unwrap();
    let r = b.lib.rewind(&mut b.log, head.seq).unwrap();
    assert_eq!((r.discarded, r.stored, r.applied_after), (0, 0, head.seq));
    assert_eq!((b.log.head(), b.lib.applied_seq(), b.lib.resubmit_count()), (head, head.seq, 0));
    assert_eq!(b.lib.content_hash().unwrap(), hash);

    // Out of range: above the head, below the floor.
    let above = b.lib.rewind(&mut b.log, Seq(head.seq.0 + 1));
    assert!(matches!(above, Err(Error::RewindOutOfRange { .. })), "{above:?}");
    b.log.prune_below(Seq(4)).unwrap();
    let below = b.lib.rewind(&mut b.log, Seq(2));
    assert!(matches!(below, Err(Error::RewindOutOfRange { floor: Seq(3), .. })), "{below:?}");
    assert_eq!((b.log.head(), b.lib.applied_seq(), b.lib.resubmit_count()), (head, head.seq, 0));
    assert_eq!(b.lib.pending_rewind(), None);
}

/// The original bug: after the loser discards its suffix, the winner's entries at seqs at or
/// below the loser's old applied seq are applied, not skipped as "already applied".
#[test]
fn winner_entries_below_old_applied_are_applied() {
    let (mut a, _) = common::memory_library(A, 1_000);
    let (mut b, _) = common::memory_library(B, 1_000);
    let mut alog = SyncLogStore::in_memory(LIBRARY).unwrap();
    let mut blog = SyncLogStore::in_memory(LIBRARY).unwrap();
    a.commit(vec![Op::put(Tag::new("common".into(), None))]).unwrap();
    a.sequence(&mut alog, Epoch(1)).unwrap();
    b.receive(&mut blog, &alog.read_after(Seq(0), 100).unwrap()).unwrap();
    for i in 0..3 {
        a.commit(vec![Op::put(Tag::new(format!("a{i}"), None))]).unwrap();
        b.commit(vec![Op::put(Tag::new(format!("b{i}"), None))]).unwrap();
    }
    a.sequence(&mut alog, Epoch(2)).unwrap();
    b.sequence(&mut blog, Epoch(2)).unwrap();
    assert_eq!(a.applied_seq(), Seq(4));

    a.rewind(&mut alog, Seq(1)).unwrap();
    let report = a.receive(&mut alog, &blog.read_after(Seq(1), 100).unwrap()).unwrap();
    assert_eq!((report.written, report.skipped), (3, 0));
    let names: Vec<String> =
        Tag::page(a.conn(), None, i64::MAX).unwrap().into_iter().map(|t| t.name).collect();
    for i in 0..3 {
        assert!(names.contains(&format!("b{i}")), "b{i} missing from {names:?}");
    }
    assert_eq!(a.applied_seq(), Seq(4));
}

/// A loser that becomes leader (a later epoch) re-sequences what it holds: `sequence` appends
/// the stored suffix in its log order before the outbox, and the stored rows are gone once
/// those entries are applied.
#[test]
fn a_rewound_device_that_leads_sequences_its_resubmissions() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, _c, common, _) = split_brain(dir.path());
    let suffix: Vec<Change> =
        a.log.read_after(common, usize::MAX).unwrap().into_iter().map(|e| e.change).collect();
    a.lib.rewind(&mut a.log, common).unwrap();
    a.put(&mut Vec::new(), Tag::new("after".into(), None));
    a.lib.sequence(&mut a.log, Epoch(3)).unwrap();
    let resequenced: Vec<Change> =
        a.log.read_after(common, usize::MAX).unwrap().into_iter().map(|e| e.change).collect();
    assert_eq!(resequenced.len(), suffix.len() + 1);
    assert_eq!(resequenced[..suffix.len()], suffix[..], "log order kept");
    assert_eq!(a.lib.resubmit_count(), 0);
    assert!(a.lib.outbox(usize::MAX).unwrap().is_empty());
    assert_eq!(a.lib.applied_seq(), a.log.head().seq);
}

/// An entry of the discarded suffix kept in `pending_entries` (unknown model) does not shadow
/// the winner's entry at the same seq: the rewind drops it (its change waits in `resubmit`),
/// and the winner's entry is kept in its place.
#[test]
fn kept_entries_of_the_suffix_do_not_shadow_the_winners() {
    let future = |device: DeviceId| Change {
        origin: OriginKey { device, seq: 1 },
        hlc: Hlc::new(1_000, 0),
        model: "future-model".into(),
        record: uuid::Uuid::from_u128(device.0.as_u128() << 64),
        change: ChangeType::Insert,
        version: 1,
        payload: vec![device.0.as_bytes()[15]],
    };
    let (mut a, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let mut alog = SyncLogStore::in_memory(LIBRARY).unwrap();
    let mut blog = SyncLogStore::in_memory(LIBRARY).unwrap();
    alog.append(Epoch(1), &[future(A)]).unwrap();
    blog.append(Epoch(1), &[future(B)]).unwrap();
    a.catch_up(&mut alog).unwrap();
    assert_eq!(a.pending_count().unwrap(), 1);

    a.rewind(&mut alog, Seq(0)).unwrap();
    assert_eq!(a.pending_count().unwrap(), 0);
    assert_eq!(a.resubmit(10).unwrap(), vec![future(A)]);
    a.receive(&mut alog, &blog.read_after(Seq(0), 10).unwrap()).unwrap();
    let kept: Vec<LogEntry> = pending_entries::table
        .select(PendingRow::as_select())
        .load(a.conn())
        .unwrap()
        .iter()
        .map(|r| r.decode().unwrap())
        .collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].change, future(B));
}
