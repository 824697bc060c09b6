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
//! - **Cut** ([`MemoryNetwork::cut`], [`MemoryNetwork::partition`], removing a node): the link
//!   dies at once; queued frames are lost and both sides get [`ProtoError::ConnectionLost`]
//!   (retryable). A partition also refuses new connections until healed.
//! - A **close with a code** (a refusal, [`Session::close`](crate::Session::close)) delivers
//!   frames already queued, then the code — like a refusal frame followed by a lingering close.
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
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::ProtoError;
use crate::frame::{self, FrameConfig};
use crate::handshake;
use crate::membership::Membership;
use crate::message::{ErrorCode, Message};
use crate::session::{
    Connector, Link, LocalState, ProtoConfig, RecvHalf, SendHalf, Session, SessionHandler, Wire,
};

/// Frames a lane holds before the sender waits (back-pressure, like a stream's window).
const LANE_CAPACITY: usize = 1024;

/// Faults injected on the frames one node sends to another.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability in `0.0..=1.0` that a frame is silently lost.
    pub drop_probability: f64,
    /// Fixed delay added to every frame.
    pub delay: Duration,
    /// Extra random delay in `0..=jitter` per frame (order within a lane is kept).
    pub jitter: Duration,
}

impl Faults {
    /// No faults.
    pub const NONE: Self =
        Self { drop_probability: 0.0, delay: Duration::ZERO, jitter: Duration::ZERO };
}

type AcceptFn = dyn Fn(EndpointId, Wire) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

