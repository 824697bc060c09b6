//! The [`LibraryModel`] trait and the macro that defines every reference model with the same
//! five sync columns and the same last-writer-wins apply.

use diesel::prelude::*;
use sync_log::{Change, Stamp};
use uuid::Uuid;

use crate::Id;

/// A syncable model stored in the library database: what the write path needs beyond
/// [`syncable::Syncable`] to stamp and write records locally.
///
/// Every implementation stores the five sync columns `uuid`, `version`, `hlc`, `device_id`,
/// `tombstone`, and its [`syncable::Syncable::apply`] is the last-writer-wins merge: the row
/// becomes the payload of the change with the larger stamp, compared as `(hlc, device,
/// version)` — the most recent write wins ([`sync_log::Stamp`]).
pub trait LibraryModel: syncable::Syncable + Clone + Send + std::fmt::Debug {
    /// Whether a deleted record may be written again locally. Only links are (re-adding a
    /// removed tag to the same metadata is a new version of the same link record).
    const REVIVABLE: bool = false;

    /// The record's id.
    fn uuid(&self) -> Id;

    /// Whether the record is a tombstone.
    fn is_tombstone(&self) -> bool;

    /// Sets the sync columns (done by the write path, never by callers).
    fn set_meta(&mut self, stamp: Stamp, tombstone: bool);

    /// The stored record, if any.
    fn load(conn: &mut SqliteConnection, uuid: Id) -> QueryResult<Option<Self>>;

    /// The stored `(version, hlc, tombstone)`, if any: a cheap primary-key lookup.
    fn stored_version(
        conn: &mut SqliteConnection,
        uuid: Id,
    ) -> QueryResult<Option<(u64, sync_log::Hlc, bool)>>;

    /// Writes the record unconditionally (insert or replace every synced column). The caller
    /// has made its stamp larger than the stored one.
    fn write(conn: &mut SqliteConnection, record: &Self) -> QueryResult<()>;

    /// Inserts new records with plain multi-row `INSERT`s (fails if one exists).
    fn insert_all(conn: &mut SqliteConnection, records: &[Self]) -> QueryResult<usize>;

    /// Which of `ids` have a row (tombstones included), in no particular order.
    fn existing(conn: &mut SqliteConnection, ids: &[Id]) -> QueryResult<Vec<Id>>;

    /// Up to `limit` records with an id greater than `after`, in id order (tombstones
    /// included): the canonical order of the content hash.
    fn page(conn: &mut SqliteConnection, after: Option<Id>, limit: i64) -> QueryResult<Vec<Self>>;
}

/// Stored integers are SQLite's signed 64-bit. Stamps at or above 2^63 cannot be compared in
/// SQL, so the apply refuses them (deterministically, on every device).
pub(crate) fn checked_i64(
    model: &str,
    record: Uuid,
    what: &str,
    v: u64,
) -> Result<i64, syncable::Error> {
    i64::try_from(v).map_err(|_| syncable::Error::InvalidChange {
        model: model.to_owned(),
        record,
        reason: format!("{what} {v} does not fit in a signed 64-bit column"),
    })
}

/// Decodes the payload of `change` for model `T` and makes the record's sync columns those of
/// the change: the row is a pure function of the change, whatever was stored before.
pub(crate) fn record_from_change<T>(change: &Change) -> Result<T, syncable::Error>
where
    T: LibraryModel + serde::de::DeserializeOwned,
{
    let mut record: T = sync_log::codec::decode(&change.payload).map_err(|source| {
        syncable::Error::Payload { model: change.model.clone(), record: change.record, source }
    })?;
    if record.uuid().0 != change.record {
        return Err(syncable::Error::InvalidChange {
            model: change.model.clone(),
            record: change.record,
            reason: format!("payload is record {}", record.uuid()),
        });
    }
    checked_i64(&change.model, change.record, "version", change.version)?;
    checked_i64(&change.model, change.record, "hlc", change.hlc.0)?;
    record.set_meta(change.stamp(), change.change == sync_log::ChangeType::Delete);
    Ok(record)
}

