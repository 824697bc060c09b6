//! Value types shared by every layer: identifiers, sequence numbers, stamps and log entries.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) identifier.
            pub fn new_v7() -> Self {
                Self(Uuid::now_v7())
            }

            /// The nil identifier (all zero bits); useful as a "nobody" marker in tests.
            pub const NIL: Self = Self(Uuid::nil());
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// Identifies one library (the unit that is kept in sync).
    LibraryId
);
uuid_id!(
    /// Identifies one device (one member of a library).
    DeviceId
);

macro_rules! u64_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The zero value.
            pub const ZERO: Self = Self(0);

            /// The next value (`self + 1`).
            #[must_use]
            pub fn next(self) -> Self {
                Self(self.0 + 1)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

u64_newtype!(
    /// A global sequence number assigned by the leader. The first entry of a log is `Seq(1)`;
    /// `Seq(0)` means "nothing yet".
    Seq
);
u64_newtype!(
    /// A leadership term. Entries carry the epoch that sequenced them; a higher epoch fences a
    /// lower one.
    Epoch
);

/// A hybrid logical clock reading: 47 bits of physical milliseconds since the Unix epoch and a
/// 16-bit logical counter, packed so that the natural `u64` order is the clock order.
///
/// The top bit is always zero: every valid reading ([`Hlc::is_valid`], at most [`Hlc::MAX`])
/// fits in SQLite's signed 64-bit integer column with the same order. 2^47 ms reach the year
/// 6429. A `Hlc(u64)` built by hand above [`Hlc::MAX`] is out of range; the sync log refuses to
/// sequence a change that carries one.
///
/// The device that made the reading is carried beside it (in [`Stamp`] and [`Change`]), so the
/// packed value stays one sortable integer column.
///
/// ```
/// use sync_log::Hlc;
/// let a = Hlc::new(1_700_000_000_000, 0);
/// let b = Hlc::new(1_700_000_000_000, 1);
/// assert!(a < b);
/// assert_eq!(b.millis(), 1_700_000_000_000);
/// assert_eq!(b.counter(), 1);
/// assert!(b.is_valid() && Hlc::MAX.is_valid() && !Hlc(u64::MAX).is_valid());
/// assert_eq!(Hlc::new(u64::MAX, 7).millis(), Hlc::MAX_MILLIS, "new clamps the time");
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Hlc(pub u64);

impl Hlc {
    /// Bits used by the logical counter.
    pub const COUNTER_BITS: u32 = 16;
    /// Largest physical time representable (milliseconds): 2^47 - 1, so that every packed
    /// reading is below 2^63 and fits a signed 64-bit column.
    pub const MAX_MILLIS: u64 = (1 << (63 - Self::COUNTER_BITS)) - 1;
    /// The largest valid reading: [`Hlc::MAX_MILLIS`] with the largest counter (2^63 - 1).
    pub const MAX: Self = Self((Self::MAX_MILLIS << Self::COUNTER_BITS) | 0xFFFF);

    /// Packs a physical time and a counter.
    ///
    /// A time past [`Hlc::MAX_MILLIS`] is clamped to it (silently: a caller that must not
    /// stamp a clamped reading checks the time first, or compares the result's
    /// [`millis`](Hlc::millis)). The result is always valid.
    pub fn new(millis: u64, counter: u16) -> Self {
        Self((millis.min(Self::MAX_MILLIS) << Self::COUNTER_BITS) | u64::from(counter))
    }

    /// Whether this reading is in range (at most [`Hlc::MAX`]); every reading made by
    /// [`Hlc::new`] is.
    pub fn is_valid(self) -> bool {
        self <= Self::MAX
    }

    /// Physical milliseconds since the Unix epoch.
    pub fn millis(self) -> u64 {
        self.0 >> Self::COUNTER_BITS
    }

    /// Logical counter within one millisecond.
    pub fn counter(self) -> u16 {
        // Truncation is the point: the low bits are the counter.
        (self.0 & 0xFFFF) as u16
    }
}

/// The last-writer-wins stamp of a record version: compared as `(hlc, device, version)`, the
/// larger stamp wins.
///
/// Recency first: the hybrid logical clock respects causality (a device that has seen a change
/// stamps its next edit higher), so a later edit wins whatever the number of edits before it.
/// The device breaks ties between equal clocks; `version` (the record's edit counter) is only
/// the last tie-break, so that the order is total and consistent with `Eq`.
///
/// ```
/// use sync_log::{DeviceId, Hlc, Stamp};
/// let d1 = DeviceId(uuid::Uuid::from_u128(1));
/// let d2 = DeviceId(uuid::Uuid::from_u128(2));
/// // Five offline edits on Monday…
/// let monday = Stamp { version: 5, hlc: Hlc::new(10, 0), device: d2 };
/// // …lose to one rename on Tuesday.
/// let tuesday = Stamp { version: 1, hlc: Hlc::new(99, 0), device: d1 };
/// assert!(tuesday > monday, "a later hlc wins over a higher version");
/// // Equal clocks: the larger device wins.
/// let same_time = Stamp { version: 9, hlc: Hlc::new(99, 0), device: d2 };
/// assert!(same_time > tuesday);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Per-record version, bumped by every write: an edit counter, the last tie-break only.
    pub version: u64,
    /// Hybrid logical clock of the write: the first key.
    pub hlc: Hlc,
    /// Device that made the write: the second key.
    pub device: DeviceId,
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.hlc, self.device, self.version).cmp(&(other.hlc, other.device, other.version))
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What a change does to its record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeType {
    /// A new record.
    Insert,
    /// A new version of an existing record.
    Update,
    /// A tombstone: the record is deleted.
    ///
    /// The one delete rule: a tombstone is a change like any other, ordered by its [`Stamp`].
    /// A change stamped before the tombstone never revives the record; an edit stamped after a
    /// concurrent delete does (and is a conflict the service records).
    Delete,
    /// One entry describing a bulk operation whose rows travel as a stream.
    Bulk,
}

