//! The SQLite-backed store ([`SyncLogStore`], blocking) and its async handle ([`SyncLog`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use diesel::connection::{DefaultLoadingMode, SimpleConnection};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use uuid::Uuid;

use crate::{
    Change, ChangeType, Checksum, DeviceId, Epoch, Error, Hlc, LibraryId, LogEntry, OriginKey,
    Position, Seq,
};

/// The schema version this build writes and the highest it can open.
///
/// Version 2 added the table of pruned origin keys (`sync_pruned_origin`); opening a version 1
/// file migrates it.
pub const SCHEMA_VERSION: u32 = 2;

/// How long a connection waits for a lock held by another connection before
/// [`Error::Busy`].
pub const BUSY_TIMEOUT_MS: u32 = 5_000;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// Rows per multi-row `INSERT` (11 bound columns each stays well under SQLite's variable limit).
const INSERT_CHUNK: usize = 1_000;

mod schema {
    diesel::table! {
        sync_log (seq) {
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
            checksum -> Binary,
        }
    }

    diesel::table! {
        sync_meta (key) {
            key -> Text,
            value -> Text,
        }
    }

    diesel::table! {
        sync_pruned_origin (origin_device, first_seq) {
            origin_device -> Binary,
            first_seq -> BigInt,
            last_seq -> BigInt,
        }
    }
}

use schema::{sync_log, sync_meta, sync_pruned_origin};

/// A row as stored. Integers are SQLite's signed 64-bit; `u64` values round-trip bit for bit.
#[derive(Queryable, Selectable)]
#[diesel(table_name = sync_log)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
struct Row {
    seq: i64,
    epoch: i64,
    origin_device: Vec<u8>,
    origin_seq: i64,
    hlc: i64,
    model: String,
    record: Vec<u8>,
    change_type: i16,
    version: i64,
    payload: Vec<u8>,
    checksum: Vec<u8>,
}

/// A row to insert, borrowing the change it comes from.
#[derive(Insertable)]
#[diesel(table_name = sync_log)]
struct NewRow<'a> {
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
    checksum: &'a [u8],
}

// Sequence numbers, epochs, versions and clocks are u64 in memory and i64 in SQLite; the casts
// below reinterpret the bits, which round-trips exactly.
fn to_db(v: u64) -> i64 {
    v as i64
}
fn from_db(v: i64) -> u64 {
    v as u64
}

/// The outcome of appending one change with [`SyncLogStore::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The change's global sequence number.
    ///
    /// When the origin key's entry was pruned (see [`SyncLogStore::prune_below`]) the exact
    /// seq is gone: `seq` is then the floor's seq, an upper bound of the real one.
    pub seq: Seq,
    /// `false` when the origin key was already sequenced (in the log, pruned from it, or
    /// earlier in the same batch): nothing was written and `seq` is the existing one.
    pub new: bool,
}

/// The sync log of one library, stored in one SQLite file. Blocking: call it from a blocking
/// context (a dedicated thread or `spawn_blocking`), or use the async [`SyncLog`] handle.
///
/// # Durability
///
/// Every write ([`append`](Self::append), [`append_sequenced`](Self::append_sequenced),
/// [`truncate_after`](Self::truncate_after), [`prune_below`](Self::prune_below)) is one SQLite
/// transaction on a WAL file with `synchronous = FULL`: the write-ahead log is synced before the
/// call returns. **When `append` returns, the entries survive a power loss**, so "the sync log
/// is written before the library database" holds on disk, not only in the page cache. A call
/// that fails wrote nothing, and the store's head and floor are those of the table.
///
/// # Files
///
/// [`open`](Self::open) and [`open_or_create`](Self::open_or_create) refuse any SQLite file
/// that holds tables of another database (a library database at a swapped path, say) with
/// [`Error::NotASyncLog`], before writing anything to it.
///
/// ```
/// use sync_log::{Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, OriginKey, Seq, SyncLogStore};
///
/// let dir = tempfile::tempdir()?;
/// let library = LibraryId::new_v7();
/// let mut log = SyncLogStore::create(&dir.path().join("sync.db"), library)?;
/// let change = Change {
///     origin: OriginKey { device: DeviceId::new_v7(), seq: 1 },
///     hlc: Hlc::new(1_700_000_000_000, 0),
///     model: "tag".into(),
///     record: uuid::Uuid::now_v7(),
///     change: ChangeType::Insert,
///     version: 1,
///     payload: vec![1, 2, 3],
/// };
/// let appended = log.append(Epoch(1), &[change.clone()])?;
/// assert_eq!(appended[0].seq, Seq(1));
/// // Submitting the same origin key again is a no-op that returns the existing seq.
/// assert!(!log.append(Epoch(1), &[change])?[0].new);
/// assert_eq!(log.read_after(Seq(0), 100)?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SyncLogStore {
    conn: SqliteConnection,
    path: PathBuf,
    library: LibraryId,
    /// Cache of the table's last position, refreshed by every write. Writes never trust it:
    /// each reads the head inside its own transaction.
    head: Position,
    /// Cache of the floor, like `head`.
    floor: Position,
    /// Checkpoints off the write path (none in memory).
    checkpointer: Option<crate::wal::Checkpointer>,
}

impl std::fmt::Debug for SyncLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncLogStore")
            .field("path", &self.path)
            .field("library", &self.library)
            .field("head", &self.head)
            .field("floor", &self.floor)
            .finish_non_exhaustive()
    }
}

impl SyncLogStore {
    /// Creates a new sync log for `library` at `path`. Fails if a non-empty file is there.
    pub fn create(path: &Path, library: LibraryId) -> Result<Self, Error> {
        if path.metadata().is_ok_and(|m| m.len() > 0) {
            return Err(Error::InvalidArgument(format!(
                "{}: a file already exists; open it instead",
                path.display()
            )));
        }
        Self::open_inner(path, library, true)
    }

