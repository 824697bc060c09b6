//! The model kit: [`LibraryModel`], the [`crate::model!`] macro that defines a synced model in
//! one declaration (the reference models use it too), and the merge rules it generates.

use std::collections::HashMap;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use sync_log::{Change, DeviceId, Hlc, Stamp};
use uuid::Uuid;

use crate::Id;

/// How a model's records merge when two devices change one record concurrently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// The whole record is one last-writer-wins register: the change with the larger stamp
    /// is the record (for rows written whole, such as file entries and links).
    PerRecord,
    /// Every field is its own last-writer-wins register with its own stamp, and so is the
    /// tombstone: concurrent edits of two fields both survive; of one field, the later stamp
    /// wins. A change carries only the fields it set (for records people edit by hand).
    PerField,
}

/// A syncable model stored in the library database: what the write path needs beyond
/// [`syncable::Syncable`] to stamp and write records locally.
///
/// Implement it with the [`crate::model!`] macro — by hand only if you know why: the macro
/// generates the one merge implementation (per record or per field), the stamp checks, the
/// table, its migration and the registration, and the reference models are defined with it.
///
/// Every implementation stores the five sync columns `uuid`, `version`, `hlc`, `device_id`,
/// `tombstone` (plus `field_stamps` for [`Merge::PerField`]). Stamps compare as `(hlc, device,
/// version)` — the most recent write wins ([`sync_log::Stamp`]).
pub trait LibraryModel: syncable::Syncable + Clone + Send + std::fmt::Debug {
    /// Whether a deleted record may be written again locally. Only links are (re-adding a
    /// removed tag to the same metadata is a new version of the same link record).
    const REVIVABLE: bool = false;

    /// How concurrent changes of one record merge.
    const MERGE: Merge;

    /// The table's name.
    const TABLE: &'static str;

    /// The record's id.
    fn uuid(&self) -> Id;

    /// Whether the record is a tombstone.
    fn is_tombstone(&self) -> bool;

    /// Sets the sync columns as for a write of the whole record at `stamp` (every field's stamp
    /// too, for per-field models). Done by the write path, never by callers.
    fn set_meta(&mut self, stamp: Stamp, tombstone: bool);

    /// The payload of a local write of `self` over `stored` at `stamp` (a delete when
    /// `tombstone`), with the record's sync columns set; `None` when the write changes nothing
    /// (per-field models: no field differs from `stored`).
    fn local_payload(
        &mut self,
        stored: Option<&Self>,
        stamp: Stamp,
        tombstone: bool,
    ) -> Result<Option<Vec<u8>>, syncable::Error>;

    /// The stored record, if any.
    fn load(conn: &mut SqliteConnection, uuid: Id) -> QueryResult<Option<Self>>;

    /// Inserts new records with plain multi-row `INSERT`s (fails if one exists).
    fn insert_all(conn: &mut SqliteConnection, records: &[Self]) -> QueryResult<usize>;

    /// Which of `ids` have a row (tombstones included), in no particular order.
    fn existing(conn: &mut SqliteConnection, ids: &[Id]) -> QueryResult<Vec<Id>>;

    /// Up to `limit` records with an id greater than `after`, in id order (tombstones
    /// included): the canonical order of the content hash.
    fn page(conn: &mut SqliteConnection, after: Option<Id>, limit: i64) -> QueryResult<Vec<Self>>;

    /// The `CREATE TABLE` statement of the model's table (what a dependent crate registers as
    /// its first migration, see [`crate::register_migrations!`]).
    fn create_table_sql() -> String;
}

/// The SQL declaration of a column type, for the `CREATE TABLE` the [`crate::model!`] macro
/// generates: implemented for diesel's SQLite types and `Nullable` of them.
pub trait SqlColumn {
    /// `TEXT NOT NULL`, `BLOB`, …
    const DECL: &'static str;
}

macro_rules! sql_column {
    ($($t:ident => $decl:literal),* $(,)?) => {
        $(
            impl SqlColumn for diesel::sql_types::$t {
                const DECL: &'static str = concat!($decl, " NOT NULL");
            }
            impl SqlColumn for diesel::sql_types::Nullable<diesel::sql_types::$t> {
                const DECL: &'static str = $decl;
            }
        )*
    };
}

