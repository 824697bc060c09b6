//! The engine: one task per library that owns the sync state and reacts to messages from
//! peers, leadership changes, local commits and a housekeeping tick. It carries out what
//! [`crate::plan`] decides. It runs on a thread of its own ([`spawn`]) and calls SQLite
//! inline through the `TransactionManager` and `SyncLog` handles (`with_blocking`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use leadership::{DriverHandle, Message as LMessage, RoleChange as LChange, Term};
use sync_log::{
    Change, DeviceId, Epoch, LibraryId, LogEntry, Position, Seq, SyncLog, SyncLogStore,
};
use sync_proto::{
    Ack, Assigned, Divergence, Entries, ErrorCode, ErrorMessage, Fetch, LocalState, MemberTable,
    Message, PeerInfo, Ping, Pong, Push, PushNotice, SnapshotRequired, Submit, SubmitAck,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use txn_manager::TransactionManager;

use crate::config::Config;
use crate::peer::{Acceptor, DynConnector, FromPeer, Member, Outlets, SessionCtx, dial_loop};
use crate::plan::{self, Backoff, CommonSearch, Incoming};
use crate::status::{ChangedRecord, Event, MAX_EVENT_RECORDS, PeerStatus, Role, Status, SyncState};
use crate::wire;

/// What the service and the leadership driver tell the engine.
#[derive(Debug)]
pub(crate) enum Control {
    /// The role changed.
    Role(LChange),
    /// A local commit happened; `devices`: it wrote a device row (membership may change).
    Kick { devices: bool },
    /// The host named other members (or addresses).
    Members(Vec<Member>),
    /// Stop: sequence or keep what is committed, tell peers, close.
    Shutdown(oneshot::Sender<()>),
}

struct Peer {
    session: u64,
    tx: mpsc::Sender<Message>,
    close: Option<oneshot::Sender<ErrorCode>>,
    position: Position,
    rtt: Option<Duration>,
    ping: Option<(u64, Instant)>,
    /// Pushes could not be queued from this seq on: a `PushNotice` is owed.
    overflow: Option<Seq>,
    /// When its position last advanced (or it connected).
    progress: Instant,
}

impl Peer {
    fn send(&self, msg: Message) -> bool {
        self.tx.try_send(msg).is_ok()
    }
}

struct Search {
    peer: DeviceId,
    search: CommonSearch,
    probe: Seq,
    asked: Instant,
}

#[derive(Default)]
struct Forwarded {
    term: Option<Term>,
    /// Our own origin seqs up to here were sent to that term's leader.
    through: u64,
    /// The re-submissions up to this position (`Library::resubmit_after`) were sent to it.
    resubmit_through: i64,
    /// When a submit was last sent.
    at: Option<Instant>,
    /// Submits sent and not answered yet (at most [`SUBMITS_IN_FLIGHT`]).
    in_flight: usize,
    /// A local commit arrived while the submits in flight were at their bound.
    pending: bool,
    /// The last submit was cut short (perhaps inside a transaction's row): the rest goes only
    /// after every submit in flight was answered, so a failed part is never overtaken.
    cut: bool,
}

/// Submits a follower has unanswered at once: a commit is forwarded as it happens, without
/// waiting for the previous answer, and a backlog moves several pages per round trip; the
/// bound keeps the leader's inbox (and its memory) small.
const SUBMITS_IN_FLIGHT: usize = 4;

/// Submitted changes under reused origin keys the leader sets aside in one append before it
/// refuses the submits (each costs one more attempt of the whole append).
const SET_ASIDE_MAX: usize = 16;

/// A write to the library and its log, run in one blocking call with the reads that follow
/// it (see [`Engine::write`]).
enum Write {
    /// Leader: append the outbox and re-submissions to the log (not applied yet: the entries
    /// are pushed first, then [`Write::CatchUp`] applies them).
    Sequence(Epoch),
    /// Nothing: only the reads (after submits were appended to the log).
    Read,
    /// Apply what the log holds beyond the library.
    CatchUp,
    /// Follower: entries from the leader.
    Receive(Vec<LogEntry>),
}

/// What a [`Write`] left: the new head and applied seq, and (when asked) the entries after a
/// seq, read in the same call so the leader pushes them without another round trip.
struct Written {
    head: Position,
    applied: Seq,
    fresh: Option<Vec<LogEntry>>,
}

/// A follower acks what it applied at most once per this period: a leader pushing a commit
/// per millisecond is not sent (and does not wake for) an ack per push. An ack is never held
/// back longer than this.
const ACK_EVERY: Duration = Duration::from_millis(20);

struct Acked {
    at: Instant,
    owed: Option<DeviceId>,
}

/// Positions of the entries pushed last, so most acks are checked without reading the log.
const RECENT: usize = 4_096;

/// Everything the engine needs at start.
pub(crate) struct EngineParts {
    pub(crate) config: Config,
    pub(crate) library: LibraryId,
    pub(crate) me: DeviceId,
    pub(crate) tm: TransactionManager,
    pub(crate) log: SyncLog,
    pub(crate) driver: DriverHandle,
    pub(crate) models: Vec<String>,
    pub(crate) member_table: MemberTable,
    pub(crate) connector: DynConnector,
    pub(crate) acceptor: Acceptor,
    pub(crate) ctx: SessionCtx,
    pub(crate) outlets: Outlets,
    pub(crate) local_tx: watch::Sender<LocalState>,
    pub(crate) status_tx: Arc<watch::Sender<Status>>,
    /// Commits made through the service (each followed by a [`Control::Kick`]).
    pub(crate) commits: Arc<AtomicU64>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) seed: u64,
    /// Set when the service stops (cleanly or not): the dial loops end.
    pub(crate) stop: Arc<watch::Sender<bool>>,
    /// The host's runtime: the dial loops run there, not on the engine's own thread.
    pub(crate) runtime: tokio::runtime::Handle,
}

pub(crate) struct Engine {
    cfg: Config,
    library: LibraryId,
    me: DeviceId,
    tm: TransactionManager,
    log: SyncLog,
    driver: DriverHandle,
    models: Vec<String>,
    member_table: MemberTable,
    connector: DynConnector,
    acceptor: Acceptor,
    ctx: SessionCtx,
    outlets: Outlets,
    local_tx: watch::Sender<LocalState>,
    status_tx: Arc<watch::Sender<Status>>,
    /// Commits made through the service, and the kicks of them handled here: while any is
    /// not handled, the status counts it as unsent.
    commits: Arc<AtomicU64>,
    commits_seen: u64,
    events: broadcast::Sender<Event>,
    seed: u64,
    runtime: tokio::runtime::Handle,

    /// Who may connect now (from the device rows and `named`: [`plan::membership`]).
    members: BTreeMap<DeviceId, Member>,
    /// The members the host named (at start and with `set_members`).
    named: BTreeMap<DeviceId, Member>,
    /// A device row changed: membership is computed again after this round.
    members_due: bool,
    /// This device's own row is tombstoned (since when it was noticed).
    removed: Option<Instant>,
    dialers: HashMap<DeviceId, JoinHandle<()>>,
    stop_tx: Arc<watch::Sender<bool>>,
    peers: HashMap<DeviceId, Peer>,

