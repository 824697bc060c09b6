//! The local conflict log: a change applied from the global log that overwrote a local change
//! no other device had seen yet (still in the outbox), or that lost to one — the visibility
//! users of last-writer-wins ask for. Local, never synced, bounded.

use std::collections::HashMap;

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use library_models::OutboxRow;
use library_models::schema::{conflict_log, library_meta, outbox};
use sync_log::{Change, DeviceId, LogEntry, Seq};
use syncable::Registry;
use uuid::Uuid;

use crate::Error;

/// Default bound of the conflict log: the newest entries are kept, older ones dropped and
/// counted ([`crate::Library::conflicts_dropped`]).
pub const DEFAULT_CONFLICT_LOG_CAPACITY: usize = 1_000;

/// Outbox changes read per apply to watch for conflicts (an outbox larger than this — a big
/// local batch not yet forwarded — is watched for its first changes only).
const WATCHED_OUTBOX_CHANGES: usize = 10_000;

/// One recorded conflict: both changes whole (their stamps are `(hlc, origin.device,
/// version)`, their payloads the model's encoding) and which one the merge kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// Row id in the local log (increasing).
    pub id: i64,
    /// When it was recorded (physical ms since the Unix epoch, this device's clock).
    pub at_ms: u64,
    /// The global seq of the remote change.
    pub seq: Seq,
    /// Model name.
    pub model: String,
    /// The record.
    pub record: Uuid,
    /// This device's change, not yet seen by any other device.
    pub local: Change,
    /// The change that arrived from the log.
    pub remote: Change,
    /// Whether the remote change won (its stamp is larger): the local value was overwritten.
    /// Otherwise the remote change lost to the local one.
    pub remote_won: bool,
}

#[derive(Queryable)]
struct Row {
    id: i64,
    at_ms: i64,
    seq: i64,
    model: String,
    record: Vec<u8>,
    local_change: Vec<u8>,
    remote_change: Vec<u8>,
    remote_won: bool,
}

/// The unsent local changes of this transaction, by record, to compare incoming changes with.
#[derive(Default)]
pub(crate) struct Watch {
    local: HashMap<(String, Uuid), Change>,
    found: Vec<(Seq, Change, Change)>,
}

impl Watch {
    /// Reads the outbox (inside the apply's transaction). Empty outbox: nothing to watch.
    pub(crate) fn load(conn: &mut SqliteConnection) -> Result<Self, Error> {
        let mut local: HashMap<(String, Uuid), Change> = HashMap::new();
        let mut read = 0usize;
        // Streamed in order, no bound `LIMIT` ("SQLite habits" in docs/ARCHITECTURE.md).
        let rows = outbox::table
            .order(outbox::last_origin_seq.asc())
            .select(OutboxRow::as_select())
            .load_iter::<OutboxRow, DefaultLoadingMode>(conn)?;
        for row in rows {
            if read >= WATCHED_OUTBOX_CHANGES {
                break;
            }
            for change in row?.decode()? {
                read += 1;
                if change.change == sync_log::ChangeType::Bulk {
                    continue;
                }
                // The latest local change of a record is the one a remote change meets.
                local.insert((change.model.clone(), change.record), change);
            }
        }
        Ok(Self { local, found: Vec::new() })
    }

    /// Looks at one applied entry, in log order.
    pub(crate) fn see(&mut self, registry: &Registry, device: DeviceId, e: &LogEntry) {
        if self.local.is_empty() {
            return;
        }
        let key = (e.change.model.clone(), e.change.record);
        if e.change.origin.device == device {
            // Our own change reached the log: every device will see it, so what follows it in
            // the log is causally after it, not concurrent.
            if self.local.get(&key).is_some_and(|c| c.origin == e.change.origin) {
                self.local.remove(&key);
            }
            return;
        }
        if let Some(local) = self.local.get(&key)
            && registry.conflicts(local, &e.change)
        {
            self.found.push((e.seq, local.clone(), e.change.clone()));
        }
    }

