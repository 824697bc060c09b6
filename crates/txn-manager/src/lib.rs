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
//!   alike — and only when the log holds the *same* change under that key. The changes of one
//!   row are forwarded together and sequenced in origin order, so every earlier change of the
//!   row is applied by then.
//! - **Origin keys are never reused.** [`Library::open`] takes the device's sync log: the
//!   database is bound to its library ([`Error::ForeignLog`] for any other), the origin counter
//!   moves past every own key the log holds or pruned, and an outbox row whose key the log holds
//!   with another change — a database restored from a backup, re-created, or one that lost its
//!   last commits while the leader held them — is re-keyed (fresh origin seqs, same changes),
//!   never dropped; the same happens when such an entry arrives later from the leader.
//! - **Power loss:** the sync log commits with `synchronous = FULL` (an append that returned
//!   is durable), the library database with `NORMAL`; so the log is on disk before the library
//!   relies on it. A library that went back in time catches up from the log; one that is ahead
//!   of a restored log lowers its applied seq at open.
//! - **Leader** ([`Library::sequence`]): `sync.db` append (idempotent by origin key) first,
//!   then apply from the log. A crash in between leaves outbox rows that are already in the
//!   log; the next `sequence` re-appends them (no-op, nothing sequenced twice) and applies
//!   them (cleans up).
//! - **Follower** ([`Library::receive`]): `append_sequenced` to the log copy first, then apply
//!   with the applied seq. At start-up [`Library::catch_up`] re-applies from the applied seq to
//!   the log head; applying twice is a no-op.
//! - **Rewind after a divergence** ([`Library::rewind`], design rule 5): a device whose log
//!   diverged from the winner's discards the suffix after the common seq and re-submits every
//!   change in it, whatever its origin. Three steps: (1) ONE library transaction stores every
//!   change of the suffix in the local `resubmit` table (insert-or-ignore by origin key),
//!   lowers the applied seq to `min(applied, common)`, drops kept entries above `common`, and
//!   records the pending target in `local_state.rewind_to`; (2) the log is truncated after
//!   `common`; (3) the target is cleared. The suffix is durable in the library database before
//!   the log loses it, and the applied seq is never above the log's shared prefix once the
//!   log is shortened. A crash after (1) leaves the target set: [`Library::apply_entries`]
//!   refuses ([`Error::RewindPending`]) and [`Library::catch_up`], [`Library::receive`] and
//!   [`Library::sequence`] first redo (1) (idempotent) then (2) and (3)
//!   ([`Library::finish_rewind`]), so the untruncated suffix is never applied again and the
//!   rewind is never forgotten. [`Library::open`] only loads the target (and clears it
//!   when the log is already shorter); start-up calls `catch_up`, which finishes it.
//! - **Re-submission:** [`Library::resubmit`] lists the stored changes in log order for the
//!   caller to forward to the leader (idempotent by origin key); a row is deleted in the
//!   transaction that applies its origin key from the global log (skipped while the table is
//!   empty, which an in-memory count kept with the table tells). A leader's
//!   [`Library::sequence`] appends them itself, before its outbox.
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

mod conflicts;
mod counters;
mod error;
mod hlc;
mod leadership_store;
mod library;
mod manager;
mod op;
mod outbox;

pub use conflicts::{Conflict, DEFAULT_CONFLICT_LOG_CAPACITY};
pub use error::Error;
pub use hlc::{Clock, DEFAULT_MAX_DRIFT_MS, HybridClock, ManualClock, Observed, SystemClock};
pub use leadership_store::DeviceLeadershipStore;
pub use library::commit::MAX_CHANGE_BYTES;
pub use library::{
    APPLY_BATCH, ApplyReport, BULK_TXN_ROWS, BulkDescription, Config, DEVICE_MODEL, Event, Kept,
    Library, RewindReport, RosterEntry,
};
pub use manager::TransactionManager;
pub use op::Op;
