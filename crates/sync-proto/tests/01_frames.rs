//! Messages and framing: round trips for every message kind, hostile input never panics or
//! allocates without bound, and every framing failure is a typed error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use sync_log::{DeviceId, Epoch};
use sync_proto::frame::{self, FrameReader, FrameWriter, HEADER_LEN};
use sync_proto::*;

fn cfg() -> FrameConfig {
    FrameConfig::default()
}

fn assert_round_trip(msg: &Message) -> Result<(), TestCaseError> {
    let bytes = frame::encode_frame(msg, &cfg()).unwrap();
    let (back, used) = frame::decode_frame(&bytes, &cfg()).unwrap();
    prop_assert_eq!(used, bytes.len());
    prop_assert_eq!(&back, msg);
    prop_assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), msg.kind().code());
    Ok(())
}

macro_rules! round_trips {
    ($($(#[$doc:meta])* $name:ident => $strategy:expr;)*) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            $(
                $(#[$doc])*
                #[test]
                fn $name(msg in $strategy) {
                    assert_round_trip(&msg)?;
                }
            )*
        }
    };
}

round_trips! {
    /// Every Hello survives encode → frame → decode unchanged.
    hello_round_trips => hello();
    /// Every HelloAck survives encode → frame → decode unchanged.
    hello_ack_round_trips => hello_ack();
    /// Every VersionMismatch survives encode → frame → decode unchanged.
    version_mismatch_round_trips => version_mismatch();
    /// Every Error message survives encode → frame → decode unchanged.
    error_round_trips => error();
    /// Every Push survives encode → frame → decode unchanged.
    push_round_trips => push();
    /// Every PushNotice survives encode → frame → decode unchanged.
    push_notice_round_trips => push_notice();
    /// Every Fetch survives encode → frame → decode unchanged.
    fetch_round_trips => fetch();
    /// Every Entries answer survives encode → frame → decode unchanged.
    entries_round_trips => entries();
    /// Every Ack survives encode → frame → decode unchanged.
    ack_round_trips => ack();
    /// Every Heartbeat survives encode → frame → decode unchanged.
    heartbeat_round_trips => heartbeat();
    /// Every Claim survives encode → frame → decode unchanged.
    claim_round_trips => claim();
    /// Every Presence, following a leader or explicitly none, survives encode → frame →
    /// decode unchanged.
    presence_round_trips => presence();
    /// Every Submit survives encode → frame → decode unchanged.
    submit_round_trips => submit();
    /// Every SubmitAck survives encode → frame → decode unchanged.
    submit_ack_round_trips => submit_ack();
    /// Every SnapshotRequired survives encode → frame → decode unchanged.
    snapshot_required_round_trips => snapshot_required();
    /// Every SnapshotFetch survives encode → frame → decode unchanged.
    snapshot_fetch_round_trips => snapshot_fetch();
    /// Every SnapshotChunk survives encode → frame → decode unchanged.
    snapshot_chunk_round_trips => snapshot_chunk();
    /// Every SnapshotEnd survives encode → frame → decode unchanged.
    snapshot_end_round_trips => snapshot_end();
    /// Every Divergence notice survives encode → frame → decode unchanged.
    divergence_round_trips => divergence();
    /// Every Ping survives encode → frame → decode unchanged.
    ping_round_trips => ping_msg();
    /// Every Pong survives encode → frame → decode unchanged.
    pong_round_trips => pong_msg();
}

/// The round-trip strategies above cover every message kind this build knows, so a new kind
/// without a round-trip test fails here.
#[test]
fn round_trip_strategies_cover_every_kind() {
    let mut runner = TestRunner::deterministic();
    let covered: HashSet<u16> = per_kind()
        .iter()
        .map(|s| s.new_tree(&mut runner).unwrap().current().kind().code())
        .collect();
    let all: HashSet<u16> = MessageKind::ALL.iter().map(|k| k.code()).collect();
    assert_eq!(covered, all);
}

/// Kind codes are the stable numbers documented in docs/protocol.md, each used once.
#[test]
fn kind_codes_are_the_documented_ones() {
    let codes: Vec<(u16, &str)> = MessageKind::ALL.iter().map(|k| (k.code(), k.name())).collect();
    assert_eq!(
        codes,
        [
            (1, "Hello"),
            (2, "HelloAck"),
            (3, "VersionMismatch"),
            (4, "Error"),
            (10, "Push"),
            (11, "PushNotice"),
            (12, "Fetch"),
            (13, "Entries"),
            (14, "Ack"),
            (15, "Heartbeat"),
            (16, "Claim"),
            (17, "Presence"),
            (20, "Submit"),
            (21, "SubmitAck"),
            (30, "SnapshotRequired"),
            (31, "SnapshotFetch"),
            (32, "SnapshotChunk"),
            (33, "SnapshotEnd"),
            (40, "Divergence"),
            (50, "Ping"),
            (51, "Pong"),
        ]
    );
    for kind in MessageKind::ALL {
        assert_eq!(MessageKind::from_code(kind.code()), Some(*kind));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// No byte string makes the frame decoder panic; what it accepts re-encodes to itself.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok((msg, used)) = frame::decode_frame(&bytes, &cfg()) {
            let again = frame::encode_frame(&msg, &cfg()).unwrap();
            prop_assert_eq!(frame::decode_frame(&again, &cfg()).unwrap().0, msg);
            prop_assert!(used <= bytes.len());
        }
        let _ = frame::decode_body(&bytes);
    }

    /// A valid header with a known kind and a random payload never panics the payload
    /// decoders (the length check alone would hide them from random bytes).
    #[test]
    fn random_payload_of_each_kind_never_panics(
        kind in prop::sample::select(MessageKind::ALL),
        payload in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut body = kind.code().to_be_bytes().to_vec();
        body.extend_from_slice(&payload);
        if let Ok(msg) = frame::decode_body(&body) {
            prop_assert_eq!(msg.kind(), kind);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A valid frame with one byte changed, or cut short, never panics the decoder, and a
    /// cut-short frame is reported as truncated.
    #[test]
    fn mutated_frames_never_panic(
        msg in any_message(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = frame::encode_frame(&msg, &cfg()).unwrap();
        let mut flipped = bytes.clone();
        let i = at.index(flipped.len());
        flipped[i] ^= xor;
        let _ = frame::decode_frame(&flipped, &cfg());
        let short = &bytes[..cut.index(bytes.len())];
        let truncated = matches!(
            frame::decode_frame(short, &cfg()),
            Err(FrameError::Truncated { .. })
        );
        prop_assert!(truncated);
    }
}

/// A length prefix above the maximum is refused from the 4-byte prefix alone: the reader's
/// buffer is never grown for it, and the rest of the stream is not read.
#[tokio::test]
async fn oversize_frame_is_refused_without_allocating() {
    let config = FrameConfig::new(64 * 1024).unwrap();
    let mut input = u32::MAX.to_be_bytes().to_vec();
    input.extend_from_slice(&[0xAB; 100]);
    let mut reader = FrameReader::new(&input[..], config);
    match reader.read().await {
        Err(FrameError::Oversize { len, max }) => {
            assert_eq!(len, u64::from(u32::MAX));
            assert_eq!(max, 64 * 1024);
        }
        other => panic!("expected oversize, got {other:?}"),
    }
    assert_eq!(reader.buffer_capacity(), 0, "nothing allocated for the frame");
    assert_eq!(reader.into_inner().len(), 100, "the body was not read");
}

/// The configured maximum applies both ways: a writer refuses to send a frame above it
/// (nothing is written), and the limit accepts exactly the maximum.
#[tokio::test]
async fn writer_refuses_oversize_and_accepts_the_maximum() {
    let config = FrameConfig::new(2048).unwrap();
    let max_payload = |n: usize| {
        Message::SnapshotChunk(SnapshotChunk { offset: 0, data: Bytes::from(vec![7; n]) })
    };
    // kind (2) + offset (1) + length varint (3 for n >= 251) + n bytes.
    let fits = max_payload(2048 - 2 - 1 - 3);
    let too_big = max_payload(2048 - 2 - 1 - 3 + 1);
    let mut out = Vec::new();
    let mut writer = FrameWriter::new(&mut out, config);
    assert!(matches!(writer.write(&too_big).await, Err(FrameError::Oversize { .. })));
    writer.write(&fits).await.unwrap();
    assert_eq!(out.len(), 4 + 2048);
    let (back, _) = frame::decode_frame(&out, &config).unwrap();
    assert_eq!(back, fits);
}

/// A stream that ends inside the length prefix or inside the body gives a typed
/// `Truncated` error with the counts; one that ends between frames is a clean end.
#[tokio::test]
async fn truncated_frames_are_typed_errors() {
    let full = frame::encode_frame(&ping(1), &cfg()).unwrap();
    let mut reader = FrameReader::new(&full[..2], cfg());
    assert!(matches!(reader.read().await, Err(FrameError::Truncated { expected: 4, got: 2 })));
    let body_len = full.len() - 4;
    let mut reader = FrameReader::new(&full[..full.len() - 5], cfg());
    match reader.read().await {
        Err(FrameError::Truncated { expected, got }) => {
            assert_eq!((expected, got), (body_len, body_len - 5));
        }
        other => panic!("expected truncated, got {other:?}"),
    }
    let mut reader = FrameReader::new(&full[..], cfg());
    assert_eq!(reader.read().await.unwrap(), Some(ping(1)));
    assert_eq!(reader.read().await.unwrap(), None);
}

/// An unknown kind code, a length too short for a kind, and a payload that does not decode
/// each give their own typed error.
#[test]
fn unknown_kind_too_short_and_malformed_are_typed() {
    let unknown = [0, 0, 0, 3, 0xFF, 0xEE, 0];
    assert!(matches!(
        frame::decode_frame(&unknown, &cfg()),
        Err(FrameError::UnknownKind { code: 0xFFEE })
    ));
    assert!(matches!(
        frame::decode_frame(&[0, 0, 0, 1, 0], &cfg()),
        Err(FrameError::TooShort { len: 1 })
    ));
    let hello_garbage = [0, 0, 0, 5, 0, 1, 0xFF, 0xFF, 0xFF];
    assert!(matches!(
        frame::decode_frame(&hello_garbage, &cfg()),
        Err(FrameError::Malformed { kind: MessageKind::Hello, .. })
    ));
    // Trailing bytes after a valid payload are not silently ignored.
    let mut ack =
        frame::encode_frame(&Message::Fetch(Fetch { after: sync_log::Seq(1), limit: 2 }), &cfg())
            .unwrap();
    ack.push(0);
    let len = (ack.len() - 4) as u32;
    ack[..4].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(frame::decode_frame(&ack, &cfg()), Err(FrameError::Malformed { .. })));
}

/// A length prefix inside a payload that claims a huge string or list (here 2^40 bytes or
/// names in a 13-byte frame) is refused by the decode limits instead of allocating it: if
/// the limits failed, this test would abort on allocation.
#[test]
fn lying_inner_lengths_do_not_allocate() {
    // Error { code: 0, message: <u64 length 2^40> }
    let mut body = MessageKind::Error.code().to_be_bytes().to_vec();
    body.push(0);
    body.push(253);
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(frame::decode_body(&body), Err(FrameError::Malformed { .. })));

    // SnapshotChunk { offset: 0, data: <u64 length 2^40> }
    let mut body = MessageKind::SnapshotChunk.code().to_be_bytes().to_vec();
    body.push(0);
    body.push(253);
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(frame::decode_body(&body), Err(FrameError::Malformed { .. })));

    // A 10 MiB string claimed in a tiny frame: refused by the per-frame budget.
    let mut body = MessageKind::Error.code().to_be_bytes().to_vec();
    body.push(0);
    body.push(252);
    body.extend_from_slice(&(10u32 << 20).to_le_bytes());
    assert!(matches!(frame::decode_body(&body), Err(FrameError::Malformed { .. })));
}