    /// Records what was found (inside the apply's transaction) and trims the log to
    /// `capacity`; returns how many were recorded.
    pub(crate) fn record(
        self,
        conn: &mut SqliteConnection,
        at_ms: u64,
        capacity: usize,
    ) -> Result<u64, Error> {
        if self.found.is_empty() {
            return Ok(0);
        }
        let n = self.found.len() as u64;
        for (seq, local, remote) in self.found {
            let remote_won = (remote.hlc, remote.origin.device, remote.version)
                > (local.hlc, local.origin.device, local.version);
            tracing::info!(
                model = %remote.model,
                record = %remote.record,
                remote_won,
                "conflict: a concurrent edit met an unsent local one"
            );
            diesel::insert_into(conflict_log::table)
                .values((
                    conflict_log::at_ms.eq(i64::try_from(at_ms).unwrap_or(i64::MAX)),
                    conflict_log::seq.eq(seq.0 as i64),
                    conflict_log::model.eq(&remote.model),
                    conflict_log::record.eq(remote.record.as_bytes().as_slice()),
                    conflict_log::local_change.eq(sync_log::codec::encode(&local)?),
                    conflict_log::remote_change.eq(sync_log::codec::encode(&remote)?),
                    conflict_log::remote_won.eq(remote_won),
                ))
                .execute(conn)?;
        }
        let keep = i64::try_from(capacity).unwrap_or(i64::MAX);
        let newest: Option<i64> =
            conflict_log::table.select(diesel::dsl::max(conflict_log::id)).get_result(conn)?;
        if let Some(newest) = newest {
            let dropped =
                diesel::delete(conflict_log::table.filter(conflict_log::id.le(newest - keep)))
                    .execute(conn)? as u64;
            if dropped > 0 {
                let before = dropped_count(conn)?;
                diesel::replace_into(library_meta::table)
                    .values((
                        library_meta::key.eq(DROPPED_KEY),
                        library_meta::value.eq((before + dropped).to_string()),
                    ))
                    .execute(conn)?;
            }
        }
        Ok(n)
    }
}

const DROPPED_KEY: &str = "conflicts_dropped";

pub(crate) fn dropped_count(conn: &mut SqliteConnection) -> Result<u64, Error> {
    let v: Option<String> = library_meta::table
        .find(DROPPED_KEY)
        .select(library_meta::value)
        .get_result(conn)
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// The newest `limit` conflicts, newest first.
pub(crate) fn list(conn: &mut SqliteConnection, limit: usize) -> Result<Vec<Conflict>, Error> {
    let rows: Vec<Row> = conflict_log::table
        .order(conflict_log::id.desc())
        // cold: a list a person asks for
        .limit(i64::try_from(limit).unwrap_or(i64::MAX))
        .select((
            conflict_log::id,
            conflict_log::at_ms,
            conflict_log::seq,
            conflict_log::model,
            conflict_log::record,
            conflict_log::local_change,
            conflict_log::remote_change,
            conflict_log::remote_won,
        ))
        .load(conn)?;
    rows.into_iter()
        .map(|r| {
            Ok(Conflict {
                id: r.id,
                at_ms: r.at_ms as u64,
                seq: Seq(r.seq as u64),
                model: r.model,
                record: Uuid::from_slice(&r.record)
                    .map_err(|_| Error::Invalid(format!("conflict {}: bad record id", r.id)))?,
                local: sync_log::codec::decode(&r.local_change)?,
                remote: sync_log::codec::decode(&r.remote_change)?,
                remote_won: r.remote_won,
            })
        })
        .collect()
}

/// Removes every recorded conflict; returns how many.
pub(crate) fn clear(conn: &mut SqliteConnection) -> Result<u64, Error> {
    Ok(diesel::delete(conflict_log::table).execute(conn)? as u64)
}
