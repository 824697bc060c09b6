//! Sessions: an authenticated, ordered, two-way message channel with one peer about one
//! library — the seams through which the service gets them, and the small link seam every
//! transport implements.
//!
//! - Outgoing: a [`Connector`] dials a peer and runs the handshake
//!   ([`IrohConnector`](crate::IrohConnector) over iroh, `MemoryConnector` over the in-memory
//!   network of the `test-util` feature).
//! - Incoming: the acceptor runs the handshake and hands every accepted [`Session`] to the
//!   service's [`SessionHandler`].
//!
//! The service codes against [`Session`] alone and cannot tell which transport carries it.
//!
//! # The link seam
//!
//! A transport provides three small objects per connection: a [`SendLink`] (writes encoded
//! frames, finishes, reports when the peer has everything), a [`RecvLink`] (reads one frame
//! with the receiver's limits and deadlines) and a [`LinkCtl`] (closes the connection with a
//! code, reports how it ended). This module owns the traits; `net` (iroh) and `memory`
//! implement them, so the arrows point one way: transports → handshake → session.
//!
//! # Closing
//!
//! - [`Session::close_gracefully`] (and dropping a session, which is a graceful close with
//!   [`ErrorCode::NORMAL`]): everything sent before it is delivered — the stream is finished and
//!   the close waits (at most [`ProtoConfig::close_linger`]) until the peer has received it —
//!   then the connection closes with the code. The peer reads every message, then
//!   `Ok(None)` for `normal` or [`ProtoError::Closed`] with the code.
//! - [`Session::close`] is abrupt: the connection closes at once and data in flight may be lost,
//!   on every transport.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use iroh::EndpointId;
use sync_log::{DeviceId, Epoch, LibraryId, Position};
use tokio::time::Instant;

use crate::error::{ProtoError, sanitize_reason};
use crate::frame::{self, FrameConfig};
use crate::message::{ErrorCode, ErrorMessage, Message, Ping};
use crate::version::{ProtocolVersion, VersionRange};

/// The default stream receive window: how much one stream may carry ahead of its reader —
/// iroh's own default (1.25 MB).
///
/// Larger windows do not help on a fast link and hurt here: 2 MiB halved loopback throughput
/// in `cargo xtask bench proto` (more loss and recovery), and iroh's QUIC aborts a connection
/// whose stream buffer holds more than 1024 gaps (seen with 8 MiB windows under load).
pub const DEFAULT_STREAM_WINDOW: u32 = 1_250_000;
/// The default connection receive window: how much one connection may carry ahead of its
/// readers, over all its streams (twice the stream window: with one stream allowed, the
/// stream window is what binds).
pub const DEFAULT_CONNECTION_WINDOW: u32 = 2 * DEFAULT_STREAM_WINDOW;

/// Protocol settings shared by dialer and acceptor.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProtoConfig {
    /// Versions offered (dialer) or accepted (acceptor). Default: [`VersionRange::SUPPORTED`].
    pub versions: VersionRange,
    /// Framing of the session. Default: 16 MiB maximum frame.
    pub frame: FrameConfig,
    /// Maximum frame size while the handshake runs (the hello and its answer). Default 256 KiB.
    pub handshake_max_frame: u32,
    /// The whole handshake must complete within this — for a dialer, the whole `connect`
    /// (QUIC connection, stream, hello exchange). Default 10 s.
    pub handshake_timeout: Duration,
    /// After sending a refusal frame, how long to wait for the peer to receive it before the
    /// connection is closed. Default 1 s.
    pub refusal_linger: Duration,
    /// A graceful close waits at most this long for the peer to receive what was sent; a
    /// receiver that reads the end of the stream waits at most this long for the close code.
    /// Default 2 s.
    pub close_linger: Duration,
    /// Once the first byte of a frame has arrived, the whole frame must arrive within this, or
    /// the session closes with [`ErrorCode::TIMEOUT`]. Default 30 s.
    pub frame_timeout: Duration,
    /// When nothing arrives on a session for this long (while the service waits in `recv`),
    /// the session sends a probe [`Ping`]; when nothing arrives for as long again, it closes
    /// with [`ErrorCode::TIMEOUT`]. `None`: never. Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// Connections from one endpoint that may await their handshake at once; more are
    /// refused at once with [`ErrorCode::BUSY`]. Default 8.
    pub max_pending_handshakes: usize,
    /// Bytes one stream may carry ahead of its reader (QUIC stream receive window; the
    /// in-memory link's flow control). Default [`DEFAULT_STREAM_WINDOW`].
    pub stream_window: u32,
    /// Bytes one connection may carry ahead of its readers over all streams (QUIC connection
    /// receive window). Default [`DEFAULT_CONNECTION_WINDOW`].
    pub connection_window: u32,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        Self {
            versions: VersionRange::SUPPORTED,
            frame: FrameConfig::default(),
            handshake_max_frame: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            refusal_linger: Duration::from_secs(1),
            close_linger: Duration::from_secs(2),
            frame_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(60)),
            max_pending_handshakes: 8,
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
        }
    }
}

