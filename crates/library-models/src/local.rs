//! Local, never-synced tables of the library database: this device's state, the outbox, the
//! entries kept for a later build, the changes of a discarded log suffix waiting to be
//! re-submitted, and the leadership column of the device row. Row types only; the write path
//! (txn-manager) owns the logic.

use diesel::prelude::*;

use crate::schema::{device, library_meta, local_state, outbox, pending_entries, resubmit};
use crate::{Error, Id};

/// The one row of `local_state`.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = local_state)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct LocalState {
    /// Always 1.
    pub id: i64,
    /// This device.
    pub device_id: Id,
    /// Last global seq applied to this database.
    pub applied_seq: i64,
    /// Last origin seq handed out to a local change.
    pub origin_seq: i64,
    /// Last HLC reading used or observed (persisted so the clock is monotonic across restarts).
    pub hlc: i64,
    /// The seq the sync log is being rewound to after a divergence, while that rewind is not
    /// finished (the log not yet truncated); `None` when no rewind is pending.
    pub rewind_to: Option<i64>,
}

/// A row of the outbox: the changes of one committed transaction, not yet seen in the global
/// log. They have consecutive origin seqs `first_origin_seq..=last_origin_seq` and are encoded
/// together as one `Vec<Change>` ([`sync_log::codec`]).
///
/// One row per transaction, not per change: a batch of 1,000 changes costs one row insert
/// instead of 1,000, which is most of the write path's overhead over a plain model write. The
/// row is keyed by its last origin seq and removed when the change carrying that seq is applied
/// from the global log; the changes of one row are always submitted and sequenced together and
/// in origin order, so by then every earlier change of the row is applied too.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = outbox)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct OutboxRow {
    /// Origin seq of the row's last change (the key).
    pub last_origin_seq: i64,
    /// Origin seq of the row's first change.
    pub first_origin_seq: i64,
    /// The encoded changes.
    pub changes: Vec<u8>,
}

impl OutboxRow {
    /// The row holding `changes` (non-empty, consecutive origin seqs).
    pub fn new(changes: &[sync_log::Change]) -> Result<Self, Error> {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return Err(Error::InvalidArgument("an outbox row holds at least one change".into()));
        };
        Ok(Self {
            last_origin_seq: last.origin.seq as i64,
            first_origin_seq: first.origin.seq as i64,
            changes: sync_log::codec::encode(changes)?,
        })
    }

    /// The changes this row holds; their origin seqs must be exactly the row's range.
    pub fn decode(&self) -> Result<Vec<sync_log::Change>, Error> {
        let changes: Vec<sync_log::Change> = sync_log::codec::decode(&self.changes)?;
        let consecutive = changes
            .iter()
            .enumerate()
            .all(|(i, c)| c.origin.seq as i64 == self.first_origin_seq + i as i64);
        if !consecutive || changes.last().map(|c| c.origin.seq as i64) != Some(self.last_origin_seq)
        {
            return Err(Error::InvalidArgument(format!(
                "outbox row {}..={} does not hold exactly those origin seqs",
                self.first_origin_seq, self.last_origin_seq
            )));
        }
        Ok(changes)
    }
}

/// A log entry kept but not applied (unknown model, or a payload this build cannot read): the
/// whole [`sync_log::LogEntry`], encoded ([`sync_log::codec`]), with its model and the reason.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = pending_entries)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct PendingRow {
    /// Global seq.
    pub seq: i64,
    /// Model name (to find the entries a build now knows without decoding them).
    pub model: String,
    /// Why it was kept.
    pub reason: String,
    /// The encoded entry.
    pub entry: Vec<u8>,
}

impl PendingRow {
    /// The row keeping `entry`.
    pub fn new(entry: &sync_log::LogEntry, reason: &str) -> Result<Self, Error> {
        Ok(Self {
            seq: entry.seq.0 as i64,
            model: entry.change.model.clone(),
            reason: reason.to_owned(),
            entry: sync_log::codec::encode(entry)?,
        })
    }

