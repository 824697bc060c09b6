//! [`DeviceLeadershipStore`]: the leadership state of this device, kept in the local
//! `sync_leadership` column of its own device row.

use std::path::Path;
use std::sync::Mutex;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use leadership::{LeadershipStore, PersistedLeadership};
use library_models::{Id, leadership_state, set_leadership_state};
use sync_log::DeviceId;

use crate::Error;

/// A [`LeadershipStore`] over the library database: the record is JSON in the
/// `sync_leadership` column of this device's row (local: never in a payload, never hashed).
///
/// It owns a connection of its own with `synchronous = FULL`, so a save that returned `Ok`
/// survives power loss, not only a process crash: the leadership machine leads an epoch only
/// after its save, and must never reuse one. A save never lowers `max_epoch`.
///
/// The device row must exist (commit the [`library_models::Device`] first); `save` fails
/// before that.
pub struct DeviceLeadershipStore {
    conn: Mutex<SqliteConnection>,
    device: Id,
}

impl std::fmt::Debug for DeviceLeadershipStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLeadershipStore")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DeviceLeadershipStore {
    /// Opens the library database at `path` (already created by [`crate::Library::open`]) for
    /// `device`'s leadership record.
    pub fn open(path: &Path, device: DeviceId) -> Result<Self, Error> {
        let mut conn = library_models::open_library(path)?;
        conn.batch_execute("PRAGMA synchronous = FULL;")?;
        Ok(Self { conn: Mutex::new(conn), device: Id(device.0) })
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut SqliteConnection) -> Result<T, Error>,
    ) -> leadership::Result<T> {
        let mut conn = self.conn.lock().map_err(|_| {
            leadership::Error::store(std::io::Error::other("leadership store poisoned"))
        })?;
        f(&mut conn).map_err(leadership::Error::store)
    }
}

fn decode(bytes: &[u8]) -> Result<PersistedLeadership, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::Invalid(format!("sync_leadership is not a leadership record: {e}")))
}

impl LeadershipStore for DeviceLeadershipStore {
    fn load(&self) -> leadership::Result<Option<PersistedLeadership>> {
        self.with_conn(|conn| {
            leadership_state(conn, self.device)?.map(|bytes| decode(&bytes)).transpose()
        })
    }

    fn save(&self, record: &PersistedLeadership) -> leadership::Result<()> {
        self.with_conn(|conn| {
            conn.immediate_transaction(|conn| {
                if let Some(stored) = leadership_state(conn, self.device)? {
                    let stored = decode(&stored)?;
                    if record.max_epoch < stored.max_epoch {
                        return Err(Error::Invalid(format!(
                            "refusing to lower the saved epoch from {} to {}",
                            stored.max_epoch.0, record.max_epoch.0
                        )));
                    }
                }
                let json = serde_json::to_vec(record)
                    .map_err(|e| Error::Invalid(format!("leadership record: {e}")))?;
                set_leadership_state(conn, self.device, Some(&json))?;
                Ok(())
            })
        })
    }
}
