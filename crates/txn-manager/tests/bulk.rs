//! Bulk writes: rows in large transactions without an outbox row each, one bulk log entry that
//! describes them, and that entry applied elsewhere writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use diesel::connection::{Connection, InstrumentationEvent};
use library_models as _;
use library_models::{Entry, Id, LibraryModel, Tag};
use sync_log::{ChangeType, DeviceId, Epoch, Hlc, SyncLogStore};
use syncable::Syncable;
use txn_manager::{BULK_TXN_ROWS, BulkDescription, Library, Op};

/// `n` new entries under one location: a root directory and files below it.
fn entries(n: usize) -> Vec<Entry> {
    let location = Id::new_v7();
    let root = Entry::new(location, None, "root".into(), 1, 0, 1, 1, None);
    let parent = Some(root.uuid);
    let mut all = vec![root];
    all.extend((1..n).map(|i| {
        let hash = Some(i.to_le_bytes().to_vec());
        Entry::new(location, parent, format!("f{i}"), 0, i as i64, 2, 3, hash)
    }));
    all
}

/// The top-level transactions the library's connection ran while `f` ran (savepoints inside
/// them, which diesel uses for some multi-row inserts, are not counted).
#[derive(Debug, Default, PartialEq, Eq)]
struct Transactions {
    begun: usize,
    committed: usize,
    rolled_back: usize,
}

fn count_transactions<T>(
    lib: &mut Library,
    f: impl FnOnce(&mut Library) -> T,
) -> (T, Transactions) {
    let seen = Arc::new(Mutex::new(Transactions::default()));
    let sink = Arc::clone(&seen);
    lib.conn().set_instrumentation(move |event: InstrumentationEvent<'_>| {
        let mut t = sink.lock().unwrap();
        match event {
            InstrumentationEvent::BeginTransaction { depth, .. } if depth.get() == 1 => {
                t.begun += 1;
            }
            InstrumentationEvent::CommitTransaction { depth, .. } if depth.get() == 1 => {
                t.committed += 1;
            }
            InstrumentationEvent::RollbackTransaction { .. } => t.rolled_back += 1,
            _ => {}
        }
    });
    let out = f(lib);
    lib.conn().set_instrumentation(|_: InstrumentationEvent<'_>| {});
    let t = std::mem::take(&mut *seen.lock().unwrap());
    (out, t)
}

/// `bulk_write` of 25,000 entries writes every row (stamped: version 1, this device, strictly
/// increasing HLCs) in ⌈25,000 / BULK_TXN_ROWS⌉ transactions, each of which also writes ONE
/// outbox row: the bulk entry describing exactly its rows (model, count, blake3 over their
/// payloads in write order, their HLC range). Nothing per row reaches the outbox.
#[test]
fn bulk_write_uses_large_transactions_each_with_its_bulk_entry() {
    const N: usize = 25_000;
    const { assert!(N > 2 * BULK_TXN_ROWS, "the test must span several transactions") };
    let device = DeviceId::new_v7();
    let (mut lib, _) = common::memory_library(device, 1_000);
    let records = entries(N);

    let (changes, txns) = count_transactions(&mut lib, |lib| {
        lib.bulk_write(records.clone(), "index /photos").unwrap()
    });
    let chunks = N.div_ceil(BULK_TXN_ROWS);
    assert_eq!(txns, Transactions { begun: chunks, committed: chunks, rolled_back: 0 });
    assert_eq!(changes.len(), chunks);

    // The rows, stamped by the write path.
    let stored: HashMap<Id, Entry> =
        Entry::page(lib.conn(), None, i64::MAX).unwrap().into_iter().map(|e| (e.uuid, e)).collect();
    assert_eq!(stored.len(), N);
    let mut last_hlc = 0;
    for (chunk, change) in records.chunks(BULK_TXN_ROWS).zip(&changes) {
        let mut hash = blake3::Hasher::new();
        let first_hlc = stored[&chunk[0].uuid].hlc;
        for record in chunk {
            let row = &stored[&record.uuid];
            assert_eq!((row.version, row.device_id, row.tombstone), (1, Id(device.0), false));
            assert_eq!(
                (&row.name, row.parent, &row.content_hash),
                (&record.name, record.parent, &record.content_hash)
            );
            assert!(row.hlc > last_hlc, "stamps increase in write order");
            last_hlc = row.hlc;
            let payload = row.encode().unwrap();
            hash.update(&(payload.len() as u64).to_le_bytes());
            hash.update(&payload);
        }
        assert_eq!((change.change, change.model.as_str()), (ChangeType::Bulk, "entry"));
        assert!(change.hlc.0 as i64 > last_hlc, "the bulk entry is stamped after its rows");
        let description: BulkDescription = sync_log::codec::decode(&change.payload).unwrap();
        assert_eq!(
            description,
            BulkDescription {
                model: "entry".into(),
                description: "index /photos".into(),
                count: chunk.len() as u64,
                content_hash: *hash.finalize().as_bytes(),
                first_hlc: Hlc(first_hlc as u64),
                last_hlc: Hlc(last_hlc as u64),
            }
        );
    }

    // The outbox holds the bulk entries and nothing else.
    assert_eq!(lib.outbox(N).unwrap(), changes);
}