    /// The kept entry; its seq must match the row's key.
    pub fn decode(&self) -> Result<sync_log::LogEntry, Error> {
        let entry: sync_log::LogEntry = sync_log::codec::decode(&self.entry)?;
        if entry.seq.0 as i64 != self.seq {
            return Err(Error::InvalidArgument(format!(
                "kept entry {} holds seq {}",
                self.seq, entry.seq
            )));
        }
        Ok(entry)
    }
}

/// A change of a discarded log suffix (after a divergence), waiting to be re-submitted to the
/// winner: keyed by its origin key, stored whole ([`sync_log::codec`]). The table's `ord`
/// column (not part of this type: SQLite assigns it on insert) keeps the order in which rows
/// were stored, i.e. log order.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = resubmit)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct ResubmitRow {
    /// Origin device of the change.
    pub origin_device: Id,
    /// Origin seq of the change.
    pub origin_seq: i64,
    /// The encoded change.
    pub change: Vec<u8>,
}

impl ResubmitRow {
    /// The row holding `change`.
    pub fn new(change: &sync_log::Change) -> Result<Self, Error> {
        Ok(Self {
            origin_device: Id(change.origin.device.0),
            origin_seq: change.origin.seq as i64,
            change: sync_log::codec::encode(change)?,
        })
    }

    /// The stored change; its origin key must match the row's key.
    pub fn decode(&self) -> Result<sync_log::Change, Error> {
        let change: sync_log::Change = sync_log::codec::decode(&self.change)?;
        if change.origin.device.0 != self.origin_device.0
            || change.origin.seq as i64 != self.origin_seq
        {
            return Err(Error::InvalidArgument(format!(
                "resubmit row ({}, {}) holds origin key ({}, {})",
                self.origin_device, self.origin_seq, change.origin.device, change.origin.seq
            )));
        }
        Ok(change)
    }
}

/// The persisted leadership state of `device` (the local `sync_leadership` column of its
/// device row), or `None` when unset or when the device row does not exist.
pub fn leadership_state(conn: &mut SqliteConnection, device: Id) -> Result<Option<Vec<u8>>, Error> {
    Ok(device::table
        .find(device)
        .select(device::sync_leadership)
        .get_result::<Option<Vec<u8>>>(conn)
        .optional()?
        .flatten())
}

/// Stores the leadership state of `device`. The column is local: it is not in the payload, not
/// in the content hash, and never touched by apply. Fails with [`Error::NoDeviceRow`] when the
/// device row does not exist yet (commit the [`crate::Device`] first).
pub fn set_leadership_state(
    conn: &mut SqliteConnection,
    device: Id,
    state: Option<&[u8]>,
) -> Result<(), Error> {
    let n = diesel::update(device::table.find(device))
        .set(device::sync_leadership.eq(state))
        .execute(conn)?;
    if n == 0 { Err(Error::NoDeviceRow(device)) } else { Ok(()) }
}

/// The library this database belongs to (`library_meta.library_id`), or `None` when it was
/// never bound (a new database, or one written before databases were bound to a library).
pub fn library_id(conn: &mut SqliteConnection) -> Result<Option<uuid::Uuid>, Error> {
    let value: Option<String> = library_meta::table
        .find("library_id")
        .select(library_meta::value)
        .get_result(conn)
        .optional()?;
    value
        .map(|v| {
            uuid::Uuid::parse_str(&v)
                .map_err(|_| Error::InvalidArgument(format!("library_meta.library_id {v:?}")))
        })
        .transpose()
}

/// Binds the database to `library` (`library_meta.library_id`). The write path does this once,
/// in the transaction that creates the device's local state, and refuses a log of any other
/// library afterwards.
pub fn set_library_id(conn: &mut SqliteConnection, library: uuid::Uuid) -> Result<(), Error> {
    diesel::replace_into(library_meta::table)
        .values((library_meta::key.eq("library_id"), library_meta::value.eq(library.to_string())))
        .execute(conn)?;
    Ok(())
}
