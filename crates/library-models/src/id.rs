//! [`Id`]: a UUID stored as a 16-byte BLOB.

use std::fmt;

use diesel::deserialize::FromSqlRow;
use diesel::deserialize::{self, FromSql};
use diesel::expression::AsExpression;
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Binary;
use diesel::sqlite::{Sqlite, SqliteValue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A record id (or a reference to one), stored as a 16-byte BLOB whose byte order is the
/// UUID's, so `ORDER BY uuid` is UUID order (and time order for UUIDv7).
#[derive(
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    AsExpression,
    FromSqlRow,
)]
#[diesel(sql_type = Binary)]
#[serde(transparent)]
pub struct Id(pub Uuid);

impl Id {
    /// A new time-ordered (UUIDv7) id: the kind every new record gets.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl From<Uuid> for Id {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl From<Id> for Uuid {
    fn from(id: Id) -> Self {
        id.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.0)
    }
}

impl ToSql<Binary, Sqlite> for Id {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        out.set_value(self.0.as_bytes().as_slice());
        Ok(IsNull::No)
    }
}

impl FromSql<Binary, Sqlite> for Id {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let bytes = <Vec<u8> as FromSql<Binary, Sqlite>>::from_sql(value)?;
        Ok(Self(Uuid::from_slice(&bytes)?))
    }
}

/// A value stored in one BLOB column in its [`sync_log::codec`] encoding: the way a model
/// field holds a list, a map or a small struct (e.g. `entries: Encoded<Vec<Id>> => Binary`).
/// Serialized transparently (as the inner value) in payloads.
///
/// ```
/// use library_models::{Encoded, Id};
/// let ids = Encoded(vec![Id::new_v7(), Id::new_v7()]);
/// assert_eq!(ids.0.len(), 2);
/// ```
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, AsExpression, FromSqlRow,
)]
#[diesel(sql_type = Binary)]
#[serde(transparent)]
pub struct Encoded<T>(pub T);

impl<T: Serialize + fmt::Debug> ToSql<Binary, Sqlite> for Encoded<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> serialize::Result {
        let bytes = sync_log::codec::encode(&self.0)?;
        out.set_value(bytes);
        Ok(IsNull::No)
    }
}

impl<T: serde::de::DeserializeOwned> FromSql<Binary, Sqlite> for Encoded<T> {
    fn from_sql(value: SqliteValue<'_, '_, '_>) -> deserialize::Result<Self> {
        let bytes = <Vec<u8> as FromSql<Binary, Sqlite>>::from_sql(value)?;
        Ok(Self(sync_log::codec::decode(&bytes)?))
    }
}
