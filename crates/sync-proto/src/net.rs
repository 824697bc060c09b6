//! The iroh transport: the ALPN, the protocol handler for iroh's router, the dialer, and
//! loopback endpoints for tests, benchmarks and the demo.

use std::io;
use std::sync::Arc;

use iroh::endpoint::{Connection, ConnectionError, ReadError, WriteError, presets};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, RelayMode, SecretKey};

use crate::error::{FrameError, ProtoError};
use crate::frame::{FrameReader, FrameWriter};
use crate::handshake;
use crate::membership::Membership;
use crate::message::ErrorCode;
use crate::session::{
    Connector, Link, LocalState, ProtoConfig, RecvHalf, SendHalf, Session, SessionHandler, Wire,
};

/// The ALPN of the sync protocol. The suffix changes only if the frozen handshake messages
/// change; everything else is negotiated in the hello (see [`VersionRange`](crate::VersionRange)).
pub const SYNC_ALPN: &[u8] = b"library-sync/sync/1";

/// The sync protocol as an iroh [`ProtocolHandler`]: register it with
/// `Router::builder(endpoint).accept(SYNC_ALPN, protocol).spawn()`.
///
/// Each connection runs on its own task: membership check (before reading), bounded hello,
/// library and member checks, version negotiation, then [`SessionHandler::serve`].
pub struct SyncProtocol<M, H> {
    membership: M,
    handler: Arc<H>,
    config: ProtoConfig,
}

impl<M: Membership, H: SessionHandler> SyncProtocol<M, H> {
    /// A protocol handler answering with `membership` and handing sessions to `handler`.
    pub fn new(membership: M, handler: Arc<H>, config: ProtoConfig) -> Self {
        Self { membership, handler, config }
    }
}

impl<M, H> std::fmt::Debug for SyncProtocol<M, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncProtocol").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<M: Membership, H: SessionHandler> ProtocolHandler for SyncProtocol<M, H> {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let peer = connection.remote_id();
        let link = Link::Iroh(connection.clone());
        let frame = self.config.frame;
        // Not polled until the endpoint check has passed: nothing is read before it.
        let open = async move {
            let (send, recv) = connection.accept_bi().await.map_err(map_connection_error)?;
            Ok(Wire {
                send: SendHalf::Iroh(FrameWriter::new(send, frame)),
                recv: RecvHalf::Iroh(FrameReader::new(recv, frame)),
                link: Link::Iroh(connection),
            })
        };
        handshake::serve_incoming(peer, link, open, &self.membership, &*self.handler, &self.config)
            .await;
        Ok(())
    }
}

/// Dials peers over iroh: the [`Connector`] for real networks.
#[derive(Debug, Clone)]
pub struct IrohConnector<M> {
    endpoint: Endpoint,
    membership: M,
    config: ProtoConfig,
}

impl<M: Membership> IrohConnector<M> {
    /// A connector dialling from `endpoint`, checking peers against `membership`.
    pub fn new(endpoint: Endpoint, membership: M, config: ProtoConfig) -> Self {
        Self { endpoint, membership, config }
    }

    /// The endpoint dialled from.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl<M: Membership> Connector for IrohConnector<M> {
    async fn connect(&self, peer: EndpointAddr, local: LocalState) -> Result<Session, ProtoError> {
        let remote = peer.id;
        let expected = handshake::expected_device(&self.membership, &local.library, &remote)?;
        let frame = self.config.frame;
        let open = async {
            let conn = self
                .endpoint
                .connect(peer, SYNC_ALPN)
                .await
                .map_err(|e| ProtoError::Connect(e.to_string()))?;
            let (send, recv) = conn.open_bi().await.map_err(map_connection_error)?;
            Ok::<_, ProtoError>(Wire {
                send: SendHalf::Iroh(FrameWriter::new(send, frame)),
                recv: RecvHalf::Iroh(FrameReader::new(recv, frame)),
                link: Link::Iroh(conn),
            })
        };
        let wire =
            tokio::time::timeout(self.config.handshake_timeout, open).await.map_err(|_| {
                ProtoError::Connect(format!(
                    "no connection within {:?}",
                    self.config.handshake_timeout
                ))
            })??;
        handshake::dial(remote, expected, wire, local, &self.config).await
    }
}

/// Binds an endpoint on 127.0.0.1 with relays and address lookup off (the `Minimal` preset):
/// for tests, benchmarks and the demo, whose traffic must stay on loopback.
pub async fn bind_loopback(secret_key: Option<SecretKey>) -> Result<Endpoint, ProtoError> {
    let mut builder = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
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

/// Maps a connection failure; an application close keeps its code and reason.
pub(crate) fn map_connection_error(e: ConnectionError) -> ProtoError {
    match e {
        ConnectionError::ApplicationClosed(close) => ProtoError::Closed {
            code: ErrorCode(u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX)),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        ConnectionError::LocallyClosed => ProtoError::LocallyClosed,
        other => ProtoError::ConnectionLost(other.to_string()),
    }
}

/// Maps a stream I/O error (which wraps iroh's read/write errors) to a session error.
pub(crate) fn map_io(e: io::Error) -> ProtoError {
    if let Some(inner) = e.get_ref() {
        if let Some(read) = inner.downcast_ref::<ReadError>() {
            return match read {
                ReadError::ConnectionLost(c) => map_connection_error(c.clone()),
                other => ProtoError::ConnectionLost(other.to_string()),
            };
        }
        if let Some(write) = inner.downcast_ref::<WriteError>() {
            return match write {
                WriteError::ConnectionLost(c) => map_connection_error(c.clone()),
                other => ProtoError::ConnectionLost(other.to_string()),
            };
        }
    }
    ProtoError::ConnectionLost(e.to_string())
}

/// Maps a frame error from an iroh stream: I/O failures become connection errors.
pub(crate) fn map_frame_error(e: FrameError) -> ProtoError {
    match e {
        FrameError::Io(io) => map_io(io),
        other => ProtoError::Frame(other),
    }
}
