//! # library-models
//!
//! **One job:** the models of a library and the kit that defines them: the reference models
//! (Device, Location, Tag, Collection, UserMetadata, the UserMetadata–Tag link, Entry), the
//! [`model!`] macro that any crate uses to add its own synced model, the library database they
//! live in (diesel schema, embedded and registered migrations, pragmas, the newer-schema
//! check), their last-writer-wins merge, and their part of the content hash
//! ([`syncable::Syncable::hash_rows`]; the hash itself is [`syncable::Registry::content_hash`],
//! which [`content_hash`] calls).
//!
//! **Must not know:** the network (iroh, sync-proto), leadership, the sync service, outbox
//! logic or sequencing. It knows the *shape* of the local tables (outbox, local state, kept
//! entries, changes to re-submit after a divergence) because they live in the same database;
//! the write path in `txn-manager` owns what happens to them.
//!
//! ## Adding a synced model from another crate
//!
//! One declaration and one registration line, in the model's own crate (which depends on
//! `library-models`, `diesel` and `serde`); nothing else in any workspace changes:
//!
//! ```
//! use library_models::{Encoded, Id};
//!
//! library_models::model! {
//!     /// A photo album: a name and the entries in it.
//!     pub struct Album {
//!         table: album,          // the SQLite table (and the diesel table module)
//!         model: "album",        // the registered name, on the wire: never change it
//!         merge: per_field,      // people edit it by hand; `per_record` for rows written whole
//!         revivable: false,      // whether a deleted record may be written again locally
//!     }
//!     fields {
//!         /// Display name.
//!         name: String => Text,
//!         /// The entries, in album order: a list in one BLOB column.
//!         entries: Encoded<Vec<Id>> => Binary,
//!     }
//! }
//!
//! // Its table, created by its own migration when a library database opens.
//! library_models::register_migrations!("album", [
//!     (1, <Album as library_models::LibraryModel>::create_table_sql),
//! ]);
//!
//! let registry = syncable::Registry::from_inventory()?;
//! assert!(registry.knows("album"));
//! let mut conn = library_models::open_library(":memory:".as_ref())?; // runs the migration
//! let album = Album::new("Holidays".into(), Encoded(vec![Id::new_v7()]));
//! <Album as library_models::LibraryModel>::insert_all(&mut conn, &[album.clone()])?;
//! let stored = <Album as library_models::LibraryModel>::load(&mut conn, album.uuid)?;
//! assert_eq!(stored.map(|a| a.name), Some("Holidays".to_owned()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The macro generates the struct (`uuid`, the fields, the sync columns), constructors
//! (`new`, `with_id`), the diesel table, the `CREATE TABLE`, [`LibraryModel`] and
//! [`syncable::Syncable`] with THE merge (below), the stamp checks (stamps at or above 2^63
//! are refused on every device), the payload id check, bulk entries (a `Bulk` change writes
//! nothing), `hash_rows`, and the registration. Commit with `txn_manager::Op::put(album)`; the
//! write path stamps it. Every final artifact names the model's crate once (`use my_models as
//! _;`, see the `syncable` crate docs). A device whose build registers the model but whose
//! database lacks its table keeps the model's entries (like an unknown model's: applied
//! later, never blocking other models). `examples/album` in the repository is such a crate,
//! tested end to end.
//!
//! Migrations ([`register_migrations!`]) run after this crate's own, components in name order,
//! steps in version order, each step in one transaction with its recorded version; a database
//! whose recorded version of any component is newer than the build knows is refused
//! ([`Error::NewerSchema`]) before anything runs.
//!
//! ## Sync columns and the merge rules
//!
//! Every syncable row has `uuid` (16-byte BLOB, primary key; UUIDv7 for new records),
//! `version`, `hlc`, `device_id` (last writer) and `tombstone`. Stamps compare as `(hlc,
//! device, version)`: **recency wins** (five offline edits on Monday do not beat one rename on
//! Tuesday); `version`, the record's edit counter, only breaks a tie. Local writes go through
//! the same merge as a peer's changes: there is one merge rule per model.
//!
//! - [`Merge::PerRecord`] (entries, links, devices: rows written whole): applying a change is
//!   ONE `INSERT … ON CONFLICT DO UPDATE … WHERE` statement; the row becomes the change's
//!   payload when the change's stamp is larger. The row is a pure function of the winning
//!   change.
//! - [`Merge::PerField`] (tags, locations, collections, user metadata: records people edit by
//!   hand): every field and the tombstone is its own last-writer-wins register on `(hlc,
//!   device)`, stamped in `field_stamps` ([`FieldStamps`]); a change carries only the fields
//!   it set ([`FieldPatch`]), so "favourite on the phone" and "a note on the laptop" made
//!   concurrently both survive, and of two edits of one field the later wins. The record's
//!   `version` and stamp are the largest of any change.
//!
//! Both give identical tables for the same set of changes in any order, with duplicates.
//!
//! **Deletes** follow the same rule — a delete is a tombstone, a change like any other that
//! keeps its stamp (for per-field models the tombstone is a field, and every edit sets it to
//! alive): a change stamped before the tombstone never revives the record; an edit stamped
//! after a concurrent delete does — a conflict the sync service records. Locally, a deleted
//! record cannot be edited again (except revivable links): only a device that had not yet seen
//! the delete can revive it.
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
pub use local::{leadership_state, set_leadership_state};
// The write path's local rows: internal to this workspace (txn-manager), not a public API.
#[doc(hidden)]
pub use local::{LocalState, OutboxRow, PendingRow, ResubmitRow, library_id, set_library_id};
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
    #[error("{path}: cannot open library database")]
    Open {
        /// The file.
        path: PathBuf,
        /// What SQLite (or diesel) said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Applying a migration failed (the step's transaction rolled back).
    #[error("{path}: migration {step} failed")]
    Migration {
        /// The file.
        path: PathBuf,
        /// Which step: `core` (this crate's) or `<component> version <n>`.
        step: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
