//! Sessions: an authenticated, ordered, two-way message channel with one peer about one
//! library — and the seams through which the service gets them.
//!
//! - Outgoing: a [`Connector`] dials a peer and runs the handshake
//!   ([`IrohConnector`](crate::IrohConnector) over iroh,
//!   [`MemoryConnector`](crate::MemoryConnector) over the in-memory network).
//! - Incoming: the acceptor runs the handshake and hands every accepted [`Session`] to the
//!   service's [`SessionHandler`] (over iroh via [`SyncProtocol`](crate::SyncProtocol) on the
//!   router; in memory via [`MemoryNetwork::add_node`](crate::MemoryNetwork::add_node)).
//!
//! The service codes against [`Session`] alone and cannot tell which transport carries it.

use std::future::Future;
use std::time::Duration;

use iroh::EndpointId;
use iroh::endpoint::{Connection, RecvStream, SendStream};
use sync_log::{DeviceId, Epoch, LibraryId, Position};

use crate::error::ProtoError;
use crate::frame::{FrameConfig, FrameReader, FrameWriter};
use crate::memory::{MemLink, MemRecv, MemSend};
use crate::message::{ErrorCode, Message};
use crate::net;
use crate::version::{ProtocolVersion, VersionRange};

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
    /// The whole handshake must complete within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// After sending a refusal frame, how long to wait for the peer to receive it before the
    /// connection is closed. Default 1 s.
    pub refusal_linger: Duration,
}

impl Default for ProtoConfig {
    fn default() -> Self {
        Self {
            versions: VersionRange::SUPPORTED,
            frame: FrameConfig::default(),
            handshake_max_frame: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
            refusal_linger: Duration::from_secs(1),
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

/// An authenticated session: one ordered message channel each way.
///
/// Messages arrive in the order they were sent; none is lost or duplicated while the session
/// lives (the in-memory link's fault injection can break this on purpose, see
/// [`Faults`](crate::Faults)).
#[derive(Debug)]
pub struct Session {
    info: SessionInfo,
    sender: SessionSender,
    receiver: SessionReceiver,
}

impl Session {
    pub(crate) fn new(info: SessionInfo, wire: Wire, frame: FrameConfig) -> Self {
        let Wire { send, recv, link } = wire;
        Self {
            info,
            sender: SessionSender { half: send, link: link.clone() },
            receiver: SessionReceiver { half: recv, link, max: frame.max_frame_size() },
        }
    }

    /// What the handshake established.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ProtoError> {
        self.sender.send(msg).await
    }

    /// Receives the next message; `Ok(None)` when the peer ended the session normally.
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        self.receiver.recv().await
    }

    /// Closes the connection at once with a code (pending data may be lost).
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.sender.link.close(code, reason);
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (SessionInfo, SessionSender, SessionReceiver) {
        (self.info, self.sender, self.receiver)
    }
}

/// The sending half of a [`Session`].
#[derive(Debug)]
pub struct SessionSender {
    half: SendHalf,
    link: Link,
}

impl SessionSender {
    /// Sends one message. A message too large for a frame is refused locally
    /// ([`FrameError::Oversize`](crate::FrameError::Oversize)) and the session stays usable.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ProtoError> {
        self.half.send(msg).await
    }

    /// Ends the sending direction: the peer reads what was sent, then `Ok(None)`.
    pub fn finish(&mut self) -> Result<(), ProtoError> {
        self.half.finish()
    }

    /// Closes the whole connection at once with a code.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.link.close(code, reason);
    }
}

/// The receiving half of a [`Session`].
#[derive(Debug)]
pub struct SessionReceiver {
    half: RecvHalf,
    link: Link,
    max: u32,
}

impl SessionReceiver {
    /// Receives the next message; `Ok(None)` when the peer ended the session normally.
    ///
    /// A frame the peer got wrong (oversize, truncated, garbage, unknown kind) closes the
    /// connection with [`ErrorCode::FRAME_TOO_LARGE`] or [`ErrorCode::PROTOCOL_ERROR`] and
    /// returns the [`FrameError`](crate::FrameError).
    pub async fn recv(&mut self) -> Result<Option<Message>, ProtoError> {
        match self.half.recv(self.max).await {
            Err(ProtoError::Closed { code: ErrorCode::NORMAL, .. }) => Ok(None),
            Err(ProtoError::Frame(e)) => {
                self.link.close(e.close_code(), &e.to_string());
                Err(ProtoError::Frame(e))
            }
            other => other,
        }
    }

