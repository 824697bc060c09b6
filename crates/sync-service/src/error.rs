//! The crate's one error type.

/// Everything that can go wrong in the sync service.
///
/// [`Error::is_retryable`] separates what may succeed later (a busy database, a lost peer)
/// from what never will (the service is shut down, a snapshot is needed, bad input).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The write path failed.
    #[error("write path: {0}")]
    Txn(Box<txn_manager::Error>),
    /// The sync log failed.
    #[error("sync log: {0}")]
    Log(Box<sync_log::Error>),
    /// Leadership could not start (its record could not be loaded).
    #[error("leadership: {0}")]
    Leadership(#[from] leadership::Error),
    /// The service is shutting down or has stopped: no more writes are accepted.
    #[error("the sync service of this library has stopped")]
    Stopped,
    /// This device is below the leader's pruned floor: only a snapshot can bring it back
    /// (the snapshot path comes with the jobs issue).
    #[error("a snapshot is required: the leader pruned its log through seq {compacted_through}")]
    SnapshotRequired {
        /// Entries up to and including this seq are gone from the leader's log.
        compacted_through: sync_log::Seq,
    },
    /// A parameter is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The engine's thread (or its runtime) could not be started.
    #[error("starting the engine thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl From<txn_manager::Error> for Error {
    fn from(e: txn_manager::Error) -> Self {
        Self::Txn(Box::new(e))
    }
}

impl From<sync_log::Error> for Error {
    fn from(e: sync_log::Error) -> Self {
        Self::Log(Box::new(e))
    }
}

impl Error {
    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Txn(e) => e.is_retryable(),
            Self::Log(e) => e.is_retryable(),
            Self::Leadership(e) => e.is_retryable(),
            Self::Thread(_) => true,
            Self::Stopped | Self::SnapshotRequired { .. } | Self::InvalidConfig(_) => false,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
