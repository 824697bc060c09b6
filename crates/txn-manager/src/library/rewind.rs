//! After a divergence: rewind the log, keep the discarded suffix for re-submission.

use super::*;

impl Library {
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

    /// Like [`Library::resubmit`], a page at a time: up to `limit` waiting changes after
    /// position `after` (0 for the first page), in log order, each with its position — a
    /// sender passes the last position it sent to read the next page.
    pub fn resubmit_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Change)>, Error> {
        if self.resubmit_rows == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, ResubmitRow)> = resubmit::table
            .filter(resubmit::ord.gt(after))
            .order(resubmit::ord.asc())
            .select((resubmit::ord, ResubmitRow::as_select()))
            .load_iter::<(i64, ResubmitRow), DefaultLoadingMode>(&mut self.conn)?
            .take(limit)
            .collect::<QueryResult<_>>()?;
        rows.into_iter().map(|(ord, row)| Ok((ord, row.decode()?))).collect()
    }
}

/// Stores every change of `log` after `common` in `resubmit` (insert-or-ignore by origin key),
/// inside the caller's transaction. Returns (entries read, rows newly stored).
pub(super) fn store_suffix(
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
pub(super) enum Resubmit {
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
pub(super) fn settle_resubmit(
    conn: &mut SqliteConnection,
    change: &Change,
) -> Result<Resubmit, Error> {
    let row: Option<ResubmitRow> = resubmit::table
        .filter(resubmit::origin_device.eq(Id(change.origin.device.0)))
        .filter(resubmit::origin_seq.eq(to_db(change.origin.seq)))
        .select(ResubmitRow::as_select())
        .get_result(conn)
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
pub(super) fn delete_resubmit(conn: &mut SqliteConnection, change: &Change) -> Result<u64, Error> {
    let n = diesel::delete(
        resubmit::table
            .filter(resubmit::origin_device.eq(Id(change.origin.device.0)))
            .filter(resubmit::origin_seq.eq(to_db(change.origin.seq))),
    )
    .execute(conn)?;
    Ok(n as u64)
}
