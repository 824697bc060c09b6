//! One suite of transport behaviours, run against both transports (as openraft runs one
//! storage suite against every store): every test is a function generic over a
//! [`Transport`], instantiated once for the in-memory network and once for real iroh on
//! loopback. A service tested over `MemoryNetwork` sees what it would see over iroh:
//! delivery before a graceful close, the shutdown code, the backpressure bound, oversize
//! sends, drop, finish, abrupt close and idle probing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use iroh::EndpointAddr;
use iroh::protocol::Router;
use sync_log::LibraryId;
use sync_proto::*;
use tokio::sync::Notify;

type Script =
    Arc<dyn Fn(Session, Arc<Log>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the server's scripted handler saw.
#[derive(Default)]
struct Log {
    nonces: Mutex<Vec<u64>>,
    ends: Mutex<Vec<String>>,
    changed: Notify,
}

impl Log {
    fn note_nonce(&self, n: u64) {
        self.nonces.lock().unwrap().push(n);
        self.changed.notify_waiters();
    }

    fn note_end(&self, end: String) {
        self.ends.lock().unwrap().push(end);
        self.changed.notify_waiters();
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&Self) -> bool) {
        wait_notified(&self.changed, what, || check(self)).await;
    }
}

/// A server handler that runs a script on every session.
struct Scripted {
    state: LocalState,
    script: Script,
    log: Arc<Log>,
}

impl SessionHandler for Scripted {
    fn local_state(&self, library: &LibraryId) -> Option<LocalState> {
        (*library == self.state.library).then(|| self.state.clone())
    }

    fn serve(&self, session: Session) -> impl Future<Output = ()> + Send {
        (self.script)(session, Arc::clone(&self.log))
    }
}

fn script<F, Fut>(f: F) -> Script
where
    F: Fn(Session, Arc<Log>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |s, l| Box::pin(f(s, l)))
}

