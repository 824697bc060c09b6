//! Local, never-synced tables of the library database: this device's state, the outbox, the
//! entries kept for a later build, and the leadership column of the device row. Row types only;
//! the write path (txn-manager) owns the logic.

use diesel::prelude::*;

use crate::schema::{device, local_state, outbox, pending_entries};
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
}

/// A row of the outbox: a local change not yet seen in the global log. The whole
/// [`sync_log::Change`] is one encoded blob ([`sync_log::codec`]): the outbox is a durable queue
/// that is only ever written whole and read whole, and one bound column per row keeps the
/// write path's overhead over a plain model write small.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = outbox)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct OutboxRow {
    /// Origin seq (this device's counter).
    pub origin_seq: i64,
    /// The encoded change.
    pub change: Vec<u8>,
}

impl OutboxRow {
    /// The row of `change`.
    pub fn new(change: &sync_log::Change) -> Result<Self, Error> {
        Ok(Self { origin_seq: change.origin.seq as i64, change: sync_log::codec::encode(change)? })
    }

    /// The change this row holds; its origin seq must match the row's key.
    pub fn decode(&self) -> Result<sync_log::Change, Error> {
        let change: sync_log::Change = sync_log::codec::decode(&self.change)?;
        if change.origin.seq as i64 != self.origin_seq {
            return Err(Error::InvalidArgument(format!(
                "outbox row {} holds origin seq {}",
                self.origin_seq, change.origin.seq
            )));
        }
        Ok(change)
    }
}

/// A log entry kept but not applied (unknown model, or a payload this build cannot read).
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = pending_entries)]
#[diesel(check_for_backend(diesel::sqlite::Sqlite))]
pub struct PendingRow {
    /// Global seq.
    pub seq: i64,
    /// Epoch that sequenced it.
    pub epoch: i64,
    /// Origin device.
    pub origin_device: Id,
    /// Origin seq.
    pub origin_seq: i64,
    /// HLC.
    pub hlc: i64,
    /// Model name.
    pub model: String,
    /// Record id.
    pub record: Id,
    /// [`sync_log::ChangeType::code`].
    pub change_type: i16,
    /// Record version.
    pub version: i64,
    /// Encoded record.
    pub payload: Vec<u8>,
    /// Running checksum of the log at this entry.
    pub checksum: Vec<u8>,
    /// Why it was kept.
    pub reason: String,
}

/// The persisted leadership state of `device` (the local `sync_leadership` column of its
/// device row), or `None` when unset or when the device row does not exist.
pub fn leadership_state(conn: &mut SqliteConnection, device: Id) -> Result<Option<Vec<u8>>, Error> {
    Ok(device::table
        .find(device)
        .select(device::sync_leadership)
        .first::<Option<Vec<u8>>>(conn)
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
