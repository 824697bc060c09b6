//! Golden frames: the wire format, frozen (docs/protocol.md, "Value types" and "Golden frames").
//!
//! `tests/golden/frames.json` holds test vectors: a message's values, in the JSON conventions
//! the spec states, and the hex of its whole frame. The tests here check that
//!
//! - encoding the recorded values gives exactly the recorded bytes, and decoding the bytes
//!   gives back the values;
//! - the file is the one the [`cases`] below produce, covers every message kind, every
//!   `ChangeType` variant, every varint width, both booleans, empty and non-empty lists,
//!   strings and byte strings, and records the protocol version this build speaks;
//! - a decoder written from the spec alone — the layout lines of docs/protocol.md, parsed
//!   here, and the byte rules stated there, with no bincode and no sync-proto types —
//!   decodes every golden frame to the recorded values, and refuses (as the real decoder
//!   does) every encoding the spec says is refused.
//!
//! Changing the bytes of a message is a wire-format change: bump the protocol version, then
//! regenerate on purpose with `GOLDEN_BLESS=1 cargo test -p sync-proto --test golden`.
//! `GOLDEN_BLESS=1` refuses to change the bytes of an existing vector while the version is
//! unchanged; `GOLDEN_BLESS=force` does it anyway (for edits to the test values themselves).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;
use sync_log::{
    Change, ChangeType, Checksum, DeviceId, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Position,
    Seq,
};
use sync_proto::frame::{self, FrameConfig};
use sync_proto::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The cases: the values the golden file records.
// ---------------------------------------------------------------------------------------------

const LIBRARY: u128 = 0x0193a4b2_7c1e_7d3f_9a5b_1c2d3e4f5a6b;
const DEVICE_A: u128 = 0x0193a4b2_8000_7000_8000_00000000000a;
const DEVICE_B: u128 = 0x0193a4b2_8000_7000_8000_00000000000b;
const RECORD: u128 = 0x0193a4b2_9999_7abc_8def_0123456789ab;
/// 2025-12-01T12:00:00Z in milliseconds: a realistic clock reading (needs the `u64` varint).
const NOW_MS: u64 = 1_764_590_400_000;

fn library() -> LibraryId {
    LibraryId(Uuid::from_u128(LIBRARY))
}

fn device_a() -> DeviceId {
    DeviceId(Uuid::from_u128(DEVICE_A))
}

fn device_b() -> DeviceId {
    DeviceId(Uuid::from_u128(DEVICE_B))
}

/// A recognisable, deterministic checksum.
fn sum(seed: u8) -> Checksum {
    Checksum(std::array::from_fn(|i| {
        seed.wrapping_mul(37).wrapping_add((i as u8).wrapping_mul(11))
    }))
}

fn change(
    origin_seq: u64,
    change: ChangeType,
    version: u64,
    model: &str,
    payload: &[u8],
) -> Change {
    Change {
        origin: OriginKey { device: device_a(), seq: origin_seq },
        hlc: Hlc::new(NOW_MS + origin_seq, origin_seq as u16),
        model: model.to_string(),
        record: Uuid::from_u128(RECORD + u128::from(origin_seq)),
        change,
        version,
        payload: payload.to_vec(),
    }
}

/// Log entries `first..` with real running checksums, starting after `prev`.
fn chain(first: u64, epoch: u64, prev: Checksum, changes: Vec<Change>) -> Vec<LogEntry> {
    let mut prev = prev;
    let mut seq = Seq(first);
    changes
        .into_iter()
        .map(|change| {
            let checksum = LogEntry::chain(&prev, seq, Epoch(epoch), &change);
            let entry = LogEntry { seq, epoch: Epoch(epoch), change, checksum };
            prev = checksum;
            seq = seq.next();
            entry
        })
        .collect()
}

/// Every golden case: a name and a message. The golden file is exactly these, encoded.
fn cases() -> Vec<(&'static str, Message)> {
    let pos = |seq: u64, seed: u8| Position { seq: Seq(seq), checksum: sum(seed) };
    let snapshot = pos(1200, 5);
    vec![
        (
            "hello",
            Hello {
                versions: VersionRange::new(1, 3),
                library: library(),
                device: device_a(),
                epoch: Epoch(7),
                position: pos(1000, 1),
                models: vec!["Tag".into(), "Location".into(), "UserMetadata".into()],
            }
            .into(),
        ),
        (
            "hello/empty-log",
            Hello {
                versions: VersionRange::new(1, 1),
                library: library(),
                device: device_a(),
                epoch: Epoch(0),
                position: Position::default(),
                models: vec![],
            }
            .into(),
        ),
        (
            "hello-ack",
            HelloAck {
                version: ProtocolVersion(1),
                library: library(),
                device: device_b(),
                epoch: Epoch(300),
                position: pos(70_000, 2),
                models: vec!["Tag".into(), "Entry".into()],
            }
            .into(),
        ),
        (
            "version-mismatch",
            VersionMismatch {
                dialer: VersionRange::new(1, 1),
                acceptor: VersionRange::new(251, u16::MAX),
            }
            .into(),
        ),
        (
            "error",
            ErrorMessage {
                code: ErrorCode::PROTOCOL_ERROR,
                message: "Fetch before the handshake".into(),
            }
            .into(),
        ),
        (
            "error/unknown-code-utf8",
            ErrorMessage { code: ErrorCode(70_000), message: "déjà vu ✓".into() }.into(),
        ),
        (
            "push",
            Push {
                epoch: Epoch(7),
                entries: chain(
                    251,
                    7,
                    sum(3),
                    vec![
                        change(1, ChangeType::Insert, 1, "Tag", b"\x03red\x00"),
                        change(2, ChangeType::Update, 2, "Tag", b"\x04blue\x01"),
                    ],
                ),
            }
            .into(),
        ),
        (
            "push-notice",
            PushNotice { epoch: Epoch(7), first: Seq(253), latest: Seq(1 << 32) }.into(),
        ),
        ("fetch", Fetch { after: Seq(40), limit: 500 }.into()),
        ("fetch/widest", Fetch { after: Seq(u64::MAX), limit: u32::MAX }.into()),
        (
            "entries",
            Entries {
                entries: chain(
                    41,
                    6,
                    sum(4),
                    vec![
                        change(3, ChangeType::Delete, 3, "Tag", b""),
                        change(4, ChangeType::Bulk, 1, "Entry", b"index /photos 2f1c9a"),
                    ],
                ),
                latest: Seq(90),
                more: true,
            }
            .into(),
        ),
        ("entries/empty", Entries { entries: vec![], latest: Seq(0), more: false }.into()),
        ("ack", Ack { applied: pos(93, 6) }.into()),
        (
            "heartbeat",
            Heartbeat { epoch: Epoch(7), leader: device_b(), seq: Seq(u64::from(u16::MAX)) }.into(),
        ),
        (
            "claim",
            Claim { epoch: Epoch(300), device: device_a(), position: Seq(5_000_000_000) }.into(),
        ),
        ("claim/empty-log", Claim { epoch: Epoch(1), device: device_b(), position: Seq(0) }.into()),
        (
            "presence",
            Presence {
                device: device_a(),
                epoch: Epoch(70_000),
                follows: Follows::Leader { epoch: Epoch(251), leader: device_b() },
            }
            .into(),
        ),
        (
            "presence/follows-nobody",
            Presence { device: device_b(), epoch: Epoch(7), follows: Follows::Nobody }.into(),
        ),
        (
            "submit",
            Submit {
                changes: vec![
                    change(1, ChangeType::Insert, 1, "Location", b"\x01/home/ana"),
                    change(2, ChangeType::Update, 2, "Location", b"\x01/home/ana/photos"),
                    change(250, ChangeType::Delete, 3, "Location", b""),
                    change(251, ChangeType::Bulk, 1, "Entry", b"rescan"),
                ],
            }
            .into(),
        ),
        (
            "submit-ack",
            SubmitAck {
                epoch: Epoch(7),
                assigned: vec![
                    Assigned { origin: OriginKey { device: device_a(), seq: 1 }, seq: Seq(94) },
                    Assigned { origin: OriginKey { device: device_a(), seq: 2 }, seq: Seq(95) },
                ],
            }
            .into(),
        ),
        (
            "snapshot-required",
            SnapshotRequired {
                compacted_through: Seq(1000),
                snapshot,
                total_bytes: 8 * 1024 * 1024,
            }
            .into(),
        ),
        ("snapshot-fetch", SnapshotFetch { snapshot, offset: 0 }.into()),
        ("snapshot-fetch/resume", SnapshotFetch { snapshot, offset: 5_000_000_000 }.into()),
        (
            "snapshot-chunk",
            SnapshotChunk {
                offset: 65_536,
                data: Bytes::from((0..300u32).map(|i| (i * 13 % 256) as u8).collect::<Vec<_>>()),
            }
            .into(),
        ),
        (
            "snapshot-end",
            SnapshotEnd { snapshot, total_bytes: 8 * 1024 * 1024, digest: sum(9).0 }.into(),
        ),
        (
            "divergence",
            Divergence { epoch: Epoch(8), leader: device_b(), yours: pos(57, 7), ours: pos(57, 8) }
                .into(),
        ),
        ("ping", Ping { nonce: u64::MAX, payload: Bytes::from_static(b"hi") }.into()),
        ("ping/empty", Ping { nonce: 0, payload: Bytes::new() }.into()),
        ("pong", Pong { nonce: u64::MAX, payload: Bytes::from_static(b"hi") }.into()),
    ]
}