/// Reads until the session ends, noting ping nonces (answering them) and the end.
async fn read_all(mut session: Session, log: Arc<Log>) {
    let end = loop {
        match session.recv().await {
            Ok(Some(Message::Ping(p))) => {
                log.note_nonce(p.nonce);
                let pong = Message::Pong(Pong { nonce: p.nonce, payload: p.payload });
                if let Err(e) = session.send(&pong).await {
                    break format!("error: {e}");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break "end".to_string(),
            Err(e) => break format!("error: {e}"),
        }
    };
    log.note_end(end);
}

/// Reads until the session ends, noting ping nonces (never answering) and the end.
async fn read_only(mut session: Session, log: Arc<Log>) {
    let end = loop {
        match session.recv().await {
            Ok(Some(Message::Ping(p))) => log.note_nonce(p.nonce),
            Ok(Some(_)) => {}
            Ok(None) => break "end".to_string(),
            Err(e) => break format!("error: {e}"),
        }
    };
    log.note_end(end);
}

/// A client and a server of one library over one transport.
struct Rig<T: Transport> {
    connector: T::Connector,
    server: EndpointAddr,
    log: Arc<Log>,
    inner: T::Inner,
}

impl<T: Transport> Rig<T> {
    async fn connect(&self) -> Session {
        within(
            "connect",
            self.connector.connect(self.server.clone(), local(library(1), device(2), 0)),
        )
        .await
        .unwrap()
    }
}

/// A transport the suite runs against.
trait Transport: Sized + 'static {
    type Connector: Connector;
    type Inner: Send + Sync;
    fn start(
        server: ProtoConfig,
        client: ProtoConfig,
        script: Script,
    ) -> impl Future<Output = Rig<Self>> + Send;
    /// Shuts the server node down (router shutdown, or the memory node's).
    fn shutdown_server(rig: &Rig<Self>) -> impl Future<Output = ()> + Send;
    /// Shuts the client node down (its connector's shutdown, or the memory node's).
    fn shutdown_client(rig: &Rig<Self>) -> impl Future<Output = ()> + Send;
    fn stop(rig: Rig<Self>) -> impl Future<Output = ()> + Send;
}

fn tables() -> (MemberTable, MemberTable) {
    let server = MemberTable::new();
    server.add(library(1), id(2), device(2));
    let client = MemberTable::new();
    client.add(library(1), id(1), device(1));
    (server, client)
}

struct Memory;

impl Transport for Memory {
    type Connector = MemoryConnector<MemberTable>;
    type Inner = MemoryNetwork;

    async fn start(server: ProtoConfig, client: ProtoConfig, script: Script) -> Rig<Self> {
        let seed = 0x7A5E;
        println!("memory network seed: {seed}");
        let net = MemoryNetwork::new(seed);
        let (server_table, client_table) = tables();
        let log = Arc::new(Log::default());
        let handler = Arc::new(Scripted {
            state: local(library(1), device(1), 0),
            script,
            log: Arc::clone(&log),
        });
        net.add_node(id(1), server_table, handler, server);
        let connector = net.add_node(id(2), client_table, Answering::new([]), client);
        Rig { connector, server: EndpointAddr::new(id(1)), log, inner: net }
    }

    async fn shutdown_server(rig: &Rig<Self>) {
        rig.inner.shutdown_node(&id(1)).await;
    }

    async fn shutdown_client(rig: &Rig<Self>) {
        rig.inner.shutdown_node(&id(2)).await;
    }

    async fn stop(rig: Rig<Self>) {
        rig.inner.shutdown().await;
    }
}

struct Iroh;

struct IrohInner {
    router: Router,
    client: iroh::Endpoint,
}

impl Transport for Iroh {
    type Connector = IrohConnector<MemberTable>;
    type Inner = IrohInner;

    async fn start(server: ProtoConfig, client: ProtoConfig, script: Script) -> Rig<Self> {
        let (server_table, client_table) = tables();
        let log = Arc::new(Log::default());
        let handler = Arc::new(Scripted {
            state: local(library(1), device(1), 0),
            script,
            log: Arc::clone(&log),
        });
        let endpoint = bind_loopback_with(Some(key(1)), &server).await.unwrap();
        let addr = loopback_addr(&endpoint);
        let router = Router::builder(endpoint)
            .accept(SYNC_ALPN, SyncProtocol::new(server_table, handler, server))
            .spawn();
        let client_ep = bind_loopback_with(Some(key(2)), &client).await.unwrap();
        let connector = IrohConnector::new(client_ep.clone(), client_table, client);
        Rig { connector, server: addr, log, inner: IrohInner { router, client: client_ep } }
    }

    async fn shutdown_server(rig: &Rig<Self>) {
        rig.inner.router.shutdown().await.unwrap();
    }

    async fn shutdown_client(rig: &Rig<Self>) {
        rig.connector.shutdown().await;
    }

    async fn stop(rig: Rig<Self>) {
        rig.inner.router.shutdown().await.unwrap();
        rig.inner.client.close().await;
    }
}

/// Instantiates each generic behaviour for both transports.
macro_rules! suite {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        mod over_memory {
            $(
                $(#[$doc])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::Memory>().await;
                }
            )*
        }
        mod over_iroh {
            $(
                $(#[$doc])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::Iroh>().await;
                }
            )*
        }
    };
}

suite! {
    /// Every message sent before a graceful close arrives, then the close code.
    delivery_before_graceful_close;
    /// Every message sent before `serve` returns arrives, then a normal end.
    delivery_before_serve_returns;
    /// A `serve` that returns at once still completes the dialer's handshake.
    serve_returning_at_once_completes_the_handshake;
    /// Node shutdown closes sessions with SHUTTING_DOWN (retryable), after what was sent.
    shutdown_sends_shutting_down;
    /// A dialler's shutdown closes the sessions it dialled with SHUTTING_DOWN, after what it
    /// sent, and it dials no more.
    dialer_shutdown_sends_shutting_down;
    /// A sender facing a peer that never reads blocks after about one stream window.
    backpressure_is_bounded_by_the_window;
    /// A frame above the receiver's maximum ends the session with FRAME_TOO_LARGE.
    oversize_send_ends_the_session_with_frame_too_large;
    /// Dropping a session delivers what it sent, then a normal end.
    drop_is_a_graceful_normal_end;
    /// Finishing the sending half is a half-close: the peer still answers, then ends.
    finish_is_a_half_close;
    /// An abrupt close reaches the peer with its code.
    abrupt_close_reports_its_code;
    /// Handshake-only kinds are refused locally with NotAllowed; the session stays usable.
    handshake_kinds_cannot_be_sent_in_a_session;
    /// A quiet peer that answers probes keeps its session; a silent one is closed with TIMEOUT.
    idle_sessions_are_probed_then_closed;
    /// The text of a peer's Error message reaches the service sanitised and capped.
    peer_error_text_is_sanitised;
    /// `recv` is cancel-safe: cancelled again and again midway through large frames, it
    /// still yields every message whole and in order.
    recv_is_cancel_safe;
}

