//! The iroh transport: the ALPN, the QUIC transport settings, the protocol handler for iroh's
//! router, the dialer, and loopback endpoints for tests, benchmarks and the demo.
//!
//! # What one member connection can pin
//!
//! The protocol uses ONE bidirectional stream, opened by the dialer. The QUIC transport is
//! configured for exactly that ([`transport_config`]): the acceptor lets a peer open 1
//! bidirectional and 0 unidirectional streams, the dialer lets its peer open none; each stream
//! may carry [`ProtoConfig::stream_window`] bytes ahead of its reader and the connection
//! [`ProtoConfig::connection_window`] bytes over all streams. A peer can thus make a node
//! buffer at most one stream window per connection (1.25 MB by default; the connection
//! window, 2.5 MB, caps all streams together), however many streams it tries to open, plus the frame being read (bounded by the maximum frame size,
//! allocated only as its bytes arrive). The dialer applies the settings to each connection it
//! makes; the acceptor's come from the endpoint, so **bind every endpoint that hosts
//! [`SYNC_ALPN`] with [`transport_config`]** ([`bind_loopback`] does). As a second line,
//! [`SyncProtocol`] lowers the stream credit of every connection it accepts to what the
//! protocol uses.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use iroh::endpoint::{
    ConnectOptions, Connection, ConnectionError, QuicTransportConfig, ReadError, RecvStream,
    SendStream, VarInt, WriteError, presets,
};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey};
use tokio::time::Instant;

use crate::error::{FrameError, ProtoError, sanitize_bytes};
use crate::frame::{self, LENGTH_LEN};
use crate::handshake::{self, Acceptor};
use crate::membership::Membership;
use crate::message::ErrorCode;
use crate::registry::Registry;
use crate::session::{
    BoxFuture, Connector, Link, LinkCtl, LocalState, OutFrame, ProtoConfig, Received, RecvLink,
    Role, SendLink, Session, SessionHandler, Wire,
};

/// The ALPN of the sync protocol. The suffix changes only if the frozen handshake messages
/// change; everything else is negotiated in the hello (see [`VersionRange`](crate::VersionRange)).
pub const SYNC_ALPN: &[u8] = b"library-sync/sync/1";

/// Frames up to this size are written with one write call (header and payload copied into
/// one buffer); larger ones are written in two, without copying the payload.
const COALESCE_LIMIT: usize = 64 * 1024;

/// The QUIC transport settings for one side of the sync protocol (see the module docs):
/// incoming stream credit for what the protocol uses — the acceptor 1 bidirectional stream,
/// the dialer none, neither side any unidirectional stream — and the receive windows of
/// `config`. Everything else stays iroh's default.
///
/// ```
/// use sync_proto::{ProtoConfig, Role, transport_config};
/// let acceptor = transport_config(&ProtoConfig::default(), Role::Acceptor);
/// let endpoint = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal).transport_config(acceptor);
/// # drop(endpoint);
/// ```
pub fn transport_config(config: &ProtoConfig, role: Role) -> QuicTransportConfig {
    let bidi = match role {
        Role::Acceptor => 1u32,
        Role::Dialer => 0,
    };
    QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(config.stream_window))
        .receive_window(VarInt::from_u32(config.connection_window.max(config.stream_window)))
        .build()
}

/// The sync protocol as an iroh [`ProtocolHandler`]: register it with
/// `Router::builder(endpoint).accept(SYNC_ALPN, protocol).spawn()`.
///
/// Each connection runs on its own task: membership check (before reading), the pending
/// handshake cap, bounded hello, library and member checks, version negotiation, then
/// [`SessionHandler::serve`]. One accepted session per (library, device): a newer one
/// replaces the older. A membership change closes revoked sessions. The router's shutdown
/// closes every session gracefully with [`ErrorCode::SHUTTING_DOWN`].
pub struct SyncProtocol<M, H> {
    acceptor: Arc<Acceptor<M, H>>,
}

impl<M: Membership, H: SessionHandler> SyncProtocol<M, H> {
    /// A protocol handler answering with `membership` and handing sessions to `handler`.
    /// The endpoint it is registered on should be bound with [`transport_config`].
    pub fn new(membership: M, handler: Arc<H>, config: ProtoConfig) -> Self {
        Self { acceptor: Arc::new(Acceptor::new(Arc::new(membership), handler, config)) }
    }

