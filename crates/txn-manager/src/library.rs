//! [`Library`]: the blocking core of the write path on one library database.

use std::path::Path;
use std::sync::Arc;

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use library_models::schema::{local_state, outbox, pending_entries, resubmit};
use library_models::{Id, LibraryModel, LocalState, OutboxRow, PendingRow, ResubmitRow};
use serde::{Deserialize, Serialize};
use sync_log::{Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, LogEntry, Seq, SyncLogStore};
use syncable::{Applied, Registry};
use tokio::sync::broadcast;

use crate::conflicts::Conflict;
use crate::op::StampCtx;
use crate::outbox::{OwnEntries, next_key, rekey};
use crate::{Clock, DEFAULT_MAX_DRIFT_MS, Error, HybridClock, Op, SystemClock};

mod apply;
pub(crate) mod commit;
mod rewind;
mod sequence;

/// Entries read from the sync log and applied per library transaction.
pub const APPLY_BATCH: usize = 1_000;
/// Rows per transaction in [`Library::bulk_write`].
pub const BULK_TXN_ROWS: usize = 10_000;
const EVENT_CAPACITY: usize = 1_024;

/// How a [`Library`] is opened.
#[derive(Clone, Debug)]
pub struct Config {
    /// Physical clock for the HLC.
    pub clock: Arc<dyn Clock>,
    /// Maximum drift of a peer stamp before it is clamped (see [`HybridClock`]).
    pub max_drift_ms: u64,
    /// How many conflicts the local conflict log keeps ([`Library::conflicts`]); older ones
    /// are dropped and counted.
    pub conflict_log_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            max_drift_ms: DEFAULT_MAX_DRIFT_MS,
            conflict_log_capacity: crate::conflicts::DEFAULT_CONFLICT_LOG_CAPACITY,
        }
    }
}

/// Something that happened, sent after the transaction committed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// Local changes committed (model rows and outbox rows are durable).
    Committed(Arc<[Change]>),
    /// Log entries applied up to and including `through`.
    Applied {
        /// The new applied seq.
        through: Seq,
    },
    /// The leader sequenced outbox rows up to the given log head.
    Sequenced {
        /// The log head after sequencing.
        head: Seq,
    },
    /// The sync log was rewound after a divergence (see [`Library::rewind`]).
    Rewound {
        /// The seq the log now ends at.
        to: Seq,
        /// Changes waiting to be re-submitted ([`Library::resubmit`]).
        resubmit: u64,
    },
}

/// Describes a bulk operation whose rows travel outside the log (see [`Library::log_bulk`] and
/// [`Library::bulk_write`]).
///
/// The rows of one description are identified by their stamps: every row of `model` written
/// by the entry's origin device with an HLC in `first_hlc..=last_hlc` (rows edited since carry
/// a later stamp and travel through the log as ordinary changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkDescription {
    /// Model of the rows.
    pub model: String,
    /// What was done, e.g. `"index location <uuid>"`.
    pub description: String,
    /// Number of rows.
    pub count: u64,
    /// blake3 over the rows' payloads in write order (each length-prefixed, 8 bytes LE).
    pub content_hash: [u8; 32],
    /// HLC of the first row written.
    pub first_hlc: Hlc,
    /// HLC of the last row written.
    pub last_hlc: Hlc,
}

/// The model whose rows say who belongs to a library ([`library_models::Device`]): a change
/// of it changes the [`Library::roster`].
pub const DEVICE_MODEL: &str = <library_models::Device as syncable::Syncable>::MODEL;

/// One device row as membership reads it ([`Library::roster`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RosterEntry {
    /// The device (the row's id).
    pub device: DeviceId,
    /// Its iroh endpoint id, when the row holds one of 32 bytes (the device is paired);
    /// `None` for an empty or malformed field.
    pub endpoint: Option<[u8; 32]>,
    /// The row is tombstoned: the device was removed from the library. Device rows are not
    /// revivable, so a removal is final.
    pub removed: bool,
}

impl RosterEntry {
    /// An entry (for code that computes membership from rows it got elsewhere, and tests).
    pub fn new(device: DeviceId, endpoint: Option<[u8; 32]>, removed: bool) -> Self {
        Self { device, endpoint, removed }
    }
}