fn pings(n: u64) -> impl Iterator<Item = Message> {
    (0..n).map(|i| Message::Ping(Ping { nonce: i, payload: Bytes::from(vec![i as u8; 1000]) }))
}

/// Receives pings until the session ends; returns their nonces and how it ended.
async fn collect(session: &mut Session) -> (Vec<u64>, Result<(), ProtoError>) {
    let mut got = Vec::new();
    loop {
        match within("recv", session.recv()).await {
            Ok(Some(Message::Ping(p))) => got.push(p.nonce),
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => return (got, Ok(())),
            Err(e) => return (got, Err(e)),
        }
    }
}

async fn delivery_before_graceful_close<T: Transport>() {
    let rig = T::start(
        ProtoConfig::default(),
        ProtoConfig::default(),
        script(|mut session, _| async move {
            for msg in pings(50) {
                session.send(&msg).await.unwrap();
            }
            session.close_gracefully(ErrorCode::NOT_LEADER, "go elsewhere").await;
        }),
    )
    .await;
    let mut session = rig.connect().await;
    let (got, end) = collect(&mut session).await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let err = end.unwrap_err();
    assert!(
        matches!(&err, ProtoError::Closed { code: ErrorCode::NOT_LEADER, reason } if reason == "go elsewhere"),
        "{err}"
    );
    T::stop(rig).await;
}

async fn delivery_before_serve_returns<T: Transport>() {
    let rig = T::start(
        ProtoConfig::default(),
        ProtoConfig::default(),
        script(|mut session, _| async move {
            for msg in pings(50) {
                session.send(&msg).await.unwrap();
            }
        }),
    )
    .await;
    let mut session = rig.connect().await;
    let (got, end) = collect(&mut session).await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    end.unwrap();
    T::stop(rig).await;
}

async fn serve_returning_at_once_completes_the_handshake<T: Transport>() {
    let rig =
        T::start(ProtoConfig::default(), ProtoConfig::default(), script(|_, _| async {})).await;
    let mut session = rig.connect().await;
    assert_eq!(session.info().peer.device, device(1));
    assert_eq!(within("end", session.recv()).await.unwrap(), None);
    T::stop(rig).await;
}

async fn shutdown_sends_shutting_down<T: Transport>() {
    let rig = T::start(ProtoConfig::default(), ProtoConfig::default(), script(read_all)).await;
    let mut session = rig.connect().await;
    round_trip(&mut session, 1).await;
    T::shutdown_server(&rig).await;
    let err = within("end", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::Closed { code: ErrorCode::SHUTTING_DOWN, .. }), "{err}");
    assert!(err.is_retryable());
    rig.log.wait_for("server session end", |l| !l.ends.lock().unwrap().is_empty()).await;
    let end = rig.log.ends.lock().unwrap()[0].clone();
    assert!(end.contains("shutting-down"), "{end}");
    T::stop(rig).await;
}

async fn dialer_shutdown_sends_shutting_down<T: Transport>() {
    let rig = T::start(ProtoConfig::default(), ProtoConfig::default(), script(read_only)).await;
    let mut session = rig.connect().await;
    for msg in pings(10) {
        session.send(&msg).await.unwrap();
    }
    T::shutdown_client(&rig).await;
    rig.log.wait_for("server end", |l| !l.ends.lock().unwrap().is_empty()).await;
    assert_eq!(*rig.log.nonces.lock().unwrap(), (0..10).collect::<Vec<_>>());
    let end = rig.log.ends.lock().unwrap()[0].clone();
    assert!(end.contains("shutting-down"), "{end}");
    let err = within("local end", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::Terminated { code: ErrorCode::SHUTTING_DOWN, .. }), "{err}");
    let again = rig.connector.connect(rig.server.clone(), local(library(1), device(2), 0)).await;
    assert!(again.is_err(), "dialled after shutdown");
    T::stop(rig).await;
}

