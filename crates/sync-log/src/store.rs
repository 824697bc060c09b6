//! The SQLite-backed store ([`SyncLogStore`], blocking) and its async handle ([`SyncLog`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use diesel::connection::SimpleConnection;
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
        sync_pruned_origin (origin_device) {
            origin_device -> Binary,
            max_origin_seq -> BigInt,
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
    pub seq: Seq,
    /// `false` when the origin key was already in the log: nothing was written and `seq` is the
    /// existing one.
    pub new: bool,
}

/// The sync log of one library, stored in one SQLite file. Blocking: call it from a blocking
/// context (a dedicated thread or `spawn_blocking`), or use the async [`SyncLog`] handle.
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
    head: Position,
    floor: Position,
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
    /// Errors: [`Error::Missing`] when there is no file, [`Error::ForeignLibrary`] when it
    /// belongs to another library, [`Error::NewerSchema`] when a newer build wrote it, and
    /// [`Error::Corrupt`] when it is not a sync log or fails SQLite's `quick_check` or the
    /// chain check of its last entry.
    pub fn open(path: &Path, library: LibraryId) -> Result<Self, Error> {
        if !path.exists() {
            return Err(Error::Missing(path.to_owned()));
        }
        Self::open_inner(path, library, false)
    }

    /// Opens the log at `path`, creating it when there is no file, an empty one, or an SQLite
    /// file without any table (what a crash during creation can leave: creation itself is one
    /// transaction).
    pub fn open_or_create(path: &Path, library: LibraryId) -> Result<Self, Error> {
        Self::open_inner(path, library, true)
    }

    /// A log that lives in memory only: the stand-in for tests and simulations. It behaves
    /// exactly like a file-backed log except that it does not survive being dropped.
    pub fn in_memory(library: LibraryId) -> Result<Self, Error> {
        Self::open_inner(Path::new(":memory:"), library, true)
    }

    fn open_inner(path: &Path, library: LibraryId, create: bool) -> Result<Self, Error> {
        let path_buf = path.to_owned();
        let corrupt = |e: Error| corrupt_or(e, &path_buf);
        let url = path.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: path is not UTF-8", path.display()))
        })?;
        let mut conn = SqliteConnection::establish(url)
            .map_err(|e| Error::Corrupt { path: path.to_owned(), detail: e.to_string() })?;
        // journal_mode sticks to the file; synchronous and busy_timeout are per connection.
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL;"
        ))
        .map_err(|e| corrupt(e.into()))?;

        let has_meta = table_exists(&mut conn, "sync_meta").map_err(|e| corrupt(e.into()))?;
        if has_meta {
            let file_version: u32 = read_meta(&mut conn, "schema_version")
                .map_err(&corrupt)?
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Corrupt {
                    path: path.to_owned(),
                    detail: "schema_version missing".into(),
                })?;
            if file_version > SCHEMA_VERSION {
                return Err(Error::NewerSchema {
                    path: path.to_owned(),
                    file: file_version,
                    supported: SCHEMA_VERSION,
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
        } else if !create || table_count(&mut conn).map_err(|e| corrupt(e.into()))? > 0 {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                detail: "not a sync log (no sync_meta table)".into(),
            });
        }

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

        let floor = read_floor(&mut conn).map_err(&corrupt)?;
        let mut store = Self { conn, path: path.to_owned(), library, head: floor, floor };
        store.head = store.load_head()?;
        Ok(store)
    }

    /// Reads the last entry, verifies it chains from the one before it, and returns its
    /// position (or the floor when the log holds no entries).
    fn load_head(&mut self) -> Result<Position, Error> {
        let last: Vec<Row> = sync_log::table
            .order(sync_log::seq.desc())
            .limit(2)
            .select(Row::as_select())
            .load(&mut self.conn)
            .map_err(|e| self.classify(e.into()))?;
        let Some(last_row) = last.first() else {
            return Ok(self.floor);
        };
        let entry = self.entry_from_row(last_row)?;
        let prev = match last.get(1) {
            Some(row) => self.entry_from_row(row)?.position(),
            None => self.floor,
        };
        if prev.seq.next() != entry.seq
            || LogEntry::chain(&prev.checksum, entry.seq, entry.epoch, &entry.change)
                != entry.checksum
        {
            return Err(Error::Corrupt {
                path: self.path.clone(),
                detail: format!("last entry {} does not chain from {}", entry.seq, prev.seq),
            });
        }
        Ok(entry.position())
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
    /// chained checksums. A change whose origin key is already in the log (or earlier in the
    /// same batch) is not written again; its existing seq is returned with `new: false`. An
    /// origin key already in the log with a *different* change is [`Error::OriginConflict`].
    pub fn append(&mut self, epoch: Epoch, changes: &[Change]) -> Result<Vec<Appended>, Error> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let start = self.head;
        let result = self.conn.immediate_transaction(|conn| {
            match plan_and_insert(conn, start, epoch, changes, None) {
                Err(Error::Database(DieselError::DatabaseError(
                    DatabaseErrorKind::UniqueViolation,
                    _,
                ))) => {
                    // Some origin keys are already sequenced: look them up (the slow path, taken
                    // only for re-submissions) and write the rest.
                    let mut existing = HashMap::new();
                    for change in changes {
                        if let Some(row) = find_origin_row(conn, &change.origin)? {
                            // The same origin key must mean the same change: a reused key (a
                            // device whose counter went back) would otherwise lose its change
                            // silently.
                            if !row_is(&row, change) {
                                return Err(Error::OriginConflict {
                                    origin: change.origin,
                                    seq: Seq(from_db(row.seq)),
                                });
                            }
                            existing.insert(change.origin, Seq(from_db(row.seq)));
                        }
                    }
                    plan_and_insert(conn, start, epoch, changes, Some(&existing))
                }
                other => other,
            }
        });
        let (out, head) = result.map_err(|e| self.classify(e))?;
        self.head = head;
        Ok(out)
    }

    /// Appends entries that a leader already sequenced (a follower's copy of the global log),
    /// in one transaction.
    ///
    /// Entries at or below the head that match our checksum are skipped, so re-delivery is
    /// harmless. An entry that does not follow the head is [`Error::Gap`]; one whose checksum
    /// disagrees with ours is [`Error::Diverged`]. On error nothing of the batch is written.
    pub fn append_sequenced(&mut self, entries: &[LogEntry]) -> Result<Position, Error> {
        let mut head = self.head;
        let mut fresh = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.seq <= head.seq {
                let ours = if entry.seq == head.seq {
                    Some(head.checksum)
                } else {
                    self.checksum_at(entry.seq)?
                };
                match ours {
                    Some(ours) if ours == entry.checksum => continue,
                    Some(ours) => {
                        return Err(Error::Diverged {
                            seq: entry.seq,
                            ours,
                            theirs: entry.checksum,
                        });
                    }
                    None => {}
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
        if fresh.is_empty() {
            return Ok(self.head);
        }
        self.conn
            .immediate_transaction(|conn| {
                for chunk in fresh.chunks(INSERT_CHUNK) {
                    let rows: Vec<NewRow<'_>> = chunk
                        .iter()
                        .map(|e| new_row(e.seq, e.epoch, &e.change, &e.checksum.0))
                        .collect();
                    diesel::insert_into(sync_log::table).values(&rows).execute(conn)?;
                }
                Ok::<_, Error>(())
            })
            .map_err(|e| self.classify(e))?;
        self.head = head;
        Ok(head)
    }

    /// Up to `limit` entries with a seq greater than `after`, in order.
    ///
    /// [`Error::Pruned`] when entries right after `after` were pruned: the reader needs a
    /// snapshot first.
    pub fn read_after(&mut self, after: Seq, limit: usize) -> Result<Vec<LogEntry>, Error> {
        if after < self.floor.seq {
            return Err(Error::Pruned { requested: after, floor: self.floor.seq });
        }
        let rows: Vec<Row> = sync_log::table
            .filter(sync_log::seq.gt(to_db(after.0)))
            .order(sync_log::seq.asc())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select(Row::as_select())
            .load(&mut self.conn)
            .map_err(|e| self.classify(e.into()))?;
        rows.iter().map(|r| self.entry_from_row(r)).collect()
    }

    /// The running checksum at `seq`: `Some(GENESIS)` for `Seq(0)`, `None` past the head,
    /// [`Error::Pruned`] below the floor.
    pub fn checksum_at(&mut self, seq: Seq) -> Result<Option<Checksum>, Error> {
        if seq > self.head.seq {
            return Ok(None);
        }
        if seq == self.head.seq {
            return Ok(Some(self.head.checksum));
        }
        if seq == self.floor.seq {
            return Ok(Some(self.floor.checksum));
        }
        if seq < self.floor.seq {
            return Err(Error::Pruned { requested: seq, floor: self.floor.seq });
        }
        let bytes: Option<Vec<u8>> = sync_log::table
            .find(to_db(seq.0))
            .select(sync_log::checksum)
            .first(&mut self.conn)
            .optional()
            .map_err(|e| self.classify(e.into()))?;
        match bytes {
            Some(b) => Ok(Some(self.checksum_from(&b)?)),
            None => Err(Error::Corrupt {
                path: self.path.clone(),
                detail: format!("entry {seq} is missing below the head"),
            }),
        }
    }

    /// The seq at which `origin` was sequenced, if it was.
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
    pub fn prune_below(&mut self, seq: Seq) -> Result<(), Error> {
        if seq.0 > self.head.seq.0 + 1 {
            return Err(Error::InvalidArgument(format!(
                "cannot prune below {seq}: the head is {}",
                self.head.seq
            )));
        }
        let new_floor_seq = Seq(seq.0.saturating_sub(1));
        if new_floor_seq <= self.floor.seq {
            return Ok(());
        }
        let checksum = self.checksum_at(new_floor_seq)?.ok_or_else(|| Error::Corrupt {
            path: self.path.clone(),
            detail: format!("no checksum at {new_floor_seq}"),
        })?;
        let floor = Position { seq: new_floor_seq, checksum };
        self.conn
            .immediate_transaction(|conn| {
                remember_pruned_origins(conn, floor.seq)?;
                diesel::delete(sync_log::table.filter(sync_log::seq.le(to_db(floor.seq.0))))
                    .execute(conn)?;
                write_meta(conn, "floor_seq", &floor.seq.0.to_string())?;
                write_meta(conn, "floor_checksum", &hex(&floor.checksum.0))?;
                Ok::<_, Error>(())
            })
            .map_err(|e| self.classify(e))?;
        self.floor = floor;
        Ok(())
    }

    /// Removes and returns every entry after `seq` (the suffix a diverged device discards
    /// before it re-submits those changes). `seq` must not be below the floor.
    pub fn truncate_after(&mut self, seq: Seq) -> Result<Vec<LogEntry>, Error> {
        if seq < self.floor.seq {
            return Err(Error::Pruned { requested: seq, floor: self.floor.seq });
        }
        if seq >= self.head.seq {
            return Ok(Vec::new());
        }
        let checksum = self.checksum_at(seq)?.ok_or_else(|| Error::Corrupt {
            path: self.path.clone(),
            detail: format!("no checksum at {seq}"),
        })?;
        let removed = self.read_after(seq, usize::MAX)?;
        self.conn
            .immediate_transaction(|conn| {
                diesel::delete(sync_log::table.filter(sync_log::seq.gt(to_db(seq.0)))).execute(conn)
            })
            .map_err(|e| self.classify(e.into()))?;
        self.head = Position { seq, checksum };
        Ok(removed)
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

    fn entry_from_row(&self, row: &Row) -> Result<LogEntry, Error> {
        let bad = |what: &str| Error::Corrupt {
            path: self.path.clone(),
            detail: format!("seq {}: bad {what}", row.seq),
        };
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
            checksum: self.checksum_from(&row.checksum)?,
        })
    }

    fn checksum_from(&self, bytes: &[u8]) -> Result<Checksum, Error> {
        <[u8; 32]>::try_from(bytes).map(Checksum).map_err(|_| Error::Corrupt {
            path: self.path.clone(),
            detail: format!("checksum of {} bytes", bytes.len()),
        })
    }

    /// Names this file in SQLite's "broken file" errors and maps "locked" to [`Error::Busy`].
    fn classify(&self, e: Error) -> Error {
        corrupt_or(e, &self.path)
    }
}