    /// A connector dialling from `endpoint` that shares this node's bookkeeping: the router's
    /// shutdown then also closes the sessions it dialled with [`ErrorCode::SHUTTING_DOWN`],
    /// and a membership change re-checks them too.
    pub fn connector(&self, endpoint: Endpoint) -> IrohConnector<M> {
        IrohConnector {
            endpoint,
            membership: Arc::clone(&self.acceptor.membership),
            config: self.acceptor.config.clone(),
            registry: self.acceptor.registry.clone(),
        }
    }

    /// Sessions alive now: accepted ones, and those dialled through
    /// [`SyncProtocol::connector`].
    pub fn live_sessions(&self) -> usize {
        self.acceptor.registry.live()
    }

    /// Connections awaiting their handshake now.
    pub fn pending_handshakes(&self) -> usize {
        self.acceptor.registry.pending()
    }

    /// Closes every pending handshake and live session (accepted, and dialled through
    /// [`SyncProtocol::connector`]) with [`ErrorCode::SHUTTING_DOWN`] — sessions gracefully:
    /// what was sent still arrives — and refuses new connections with it. The router's
    /// shutdown calls this.
    pub async fn shutdown(&self) {
        self.acceptor.registry.shutdown(self.acceptor.config.close_linger).await;
    }
}

impl<M, H> std::fmt::Debug for SyncProtocol<M, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncProtocol")
            .field("config", &self.acceptor.config)
            .field("registry", &self.acceptor.registry)
            .finish_non_exhaustive()
    }
}

impl<M: Membership, H: SessionHandler> ProtocolHandler for SyncProtocol<M, H> {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        // Whatever the endpoint's settings, issue no more stream credit than the protocol uses.
        connection.set_max_concurrent_uni_streams(VarInt::from_u32(0));
        connection.set_max_concurrent_bi_streams(VarInt::from_u32(1));
        let config = &self.acceptor.config;
        connection.set_receive_window(VarInt::from_u32(
            config.connection_window.max(config.stream_window),
        ));
        let peer = connection.remote_id();
        let link = Link::new(Arc::new(IrohLink(connection.clone())));
        let max = config.frame.max_frame_size();
        let wire_link = link.clone();
        // Not polled until the endpoint check has passed: nothing is read before it.
        let open = async move {
            let (send, recv) = connection.accept_bi().await.map_err(map_connection_error)?;
            Ok(Wire {
                send: Box::new(IrohSend::new(send)),
                recv: Box::new(IrohRecv::new(recv, max)),
                link: wire_link,
            })
        };
        self.acceptor.serve(peer, link, open).await;
        Ok(())
    }

    async fn shutdown(&self) {
        SyncProtocol::shutdown(self).await;
    }
}

/// Dials peers over iroh: the [`Connector`] for real networks. Clones share the record of
/// dialled sessions.
#[derive(Debug, Clone)]
pub struct IrohConnector<M> {
    endpoint: Endpoint,
    membership: Arc<M>,
    config: ProtoConfig,
    registry: Registry,
}

impl<M: Membership> IrohConnector<M> {
    /// A connector dialling from `endpoint`, checking peers against `membership`. Every
    /// connection it makes uses [`transport_config`] for the dialer.
    pub fn new(endpoint: Endpoint, membership: M, config: ProtoConfig) -> Self {
        let membership = Arc::new(membership);
        let registry = Registry::new(membership.clone());
        Self { endpoint, membership, config, registry }
    }

    /// The endpoint dialled from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Dialled sessions alive now.
    pub fn live_sessions(&self) -> usize {
        self.registry.live()
    }

    /// Closes every dialled session gracefully with [`ErrorCode::SHUTTING_DOWN`] and refuses
    /// to dial from now on. Call it, with the router's shutdown, when the node stops.
    pub async fn shutdown(&self) {
        self.registry.shutdown(self.config.close_linger).await;
    }
}

