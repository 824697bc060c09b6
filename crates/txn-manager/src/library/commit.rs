//! Local writes: commit, batch insert, bulk writes (the outbox row in the same transaction).

use super::*;

impl Library {
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

    /// Commits `ops` in ONE transaction: each model write, the outbox row with all the
    /// changes (several consecutive rows of about 4 MiB for a large transaction), and the new
    /// origin counter and clock. Versions and stamps are set here.
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
}

/// Largest payload of one change a commit accepts: a change must fit one protocol message and
/// one decoded row (16 MiB each) whatever travels with it. A larger one fails the commit with
/// [`Error::ChangeTooLarge`], nothing written.
pub const MAX_CHANGE_BYTES: usize = 8 << 20;

/// About how many bytes of changes one outbox row holds: a larger transaction's changes go in
/// several consecutive rows (each row stays far below the codec's 16 MiB decode limit, so a
/// large commit can always be read back, forwarded and sequenced).
const OUTBOX_ROW_BYTES: usize = 4 << 20;

/// Writes the outbox rows of one transaction's changes (none for no changes).
pub(super) fn insert_outbox(conn: &mut SqliteConnection, changes: &[Change]) -> Result<(), Error> {
    if let Some(c) = changes.iter().find(|c| c.payload.len() > MAX_CHANGE_BYTES) {
        return Err(Error::ChangeTooLarge {
            model: c.model.clone(),
            record: c.record,
            bytes: c.payload.len(),
            max: MAX_CHANGE_BYTES,
        });
    }
    let mut rows = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, c) in changes.iter().enumerate() {
        let size = c.size_bound();
        if i > start && bytes + size > OUTBOX_ROW_BYTES {
            rows.push(OutboxRow::new(&changes[start..i])?);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < changes.len() {
        rows.push(OutboxRow::new(&changes[start..])?);
    }
    for row in &rows {
        diesel::insert_into(outbox::table).values(row).execute(conn)?;
    }
    Ok(())
}

pub(super) fn save_counters(conn: &mut SqliteConnection, ctx: &StampCtx) -> Result<(), Error> {
    crate::counters::run(
        conn,
        crate::counters::SetOriginAndClock {
            origin_seq: to_db(ctx.origin_seq),
            hlc: to_db(ctx.hlc.last().0),
        },
    )?;
    Ok(())
}
