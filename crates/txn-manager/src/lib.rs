//! # txn-manager
//!
//! **One job:** the write path of a library. Commit local changes (model row + outbox row in
//! ONE library-database transaction, version and HLC stamped here), sequence the outbox into
//! the sync log when this device leads, and apply sequenced log entries by last-writer-wins
//! with the applied seq in the same transaction.
//!
//! **Must not know:** the network (iroh, sync-proto), leadership elections, or which device
//! leads — callers say "sequence at epoch E" or "here are entries from the leader". Writing
//! never needs the leader. Of `leadership` it knows only the persisted record, which
//! [`DeviceLeadershipStore`] keeps in this device's row.
//!
//! ## Blocking core, async handle
//!
//! [`Library`] is the blocking core (one diesel connection; every function is testable
//! directly). [`TransactionManager`] wraps it for async code (`spawn_blocking` behind a
//! mutex) and broadcasts [`Event`]s after each commit.
//!
//! ## Crash safety: two databases, one rule each
//!
//! - **Commit:** model writes + one outbox row holding the transaction's changes + origin
//!   counter + persisted HLC in one transaction. A crash leaves all or nothing.
//! - **Outbox rows are deleted only when their last change is applied from the global log**
//!   (the same transaction that applies it and moves the applied seq), on leader and follower
//!   alike. The changes of one row are forwarded together and sequenced in origin order, so
//!   every earlier change of the row is applied by then.
//! - **Leader** ([`Library::sequence`]): `sync.db` append (idempotent by origin key) first,
//!   then apply from the log. A crash in between leaves outbox rows that are already in the
//!   log; the next `sequence` re-appends them (no-op, nothing sequenced twice) and applies
//!   them (cleans up).
//! - **Follower** ([`Library::receive`]): `append_sequenced` to the log copy first, then apply
//!   with the applied seq. At start-up [`Library::catch_up`] re-applies from the applied seq to
//!   the log head; applying twice is a no-op.
//!
//! ## Rules
//!
//! - **Missing parent:** applied anyway (no foreign keys; see the `library-models` docs).
//! - **Unknown model / unreadable payload:** kept in `pending_entries` with its seq and
//!   checksum, the applied seq moves on, and [`Library::open`] re-applies it once the registry
//!   knows the model.
//! - **HLC drift:** a peer stamp more than `max_drift_ms` (default 10 minutes) ahead is clamped
//!   with a warning ([`HybridClock`]).
#![deny(missing_docs)]

mod error;
mod hlc;
mod leadership_store;
mod library;
mod manager;
mod op;

pub use error::Error;
pub use hlc::{Clock, DEFAULT_MAX_DRIFT_MS, HybridClock, ManualClock, Observed, SystemClock};
pub use leadership_store::DeviceLeadershipStore;
pub use library::{
    APPLY_BATCH, ApplyReport, BULK_TXN_ROWS, BulkDescription, Config, Event, Library,
};
pub use manager::TransactionManager;
pub use op::Op;