/// A hello listing more than MAX_MODEL_NAMES names is refused (names are tiny on the wire
/// but large in memory); exactly the maximum is accepted.
#[test]
fn model_name_count_is_capped() {
    let hello = |n: usize| {
        Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            library: library(1),
            device: device(1),
            epoch: sync_log::Epoch(0),
            position: sync_log::Position::default(),
            models: vec![String::new(); n],
        })
    };
    let ok = frame::encode_frame(&hello(MAX_MODEL_NAMES), &cfg()).unwrap();
    assert_eq!(frame::decode_frame(&ok, &cfg()).unwrap().0, hello(MAX_MODEL_NAMES));
    let too_many = frame::encode_frame(&hello(MAX_MODEL_NAMES + 1), &cfg()).unwrap();
    assert!(matches!(
        frame::decode_frame(&too_many, &cfg()),
        Err(FrameError::Malformed { kind: MessageKind::Hello, .. })
    ));
}

/// Valid frames close to the maximum size decode: the decode budget never refuses a valid
/// payload, even one made of many tiny fields (the worst ratio of claimed to encoded bytes).
#[test]
fn large_valid_frames_decode() {
    let config = FrameConfig::new(4 * 1024 * 1024).unwrap();
    let chunk = Message::SnapshotChunk(SnapshotChunk {
        offset: 1,
        data: Bytes::from(vec![9; 4 * 1024 * 1024 - 16]),
    });
    let bytes = frame::encode_frame(&chunk, &config).unwrap();
    assert_eq!(frame::decode_frame(&bytes, &config).unwrap().0, chunk);

    let tiny = sync_log::Change {
        origin: sync_log::OriginKey { device: device(0), seq: 0 },
        hlc: sync_log::Hlc(0),
        model: String::new(),
        record: uuid::Uuid::nil(),
        change: sync_log::ChangeType::Insert,
        version: 0,
        payload: Vec::new(),
    };
    let submit = Message::Submit(Submit { changes: vec![tiny; 60_000] });
    let bytes = frame::encode_frame(&submit, &config).unwrap();
    assert!(bytes.len() > 2 * 1024 * 1024, "{}", bytes.len());
    assert_eq!(frame::decode_frame(&bytes, &config).unwrap().0, submit);
}

