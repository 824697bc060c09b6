//! # library-models
//!
//! **One job:** define the reference models of a library (Device, Location, Tag, Collection,
//! UserMetadata, the UserMetadata–Tag link, Entry), the library database they live in (diesel
//! schema + embedded migrations, pragmas, the newer-schema check), their last-writer-wins
//! apply, and their part of the content hash ([`syncable::Syncable::hash_rows`]; the hash
//! itself is [`syncable::Registry::content_hash`], which [`content_hash`] calls).
//!
//! **Must not know:** the network (iroh, sync-proto), leadership, the sync service, outbox
//! logic or sequencing. It knows the *shape* of the local tables (outbox, local state, kept
//! entries, changes to re-submit after a divergence) because they live in the same database; the write path in `txn-manager` owns what
//! happens to them.
//!
//! ## Sync columns and the merge rule
//!
//! Every syncable row has `uuid` (16-byte BLOB, primary key; UUIDv7 for new records),
//! `version`, `hlc`, `device_id` (last writer) and `tombstone`. Applying a change
//! ([`syncable::Syncable::apply`]) is ONE `INSERT … ON CONFLICT DO UPDATE … WHERE` statement:
//! the row becomes the change's payload (with the change's stamp, and `tombstone` set for a
//! delete) when the change's stamp is larger than the stored one, compared as `(hlc, device,
//! version)`: **recency wins** (five offline edits on Monday do not beat one rename on
//! Tuesday); `version`, the record's edit counter, only breaks a tie. The row is a pure
//! function of the winning change, so any order of the same changes, with duplicates, gives
//! identical tables.
//!
//! **Deletes** follow the same rule — a delete is a tombstone, a change like any other that
//! keeps its stamp: a change stamped before the tombstone never revives the record (it loses);
//! an edit stamped after a concurrent delete does (it wins, and the tombstone is overwritten —
//! a conflict the sync service records). Locally, a deleted record cannot be edited again
//! (except revivable links): only a device that had not yet seen the delete can revive it.
//!
//! ## The missing-parent rule
//!
//! References between rows (a tag link's tag, an entry's parent or location, metadata's entry)
//! are **not foreign keys and are never checked on apply**: a change is applied to its own row
//! whether or not the row it refers to is present, tombstoned or not yet arrived. Nothing is
//! dropped, deferred or failed; the parent's own change fills the gap whenever it is applied.
//! Readers treat a reference to a missing or tombstoned row as dangling (e.g. a link whose tag
//! is not there is not shown). This keeps every row's merge independent, which is what makes
//! the result order-independent.
//!
//! ## Links
//!
//! [`UserMetadataTag`] ids are derived from the pair ([`UserMetadataTag::link_id`], a UUIDv8
//! — the one exception to "ids are UUIDv7"), so "add" and "remove" of one link on two devices
//! are two writes to one record and converge by LWW.
//!
//! ## Linking
//!
//! The models register themselves with [`syncable::register_syncable_model!`]. Every final
//! artifact that builds a [`syncable::Registry`] must name this crate (`use library_models as _;`)
//! or the linker may drop the registrations (see the `syncable` crate docs).
//!
//! ```
//! use library_models as _;
//! let registry = syncable::Registry::from_inventory()?;
//! registry.require(library_models::REFERENCE_MODELS)?;
//! # Ok::<(), syncable::Error>(())
//! ```
#![deny(missing_docs)]

mod db;
mod hash;
mod id;
mod local;
mod model;
mod models;
#[doc(hidden)]
pub mod schema;

use std::path::PathBuf;

pub use db::{
    BUSY_TIMEOUT_MS, Migration, Migrations, PRAGMAS, SCHEMA_VERSION, open_library, schema_version,
};
pub use hash::{ContentHash, REFERENCE_MODELS, content_hash};
pub use id::{Encoded, Id};
pub use local::{
    LocalState, OutboxRow, PendingRow, ResubmitRow, leadership_state, library_id,
    set_leadership_state, set_library_id,
};
#[doc(hidden)]
pub use model::__private;
pub use model::{FieldPatch, FieldStamps, LibraryModel, Merge, PatchField, SqlColumn};
pub use models::{Collection, Device, Entry, Location, Tag, UserMetadata, UserMetadataTag};

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database was written by a newer build.
    #[error(
        "{path}: library schema version {file} is newer than this build supports ({supported})"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Schema version found in the file.
        file: u32,
        /// Highest schema version this build knows.
        supported: u32,
    },
    /// The file holds tables but is not a library database.
    #[error("{path}: not a library database")]
    NotALibrary {
        /// The file.
        path: PathBuf,
    },
    /// The database could not be opened or configured.
    #[error("{path}: cannot open library database: {detail}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// Applying the embedded migrations failed.
    #[error("{path}: migration failed: {detail}")]
    Migration {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The device row does not exist.
    #[error("no device row for {0}")]
    NoDeviceRow(Id),
    /// An argument out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Encoding a row failed.
    #[error("codec: {0}")]
    Codec(#[from] sync_log::Error),
    /// The registry, or a model's hashing or apply, failed.
    #[error(transparent)]
    Syncable(#[from] syncable::Error),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

impl Error {
    /// Whether the same call may succeed later (the database was locked).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(e) | Self::Syncable(syncable::Error::Database(e)) => is_busy(e),
            _ => false,
        }
    }
}

/// Whether a diesel error is SQLite's "locked" / "busy" (another connection held the lock past
/// the busy timeout): the one database error worth retrying.
pub fn is_busy(error: &diesel::result::Error) -> bool {
    match error {
        diesel::result::Error::DatabaseError(_, info) => {
            let m = info.message().to_ascii_lowercase();
            m.contains("locked") || m.contains("busy")
        }
        _ => false,
    }
}
