//! Checkpoints of a WAL-mode SQLite database, run off its writer's path, and a WAL file that is
//! reused in place.
//!
//! SQLite's automatic checkpoint runs *inside* the commit that crosses the threshold (1,000
//! pages by default): that commit copies the whole WAL into the database file and syncs it,
//! which put a 5–20 ms stall on one commit in a few hundred — the tail of the sync lag. A
//! [`Checkpointer`] instead runs `PRAGMA wal_checkpoint(PASSIVE)` on a connection and thread
//! of its own every [`POLL`] while the WAL is being written. A passive checkpoint waits for
//! nobody: the writer keeps committing while the WAL is copied. (`RESTART` or `TRUNCATE`
//! hold the writer's commits while they run: measured with `cargo xtask bench lag`, they
//! brought the stalls back.)
//!
//! The writer keeps its automatic checkpoint as a backstop ([`BACKSTOP_PAGES`], SQLite's
//! default): when a commit crosses it, the passive copies have done nearly all the work, so
//! that checkpoint is short, and it lets the WAL start over. A checkpointer that fails changes
//! only that: the writer then does all the copying, as SQLite does by default.
//!
//! **The WAL file is reused, not regrown.** When the WAL starts over, SQLite writes its frames
//! from the beginning of the file again and cuts the file back to `journal_size_limit`.
//! [`WRITER_PRAGMAS`] sets that limit to [`WAL_FILE_LIMIT`], above what one cycle up to the
//! backstop fills, so after its first cycle every commit overwrites blocks the file already
//! has. For a database whose commits sync (the log, `synchronous = FULL`) that is most of a
//! commit's cost: on the development VM's disk an fsync after overwriting a block took
//! 0.23 ms at the median and 2.8 ms at p99, one after extending the file — which must also
//! commit the file's new size — 0.69 ms and 5.5 ms. (The earlier setting, a 40 MB backstop and
//! a WAL cut back to 4 MB at each start-over, had nine commits in ten extend the file.)
//!
//! Durability is unchanged: a checkpoint only copies committed frames, and the checkpointer's
//! connection uses `synchronous = FULL` (the database file is synced before the WAL is reused).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use tracing::{debug, warn};

use crate::Error;

/// The writer's automatic checkpoint, in WAL frames (pages): SQLite's default, kept as a
/// backstop behind the [`Checkpointer`].
pub const BACKSTOP_PAGES: u32 = 1_000;
/// The size the WAL file is cut back to when it starts over: twice what a cycle up to
/// [`BACKSTOP_PAGES`] of 4 KiB fills, so the file keeps the blocks it has.
pub const WAL_FILE_LIMIT: u64 = 8 << 20;
/// What the writing connection sets when a [`Checkpointer`] runs beside it:
/// `wal_autocheckpoint` = [`BACKSTOP_PAGES`] and `journal_size_limit` = [`WAL_FILE_LIMIT`].
pub const WRITER_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 1000; PRAGMA journal_size_limit = 8388608;";
/// How often the checkpointer looks at the WAL.
pub const POLL: Duration = Duration::from_millis(25);

/// Runs passive checkpoints of one database file on a thread of its own, until dropped (the
/// drop waits for a checkpoint in progress, so the files are quiet once it returns).
#[derive(Debug)]
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    thread: Option<JoinHandle<()>>,
}

/// What a [`Checkpointer`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointStats {
    /// Checkpoints that found the WAL changed since the previous one.
    pub checkpoints: u64,
    /// Of those, the ones that copied every frame the WAL held when they started.
    pub caught_up: u64,
    /// Checkpoints that failed (the writer's backstop keeps the WAL bounded).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct Counts {
    checkpoints: AtomicU64,
    caught_up: AtomicU64,
    failed: AtomicU64,
}

#[derive(QueryableByName)]
struct CheckpointRow {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    checkpointed: i32,
}

impl Checkpointer {
    /// Starts checkpointing `path` (a WAL-mode database that exists). The caller's writing
    /// connection should set [`WRITER_PRAGMAS`].
    pub fn start(path: &Path) -> Result<Self, Error> {
        let url = path.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: path is not UTF-8", path.display()))
        })?;
        let mut conn = SqliteConnection::establish(url)
            .map_err(|e| Error::Corrupt { path: path.to_owned(), detail: e.to_string() })?;
        conn.batch_execute("PRAGMA busy_timeout = 1000; PRAGMA synchronous = FULL;")?;
        let wal = wal_path(path);
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn({
                let (stop, counts) = (Arc::clone(&stop), Arc::clone(&counts));
                move || run(conn, &wal, &stop, &counts)
            })
            .map_err(|e| Error::Task(format!("starting the checkpointer: {e}")))?;
        Ok(Self { stop, counts, thread: Some(thread) })
    }

    /// What it has done so far.
    pub fn stats(&self) -> CheckpointStats {
        CheckpointStats {
            checkpoints: self.counts.checkpoints.load(Ordering::SeqCst),
            caught_up: self.counts.caught_up.load(Ordering::SeqCst),
            failed: self.counts.failed.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn run(mut conn: SqliteConnection, wal: &Path, stop: &AtomicBool, counts: &Counts) {
    // The WAL's (size, modified) when last checkpointed, and whether that checkpoint found it
    // changed: a write within the same tick of the file's clock leaves the stamp as it was, so
    // a checkpoint that found work is followed by one more whatever the stamp says.
    let (mut seen, mut moved) = (None, false);
    // (frames in the WAL, frames copied) as the last checkpoint reported them.
    let mut last = (-1, -1);
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(POLL);
        let stamp = std::fs::metadata(wal)
            .ok()
            .filter(|m| m.len() > 0)
            .map(|m| (m.len(), m.modified().ok()));
        if stamp.is_none() || (stamp == seen && !moved) || stop.load(Ordering::SeqCst) {
            continue;
        }
        seen = stamp;
        match checkpoint(&mut conn) {
            Ok(row) => {
                let now = (row.log, row.checkpointed);
                moved = now != last;
                last = now;
                if moved {
                    counts.checkpoints.fetch_add(1, Ordering::SeqCst);
                    let caught_up = row.busy == 0 && row.checkpointed == row.log;
                    if caught_up {
                        counts.caught_up.fetch_add(1, Ordering::SeqCst);
                    }
                    debug!(wal = %wal.display(), frames = row.log, caught_up, "checkpointed");
                }
            }
            // The writer's backstop keeps the WAL bounded meanwhile.
            Err(e) => {
                moved = true;
                counts.failed.fetch_add(1, Ordering::SeqCst);
                warn!(wal = %wal.display(), error = %e, "checkpoint failed");
            }
        }
    }
}

/// One passive checkpoint.
fn checkpoint(conn: &mut SqliteConnection) -> QueryResult<CheckpointRow> {
    // `load` steps the statement to its end (it does not stay open holding a read lock).
    let rows: Vec<CheckpointRow> =
        diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").load(conn)?;
    rows.into_iter().next().ok_or(diesel::result::Error::NotFound)
}