/// What this device says about one library in a handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalState {
    /// The library.
    pub library: LibraryId,
    /// This device's id in it.
    pub device: DeviceId,
    /// Highest epoch seen.
    pub epoch: Epoch,
    /// Log position `(seq, checksum)`.
    pub position: Position,
    /// Model names this build knows (at most [`MAX_MODEL_NAMES`](crate::MAX_MODEL_NAMES),
    /// or the peer refuses the hello as malformed).
    pub models: Vec<String>,
}

/// Which side of the connection this device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// This device dialled.
    Dialer,
    /// This device accepted.
    Acceptor,
}

/// What the handshake established about the peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's endpoint id (authenticated by iroh; claimed, in memory).
    pub endpoint: EndpointId,
    /// The peer's device id, checked against the membership.
    pub device: DeviceId,
    /// Highest epoch the peer has seen.
    pub epoch: Epoch,
    /// The peer's log position.
    pub position: Position,
    /// Model names the peer's build knows.
    pub models: Vec<String>,
}

/// What a session is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The library.
    pub library: LibraryId,
    /// The negotiated protocol version.
    pub version: ProtocolVersion,
    /// Which side this device is.
    pub role: Role,
    /// This device's id.
    pub local_device: DeviceId,
    /// The peer.
    pub peer: PeerInfo,
}

// ---------------------------------------------------------------------------------------------
// The link seam.

/// A boxed, sendable future: what the link traits return (they are used as trait objects).
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One encoded frame: the 6-byte header and the payload, kept apart so a large payload is not
/// copied.
pub(crate) struct OutFrame {
    pub(crate) header: [u8; frame::HEADER_LEN],
    pub(crate) payload: Vec<u8>,
}

impl OutFrame {
    /// Encodes `msg` within the sender's own maximum.
    pub(crate) fn encode(msg: &Message, config: &FrameConfig) -> Result<Self, ProtoError> {
        let (header, payload) = frame::encode_parts(msg, config)?;
        Ok(Self { header, payload })
    }
}

/// The sending direction of a connection's one stream.
pub(crate) trait SendLink: Send + 'static {
    /// Writes one frame, waiting for flow control.
    fn send_frame<'a>(&'a mut self, frame: OutFrame) -> BoxFuture<'a, Result<(), ProtoError>>;
    /// Ends the direction: the peer reads what was sent, then the end of the stream.
    fn finish(&mut self) -> Result<(), ProtoError>;
    /// After [`SendLink::finish`]: resolves once the peer has received everything sent (or
    /// the connection ended).
    fn flushed(&mut self) -> BoxFuture<'_, ()>;
}

/// What one read from a [`RecvLink`] gives.
#[derive(Debug)]
pub(crate) enum Received {
    /// A whole frame, decoded with the receiver's limits.
    Message(Message),
    /// The peer finished its direction cleanly between two frames.
    End,
    /// No byte of a new frame arrived before the idle deadline (nothing was consumed).
    Idle,
}