impl ChangeType {
    /// The stable on-disk code of this change type.
    pub fn code(self) -> i16 {
        match self {
            Self::Insert => 0,
            Self::Update => 1,
            Self::Delete => 2,
            Self::Bulk => 3,
        }
    }

    /// Parses an on-disk code.
    pub fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            0 => Self::Insert,
            1 => Self::Update,
            2 => Self::Delete,
            3 => Self::Bulk,
            _ => return None,
        })
    }
}

/// The idempotency key of a change: the device that made it and that device's own counter.
/// The leader sequences each origin key at most once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OriginKey {
    /// Device that made the change.
    pub device: DeviceId,
    /// That device's outbox counter (starts at 1, never reused).
    pub seq: u64,
}

/// One change to one record, before (or without) a global sequence number: what an outbox
/// holds, what a follower submits and what the leader sequences.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Idempotency key.
    pub origin: OriginKey,
    /// Hybrid logical clock of the write.
    pub hlc: Hlc,
    /// Registered model name (see the `syncable` crate).
    pub model: String,
    /// The record this change is about.
    pub record: Uuid,
    /// What the change does.
    pub change: ChangeType,
    /// Record version after this change.
    pub version: u64,
    /// The model's own encoding of the record (opaque to the log). Serialized as one byte
    /// string (length + bytes), not element by element.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Change {
    /// The last-writer-wins stamp of this change. The writer is the origin device.
    pub fn stamp(&self) -> Stamp {
        Stamp { version: self.version, hlc: self.hlc, device: self.origin.device }
    }

    /// An upper bound of this change's encoded size in bytes (its payload and model name, plus
    /// the fixed fields at their widest): what the write path and the sync service budget
    /// rows and messages with.
    ///
    /// ```
    /// # use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey};
    /// let change = Change {
    ///     origin: OriginKey { device: DeviceId::new_v7(), seq: u64::MAX },
    ///     hlc: Hlc(u64::MAX),
    ///     model: "tag".into(),
    ///     record: uuid::Uuid::now_v7(),
    ///     change: ChangeType::Update,
    ///     version: u64::MAX,
    ///     payload: vec![7; 1_000],
    /// };
    /// assert!(sync_log::codec::encode(&change).unwrap().len() <= change.size_bound());
    /// ```
    pub fn size_bound(&self) -> usize {
        self.payload.len() + self.model.len() + 96
    }
}

/// A 32-byte running checksum: `blake3(previous checksum ‖ entry)`. Two logs that agree on
/// `(seq, checksum)` agree on every entry up to `seq`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Checksum(pub [u8; 32]);

impl Checksum {
    /// The checksum "before the first entry".
    pub const GENESIS: Self = Self([0; 32]);
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Checksum({self})")
    }
}

/// A position in a log: the last sequence number and the running checksum there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Last sequence number (`Seq(0)` for an empty log).
    pub seq: Seq,
    /// Running checksum at `seq` ([`Checksum::GENESIS`] for an empty log).
    pub checksum: Checksum,
}

/// A sequenced change: a row of the sync log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Global sequence number.
    pub seq: Seq,
    /// Epoch of the leader that sequenced it.
    pub epoch: Epoch,
    /// The change itself.
    pub change: Change,
    /// Running checksum up to and including this entry.
    pub checksum: Checksum,
}

impl LogEntry {
    /// The checksum this entry must carry when it follows `prev`.
    ///
    /// Every field but the checksum itself is hashed, each with a fixed-width or
    /// length-prefixed encoding, so no two different entries hash alike by concatenation.
    pub fn chain(prev: &Checksum, seq: Seq, epoch: Epoch, change: &Change) -> Checksum {
        let mut h = blake3::Hasher::new();
        h.update(&prev.0);
        h.update(&seq.0.to_le_bytes());
        h.update(&epoch.0.to_le_bytes());
        h.update(change.origin.device.0.as_bytes());
        h.update(&change.origin.seq.to_le_bytes());
        h.update(&change.hlc.0.to_le_bytes());
        h.update(&(change.model.len() as u64).to_le_bytes());
        h.update(change.model.as_bytes());
        h.update(change.record.as_bytes());
        h.update(&change.change.code().to_le_bytes());
        h.update(&change.version.to_le_bytes());
        h.update(&(change.payload.len() as u64).to_le_bytes());
        h.update(&change.payload);
        Checksum(*h.finalize().as_bytes())
    }

    /// The position this entry ends at.
    pub fn position(&self) -> Position {
        Position { seq: self.seq, checksum: self.checksum }
    }
}