/// Plans seqs and checksums for `changes` after `start` and inserts the new rows.
///
/// With `existing: None` (the fast path) every change is planned as new, and a repeated origin
/// key surfaces as the unique index's violation. With `Some(existing)` (the slow path), origin
/// keys in `existing` and repeats inside the batch are not written again.
fn plan_and_insert(
    conn: &mut SqliteConnection,
    start: Position,
    epoch: Epoch,
    changes: &[Change],
    existing: Option<&HashMap<OriginKey, Seq>>,
) -> Result<(Vec<Appended>, Position), Error> {
    let mut head = start;
    let mut out = Vec::with_capacity(changes.len());
    let mut in_batch: HashMap<OriginKey, Seq> = HashMap::new();
    let mut planned: Vec<(Seq, Checksum, &Change)> = Vec::with_capacity(changes.len());
    for change in changes {
        let known = existing.and_then(|existing| {
            existing.get(&change.origin).or_else(|| in_batch.get(&change.origin))
        });
        if let Some(&seq) = known {
            out.push(Appended { seq, new: false });
            continue;
        }
        let seq = head.seq.next();
        let checksum = LogEntry::chain(&head.checksum, seq, epoch, change);
        head = Position { seq, checksum };
        if existing.is_some() {
            in_batch.insert(change.origin, seq);
        }
        planned.push((seq, checksum, change));
        out.push(Appended { seq, new: true });
    }
    for chunk in planned.chunks(INSERT_CHUNK) {
        let rows: Vec<NewRow<'_>> =
            chunk.iter().map(|(seq, sum, change)| new_row(*seq, epoch, change, &sum.0)).collect();
        diesel::insert_into(sync_log::table).values(&rows).execute(conn)?;
    }
    Ok((out, head))
}