/// The receiving direction of a connection's one stream.
///
/// Reads are cancel-safe: a read dropped midway keeps what it had, and the next one resumes.
pub(crate) trait RecvLink: Send + 'static {
    /// Reads one frame of at most `max` bytes. Before its first byte, gives up at `idle`
    /// (with [`Received::Idle`]); after it, the frame must complete within `frame_timeout`.
    fn recv_frame<'a>(
        &'a mut self,
        max: u32,
        idle: Option<Instant>,
        frame_timeout: Duration,
    ) -> BoxFuture<'a, Result<Received, ProtoError>>;
}

/// A handle on a whole connection.
pub(crate) trait LinkCtl: Send + Sync + 'static {
    /// Closes at once with a code and a (sanitised, capped) reason; data in flight may be lost.
    fn close(&self, code: ErrorCode, reason: &str);
    /// Resolves when the connection has ended, with why (as a session error).
    fn closed(&self) -> BoxFuture<'_, ProtoError>;
}

/// A connection handle shared by the halves of a session and by the node's bookkeeping:
/// remembers why *this* node's protocol layer closed it.
#[derive(Clone)]
pub(crate) struct Link {
    ctl: Arc<dyn LinkCtl>,
    terminated: Arc<Mutex<Option<(ErrorCode, String)>>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(ctl: Arc<dyn LinkCtl>) -> Self {
        Self { ctl, terminated: Arc::new(Mutex::new(None)) }
    }

    /// Closes at once (the service asked for it); data in flight may be lost.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        self.ctl.close(code, &sanitize_reason(reason));
    }

    /// Closes at once because the protocol layer decided so; the local halves then report
    /// [`ProtoError::Terminated`] with this code.
    pub(crate) fn terminate(&self, code: ErrorCode, reason: &str) {
        let reason = sanitize_reason(reason);
        {
            let mut slot = self.terminated.lock().unwrap_or_else(PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some((code, reason.clone()));
            }
        }
        self.ctl.close(code, &reason);
    }

    /// Resolves when the connection has ended.
    pub(crate) async fn closed(&self) -> ProtoError {
        let err = self.ctl.closed().await;
        self.explain(err)
    }

    /// Turns "closed locally" into the code this node's protocol layer closed with, if it did.
    pub(crate) fn explain(&self, err: ProtoError) -> ProtoError {
        if let ProtoError::LocallyClosed = err
            && let Some((code, reason)) =
                self.terminated.lock().unwrap_or_else(PoisonError::into_inner).clone()
        {
            return ProtoError::Terminated { code, reason };
        }
        err
    }

    /// Finishes `send`, waits (at most `linger`) until the peer has everything, then closes
    /// with `code`. `terminate`: record the code as this node's own decision.
    pub(crate) async fn close_gracefully(
        &self,
        send: &mut dyn SendLink,
        code: ErrorCode,
        reason: &str,
        linger: Duration,
        terminate: bool,
    ) {
        if send.finish().is_ok() {
            let _ = tokio::time::timeout(linger, send.flushed()).await;
        }
        if terminate {
            self.terminate(code, reason);
        } else {
            self.close(code, reason);
        }
    }
}

/// The three parts of a connection the handshake needs.
pub(crate) struct Wire {
    pub(crate) send: Box<dyn SendLink>,
    pub(crate) recv: Box<dyn RecvLink>,
    pub(crate) link: Link,
}

impl fmt::Debug for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wire").finish_non_exhaustive()
    }
}

impl Wire {
    /// Sends one message on a wire that is not a session yet (the handshake).
    pub(crate) async fn send(
        &mut self,
        msg: &Message,
        config: &FrameConfig,
    ) -> Result<(), ProtoError> {
        let frame = OutFrame::encode(msg, config)?;
        let sent = self.send.send_frame(frame).await;
        sent.map_err(|e| self.link.explain(e))
    }