/// What one [`Library::apply_entries`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entries written (they won their record).
    pub written: u64,
    /// Entries that lost to the stored stamp, or were already applied.
    pub unchanged: u64,
    /// Entries kept in `pending_entries` (unknown model or unreadable payload).
    pub kept: u64,
    /// Bulk descriptions (nothing to write).
    pub bulk: u64,
    /// Entries at or below the applied seq (skipped).
    pub skipped: u64,
    /// Outbox rows re-keyed because the log holds another change under one of their origin
    /// keys (see [`Library::open`]).
    pub rekeyed: u64,
    /// Conflicts recorded in the local conflict log ([`Library::conflicts`]).
    pub conflicts: u64,
}

impl ApplyReport {
    fn add(&mut self, other: Self) {
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.kept += other.kept;
        self.bulk += other.bulk;
        self.skipped += other.skipped;
        self.rekeyed += other.rekeyed;
        self.conflicts += other.conflicts;
    }
}

/// Log entries kept, not applied, for one model and reason ([`Library::kept`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The model.
    pub model: String,
    /// Why they are kept (unknown model, unreadable payload, missing table).
    pub reason: String,
    /// How many.
    pub entries: u64,
}

/// What one [`Library::rewind`] (or [`Library::stage_rewind`]) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewindReport {
    /// The seq the log is rewound to.
    pub to: Seq,
    /// Entries of the log after `to` (the discarded suffix).
    pub discarded: u64,
    /// Changes newly stored for re-submission (a change already stored is not counted again).
    pub stored: u64,
    /// The applied seq before the rewind.
    pub applied_before: Seq,
    /// The applied seq after it: `min(applied_before, to)`.
    pub applied_after: Seq,
}

fn to_db(v: u64) -> i64 {
    // Bit reinterpretation, exact round trip.
    v as i64
}
fn from_db(v: i64) -> u64 {
    v as u64
}

/// The write path on one library database — blocking; wrap it in
/// [`crate::TransactionManager`] for async code, or call it from a blocking thread.
///
/// - [`Library::commit`]: model writes + the transaction's outbox row + counters, ONE
///   transaction.
/// - [`Library::sequence`] (leader): outbox → sync log (idempotent), then apply.
/// - [`Library::apply_entries`] / [`Library::catch_up`] / [`Library::receive`]: LWW apply with
///   the applied seq in the same transaction.
/// - [`Library::rewind`] / [`Library::resubmit`]: after a divergence, discard the log suffix
///   the winner does not share and re-submit every change in it.
pub struct Library {
    conn: SqliteConnection,
    library: LibraryId,
    device: DeviceId,
    registry: Registry,
    hlc: HybridClock,
    origin_seq: u64,
    applied_seq: Seq,
    /// A rewind whose log truncation is not done yet (mirrors `local_state.rewind_to`).
    rewind_to: Option<Seq>,
    /// Rows in `resubmit` (kept with the table, so that apply skips the delete when it is 0).
    resubmit_rows: u64,
    /// The physical clock (for the conflict log's times).
    clock: Arc<dyn Clock>,
    /// Bound of the conflict log.
    conflict_capacity: usize,
    /// The highest own origin seq the sync log was last seen to hold: re-keying goes past it.
    rekey_floor: u64,
    events: broadcast::Sender<Event>,
    /// Checkpoints off the commit path (none in memory): see [`sync_log::wal`].
    _checkpointer: Option<sync_log::wal::Checkpointer>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("library", &self.library)
            .field("device", &self.device)
            .field("origin_seq", &self.origin_seq)
            .field("applied_seq", &self.applied_seq)
            .field("rewind_to", &self.rewind_to)
            .field("resubmit_rows", &self.resubmit_rows)
            .finish_non_exhaustive()
    }
}

