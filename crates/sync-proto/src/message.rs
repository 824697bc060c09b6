//! The messages of the sync protocol.
//!
//! Every message is one variant of [`Message`], wrapping a payload struct of the same name.
//! On the wire a message is a frame (see [`frame`](crate::frame)): its [`MessageKind`] code
//! followed by the bincode encoding of the payload. Kind codes are stable numbers listed in
//! `docs/protocol.md`; they never depend on the order of the variants in this file.
//!
//! [`Hello`], [`HelloAck`], [`VersionMismatch`] and [`ErrorMessage`] are **frozen**: their
//! layout stays the same for as long as [`SYNC_ALPN`](crate::SYNC_ALPN) keeps its version
//! suffix, so that two builds with no common protocol version can still tell each other so.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sync_log::{Change, DeviceId, Epoch, LibraryId, LogEntry, OriginKey, Position, Seq};

use crate::limits;
use crate::version::{ProtocolVersion, VersionRange};

/// A numeric code naming why a session failed or was refused.
///
/// The same numbers are used in [`ErrorMessage`] frames and as the QUIC application error
/// code when a connection is closed. Unknown codes are kept as they are (a newer peer may send
/// codes this build does not name).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// The session ended normally.
    pub const NORMAL: Self = Self(0);
    /// The peer's endpoint id is not a member of the library (or of any library hosted here).
    pub const NOT_A_MEMBER: Self = Self(1);
    /// The library named in the hello is not hosted here.
    pub const FOREIGN_LIBRARY: Self = Self(2);
    /// The two builds share no protocol version.
    pub const VERSION_MISMATCH: Self = Self(3);
    /// A frame could not be decoded (garbage, truncated, unknown kind) or came out of order.
    pub const PROTOCOL_ERROR: Self = Self(4);
    /// A frame announced a length above the receiver's maximum.
    pub const FRAME_TOO_LARGE: Self = Self(5);
    /// The handshake did not complete in time.
    pub const HANDSHAKE_TIMEOUT: Self = Self(6);
    /// The node is shutting down.
    pub const SHUTTING_DOWN: Self = Self(7);
    /// The request needs the leader and this device does not lead.
    pub const NOT_LEADER: Self = Self(8);
    /// The message carries an epoch lower than the highest one the receiver has seen.
    pub const STALE_EPOCH: Self = Self(9);
    /// The receiver failed for a reason of its own.
    pub const INTERNAL: Self = Self(10);
    /// A newer session of the same device for the same library replaced this one.
    pub const REPLACED: Self = Self(11);
    /// A frame did not complete within the frame deadline, or nothing arrived within the idle
    /// time (and the probe that followed went unanswered).
    pub const TIMEOUT: Self = Self(12);
    /// Too many connections from this endpoint are awaiting their handshake; try later.
    pub const BUSY: Self = Self(13);

    /// The name of a known code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NORMAL => "normal",
            Self::NOT_A_MEMBER => "not-a-member",
            Self::FOREIGN_LIBRARY => "foreign-library",
            Self::VERSION_MISMATCH => "version-mismatch",
            Self::PROTOCOL_ERROR => "protocol-error",
            Self::FRAME_TOO_LARGE => "frame-too-large",
            Self::HANDSHAKE_TIMEOUT => "handshake-timeout",
            Self::SHUTTING_DOWN => "shutting-down",
            Self::NOT_LEADER => "not-leader",
            Self::STALE_EPOCH => "stale-epoch",
            Self::INTERNAL => "internal",
            Self::REPLACED => "replaced",
            Self::TIMEOUT => "timeout",
            Self::BUSY => "busy",
            _ => return None,
        })
    }

    /// Whether trying again later (or elsewhere) can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::NORMAL
                | Self::HANDSHAKE_TIMEOUT
                | Self::SHUTTING_DOWN
                | Self::NOT_LEADER
                | Self::INTERNAL
                | Self::TIMEOUT
                | Self::BUSY
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "code {}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({self})")
    }
}

