//! The crate's one error type.

use sync_log::{DeviceId, Hlc, LibraryId, Seq};
use uuid::Uuid;

/// Everything that can go wrong on the write path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or reading the library database failed (boxed: it is large, and rare).
    #[error(transparent)]
    Models(Box<library_models::Error>),
    /// The registry or a model's apply/encode failed (boxed: it is large, and rare).
    #[error(transparent)]
    Syncable(Box<syncable::Error>),
    /// The sync log failed.
    #[error(transparent)]
    Log(#[from] sync_log::Error),
    /// The library database refused a statement.
    #[error("library database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// Update or delete of a record that does not exist here.
    #[error("{model} {record} not found")]
    NotFound {
        /// Model name.
        model: &'static str,
        /// Record id.
        record: Uuid,
    },
    /// Update of a deleted (tombstoned) record.
    #[error("{model} {record} is deleted")]
    Deleted {
        /// Model name.
        model: &'static str,
        /// Record id.
        record: Uuid,
    },
    /// Log entries handed to apply do not continue the applied position.
    #[error("entries must continue after applied seq: expected {expected}, got {got}")]
    Gap {
        /// The next seq to apply.
        expected: Seq,
        /// The seq offered.
        got: Seq,
    },
    /// A rewind target outside the sync log: below its pruned floor or above its head.
    #[error("cannot rewind to seq {common}: the log holds seqs {floor}..={head}")]
    RewindOutOfRange {
        /// The seq asked for.
        common: Seq,
        /// The log's floor (entries up to it were pruned).
        floor: Seq,
        /// The log's head.
        head: Seq,
    },
    /// Entries were offered to [`crate::Library::apply_entries`] while a rewind is pending
    /// (a crash interrupted it): finish it first ([`crate::Library::finish_rewind`], which
    /// [`crate::Library::catch_up`], [`crate::Library::receive`] and
    /// [`crate::Library::sequence`] call).
    #[error("a rewind of the sync log to seq {to} is pending")]
    RewindPending {
        /// The pending rewind target.
        to: Seq,
    },
    /// The library database belongs to another device.
    #[error("library database belongs to device {found}, not {expected}")]
    WrongDevice {
        /// The device opening it.
        expected: DeviceId,
        /// The device recorded in it.
        found: DeviceId,
    },
    /// The library database belongs to another library than the sync log it was given: the
    /// two files do not go together (a swapped path, another library's log). Nothing was read
    /// from the log or written to the database.
    #[error("library database belongs to library {database}, the sync log to library {log}")]
    ForeignLog {
        /// The library the database is bound to.
        database: LibraryId,
        /// The library of the sync log offered.
        log: LibraryId,
    },
    /// The clock cannot give a reading that is larger than the last one and that every device
    /// accepts: the physical clock reads beyond [`Hlc::MAX_MILLIS`] (the year 6429 — a broken
    /// clock), or the clock is exhausted at its maximum. Nothing was written.
    #[error("clock out of range: physical clock {millis} ms, last reading {last:?}")]
    ClockOutOfRange {
        /// The physical clock's reading (ms since the Unix epoch).
        millis: u64,
        /// The last HLC reading handed out or observed.
        last: Hlc,
    },
    /// A change's payload is larger than [`MAX_CHANGE_BYTES`](crate::MAX_CHANGE_BYTES): it could
    /// never travel. Nothing was written.
    #[error("{model} {record}: a change of {bytes} bytes is larger than {max}")]
    ChangeTooLarge {
        /// The model.
        model: String,
        /// The record.
        record: uuid::Uuid,
        /// The payload's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A stored value is out of range (e.g. a counter above 2^63).
    #[error("invalid state: {0}")]
    Invalid(String),
    /// A blocking task panicked or was cancelled, or the lock was poisoned.
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<library_models::Error> for Error {
    fn from(e: library_models::Error) -> Self {
        Self::Models(Box::new(e))
    }
}

impl From<syncable::Error> for Error {
    fn from(e: syncable::Error) -> Self {
        Self::Syncable(Box::new(e))
    }
}

impl Error {
    /// Whether the same call may succeed later (a locked database); everything else is fatal
    /// for that call.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Log(e) => e.is_retryable(),
            Self::Models(e) => e.is_retryable(),
            Self::Database(e) => library_models::is_busy(e),
            Self::Syncable(e) => {
                matches!(&**e, syncable::Error::Database(e) if library_models::is_busy(e))
            }
            _ => false,
        }
    }
}