    /// Reads one message of at most `max` bytes (the handshake); the end of the stream is
    /// `Ok(None)`. No idle probing: the handshake has its own timeout.
    pub(crate) async fn recv(
        &mut self,
        max: u32,
        frame_timeout: Duration,
    ) -> Result<Option<Message>, ProtoError> {
        match self.recv.recv_frame(max, None, frame_timeout).await {
            Ok(Received::Message(m)) => Ok(Some(m)),
            Ok(Received::End | Received::Idle) => Ok(None),
            Err(e) => Err(self.link.explain(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions.

/// A hook run once when a session's last half is gone (the node's bookkeeping forgets it).
pub(crate) type OnDrop = Box<dyn FnOnce() + Send>;

/// What both halves of a session share.
struct Core {
    link: Link,
    send: tokio::sync::Mutex<Option<Box<dyn SendLink>>>,
    frame: FrameConfig,
    linger: Duration,
    /// The negotiated protocol version: kinds newer than it are neither sent nor accepted.
    version: ProtocolVersion,
    /// The nonce of an unanswered idle probe (0: none).
    probe: AtomicU64,
    on_drop: Mutex<Option<OnDrop>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        if let Some(hook) = self.on_drop.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            hook();
        }
        // Dropping a session is a graceful close with `normal`: what was sent still arrives.
        let Some(mut send) = self.send.get_mut().take() else {
            return;
        };
        let link = self.link.clone();
        let linger = self.linger;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    link.close_gracefully(&mut *send, ErrorCode::NORMAL, "", linger, false).await;
                });
            }
            Err(_) => link.close(ErrorCode::NORMAL, ""),
        }
    }
}

/// A handle on a live session for the node's bookkeeping (replacement, revocation,
/// shutdown), which never keeps the session alive.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    core: std::sync::Weak<Core>,
    link: Link,
}

impl SessionHandle {
    /// Closes at once; the local halves report [`ProtoError::Terminated`] with `code`.
    pub(crate) fn terminate(&self, code: ErrorCode, reason: &str) {
        self.link.terminate(code, reason);
    }

    /// Delivers what was sent (waiting for a send in progress, and for the peer, at most
    /// `linger` each), then closes with `code`.
    pub(crate) async fn close_gracefully(&self, code: ErrorCode, reason: &str, linger: Duration) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        match tokio::time::timeout(linger, core.send.lock()).await {
            Ok(mut guard) => match guard.as_mut() {
                Some(send) => {
                    self.link.close_gracefully(&mut **send, code, reason, linger, true).await;
                }
                None => self.link.terminate(code, reason),
            },
            Err(_) => self.link.terminate(code, reason),
        }
    }
}

/// An authenticated session: one ordered message channel each way.
///
/// Messages arrive in the order they were sent; none is lost or duplicated while the session
/// lives (the in-memory link's fault injection can break this on purpose). Dropping the
/// session closes it gracefully with [`ErrorCode::NORMAL`]: everything sent still arrives.
#[derive(Debug)]
pub struct Session {
    info: SessionInfo,
    sender: SessionSender,
    receiver: SessionReceiver,
}

/// Timing of the receiving side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecvTiming {
    pub(crate) frame_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
}

impl RecvTiming {
    pub(crate) fn of(config: &ProtoConfig) -> Self {
        Self { frame_timeout: config.frame_timeout, idle_timeout: config.idle_timeout }
    }
}

impl Session {
    /// Builds a session on a wire whose handshake succeeded. Returns the session and the
    /// node's handle on it.
    pub(crate) fn new(
        info: SessionInfo,
        wire: Wire,
        config: &ProtoConfig,
    ) -> (Self, SessionHandle) {
        let Wire { send, recv, link } = wire;
        let core = Arc::new(Core {
            link: link.clone(),
            send: tokio::sync::Mutex::new(Some(send)),
            frame: config.frame,
            linger: config.close_linger,
            version: info.version,
            probe: AtomicU64::new(0),
            on_drop: Mutex::new(None),
        });
        let handle = SessionHandle { core: Arc::downgrade(&core), link };
        let session = Self {
            info,
            sender: SessionSender { core: Arc::clone(&core) },
            receiver: SessionReceiver {
                half: recv,
                core,
                max: config.frame.max_frame_size(),
                timing: RecvTiming::of(config),
                last_rx: Instant::now(),
                ended: false,
            },
        };
        (session, handle)
    }

