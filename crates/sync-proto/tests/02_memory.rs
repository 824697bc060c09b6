//! The in-memory transport: the real handshake over channels, and its fault injection
//! (delay, reorder across lanes only, drop, cut, partition), seeded and replayable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use iroh::{EndpointAddr, EndpointId};
use sync_proto::*;

/// Two nodes that are members of one library: server (key 1, device 1) and client (key 2,
/// device 2). The server answers pings.
struct Pair {
    net: MemoryNetwork,
    server: Arc<Answering>,
    client: MemoryConnector<MemberTable>,
    client_table: MemberTable,
    server_table: MemberTable,
}

fn pair(seed: u64) -> Pair {
    println!("memory network seed: {seed}");
    let net = MemoryNetwork::new(seed);
    let server_table = MemberTable::new();
    server_table.add(library(1), id(2), device(2));
    let client_table = MemberTable::new();
    client_table.add(library(1), id(1), device(1));
    let server = Answering::new([local(library(1), device(1), 10)]);
    net.add_node(id(1), server_table.clone(), Arc::clone(&server), ProtoConfig::default());
    let client = net.add_node(
        id(2),
        client_table.clone(),
        Answering::new([local(library(1), device(2), 4)]),
        ProtoConfig::default(),
    );
    Pair { net, server, client, client_table, server_table }
}

fn addr(id: EndpointId) -> EndpointAddr {
    EndpointAddr::new(id)
}

/// A handshake over the memory network gives both sides the other's state: library, device,
/// epoch, position, models and the negotiated version.
#[tokio::test]
async fn handshake_establishes_session_with_peer_state() {
    let p = pair(1);
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    let info = session.info().clone();
    assert_eq!(info.role, Role::Dialer);
    assert_eq!(info.version, VersionRange::SUPPORTED.max);
    assert_eq!(info.peer.device, device(1));
    assert_eq!(info.peer.endpoint, id(1));
    assert_eq!(info.peer.position, local(library(1), device(1), 10).position);
    assert_eq!(info.peer.models, vec!["tag".to_string(), "location".to_string()]);
    round_trip(&mut session, 7).await;
    p.server.wait_for("server session", |h| !h.sessions.lock().unwrap().is_empty()).await;
    let theirs = p.server.sessions.lock().unwrap()[0].clone();
    assert_eq!(theirs.role, Role::Acceptor);
    assert_eq!(theirs.peer.device, device(2));
    assert_eq!(theirs.peer.position.seq, sync_log::Seq(4));
    p.net.shutdown().await;
}

/// An endpoint that is a member of no library hosted by the acceptor is refused before
/// anything is read, and the dialer gets a fatal NotAMember.
#[tokio::test]
async fn unknown_endpoint_is_refused() {
    let p = pair(2);
    let stranger_table = MemberTable::new();
    stranger_table.add(library(1), id(1), device(1));
    let stranger =
        p.net.add_node(id(9), stranger_table, Answering::new([]), ProtoConfig::default());
    let err = stranger.connect(addr(id(1)), local(library(1), device(9), 0)).await.unwrap_err();
    assert!(matches!(err, ProtoError::NotAMember { library: Some(l) } if l == library(1)), "{err}");
    assert!(!err.is_retryable());
    let refusal = p.server.wait_refusal().await;
    assert_eq!((refusal.peer, refusal.code), (id(9), ErrorCode::NOT_A_MEMBER));
    assert!(refusal.text.contains("any library"), "{}", refusal.text);
    p.net.shutdown().await;
}

/// A device id that is not the one bound to the dialer's key is refused like a non-member.
#[tokio::test]
async fn claimed_device_must_match_the_key() {
    let p = pair(3);
    let err = p.client.connect(addr(id(1)), local(library(1), device(77), 0)).await.unwrap_err();
    assert!(matches!(err, ProtoError::NotAMember { .. }), "{err}");
    p.net.shutdown().await;
}