impl Library {
    /// Opens (creating and migrating if needed) the library database at `path` for `device`,
    /// bound to the library of `log` — this device's own sync log, which is always at hand
    /// because both files live on the device — then reconciles the two and re-applies kept
    /// entries whose model `registry` now knows.
    ///
    /// - **Binding:** a new database records `log.library()`; a database of another library
    ///   is [`Error::ForeignLog`], one of another device [`Error::WrongDevice`], and nothing
    ///   is written.
    /// - **Origin keys are never reused:** the origin counter moves past the highest origin
    ///   seq of this device that the log holds (or pruned), so a database restored from a
    ///   backup or re-created hands out fresh keys even before any catch-up. Outbox rows
    ///   written under keys the log holds with *other* changes are re-keyed (see the
    ///   `outbox` rules in the crate docs); rows the log holds unchanged stay and are removed
    ///   by the next apply.
    /// - **A database ahead of its log** (the log restored from an older backup): the applied
    ///   seq drops to the log's head, so the entries the log will hold at those seqs are
    ///   applied, not skipped; a warning says so.
    ///
    /// A rewind interrupted by a crash ([`Library::pending_rewind`]) is finished by the first
    /// [`Library::catch_up`], [`Library::receive`] or [`Library::sequence`], and
    /// [`Library::apply_entries`] refuses until then.
    ///
    /// ```
    /// use library_models as _;
    /// use txn_manager::{Config, Library, Op};
    /// let registry = syncable::Registry::from_inventory()?;
    /// let device = sync_log::DeviceId::new_v7();
    /// let mut log = sync_log::SyncLogStore::in_memory(sync_log::LibraryId::new_v7())?;
    /// let mut lib = Library::open(":memory:".as_ref(), &mut log, device, registry, Config::default())?;
    /// let changes = lib.commit(vec![Op::put(library_models::Tag::new("a".into(), None))])?;
    /// assert_eq!(changes[0].origin.seq, 1);
    /// assert_eq!(lib.outbox(10)?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(
        path: &Path,
        log: &mut SyncLogStore,
        device: DeviceId,
        registry: Registry,
        config: Config,
    ) -> Result<Self, Error> {
        let library = log.library();
        let mut conn = library_models::open_library(path)?;
        let state = conn.immediate_transaction(|conn| {
            let bound = library_models::library_id(conn)?.map(LibraryId);
            if let Some(database) = bound.filter(|b| *b != library) {
                return Err(Error::ForeignLog { database, log: library });
            }
            let state: Option<LocalState> = local_state::table
                .find(1)
                .select(LocalState::as_select())
                .get_result(conn)
                .optional()?;
            let state = match state {
                Some(s) if s.device_id.0 != device.0 => {
                    return Err(Error::WrongDevice {
                        expected: device,
                        found: DeviceId(s.device_id.0),
                    });
                }
                Some(s) => {
                    if bound.is_none() {
                        tracing::warn!(%library, "library database had no library id: bound now");
                    }
                    s
                }
                None => {
                    let s = LocalState {
                        id: 1,
                        device_id: Id(device.0),
                        applied_seq: 0,
                        origin_seq: 0,
                        hlc: 0,
                        rewind_to: None,
                    };
                    diesel::insert_into(local_state::table).values(&s).execute(conn)?;
                    s
                }
            };
            if bound.is_none() {
                library_models::set_library_id(conn, library.0)?;
            }
            Ok(state)
        })?;
        let resubmit_rows: i64 = resubmit::table.count().get_result(&mut conn)?;
        let checkpointer = if path == Path::new(":memory:") {
            None
        } else {
            diesel::connection::SimpleConnection::batch_execute(
                &mut conn,
                sync_log::wal::WRITER_PRAGMAS,
            )?;
            Some(sync_log::wal::Checkpointer::start(path)?)
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut lib = Self {
            conn,
            library,
            device,
            registry,
            hlc: HybridClock::new(
                config.clock.clone(),
                Hlc(from_db(state.hlc)),
                config.max_drift_ms,
            ),
            clock: config.clock,
            conflict_capacity: config.conflict_log_capacity,
            rekey_floor: 0,
            origin_seq: from_db(state.origin_seq),
            applied_seq: Seq(from_db(state.applied_seq)),
            rewind_to: state.rewind_to.map(|s| Seq(from_db(s))),
            resubmit_rows: from_db(resubmit_rows),
            events,
            _checkpointer: checkpointer,
        };
        lib.reconcile(log)?;
        let retried = lib.retry_pending()?;
        if retried.kept > 0 {
            tracing::info!(kept = retried.kept, "log entries still kept for a newer build");
        }
        Ok(lib)
    }

    /// Makes the database agree with its log at open (see [`Library::open`]): the origin
    /// counter past every own key of the log, outbox rows under taken keys re-keyed, the
    /// applied seq not above the log's head. One transaction, and only when something is off.
    fn reconcile(&mut self, log: &mut SyncLogStore) -> Result<(), Error> {
        let head = log.head().seq;
        let ahead = self.applied_seq > head;
        let max_own = log.max_origin_seq(self.device)?.unwrap_or(0);
        // Rows with a key the log may hold: normally only rows a crash left between the log's
        // append and the library's apply (the log holds them unchanged).
        let suspects: Vec<OutboxRow> = outbox::table
            .filter(outbox::first_origin_seq.le(to_db(max_own.min(i64::MAX as u64))))
            .order(outbox::last_origin_seq.asc())
            .select(OutboxRow::as_select())
            .load(&mut self.conn)?;
        let mut taken = Vec::new();
        for row in suspects {
            let changes = row.decode()?;
            let mut same = true;
            for change in &changes {
                if !log_holds(log, change)? {
                    same = false;
                    break;
                }
            }
            if !same {
                taken.push((from_db(row.last_origin_seq), changes));
            }
        }
        let rewind_past_head = self.rewind_to.is_some_and(|to| to > head);
        if !ahead && max_own <= self.origin_seq && taken.is_empty() && !rewind_past_head {
            return Ok(());
        }
        let applied = self.applied_seq.min(head);
        let mut origin_seq = self.origin_seq.max(max_own);
        let rekeyed = taken.len();
        let resubmit_rows = self.conn.immediate_transaction(|conn| {
            if ahead || rewind_past_head {
                // Kept entries the log no longer holds: their seqs will be reused, so their
                // changes wait for re-submission instead (nothing is dropped).
                let lost: Vec<PendingRow> = pending_entries::table
                    .filter(pending_entries::seq.gt(to_db(head.0)))
                    .select(PendingRow::as_select())
                    .load(conn)?;
                for row in &lost {
                    let entry = row.decode()?;
                    diesel::insert_or_ignore_into(resubmit::table)
                        .values(&ResubmitRow::new(&entry.change)?)
                        .execute(conn)?;
                }
                diesel::delete(
                    pending_entries::table.filter(pending_entries::seq.gt(to_db(head.0))),
                )
                .execute(conn)?;
                diesel::update(local_state::table.find(1))
                    .set(local_state::applied_seq.eq(to_db(applied.0)))
                    .execute(conn)?;
            }
            if rewind_past_head {
                // The log is already shorter than the rewind's target; the suffix was stored
                // by the rewind's first step.
                diesel::update(local_state::table.find(1))
                    .set(local_state::rewind_to.eq(None::<i64>))
                    .execute(conn)?;
            }
            for (last, changes) in taken {
                origin_seq = rekey(conn, last, changes, origin_seq)?;
            }
            diesel::update(local_state::table.find(1))
                .set(local_state::origin_seq.eq(to_db(origin_seq)))
                .execute(conn)?;
            let rows: i64 = resubmit::table.count().get_result(conn)?;
            Ok::<_, Error>(rows)
        })?;
        self.resubmit_rows = from_db(resubmit_rows);
        if ahead {
            tracing::warn!(
                applied = self.applied_seq.0,
                log_head = head.0,
                "library database is ahead of its sync log (restored log?): applied seq lowered"
            );
        }
        if max_own > self.origin_seq {
            tracing::warn!(
                counter = self.origin_seq,
                log_holds = max_own,
                "origin counter behind the sync log (restored or re-created library?): moved on"
            );
        }
        self.applied_seq = applied;
        self.origin_seq = origin_seq;
        if rewind_past_head {
            self.rewind_to = None;
        }
        if rekeyed > 0 {
            tracing::warn!(rows = rekeyed, "outbox rows under taken origin keys re-keyed");
        }
        Ok(())
    }

    /// Refuses a log of another library than the one this database is bound to.
    fn check_log(&self, log: &SyncLogStore) -> Result<(), Error> {
        if log.library() == self.library {
            Ok(())
        } else {
            Err(Error::ForeignLog { database: self.library, log: log.library() })
        }
    }

    /// The library this database is bound to.
    pub fn library(&self) -> LibraryId {
        self.library
    }

    /// This device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The last global seq applied to this database.
    pub fn applied_seq(&self) -> Seq {
        self.applied_seq
    }

    /// The target of a rewind that a crash interrupted (stored, not yet truncated from the
    /// sync log), if any: the next [`Library::finish_rewind`] completes it.
    pub fn pending_rewind(&self) -> Option<Seq> {
        self.rewind_to
    }

    /// How many changes wait to be re-submitted after a divergence ([`Library::resubmit`]).
    pub fn resubmit_count(&self) -> u64 {
        self.resubmit_rows
    }

    /// The last origin seq handed out.
    pub fn origin_seq(&self) -> u64 {
        self.origin_seq
    }

    /// The clock's last reading.
    pub fn hlc(&self) -> Hlc {
        self.hlc.last()
    }

    /// The registry used to apply entries.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Subscribes to events (sent after each commit).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn events_sender(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    /// The stored record `id` of model `T` (tombstones included), if any: how an application
    /// reads what it committed or received.
    pub fn load<T: LibraryModel>(&mut self, id: Id) -> Result<Option<T>, Error> {
        Ok(T::load(&mut self.conn, id)?)
    }

    /// The member devices of the library: its device rows that are not tombstoned, with their
    /// endpoint ids (empty until paired), in id order — where membership comes from.
    pub fn members(&mut self) -> Result<Vec<library_models::Device>, Error> {
        Ok(self.device_rows()?.into_iter().filter(|d| !d.tombstone).collect())
    }

    /// Every device row, removed ones included, in id order: where a sync service takes its
    /// membership from (who may connect, and with which endpoint id).
    pub fn roster(&mut self) -> Result<Vec<RosterEntry>, Error> {
        Ok(self
            .device_rows()?
            .into_iter()
            .map(|d| RosterEntry {
                device: DeviceId(d.uuid.0),
                endpoint: <[u8; 32]>::try_from(d.endpoint.as_slice()).ok(),
                removed: d.tombstone,
            })
            .collect())
    }

    /// Every device row (tombstones included), in id order, read page by page.
    fn device_rows(&mut self) -> Result<Vec<library_models::Device>, Error> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = library_models::Device::page(&mut self.conn, after, 1_000)?;
            let Some(last) = page.last() else { return Ok(out) };
            after = Some(last.uuid);
            out.extend(page);
        }
    }

    /// The connection, for this workspace's tests and tools (an application reads through
    /// [`Library::load`]). Writing to syncable tables through it bypasses the outbox: don't.
    #[doc(hidden)]
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// The content hash of this library's syncable tables.
    pub fn content_hash(&mut self) -> Result<library_models::ContentHash, Error> {
        Ok(self.registry.content_hash(&mut self.conn)?)
    }

    fn ctx(&self) -> StampCtx {
        StampCtx { device: self.device, origin_seq: self.origin_seq, hlc: self.hlc.clone() }
    }

    fn finish(&mut self, ctx: StampCtx) {
        self.origin_seq = ctx.origin_seq;
        self.hlc = ctx.hlc;
    }

    fn emit(&self, event: Event) {
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    fn emit_committed(&self, changes: &[Change]) {
        // Copying the changes is only worth it when someone listens.
        if self.events.receiver_count() > 0 {
            self.emit(Event::Committed(changes.into()));
        }
    }

    /// The entries kept (not applied) in this database, grouped by model and reason (an unknown
    /// model, an unreadable payload, a missing table): what a status shows.
    pub fn kept(&mut self) -> Result<Vec<Kept>, Error> {
        let rows: Vec<(String, String, i64)> = pending_entries::table
            .group_by((pending_entries::model, pending_entries::reason))
            .select((pending_entries::model, pending_entries::reason, diesel::dsl::count_star()))
            .order((pending_entries::model, pending_entries::reason))
            .load(&mut self.conn)?;
        Ok(rows
            .into_iter()
            .map(|(model, reason, n)| Kept { model, reason, entries: from_db(n) })
            .collect())
    }

    /// The newest `limit` recorded conflicts, newest first: applied changes that overwrote a
    /// local change no other device had seen yet, or lost to one (per field for models that
    /// merge per field: only when both set one field to different values).
    pub fn conflicts(&mut self, limit: usize) -> Result<Vec<Conflict>, Error> {
        crate::conflicts::list(&mut self.conn, limit)
    }

    /// Empties the conflict log; returns how many entries went.
    pub fn clear_conflicts(&mut self) -> Result<u64, Error> {
        crate::conflicts::clear(&mut self.conn)
    }

    /// How many conflicts were dropped because the log was full (oldest first).
    pub fn conflicts_dropped(&mut self) -> Result<u64, Error> {
        crate::conflicts::dropped_count(&mut self.conn)
    }

    /// How many local changes wait in the outbox (not yet seen in the global log).
    pub fn outbox_len(&mut self) -> Result<u64, Error> {
        let n: i64 = outbox::table
            .select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "COALESCE(SUM(last_origin_seq - first_origin_seq + 1), 0)",
            ))
            .get_result(&mut self.conn)?;
        Ok(from_db(n))
    }

    /// How many log entries are kept (not applied) in this database.
    pub fn pending_count(&mut self) -> Result<u64, Error> {
        let n: i64 = pending_entries::table.count().get_result(&mut self.conn)?;
        Ok(from_db(n))
    }
}

/// Whether `log` holds exactly `change` under its origin key (`false` when the key is absent,
/// pruned, or holds another change).
fn log_holds(log: &mut SyncLogStore, change: &Change) -> Result<bool, Error> {
    let Some(seq) = log.find_origin(&change.origin)? else { return Ok(false) };
    if seq <= log.floor().seq {
        return Ok(false);
    }
    let entry = log.read_after(Seq(seq.0 - 1), 1)?;
    Ok(entry.first().is_some_and(|e| e.seq == seq && e.change == *change))
}
