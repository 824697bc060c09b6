//! Shared helpers for the txn-manager integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sync_log::{Change, Checksum, Epoch, LibraryId, LogEntry, Seq, SyncLogStore};
use txn_manager::{Config, Library, ManualClock};

/// The library every test library belongs to (unless a test says otherwise).
pub const LIBRARY: LibraryId = LibraryId(uuid::Uuid::from_u128(0x11B));

/// A fresh in-memory library of [`LIBRARY`] for `device` with a manual clock at `millis`
/// (opened against an empty log of the same library).
pub fn memory_library(device: sync_log::DeviceId, millis: u64) -> (Library, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(millis));
    let registry = syncable::Registry::from_inventory().unwrap();
    let config = Config { clock: clock.clone(), ..Config::default() };
    let mut log = SyncLogStore::in_memory(LIBRARY).unwrap();
    (Library::open(":memory:".as_ref(), &mut log, device, registry, config).unwrap(), clock)
}

/// Sequences `changes` as a leader would: seqs from 1, chained checksums, epoch 1.
pub fn sequence(changes: &[Change]) -> Vec<LogEntry> {
    sequence_at(changes, Epoch(1))
}

/// Sequences `changes` at `epoch`: seqs from 1, chained checksums.
pub fn sequence_at(changes: &[Change], epoch: Epoch) -> Vec<LogEntry> {
    let mut prev = Checksum::GENESIS;
    changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let seq = Seq(i as u64 + 1);
            let checksum = LogEntry::chain(&prev, seq, epoch, c);
            prev = checksum;
            LogEntry { seq, epoch, change: c.clone(), checksum }
        })
        .collect()
}
