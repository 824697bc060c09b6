//! A hostile *member* (a paired device gone bad, a stolen key) and a hostile *acceptor*, over
//! real iroh on loopback: what one member can pin is bounded, revoked members lose their live
//! sessions, the protocol's rules are enforced, and after every attack a legitimate member is
//! still served.
//!
//! Memory and task figures are those of a node running in a **child process** (this test
//! binary, re-run with `SYNC_PROTO_CHILD_NODE=1` as the `child_node` test): the parent attacks
//! it and asks it for its own resident set size and live task count, and prints them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use iroh::endpoint::{Connection, ConnectionError, RecvStream, SendStream};
use iroh::protocol::{AcceptError, IncomingFilterOutcome, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr};
use sync_proto::frame::{self, FrameReader};
use sync_proto::*;
use tokio::sync::mpsc;

const CHILD_ENV: &str = "SYNC_PROTO_CHILD_NODE";
const FRAME_TIMEOUT_ENV: &str = "SYNC_PROTO_CHILD_FRAME_TIMEOUT_MS";
const HANDSHAKE_TIMEOUT_ENV: &str = "SYNC_PROTO_CHILD_HANDSHAKE_TIMEOUT_MS";

// ---- the node in a child process ----

/// Not a property test: when this binary runs as a child (`SYNC_PROTO_CHILD_NODE` set) this is
/// the measured node — key 1 hosting library 1 for keys 2 and 3 — driven over stdin; run
/// normally, it does nothing.
#[test]
fn child_node() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(child_main());
    std::process::exit(0);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn child_main() {
    let mut config = ProtoConfig::default();
    if let Some(ms) = std::env::var(FRAME_TIMEOUT_ENV).ok().and_then(|v| v.parse().ok()) {
        config.frame_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = std::env::var(HANDSHAKE_TIMEOUT_ENV).ok().and_then(|v| v.parse().ok()) {
        config.handshake_timeout = Duration::from_millis(ms);
    }
    let endpoint = bind_loopback_with(Some(key(1)), &config).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(2), device(2));
    table.add(library(1), id(3), device(3));
    let handler = Answering::new([local(library(1), device(1), 10)]);
    let protocol = Arc::new(SyncProtocol::new(table.clone(), Arc::clone(&handler), config));
    let router = Router::builder(endpoint.clone()).accept(SYNC_ALPN, Arc::clone(&protocol)).spawn();
    let port = endpoint.bound_sockets()[0].port();
    println!("CHILD addr {port}");
    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(cmd) = commands.recv().await {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["measure"] => {
                let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
                println!(
                    "CHILD m {} {} {} {}",
                    rss_kib(),
                    tasks,
                    protocol.live_sessions(),
                    protocol.pending_handshakes()
                );
            }
            ["quit"] | [] => break,
            _ => println!("CHILD unknown"),
        }
    }
    router.shutdown().await.ok();
}

/// What the child node says about itself.
#[derive(Clone, Copy, Debug)]
struct Figures {
    rss_kib: u64,
    tasks: usize,
    live: usize,
    pending: usize,
}

/// The parent's handle on a child node.
struct ChildNode {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    addr: EndpointAddr,
}

