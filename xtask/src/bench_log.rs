//! `cargo xtask bench log-append`: the sync log's append path against plain diesel inserts of
//! the same rows into a table of the same shape (same unique origin index, no checksum), in one
//! run, with the same pragmas and batch size.
//!
//! Durability is the product's on both sides: WAL with `synchronous = FULL`, so every batch's
//! commit syncs the write-ahead log before it returns (the sync log's promise: an append that
//! returned survives a power loss). Comparing a FULL log against a NORMAL baseline would charge
//! the fsync to the log's own overhead; comparing both at NORMAL would measure a log weaker
//! than the one that ships.

use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use sync_log::{Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, OriginKey, SyncLogStore};

const BATCH: usize = 1_000;
const ROUNDS: usize = 3;

diesel::table! {
    raw_log (seq) {
        seq -> BigInt,
        epoch -> BigInt,
        origin_device -> Binary,
        origin_seq -> BigInt,
        hlc -> BigInt,
        model -> Text,
        record -> Binary,
        change_type -> SmallInt,
        version -> BigInt,
        payload -> Binary,
    }
}

#[derive(Insertable)]
#[diesel(table_name = raw_log)]
struct RawRow<'a> {
    seq: i64,
    epoch: i64,
    origin_device: &'a [u8],
    origin_seq: i64,
    hlc: i64,
    model: &'a str,
    record: &'a [u8],
    change_type: i16,
    version: i64,
    payload: &'a [u8],
}

/// About 200 bytes per entry: 128 bytes of payload plus ids, clock and checksum columns.
fn workload(rows: usize) -> Vec<Change> {
    let device = DeviceId::new_v7();
    (0..rows as u64)
        .map(|i| Change {
            origin: OriginKey { device, seq: i + 1 },
            hlc: Hlc::new(1_700_000_000_000 + i, 0),
            model: "entry".into(),
            record: uuid::Uuid::now_v7(),
            change: ChangeType::Insert,
            version: 1,
            payload: vec![(i % 251) as u8; 128],
        })
        .collect()
}

fn time_log(dir: &std::path::Path, round: usize, changes: &[Change]) -> anyhow::Result<Duration> {
    let path = dir.join(format!("log-{round}.db"));
    let mut log = SyncLogStore::create(&path, LibraryId::new_v7())?;
    let start = Instant::now();
    for batch in changes.chunks(BATCH) {
        log.append(Epoch(1), batch)?;
    }
    Ok(start.elapsed())
}

fn time_raw(dir: &std::path::Path, round: usize, changes: &[Change]) -> anyhow::Result<Duration> {
    let path = dir.join(format!("raw-{round}.db"));
    let mut conn = SqliteConnection::establish(path.to_str().context("path")?)?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE raw_log (
            seq INTEGER PRIMARY KEY NOT NULL, epoch BIGINT NOT NULL, origin_device BLOB NOT NULL,
            origin_seq BIGINT NOT NULL, hlc BIGINT NOT NULL, model TEXT NOT NULL,
            record BLOB NOT NULL, change_type SMALLINT NOT NULL, version BIGINT NOT NULL,
            payload BLOB NOT NULL);
         CREATE UNIQUE INDEX raw_log_origin ON raw_log (origin_device, origin_seq);",
        sync_log::BUSY_TIMEOUT_MS
    ))?;
    let start = Instant::now();
    let mut seq = 0i64;
    for batch in changes.chunks(BATCH) {
        conn.immediate_transaction(|conn| {
            let rows: Vec<RawRow<'_>> = batch
                .iter()
                .map(|c| {
                    seq += 1;
                    RawRow {
                        seq,
                        epoch: 1,
                        origin_device: c.origin.device.0.as_bytes(),
                        origin_seq: c.origin.seq as i64,
                        hlc: c.hlc.0 as i64,
                        model: &c.model,
                        record: c.record.as_bytes(),
                        change_type: c.change.code(),
                        version: c.version as i64,
                        payload: &c.payload,
                    }
                })
                .collect();
            diesel::insert_into(raw_log::table).values(&rows).execute(conn)
        })?;
    }
    Ok(start.elapsed())
}

pub(crate) fn run(rows: usize) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("note: debug build (--debug): these figures mean nothing");
    }
    let changes = workload(rows);
    let dir = tempfile::tempdir()?;
    // Alternate the two sides and keep each side's best round, so neither profits from a warm
    // cache or suffers from a noisy neighbour more than the other.
    let mut best_log = Duration::MAX;
    let mut best_raw = Duration::MAX;
    for round in 0..ROUNDS {
        best_raw = best_raw.min(time_raw(dir.path(), round, &changes)?);
        best_log = best_log.min(time_log(dir.path(), round, &changes)?);
    }
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("bench: rows = {rows} (batches of {BATCH}, best of {ROUNDS} rounds)");
    println!("bench: log_append_rows_per_s = {:.0}", per_s(best_log));
    println!("bench: raw_insert_rows_per_s = {:.0}", per_s(best_raw));
    println!("bench: log_append_overhead = {:.3}", best_log.as_secs_f64() / best_raw.as_secs_f64());
    Ok(())
}
