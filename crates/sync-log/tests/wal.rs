//! Checkpoints run beside the writer (`sync_log::wal`): the database file takes the WAL's
//! frames long before the writer's own checkpoint would, the WAL stays bounded, and nothing
//! written is lost to them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sync_log::wal::{BACKSTOP_PAGES, CHECKPOINT_AFTER_BYTES};
use sync_log::{Epoch, LibraryId, Seq, SyncLogStore};

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn wal(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// About 48 MB written through the log in rounds of about 6 MB, the writer pausing between
/// rounds as the sync service's writers do: after each round the database file comes to hold
/// it (the pause waits on that, never on time) while the WAL is still far below the writer's
/// own checkpoint (`BACKSTOP_PAGES`) — the checkpointer copied it, the writer did not; the WAL
/// never exceeds the backstop by more than a round; every entry reads back, also after a
/// reopen.
#[test]
fn checkpoints_run_beside_the_writer_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.db");
    let library = LibraryId::new_v7();
    let mut log = SyncLogStore::open_or_create(&path, library).unwrap();
    let backstop = u64::from(BACKSTOP_PAGES) * 4096;
    let (rounds, batches, per_batch, payload) = (8u64, 24u64, 64u64, 4_000usize);
    let round_bytes = batches * per_batch * payload as u64;
    let (mut largest, mut seq) = (0, 0);
    for round in 1..=rounds {
        for _ in 0..batches {
            let changes = common::changes(1, seq + 1..seq + per_batch + 1, payload);
            seq += per_batch;
            log.append(Epoch(1), &changes).unwrap();
            largest = largest.max(len(&wal(&path)));
        }
        let until = Instant::now() + Duration::from_secs(60);
        while len(&path) < round * round_bytes {
            assert!(Instant::now() < until, "round {round} never reached the database file");
            std::thread::sleep(Duration::from_millis(5));
        }
        if round == 1 {
            assert!(len(&wal(&path)) < backstop / 2, "the writer's own checkpoint did it");
        }
    }
    let stats = log.checkpoint_stats().unwrap();
    eprintln!(
        "{stats:?}; largest WAL {largest} bytes: rounds of {round_bytes}, checkpoint after \
         {CHECKPOINT_AFTER_BYTES}, backstop {backstop}"
    );
    assert!(stats.checkpoints > 0 && stats.failed == 0, "{stats:?}");
    assert!(largest < backstop + round_bytes, "the WAL reached {largest} bytes");
    assert_eq!(log.head().seq, Seq(seq));
    drop(log);
    let mut log = SyncLogStore::open_or_create(&path, library).unwrap();
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