// ---------------------------------------------------------------------------------------------
// The JSON form of the values (the conventions docs/protocol.md states).
// ---------------------------------------------------------------------------------------------

mod json {
    //! serde "remote" definitions giving each message the JSON form of the golden file. A
    //! field added to or removed from a message breaks the build here, so the golden file
    //! cannot silently miss it.

    use bytes::Bytes;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use sync_log::{Change, ChangeType, Checksum, DeviceId, Epoch, Hlc, LibraryId, LogEntry};
    use sync_log::{OriginKey, Position, Seq};
    use sync_proto::*;
    use uuid::Uuid;

    /// Values written as decimal strings (`u64`: JSON readers often lose precision above 2^53).
    pub(crate) trait Decimal: Sized {
        fn get(&self) -> u64;
        fn make(v: u64) -> Self;
    }

    macro_rules! decimal {
        ($($ty:ty => |$v:ident| $get:expr, $make:expr;)*) => {
            $(impl Decimal for $ty {
                fn get(&self) -> u64 { let $v = self; $get }
                fn make($v: u64) -> Self { $make }
            })*
        };
    }

    decimal! {
        u64 => |v| *v, v;
        Seq => |v| v.0, Seq(v);
        Epoch => |v| v.0, Epoch(v);
        Hlc => |v| v.0, Hlc(v);
    }

    pub(crate) mod dec {
        use super::*;