impl ChildNode {
    async fn spawn(env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["child_node", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child_node ... " on the same line.
                if let Some(at) = line.find("CHILD ")
                    && tx.send(line[at + "CHILD ".len()..].to_string()).is_err()
                {
                    break;
                }
            }
        });
        let mut node = Self { child, stdin, lines, addr: EndpointAddr::new(id(1)) };
        let line = node.line().await;
        let port: u16 = line.strip_prefix("addr ").unwrap().parse().unwrap();
        node.addr = EndpointAddr::new(id(1)).with_ip_addr(([127, 0, 0, 1], port).into());
        node
    }

    async fn line(&mut self) -> String {
        within("child output", self.lines.recv()).await.expect("child node exited")
    }

    async fn measure(&mut self) -> Figures {
        writeln!(self.stdin, "measure").unwrap();
        let line = self.line().await;
        let f: Vec<u64> =
            line.strip_prefix("m ").unwrap().split(' ').map(|x| x.parse().unwrap()).collect();
        Figures { rss_kib: f[0], tasks: f[1] as usize, live: f[2] as usize, pending: f[3] as usize }
    }

    /// Waits until the child's figures satisfy `check` (polled with a deadline).
    async fn wait_figures(&mut self, what: &str, check: impl Fn(&Figures) -> bool) -> Figures {
        let start = Instant::now();
        loop {
            let f = self.measure().await;
            if check(&f) {
                return f;
            }
            assert!(start.elapsed() < DEADLINE, "{what}: still {f:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

// ---- attackers and the legitimate member ----

/// Key 3, a legitimate member, connects and a ping round-trips.
async fn legit_member_is_served(addr: &EndpointAddr) {
    let endpoint = bind_loopback(Some(key(3))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(1), device(1));
    let dialer = IrohConnector::new(endpoint.clone(), table, ProtoConfig::default());
    let mut session =
        within("legit connect", dialer.connect(addr.clone(), local(library(1), device(3), 4)))
            .await
            .unwrap();
    round_trip(&mut session, 99).await;
    session.close_gracefully(ErrorCode::NORMAL, "").await;
    endpoint.close().await;
}

/// A node (device 1 of library 1, members devices 2 and 3) serving with `config`: its router,
/// address, member table and handler.
async fn two_member_node(
    config: ProtoConfig,
) -> (Router, EndpointAddr, MemberTable, Arc<Answering>) {
    let server_ep = bind_loopback(Some(key(1))).await.unwrap();
    let addr = loopback_addr(&server_ep);
    let table = MemberTable::new();
    table.add(library(1), id(2), device(2));
    table.add(library(1), id(3), device(3));
    let handler = Answering::new([local(library(1), device(1), 0)]);
    let router = Router::builder(server_ep)
        .accept(SYNC_ALPN, SyncProtocol::new(table.clone(), Arc::clone(&handler), config))
        .spawn();
    (router, addr, table, handler)
}

async fn attacker(n: u8) -> Endpoint {
    bind_loopback(Some(key(n))).await.unwrap()
}

async fn raw(endpoint: &Endpoint, addr: &EndpointAddr) -> Connection {
    within("raw connect", endpoint.connect(addr.clone(), SYNC_ALPN)).await.unwrap()
}

fn hello_frame(device: sync_log::DeviceId) -> Vec<u8> {
    let hello = Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        library: library(1),
        device,
        epoch: sync_log::Epoch(0),
        position: sync_log::Position::default(),
        models: vec![],
    });
    frame::encode_frame(&hello, &FrameConfig::default()).unwrap()
}

/// A raw session: hello sent, hello-ack read.
async fn raw_session(conn: &Connection, device: sync_log::DeviceId) -> (SendStream, RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello_frame(device)).await.unwrap();
    let mut reader = FrameReader::new(recv, FrameConfig::default());
    let ack = within("hello ack", reader.read()).await.unwrap();
    assert!(matches!(ack, Some(Message::HelloAck(_))), "{ack:?}");
    (send, reader.into_inner())
}

