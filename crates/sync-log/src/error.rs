//! The crate's one error type.

use std::path::PathBuf;

use crate::{Checksum, LibraryId, Seq};

/// Everything that can go wrong in the sync log.
///
/// [`Error::is_retryable`] tells a caller whether the same call may succeed later (a busy
/// database) or never will (a foreign file, a corrupt file, a divergent chain).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file belongs to another library.
    #[error("{path}: sync log of library {found}, expected library {expected}")]
    ForeignLibrary {
        /// The file.
        path: PathBuf,
        /// The library the caller asked for.
        expected: LibraryId,
        /// The library the file belongs to.
        found: LibraryId,
    },
    /// The file was written by a newer build.
    #[error(
        "{path}: sync log schema version {file} is newer than this build supports ({supported})"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Schema version found in the file.
        file: u32,
        /// Highest schema version this build knows.
        supported: u32,
    },
    /// The file is not a sync log, or it is damaged (truncated, overwritten, broken chain).
    #[error("{path}: corrupt sync log: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file is an SQLite database of something else (a library database at a swapped
    /// path, say): it holds tables a sync log never has. The file was not modified.
    #[error("{path}: not a sync log but another database (it holds tables {tables:?})")]
    NotASyncLog {
        /// The file.
        path: PathBuf,
        /// The tables that a sync log does not have.
        tables: Vec<String>,
    },
    /// `open` was asked for a file that does not exist.
    #[error("{0}: no sync log here")]
    Missing(PathBuf),
    /// A sequenced entry does not follow the current head.
    #[error("entry seq {got} does not follow the head (expected {expected})")]
    Gap {
        /// The sequence number that would follow the head.
        expected: Seq,
        /// The sequence number offered.
        got: Seq,
    },
    /// A sequenced entry's running checksum differs from ours: the logs diverged.
    #[error("log diverged at seq {seq}: ours {ours}, theirs {theirs}")]
    Diverged {
        /// First sequence number at which the chains differ.
        seq: Seq,
        /// Our checksum there.
        ours: Checksum,
        /// Theirs.
        theirs: Checksum,
    },
    /// An origin key already in the log, or earlier in the same batch, arrived with a
    /// different change: the origin device reused a key. Nothing of the batch was written.
    #[error("origin key {origin:?} is already sequenced at seq {seq} with a different change")]
    OriginConflict {
        /// The reused key.
        origin: crate::OriginKey,
        /// Where the log holds the original change (for a repeat inside one batch: the seq the
        /// batch planned for its first occurrence, which was not written either).
        seq: Seq,
    },
    /// The range asked for was pruned; the caller needs a snapshot.
    #[error("entries up to seq {floor} were pruned (asked for entries after {requested})")]
    Pruned {
        /// Entries after this were asked for.
        requested: Seq,
        /// Entries up to and including this seq are gone.
        floor: Seq,
    },
    /// An argument out of range (e.g. pruning past the head).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The database stayed locked by another connection past the busy timeout.
    #[error("sync log is busy: {0}")]
    Busy(String),
    /// A value could not be encoded.
    #[error("encode failed: {0}")]
    Encode(String),
    /// Bytes are not a valid encoding of the expected type, or exceed the decode limit.
    #[error("decode failed: {0}")]
    Decode(String),
    /// Bytes were left over after a decoded value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// Applying the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Any other database error.
    #[cfg(feature = "store")]
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// The database could not be opened.
    #[cfg(feature = "store")]
    #[error("cannot open database: {0}")]
    Connection(#[from] diesel::ConnectionError),
    /// A blocking task failed (panicked or was cancelled) or the store was poisoned by a panic.
    #[error("background task failed: {0}")]
    Task(String),
}

impl Error {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Busy(_))
    }
}
