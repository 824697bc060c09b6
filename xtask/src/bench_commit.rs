//! `cargo xtask bench commit`: the write path against plain diesel inserts, in one run, with
//! the same pragmas (`library_models::PRAGMAS`) and the same table on both sides.
//!
//! - `commit_single_per_s`: one change per transaction through `Library::commit`.
//! - `commit_batch_overhead`: batches of 1,000 new tags through `Library::insert_batch` (model
//!   rows + outbox rows + counters) versus plain multi-row diesel inserts of the same rows in
//!   transactions of 1,000.
//! - `apply_entries_per_s`, `apply_overhead`: applying 100,000 sequenced log entries
//!   (decode + LWW upsert + applied seq, batches of 1,000) versus plain multi-row inserts of the
//!   same rows.

use std::path::Path;
use std::time::{Duration, Instant};

use library_models as _;
use library_models::{LibraryModel, Tag};
use sync_log::{
    Change, ChangeType, Checksum, DeviceId, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Seq, Stamp,
    SyncLogStore,
};
use syncable::Syncable;
use txn_manager::{Config, Library, Op};

const SINGLE: usize = 5_000;
const BATCH: usize = 1_000;
const BATCHES: usize = 100;
const APPLY: usize = 100_000;
const ROUNDS: usize = 3;

fn library(dir: &Path, name: &str) -> anyhow::Result<Library> {
    let registry = syncable::Registry::from_inventory()?;
    let mut log = SyncLogStore::in_memory(LibraryId::new_v7())?;
    Ok(Library::open(&dir.join(name), &mut log, DeviceId::new_v7(), registry, Config::default())?)
}

fn tags(n: usize) -> Vec<Tag> {
    (0..n).map(|i| Tag::new(format!("tag number {i}"), Some("#ff8800".into()))).collect()
}

/// Plain diesel: multi-row inserts of `rows` in transactions of [`BATCH`] rows.
fn raw_insert(dir: &Path, name: &str, rows: &[Tag]) -> anyhow::Result<Duration> {
    let mut conn = library_models::open_library(&dir.join(name))?;
    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        conn.immediate_transaction(|c| Tag::insert_all(c, chunk))?;
    }
    Ok(start.elapsed())
}

pub(crate) fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();

    // One change per transaction.
    let mut lib = library(dir, "single.db")?;
    let start = Instant::now();
    for tag in tags(SINGLE) {
        lib.commit(vec![Op::put(tag)])?;
    }
    let single = SINGLE as f64 / start.elapsed().as_secs_f64();

    // Batches of 1,000 through the write path versus plain inserts of the same rows. The two
    // sides alternate and each keeps its best round, so neither profits from a warm cache or
    // suffers from a noisy neighbour more than the other.
    let rows = tags(BATCH * BATCHES);
    let mut t_raw = Duration::MAX;
    let mut t_txn = Duration::MAX;
    for round in 0..ROUNDS {
        t_raw = t_raw.min(raw_insert(dir, &format!("raw_batch{round}.db"), &rows)?);
        let mut lib = library(dir, &format!("txn_batch{round}.db"))?;
        let batches: Vec<Vec<Tag>> = rows.chunks(BATCH).map(<[Tag]>::to_vec).collect();
        let start = Instant::now();
        for batch in batches {
            lib.insert_batch(batch)?;
        }
        t_txn = t_txn.min(start.elapsed());
    }

    // Applying 100,000 sequenced entries versus inserting the same rows.
    let device = DeviceId::new_v7();
    let mut prev = Checksum::GENESIS;
    let mut stamped = Vec::with_capacity(APPLY);
    let mut entries = Vec::with_capacity(APPLY);
    for (i, mut tag) in tags(APPLY).into_iter().enumerate() {
        let stamp = Stamp { version: 1, hlc: Hlc::new(1_700_000_000_000, 0), device };
        tag.set_meta(Stamp { hlc: Hlc(stamp.hlc.0 + i as u64), ..stamp }, false);
        let change = Change {
            origin: OriginKey { device, seq: i as u64 + 1 },
            hlc: tag.stamp().hlc,
            model: Tag::MODEL.into(),
            record: tag.uuid.0,
            change: ChangeType::Insert,
            version: 1,
            payload: tag.encode()?,
        };
        let seq = Seq(i as u64 + 1);
        let checksum = LogEntry::chain(&prev, seq, Epoch(1), &change);
        prev = checksum;
        entries.push(LogEntry { seq, epoch: Epoch(1), change, checksum });
        stamped.push(tag);
    }
    let mut t_raw_apply = Duration::MAX;
    let mut t_apply = Duration::MAX;
    for round in 0..ROUNDS {
        t_raw_apply = t_raw_apply.min(raw_insert(dir, &format!("raw_apply{round}.db"), &stamped)?);
        let mut lib = library(dir, &format!("apply{round}.db"))?;
        let start = Instant::now();
        for chunk in entries.chunks(txn_manager::APPLY_BATCH) {
            lib.apply_entries(chunk)?;
        }
        t_apply = t_apply.min(start.elapsed());
        anyhow::ensure!(lib.applied_seq() == Seq(APPLY as u64), "not everything was applied");
    }

    println!("bench: rounds = {ROUNDS} (best of each side)");
    println!("bench: commit_single_per_s = {single:.0}");
    println!("bench: commit_batch_overhead = {:.2}", t_txn.as_secs_f64() / t_raw.as_secs_f64());
    println!("bench: apply_entries_per_s = {:.0}", APPLY as f64 / t_apply.as_secs_f64());
    println!("bench: apply_overhead = {:.2}", t_apply.as_secs_f64() / t_raw_apply.as_secs_f64());
    eprintln!(
        "detail: batch txn {:?} raw {:?}; apply {:?} raw {:?}",
        t_txn, t_raw, t_apply, t_raw_apply
    );
    Ok(())
}