fn code_of(e: ConnectionError) -> ErrorCode {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            ErrorCode(u32::try_from(c.error_code.into_inner()).unwrap())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

async fn close_code(conn: &Connection) -> ErrorCode {
    code_of(within("close", conn.closed()).await)
}

/// Whether a stream-opening future can complete at once (it cannot without stream credit).
async fn opens_at_once<F: std::future::Future>(fut: F) -> bool {
    tokio::time::timeout(Duration::ZERO, fut).await.is_ok()
}

/// Writes up to `limit` bytes, stopping when a write makes no progress for 500 ms (blocked by
/// flow control) or fails; returns the bytes written.
async fn push_until_blocked(send: &mut SendStream, limit: usize) -> usize {
    let chunk = vec![0xAB; 64 * 1024];
    let mut sent = 0;
    while sent < limit {
        let piece = &chunk[..chunk.len().min(limit - sent)];
        match tokio::time::timeout(Duration::from_millis(500), send.write(piece)).await {
            Ok(Ok(n)) => sent += n,
            _ => break,
        }
    }
    sent
}

// ---- 1. streams the protocol never reads ----

/// Writes pings (60 KiB each) without ever reading the pongs, until flow control blocks the
/// writer; returns the bytes written.
async fn ping_until_blocked(send: &mut SendStream, limit: usize) -> usize {
    let msg = Message::Ping(Ping { nonce: 1, payload: bytes::Bytes::from(vec![5; 60 * 1024]) });
    let frame = frame::encode_frame(&msg, &FrameConfig::default()).unwrap();
    let mut sent = 0;
    while sent < limit {
        match tokio::time::timeout(Duration::from_millis(500), send.write_all(&frame)).await {
            Ok(Ok(())) => sent += frame.len(),
            _ => break,
        }
    }
    sent
}

/// A member connection can open ONE bidirectional stream and no unidirectional one, and
/// can make the node buffer at most about a stream window however much it writes: four
/// connections of one member that flood pings without reading the pongs, and four that send
/// all but the last byte of a 256 KiB hello, grow the node by a few MiB — not the ~1 GiB of a
/// default QUIC configuration (100 + 100 streams of 1.25 MB each per connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_member_never_reads_cost_bounded_memory() {
    let mut node = ChildNode::spawn(&[]).await;
    legit_member_is_served(&node.addr).await;
    let before = node.measure().await;
    let ep = attacker(2).await;
    let mut conns = Vec::new();
    let mut total = 0;
    for _ in 0..4 {
        let conn = raw(&ep, &node.addr).await;
        let (mut send, recv) = raw_session(&conn, device(2)).await;
        assert!(!opens_at_once(conn.open_bi()).await, "a second bidirectional stream opened");
        assert!(!opens_at_once(conn.open_uni()).await, "a unidirectional stream opened");
        total += ping_until_blocked(&mut send, 256 * 1024 * 1024).await;
        conns.push((conn, send, recv));
    }
    for _ in 0..4 {
        let conn = raw(&ep, &node.addr).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let max = ProtoConfig::default().handshake_max_frame;
        send.write_all(&max.to_be_bytes()).await.unwrap();
        total += push_until_blocked(&mut send, max as usize - 1).await;
        assert!(!opens_at_once(conn.open_bi()).await, "a second bidirectional stream opened");
        assert!(!opens_at_once(conn.open_uni()).await, "a unidirectional stream opened");
        conns.push((conn, send, recv));
    }
    // The node counts a hello as pending once it has read its first bytes: wait for all four
    // (on a condition, with a deadline) before measuring.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut after = node.measure().await;
    while after.pending < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = node.measure().await;
    }
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    println!(
        "8 connections of one member wrote {} KiB; node rss {} -> {} KiB (+{} KiB), tasks {} -> {}, live {}, pending {}",
        total / 1024,
        before.rss_kib,
        after.rss_kib,
        grown,
        before.tasks,
        after.tasks,
        after.live,
        after.pending
    );
    assert!(grown <= 8 * 16 * 1024, "node grew by {grown} KiB");
    assert!(after.live <= 1 && after.pending == 4, "{after:?}");
    drop(conns);
    ep.close().await;
    legit_member_is_served(&node.addr).await;
    node.stop();
}

/// A hostile acceptor cannot open any stream toward a dialer using `IrohConnector`: the
/// dialer grants no stream credit, so nothing it never reads can pin its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_acceptor_cannot_open_streams_toward_the_dialer() {
    #[derive(Debug, Default, Clone)]
    struct Hostile {
        opened: Arc<AtomicUsize>,
        tried: Arc<AtomicBool>,
    }
    impl ProtocolHandler for Hostile {
        async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
            let bi = opens_at_once(conn.open_bi()).await;
            let uni = opens_at_once(conn.open_uni()).await;
            self.opened.fetch_add(usize::from(bi) + usize::from(uni), Ordering::SeqCst);
            self.tried.store(true, Ordering::SeqCst);
            conn.close(0u32.into(), b"");
            Ok(())
        }
    }
    let hostile = Hostile::default();
    let ep = bind_loopback(Some(key(1))).await.unwrap();
    let addr = loopback_addr(&ep);
    let router = Router::builder(ep).accept(SYNC_ALPN, hostile.clone()).spawn();
    let dialer_ep = bind_loopback(Some(key(2))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(1), device(1));
    let dialer = IrohConnector::new(dialer_ep.clone(), table, ProtoConfig::default());
    let _ = within("connect", dialer.connect(addr, local(library(1), device(2), 0))).await;
    assert!(hostile.tried.load(Ordering::SeqCst));
    assert_eq!(hostile.opened.load(Ordering::SeqCst), 0, "the acceptor opened streams");
    dialer_ep.close().await;
    router.shutdown().await.unwrap();
}

