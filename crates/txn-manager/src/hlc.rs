//! The hybrid logical clock of a device, with an injected physical clock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sync_log::Hlc;

use crate::Error;

/// Default bound on how far a peer's stamp may be ahead of our physical clock: 10 minutes.
pub const DEFAULT_MAX_DRIFT_MS: u64 = 10 * 60 * 1_000;

/// A source of physical time, injected so that tests control it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        // A clock before 1970 reads as 0; the HLC still moves forward by its counter.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests and simulations).
///
/// ```
/// use txn_manager::{Clock, ManualClock};
/// let c = ManualClock::new(1_000);
/// c.advance(5);
/// assert_eq!(c.now_millis(), 1_005);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `millis`.
    pub fn new(millis: u64) -> Self {
        Self(AtomicU64::new(millis))
    }

    /// Sets the reading (may go backwards: the HLC must stay monotonic anyway).
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }

    /// Moves the reading forward by `millis`.
    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What [`HybridClock::observe`] did with a peer's stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Merged: our clock is now at least the peer's reading.
    Merged,
    /// The peer's reading was more than the maximum drift ahead of our physical clock: our
    /// clock advanced only to `physical now + max drift` (and a warning was logged). The
    /// peer's stamp itself stays on its record — changing it would break convergence.
    Clamped {
        /// The peer's reading.
        remote: Hlc,
        /// Where our clock was allowed to go.
        to: Hlc,
    },
}

/// A device's hybrid logical clock: `max(physical ms, last reading)` plus a 16-bit counter.
///
/// Readings are strictly increasing for the life of the value, and across restarts when the
/// last reading is persisted and passed back to [`HybridClock::new`] (the write path stores it
/// in the same transaction as every write and apply). The device id that completes the stamp
/// is carried by [`sync_log::Stamp`].
///
/// **Drift rule:** a peer stamp more than `max_drift_ms` (default 10 minutes) ahead of our
/// physical clock is *clamped*: we log a warning and advance our clock only to
/// `now + max_drift_ms`, so one device with a wrong clock cannot drag every other clock into
/// the future. The change it stamped is still applied with its own stamp (the log is the
/// truth; refusing it would make devices diverge).
///
/// ```
/// use std::sync::Arc;
/// use sync_log::Hlc;
/// use txn_manager::{HybridClock, ManualClock, Observed};
/// let clock = Arc::new(ManualClock::new(1_000));
/// let mut hlc = HybridClock::new(clock.clone(), Hlc::default(), 60_000);
/// let a = hlc.now()?;
/// let b = hlc.now()?; // same millisecond: the counter moves
/// assert!(b > a);
/// assert!(matches!(hlc.observe(Hlc::new(1_000 + 3_600_000, 0)), Observed::Clamped { .. }));
/// assert_eq!(hlc.last().millis(), 61_000);
/// # Ok::<(), txn_manager::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct HybridClock {
    clock: Arc<dyn Clock>,
    last: Hlc,
    max_drift_ms: u64,
}

impl HybridClock {
    /// A clock that continues after `persisted` (the last reading stored).
    pub fn new(clock: Arc<dyn Clock>, persisted: Hlc, max_drift_ms: u64) -> Self {
        Self { clock, last: persisted, max_drift_ms }
    }

    /// A new reading, strictly greater than every earlier one.
    ///
    /// Fails with [`Error::ClockOutOfRange`] rather than hand out a reading that is not larger
    /// than the last one or that no device would accept: the physical clock reads beyond
    /// [`Hlc::MAX_MILLIS`] (a broken clock), or the clock has reached [`Hlc::MAX_MILLIS`] and
    /// its counter is exhausted. Every reading it returns fits in a signed 64-bit column.
    pub fn now(&mut self) -> Result<Hlc, Error> {
        let physical = self.clock.now_millis();
        if physical > Hlc::MAX_MILLIS {
            return Err(Error::ClockOutOfRange { millis: physical, last: self.last });
        }
        let next = if physical > self.last.millis() {
            Hlc::new(physical, 0)
        } else if self.last.counter() < u16::MAX {
            Hlc(self.last.0 + 1)
        } else if self.last.millis() < Hlc::MAX_MILLIS {
            // Counter exhausted within one millisecond: borrow the next millisecond.
            Hlc::new(self.last.millis() + 1, 0)
        } else {
            return Err(Error::ClockOutOfRange { millis: physical, last: self.last });
        };
        if next <= self.last || i64::try_from(next.0).is_err() {
            return Err(Error::ClockOutOfRange { millis: physical, last: self.last });
        }
        self.last = next;
        Ok(next)
    }

    /// Merges a peer's reading (see the drift rule in the type docs).
    pub fn observe(&mut self, remote: Hlc) -> Observed {
        let limit = self.clock.now_millis().saturating_add(self.max_drift_ms).min(Hlc::MAX_MILLIS);
        if remote.millis() > limit {
            let to = Hlc::new(limit, 0).max(self.last);
            tracing::warn!(
                remote_ms = remote.millis(),
                limit_ms = limit,
                "peer clock stamp too far in the future; clock clamped"
            );
            self.last = to;
            Observed::Clamped { remote, to }
        } else {
            self.last = self.last.max(remote);
            Observed::Merged
        }
    }