sql_column! {
    Text => "TEXT", Binary => "BLOB", BigInt => "BIGINT", Integer => "INTEGER",
    SmallInt => "SMALLINT", Bool => "BOOLEAN", Double => "DOUBLE", Float => "FLOAT",
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

fn check_stamp(change: &Change) -> Result<(), syncable::Error> {
    checked_i64(&change.model, change.record, "version", change.version)?;
    checked_i64(&change.model, change.record, "hlc", change.hlc.0)?;
    Ok(())
}

/// Decodes the payload of a per-record `change` for model `T` and makes the record's sync
/// columns those of the change: the row is a pure function of the change.
#[doc(hidden)]
pub fn record_from_change<T>(change: &Change) -> Result<T, syncable::Error>
where
    T: LibraryModel + serde::de::DeserializeOwned,
{
    let mut record: T = decode_payload(change)?;
    if record.uuid().0 != change.record {
        return Err(syncable::Error::InvalidChange {
            model: change.model.clone(),
            record: change.record,
            reason: format!("payload is record {}", record.uuid()),
        });
    }
    check_stamp(change)?;
    record.set_meta(change.stamp(), change.change == sync_log::ChangeType::Delete);
    Ok(record)
}

fn decode_payload<T: serde::de::DeserializeOwned>(change: &Change) -> Result<T, syncable::Error> {
    sync_log::codec::decode(&change.payload).map_err(|source| syncable::Error::Payload {
        model: change.model.clone(),
        record: change.record,
        source,
    })
}

/// The SQL condition "the incoming row's stamp is larger than the stored one" for `table` in an
/// `ON CONFLICT DO UPDATE … WHERE`: the per-record merge rule, `(hlc, device, version)`
/// compared as a row value (SQLite compares the device BLOBs bytewise, which is the UUID
/// order). Recency first: `version` (the edit counter) only breaks a tie of `(hlc, device)`,
/// which one device never produces for two different writes.
pub(crate) fn stamp_is_larger(table: &str) -> String {
    format!(
        "(excluded.hlc, excluded.device_id, excluded.version) > \
         ({table}.hlc, {table}.device_id, {table}.version)"
    )
}

/// The `INSERT … ON CONFLICT (uuid) DO UPDATE SET <cols> WHERE <stamp is larger>` text of the
/// per-record merge for `rows` rows of `cols` (the first is `uuid`).
#[doc(hidden)]
pub fn merge_rows_sql(table: &str, cols: &[&str], rows: usize) -> String {
    let one = format!("({})", vec!["?"; cols.len()].join(","));
    format!(
        "INSERT INTO {table} ({}) VALUES {} ON CONFLICT(uuid) DO UPDATE SET {} WHERE {}",
        cols.join(", "),
        vec![one.as_str(); rows].join(","),
        cols[1..].iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", "),
        stamp_is_larger(table)
    )
}

/// The `CREATE TABLE` text of a model table: `uuid`, the fields, the sync columns, local
/// columns; `WITHOUT ROWID` (the UUIDv7 key is the only b-tree).
#[doc(hidden)]
pub fn create_table_sql(table: &str, columns: &[(&str, &str)], per_field: bool) -> String {
    let mut cols = vec!["uuid BLOB PRIMARY KEY NOT NULL".to_owned()];
    cols.extend(columns.iter().map(|(name, decl)| format!("{name} {decl}")));
    for sync in [
        "version BIGINT NOT NULL",
        "hlc BIGINT NOT NULL",
        "device_id BLOB NOT NULL",
        "tombstone BOOLEAN NOT NULL",
    ] {
        cols.push(sync.to_owned());
    }
    if per_field {
        cols.push("field_stamps BLOB NOT NULL DEFAULT x''".to_owned());
    }
    format!("CREATE TABLE IF NOT EXISTS {table} ({}) WITHOUT ROWID", cols.join(", "))
}

/// Rows per multi-row `INSERT` (at most 13 columns each: well under SQLite's variable limit).
#[doc(hidden)]
pub const INSERT_CHUNK: usize = 1_000;

/// The per-field stamps of a [`Merge::PerField`] record: for each field in declaration order
/// and then the tombstone, the `(hlc, device)` of the change that set it — 24 bytes each, the
/// HLC big-endian then the device UUID, so bytewise order is stamp order. A short blob (a row
/// written before the record had per-field stamps) reads as the record's stamp for every
/// missing field.
#[derive(
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    diesel::expression::AsExpression,
    diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Binary)]
pub struct FieldStamps(#[serde(with = "serde_bytes")] Vec<u8>);

const STAMP_LEN: usize = 24;

impl FieldStamps {
    /// `n` stamps, all `(hlc, device)`.
    pub fn all(n: usize, hlc: Hlc, device: DeviceId) -> Self {
        let mut out = Self(Vec::with_capacity(n * STAMP_LEN));
        for _ in 0..n {
            out.0.extend_from_slice(&Self::bytes(hlc, device));
        }
        out
    }

    fn bytes(hlc: Hlc, device: DeviceId) -> [u8; STAMP_LEN] {
        let mut b = [0u8; STAMP_LEN];
        b[..8].copy_from_slice(&hlc.0.to_be_bytes());
        b[8..].copy_from_slice(device.0.as_bytes());
        b
    }

    /// Stamp `i`, or `fallback` when the blob does not hold it.
    pub fn get(&self, i: usize, fallback: (Hlc, DeviceId)) -> (Hlc, DeviceId) {
        match self.0.get(i * STAMP_LEN..(i + 1) * STAMP_LEN) {
            Some(b) => {
                let mut hlc = [0u8; 8];
                hlc.copy_from_slice(&b[..8]);
                let mut dev = [0u8; 16];
                dev.copy_from_slice(&b[8..]);
                (Hlc(u64::from_be_bytes(hlc)), DeviceId(Uuid::from_bytes(dev)))
            }
            None => fallback,
        }
    }

    /// Sets stamp `i` (of `n`), filling missing ones with `fallback`.
    pub fn set(&mut self, n: usize, i: usize, fallback: (Hlc, DeviceId), to: (Hlc, DeviceId)) {
        if self.0.len() < n * STAMP_LEN {
            let have = self.0.len() / STAMP_LEN;
            self.0.truncate(have * STAMP_LEN);
            for _ in have..n {
                self.0.extend_from_slice(&Self::bytes(fallback.0, fallback.1));
            }
        }
        self.0[i * STAMP_LEN..(i + 1) * STAMP_LEN].copy_from_slice(&Self::bytes(to.0, to.1));
    }
}

impl std::fmt::Debug for FieldStamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FieldStamps({} stamps)", self.0.len() / STAMP_LEN)
    }
}

