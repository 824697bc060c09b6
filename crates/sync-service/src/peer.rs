//! The connection side: one task pair per session (reader into the engine, writer from a
//! bounded per-peer queue), the dial loop with backoff, and the [`Acceptor`] that routes
//! incoming sessions to the right library's engine.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use iroh::EndpointAddr;
use sync_log::{DeviceId, LibraryId};
use sync_proto::{
    Connector, ErrorCode, LocalState, Message, PeerInfo, ProtoError, Session, SessionHandler,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, debug, info_span};

use crate::plan::Backoff;
use crate::wire;

/// Hands a leadership message from a peer straight to the leadership driver, so elections
/// and heartbeats never wait behind the engine's work.
pub(crate) type Deliver = Arc<dyn Fn(DeviceId, leadership::Message) + Send + Sync>;

/// The open sessions' queues, shared with the leadership transport, which sends through them
/// directly for the same reason.
#[derive(Clone, Default)]
pub(crate) struct Outlets(Arc<std::sync::Mutex<HashMap<DeviceId, Outlet>>>);

/// One open session's id and queue.
type Outlet = (u64, mpsc::Sender<Message>);

impl Outlets {
    pub(crate) fn insert(&self, peer: DeviceId, session: u64, tx: mpsc::Sender<Message>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(peer, (session, tx));
    }

    pub(crate) fn remove(&self, peer: DeviceId, session: Option<u64>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if session.is_none_or(|s| map.get(&peer).is_some_and(|(cur, _)| *cur == s)) {
            map.remove(&peer);
        }
    }

    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Queues `msg` for `peer` if a session is open and its queue has room.
    pub(crate) fn send(&self, peer: DeviceId, msg: Message) {
        let tx = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .map(|(_, tx)| tx.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send(msg);
        }
    }
}

/// What a session task needs besides the session.
#[derive(Clone)]
pub(crate) struct SessionCtx {
    pub(crate) inbox: mpsc::Sender<FromPeer>,
    pub(crate) queue: usize,
    pub(crate) deliver: Deliver,
}

/// A member of the library: its device id and where to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The device.
    pub device: DeviceId,
    /// Its iroh address (the endpoint id is its identity; the addresses are hints).
    pub addr: EndpointAddr,
}

/// What a session task tells the engine.
#[derive(Debug)]
pub(crate) enum FromPeer {
    /// A session is open.
    Up {
        peer: DeviceId,
        session: u64,
        tx: mpsc::Sender<Message>,
        close: oneshot::Sender<ErrorCode>,
        info: PeerInfo,
    },
    /// A message arrived.
    Msg { peer: DeviceId, session: u64, msg: Message },
    /// The session ended.
    Down { peer: DeviceId, session: u64 },
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Runs one session to its end: registers it with the engine, writes what the engine queues,
/// reads into the engine's inbox (which applies backpressure to the peer when the engine is
/// busy). Returns when the session is over.
pub(crate) async fn run_session(session: Session, ctx: SessionCtx) {
    let SessionCtx { inbox, queue, deliver } = ctx;
    let (info, mut sender, mut receiver) = session.split();
    let peer = info.peer.device;
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("session", library = %info.library, peer = %peer, id, role = ?info.role);
    let (tx, mut rx) = mpsc::channel::<Message>(queue.max(1));
    let (close_tx, mut close_rx) = oneshot::channel::<ErrorCode>();
    let up = FromPeer::Up { peer, session: id, tx, close: close_tx, info: info.peer.clone() };
    if inbox.send(up).await.is_err() {
        sender.close(ErrorCode::SHUTTING_DOWN, "library is shutting down");
        return;
    }
    let writer = tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    // Queued messages first: a dropped queue is drained and finished, not cut.
                    biased;
                    msg = rx.recv() => match msg {
                        Some(msg) => {
                            if let Err(e) = sender.send(&msg).await {
                                debug!(error = %e, "send failed");
                                break;
                            }
                        }
                        None => {
                            let _ = sender.finish();
                            break;
                        }
                    },
                    code = &mut close_rx => {
                        if let Ok(code) = code {
                            sender.close(code, "closed by the sync service");
                        }
                        break;
                    }
                }
            }
        }
        .instrument(span.clone()),
    );
    async {
        loop {
            match receiver.recv().await {
                Ok(Some(msg)) => {
                    if let Some(lm) = wire::decode(&msg) {
                        let heartbeat = matches!(lm, leadership::Message::Heartbeat { .. });
                        deliver(peer, lm);
                        if heartbeat {
                            // The engine reads the leader's newest seq from it.
                            let _ = inbox.try_send(FromPeer::Msg { peer, session: id, msg });
                        }
                        continue;
                    }
                    if inbox.send(FromPeer::Msg { peer, session: id, msg }).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    debug!("session ended by the peer");
                    break;
                }
                Err(e) => {
                    debug!(error = %e, "session failed");
                    break;
                }
            }
        }
    }
    .instrument(span)
    .await;
    let _ = inbox.send(FromPeer::Down { peer, session: id }).await;
    let _ = writer.await;
}

