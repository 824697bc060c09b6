//! The in-memory transport: the same handshake and framing as over iroh, carried by channels,
//! with fault injection for tests.
//!
//! # What a link models, and which faults keep to a stream's rules
//!
//! A connection between two nodes is a *link* with two *lanes* (one per direction). Every
//! message is encoded to a real frame on send and decoded (with the receiver's limits) on
//! receive, so size limits and codec behave as on the wire.
//!
//! - **Delay** (`delay` + random `jitter`, per frame): a lane is one ordered stream, so a frame
//!   is never delivered before the one sent ahead of it on the same lane — its due time is at
//!   least the previous frame's. Frames on *different* lanes (the two directions of a session,
//!   or two sessions between the same nodes, e.g. an old one and its replacement) do overtake
//!   each other. That is the only reordering iroh can produce, and so the only one modelled.
//! - **Drop** (`drop_probability`, per frame): the frame silently vanishes. A QUIC stream
//!   never does this while the connection lives; use it to model what the service sees across
//!   reconnects (messages in flight lost) and to test acks, retries and idempotency.
//! - **Duplicate** (`duplicate_probability`, per frame): a delivered frame arrives twice in a
//!   row. QUIC never does this either; it models a message re-sent after a reconnect or a
//!   retry, and tests that receivers are idempotent (a push, submit or ack handled twice).
//!   Handshake frames are never duplicated. The copy takes its own room in the lane's window.
//! - **Cut** ([`MemoryNetwork::cut`], [`MemoryNetwork::partition`], removing a node): the link
//!   dies at once; queued frames are lost and both sides get [`ProtoError::ConnectionLost`]
//!   (retryable). A partition also refuses new connections until healed.
//! - **Flow control** is in bytes, as on a QUIC stream: a lane holds at most the receiver's
//!   [`ProtoConfig::stream_window`] bytes that its reader has not taken yet (a frame larger
//!   than the window needs the whole window); a sender facing a reader that never reads
//!   blocks after about that much, as over iroh.
//! - **Closing** follows iroh: a graceful close ([`Session::close_gracefully`], dropping a
//!   session, a refusal frame) finishes the lane, waits until the peer has taken every frame
//!   (at most the linger), then closes with the code; an abrupt close
//!   ([`Session::close`]) discards frames the peer has not taken yet. Node shutdown
//!   ([`MemoryNetwork::shutdown_node`], [`MemoryNetwork::shutdown`]) closes every session
//!   gracefully with [`ErrorCode::SHUTTING_DOWN`]; removing a node is a crash.
//! - The node's protocol rules are the same code as over iroh: one accepted session per
//!   (library, device), revocation on membership change, the pending-handshake cap.
//!
//! [`Session::close_gracefully`]: crate::Session::close_gracefully
//! [`Session::close`]: crate::Session::close
//!
//! Randomness comes from one seed per network (logged at creation and available from
//! [`MemoryNetwork::seed`]): each lane draws from its own generator derived from the seed and
//! the link number, so a failing run replays with the same seed. Identities are claimed, not
//! proven: the in-memory network trusts the endpoint id a node registers with.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use iroh::{EndpointAddr, EndpointId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::ProtoError;
use crate::frame;
use crate::handshake::{self, Acceptor};
use crate::membership::Membership;
use crate::message::{ErrorCode, MessageKind};
use crate::registry::Registry;
use crate::session::{
    BoxFuture, Connector, Link, LinkCtl, LocalState, OutFrame, ProtoConfig, Received, RecvLink,
    SendLink, Session, SessionHandler, Wire,
};

/// Faults injected on the frames one node sends to another.
///
/// Build one from [`Faults::NONE`] with struct update syntax (`Faults { jitter, ..Faults::NONE
/// }`), so a fault added later leaves the literal compiling and off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability in `0.0..=1.0` that a frame is silently lost.
    pub drop_probability: f64,
    /// Probability in `0.0..=1.0` that a frame that is not dropped is delivered twice, the
    /// copy right after the original (nothing else on the lane comes between them; order is
    /// otherwise kept). Frames of the handshake (`Hello`, `HelloAck`, `VersionMismatch`) are
    /// never duplicated: a second one ends any session with `protocol-error`, so it would test
    /// nothing else.
    pub duplicate_probability: f64,
    /// Fixed delay added to every frame.
    pub delay: Duration,
    /// Extra random delay in `0..=jitter` per frame (order within a lane is kept).
    pub jitter: Duration,
}

