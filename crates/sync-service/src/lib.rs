//! # sync-service
//!
//! **One job:** keep the devices of one library in sync in real time — push new log entries
//! from the leader to followers, forward follower outboxes to the leader, pull missing ranges,
//! and fail over when the leader goes away.
//!
//! **Must not know:** how models are stored (it goes through `txn-manager` and `syncable`),
//! how jobs are scheduled (`sync-jobs`), or the CLI (`sync-host`). Nothing depends on the host.
//!
//! This crate is a placeholder: the sync-service issue fills it. It deliberately exports nothing
//! yet, so that no caller can depend on behaviour that does not exist.
#![deny(missing_docs)]