/// A library the acceptor does not host is refused with ForeignLibrary (fatal).
#[tokio::test]
async fn foreign_library_is_refused() {
    let p = pair(4);
    p.client_table.add(library(2), id(1), device(1));
    p.server_table.add(library(3), id(2), device(2));
    let err = p.client.connect(addr(id(1)), local(library(2), device(2), 0)).await.unwrap_err();
    assert!(matches!(err, ProtoError::ForeignLibrary { library: l } if l == library(2)), "{err}");
    assert!(!err.is_retryable());
    let refusal = p.server.wait_refusal().await;
    assert_eq!(refusal.code, ErrorCode::FOREIGN_LIBRARY);
    p.net.shutdown().await;
}

/// With no common protocol version, both sides get an error naming both ranges: a newer
/// build (v3..=v4) and a version-1 build (which cannot take part in leadership, so this build
/// no longer speaks v1) are both refused with `version-mismatch`.
#[tokio::test]
async fn version_mismatch_names_both_ranges_on_both_sides() {
    assert_eq!(VersionRange::SUPPORTED, VersionRange::new(2, 2));
    for (n, (theirs, text)) in
        [(VersionRange::new(3, 4), "v3..=v4"), (VersionRange::new(1, 1), "v1..=v1")]
            .into_iter()
            .enumerate()
    {
        let p = pair(5 + n as u64);
        let mut other = ProtoConfig::default();
        other.versions = theirs;
        let client_table = MemberTable::new();
        client_table.add(library(1), id(1), device(1));
        p.server_table.add(library(1), id(3), device(3));
        let client = p.net.add_node(id(3), client_table, Answering::new([]), other);
        let err = client.connect(addr(id(1)), local(library(1), device(3), 0)).await.unwrap_err();
        match &err {
            ProtoError::VersionMismatch { ours, theirs: supported } => {
                assert_eq!((*ours, *supported), (theirs, VersionRange::SUPPORTED));
            }
            other => panic!("expected a version mismatch, got {other}"),
        }
        assert!(!err.is_retryable());
        assert!(err.to_string().contains(text) && err.to_string().contains("v2..=v2"), "{err}");
        let refusal = p.server.wait_refusal().await;
        assert_eq!(refusal.code, ErrorCode::VERSION_MISMATCH);
        assert!(refusal.text.contains(&format!("ours v2..=v2, theirs {text}")), "{}", refusal.text);
        p.net.shutdown().await;
    }
}

/// A kind is sent only to a peer whose negotiated version knows it: on a session that
/// negotiated v1 (a build configured for v1..=v2 meeting a v1 build) a Claim or a Presence is
/// refused locally with NotAllowed, nothing is sent and the session stays usable; on a v2
/// session the same Claim goes through.
#[tokio::test]
async fn kinds_newer_than_the_negotiated_version_are_not_sent() {
    println!("memory network seed: 9");
    let net = MemoryNetwork::new(9);
    let server_table = MemberTable::new();
    server_table.add(library(1), id(2), device(2));
    server_table.add(library(1), id(3), device(3));
    let mut both = ProtoConfig::default();
    both.versions = VersionRange::new(1, 2);
    let server = Answering::new([local(library(1), device(1), 0)]);
    net.add_node(id(1), server_table, Arc::clone(&server), both);
    let client_table = MemberTable::new();
    client_table.add(library(1), id(1), device(1));
    let mut v1 = ProtoConfig::default();
    v1.versions = VersionRange::new(1, 1);
    let old = net.add_node(id(2), client_table.clone(), Answering::new([]), v1);
    let new = net.add_node(id(3), client_table, Answering::new([]), ProtoConfig::default());
    let claim = Message::Claim(Claim {
        epoch: sync_log::Epoch(2),
        device: device(2),
        position: sync_log::Seq(0),
    });
    let presence = Message::Presence(Presence {
        device: device(2),
        epoch: sync_log::Epoch(2),
        follows: Follows::Nobody,
    });
    let mut session = old.connect(addr(id(1)), local(library(1), device(2), 0)).await.unwrap();
    assert_eq!(session.info().version, ProtocolVersion(1));
    for msg in [&claim, &presence] {
        match session.send(msg).await {
            Err(ProtoError::NotAllowed { kind, .. }) => assert_eq!(kind, msg.kind()),
            other => panic!("{}: expected NotAllowed, got {other:?}", msg.kind()),
        }
    }
    round_trip(&mut session, 1).await;
    let mut session = new.connect(addr(id(1)), local(library(1), device(3), 0)).await.unwrap();
    assert_eq!(session.info().version, ProtocolVersion(2));
    session.send(&claim).await.unwrap();
    round_trip(&mut session, 2).await;
    net.shutdown().await;
}

