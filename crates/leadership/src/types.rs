//! Value types: device ids, epochs, positions, terms and the machine's clock.

use std::fmt;
use std::ops::Add;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Identifies one device (one member of a library).
///
/// Ordering is the ordering of the inner [`Uuid`]; it is the last tie-break of every election
/// and of two leaders that meet at the same epoch (the higher id wins).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemberId(pub Uuid);

impl MemberId {
    /// Builds an id from its 128-bit value (handy for tests that want a known order).
    pub const fn from_u128(value: u128) -> Self {
        Self(Uuid::from_u128(value))
    }
}

impl From<Uuid> for MemberId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({})", self.0)
    }
}

/// A leadership term number. Epoch 0 means "no leader ever seen"; the library's creator leads
/// epoch 1, and every election uses the highest epoch seen plus one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch before any leader: nothing has been seen yet.
    pub const ZERO: Self = Self(0);
    /// The epoch the library's creator leads from the start.
    pub const FIRST: Self = Self(1);

    /// The epoch an election held now would use.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// How far a device has applied the global log (its last applied sequence number).
///
/// Elections prefer the most caught-up device, i.e. the highest position.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LogPosition(pub u64);

/// One leadership term: an epoch and the device that leads it.
///
/// Terms are totally ordered by `(epoch, leader)`; this is the order in which leaders win when
/// they meet (design-notes rule 5) and the token every fenced message carries. Two devices can
/// lead the same *epoch* when they were elected on the two sides of a partition, but never the
/// same *term*: a device leads a given epoch at most once in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term {
    /// The epoch of the term (compared first).
    pub epoch: Epoch,
    /// The device that leads it (compared second).
    pub leader: MemberId,
}

impl Term {
    /// A term from its parts.
    pub const fn new(epoch: Epoch, leader: MemberId) -> Self {
        Self { epoch, leader }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.leader, self.epoch)
    }
}

/// A point on the machine's clock: the time elapsed since an origin chosen by whoever drives it.
///
/// The state machine never reads a clock; every input comes with the current [`Time`]. The
/// driver uses `tokio::time::Instant` minus its start instant; simulations use virtual time.
/// Times are only compared within one run of a machine: nothing time-based is persisted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The origin.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The time `elapsed` after the origin.
    pub const fn from_duration(elapsed: Duration) -> Self {
        Self(elapsed)
    }

    /// The time `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// Time elapsed since the origin.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this time is (zero if it is not later).
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, rhs: Duration) -> Time {
        Time(self.0.saturating_add(rhs))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}