/// The maximum frame size can be configured only within its bounds.
#[test]
fn max_frame_size_is_bounded() {
    assert!(FrameConfig::new(frame::MIN_FRAME_SIZE - 1).is_err());
    assert!(FrameConfig::new(MAX_FRAME_SIZE_CEILING + 1).is_err());
    assert_eq!(FrameConfig::default().max_frame_size(), 16 * 1024 * 1024);
    assert_eq!(HEADER_LEN, 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A sequence of messages written to a byte stream is read back in order, then a clean
    /// end — whatever sizes the stream splits its reads into.
    #[test]
    fn streams_carry_message_sequences(msgs in prop::collection::vec(any_message(), 0..8), chunk in 1usize..64) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(chunk);
            let sent = msgs.clone();
            let writer = tokio::spawn(async move {
                let mut w = FrameWriter::new(client, FrameConfig::default());
                for m in &sent {
                    w.write(m).await.unwrap();
                }
            });
            let mut reader = FrameReader::new(server, FrameConfig::default());
            let mut got = Vec::new();
            while let Some(m) = reader.read().await.unwrap() {
                got.push(m);
            }
            writer.await.unwrap();
            assert_eq!(got, msgs);
        });
    }

    /// Negotiation picks the newest version both ranges contain, and nothing when they share
    /// none.
    #[test]
    fn negotiation_picks_newest_common(a in any_versions(), b in any_versions()) {
        match a.negotiate(&b) {
            Some(v) => {
                prop_assert!(a.contains(v) && b.contains(v));
                prop_assert!(!a.contains(sync_proto::ProtocolVersion(v.0.wrapping_add(1))) || !b.contains(sync_proto::ProtocolVersion(v.0.wrapping_add(1))) || v.0 == u16::MAX);
                prop_assert_eq!(b.negotiate(&a), Some(v));
            }
            None => {
                for v in [a.min, a.max] {
                    prop_assert!(!(a.contains(v) && b.contains(v)));
                }
            }
        }
    }
}