type ConnectFuture = Pin<Box<dyn Future<Output = Result<Session, ProtoError>> + Send>>;

/// A type-erased [`Connector`].
#[derive(Clone)]
pub(crate) struct DynConnector(
    Arc<dyn Fn(EndpointAddr, LocalState) -> ConnectFuture + Send + Sync>,
);

impl DynConnector {
    pub(crate) fn new<C: Connector>(connector: C) -> Self {
        let connector = Arc::new(connector);
        Self(Arc::new(move |addr, local| {
            let connector = Arc::clone(&connector);
            Box::pin(async move { connector.connect(addr, local).await })
        }))
    }

    fn connect(&self, addr: EndpointAddr, local: LocalState) -> ConnectFuture {
        (self.0)(addr, local)
    }
}

/// Dials `member` until told to stop: connect, run the session, back off, again.
pub(crate) async fn dial_loop(
    connector: DynConnector,
    member: Member,
    local: watch::Receiver<LocalState>,
    ctx: SessionCtx,
    mut backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let state = local.borrow().clone();
        let attempt = tokio::select! {
            r = connector.connect(member.addr.clone(), state) => r,
            _ = stop.changed() => return,
        };
        match attempt {
            Ok(session) => {
                backoff.reset();
                let run = run_session(session, ctx.clone());
                tokio::pin!(run);
                tokio::select! {
                    () = &mut run => {}
                    _ = stop.changed() => {
                        // Let the session flush what was queued (the engine dropped its queue).
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), run).await;
                        return;
                    }
                }
            }
            Err(e) => {
                debug!(peer = %member.device, error = %e, retryable = e.is_retryable(), "dial failed");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

#[derive(Clone)]
struct Attached {
    local: watch::Receiver<LocalState>,
    ctx: SessionCtx,
}

/// The [`SessionHandler`] of a host: routes each incoming session to the engine of the
/// library it asks for. Register one with the transport (iroh's router through
/// [`SyncProtocol`](sync_proto::SyncProtocol), or
/// `sync_proto::MemoryNetwork::add_node`) and hand a clone to every
/// [`SyncService`](crate::SyncService) the host starts. Cloning shares it.
#[derive(Clone, Default)]
pub struct Acceptor {
    libraries: Arc<RwLock<HashMap<LibraryId, Attached>>>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

impl Acceptor {
    /// An acceptor with no library attached (every hello is refused as foreign).
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn attach(
        &self,
        library: LibraryId,
        local: watch::Receiver<LocalState>,
        ctx: SessionCtx,
    ) {
        self.libraries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(library, Attached { local, ctx });
    }

    pub(crate) fn detach(&self, library: &LibraryId) {
        self.libraries.write().unwrap_or_else(PoisonError::into_inner).remove(library);
    }

    fn get(&self, library: &LibraryId) -> Option<Attached> {
        self.libraries.read().unwrap_or_else(PoisonError::into_inner).get(library).cloned()
    }
}

impl SessionHandler for Acceptor {
    fn local_state(&self, library: &LibraryId) -> Option<LocalState> {
        self.get(library).map(|a| a.local.borrow().clone())
    }

    async fn serve(&self, session: Session) {
        let library = session.info().library;
        match self.get(&library) {
            Some(a) => run_session(session, a.ctx).await,
            None => session.close(ErrorCode::FOREIGN_LIBRARY, "library not hosted"),
        }
    }
}