    /// Opens the existing sync log of `library` at `path`.
    ///
    /// Errors: [`Error::Missing`] when there is no file, [`Error::NotASyncLog`] when it is
    /// another SQLite database (it is left untouched), [`Error::ForeignLibrary`] when it
    /// belongs to another library, [`Error::NewerSchema`] when a newer build wrote it, and
    /// [`Error::Corrupt`] when it is not a sync log or fails SQLite's `quick_check` or the
    /// chain check of its last entry. A file of an older schema version is migrated.
    pub fn open(path: &Path, library: LibraryId) -> Result<Self, Error> {
        if !path.exists() {
            return Err(Error::Missing(path.to_owned()));
        }
        Self::open_inner(path, library, false)
    }

    /// Opens the log at `path`, creating it when there is no file, an empty one, or an SQLite
    /// file without any table (what a crash during creation can leave: creation itself is one
    /// transaction). A file with any other table is refused like in [`SyncLogStore::open`].
    pub fn open_or_create(path: &Path, library: LibraryId) -> Result<Self, Error> {
        Self::open_inner(path, library, true)
    }

    /// A log that lives in memory only: the stand-in for tests and simulations. It behaves
    /// exactly like a file-backed log except that it does not survive being dropped.
    pub fn in_memory(library: LibraryId) -> Result<Self, Error> {
        Self::open_inner(Path::new(":memory:"), library, true)
    }

