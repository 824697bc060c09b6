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
//! ```ignore
//! syncable::register_syncable_model!(Tag);
//! ```
//!
//! ## What a dependent crate must write (the linker note)
//!
//! `inventory` registrations are static constructors. A linker drops the object code of a
//! crate that the final artifact (binary, test, bench) never names, and its registrations go
//! with it: the registry is then silently missing those models. So **every final artifact
//! must name each crate that registers models at least once**, e.g.
//!
//! ```ignore
//! use library_models as _;
//! ```
//!
//! in `main.rs` and in each integration-test file — or depend on a library that does so in code
//! the artifact uses. [`Registry::from_inventory`] logs the names it found at `debug` level, and
//! [`Registry::require`] turns "a model I expect is missing" into an error at start-up instead
//! of a surprise later.
//!
//! ## Registry rules
//!
//! - Two registrations under one name: [`Error::DuplicateModel`] naming both registration sites.
//! - An unknown model name: [`Error::UnknownModel`], never a panic. Callers keep such entries
//!   (not applied, not lost) until a build that knows the model opens the library.

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
    #[error("models not registered in this build: {0:?} (is the crate that registers them named in this artifact?)")]
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
/// one and keep the larger (`(version, hlc, device)`), treating deletes as tombstones that keep
/// their stamp — so that any order of the same changes, with duplicates, gives the same rows.
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
}

/// One model's entry in the registry: its name, where it was registered, and its apply function.
/// Built by [`register_syncable_model!`]; rarely written by hand.
#[derive(Clone, Copy)]
pub struct ModelRegistration {
    /// [`Syncable::MODEL`].
    pub name: &'static str,
    /// Module path of the registration (named in [`Error::DuplicateModel`]).
    pub registered_at: &'static str,
    /// [`Syncable::apply`].
    pub apply: fn(&mut SqliteConnection, &Change) -> Result<Applied, Error>,
}

impl ModelRegistration {
    /// The registration of `T`, made at `registered_at` (pass `module_path!()`).
    pub const fn of<T: Syncable>(registered_at: &'static str) -> Self {
        Self { name: T::MODEL, registered_at, apply: T::apply }
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
/// ```ignore
/// syncable::register_syncable_model!(my_crate::Tag);
/// ```
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

    /// Applies `change` through its model inside the caller's transaction.
    pub fn apply(&self, conn: &mut SqliteConnection, change: &Change) -> Result<Applied, Error> {
        (self.get(&change.model)?.apply)(conn, change)
    }
}