impl Faults {
    /// No faults.
    pub const NONE: Self = Self {
        drop_probability: 0.0,
        duplicate_probability: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

type AcceptFn =
    dyn Fn(EndpointId, Link, Wire) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

struct Node {
    accept: Arc<AcceptFn>,
    config: ProtoConfig,
    registry: Registry,
}

struct LinkRecord {
    a: EndpointId,
    b: EndpointId,
    link: Weak<LinkShared>,
}

#[derive(Default)]
struct NetState {
    nodes: HashMap<EndpointId, Node>,
    faults: HashMap<(EndpointId, EndpointId), Faults>,
    partitioned: HashSet<(EndpointId, EndpointId)>,
    links: Vec<LinkRecord>,
}

struct NetInner {
    seed: u64,
    next_link: AtomicU64,
    state: Mutex<NetState>,
    tasks: Mutex<JoinSet<()>>,
}

impl NetInner {
    fn state(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn faults(&self, from: EndpointId, to: EndpointId) -> Faults {
        self.state().faults.get(&(from, to)).copied().unwrap_or_default()
    }
}

fn pair(a: EndpointId, b: EndpointId) -> (EndpointId, EndpointId) {
    if a <= b { (a, b) } else { (b, a) }
}

/// A network of in-memory nodes: the fault-injection tool for service tests.
///
/// Cloning shares the network. Dropping the last clone aborts the acceptor tasks.
#[derive(Clone)]
pub struct MemoryNetwork {
    inner: Arc<NetInner>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").field("seed", &self.inner.seed).finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network whose random faults derive from `seed` (logged at `info`).
    pub fn new(seed: u64) -> Self {
        tracing::info!(seed, "memory network created");
        Self {
            inner: Arc::new(NetInner {
                seed,
                next_link: AtomicU64::new(0),
                state: Mutex::new(NetState::default()),
                tasks: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// The seed: print it in a failing test to replay the run.
    pub fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Adds a node that accepts sessions with `membership` and hands them to `handler`;
    /// returns the connector it dials with. Replaces a node with the same id.
    pub fn add_node<M, H>(
        &self,
        endpoint: EndpointId,
        membership: M,
        handler: Arc<H>,
        config: ProtoConfig,
    ) -> MemoryConnector<M>
    where
        M: Membership,
        H: SessionHandler,
    {
        let membership = Arc::new(membership);
        let registry = Registry::new(membership.clone());
        let acceptor = Arc::new(Acceptor::with_registry(
            Arc::clone(&membership),
            handler,
            config.clone(),
            registry.clone(),
        ));
        let accept: Arc<AcceptFn> = Arc::new(move |peer, link, wire: Wire| {
            let acceptor = Arc::clone(&acceptor);
            Box::pin(async move {
                let open = async move { Ok(wire) };
                acceptor.serve(peer, link, open).await;
            })
        });
        self.inner
            .state()
            .nodes
            .insert(endpoint, Node { accept, config: config.clone(), registry: registry.clone() });
        MemoryConnector {
            net: Arc::downgrade(&self.inner),
            me: endpoint,
            membership,
            config,
            registry,
        }
    }

    /// Removes a node (a crash): its links are cut and connecting to it fails.
    pub fn remove_node(&self, endpoint: &EndpointId) {
        let mut state = self.inner.state();
        state.nodes.remove(endpoint);
        for record in &state.links {
            if (record.a == *endpoint || record.b == *endpoint)
                && let Some(link) = record.link.upgrade()
            {
                link.cut();
            }
        }
    }

    /// Shuts a node down as iroh's router and connector do: every session it has (accepted
    /// or dialled) closes gracefully with [`ErrorCode::SHUTTING_DOWN`] — what was sent still
    /// arrives — pending handshakes close with it, and the node is gone afterwards.
    pub async fn shutdown_node(&self, endpoint: &EndpointId) {
        let node = self
            .inner
            .state()
            .nodes
            .get(endpoint)
            .map(|n| (n.registry.clone(), n.config.close_linger));
        if let Some((registry, linger)) = node {
            registry.shutdown(linger).await;
        }
        self.remove_node(endpoint);
    }

    /// Live sessions (accepted and dialled) of a node.
    pub fn live_sessions(&self, endpoint: &EndpointId) -> usize {
        self.inner.state().nodes.get(endpoint).map_or(0, |n| n.registry.live())
    }

    /// Sets the faults on frames sent from `from` to `to` (live and future links).
    pub fn set_faults(&self, from: EndpointId, to: EndpointId, faults: Faults) {
        self.inner.state().faults.insert((from, to), faults);
    }

    /// Cuts every live link between `a` and `b`; returns how many were cut.
    pub fn cut(&self, a: EndpointId, b: EndpointId) -> usize {
        let mut state = self.inner.state();
        state.links.retain(|r| r.link.strong_count() > 0);
        let mut cut = 0;
        for record in &state.links {
            if pair(record.a, record.b) == pair(a, b)
                && let Some(link) = record.link.upgrade()
            {
                cut += usize::from(link.cut());
            }
        }
        cut
    }

    /// Cuts `a`–`b` and refuses new connections between them until [`MemoryNetwork::heal`].
    pub fn partition(&self, a: EndpointId, b: EndpointId) {
        self.inner.state().partitioned.insert(pair(a, b));
        self.cut(a, b);
    }

    /// Ends a partition.
    pub fn heal(&self, a: EndpointId, b: EndpointId) {
        self.inner.state().partitioned.remove(&pair(a, b));
    }

    /// Shuts every node down ([`MemoryNetwork::shutdown_node`]: sessions close gracefully
    /// with [`ErrorCode::SHUTTING_DOWN`]), cuts what is left and stops every acceptor task.
    pub async fn shutdown(&self) {
        let nodes: Vec<(Registry, Duration)> = self
            .inner
            .state()
            .nodes
            .values()
            .map(|n| (n.registry.clone(), n.config.close_linger))
            .collect();
        let mut closing = JoinSet::new();
        for (registry, linger) in nodes {
            closing.spawn(async move { registry.shutdown(linger).await });
        }
        while closing.join_next().await.is_some() {}
        {
            let state = self.inner.state();
            for record in &state.links {
                if let Some(link) = record.link.upgrade() {
                    link.cut();
                }
            }
        }
        let mut tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        tasks.shutdown().await;
    }
}

/// Dials over a [`MemoryNetwork`]: the [`Connector`] for fast tests.
pub struct MemoryConnector<M> {
    net: Weak<NetInner>,
    me: EndpointId,
    membership: Arc<M>,
    config: ProtoConfig,
    registry: Registry,
}

impl<M> Clone for MemoryConnector<M> {
    fn clone(&self) -> Self {
        Self {
            net: Weak::clone(&self.net),
            me: self.me,
            membership: Arc::clone(&self.membership),
            config: self.config.clone(),
            registry: self.registry.clone(),
        }
    }
}

impl<M> std::fmt::Debug for MemoryConnector<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConnector").field("me", &self.me).finish_non_exhaustive()
    }
}

impl<M: Membership> MemoryConnector<M> {
    /// The endpoint id this connector dials as.
    pub fn endpoint_id(&self) -> EndpointId {
        self.me
    }

    /// Opens a link to `to`, spawns the acceptor's side, and returns the dialer's wire.
    fn open(&self, to: EndpointId) -> Result<Wire, ProtoError> {
        let net =
            self.net.upgrade().ok_or_else(|| ProtoError::Connect("network is gone".into()))?;
        let (accept, acceptor_config) = {
            let state = net.state();
            if state.partitioned.contains(&pair(self.me, to)) {
                return Err(ProtoError::Connect(format!("partitioned from {}", to.fmt_short())));
            }
            let node = state
                .nodes
                .get(&to)
                .ok_or_else(|| ProtoError::Connect(format!("no node {}", to.fmt_short())))?;
            (Arc::clone(&node.accept), node.config.clone())
        };
        let id = net.next_link.fetch_add(1, Ordering::Relaxed);
        let (changed, _) = watch::channel(());
        let shared = Arc::new(LinkShared { id, state: Mutex::new(LinkState::Open), changed });
        let lane_rng = |side: u64| {
            let mix =
                (id.wrapping_mul(2) + side).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            StdRng::seed_from_u64(net.seed ^ mix)
        };
        let dialer_ctl = MemLink { shared: Arc::clone(&shared), side: Side::Dialer };
        let acceptor_ctl = MemLink { shared: Arc::clone(&shared), side: Side::Acceptor };
        let dialer_link = Link::new(Arc::new(dialer_ctl.clone()));
        let acceptor_link = Link::new(Arc::new(acceptor_ctl.clone()));
        // Each lane's window is its *receiver's* stream window, as on QUIC.
        let (ab_send, ab_recv) = lane(
            acceptor_config.stream_window,
            LaneEnds { link: dialer_ctl.clone(), from: self.me, to },
            acceptor_ctl.clone(),
            Weak::clone(&self.net),
            lane_rng(0),
            acceptor_config.frame.max_frame_size(),
        );
        let (ba_send, ba_recv) = lane(
            self.config.stream_window,
            LaneEnds { link: acceptor_ctl, from: to, to: self.me },
            dialer_ctl,
            Weak::clone(&self.net),
            lane_rng(1),
            self.config.frame.max_frame_size(),
        );
        let dialer = Wire { send: Box::new(ab_send), recv: Box::new(ba_recv), link: dialer_link };
        let acceptor =
            Wire { send: Box::new(ba_send), recv: Box::new(ab_recv), link: acceptor_link.clone() };
        {
            let mut state = net.state();
            state.links.retain(|r| r.link.strong_count() > 0);
            state.links.push(LinkRecord { a: self.me, b: to, link: Arc::downgrade(&shared) });
        }
        let mut tasks = net.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(accept(self.me, acceptor_link, acceptor));
        Ok(dialer)
    }

    /// Live sessions (accepted and dialled) of this connector's node.
    pub fn live_sessions(&self) -> usize {
        self.registry.live()
    }
}

impl<M: Membership> Connector for MemoryConnector<M> {
    async fn connect(&self, peer: EndpointAddr, local: LocalState) -> Result<Session, ProtoError> {
        if self.registry.is_shutting_down() {
            return Err(ProtoError::Terminated {
                code: ErrorCode::SHUTTING_DOWN,
                reason: "node shutting down".into(),
            });
        }
        let expected = handshake::expected_device(&*self.membership, &local.library, &peer.id)?;
        let wire = self.open(peer.id);
        let open = async move { wire };
        handshake::dial(peer.id, expected, open, local, &self.config, &self.registry).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Dialer,
    Acceptor,
}

#[derive(Clone, Debug)]
enum LinkState {
    Open,
    Cut,
    Closed { by: Side, code: ErrorCode, reason: String },
}

#[derive(Debug)]
struct LinkShared {
    id: u64,
    state: Mutex<LinkState>,
    changed: watch::Sender<()>,
}

impl LinkShared {
    fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Cuts the link; returns whether it was still alive.
    fn cut(&self) -> bool {
        let was_open = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            // A link already closed with a code stays closed: its peer was told the code.
            let was = matches!(*state, LinkState::Open);
            if was {
                *state = LinkState::Cut;
            }
            was
        };
        if was_open {
            tracing::debug!(link = self.id, "memory link cut");
        }
        self.changed.send_replace(());
        was_open
    }
}

/// One side's handle on a memory link.
#[derive(Clone, Debug)]
struct MemLink {
    shared: Arc<LinkShared>,
    side: Side,
}

impl MemLink {
    /// The error this side gets now, or `None` while the link is open.
    fn error(&self) -> Option<ProtoError> {
        match self.shared.state() {
            LinkState::Open => None,
            LinkState::Cut => Some(ProtoError::ConnectionLost("memory link cut".into())),
            LinkState::Closed { by, .. } if by == self.side => Some(ProtoError::LocallyClosed),
            LinkState::Closed { code, reason, .. } => Some(ProtoError::Closed { code, reason }),
        }
    }

    /// Resolves once the link is no longer open.
    async fn not_open(&self) {
        let mut changed = self.shared.changed.subscribe();
        while matches!(self.shared.state(), LinkState::Open) {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl LinkCtl for MemLink {
    fn close(&self, code: ErrorCode, reason: &str) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*state, LinkState::Open) {
                *state = LinkState::Closed { by: self.side, code, reason: reason.to_string() };
            }
        }
        self.shared.changed.send_replace(());
    }

    fn closed(&self) -> BoxFuture<'_, ProtoError> {
        Box::pin(async move {
            self.not_open().await;
            self.error().unwrap_or_else(|| ProtoError::ConnectionLost("memory link gone".into()))
        })
    }
}

#[derive(Debug)]
struct Envelope {
    due: Instant,
    frame: Bytes,
    /// Window bytes the frame holds until its reader takes it.
    permits: u32,
}

/// Who a lane's sender is, for faults and errors.
struct LaneEnds {
    link: MemLink,
    from: EndpointId,
    to: EndpointId,
}

/// Builds one lane: its sending and receiving halves, with a byte window of `window`.
fn lane(
    window: u32,
    ends: LaneEnds,
    reader: MemLink,
    net: Weak<NetInner>,
    rng: StdRng,
    reader_max: u32,
) -> (MemSend, MemRecv) {
    let window = window.max(1);
    let credit = Arc::new(Semaphore::new(window as usize));
    let (tx, rx) = mpsc::unbounded_channel();
    let send = MemSend {
        tx: Some(tx),
        credit: Arc::clone(&credit),
        window,
        link: ends.link,
        from: ends.from,
        to: ends.to,
        net,
        rng,
        last_due: Instant::now(),
    };
    let recv = MemRecv { rx, credit, link: reader, ceiling: reader_max, pending: None };
    (send, recv)
}

/// The sending half of a memory lane.
struct MemSend {
    tx: Option<mpsc::UnboundedSender<Envelope>>,
    credit: Arc<Semaphore>,
    window: u32,
    link: MemLink,
    from: EndpointId,
    to: EndpointId,
    net: Weak<NetInner>,
    rng: StdRng,
    last_due: Instant,
}

impl MemSend {
    async fn send(&mut self, frame: OutFrame) -> Result<(), ProtoError> {
        if let Some(err) = self.link.error() {
            return Err(err);
        }
        if self.tx.is_none() {
            return Err(ProtoError::LocallyClosed);
        }
        let faults = self.net.upgrade().map(|n| n.faults(self.from, self.to)).unwrap_or_default();
        if faults.drop_probability > 0.0 && self.rng.random_bool(faults.drop_probability.min(1.0)) {
            tracing::debug!(link = self.link.shared.id, "memory link dropped a frame");
            return Ok(());
        }
        let len = frame.header.len() + frame.payload.len();
        let permits = u32::try_from(len).unwrap_or(u32::MAX).min(self.window);
        // Flow control: wait for the reader to have taken enough.
        self.acquire(permits).await?;
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&frame.header);
        bytes.extend_from_slice(&frame.payload);
        let jitter = u64::try_from(faults.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter == 0 { 0 } else { self.rng.random_range(0..=jitter) };
        let due = (Instant::now() + faults.delay + Duration::from_nanos(jitter)).max(self.last_due);
        self.last_due = due;
        let frame = Bytes::from(bytes);
        let duplicate = faults.duplicate_probability > 0.0
            && !is_handshake_frame(&frame)
            && self.rng.random_bool(faults.duplicate_probability.min(1.0));
        self.enqueue(Envelope { due, frame: frame.clone(), permits })?;
        if duplicate {
            // The original is on its way: if the link fails now, only the copy is lost, and the
            // next send reports the failure.
            if self.acquire(permits).await.is_ok() {
                tracing::debug!(link = self.link.shared.id, "memory link duplicated a frame");
                let _ = self.enqueue(Envelope { due, frame, permits });
            }
        }
        Ok(())
    }

    /// Takes `permits` bytes of the lane's window, waiting for the reader to make room.
    async fn acquire(&self, permits: u32) -> Result<(), ProtoError> {
        let permit = tokio::select! {
            permit = self.credit.acquire_many(permits) => permit.map_err(|_| {
                ProtoError::ConnectionLost("memory lane gone".into())
            })?,
            () = self.link.not_open() => {
                return Err(self.link.error().unwrap_or_else(|| {
                    ProtoError::ConnectionLost("memory link closed".into())
                }));
            }
        };
        permit.forget();
        Ok(())
    }

    /// Puts a frame on the lane.
    fn enqueue(&self, envelope: Envelope) -> Result<(), ProtoError> {
        match &self.tx {
            Some(tx) => tx.send(envelope).map_err(|_| {
                self.link.error().unwrap_or_else(|| {
                    ProtoError::ConnectionLost("peer dropped its receiver".into())
                })
            }),
            None => Err(ProtoError::LocallyClosed),
        }
    }
}

/// Whether an encoded frame is one of the handshake's (by its kind code).
fn is_handshake_frame(frame: &[u8]) -> bool {
    frame
        .get(4..frame::HEADER_LEN)
        .and_then(|code| MessageKind::from_code(u16::from_be_bytes([code[0], code[1]])))
        .is_some_and(MessageKind::is_handshake_only)
}

impl SendLink for MemSend {
    fn send_frame<'a>(&'a mut self, frame: OutFrame) -> BoxFuture<'a, Result<(), ProtoError>> {
        Box::pin(self.send(frame))
    }

    fn finish(&mut self) -> Result<(), ProtoError> {
        self.tx = None;
        Ok(())
    }

    fn flushed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Every window byte back means the reader has taken every frame.
            tokio::select! {
                _ = self.credit.acquire_many(self.window) => {}
                () = self.link.not_open() => {}
            }
        })
    }
}

