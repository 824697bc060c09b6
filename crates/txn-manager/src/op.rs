//! [`Op`]: one local write, typed at construction and erased so a batch can mix models.

use std::marker::PhantomData;

use diesel::SqliteConnection;
use library_models::{Id, LibraryModel};
use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey, Stamp};

use crate::{Error, HybridClock};

/// Hands out origin seqs and HLC readings inside one transaction; copied back into the
/// [`crate::Library`] only when the transaction commits.
#[derive(Clone, Debug)]
pub(crate) struct StampCtx {
    pub(crate) device: DeviceId,
    pub(crate) origin_seq: u64,
    pub(crate) hlc: HybridClock,
}

impl StampCtx {
    pub(crate) fn stamp(&mut self, version: u64) -> Result<Stamp, Error> {
        Ok(Stamp { version, hlc: self.hlc.now()?, device: self.device })
    }

    /// The stamp of a local edit of a record whose stored stamp has clock `stored`: a new
    /// reading, or `stored + 1` when the stored stamp is not behind it. An edit is causally
    /// after the state it overwrites, so it must win over it under recency-first LWW — also
    /// when that state came from a peer whose clock is ahead by more than the drift clamp
    /// lets our own clock follow (the clock itself stays clamped: only this stamp is ahead).
    pub(crate) fn stamp_over(&mut self, version: u64, stored: Hlc) -> Result<Stamp, Error> {
        let now = self.hlc.now()?;
        let hlc = if now > stored {
            now
        } else {
            stored
                .0
                .checked_add(1)
                .map(Hlc)
                .filter(|h| h.millis() <= Hlc::MAX_MILLIS && i64::try_from(h.0).is_ok())
                .ok_or(Error::ClockOutOfRange { millis: now.millis(), last: stored })?
        };
        Ok(Stamp { version, hlc, device: self.device })
    }

    pub(crate) fn change(
        &mut self,
        model: &str,
        record: Id,
        kind: ChangeType,
        stamp: Stamp,
        payload: Vec<u8>,
    ) -> Change {
        self.origin_seq += 1;
        Change {
            origin: OriginKey { device: self.device, seq: self.origin_seq },
            hlc: stamp.hlc,
            model: model.to_owned(),
            record: record.0,
            change: kind,
            version: stamp.version,
            payload,
        }
    }
}

pub(crate) trait ErasedOp: Send {
    fn run(
        self: Box<Self>,
        conn: &mut SqliteConnection,
        ctx: &mut StampCtx,
    ) -> Result<Option<Change>, Error>;
}

/// One local write. The write path stamps it (version bump, HLC, device) — callers never set
/// the sync columns.
///
/// ```
/// use library_models::{Id, Tag};
/// use txn_manager::Op;
/// let tag = Tag::new("holiday".into(), None);
/// let id = tag.uuid;
/// let _ops = vec![Op::put(tag), Op::delete::<Tag>(id)];
/// ```
pub struct Op(pub(crate) Box<dyn ErasedOp>);

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Op(..)")
    }
}

impl Op {
    /// Creates or updates `record` (insert when no row has its id, else a new version). Fails
    /// with [`Error::Deleted`] on a tombstoned record, except for revivable models (links).
    /// For a model that merges per field, the change carries only the fields that differ from
    /// the stored record, and a put that changes nothing writes nothing (no change).
    pub fn put<T: LibraryModel + 'static>(record: T) -> Self {
        Self(Box::new(Put(record)))
    }

    /// Deletes the record `uuid` of model `T` (a tombstone with its own stamp). Deleting a
    /// tombstone writes nothing; a missing record is [`Error::NotFound`].
    pub fn delete<T: LibraryModel + 'static>(uuid: Id) -> Self {
        Self(Box::new(Delete::<T>(uuid, PhantomData)))
    }
}

/// The version after `stored`. Stored versions are signed 64-bit and the apply refuses a
/// change at or above 2^63 on every device, so a record a peer left at `i64::MAX` cannot be
/// written here again: refusing is better than storing a wrapped (negative) version that only
/// this device would hold.
fn next_version<T: LibraryModel>(stored: u64, uuid: Id) -> Result<u64, Error> {
    stored.checked_add(1).filter(|v| i64::try_from(*v).is_ok()).ok_or_else(|| {
        Error::Invalid(format!("{} {uuid}: version {stored} cannot be bumped", T::MODEL))
    })
}

struct Put<T>(T);

/// Writes a local change through the model's own merge ([`syncable::Syncable::apply`]): the
/// same code that applies a peer's change, so there is one merge rule. The change's stamp is
/// past the stored one, so it wins.
fn write_through_merge<T: LibraryModel>(
    conn: &mut SqliteConnection,
    change: &Change,
) -> Result<(), Error> {
    match T::apply(conn, change)? {
        syncable::Applied::Won => Ok(()),
        other => Err(Error::Invalid(format!(
            "{} {}: a local write did not win its own merge ({other:?})",
            T::MODEL,
            change.record
        ))),
    }
}

impl<T: LibraryModel + 'static> ErasedOp for Put<T> {
    fn run(
        self: Box<Self>,
        conn: &mut SqliteConnection,
        ctx: &mut StampCtx,
    ) -> Result<Option<Change>, Error> {
        let mut record = self.0;
        let uuid = record.uuid();
        let stored = T::load(conn, uuid)?;
        let stamp = match &stored {
            Some(s) if s.is_tombstone() && !T::REVIVABLE => {
                return Err(Error::Deleted { model: T::MODEL, record: uuid.0 });
            }
            Some(s) => {
                let meta = s.stamp();
                ctx.stamp_over(next_version::<T>(meta.version, uuid)?, meta.hlc)?
            }
            None => ctx.stamp(1)?,
        };
        let kind = if stored.is_some() { ChangeType::Update } else { ChangeType::Insert };
        let Some(payload) = record.local_payload(stored.as_ref(), stamp, false)? else {
            return Ok(None);
        };
        let change = ctx.change(T::MODEL, uuid, kind, stamp, payload);
        write_through_merge::<T>(conn, &change)?;
        Ok(Some(change))
    }
}

struct Delete<T>(Id, PhantomData<fn() -> T>);

impl<T: LibraryModel + 'static> ErasedOp for Delete<T> {
    fn run(
        self: Box<Self>,
        conn: &mut SqliteConnection,
        ctx: &mut StampCtx,
    ) -> Result<Option<Change>, Error> {
        let Some(stored) = T::load(conn, self.0)? else {
            return Err(Error::NotFound { model: T::MODEL, record: self.0.0 });
        };
        if stored.is_tombstone() {
            return Ok(None);
        }
        let meta = stored.stamp();
        let stamp = ctx.stamp_over(next_version::<T>(meta.version, self.0)?, meta.hlc)?;
        let mut record = stored.clone();
        let Some(payload) = record.local_payload(Some(&stored), stamp, true)? else {
            return Ok(None);
        };
        let change = ctx.change(T::MODEL, self.0, ChangeType::Delete, stamp, payload);
        write_through_merge::<T>(conn, &change)?;
        Ok(Some(change))
    }
}
