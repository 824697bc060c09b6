//! The protocol over real iroh endpoints on loopback (relays and address lookup off): a
//! legitimate session works, and every kind of hostile or mismatched peer is refused with its
//! close code — after which the node still serves a legitimate peer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use iroh::endpoint::{Connection, ConnectionError};
use iroh::protocol::Router;
use iroh::{Endpoint, EndpointAddr};
use sync_proto::frame::{self, FrameReader};
use sync_proto::*;

/// A node (key 1, device 1) hosting library 1 (members: keys 2 and 3) and library 2 (member:
/// key 4), answering pings.
struct Node {
    router: Router,
    handler: Arc<Answering>,
    addr: EndpointAddr,
}

async fn start_node(config: ProtoConfig) -> Node {
    let endpoint = bind_loopback(Some(key(1))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(2), device(2));
    table.add(library(1), id(3), device(3));
    table.add(library(2), id(4), device(4));
    let handler =
        Answering::new([local(library(1), device(1), 10), local(library(2), device(1), 0)]);
    let protocol = SyncProtocol::new(table, Arc::clone(&handler), config);
    let router = Router::builder(endpoint.clone()).accept(SYNC_ALPN, protocol).spawn();
    Node { addr: loopback_addr(&endpoint), router, handler }
}

impl Node {
    /// A legitimate member (key 2) connects, and a ping round-trips through the node.
    async fn serves_legit_peer(&self) {
        let endpoint = bind_loopback(Some(key(2))).await.unwrap();
        let table = MemberTable::new();
        table.add(library(1), id(1), device(1));
        let dialer = IrohConnector::new(endpoint.clone(), table, ProtoConfig::default());
        let mut session = within(
            "legit connect",
            dialer.connect(self.addr.clone(), local(library(1), device(2), 4)),
        )
        .await
        .unwrap();
        assert_eq!(session.info().peer.device, device(1));
        round_trip(&mut session, 99).await;
        drop(session);
        endpoint.close().await;
    }

    async fn stop(self) {
        self.router.shutdown().await.unwrap();
    }
}

/// A raw connection on the sync ALPN from `key(n)`, bypassing every client-side check.
async fn raw(node: &Node, n: u8) -> (Endpoint, Connection) {
    let endpoint = bind_loopback(Some(key(n))).await.unwrap();
    let conn = within("raw connect", endpoint.connect(node.addr.clone(), SYNC_ALPN)).await.unwrap();
    (endpoint, conn)
}

/// Waits for the node to close `conn` and returns the application code.
async fn close_code(conn: &Connection) -> ErrorCode {
    match within("close", conn.closed()).await {
        ConnectionError::ApplicationClosed(close) => {
            ErrorCode(u32::try_from(close.error_code.into_inner()).unwrap())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

/// Sends `bytes` as the start of a raw stream and returns the node's close code.
async fn send_raw(node: &Node, n: u8, bytes: &[u8], finish: bool) -> ErrorCode {
    let (endpoint, conn) = raw(node, n).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let code = close_code(&conn).await;
    endpoint.close().await;
    code
}

fn hello(device: sync_log::DeviceId, library: sync_log::LibraryId) -> Message {
    Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        library,
        device,
        epoch: sync_log::Epoch(0),
        position: sync_log::Position::default(),
        models: vec![],
    })
}

/// A member dials through the router, the handshake exchanges both states, and messages flow
/// both ways (ping/pong, submit/ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legit_peer_gets_a_working_session() {
    let node = start_node(ProtoConfig::default()).await;
    node.serves_legit_peer().await;
    node.handler.wait_for("session", |h| !h.sessions.lock().unwrap().is_empty()).await;
    let info = node.handler.sessions.lock().unwrap()[0].clone();
    assert_eq!(
        (info.peer.endpoint, info.peer.device, info.library),
        (id(2), device(2), library(1))
    );
    assert!(node.handler.refusals.lock().unwrap().is_empty());
    node.stop().await;
}

