//! Applying sequenced entries: catch-up, receive, LWW apply with the applied seq, kept entries.

use super::rewind::{Resubmit, delete_resubmit, settle_resubmit};
use super::*;

impl Library {
    /// Applies every entry of `log` after the applied seq, in batches of [`APPLY_BATCH`]
    /// (each batch one transaction with its applied seq). At start-up this is the recovery
    /// of a follower or leader that crashed between its sync log and its library database,
    /// and it finishes a rewind a crash interrupted ([`Library::finish_rewind`]) first.
    pub fn catch_up(&mut self, log: &mut SyncLogStore) -> Result<ApplyReport, Error> {
        self.check_log(log)?;
        self.finish_rewind(log)?;
        self.apply_log(log, &[])
    }

    /// Applies the log beyond the applied seq. `stored`: entries just appended to the log
    /// (so the log holds exactly them); when they continue the library up to the log's head
    /// they are applied as they are instead of being read back and decoded again.
    fn apply_log(
        &mut self,
        log: &mut SyncLogStore,
        stored: &[LogEntry],
    ) -> Result<ApplyReport, Error> {
        let head = log.head().seq;
        if self.applied_seq >= head {
            return Ok(ApplyReport::default());
        }
        // Re-keyed outbox rows go past every own key the log holds, not just past those
        // applied so far: a reused row met in the first batch must not be re-keyed onto keys
        // the next batches bring.
        self.rekey_floor = self.rekey_floor.max(log.max_origin_seq(self.device)?.unwrap_or(0));
        let mut total = ApplyReport::default();
        let next = self.applied_seq.next();
        let continues = stored.first().is_some_and(|e| e.seq <= next)
            && stored.last().is_some_and(|e| e.seq == head);
        if continues {
            let fresh = stored.iter().position(|e| e.seq >= next).unwrap_or(stored.len());
            total.add(self.apply_entries(&stored[fresh..])?);
        }
        while self.applied_seq < head {
            let entries = log.read_after(self.applied_seq, APPLY_BATCH)?;
            if entries.is_empty() {
                break;
            }
            total.add(self.apply_entries(&entries)?);
        }
        Ok(total)
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
        self.apply_log(log, entries)
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
        let mut conflicts = 0u64;
        let (at_ms, capacity) = (self.clock.now_millis(), self.conflict_capacity);
        let rekey_floor = self.rekey_floor;
        self.conn.immediate_transaction(|conn| {
            let mut own = OwnEntries::default();
            // Only a change from another device can meet an unsent local one: a batch of our
            // own entries (the leader applying what it just sequenced) reads no outbox here.
            let mut watch = if fresh.iter().any(|e| e.change.origin.device != device) {
                crate::conflicts::Watch::load(conn)?
            } else {
                crate::conflicts::Watch::default()
            };
            let mut known: Vec<&LogEntry> = Vec::with_capacity(fresh.len());
            for e in &fresh {
                hlc.observe(e.change.hlc);
                watch.see(registry, device, e);
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
            apply_known(conn, registry, &known, &mut report)?;
            (origin_seq, rekeyed) = own.finish(conn, origin_seq, rekey_floor)?;
            conflicts = watch.record(conn, at_ms, capacity)?;
            crate::counters::run(
                conn,
                crate::counters::SetApplied {
                    applied_seq: to_db(last.0),
                    hlc: to_db(hlc.last().0),
                    origin_seq: to_db(origin_seq),
                },
            )?;
            Ok::<_, Error>(())
        })?;
        self.hlc = hlc;
        self.origin_seq = origin_seq;
        self.applied_seq = last;
        self.resubmit_rows -= resubmitted;
        report.rekeyed = rekeyed;
        report.conflicts = conflicts;
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
            let (counter, rekeyed) = own.finish(conn, origin_seq, 0)?;
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
}

/// Applies one kept entry inside the caller's transaction (the same rules as [`Library::apply_entries`]).
pub(super) fn apply_one(
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
    // A savepoint: a model whose table is missing is kept again, and fails nothing.
    match conn.transaction(|conn| registry.apply(conn, &e.change)) {
        Ok(Applied::Won) => report.written += 1,
        Ok(_) => report.unchanged += 1,
        Err(err @ (syncable::Error::Payload { .. } | syncable::Error::InvalidChange { .. })) => {
            tracing::warn!(seq = e.seq.0, error = %err, "log entry kept, not applied");
            keep(conn, e, &err.to_string())?;
            report.kept += 1;
        }
        Err(err) if missing_table(&err) => {
            keep(conn, e, &format!("table missing for model {}: {err}", e.change.model))?;
            report.kept += 1;
        }
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

/// Whether `err` is SQLite's "no such table": a model this build registers whose table the
/// database lacks (its migration did not run here). Its entries are kept like an unknown
/// model's, never blocking the others.
fn missing_table(err: &syncable::Error) -> bool {
    matches!(
        err,
        syncable::Error::Database(diesel::result::Error::DatabaseError(_, info))
            if info.message().starts_with("no such table")
    )
}

/// Applies `known` entries through the registry's batch apply, inside the caller's transaction.
/// The batch runs in a savepoint: when a model's table is missing, it is rolled back and the
/// entries are applied model by model (each in its own savepoint), the missing model's kept.
fn apply_known(
    conn: &mut SqliteConnection,
    registry: &Registry,
    known: &[&LogEntry],
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let changes: Vec<&Change> = known.iter().map(|e| &e.change).collect();
    let err = match conn.transaction(|conn| registry.apply_batch(conn, &changes)) {
        Ok(applied) => return record_batch(conn, known, applied, report),
        Err(err) if missing_table(&err) => err,
        Err(err) => return Err(err.into()),
    };
    tracing::debug!(error = %err, "a model's table is missing: applying model by model");
    let mut models: Vec<&str> = known.iter().map(|e| e.change.model.as_str()).collect();
    models.sort_unstable();
    models.dedup();
    for model in models {
        let entries: Vec<&LogEntry> =
            known.iter().copied().filter(|e| e.change.model == model).collect();
        let changes: Vec<&Change> = entries.iter().map(|e| &e.change).collect();
        match conn.transaction(|conn| registry.apply_batch(conn, &changes)) {
            Ok(applied) => record_batch(conn, &entries, applied, report)?,
            Err(err) if missing_table(&err) => {
                tracing::warn!(model, error = %err, kept = entries.len(), "table missing: entries kept");
                for e in &entries {
                    keep(conn, e, &format!("table missing for model {model}: {err}"))?;
                }
                report.kept += entries.len() as u64;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

fn record_batch(
    conn: &mut SqliteConnection,
    entries: &[&LogEntry],
    applied: syncable::BatchApplied,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    report.written += applied.written;
    report.unchanged += applied.unchanged;
    for (i, err) in &applied.rejected {
        let e = entries[*i];
        tracing::warn!(seq = e.seq.0, error = %err, "log entry kept, not applied");
        keep(conn, e, &err.to_string())?;
        report.kept += 1;
    }
    Ok(())
}

pub(super) fn keep(conn: &mut SqliteConnection, e: &LogEntry, reason: &str) -> Result<(), Error> {
    let row = PendingRow::new(e, reason)?;
    diesel::insert_or_ignore_into(pending_entries::table).values(&row).execute(conn)?;
    Ok(())
}
