//! Review tests: the handshake's bounds hold on both transports, whatever a member does with
//! its connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use iroh::EndpointAddr;
use iroh::endpoint::ConnectionError;
use iroh::protocol::Router;
use sync_proto::*;

/// The first frame of a handshake is bounded by the *smaller* of the handshake limit and the
/// receiver's maximum frame size, on the memory transport exactly as over iroh: an acceptor
/// with 1 KiB frames refuses a 4 KiB hello with FRAME_TOO_LARGE instead of decoding it.
#[tokio::test]
async fn memory_hello_is_bounded_by_the_receivers_max_frame() {
    let net = MemoryNetwork::new(41);
    let server_table = MemberTable::new();
    server_table.add(library(1), id(2), device(2));
    let mut small = ProtoConfig::default();
    small.frame = FrameConfig::new(1024).unwrap();
    let server = Answering::new([local(library(1), device(1), 0)]);
    net.add_node(id(1), server_table, Arc::clone(&server), small);
    let client_table = MemberTable::new();
    client_table.add(library(1), id(1), device(1));
    let client = net.add_node(id(2), client_table, Answering::new([]), ProtoConfig::default());

    let mut state = local(library(1), device(2), 0);
    state.models = (0..200).map(|i| format!("model-number-{i:06}")).collect();
    let err = within("connect", client.connect(EndpointAddr::new(id(1)), state)).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed { code: ErrorCode::FRAME_TOO_LARGE, .. }), "{err}");
    let refusal = server.wait_refusal().await;
    assert_eq!(refusal.code, ErrorCode::FRAME_TOO_LARGE, "{}", refusal.text);
    net.shutdown().await;
}

/// A member that opens a connection and then never opens a stream, or writes its hello one
/// byte at a time too slowly, is closed with HANDSHAKE_TIMEOUT: the acceptor never waits for
/// a peer beyond the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_or_slow_members_time_out_over_iroh() {
    let endpoint = bind_loopback(Some(key(1))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(2), device(2));
    let handler = Answering::new([local(library(1), device(1), 0)]);
    let mut config = ProtoConfig::default();
    config.handshake_timeout = Duration::from_millis(400);
    let router = Router::builder(endpoint.clone())
        .accept(SYNC_ALPN, SyncProtocol::new(table, handler, config))
        .spawn();
    let addr = loopback_addr(&endpoint);

    let code_of = |e: ConnectionError| match e {
        ConnectionError::ApplicationClosed(c) => {
            ErrorCode(u32::try_from(c.error_code.into_inner()).unwrap())
        }
        other => panic!("expected an application close, got {other}"),
    };

    // Never opens a stream.
    let peer = bind_loopback(Some(key(2))).await.unwrap();
    let conn = within("connect", peer.connect(addr.clone(), SYNC_ALPN)).await.unwrap();
    assert_eq!(code_of(within("close", conn.closed()).await), ErrorCode::HANDSHAKE_TIMEOUT);

    // Writes a valid hello one byte every 50 ms (it would take far longer than 400 ms).
    let conn = within("connect", peer.connect(addr.clone(), SYNC_ALPN)).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        library: library(1),
        device: device(2),
        epoch: sync_log::Epoch(0),
        position: sync_log::Position::default(),
        models: vec![],
    });
    let bytes = frame::encode_frame(&hello, &FrameConfig::default()).unwrap();
    let dribble = async {
        for byte in bytes {
            if send.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    let closed = tokio::select! {
        e = conn.closed() => e,
        () = dribble => unreachable!(),
    };
    assert_eq!(code_of(closed), ErrorCode::HANDSHAKE_TIMEOUT);
    peer.close().await;
    router.shutdown().await.unwrap();
}