        pub(crate) fn serialize<T: Decimal, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&v.get())
        }

        pub(crate) fn deserialize<'de, T: Decimal, D: Deserializer<'de>>(
            d: D,
        ) -> Result<T, D::Error> {
            let s = String::deserialize(d)?;
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(D::Error::custom(format!("not a decimal u64: {s:?}")));
            }
            s.parse().map(T::make).map_err(D::Error::custom)
        }
    }

    /// Values written as lowercase hex strings.
    pub(crate) trait HexBytes: Sized {
        fn bytes(&self) -> &[u8];
        fn make(v: Vec<u8>) -> Result<Self, String>;
    }

    impl HexBytes for Vec<u8> {
        fn bytes(&self) -> &[u8] {
            self
        }
        fn make(v: Vec<u8>) -> Result<Self, String> {
            Ok(v)
        }
    }

    impl HexBytes for Bytes {
        fn bytes(&self) -> &[u8] {
            self
        }
        fn make(v: Vec<u8>) -> Result<Self, String> {
            Ok(Bytes::from(v))
        }
    }

    impl HexBytes for [u8; 32] {
        fn bytes(&self) -> &[u8] {
            self
        }
        fn make(v: Vec<u8>) -> Result<Self, String> {
            let len = v.len();
            v.try_into().map_err(|_| format!("expected 32 bytes, got {len}"))
        }
    }

    impl HexBytes for Checksum {
        fn bytes(&self) -> &[u8] {
            &self.0
        }
        fn make(v: Vec<u8>) -> Result<Self, String> {
            <[u8; 32]>::make(v).map(Checksum)
        }
    }

    pub(crate) fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn from_hex(s: &str) -> Result<Vec<u8>, String> {
        if !s.len().is_multiple_of(2) {
            return Err(format!("odd-length hex: {s:?}"));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(format!("not lowercase hex: {s:?}")),
        };
        s.as_bytes().chunks(2).map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?)).collect()
    }

    pub(crate) mod hex {
        use super::*;

        pub(crate) fn serialize<T: HexBytes, S: Serializer>(
            v: &T,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_str(&to_hex(v.bytes()))
        }

        pub(crate) fn deserialize<'de, T: HexBytes, D: Deserializer<'de>>(
            d: D,
        ) -> Result<T, D::Error> {
            let s = String::deserialize(d)?;
            T::make(from_hex(&s).map_err(D::Error::custom)?).map_err(D::Error::custom)
        }
    }

    /// `with` modules for lists of types that have a remote definition.
    macro_rules! list_of {
        ($module:ident, $ty:ty, $def:ident) => {
            pub(crate) mod $module {
                use super::*;

                pub(crate) fn serialize<S: Serializer>(
                    items: &[$ty],
                    s: S,
                ) -> Result<S::Ok, S::Error> {
                    #[derive(Serialize)]
                    struct One<'a>(#[serde(serialize_with = "one")] &'a $ty);
                    fn one<S: Serializer>(v: &&$ty, s: S) -> Result<S::Ok, S::Error> {
                        $def::serialize(v, s)
                    }
                    s.collect_seq(items.iter().map(One))
                }

                pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
                    d: D,
                ) -> Result<Vec<$ty>, D::Error> {
                    #[derive(Deserialize)]
                    struct One(#[serde(deserialize_with = "one")] $ty);
                    fn one<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                        $def::deserialize(d)
                    }
                    Ok(Vec::<One>::deserialize(d)?.into_iter().map(|One(v)| v).collect())
                }
            }
        };
    }

    list_of!(entries, LogEntry, LogEntryDef);
    list_of!(changes, Change, ChangeDef);
    list_of!(assigned, Assigned, AssignedDef);

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "ProtocolVersion")]
    pub(crate) struct ProtocolVersionDef(pub(crate) u16);

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "ErrorCode")]
    pub(crate) struct ErrorCodeDef(pub(crate) u32);

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "VersionRange", deny_unknown_fields)]
    pub(crate) struct VersionRangeDef {
        #[serde(with = "ProtocolVersionDef")]
        min: ProtocolVersion,
        #[serde(with = "ProtocolVersionDef")]
        max: ProtocolVersion,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Position", deny_unknown_fields)]
    pub(crate) struct PositionDef {
        #[serde(with = "dec")]
        seq: Seq,
        #[serde(with = "hex")]
        checksum: Checksum,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "OriginKey", deny_unknown_fields)]
    pub(crate) struct OriginKeyDef {
        device: DeviceId,
        #[serde(with = "dec")]
        seq: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Change", deny_unknown_fields)]
    pub(crate) struct ChangeDef {
        #[serde(with = "OriginKeyDef")]
        origin: OriginKey,
        #[serde(with = "dec")]
        hlc: Hlc,
        model: String,
        record: Uuid,
        change: ChangeType,
        #[serde(with = "dec")]
        version: u64,
        #[serde(with = "hex")]
        payload: Vec<u8>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "LogEntry", deny_unknown_fields)]
    pub(crate) struct LogEntryDef {
        #[serde(with = "dec")]
        seq: Seq,
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "ChangeDef")]
        change: Change,
        #[serde(with = "hex")]
        checksum: Checksum,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Assigned", deny_unknown_fields)]
    pub(crate) struct AssignedDef {
        #[serde(with = "OriginKeyDef")]
        origin: OriginKey,
        #[serde(with = "dec")]
        seq: Seq,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Hello", deny_unknown_fields)]
    pub(crate) struct HelloDef {
        #[serde(with = "VersionRangeDef")]
        versions: VersionRange,
        library: LibraryId,
        device: DeviceId,
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "PositionDef")]
        position: Position,
        models: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "HelloAck", deny_unknown_fields)]
    pub(crate) struct HelloAckDef {
        #[serde(with = "ProtocolVersionDef")]
        version: ProtocolVersion,
        library: LibraryId,
        device: DeviceId,
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "PositionDef")]
        position: Position,
        models: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "VersionMismatch", deny_unknown_fields)]
    pub(crate) struct VersionMismatchDef {
        #[serde(with = "VersionRangeDef")]
        dialer: VersionRange,
        #[serde(with = "VersionRangeDef")]
        acceptor: VersionRange,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "ErrorMessage", deny_unknown_fields)]
    pub(crate) struct ErrorMessageDef {
        #[serde(with = "ErrorCodeDef")]
        code: ErrorCode,
        message: String,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Push", deny_unknown_fields)]
    pub(crate) struct PushDef {
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "entries")]
        entries: Vec<LogEntry>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "PushNotice", deny_unknown_fields)]
    pub(crate) struct PushNoticeDef {
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "dec")]
        first: Seq,
        #[serde(with = "dec")]
        latest: Seq,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Fetch", deny_unknown_fields)]
    pub(crate) struct FetchDef {
        #[serde(with = "dec")]
        after: Seq,
        limit: u32,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Entries", deny_unknown_fields)]
    pub(crate) struct EntriesDef {
        #[serde(with = "entries")]
        entries: Vec<LogEntry>,
        #[serde(with = "dec")]
        latest: Seq,
        more: bool,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Ack", deny_unknown_fields)]
    pub(crate) struct AckDef {
        #[serde(with = "PositionDef")]
        applied: Position,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Heartbeat", deny_unknown_fields)]
    pub(crate) struct HeartbeatDef {
        #[serde(with = "dec")]
        epoch: Epoch,
        leader: DeviceId,
        #[serde(with = "dec")]
        seq: Seq,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Claim", deny_unknown_fields)]
    pub(crate) struct ClaimDef {
        #[serde(with = "dec")]
        epoch: Epoch,
        device: DeviceId,
        #[serde(with = "dec")]
        position: Seq,
    }

    /// `Follows` as the spec lays it out: a flag, then a term that is all zeros when the flag
    /// is off.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FollowsJson {
        following: bool,
        #[serde(with = "dec")]
        epoch: Epoch,
        leader: DeviceId,
    }

    pub(crate) mod follows {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(v: &Follows, s: S) -> Result<S::Ok, S::Error> {
            match *v {
                Follows::Nobody => {
                    FollowsJson { following: false, epoch: Epoch(0), leader: DeviceId(Uuid::nil()) }
                }
                Follows::Leader { epoch, leader } => FollowsJson { following: true, epoch, leader },
            }
            .serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Follows, D::Error> {
            match FollowsJson::deserialize(d)? {
                FollowsJson { following: true, epoch, leader } => {
                    Ok(Follows::Leader { epoch, leader })
                }
                FollowsJson { following: false, epoch: Epoch(0), leader } if leader.0.is_nil() => {
                    Ok(Follows::Nobody)
                }
                _ => Err(D::Error::custom("follows no leader but names a term")),
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Presence", deny_unknown_fields)]
    pub(crate) struct PresenceDef {
        device: DeviceId,
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "follows")]
        follows: Follows,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Submit", deny_unknown_fields)]
    pub(crate) struct SubmitDef {
        #[serde(with = "changes")]
        changes: Vec<Change>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "SubmitAck", deny_unknown_fields)]
    pub(crate) struct SubmitAckDef {
        #[serde(with = "dec")]
        epoch: Epoch,
        #[serde(with = "assigned")]
        assigned: Vec<Assigned>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "SnapshotRequired", deny_unknown_fields)]
    pub(crate) struct SnapshotRequiredDef {
        #[serde(with = "dec")]
        compacted_through: Seq,
        #[serde(with = "PositionDef")]
        snapshot: Position,
        #[serde(with = "dec")]
        total_bytes: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "SnapshotFetch", deny_unknown_fields)]
    pub(crate) struct SnapshotFetchDef {
        #[serde(with = "PositionDef")]
        snapshot: Position,
        #[serde(with = "dec")]
        offset: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "SnapshotChunk", deny_unknown_fields)]
    pub(crate) struct SnapshotChunkDef {
        #[serde(with = "dec")]
        offset: u64,
        #[serde(with = "hex")]
        data: Bytes,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "SnapshotEnd", deny_unknown_fields)]
    pub(crate) struct SnapshotEndDef {
        #[serde(with = "PositionDef")]
        snapshot: Position,
        #[serde(with = "dec")]
        total_bytes: u64,
        #[serde(with = "hex")]
        digest: [u8; 32],
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Divergence", deny_unknown_fields)]
    pub(crate) struct DivergenceDef {
        #[serde(with = "dec")]
        epoch: Epoch,
        leader: DeviceId,
        #[serde(with = "PositionDef")]
        yours: Position,
        #[serde(with = "PositionDef")]
        ours: Position,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Ping", deny_unknown_fields)]
    pub(crate) struct PingDef {
        #[serde(with = "dec")]
        nonce: u64,
        #[serde(with = "hex")]
        payload: Bytes,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Pong", deny_unknown_fields)]
    pub(crate) struct PongDef {
        #[serde(with = "dec")]
        nonce: u64,
        #[serde(with = "hex")]
        payload: Bytes,
    }

    /// A message as `"kind": name, "value": payload`.
    #[derive(Serialize, Deserialize)]
    #[serde(remote = "Message", tag = "kind", content = "value")]
    pub(crate) enum MessageDef {
        Hello(#[serde(with = "HelloDef")] Hello),
        HelloAck(#[serde(with = "HelloAckDef")] HelloAck),
        VersionMismatch(#[serde(with = "VersionMismatchDef")] VersionMismatch),
        Error(#[serde(with = "ErrorMessageDef")] ErrorMessage),
        Push(#[serde(with = "PushDef")] Push),
        PushNotice(#[serde(with = "PushNoticeDef")] PushNotice),
        Fetch(#[serde(with = "FetchDef")] Fetch),
        Entries(#[serde(with = "EntriesDef")] Entries),
        Ack(#[serde(with = "AckDef")] Ack),
        Heartbeat(#[serde(with = "HeartbeatDef")] Heartbeat),
        Claim(#[serde(with = "ClaimDef")] Claim),
        Presence(#[serde(with = "PresenceDef")] Presence),
        Submit(#[serde(with = "SubmitDef")] Submit),
        SubmitAck(#[serde(with = "SubmitAckDef")] SubmitAck),
        SnapshotRequired(#[serde(with = "SnapshotRequiredDef")] SnapshotRequired),
        SnapshotFetch(#[serde(with = "SnapshotFetchDef")] SnapshotFetch),
        SnapshotChunk(#[serde(with = "SnapshotChunkDef")] SnapshotChunk),
        SnapshotEnd(#[serde(with = "SnapshotEndDef")] SnapshotEnd),
        Divergence(#[serde(with = "DivergenceDef")] Divergence),
        Ping(#[serde(with = "PingDef")] Ping),
        Pong(#[serde(with = "PongDef")] Pong),
    }

    /// One golden vector.
    #[derive(Serialize, Deserialize)]
    pub(crate) struct Vector {
        pub(crate) name: String,
        pub(crate) code: u16,
        #[serde(flatten, with = "MessageDef")]
        pub(crate) message: Message,
        #[serde(with = "hex")]
        pub(crate) frame: Vec<u8>,
    }

    /// The golden file.
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Golden {
        pub(crate) about: String,
        pub(crate) protocol_version: u16,
        pub(crate) vectors: Vec<Vector>,
    }
}

use json::{Golden, Vector, from_hex, to_hex};

// ---------------------------------------------------------------------------------------------
// The file, and blessing it.
// ---------------------------------------------------------------------------------------------

const ABOUT: &str = "Golden frames of the sync protocol: see docs/protocol.md, 'Value types' and \
                     'Golden frames'. Generated by crates/sync-proto/tests/golden.rs; regenerate \
                     only on purpose: GOLDEN_BLESS=1 cargo test -p sync-proto --test golden.";

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/frames.json")
}

fn spec_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md")
}

fn newest_version() -> u16 {
    VersionRange::SUPPORTED.max.0
}

/// The golden file as this build would write it.
fn render() -> String {
    let vectors = cases()
        .into_iter()
        .map(|(name, message)| Vector {
            name: name.to_string(),
            code: message.kind().code(),
            frame: frame::encode_frame(&message, &FrameConfig::default()).unwrap(),
            message,
        })
        .collect();
    let golden = Golden { about: ABOUT.into(), protocol_version: newest_version(), vectors };
    serde_json::to_string_pretty(&golden).unwrap() + "\n"
}

/// Writes the golden file if `GOLDEN_BLESS` asks for it. With `GOLDEN_BLESS=1`, refuses to
/// change the bytes of an existing vector unless the protocol version changed too.
fn bless(mode: &str) {
    let path = golden_path();
    let new = render();
    if let Ok(old) = std::fs::read_to_string(&path) {
        if old == new {
            return;
        }
        if mode != "force" {
            // Read as plain JSON: the old file may not fit the new message types.
            let old: Value = serde_json::from_str(&old).expect("the old golden file is JSON");
            if old["protocol_version"].as_u64() == Some(u64::from(newest_version())) {
                let new: Value = serde_json::from_str(&new).unwrap();
                let frames = |file: &Value| -> BTreeMap<String, String> {
                    let vectors = file["vectors"].as_array().cloned().unwrap_or_default();
                    vectors
                        .iter()
                        .map(|v| (v["name"].as_str().unwrap_or("").into(), v["frame"].to_string()))
                        .collect()
                };
                let new_frames = frames(&new);
                let changed: Vec<String> = frames(&old)
                    .into_iter()
                    .filter(|(name, frame)| new_frames.get(name).is_some_and(|f| f != frame))
                    .map(|(name, _)| name)
                    .collect();
                assert!(
                    changed.is_empty(),
                    "GOLDEN_BLESS=1 would change the bytes of {changed:?} while the protocol \
                     version stays v{}: a wire-format change needs a new protocol version \
                     (VersionRange::SUPPORTED; and the ALPN if a frozen message changed). If \
                     only the test values changed, not the format, use GOLDEN_BLESS=force.",
                    newest_version()
                );
            }
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &new).unwrap();
    eprintln!("golden: wrote {}", path.display());
}

/// The golden file's text (blessed first, once, if `GOLDEN_BLESS` is set).
fn golden_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        if let Ok(mode) = std::env::var("GOLDEN_BLESS")
            && !mode.is_empty()
            && mode != "0"
        {
            bless(&mode);
        }
        std::fs::read_to_string(golden_path()).unwrap_or_else(|e| {
            panic!("{}: {e}; create it with GOLDEN_BLESS=1", golden_path().display())
        })
    })
}

fn golden() -> Golden {
    serde_json::from_str(golden_text()).unwrap_or_else(|e| {
        panic!("the golden file does not fit the messages of this build ({e}): {}", changed_hint())
    })
}

fn changed_hint() -> &'static str {
    "the wire format changed: if on purpose, bump the protocol version and regenerate with \
     GOLDEN_BLESS=1 cargo test -p sync-proto --test golden (docs/protocol.md, 'Versions')"
}

// ---------------------------------------------------------------------------------------------
// Golden frames against the real encoder and decoder.
// ---------------------------------------------------------------------------------------------

/// Encoding the recorded values of every golden vector gives exactly the recorded frame bytes.
#[test]
fn encoding_the_recorded_values_gives_exactly_the_recorded_bytes() {
    for v in golden().vectors {
        let bytes = frame::encode_frame(&v.message, &FrameConfig::default()).unwrap();
        assert_eq!(
            to_hex(&bytes),
            to_hex(&v.frame),
            "vector {:?} ({}): {}",
            v.name,
            v.message.kind(),
            changed_hint()
        );
        assert_eq!(v.code, v.message.kind().code(), "vector {:?}: recorded code", v.name);
    }
}

/// Decoding the recorded bytes of every golden vector gives back exactly the recorded values,
/// using the whole frame.
#[test]
fn decoding_the_recorded_bytes_gives_back_the_recorded_values() {
    for v in golden().vectors {
        let (message, used) = frame::decode_frame(&v.frame, &FrameConfig::default())
            .unwrap_or_else(|e| panic!("vector {:?}: {e}; {}", v.name, changed_hint()));
        assert_eq!(used, v.frame.len(), "vector {:?} uses the whole frame", v.name);
        assert_eq!(message, v.message, "vector {:?}: {}", v.name, changed_hint());
    }
}

/// The golden file is exactly what the cases of this test produce, for the protocol version
/// this build speaks: a case added, removed or changed, or a version bump, shows up as a
/// failure until the file is regenerated on purpose.
#[test]
fn the_golden_file_is_the_one_the_cases_produce() {
    let file = golden();
    assert_eq!(
        file.protocol_version,
        newest_version(),
        "the golden frames are those of protocol v{}; this build speaks up to v{}: regenerate \
         them (GOLDEN_BLESS=1) with the version bump",
        file.protocol_version,
        newest_version()
    );
    let recorded: Vec<(&str, &Message)> =
        file.vectors.iter().map(|v| (v.name.as_str(), &v.message)).collect();
    let cases = cases();
    let expected: Vec<(&str, &Message)> = cases.iter().map(|(n, m)| (*n, m)).collect();
    assert_eq!(recorded, expected, "the golden file's vectors are not the test's cases");
    assert!(golden_text() == render(), "the golden file is not as generated: {}", changed_hint());
}

/// Every message kind this build knows has at least one golden vector, and names are unique.
#[test]
fn every_message_kind_has_a_golden_vector() {
    let file = golden();
    let kinds: BTreeSet<u16> = file.vectors.iter().map(|v| v.message.kind().code()).collect();
    for kind in MessageKind::ALL {
        assert!(kinds.contains(&kind.code()), "no golden vector for {kind}");
    }
    let names: BTreeSet<&str> = file.vectors.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names.len(), file.vectors.len(), "vector names are unique");
}

// ---------------------------------------------------------------------------------------------
// A decoder written from the spec alone.
// ---------------------------------------------------------------------------------------------

mod spec {
    //! Parses the layout lines of docs/protocol.md and decodes frames by walking their bytes
    //! with the spec's byte rules. Uses no bincode, serde derive or sync-proto type: only what
    //! the document says. Produces values in the golden file's JSON conventions.

    use std::collections::BTreeMap;

    use serde_json::{Map, Value, json};

    /// The nil UUID in the golden file's form.
    const NIL: &str = "00000000-0000-0000-0000-000000000000";

    /// A type of the layout language.
    #[derive(Clone, Debug)]
    pub(crate) enum Ty {
        U8,
        U16,
        U32,
        U64,
        Bool,
        Uuid,
        Bytes,
        Str,
        Array(Box<Ty>, usize),
        List(Box<Ty>),
        Struct(Vec<(String, Ty)>),
        Enum(Vec<(u32, String)>),
        Named(String),
    }

    /// The layouts of docs/protocol.md.
    #[derive(Debug, Default)]
    pub(crate) struct Spec {
        pub(crate) types: BTreeMap<String, Ty>,
        pub(crate) messages: BTreeMap<u16, (String, Ty)>,
    }

    /// The lines between the layout markers.
    pub(crate) fn layout_lines(doc: &str) -> Vec<&str> {
        let begin = doc.find("<!-- layouts:begin -->").expect("layouts:begin marker in the spec");
        let end = doc.find("<!-- layouts:end -->").expect("layouts:end marker in the spec");
        doc[begin..end]
            .lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("```"))
            .collect()
    }

    fn tokens(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        for c in s.chars() {
            if c.is_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if "{}[],:;=".contains(c) {
                out.push(c.to_string());
            } else if !c.is_whitespace() {
                panic!("unexpected character {c:?} in layout {s:?}");
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out
    }

    struct Parser {
        toks: Vec<String>,
        at: usize,
    }

    impl Parser {
        fn next(&mut self) -> String {
            let t = self.toks.get(self.at).cloned().unwrap_or_default();
            self.at += 1;
            t
        }

        fn peek(&self) -> &str {
            self.toks.get(self.at).map(String::as_str).unwrap_or("")
        }

        fn expect(&mut self, want: &str) {
            let got = self.next();
            assert_eq!(got, want, "layout: expected {want:?}, got {got:?} in {:?}", self.toks);
        }

        fn ty(&mut self) -> Ty {
            match self.next().as_str() {
                "{" => {
                    let mut fields = Vec::new();
                    while self.peek() != "}" {
                        let name = self.next();
                        self.expect(":");
                        fields.push((name, self.ty()));
                        if self.peek() == "," {
                            self.next();
                        }
                    }
                    self.expect("}");
                    Ty::Struct(fields)
                }
                "enum" => {
                    self.expect("{");
                    let mut variants = Vec::new();
                    while self.peek() != "}" {
                        let index: u32 = self.next().parse().expect("variant index");
                        variants.push((index, self.next()));
                        if self.peek() == "," {
                            self.next();
                        }
                    }
                    self.expect("}");
                    Ty::Enum(variants)
                }
                "[" => {
                    let inner = self.ty();
                    let ty = if self.peek() == ";" {
                        self.next();
                        Ty::Array(Box::new(inner), self.next().parse().expect("array length"))
                    } else {
                        Ty::List(Box::new(inner))
                    };
                    self.expect("]");
                    ty
                }
                "u8" => Ty::U8,
                "u16" => Ty::U16,
                "u32" => Ty::U32,
                "u64" => Ty::U64,
                "bool" => Ty::Bool,
                "uuid" => Ty::Uuid,
                "bytes" => Ty::Bytes,
                "string" => Ty::Str,
                name => {
                    assert!(
                        name.chars().next().is_some_and(char::is_uppercase),
                        "layout: unknown type {name:?}"
                    );
                    Ty::Named(name.to_string())
                }
            }
        }
    }

    /// Parses the layout lines; every named type must be defined.
    pub(crate) fn parse(doc: &str) -> Spec {
        let mut spec = Spec::default();
        for line in layout_lines(doc) {
            let mut p = Parser { toks: tokens(line), at: 0 };
            let code = p.peek().parse::<u16>().ok();
            if code.is_some() {
                p.next();
            }
            let name = p.next();
            p.expect("=");
            let ty = p.ty();
            assert_eq!(p.at, p.toks.len(), "layout: trailing tokens in {line:?}");
            match code {
                Some(code) => {
                    let old = spec.messages.insert(code, (name, ty));
                    assert!(old.is_none(), "layout: kind code {code} twice");
                }
                None => {
                    let old = spec.types.insert(name.clone(), ty);
                    assert!(old.is_none(), "layout: type {name} twice");
                }
            }
        }
        for (_, ty) in spec.messages.values() {
            spec.check_names(ty);
        }
        for ty in spec.types.values() {
            spec.check_names(ty);
        }
        spec
    }

    impl Spec {
        fn check_names(&self, ty: &Ty) {
            match ty {
                Ty::Named(n) => assert!(self.types.contains_key(n), "layout: {n} is not defined"),
                Ty::Array(t, _) | Ty::List(t) => self.check_names(t),
                Ty::Struct(fields) => fields.iter().for_each(|(_, t)| self.check_names(t)),
                _ => {}
            }
        }

        /// Decodes one whole frame: its kind's name and code, its value, and what was read.
        pub(crate) fn decode_frame(&self, frame: &[u8]) -> Result<Decoded, String> {
            let header = frame.get(..6).ok_or("frame shorter than its header")?;
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len < 2 || frame.len() != 4 + len {
                return Err(format!("length prefix {len} for a frame of {} bytes", frame.len()));
            }
            let code = u16::from_be_bytes([header[4], header[5]]);
            let (name, ty) = self.messages.get(&code).ok_or(format!("unknown kind {code}"))?;
            let mut walk = Walker { spec: self, bytes: frame, at: 6, reads: Vec::new() };
            let value = walk.value(ty, "")?;
            if walk.at != frame.len() {
                return Err(format!("{} trailing bytes", frame.len() - walk.at));
            }
            Ok(Decoded { code, name: name.clone(), value, reads: walk.reads })
        }
    }

    /// A decoded frame.
    pub(crate) struct Decoded {
        pub(crate) code: u16,
        pub(crate) name: String,
        pub(crate) value: Value,
        /// Every primitive read, in order.
        pub(crate) reads: Vec<Read>,
    }

    /// One primitive read from the frame: where, what, and with which varint marker.
    #[derive(Clone, Debug)]
    pub(crate) struct Read {
        /// Field path, e.g. `entries.0.change.origin.seq` (a list's count is `entries.len`).
        pub(crate) path: String,
        /// The primitive: `u16`, `u32`, `u64`, `len`, `bool`, `enum ChangeType`…
        pub(crate) what: String,
        pub(crate) start: usize,
        pub(crate) end: usize,
        /// The first byte, for varints.
        pub(crate) marker: Option<u8>,
        pub(crate) value: Value,
    }

    struct Walker<'a> {
        spec: &'a Spec,
        bytes: &'a [u8],
        at: usize,
        reads: Vec<Read>,
    }

    fn join(path: &str, part: &str) -> String {
        if path.is_empty() { part.to_string() } else { format!("{path}.{part}") }
    }

    impl Walker<'_> {
        fn take(&mut self, n: usize, path: &str) -> Result<&[u8], String> {
            let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
            let end = end.ok_or(format!("{path}: {n} bytes wanted past the end of the frame"))?;
            let out = &self.bytes[self.at..end];
            self.at = end;
            Ok(out)
        }

        fn le(bytes: &[u8]) -> u64 {
            bytes.iter().rev().fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        }

        /// A varint whose widest allowed marker is `widest` (251, 252 or 253).
        fn varint(&mut self, path: &str, what: &str, widest: u8) -> Result<u64, String> {
            let start = self.at;
            let marker = self.take(1, path)?[0];
            let value = match marker {
                0..=250 => u64::from(marker),
                251..=253 if marker <= widest => {
                    let n = 1usize << (marker - 250);
                    Self::le(self.take(n, path)?)
                }
                _ => return Err(format!("{path}: marker {marker} not allowed in a {what}")),
            };
            let json = if what == "u64" { json!(value.to_string()) } else { json!(value) };
            self.record(path, what, start, Some(marker), json);
            Ok(value)
        }

        fn record(&mut self, path: &str, what: &str, start: usize, marker: Option<u8>, v: Value) {
            let read = Read {
                path: path.to_string(),
                what: what.to_string(),
                start,
                end: self.at,
                marker,
                value: v,
            };
            self.reads.push(read);
        }

        fn len(&mut self, path: &str) -> Result<usize, String> {
            let n = self.varint(&join(path, "len"), "len", 253)?;
            usize::try_from(n).map_err(|_| format!("{path}: length {n}"))
        }

        fn value(&mut self, ty: &Ty, path: &str) -> Result<Value, String> {
            Ok(match ty {
                Ty::U8 => json!(self.take(1, path)?[0]),
                Ty::U16 => json!(self.varint(path, "u16", 251)?),
                Ty::U32 => json!(self.varint(path, "u32", 252)?),
                Ty::U64 => json!(self.varint(path, "u64", 253)?.to_string()),
                Ty::Bool => {
                    let start = self.at;
                    let v = match self.take(1, path)?[0] {
                        0 => false,
                        1 => true,
                        b => return Err(format!("{path}: bool byte {b}")),
                    };
                    self.record(path, "bool", start, None, json!(v));
                    json!(v)
                }
                Ty::Uuid => {
                    let n = self.len(path)?;
                    if n != 16 {
                        return Err(format!("{path}: uuid of {n} bytes"));
                    }
                    let b = self.take(16, path)?;
                    let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
                    json!(format!(
                        "{}-{}-{}-{}-{}",
                        &hex[..8],
                        &hex[8..12],
                        &hex[12..16],
                        &hex[16..20],
                        &hex[20..]
                    ))
                }
                Ty::Bytes => {
                    let n = self.len(path)?;
                    json!(
                        self.take(n, path)?.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    )
                }
                Ty::Str => {
                    let n = self.len(path)?;
                    let start = self.at;
                    let s = std::str::from_utf8(self.take(n, path)?)
                        .map_err(|e| format!("{path}: {e}"))?
                        .to_string();
                    self.record(path, "string", start, None, json!(s));
                    json!(s)
                }
                Ty::Array(inner, n) => match **inner {
                    Ty::U8 => {
                        let b = self.take(*n, path)?;
                        json!(b.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    }
                    _ => Value::Array(
                        (0..*n)
                            .map(|i| self.value(inner, &join(path, &i.to_string())))
                            .collect::<Result<_, _>>()?,
                    ),
                },
                Ty::List(inner) => {
                    let n = self.len(path)?;
                    // Elements take at least one byte: a count beyond the bytes left is a lie.
                    if n > self.bytes.len() - self.at {
                        return Err(format!("{path}: {n} elements in fewer bytes"));
                    }
                    Value::Array(
                        (0..n)
                            .map(|i| self.value(inner, &join(path, &i.to_string())))
                            .collect::<Result<_, _>>()?,
                    )
                }
                Ty::Struct(fields) => {
                    let mut map = Map::new();
                    for (name, ty) in fields {
                        map.insert(name.clone(), self.value(ty, &join(path, name))?);
                    }
                    Value::Object(map)
                }
                Ty::Enum(variants) => {
                    let start = self.at;
                    let index = self.varint(path, "u32", 252)?;
                    let name = variants
                        .iter()
                        .find(|(i, _)| u64::from(*i) == index)
                        .map(|(_, n)| n.clone())
                        .ok_or(format!("{path}: no variant {index}"))?;
                    self.record(path, "enum", start, None, json!(name));
                    json!(name)
                }
                Ty::Named(name) => {
                    let ty = &self.spec.types[name];
                    let v = self.value(ty, path)?;
                    // Byte rule 12: a `Follows` that follows nobody has exactly one encoding.
                    if name == "Follows"
                        && v["following"] == json!(false)
                        && (v["epoch"] != json!("0") || v["leader"] != json!(NIL))
                    {
                        return Err(format!("{path}: follows nobody but names a term"));
                    }
                    if let Some(last) = self.reads.last_mut()
                        && matches!(ty, Ty::Enum(_))
                    {
                        last.what = format!("enum {name}");
                    }
                    v
                }
            })
        }
    }
}

fn the_spec() -> spec::Spec {
    let doc = std::fs::read_to_string(spec_path()).expect("docs/protocol.md");
    spec::parse(&doc)
}

/// The layout lines of docs/protocol.md name every message kind this build knows, with the
/// right code and name, and no other.
#[test]
fn the_spec_lays_out_every_message_kind() {
    let spec = the_spec();
    let in_spec: BTreeMap<u16, &str> =
        spec.messages.iter().map(|(c, (n, _))| (*c, n.as_str())).collect();
    let in_code: BTreeMap<u16, &str> =
        MessageKind::ALL.iter().map(|k| (k.code(), k.name())).collect();
    assert_eq!(in_spec, in_code, "docs/protocol.md layouts versus MessageKind");
}

/// Decodes every golden frame with `spec` and compares with the recorded kind and values.
fn spec_reads_the_golden_frames(spec: &spec::Spec) -> Result<usize, String> {
    let file: Value = serde_json::from_str(golden_text()).unwrap();
    let vectors = file["vectors"].as_array().expect("vectors");
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let frame = from_hex(v["frame"].as_str().unwrap()).unwrap();
        let decoded = spec
            .decode_frame(&frame)
            .map_err(|e| format!("vector {name:?}: the spec's layouts cannot read it: {e}"))?;
        if Some(u64::from(decoded.code)) != v["code"].as_u64()
            || Some(decoded.name.as_str()) != v["kind"].as_str()
        {
            return Err(format!("vector {name:?}: the spec names kind {}", decoded.code));
        }
        if decoded.value != v["value"] {
            return Err(format!(
                "vector {name:?}: the spec's layouts read {}, the file records {}",
                decoded.value, v["value"]
            ));
        }
    }
    Ok(vectors.len())
}

/// A decoder built from docs/protocol.md alone (its layout lines and byte rules) decodes every
/// golden frame to exactly the recorded kind and values, using every byte: the spec is
/// sufficient to read the wire format.
#[test]
fn a_decoder_written_from_the_spec_reads_every_golden_frame() {
    let read = spec_reads_the_golden_frames(&the_spec()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read, cases().len());
}

/// Reads of every golden frame, by the spec decoder, with the vector's name.
fn all_reads() -> Vec<(String, spec::Read)> {
    let spec = the_spec();
    golden()
        .vectors
        .iter()
        .flat_map(|v| {
            let decoded = spec.decode_frame(&v.frame).unwrap();
            decoded.reads.into_iter().map(|r| (v.name.clone(), r)).collect::<Vec<_>>()
        })
        .collect()
}

/// The golden frames exercise every varint width each integer type allows (and lengths of
/// more than one byte), both booleans, every `ChangeType` variant, empty and non-empty lists,
/// strings and byte strings, and a non-ASCII string.
#[test]
fn the_golden_frames_cover_every_width_variant_and_shape() {
    let reads = all_reads();
    let markers = |what: &str| -> BTreeSet<u8> {
        reads
            .iter()
            .filter(|(_, r)| r.what == what)
            .filter_map(|(_, r)| r.marker.map(|m| if m <= 250 { 0 } else { m }))
            .collect()
    };
    assert_eq!(markers("u16"), BTreeSet::from([0, 251]), "u16 widths");
    assert_eq!(markers("u32"), BTreeSet::from([0, 251, 252]), "u32 widths");
    assert_eq!(markers("u64"), BTreeSet::from([0, 251, 252, 253]), "u64 widths");
    assert!(markers("len").contains(&251), "a length of two bytes");
    let values = |what: &str| -> BTreeSet<String> {
        reads.iter().filter(|(_, r)| r.what == what).map(|(_, r)| r.value.to_string()).collect()
    };
    assert_eq!(values("bool"), BTreeSet::from(["false".into(), "true".into()]));
    let following: BTreeSet<String> = reads
        .iter()
        .filter(|(_, r)| r.path == "follows.following")
        .map(|(_, r)| r.value.to_string())
        .collect();
    assert_eq!(following, BTreeSet::from(["false".into(), "true".into()]), "both Follows forms");
    let variants: BTreeSet<String> = values("enum ChangeType");
    let all: BTreeSet<String> =
        ["Insert", "Update", "Delete", "Bulk"].iter().map(|v| format!("{v:?}")).collect();
    assert_eq!(variants, all, "every ChangeType variant");
    let lens: Vec<(&str, u64)> = reads
        .iter()
        .filter(|(_, r)| r.what == "len")
        .map(|(_, r)| (r.path.as_str(), r.value.as_u64().unwrap()))
        .collect();
    for field in ["models", "entries", "changes", "assigned", "payload", "data"] {
        let of_field: Vec<u64> = lens
            .iter()
            .filter(|(p, _)| p.split('.').rev().nth(1) == Some(field))
            .map(|&(_, n)| n)
            .collect();
        assert!(of_field.iter().any(|&n| n > 0), "a non-empty {field}");
    }
    for field in ["models", "entries", "payload"] {
        assert!(
            lens.iter().any(|&(p, n)| n == 0 && p.split('.').rev().nth(1) == Some(field)),
            "an empty {field}"
        );
    }
    let strings = values("string");
    assert!(strings.iter().any(|s| s.len() > 2), "a non-empty string");
    assert!(strings.iter().any(|s| !s.is_ascii()), "a non-ASCII string");
}

// ---------------------------------------------------------------------------------------------
// Refused and accepted encodings: the spec's rules, checked against both decoders.
// ---------------------------------------------------------------------------------------------

/// The golden frame of a vector, and the spec decoder's read of `path` in it.
fn field(name: &str, path: &str) -> (Vec<u8>, spec::Read) {
    let spec = the_spec();
    let v = golden().vectors.into_iter().find(|v| v.name == name).expect("vector");
    let read = spec
        .decode_frame(&v.frame)
        .unwrap()
        .reads
        .into_iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("no field {path} in {name}"));
    (v.frame, read)
}

/// `frame` with `start..end` replaced, and its length prefix fixed.
fn splice(frame: &[u8], start: usize, end: usize, with: &[u8]) -> Vec<u8> {
    let mut out = frame[..start].to_vec();
    out.extend_from_slice(with);
    out.extend_from_slice(&frame[end..]);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// A varint field re-encoded with `marker` and `n` little-endian bytes of its value.
fn widened(name: &str, path: &str, marker: u8, n: usize) -> Vec<u8> {
    let (frame, read) = field(name, path);
    let value: u64 = match &read.value {
        Value::String(s) => s.parse().unwrap(),
        v => v.as_u64().unwrap(),
    };
    let mut with = vec![marker];
    with.extend_from_slice(&u128::from(value).to_le_bytes()[..n]);
    splice(&frame, read.start, read.end, &with)
}

/// Every encoding the spec says is refused — a varint marker wider than its field even when
/// the value fits, markers 254 and 255, a bool other than 0/1, a UUID of another length than
/// 16, an enum index with no variant, invalid UTF-8, a `Follows` that follows nobody but names
/// an epoch or a leader, trailing bytes, a truncated payload, a count beyond the payload — is
/// refused by the spec decoder and by the real decoder, the latter as a typed `Malformed`
/// error.
#[test]
fn both_decoders_refuse_the_encodings_the_spec_refuses() {
    let spec = the_spec();
    let uuid = |n: usize| {
        let (frame, read) = field("hello", "library.len");
        let uuid = &frame[read.end..read.end + 16];
        let mut with = vec![n as u8];
        with.extend((0..n).map(|i| uuid.get(i).copied().unwrap_or(0)));
        splice(&frame, read.start, read.end + 16, &with)
    };
    let at = |name: &str, path: &str, with: &[u8]| {
        let (frame, read) = field(name, path);
        splice(&frame, read.start, read.end, with)
    };
    let (hello, _) = field("hello", "versions.min");
    let payload_end = hello.len();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("u16 with a u32 marker", widened("hello", "versions.min", 252, 4)),
        ("u16 with a u64 marker", widened("hello-ack", "version", 253, 8)),
        ("u32 with a u64 marker", widened("fetch", "limit", 253, 8)),
        ("u32 enum index with a u64 marker", widened("submit", "changes.0.change", 253, 8)),
        ("u64 with a u128 marker", widened("fetch", "after", 254, 16)),
        ("reserved marker 255", at("fetch", "after", &[255, 0, 0, 0, 0, 0, 0, 0, 0])),
        ("bool 2", at("entries", "more", &[2])),
        ("bool 255", at("entries/empty", "more", &[255])),
        ("uuid of 15 bytes", uuid(15)),
        ("uuid of 17 bytes", uuid(17)),
        ("enum index with no variant", at("submit", "changes.0.change", &[4])),
        ("invalid UTF-8", at("hello", "models.0", &[0xff, 0xfe, 0x80])),
        ("trailing byte", splice(&hello, payload_end, payload_end, &[0])),
        ("truncated payload", splice(&hello, payload_end - 1, payload_end, &[])),
        ("count beyond the payload", at("hello", "models.len", &[200])),
        ("length beyond the payload", at("ping", "payload.len", &[251, 0x10, 0x27])),
    ];
    cases.push(("u64 length with a u128 marker", widened("ping", "payload.len", 254, 16)));
    let nobody = "presence/follows-nobody";
    cases.push(("follows nobody, with an epoch", at(nobody, "follows.epoch", &[3])));
    cases.push(("follows nobody, with a wide epoch", at(nobody, "follows.epoch", &[251, 0, 1])));
    let with_leader = {
        let (frame, read) = field(nobody, "follows.leader.len");
        let mut leader = [0u8; 16];
        leader[15] = 1;
        splice(&frame, read.end, read.end + 16, &leader)
    };
    cases.push(("follows nobody, with a leader", with_leader));
    cases.push(("follows flag 2", at(nobody, "follows.following", &[2])));
    for (what, frame) in cases {
        assert!(spec.decode_frame(&frame).is_err(), "{what}: the spec decoder accepted it");
        match frame::decode_frame(&frame, &FrameConfig::default()) {
            Err(FrameError::Malformed { .. }) => {}
            other => panic!("{what}: the real decoder gave {other:?}, not Malformed"),
        }
    }
}

/// A varint written longer than needed but within its field's width (`fb 05 00` for 5) is
/// accepted by both decoders and means the same value, as the spec says; re-encoding gives the
/// shortest form back.
#[test]
fn both_decoders_accept_a_longer_varint_within_the_fields_width() {
    let spec = the_spec();
    for (name, path, marker, n) in [
        ("fetch", "after", 251, 2),
        ("fetch", "after", 253, 8),
        ("fetch", "limit", 252, 4),
        ("hello", "versions.min", 251, 2),
        ("ping", "payload.len", 252, 4),
    ] {
        let frame = widened(name, path, marker, n);
        let golden = golden().vectors.into_iter().find(|v| v.name == name).unwrap();
        let by_spec = spec.decode_frame(&frame).unwrap();
        let by_spec_golden = spec.decode_frame(&golden.frame).unwrap();
        assert_eq!(by_spec.value, by_spec_golden.value, "{name}.{path}: spec decoder");
        let (message, _) = frame::decode_frame(&frame, &FrameConfig::default()).unwrap();
        assert_eq!(message, golden.message, "{name}.{path}: real decoder");
        let again = frame::encode_frame(&message, &FrameConfig::default()).unwrap();
        assert_eq!(again, golden.frame, "{name}.{path}: re-encoded in the shortest form");
    }
}

/// The spec decoder has teeth: a layout line that says anything but the truth — two fields
/// swapped, a field missing, a field too many, an integer too narrow — makes some golden frame
/// unreadable, or read as other values than the recorded ones.
#[test]
fn a_wrong_layout_line_in_the_spec_is_caught() {
    let doc = std::fs::read_to_string(spec_path()).unwrap();
    let truth = "{ after: Seq, limit: u32 }";
    assert_eq!(doc.matches(truth).count(), 1, "the spec lays out Fetch as {truth}");
    spec_reads_the_golden_frames(&spec::parse(&doc)).unwrap();
    for wrong in [
        "{ limit: u32, after: Seq }",
        "{ after: Seq }",
        "{ after: Seq, limit: u32, more: bool }",
        "{ after: Seq, limit: u16 }",
        "{ after: u32, limit: u32 }",
        "{ after: Seq, limit: u32, }",
    ] {
        let spec = spec::parse(&doc.replace(truth, wrong));
        let outcome = spec_reads_the_golden_frames(&spec);
        if wrong.ends_with(", }") {
            assert!(outcome.is_ok(), "a trailing comma is only punctuation: {outcome:?}");
        } else {
            assert!(outcome.is_err(), "a spec saying Fetch = {wrong} went unnoticed");
        }
    }
}

/// The worked example in the spec's "Value types" section is the golden frame it names.
#[test]
fn the_worked_example_in_the_spec_is_the_golden_frame() {
    let doc = std::fs::read_to_string(spec_path()).unwrap();
    let at = doc.find("the golden vector `fetch`").expect("the worked example");
    let rest = &doc[at..];
    let start =
        rest.find("frame\n`").map(|i| i + 7).or_else(|| rest.find("frame `").map(|i| i + 7));
    let start = start.expect("the example's frame in backticks");
    let end = start + rest[start..].find('`').unwrap();
    let hex: String = rest[start..end].chars().filter(char::is_ascii_hexdigit).collect();
    let fetch = golden().vectors.into_iter().find(|v| v.name == "fetch").unwrap();
    assert_eq!(hex, to_hex(&fetch.frame), "the spec's example frame");
}
