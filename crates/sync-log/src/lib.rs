//! # sync-log
//!
//! **One job:** store the sync log of one library — the sequenced, hash-chained record of every
//! change — in its own SQLite file (`sync.db`), and answer "what comes after seq N".
//!
//! **Must not know:** the network (iroh), leadership, the models or how they are stored. It
//! depends on none of the workspace's crates; everything else depends on it for the shared value
//! types ([`Seq`], [`Epoch`], [`DeviceId`], [`Change`], [`LogEntry`], …) and the one binary
//! [`codec`].
//!
//! ## Features
//!
//! - `store` (default): the SQLite store, `SyncLogStore` and its async handle `SyncLog` (diesel,
//!   bundled SQLite, tokio's blocking pool). Without it the crate is only the value types and
//!   the codec: `sync-proto` depends on it that way, so the protocol never pulls in storage.
#![deny(missing_docs)]

pub mod codec;
mod types;

pub use types::{
    Change, ChangeType, Checksum, DeviceId, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Position,
    Seq, Stamp,
};
mod error;
#[cfg(feature = "store")]
mod store;
#[cfg(feature = "store")]
pub mod wal;

pub use error::Error;
#[cfg(feature = "store")]
pub use store::{Appended, BUSY_TIMEOUT_MS, SCHEMA_VERSION, SyncLog, SyncLogStore};