/// The SQL condition "the incoming row's stamp is larger than the stored one" for `table` in an
/// `ON CONFLICT DO UPDATE … WHERE`: the one statement of the merge rule, `(hlc, device,
/// version)` compared as a row value (SQLite compares the device BLOBs bytewise, which is the
/// UUID order). Recency first: `version` (the edit counter) only breaks a tie of `(hlc,
/// device)`, which one device never produces for two different writes.
pub(crate) fn stamp_is_larger(table: &str) -> String {
    format!(
        "(excluded.hlc, excluded.device_id, excluded.version) > \
         ({table}.hlc, {table}.device_id, {table}.version)"
    )
}

/// `INSERT … ON CONFLICT (uuid) DO UPDATE SET` every column to the new row's value: the upsert
/// of a local write, whose stamp the write path has just made larger than the stored one.
macro_rules! overwrite_on_conflict {
    ($t:ident, $table:ident, $record:expr, $($field:ident),*) => {
        diesel::insert_into($t::$table)
            .values($record)
            .on_conflict($t::uuid)
            .do_update()
            .set((
                $( $t::$field.eq(diesel::upsert::excluded($t::$field)), )*
                $t::version.eq(diesel::upsert::excluded($t::version)),
                $t::hlc.eq(diesel::upsert::excluded($t::hlc)),
                $t::device_id.eq(diesel::upsert::excluded($t::device_id)),
                $t::tombstone.eq(diesel::upsert::excluded($t::tombstone)),
            ))
    };
}

