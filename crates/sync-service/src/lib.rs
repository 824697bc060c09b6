//! # sync-service
//!
//! **One job:** keep the devices of one library in sync in real time — the leader sequences
//! every change and pushes it to every follower at once; followers apply in order, fetch what
//! they miss, acknowledge, and forward their own writes to the leader; leadership moves when
//! the leader goes away; a divergence after a split brain is found and repaired without
//! losing any change.
//!
//! **Must not know:** how models are stored (it goes through `txn-manager` and `syncable`),
//! how jobs are scheduled (`sync-jobs`), the CLI (`sync-host`), or which transport carries a
//! session (iroh or the in-memory network: it codes against `sync_proto::Session`).
//!
//! ## Shape
//!
//! * [`SyncService`]: the public async API — [`commit`](SyncService::commit),
//!   [`status`](SyncService::status) / [`watch_status`](SyncService::watch_status),
//!   [`events`](SyncService::events), [`conflicts`](SyncService::conflicts),
//!   [`set_members`](SyncService::set_members), [`shutdown`](SyncService::shutdown).
//! * One **engine** task per library owns the state and reacts to peer messages, leadership
//!   changes, local commits and a housekeeping tick. Its decisions that need no I/O live in
//!   [`plan`] (who dials, backoff, gap or apply, the common-seq search) and are unit-tested.
//! * One **session** per pair of members: the lower device id dials; a newer session with the
//!   same peer replaces the older one. Each session has a reader (into the engine's bounded
//!   inbox) and a writer (from a bounded per-peer queue, [`Config::peer_queue`]).
//! * [`Acceptor`]: the host's `SessionHandler`, routing incoming sessions by library.
//! * **Membership** comes from the library's synced device rows ([`plan::membership`]): a
//!   paired row lets a device in, a tombstoned one shuts it out everywhere as it syncs; the
//!   members the host names count only while no row pairs them.
//!
//! ## Flows
//!
//! * **Leader:** a local commit or a `Submit` is sequenced as it arrives (no batching delay:
//!   what arrived while the previous batch was being sequenced and pushed is coalesced into
//!   the next) and pushed to every connected peer; a range above [`Config::push_max`], or a
//!   peer whose queue is full, gets a `PushNotice` and fetches. `Fetch` is served in pages;
//!   below the pruned floor the answer is `SnapshotRequired`. `Submit` is answered with
//!   `SubmitAck` (idempotent by origin key).
//! * **Follower:** pushes are fenced by term, applied in order, acknowledged; a gap, a
//!   heartbeat announcing a newer seq, or a notice makes it fetch after its head, page by
//!   page. Its outbox and re-submissions go to the leader on every connect and leader change;
//!   each local commit is forwarded as it happens (only rows not sent yet, a few submits in
//!   flight), and everything again while unanswered. Rows leave the outbox only when
//!   applied from the log (the write path's rule).
//! * **Divergence:** found at the handshake (same seq, other checksum), by the log's
//!   `Diverged`, by a leader's `Divergence` (it checks every ack), or when the leader's log
//!   ends before ours. The last common seq is found by binary search over the protocol (one
//!   `Fetch` of one entry per probe), then the write path rewinds (the suffix goes to its
//!   re-submit table), the follower fetches, and re-submits.
//! * **Leadership** travels over the same sessions (`wire`), and pauses a leader that hears
//!   nobody, so a device cut off alone never starts a second history.
#![deny(missing_docs)]

mod config;
mod engine;
mod error;
mod peer;
pub mod plan;
mod service;
mod status;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
pub use leadership::driver::FirstStart;
pub use peer::{Acceptor, Member};
pub use service::{ServiceParams, SyncService};
pub use status::{ChangedRecord, Event, MAX_EVENT_RECORDS, PeerStatus, Role, Status, SyncState};
