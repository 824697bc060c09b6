//! Tuning of the service.

use std::time::Duration;

use crate::error::{Error, Result};

/// How one [`SyncService`](crate::SyncService) behaves. `Config::default()` is the product's
/// setting; tests shorten the leadership timings.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Leadership timing (heartbeat, lease, claim window).
    pub leadership: leadership::Config,
    /// Entries per catch-up page (`Fetch` limit) and per apply: about 1,000, so a device far
    /// behind never holds more than one page in memory.
    pub page: u32,
    /// Largest range pushed as entries; a larger one is announced with a `PushNotice` and the
    /// follower fetches it in pages.
    pub push_max: usize,
    /// Largest message the service builds, in bytes of payload (about): a `Push`, an
    /// `Entries` page or a `Submit` with more is cut (a push becomes a notice, a page ends
    /// early, a submit is split — even inside one committed transaction). Must stay well
    /// below the transport's frame limit (16 MiB by default). A single change above it
    /// still travels alone.
    pub message_bytes: usize,
    /// Messages queued for one peer before the leader stops pushing to it (it then sends a
    /// `PushNotice` once the queue has room). Bounds the leader's memory per stalled peer to
    /// about `peer_queue × push_max` entries.
    pub peer_queue: usize,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, with jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Period of the housekeeping tick: pings (round-trip time), retries of unanswered
    /// fetches and submits, stuck detection.
    pub tick: Duration,
    /// An unanswered `Fetch` or `Submit` is sent again after this long.
    pub resend_after: Duration,
    /// A peer that is connected and behind but has not advanced for this long is "stuck".
    pub stuck_after: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            leadership: leadership::Config::default(),
            page: 1_000,
            push_max: 256,
            message_bytes: 4 << 20,
            peer_queue: 64,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            tick: Duration::from_millis(250),
            resend_after: Duration::from_secs(2),
            stuck_after: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Checks the rules: positive page, queue, push and message sizes and tick; `backoff_min <= backoff_max`.
    pub fn validate(&self) -> Result<()> {
        if self.page == 0 || self.push_max == 0 || self.peer_queue == 0 || self.message_bytes == 0 {
            return Err(Error::InvalidConfig(
                "page, push_max, message_bytes and peer_queue must be positive",
            ));
        }
        if self.tick.is_zero() || self.backoff_min.is_zero() || self.backoff_min > self.backoff_max
        {
            return Err(Error::InvalidConfig("tick and backoff must be positive, min <= max"));
        }
        Ok(())
    }
}