fn new_row<'a>(seq: Seq, epoch: Epoch, change: &'a Change, checksum: &'a [u8; 32]) -> NewRow<'a> {
    NewRow {
        seq: to_db(seq.0),
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

fn find_origin_row(conn: &mut SqliteConnection, origin: &OriginKey) -> Result<Option<Row>, Error> {
    Ok(sync_log::table
        .filter(sync_log::origin_device.eq(origin.device.0.as_bytes().as_slice()))
        .filter(sync_log::origin_seq.eq(to_db(origin.seq)))
        .select(Row::as_select())
        .first(conn)
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
        .first::<i64>(conn)
        .optional()?
        .map(|s| Seq(from_db(s))))
}

/// The highest origin seq of `device` in the log (through the unique origin index) or in the
/// table of pruned origins.
fn max_origin_seq(conn: &mut SqliteConnection, device: DeviceId) -> Result<Option<u64>, Error> {
    let held: Option<i64> = sync_log::table
        .filter(sync_log::origin_device.eq(device.0.as_bytes().as_slice()))
        .select(sync_log::origin_seq)
        .order(sync_log::origin_seq.desc())
        .first(conn)
        .optional()?;
    let pruned = pruned_origin_seq(conn, device)?;
    Ok(held.map(from_db).max(pruned))
}

/// The highest origin seq of `device` that was pruned, if any.
fn pruned_origin_seq(conn: &mut SqliteConnection, device: DeviceId) -> Result<Option<u64>, Error> {
    Ok(sync_pruned_origin::table
        .find(device.0.as_bytes().as_slice())
        .select(sync_pruned_origin::max_origin_seq)
        .first::<i64>(conn)
        .optional()?
        .map(from_db))
}

/// Records, per origin device, the highest origin seq among the entries up to `floor` (about to
/// be pruned), keeping any higher value already recorded.
fn remember_pruned_origins(conn: &mut SqliteConnection, floor: Seq) -> Result<(), Error> {
    diesel::sql_query(
        "INSERT INTO sync_pruned_origin (origin_device, max_origin_seq) \
         SELECT origin_device, MAX(origin_seq) FROM sync_log WHERE seq <= ? \
         GROUP BY origin_device \
         ON CONFLICT (origin_device) \
         DO UPDATE SET max_origin_seq = MAX(max_origin_seq, excluded.max_origin_seq)",
    )
    .bind::<diesel::sql_types::BigInt, _>(to_db(floor.0))
    .execute(conn)?;
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct CheckLine {
    #[diesel(sql_type = diesel::sql_types::Text)]
    line: String,
}

fn table_exists(conn: &mut SqliteConnection, name: &str) -> Result<bool, DieselError> {
    let c: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .get_result(conn)?;
    Ok(c.n > 0)
}

fn table_count(conn: &mut SqliteConnection) -> Result<i64, DieselError> {
    let c: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .get_result(conn)?;
    Ok(c.n)
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
    Ok(sync_meta::table.find(key).select(sync_meta::value).first::<String>(conn).optional()?)
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
/// are serialised (SQLite has one writer anyway). Needs a tokio runtime.
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
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut store = inner.lock().map_err(|_| Error::Task("sync log poisoned".into()))?;
            f(&mut store)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Runs `f` on the store on the current thread. For callers that are already on a blocking
    /// thread; never call it from async code.
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
