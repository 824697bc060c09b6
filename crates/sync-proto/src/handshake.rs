//! The handshake, shared by every transport. The order of checks is part of the protocol
//! (see `docs/protocol.md`, "Handshake"):
//!
//! Acceptor: (1) endpoint known at all? — before reading anything; (2) read one frame, bounded
//! by the handshake limit; it must be a hello; (3) library hosted? (4) endpoint a member of it,
//! under the device id it claims? (5) common version? (6) answer with our state.
//!
//! Dialer: (0) the peer must be a member of the library in our own table; send the hello; the
//! answer must be a hello-ack for the same library from the device bound to the peer's key,
//! with a version both ranges contain.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use iroh::EndpointId;
use sync_log::{DeviceId, LibraryId};

use crate::error::{ProtoError, sanitize_reason};
use crate::membership::{Lookup, Membership};
use crate::message::{ErrorCode, Hello, HelloAck, Message, VersionMismatch};
use crate::registry::{Refusal, Registry};
use crate::session::{
    Link, LocalState, PeerInfo, ProtoConfig, Role, Session, SessionHandler, SessionInfo, Wire,
};

/// The acceptor's side of one node, shared by its connections: the seams, the settings and
/// the node's bookkeeping.
pub(crate) struct Acceptor<M, H> {
    pub(crate) membership: Arc<M>,
    pub(crate) handler: Arc<H>,
    pub(crate) config: ProtoConfig,
    pub(crate) registry: Registry,
}

impl<M: Membership, H: SessionHandler> Acceptor<M, H> {
    pub(crate) fn new(membership: Arc<M>, handler: Arc<H>, config: ProtoConfig) -> Self {
        let registry = Registry::new(membership.clone());
        Self::with_registry(membership, handler, config, registry)
    }

    /// An acceptor sharing the node's bookkeeping with the node's connector.
    pub(crate) fn with_registry(
        membership: Arc<M>,
        handler: Arc<H>,
        config: ProtoConfig,
        registry: Registry,
    ) -> Self {
        Self { membership, handler, config, registry }
    }

    /// Runs the acceptor's whole flow on a connection whose peer is `peer`: steps (1) to (6),
    /// then hands the session to the handler. Every refusal closes the connection with its
    /// code. `open` is not polled before step (1) has passed: nothing is read before it.
    pub(crate) async fn serve<F>(&self, peer: EndpointId, link: Link, open: F)
    where
        F: Future<Output = Result<Wire, ProtoError>>,
    {
        let config = &self.config;
        let result = async {
            check_known(&peer, &*self.membership, &link)?;
            let _pending = match self.registry.admit(peer, &link, config.max_pending_handshakes) {
                Ok(pending) => pending,
                Err(Refusal::Busy) => {
                    let err = ProtoError::Busy { max: config.max_pending_handshakes };
                    link.terminate(err.code(), &err.to_string());
                    return Err(err);
                }
                Err(Refusal::ShuttingDown) => {
                    let err = ProtoError::Terminated {
                        code: ErrorCode::SHUTTING_DOWN,
                        reason: "node shutting down".into(),
                    };
                    link.terminate(ErrorCode::SHUTTING_DOWN, "node shutting down");
                    return Err(err);
                }
            };
            let accepted = tokio::time::timeout(config.handshake_timeout, async {
                let wire = open.await?;
                accept(peer, wire, &*self.membership, &*self.handler, config).await
            })
            .await;
            match accepted {
                Ok(Ok(wire_and_info)) => Ok(wire_and_info),
                Ok(Err(e)) => Err(link.explain(e)),
                Err(_) => {
                    let err = ProtoError::HandshakeTimeout(config.handshake_timeout);
                    link.terminate(err.code(), &err.to_string());
                    Err(err)
                }
            }
        }
        .await;
        match result {
            Ok((info, wire)) => {
                let (session, handle) = Session::new(info.clone(), wire, config);
                session.set_on_drop(self.registry.register(&info, &handle));
                self.handler.serve(session).await;
            }
            Err(error) => self.handler.refused(&peer, &error),
        }
    }
}

/// Step (1) of the acceptor: refuses an endpoint that is a member of no hosted library.
pub(crate) fn check_known<M: Membership + ?Sized>(
    peer: &EndpointId,
    membership: &M,
    link: &Link,
) -> Result<(), ProtoError> {
    if membership.is_known(peer) {
        return Ok(());
    }
    let err = ProtoError::NotAMember { library: None };
    link.terminate(err.code(), &err.to_string());
    Err(err)
}