/// Dialer → acceptor, the first frame of every connection (frozen layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the dialer speaks.
    pub versions: VersionRange,
    /// The library the dialer wants to sync.
    pub library: LibraryId,
    /// The dialer's device id in that library (must be the one bound to its endpoint id).
    pub device: DeviceId,
    /// Highest epoch the dialer has seen.
    pub epoch: Epoch,
    /// The dialer's log position `(seq, checksum)`.
    pub position: Position,
    /// Model names this build knows (at most [`MAX_MODEL_NAMES`](crate::MAX_MODEL_NAMES)).
    #[serde(deserialize_with = "limits::model_names")]
    pub models: Vec<String>,
}

/// Acceptor → dialer, the answer to an accepted [`Hello`] (frozen layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version both sides speak from now on: the newest one in both ranges.
    pub version: ProtocolVersion,
    /// The library (echoed, so the dialer can check it).
    pub library: LibraryId,
    /// The acceptor's device id in that library.
    pub device: DeviceId,
    /// Highest epoch the acceptor has seen.
    pub epoch: Epoch,
    /// The acceptor's log position `(seq, checksum)`.
    pub position: Position,
    /// Model names the acceptor's build knows (at most
    /// [`MAX_MODEL_NAMES`](crate::MAX_MODEL_NAMES)).
    #[serde(deserialize_with = "limits::model_names")]
    pub models: Vec<String>,
}

/// Acceptor → dialer: the two builds share no protocol version (frozen layout). The acceptor
/// closes the connection with [`ErrorCode::VERSION_MISMATCH`] right after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMismatch {
    /// The range the dialer offered.
    pub dialer: VersionRange,
    /// The range the acceptor speaks.
    pub acceptor: VersionRange,
}

/// Either direction: a request failed, or the sender is about to close (frozen layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail (for logs, never parsed).
    pub message: String,
}

/// Leader → follower: newly sequenced entries, sent as they are made (small ranges).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// Consecutive entries, lowest seq first.
    pub entries: Vec<LogEntry>,
}

/// Leader → follower: entries `first..=latest` exist but are too many to push; fetch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushNotice {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// First new sequence number.
    pub first: Seq,
    /// Last new sequence number.
    pub latest: Seq,
}

/// Follower → leader (or any device serving catch-up): send entries after `after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// Send entries with `seq > after`.
    pub after: Seq,
    /// At most this many entries in the answer.
    pub limit: u32,
}

/// Answer to a [`Fetch`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    /// Consecutive entries starting right after the requested seq.
    pub entries: Vec<LogEntry>,
    /// The newest seq the sender has.
    pub latest: Seq,
    /// Whether more entries after the last one sent exist (fetch again).
    pub more: bool,
}

/// Follower → leader: everything up to `applied` is applied and durable.
///
/// The checksum comes along so the leader notices a diverged follower on every ack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The follower's position after applying.
    pub applied: Position,
}

/// Leader → follower, periodically: the leader is alive at this epoch and seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// The leader's device id.
    pub leader: DeviceId,
    /// The newest seq the leader has sequenced.
    pub seq: Seq,
}

/// Any member → any member: a candidate in a leadership election stands for `epoch`.
///
/// Sent once the candidate has saved its new epoch. The protocol carries it; the leadership
/// rules (rank = highest `position`, then highest device id) are the service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The epoch the candidate stands for.
    pub epoch: Epoch,
    /// The candidate (the sender; a receiver drops a claim naming another device than the
    /// session's peer).
    pub device: DeviceId,
    /// How far the candidate has applied the log (its last applied seq).
    pub position: Seq,
}

/// Any member → any member, periodically: the sender is reachable, has seen `epoch`, and
/// follows [`Follows`].
///
/// Every member that does not lead sends one to every other member each heartbeat interval:
/// it is how a leader knows it is not alone, and how a follower knows another member is
/// reachable before it claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The sender (a receiver drops a presence naming another device than the session's peer).
    pub device: DeviceId,
    /// The highest epoch the sender has seen.
    pub epoch: Epoch,
    /// The term the sender follows, or explicitly none.
    pub follows: Follows,
}

