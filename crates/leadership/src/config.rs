//! Timing parameters.

use std::time::Duration;

use crate::error::{Error, Result};

/// Timing of leadership: heartbeat interval `H`, lease `L` and claim window `W`.
///
/// * The leader broadcasts a heartbeat every `H` (default 1 s).
/// * A follower trusts its leader for `L` after the last heartbeat it heard (default 5 s); when
///   that lease lapses it starts an election.
/// * A candidate collects rival claims for `W` before it decides (default `H / 4`); a new leader
///   is therefore known `W` plus two message delays after the first lease lapses. For every
///   connected device to reach the same decision, `W` must exceed two one-way message delays
///   plus the time a save takes.
///
/// Rules checked by [`Config::new`] and [`Config::with_claim_window`]: `H > 0`, `L >= 2H` (one
/// lost heartbeat never starts an election), `0 < W < H`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    heartbeat: Duration,
    lease: Duration,
    claim_window: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            claim_window: Duration::from_millis(250),
        }
    }
}

impl Config {
    /// A configuration with heartbeat interval `heartbeat`, lease `lease` and a claim window
    /// of a quarter heartbeat.
    pub fn new(heartbeat: Duration, lease: Duration) -> Result<Self> {
        Self::validated(heartbeat, lease, heartbeat / 4)
    }

    /// The same configuration with another claim window.
    pub fn with_claim_window(self, claim_window: Duration) -> Result<Self> {
        Self::validated(self.heartbeat, self.lease, claim_window)
    }

    fn validated(heartbeat: Duration, lease: Duration, claim_window: Duration) -> Result<Self> {
        if heartbeat.is_zero() {
            return Err(Error::InvalidConfig("heartbeat interval must be positive"));
        }
        if lease < heartbeat.saturating_mul(2) {
            return Err(Error::InvalidConfig("lease must be at least two heartbeat intervals"));
        }
        if claim_window.is_zero() || claim_window >= heartbeat {
            return Err(Error::InvalidConfig(
                "claim window must be positive and shorter than the heartbeat interval",
            ));
        }
        Ok(Self { heartbeat, lease, claim_window })
    }

    /// `H`: how often the leader heartbeats.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// `L`: how long a follower trusts a leader after its last heartbeat.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// `W`: how long a candidate collects rival claims before it decides.
    pub fn claim_window(&self) -> Duration {
        self.claim_window
    }

    /// `I = L - H`: how long a leader that hears no other member keeps sequencing.
    ///
    /// After `I` of silence a leader *pauses* (it keeps its term and heartbeats, but sequences
    /// nothing: its writes wait in its outbox like everyone's) until it hears a member again.
    /// `I` is shorter than the lease on purpose: the members on the other side of the silence
    /// start an election no earlier than `L` after the last heartbeat they heard, which was at
    /// most `H` (plus timer lateness) before the silence began, so a leader cut off alone has
    /// stopped sequencing before anyone else can start (given `W` above one message delay and
    /// the timer lateness). At least `H`, since `L >= 2H`.
    pub fn isolation(&self) -> Duration {
        self.lease.saturating_sub(self.heartbeat)
    }

    /// `R = min(2H, L - H)`: a member heard within `R` counts as reachable now.
    ///
    /// Members announce themselves every `H`, so a reachable member is heard within `R`. When a
    /// follower's lease lapses it stands only if some member is reachable: the last message it
    /// heard before a silence is at most `H` younger than the last heartbeat, so after a lease
    /// of silence `R` has passed too, and a device cut off alone never claims.
    pub fn reach(&self) -> Duration {
        self.isolation().min(self.heartbeat.saturating_mul(2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented() {
        let c = Config::default();
        assert_eq!(c.heartbeat(), Duration::from_secs(1));
        assert_eq!(c.lease(), Duration::from_secs(5));
        assert_eq!(Config::new(c.heartbeat(), c.lease()).unwrap().claim_window(), c.claim_window());
        assert_eq!(c.isolation(), Duration::from_secs(4));
        assert_eq!(c.reach(), Duration::from_secs(2));
    }

    #[test]
    fn rejects_broken_timings() {
        let s = Duration::from_secs;
        assert!(Config::new(Duration::ZERO, s(5)).is_err());
        assert!(Config::new(s(1), Duration::from_millis(1500)).is_err());
        assert!(Config::default().with_claim_window(s(1)).is_err());
        assert!(Config::default().with_claim_window(Duration::ZERO).is_err());
        assert!(Config::new(s(2), s(4)).is_ok());
    }
}
