//! [`TransactionManager`]: the async handle around a [`Library`].

use std::sync::{Arc, Mutex};

use library_models::LibraryModel;
use std::path::PathBuf;

use sync_log::{Change, DeviceId, Epoch, LogEntry, Seq, SyncLog};
use syncable::Registry;
use tokio::sync::broadcast;

use crate::{ApplyReport, BulkDescription, Config, Error, Event, Library, Op, RewindReport};

/// The async write path of one library: cheap to clone, safe to share between tasks.
///
/// Every call runs the blocking [`Library`] on tokio's blocking pool (`spawn_blocking`) behind
/// a mutex, so the runtime is never blocked on SQLite and writes are serialised (SQLite has one
/// writer anyway). Writing never needs the leader: [`TransactionManager::commit`] touches only
/// the local library database.
///
/// ```
/// use library_models as _;
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// use txn_manager::{Config, Library, Op, TransactionManager};
/// let registry = syncable::Registry::from_inventory()?;
/// let log = sync_log::SyncLog::new(sync_log::SyncLogStore::in_memory(sync_log::LibraryId::new_v7())?);
/// let device = sync_log::DeviceId::new_v7();
/// let tm = TransactionManager::open(":memory:".into(), log, device, registry, Config::default()).await?;
/// let mut events = tm.subscribe();
/// tm.commit(vec![Op::put(library_models::Tag::new("a".into(), None))]).await?;
/// assert!(matches!(events.recv().await?, txn_manager::Event::Committed(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TransactionManager {
    inner: Arc<Mutex<Library>>,
    events: broadcast::Sender<Event>,
}

impl TransactionManager {
    /// Wraps an opened library.
    pub fn new(library: Library) -> Self {
        let events = library.events_sender();
        Self { inner: Arc::new(Mutex::new(library)), events }
    }

    /// Opens the library database at `path` against its sync log on the blocking pool
    /// ([`Library::open`]: binding, origin-counter reconciliation) and wraps it.
    pub async fn open(
        path: PathBuf,
        log: SyncLog,
        device: DeviceId,
        registry: Registry,
        config: Config,
    ) -> Result<Self, Error> {
        let library = tokio::task::spawn_blocking(move || {
            log.with_blocking(|store| Ok(Library::open(&path, store, device, registry, config)))?
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Self::new(library))
    }

    /// Subscribes to events (sent after each commit).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `f` on the library from the blocking pool.
    pub async fn with<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Library) -> Result<T, Error> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with_blocking(f))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Runs `f` on the library on the current thread, waiting for the lock. For callers that
    /// are already on a thread that may block (a blocking-pool thread, or a thread of their
    /// own such as a sync engine's); never call it from a task of a shared async runtime.
    pub fn with_blocking<T>(
        &self,
        f: impl FnOnce(&mut Library) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut lib = self.inner.lock().map_err(|_| Error::Task("library poisoned".into()))?;
        f(&mut lib)
    }

    /// See [`Library::commit`].
    pub async fn commit(&self, ops: Vec<Op>) -> Result<Vec<Change>, Error> {
        self.with(move |l| l.commit(ops)).await
    }

    /// See [`Library::insert_batch`].
    pub async fn insert_batch<T: LibraryModel + 'static>(
        &self,
        records: Vec<T>,
    ) -> Result<Vec<Change>, Error> {
        self.with(move |l| l.insert_batch(records)).await
    }

    /// See [`Library::log_bulk`].
    pub async fn log_bulk(&self, description: BulkDescription) -> Result<Change, Error> {
        self.with(move |l| l.log_bulk(&description)).await
    }

    /// See [`Library::outbox`].
    pub async fn outbox(&self, limit: usize) -> Result<Vec<Change>, Error> {
        self.with(move |l| l.outbox(limit)).await
    }

    /// See [`Library::sequence`] (leader).
    pub async fn sequence(&self, log: SyncLog, epoch: Epoch) -> Result<Seq, Error> {
        self.with(move |l| log.with_blocking(|s| Ok(l.sequence(s, epoch)))?).await
    }

    /// See [`Library::receive`] (follower).
    pub async fn receive(
        &self,
        log: SyncLog,
        entries: Vec<LogEntry>,
    ) -> Result<ApplyReport, Error> {
        self.with(move |l| log.with_blocking(|s| Ok(l.receive(s, &entries)))?).await
    }

    /// See [`Library::catch_up`].
    pub async fn catch_up(&self, log: SyncLog) -> Result<ApplyReport, Error> {
        self.with(move |l| log.with_blocking(|s| Ok(l.catch_up(s)))?).await
    }

    /// See [`Library::rewind`] (after a divergence).
    pub async fn rewind(&self, log: SyncLog, common: Seq) -> Result<RewindReport, Error> {
        self.with(move |l| log.with_blocking(|s| Ok(l.rewind(s, common)))?).await
    }

    /// See [`Library::resubmit`].
    pub async fn resubmit(&self, limit: usize) -> Result<Vec<Change>, Error> {
        self.with(move |l| l.resubmit(limit)).await
    }

    /// See [`Library::conflicts`].
    pub async fn conflicts(&self, limit: usize) -> Result<Vec<crate::Conflict>, Error> {
        self.with(move |l| l.conflicts(limit)).await
    }

    /// See [`Library::clear_conflicts`].
    pub async fn clear_conflicts(&self) -> Result<u64, Error> {
        self.with(|l| l.clear_conflicts()).await
    }

    /// See [`Library::members`].
    pub async fn members(&self) -> Result<Vec<library_models::Device>, Error> {
        self.with(|l| l.members()).await
    }

    /// See [`Library::roster`].
    pub async fn roster(&self) -> Result<Vec<crate::RosterEntry>, Error> {
        self.with(|l| l.roster()).await
    }

    /// See [`Library::outbox_after_seq`].
    pub async fn outbox_after_seq(&self, after: u64, limit: usize) -> Result<Vec<Change>, Error> {
        self.with(move |l| l.outbox_after_seq(after, limit)).await
    }

    /// See [`Library::outbox_len`].
    pub async fn outbox_len(&self) -> Result<u64, Error> {
        self.with(|l| l.outbox_len()).await
    }

    /// The applied seq.
    pub async fn applied_seq(&self) -> Result<Seq, Error> {
        self.with(|l| Ok(l.applied_seq())).await
    }
}
