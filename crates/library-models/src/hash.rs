//! The content hash of a library: driven by the [`syncable::Registry`], so every registered
//! model is covered without a list to maintain here.

use diesel::SqliteConnection;

pub use syncable::ContentHash;

use crate::{Error, LibraryModel};

/// Rows read per query while hashing a table.
const PAGE: i64 = 10_000;

/// [`syncable::Syncable::hash_rows`] of every model the kit defines: pages through the table in
/// uuid order (tombstones included) and feeds each row's encoding ([`sync_log::codec`] of the
/// struct: every synced column, sync columns and per-field stamps included, and no local column
/// — the struct has none).
pub fn hash_rows<T: LibraryModel + serde::Serialize>(
    conn: &mut SqliteConnection,
    row: &mut dyn FnMut(&[u8]),
) -> Result<(), syncable::Error> {
    let mut after = None;
    loop {
        let page = T::page(conn, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = Some(last.uuid());
        for record in &page {
            let bytes =
                sync_log::codec::encode(record).map_err(|source| syncable::Error::Payload {
                    model: T::MODEL.to_owned(),
                    record: record.uuid().0,
                    source,
                })?;
            row(&bytes);
        }
        if page.len() < PAGE as usize {
            break;
        }
    }
    Ok(())
}

/// The content hash of the library on `conn` over every model registered in this artifact
/// ([`syncable::Registry::from_inventory`], so a model registered in any linked crate is
/// covered). A caller that holds a registry calls [`syncable::Registry::content_hash`]
/// directly; this is that, with the registry built here. Local state (outbox, applied seq,
/// clock, kept entries, the leadership column) is never included.
///
/// ```
/// let mut a = library_models::open_library(std::path::Path::new(":memory:"))?;
/// let mut b = library_models::open_library(std::path::Path::new(":memory:"))?;
/// assert_eq!(library_models::content_hash(&mut a)?, library_models::content_hash(&mut b)?);
/// # Ok::<(), library_models::Error>(())
/// ```
pub fn content_hash(conn: &mut SqliteConnection) -> Result<ContentHash, Error> {
    Ok(syncable::Registry::from_inventory()?.content_hash(conn)?)
}

/// The names of the reference models this crate registers, sorted: pass them to
/// [`syncable::Registry::require`] at start-up to catch the linker trap. Not what the content
/// hash covers — that is whatever the registry holds.
pub const REFERENCE_MODELS: [&str; 7] =
    ["collection", "device", "entry", "location", "tag", "user_metadata", "user_metadata_tag"];
