//! The crate's one error type.

/// Everything that can go wrong in this crate.
///
/// The state machine itself never fails: errors come from configuration, the persistence seam
/// and the async driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The timing parameters break a rule of [`Config`](crate::Config) (fatal: fix the
    /// configuration).
    #[error("invalid leadership configuration: {0}")]
    InvalidConfig(&'static str),
    /// The [`LeadershipStore`](crate::LeadershipStore) could not load or save the record
    /// (retryable: the machine never acts on an epoch that was not saved, so a failed save only
    /// delays leadership).
    #[error("leadership store failed: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The driver task has ended (shut down or panicked); its handle can no longer be used.
    #[error("leadership driver has stopped")]
    DriverStopped,
}

impl Error {
    /// Wraps an error of a store implementation.
    pub fn store(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Store(Box::new(source))
    }

    /// Whether trying the same operation again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