/// Defines a reference model: the struct (synced columns only), its [`LibraryModel`] and
/// [`syncable::Syncable`] impls with the LWW apply, and its registration.
macro_rules! library_model {
    (
        $(#[$doc:meta])*
        $name:ident, table = $table:ident, model = $model:literal, revivable = $revivable:literal,
        fields { $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, PartialEq, Eq, diesel::Queryable, diesel::Selectable, diesel::Insertable,
            serde::Serialize, serde::Deserialize,
        )]
        #[diesel(table_name = crate::schema::$table)]
        #[diesel(check_for_backend(diesel::sqlite::Sqlite))]
        pub struct $name {
            /// Record id (UUIDv7 for new records).
            pub uuid: crate::Id,
            $( $(#[$fdoc])* pub $field: $ty, )*
            /// Per-record version (set by the write path).
            pub version: i64,
            /// Packed HLC of the last write (set by the write path).
            pub hlc: i64,
            /// Device of the last write (set by the write path).
            pub device_id: crate::Id,
            /// Whether the record is deleted (a tombstone keeps its stamp).
            pub tombstone: bool,
        }

        impl syncable::Syncable for $name {
            const MODEL: &'static str = $model;

            fn record_id(&self) -> uuid::Uuid {
                self.uuid.0
            }

            fn stamp(&self) -> sync_log::Stamp {
                sync_log::Stamp {
                    version: self.version as u64,
                    hlc: sync_log::Hlc(self.hlc as u64),
                    device: sync_log::DeviceId(self.device_id.0),
                }
            }

            fn encode(&self) -> Result<Vec<u8>, syncable::Error> {
                sync_log::codec::encode(self).map_err(|source| syncable::Error::Payload {
                    model: $model.to_owned(),
                    record: self.uuid.0,
                    source,
                })
            }

            fn hash_rows(
                conn: &mut diesel::SqliteConnection,
                row: &mut dyn FnMut(&[u8]),
            ) -> Result<(), syncable::Error> {
                crate::hash::hash_rows::<Self>(conn, row)
            }

            fn apply(
                conn: &mut diesel::SqliteConnection,
                change: &sync_log::Change,
            ) -> Result<syncable::Applied, syncable::Error> {
                use crate::schema::$table::dsl as t;
                use diesel::prelude::*;
                if change.change == sync_log::ChangeType::Bulk {
                    // A bulk entry describes rows that travel in a stream; it writes nothing.
                    return Ok(syncable::Applied::Duplicate);
                }
                let record: $name = crate::model::record_from_change(change)?;
                if Self::merge_rows(conn, std::slice::from_ref(&record))? > 0 {
                    return Ok(syncable::Applied::Won);
                }
                // Not written: the stored stamp is equal (a duplicate) or larger.
                let stored: (i64, i64, crate::Id) = t::$table
                    .find(record.uuid)
                    .select((t::version, t::hlc, t::device_id))
                    .first(conn)?;
                if stored == (record.version, record.hlc, record.device_id) {
                    Ok(syncable::Applied::Duplicate)
                } else {
                    Ok(syncable::Applied::Lost)
                }
            }

            fn apply_batch(
                conn: &mut diesel::SqliteConnection,
                changes: &[&sync_log::Change],
            ) -> Result<syncable::BatchApplied, syncable::Error> {
                let mut rows: Vec<$name> = Vec::with_capacity(changes.len());
                let mut rejected = Vec::new();
                let mut bulk = 0u64;
                for (i, change) in changes.iter().enumerate() {
                    if change.change == sync_log::ChangeType::Bulk {
                        bulk += 1;
                        continue;
                    }
                    match crate::model::record_from_change::<$name>(change) {
                        Ok(r) => rows.push(r),
                        Err(e) => rejected.push((i, e)),
                    }
                }
                let written = Self::merge_rows(conn, &rows)? as u64;
                let unchanged = (rows.len() as u64 + bulk).saturating_sub(written);
                Ok(syncable::BatchApplied::new(written, unchanged, rejected))
            }
        }

        impl $name {
            /// THE last-writer-wins merge of this table, used by both `apply` and
            /// `apply_batch`: a multi-row `INSERT … ON CONFLICT (uuid) DO UPDATE SET <every
            /// synced column> WHERE <the new stamp is larger>`. The stamp order is
            /// `(hlc, device_id, version)` — recency first ([`sync_log::Stamp`]). SQLite
            /// processes the rows in order, so a record that appears twice in one call is
            /// merged exactly as by two statements. Diesel's DSL has no batch upsert with a
            /// WHERE for SQLite, hence the SQL text; every value is a bound parameter.
            /// Returns the rows written.
            fn merge_rows(
                conn: &mut diesel::SqliteConnection,
                rows: &[$name],
            ) -> diesel::QueryResult<usize> {
                use crate::schema::$table::dsl as t;
                use diesel::prelude::*;
                let cols = ["uuid", $( stringify!($field), )* "version", "hlc", "device_id", "tombstone"];
                let mut written = 0;
                for chunk in rows.chunks(crate::model::INSERT_CHUNK) {
                    let mut sql = format!(
                        "INSERT INTO {} ({}) VALUES ",
                        stringify!($table),
                        cols.join(", ")
                    );
                    let one = format!("({})", vec!["?"; cols.len()].join(","));
                    sql.push_str(&vec![one.as_str(); chunk.len()].join(","));
                    sql.push_str(" ON CONFLICT(uuid) DO UPDATE SET ");
                    sql.push_str(
                        &cols[1..].iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", "),
                    );
                    sql.push_str(&format!(
                        " WHERE {}",
                        crate::model::stamp_is_larger(stringify!($table))
                    ));
                    let mut q = diesel::sql_query(sql).into_boxed::<diesel::sqlite::Sqlite>();
                    for r in chunk {
                        q = q.bind::<<t::uuid as diesel::Expression>::SqlType, _>(&r.uuid);
                        $( q = q.bind::<<t::$field as diesel::Expression>::SqlType, _>(&r.$field); )*
                        q = q.bind::<diesel::sql_types::BigInt, _>(r.version);
                        q = q.bind::<diesel::sql_types::BigInt, _>(r.hlc);
                        q = q.bind::<diesel::sql_types::Binary, _>(&r.device_id);
                        q = q.bind::<diesel::sql_types::Bool, _>(r.tombstone);
                    }
                    written += q.execute(conn)?;
                }
                Ok(written)
            }
        }

        impl crate::LibraryModel for $name {
            const REVIVABLE: bool = $revivable;

            fn uuid(&self) -> crate::Id {
                self.uuid
            }

            fn is_tombstone(&self) -> bool {
                self.tombstone
            }

            fn set_meta(&mut self, stamp: sync_log::Stamp, tombstone: bool) {
                // Bit reinterpretation; values >= 2^63 are refused before they reach a table.
                self.version = stamp.version as i64;
                self.hlc = stamp.hlc.0 as i64;
                self.device_id = crate::Id(stamp.device.0);
                self.tombstone = tombstone;
            }

            fn load(
                conn: &mut diesel::SqliteConnection,
                uuid: crate::Id,
            ) -> diesel::QueryResult<Option<Self>> {
                use diesel::prelude::*;
                crate::schema::$table::table
                    .find(uuid)
                    .select(Self::as_select())
                    .first(conn)
                    .optional()
            }

            fn stored_version(
                conn: &mut diesel::SqliteConnection,
                uuid: crate::Id,
            ) -> diesel::QueryResult<Option<(u64, sync_log::Hlc, bool)>> {
                use crate::schema::$table::dsl as t;
                use diesel::prelude::*;
                let v: Option<(i64, i64, bool)> = t::$table
                    .find(uuid)
                    .select((t::version, t::hlc, t::tombstone))
                    .first(conn)
                    .optional()?;
                Ok(v.map(|(v, h, d)| (v as u64, sync_log::Hlc(h as u64), d)))
            }

            fn write(conn: &mut diesel::SqliteConnection, record: &Self) -> diesel::QueryResult<()> {
                use crate::schema::$table::dsl as t;
                use diesel::prelude::*;
                overwrite_on_conflict!(t, $table, record, $($field),*)
                    .execute(conn)
                    .map(|_| ())
            }

            fn insert_all(
                conn: &mut diesel::SqliteConnection,
                records: &[Self],
            ) -> diesel::QueryResult<usize> {
                use diesel::prelude::*;
                let mut n = 0;
                for chunk in records.chunks(crate::model::INSERT_CHUNK) {
                    n += diesel::insert_into(crate::schema::$table::table).values(chunk).execute(conn)?;
                }
                Ok(n)
            }

            fn existing(
                conn: &mut diesel::SqliteConnection,
                ids: &[crate::Id],
            ) -> diesel::QueryResult<Vec<crate::Id>> {
                use crate::schema::$table::dsl as t;
                use diesel::prelude::*;
                let mut found = Vec::new();
                for chunk in ids.chunks(crate::model::INSERT_CHUNK) {
                    found.extend(
                        t::$table.filter(t::uuid.eq_any(chunk)).select(t::uuid).load::<crate::Id>(conn)?,
                    );
                }
                Ok(found)
            }

            fn page(
                conn: &mut diesel::SqliteConnection,
                after: Option<crate::Id>,
                limit: i64,
            ) -> diesel::QueryResult<Vec<Self>> {
                use crate::schema::$table::dsl as t;
                use diesel::prelude::*;
                let q = t::$table.select(Self::as_select()).order(t::uuid.asc()).limit(limit);
                match after {
                    Some(after) => q.filter(t::uuid.gt(after)).load(conn),
                    None => q.load(conn),
                }
            }
        }

        syncable::register_syncable_model!($name);
    };
}

/// Rows per multi-row `INSERT` (at most 13 columns each: well under SQLite's variable limit).
pub(crate) const INSERT_CHUNK: usize = 1_000;

pub(crate) use {library_model, overwrite_on_conflict};
