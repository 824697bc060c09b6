//! Opening a library database: pragmas, embedded migrations, the newer-schema check.

use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::Error;
use crate::schema::library_meta;

/// The schema version this build writes and the highest it can open.
pub const SCHEMA_VERSION: u32 = 2;

/// How long a connection waits for a lock held by another connection.
pub const BUSY_TIMEOUT_MS: u32 = 5_000;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// The pragmas every library connection gets (WAL sticks to the file; the others are per
/// connection). Exposed so that benchmarks use exactly the same settings.
pub const PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;";

/// Opens (creating if needed) the library database at `path` and migrates it to
/// [`SCHEMA_VERSION`]. `":memory:"` gives a private in-memory database.
///
/// A database written by a newer build is refused with [`Error::NewerSchema`], before any
/// migration runs. A file that is not a library database is [`Error::NotALibrary`].
///
/// ```
/// let mut conn = library_models::open_library(std::path::Path::new(":memory:"))?;
/// # let _ = &mut conn;
/// # Ok::<(), library_models::Error>(())
/// ```
pub fn open_library(path: &Path) -> Result<SqliteConnection, Error> {
    let url = path
        .to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("{}: path is not UTF-8", path.display())))?;
    let mut conn = SqliteConnection::establish(url)
        .map_err(|e| Error::Open { path: path.to_owned(), detail: e.to_string() })?;
    // The checks come first: `journal_mode = WAL` rewrites the file header, and a file that is
    // not ours must be left exactly as it was.
    conn.batch_execute(&format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};"))
        .map_err(|e| open_err(path, e))?;
    check_version(&mut conn, path)?;
    conn.batch_execute(PRAGMAS).map_err(|e| open_err(path, e))?;
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| Error::Migration { path: path.to_owned(), detail: e.to_string() })?;
    Ok(conn)
}

/// The schema version recorded in the database (`None` for an empty database).
pub fn schema_version(conn: &mut SqliteConnection) -> Result<Option<u32>, Error> {
    if !table_exists(conn, "library_meta")? {
        return Ok(None);
    }
    let v: Option<String> = library_meta::table
        .find("schema_version")
        .select(library_meta::value)
        .first(conn)
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}

fn check_version(conn: &mut SqliteConnection, path: &Path) -> Result<(), Error> {
    match schema_version(conn)? {
        Some(file) if file > SCHEMA_VERSION => {
            Err(Error::NewerSchema { path: path.to_owned(), file, supported: SCHEMA_VERSION })
        }
        Some(_) => Ok(()),
        // No `library_meta`: an empty file, or one whose creation stopped before the first
        // migration committed (diesel's bookkeeping table alone). Any other table means another
        // kind of database — a sync log at a swapped path, say — which must not be migrated.
        None if foreign_table_count(conn)? > 0 => Err(Error::NotALibrary { path: path.to_owned() }),
        None => Ok(()),
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn table_exists(conn: &mut SqliteConnection, name: &str) -> Result<bool, Error> {
    let c: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = ?",
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .get_result(conn)?;
    Ok(c.n > 0)
}

/// Tables other than SQLite's own and diesel's migration bookkeeping.
fn foreign_table_count(conn: &mut SqliteConnection) -> Result<i64, Error> {
    let c: Count = diesel::sql_query(
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' \
         AND name NOT LIKE 'sqlite_%' AND name <> '__diesel_schema_migrations'",
    )
    .get_result(conn)?;
    Ok(c.n)
}

fn open_err(path: &Path, e: diesel::result::Error) -> Error {
    Error::Open { path: PathBuf::from(path), detail: e.to_string() }
}