impl diesel::serialize::ToSql<diesel::sql_types::Binary, diesel::sqlite::Sqlite> for FieldStamps {
    fn to_sql<'b>(
        &'b self,
        out: &mut diesel::serialize::Output<'b, '_, diesel::sqlite::Sqlite>,
    ) -> diesel::serialize::Result {
        out.set_value(self.0.as_slice());
        Ok(diesel::serialize::IsNull::No)
    }
}

impl diesel::deserialize::FromSql<diesel::sql_types::Binary, diesel::sqlite::Sqlite>
    for FieldStamps
{
    fn from_sql(
        value: diesel::sqlite::SqliteValue<'_, '_, '_>,
    ) -> diesel::deserialize::Result<Self> {
        let bytes = <Vec<u8> as diesel::deserialize::FromSql<
            diesel::sql_types::Binary,
            diesel::sqlite::Sqlite,
        >>::from_sql(value)?;
        Ok(Self(bytes))
    }
}

/// The payload of a change to a [`Merge::PerField`] record: only the fields the change set
/// (by index in declaration order, each encoded with [`sync_log::codec`]) and, when set, the
/// tombstone. Its stamp is the change's `(hlc, origin device)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPatch {
    /// The record.
    pub record: Id,
    /// `(field index, encoded value)`, ascending by index.
    pub fields: Vec<PatchField>,
    /// The tombstone, when the change sets it (a delete sets `true`; every edit sets `false`,
    /// so an edit stamped after a concurrent delete revives the record).
    pub tombstone: Option<bool>,
}

/// One field of a [`FieldPatch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchField {
    /// Field index in declaration order.
    pub index: u16,
    /// The value, encoded with [`sync_log::codec`].
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl FieldPatch {
    /// The encoded value of field `index`, if the patch sets it.
    pub fn value(&self, index: usize) -> Option<&[u8]> {
        self.fields.iter().find(|f| usize::from(f.index) == index).map(|f| f.value.as_slice())
    }
}

/// What a per-field merge of one change did to a record.
#[doc(hidden)]
pub struct FieldMerge<'a> {
    pub stamp: (Hlc, DeviceId),
    pub record_stamp: (Hlc, DeviceId),
    pub n: usize,
    pub stamps: &'a mut FieldStamps,
    pub changed: bool,
    /// Every field the change sets already holds exactly its value and stamp.
    pub duplicate: bool,
}

impl FieldMerge<'_> {
    /// Merges field `i` (its current encoding `current`) with the change's `value`: returns
    /// the value to take when the change's stamp is larger, or equal with larger bytes (a
    /// deterministic tie-break that only hostile input reaches).
    pub fn take<'v>(
        &mut self,
        i: usize,
        current: &[u8],
        value: Option<&'v [u8]>,
    ) -> Option<&'v [u8]> {
        let value = value?;
        let stored = self.stamps.get(i, self.record_stamp);
        if !(stored == self.stamp && value == current) {
            self.duplicate = false;
        }
        let wins = self.stamp > stored || (self.stamp == stored && value > current);
        if !wins {
            return None;
        }
        self.stamps.set(self.n, i, self.record_stamp, self.stamp);
        if value != current || self.stamp != stored {
            self.changed = true;
        }
        Some(value)
    }
}

/// Whether two per-field changes of one record set one field (or the tombstone) to different
/// values; a payload that does not decode counts as a conflict.
#[doc(hidden)]
pub fn patches_conflict(local: &Change, remote: &Change) -> bool {
    let (Ok(a), Ok(b)) = (
        sync_log::codec::decode::<FieldPatch>(&local.payload),
        sync_log::codec::decode::<FieldPatch>(&remote.payload),
    ) else {
        return true;
    };
    let fields =
        a.fields.iter().any(|f| b.value(usize::from(f.index)).is_some_and(|v| v != f.value));
    let tombstone = matches!((a.tombstone, b.tombstone), (Some(x), Some(y)) if x != y);
    fields || tombstone
}

/// Decodes a per-field change for model `T`: the patch, checked against the change.
#[doc(hidden)]
pub fn patch_from_change(change: &Change) -> Result<FieldPatch, syncable::Error> {
    let patch: FieldPatch = decode_payload(change)?;
    if patch.record.0 != change.record {
        return Err(syncable::Error::InvalidChange {
            model: change.model.clone(),
            record: change.record,
            reason: format!("payload is record {}", patch.record),
        });
    }
    check_stamp(change)?;
    Ok(patch)
}

