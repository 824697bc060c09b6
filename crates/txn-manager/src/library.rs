//! [`Library`]: the blocking core of the write path on one library database.

use std::path::Path;
use std::sync::Arc;

use diesel::prelude::*;
use library_models::schema::{local_state, outbox, pending_entries, resubmit};
use library_models::{Id, LibraryModel, LocalState, OutboxRow, PendingRow, ResubmitRow};
use serde::{Deserialize, Serialize};
use sync_log::{Change, ChangeType, DeviceId, Epoch, Hlc, LibraryId, LogEntry, Seq, SyncLogStore};
use syncable::{Applied, Registry};
use tokio::sync::broadcast;

use crate::op::StampCtx;
use crate::outbox::{OwnEntries, next_key, rekey};
use crate::{Clock, DEFAULT_MAX_DRIFT_MS, Error, HybridClock, Op, SystemClock};

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
}

impl Default for Config {
    fn default() -> Self {
        Self { clock: Arc::new(SystemClock), max_drift_ms: DEFAULT_MAX_DRIFT_MS }
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
}

impl ApplyReport {
    fn add(&mut self, other: Self) {
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.kept += other.kept;
        self.bulk += other.bulk;
        self.skipped += other.skipped;
        self.rekeyed += other.rekeyed;
    }
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
    events: broadcast::Sender<Event>,
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
                .first(conn)
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
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut lib = Self {
            conn,
            library,
            device,
            registry,
            hlc: HybridClock::new(config.clock, Hlc(from_db(state.hlc)), config.max_drift_ms),
            origin_seq: from_db(state.origin_seq),
            applied_seq: Seq(from_db(state.applied_seq)),
            rewind_to: state.rewind_to.map(|s| Seq(from_db(s))),
            resubmit_rows: from_db(resubmit_rows),
            events,
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

    /// The connection, for reads (and for tests). Writing to syncable tables through it
    /// bypasses the outbox: don't.
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

    /// The shape of every local commit: in ONE transaction, `write` makes the model writes and
    /// returns their changes (stamped through the context), then the transaction's outbox row
    /// and the counters are written; after the commit the context is kept and an
    /// [`Event::Committed`] follows.
    fn commit_with(
        &mut self,
        write: impl FnOnce(&mut SqliteConnection, &mut StampCtx) -> Result<Vec<Change>, Error>,
    ) -> Result<Vec<Change>, Error> {
        let mut ctx = self.ctx();
        let changes = self.conn.immediate_transaction(|conn| {
            let changes = write(conn, &mut ctx)?;
            insert_outbox(conn, &changes)?;
            save_counters(conn, &ctx)?;
            Ok::<_, Error>(changes)
        })?;
        self.finish(ctx);
        self.emit_committed(&changes);
        Ok(changes)
    }

    /// Commits `ops` in ONE transaction: each model write, one outbox row with all the
    /// changes, and the new origin counter and clock. Versions and stamps are set here.
    /// Returns the changes (in order); an [`Event::Committed`] follows the commit. On error
    /// nothing is written.
    pub fn commit(&mut self, ops: Vec<Op>) -> Result<Vec<Change>, Error> {
        self.commit_with(|conn, ctx| {
            let mut changes = Vec::with_capacity(ops.len());
            for op in ops {
                if let Some(change) = op.0.run(conn, ctx)? {
                    changes.push(change);
                }
            }
            Ok(changes)
        })
    }

    /// Commits new records of one model in ONE transaction with multi-row inserts: version 1,
    /// stamped here, with one outbox row for the batch. Fails (writing nothing) if any id
    /// exists.
    pub fn insert_batch<T: LibraryModel + 'static>(
        &mut self,
        mut records: Vec<T>,
    ) -> Result<Vec<Change>, Error> {
        self.commit_with(|conn, ctx| {
            let mut changes = Vec::with_capacity(records.len());
            for record in &mut records {
                let stamp = ctx.stamp(1)?;
                record.set_meta(stamp, false);
                let payload = record.encode()?;
                changes.push(ctx.change(
                    T::MODEL,
                    record.uuid(),
                    ChangeType::Insert,
                    stamp,
                    payload,
                ));
            }
            T::insert_all(conn, &records)?;
            Ok(changes)
        })
    }