// ---- 2. sessions per device, frame deadline ----

/// At most one live session per (library, device): eight sessions of one device, each
/// sending all but the last byte of a 16 MiB frame, leave one session open — each newer one
/// closed the older with REPLACED — and the node holds one such frame: its resident set grows
/// by less than four frames' worth (one live frame, plus freed heap the allocator keeps — glibc
/// keeps up to 32 MiB), not the eight frames' worth pinned before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_has_one_live_session_and_replaced_ones_are_closed() {
    let mut node = ChildNode::spawn(&[]).await;
    legit_member_is_served(&node.addr).await;
    let before = node.measure().await;
    let ep = attacker(2).await;
    let len = frame::DEFAULT_MAX_FRAME_SIZE;
    let mut conns: Vec<(Connection, SendStream)> = Vec::new();
    for _ in 0..8 {
        let conn = raw(&ep, &node.addr).await;
        let (mut send, _recv) = raw_session(&conn, device(2)).await;
        send.write_all(&len.to_be_bytes()).await.unwrap();
        send.write_all(&MessageKind::SnapshotChunk.code().to_be_bytes()).await.unwrap();
        push_until_blocked(&mut send, len as usize - 3).await;
        conns.push((conn, send));
    }
    let after = node.wait_figures("one live session", |f| f.live == 2 || f.live == 1).await;
    for (conn, _) in &conns[..7] {
        assert_eq!(close_code(conn).await, ErrorCode::REPLACED);
    }
    let grown = after.rss_kib.saturating_sub(before.rss_kib);
    println!(
        "8 sessions of one device with 16 MiB frames pending: node rss {} -> {} KiB (+{} KiB), live {}",
        before.rss_kib, after.rss_kib, grown, after.live
    );
    assert!(grown <= 64 * 1024, "node grew by {grown} KiB");
    drop(conns);
    ep.close().await;
    legit_member_is_served(&node.addr).await;
    node.stop();
}