async fn backpressure_is_bounded_by_the_window<T: Transport>() {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx = Arc::new(stop_rx);
    let rig = T::start(
        ProtoConfig::default(),
        ProtoConfig::default(),
        script(move |session, _| {
            let mut stop = (*stop_rx).clone();
            async move {
                // Never reads; holds the session until told.
                let _ = stop.wait_for(|s| *s).await;
                drop(session);
            }
        }),
    )
    .await;
    let mut session = rig.connect().await;
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut sent = 0usize;
    // A send that makes no progress for a second is blocked by flow control.
    loop {
        let msg =
            Message::SnapshotChunk(SnapshotChunk { offset: sent as u64, data: chunk.clone() });
        match tokio::time::timeout(Duration::from_secs(1), session.send(&msg)).await {
            Ok(r) => {
                r.unwrap();
                sent += chunk.len();
            }
            Err(_) => break,
        }
        assert!(sent <= 64 * 1024 * 1024, "never blocked after {sent} bytes");
    }
    println!(
        "blocked after {} KiB (stream window {} KiB)",
        sent / 1024,
        DEFAULT_STREAM_WINDOW / 1024
    );
    let window = DEFAULT_STREAM_WINDOW as usize;
    assert!(sent >= window / 2 && sent <= 2 * window + chunk.len(), "blocked after {sent} bytes");
    stop_tx.send_replace(true);
    drop(session);
    T::stop(rig).await;
}

async fn oversize_send_ends_the_session_with_frame_too_large<T: Transport>() {
    for size in [100 * 1024, 3 * DEFAULT_STREAM_WINDOW as usize] {
        let mut small = ProtoConfig::default();
        small.frame = FrameConfig::new(64 * 1024).unwrap();
        let rig = T::start(small, ProtoConfig::default(), script(read_all)).await;
        let mut session = rig.connect().await;
        let big = Message::Ping(Ping { nonce: 1, payload: Bytes::from(vec![0; size]) });
        let code = match within("oversize send", session.send(&big)).await {
            Err(ProtoError::Closed { code, .. }) => code,
            Ok(()) => match within("recv", session.recv()).await {
                Err(ProtoError::Closed { code, .. }) => code,
                other => panic!("expected a close, got {other:?}"),
            },
            Err(other) => panic!("expected a close, got {other}"),
        };
        assert_eq!(code, ErrorCode::FRAME_TOO_LARGE, "frame of {size} bytes");
        rig.log.wait_for("server end", |l| !l.ends.lock().unwrap().is_empty()).await;
        assert!(rig.log.ends.lock().unwrap()[0].contains("exceeds the maximum"));
        T::stop(rig).await;
    }
}

async fn drop_is_a_graceful_normal_end<T: Transport>() {
    let rig = T::start(ProtoConfig::default(), ProtoConfig::default(), script(read_only)).await;
    let mut session = rig.connect().await;
    for msg in pings(20) {
        session.send(&msg).await.unwrap();
    }
    drop(session);
    rig.log.wait_for("server end", |l| !l.ends.lock().unwrap().is_empty()).await;
    assert_eq!(*rig.log.nonces.lock().unwrap(), (0..20).collect::<Vec<_>>());
    assert_eq!(rig.log.ends.lock().unwrap()[0], "end");
    T::stop(rig).await;
}

async fn finish_is_a_half_close<T: Transport>() {
    let rig = T::start(ProtoConfig::default(), ProtoConfig::default(), script(read_all)).await;
    let session = rig.connect().await;
    let (_, mut tx, mut rx) = session.split();
    tx.send(&ping(5)).await.unwrap();
    tx.finish().unwrap();
    assert!(
        matches!(within("pong", rx.recv()).await.unwrap(), Some(Message::Pong(p)) if p.nonce == 5)
    );
    assert_eq!(within("end", rx.recv()).await.unwrap(), None);
    rig.log.wait_for("server end", |l| !l.ends.lock().unwrap().is_empty()).await;
    assert_eq!(rig.log.ends.lock().unwrap()[0], "end");
    T::stop(rig).await;
}

async fn abrupt_close_reports_its_code<T: Transport>() {
    let rig = T::start(ProtoConfig::default(), ProtoConfig::default(), script(read_all)).await;
    let mut session = rig.connect().await;
    round_trip(&mut session, 1).await;
    session.close(ErrorCode::STALE_EPOCH, "old epoch");
    rig.log.wait_for("server end", |l| !l.ends.lock().unwrap().is_empty()).await;
    let end = rig.log.ends.lock().unwrap()[0].clone();
    assert!(end.contains("stale-epoch") && end.contains("old epoch"), "{end}");
    let err = within("after close", session.recv()).await.unwrap_err();
    assert!(matches!(err, ProtoError::LocallyClosed), "{err}");
    T::stop(rig).await;
}

