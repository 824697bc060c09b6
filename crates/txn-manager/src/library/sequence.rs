//! Leader: the outbox and re-submissions into the sync log, then apply.

use super::rewind::delete_resubmit;
use super::*;

impl Library {
    /// Unsequenced local changes, oldest first: what a follower forwards. Whole outbox rows
    /// (one per committed transaction, which must be submitted together) are returned while
    /// they fit in `limit` changes, and always at least one row.
    pub fn outbox(&mut self, limit: usize) -> Result<Vec<Change>, Error> {
        self.outbox_after(0, limit)
    }

    /// Unsequenced local changes in whole outbox rows whose last origin seq is after `after`,
    /// oldest first, while they fit in `limit` changes (at least one row): how a follower
    /// forwards only what it has not sent yet (pass the last origin seq it sent).
    pub fn outbox_after_seq(&mut self, after: u64, limit: usize) -> Result<Vec<Change>, Error> {
        self.outbox_after(i64::try_from(after).unwrap_or(i64::MAX), limit)
    }

    /// Whole outbox rows after origin seq `after`, while they fit in `limit` changes (at least
    /// one row).
    ///
    /// The rows are streamed in order and the read stops at the first that does not fit (no
    /// bound `LIMIT`: see "SQLite habits" in docs/ARCHITECTURE.md).
    fn outbox_after(&mut self, after: i64, limit: usize) -> Result<Vec<Change>, Error> {
        let mut changes = Vec::new();
        let rows = outbox::table
            .filter(outbox::last_origin_seq.gt(after))
            .order(outbox::last_origin_seq.asc())
            .select(OutboxRow::as_select())
            .load_iter::<OutboxRow, DefaultLoadingMode>(&mut self.conn)?;
        for row in rows {
            let row = row?;
            let row_len = from_db(row.last_origin_seq - row.first_origin_seq + 1);
            if !changes.is_empty() && changes.len() as u64 + row_len > limit as u64 {
                break;
            }
            changes.extend(row.decode()?);
        }
        Ok(changes)
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
        self.sequence_log(log, epoch)?;
        self.catch_up(log)?;
        Ok(log.head().seq)
    }

    /// Leader: the first half of [`Library::sequence`]: appends the re-submissions and the
    /// outbox to the sync log, without applying them. The library is then behind its log (as
    /// after a crash between the two files) until [`Library::catch_up`], which removes the
    /// outbox rows. A leader pushes the new entries in between: they are durable in the log
    /// once this returns, and a follower need not wait for the leader's own bookkeeping.
    /// Returns the log head.
    pub fn sequence_log(&mut self, log: &mut SyncLogStore, epoch: Epoch) -> Result<Seq, Error> {
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
        let head = log.head().seq;
        self.emit(Event::Sequenced { head });
        Ok(head)
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
}