    /// Records ONE bulk entry describing a bulk operation (its outbox row, one transaction).
    /// The rows themselves are not in the log: see [`Library::bulk_write`].
    pub fn log_bulk(&mut self, description: &BulkDescription) -> Result<Change, Error> {
        let payload = sync_log::codec::encode(description)?;
        let mut changes = self.commit_with(|_, ctx| {
            let stamp = ctx.stamp(1)?;
            Ok(vec![ctx.change(&description.model, Id::new_v7(), ChangeType::Bulk, stamp, payload)])
        })?;
        changes.pop().ok_or_else(|| Error::Invalid("bulk entry was not recorded".into()))
    }

    /// Writes many new records in large transactions ([`BULK_TXN_ROWS`] each) WITHOUT an
    /// outbox row per record: each transaction writes its rows and ONE bulk entry (its outbox
    /// row) describing them — model, description, count, content hash and the HLC range that
    /// identifies them — so a row never exists locally without a bulk entry that lets other
    /// devices learn of it, whatever fails or crashes. The rows reach other devices by a
    /// streamed transfer, not through the log. Returns the bulk entries, one per transaction
    /// that wrote rows.
    ///
    /// Records whose id already has a row (written earlier, through the normal path or by an
    /// interrupted run of the same operation) are skipped, as are repeats of an id within
    /// `records` (the first one is written): redoing an operation after a failure writes
    /// exactly what is missing. On error, the transactions that committed keep their rows and
    /// entries; the failing one writes nothing.
    pub fn bulk_write<T: LibraryModel + 'static>(
        &mut self,
        records: Vec<T>,
        description: &str,
    ) -> Result<Vec<Change>, Error> {
        let mut entries = Vec::new();
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let chunk: Vec<T> = records.by_ref().take(BULK_TXN_ROWS).collect();
            let entry = self.commit_with(|conn, ctx| {
                let ids: Vec<Id> = chunk.iter().map(LibraryModel::uuid).collect();
                let mut seen: std::collections::HashSet<Id> =
                    T::existing(conn, &ids)?.into_iter().collect();
                let mut fresh: Vec<T> =
                    chunk.into_iter().filter(|r| seen.insert(r.uuid())).collect();
                if fresh.is_empty() {
                    return Ok(Vec::new());
                }
                let mut hasher = blake3::Hasher::new();
                let mut range: Option<(Hlc, Hlc)> = None;
                for record in &mut fresh {
                    let stamp = ctx.stamp(1)?;
                    record.set_meta(stamp, false);
                    let payload = record.encode()?;
                    hasher.update(&(payload.len() as u64).to_le_bytes());
                    hasher.update(&payload);
                    range = Some((range.map_or(stamp.hlc, |r| r.0), stamp.hlc));
                }
                T::insert_all(conn, &fresh)?;
                let (first_hlc, last_hlc) = range.unwrap_or_default();
                let payload = sync_log::codec::encode(&BulkDescription {
                    model: T::MODEL.to_owned(),
                    description: description.to_owned(),
                    count: fresh.len() as u64,
                    content_hash: *hasher.finalize().as_bytes(),
                    first_hlc,
                    last_hlc,
                })?;
                let stamp = ctx.stamp(1)?;
                Ok(vec![ctx.change(T::MODEL, Id::new_v7(), ChangeType::Bulk, stamp, payload)])
            })?;
            entries.extend(entry);
        }
        Ok(entries)
    }

    /// Unsequenced local changes, oldest first: what a follower forwards. Whole outbox rows
    /// (one per committed transaction, which must be submitted together) are returned while
    /// they fit in `limit` changes, and always at least one row.
    pub fn outbox(&mut self, limit: usize) -> Result<Vec<Change>, Error> {
        self.outbox_after(0, limit)
    }

    /// Whole outbox rows after origin seq `after`, while they fit in `limit` changes (at least
    /// one row).
    fn outbox_after(&mut self, mut after: i64, limit: usize) -> Result<Vec<Change>, Error> {
        let mut changes = Vec::new();
        loop {
            let rows: Vec<OutboxRow> = outbox::table
                .filter(outbox::last_origin_seq.gt(after))
                .order(outbox::last_origin_seq.asc())
                .limit(64)
                .select(OutboxRow::as_select())
                .load(&mut self.conn)?;
            let Some(last) = rows.last() else { return Ok(changes) };
            after = last.last_origin_seq;
            for row in rows {
                let row_len = from_db(row.last_origin_seq - row.first_origin_seq + 1);
                if !changes.is_empty() && changes.len() as u64 + row_len > limit as u64 {
                    return Ok(changes);
                }
                changes.extend(row.decode()?);
            }
        }
    }

    /// Leader: moves every outbox row into the sync log (`append` is idempotent by origin
    /// key; each row's changes in one append, in origin order), then applies the log up to its
    /// head — which removes the outbox rows, because a row is deleted exactly when its last
    /// change is applied from the log. Run at start-up
    /// it is the recovery: rows already in the log are not sequenced again, only cleaned up;
    /// rows not yet in the log are sequenced. Returns the log head.
    ///
    /// Changes waiting in `resubmit` (a discarded suffix, see [`Library::rewind`]) are appended
    /// first, in their log order: a device that becomes leader after a divergence re-sequences
    /// what it holds. A pending rewind is finished before anything else.
    pub fn sequence(&mut self, log: &mut SyncLogStore, epoch: Epoch) -> Result<Seq, Error> {
        self.finish_rewind(log)?;
        // Apply what the log holds first: an own entry under a key an outbox row reuses
        // re-keys that row here, before the row is appended under the taken key.
        self.catch_up(log)?;
        self.sequence_resubmit(log, epoch)?;
        let mut after = 0i64;
        loop {
            // Whole rows, in origin order, about APPLY_BATCH changes per append: the changes of
            // one row are always appended together.
            let changes = self.outbox_after(after, APPLY_BATCH)?;
            let Some(last) = changes.last() else { break };
            after = to_db(last.origin.seq);
            let appended = log.append(epoch, &changes)?;
            let fresh = appended.iter().filter(|a| a.new).count();
            if fresh < appended.len() {
                tracing::debug!(
                    already = appended.len() - fresh,
                    "outbox changes already in the log (recovered), not sequenced again"
                );
            }
        }
        self.catch_up(log)?;
        let head = log.head().seq;
        self.emit(Event::Sequenced { head });
        Ok(head)
    }

    /// Applies every entry of `log` after the applied seq, in batches of [`APPLY_BATCH`]
    /// (each batch one transaction with its applied seq). At start-up this is the recovery
    /// of a follower or leader that crashed between its sync log and its library database,
    /// and it finishes a rewind a crash interrupted ([`Library::finish_rewind`]) first.
    pub fn catch_up(&mut self, log: &mut SyncLogStore) -> Result<ApplyReport, Error> {
        self.check_log(log)?;
        self.finish_rewind(log)?;
        let mut total = ApplyReport::default();
        loop {
            let entries = log.read_after(self.applied_seq, APPLY_BATCH)?;
            if entries.is_empty() {
                return Ok(total);
            }
            total.add(self.apply_entries(&entries)?);
        }
    }

    /// Follower: stores `entries` from the leader in the sync log copy FIRST (so they are
    /// never lost), then applies them with the applied seq. A crash between the two is
    /// repaired by [`Library::catch_up`] at the next start. A pending rewind is finished
    /// before the entries are stored.
    pub fn receive(
        &mut self,
        log: &mut SyncLogStore,
        entries: &[LogEntry],
    ) -> Result<ApplyReport, Error> {
        self.check_log(log)?;
        self.finish_rewind(log)?;
        log.append_sequenced(entries)?;
        self.catch_up(log)
    }

    /// Applies consecutive log entries in ONE transaction together with the new applied seq
    /// and clock. Entries at or below the applied seq are skipped (applying twice is a no-op);
    /// the first new entry must be `applied seq + 1` ([`Error::Gap`]).
    ///
    /// Per entry: the HLC observes its stamp; a bulk entry writes nothing; an entry for a model
    /// this build does not know, or whose payload it cannot read, is **kept** in
    /// `pending_entries` (not applied, not lost, and the applied seq moves past it so later
    /// entries are never blocked) and re-applied by [`Library::retry_pending`] when a build
    /// that knows it opens the library; anything else goes through the registry's LWW apply.
    /// An entry whose origin is this device and whose origin seq ends an outbox row removes
    /// that row, and moves the origin counter past its origin seq (never reused, even by a
    /// library database newer than the log's copy of this device's changes). An entry whose
    /// origin key waits in `resubmit` removes that row (the change is in the global log now).
    ///
    /// Refused with [`Error::RewindPending`] while a rewind is pending: the entries may come
    /// from the suffix that rewind discards.
    pub fn apply_entries(&mut self, entries: &[LogEntry]) -> Result<ApplyReport, Error> {
        if let Some(to) = self.rewind_to {
            return Err(Error::RewindPending { to });
        }
        let mut report = ApplyReport::default();
        let mut next = self.applied_seq.next();
        let mut fresh = Vec::with_capacity(entries.len());
        for e in entries {
            if e.seq < next {
                report.skipped += 1;
                continue;
            }
            if e.seq != next {
                return Err(Error::Gap { expected: next, got: e.seq });
            }
            fresh.push(e);
            next = next.next();
        }
        let Some(last) = fresh.last().map(|e| e.seq) else { return Ok(report) };
        let mut hlc = self.hlc.clone();
        // Our own changes in the log move the origin counter past them: a library database
        // that is newer than the log's copy of our changes (lost, re-created, restored) must
        // not hand out an origin key the log already holds.
        let mut origin_seq = self.origin_seq;
        let registry = &self.registry;
        let device = self.device;
        // Kept with the table: when nothing waits for re-submission (almost always), no delete.
        let resubmit_rows = self.resubmit_rows;
        let mut resubmitted = 0u64;
        let mut rekeyed = 0u64;
        self.conn.immediate_transaction(|conn| {
            let mut own = OwnEntries::default();
            let mut known: Vec<&LogEntry> = Vec::with_capacity(fresh.len());
            for e in &fresh {
                hlc.observe(e.change.hlc);
                if resubmit_rows > resubmitted {
                    match settle_resubmit(conn, &e.change)? {
                        Resubmit::None => {}
                        Resubmit::Removed => resubmitted += 1,
                        Resubmit::Taken(ours) if ours.origin.device == device => {
                            // Our change under a key the log gives to another: re-keyed into
                            // the outbox (at the end of this transaction), never dropped.
                            delete_resubmit(conn, &ours)?;
                            resubmitted += 1;
                            own.rekey_later(ours);
                        }
                        Resubmit::Taken(theirs) => tracing::warn!(
                            origin = ?theirs.origin,
                            "a change waiting for re-submission reuses an origin key the log \
                             gives to another change; kept for its device to re-key"
                        ),
                    }
                }
                if e.change.origin.device == device {
                    own.settle(conn, &e.change)?;
                    if i64::try_from(e.change.origin.seq).is_ok() {
                        // (A forged seq near 2^64 must not make our counter overflow.)
                        origin_seq = origin_seq.max(e.change.origin.seq);
                    }
                }
                if e.change.change == ChangeType::Bulk {
                    report.bulk += 1;
                } else if registry.knows(&e.change.model) {
                    known.push(e);
                } else {
                    keep(conn, e, "unknown model")?;
                    report.kept += 1;
                }
            }
            // Known entries keep their order; runs of one model go through one batch apply.
            let changes: Vec<&Change> = known.iter().map(|e| &e.change).collect();
            let applied = registry.apply_batch(conn, &changes)?;
            report.written += applied.written;
            report.unchanged += applied.unchanged;
            for (i, err) in &applied.rejected {
                let e = known[*i];
                tracing::warn!(seq = e.seq.0, error = %err, "log entry kept, not applied");
                keep(conn, e, &err.to_string())?;
                report.kept += 1;
            }
            (origin_seq, rekeyed) = own.finish(conn, origin_seq)?;
            diesel::update(local_state::table.find(1))
                .set((
                    local_state::applied_seq.eq(to_db(last.0)),
                    local_state::hlc.eq(to_db(hlc.last().0)),
                    local_state::origin_seq.eq(to_db(origin_seq)),
                ))
                .execute(conn)?;
            Ok::<_, Error>(())
        })?;
        self.hlc = hlc;
        self.origin_seq = origin_seq;
        self.applied_seq = last;
        self.resubmit_rows -= resubmitted;
        report.rekeyed = rekeyed;
        self.emit(Event::Applied { through: last });
        Ok(report)
    }

    /// Re-applies kept entries whose model the registry now knows (called by
    /// [`Library::open`]); entries still unknown stay kept. One transaction.
    pub fn retry_pending(&mut self) -> Result<ApplyReport, Error> {
        let rows: Vec<PendingRow> = pending_entries::table
            .order(pending_entries::seq.asc())
            .select(PendingRow::as_select())
            .load(&mut self.conn)?;
        let mut report = ApplyReport::default();
        if rows.is_empty() {
            return Ok(report);
        }
        let registry = &self.registry;
        let device = self.device;
        let origin_seq = self.origin_seq;
        let new_counter = self.conn.immediate_transaction(|conn| {
            let mut own = OwnEntries::default();
            for row in &rows {
                if !registry.knows(&row.model) {
                    report.kept += 1;
                    continue;
                }
                let entry = row.decode()?;
                diesel::delete(pending_entries::table.find(row.seq)).execute(conn)?;
                if entry.change.origin.device == device {
                    own.settle(conn, &entry.change)?;
                }
                apply_one(conn, registry, &entry, &mut report)?;
            }
            let (counter, rekeyed) = own.finish(conn, origin_seq)?;
            report.rekeyed = rekeyed;
            if counter != origin_seq {
                diesel::update(local_state::table.find(1))
                    .set(local_state::origin_seq.eq(to_db(counter)))
                    .execute(conn)?;
            }
            Ok::<_, Error>(counter)
        })?;
        self.origin_seq = new_counter;
        tracing::debug!(?report, "kept entries retried");
        Ok(report)
    }

    /// Rewinds after a divergence (design rule 5): discards the sync log's suffix after
    /// `common` — the last seq this device shares with the winner — and keeps every change of
    /// that suffix, whatever its origin, for re-submission ([`Library::resubmit`]).
    ///
    /// 1. ONE library transaction ([`Library::stage_rewind`]): every change of the suffix goes
    ///    to the local `resubmit` table (insert-or-ignore by origin key), the applied seq drops
    ///    to `min(applied, common)`, entries of the suffix kept in `pending_entries` are
    ///    dropped (their seqs will be reused by the winner's entries; their changes are in
    ///    `resubmit`), and `common` is recorded as the pending rewind target.
    /// 2. The log is truncated after `common` ([`SyncLogStore::truncate_after`]).
    /// 3. The pending target is cleared.
    ///
    /// A crash after step 1 leaves the target recorded; [`Library::finish_rewind`] (called by
    /// `catch_up`, `receive`, `sequence`) repeats steps 1–3, and [`Library::apply_entries`]
    /// refuses until then, so the untruncated suffix is never applied again. Rewinding again
    /// to the same seq, or to the head with nothing applied beyond it, changes nothing.
    ///
    /// `common` below the log's floor or above its head is [`Error::RewindOutOfRange`].
    /// After the rewind, apply the winner's entries after `common` ([`Library::receive`]); the
    /// winner's entries at seqs the old suffix occupied are applied, not skipped.
    pub fn rewind(&mut self, log: &mut SyncLogStore, common: Seq) -> Result<RewindReport, Error> {
        self.check_log(log)?;
        let report = self.stage_rewind(log, common)?;
        self.complete_rewind(log, false)?;
        Ok(report)
    }

    /// Step 1 of [`Library::rewind`] alone: stores the suffix after `common`, lowers the
    /// applied seq and records the pending rewind, in ONE transaction, without touching the
    /// log. What it leaves is exactly what a crash in the middle of a rewind leaves;
    /// [`Library::finish_rewind`] completes it. A rewind already pending is finished first.
    /// With nothing after `common` and nothing applied beyond it, nothing is written.
    pub fn stage_rewind(
        &mut self,
        log: &mut SyncLogStore,
        common: Seq,
    ) -> Result<RewindReport, Error> {
        self.check_log(log)?;
        self.finish_rewind(log)?;
        let (floor, head) = (log.floor().seq, log.head().seq);
        if common < floor || common > head {
            return Err(Error::RewindOutOfRange { common, floor, head });
        }
        let applied_before = self.applied_seq;
        let mut report = RewindReport {
            to: common,
            applied_before,
            applied_after: applied_before.min(common),
            ..RewindReport::default()
        };
        if common == head && applied_before <= common {
            return Ok(report);
        }
        let rows = self.conn.immediate_transaction(|conn| {
            let (discarded, stored) = store_suffix(conn, log, common)?;
            report.discarded = discarded;
            report.stored = stored;
            diesel::delete(pending_entries::table.filter(pending_entries::seq.gt(to_db(common.0))))
                .execute(conn)?;
            diesel::update(local_state::table.find(1))
                .set((
                    local_state::applied_seq.eq(to_db(report.applied_after.0)),
                    local_state::rewind_to.eq(Some(to_db(common.0))),
                ))
                .execute(conn)?;
            let rows: i64 = resubmit::table.count().get_result(conn)?;
            Ok::<_, Error>(rows)
        })?;
        self.applied_seq = report.applied_after;
        self.rewind_to = Some(common);
        self.resubmit_rows = from_db(rows);
        tracing::info!(?report, "sync log rewind staged");
        Ok(report)
    }

    /// Finishes a rewind that a crash (or [`Library::stage_rewind`]) left pending: stores the
    /// log suffix after the target again (insert-or-ignore: harmless), truncates the log there,
    /// then clears the target. Returns whether a rewind was pending. Called first by
    /// [`Library::catch_up`], [`Library::receive`] and [`Library::sequence`].
    pub fn finish_rewind(&mut self, log: &mut SyncLogStore) -> Result<bool, Error> {
        self.check_log(log)?;
        if self.rewind_to.is_none() {
            return Ok(false);
        }
        self.complete_rewind(log, true)?;
        Ok(true)
    }

    /// Steps 2 and 3 of a rewind (with step 1's storing repeated first when `restore`).
    fn complete_rewind(&mut self, log: &mut SyncLogStore, restore: bool) -> Result<(), Error> {
        let Some(to) = self.rewind_to else { return Ok(()) };
        let (floor, head) = (log.floor().seq, log.head().seq);
        if to < floor || to > head {
            return Err(Error::RewindOutOfRange { common: to, floor, head });
        }
        if restore && head > to {
            // Whatever the log holds after the target is stored before it is discarded, even
            // if it is not what step 1 stored.
            let rows = self.conn.immediate_transaction(|conn| {
                store_suffix(conn, log, to)?;
                let rows: i64 = resubmit::table.count().get_result(conn)?;
                Ok::<_, Error>(rows)
            })?;
            self.resubmit_rows = from_db(rows);
        }
        log.truncate_after(to)?;
        diesel::update(local_state::table.find(1))
            .set(local_state::rewind_to.eq(None::<i64>))
            .execute(&mut self.conn)?;
        self.rewind_to = None;
        tracing::info!(to = to.0, resubmit = self.resubmit_rows, "sync log rewound");
        self.emit(Event::Rewound { to, resubmit: self.resubmit_rows });
        Ok(())
    }

    /// Changes of discarded log suffixes to re-submit to the leader, in log order, up to
    /// `limit` (at least one when any wait). The leader sequences each origin key at most once,
    /// so re-submitting is idempotent; a change leaves this list when it is applied from the
    /// global log (see [`Library::apply_entries`]).
    pub fn resubmit(&mut self, limit: usize) -> Result<Vec<Change>, Error> {
        Ok(self.resubmit_after(0, limit.max(1))?.into_iter().map(|(_, c)| c).collect())
    }

    /// Up to `limit` waiting changes after position `after` in `resubmit`, with their position.
    fn resubmit_after(&mut self, after: i64, limit: usize) -> Result<Vec<(i64, Change)>, Error> {
        if self.resubmit_rows == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, ResubmitRow)> = resubmit::table
            .filter(resubmit::ord.gt(after))
            .order(resubmit::ord.asc())
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .select((resubmit::ord, ResubmitRow::as_select()))
            .load(&mut self.conn)?;
        rows.into_iter().map(|(ord, row)| Ok((ord, row.decode()?))).collect()
    }

    /// Leader: appends the waiting re-submissions to the log, in log order. One already in the
    /// log at or below the applied seq (so already applied) is removed here: no apply will.
    fn sequence_resubmit(&mut self, log: &mut SyncLogStore, epoch: Epoch) -> Result<(), Error> {
        let mut after = 0i64;
        loop {
            let batch = self.resubmit_after(after, APPLY_BATCH)?;
            let Some(&(last, _)) = batch.last() else { return Ok(()) };
            after = last;
            let mut changes: Vec<Change> = batch.into_iter().map(|(_, c)| c).collect();
            // A change whose origin key the log holds with another change (its device handed
            // the key out twice) must not wedge the leader: it is set aside — ours are
            // re-keyed into the outbox, another device's stays for that device to re-key
            // (it does when it applies the log's change under the key) — and the rest goes on.
            let mut conflicted = Vec::new();
            let appended = loop {
                match log.append(epoch, &changes) {
                    Ok(appended) => break appended,
                    Err(sync_log::Error::OriginConflict { origin, seq }) => {
                        let Some(i) = changes.iter().position(|c| c.origin == origin) else {
                            return Err(sync_log::Error::OriginConflict { origin, seq }.into());
                        };
                        tracing::warn!(
                            ?origin,
                            log_seq = seq.0,
                            "a change to re-submit reuses an origin key the log holds: set aside"
                        );
                        conflicted.push(changes.remove(i));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let applied = self.applied_seq;
            let done: Vec<&Change> = changes
                .iter()
                .zip(&appended)
                .filter(|(_, a)| !a.new && a.seq <= applied)
                .map(|(c, _)| c)
                .collect();
            let ours: Vec<Change> =
                conflicted.into_iter().filter(|c| c.origin.device == self.device).collect();
            if done.is_empty() && ours.is_empty() {
                continue;
            }
            let mut origin_seq = self.origin_seq;
            let removed = self.conn.immediate_transaction(|conn| {
                let mut removed = 0;
                for c in &done {
                    removed += delete_resubmit(conn, c)?;
                }
                for c in &ours {
                    removed += delete_resubmit(conn, c)?;
                    origin_seq = next_key(origin_seq)?;
                    let mut rekeyed = c.clone();
                    rekeyed.origin.seq = origin_seq;
                    diesel::insert_into(outbox::table)
                        .values(&OutboxRow::new(std::slice::from_ref(&rekeyed))?)
                        .execute(conn)?;
                    tracing::warn!(old = c.origin.seq, new = origin_seq, "own change re-keyed");
                }
                diesel::update(local_state::table.find(1))
                    .set(local_state::origin_seq.eq(to_db(origin_seq)))
                    .execute(conn)?;
                Ok::<_, Error>(removed)
            })?;
            self.origin_seq = origin_seq;
            self.resubmit_rows = self.resubmit_rows.saturating_sub(removed);
        }
    }

    /// How many log entries are kept (not applied) in this database.
    pub fn pending_count(&mut self) -> Result<u64, Error> {
        let n: i64 = pending_entries::table.count().get_result(&mut self.conn)?;
        Ok(from_db(n))
    }
}

/// Applies one kept entry inside the caller's transaction (the same rules as [`Library::apply_entries`]).
fn apply_one(
    conn: &mut SqliteConnection,
    registry: &Registry,
    e: &LogEntry,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    if e.change.change == ChangeType::Bulk {
        report.bulk += 1;
        return Ok(());
    }
    if !registry.knows(&e.change.model) {
        keep(conn, e, "unknown model")?;
        report.kept += 1;
        return Ok(());
    }
    match registry.apply(conn, &e.change) {
        Ok(Applied::Won) => report.written += 1,
        Ok(_) => report.unchanged += 1,
        Err(err @ (syncable::Error::Payload { .. } | syncable::Error::InvalidChange { .. })) => {
            tracing::warn!(seq = e.seq.0, error = %err, "log entry kept, not applied");
            keep(conn, e, &err.to_string())?;
            report.kept += 1;
        }
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

/// Stores every change of `log` after `common` in `resubmit` (insert-or-ignore by origin key),
/// inside the caller's transaction. Returns (entries read, rows newly stored).
fn store_suffix(
    conn: &mut SqliteConnection,
    log: &mut SyncLogStore,
    common: Seq,
) -> Result<(u64, u64), Error> {
    let (mut read, mut stored) = (0u64, 0u64);
    let mut after = common;
    loop {
        let entries = log.read_after(after, APPLY_BATCH)?;
        let Some(last) = entries.last() else { return Ok((read, stored)) };
        after = last.seq;
        read += entries.len() as u64;
        let rows =
            entries.iter().map(|e| ResubmitRow::new(&e.change)).collect::<Result<Vec<_>, _>>()?;
        stored +=
            diesel::insert_or_ignore_into(resubmit::table).values(&rows).execute(conn)? as u64;
    }
}

/// What a log entry did to the `resubmit` row under its origin key.
enum Resubmit {
    /// No row under the key.
    None,
    /// The row held the same change: removed (the change is in the global log now).
    Removed,
    /// The row holds another change under the key (its device handed the key out twice):
    /// kept, and returned.
    Taken(Change),
}

/// Settles the `resubmit` row under `change`'s origin key: removed only when it holds the
/// same change.
fn settle_resubmit(conn: &mut SqliteConnection, change: &Change) -> Result<Resubmit, Error> {
    let row: Option<ResubmitRow> = resubmit::table
        .filter(resubmit::origin_device.eq(Id(change.origin.device.0)))
        .filter(resubmit::origin_seq.eq(to_db(change.origin.seq)))
        .select(ResubmitRow::as_select())
        .first(conn)
        .optional()?;
    let Some(row) = row else { return Ok(Resubmit::None) };
    let stored = row.decode()?;
    if stored == *change {
        delete_resubmit(conn, change)?;
        Ok(Resubmit::Removed)
    } else {
        Ok(Resubmit::Taken(stored))
    }
}

/// Removes the `resubmit` row of `change`'s origin key, if any; returns how many rows went.
fn delete_resubmit(conn: &mut SqliteConnection, change: &Change) -> Result<u64, Error> {
    let n = diesel::delete(
        resubmit::table
            .filter(resubmit::origin_device.eq(Id(change.origin.device.0)))
            .filter(resubmit::origin_seq.eq(to_db(change.origin.seq))),
    )
    .execute(conn)?;
    Ok(n as u64)
}

fn keep(conn: &mut SqliteConnection, e: &LogEntry, reason: &str) -> Result<(), Error> {
    let row = PendingRow::new(e, reason)?;
    diesel::insert_or_ignore_into(pending_entries::table).values(&row).execute(conn)?;
    Ok(())
}

/// Writes the outbox row of one transaction's changes (none for no changes).
fn insert_outbox(conn: &mut SqliteConnection, changes: &[Change]) -> Result<(), Error> {
    if !changes.is_empty() {
        diesel::insert_into(outbox::table).values(&OutboxRow::new(changes)?).execute(conn)?;
    }
    Ok(())
}

fn save_counters(conn: &mut SqliteConnection, ctx: &StampCtx) -> Result<(), Error> {
    diesel::update(local_state::table.find(1))
        .set((
            local_state::origin_seq.eq(to_db(ctx.origin_seq)),
            local_state::hlc.eq(to_db(ctx.hlc.last().0)),
        ))
        .execute(conn)?;
    Ok(())
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
