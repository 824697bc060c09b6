//! # sync-jobs
//!
//! **One job:** the long-running, resumable work of sync — initial sync of a joining device,
//! backfill of a returning one, streamed bulk transfers (a million indexed files as one log
//! entry plus a stream of rows) and compaction of the log — each checkpointed per batch.
//!
//! **Must not know:** the CLI or process layout (`sync-host`).
//!
//! This crate is a placeholder: the jobs issue fills it. It deliberately exports nothing yet.
#![deny(missing_docs)]
