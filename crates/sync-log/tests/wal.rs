//! Checkpoints run beside the writer (`sync_log::wal`): the database file takes the WAL's
//! frames long before the writer's own checkpoint would, the WAL file is reused in place and
//! stays bounded, and nothing written is lost to them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sync_log::wal::{BACKSTOP_PAGES, POLL, WAL_FILE_LIMIT};
use sync_log::{Epoch, LibraryId, Seq, SyncLogStore};

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn wal(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Writes `batches` appends of `per_batch` entries of `payload` bytes after `seq`, noting the
/// largest size the WAL file reaches; returns the new last seq.
fn write(
    log: &mut SyncLogStore,
    path: &Path,
    seq: u64,
    (batches, per_batch, payload): (u64, u64, usize),
    largest: &mut u64,
) -> u64 {
    let mut seq = seq;
    for _ in 0..batches {
        let changes = common::changes(1, seq + 1..seq + per_batch + 1, payload);
        seq += per_batch;
        log.append(Epoch(1), &changes).unwrap();
        *largest = (*largest).max(len(&wal(path)));
    }
    seq
}

/// Every entry up to `seq` reads back, each with its payload, also after a reopen.
fn reads_back(log: SyncLogStore, path: &Path, seq: u64, payload: usize) {
    let library = log.library();
    assert_eq!(log.head().seq, Seq(seq));
    drop(log);
    let mut log = SyncLogStore::open_or_create(path, library).unwrap();
    assert_eq!(log.head().seq, Seq(seq));
    let (mut after, mut read) = (Seq::ZERO, 0);
    loop {
        let page = log.read_after(after, 1_000).unwrap();
        let Some(last) = page.last() else { break };
        assert!(page.iter().all(|e| e.change.payload.len() == payload));
        read += page.len() as u64;
        after = last.seq;
    }
    assert_eq!(read, seq);
}

/// About 16 MB written through the log in rounds of about 400 kB, the writer pausing between
/// rounds as the sync service's writers do: after each round the database file comes to hold
/// it (the pause waits on that, never on time), and after the first the WAL is still far below
/// the writer's own checkpoint (`BACKSTOP_PAGES`) — the checkpointer copied it, the writer did
/// not. Every entry reads back, also after a reopen.
#[test]
fn checkpoints_run_beside_the_writer_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let mut log = SyncLogStore::open_or_create(&path, LibraryId::new_v7()).unwrap();
    let backstop = u64::from(BACKSTOP_PAGES) * 4096;
    let (rounds, batches, per_batch, payload) = (40u64, 25u64, 16u64, 1_000usize);
    let round_bytes = batches * per_batch * payload as u64;
    let (mut largest, mut seq) = (0, 0);
    for round in 1..=rounds {
        seq = write(&mut log, &path, seq, (batches, per_batch, payload), &mut largest);
        let until = Instant::now() + Duration::from_secs(60);
        while len(&path) < round * round_bytes {
            assert!(Instant::now() < until, "round {round} never reached the database file");
            std::thread::sleep(POLL / 5);
        }
        if round == 1 {
            assert!(len(&wal(&path)) < backstop / 2, "the writer's own checkpoint did it");
        }
    }
    let stats = log.checkpoint_stats().unwrap();
    eprintln!("{stats:?}; largest WAL {largest} bytes: rounds of {round_bytes}");
    assert!(stats.checkpoints > 0 && stats.failed == 0, "{stats:?}");
    assert!(largest <= WAL_FILE_LIMIT, "the WAL reached {largest} bytes");
    reads_back(log, &path, seq, payload);
}

/// A writer that never pauses, 48 MB through the log: the WAL file is reused in place — it
/// stays within `WAL_FILE_LIMIT` and is never cut back, so once it has grown through its first
/// cycle, commits overwrite blocks it has instead of extending it (an fsync after extending a
/// file must also commit its new size). Nothing is lost.
#[test]
fn a_writer_that_never_pauses_reuses_the_wal_file_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let mut log = SyncLogStore::open_or_create(&path, LibraryId::new_v7()).unwrap();
    let (batches, per_batch, payload) = (3_000u64, 4u64, 4_000usize);
    let (mut seq, mut largest, mut cut_back) = (0, 0, None);
    for _ in 0..batches {
        let before = len(&wal(&path));
        seq = write(&mut log, &path, seq, (1, per_batch, payload), &mut largest);
        let after = len(&wal(&path));
        if after < before {
            cut_back = cut_back.or(Some((before, after)));
        }
    }
    let written = batches * per_batch * payload as u64;
    eprintln!("{:?}; largest WAL {largest} bytes of {written}", log.checkpoint_stats());
    assert_eq!(cut_back, None, "the WAL file was cut back (bytes before, after)");
    assert!(largest <= WAL_FILE_LIMIT, "the WAL reached {largest} bytes");
    assert!(written > 4 * largest, "{written} bytes never started the WAL over");
    reads_back(log, &path, seq, payload);
}