/// Steps (2) to (6) of the acceptor: the session's description and its wire.
async fn accept<M: Membership + ?Sized, H: SessionHandler>(
    peer: EndpointId,
    mut wire: Wire,
    membership: &M,
    handler: &H,
    config: &ProtoConfig,
) -> Result<(SessionInfo, Wire), ProtoError> {
    let refuse = |link: &Link, err: ProtoError| {
        link.terminate(err.code(), &err.to_string());
        Err(err)
    };
    let hello = match wire.recv(config.handshake_max_frame, config.frame_timeout).await {
        Ok(Some(Message::Hello(hello))) => hello,
        Ok(Some(other)) => {
            return refuse(
                &wire.link,
                ProtoError::UnexpectedMessage { expected: "Hello", got: other.kind() },
            );
        }
        Ok(None) => {
            return Err(ProtoError::ConnectionLost("stream ended before the hello".into()));
        }
        Err(e @ (ProtoError::Frame(_) | ProtoError::Timeout { .. })) => {
            return refuse(&wire.link, e);
        }
        Err(e) => return Err(e),
    };
    let library = hello.library;
    let device = match membership.lookup(&library, &peer) {
        Lookup::ForeignLibrary => {
            return refuse(&wire.link, ProtoError::ForeignLibrary { library });
        }
        Lookup::Member(device) if device == hello.device => device,
        Lookup::Member(_) | Lookup::NotAMember => {
            return refuse(&wire.link, ProtoError::NotAMember { library: Some(library) });
        }
    };
    let Some(version) = config.versions.negotiate(&hello.versions) else {
        let mismatch = VersionMismatch { dialer: hello.versions, acceptor: config.versions };
        let err = ProtoError::VersionMismatch { ours: config.versions, theirs: hello.versions };
        // The dialer learns both ranges from the frame; the close reason repeats them.
        if wire.send(&Message::VersionMismatch(mismatch), &config.frame).await.is_ok() {
            let Wire { mut send, link, .. } = wire;
            link.close_gracefully(
                &mut *send,
                err.code(),
                &err.to_string(),
                config.refusal_linger,
                true,
            )
            .await;
        } else {
            wire.link.terminate(err.code(), &err.to_string());
        }
        return Err(err);
    };
    let Some(local) = handler.local_state(&library) else {
        return refuse(&wire.link, ProtoError::ForeignLibrary { library });
    };
    let ack = HelloAck {
        version,
        library,
        device: local.device,
        epoch: local.epoch,
        position: local.position,
        models: local.models,
    };
    wire.send(&Message::HelloAck(ack), &config.frame).await?;
    tracing::debug!(peer = %peer.fmt_short(), %library, %device, %version, "sync session accepted");
    let info = SessionInfo {
        library,
        version,
        role: Role::Acceptor,
        local_device: local.device,
        peer: PeerInfo {
            endpoint: peer,
            device,
            epoch: hello.epoch,
            position: hello.position,
            models: hello.models,
        },
    };
    Ok((info, wire))
}

/// Step (0) of the dialer: the device the peer must turn out to be.
pub(crate) fn expected_device<M: Membership>(
    membership: &M,
    library: &LibraryId,
    peer: &EndpointId,
) -> Result<DeviceId, ProtoError> {
    match membership.lookup(library, peer) {
        Lookup::Member(device) => Ok(device),
        Lookup::NotAMember => Err(ProtoError::NotAMember { library: Some(*library) }),
        Lookup::ForeignLibrary => Err(ProtoError::ForeignLibrary { library: *library }),
    }
}