/// An endpoint that is a member of no hosted library is closed with NOT_A_MEMBER without the
/// node reading anything: the stranger never even opens a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoint_is_closed_before_anything_is_read() {
    let node = start_node(ProtoConfig::default()).await;
    let (endpoint, conn) = raw(&node, 9).await;
    assert_eq!(close_code(&conn).await, ErrorCode::NOT_A_MEMBER);
    let refusal = node.handler.wait_refusal().await;
    assert_eq!((refusal.peer, refusal.code), (id(9), ErrorCode::NOT_A_MEMBER));
    endpoint.close().await;
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A member asking for a library the node does not host is refused with FOREIGN_LIBRARY, and
/// the dialer's error is the typed, fatal ForeignLibrary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_library_is_refused() {
    let node = start_node(ProtoConfig::default()).await;
    let endpoint = bind_loopback(Some(key(2))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(3), id(1), device(1));
    let dialer = IrohConnector::new(endpoint.clone(), table, ProtoConfig::default());
    let err = dialer.connect(node.addr.clone(), local(library(3), device(2), 0)).await.unwrap_err();
    assert!(matches!(err, ProtoError::ForeignLibrary { library: l } if l == library(3)), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(node.handler.wait_refusal().await.code, ErrorCode::FOREIGN_LIBRARY);
    endpoint.close().await;
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A member of another hosted library asking for this one is refused with NOT_A_MEMBER after
/// only the hello was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_of_another_library_is_refused() {
    let node = start_node(ProtoConfig::default()).await;
    let frame =
        frame::encode_frame(&hello(device(4), library(1)), &FrameConfig::default()).unwrap();
    assert_eq!(send_raw(&node, 4, &frame, false).await, ErrorCode::NOT_A_MEMBER);
    let refusal = node.handler.wait_refusal().await;
    assert!(refusal.text.contains(&library(1).to_string()), "{}", refusal.text);
    node.serves_legit_peer().await;
    node.stop().await;
}

/// With no common protocol version both sides fail with a VersionMismatch naming both ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_names_both_ranges_on_both_sides() {
    let node = start_node(ProtoConfig::default()).await;
    let endpoint = bind_loopback(Some(key(2))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(1), device(1));
    let mut newer = ProtoConfig::default();
    newer.versions = VersionRange::new(3, 4);
    let dialer = IrohConnector::new(endpoint.clone(), table, newer);
    let err = dialer.connect(node.addr.clone(), local(library(1), device(2), 0)).await.unwrap_err();
    match &err {
        ProtoError::VersionMismatch { ours, theirs } => {
            assert_eq!((*ours, *theirs), (VersionRange::new(3, 4), VersionRange::SUPPORTED));
        }
        other => panic!("expected a version mismatch, got {other}"),
    }
    assert!(!err.is_retryable());
    let refusal = node.handler.wait_refusal().await;
    assert_eq!(refusal.code, ErrorCode::VERSION_MISMATCH);
    assert!(refusal.text.contains("ours v2..=v2, theirs v3..=v4"), "{}", refusal.text);
    endpoint.close().await;
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A length prefix of 4 GiB is refused with FRAME_TOO_LARGE from the prefix alone: the peer
/// sends no body, so a node that waited for (or allocated) the body would never close.
/// Same for a prefix just above the handshake limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frame_is_refused_without_reading_it() {
    let node = start_node(ProtoConfig::default()).await;
    assert_eq!(
        send_raw(&node, 3, &u32::MAX.to_be_bytes(), false).await,
        ErrorCode::FRAME_TOO_LARGE
    );
    let just_over = ProtoConfig::default().handshake_max_frame + 1;
    assert_eq!(
        send_raw(&node, 3, &just_over.to_be_bytes(), false).await,
        ErrorCode::FRAME_TOO_LARGE
    );
    node.serves_legit_peer().await;
    node.stop().await;
}