    head: Position,
    applied: Seq,
    /// Consecutive positions of recently pushed or applied entries (oldest first).
    recent: std::collections::VecDeque<Position>,
    /// Leader: entries up to here were pushed.
    pushed_through: Seq,
    /// Leader: the outbox (or a resubmit) waits to be sequenced.
    sequence_due: bool,
    /// Leader: forwarded changes waiting to be sequenced, with their sender.
    submits: Vec<(DeviceId, Vec<Change>)>,
    /// Follower: the newest seq the leader announced.
    leader_seq: Seq,
    /// Follower: when the last ack after an apply went, and to whom one is owed.
    acked: Acked,
    /// Follower: consecutive entries pushed by one peer in this round, not applied yet. A
    /// burst of pushes is applied in one write (one log sync), at the end of the round or
    /// before any other event is handled, so the order of events is kept.
    received: Option<(DeviceId, Vec<LogEntry>, usize)>,
    /// Since when this device has been behind the leader.
    behind_since: Option<Instant>,
    /// When `applied` last advanced.
    progress: Instant,
    fetch: Option<(Seq, Instant)>,
    forwarded: Forwarded,
    search: Option<Search>,
    rewinds: u64,
    last_error: Option<String>,
    snapshot: Option<Seq>,
    last_role: Option<Role>,
    nonce: u64,
    ticks: u64,
    outbox_len: u64,
    resubmit_len: u64,
    kept: u64,
}

/// The length of the longest prefix of `items` within `budget` bytes, at least one item.
fn within_budget<T>(items: &[T], budget: usize, bytes: impl Fn(&T) -> usize) -> usize {
    let mut total = 0usize;
    for (i, item) in items.iter().enumerate() {
        total = total.saturating_add(bytes(item));
        if total > budget && i > 0 {
            return i;
        }
    }
    items.len()
}

/// Whether `changes` touch a device row (and so, perhaps, the membership).
pub(crate) fn touches_devices<'a>(mut changes: impl Iterator<Item = &'a Change>) -> bool {
    changes.any(|c| c.model == txn_manager::DEVICE_MODEL)
}

/// The record an entry changed, as an `Applied` event names it.
fn changed(e: &LogEntry) -> ChangedRecord {
    ChangedRecord { model: e.change.model.clone(), record: e.change.record }
}

/// A running engine: its thread and the task on it.
pub(crate) struct EngineTask {
    abort: tokio::task::AbortHandle,
    done: oneshot::Receiver<()>,
}

impl EngineTask {
    /// Stops the engine at its next await point, as a crash would.
    pub(crate) fn abort(&self) {
        self.abort.abort();
    }

    /// Waits until the engine's thread has finished.
    pub(crate) async fn join(self) {
        let _ = self.done.await;
    }
}

/// Starts `engine` on a thread of its own, with a current-thread runtime for its timers.
///
/// The engine is the library's one writer and calls SQLite inline ([`Engine::storage`]):
/// a message from a peer wakes one thread, not a runtime worker and then a blocking-pool
/// thread and then the worker again, and a slow disk never holds a worker of the host's
/// runtime. What the engine spawns (the dial loops) runs on the host's runtime.
pub(crate) fn spawn(
    engine: Engine,
    members: Vec<Member>,
    inbox: mpsc::Receiver<FromPeer>,
    control: mpsc::UnboundedReceiver<Control>,
    span: tracing::Span,
) -> std::io::Result<EngineTask> {
    use tracing::Instrument;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let task = runtime.spawn(engine.run(members, inbox, control).instrument(span));
    let abort = task.abort_handle();
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new().name("sync-engine".into()).spawn(move || {
        let _ = runtime.block_on(task);
        // Tasks and blocking calls of this runtime end before the join returns.
        drop(runtime);
        let _ = done_tx.send(());
    })?;
    Ok(EngineTask { abort, done })
}

/// How many ready events are handled before the leader sequences and pushes: what arrived
/// while the previous push was in flight is coalesced into one batch.
const DRAIN: usize = 256;

impl Engine {
    pub(crate) fn new(parts: EngineParts) -> Self {
        let stop_tx = parts.stop;
        let now = Instant::now();
        Self {
            cfg: parts.config,
            library: parts.library,
            me: parts.me,
            tm: parts.tm,
            log: parts.log,
            driver: parts.driver,
            models: parts.models,
            member_table: parts.member_table,
            connector: parts.connector,
            acceptor: parts.acceptor,
            ctx: parts.ctx,
            outlets: parts.outlets,
            local_tx: parts.local_tx,
            status_tx: parts.status_tx,
            commits: parts.commits,
            commits_seen: 0,
            events: parts.events,
            seed: parts.seed,
            runtime: parts.runtime,
            members: BTreeMap::new(),
            named: BTreeMap::new(),
            members_due: false,
            removed: None,
            dialers: HashMap::new(),
            stop_tx,
            peers: HashMap::new(),
            head: Position::default(),
            applied: Seq::ZERO,
            recent: std::collections::VecDeque::new(),
            pushed_through: Seq::ZERO,
            sequence_due: false,
            submits: Vec::new(),
            leader_seq: Seq::ZERO,
            acked: Acked { at: now, owed: None },
            received: None,
            behind_since: None,
            progress: now,
            fetch: None,
            forwarded: Forwarded::default(),
            search: None,
            rewinds: 0,
            last_error: None,
            snapshot: None,
            last_role: None,
            nonce: 0,
            ticks: 0,
            outbox_len: 0,
            resubmit_len: 0,
            kept: 0,
        }
    }