/// A presence payload: `device`, `epoch`, then the three fields of `follows` as raw bytes.
fn presence_frame(following: u8, leader_epoch: &[u8], leader: u128) -> Vec<u8> {
    let mut body = MessageKind::Presence.code().to_be_bytes().to_vec();
    body.push(16);
    body.extend_from_slice(&7u128.to_be_bytes());
    body.push(5);
    body.push(following);
    body.extend_from_slice(leader_epoch);
    body.push(16);
    body.extend_from_slice(&leader.to_be_bytes());
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// "Follows no leader" has exactly one encoding — `following = false` with epoch 0 and the
/// nil leader. A presence with `following = false` that still names an epoch or a leader is
/// refused as a typed `Malformed` error of kind Presence (never read as "nobody", never a
/// panic); `following = true` with any term, and the one "nobody" encoding, decode.
#[test]
fn presence_following_nobody_with_a_term_is_refused() {
    let device = DeviceId(uuid::Uuid::from_u128(7));
    for (what, frame) in [
        ("nonzero epoch", presence_frame(0, &[3], 0)),
        ("nonzero epoch, wide varint", presence_frame(0, &[251, 0, 1], 0)),
        ("nonzero leader", presence_frame(0, &[0], 9)),
        ("both", presence_frame(0, &[3], 9)),
        ("bool 2", presence_frame(2, &[3], 9)),
    ] {
        match frame::decode_frame(&frame, &cfg()) {
            Err(FrameError::Malformed { kind: MessageKind::Presence, .. }) => {}
            other => panic!("{what}: expected Malformed Presence, got {other:?}"),
        }
    }
    let decoded = |frame: Vec<u8>| frame::decode_frame(&frame, &cfg()).unwrap().0;
    assert_eq!(
        decoded(presence_frame(0, &[0], 0)),
        Message::Presence(Presence { device, epoch: Epoch(5), follows: Follows::Nobody })
    );
    let leader = DeviceId(uuid::Uuid::from_u128(9));
    assert_eq!(
        decoded(presence_frame(1, &[3], 9)),
        Message::Presence(Presence {
            device,
            epoch: Epoch(5),
            follows: Follows::Leader { epoch: Epoch(3), leader },
        })
    );
    // Following a term whose fields happen to be zero is still following: the flag decides.
    assert_eq!(
        decoded(presence_frame(1, &[0], 0)),
        Message::Presence(Presence {
            device,
            epoch: Epoch(5),
            follows: Follows::Leader { epoch: Epoch(0), leader: DeviceId(uuid::Uuid::nil()) },
        })
    );
    assert_eq!(
        frame::encode_frame(&decoded(presence_frame(0, &[0], 0)), &cfg()).unwrap(),
        presence_frame(0, &[0], 0),
        "nobody encodes as the all-zero term"
    );
}