async fn handshake_kinds_cannot_be_sent_in_a_session<T: Transport>() {
    let rig = T::start(ProtoConfig::default(), ProtoConfig::default(), script(read_all)).await;
    let mut session = rig.connect().await;
    let hello = Message::Hello(Hello {
        versions: VersionRange::SUPPORTED,
        library: library(1),
        device: device(2),
        epoch: sync_log::Epoch(0),
        position: sync_log::Position::default(),
        models: vec![],
    });
    let err = session.send(&hello).await.unwrap_err();
    assert!(matches!(err, ProtoError::NotAllowed { kind: MessageKind::Hello, .. }), "{err}");
    round_trip(&mut session, 2).await;
    T::stop(rig).await;
}

async fn idle_sessions_are_probed_then_closed<T: Transport>() {
    let mut server = ProtoConfig::default();
    server.idle_timeout = Some(Duration::from_millis(150));
    let rig = T::start(server, ProtoConfig::default(), script(read_all)).await;
    // A quiet client that answers pings: probed again and again, never closed.
    let mut session = rig.connect().await;
    let mut probes = 0;
    while probes < 3 {
        match within("probe", session.recv()).await.unwrap() {
            Some(Message::Ping(p)) => {
                assert!(p.payload.is_empty());
                probes += 1;
                session
                    .send(&Message::Pong(Pong { nonce: p.nonce, payload: p.payload }))
                    .await
                    .unwrap();
            }
            other => panic!("expected a probe, got {other:?}"),
        }
    }
    round_trip(&mut session, 9).await;
    assert!(rig.log.ends.lock().unwrap().is_empty(), "a live session was closed");
    drop(session);
    rig.log.wait_for("first session end", |l| l.ends.lock().unwrap().len() == 1).await;
    // A client that never answers: closed with TIMEOUT after the unanswered probe.
    let quiet = rig.connect().await;
    let (_, _tx, _rx) = quiet.split();
    rig.log.wait_for("idle close", |l| l.ends.lock().unwrap().len() == 2).await;
    let end = rig.log.ends.lock().unwrap()[1].clone();
    assert!(end.contains("stalled"), "{end}");
    T::stop(rig).await;
}

async fn peer_error_text_is_sanitised<T: Transport>() {
    let rig = T::start(
        ProtoConfig::default(),
        ProtoConfig::default(),
        script(|mut session, log| async move {
            if let Ok(Some(Message::Error(e))) = session.recv().await {
                log.note_end(e.message);
            }
        }),
    )
    .await;
    let mut session = rig.connect().await;
    let evil = format!("one\ntwo\x1b[2J\u{202e}{}", "B".repeat(400));
    session
        .send(&Message::Error(ErrorMessage { code: ErrorCode::INTERNAL, message: evil }))
        .await
        .unwrap();
    rig.log.wait_for("error text", |l| !l.ends.lock().unwrap().is_empty()).await;
    let text = rig.log.ends.lock().unwrap()[0].clone();
    assert!(text.starts_with("one"), "{text:?}");
    assert!(!text.chars().any(|c| c.is_control() || c == '\u{202e}'), "{text:?}");
    assert!(text.len() <= MAX_REASON_LEN, "{} bytes", text.len());
    T::stop(rig).await;
}

async fn recv_is_cancel_safe<T: Transport>() {
    let rig = T::start(
        ProtoConfig::default(),
        ProtoConfig::default(),
        script(|mut session, _| async move {
            for n in 0..20u64 {
                let payload = Bytes::from(vec![n as u8; 300 * 1024]);
                session.send(&Message::Ping(Ping { nonce: n, payload })).await.unwrap();
            }
            session.close_gracefully(ErrorCode::NORMAL, "").await;
        }),
    )
    .await;
    let mut session = rig.connect().await;
    let mut got = Vec::new();
    let mut cancelled = 0u32;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "only {} messages", got.len());
        tokio::select! {
            msg = session.recv() => match msg.unwrap() {
                Some(Message::Ping(p)) => {
                    assert!(p.payload.len() == 300 * 1024 && p.payload.iter().all(|b| *b == p.nonce as u8));
                    got.push(p.nonce);
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            },
            // Cancels the pending `recv` (a canceller, not a wait for state).
            () = tokio::time::sleep(Duration::from_micros(200)) => cancelled += 1,
        }
    }
    println!("{cancelled} cancelled reads");
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    T::stop(rig).await;
}