/// The dialer's whole connect: `open` (the transport's connection and stream) and the hello
/// exchange, within ONE handshake timeout. The session is recorded in `registry`.
pub(crate) async fn dial<F>(
    peer: EndpointId,
    expected: DeviceId,
    open: F,
    local: LocalState,
    config: &ProtoConfig,
    registry: &Registry,
) -> Result<Session, ProtoError>
where
    F: Future<Output = Result<Wire, ProtoError>>,
{
    let opened: Mutex<Option<Link>> = Mutex::new(None);
    let local_library = local.library;
    let attempt = async {
        let wire = open.await?;
        *opened.lock().unwrap_or_else(PoisonError::into_inner) = Some(wire.link.clone());
        dial_inner(peer, expected, wire, local, config).await
    };
    let library = local_library;
    let (info, wire) = match tokio::time::timeout(config.handshake_timeout, attempt).await {
        Ok(result) => result.map_err(|e| refine(e, library))?,
        Err(_) => {
            let link = opened.lock().unwrap_or_else(PoisonError::into_inner).take();
            return Err(match link {
                Some(link) => {
                    let err = ProtoError::HandshakeTimeout(config.handshake_timeout);
                    link.terminate(err.code(), &err.to_string());
                    err
                }
                None => ProtoError::Connect(format!(
                    "no connection within {:?}",
                    config.handshake_timeout
                )),
            });
        }
    };
    let (session, handle) = Session::new(info.clone(), wire, config);
    session.set_on_drop(registry.register(&info, &handle));
    Ok(session)
}

async fn dial_inner(
    peer: EndpointId,
    expected: DeviceId,
    mut wire: Wire,
    local: LocalState,
    config: &ProtoConfig,
) -> Result<(SessionInfo, Wire), ProtoError> {
    let library = local.library;
    let hello = Hello {
        versions: config.versions,
        library,
        device: local.device,
        epoch: local.epoch,
        position: local.position,
        models: local.models,
    };
    wire.send(&Message::Hello(hello), &config.frame).await.map_err(|e| refine(e, library))?;
    let protocol_error = |link: &Link, err: ProtoError| {
        link.terminate(err.code(), &err.to_string());
        Err(err)
    };
    let ack = match wire.recv(config.handshake_max_frame, config.frame_timeout).await {
        Ok(Some(Message::HelloAck(ack))) => ack,
        Ok(Some(Message::VersionMismatch(m))) => {
            let err = ProtoError::VersionMismatch { ours: config.versions, theirs: m.acceptor };
            wire.link.terminate(err.code(), &err.to_string());
            return Err(err);
        }
        Ok(Some(Message::Error(e))) => {
            wire.link.close(ErrorCode::NORMAL, "");
            let message = sanitize_reason(&e.message);
            return Err(refine(ProtoError::Remote { code: e.code, message }, library));
        }
        Ok(Some(other)) => {
            return protocol_error(
                &wire.link,
                ProtoError::UnexpectedMessage { expected: "HelloAck", got: other.kind() },
            );
        }
        Ok(None) => {
            return Err(ProtoError::ConnectionLost(
                "peer ended the stream during the handshake".into(),
            ));
        }
        Err(e @ (ProtoError::Frame(_) | ProtoError::Timeout { .. })) => {
            return protocol_error(&wire.link, e);
        }
        Err(e) => return Err(refine(e, library)),
    };
    if ack.library != library {
        return protocol_error(
            &wire.link,
            ProtoError::WrongPeer(format!(
                "asked for library {library}, answer names {}",
                ack.library
            )),
        );
    }
    if ack.device != expected {
        return protocol_error(
            &wire.link,
            ProtoError::WrongPeer(format!(
                "peer's key belongs to device {expected}, answer names device {}",
                ack.device
            )),
        );
    }
    if !config.versions.contains(ack.version) {
        return protocol_error(
            &wire.link,
            ProtoError::WrongPeer(format!(
                "answer picks {}, we speak {}",
                ack.version, config.versions
            )),
        );
    }
    tracing::debug!(peer = %peer.fmt_short(), %library, device = %ack.device, version = %ack.version, "sync session established");
    let info = SessionInfo {
        library,
        version: ack.version,
        role: Role::Dialer,
        local_device: local.device,
        peer: PeerInfo {
            endpoint: peer,
            device: ack.device,
            epoch: ack.epoch,
            position: ack.position,
            models: ack.models,
        },
    };
    Ok((info, wire))
}

/// Turns a refusal code received during the handshake into its typed error.
fn refine(err: ProtoError, library: LibraryId) -> ProtoError {
    let code = match &err {
        ProtoError::Closed { code, .. } | ProtoError::Remote { code, .. } => *code,
        _ => return err,
    };
    match code {
        ErrorCode::NOT_A_MEMBER => ProtoError::NotAMember { library: Some(library) },
        ErrorCode::FOREIGN_LIBRARY => ProtoError::ForeignLibrary { library },
        // VERSION_MISMATCH without its frame: the close reason still names both ranges.
        _ => err,
    }
}
