//! The per-transaction update of the library's counters (`local_state`), as statements diesel
//! prepares once and caches.
//!
//! Diesel marks every `UPDATE` it builds as not cacheable, so `diesel::update(…)` is parsed
//! and planned by SQLite again on every call. Every commit and every apply ends with one; on
//! the hot path that cost more than the row it writes. These fragments have a static query
//! id (the statement text never changes), so diesel keeps them prepared.

use diesel::QueryResult;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::BigInt;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel::{RunQueryDsl, query_dsl::methods::ExecuteDsl};

/// `UPDATE local_state SET origin_seq = ?, hlc = ? WHERE id = 1` (after a local commit).
#[derive(Debug, QueryId)]
pub(crate) struct SetOriginAndClock {
    pub(crate) origin_seq: i64,
    pub(crate) hlc: i64,
}

impl QueryFragment<Sqlite> for SetOriginAndClock {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("UPDATE local_state SET origin_seq = ");
        out.push_bind_param::<BigInt, _>(&self.origin_seq)?;
        out.push_sql(", hlc = ");
        out.push_bind_param::<BigInt, _>(&self.hlc)?;
        out.push_sql(" WHERE id = 1");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for SetOriginAndClock {}

/// `UPDATE local_state SET applied_seq = ?, hlc = ?, origin_seq = ? WHERE id = 1` (after an
/// apply).
#[derive(Debug, QueryId)]
pub(crate) struct SetApplied {
    pub(crate) applied_seq: i64,
    pub(crate) hlc: i64,
    pub(crate) origin_seq: i64,
}

impl QueryFragment<Sqlite> for SetApplied {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("UPDATE local_state SET applied_seq = ");
        out.push_bind_param::<BigInt, _>(&self.applied_seq)?;
        out.push_sql(", hlc = ");
        out.push_bind_param::<BigInt, _>(&self.hlc)?;
        out.push_sql(", origin_seq = ");
        out.push_bind_param::<BigInt, _>(&self.origin_seq)?;
        out.push_sql(" WHERE id = 1");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for SetApplied {}

/// Runs one of the updates above; an update that finds no `local_state` row is an error
/// (the library was created with one).
pub(crate) fn run<Q>(conn: &mut SqliteConnection, update: Q) -> QueryResult<()>
where
    Q: ExecuteDsl<SqliteConnection, Sqlite>,
{
    match ExecuteDsl::execute(update, conn)? {
        1 => Ok(()),
        _ => Err(diesel::result::Error::NotFound),
    }
}
