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

use iroh::EndpointId;
use sync_log::{DeviceId, LibraryId};

use crate::error::ProtoError;
use crate::membership::{Lookup, Membership};
use crate::message::{ErrorCode, Hello, HelloAck, Message, VersionMismatch};
use crate::session::{
    Link, LocalState, PeerInfo, ProtoConfig, Role, Session, SessionHandler, SessionInfo, Wire,
};

/// Step (1) of the acceptor: refuses an endpoint that is a member of no hosted library.
pub(crate) fn check_known<M: Membership>(
    peer: &EndpointId,
    membership: &M,
    link: &Link,
) -> Result<(), ProtoError> {
    if membership.is_known(peer) {
        return Ok(());
    }
    let err = ProtoError::NotAMember { library: None };
    link.close(err.code(), &err.to_string());
    Err(err)
}

/// Runs the acceptor's whole flow on a connection whose peer is `peer`: steps (1) to (6),
/// then hands the session to the handler. Every refusal closes the connection with its code.
pub(crate) async fn serve_incoming<M, H, F>(
    peer: EndpointId,
    link: Link,
    open: F,
    membership: &M,
    handler: &H,
    config: &ProtoConfig,
) where
    M: Membership,
    H: SessionHandler,
    F: Future<Output = Result<Wire, ProtoError>>,
{
    let result = async {
        check_known(&peer, membership, &link)?;
        let accepted = tokio::time::timeout(config.handshake_timeout, async {
            let wire = open.await?;
            accept(peer, wire, membership, handler, config).await
        })
        .await;
        match accepted {
            Ok(result) => result,
            Err(_) => {
                let err = ProtoError::HandshakeTimeout(config.handshake_timeout);
                link.close(err.code(), &err.to_string());
                Err(err)
            }
        }
    }
    .await;
    match result {
        Ok(session) => handler.serve(session).await,
        Err(error) => handler.refused(&peer, &error),
    }
}

/// Steps (2) to (6) of the acceptor.
async fn accept<M: Membership, H: SessionHandler>(
    peer: EndpointId,
    mut wire: Wire,
    membership: &M,
    handler: &H,
    config: &ProtoConfig,
) -> Result<Session, ProtoError> {
    let refuse = |link: &Link, err: ProtoError| {
        link.close(err.code(), &err.to_string());
        Err(err)
    };
    let hello = match wire.recv.recv(config.handshake_max_frame).await {
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
        Err(ProtoError::Frame(e)) => return refuse(&wire.link, ProtoError::Frame(e)),
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
        if wire.send.send(&Message::VersionMismatch(mismatch)).await.is_ok() {
            wire.link
                .linger_close(&mut wire.send, err.code(), &err.to_string(), config.refusal_linger)
                .await;
        } else {
            wire.link.close(err.code(), &err.to_string());
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
    wire.send.send(&Message::HelloAck(ack)).await?;
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
    Ok(Session::new(info, wire, config.frame))
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

/// The dialer's handshake on an open wire, within the handshake timeout.
pub(crate) async fn dial(
    peer: EndpointId,
    expected: DeviceId,
    wire: Wire,
    local: LocalState,
    config: &ProtoConfig,
) -> Result<Session, ProtoError> {
    let link = wire.link.clone();
    match tokio::time::timeout(
        config.handshake_timeout,
        dial_inner(peer, expected, wire, local, config),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => {
            let err = ProtoError::HandshakeTimeout(config.handshake_timeout);
            link.close(err.code(), &err.to_string());
            Err(err)
        }
    }
}

async fn dial_inner(
    peer: EndpointId,
    expected: DeviceId,
    mut wire: Wire,
    local: LocalState,
    config: &ProtoConfig,
) -> Result<Session, ProtoError> {
    let library = local.library;
    let hello = Hello {
        versions: config.versions,
        library,
        device: local.device,
        epoch: local.epoch,
        position: local.position,
        models: local.models,
    };
    wire.send.send(&Message::Hello(hello)).await.map_err(|e| refine(e, library))?;
    let protocol_error = |link: &Link, err: ProtoError| {
        link.close(err.code(), &err.to_string());
        Err(err)
    };
    let ack = match wire.recv.recv(config.handshake_max_frame).await {
        Ok(Some(Message::HelloAck(ack))) => ack,
        Ok(Some(Message::VersionMismatch(m))) => {
            let err = ProtoError::VersionMismatch { ours: config.versions, theirs: m.acceptor };
            wire.link.close(err.code(), &err.to_string());
            return Err(err);
        }
        Ok(Some(Message::Error(e))) => {
            wire.link.close(ErrorCode::NORMAL, "");
            return Err(refine(ProtoError::Remote { code: e.code, message: e.message }, library));
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
        Err(ProtoError::Frame(e)) => return protocol_error(&wire.link, ProtoError::Frame(e)),
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
    Ok(Session::new(info, wire, config.frame))
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