    /// The last reading handed out or merged (what is persisted).
    pub fn last(&self) -> Hlc {
        self.last
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn clock_at(millis: u64) -> (Arc<ManualClock>, HybridClock) {
        let clock = Arc::new(ManualClock::new(millis));
        let hlc = HybridClock::new(clock.clone(), Hlc::default(), DEFAULT_MAX_DRIFT_MS);
        (clock, hlc)
    }

    /// Readings strictly increase whether the physical clock moves forward, stands still or
    /// goes backwards; a forward physical clock resets the counter.
    #[test]
    fn readings_strictly_increase_whatever_the_physical_clock_does() {
        let (clock, mut hlc) = clock_at(5_000);
        let mut last = hlc.now().unwrap();
        assert_eq!(last, Hlc::new(5_000, 0));
        for step in [0i64, 0, 3, -2_000, 0, 1, -1, 10_000, -10_000] {
            let now = clock.now_millis();
            clock.set(now.saturating_add_signed(step));
            let next = hlc.now().unwrap();
            assert!(next > last, "{next:?} after {last:?} (step {step})");
            last = next;
        }
        assert_eq!(hlc.last(), last);
        clock.set(100_000);
        assert_eq!(
            hlc.now().unwrap(),
            Hlc::new(100_000, 0),
            "a later physical time resets the counter"
        );
    }

    /// More than 65,536 readings in one physical millisecond: when the 16-bit counter is
    /// exhausted the clock borrows the next millisecond (counter 0), and stays strictly
    /// increasing — also once the physical clock catches up with the borrowed millisecond.
    #[test]
    fn counter_overflow_within_one_millisecond_borrows_the_next() {
        let clock = Arc::new(ManualClock::new(1_000));
        let mut hlc =
            HybridClock::new(clock.clone(), Hlc::new(1_000, u16::MAX - 1), DEFAULT_MAX_DRIFT_MS);
        assert_eq!(hlc.now().unwrap(), Hlc::new(1_000, u16::MAX));
        assert_eq!(hlc.now().unwrap(), Hlc::new(1_001, 0), "counter exhausted: next millisecond");
        assert_eq!(hlc.now().unwrap(), Hlc::new(1_001, 1));

        // A frozen physical clock and 3 × 65,536 readings: every one larger than the last.
        let mut last = hlc.last();
        for _ in 0..3 * 65_536 {
            let next = hlc.now().unwrap();
            assert!(next > last);
            last = next;
        }
        assert_eq!(last.millis(), 1_004, "three more milliseconds borrowed");
        clock.set(1_004);
        assert!(hlc.now().unwrap() > last, "physical time equal to the borrowed millisecond");
    }

    /// Observing a peer's reading that is ahead of ours but within the maximum drift merges
    /// it: our next reading is larger than the peer's. A reading behind ours changes nothing.
    #[test]
    fn observe_within_drift_merges() {
        let (_clock, mut hlc) = clock_at(10_000);
        let ours = hlc.now().unwrap();
        let remote = Hlc::new(10_000 + DEFAULT_MAX_DRIFT_MS, 42);
        assert_eq!(hlc.observe(remote), Observed::Merged);
        assert!(hlc.now().unwrap() > remote);

        let before = hlc.last();
        assert_eq!(hlc.observe(ours), Observed::Merged);
        assert_eq!(hlc.last(), before, "an older reading never moves the clock back");
    }

    /// A peer reading beyond `now + max drift` is clamped: our clock moves to exactly
    /// `now + max drift` (never further), the next reading stays below the peer's, and a clock
    /// already past the limit is not moved back.
    #[test]
    fn observe_beyond_drift_is_clamped_to_now_plus_drift() {
        let now = 1_000_000;
        let (clock, mut hlc) = clock_at(now);
        let limit = now + DEFAULT_MAX_DRIFT_MS;
        let remote = Hlc::new(limit + 1, 0);
        assert_eq!(
            hlc.observe(remote),
            Observed::Clamped { remote, to: Hlc::new(limit, 0) },
            "one millisecond past the limit is clamped"
        );
        assert_eq!(hlc.last(), Hlc::new(limit, 0));
        let next = hlc.now().unwrap();
        assert!(next < remote && next.millis() == limit, "{next:?}");

        // Far in the future (a peer with a broken clock): still only to now + drift.
        let far = Hlc::new(now + 365 * 24 * 3_600_000, 0);
        let before = hlc.last();
        assert!(matches!(hlc.observe(far), Observed::Clamped { .. }));
        assert_eq!(hlc.last(), before, "already at the limit: not moved, not moved back");
        assert!(hlc.last().millis() <= clock.now_millis() + DEFAULT_MAX_DRIFT_MS);

        // Exactly at the limit is within the drift: merged.
        let (_clock, mut fresh) = clock_at(now);
        let at_limit = Hlc::new(limit, 9);
        assert_eq!(fresh.observe(at_limit), Observed::Merged);
        assert!(fresh.now().unwrap() > at_limit);
    }

    /// The drift bound is configurable: with a 1-second bound a peer 2 seconds ahead is
    /// clamped to `now + 1 s`.
    #[test]
    fn max_drift_is_configurable() {
        let clock = Arc::new(ManualClock::new(50_000));
        let mut hlc = HybridClock::new(clock, Hlc::default(), 1_000);
        let remote = Hlc::new(52_000, 0);
        assert_eq!(hlc.observe(remote), Observed::Clamped { remote, to: Hlc::new(51_000, 0) });
    }
}
