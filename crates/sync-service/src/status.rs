//! What the service tells an application: its status (watchable) and its events.

use std::sync::Arc;
use std::time::Duration;

use sync_log::{DeviceId, Epoch, Position, Seq};
use uuid::Uuid;

/// The role of this device in its library right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// It sequences every change.
    Leader,
    /// It leads but heard no other member for a while: it sequences nothing until it does
    /// (its writes wait in its outbox).
    PausedLeader,
    /// It follows a leader.
    Follower,
    /// It knows no leader (an election, or nobody reachable).
    NoLeader,
}

/// Whether the device is keeping up — "idle and in sync" versus "stuck".
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncState {
    /// Everything known is applied and nothing waits to be sent.
    InSync,
    /// Behind or with changes to send, and making progress.
    Syncing,
    /// Connected to the leader (or, on the leader, to a follower) but not advancing for
    /// [`Config::stuck_after`](crate::Config::stuck_after).
    Stuck {
        /// Why, in words.
        reason: String,
    },
    /// No leader is reachable: local writes are kept and sent later.
    Offline,
    /// This device was removed from the library (its device row is tombstoned): it syncs
    /// with nobody any more. Its local writes stay in its database and reach no one.
    Removed,
    /// This device is below the leader's pruned floor: it needs a snapshot.
    SnapshotRequired {
        /// The leader's log starts after this seq.
        compacted_through: Seq,
    },
}

/// One peer as this device sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer.
    pub device: DeviceId,
    /// Whether a session with it is open.
    pub connected: bool,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
    /// Its log position as last reported (hello or ack).
    pub position: Position,
    /// Whether it is connected, behind this device's log, and not advancing.
    pub stuck: bool,
}

/// The status of one library's sync on this device. Watch it with
/// [`SyncService::watch_status`](crate::SyncService::watch_status).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// This device.
    pub device: DeviceId,
    /// Its role.
    pub role: Role,
    /// The highest epoch it has seen.
    pub epoch: Epoch,
    /// The device it follows or that it is (when it leads).
    pub leader: Option<DeviceId>,
    /// The last seq applied to the library database.
    pub applied_seq: Seq,
    /// The head of its sync log.
    pub log_head: Position,
    /// The newest seq the leader announced, as far as this device knows.
    pub leader_seq: Seq,
    /// Entries the leader has that are not applied here.
    pub lag_entries: u64,
    /// How long the oldest of those has been known and not applied (zero when in sync).
    pub lag: Duration,
    /// The peers.
    pub peers: Vec<PeerStatus>,
    /// Local changes not yet in the global log.
    pub outbox_len: u64,
    /// Changes of a discarded log suffix waiting to be re-submitted.
    pub resubmit_len: u64,
    /// Entries kept unapplied (a model this build does not know).
    pub kept: u64,
    /// Divergences repaired (log suffixes discarded and re-submitted) since start.
    pub rewinds: u64,
    /// In sync, syncing, stuck, offline, removed, or snapshot required.
    pub state: SyncState,
    /// The last error, if any (for display).
    pub last_error: Option<String>,
}

impl Status {
    pub(crate) fn new(device: DeviceId) -> Self {
        Self {
            device,
            role: Role::NoLeader,
            epoch: Epoch::ZERO,
            leader: None,
            applied_seq: Seq::ZERO,
            log_head: Position::default(),
            leader_seq: Seq::ZERO,
            lag_entries: 0,
            lag: Duration::ZERO,
            peers: Vec::new(),
            outbox_len: 0,
            resubmit_len: 0,
            kept: 0,
            rewinds: 0,
            state: SyncState::Offline,
            last_error: None,
        }
    }
}

/// A record that changed, named so an application can refresh its views.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangedRecord {
    /// The model name.
    pub model: String,
    /// The record id.
    pub record: Uuid,
}

/// Something the service did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Event {
    /// Log entries `from..=through` were applied to the library database.
    Applied {
        /// First seq of the batch.
        from: Seq,
        /// Last seq of the batch.
        through: Seq,
        /// The records they changed (at most [`MAX_EVENT_RECORDS`] per event; `truncated`
        /// says when more changed — then refresh everything).
        records: Arc<[ChangedRecord]>,
        /// Whether `records` is incomplete.
        truncated: bool,
    },
    /// The role of this device changed.
    Role(Role),
    /// The log diverged from the leader's and was rewound to `common`; the discarded
    /// changes are being re-submitted.
    Rewound {
        /// The last seq shared with the leader.
        common: Seq,
    },
}

/// Records named in one [`Event::Applied`] at most.
pub const MAX_EVENT_RECORDS: usize = 10_000;
