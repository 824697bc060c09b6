//! # syncable
//!
//! **One job:** say what a syncable model is — the [`Syncable`] trait — and find every model
//! this build knows, without a central list, through the [`inventory`]-based
//! [`register_syncable_model!`] macro and the [`Registry`] built from it at start-up.
//!
//! **Must not know:** the network (iroh, tokio networking), leadership, the sync service, or any
//! concrete model. It depends only on `sync-log` for the shared value types.
//!
//! ## Making a model syncable
//!
//! Implement [`Syncable`] for the model type and add one line in the model's own crate:
//!
//! ```
//! use diesel::SqliteConnection;
//! use sync_log::{Change, Stamp};
//! use syncable::{Applied, Error, Registry, Syncable};
//!
//! struct Tag {
//!     id: uuid::Uuid,
//!     stamp: Stamp,
//!     name: String,
//! }
//!
//! impl Syncable for Tag {
//!     const MODEL: &'static str = "doc_tag";
//!     fn record_id(&self) -> uuid::Uuid {
//!         self.id
//!     }
//!     fn stamp(&self) -> Stamp {
//!         self.stamp
//!     }
//!     fn encode(&self) -> Result<Vec<u8>, Error> {
//!         sync_log::codec::encode(&self.name).map_err(|source| Error::Payload {
//!             model: Self::MODEL.into(),
//!             record: self.id,
//!             source,
//!         })
//!     }
//!     fn apply(_conn: &mut SqliteConnection, _change: &Change) -> Result<Applied, Error> {
//!         // Compare the change's stamp with the stored one; write only if it is larger.
//!         Ok(Applied::Won)
//!     }
//!     fn hash_rows(
//!         _conn: &mut SqliteConnection,
//!         _row: &mut dyn FnMut(&[u8]),
//!     ) -> Result<(), Error> {
//!         // Read every row of the table (tombstones too) in uuid order and pass each row's
//!         // canonical encoding, every synced column, to `row`. This sketch has no table.
//!         Ok(())
//!     }
//! }
//!
//! // The one line that makes `Tag` syncable:
//! syncable::register_syncable_model!(Tag);
//!
//! let registry = Registry::from_inventory()?;
//! assert!(registry.knows("doc_tag"));
//! # Ok::<(), Error>(())
//! ```
//!
//! ## What a dependent crate must write (the linker note)
//!
//! `inventory` registrations are static constructors. A linker drops the object code of a
//! crate that the final artifact (binary, test, bench) never names, and its registrations go
//! with it: the registry is then silently missing those models. So **every final artifact
//! must name each crate that registers models at least once**, e.g.
//!
//! ```text
//! use library_models as _;
//! ```
//!
//! in `main.rs` and in each integration-test file — or depend on a library that does so in code
//! the artifact uses. [`Registry::from_inventory`] logs the names it found at `debug` level, and
//! [`Registry::require`] turns "a model I expect is missing" into an error at start-up instead
//! of a surprise later.
//!
//! ## The content hash
//!
//! [`Registry::content_hash`] is the one function that says whether two libraries hold the
//! same syncable data: it walks the registry in name order and hashes what each model's
//! [`Syncable::hash_rows`] feeds it. A model registered anywhere is covered without touching
//! any list; a model that is not registered is not (see the linker note).
//!
//! ## Registry rules
//!
//! - Two registrations under one name: [`Error::DuplicateModel`] naming both registration sites.
//! - An unknown model name: [`Error::UnknownModel`], never a panic. Callers keep such entries
//!   (not applied, not lost) until a build that knows the model opens the library.
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use diesel::SqliteConnection;
use sync_log::{Change, Stamp};
use uuid::Uuid;

#[doc(hidden)]
pub use inventory;

/// Everything that can go wrong in the registry or while applying a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No registered model has this name (kept for a later build; never a panic).
    #[error("unknown model {0:?}: no registered Syncable has this name")]
    UnknownModel(String),
    /// Two registrations use one name.
    #[error("model name {name:?} registered twice: by {first} and by {second}")]
    DuplicateModel {
        /// The contested name.
        name: &'static str,
        /// Where the first registration is (module path).
        first: &'static str,
        /// Where the second registration is (module path).
        second: &'static str,
    },
    /// Models a caller required at start-up are not registered (see the linker note).
    #[error(
        "models not registered in this build: {0:?} (is the crate that registers them named in this artifact?)"
    )]
    MissingModels(Vec<String>),
    /// The payload of a change could not be decoded for its model.
    #[error("bad payload for {model} {record}: {source}")]
    Payload {
        /// The model.
        model: String,
        /// The record.
        record: Uuid,
        /// The codec error.
        #[source]
        source: sync_log::Error,
    },
    /// The change is well-formed but not valid for its model (e.g. record id mismatch).
    #[error("invalid change for {model} {record}: {reason}")]
    InvalidChange {
        /// The model.
        model: String,
        /// The record.
        record: Uuid,
        /// Why.
        reason: String,
    },
    /// The database refused the write.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

