//! Protocol versions and their negotiation.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One version of the in-band protocol (the message set spoken inside [`SYNC_ALPN`]).
///
/// [`SYNC_ALPN`]: crate::SYNC_ALPN
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProtocolVersion(pub u16);

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// An inclusive range of protocol versions a build can speak.
///
/// ```
/// use sync_proto::{ProtocolVersion, VersionRange};
/// let old = VersionRange::new(1, 2);
/// let new = VersionRange::new(2, 4);
/// assert_eq!(old.negotiate(&new), Some(ProtocolVersion(2)));
/// assert_eq!(VersionRange::new(1, 1).negotiate(&VersionRange::new(2, 3)), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: ProtocolVersion,
    /// Newest version spoken.
    pub max: ProtocolVersion,
}

impl VersionRange {
    /// The versions this build speaks: 2 only. Version 2 added the leadership kinds
    /// ([`Claim`](crate::Claim), [`Presence`](crate::Presence)); a version-1 build cannot take
    /// part in leadership, so it gets a clean version mismatch rather than a session in which
    /// it could never follow an election (docs/protocol.md, "Versions").
    pub const SUPPORTED: Self = Self::new(2, 2);

    /// The range `min..=max`.
    pub const fn new(min: u16, max: u16) -> Self {
        Self { min: ProtocolVersion(min), max: ProtocolVersion(max) }
    }

    /// Whether the range contains `version`.
    pub fn contains(&self, version: ProtocolVersion) -> bool {
        self.min <= version && version <= self.max
    }

    /// Whether the range is empty (`min > max`): such a range never negotiates.
    pub fn is_empty(&self) -> bool {
        self.min > self.max
    }

    /// The newest version both ranges contain, if any.
    pub fn negotiate(&self, other: &Self) -> Option<ProtocolVersion> {
        let lo = self.min.max(other.min);
        let hi = self.max.min(other.max);
        (lo <= hi).then_some(hi)
    }
}

impl Default for VersionRange {
    fn default() -> Self {
        Self::SUPPORTED
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}
