//! Checkpoints of a WAL-mode SQLite database, run off its writer's path.
//!
//! SQLite's automatic checkpoint runs *inside* the commit that crosses the threshold (1,000
//! pages by default): that commit copies the whole WAL into the database file and syncs it,
//! which put a 5–20 ms stall on one commit in a few hundred — the tail of the sync lag. A
//! [`Checkpointer`] instead runs `PRAGMA wal_checkpoint(PASSIVE)` on a connection and thread
//! of its own whenever the WAL has grown past [`CHECKPOINT_AFTER_BYTES`]. A passive checkpoint
//! waits for nobody: the writer keeps committing while the WAL is copied. (`RESTART` or
//! `TRUNCATE`, which would also start the WAL over, hold the writer's commits while they run:
//! measured with `cargo xtask bench lag`, they brought the stalls back.)
//!
//! The writer keeps its automatic checkpoint as a backstop ([`WRITER_PRAGMAS`],
//! [`BACKSTOP_PAGES`], about 40 MB): the WAL never grows past it, and when the writer reaches
//! it the passive copies have done nearly all the work, so that checkpoint — which starts the
//! WAL over — is short. A checkpointer that fails changes only that: the writer then does all
//! the copying, as SQLite does by default.
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

/// The WAL size above which the checkpointer copies it into the database (about SQLite's own
/// default of 1,000 pages).
pub const CHECKPOINT_AFTER_BYTES: u64 = 4 << 20;
/// The writer's automatic checkpoint, a backstop ten times further out.
pub const BACKSTOP_PAGES: u32 = 10_000;
/// What the writing connection sets when a [`Checkpointer`] runs beside it: the backstop, and
/// a WAL file cut back to [`CHECKPOINT_AFTER_BYTES`] whenever it is started over.
pub const WRITER_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 10000; PRAGMA journal_size_limit = 4194304;";
/// How often the checkpointer looks at the WAL's size.
const POLL: Duration = Duration::from_millis(25);

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
    /// Checkpoints run.
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
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(POLL);
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        if size <= CHECKPOINT_AFTER_BYTES || stop.load(Ordering::SeqCst) {
            continue;
        }
        counts.checkpoints.fetch_add(1, Ordering::SeqCst);
        match checkpoint(&mut conn) {
            Ok(caught_up) => {
                if caught_up {
                    counts.caught_up.fetch_add(1, Ordering::SeqCst);
                }
                debug!(wal = %wal.display(), bytes = size, caught_up, "checkpointed");
            }
            // The writer's backstop keeps the WAL bounded meanwhile.
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::SeqCst);
                warn!(wal = %wal.display(), error = %e, "checkpoint failed");
            }
        }
    }
}

/// One passive checkpoint; whether it copied every frame the WAL held when it started.
fn checkpoint(conn: &mut SqliteConnection) -> QueryResult<bool> {
    // `load` steps the statement to its end (it does not stay open holding a read lock).
    let rows: Vec<CheckpointRow> =
        diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").load(conn)?;
    let row = rows.into_iter().next().ok_or(diesel::result::Error::NotFound)?;
    Ok(row.busy == 0 && row.checkpointed == row.log)
}