impl<M: Membership> Connector for IrohConnector<M> {
    async fn connect(&self, peer: EndpointAddr, local: LocalState) -> Result<Session, ProtoError> {
        if self.registry.is_shutting_down() {
            return Err(ProtoError::Terminated {
                code: ErrorCode::SHUTTING_DOWN,
                reason: "node shutting down".into(),
            });
        }
        let remote = peer.id;
        let expected = handshake::expected_device(&*self.membership, &local.library, &remote)?;
        let max = self.config.frame.max_frame_size();
        let options = ConnectOptions::new()
            .with_transport_config(transport_config(&self.config, Role::Dialer));
        let open = async {
            let connecting = self
                .endpoint
                .connect_with_opts(peer, SYNC_ALPN, options)
                .await
                .map_err(|e| ProtoError::Connect(e.to_string()))?;
            let conn = connecting.await.map_err(|e| ProtoError::Connect(e.to_string()))?;
            let link = Link::new(Arc::new(IrohLink(conn.clone())));
            let (send, recv) = conn.open_bi().await.map_err(map_connection_error)?;
            Ok::<_, ProtoError>(Wire {
                send: Box::new(IrohSend::new(send)),
                recv: Box::new(IrohRecv::new(recv, max)),
                link,
            })
        };
        handshake::dial(remote, expected, open, local, &self.config, &self.registry).await
    }
}

/// Binds an endpoint on 127.0.0.1 with relays and address lookup off (the `Minimal` preset)
/// and the acceptor's [`transport_config`] for the default [`ProtoConfig`]: for tests,
/// benchmarks and the demo, whose traffic must stay on loopback.
pub async fn bind_loopback(secret_key: Option<SecretKey>) -> Result<Endpoint, ProtoError> {
    bind_loopback_with(secret_key, &ProtoConfig::default()).await
}

/// [`bind_loopback`] with the transport settings of `config`.
pub async fn bind_loopback_with(
    secret_key: Option<SecretKey>,
    config: &ProtoConfig,
) -> Result<Endpoint, ProtoError> {
    let mut builder = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .transport_config(transport_config(config, Role::Acceptor))
        .bind_addr("127.0.0.1:0")
        .map_err(|e| ProtoError::Endpoint(e.to_string()))?;
    if let Some(key) = secret_key {
        builder = builder.secret_key(key);
    }
    builder.bind().await.map_err(|e| ProtoError::Endpoint(e.to_string()))
}

/// The address of an endpoint from its bound sockets (no lookup needed).
pub fn loopback_addr(endpoint: &Endpoint) -> EndpointAddr {
    endpoint
        .bound_sockets()
        .into_iter()
        .fold(EndpointAddr::new(endpoint.id()), EndpointAddr::with_ip_addr)
}

/// Maps a connection failure; an application close keeps its code and (sanitised, capped)
/// reason.
pub(crate) fn map_connection_error(e: ConnectionError) -> ProtoError {
    match e {
        ConnectionError::ApplicationClosed(close) => ProtoError::Closed {
            code: ErrorCode(u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX)),
            reason: sanitize_bytes(&close.reason),
        },
        ConnectionError::LocallyClosed => ProtoError::LocallyClosed,
        other => ProtoError::ConnectionLost(other.to_string()),
    }
}

fn map_read(e: ReadError) -> ProtoError {
    match e {
        ReadError::ConnectionLost(c) => map_connection_error(c),
        other => ProtoError::ConnectionLost(other.to_string()),
    }
}

fn map_write(e: WriteError) -> ProtoError {
    match e {
        WriteError::ConnectionLost(c) => map_connection_error(c),
        other => ProtoError::ConnectionLost(other.to_string()),
    }
}

/// An iroh connection as a [`LinkCtl`].
struct IrohLink(Connection);

impl LinkCtl for IrohLink {
    fn close(&self, code: ErrorCode, reason: &str) {
        self.0.close(VarInt::from_u32(code.0), reason.as_bytes());
    }

    fn closed(&self) -> BoxFuture<'_, ProtoError> {
        Box::pin(async move { map_connection_error(self.0.closed().await) })
    }
}

/// The dialer's stream, sending.
struct IrohSend {
    stream: SendStream,
    buf: Vec<u8>,
}

impl IrohSend {
    fn new(stream: SendStream) -> Self {
        Self { stream, buf: Vec::new() }
    }
}