/// A frame that does not complete within the frame deadline closes the session with
/// TIMEOUT: all but the last byte of a frame then silence, and a 17-byte frame dribbled one
/// byte per 100 ms against a 600 ms deadline, are both cut — keep-alives do not help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_stalls_closes_the_session() {
    let mut node = ChildNode::spawn(&[(FRAME_TIMEOUT_ENV, "600".into())]).await;
    let ep = attacker(2).await;

    let conn = raw(&ep, &node.addr).await;
    let (mut send, _recv) = raw_session(&conn, device(2)).await;
    send.write_all(&100u32.to_be_bytes()).await.unwrap();
    send.write_all(&[0u8; 99]).await.unwrap();
    assert_eq!(close_code(&conn).await, ErrorCode::TIMEOUT);

    let conn = raw(&ep, &node.addr).await;
    let (mut send, _recv) = raw_session(&conn, device(2)).await;
    let ping = frame::encode_frame(&ping(1), &FrameConfig::default()).unwrap();
    let closed = conn.closed();
    tokio::pin!(closed);
    let mut answered = false;
    for byte in ping.iter().take(17) {
        tokio::select! {
            e = &mut closed => {
                assert_eq!(code_of(e), ErrorCode::TIMEOUT);
                answered = true;
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let _ = send.write_all(&[*byte]).await;
    }
    if !answered {
        assert_eq!(code_of(within("close", closed).await), ErrorCode::TIMEOUT);
    }
    let f = node.wait_figures("sessions gone", |f| f.live == 0).await;
    println!("after stalled frames: rss {} KiB, tasks {}, live {}", f.rss_kib, f.tasks, f.live);
    ep.close().await;
    legit_member_is_served(&node.addr).await;
    node.stop();
}

// ---- 3. revocation ----

/// Removing a member closes its live session at once with NOT_A_MEMBER (on the acceptor's
/// side, and a dialer that removes the acceptor closes its own session the same way); the
/// removed key is then refused, and other members are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_closes_its_live_sessions() {
    let (router, addr, table, handler) = two_member_node(ProtoConfig::default()).await;

    let ep = attacker(2).await;
    let client_table = MemberTable::new();
    client_table.add(library(1), id(1), device(1));
    let dialer = IrohConnector::new(ep.clone(), client_table.clone(), ProtoConfig::default());
    let mut session =
        within("connect", dialer.connect(addr.clone(), local(library(1), device(2), 0)))
            .await
            .unwrap();
    round_trip(&mut session, 1).await;
    assert_eq!(table.remove(&library(1), &id(2)), Some(device(2)));
    let err = within("revoked", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed { code: ErrorCode::NOT_A_MEMBER, .. }), "{err}");
    handler.wait_for("server session end", |h| !h.ends.lock().unwrap().is_empty()).await;
    assert!(handler.ends.lock().unwrap()[0].contains("not-a-member"));
    let err = dialer.connect(addr.clone(), local(library(1), device(2), 0)).await.unwrap_err();
    assert!(matches!(err, ProtoError::NotAMember { .. }), "{err}");

    // The dialer's side: removing the acceptor from the dialer's table cuts the session.
    table.add(library(1), id(2), device(2));
    let mut session =
        within("connect", dialer.connect(addr.clone(), local(library(1), device(2), 0)))
            .await
            .unwrap();
    round_trip(&mut session, 2).await;
    client_table.remove(&library(1), &id(1));
    let err = within("revoked", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::Terminated { code: ErrorCode::NOT_A_MEMBER, .. }), "{err}");
    ep.close().await;
    legit_member_is_served(&addr).await;
    router.shutdown().await.unwrap();
}

// ---- 4. pending handshakes ----

/// At most 8 connections of one endpoint await their hello at once; the rest are refused
/// at once with BUSY (not held for the handshake timeout). 200 silent connections and 100
/// half-sent 256 KiB hellos leave 8 pending, with a bounded number of tasks and bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_per_endpoint_are_capped() {
    // A handshake timeout longer than the attack, so the held connections stay held.
    let mut node = ChildNode::spawn(&[(HANDSHAKE_TIMEOUT_ENV, "120000".into())]).await;
    legit_member_is_served(&node.addr).await;
    let before = node.measure().await;
    let ep = attacker(2).await;

    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(raw(&ep, &node.addr).await);
    }
    let mut busy = 0;
    for conn in &silent[8..] {
        if close_code(conn).await == ErrorCode::BUSY {
            busy += 1;
        }
    }
    let held = node.wait_figures("8 pending", |f| f.pending == 8).await;
    println!(
        "200 silent connections: {busy} refused with busy; node pending {}, tasks {} -> {}, rss {} -> {} KiB",
        held.pending, before.tasks, held.tasks, before.rss_kib, held.rss_kib
    );
    assert_eq!(busy, 192);
    assert!(held.tasks <= before.tasks + 8 * 4 + 16, "tasks {} -> {}", before.tasks, held.tasks);
    drop(silent);
    let _ = node.wait_figures("none pending", |f| f.pending == 0).await;

    let mut half = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let conn = raw(&ep, &node.addr).await;
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            let _ = send.write_all(&(256 * 1024u32).to_be_bytes()).await;
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                send.write_all(&vec![1; 255 * 1024]),
            )
            .await;
            half.push((conn, send));
        } else {
            refused += 1;
        }
    }
    let held = node.wait_figures("8 pending", |f| f.pending == 8).await;
    let grown = held.rss_kib.saturating_sub(before.rss_kib);
    println!(
        "100 half-sent 256 KiB hellos: node pending {}, tasks {}, rss {} -> {} KiB (+{grown} KiB)",
        held.pending, held.tasks, before.rss_kib, held.rss_kib
    );
    assert!(grown <= 32 * 1024, "node grew by {grown} KiB");
    let _ = refused;
    drop(half);
    ep.close().await;
    legit_member_is_served(&node.addr).await;
    node.stop();
}