/// The per-field batch merge of model `T`: load the touched rows, merge every change in order,
/// write the rows that changed. `merge` merges one patch into one record and says whether the
/// change won a field, and whether the record changed (a losing change may still raise the
/// record's version: it is the largest of any change, whatever the order).
#[doc(hidden)]
pub fn merge_fields<T>(
    conn: &mut SqliteConnection,
    changes: &[&Change],
    empty: impl Fn(Id) -> T,
    merge: impl Fn(&mut T, &FieldPatch, &Change) -> Result<(bool, bool), syncable::Error>,
    load_many: impl Fn(&mut SqliteConnection, &[Id]) -> QueryResult<Vec<T>>,
    write_many: impl Fn(&mut SqliteConnection, &[T]) -> QueryResult<usize>,
) -> Result<syncable::BatchApplied, syncable::Error>
where
    T: LibraryModel,
{
    let mut patches = Vec::with_capacity(changes.len());
    let mut indices = Vec::with_capacity(changes.len());
    let mut rejected = Vec::new();
    let mut bulk = 0u64;
    for (i, change) in changes.iter().enumerate() {
        if change.change == sync_log::ChangeType::Bulk {
            bulk += 1;
            continue;
        }
        match patch_from_change(change) {
            Ok(p) => {
                patches.push((p, *change));
                indices.push(i);
            }
            Err(e) => rejected.push((i, e)),
        }
    }
    let mut ids: Vec<Id> = patches.iter().map(|(p, _)| p.record).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows: HashMap<Id, T> = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(INSERT_CHUNK) {
        for row in load_many(conn, chunk)? {
            rows.insert(row.uuid(), row);
        }
    }
    let mut dirty: Vec<Id> = Vec::new();
    let mut written = 0u64;
    let mut merge_failed = 0u64;
    for (i, (patch, change)) in patches.iter().enumerate() {
        let row = rows.entry(patch.record).or_insert_with(|| empty(patch.record));
        // Merged into a copy: a field value that does not decode rejects the change whole
        // (kept by the caller), leaving the record as it was.
        let mut merged = row.clone();
        match merge(&mut merged, patch, change) {
            Ok((won, changed)) => {
                *row = merged;
                if won {
                    written += 1;
                }
                if changed {
                    dirty.push(patch.record);
                }
            }
            Err(e) => {
                merge_failed += 1;
                rejected.push((indices[i], e));
            }
        }
    }
    dirty.sort_unstable();
    dirty.dedup();
    let out: Vec<T> = dirty.iter().filter_map(|id| rows.remove(id)).collect();
    for chunk in out.chunks(INSERT_CHUNK) {
        write_many(conn, chunk)?;
    }
    let unchanged = (patches.len() as u64 + bulk).saturating_sub(written + merge_failed);
    rejected.sort_by_key(|(i, _)| *i);
    Ok(syncable::BatchApplied::new(written, unchanged, rejected))
}