/// Delay and jitter on a lane never reorder it: 200 pings sent with random delays arrive in
/// the order sent.
#[tokio::test(start_paused = true)]
async fn delay_and_jitter_keep_order_within_a_lane() {
    let p = pair(6);
    p.net.set_faults(
        id(2),
        id(1),
        Faults {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(50),
            ..Faults::NONE
        },
    );
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    for n in 0..200 {
        session.send(&ping(n)).await.unwrap();
    }
    for n in 0..200 {
        match within("pong", session.recv()).await.unwrap() {
            Some(Message::Pong(pong)) => assert_eq!(pong.nonce, n),
            other => panic!("expected pong {n}, got {other:?}"),
        }
    }
    assert_eq!(*p.server.nonces.lock().unwrap(), (0..200).collect::<Vec<_>>());
    p.net.shutdown().await;
}

/// Frames on different lanes (here two sessions between the same nodes, about two
/// libraries) overtake each other, but a later frame on a lane never overtakes an earlier one.
#[tokio::test(start_paused = true)]
async fn reordering_happens_across_lanes_only() {
    let p = pair(7);
    p.server_table.add(library(2), id(2), device(2));
    p.client_table.add(library(2), id(1), device(1));
    p.server.add_state(local(library(2), device(1), 0));
    let mut slow = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    let mut fast = p.client.connect(addr(id(1)), local(library(2), device(2), 4)).await.unwrap();
    p.net.set_faults(id(2), id(1), Faults { delay: Duration::from_millis(100), ..Faults::NONE });
    slow.send(&ping(1)).await.unwrap();
    p.net.set_faults(id(2), id(1), Faults::NONE);
    slow.send(&ping(2)).await.unwrap();
    fast.send(&ping(3)).await.unwrap();
    p.server.wait_for("three pings", |h| h.nonces.lock().unwrap().len() == 3).await;
    assert_eq!(*p.server.nonces.lock().unwrap(), vec![3, 1, 2]);
    p.net.shutdown().await;
}