/// A bulk write that meets records already written (one through the normal path, with its
/// own outbox row) and ids repeated within the batch skips them — it does not fail — so
/// every row that exists locally is covered by an outbox row (its own change or a bulk
/// entry), and a redo of the same operation writes nothing and logs nothing.
#[test]
fn bulk_write_skips_existing_records_and_every_row_has_an_outbox_row() {
    let (mut lib, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let mut records = entries(BULK_TXN_ROWS + 500);
    let by_hand = records[BULK_TXN_ROWS + 10].clone();
    lib.commit(vec![Op::put(by_hand.clone())]).unwrap();
    records.push(records[3].clone());

    let bulk = lib.bulk_write(records.clone(), "index /docs").unwrap();
    assert_eq!(bulk.len(), 2);
    let counts: Vec<u64> = bulk
        .iter()
        .map(|c| sync_log::codec::decode::<BulkDescription>(&c.payload).unwrap().count)
        .collect();
    assert_eq!(counts, vec![BULK_TXN_ROWS as u64, 499], "the hand-written record is skipped");
    assert_eq!(Entry::page(lib.conn(), None, i64::MAX).unwrap().len(), BULK_TXN_ROWS + 500);
    let outbox = lib.outbox(usize::MAX).unwrap();
    assert_eq!(outbox.len(), 3, "the hand-written change and two bulk entries");

    assert!(lib.bulk_write(records, "index /docs").unwrap().is_empty(), "redo: nothing missing");
    assert_eq!(lib.outbox(usize::MAX).unwrap(), outbox);
}

/// The bulk entry, sequenced by the origin's leader and applied on another device, writes no
/// row there and is counted as bulk (the rows travel by a streamed transfer); ordinary entries
/// around it apply as usual, re-delivery is skipped, and on the origin sequencing it removes
/// the outbox row but keeps the rows.
#[test]
fn bulk_entry_applied_elsewhere_writes_nothing_and_counts_as_bulk() {
    let (mut origin, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let records = entries(1_500);
    origin.bulk_write(records, "index /music").unwrap();
    origin.commit(vec![Op::put(Tag::new("after the bulk".into(), None))]).unwrap();

    let mut log = SyncLogStore::in_memory(common::LIBRARY).unwrap();
    let head = origin.sequence(&mut log, Epoch(1)).unwrap();
    assert_eq!(head.0, 2, "one bulk entry and one tag: nothing per row");
    assert!(origin.outbox(10).unwrap().is_empty());
    assert_eq!(Entry::page(origin.conn(), None, i64::MAX).unwrap().len(), 1_500);

    let entries = log.read_after(sync_log::Seq(0), 10).unwrap();
    assert_eq!(entries[0].change.change, ChangeType::Bulk);
    let (mut other, _) = common::memory_library(DeviceId::new_v7(), 1_000);
    let before = other.content_hash().unwrap();
    let report = other.apply_entries(&entries[..1]).unwrap();
    assert_eq!((report.bulk, report.written, report.unchanged, report.kept), (1, 0, 0, 0));
    assert_eq!(other.content_hash().unwrap(), before, "the bulk entry wrote nothing");
    assert!(Entry::page(other.conn(), None, 1).unwrap().is_empty());

    let report = other.apply_entries(&entries).unwrap();
    assert_eq!((report.skipped, report.bulk, report.written), (1, 0, 1));
    assert_eq!(other.applied_seq(), head);
    assert_eq!(other.pending_count().unwrap(), 0, "a bulk entry is never kept as pending");
}