/// The receiving half of a memory lane.
struct MemRecv {
    rx: mpsc::UnboundedReceiver<Envelope>,
    credit: Arc<Semaphore>,
    link: MemLink,
    /// The receiver's maximum frame size: no frame above it is accepted, whatever `max` a read
    /// asks for.
    ceiling: u32,
    /// A frame taken from the lane and waiting for its due time (kept across cancellation).
    pending: Option<Envelope>,
}

impl MemRecv {
    async fn recv(&mut self, max: u32, idle: Option<Instant>) -> Result<Received, ProtoError> {
        let max = max.min(self.ceiling);
        loop {
            if let Some(err) = self.link.error() {
                // Closed or cut: whatever the reader has not taken yet is lost (abrupt close).
                return Err(err);
            }
            if let Some(envelope) = &self.pending {
                let due = envelope.due;
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = self.link.not_open() => continue,
                }
                let Some(envelope) = self.pending.take() else { continue };
                self.credit.add_permits(envelope.permits as usize);
                let (msg, _) = frame::decode_frame_limited(&envelope.frame, max)?;
                return Ok(Received::Message(msg));
            }
            let idle_sleep = async {
                match idle {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                envelope = self.rx.recv() => match envelope {
                    Some(envelope) => self.pending = Some(envelope),
                    None => {
                        if let Some(err) = self.link.error() {
                            return Err(err);
                        }
                        return Ok(Received::End);
                    }
                },
                () = self.link.not_open() => {}
                () = idle_sleep => return Ok(Received::Idle),
            }
        }
    }
}

impl RecvLink for MemRecv {
    fn recv_frame<'a>(
        &'a mut self,
        max: u32,
        idle: Option<Instant>,
        _frame_timeout: Duration,
    ) -> BoxFuture<'a, Result<Received, ProtoError>> {
        // A memory frame arrives whole: it cannot stall midway.
        Box::pin(self.recv(max, idle))
    }
}