/// Garbage — a well-sized frame of an unknown kind, a hello kind with a junk payload, and
/// seeded random bytes — is refused with PROTOCOL_ERROR (or FRAME_TOO_LARGE when the random
/// prefix is huge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_are_refused() {
    let node = start_node(ProtoConfig::default()).await;
    let mut unknown = 32u32.to_be_bytes().to_vec();
    unknown.extend_from_slice(&[0xA5; 32]);
    assert_eq!(send_raw(&node, 3, &unknown, false).await, ErrorCode::PROTOCOL_ERROR);
    let mut junk_hello = 12u32.to_be_bytes().to_vec();
    junk_hello.extend_from_slice(&[0, 1]);
    junk_hello.extend_from_slice(&[0xFF; 10]);
    assert_eq!(send_raw(&node, 3, &junk_hello, false).await, ErrorCode::PROTOCOL_ERROR);
    let seed = 0x5EED_u64;
    println!("random garbage seed: {seed}");
    let mut x = seed;
    let random: Vec<u8> = (0..256)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let code = send_raw(&node, 3, &random, true).await;
    assert!(matches!(code, ErrorCode::PROTOCOL_ERROR | ErrorCode::FRAME_TOO_LARGE), "{code}");
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A stream that ends inside a frame (prefix says 100 bytes, 10 come, then the end) is
/// refused with PROTOCOL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_is_refused() {
    let node = start_node(ProtoConfig::default()).await;
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(send_raw(&node, 3, &truncated, true).await, ErrorCode::PROTOCOL_ERROR);
    let refusal = node.handler.wait_refusal().await;
    assert!(refusal.text.contains("truncated"), "{}", refusal.text);
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A first frame that is valid but not a hello is refused with PROTOCOL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_must_be_a_hello() {
    let node = start_node(ProtoConfig::default()).await;
    let frame = frame::encode_frame(&ping(1), &FrameConfig::default()).unwrap();
    assert_eq!(send_raw(&node, 3, &frame, false).await, ErrorCode::PROTOCOL_ERROR);
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A member that stalls inside the handshake is closed with HANDSHAKE_TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_times_out() {
    let mut config = ProtoConfig::default();
    config.handshake_timeout = Duration::from_millis(300);
    let node = start_node(config).await;
    assert_eq!(send_raw(&node, 3, &[0, 0], false).await, ErrorCode::HANDSHAKE_TIMEOUT);
    node.serves_legit_peer().await;
    node.stop().await;
}

/// Garbage after a completed handshake makes the node's session fail with a frame error and
/// close the connection with PROTOCOL_ERROR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_handshake_closes_the_session() {
    let node = start_node(ProtoConfig::default()).await;
    let (endpoint, conn) = raw(&node, 3).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let frame =
        frame::encode_frame(&hello(device(3), library(1)), &FrameConfig::default()).unwrap();
    send.write_all(&frame).await.unwrap();
    let mut reader = FrameReader::new(recv, FrameConfig::default());
    let ack = within("hello ack", reader.read()).await.unwrap();
    assert!(matches!(ack, Some(Message::HelloAck(HelloAck { device: d, .. })) if d == device(1)));
    send.write_all(&[0, 0, 0, 4, 0xEE, 0xEE, 1, 2]).await.unwrap();
    assert_eq!(close_code(&conn).await, ErrorCode::PROTOCOL_ERROR);
    node.handler.wait_for("session end", |h| !h.ends.lock().unwrap().is_empty()).await;
    assert!(node.handler.ends.lock().unwrap()[0].contains("unknown message kind"));
    endpoint.close().await;
    node.serves_legit_peer().await;
    node.stop().await;
}

/// A connector made from the node's `SyncProtocol` shares its bookkeeping: the router's
/// shutdown closes the sessions it dialled with SHUTTING_DOWN too, not with a bare normal end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_shutdown_closes_sessions_dialled_through_the_protocol() {
    let node = start_node(ProtoConfig::default()).await;
    let endpoint = bind_loopback(Some(key(2))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(1), device(1));
    let handler = Answering::new([local(library(1), device(2), 0)]);
    let protocol = SyncProtocol::new(table, handler, ProtoConfig::default());
    let dialer = protocol.connector(endpoint.clone());
    let router = Router::builder(endpoint).accept(SYNC_ALPN, protocol).spawn();
    let mut session =
        within("connect", dialer.connect(node.addr.clone(), local(library(1), device(2), 4)))
            .await
            .unwrap();
    round_trip(&mut session, 1).await;
    router.shutdown().await.unwrap();
    node.handler.wait_for("session end", |h| !h.ends.lock().unwrap().is_empty()).await;
    let end = node.handler.ends.lock().unwrap()[0].clone();
    assert!(end.contains("shutting-down"), "{end}");
    node.stop().await;
}