/// Whom the sender of a [`Presence`] follows.
///
/// The protocol has no optional values: on the wire this is always the same three fields,
/// `{ following: bool, epoch: Epoch, leader: DeviceId }`. [`Follows::Nobody`] is
/// `following = false` with `epoch` 0 and the nil `leader`; a frame with `following = false`
/// and any other epoch or leader is refused as [`FrameError::Malformed`](crate::FrameError).
///
/// ```
/// use sync_log::{DeviceId, Epoch};
/// use sync_proto::Follows;
/// let term = Follows::Leader { epoch: Epoch(3), leader: DeviceId(uuid::Uuid::from_u128(7)) };
/// assert_eq!(term.term(), Some((Epoch(3), DeviceId(uuid::Uuid::from_u128(7)))));
/// assert_eq!(Follows::Nobody.term(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FollowsWire", try_from = "FollowsWire")]
pub enum Follows {
    /// The sender follows no leader (it knows none, or it is electing one).
    Nobody,
    /// The sender follows the term `(epoch, leader)`.
    Leader {
        /// The followed term's epoch.
        epoch: Epoch,
        /// The followed term's leader.
        leader: DeviceId,
    },
}

impl Follows {
    /// The followed term `(epoch, leader)`, if any.
    pub fn term(self) -> Option<(Epoch, DeviceId)> {
        match self {
            Self::Nobody => None,
            Self::Leader { epoch, leader } => Some((epoch, leader)),
        }
    }
}

impl From<Option<(Epoch, DeviceId)>> for Follows {
    fn from(term: Option<(Epoch, DeviceId)>) -> Self {
        term.map_or(Self::Nobody, |(epoch, leader)| Self::Leader { epoch, leader })
    }
}

/// The wire form of [`Follows`]: a flag and a term that is all zeros when the flag is off.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct FollowsWire {
    following: bool,
    epoch: Epoch,
    leader: DeviceId,
}

impl From<Follows> for FollowsWire {
    fn from(follows: Follows) -> Self {
        match follows {
            Follows::Nobody => {
                Self { following: false, epoch: Epoch(0), leader: DeviceId(uuid::Uuid::nil()) }
            }
            Follows::Leader { epoch, leader } => Self { following: true, epoch, leader },
        }
    }
}

/// A [`FollowsWire`] with `following = false` that still names an epoch or a leader.
#[derive(Debug)]
pub(crate) struct InconsistentFollows(FollowsWire);

impl fmt::Display for InconsistentFollows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "presence follows no leader but names epoch {} and leader {}",
            self.0.epoch.0, self.0.leader.0
        )
    }
}

impl TryFrom<FollowsWire> for Follows {
    type Error = InconsistentFollows;

    fn try_from(wire: FollowsWire) -> Result<Self, Self::Error> {
        match wire {
            FollowsWire { following: true, epoch, leader } => Ok(Self::Leader { epoch, leader }),
            FollowsWire { following: false, epoch: Epoch(0), leader } if leader.0.is_nil() => {
                Ok(Self::Nobody)
            }
            inconsistent => Err(InconsistentFollows(inconsistent)),
        }
    }
}

/// Follower → leader: outbox changes to sequence. Re-submitting is harmless: the leader
/// sequences each origin key at most once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    /// Changes from the follower's outbox (any order).
    pub changes: Vec<Change>,
}

/// One submitted change and the global seq it has (new or from an earlier submit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The change's origin key.
    pub origin: OriginKey,
    /// Its global sequence number.
    pub seq: Seq,
}

/// Leader → follower: the answer to a [`Submit`], origin key → global seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitAck {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// One entry per submitted change.
    pub assigned: Vec<Assigned>,
}