    /// Closes the whole connection at once with a code.
    pub fn close(&self, code: ErrorCode, reason: &str) {
        self.link.close(code, reason);
    }
}

/// The service's side of incoming sessions.
pub trait SessionHandler: Send + Sync + 'static {
    /// This device's state for a hosted library (the hello answer), or `None` if the library
    /// is not hosted (the peer is then refused with
    /// [`ErrorCode::FOREIGN_LIBRARY`]).
    fn local_state(&self, library: &LibraryId) -> Option<LocalState>;

    /// Runs an accepted session to its end. Runs on the connection's own task; the connection
    /// closes when it returns (or when the node shuts down).
    fn serve(&self, session: Session) -> impl Future<Output = ()> + Send;

    /// Told about every refused or failed incoming handshake. Default: a log line.
    fn refused(&self, peer: &EndpointId, error: &ProtoError) {
        tracing::info!(peer = %peer.fmt_short(), %error, "sync handshake refused");
    }
}

/// Dials peers and runs the handshake: the outgoing half of the transport seam.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `peer`, says hello with `local`, and returns the session — or why not
    /// (see [`ProtoError::is_retryable`]).
    fn connect(
        &self,
        peer: iroh::EndpointAddr,
        local: LocalState,
    ) -> impl Future<Output = Result<Session, ProtoError>> + Send;
}

/// The three parts of a connection the handshake needs.
#[derive(Debug)]
pub(crate) struct Wire {
    pub(crate) send: SendHalf,
    pub(crate) recv: RecvHalf,
    pub(crate) link: Link,
}

#[derive(Debug)]
pub(crate) enum SendHalf {
    Iroh(FrameWriter<SendStream>),
    /// Boxed: the lane's random generator is large, and this path is for tests.
    Memory(Box<MemSend>),
}

impl SendHalf {
    pub(crate) async fn send(&mut self, msg: &Message) -> Result<(), ProtoError> {
        match self {
            Self::Iroh(w) => w.write(msg).await.map_err(net::map_frame_error),
            Self::Memory(m) => m.send(msg).await,
        }
    }

    pub(crate) fn finish(&mut self) -> Result<(), ProtoError> {
        match self {
            Self::Iroh(w) => {
                w.get_mut().finish().map_err(|e| ProtoError::ConnectionLost(e.to_string()))
            }
            Self::Memory(m) => {
                m.finish();
                Ok(())
            }
        }
    }
}

#[derive(Debug)]
pub(crate) enum RecvHalf {
    Iroh(FrameReader<RecvStream>),
    Memory(MemRecv),
}

impl RecvHalf {
    /// Reads one frame of at most `max` bytes; no close-on-error policy here.
    pub(crate) async fn recv(&mut self, max: u32) -> Result<Option<Message>, ProtoError> {
        match self {
            Self::Iroh(r) => r.read_limited(max).await.map_err(net::map_frame_error),
            Self::Memory(m) => m.recv(max).await,
        }
    }
}

/// A handle on the whole connection, to close it.
#[derive(Clone, Debug)]
pub(crate) enum Link {
    Iroh(Connection),
    Memory(MemLink),
}

impl Link {
    /// Closes at once with a code; pending data may be lost.
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        let reason = truncate(reason, MAX_REASON);
        match self {
            Self::Iroh(c) => c.close(iroh::endpoint::VarInt::from_u32(code.0), reason.as_bytes()),
            Self::Memory(m) => m.close(code, reason),
        }
    }

    /// Ends the sending direction, waits (at most `linger`) until the peer has received what
    /// was sent, then closes with a code. Used after a refusal frame.
    pub(crate) async fn linger_close(
        &self,
        send: &mut SendHalf,
        code: ErrorCode,
        reason: &str,
        linger: Duration,
    ) {
        if send.finish().is_ok()
            && let SendHalf::Iroh(w) = send
        {
            let _ = tokio::time::timeout(linger, w.get_mut().stopped()).await;
        }
        self.close(code, reason);
    }
}

/// Longest close reason sent (QUIC carries it in one packet).
const MAX_REASON: usize = 200;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
