//! Opening a library database: pragmas, embedded migrations, the newer-schema check.

use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::Error;
use crate::schema::library_meta;

/// The schema version this build writes and the highest it can open.
pub const SCHEMA_VERSION: u32 = 4;

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
        .map_err(|e| Error::Open { path: path.to_owned(), source: Box::new(e) })?;
    // The checks come first: `journal_mode = WAL` rewrites the file header, and a file that is
    // not ours must be left exactly as it was.
    conn.batch_execute(&format!("PRAGMA busy_timeout = {BUSY_TIMEOUT_MS};"))
        .map_err(|e| open_err(path, e))?;
    check_version(&mut conn, path)?;
    conn.batch_execute(PRAGMAS).map_err(|e| open_err(path, e))?;
    let components = registered_migrations()?;
    check_component_versions(&mut conn, path, &components)?;
    conn.run_pending_migrations(MIGRATIONS).map_err(|source| Error::Migration {
        path: path.to_owned(),
        step: "core".into(),
        source,
    })?;
    run_component_migrations(&mut conn, path, &components)?;
    Ok(conn)
}

/// The migrations of one crate that adds models to the library database, registered with
/// [`crate::register_migrations!`] (zero-touch, like models: no central list).
#[derive(Debug)]
pub struct Migrations {
    /// The component's name (unique; its schema version is recorded under it).
    pub component: &'static str,
    /// Where it was registered (for error messages).
    pub module: &'static str,
    /// The steps, by version (1, 2, …).
    pub steps: &'static [Migration],
}

/// One step of a component's schema.
#[derive(Debug)]
pub struct Migration {
    /// The schema version this step leads to.
    pub version: u32,
    /// The SQL of the step (one or more statements).
    pub up: fn() -> String,
}

syncable::inventory::collect!(Migrations);

/// Registers the schema migrations of a crate that adds models: `(version, fn() -> String)`
/// steps, run by [`open_library`] (and so by `txn_manager::Library::open`) in version order
/// after this crate's own migrations, components in name order; each step runs in one
/// transaction with the component's recorded version (`library_meta`,
/// `schema_version:<component>`). A database whose recorded version of a component is newer
/// than the build knows is refused ([`Error::NewerSchema`]), before anything runs.
///
/// ```
/// library_models::register_migrations!("doc-example", [
///     (1, || "CREATE TABLE IF NOT EXISTS doc_example (id INTEGER PRIMARY KEY)".to_owned()),
///     (2, || "ALTER TABLE doc_example ADD COLUMN note TEXT".to_owned()),
/// ]);
/// let mut conn = library_models::open_library(":memory:".as_ref())?;
/// # let _ = &mut conn;
/// # Ok::<(), library_models::Error>(())
/// ```
#[macro_export]
macro_rules! register_migrations {
    ($component:literal, [ $( ($version:literal, $up:expr) ),* $(,)? ]) => {
        $crate::__private::syncable::inventory::submit! {
            $crate::Migrations {
                component: $component,
                module: module_path!(),
                steps: &[ $( $crate::Migration { version: $version, up: $up } ),* ],
            }
        }
    };
}

/// Every registered component, sorted by name; two registrations of one name are an error.
fn registered_migrations() -> Result<Vec<&'static Migrations>, Error> {
    let mut all: Vec<&'static Migrations> =
        syncable::inventory::iter::<Migrations>.into_iter().collect();
    all.sort_by_key(|m| m.component);
    for pair in all.windows(2) {
        if pair[0].component == pair[1].component {
            return Err(Error::InvalidArgument(format!(
                "migrations of component {:?} registered twice: in {} and in {}",
                pair[0].component, pair[0].module, pair[1].module
            )));
        }
    }
    Ok(all)
}

fn component_key(component: &str) -> String {
    format!("schema_version:{component}")
}

fn component_version(conn: &mut SqliteConnection, component: &str) -> Result<u32, Error> {
    if !table_exists(conn, "library_meta")? {
        return Ok(0);
    }
    let v: Option<String> = library_meta::table
        .find(component_key(component))
        .select(library_meta::value)
        .get_result(conn)
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn check_component_versions(
    conn: &mut SqliteConnection,
    path: &Path,
    components: &[&Migrations],
) -> Result<(), Error> {
    for m in components {
        let supported = m.steps.iter().map(|s| s.version).max().unwrap_or(0);
        let file = component_version(conn, m.component)?;
        if file > supported {
            return Err(Error::NewerSchema { path: path.join(m.component), file, supported });
        }
    }
    Ok(())
}

fn run_component_migrations(
    conn: &mut SqliteConnection,
    path: &Path,
    components: &[&Migrations],
) -> Result<(), Error> {
    for m in components {
        let recorded = component_version(conn, m.component)?;
        let mut steps: Vec<&Migration> = m.steps.iter().filter(|s| s.version > recorded).collect();
        steps.sort_by_key(|s| s.version);
        for step in steps {
            conn.immediate_transaction(|conn| {
                conn.batch_execute(&(step.up)())?;
                diesel::replace_into(library_meta::table)
                    .values((
                        library_meta::key.eq(component_key(m.component)),
                        library_meta::value.eq(step.version.to_string()),
                    ))
                    .execute(conn)?;
                Ok::<_, diesel::result::Error>(())
            })
            .map_err(|e| Error::Migration {
                path: path.to_owned(),
                step: format!("{} version {}", m.component, step.version),
                source: Box::new(e),
            })?;
            tracing::info!(component = m.component, version = step.version, "migrated");
        }
    }
    Ok(())
}

/// The schema version recorded in the database (`None` for an empty database).
pub fn schema_version(conn: &mut SqliteConnection) -> Result<Option<u32>, Error> {
    if !table_exists(conn, "library_meta")? {
        return Ok(None);
    }
    let v: Option<String> = library_meta::table
        .find("schema_version")
        .select(library_meta::value)
        .get_result(conn)
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
    Error::Open { path: PathBuf::from(path), source: Box::new(e) }
}