// ---- 5. handshake-only messages after the handshake ----

/// A second Hello, a HelloAck or a VersionMismatch after the handshake is a protocol error:
/// the node closes the session with PROTOCOL_ERROR instead of handing it to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_messages_after_the_handshake_are_protocol_errors() {
    let (router, addr, _table, handler) = two_member_node(ProtoConfig::default()).await;
    let ep = attacker(2).await;
    let late = [
        Message::Hello(Hello {
            versions: VersionRange::SUPPORTED,
            library: library(1),
            device: device(2),
            epoch: sync_log::Epoch(0),
            position: sync_log::Position::default(),
            models: vec![],
        }),
        Message::HelloAck(HelloAck {
            version: ProtocolVersion(1),
            library: library(1),
            device: device(2),
            epoch: sync_log::Epoch(0),
            position: sync_log::Position::default(),
            models: vec![],
        }),
        Message::VersionMismatch(VersionMismatch {
            dialer: VersionRange::SUPPORTED,
            acceptor: VersionRange::SUPPORTED,
        }),
    ];
    for (i, msg) in late.iter().enumerate() {
        let conn = raw(&ep, &addr).await;
        let (mut send, _recv) = raw_session(&conn, device(2)).await;
        send.write_all(&frame::encode_frame(msg, &FrameConfig::default()).unwrap()).await.unwrap();
        assert_eq!(close_code(&conn).await, ErrorCode::PROTOCOL_ERROR, "{}", msg.kind());
        handler.wait_for("session end", |h| h.ends.lock().unwrap().len() == i + 1).await;
        assert!(handler.ends.lock().unwrap()[i].contains("not allowed"));
    }
    ep.close().await;
    legit_member_is_served(&addr).await;
    router.shutdown().await.unwrap();
}

/// A peer that negotiated version 1 and then sends a kind version 1 does not know (a Claim)
/// breaks the protocol: the node closes the session with PROTOCOL_ERROR and never hands the
/// message to the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_newer_than_the_negotiated_version_is_a_protocol_error() {
    let mut config = ProtoConfig::default();
    config.versions = VersionRange::new(1, 2);
    let (router, addr, _table, handler) = two_member_node(config).await;
    let ep = attacker(2).await;
    let conn = raw(&ep, &addr).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(Hello {
        versions: VersionRange::new(1, 1),
        library: library(1),
        device: device(2),
        epoch: sync_log::Epoch(0),
        position: sync_log::Position::default(),
        models: vec![],
    });
    send.write_all(&frame::encode_frame(&hello, &FrameConfig::default()).unwrap()).await.unwrap();
    let mut reader = FrameReader::new(recv, FrameConfig::default());
    match within("hello ack", reader.read()).await.unwrap() {
        Some(Message::HelloAck(ack)) => assert_eq!(ack.version, ProtocolVersion(1)),
        other => panic!("expected a hello-ack, got {other:?}"),
    }
    let claim = Message::Claim(Claim {
        epoch: sync_log::Epoch(1),
        device: device(2),
        position: sync_log::Seq(0),
    });
    send.write_all(&frame::encode_frame(&claim, &FrameConfig::default()).unwrap()).await.unwrap();
    assert_eq!(close_code(&conn).await, ErrorCode::PROTOCOL_ERROR);
    handler.wait_for("session end", |h| h.ends.lock().unwrap().len() == 1).await;
    assert!(handler.ends.lock().unwrap()[0].contains("not allowed"));
    ep.close().await;
    legit_member_is_served(&addr).await;
    router.shutdown().await.unwrap();
}

// ---- 6. the connect timeout covers the whole connect ----