    pub(crate) async fn run(
        mut self,
        members: Vec<Member>,
        mut inbox: mpsc::Receiver<FromPeer>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        // Recovery: whatever a crash left between the two files is applied (or rewound).
        if let Err(e) = self.storage(|l, s| l.catch_up(s)) {
            self.fail("catch-up at start", &e);
        }
        self.refresh().await;
        self.pushed_through = self.head.seq;
        self.named = members.into_iter().map(|m| (m.device, m)).collect();
        self.refresh_members().await;
        self.refresh_counts().await;
        self.publish();
        let mut tick = tokio::time::interval(self.cfg.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut stop = None;
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(Control::Shutdown(reply)) => stop = Some(Some(reply)),
                    Some(c) => self.on_control(c).await,
                    None => stop = Some(None),
                },
                Some(ev) = inbox.recv() => self.on_peer(ev).await,
                _ = tick.tick() => self.on_tick().await,
                _ = tokio::time::sleep_until(self.acked.at + ACK_EVERY), if self.acked.owed.is_some() => {
                    self.send_owed_ack();
                }
            }
            // Coalesce: handle what is already waiting before sequencing and pushing.
            for _ in 0..DRAIN {
                if stop.is_some() {
                    break;
                }
                if let Ok(c) = control.try_recv() {
                    match c {
                        Control::Shutdown(reply) => stop = Some(Some(reply)),
                        c => self.on_control(c).await,
                    }
                    continue;
                }
                match inbox.try_recv() {
                    Ok(ev) => self.on_peer(ev).await,
                    Err(_) => break,
                }
            }
            self.apply_received().await;
            self.step().await;
            if std::mem::take(&mut self.members_due) {
                self.refresh_members().await;
            }
            self.publish();
            if let Some(reply) = stop {
                self.shutdown().await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return;
            }
        }
    }

    // ---- helpers ------------------------------------------------------------------------

    fn fail(&mut self, what: &str, e: &dyn std::fmt::Display) {
        warn!(library = %self.library, device = %self.me, error = %e, "{what} failed");
        self.last_error = Some(format!("{what}: {e}"));
    }

    /// Runs `f` on the library and its log, on this thread: the engine has a thread of its
    /// own (see [`spawn`]), so SQLite is called inline, without a trip to a blocking pool.
    /// Lock order: library, then log (as everywhere).
    fn storage<T>(
        &self,
        f: impl FnOnce(&mut txn_manager::Library, &mut SyncLogStore) -> Result<T, txn_manager::Error>,
    ) -> Result<T, txn_manager::Error> {
        self.tm.with_blocking(|l| self.log.with_blocking(|s| Ok(f(l, s)))?)
    }

    async fn refresh(&mut self) {
        match self.storage(|l, s| Ok((s.head(), l.applied_seq()))) {
            Ok((head, applied)) => self.set_position(head, applied),
            Err(e) => self.fail("reading the log head and the applied seq", &e),
        }
    }

    fn set_position(&mut self, head: Position, applied: Seq) {
        if applied > self.applied {
            self.progress = Instant::now();
        }
        if head.seq < self.head.seq {
            self.recent.clear(); // rewound
        }
        self.head = head;
        self.applied = applied;
        let _ = self.driver.set_position(leadership::LogPosition(self.head.seq.0));
    }

    /// Runs `write` and, in the same blocking call, reads the new head, the applied seq and
    /// (with `read_after = Some(seq)`) the entries after `seq` when there are at most
    /// [`Config::push_max`]: one lock of the two files per batch on the hot path.
    async fn write(
        &mut self,
        write: Write,
        read_after: Option<Seq>,
    ) -> Result<Written, txn_manager::Error> {
        let push_max = self.cfg.push_max as u64;
        let written = self.storage(|l, s| {
            match write {
                Write::Sequence(epoch) => l.sequence_log(s, epoch).map(|_| ()),
                Write::Read => Ok(()),
                Write::CatchUp => l.catch_up(s).map(|_| ()),
                Write::Receive(entries) => l.receive(s, &entries).map(|_| ()),
            }?;
            let head = s.head();
            let fresh = match read_after {
                Some(after) if head.seq > after && head.seq.0 - after.0 <= push_max => {
                    Some(s.read_after(after, (head.seq.0 - after.0) as usize)?)
                }
                _ => None,
            };
            Ok(Written { head, applied: l.applied_seq(), fresh })
        });
        match written {
            Ok(w) => {
                self.set_position(w.head, w.applied);
                Ok(w)
            }
            Err(e) => {
                self.refresh().await;
                Err(e)
            }
        }
    }

    /// Remembers the positions of consecutive `entries` (for checking acks in memory).
    fn remember(&mut self, entries: &[LogEntry]) {
        for e in entries {
            if self.recent.back().is_some_and(|p| p.seq.next() != e.seq) {
                self.recent.clear();
            }
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(e.position());
        }
    }

    /// The checksum at `seq` if it is the head or among the recent entries.
    fn known_checksum(&self, seq: Seq) -> Option<sync_log::Checksum> {
        if seq == self.head.seq {
            return Some(self.head.checksum);
        }
        let first = self.recent.front()?.seq;
        let i = usize::try_from(seq.0.checked_sub(first.0)?).ok()?;
        self.recent.get(i).filter(|p| p.seq == seq).map(|p| p.checksum)
    }

    async fn refresh_counts(&mut self) {
        let counts = self.tm.with_blocking(|l| {
            let outbox = l.outbox_len()?;
            let kept = l.pending_count()?;
            Ok((outbox, l.resubmit_count(), kept))
        });
        match counts {
            Ok((o, r, k)) => (self.outbox_len, self.resubmit_len, self.kept) = (o, r, k),
            Err(e) => self.fail("counting the outbox", &e),
        }
    }

    /// The term this device may sequence in now (re-read before every batch).
    fn can_sequence(&self) -> Option<Term> {
        self.driver.fence().can_sequence()
    }

    /// The leader this device follows, if it follows one.
    fn leader(&self) -> Option<DeviceId> {
        let status = self.driver.status();
        let term = status.leader?;
        (term.leader != wire::to_l(self.me)).then(|| wire::from_l(term.leader))
    }

    fn send(&self, to: DeviceId, msg: Message) -> bool {
        self.peers.get(&to).is_some_and(|p| p.send(msg))
    }

    fn emit_applied(&self, entries: &[LogEntry]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        if self.events.receiver_count() == 0 {
            return;
        }
        let mut seen = BTreeSet::new();
        for e in entries.iter().take(MAX_EVENT_RECORDS) {
            seen.insert(changed(e));
        }
        self.send_applied(first.seq, last.seq, seen, entries.len() > MAX_EVENT_RECORDS);
    }

    /// The `Applied` event for the entries after `before` up to the applied seq: named from
    /// `known` when it is exactly that range (the entries just pushed), else read back from
    /// the log a page at a time (a range too large to push went as a notice, and the entries
    /// were never in memory), up to [`MAX_EVENT_RECORDS`] entries.
    fn emit_applied_since(&mut self, before: Seq, known: &[LogEntry]) {
        let through = self.applied;
        if through <= before {
            return;
        }
        let exact = known.first().map(|e| e.seq) == Some(before.next())
            && known.last().map(|e| e.seq) == Some(through);
        if exact {
            self.emit_applied(known);
            return;
        }
        if self.events.receiver_count() == 0 {
            return;
        }
        let (mut seen, mut after, mut named) = (BTreeSet::new(), before, 0);
        let truncated = loop {
            if after >= through {
                break false;
            }
            if named == MAX_EVENT_RECORDS {
                break true;
            }
            let limit = (through.0 - after.0).min(u64::from(self.cfg.page)) as usize;
            let limit = limit.min(MAX_EVENT_RECORDS - named);
            let page = match self.log.with_blocking(|s| s.read_after(after, limit)) {
                Ok(page) => page,
                Err(e) => {
                    // The event still goes, marked incomplete: refresh everything.
                    self.fail("reading applied entries for the event", &e);
                    break true;
                }
            };
            let Some(last) = page.last().map(|e| e.seq) else { break false };
            for e in page.iter().filter(|e| e.seq <= through) {
                seen.insert(changed(e));
                named += 1;
            }
            after = last;
        };
        self.send_applied(before.next(), through, seen, truncated);
    }

    fn send_applied(
        &self,
        from: Seq,
        through: Seq,
        seen: BTreeSet<ChangedRecord>,
        truncated: bool,
    ) {
        let records: Arc<[ChangedRecord]> = seen.into_iter().collect();
        let _ = self.events.send(Event::Applied { from, through, records, truncated });
    }

    // ---- members and dialling -------------------------------------------------------------

    /// Computes the membership again from the device rows and the named members, and applies
    /// it (a removed device's session closed, a new member dialled).
    async fn refresh_members(&mut self) {
        let rows = match self.tm.with_blocking(|l| l.roster()) {
            Ok(rows) => rows,
            Err(e) => {
                self.fail("reading the device rows", &e);
                return;
            }
        };
        let m = plan::membership(self.me, &self.named, &rows);
        if !m.removed {
            self.removed = None;
            self.apply_members(m.members);
            return;
        }
        let since = *self.removed.get_or_insert_with(|| {
            warn!(library = %self.library, device = %self.me, "this device was removed from the library: sync stops");
            Instant::now()
        });
        self.last_error =
            Some("this device was removed from the library (its device row is deleted)".into());
        // A removed device first hands over what it has not sent (a device that removed
        // itself: its removal among it), for at most `stuck_after`; then it talks to nobody.
        self.refresh_counts().await;
        let unsent = self.outbox_len + self.resubmit_len > 0;
        if unsent && since.elapsed() < self.cfg.stuck_after {
            self.members_due = true; // looked at again on the next round
        } else {
            // Leadership keeps the members it knew: alone in a library of one, this device
            // would lead itself and sequence a history nobody shares.
            let known: BTreeSet<leadership::MemberId> = self
                .members
                .keys()
                .chain(std::iter::once(&self.me))
                .map(|d| wire::to_l(*d))
                .collect();
            self.apply_members(Vec::new());
            let _ = self.driver.set_members(known);
        }
    }

    fn apply_members(&mut self, list: Vec<Member>) {
        let new: BTreeMap<DeviceId, Member> = list.into_iter().map(|m| (m.device, m)).collect();
        for (device, old) in &self.members {
            // Gone, or paired with another endpoint id: the old identity may not connect.
            if new.get(device).is_none_or(|m| m.addr.id != old.addr.id) {
                info!(library = %self.library, %device, "member removed: closing its session");
                self.member_table.remove(&self.library, &old.addr.id);
                self.outlets.remove(*device, None);
                if let Some(mut peer) = self.peers.remove(device)
                    && let Some(close) = peer.close.take()
                {
                    let _ = close.send(ErrorCode::NOT_A_MEMBER);
                }
                if let Some(task) = self.dialers.remove(device) {
                    task.abort();
                }
            }
        }
        self.member_table.host(self.library);
        for (device, member) in &new {
            self.member_table.add(self.library, member.addr.id, *device);
            if *device != self.me
                && plan::dials(self.me, *device)
                && !self.dialers.contains_key(device)
            {
                let seed = self.seed ^ device.0.as_u128() as u64;
                let task = self.runtime.spawn(dial_loop(
                    self.connector.clone(),
                    member.clone(),
                    self.local_tx.subscribe(),
                    self.ctx.clone(),
                    Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max, seed),
                    self.stop_tx.subscribe(),
                ));
                self.dialers.insert(*device, task);
            }
        }
        let mut set: BTreeSet<leadership::MemberId> = new.keys().map(|d| wire::to_l(*d)).collect();
        set.insert(wire::to_l(self.me));
        let _ = self.driver.set_members(set);
        self.members = new;
    }

    // ---- control ----------------------------------------------------------------------------

    async fn on_control(&mut self, c: Control) {
        self.apply_received().await;
        match c {
            Control::Role(change) => self.on_role(change).await,
            Control::Kick { devices } => {
                self.commits_seen += 1;
                self.members_due |= devices;
                // At least this commit waits (the exact count comes with the next refresh):
                // the status never says "in sync" while a write is unsent.
                self.outbox_len = self.outbox_len.max(1);
                if self.can_sequence().is_some() {
                    self.sequence_due = true;
                } else {
                    self.forward(false).await;
                }
            }
            Control::Members(list) => {
                // The rows still decide: computed again after this round.
                self.named = list.into_iter().map(|m| (m.device, m)).collect();
                self.members_due = true;
            }
            Control::Shutdown(_) => {}
        }
    }

    async fn on_role(&mut self, change: LChange) {
        match change {
            LChange::BecomeLeader { term } | LChange::Resume { term } => {
                info!(library = %self.library, device = %self.me, %term, "sequencing");
                self.sequence_due = true;
                self.refresh().await;
                self.pushed_through = self.head.seq;
                self.fetch = None;
                self.search = None;
                self.snapshot = None;
            }
            LChange::StepDown(step) => {
                // Stop at once; followers keep their changes and re-forward them to the
                // winner, our own outbox is forwarded on the next `Follow`.
                info!(library = %self.library, device = %self.me, term = %step.term, "stepped down");
                self.submits.clear();
                self.sequence_due = false;
            }
            LChange::Follow { term } => {
                self.forwarded = Forwarded::default();
                self.fetch = None;
                self.search = None;
                // What the previous leader announced says nothing of this one's log.
                self.leader_seq = Seq::ZERO;
                self.snapshot = None;
                let leader = wire::from_l(term.leader);
                if self.peers.contains_key(&leader) {
                    self.on_leader_reachable(leader, None).await;
                }
            }
            LChange::Pause { term } => {
                warn!(library = %self.library, %term, "no member heard: sequencing paused");
            }
            _ => {}
        }
    }

    // ---- peers ------------------------------------------------------------------------------

    async fn on_peer(&mut self, ev: FromPeer) {
        if !matches!(&ev, FromPeer::Msg { msg: Message::Push(_), .. }) {
            self.apply_received().await;
        }
        match ev {
            FromPeer::Up { peer, session, tx, close, info } => {
                self.on_up(peer, session, tx, close, info).await
            }
            FromPeer::Msg { peer, session, msg } => {
                if self.peers.get(&peer).is_some_and(|p| p.session == session) {
                    self.on_message(peer, msg).await;
                }
            }
            FromPeer::Down { peer, session } => {
                if self.peers.get(&peer).is_some_and(|p| p.session == session) {
                    debug!(library = %self.library, %peer, "session down");
                    self.peers.remove(&peer);
                }
                self.outlets.remove(peer, Some(session));
            }
        }
    }

    async fn on_up(
        &mut self,
        peer: DeviceId,
        session: u64,
        tx: mpsc::Sender<Message>,
        close: oneshot::Sender<ErrorCode>,
        info: PeerInfo,
    ) {
        if !self.members.contains_key(&peer) || peer == self.me {
            let _ = close.send(ErrorCode::NOT_A_MEMBER);
            return;
        }
        if let Some(mut old) = self.peers.remove(&peer)
            && let Some(close) = old.close.take()
        {
            // One session per pair: the newer one wins.
            let _ = close.send(ErrorCode::NORMAL);
        }
        debug!(library = %self.library, %peer, session, position = %info.position.seq, "session up");
        self.outlets.insert(peer, session, tx.clone());
        self.peers.insert(
            peer,
            Peer {
                session,
                tx,
                close: Some(close),
                position: info.position,
                rtt: None,
                ping: None,
                overflow: None,
                progress: Instant::now(),
            },
        );
        if let Some(term) = self.can_sequence() {
            self.check_follower(peer, info.position, term).await;
        } else if self.leader() == Some(peer) {
            self.on_leader_reachable(peer, Some(info.position)).await;
        }
    }

    /// Leader: tells a follower whose log differs from ours at its position.
    async fn check_follower(&mut self, peer: DeviceId, theirs: Position, term: Term) {
        if theirs.seq > self.head.seq || theirs.seq == Seq::ZERO {
            return;
        }
        let ours = match self.known_checksum(theirs.seq) {
            Some(ours) => Ok(Some(ours)),
            None => self.log.with_blocking(|s| s.checksum_at(theirs.seq)),
        };
        match ours {
            Ok(Some(ours)) if ours != theirs.checksum => {
                info!(library = %self.library, %peer, seq = %theirs.seq, "follower diverged");
                self.send(
                    peer,
                    Message::Divergence(Divergence {
                        epoch: wire::epoch_from_l(term.epoch),
                        leader: self.me,
                        yours: theirs,
                        ours: Position { seq: theirs.seq, checksum: ours },
                    }),
                );
            }
            Ok(_) | Err(sync_log::Error::Pruned { .. }) => {}
            Err(e) => self.fail("checking a follower's position", &e),
        }
    }

    /// Follower: the leader is connected (again): compare, catch up, forward.
    async fn on_leader_reachable(&mut self, leader: DeviceId, theirs: Option<Position>) {
        if let Some(theirs) = theirs
            && theirs.seq <= self.head.seq
            && theirs.seq > Seq::ZERO
        {
            match self.log.with_blocking(|s| s.checksum_at(theirs.seq)) {
                Ok(Some(ours)) if ours != theirs.checksum => {
                    self.start_search(leader, theirs.seq).await;
                    return;
                }
                _ => {}
            }
        }
        // Our position, so the leader can tell us if we diverged at a seq it also has.
        self.send(leader, Message::Ack(Ack { applied: self.head }));
        self.fetch = None;
        self.request_fetch();
        self.forward(true).await;
    }

    async fn on_message(&mut self, peer: DeviceId, msg: Message) {
        // Leadership messages were handed to the driver by the session's reader already.
        if let Some(decoded) = wire::decode(&msg) {
            if let LMessage::Heartbeat { term, position } = decoded
                && wire::from_l(term.leader) == peer
            {
                self.on_heartbeat(peer, Seq(position.0));
            }
            return;
        }
        match msg {
            Message::Ping(ping) => {
                self.send(peer, Message::Pong(Pong { nonce: ping.nonce, payload: ping.payload }));
            }
            Message::Pong(pong) => {
                if let Some(p) = self.peers.get_mut(&peer)
                    && let Some((nonce, at)) = p.ping
                    && nonce == pong.nonce
                {
                    p.rtt = Some(at.elapsed());
                    p.ping = None;
                }
            }
            Message::Push(push) => self.on_push(peer, push).await,
            Message::PushNotice(notice) => {
                if self.leader() == Some(peer) {
                    self.leader_seq = self.leader_seq.max(notice.latest);
                    self.request_fetch();
                }
            }
            Message::Fetch(fetch) => self.serve_fetch(peer, fetch).await,
            Message::Entries(entries) => self.on_entries(peer, entries).await,
            Message::Ack(ack) => self.on_ack(peer, ack).await,
            Message::Submit(submit) => {
                if self.can_sequence().is_some() {
                    self.submits.push((peer, submit.changes));
                } else {
                    self.send(
                        peer,
                        Message::Error(ErrorMessage {
                            code: ErrorCode::NOT_LEADER,
                            message: "this device does not lead".into(),
                        }),
                    );
                }
            }
            Message::SubmitAck(_) => {
                if self.leader() == Some(peer) {
                    self.forwarded.in_flight = self.forwarded.in_flight.saturating_sub(1);
                    if std::mem::take(&mut self.forwarded.pending) {
                        self.forward(false).await;
                    }
                }
            }
            Message::SnapshotRequired(sr) => {
                if self.leader() == Some(peer) {
                    warn!(library = %self.library, through = %sr.compacted_through, "snapshot required");
                    self.snapshot = Some(sr.compacted_through);
                    self.last_error = Some(format!(
                        "a snapshot is required: the leader pruned its log through seq {} \
                         (snapshots come with the jobs issue)",
                        sr.compacted_through
                    ));
                    self.fetch = None;
                }
            }
            Message::Divergence(d) => {
                if self.leader() == Some(peer) && d.is_consistent() {
                    self.start_search(peer, d.yours.seq).await;
                }
            }
            Message::Error(e) => {
                debug!(library = %self.library, %peer, code = %e.code, message = %e.message, "peer error");
                if e.code == ErrorCode::SHUTTING_DOWN {
                    self.peers.remove(&peer);
                    self.outlets.remove(peer, None);
                }
            }
            other => {
                debug!(library = %self.library, %peer, kind = %other.kind(), "unexpected message ignored");
            }
        }
    }

    fn on_heartbeat(&mut self, peer: DeviceId, seq: Seq) {
        if self.leader() != Some(peer) {
            return;
        }
        self.leader_seq = self.leader_seq.max(seq);
        // A missed push (dropped, or sent before we connected) shows here.
        if seq > self.head.seq {
            self.request_fetch();
        }
    }

    // ---- follower ---------------------------------------------------------------------------

    /// Asks the leader for the entries after our head. One fetch at a time: while one is
    /// unanswered (and younger than `resend_after`) this does nothing, so pushes, notices and
    /// heartbeats that all announce the same range cost one fetch, not one each.
    fn request_fetch(&mut self) {
        let Some(leader) = self.leader() else { return };
        if self.snapshot.is_some() || self.search.is_some() {
            return;
        }
        if self.fetch.is_some_and(|(_, at)| at.elapsed() < self.cfg.resend_after) {
            return;
        }
        let fetch = Fetch { after: self.head.seq, limit: self.cfg.page };
        if self.send(leader, Message::Fetch(fetch)) {
            self.fetch = Some((self.head.seq, Instant::now()));
        }
    }

    async fn on_push(&mut self, peer: DeviceId, push: Push) {
        let term = Term::new(leadership::Epoch(push.epoch.0), wire::to_l(peer));
        match self.driver.fence().check(term) {
            leadership::Verdict::Accept => {}
            leadership::Verdict::NewerTerm { theirs } => {
                // The machine learns the term; the `Follow` that follows fetches.
                let _ = self.driver.observe(theirs);
                return;
            }
            leadership::Verdict::RefuseStale { .. } => {
                debug!(library = %self.library, %peer, %term, "stale push refused");
                return;
            }
        }
        let Some(last) = push.entries.last().map(|e| e.seq) else { return };
        self.leader_seq = self.leader_seq.max(last);
        let first = push.entries.first().map(|e| e.seq);
        let bytes: usize = push.entries.iter().map(|e| e.change.size_bound()).sum();
        match &mut self.received {
            // Held up to a page of entries and `message_bytes`, like one fetched page.
            Some((from, held, held_bytes))
                if *from == peer
                    && held.len() < self.cfg.page as usize
                    && *held_bytes + bytes <= self.cfg.message_bytes
                    && held.last().map(|e| e.seq.next()) == first =>
            {
                held.extend(push.entries);
                *held_bytes += bytes;
            }
            _ => {
                self.apply_received().await;
                self.received = Some((peer, push.entries, bytes));
            }
        }
    }

    /// Applies the pushed entries held in this round (see [`Engine::received`]).
    async fn apply_received(&mut self) {
        if let Some((from, entries, _)) = self.received.take() {
            self.apply(from, entries).await;
        }
    }

    async fn on_entries(&mut self, peer: DeviceId, entries: Entries) {
        if self.search.as_ref().is_some_and(|s| s.peer == peer) {
            self.on_probe(entries).await;
            return;
        }
        if self.leader() != Some(peer) {
            return;
        }
        // The answer to the fetch in flight (an older, duplicate answer is applied all the
        // same, harmlessly, but does not start another fetch).
        let answers = self.fetch.is_some_and(|(after, _)| {
            entries.entries.first().map_or(after == self.head.seq, |e| e.seq == after.next())
        });
        if answers {
            self.fetch = None;
        }
        self.leader_seq = self.leader_seq.max(entries.latest);
        if entries.entries.is_empty() && entries.latest < self.head.seq {
            // Our log goes past the leader's: that suffix is not in the global log.
            self.start_search(peer, entries.latest.next()).await;
            return;
        }
        self.apply(peer, entries.entries).await;
        if answers && (entries.more || entries.latest > self.head.seq) {
            self.request_fetch();
        }
    }

    async fn apply(&mut self, from: DeviceId, entries: Vec<LogEntry>) {
        let Some(first) = entries.first().map(|e| e.seq) else { return };
        if self.search.is_some() {
            // Our suffix is being compared with the leader's: what it sends now is fetched
            // after the rewind (applying it would restart the search on every push).
            return;
        }
        if plan::classify(self.head.seq, first) == Incoming::Gap {
            self.request_fetch();
            return;
        }
        let before = self.applied;
        match self.write(Write::Receive(entries.clone()), None).await {
            Ok(_) => {
                let fresh: Vec<LogEntry> = entries.into_iter().filter(|e| e.seq > before).collect();
                self.remember(&fresh);
                self.members_due |= touches_devices(fresh.iter().map(|e| &e.change));
                // Our forwarded changes came back: the next ones can go (a backlog moves on
                // with every round trip, not with every resend timeout).
                if fresh.iter().any(|e| e.change.origin.device == self.me) {
                    self.forward(false).await;
                }
                self.emit_applied_since(before, &fresh);
                self.ack(from);
            }
            Err(txn_manager::Error::Log(sync_log::Error::Diverged { seq, .. })) => {
                self.start_search(from, seq).await;
            }
            Err(txn_manager::Error::Log(sync_log::Error::Gap { .. })) => self.request_fetch(),
            Err(e) => self.fail("applying entries", &e),
        }
    }

    /// Acks our position to `to` now, or (within [`ACK_EVERY`] of the last ack) once the
    /// period is over.
    fn ack(&mut self, to: DeviceId) {
        self.acked.owed = Some(to);
        if self.acked.at.elapsed() >= ACK_EVERY {
            self.send_owed_ack();
        }
    }

    fn send_owed_ack(&mut self) {
        if let Some(to) = self.acked.owed.take() {
            self.send(to, Message::Ack(Ack { applied: self.head }));
            self.acked.at = Instant::now();
        }
    }

    async fn start_search(&mut self, peer: DeviceId, differs: Seq) {
        let floor = match self.log.with_blocking(|s| Ok(s.floor())) {
            Ok(floor) => floor.seq,
            Err(e) => {
                self.fail("reading the log floor", &e);
                return;
            }
        };
        let differs = differs.min(self.head.seq.next());
        info!(library = %self.library, %peer, %differs, "log diverged from the leader's: searching the last common seq");
        let search = CommonSearch::new(floor, differs);
        self.search = Some(Search { peer, search, probe: Seq::ZERO, asked: Instant::now() });
        self.fetch = None;
        self.next_probe().await;
    }

    async fn next_probe(&mut self) {
        let Some(s) = self.search.as_mut() else { return };
        match s.search.probe() {
            Some(probe) => {
                s.probe = probe;
                s.asked = Instant::now();
                let peer = s.peer;
                self.send(peer, Message::Fetch(Fetch { after: Seq(probe.0 - 1), limit: 1 }));
            }
            None => {
                let common = s.search.answer();
                self.finish_search(common).await;
            }
        }
    }

    async fn on_probe(&mut self, entries: Entries) {
        let Some(probe) = self.search.as_ref().map(|s| s.probe) else { return };
        let theirs = entries.entries.first().filter(|e| e.seq == probe).map(|e| e.checksum);
        if theirs.is_none() && !entries.entries.is_empty() {
            return; // an answer to something else
        }
        let ours = match self.log.with_blocking(|s| s.checksum_at(probe)) {
            Ok(ours) => ours,
            Err(e) => {
                self.fail("reading a checksum", &e);
                return;
            }
        };
        let matched = theirs.is_some() && ours == theirs;
        if let Some(s) = self.search.as_mut() {
            s.search.record(probe, matched);
        }
        self.next_probe().await;
    }

    async fn finish_search(&mut self, common: Seq) {
        self.search = None;
        match self.storage(|l, s| l.rewind(s, common)) {
            Ok(report) => {
                self.rewinds += 1;
                info!(library = %self.library, common = %common, discarded = report.discarded, "rewound after a divergence");
                let _ = self.events.send(Event::Rewound { common });
                self.refresh().await;
                self.refresh_counts().await;
                self.fetch = None;
                self.request_fetch();
                self.forward(true).await;
            }
            Err(e) => self.fail("rewinding", &e),
        }
    }

    /// Sends the leader what it has not been sent: with `force` (a new leader, a reconnect,
    /// a resend) the resubmit table and the whole outbox, else the re-submissions and outbox
    /// rows after the last ones sent — re-submissions first (they are older), page by page
    /// while fewer than [`SUBMITS_IN_FLIGHT`] submits are unanswered.
    async fn forward(&mut self, force: bool) {
        let Some(leader) = self.leader() else { return };
        if !self.peers.contains_key(&leader) {
            return;
        }
        let term = self.driver.status().leader;
        let force = force || self.forwarded.term != term;
        if force {
            self.forwarded = Forwarded { term, ..Forwarded::default() };
        }
        let page = self.cfg.page as usize;
        loop {
            let waits_for_answers = self.forwarded.cut && self.forwarded.in_flight > 0;
            if self.forwarded.in_flight >= SUBMITS_IN_FLIGHT || waits_for_answers {
                self.forwarded.pending = true;
                return;
            }
            let (through, resubmit_through) =
                (self.forwarded.through, self.forwarded.resubmit_through);
            let read = self.tm.with_blocking(|l| {
                let resubmits = l.resubmit_after(resubmit_through, page)?;
                // A full page of re-submissions goes alone: the outbox follows them.
                if resubmits.len() >= page {
                    return Ok((resubmits, Vec::new(), true));
                }
                let outbox = l.outbox_after_seq(through, page)?;
                let full = outbox.len() >= page;
                Ok((resubmits, outbox, full))
            });
            let (resubmits, mut outbox, mut more) = match read {
                Ok(read) => read,
                Err(e) => {
                    self.fail("reading the outbox", &e);
                    return;
                }
            };
            let (positions, mut changes): (Vec<i64>, Vec<Change>) = resubmits.into_iter().unzip();
            let me = self.me;
            // What is left of a row sent in part (a transaction too large for one submit).
            outbox.retain(|c| c.origin.device != me || c.origin.seq > through);
            let resubmits = changes.len();
            changes.append(&mut outbox);
            let fit = within_budget(&changes, self.cfg.message_bytes, Change::size_bound);
            let cut = fit < changes.len();
            if cut {
                changes.truncate(fit);
                more = true;
            }
            if changes.is_empty() {
                return;
            }
            // Only the outbox part moves `through` (re-submissions keep their own keys).
            let last_own = changes[resubmits.min(changes.len())..]
                .iter()
                .filter(|c| c.origin.device == me)
                .map(|c| c.origin.seq)
                .max();
            let last_resubmit = positions.get(..resubmits.min(changes.len())).and_then(<[_]>::last);
            let last_resubmit = last_resubmit.copied();
            if !self.send(leader, Message::Submit(Submit { changes })) {
                return; // the queue is full: the resend on the tick catches up
            }
            self.forwarded.through = last_own.unwrap_or(through).max(through);
            self.forwarded.resubmit_through =
                last_resubmit.unwrap_or(resubmit_through).max(resubmit_through);
            self.forwarded.at = Some(Instant::now());
            self.forwarded.in_flight += 1;
            self.forwarded.pending = false;
            self.forwarded.cut = cut;
            if !more {
                return;
            }
        }
    }

    // ---- leader -----------------------------------------------------------------------------

    async fn serve_fetch(&mut self, peer: DeviceId, fetch: Fetch) {
        let limit = fetch.limit.clamp(1, self.cfg.page) as usize;
        let reply = match self.log.with_blocking(|s| s.read_after(fetch.after, limit)) {
            Ok(mut entries) => {
                // A page of large entries ends early: no message outgrows the frame limit.
                entries.truncate(within_budget(&entries, self.cfg.message_bytes, |e| {
                    e.change.size_bound()
                }));
                let latest = self.head.seq;
                let more = entries.last().is_some_and(|e| e.seq < latest);
                Message::Entries(Entries { entries, latest, more })
            }
            Err(sync_log::Error::Pruned { floor, .. }) => {
                let snapshot = self.log.with_blocking(|s| Ok(s.floor())).unwrap_or_default();
                Message::SnapshotRequired(SnapshotRequired {
                    compacted_through: floor,
                    snapshot,
                    total_bytes: 0,
                })
            }
            Err(e) => {
                self.fail("serving a fetch", &e);
                Message::Error(ErrorMessage { code: ErrorCode::INTERNAL, message: e.to_string() })
            }
        };
        // Dropped when the peer's queue is full: it asks again.
        self.send(peer, reply);
    }

    async fn on_ack(&mut self, peer: DeviceId, ack: Ack) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if ack.applied.seq > p.position.seq {
                p.progress = Instant::now();
            }
            p.position = ack.applied;
        }
        if let Some(term) = self.can_sequence() {
            self.check_follower(peer, ack.applied, term).await;
        }
    }

    /// Leader: sequence what waits, then push it to every connected peer at once.
    async fn step(&mut self) {
        let Some(term) = self.can_sequence() else {
            self.submits.clear();
            return;
        };
        let epoch = Epoch(term.epoch.0);
        // Everything the library applies in this round is announced once, at its end (the
        // sequencing write applies waiting submits before it appends).
        let before = self.applied;
        let submits = std::mem::take(&mut self.submits);
        // Every submit that waited is appended in ONE transaction (each keeps its order);
        // if that fails (say one sender reused an origin key), each is tried alone, so one
        // bad submit never holds back the others.
        let appended = match submits.len() {
            0 => false,
            1 => self.append_submits(epoch, submits).await.unwrap_or(false),
            _ => match self.append_submits(epoch, submits.clone()).await {
                Some(new) => new,
                None => {
                    // A sender's submits stay in order: after one of its submits failed, its
                    // later ones wait for its resend (a large transaction split over several
                    // submits must never be sequenced end first).
                    let mut any = false;
                    let mut failed = BTreeSet::new();
                    for submit in submits {
                        if failed.contains(&submit.0) {
                            continue;
                        }
                        let sender = submit.0;
                        match self.append_submits(epoch, vec![submit]).await {
                            Some(new) => any |= new,
                            None => {
                                failed.insert(sender);
                            }
                        }
                    }
                    any
                }
            },
        };
        if self.can_sequence() != Some(term) {
            return;
        }
        let sequence = std::mem::take(&mut self.sequence_due);
        let write = if sequence {
            Write::Sequence(epoch)
        } else if appended || self.head.seq > self.pushed_through || self.applied < self.head.seq {
            // Submits appended, or a push or an apply left over from a failed round.
            Write::Read
        } else {
            return;
        };
        // The log first, then the push, then the library's own bookkeeping (applying what
        // followers submitted, removing our outbox rows): followers do not wait for it.
        let fresh = match self.write(write, Some(self.pushed_through)).await {
            Ok(written) => written.fresh,
            Err(e) => {
                self.fail("sequencing", &e);
                self.sequence_due = true;
                None
            }
        };
        let pushed = self.push(term, fresh);
        if self.applied < self.head.seq
            && let Err(e) = self.write(Write::CatchUp, None).await
        {
            self.fail("applying what was sequenced", &e);
            self.sequence_due = true;
        }
        self.emit_applied_since(before, &pushed);
    }

    /// Appends the changes of `submits` in one transaction and answers each sender with the
    /// seqs of its changes. A change under an origin key the log already holds with another
    /// change (its device handed the key out twice) is set aside — it stays with its sender,
    /// unanswered — and the rest is appended, up to [`SET_ASIDE_MAX`] such keys per call, so
    /// one reused key never wedges a sender's submits. `Some(any new)`, or `None` (and an
    /// error to each sender) if the append failed.
    async fn append_submits(
        &mut self,
        epoch: Epoch,
        submits: Vec<(DeviceId, Vec<Change>)>,
    ) -> Option<bool> {
        let mut origins: Vec<(DeviceId, Vec<sync_log::OriginKey>)> = submits
            .iter()
            .map(|(peer, changes)| (*peer, changes.iter().map(|c| c.origin).collect()))
            .collect();
        let mut all: Vec<Change> = submits.into_iter().flat_map(|(_, changes)| changes).collect();
        let mut set_aside = 0;
        loop {
            // Applied by the catch-up that follows.
            self.members_due |= touches_devices(all.iter());
            let error = match self.log.with_blocking(|s| s.append(epoch, &all)) {
                Ok(result) => {
                    let new = result.iter().any(|a| a.new);
                    let mut result = result.into_iter();
                    for (peer, origins) in origins {
                        let assigned = origins
                            .into_iter()
                            .zip(result.by_ref())
                            .map(|(origin, a)| Assigned { origin, seq: a.seq })
                            .collect();
                        self.send(peer, Message::SubmitAck(SubmitAck { epoch, assigned }));
                    }
                    return Some(new);
                }
                Err(e) => e,
            };
            if let sync_log::Error::OriginConflict { origin, seq } = &error
                && set_aside < SET_ASIDE_MAX
                && all.iter().any(|c| c.origin == *origin)
            {
                warn!(library = %self.library, ?origin, %seq, "a submitted change reuses an origin key the log holds with another change: set aside");
                set_aside += 1;
                all.retain(|c| c.origin != *origin);
                for (_, keys) in &mut origins {
                    keys.retain(|k| k != origin);
                }
                continue;
            }
            self.fail("sequencing submits", &error);
            let code =
                if error.is_retryable() { ErrorCode::INTERNAL } else { ErrorCode::PROTOCOL_ERROR };
            for (peer, _) in origins {
                let message = error.to_string();
                self.send(peer, Message::Error(ErrorMessage { code, message }));
            }
            return None;
        }
    }

    /// Pushes the entries after `pushed_through` up to the head: `fresh` when it is exactly
    /// that range (read with the write), else read here; a range above `push_max` as a notice.
    /// Returns the entries pushed (none when the range went as a notice).
    fn push(&mut self, term: Term, fresh: Option<Vec<LogEntry>>) -> Vec<LogEntry> {
        if self.head.seq <= self.pushed_through {
            return Vec::new();
        }
        let first = self.pushed_through.next();
        let count = (self.head.seq.0 - self.pushed_through.0) as usize;
        let exact =
            |e: &Vec<LogEntry>| e.len() == count && e.first().is_some_and(|f| f.seq == first);
        let entries = match fresh {
            Some(entries) if exact(&entries) => entries,
            _ if count <= self.cfg.push_max => {
                let after = self.pushed_through;
                match self.log.with_blocking(|s| s.read_after(after, count)) {
                    Ok(entries) => entries,
                    Err(e) => {
                        self.fail("reading entries to push", &e);
                        return Vec::new();
                    }
                }
            }
            _ => Vec::new(),
        };
        self.remember(&entries);
        let epoch = wire::epoch_from_l(term.epoch);
        let latest = self.head.seq;
        // Entries too large for one message are announced instead (the followers fetch them
        // in pages that fit).
        let fits = within_budget(&entries, self.cfg.message_bytes, |e| e.change.size_bound())
            == entries.len();
        let (push, unpushed) = if !entries.is_empty() && fits {
            (Some(Push { epoch, entries }), Vec::new())
        } else {
            (None, entries)
        };
        for p in self.peers.values_mut() {
            let notice_from = p.overflow.or(push.is_none().then_some(first));
            match (notice_from, &push) {
                (None, Some(push)) => {
                    if !p.send(Message::Push(push.clone())) {
                        p.overflow = Some(first);
                    }
                }
                (Some(from), _) => {
                    let notice = PushNotice { epoch, first: from, latest };
                    p.overflow =
                        if p.send(Message::PushNotice(notice)) { None } else { Some(from) };
                }
                (None, None) => {}
            }
        }
        self.pushed_through = self.head.seq;
        push.map_or(unpushed, |p| p.entries)
    }

    // ---- housekeeping ----------------------------------------------------------------------

    async fn on_tick(&mut self) {
        self.apply_received().await;
        self.ticks += 1;
        self.nonce += 1;
        let nonce = self.nonce;
        for p in self.peers.values_mut() {
            if p.ping.is_none_or(|(_, at)| at.elapsed() > self.cfg.resend_after)
                && p.send(Message::Ping(Ping { nonce, payload: Bytes::new() }))
            {
                p.ping = Some((nonce, Instant::now()));
            }
        }
        if self.ticks % 4 == 1 {
            self.refresh_counts().await;
        }
        if let Some(s) = &self.search {
            if s.asked.elapsed() > self.cfg.resend_after {
                self.next_probe().await;
            }
            return;
        }
        if self.can_sequence().is_some() {
            if self.outbox_len > 0 || self.resubmit_len > 0 {
                self.sequence_due = true;
            }
            // Peers owed a notice get it once their queue has room.
            if let Some(term) = self.can_sequence()
                && self.peers.values().any(|p| p.overflow.is_some())
            {
                let epoch = wire::epoch_from_l(term.epoch);
                let latest = self.head.seq;
                for p in self.peers.values_mut() {
                    if let Some(from) = p.overflow
                        && p.send(Message::PushNotice(PushNotice { epoch, first: from, latest }))
                    {
                        p.overflow = None;
                    }
                }
            }
            return;
        }
        if self.applied < self.head.seq {
            // An apply that failed after its entries reached the log is tried again.
            let before = self.applied;
            match self.write(Write::CatchUp, None).await {
                Ok(_) => self.emit_applied_since(before, &[]),
                Err(e) => self.fail("applying what the log holds", &e),
            }
        }
        if self.leader_seq > self.head.seq {
            self.request_fetch();
        }
        let stale = self.forwarded.at.is_none_or(|at| at.elapsed() > self.cfg.resend_after);
        if (self.outbox_len > 0 || self.resubmit_len > 0) && stale {
            self.forward(true).await;
        }
    }

    fn publish(&mut self) {
        let ls = self.driver.status();
        let role = match (ls.role, ls.leader) {
            (leadership::RoleKind::Leader, _) if ls.paused => Role::PausedLeader,
            (leadership::RoleKind::Leader, _) => Role::Leader,
            (_, Some(_)) => Role::Follower,
            _ => Role::NoLeader,
        };
        if self.last_role != Some(role) {
            self.last_role = Some(role);
            let _ = self.events.send(Event::Role(role));
        }
        let leading = role == Role::Leader || role == Role::PausedLeader;
        let leader_seq = if leading { self.head.seq } else { self.leader_seq.max(self.applied) };
        let lag_entries = leader_seq.0.saturating_sub(self.applied.0);
        let now = Instant::now();
        match (lag_entries, self.behind_since) {
            (0, _) => self.behind_since = None,
            (_, None) => self.behind_since = Some(now),
            _ => {}
        }
        let lag = self.behind_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let stuck_after = self.cfg.stuck_after;
        let head = self.head.seq;
        let peers: Vec<PeerStatus> = {
            let mut peers: Vec<PeerStatus> = self
                .members
                .keys()
                .filter(|d| **d != self.me)
                .map(|d| match self.peers.get(d) {
                    Some(p) => PeerStatus {
                        device: *d,
                        connected: true,
                        rtt: p.rtt,
                        position: p.position,
                        stuck: leading
                            && p.position.seq < head
                            && p.progress.elapsed() > stuck_after,
                    },
                    None => PeerStatus {
                        device: *d,
                        connected: false,
                        rtt: None,
                        position: Position::default(),
                        stuck: false,
                    },
                })
                .collect();
            peers.sort_by_key(|p| p.device);
            peers
        };
        let leader = ls.leader.map(|t| wire::from_l(t.leader));
        let leader_connected = leader.is_some_and(|l| l == self.me || self.peers.contains_key(&l));
        // A commit whose kick is still on its way is unsent too.
        let outbox_len = if self.commits.load(Ordering::SeqCst) > self.commits_seen {
            self.outbox_len.max(1)
        } else {
            self.outbox_len
        };
        let pending = outbox_len + self.resubmit_len;
        let state = if self.removed.is_some() {
            SyncState::Removed
        } else if let Some(through) = self.snapshot {
            SyncState::SnapshotRequired { compacted_through: through }
        } else if !leader_connected || role == Role::PausedLeader {
            if pending == 0
                && lag_entries == 0
                && role != Role::NoLeader
                && role != Role::PausedLeader
            {
                SyncState::InSync
            } else {
                SyncState::Offline
            }
        } else if lag_entries > 0 && self.progress.elapsed() > stuck_after && lag > stuck_after {
            SyncState::Stuck {
                reason: format!("{lag_entries} entries behind the leader and not advancing"),
            }
        } else if let Some(p) = peers.iter().find(|p| p.stuck) {
            SyncState::Stuck { reason: format!("peer {} connected but not advancing", p.device) }
        } else if lag_entries > 0 || pending > 0 || self.search.is_some() {
            SyncState::Syncing
        } else {
            SyncState::InSync
        };
        let status = Status {
            device: self.me,
            role,
            epoch: Epoch(ls.max_epoch.0),
            leader,
            applied_seq: self.applied,
            log_head: self.head,
            leader_seq,
            lag_entries,
            lag,
            peers,
            outbox_len,
            resubmit_len: self.resubmit_len,
            kept: self.kept,
            rewinds: self.rewinds,
            state,
            last_error: self.last_error.clone(),
        };
        self.status_tx.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
        let local = LocalState {
            library: self.library,
            device: self.me,
            epoch: Epoch(ls.max_epoch.0),
            position: self.head,
            models: self.models.clone(),
        };
        self.local_tx.send_if_modified(|old| {
            if *old == local {
                false
            } else {
                *old = local;
                true
            }
        });
    }

    async fn shutdown(&mut self) {
        self.apply_received().await;
        info!(library = %self.library, device = %self.me, "shutting down");
        // Sequence (as leader) what is committed; as follower it stays in the outbox.
        if self.can_sequence().is_some() {
            self.sequence_due = true;
            self.step().await;
        }
        self.outlets.clear();
        for (_, p) in self.peers.drain() {
            let _ = p.tx.try_send(Message::Error(ErrorMessage {
                code: ErrorCode::SHUTTING_DOWN,
                message: "shutting down".into(),
            }));
            // Dropping the queue (before the close handle, by field order) lets the writer
            // deliver what was queued, then finish the stream.
            drop(p);
        }
        let _ = self.stop_tx.send(true);
        let _ = self.driver.shutdown().await;
        self.acceptor.detach(&self.library);
        for (_, task) in self.dialers.drain() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        self.publish();
    }
}
