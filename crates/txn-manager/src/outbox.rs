//! Settling this device's own log entries against its outbox, and re-keying outbox rows whose
//! origin keys turned out to be taken.
//!
//! **The rule:** an outbox row is deleted only when the log delivers *the same change* under
//! the row's last origin key. A log entry that carries one of our origin keys with a *different*
//! change means the key was handed out twice — a library database restored from a backup or
//! re-created, or one that lost its last commits in a power loss while the leader already held
//! changes under those keys. The row's changes were then never sequenced: the row is re-keyed
//! (its changes get fresh origin seqs above every key the log is known to hold) and forwarded
//! again. Re-keying is always safe: a change carries its stamp and payload, so a re-keyed copy
//! of a change that *was* sequenced after all is applied as a duplicate (a no-op).

use diesel::prelude::*;
use library_models::OutboxRow;
use library_models::schema::outbox;
use sync_log::Change;

use crate::Error;

fn to_db(v: u64) -> i64 {
    // Bit reinterpretation, exact round trip.
    v as i64
}

/// An outbox row touched by the current transaction, decoded once.
struct Touched {
    first: u64,
    last: u64,
    changes: Vec<Change>,
    /// One of its keys came back from the log with another change.
    conflict: bool,
    /// Deleted in this transaction (its last change came back from the log).
    deleted: bool,
}

/// Settles own entries against the outbox inside ONE library transaction: call
/// [`OwnEntries::settle`] for each applied entry whose origin is this device, then
/// [`OwnEntries::finish`] before the transaction commits. Holds nothing across transactions:
/// build a new one per transaction, so a rolled-back transaction leaves no state behind.
#[derive(Default)]
pub(crate) struct OwnEntries {
    touched: Vec<Touched>,
    /// Own changes (from `resubmit`) whose key the log gives to another change: each goes
    /// back to the outbox under a fresh key.
    loose: Vec<Change>,
}

impl OwnEntries {
    /// Settles `change`, an entry of the global log whose origin is this device: deletes the
    /// outbox row it ends when the row holds the same change, marks the row for re-keying when
    /// the row holds a different change under that key, and does nothing when no row holds
    /// the key.
    pub(crate) fn settle(
        &mut self,
        conn: &mut SqliteConnection,
        change: &Change,
    ) -> Result<(), Error> {
        let s = change.origin.seq;
        let index = match self.touched.iter().position(|t| t.first <= s && s <= t.last) {
            Some(i) => i,
            None => {
                let Ok(key) = i64::try_from(s) else { return Ok(()) };
                let row: Option<OutboxRow> = outbox::table
                    .filter(outbox::last_origin_seq.ge(key))
                    .order(outbox::last_origin_seq.asc())
                    .select(OutboxRow::as_select())
                    .get_result(conn)
                    .optional()?;
                let Some(row) = row.filter(|r| r.first_origin_seq <= key) else { return Ok(()) };
                let changes = row.decode()?;
                self.touched.push(Touched {
                    first: row.first_origin_seq as u64,
                    last: row.last_origin_seq as u64,
                    changes,
                    conflict: false,
                    deleted: false,
                });
                self.touched.len() - 1
            }
        };
        let t = &mut self.touched[index];
        if t.deleted {
            return Ok(());
        }
        let ours = usize::try_from(s - t.first).ok().and_then(|i| t.changes.get(i));
        if ours != Some(change) {
            if !t.conflict {
                tracing::warn!(
                    origin_seq = s,
                    row = ?(t.first, t.last),
                    "origin key reused: the log holds another change under it; \
                     the outbox row will be re-keyed"
                );
            }
            t.conflict = true;
        } else if s == t.last && !t.conflict {
            diesel::delete(outbox::table.find(to_db(t.last))).execute(conn)?;
            t.deleted = true;
        }
        Ok(())
    }

    /// Queues one of our changes that waited for re-submission under a key the log gives to
    /// another change: [`OwnEntries::finish`] puts it in the outbox under a fresh key.
    pub(crate) fn rekey_later(&mut self, change: Change) {
        self.loose.push(change);
    }

    /// Re-keys every row marked in this transaction with origin seqs after `origin_seq` (the
    /// counter, already past every own key seen) and after `floor` (the highest own key the
    /// log is known to hold); returns the new counter and the number of rows re-keyed.
    pub(crate) fn finish(
        self,
        conn: &mut SqliteConnection,
        mut origin_seq: u64,
        floor: u64,
    ) -> Result<(u64, u64), Error> {
        let mut rekeyed = 0;
        if self.touched.iter().any(|t| t.conflict && !t.deleted) || !self.loose.is_empty() {
            origin_seq = origin_seq.max(floor);
        }
        for t in self.touched.into_iter().filter(|t| t.conflict && !t.deleted) {
            origin_seq = rekey(conn, t.last, t.changes, origin_seq)?;
            rekeyed += 1;
        }
        for mut change in self.loose {
            let old = change.origin.seq;
            origin_seq = next_key(origin_seq)?;
            change.origin.seq = origin_seq;
            diesel::insert_into(outbox::table)
                .values(&OutboxRow::new(std::slice::from_ref(&change))?)
                .execute(conn)?;
            tracing::warn!(old, new = origin_seq, "own change re-keyed into the outbox");
            rekeyed += 1;
        }
        Ok((origin_seq, rekeyed))
    }
}

/// Replaces the outbox row keyed `last` by the same changes under fresh origin seqs after
/// `origin_seq`; returns the new counter. Inside the caller's transaction.
pub(crate) fn rekey(
    conn: &mut SqliteConnection,
    last: u64,
    mut changes: Vec<Change>,
    mut origin_seq: u64,
) -> Result<u64, Error> {
    let old = (changes.first().map(|c| c.origin.seq), last);
    for change in &mut changes {
        origin_seq = next_key(origin_seq)?;
        change.origin.seq = origin_seq;
    }
    diesel::delete(outbox::table.find(to_db(last))).execute(conn)?;
    diesel::insert_into(outbox::table).values(&OutboxRow::new(&changes)?).execute(conn)?;
    tracing::warn!(?old, new = ?(changes.first().map(|c| c.origin.seq), origin_seq), "outbox row re-keyed");
    Ok(origin_seq)
}

/// The origin seq after `origin_seq`, refusing to leave the signed 64-bit range.
pub(crate) fn next_key(origin_seq: u64) -> Result<u64, Error> {
    origin_seq
        .checked_add(1)
        .filter(|s| i64::try_from(*s).is_ok())
        .ok_or_else(|| Error::Invalid("origin counter exhausted".into()))
}