/// The dialer's timeout bounds the whole connect: QUIC connection (here slowed by a dropped
/// first attempt) plus the hello exchange with an acceptor that never answers, together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_covers_the_whole_connect() {
    #[derive(Debug)]
    struct Silent;
    impl ProtocolHandler for Silent {
        async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
            let _streams = conn.accept_bi().await;
            conn.closed().await;
            Ok(())
        }
    }
    let ep = bind_loopback(Some(key(1))).await.unwrap();
    let addr = loopback_addr(&ep);
    let dropped_first = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped_first);
    let router = Router::builder(ep)
        .incoming_filter(Arc::new(move |_| {
            if flag.swap(true, Ordering::SeqCst) {
                IncomingFilterOutcome::Accept
            } else {
                IncomingFilterOutcome::Ignore
            }
        }))
        .accept(SYNC_ALPN, Silent)
        .spawn();
    let dialer_ep = bind_loopback(Some(key(2))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(1), device(1));
    let mut config = ProtoConfig::default();
    config.handshake_timeout = Duration::from_millis(1500);
    let dialer = IrohConnector::new(dialer_ep.clone(), table, config.clone());
    let start = Instant::now();
    let err =
        within("connect", dialer.connect(addr, local(library(1), device(2), 0))).await.unwrap_err();
    let took = start.elapsed();
    println!("connect gave up after {took:?} ({err})");
    assert!(err.is_retryable(), "{err}");
    assert!(took < config.handshake_timeout + Duration::from_millis(700), "took {took:?}");
    dialer_ep.close().await;
    router.shutdown().await.unwrap();
}

// ---- 7. close reasons ----

/// A peer's close reason and error text reach the service and the logs sanitised (no
/// newline, no terminal escape) and capped at 200 bytes — from a hostile acceptor (300 bytes
/// with escapes in its close) and from a hostile dialer closing its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_close_reasons_are_sanitised_and_capped() {
    let evil = format!("line one\nline two\x1b[2J\x1b[31m{}", "A".repeat(300));
    #[derive(Debug)]
    struct Rude(String);
    impl ProtocolHandler for Rude {
        async fn accept(&self, conn: Connection) -> Result<(), AcceptError> {
            conn.close(ErrorCode::INTERNAL.0.into(), self.0.as_bytes());
            Ok(())
        }
    }
    let check = |text: &str| {
        assert!(!text.contains('\n') && !text.contains('\x1b'), "{text:?}");
        assert!(text.len() <= MAX_REASON_LEN, "{} bytes", text.len());
    };
    let ep = bind_loopback(Some(key(1))).await.unwrap();
    let addr = loopback_addr(&ep);
    let router = Router::builder(ep).accept(SYNC_ALPN, Rude(evil.clone())).spawn();
    let dialer_ep = bind_loopback(Some(key(2))).await.unwrap();
    let table = MemberTable::new();
    table.add(library(1), id(1), device(1));
    let dialer = IrohConnector::new(dialer_ep.clone(), table, ProtoConfig::default());
    let err =
        within("connect", dialer.connect(addr, local(library(1), device(2), 0))).await.unwrap_err();
    match &err {
        ProtoError::Closed { reason, .. } => check(reason),
        other => panic!("expected a close, got {other}"),
    }
    dialer_ep.close().await;
    router.shutdown().await.unwrap();

    // A hostile dialer closing a live session with the same reason.
    let (router, addr, _table, handler) = two_member_node(ProtoConfig::default()).await;
    let ep = attacker(2).await;
    let conn = raw(&ep, &addr).await;
    let (mut send, _recv) = raw_session(&conn, device(2)).await;
    let error = Message::Error(ErrorMessage { code: ErrorCode::INTERNAL, message: evil.clone() });
    send.write_all(&frame::encode_frame(&error, &FrameConfig::default()).unwrap()).await.unwrap();
    send.write_all(&frame::encode_frame(&ping(3), &FrameConfig::default()).unwrap()).await.unwrap();
    handler.wait_for("ping", |h| !h.nonces.lock().unwrap().is_empty()).await;
    conn.close(ErrorCode::INTERNAL.0.into(), evil.as_bytes());
    handler.wait_for("session end", |h| !h.ends.lock().unwrap().is_empty()).await;
    let end = handler.ends.lock().unwrap()[0].clone();
    assert!(!end.contains('\n') && !end.contains('\x1b'), "{end:?}");
    assert!(end.len() <= MAX_REASON_LEN + 64, "{} bytes", end.len());
    ep.close().await;
    legit_member_is_served(&addr).await;
    router.shutdown().await.unwrap();
}