/// What applying one change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Applied {
    /// The change's stamp was larger than the stored one (or there was none): it is now the
    /// record's state.
    Won,
    /// The stored stamp is larger: the change lost and nothing was written.
    Lost,
    /// The stored stamp is the same: the change was already applied (a duplicate).
    Duplicate,
}

/// A record type that takes part in sync.
///
/// The implementation owns the model's table: [`Syncable::apply`] runs inside the caller's
/// transaction and must be a deterministic merge — compare the change's stamp with the stored
/// one and keep the larger (`(hlc, device, version)`: recency first, [`sync_log::Stamp`]),
/// per record or per field, treating deletes as tombstones that keep their stamp — so that any
/// order of the same changes, with duplicates, gives the same rows. Models of a library
/// database are best defined with `library_models::model!`, which generates all of this.
pub trait Syncable: Sized + 'static {
    /// The model's unique name on the wire and in the log (e.g. `"tag"`). Never rename it.
    const MODEL: &'static str;

    /// The record's id.
    fn record_id(&self) -> Uuid;

    /// The record's last-writer-wins stamp.
    fn stamp(&self) -> Stamp;

    /// Encodes the record as the payload of a change (use [`sync_log::codec`]).
    fn encode(&self) -> Result<Vec<u8>, Error>;

    /// Applies `change` (an insert, update, delete or bulk entry of this model) inside the
    /// caller's open transaction on `conn`.
    fn apply(conn: &mut SqliteConnection, change: &Change) -> Result<Applied, Error>;

    /// Feeds every row of this model's table to `row`, one call per row, so that
    /// [`Registry::content_hash`] covers the model. The contract, which convergence checks
    /// rely on:
    ///
    /// - **every** row, tombstones included (a delete is state too);
    /// - in `uuid` order (the 16 bytes of [`Syncable::record_id`], compared as bytes), so two
    ///   tables with the same rows give the same calls whatever order they were written in;
    /// - each row's **every synced column**, sync columns (`version`, `hlc`, `device_id`,
    ///   tombstone) included, and no local column (nothing that is not in the payload);
    /// - a canonical encoding: equal rows give equal bytes on every device and build (e.g.
    ///   [`sync_log::codec`] of the record, as [`Syncable::encode`] does).
    ///
    /// There is deliberately no default: one that fed nothing would hide the model's rows from
    /// every convergence check. A model with no table of its own feeds nothing, explicitly.
    fn hash_rows(conn: &mut SqliteConnection, row: &mut dyn FnMut(&[u8])) -> Result<(), Error>;

    /// Applies `changes` (all of this model, in order) inside the caller's open transaction:
    /// the same merge as [`Syncable::apply`] for each, but a model may do it in fewer
    /// statements (e.g. one multi-row upsert). A change that cannot be decoded or is invalid
    /// for the model is not written and is reported in [`BatchApplied::rejected`] by its index;
    /// a database error fails the whole call. The default calls [`Syncable::apply`] per change.
    fn apply_batch(
        conn: &mut SqliteConnection,
        changes: &[&Change],
    ) -> Result<BatchApplied, Error> {
        let mut out = BatchApplied::default();
        for (i, change) in changes.iter().enumerate() {
            match Self::apply(conn, change) {
                Ok(Applied::Won) => out.written += 1,
                Ok(_) => out.unchanged += 1,
                Err(e @ (Error::Payload { .. } | Error::InvalidChange { .. })) => {
                    out.rejected.push((i, e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Whether two concurrent changes of one record touch the same data, so that one of them
    /// loses something — what a conflict log records. The default (a record merged whole):
    /// always. A model that merges per field says whether both set one field to different
    /// values. Never fails: a payload it cannot read counts as a conflict.
    fn conflicts(local: &Change, remote: &Change) -> bool {
        let _ = (local, remote);
        true
    }
}

/// What [`Syncable::apply_batch`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BatchApplied {
    /// Changes that were written (won their record; a batch statement may count a record
    /// written twice in one batch twice).
    pub written: u64,
    /// Changes that lost to the stored stamp or were duplicates.
    pub unchanged: u64,
    /// Changes not written because they are invalid for the model, by index in the batch.
    pub rejected: Vec<(usize, Error)>,
}

impl BatchApplied {
    /// A batch result (for implementations outside this crate).
    pub fn new(written: u64, unchanged: u64, rejected: Vec<(usize, Error)>) -> Self {
        Self { written, unchanged, rejected }
    }
}

/// A blake3 digest of every syncable table of a library ([`Registry::content_hash`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The type of [`Syncable::hash_rows`] as stored in a [`ModelRegistration`]: reads the model's
/// table on the connection and feeds each row's canonical bytes to the sink.
pub type HashRowsFn = fn(&mut SqliteConnection, &mut dyn FnMut(&[u8])) -> Result<(), Error>;

/// One model's entry in the registry: its name, where it was registered, and its functions.
/// Built by [`register_syncable_model!`]; rarely written by hand.
#[derive(Clone, Copy)]
pub struct ModelRegistration {
    /// [`Syncable::MODEL`].
    pub name: &'static str,
    /// Module path of the registration (named in [`Error::DuplicateModel`]).
    pub registered_at: &'static str,
    /// [`Syncable::apply`].
    pub apply: fn(&mut SqliteConnection, &Change) -> Result<Applied, Error>,
    /// [`Syncable::apply_batch`].
    pub apply_batch: fn(&mut SqliteConnection, &[&Change]) -> Result<BatchApplied, Error>,
    /// [`Syncable::hash_rows`].
    pub hash_rows: HashRowsFn,
    /// [`Syncable::conflicts`].
    pub conflicts: fn(&Change, &Change) -> bool,
}

impl ModelRegistration {
    /// The registration of `T`, made at `registered_at` (pass `module_path!()`).
    pub const fn of<T: Syncable>(registered_at: &'static str) -> Self {
        Self {
            name: T::MODEL,
            registered_at,
            apply: T::apply,
            apply_batch: T::apply_batch,
            hash_rows: T::hash_rows,
            conflicts: T::conflicts,
        }
    }
}

impl fmt::Debug for ModelRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRegistration")
            .field("name", &self.name)
            .field("registered_at", &self.registered_at)
            .finish_non_exhaustive()
    }
}

inventory::collect!(ModelRegistration);

/// Registers a [`Syncable`] type in the zero-touch registry. Write it once, in the model's own
/// crate, next to the model.
///
/// See the [crate documentation](crate) for a complete, compiled example.
#[macro_export]
macro_rules! register_syncable_model {
    ($model:ty) => {
        $crate::inventory::submit! {
            $crate::ModelRegistration::of::<$model>(::core::module_path!())
        }
    };
}

/// The models this build knows, by name. Built once at start-up and passed to whoever applies
/// changes: there is no global lookup.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    models: BTreeMap<&'static str, ModelRegistration>,
}

impl Registry {
    /// An empty registry (for tests that register by hand).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every model registered with [`register_syncable_model!`] in the crates linked into this
    /// artifact. Two registrations under one name are an error naming both.
    pub fn from_inventory() -> Result<Self, Error> {
        let registry = Self::from_registrations(inventory::iter::<ModelRegistration>)?;
        tracing::debug!(models = ?registry.names().collect::<Vec<_>>(), "syncable registry built");
        Ok(registry)
    }

    /// A registry of exactly these registrations. Duplicates are an error naming both.
    pub fn from_registrations<'a>(
        registrations: impl IntoIterator<Item = &'a ModelRegistration>,
    ) -> Result<Self, Error> {
        let mut registry = Self::empty();
        for r in registrations {
            registry.insert(*r)?;
        }
        Ok(registry)
    }

    /// Adds one registration.
    pub fn insert(&mut self, registration: ModelRegistration) -> Result<(), Error> {
        if let Some(first) = self.models.get(registration.name) {
            return Err(Error::DuplicateModel {
                name: registration.name,
                first: first.registered_at,
                second: registration.registered_at,
            });
        }
        self.models.insert(registration.name, registration);
        Ok(())
    }

    /// Adds `T` (registered at the caller's module).
    pub fn register<T: Syncable>(&mut self) -> Result<(), Error> {
        self.insert(ModelRegistration::of::<T>(module_path!()))
    }

    /// Fails unless every name in `names` is registered: a start-up check against the linker
    /// trap described in the crate docs.
    pub fn require<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Result<(), Error> {
        let missing: Vec<String> =
            names.into_iter().filter(|n| !self.knows(n)).map(str::to_owned).collect();
        if missing.is_empty() { Ok(()) } else { Err(Error::MissingModels(missing)) }
    }

    /// Whether `name` is registered.
    pub fn knows(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.models.keys().copied()
    }

    /// The registration of `name`, or [`Error::UnknownModel`].
    pub fn get(&self, name: &str) -> Result<&ModelRegistration, Error> {
        self.models.get(name).ok_or_else(|| Error::UnknownModel(name.to_owned()))
    }

    /// The content hash of the syncable tables of every registered model: the one function
    /// convergence checks compare.
    ///
    /// Canonical form: models in name order (the registry is sorted); for each model with at
    /// least one row, its name (length-prefixed), its row count and the blake3 of its rows as
    /// fed by [`Syncable::hash_rows`] (each row length-prefixed, in uuid order, tombstones
    /// included). A model with no rows contributes nothing, so two builds that differ only by
    /// a model nobody has written yet agree. Local state is never fed, so it is never hashed.
    /// The tables are read in one transaction (a savepoint inside the caller's), so the hash is
    /// of one consistent snapshot.
    ///
    /// ```
    /// use diesel::Connection;
    /// let mut conn = diesel::SqliteConnection::establish(":memory:")?;
    /// let registry = syncable::Registry::from_inventory()?;
    /// let before = registry.content_hash(&mut conn)?;
    /// assert_eq!(registry.content_hash(&mut conn)?, before, "a pure function of the tables");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn content_hash(&self, conn: &mut SqliteConnection) -> Result<ContentHash, Error> {
        use diesel::Connection;
        conn.transaction(|conn| {
            let mut outer = blake3::Hasher::new();
            outer.update(b"syncable/content-hash/v2");
            for (name, registration) in &self.models {
                let mut rows = blake3::Hasher::new();
                let mut count: u64 = 0;
                (registration.hash_rows)(conn, &mut |row: &[u8]| {
                    rows.update(&(row.len() as u64).to_le_bytes());
                    rows.update(row);
                    count += 1;
                })?;
                if count == 0 {
                    continue;
                }
                outer.update(&(name.len() as u64).to_le_bytes());
                outer.update(name.as_bytes());
                outer.update(&count.to_le_bytes());
                outer.update(rows.finalize().as_bytes());
            }
            Ok(ContentHash(*outer.finalize().as_bytes()))
        })
    }

    /// Applies `change` through its model inside the caller's transaction.
    pub fn apply(&self, conn: &mut SqliteConnection, change: &Change) -> Result<Applied, Error> {
        (self.get(&change.model)?.apply)(conn, change)
    }

    /// [`Syncable::conflicts`] of the model of `local` (`false` for a model this registry does
    /// not know, or two changes of different records or models).
    pub fn conflicts(&self, local: &Change, remote: &Change) -> bool {
        local.model == remote.model
            && local.record == remote.record
            && self.get(&local.model).is_ok_and(|m| (m.conflicts)(local, remote))
    }

    /// Applies `changes` in order inside the caller's transaction, each run of consecutive
    /// changes of one model through that model's [`Syncable::apply_batch`]. Rejected indexes
    /// are positions in `changes`. An unknown model fails the call with
    /// [`Error::UnknownModel`] before anything is written: filter with [`Registry::knows`].
    pub fn apply_batch(
        &self,
        conn: &mut SqliteConnection,
        changes: &[&Change],
    ) -> Result<BatchApplied, Error> {
        for c in changes {
            self.get(&c.model)?;
        }
        let mut out = BatchApplied::default();
        let mut start = 0;
        while start < changes.len() {
            let model = &changes[start].model;
            let end = changes[start..]
                .iter()
                .position(|c| &c.model != model)
                .map_or(changes.len(), |n| start + n);
            let run = (self.get(model)?.apply_batch)(conn, &changes[start..end])?;
            out.written += run.written;
            out.unchanged += run.unchanged;
            out.rejected.extend(run.rejected.into_iter().map(|(i, e)| (start + i, e)));
            start = end;
        }
        Ok(out)
    }
}