/// Defines a synced model in one declaration: the struct (synced columns only), its diesel
/// table, its `CREATE TABLE`, its [`LibraryModel`] and [`syncable::Syncable`] impls with the
/// one merge rule ([`Merge::PerRecord`] or [`Merge::PerField`]), constructors, and its
/// registration in the zero-touch registry. The reference models of this crate are defined
/// with it.
///
/// Field types need `Clone + Debug + PartialEq + Default + Serialize + DeserializeOwned` and a
/// diesel mapping to the SQL type given after `=>` (diesel's SQLite types: `Text`, `Binary`,
/// `BigInt`, `Integer`, `SmallInt`, `Bool`, `Double`, `Float`, and `Nullable<…>` of them).
/// The crate that invokes it depends on `diesel` and `serde` (the generated code derives
/// their traits) and must be named by every final artifact (`use my_models as _;`, see the
/// `syncable` crate docs).
///
/// A complete model in one declaration, its migration registered (the crate docs show the
/// same for an album; `examples/album` in the repository is a whole crate doing it):
///
/// ```
/// use library_models::{Encoded, Id, LibraryModel};
///
/// library_models::model! {
///     /// A playlist: a title and the entries to play, in order.
///     pub struct Playlist {
///         table: playlist,
///         model: "playlist",
///         merge: per_field,
///         revivable: false,
///     }
///     fields {
///         /// Title.
///         title: String => Text,
///         /// The entries, in play order.
///         entries: Encoded<Vec<Id>> => Binary,
///     }
/// }
///
/// library_models::register_migrations!("playlist", [(1, <Playlist as LibraryModel>::create_table_sql)]);
///
/// let sql = Playlist::create_table_sql();
/// assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS playlist (uuid BLOB PRIMARY KEY NOT NULL, title TEXT NOT NULL, entries BLOB NOT NULL"));
/// let mut conn = library_models::open_library(":memory:".as_ref())?;
/// let list = Playlist::new("Road trip".into(), Encoded(vec![Id::new_v7()]));
/// Playlist::insert_all(&mut conn, &[list.clone()])?;
/// assert_eq!(Playlist::load(&mut conn, list.uuid)?.map(|p| p.title), Some("Road trip".into()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[macro_export]
macro_rules! model {
    (
        $(#[$doc:meta])*
        $vis:vis struct $name:ident {
            table: $table:ident,
            model: $model:literal,
            merge: $merge:ident,
            revivable: $revivable:literal $(,)?
        }
        fields { $( $(#[$fdoc:meta])* $field:ident : $ty:ty => $sql:ty ),* $(,)? }
        $( local { $( $lcol:ident => $lsql:ty ),* $(,)? } )?
    ) => {
        $crate::model!(@table $merge, $table, [ $( $field => $sql ),* ], [ $( $( $lcol => $lsql ),* )? ]);
        $crate::model!(@struct $merge, [$(#[$doc])*], $vis, $name, $table, [ $( [$(#[$fdoc])*] $field : $ty ),* ]);

        #[allow(clippy::too_many_arguments)]
        impl $name {
            /// A new record with a fresh UUIDv7 id; the write path stamps it on commit.
            $vis fn new($($field: $ty),*) -> Self {
                Self::with_id($crate::Id::new_v7(), $($field),*)
            }

            /// A record with the given id; the write path stamps it on commit.
            $vis fn with_id(uuid: $crate::Id, $($field: $ty),*) -> Self {
                let mut record = Self::__empty(uuid);
                $( record.$field = $field; )*
                record
            }

            /// The column names in table order (uuid, fields, sync columns).
            #[doc(hidden)]
            pub fn __columns() -> &'static [&'static str] {
                $crate::model!(@columns $merge, [ $( $field ),* ])
            }
        }

        impl $crate::__private::syncable::Syncable for $name {
            const MODEL: &'static str = $model;

            fn record_id(&self) -> $crate::__private::uuid::Uuid {
                self.uuid.0
            }

            fn stamp(&self) -> $crate::__private::sync_log::Stamp {
                $crate::__private::sync_log::Stamp {
                    version: self.version as u64,
                    hlc: $crate::__private::sync_log::Hlc(self.hlc as u64),
                    device: $crate::__private::sync_log::DeviceId(self.device_id.0),
                }
            }

            fn encode(&self) -> Result<Vec<u8>, $crate::__private::syncable::Error> {
                $crate::model!(@encode $merge, self, $model, [ $( $field ),* ])
            }

            fn hash_rows(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                row: &mut dyn FnMut(&[u8]),
            ) -> Result<(), $crate::__private::syncable::Error> {
                $crate::__private::hash_rows::<Self>(conn, row)
            }

            fn apply(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                change: &$crate::__private::sync_log::Change,
            ) -> Result<$crate::__private::syncable::Applied, $crate::__private::syncable::Error> {
                if change.change == $crate::__private::sync_log::ChangeType::Bulk {
                    // A bulk entry describes rows that travel in a stream; it writes nothing.
                    return Ok($crate::__private::syncable::Applied::Duplicate);
                }
                $crate::model!(@apply $merge, $name, $table, conn, change, [ $( $field ),* ])
            }

            fn apply_batch(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                changes: &[&$crate::__private::sync_log::Change],
            ) -> Result<$crate::__private::syncable::BatchApplied, $crate::__private::syncable::Error> {
                $crate::model!(@apply_batch $merge, $name, $table, conn, changes, [ $( $field => $sql ),* ])
            }

            fn conflicts(
                local: &$crate::__private::sync_log::Change,
                remote: &$crate::__private::sync_log::Change,
            ) -> bool {
                $crate::model!(@conflicts $merge, local, remote)
            }
        }

        impl $crate::LibraryModel for $name {
            const REVIVABLE: bool = $revivable;
            const MERGE: $crate::Merge = $crate::model!(@merge_kind $merge);
            const TABLE: &'static str = stringify!($table);

            fn uuid(&self) -> $crate::Id {
                self.uuid
            }

            fn is_tombstone(&self) -> bool {
                self.tombstone
            }

            fn set_meta(&mut self, stamp: $crate::__private::sync_log::Stamp, tombstone: bool) {
                // Bit reinterpretation; values >= 2^63 are refused before they reach a table.
                self.version = stamp.version as i64;
                self.hlc = stamp.hlc.0 as i64;
                self.device_id = $crate::Id(stamp.device.0);
                self.tombstone = tombstone;
                $crate::model!(@set_meta_stamps $merge, self, stamp, [ $( $field ),* ]);
            }

            fn local_payload(
                &mut self,
                stored: Option<&Self>,
                stamp: $crate::__private::sync_log::Stamp,
                tombstone: bool,
            ) -> Result<Option<Vec<u8>>, $crate::__private::syncable::Error> {
                $crate::model!(@local_payload $merge, self, stored, stamp, tombstone, $model, [ $( $field ),* ])
            }

            fn load(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                uuid: $crate::Id,
            ) -> $crate::__private::diesel::QueryResult<Option<Self>> {
                use $crate::__private::diesel::prelude::*;
                $table::table.find(uuid).select(Self::as_select()).get_result(conn).optional()
            }

            fn insert_all(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                records: &[Self],
            ) -> $crate::__private::diesel::QueryResult<usize> {
                use $crate::__private::diesel::prelude::*;
                let mut n = 0;
                for chunk in records.chunks($crate::__private::INSERT_CHUNK) {
                    n += $crate::__private::diesel::insert_into($table::table).values(chunk).execute(conn)?;
                }
                Ok(n)
            }

            fn existing(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                ids: &[$crate::Id],
            ) -> $crate::__private::diesel::QueryResult<Vec<$crate::Id>> {
                use $crate::__private::diesel::prelude::*;
                let mut found = Vec::new();
                for chunk in ids.chunks($crate::__private::INSERT_CHUNK) {
                    found.extend(
                        $table::table.filter($table::uuid.eq_any(chunk)).select($table::uuid).load::<$crate::Id>(conn)?,
                    );
                }
                Ok(found)
            }

            fn page(
                conn: &mut $crate::__private::diesel::SqliteConnection,
                after: Option<$crate::Id>,
                limit: i64,
            ) -> $crate::__private::diesel::QueryResult<Vec<Self>> {
                use $crate::__private::diesel::prelude::*;
                // Streamed in id order and cut after `limit` rows (no bound `LIMIT`, which
                // SQLite re-prepares on every call).
                let limit = usize::try_from(limit).unwrap_or(0);
                let q = $table::table.select(Self::as_select()).order($table::uuid.asc());
                match after {
                    Some(after) => q
                        .filter($table::uuid.gt(after))
                        .load_iter::<Self, $crate::__private::diesel::connection::DefaultLoadingMode>(conn)?
                        .take(limit)
                        .collect(),
                    None => q
                        .load_iter::<Self, $crate::__private::diesel::connection::DefaultLoadingMode>(conn)?
                        .take(limit)
                        .collect(),
                }
            }

            fn create_table_sql() -> String {
                use $crate::__private::diesel::sql_types::*;
                #[allow(unused_mut)]
                let mut columns: Vec<(&str, &str)> = vec![
                    $( (stringify!($field), <$sql as $crate::SqlColumn>::DECL), )*
                ];
                $( $( columns.push((stringify!($lcol), <$lsql as $crate::SqlColumn>::DECL)); )* )?
                $crate::__private::create_table_sql(
                    stringify!($table),
                    &columns,
                    <Self as $crate::LibraryModel>::MERGE == $crate::Merge::PerField,
                )
            }
        }

        $crate::model!(@merge_fn $merge, $name, [ $( $field ),* ]);
        $crate::__private::syncable::register_syncable_model!($name);
    };

    // ---- the table ----
    (@table per_record, $table:ident, [ $( $field:ident => $sql:ty ),* ], [ $( $lcol:ident => $lsql:ty ),* ]) => {
        $crate::__private::diesel::table! {
            #[allow(missing_docs)]
            $table (uuid) {
                uuid -> Binary,
                $( $field -> $sql, )*
                version -> BigInt,
                hlc -> BigInt,
                device_id -> Binary,
                tombstone -> Bool,
                $( $lcol -> $lsql, )*
            }
        }
    };
    // A per-field table is a per-record one with the stamps column.
    (@table per_field, $table:ident, [ $( $field:ident => $sql:ty ),* ], [ $( $lcol:ident => $lsql:ty ),* ]) => {
        $crate::model!(@table per_record, $table, [ $( $field => $sql ),* ], [ field_stamps => Binary $(, $lcol => $lsql )* ]);
    };

    // ---- the struct ----
    (@struct per_record, [$(#[$doc:meta])*], $vis:vis, $name:ident, $table:ident, [ $( [$(#[$fdoc:meta])*] $field:ident : $ty:ty ),* ]) => {
        $crate::model!(@struct_inner [$(#[$doc])*], $vis, $name, $table, [ $( [$(#[$fdoc])*] $field : $ty ),* ], [], []);
    };
    (@struct per_field, [$(#[$doc:meta])*], $vis:vis, $name:ident, $table:ident, [ $( [$(#[$fdoc:meta])*] $field:ident : $ty:ty ),* ]) => {
        $crate::model!(@struct_inner [$(#[$doc])*], $vis, $name, $table, [ $( [$(#[$fdoc])*] $field : $ty ),* ],
            [
                /// Each field's stamp, then the tombstone's (set by the write path).
                pub field_stamps: $crate::FieldStamps,
            ],
            [ field_stamps: $crate::FieldStamps::default(), ]);
    };
    (@struct_inner [$(#[$doc:meta])*], $vis:vis, $name:ident, $table:ident, [ $( [$(#[$fdoc:meta])*] $field:ident : $ty:ty ),* ], [ $($extra:tt)* ], [ $($extra_init:tt)* ]) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, PartialEq, diesel::Queryable, diesel::Selectable, diesel::Insertable,
            serde::Serialize, serde::Deserialize,
        )]
        #[diesel(table_name = $table)]
        #[diesel(check_for_backend(diesel::sqlite::Sqlite))]
        $vis struct $name {
            /// Record id (UUIDv7 for new records).
            pub uuid: $crate::Id,
            $( $(#[$fdoc])* pub $field: $ty, )*
            /// The record's edit counter (for a per-field record: the largest version any
            /// change carried). Set by the write path.
            pub version: i64,
            /// Packed HLC of the latest write (set by the write path).
            pub hlc: i64,
            /// Device of that write (set by the write path).
            pub device_id: $crate::Id,
            /// Whether the record is deleted (a tombstone keeps its stamp).
            pub tombstone: bool,
            $($extra)*
        }

        impl $name {
            #[doc(hidden)]
            pub fn __empty(uuid: $crate::Id) -> Self {
                Self {
                    uuid,
                    $( $field: Default::default(), )*
                    version: 0,
                    hlc: 0,
                    device_id: $crate::Id(Default::default()),
                    tombstone: false,
                    $($extra_init)*
                }
            }
        }
    };

    (@columns per_record, [ $( $field:ident ),* ]) => {
        &["uuid", $( stringify!($field), )* "version", "hlc", "device_id", "tombstone"]
    };
    (@columns per_field, [ $( $field:ident ),* ]) => {
        &["uuid", $( stringify!($field), )* "version", "hlc", "device_id", "tombstone", "field_stamps"]
    };

    (@conflicts per_record, $local:ident, $remote:ident) => {{
        let _ = ($local, $remote);
        true
    }};
    (@conflicts per_field, $local:ident, $remote:ident) => {
        $crate::__private::patches_conflict($local, $remote)
    };

    (@merge_kind per_record) => { $crate::Merge::PerRecord };
    (@merge_kind per_field) => { $crate::Merge::PerField };

    // ---- payloads ----
    (@encode per_record, $self:ident, $model:literal, [ $( $field:ident ),* ]) => {
        $crate::__private::sync_log::codec::encode($self).map_err(|source| $crate::__private::syncable::Error::Payload {
            model: $model.to_owned(),
            record: $self.uuid.0,
            source,
        })
    };
    (@encode per_field, $self:ident, $model:literal, [ $( $field:ident ),* ]) => {{
        // The whole record as a patch that sets every field and the tombstone.
        let err = |source| $crate::__private::syncable::Error::Payload {
            model: $model.to_owned(),
            record: $self.uuid.0,
            source,
        };
        let mut fields = Vec::new();
        let mut index: u16 = 0;
        $(
            fields.push($crate::PatchField {
                index,
                value: $crate::__private::sync_log::codec::encode(&$self.$field).map_err(err)?,
            });
            index += 1;
        )*
        let _ = index;
        $crate::__private::sync_log::codec::encode(&$crate::FieldPatch {
            record: $self.uuid,
            fields,
            tombstone: Some($self.tombstone),
        })
        .map_err(err)
    }};

    (@set_meta_stamps per_record, $self:ident, $stamp:ident, [ $( $field:ident ),* ]) => {};
    (@set_meta_stamps per_field, $self:ident, $stamp:ident, [ $( $field:ident ),* ]) => {{
        let n = [$( stringify!($field) ),*].len() + 1;
        $self.field_stamps = $crate::FieldStamps::all(n, $stamp.hlc, $stamp.device);
    }};

    (@local_payload per_record, $self:ident, $stored:ident, $stamp:ident, $tombstone:ident, $model:literal, [ $( $field:ident ),* ]) => {{
        let _ = $stored;
        <Self as $crate::LibraryModel>::set_meta($self, $stamp, $tombstone);
        <Self as $crate::__private::syncable::Syncable>::encode($self).map(Some)
    }};
    (@local_payload per_field, $self:ident, $stored:ident, $stamp:ident, $tombstone:ident, $model:literal, [ $( $field:ident ),* ]) => {{
        let err = |source| $crate::__private::syncable::Error::Payload {
            model: $model.to_owned(),
            record: $self.uuid.0,
            source,
        };
        let mut fields = Vec::new();
        let mut index: u16 = 0;
        if !$tombstone {
            $(
                if $stored.is_none_or(|s| s.$field != $self.$field) {
                    fields.push($crate::PatchField {
                        index,
                        value: $crate::__private::sync_log::codec::encode(&$self.$field).map_err(err)?,
                    });
                }
                index += 1;
            )*
        }
        let _ = index;
        let revives = $stored.is_some_and(|s| s.tombstone) && !$tombstone;
        if fields.is_empty() && !$tombstone && !revives && $stored.is_some() {
            return Ok(None);
        }
        $self.version = $stamp.version as i64;
        $self.hlc = $stamp.hlc.0 as i64;
        $self.device_id = $crate::Id($stamp.device.0);
        $self.tombstone = $tombstone;
        $crate::__private::sync_log::codec::encode(&$crate::FieldPatch {
            record: $self.uuid,
            fields,
            tombstone: Some($tombstone),
        })
        .map(Some)
        .map_err(err)
    }};

    // ---- the merge ----
    (@apply per_record, $name:ident, $table:ident, $conn:ident, $change:ident, [ $( $field:ident ),* ]) => {{
        use $crate::__private::diesel::prelude::*;
        let batch = <Self as $crate::__private::syncable::Syncable>::apply_batch($conn, &[$change])?;
        if let Some((_, e)) = batch.rejected.into_iter().next() {
            return Err(e);
        }
        if batch.written > 0 {
            return Ok($crate::__private::syncable::Applied::Won);
        }
        // Not written: the stored stamp is equal (a duplicate) or larger.
        let stored: (i64, i64, $crate::Id) = $table::table
            .find($crate::Id($change.record))
            .select(($table::version, $table::hlc, $table::device_id))
            .get_result($conn)?;
        let theirs = ($change.version as i64, $change.hlc.0 as i64, $crate::Id($change.origin.device.0));
        if stored == theirs {
            Ok($crate::__private::syncable::Applied::Duplicate)
        } else {
            Ok($crate::__private::syncable::Applied::Lost)
        }
    }};
    (@apply per_field, $name:ident, $table:ident, $conn:ident, $change:ident, [ $( $field:ident ),* ]) => {{
        use $crate::__private::diesel::prelude::*;
        let patch = $crate::__private::patch_from_change($change)?;
        let mut row = <Self as $crate::LibraryModel>::load($conn, patch.record)?
            .unwrap_or_else(|| Self::__empty(patch.record));
        let (won, changed, duplicate) = Self::__merge(&mut row, &patch, $change)?;
        if changed {
            $crate::__private::diesel::replace_into($table::table).values(&row).execute($conn)?;
        }
        Ok(if won {
            $crate::__private::syncable::Applied::Won
        } else if duplicate {
            $crate::__private::syncable::Applied::Duplicate
        } else {
            $crate::__private::syncable::Applied::Lost
        })
    }};
    (@apply_batch per_record, $name:ident, $table:ident, $conn:ident, $changes:ident, [ $( $field:ident => $sql:ty ),* ]) => {{
        let mut rows: Vec<$name> = Vec::with_capacity($changes.len());
        let mut rejected = Vec::new();
        let mut bulk = 0u64;
        for (i, change) in $changes.iter().enumerate() {
            if change.change == $crate::__private::sync_log::ChangeType::Bulk {
                bulk += 1;
                continue;
            }
            match $crate::__private::record_from_change::<$name>(change) {
                Ok(r) => rows.push(r),
                Err(e) => rejected.push((i, e)),
            }
        }
        // THE per-record merge of this table: a multi-row upsert that overwrites a row only
        // when the incoming stamp is larger ($crate::__private::stamp_is_larger). SQLite
        // processes the rows in order, so a record that appears twice in one call is merged
        // exactly as by two statements. Every value is a bound parameter.
        use $crate::__private::diesel::RunQueryDsl;
        let cols = $name::__columns();
        let mut written = 0u64;
        for chunk in rows.chunks($crate::__private::INSERT_CHUNK) {
            let sql = $crate::__private::merge_rows_sql(stringify!($table), cols, chunk.len());
            let mut q = $crate::__private::diesel::sql_query(sql).into_boxed::<$crate::__private::diesel::sqlite::Sqlite>();
            for r in chunk {
                q = q.bind::<$crate::__private::diesel::sql_types::Binary, _>(&r.uuid);
                $( q = q.bind::<<$table::$field as $crate::__private::diesel::Expression>::SqlType, _>(&r.$field); )*
                q = q.bind::<$crate::__private::diesel::sql_types::BigInt, _>(r.version);
                q = q.bind::<$crate::__private::diesel::sql_types::BigInt, _>(r.hlc);
                q = q.bind::<$crate::__private::diesel::sql_types::Binary, _>(&r.device_id);
                q = q.bind::<$crate::__private::diesel::sql_types::Bool, _>(r.tombstone);
            }
            written += q.execute($conn)? as u64;
        }
        let unchanged = (rows.len() as u64 + bulk).saturating_sub(written);
        Ok($crate::__private::syncable::BatchApplied::new(written, unchanged, rejected))
    }};
    (@apply_batch per_field, $name:ident, $table:ident, $conn:ident, $changes:ident, [ $( $field:ident => $sql:ty ),* ]) => {{
        use $crate::__private::diesel::prelude::*;
        $crate::__private::merge_fields::<$name>(
            $conn,
            $changes,
            $name::__empty,
            |row, patch, change| $name::__merge(row, patch, change).map(|(won, changed, _)| (won, changed)),
            // One statement per record: a lookup by key and a one-row `REPLACE` are prepared
            // once and cached, where `IN (…)` and multi-row statements are parsed again on
            // every call (their text depends on the count).
            |conn, ids| {
                let mut rows = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(row) = $table::table.find(id).select($name::as_select()).get_result(conn).optional()? {
                        rows.push(row);
                    }
                }
                Ok(rows)
            },
            |conn, rows| {
                let mut n = 0;
                for row in rows {
                    n += $crate::__private::diesel::replace_into($table::table).values(row).execute(conn)?;
                }
                Ok(n)
            },
        )
    }};

    // The per-field merge of one change into one record: (won a field, record changed,
    // a duplicate).
    (@merge_fn per_record, $name:ident, [ $( $field:ident ),* ]) => {};
    (@merge_fn per_field, $name:ident, [ $( $field:ident ),* ]) => {
        impl $name {
            /// THE per-field merge of this model (used by `apply`, `apply_batch` and so by
            /// local writes): each field and the tombstone is a last-writer-wins register on
            /// `(hlc, device)`; the record's version and stamp are the largest of any change.
            #[doc(hidden)]
            pub fn __merge(
                row: &mut Self,
                patch: &$crate::FieldPatch,
                change: &$crate::__private::sync_log::Change,
            ) -> Result<(bool, bool, bool), $crate::__private::syncable::Error> {
                const N: usize = [$( stringify!($field) ),*].len() + 1;
                let stamp = (change.hlc, change.origin.device);
                let record_stamp = (
                    $crate::__private::sync_log::Hlc(row.hlc as u64),
                    $crate::__private::sync_log::DeviceId(row.device_id.0),
                );
                let model = <$name as $crate::__private::syncable::Syncable>::MODEL;
                let bad = |source| $crate::__private::syncable::Error::Payload {
                    model: model.to_owned(),
                    record: change.record,
                    source,
                };
                let mut stamps = std::mem::take(&mut row.field_stamps);
                let mut m = $crate::__private::FieldMerge {
                    stamp, record_stamp, n: N, stamps: &mut stamps, changed: false, duplicate: true,
                };
                let mut index = 0usize;
                $(
                    let current = $crate::__private::sync_log::codec::encode(&row.$field).map_err(bad)?;
                    if let Some(v) = m.take(index, &current, patch.value(index)) {
                        row.$field = $crate::__private::sync_log::codec::decode(v).map_err(bad)?;
                    }
                    index += 1;
                )*
                let tomb_current = [u8::from(row.tombstone)];
                let tomb_new = patch.tombstone.map(|t| [u8::from(t)]);
                if let Some(v) = m.take(index, &tomb_current, tomb_new.as_ref().map(|b| b.as_slice())) {
                    row.tombstone = v == [1];
                }
                let (won, duplicate) = (m.changed, m.duplicate);
                let mut changed = won;
                row.field_stamps = stamps;
                if (change.version as i64) > row.version {
                    row.version = change.version as i64;
                    changed = true;
                }
                if stamp > record_stamp {
                    row.hlc = change.hlc.0 as i64;
                    row.device_id = $crate::Id(change.origin.device.0);
                    changed = true;
                }
                Ok((won, changed, duplicate && !won))
            }
        }
    };
}

/// Implementation details of [`crate::model!`]: not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::hash::hash_rows;
    pub use crate::model::{
        FieldMerge, INSERT_CHUNK, create_table_sql, merge_fields, merge_rows_sql,
        patch_from_change, patches_conflict, record_from_change,
    };
    pub use diesel;
    pub use sync_log;
    pub use syncable;
    pub use uuid;
}
