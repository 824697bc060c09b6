//! Crash safety of the write path: a child process commits and sequences in a loop and is
//! killed with SIGKILL at random moments; after every kill the two databases still agree.
//!
//! Replay a failure with `TXN_CRASH_SEED=<seed printed by the test>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use library_models as _;
use library_models::schema::{local_state, outbox};
use library_models::{Id, LibraryModel, LocalState, OutboxRow, Tag, UserMetadata, UserMetadataTag};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_log::{Change, DeviceId, Epoch, LibraryId, LogEntry, Seq, SyncLogStore};
use txn_manager::{Config, Error, Library, Op};

const CHILD_DIR: &str = "TXN_CRASH_CHILD_DIR";
const CHILD_SEED: &str = "TXN_CRASH_CHILD_SEED";
const KILLS: usize = 60;
const DEVICE: DeviceId = DeviceId(uuid::Uuid::from_u128(0xD1));
const LIBRARY: LibraryId = LibraryId(uuid::Uuid::from_u128(0x11B));

fn open(dir: &Path) -> (Library, SyncLogStore) {
    let registry = syncable::Registry::from_inventory().unwrap();
    let mut log = SyncLogStore::open_or_create(&dir.join("sync.db"), LIBRARY).unwrap();
    let lib = Library::open(&dir.join("library.db"), &mut log, DEVICE, registry, Config::default())
        .unwrap();
    (lib, log)
}

/// Not a check on its own: the child process of `sigkill_at_random_moments_loses_nothing`.
/// Without the child environment variable it returns at once; with it, it recovers (the same
/// start-up path a real device runs) and then commits and sequences until it is killed.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut lib, mut log) = open(Path::new(&dir));
    lib.sequence(&mut log, Epoch(1)).unwrap();
    let mut tags: Vec<Id> =
        Tag::page(lib.conn(), None, i64::MAX).unwrap().iter().map(|t| t.uuid).collect();
    let mut metas: Vec<Id> =
        UserMetadata::page(lib.conn(), None, i64::MAX).unwrap().iter().map(|m| m.uuid).collect();
    loop {
        let result = match rng.random_range(0..10) {
            0 => {
                let m = UserMetadata::new(None, None, false, false);
                metas.push(m.uuid);
                lib.commit(vec![Op::put(m)])
            }
            1 | 2 => {
                let t = Tag::new("t".into(), None);
                tags.push(t.uuid);
                lib.commit(vec![Op::put(t)])
            }
            3 => {
                let batch: Vec<Tag> =
                    (0..rng.random_range(1..200)).map(|_| Tag::new("b".into(), None)).collect();
                tags.extend(batch.iter().map(|t| t.uuid));
                lib.insert_batch(batch)
            }
            4 if !tags.is_empty() => {
                let id = tags[rng.random_range(0..tags.len())];
                match Tag::load(lib.conn(), id).unwrap() {
                    Some(mut t) => {
                        t.name.push('x');
                        lib.commit(vec![Op::put(t)])
                    }
                    None => Ok(Vec::new()),
                }
            }
            5 if !tags.is_empty() => {
                let id = tags[rng.random_range(0..tags.len())];
                lib.commit(vec![Op::delete::<Tag>(id)])
            }
            6 | 7 if !tags.is_empty() && !metas.is_empty() => {
                let ops = (0..rng.random_range(1..20))
                    .map(|_| {
                        let link = UserMetadataTag::link(
                            metas[rng.random_range(0..metas.len())],
                            tags[rng.random_range(0..tags.len())],
                        );
                        if rng.random_bool(0.3) {
                            Op::delete::<UserMetadataTag>(link.uuid)
                        } else {
                            Op::put(link)
                        }
                    })
                    .collect();
                lib.commit(ops)
            }
            _ => lib.sequence(&mut log, Epoch(1)).map(|_| Vec::new()),
        };
        match result {
            Ok(_) | Err(Error::NotFound { .. } | Error::Deleted { .. }) => {}
            Err(e) => panic!("child: {e}"),
        }
    }
}

/// The state of both databases, read by the parent while no child runs.
struct Snapshot {
    state: LocalState,
    outbox: Vec<Change>,
    /// `(first, last)` origin seqs of each outbox row.
    outbox_rows: Vec<(u64, u64)>,
    log: Vec<LogEntry>,
    rows: BTreeMap<(uuid::Uuid, i64, i64), Id>,
}

fn snapshot(dir: &Path) -> Option<Snapshot> {
    if !dir.join("sync.db").exists() || !dir.join("library.db").exists() {
        return None;
    }
    let mut conn = library_models::open_library(&dir.join("library.db")).unwrap();
    let state: LocalState =
        local_state::table.select(LocalState::as_select()).first(&mut conn).ok()?;
    let rows_of_outbox: Vec<OutboxRow> =
        outbox::table.select(OutboxRow::as_select()).load(&mut conn).unwrap();
    let outbox_rows: Vec<(u64, u64)> = rows_of_outbox
        .iter()
        .map(|r| (r.first_origin_seq as u64, r.last_origin_seq as u64))
        .collect();
    let outbox: Vec<Change> = rows_of_outbox.iter().flat_map(|row| row.decode().unwrap()).collect();
    let mut rows = BTreeMap::new();
    for t in Tag::page(&mut conn, None, i64::MAX).unwrap() {
        rows.insert((t.uuid.0, t.version, t.hlc), t.device_id);
    }
    for t in UserMetadata::page(&mut conn, None, i64::MAX).unwrap() {
        rows.insert((t.uuid.0, t.version, t.hlc), t.device_id);
    }
    for t in UserMetadataTag::page(&mut conn, None, i64::MAX).unwrap() {
        rows.insert((t.uuid.0, t.version, t.hlc), t.device_id);
    }
    let mut log = SyncLogStore::open_or_create(&dir.join("sync.db"), LIBRARY).unwrap();
    let log = log.read_after(Seq(0), usize::MAX).unwrap();
    Some(Snapshot { state, outbox, outbox_rows, log, rows })
}