    /// Sets the hook run once when both halves are gone.
    pub(crate) fn set_on_drop(&self, hook: OnDrop) {
        *self.sender.core.on_drop.lock().unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// What the handshake established.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Sends one message (see [`SessionSender::send`]).
    pub async fn send(&mut self, msg: &Message) -> Result<(), ProtoError> {
        self.sender.send(msg).await
    }

    /// Receives the next message (see [`SessionReceiver::recv`]).
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        self.receiver.recv().await
    }

    /// Closes the connection **at once** with a code: data in flight may be lost, on every
    /// transport. To deliver what was sent first, use [`Session::close_gracefully`].
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.sender.close(code, reason);
    }

    /// Delivers everything sent so far, then closes with `code`: the stream is finished, the
    /// close waits (at most [`ProtoConfig::close_linger`]) until the peer has received it all,
    /// and the peer reads every message before it sees the code (`Ok(None)` for
    /// [`ErrorCode::NORMAL`], [`ProtoError::Closed`] otherwise).
    pub async fn close_gracefully(self, code: ErrorCode, reason: &str) {
        self.sender.close_gracefully(code, reason).await;
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (SessionInfo, SessionSender, SessionReceiver) {
        (self.info, self.sender, self.receiver)
    }
}

/// The sending half of a [`Session`].
pub struct SessionSender {
    core: Arc<Core>,
}

impl fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender").finish_non_exhaustive()
    }
}

impl SessionSender {
    /// Sends one message, waiting while the peer's window is full (about
    /// [`ProtoConfig::stream_window`] bytes ahead of its reader, on every transport). Not
    /// cancel-safe: a send dropped midway may leave half a frame, and the peer then closes
    /// the session.
    ///
    /// Refused locally, with the session still usable: a message too large for this side's
    /// maximum frame ([`FrameError::Oversize`](crate::FrameError::Oversize)), a
    /// handshake-only kind, and a kind newer than the session's negotiated version
    /// ([`MessageKind::since`](crate::MessageKind::since)), both [`ProtoError::NotAllowed`]. A
    /// frame above the *peer's* maximum
    /// makes the peer close the session with [`ErrorCode::FRAME_TOO_LARGE`]: this send, or the
    /// next operation, fails with [`ProtoError::Closed`] and that code.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ProtoError> {
        if msg.kind().is_handshake_only() {
            return Err(ProtoError::NotAllowed {
                kind: msg.kind(),
                why: "handshake messages are sent by the handshake only",
            });
        }
        if msg.kind().since() > self.core.version {
            return Err(ProtoError::NotAllowed {
                kind: msg.kind(),
                why: "the session's protocol version does not know this kind",
            });
        }
        send_on(&self.core, msg).await
    }

    /// Ends the sending direction: the peer reads what was sent, then `Ok(None)` (once this
    /// side closes, or after the peer's [`ProtoConfig::close_linger`]).
    pub fn finish(&mut self) -> Result<(), ProtoError> {
        match self.core.send.try_lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(send) => send.finish().map_err(|e| self.core.link.explain(e)),
                None => Err(ProtoError::LocallyClosed),
            },
            // The protocol layer is sending (an idle probe) or closing: finish right after it.
            // Everything this half sent is already written, so the order is kept.
            Err(_) => {
                let core = Arc::clone(&self.core);
                let finish = async move {
                    if let Some(send) = core.send.lock().await.as_mut() {
                        let _ = send.finish();
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(finish);
                        Ok(())
                    }
                    Err(_) => Err(ProtoError::LocallyClosed),
                }
            }
        }
    }

    /// Closes the whole connection **at once** with a code; data in flight may be lost.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.core.link.close(code, reason);
    }

    /// Delivers everything sent so far, then closes with `code` (see
    /// [`Session::close_gracefully`]).
    pub async fn close_gracefully(self, code: ErrorCode, reason: &str) {
        let mut guard = self.core.send.lock().await;
        match guard.take() {
            Some(mut send) => {
                self.core
                    .link
                    .close_gracefully(&mut *send, code, reason, self.core.linger, false)
                    .await;
            }
            None => self.core.link.close(code, reason),
        }
    }
}

