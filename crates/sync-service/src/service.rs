//! [`SyncService`]: the public async API for one library on one device.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use leadership::LeadershipStore;
use leadership::driver::{self, DriverParams, FirstStart};
use sync_log::{Change, DeviceId, LibraryId, SyncLog};
use sync_proto::{Connector, LocalState, MemberTable};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use txn_manager::{Op, TransactionManager};

use crate::config::Config;
use crate::engine::{self, Control, Engine, EngineParts, EngineTask};
use crate::error::{Error, Result};
use crate::peer::{Acceptor, Deliver, DynConnector, Member, Outlets, SessionCtx};
use crate::status::{Event, Status, SyncState};
use crate::wire;

/// Incoming messages waiting for the engine, all peers together; beyond this a session's
/// reader waits (backpressure onto that peer's stream).
const INBOX: usize = 1_024;
/// Events kept for slow subscribers (a subscriber that falls further behind is told it
/// lagged, by the broadcast channel).
const EVENTS: usize = 1_024;

/// Everything a [`SyncService`] is started with.
#[non_exhaustive]
pub struct ServiceParams {
    /// The library.
    pub library: LibraryId,
    /// This device.
    pub device: DeviceId,
    /// The library's write path (opened on this device's library database).
    pub tm: TransactionManager,
    /// The library's sync log on this device.
    pub log: SyncLog,
    /// Where leadership's record is kept (in the product:
    /// [`txn_manager::DeviceLeadershipStore`]).
    pub leadership_store: Arc<dyn LeadershipStore>,
    /// Used only when the store holds no record: whether this device created the library.
    pub first_start: FirstStart,
    /// The members the host names (this device may be among them): with the library's device
    /// rows they make the membership ([`plan::membership`](crate::plan::membership)). A new
    /// device names the devices it pairs with; the rows take over once they sync.
    pub members: Vec<Member>,
    /// The transport's membership table, kept up to date by the service.
    pub member_table: MemberTable,
    /// The host's acceptor, registered with the transport.
    pub acceptor: Acceptor,
    /// Tuning.
    pub config: Config,
    /// Seed for the reconnect jitter (print it to replay a test).
    pub seed: u64,
}

impl ServiceParams {
    /// Parameters with the default [`Config`] and seed 0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        library: LibraryId,
        device: DeviceId,
        tm: TransactionManager,
        log: SyncLog,
        leadership_store: Arc<dyn LeadershipStore>,
        first_start: FirstStart,
        members: Vec<Member>,
        member_table: MemberTable,
        acceptor: Acceptor,
    ) -> Self {
        Self {
            library,
            device,
            tm,
            log,
            leadership_store,
            first_start,
            members,
            member_table,
            acceptor,
            config: Config::default(),
            seed: 0,
        }
    }
}

struct Inner {
    library: LibraryId,
    device: DeviceId,
    tm: TransactionManager,
    control: mpsc::UnboundedSender<Control>,
    status: watch::Receiver<Status>,
    /// Shared with the engine, which publishes every status; `commit` marks a write unsent.
    status_tx: Arc<watch::Sender<Status>>,
    /// Commits made here (the engine counts the kicks it handled against it).
    commits: Arc<AtomicU64>,
    events: broadcast::Sender<Event>,
    accepting: AtomicBool,
    task: std::sync::Mutex<Option<EngineTask>>,
    driver_task: std::sync::Mutex<Option<JoinHandle<()>>>,
    stop: Arc<watch::Sender<bool>>,
    acceptor: Acceptor,
}

/// Real-time sync of one library on one device: a host runs one per library.
///
/// It owns the library's engine, on a thread of its own (leader sequencing and pushes,
/// follower apply, catch-up, forwarding, divergence repair), the leadership driver and one
/// session per peer. Cheap to clone. Writes go through [`SyncService::commit`]; they are durable locally when it returns,
/// whether or not a leader is reachable.
#[derive(Clone)]
pub struct SyncService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncService")
            .field("library", &self.inner.library)
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