use diesel::prelude::*;

fn check(s: &Snapshot) {
    // Nothing sequenced twice: unique origin keys and unique (record, version, hlc).
    let origins: BTreeSet<u64> = s.log.iter().map(|e| e.change.origin.seq).collect();
    assert_eq!(origins.len(), s.log.len(), "an origin key was sequenced twice");
    let stamps: BTreeSet<_> =
        s.log.iter().map(|e| (e.change.record, e.change.version, e.change.hlc)).collect();
    assert_eq!(stamps.len(), s.log.len(), "a change was sequenced twice");
    // Nothing lost: every origin seq ever handed out is in the outbox or in the log.
    let outboxed: BTreeSet<u64> = s.outbox.iter().map(|o| o.origin.seq).collect();
    let all: BTreeSet<u64> = origins.union(&outboxed).copied().collect();
    let expected: BTreeSet<u64> = (1..=s.state.origin_seq as u64).collect();
    assert_eq!(all, expected, "origin seqs lost or invented");
    // Applied seq and the outbox move together: an outbox row exists exactly until the entry
    // carrying its last change is applied, and every entry above the applied seq still has
    // its row.
    let applied = s.state.applied_seq as u64;
    assert!(applied <= s.log.len() as u64, "applied past the log head");
    let seq_of: BTreeMap<u64, u64> = s.log.iter().map(|e| (e.change.origin.seq, e.seq.0)).collect();
    for &(first, last) in &s.outbox_rows {
        assert!((first..=last).all(|o| outboxed.contains(&o)), "row {first}..={last} incomplete");
        if let Some(&seq) = seq_of.get(&last) {
            assert!(seq > applied, "row {first}..={last} outlived the apply of seq {seq}");
        }
    }
    for e in s.log.iter().filter(|e| e.seq.0 > applied) {
        let origin = e.change.origin.seq;
        assert!(outboxed.contains(&origin), "unapplied entry {} lost its outbox row", e.seq);
    }
    // Every outbox row has its model change (the row exists at that stamp or a later one).
    let models: BTreeMap<uuid::Uuid, (i64, i64)> =
        s.rows.keys().map(|(u, v, h)| (*u, (*v, *h))).collect();
    for o in &s.outbox {
        let stored = models.get(&o.record).copied();
        let stamp = (o.version as i64, o.hlc.0 as i64);
        assert!(stored.is_some_and(|st| st >= stamp), "outbox row without its change");
    }
    // And the reverse: every model row's current version is in the outbox or the log.
    let written: BTreeSet<(uuid::Uuid, i64, i64)> = s
        .outbox
        .iter()
        .map(|o| (o.record, o.version as i64, o.hlc.0 as i64))
        .chain(
            s.log.iter().map(|e| (e.change.record, e.change.version as i64, e.change.hlc.0 as i64)),
        )
        .collect();
    for key in s.rows.keys() {
        assert!(written.contains(key), "model change without its outbox row or log entry: {key:?}");
    }
}

/// A child commits (single changes, batches, link add/remove) and sequences in a loop and is
/// SIGKILLed at random moments, 60 times, restarting on the same files each time. After every
/// kill: every outbox row has its model change and every model change its outbox row or log
/// entry, no origin seq is lost or reused, nothing is sequenced twice, and the applied seq
/// agrees with the outbox. At the end, recovery empties the outbox, applied seq equals the log
/// head, and replaying the log on a fresh database gives the same content hash.
#[test]
fn sigkill_at_random_moments_loses_nothing() {
    let seed: u64 = std::env::var("TXN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("crash test seed = {seed} (replay with TXN_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut checked = 0;
    let start = Instant::now();
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_SEED, rng.random::<u64>().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // The fault schedule: a random moment, sometimes right at start-up (recovery).
        std::thread::sleep(Duration::from_millis(rng.random_range(1..60)));
        let status = child.try_wait().unwrap();
        assert!(status.is_none(), "round {round}: child exited by itself: {status:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        if let Some(s) = snapshot(dir.path()) {
            check(&s);
            checked += 1;
        }
    }
    assert!(checked >= KILLS / 2, "the child rarely got going: {checked} checks");
    assert!(start.elapsed() < Duration::from_secs(120));

    // Final recovery, as a restarted device would run it.
    let (mut lib, mut log) = open(dir.path());
    let head = lib.sequence(&mut log, Epoch(1)).unwrap();
    let s = snapshot(dir.path()).unwrap();
    check(&s);
    assert!(s.outbox.is_empty(), "recovery left outbox rows");
    assert_eq!(lib.applied_seq(), head);
    assert_eq!(head.0, s.state.origin_seq as u64, "every change sequenced exactly once");
    assert!(head.0 > 100, "too little work done to mean anything: {head}");
    let entries = log.read_after(Seq(0), usize::MAX).unwrap();
    let registry = syncable::Registry::from_inventory().unwrap();
    let mut empty = SyncLogStore::in_memory(LIBRARY).unwrap();
    let mut fresh = Library::open(
        ":memory:".as_ref(),
        &mut empty,
        DeviceId::new_v7(),
        registry,
        Config::default(),
    )
    .unwrap();
    fresh.apply_entries(&entries).unwrap();
    assert_eq!(fresh.content_hash().unwrap(), lib.content_hash().unwrap());
    println!("crash test: {KILLS} kills, {head} changes sequenced");
}