    fn open_inner(path: &Path, library: LibraryId, create: bool) -> Result<Self, Error> {
        let corrupt = |e: Error| corrupt_or(e, path);
        let url = path.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: path is not UTF-8", path.display()))
        })?;
        let mut conn = SqliteConnection::establish(url)
            .map_err(|e| Error::Corrupt { path: path.to_owned(), detail: e.to_string() })?;
        // Per-connection settings only: nothing is written to the file before it is known to
        // be ours (or empty). `synchronous = FULL` syncs the WAL at every commit (durability).
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA synchronous = FULL;"
        ))
        .map_err(|e| corrupt(e.into()))?;

        let tables = table_names(&mut conn).map_err(|e| corrupt(e.into()))?;
        let has_meta = tables.iter().any(|t| t == "sync_meta");
        let file_version: Option<u32> = if has_meta {
            read_meta(&mut conn, "schema_version").ok().flatten().and_then(|v| v.parse().ok())
        } else {
            None
        };
        // A newer build may have added tables this one does not know: check the version first.
        if let Some(file) = file_version.filter(|&v| v > SCHEMA_VERSION) {
            return Err(Error::NewerSchema {
                path: path.to_owned(),
                file,
                supported: SCHEMA_VERSION,
            });
        }
        let foreign: Vec<String> = tables
            .iter()
            .filter(|t| !has_meta || !OUR_TABLES.contains(&t.as_str()))
            .cloned()
            .collect();
        if !foreign.is_empty() {
            tracing::warn!(path = %path.display(), tables = ?foreign, "refusing to open another database as a sync log");
            return Err(Error::NotASyncLog { path: path.to_owned(), tables: foreign });
        }
        if has_meta {
            if file_version.is_none() {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    detail: "schema_version missing".into(),
                });
            }
            if !tables.iter().any(|t| t == "sync_log") {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    detail: "sync_log table missing".into(),
                });
            }
            let found = read_meta(&mut conn, "library_id")
                .map_err(&corrupt)?
                .and_then(|v| Uuid::parse_str(&v).ok())
                .map(LibraryId)
                .ok_or_else(|| Error::Corrupt {
                    path: path.to_owned(),
                    detail: "library_id missing".into(),
                })?;
            if found != library {
                return Err(Error::ForeignLibrary {
                    path: path.to_owned(),
                    expected: library,
                    found,
                });
            }
            check_integrity(&mut conn, path)?;
        } else if !create {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                detail: "not a sync log (no sync_meta table)".into(),
            });
        }

        // journal_mode sticks to the file: set only now that the file is ours or empty.
        conn.batch_execute("PRAGMA journal_mode = WAL;").map_err(|e| corrupt(e.into()))?;

        // Migrations and the library id in ONE transaction: a crash while creating leaves a file
        // without tables (which `open_or_create` creates again), never a half-made log.
        conn.immediate_transaction(|conn| {
            conn.run_pending_migrations(MIGRATIONS).map_err(|e| Error::Migration(e.to_string()))?;
            if !has_meta {
                diesel::insert_into(sync_meta::table)
                    .values((
                        sync_meta::key.eq("library_id"),
                        sync_meta::value.eq(library.0.to_string()),
                    ))
                    .execute(conn)?;
            }
            Ok::<_, Error>(())
        })
        .map_err(&corrupt)?;

        let (floor, head) = load_verified_state(&mut conn).map_err(&corrupt)?;
        let checkpointer = if path == Path::new(":memory:") {
            None
        } else {
            conn.batch_execute(crate::wal::WRITER_PRAGMAS).map_err(|e| corrupt(e.into()))?;
            Some(crate::wal::Checkpointer::start(path)?)
        };
        Ok(Self { conn, path: path.to_owned(), library, head, floor, checkpointer })
    }

    /// What the background checkpointer has done (`None` in memory): see [`crate::wal`].
    pub fn checkpoint_stats(&self) -> Option<crate::wal::CheckpointStats> {
        self.checkpointer.as_ref().map(crate::wal::Checkpointer::stats)
    }

    /// The library this log belongs to.
    pub fn library(&self) -> LibraryId {
        self.library
    }

    /// The file behind this log (`:memory:` for [`SyncLogStore::in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The position of the last entry: `(Seq(0), GENESIS)` for an empty log. Pruning does not
    /// move the head.
    pub fn head(&self) -> Position {
        self.head
    }

    /// The position up to which entries were pruned (`Seq(0)` when nothing was pruned).
    pub fn floor(&self) -> Position {
        self.floor
    }

    /// Sequences `changes` at `epoch` in one transaction: consecutive seqs after the head,
    /// chained checksums. Durable when it returns (see [Durability](Self#durability)).
    ///
    /// A change whose origin key was already sequenced is not written again; it is reported
    /// with `new: false` and its existing seq. "Already sequenced" means: in the log, earlier in
    /// the same batch (an identical repeat), or pruned from the log (then the seq reported is
    /// the floor's, see [`Appended::seq`]). An origin key already in the log or earlier in the
    /// batch with a *different* change is [`Error::OriginConflict`] and nothing of the batch is
    /// written (a pruned change cannot be compared: its key is only known to be used). A change
    /// with an [`Hlc`] above [`Hlc::MAX`] or an origin seq above `i64::MAX` is
    /// [`Error::InvalidArgument`].
    pub fn append(&mut self, epoch: Epoch, changes: &[Change]) -> Result<Vec<Appended>, Error> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        for change in changes {
            validate_change(change)?;
        }
        let result = self.conn.immediate_transaction(|conn| {
            // The head and floor come from the table, never from the cache.
            let (floor, start) = read_state(conn)?;
            let pruned = PrunedOrigins::load(conn, changes)?;
            // The fast path plans every change as new and lets the unique origin index find
            // re-submissions. It runs in a savepoint: rows it wrote before the index refused
            // one are rolled back before the slow path plans again from the same head.
            let fast = conn.transaction(|conn| {
                plan_and_insert(conn, start, floor, epoch, changes, &pruned, false)
            });
            let (out, head) = match fast {
                Err(Error::Database(DieselError::DatabaseError(
                    DatabaseErrorKind::UniqueViolation,
                    _,
                ))) => plan_and_insert(conn, start, floor, epoch, changes, &pruned, true)?,
                other => other?,
            };
            Ok::<_, Error>((out, floor, head))
        });
        match result {
            Ok((out, floor, head)) => {
                self.floor = floor;
                self.head = head;
                Ok(out)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Appends entries that a leader already sequenced (a follower's copy of the global log),
    /// in one transaction. Durable when it returns (see [Durability](Self#durability)).
    ///
    /// Re-delivery is harmless: an entry at or below the head that equals ours is skipped; one
    /// below the floor is skipped unchecked (it was pruned here), one at the floor must carry
    /// the floor's checksum. An entry that does not follow the head is [`Error::Gap`]; one that
    /// differs from ours at its seq (in the log, or earlier in the same batch) or does not
    /// chain from the head is [`Error::Diverged`]. A seq of 0 or above `i64::MAX`, or an origin
    /// seq above `i64::MAX`, is [`Error::InvalidArgument`]. On error nothing of the batch is
    /// written.
    pub fn append_sequenced(&mut self, entries: &[LogEntry]) -> Result<Position, Error> {
        for entry in entries {
            validate_entry(entry)?;
        }
        let result = self.conn.immediate_transaction(|conn| {
            let (floor, stored) = read_state(conn)?;
            let mut head = stored;
            let mut fresh: Vec<&LogEntry> = Vec::with_capacity(entries.len());
            for entry in entries {
                if entry.seq <= head.seq {
                    if entry.seq > stored.seq {
                        // Earlier in this batch: it must be the very same entry.
                        let at = usize::try_from(entry.seq.0 - stored.seq.0 - 1)
                            .map_err(|_| Error::InvalidArgument("seq out of range".into()))?;
                        let prev = at.checked_sub(1).map_or(stored.checksum, |i| fresh[i].checksum);
                        check_same(fresh[at], entry, || Ok(prev))?;
                    } else if entry.seq < floor.seq {
                        // Pruned here: nothing left to compare with.
                    } else if entry.seq == floor.seq {
                        if entry.checksum != floor.checksum {
                            return Err(Error::Diverged {
                                seq: entry.seq,
                                ours: floor.checksum,
                                theirs: entry.checksum,
                            });
                        }
                    } else {
                        let ours = entry_at(conn, entry.seq)?;
                        check_same(&ours, entry, || {
                            checksum_in(conn, floor, stored, Seq(entry.seq.0 - 1))?
                                .ok_or_else(|| Error::Decode("no checksum below an entry".into()))
                        })?;
                    }
                    continue;
                }
                if entry.seq != head.seq.next() {
                    return Err(Error::Gap { expected: head.seq.next(), got: entry.seq });
                }
                let ours = LogEntry::chain(&head.checksum, entry.seq, entry.epoch, &entry.change);
                if ours != entry.checksum {
                    return Err(Error::Diverged { seq: entry.seq, ours, theirs: entry.checksum });
                }
                head = entry.position();
                fresh.push(entry);
            }
            insert_rows(
                conn,
                fresh.iter().map(|e| new_row(e.seq, e.epoch, &e.change, &e.checksum.0)),
            )?;
            Ok::<_, Error>((floor, head))
        });
        match result {
            Ok((floor, head)) => {
                self.floor = floor;
                self.head = head;
                Ok(head)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Up to `limit` entries with a seq greater than `after`, in order.
    ///
    /// [`Error::Pruned`] when entries right after `after` were pruned: the reader needs a
    /// snapshot first.
    pub fn read_after(&mut self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, Error> {
        if after < self.floor.seq {
            return Err(Error::Pruned { requested: after, floor: self.floor.seq });
        }
        // Streamed in seq order and cut after `limit` rows: a bound `LIMIT` would make SQLite
        // re-prepare the statement on every call ("SQLite habits" in docs/ARCHITECTURE.md).
        let rows: Vec<Row> = sync_log::table
            .filter(sync_log::seq.gt(to_db_seq(after)))
            .order(sync_log::seq.asc())
            .select(Row::as_select())
            .load_iter::<Row, DefaultLoadingMode>(&mut self.conn)
            .and_then(|rows| rows.take(limit).collect())
            .map_err(|e| self.classify(e.into()))?;
        rows.iter().map(entry_from_row).collect::<Result<_, _>>().map_err(|e| self.classify(e))
    }

    /// The running checksum at `seq`: `Some(GENESIS)` for `Seq(0)`, `None` past the head,
    /// [`Error::Pruned`] below the floor.
    pub fn checksum_at(&mut self, seq: Seq) -> Result<Option<Checksum>, Error> {
        checksum_in(&mut self.conn, self.floor, self.head, seq)
            .map_err(|e| corrupt_or(e, &self.path))
    }

    /// The seq at which `origin` was sequenced, if it is in the log (not pruned).
    pub fn find_origin(&mut self, origin: &OriginKey) -> Result<Option<Seq>, Error> {
        find_origin(&mut self.conn, origin).map_err(|e| self.classify(e))
    }

    /// The highest origin seq of `device` that this log holds or ever pruned; `None` when the
    /// log never sequenced a change of `device`.
    ///
    /// A device that lost its own counter (a library database restored from a backup or
    /// re-created) continues after this value, so it never reuses an origin key the log knows.
    pub fn max_origin_seq(&mut self, device: DeviceId) -> Result<Option<u64>, Error> {
        max_origin_seq(&mut self.conn, device).map_err(|e| self.classify(e))
    }

    /// Deletes every entry with a seq below `seq`; the floor moves to `seq - 1`. Reading after
    /// a seq below the new floor then gives [`Error::Pruned`]. Pruning at or below the current
    /// floor does nothing; pruning past `head + 1` is an error.
    ///
    /// The origin keys of the pruned entries are remembered (per device, as ranges of origin
    /// seqs): [`append`](Self::append) never sequences them again, and
    /// [`max_origin_seq`](Self::max_origin_seq) still counts them. Durable when it returns.
    pub fn prune_below(&mut self, seq: Seq) -> Result<(), Error> {
        let result = self.conn.immediate_transaction(|conn| {
            let (floor, head) = read_state(conn)?;
            if seq.0 > head.seq.0.saturating_add(1) {
                return Err(Error::InvalidArgument(format!(
                    "cannot prune below {seq}: the head is {}",
                    head.seq
                )));
            }
            let new_floor_seq = Seq(seq.0.saturating_sub(1));
            if new_floor_seq <= floor.seq {
                return Ok((floor, head));
            }
            let checksum = checksum_in(conn, floor, head, new_floor_seq)?
                .ok_or_else(|| Error::Decode(format!("no checksum at {new_floor_seq}")))?;
            let new_floor = Position { seq: new_floor_seq, checksum };
            remember_pruned_origins(conn, new_floor.seq)?;
            diesel::delete(sync_log::table.filter(sync_log::seq.le(to_db_seq(new_floor.seq))))
                .execute(conn)?;
            write_meta(conn, "floor_seq", &new_floor.seq.0.to_string())?;
            write_meta(conn, "floor_checksum", &hex(&new_floor.checksum.0))?;
            Ok::<_, Error>((new_floor, head))
        });
        match result {
            Ok((floor, head)) => {
                self.floor = floor;
                self.head = head;
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Removes and returns every entry after `seq` (the suffix a diverged device discards
    /// before it re-submits those changes), in one transaction. `seq` must not be below the
    /// floor. Durable when it returns.
    pub fn truncate_after(&mut self, seq: Seq) -> Result<Vec<LogEntry>, Error> {
        let result = self.conn.immediate_transaction(|conn| {
            let (floor, head) = read_state(conn)?;
            if seq < floor.seq {
                return Err(Error::Pruned { requested: seq, floor: floor.seq });
            }
            if seq >= head.seq {
                return Ok((Vec::new(), floor, head));
            }
            let checksum = checksum_in(conn, floor, head, seq)?
                .ok_or_else(|| Error::Decode(format!("no checksum at {seq}")))?;
            let rows: Vec<Row> = sync_log::table
                .filter(sync_log::seq.gt(to_db_seq(seq)))
                .order(sync_log::seq.asc())
                .select(Row::as_select())
                .load(conn)?;
            let removed = rows.iter().map(entry_from_row).collect::<Result<Vec<_>, _>>()?;
            diesel::delete(sync_log::table.filter(sync_log::seq.gt(to_db_seq(seq))))
                .execute(conn)?;
            Ok::<_, Error>((removed, floor, Position { seq, checksum }))
        });
        match result {
            Ok((removed, floor, head)) => {
                self.floor = floor;
                self.head = head;
                Ok(removed)
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Checks the whole file: SQLite's `integrity_check`, then every entry's running checksum
    /// from the floor to the head. Linear in the size of the log.
    pub fn verify(&mut self) -> Result<(), Error> {
        let path = self.path.clone();
        check_integrity_full(&mut self.conn, &path)?;
        let mut prev = self.floor;
        loop {
            let batch = self.read_after(prev.seq, 1_000)?;
            let Some(last) = batch.last() else { break };
            let last_seq = last.seq;
            for entry in &batch {
                let expected =
                    LogEntry::chain(&prev.checksum, entry.seq, entry.epoch, &entry.change);
                if entry.seq != prev.seq.next() || expected != entry.checksum {
                    return Err(Error::Corrupt {
                        path,
                        detail: format!("chain broken at seq {}", entry.seq),
                    });
                }
                prev = entry.position();
            }
            debug_assert_eq!(prev.seq, last_seq);
        }
        if prev != self.head {
            return Err(Error::Corrupt { path, detail: "head does not match the chain".into() });
        }
        Ok(())
    }

    /// After a failed write: the transaction rolled back, so the cached head and floor are
    /// re-read from the table (no state of the failed attempt survives), and the error is
    /// classified.
    fn failed(&mut self, e: Error) -> Error {
        match read_state(&mut self.conn) {
            Ok((floor, head)) => {
                self.floor = floor;
                self.head = head;
            }
            Err(re) => tracing::warn!(error = %re, "cannot re-read the sync log's head"),
        }
        let e = self.classify(e);
        tracing::debug!(path = %self.path.display(), error = %e, "sync log write failed; nothing written");
        e
    }

    /// Names this file in SQLite's "broken file" errors and maps "locked" to [`Error::Busy`].
    fn classify(&self, e: Error) -> Error {
        corrupt_or(e, &self.path)
    }
}

/// Tables a sync log file holds besides SQLite's own `sqlite_*` ones. A file with a
/// `sync_meta` table and any other table is another database.
const OUR_TABLES: &[&str] =
    &["sync_log", "sync_meta", "sync_pruned_origin", "__diesel_schema_migrations"];

fn validate_change(change: &Change) -> Result<(), Error> {
    if !change.hlc.is_valid() {
        return Err(Error::InvalidArgument(format!(
            "change {:?}: hlc {} is above Hlc::MAX",
            change.origin, change.hlc.0
        )));
    }
    if i64::try_from(change.origin.seq).is_err() {
        return Err(Error::InvalidArgument(format!(
            "change {:?}: origin seq above i64::MAX",
            change.origin
        )));
    }
    Ok(())
}

fn validate_entry(entry: &LogEntry) -> Result<(), Error> {
    if entry.seq == Seq::ZERO || i64::try_from(entry.seq.0).is_err() {
        return Err(Error::InvalidArgument(format!("entry seq {} out of range", entry.seq)));
    }
    if i64::try_from(entry.change.origin.seq).is_err() {
        return Err(Error::InvalidArgument(format!(
            "entry {}: origin seq above i64::MAX",
            entry.seq
        )));
    }
    Ok(())
}

/// `Ok` when `theirs` is exactly `ours`; otherwise [`Error::Diverged`] at that seq. When the
/// checksums agree but the contents do not, "theirs" is the checksum their content gives on our
/// chain (`prev` is ours just before).
fn check_same(
    ours: &LogEntry,
    theirs: &LogEntry,
    prev: impl FnOnce() -> Result<Checksum, Error>,
) -> Result<(), Error> {
    if ours == theirs {
        return Ok(());
    }
    let their_sum = if theirs.checksum != ours.checksum {
        theirs.checksum
    } else {
        LogEntry::chain(&prev()?, theirs.seq, theirs.epoch, &theirs.change)
    };
    Err(Error::Diverged { seq: ours.seq, ours: ours.checksum, theirs: their_sum })
}

/// The origin keys that were pruned, for the devices of one batch: sorted, disjoint ranges of
/// origin seqs (as stored, `i64`).
struct PrunedOrigins(HashMap<DeviceId, Vec<(i64, i64)>>);

impl PrunedOrigins {
    fn load(conn: &mut SqliteConnection, changes: &[Change]) -> Result<Self, Error> {
        let mut map = HashMap::new();
        let any = sync_pruned_origin::table
            .select(sync_pruned_origin::first_seq)
            .get_result::<i64>(conn)
            .optional()?
            .is_some();
        if any {
            let devices: HashSet<DeviceId> = changes.iter().map(|c| c.origin.device).collect();
            for device in devices {
                let ranges = pruned_ranges(conn, device.0.as_bytes())?;
                if !ranges.is_empty() {
                    map.insert(device, ranges);
                }
            }
        }
        Ok(Self(map))
    }

    fn contains(&self, origin: &OriginKey) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let Some(ranges) = self.0.get(&origin.device) else { return false };
        let seq = to_db(origin.seq);
        let i = ranges.partition_point(|&(first, _)| first <= seq);
        i > 0 && ranges[i - 1].1 >= seq
    }
}

/// Plans seqs and checksums for `changes` after `start` and inserts the new rows.
///
/// Pruned origin keys are never planned as new. With `slow == false` (the fast path) every
/// other change is planned as new, and a repeated origin key surfaces as the unique index's
/// violation. With `slow == true` every origin key is looked up first: keys in the log and
/// repeats inside the batch are not written again, and either with a different change is
/// [`Error::OriginConflict`].
fn plan_and_insert(
    conn: &mut SqliteConnection,
    start: Position,
    floor: Position,
    epoch: Epoch,
    changes: &[Change],
    pruned: &PrunedOrigins,
    slow: bool,
) -> Result<(Vec<Appended>, Position), Error> {
    let mut head = start;
    let mut out = Vec::with_capacity(changes.len());
    let mut in_batch: HashMap<OriginKey, (Seq, &Change)> = HashMap::new();
    let mut planned: Vec<(Seq, Checksum, &Change)> = Vec::with_capacity(changes.len());
    for change in changes {
        if let Some(&(seq, first)) = in_batch.get(&change.origin) {
            if first != change {
                return Err(Error::OriginConflict { origin: change.origin, seq });
            }
            out.push(Appended { seq, new: false });
            continue;
        }
        let is_pruned = pruned.contains(&change.origin);
        if slow || is_pruned {
            if let Some(seq) = existing_seq(conn, change)? {
                if slow {
                    in_batch.insert(change.origin, (seq, change));
                }
                out.push(Appended { seq, new: false });
                continue;
            }
            if is_pruned {
                out.push(Appended { seq: floor.seq, new: false });
                continue;
            }
        }
        let seq = head.seq.next();
        let checksum = LogEntry::chain(&head.checksum, seq, epoch, change);
        head = Position { seq, checksum };
        if slow {
            in_batch.insert(change.origin, (seq, change));
        }
        planned.push((seq, checksum, change));
        out.push(Appended { seq, new: true });
    }
    insert_rows(
        conn,
        planned.iter().map(|(seq, sum, change)| new_row(*seq, epoch, change, &sum.0)),
    )?;
    Ok((out, head))
}

/// Inserts log rows one statement each. The one-row `INSERT` is a statement diesel prepares
/// once and caches; a multi-row `INSERT` (its text depends on the row count) is parsed and
/// planned again on every call, which cost more than the rows themselves.
fn insert_rows<'a>(
    conn: &mut SqliteConnection,
    rows: impl Iterator<Item = NewRow<'a>>,
) -> QueryResult<()> {
    for row in rows {
        diesel::insert_into(sync_log::table).values(&row).execute(conn)?;
    }
    Ok(())
}

/// The seq of `change`'s origin key in the log, if it is there; the same key with a different
/// change is [`Error::OriginConflict`].
fn existing_seq(conn: &mut SqliteConnection, change: &Change) -> Result<Option<Seq>, Error> {
    let Some(row) = find_origin_row(conn, &change.origin)? else { return Ok(None) };
    let seq = Seq(from_db(row.seq));
    // The same origin key must mean the same change: a reused key (a device whose counter went
    // back) would otherwise lose its change silently.
    if !row_is(&row, change) {
        return Err(Error::OriginConflict { origin: change.origin, seq });
    }
    Ok(Some(seq))
}

fn new_row<'a>(seq: Seq, epoch: Epoch, change: &'a Change, checksum: &'a [u8; 32]) -> NewRow<'a> {
    NewRow {
        seq: to_db_seq(seq),
        epoch: to_db(epoch.0),
        origin_device: change.origin.device.0.as_bytes(),
        origin_seq: to_db(change.origin.seq),
        hlc: to_db(change.hlc.0),
        model: &change.model,
        record: change.record.as_bytes(),
        change_type: change.change.code(),
        version: to_db(change.version),
        payload: &change.payload,
        checksum,
    }
}

fn to_db_seq(seq: Seq) -> i64 {
    to_db(seq.0)
}

/// A stored row as an entry. Bad columns are [`Error::Decode`] (the caller names the file).
fn entry_from_row(row: &Row) -> Result<LogEntry, Error> {
    let bad = |what: &str| Error::Decode(format!("seq {}: bad {what}", row.seq));
    let device = Uuid::from_slice(&row.origin_device).map_err(|_| bad("origin device"))?;
    let record = Uuid::from_slice(&row.record).map_err(|_| bad("record id"))?;
    let change = ChangeType::from_code(row.change_type).ok_or_else(|| bad("change type"))?;
    Ok(LogEntry {
        seq: Seq(from_db(row.seq)),
        epoch: Epoch(from_db(row.epoch)),
        change: Change {
            origin: OriginKey { device: DeviceId(device), seq: from_db(row.origin_seq) },
            hlc: Hlc(from_db(row.hlc)),
            model: row.model.clone(),
            record,
            change,
            version: from_db(row.version),
            payload: row.payload.clone(),
        },
        checksum: checksum_from(&row.checksum)?,
    })
}

fn checksum_from(bytes: &[u8]) -> Result<Checksum, Error> {
    <[u8; 32]>::try_from(bytes)
        .map(Checksum)
        .map_err(|_| Error::Decode(format!("checksum of {} bytes", bytes.len())))
}

/// The stored entry at `seq`, which must exist (it is between the floor and the head).
fn entry_at(conn: &mut SqliteConnection, seq: Seq) -> Result<LogEntry, Error> {
    let row: Option<Row> = sync_log::table
        .find(to_db_seq(seq))
        .select(Row::as_select())
        .get_result(conn)
        .optional()?;
    match row {
        Some(row) => entry_from_row(&row),
        None => Err(Error::Decode(format!("entry {seq} is missing below the head"))),
    }
}

/// The floor and the head as the table says: what every write starts from.
fn read_state(conn: &mut SqliteConnection) -> Result<(Position, Position), Error> {
    let floor = read_floor(conn)?;
    let last: Option<(i64, Vec<u8>)> = sync_log::table
        .order(sync_log::seq.desc())
        .select((sync_log::seq, sync_log::checksum))
        .get_result(conn)
        .optional()?;
    let head = match last {
        None => floor,
        Some((seq, sum)) => {
            let seq = Seq(from_db(seq));
            if seq <= floor.seq {
                return Err(Error::Decode(format!("entry {seq} at or below the floor")));
            }
            Position { seq, checksum: checksum_from(&sum)? }
        }
    };
    Ok((floor, head))
}

/// [`read_state`], and the last entry must chain from the one before it (or the floor).
fn load_verified_state(conn: &mut SqliteConnection) -> Result<(Position, Position), Error> {
    let (floor, head) = read_state(conn)?;
    // cold: once at open
    let last: Vec<Row> =
        sync_log::table.order(sync_log::seq.desc()).limit(2).select(Row::as_select()).load(conn)?;
    let Some(last_row) = last.first() else { return Ok((floor, head)) };
    let entry = entry_from_row(last_row)?;
    let prev = match last.get(1) {
        Some(row) => entry_from_row(row)?.position(),
        None => floor,
    };
    if prev.seq.next() != entry.seq
        || LogEntry::chain(&prev.checksum, entry.seq, entry.epoch, &entry.change) != entry.checksum
    {
        return Err(Error::Decode(format!(
            "last entry {} does not chain from {}",
            entry.seq, prev.seq
        )));
    }
    Ok((floor, head))
}

/// The running checksum at `seq` given the floor and the head: `None` past the head,
/// [`Error::Pruned`] below the floor.
fn checksum_in(
    conn: &mut SqliteConnection,
    floor: Position,
    head: Position,
    seq: Seq,
) -> Result<Option<Checksum>, Error> {
    if seq > head.seq {
        return Ok(None);
    }
    if seq == head.seq {
        return Ok(Some(head.checksum));
    }
    if seq == floor.seq {
        return Ok(Some(floor.checksum));
    }
    if seq < floor.seq {
        return Err(Error::Pruned { requested: seq, floor: floor.seq });
    }
    let bytes: Option<Vec<u8>> = sync_log::table
        .find(to_db_seq(seq))
        .select(sync_log::checksum)
        .get_result(conn)
        .optional()?;
    match bytes {
        Some(b) => Ok(Some(checksum_from(&b)?)),
        None => Err(Error::Decode(format!("entry {seq} is missing below the head"))),
    }
}

fn find_origin_row(conn: &mut SqliteConnection, origin: &OriginKey) -> Result<Option<Row>, Error> {
    Ok(sync_log::table
        .filter(sync_log::origin_device.eq(origin.device.0.as_bytes().as_slice()))
        .filter(sync_log::origin_seq.eq(to_db(origin.seq)))
        .select(Row::as_select())
        .get_result(conn)
        .optional()?)
}

/// Whether the stored `row` holds exactly `change` (its origin key already matched).
fn row_is(row: &Row, change: &Change) -> bool {
    row.hlc == to_db(change.hlc.0)
        && row.model == change.model
        && row.record == change.record.as_bytes()
        && row.change_type == change.change.code()
        && row.version == to_db(change.version)
        && row.payload == change.payload
}

fn find_origin(conn: &mut SqliteConnection, origin: &OriginKey) -> Result<Option<Seq>, Error> {
    Ok(sync_log::table
        .filter(sync_log::origin_device.eq(origin.device.0.as_bytes().as_slice()))
        .filter(sync_log::origin_seq.eq(to_db(origin.seq)))
        .select(sync_log::seq)
        .get_result::<i64>(conn)
        .optional()?
        .map(|s| Seq(from_db(s))))
}

/// The highest origin seq of `device` in the log (through the unique origin index) or among
/// its pruned origin keys.
fn max_origin_seq(conn: &mut SqliteConnection, device: DeviceId) -> Result<Option<u64>, Error> {
    let held: Option<i64> = sync_log::table
        .filter(sync_log::origin_device.eq(device.0.as_bytes().as_slice()))
        .select(sync_log::origin_seq)
        .order(sync_log::origin_seq.desc())
        .get_result(conn)
        .optional()?;
    // Ranges are disjoint: the one that starts last ends last.
    let pruned: Option<i64> = sync_pruned_origin::table
        .filter(sync_pruned_origin::origin_device.eq(device.0.as_bytes().as_slice()))
        .order(sync_pruned_origin::first_seq.desc())
        .select(sync_pruned_origin::last_seq)
        .get_result(conn)
        .optional()?;
    Ok(held.max(pruned).map(from_db))
}

/// The pruned ranges of one device, sorted.
fn pruned_ranges(conn: &mut SqliteConnection, device: &[u8]) -> Result<Vec<(i64, i64)>, Error> {
    Ok(sync_pruned_origin::table
        .filter(sync_pruned_origin::origin_device.eq(device))
        .order(sync_pruned_origin::first_seq.asc())
        .select((sync_pruned_origin::first_seq, sync_pruned_origin::last_seq))
        .load(conn)?)
}

#[derive(QueryableByName)]
struct Island {
    #[diesel(sql_type = diesel::sql_types::Binary)]
    origin_device: Vec<u8>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    first_seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
}

/// Adds the origin keys of the entries up to `floor` (about to be pruned) to the pruned ranges:
/// runs of consecutive origin seqs per device ("gaps and islands"), merged with the ranges
/// already recorded.
fn remember_pruned_origins(conn: &mut SqliteConnection, floor: Seq) -> Result<(), Error> {
    let islands: Vec<Island> = diesel::sql_query(
        "SELECT origin_device, MIN(origin_seq) AS first_seq, MAX(origin_seq) AS last_seq \
         FROM (SELECT origin_device, origin_seq, \
                      origin_seq - ROW_NUMBER() OVER \
                          (PARTITION BY origin_device ORDER BY origin_seq) AS island \
               FROM sync_log WHERE seq <= ?) \
         GROUP BY origin_device, island",
    )
    .bind::<diesel::sql_types::BigInt, _>(to_db_seq(floor))
    .load(conn)?;
    let mut by_device: HashMap<Vec<u8>, Vec<(i64, i64)>> = HashMap::new();
    for island in islands {
        by_device
            .entry(island.origin_device)
            .or_default()
            .push((island.first_seq, island.last_seq));
    }
    for (device, mut ranges) in by_device {
        ranges.extend(pruned_ranges(conn, &device)?);
        let merged = merge_ranges(ranges);
        diesel::delete(
            sync_pruned_origin::table.filter(sync_pruned_origin::origin_device.eq(&device)),
        )
        .execute(conn)?;
        let rows: Vec<_> = merged
            .iter()
            .map(|&(first, last)| {
                (
                    sync_pruned_origin::origin_device.eq(device.as_slice()),
                    sync_pruned_origin::first_seq.eq(first),
                    sync_pruned_origin::last_seq.eq(last),
                )
            })
            .collect();
        for chunk in rows.chunks(INSERT_CHUNK) {
            diesel::insert_into(sync_pruned_origin::table).values(chunk).execute(conn)?;
        }
    }
    Ok(())
}

/// Sorted, disjoint, non-adjacent ranges covering the same seqs as `ranges`.
fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(cur) if first <= cur.1.saturating_add(1) => cur.1 = cur.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

#[derive(QueryableByName)]
struct TableName {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[derive(QueryableByName)]
struct CheckLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

/// The file's tables, without SQLite's own. Reading them writes nothing.
fn table_names(conn: &mut SqliteConnection) -> Result<Vec<String>, DieselError> {
    let names: Vec<TableName> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .load(conn)?;
    Ok(names.into_iter().map(|t| t.name).collect())
}

fn run_check(conn: &mut SqliteConnection, path: &Path, pragma: &str) -> Result<(), Error> {
    let lines: Vec<CheckLine> =
        diesel::sql_query(format!("SELECT {pragma} AS line FROM pragma_{pragma}()"))
            .load(conn)
            .map_err(|e| corrupt_or(e.into(), path))?;
    match lines.as_slice() {
        [only] if only.line == "ok" => Ok(()),
        lines => Err(Error::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "{pragma}: {}",
                lines.iter().map(|l| l.line.as_str()).take(5).collect::<Vec<_>>().join("; ")
            ),
        }),
    }
}

/// SQLite's `quick_check`: page structure and record format, linear in the file size but
/// without index cross-checks. Run at every open.
fn check_integrity(conn: &mut SqliteConnection, path: &Path) -> Result<(), Error> {
    run_check(conn, path, "quick_check")
}

fn check_integrity_full(conn: &mut SqliteConnection, path: &Path) -> Result<(), Error> {
    run_check(conn, path, "integrity_check")
}

fn read_meta(conn: &mut SqliteConnection, key: &str) -> Result<Option<String>, Error> {
    Ok(sync_meta::table.find(key).select(sync_meta::value).get_result::<String>(conn).optional()?)
}

fn write_meta(conn: &mut SqliteConnection, key: &str, value: &str) -> Result<(), Error> {
    diesel::replace_into(sync_meta::table)
        .values((sync_meta::key.eq(key), sync_meta::value.eq(value)))
        .execute(conn)?;
    Ok(())
}

fn read_floor(conn: &mut SqliteConnection) -> Result<Position, Error> {
    let seq = read_meta(conn, "floor_seq")?;
    let sum = read_meta(conn, "floor_checksum")?;
    match (seq, sum) {
        (None, None) => Ok(Position::default()),
        (Some(seq), Some(sum)) => {
            let seq = seq.parse().map_err(|_| Error::Decode(format!("floor_seq {seq:?}")))?;
            let checksum =
                unhex(&sum).ok_or_else(|| Error::Decode(format!("floor_checksum {sum:?}")))?;
            Ok(Position { seq: Seq(seq), checksum: Checksum(checksum) })
        }
        _ => Err(Error::Decode("floor_seq and floor_checksum must both be present".into())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Maps SQLite's "this file is broken" and "locked" errors to [`Error::Corrupt`] and
/// [`Error::Busy`]; everything else passes through.
fn corrupt_or(e: Error, path: &Path) -> Error {
    let message = match &e {
        Error::Database(DieselError::DatabaseError(_, info)) => info.message().to_owned(),
        Error::Migration(m) | Error::Decode(m) => m.clone(),
        _ => return e,
    };
    let lower = message.to_ascii_lowercase();
    if lower.contains("not a database")
        || lower.contains("malformed")
        || lower.contains("corrupt")
        || matches!(e, Error::Decode(_))
    {
        Error::Corrupt { path: path.to_owned(), detail: message }
    } else if lower.contains("locked") || lower.contains("busy") {
        Error::Busy(message)
    } else {
        e
    }
}

/// The async handle of a sync log: cheap to clone, safe to share between tasks.
///
/// Every call runs the blocking [`SyncLogStore`] on tokio's blocking pool
/// (`spawn_blocking`) behind a mutex, so the async runtime is never blocked on SQLite and calls
/// are serialised (SQLite has one writer anyway). Needs a tokio runtime. Writes are durable
/// when their future completes, as in [`SyncLogStore`](SyncLogStore#durability).
#[derive(Clone, Debug)]
pub struct SyncLog {
    inner: Arc<Mutex<SyncLogStore>>,
}

impl SyncLog {
    /// Wraps an opened store.
    pub fn new(store: SyncLogStore) -> Self {
        Self { inner: Arc::new(Mutex::new(store)) }
    }

    /// Opens (or creates) the log at `path` on the blocking pool.
    pub async fn open_or_create(path: PathBuf, library: LibraryId) -> Result<Self, Error> {
        let store =
            tokio::task::spawn_blocking(move || SyncLogStore::open_or_create(&path, library))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Self::new(store))
    }

    /// Runs `f` on the store from the blocking pool.
    pub async fn with<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut SyncLogStore) -> Result<T, Error> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_blocking(f))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Runs `f` on the store on the current thread, waiting for the lock. For callers that
    /// are already on a thread that may block (a blocking-pool thread, or a thread of their
    /// own such as a sync engine's); never call it from a task of a shared async runtime.
    pub fn with_blocking<T>(
        &self,
        f: impl FnOnce(&mut SyncLogStore) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut store = self.inner.lock().map_err(|_| Error::Task("sync log poisoned".into()))?;
        f(&mut store)
    }

    /// See [`SyncLogStore::append`].
    pub async fn append(&self, epoch: Epoch, changes: Vec<Change>) -> Result<Vec<Appended>, Error> {
        self.with(move |s| s.append(epoch, &changes)).await
    }

    /// See [`SyncLogStore::append_sequenced`].
    pub async fn append_sequenced(&self, entries: Vec<LogEntry>) -> Result<Position, Error> {
        self.with(move |s| s.append_sequenced(&entries)).await
    }

    /// See [`SyncLogStore::read_after`].
    pub async fn read_after(&self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, Error> {
        self.with(move |s| s.read_after(after, limit)).await
    }

    /// See [`SyncLogStore::head`].
    pub async fn head(&self) -> Result<Position, Error> {
        self.with(|s| Ok(s.head())).await
    }

    /// See [`SyncLogStore::checksum_at`].
    pub async fn checksum_at(&self, seq: Seq) -> Result<Option<Checksum>, Error> {
        self.with(move |s| s.checksum_at(seq)).await
    }

    /// See [`SyncLogStore::max_origin_seq`].
    pub async fn max_origin_seq(&self, device: DeviceId) -> Result<Option<u64>, Error> {
        self.with(move |s| s.max_origin_seq(device)).await
    }

    /// See [`SyncLogStore::prune_below`].
    pub async fn prune_below(&self, seq: Seq) -> Result<(), Error> {
        self.with(move |s| s.prune_below(seq)).await
    }

    /// See [`SyncLogStore::truncate_after`].
    pub async fn truncate_after(&self, seq: Seq) -> Result<Vec<LogEntry>, Error> {
        self.with(move |s| s.truncate_after(seq)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }

    fn setting(conn: &mut SqliteConnection, pragma: &str) -> String {
        diesel::sql_query(format!("SELECT CAST({pragma} AS TEXT) AS value FROM pragma_{pragma}"))
            .get_result::<Setting>(conn)
            .unwrap()
            .value
    }

    /// The log's connection runs WAL with `synchronous = FULL` (2), after `create` and after
    /// `open`: every commit syncs the write-ahead log, so a write that returned survives a power
    /// loss.
    #[test]
    fn every_commit_is_synced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.db");
        let library = LibraryId::new_v7();
        for store in [
            SyncLogStore::create(&path, library).unwrap(),
            SyncLogStore::open(&path, library).unwrap(),
        ] {
            let mut store = store;
            assert_eq!(setting(&mut store.conn, "journal_mode"), "wal");
            assert_eq!(setting(&mut store.conn, "synchronous"), "2");
        }
    }

    /// The writer's WAL settings are the ones `wal` documents: its own checkpoint at
    /// `BACKSTOP_PAGES`, and a WAL file kept at `WAL_FILE_LIMIT`, above what one cycle fills.
    #[test]
    fn the_writer_keeps_its_wal_file_past_one_cycle() {
        use crate::wal::{BACKSTOP_PAGES, WAL_FILE_LIMIT};
        #[derive(QueryableByName)]
        struct Autocheckpoint {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            wal_autocheckpoint: i64,
        }
        #[derive(QueryableByName)]
        struct Limit {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            journal_size_limit: i64,
        }
        let dir = tempfile::tempdir().unwrap();
        let mut store =
            SyncLogStore::create(&dir.path().join("sync.db"), LibraryId::new_v7()).unwrap();
        let pages = diesel::sql_query("PRAGMA wal_autocheckpoint")
            .get_result::<Autocheckpoint>(&mut store.conn)
            .unwrap();
        assert_eq!(pages.wal_autocheckpoint, i64::from(BACKSTOP_PAGES));
        let limit =
            diesel::sql_query("PRAGMA journal_size_limit").get_result::<Limit>(&mut store.conn);
        assert_eq!(limit.unwrap().journal_size_limit as u64, WAL_FILE_LIMIT);
        let page: u64 = setting(&mut store.conn, "page_size").parse().unwrap();
        assert!(WAL_FILE_LIMIT >= 2 * u64::from(BACKSTOP_PAGES) * (page + 24));
    }
}