impl SendLink for IrohSend {
    fn send_frame<'a>(&'a mut self, frame: OutFrame) -> BoxFuture<'a, Result<(), ProtoError>> {
        Box::pin(async move {
            if frame.payload.len() <= COALESCE_LIMIT {
                self.buf.clear();
                self.buf.extend_from_slice(&frame.header);
                self.buf.extend_from_slice(&frame.payload);
                self.stream.write_all(&self.buf).await.map_err(map_write)
            } else {
                // Hands the payload to QUIC as it is: no copy into the stream's buffer.
                let mut chunks =
                    [Bytes::copy_from_slice(&frame.header), Bytes::from(frame.payload)];
                self.stream.write_all_chunks(&mut chunks).await.map_err(map_write)
            }
        })
    }

    fn finish(&mut self) -> Result<(), ProtoError> {
        self.stream.finish().map_err(|e| ProtoError::ConnectionLost(e.to_string()))
    }

    fn flushed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.stream.stopped().await;
        })
    }
}

/// The dialer's stream, receiving: a cancel-safe frame reader that allocates as bytes arrive.
struct IrohRecv {
    stream: RecvStream,
    /// This side's maximum frame size; no read accepts more, whatever it asks for.
    ceiling: u32,
    prefix: [u8; LENGTH_LEN],
    have_prefix: usize,
    /// The checked length of the frame being read.
    len: Option<usize>,
    buf: Vec<u8>,
    /// When the first byte of the frame being read arrived.
    started: Option<Instant>,
}

impl IrohRecv {
    fn new(stream: RecvStream, ceiling: u32) -> Self {
        Self {
            stream,
            ceiling,
            prefix: [0; LENGTH_LEN],
            have_prefix: 0,
            len: None,
            buf: Vec::new(),
            started: None,
        }
    }

    /// Reads the rest of a frame whose first byte has arrived.
    async fn rest(&mut self, max: u32) -> Result<Received, ProtoError> {
        while self.have_prefix < LENGTH_LEN {
            let want = LENGTH_LEN - self.have_prefix;
            match self.stream.read_chunk(want).await.map_err(map_read)? {
                Some(chunk) => {
                    self.prefix[self.have_prefix..self.have_prefix + chunk.len()]
                        .copy_from_slice(&chunk);
                    self.have_prefix += chunk.len();
                }
                None => {
                    return Err(ProtoError::Frame(FrameError::Truncated {
                        expected: LENGTH_LEN,
                        got: self.have_prefix,
                    }));
                }
            }
        }
        let len = match self.len {
            Some(len) => len,
            None => {
                let len = frame::check_length(self.prefix, max.min(self.ceiling))?;
                frame::prepare_buffer(&mut self.buf, len);
                self.len = Some(len);
                len
            }
        };
        while self.buf.len() < len {
            frame::grow_for(&mut self.buf, len);
            let want = (len - self.buf.len()).min(self.buf.capacity() - self.buf.len());
            match self.stream.read_chunk(want).await.map_err(map_read)? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => {
                    return Err(ProtoError::Frame(FrameError::Truncated {
                        expected: len,
                        got: self.buf.len(),
                    }));
                }
            }
        }
        self.have_prefix = 0;
        self.len = None;
        self.started = None;
        Ok(Received::Message(frame::decode_body(&self.buf)?))
    }
}

impl RecvLink for IrohRecv {
    fn recv_frame<'a>(
        &'a mut self,
        max: u32,
        idle: Option<Instant>,
        frame_timeout: Duration,
    ) -> BoxFuture<'a, Result<Received, ProtoError>> {
        Box::pin(async move {
            if self.started.is_none() {
                // Waiting for a frame's first byte: cancel-safe, nothing consumed on timeout.
                let first = self.stream.read_chunk(LENGTH_LEN);
                let chunk = match idle {
                    Some(at) => match tokio::time::timeout_at(at, first).await {
                        Ok(read) => read,
                        Err(_) => return Ok(Received::Idle),
                    },
                    None => first.await,
                };
                match chunk.map_err(map_read)? {
                    None => return Ok(Received::End),
                    Some(chunk) => {
                        self.prefix[..chunk.len()].copy_from_slice(&chunk);
                        self.have_prefix = chunk.len();
                        self.started = Some(Instant::now());
                    }
                }
            }
            let deadline = self.started.unwrap_or_else(Instant::now) + frame_timeout;
            match tokio::time::timeout_at(deadline, self.rest(max)).await {
                Ok(result) => result,
                Err(_) => Err(ProtoError::Timeout { what: "a whole frame", after: frame_timeout }),
            }
        })
    }
}