impl SyncService {
    /// Starts the service: recovers what a crash left (catch-up), starts leadership, attaches
    /// to the acceptor and dials the members this device dials (the lower device id of a pair).
    pub async fn start<C: Connector>(params: ServiceParams, connector: C) -> Result<Self> {
        params.config.validate()?;
        let ServiceParams {
            library,
            device,
            tm,
            log,
            leadership_store,
            first_start,
            members,
            member_table,
            acceptor,
            config,
            seed,
        } = params;
        let head = log.head().await?;
        let models =
            tm.with(|l| Ok(l.registry().names().map(str::to_owned).collect::<Vec<_>>())).await?;
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let mut member_ids: std::collections::BTreeSet<leadership::MemberId> =
            members.iter().map(|m| wire::to_l(m.device)).collect();
        member_ids.insert(wire::to_l(device));
        // Leadership goes straight to the sessions' queues, never waiting for the engine.
        let outlets = Outlets::default();
        let transport = {
            let outlets = outlets.clone();
            move |to: leadership::MemberId, message: leadership::Message| {
                if let Some(msg) = wire::encode(&message) {
                    outlets.send(wire::from_l(to), msg);
                }
            }
        };
        let observer = {
            let tx = control_tx.clone();
            move |change: &leadership::RoleChange| {
                let _ = tx.send(Control::Role(change.clone()));
            }
        };
        let dparams = DriverParams {
            config: config.leadership,
            me: wire::to_l(device),
            members: member_ids,
            first_start,
            position: leadership::LogPosition(head.seq.0),
        };
        let (driver, driver_task) =
            driver::spawn(dparams, leadership_store, transport, observer).await?;
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let local = LocalState {
            library,
            device,
            epoch: sync_log::Epoch(driver.status().max_epoch.0),
            position: head,
            models: models.clone(),
        };
        let (local_tx, local_rx) = watch::channel(local);
        let (status_tx, status_rx) = watch::channel(Status::new(device));
        let status_tx = Arc::new(status_tx);
        let commits = Arc::new(AtomicU64::new(0));
        let (events, _) = broadcast::channel(EVENTS);
        let deliver: Deliver = {
            let driver = driver.clone();
            Arc::new(move |from, message| {
                let _ = driver.deliver(wire::to_l(from), message);
            })
        };
        let ctx = SessionCtx { inbox: inbox_tx, queue: config.peer_queue, deliver };
        acceptor.attach(library, local_rx, ctx.clone());
        let (stop, _) = watch::channel(false);
        let stop = Arc::new(stop);
        let engine_acceptor = acceptor.clone();
        let engine = Engine::new(EngineParts {
            config,
            library,
            me: device,
            tm: tm.clone(),
            log,
            driver,
            models,
            member_table,
            connector: DynConnector::new(connector),
            acceptor: engine_acceptor,
            ctx,
            outlets,
            local_tx,
            status_tx: Arc::clone(&status_tx),
            commits: Arc::clone(&commits),
            events: events.clone(),
            seed,
            stop: Arc::clone(&stop),
            runtime: tokio::runtime::Handle::current(),
        });
        let span = tracing::info_span!("library", %library, %device);
        let task =
            engine::spawn(engine, members, inbox_rx, control_rx, span).map_err(Error::Thread)?;
        Ok(Self {
            inner: Arc::new(Inner {
                library,
                device,
                tm,
                control: control_tx,
                status: status_rx,
                status_tx,
                commits,
                events,
                accepting: AtomicBool::new(true),
                task: std::sync::Mutex::new(Some(task)),
                driver_task: std::sync::Mutex::new(Some(driver_task)),
                stop,
                acceptor,
            }),
        })
    }

    /// Commits local writes in one transaction (model rows and outbox row together) and
    /// returns their changes. Durable locally when it returns; this device then sequences
    /// them at once if it leads, or forwards them to the leader as soon as one is reachable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Change>> {
        if !self.inner.accepting.load(Ordering::SeqCst) {
            return Err(Error::Stopped);
        }
        let changes = self.inner.tm.commit(ops).await?;
        // Counted before the status is touched: the engine never publishes "nothing waits"
        // while a commit's kick is on its way.
        self.inner.commits.fetch_add(1, Ordering::SeqCst);
        if !changes.is_empty() {
            self.inner.status_tx.send_if_modified(|s| {
                let stale = s.outbox_len == 0 || s.state == SyncState::InSync;
                s.outbox_len = s.outbox_len.max(1);
                if s.state == SyncState::InSync {
                    s.state = SyncState::Syncing;
                }
                stale
            });
        }
        let devices = crate::engine::touches_devices(changes.iter());
        let _ = self.inner.control.send(Control::Kick { devices });
        Ok(changes)
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.inner.status.borrow().clone()
    }

    /// A receiver that sees every new status.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.inner.status.clone()
    }

    /// The event stream (applied batches with the records they changed, role changes,
    /// rewinds).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The library's write path, for reads (content hash, queries).
    pub fn transaction_manager(&self) -> &TransactionManager {
        &self.inner.tm
    }

    /// The content hash of this device's copy of the library.
    pub async fn content_hash(&self) -> Result<syncable::ContentHash> {
        Ok(self.inner.tm.with(|l| l.content_hash()).await?)
    }

    /// The conflict log, newest first, at most `limit`: applied changes that overwrote a
    /// local change no other device had seen, or lost to one (model, record, both changes
    /// with their stamps and payloads, when, which won). Bounded by the write path's
    /// `conflict_log_capacity` (oldest dropped and counted).
    pub async fn conflicts(&self, limit: usize) -> Result<Vec<txn_manager::Conflict>> {
        Ok(self.inner.tm.conflicts(limit).await?)
    }

    /// Empties the conflict log; returns how many entries it held.
    pub async fn clear_conflicts(&self) -> Result<u64> {
        Ok(self.inner.tm.clear_conflicts().await?)
    }

    /// Replaces the members the host names (a device being paired, or new addresses). The
    /// library's device rows decide over it (see [`plan::membership`](crate::plan::membership)):
    /// a device whose row is tombstoned stays out, a paired row's endpoint id wins. A device
    /// that is no member any more has its session closed at once and is refused from then on.
    pub fn set_members(&self, members: Vec<Member>) -> Result<()> {
        self.inner.control.send(Control::Members(members)).map_err(|_| Error::Stopped)
    }

    /// Stops cleanly: refuses new writes, sequences (when leading) what is committed, tells
    /// the peers `shutting-down`, delivers what was queued, closes. Writes committed before
    /// are durable either way; a follower's unsent ones stay in its outbox.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.accepting.store(false, Ordering::SeqCst);
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Control::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
        let task = self.inner.task.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(task) = task {
            task.join().await;
        }
        Ok(())
    }

    /// Stops at once, as a crash would (for tests of abrupt stops): nothing is sequenced or
    /// sent; the write path's durability is all that is left.
    pub fn abort(&self) {
        self.inner.accepting.store(false, Ordering::SeqCst);
        let _ = self.inner.stop.send(true);
        self.inner.acceptor.detach(&self.inner.library);
        if let Ok(mut task) = self.inner.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
        if let Ok(mut task) = self.inner.driver_task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}