/// Encodes and sends on a session's shared sending half.
async fn send_on(core: &Core, msg: &Message) -> Result<(), ProtoError> {
    let frame = OutFrame::encode(msg, &core.frame)?;
    let mut guard = core.send.lock().await;
    let Some(send) = guard.as_mut() else {
        return Err(core.link.explain(ProtoError::LocallyClosed));
    };
    let sent = send.send_frame(frame).await;
    sent.map_err(|e| core.link.explain(e))
}

/// The receiving half of a [`Session`].
pub struct SessionReceiver {
    half: Box<dyn RecvLink>,
    core: Arc<Core>,
    max: u32,
    timing: RecvTiming,
    last_rx: Instant,
    ended: bool,
}

impl fmt::Debug for SessionReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionReceiver").field("max", &self.max).finish_non_exhaustive()
    }
}

impl SessionReceiver {
    /// Receives the next message; `Ok(None)` when the peer ended the session normally.
    ///
    /// Cancel-safe: a `recv` dropped midway (e.g. in a `select!`) loses nothing.
    ///
    /// Closes the connection, and returns the error, when the peer breaks the protocol: a
    /// frame above this side's maximum ([`ErrorCode::FRAME_TOO_LARGE`]); a truncated, unknown
    /// or malformed frame, a handshake-only message after the handshake, or a kind newer than
    /// the session's negotiated version ([`ErrorCode::PROTOCOL_ERROR`]); a frame that does not complete within
    /// [`ProtoConfig::frame_timeout`], or silence for twice [`ProtoConfig::idle_timeout`]
    /// with the probe in between unanswered ([`ErrorCode::TIMEOUT`]). The text of a peer's
    /// `Error` message is sanitised and capped like a close reason.
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        loop {
            if self.ended {
                return self.end().await;
            }
            let idle = self.timing.idle_timeout.map(|t| self.last_rx + t);
            let got = self.half.recv_frame(self.max, idle, self.timing.frame_timeout).await;
            match got {
                Ok(Received::Message(msg)) => {
                    self.last_rx = Instant::now();
                    self.core.probe.store(0, Ordering::Relaxed);
                    match msg {
                        m if m.kind().is_handshake_only() => {
                            let err = ProtoError::NotAllowed {
                                kind: m.kind(),
                                why: "handshake message after the handshake",
                            };
                            tracing::info!(%err, "peer broke the protocol; closing the session");
                            self.core.link.terminate(err.code(), &err.to_string());
                            return Err(err);
                        }
                        m if m.kind().since() > self.core.version => {
                            let err = ProtoError::NotAllowed {
                                kind: m.kind(),
                                why: "a kind newer than the session's protocol version",
                            };
                            tracing::info!(%err, "peer broke the protocol; closing the session");
                            self.core.link.terminate(err.code(), &err.to_string());
                            return Err(err);
                        }
                        Message::Pong(p) if p.nonce != 0 && self.is_probe_answer(p.nonce) => {
                            continue;
                        }
                        Message::Error(ErrorMessage { code, message }) => {
                            let message = sanitize_reason(&message);
                            return Ok(Some(Message::Error(ErrorMessage { code, message })));
                        }
                        m => return Ok(Some(m)),
                    }
                }
                Ok(Received::End) => {
                    self.ended = true;
                }
                // The peer closed normally, after everything it sent was taken.
                Err(ProtoError::Closed { code: ErrorCode::NORMAL, .. }) => return Ok(None),
                Ok(Received::Idle) => self.idle().await?,
                Err(ProtoError::Frame(e)) => {
                    tracing::info!(error = %e, "bad frame from peer; closing the session");
                    self.core.link.terminate(e.close_code(), &e.to_string());
                    return Err(ProtoError::Frame(e));
                }
                Err(e @ ProtoError::Timeout { .. }) => {
                    tracing::info!(error = %e, "peer stalled inside a frame; closing the session");
                    self.core.link.terminate(e.code(), &e.to_string());
                    return Err(e);
                }
                Err(e) => return Err(self.core.link.explain(e)),
            }
        }
    }

    /// The idle deadline passed: probe once, close the second time.
    async fn idle(&mut self) -> Result<(), ProtoError> {
        let after = self.timing.idle_timeout.unwrap_or_default();
        if self.core.probe.load(Ordering::Relaxed) != 0 {
            let err = ProtoError::Timeout { what: "no frame (nor an answer to a probe)", after };
            tracing::info!(error = %err, "idle session; closing it");
            self.core.link.terminate(err.code(), &err.to_string());
            return Err(err);
        }
        let nonce = rand::random::<u64>() | 1;
        self.core.probe.store(nonce, Ordering::Relaxed);
        self.last_rx = Instant::now();
        let probe = Message::Ping(Ping { nonce, payload: bytes::Bytes::new() });
        // Sent from its own task: a `recv` cancelled meanwhile must not cut a frame in half,
        // and a send stuck behind a full window must not stall the receiver (the probe is then
        // dropped, and the next deadline closes the session).
        let core = Arc::clone(&self.core);
        let send = async move {
            let _ = tokio::time::timeout(after, send_on(&core, &probe)).await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(send)),
            Err(_) => send.await,
        }
        Ok(())
    }

    fn is_probe_answer(&self, nonce: u64) -> bool {
        self.core.probe.compare_exchange(nonce, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// The peer finished its direction: the session is over once the connection closes (its
    /// code says how), or after the linger if the peer keeps it open (a half-close).
    async fn end(&mut self) -> Result<Option<Message>, ProtoError> {
        match tokio::time::timeout(self.core.linger, self.core.link.closed()).await {
            Ok(ProtoError::Closed { code, .. }) if code == ErrorCode::NORMAL => Ok(None),
            Ok(err @ (ProtoError::Closed { .. } | ProtoError::Terminated { .. })) => Err(err),
            Ok(_) | Err(_) => Ok(None),
        }
    }

    /// Closes the whole connection **at once** with a code; data in flight may be lost.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.core.link.close(code, reason);
    }
}