/// Leader → follower: the follower is behind the compacted part of the log; it must load a
/// snapshot (ask with [`SnapshotFetch`]) and then fetch entries after the snapshot's seq.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequired {
    /// Entries up to and including this seq are no longer in the leader's log.
    pub compacted_through: Seq,
    /// The position the offered snapshot is taken at.
    pub snapshot: Position,
    /// Size of the snapshot stream.
    pub total_bytes: u64,
}

/// Follower → leader: send the snapshot taken at `snapshot`, from byte `offset` (0, or where
/// an interrupted transfer stopped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFetch {
    /// The snapshot wanted (from [`SnapshotRequired`]).
    pub snapshot: Position,
    /// First byte wanted.
    pub offset: u64,
}

/// Leader → follower: one piece of the snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Offset of `data` in the snapshot stream.
    pub offset: u64,
    /// The bytes.
    #[serde(with = "limits::bytes_field")]
    pub data: Bytes,
}

/// Leader → follower: the snapshot stream is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEnd {
    /// The position the snapshot is taken at.
    pub snapshot: Position,
    /// Size of the whole stream.
    pub total_bytes: u64,
    /// BLAKE3 digest of the whole stream (computed by the service).
    pub digest: [u8; 32],
}

/// Leader (or the winner of an epoch contest) → peer: at `yours.seq` the two logs differ.
/// The receiver discards its suffix after the common prefix, re-submits the changes in it,
/// and fetches again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The leader the sender follows (or itself).
    pub leader: DeviceId,
    /// The receiver's position, as the receiver reported it.
    pub yours: Position,
    /// The sender's position at the same seq (`ours.seq == yours.seq`, checksums differ).
    pub ours: Position,
}

/// Either direction: liveness probe and round-trip measurement; answered with [`Pong`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the answer.
    pub nonce: u64,
    /// Echoed in the answer.
    #[serde(with = "limits::bytes_field")]
    pub payload: Bytes,
}

/// The answer to a [`Ping`], echoing its nonce and payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: u64,
    /// The ping's payload.
    #[serde(with = "limits::bytes_field")]
    pub payload: Bytes,
}

macro_rules! messages {
    ($( $(#[$doc:meta])* $code:literal => $variant:ident($payload:ty), )*) => {
        /// One protocol message. See `docs/protocol.md` for each one's direction and meaning.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$doc])* $variant($payload), )*
        }

        /// The kind of a [`Message`]: what its stable wire code names.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum MessageKind {
            $(
                #[doc = concat!("Kind of [`Message::", stringify!($variant), "`] (code ", stringify!($code), ").")]
                $variant,
            )*
        }

        impl MessageKind {
            /// Every kind, in code order.
            pub const ALL: &'static [MessageKind] = &[ $(Self::$variant,)* ];

            /// The wire code of this kind.
            pub const fn code(self) -> u16 {
                match self { $(Self::$variant => $code,)* }
            }

            /// The kind with this wire code, if this build knows it.
            pub const fn from_code(code: u16) -> Option<Self> {
                match code { $($code => Some(Self::$variant),)* _ => None }
            }

            /// The kind's name.
            pub const fn name(self) -> &'static str {
                match self { $(Self::$variant => stringify!($variant),)* }
            }
        }

        impl Message {
            /// This message's kind.
            pub fn kind(&self) -> MessageKind {
                match self { $(Self::$variant(_) => MessageKind::$variant,)* }
            }

            /// Encodes the payload (without the frame header).
            pub(crate) fn encode_payload(&self) -> Result<Vec<u8>, sync_log::Error> {
                match self { $(Self::$variant(p) => sync_log::codec::encode(p),)* }
            }

            /// Decodes a payload of the given kind, with an allocation bound proportional to
            /// its length (see [`limits::decode`]).
            pub(crate) fn decode_payload(
                kind: MessageKind,
                bytes: &[u8],
            ) -> Result<Self, sync_log::Error> {
                match kind { $(MessageKind::$variant => limits::decode::<$payload>(bytes).map(Self::$variant),)* }
            }
        }

        $(
            impl From<$payload> for Message {
                fn from(payload: $payload) -> Self {
                    Self::$variant(payload)
                }
            }
        )*
    };
}