struct Node {
    accept: Arc<AcceptFn>,
    frame: FrameConfig,
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
        M: Membership + Clone,
        H: SessionHandler,
    {
        let frame = config.frame;
        let accept_membership = membership.clone();
        let accept_config = config.clone();
        let accept: Arc<AcceptFn> = Arc::new(move |peer, wire: Wire| {
            let membership = accept_membership.clone();
            let handler = Arc::clone(&handler);
            let config = accept_config.clone();
            Box::pin(async move {
                let link = wire.link.clone();
                let open = async move { Ok(wire) };
                handshake::serve_incoming(peer, link, open, &membership, &*handler, &config).await;
            })
        });
        self.inner.state().nodes.insert(endpoint, Node { accept, frame });
        MemoryConnector { net: Arc::downgrade(&self.inner), me: endpoint, membership, config }
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

    /// Cuts every link and stops every acceptor task.
    pub async fn shutdown(&self) {
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
#[derive(Clone)]
pub struct MemoryConnector<M> {
    net: Weak<NetInner>,
    me: EndpointId,
    membership: M,
    config: ProtoConfig,
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
        let (accept, acceptor_frame) = {
            let state = net.state();
            if state.partitioned.contains(&pair(self.me, to)) {
                return Err(ProtoError::Connect(format!("partitioned from {}", to.fmt_short())));
            }
            let node = state
                .nodes
                .get(&to)
                .ok_or_else(|| ProtoError::Connect(format!("no node {}", to.fmt_short())))?;
            (Arc::clone(&node.accept), node.frame)
        };
        let id = net.next_link.fetch_add(1, Ordering::Relaxed);
        let (changed, _) = watch::channel(());
        let shared = Arc::new(LinkShared { id, state: Mutex::new(LinkState::Open), changed });
        let (tx_ab, rx_ab) = mpsc::channel(LANE_CAPACITY);
        let (tx_ba, rx_ba) = mpsc::channel(LANE_CAPACITY);
        let lane_rng = |side: u64| {
            let mix =
                (id.wrapping_mul(2) + side).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            StdRng::seed_from_u64(net.seed ^ mix)
        };
        let dialer_link = MemLink { shared: Arc::clone(&shared), side: Side::Dialer };
        let acceptor_link = MemLink { shared: Arc::clone(&shared), side: Side::Acceptor };
        let dialer = Wire {
            send: SendHalf::Memory(Box::new(MemSend {
                tx: Some(tx_ab),
                link: dialer_link.clone(),
                from: self.me,
                to,
                net: Weak::clone(&self.net),
                rng: lane_rng(0),
                last_due: Instant::now(),
                frame: self.config.frame,
            })),
            recv: RecvHalf::Memory(MemRecv {
                rx: rx_ba,
                link: dialer_link.clone(),
                frame: self.config.frame,
            }),
            link: Link::Memory(dialer_link),
        };
        let acceptor = Wire {
            send: SendHalf::Memory(Box::new(MemSend {
                tx: Some(tx_ba),
                link: acceptor_link.clone(),
                from: to,
                to: self.me,
                net: Weak::clone(&self.net),
                rng: lane_rng(1),
                last_due: Instant::now(),
                frame: acceptor_frame,
            })),
            recv: RecvHalf::Memory(MemRecv {
                rx: rx_ab,
                link: acceptor_link.clone(),
                frame: acceptor_frame,
            }),
            link: Link::Memory(acceptor_link),
        };
        {
            let mut state = net.state();
            state.links.retain(|r| r.link.strong_count() > 0);
            state.links.push(LinkRecord { a: self.me, b: to, link: Arc::downgrade(&shared) });
        }
        let mut tasks = net.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(accept(self.me, acceptor));
        Ok(dialer)
    }
}

impl<M: Membership + Clone> Connector for MemoryConnector<M> {
    async fn connect(&self, peer: EndpointAddr, local: LocalState) -> Result<Session, ProtoError> {
        let expected = handshake::expected_device(&self.membership, &local.library, &peer.id)?;
        let wire = self.open(peer.id)?;
        handshake::dial(peer.id, expected, wire, local, &self.config).await
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
            let was = !matches!(*state, LinkState::Cut);
            *state = LinkState::Cut;
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
pub(crate) struct MemLink {
    shared: Arc<LinkShared>,
    side: Side,
}

impl MemLink {
    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(*state, LinkState::Open) {
                *state = LinkState::Closed { by: self.side, code, reason: reason.to_string() };
            }
        }
        self.shared.changed.send_replace(());
    }

    /// The error a send gets now, or `None` while the link is open.
    fn send_error(&self) -> Option<ProtoError> {
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

    /// Resolves once the link is cut.
    async fn cut_signal(&self) {
        let mut changed = self.shared.changed.subscribe();
        while !matches!(self.shared.state(), LinkState::Cut) {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[derive(Debug)]
struct Envelope {
    due: Instant,
    frame: Bytes,
}

/// The sending half of a memory link.
#[derive(Debug)]
pub(crate) struct MemSend {
    tx: Option<mpsc::Sender<Envelope>>,
    link: MemLink,
    from: EndpointId,
    to: EndpointId,
    net: Weak<NetInner>,
    rng: StdRng,
    last_due: Instant,
    frame: FrameConfig,
}

impl MemSend {
    pub(crate) async fn send(&mut self, msg: &Message) -> Result<(), ProtoError> {
        if let Some(err) = self.link.send_error() {
            return Err(err);
        }
        let Some(tx) = &self.tx else {
            return Err(ProtoError::LocallyClosed);
        };
        let frame = Bytes::from(frame::encode_frame(msg, &self.frame)?);
        let faults = self.net.upgrade().map(|n| n.faults(self.from, self.to)).unwrap_or_default();
        if faults.drop_probability > 0.0 && self.rng.random_bool(faults.drop_probability.min(1.0)) {
            tracing::debug!(link = self.link.shared.id, kind = %msg.kind(), "memory link dropped a frame");
            return Ok(());
        }
        let jitter = u64::try_from(faults.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if jitter == 0 { 0 } else { self.rng.random_range(0..=jitter) };
        let due = (Instant::now() + faults.delay + Duration::from_nanos(jitter)).max(self.last_due);
        self.last_due = due;
        tokio::select! {
            sent = tx.send(Envelope { due, frame }) => sent.map_err(|_| {
                self.link
                    .send_error()
                    .unwrap_or_else(|| ProtoError::ConnectionLost("peer dropped its receiver".into()))
            }),
            () = self.link.not_open() => Err(self
                .link
                .send_error()
                .unwrap_or_else(|| ProtoError::ConnectionLost("memory link closed".into()))),
        }
    }

    /// Ends this lane: the peer reads what is queued, then the end of the stream.
    pub(crate) fn finish(&mut self) {
        self.tx = None;
    }
}

/// The receiving half of a memory link.
#[derive(Debug)]
pub(crate) struct MemRecv {
    rx: mpsc::Receiver<Envelope>,
    link: MemLink,
    /// The receiver's framing: no frame above its maximum is accepted, whatever `max` a read
    /// asks for (as [`FrameReader::read_limited`](crate::frame::FrameReader::read_limited)).
    frame: FrameConfig,
}

impl MemRecv {
    pub(crate) async fn recv(&mut self, max: u32) -> Result<Option<Message>, ProtoError> {
        let max = max.min(self.frame.max_frame_size());
        loop {
            let mut changed = self.link.shared.changed.subscribe();
            match self.link.shared.state() {
                LinkState::Cut => return Err(ProtoError::ConnectionLost("memory link cut".into())),
                LinkState::Closed { by, .. } if by == self.link.side => {
                    return Err(ProtoError::LocallyClosed);
                }
                LinkState::Closed { code, reason, .. } => {
                    // Closed by the peer: what it sent before closing still arrives.
                    return match self.rx.try_recv() {
                        Ok(envelope) => self.deliver(envelope, max).await,
                        Err(_) => Err(ProtoError::Closed { code, reason }),
                    };
                }
                LinkState::Open => {}
            }
            tokio::select! {
                envelope = self.rx.recv() => match envelope {
                    Some(envelope) => return self.deliver(envelope, max).await,
                    None => {
                        if matches!(self.link.shared.state(), LinkState::Open) {
                            return Ok(None);
                        }
                    }
                },
                changed = changed.changed() => {
                    if changed.is_err() {
                        return Err(ProtoError::ConnectionLost("memory link gone".into()));
                    }
                }
            }
        }
    }

    async fn deliver(
        &mut self,
        envelope: Envelope,
        max: u32,
    ) -> Result<Option<Message>, ProtoError> {
        tokio::select! {
            () = tokio::time::sleep_until(envelope.due) => {}
            () = self.link.cut_signal() => {
                return Err(ProtoError::ConnectionLost("memory link cut".into()));
            }
        }
        let (msg, _) = frame::decode_frame_limited(&envelope.frame, max)?;
        Ok(Some(msg))
    }
}