/// The service's side of incoming sessions.
pub trait SessionHandler: Send + Sync + 'static {
    /// This device's state for a hosted library (the hello answer), or `None` if the library
    /// is not hosted (the peer is then refused with
    /// [`ErrorCode::FOREIGN_LIBRARY`]).
    fn local_state(&self, library: &LibraryId) -> Option<LocalState>;

    /// Runs an accepted session to its end. Runs on the connection's own task. The
    /// connection lives as long as the session (or one of its halves, if `serve` handed them
    /// to other tasks); dropping it closes gracefully: what was sent still arrives.
    fn serve(&self, session: Session) -> impl Future<Output = ()> + Send;

    /// Told about every refused or failed incoming handshake. Default: a log line (the error's
    /// text holds no raw peer input: reasons are sanitised and capped).
    fn refused(&self, peer: &EndpointId, error: &ProtoError) {
        tracing::info!(peer = %peer.fmt_short(), %error, "sync handshake refused");
    }
}

/// Dials peers and runs the handshake: the outgoing half of the transport seam.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `peer`, says hello with `local`, and returns the session — or why not
    /// (see [`ProtoError::is_retryable`]). The whole connect is bounded by
    /// [`ProtoConfig::handshake_timeout`].
    fn connect(
        &self,
        peer: iroh::EndpointAddr,
        local: LocalState,
    ) -> impl Future<Output = Result<Session, ProtoError>> + Send;
}