messages! {
    /// Dialer → acceptor: opens the handshake.
    1 => Hello(Hello),
    /// Acceptor → dialer: the handshake succeeded.
    2 => HelloAck(HelloAck),
    /// Acceptor → dialer: no common protocol version; the connection closes.
    3 => VersionMismatch(VersionMismatch),
    /// Either direction: a request failed (code + message).
    4 => Error(ErrorMessage),
    /// Leader → follower: new entries (small ranges).
    10 => Push(Push),
    /// Leader → follower: new entries exist (large ranges); fetch them.
    11 => PushNotice(PushNotice),
    /// Follower → leader: entries after a seq, with a limit.
    12 => Fetch(Fetch),
    /// Leader → follower: the answer to a fetch.
    13 => Entries(Entries),
    /// Follower → leader: the applied position.
    14 => Ack(Ack),
    /// Leader → follower: epoch, leader and seq, periodically.
    15 => Heartbeat(Heartbeat),
    /// Any member → any member: a candidate stands for an epoch (protocol v2).
    16 => Claim(Claim),
    /// Any member → any member, periodically: reachable, epoch seen, leader followed
    /// (protocol v2).
    17 => Presence(Presence),
    /// Follower → leader: outbox changes to sequence.
    20 => Submit(Submit),
    /// Leader → follower: origin key → global seq for a submit.
    21 => SubmitAck(SubmitAck),
    /// Leader → follower: too far behind; load a snapshot.
    30 => SnapshotRequired(SnapshotRequired),
    /// Follower → leader: send the snapshot from an offset.
    31 => SnapshotFetch(SnapshotFetch),
    /// Leader → follower: one piece of the snapshot stream.
    32 => SnapshotChunk(SnapshotChunk),
    /// Leader → follower: the snapshot stream is complete.
    33 => SnapshotEnd(SnapshotEnd),
    /// Winner → peer: the two logs diverged at a seq.
    40 => Divergence(Divergence),
    /// Either direction: liveness probe.
    50 => Ping(Ping),
    /// Either direction: the answer to a ping.
    51 => Pong(Pong),
}

impl MessageKind {
    /// Whether this kind belongs to the handshake alone (`Hello`, `HelloAck`,
    /// `VersionMismatch`). A session refuses to send one, and closes with
    /// [`ErrorCode::PROTOCOL_ERROR`] when the peer sends one after the handshake.
    ///
    /// ```
    /// use sync_proto::MessageKind;
    /// assert!(MessageKind::Hello.is_handshake_only());
    /// assert!(!MessageKind::Error.is_handshake_only());
    /// ```
    pub const fn is_handshake_only(self) -> bool {
        matches!(self, Self::Hello | Self::HelloAck | Self::VersionMismatch)
    }

    /// The first protocol version that knows this kind. A session refuses to send a kind
    /// newer than its negotiated version ([`ProtoError::NotAllowed`](crate::ProtoError)),
    /// and closes with [`ErrorCode::PROTOCOL_ERROR`] when the peer sends one.
    ///
    /// ```
    /// use sync_proto::{MessageKind, ProtocolVersion};
    /// assert_eq!(MessageKind::Heartbeat.since(), ProtocolVersion(1));
    /// assert_eq!(MessageKind::Claim.since(), ProtocolVersion(2));
    /// ```
    pub const fn since(self) -> ProtocolVersion {
        match self {
            Self::Claim | Self::Presence => ProtocolVersion(2),
            _ => ProtocolVersion(1),
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl Divergence {
    /// Whether the notice is well formed: same seq, different checksums.
    pub fn is_consistent(&self) -> bool {
        self.yours.seq == self.ours.seq && self.yours.checksum != self.ours.checksum
    }
}