/// Which frames a lossy lane drops depends only on the seed: the same seed drops the same
/// pings, another seed drops others, probability 1 drops all and 0 none.
#[tokio::test]
async fn drops_are_seeded_and_replayable() {
    async fn delivered(seed: u64, probability: f64) -> BTreeSet<u64> {
        let p = pair(seed);
        let mut session =
            p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
        p.net.set_faults(id(2), id(1), Faults { drop_probability: probability, ..Faults::NONE });
        for n in 0..64 {
            session.send(&ping(n)).await.unwrap();
        }
        p.net.set_faults(id(2), id(1), Faults::NONE);
        session.send(&ping(u64::MAX)).await.unwrap();
        let mut got = BTreeSet::new();
        loop {
            match within("pong", session.recv()).await.unwrap() {
                Some(Message::Pong(pong)) if pong.nonce == u64::MAX => break,
                Some(Message::Pong(pong)) => {
                    got.insert(pong.nonce);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        p.net.shutdown().await;
        got
    }
    let a = delivered(42, 0.5).await;
    assert_eq!(a, delivered(42, 0.5).await, "same seed, same drops");
    assert_ne!(a, delivered(43, 0.5).await, "another seed, other drops");
    assert!(!a.is_empty() && a.len() < 64, "{} of 64 delivered", a.len());
    assert!(delivered(1, 1.0).await.is_empty());
    assert_eq!(delivered(1, 0.0).await.len(), 64);
}

/// A duplicating lane delivers a frame twice in a row, from the seed alone: at probability 1
/// every ping arrives exactly twice, each copy right after its original and in the order
/// sent, while the handshake (set up under the same faults) is never duplicated; at 0 nothing
/// is; at 0.5 some are, the same ones for the same seed.
#[tokio::test]
async fn duplicates_are_seeded_and_keep_order() {
    async fn received(seed: u64, probability: f64) -> Vec<u64> {
        let p = pair(seed);
        let faults = Faults { duplicate_probability: probability, ..Faults::NONE };
        p.net.set_faults(id(2), id(1), faults);
        p.net.set_faults(id(1), id(2), faults);
        let mut session =
            p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
        for n in 0..64 {
            session.send(&ping(n)).await.unwrap();
        }
        p.net.set_faults(id(2), id(1), Faults::NONE);
        session.send(&ping(u64::MAX)).await.unwrap();
        let mut pongs = Vec::new();
        loop {
            match within("pong", session.recv()).await.unwrap() {
                Some(Message::Pong(pong)) if pong.nonce == u64::MAX => break,
                Some(Message::Pong(pong)) => pongs.push(pong.nonce),
                other => panic!("unexpected {other:?}"),
            }
        }
        let mut nonces = p.server.nonces.lock().unwrap().clone();
        assert_eq!(nonces.pop(), Some(u64::MAX));
        // Each ping is answered once per copy, and the answers may be duplicated in turn.
        let mut answered = pongs.clone();
        answered.dedup();
        let mut distinct = nonces.clone();
        distinct.dedup();
        assert_eq!(distinct, (0..64).collect::<Vec<_>>(), "order kept, copies adjacent");
        assert_eq!(answered, distinct, "pongs in order, copies adjacent");
        assert!(nonces.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "at most twice");
        p.net.shutdown().await;
        nonces
    }
    let all = received(11, 1.0).await;
    assert_eq!(all, (0..64).flat_map(|n| [n, n]).collect::<Vec<_>>());
    assert_eq!(received(11, 0.0).await, (0..64).collect::<Vec<_>>());
    let some = received(42, 0.5).await;
    assert!(some.len() > 64 && some.len() < 128, "{} frames for 64 pings", some.len());
    assert_eq!(some, received(42, 0.5).await, "same seed, same duplicates");
}

/// Cutting a link fails both sides at once with a retryable ConnectionLost, even with frames
/// still queued; a new session can be made right after.
#[tokio::test(start_paused = true)]
async fn cut_fails_both_sides_with_a_retryable_error() {
    let p = pair(8);
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    round_trip(&mut session, 1).await;
    p.net.set_faults(id(1), id(2), Faults { delay: Duration::from_secs(60), ..Faults::NONE });
    session.send(&ping(2)).await.unwrap();
    p.server.wait_for("second ping", |h| h.nonces.lock().unwrap().len() == 2).await;
    assert_eq!(p.net.cut(id(1), id(2)), 1);
    let err = within("recv after cut", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::ConnectionLost(_)), "{err}");
    assert!(err.is_retryable());
    assert!(session.send(&ping(3)).await.unwrap_err().is_retryable());
    p.server.wait_for("server session end", |h| !h.ends.lock().unwrap().is_empty()).await;
    assert!(p.server.ends.lock().unwrap()[0].contains("connection lost"));
    p.net.set_faults(id(1), id(2), Faults::NONE);
    let mut again = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    round_trip(&mut again, 4).await;
    p.net.shutdown().await;
}

/// A partition cuts live links and refuses new connections (retryably) until healed.
#[tokio::test]
async fn partition_refuses_connections_until_healed() {
    let p = pair(9);
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    p.net.partition(id(1), id(2));
    assert!(within("recv", session.recv()).await.unwrap_err().is_retryable());
    let err = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap_err();
    assert!(matches!(err, ProtoError::Connect(_)) && err.is_retryable(), "{err}");
    p.net.heal(id(1), id(2));
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    round_trip(&mut session, 1).await;
    p.net.shutdown().await;
}

/// Removing a node (a crash) cuts its links and makes it unreachable.
#[tokio::test]
async fn removed_node_is_cut_and_unreachable() {
    let p = pair(10);
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    p.net.remove_node(&id(1));
    assert!(within("recv", session.recv()).await.unwrap_err().is_retryable());
    let err = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    p.net.shutdown().await;
}

/// Closing with a code delivers what was sent before it, then the code (retryable for
/// SHUTTING_DOWN); a normal finish reads as the end of the session.
#[tokio::test]
async fn close_with_code_delivers_queued_frames_first() {
    let p = pair(11);
    let mut session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    session.send(&ping(1)).await.unwrap();
    session
        .send(&Message::Error(ErrorMessage {
            code: ErrorCode::SHUTTING_DOWN,
            message: "bye".into(),
        }))
        .await
        .unwrap();
    assert!(matches!(within("pong", session.recv()).await.unwrap(), Some(Message::Pong(_))));
    let err = within("close", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed { code: ErrorCode::SHUTTING_DOWN, .. }), "{err}");
    assert!(err.is_retryable());

    let session = p.client.connect(addr(id(1)), local(library(1), device(2), 4)).await.unwrap();
    let (_, mut tx, mut rx) = session.split();
    tx.send(&ping(5)).await.unwrap();
    tx.finish().unwrap();
    assert!(matches!(within("pong", rx.recv()).await.unwrap(), Some(Message::Pong(_))));
    assert_eq!(within("end", rx.recv()).await.unwrap(), None);
    p.net.shutdown().await;
}

/// A message too large for the sender's maximum frame is refused locally and the session
/// stays usable; a frame above the receiver's smaller maximum is refused by the receiver,
/// which closes the link with FRAME_TOO_LARGE.
#[tokio::test]
async fn frame_limits_apply_on_both_ends() {
    let p = pair(12);
    let mut small = ProtoConfig::default();
    small.frame = FrameConfig::new(64 * 1024).unwrap();
    let small_table = MemberTable::new();
    small_table.add(library(1), id(1), device(1));
    p.server_table.add(library(1), id(4), device(4));
    let client = p.net.add_node(id(4), small_table, Answering::new([]), small);
    let mut session = client.connect(addr(id(1)), local(library(1), device(4), 0)).await.unwrap();
    let big = Message::Ping(Ping { nonce: 1, payload: Bytes::from(vec![0; 100 * 1024]) });
    let err = session.send(&big).await.unwrap_err();
    assert!(matches!(err, ProtoError::Frame(FrameError::Oversize { .. })), "{err}");
    round_trip(&mut session, 2).await;

    // A server with 64 KiB frames refuses a 100 KiB frame from a 16 MiB client.
    let small_server = Answering::new([local(library(1), device(5), 0)]);
    let mut small = ProtoConfig::default();
    small.frame = FrameConfig::new(64 * 1024).unwrap();
    p.net.add_node(id(5), p.server_table.clone(), Arc::clone(&small_server), small);
    p.client_table.add(library(1), id(5), device(5));
    let mut session = p.client.connect(addr(id(5)), local(library(1), device(2), 4)).await.unwrap();
    session.send(&big).await.unwrap();
    let err = within("refusal", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed { code: ErrorCode::FRAME_TOO_LARGE, .. }), "{err}");
    small_server.wait_for("server session end", |h| !h.ends.lock().unwrap().is_empty()).await;
    assert!(small_server.ends.lock().unwrap()[0].contains("exceeds the maximum"));
    p.net.shutdown().await;
}
