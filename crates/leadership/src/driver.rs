//! The thin async driver: runs one [`Leadership`] machine on tokio.
//!
//! It owns the machine, sleeps until [`Leadership::next_wakeup`] with `tokio::time`, feeds it
//! incoming messages, position and membership changes, and executes its actions through three
//! seams: [`LeadershipStore`] (persist), [`Transport`] (send) and [`Observer`] (role changes).
//! It adds no decisions of its own, except that it saves a record before it feeds the
//! acknowledgement back, and publishes a fresh [`Status`] (with its [`Fence`]) after every step.
//!
//! ```
//! use std::sync::Arc;
//! use leadership::driver::{self, DriverParams, FirstStart};
//! use leadership::{RoleChange, Config, MemberId, MemoryStore, Message, RoleKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> leadership::Result<()> {
//! let me = MemberId::from_u128(1);
//! let params = DriverParams {
//!     config: Config::default(),
//!     me,
//!     members: [me].into(),
//!     first_start: FirstStart::Create,
//!     position: Default::default(),
//! };
//! let transport = |to: MemberId, message: Message| { /* hand to the network */ };
//! let observer = |change: &RoleChange| { /* start or stop sequencing, re-route the outbox */ };
//! let (handle, task) =
//!     driver::spawn(params, Arc::new(MemoryStore::new()), transport, observer).await?;
//! let mut status = handle.watch();
//! status.wait_for(|s| s.role == RoleKind::Leader).await.map_err(|_| leadership::Error::DriverStopped)?;
//! assert!(handle.fence().can_sequence().is_some());
//! handle.shutdown().await?;
//! task.await.map_err(|_| leadership::Error::DriverStopped)?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, trace};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::machine::{Leadership, Status};
use crate::protocol::{Action, Input, Message, RoleChange, Start};
use crate::store::LeadershipStore;
use crate::types::{LogPosition, MemberId, Term, Time};

/// How many incoming messages may wait for the driver; more are dropped (peers resend:
/// heartbeats are periodic and claims are repeated by the next election).
pub const INBOX_CAPACITY: usize = 256;

/// Sends machine messages to peers. Must not block; delivery is best effort.
///
/// Any `FnMut(MemberId, Message)` closure is a transport.
pub trait Transport: Send + 'static {
    /// Queues `message` for the peer `to`.
    fn send(&mut self, to: MemberId, message: Message);
}

impl<F: FnMut(MemberId, Message) + Send + 'static> Transport for F {
    fn send(&mut self, to: MemberId, message: Message) {
        self(to, message);
    }
}

/// Told of every role change, in order. Must not block.
///
/// Any `FnMut(&RoleChange)` closure is an observer (e.g. one that forwards to a channel).
pub trait Observer: Send + 'static {
    /// This device's role changed.
    fn on_change(&mut self, change: &RoleChange);
}

impl<F: FnMut(&RoleChange) + Send + 'static> Observer for F {
    fn on_change(&mut self, change: &RoleChange) {
        self(change);
    }
}

/// What to do when the store holds no record (first start of this device in this library).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstStart {
    /// This device created the library: [`Start::Create`].
    Create,
    /// This device joined it: [`Start::Join`].
    Join,
}

/// Everything the driver needs besides its seams.
#[derive(Clone, Debug)]
pub struct DriverParams {
    /// Timing.
    pub config: Config,
    /// This device.
    pub me: MemberId,
    /// The library's members at start.
    pub members: BTreeSet<MemberId>,
    /// Used only when the store holds no record; otherwise the machine resumes from it.
    pub first_start: FirstStart,
    /// This device's log position at start (later changes: [`DriverHandle::set_position`]).
    pub position: LogPosition,
}

enum Command {
    Deliver { from: MemberId, message: Message },
    Observe(Term),
    Shutdown,
}

/// The service's handle on a running driver. Cheap to clone; the driver stops when every
/// handle is dropped or [`DriverHandle::shutdown`] is called.
#[derive(Clone, Debug)]
pub struct DriverHandle {
    inbox: mpsc::Sender<Command>,
    position: watch::Sender<LogPosition>,
    members: watch::Sender<BTreeSet<MemberId>>,
    status: watch::Receiver<Status>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Deliver { from, .. } => write!(f, "Deliver from {from}"),
            Self::Observe(term) => write!(f, "Observe {term}"),
            Self::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl DriverHandle {
    /// Hands a message from the authenticated peer `from` to the machine. Never waits: when
    /// the inbox is full the message is dropped.
    pub fn deliver(&self, from: MemberId, message: Message) -> Result<()> {
        self.try_command(Command::Deliver { from, message })
    }

    /// Reports proof that `term` is led (the fence said [`Verdict::NewerTerm`](crate::Verdict)).
    pub fn observe(&self, term: Term) -> Result<()> {
        self.try_command(Command::Observe(term))
    }

    /// Reports this device's new log position (only the latest value matters).
    pub fn set_position(&self, position: LogPosition) -> Result<()> {
        self.position.send(position).map_err(|_| Error::DriverStopped)
    }

    /// Reports the library's new member list.
    pub fn set_members(&self, members: BTreeSet<MemberId>) -> Result<()> {
        self.members.send(members).map_err(|_| Error::DriverStopped)
    }

    /// The latest status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// The latest fence. Re-read it before each sequencing batch.
    pub fn fence(&self) -> Fence {
        self.status().fence()
    }

    /// A receiver that sees every new status (e.g. to wait for leadership).
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Stops the driver (it finishes the step in progress first).
    pub async fn shutdown(&self) -> Result<()> {
        self.inbox.send(Command::Shutdown).await.map_err(|_| Error::DriverStopped)
    }

    fn try_command(&self, command: Command) -> Result<()> {
        match self.inbox.try_send(command) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(command)) => {
                debug!(?command, "leadership inbox full: dropping");
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::DriverStopped),
        }
    }
}

/// Loads the record, starts the machine and spawns the driver task on the current runtime.
///
/// Returns the handle and the task (which ends on shutdown). Fails only if the record cannot
/// be loaded.
pub async fn spawn(
    params: DriverParams,
    store: Arc<dyn LeadershipStore>,
    transport: impl Transport,
    observer: impl Observer,
) -> Result<(DriverHandle, JoinHandle<()>)> {
    let loader = Arc::clone(&store);
    let record = tokio::task::spawn_blocking(move || loader.load())
        .await
        .map_err(|_| Error::DriverStopped)??;
    let start = match (record, params.first_start) {
        (Some(record), _) => Start::Resume(record),
        (None, FirstStart::Create) => Start::Create,
        (None, FirstStart::Join) => Start::Join,
    };
    let origin = Instant::now();
    let (mut machine, mut actions) = Leadership::start(
        params.config,
        params.me,
        params.members.iter().copied(),
        start,
        Time::ZERO,
    );
    actions.extend(machine.handle(Time::ZERO, Input::LogPosition(params.position)));
    let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
    let (position_tx, position) = watch::channel(params.position);
    let (members_tx, members) = watch::channel(params.members);
    let (status_tx, status) = watch::channel(machine.status());
    let runner = Runner {
        machine,
        store,
        transport,
        observer,
        origin,
        inbox,
        position,
        members,
        status: status_tx,
    };
    let task = tokio::spawn(runner.run(actions));
    let handle =
        DriverHandle { inbox: inbox_tx, position: position_tx, members: members_tx, status };
    Ok((handle, task))
}

struct Runner<T, O> {
    machine: Leadership,
    store: Arc<dyn LeadershipStore>,
    transport: T,
    observer: O,
    origin: Instant,
    inbox: mpsc::Receiver<Command>,
    position: watch::Receiver<LogPosition>,
    members: watch::Receiver<BTreeSet<MemberId>>,
    status: watch::Sender<Status>,
}

impl<T: Transport, O: Observer> Runner<T, O> {
    fn now(&self) -> Time {
        Time::from_duration(Instant::now().saturating_duration_since(self.origin))
    }

    async fn run(mut self, first: Vec<Action>) {
        self.execute(first).await;
        loop {
            let wakeup = self.machine.next_wakeup();
            let origin = self.origin;
            let sleep = async move {
                match wakeup {
                    Some(at) => tokio::time::sleep_until(origin + at.as_duration()).await,
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                biased;
                command = self.inbox.recv() => match command {
                    Some(Command::Deliver { from, message }) => Input::Received { from, message },
                    Some(Command::Observe(term)) => Input::Observed(term),
                    Some(Command::Shutdown) | None => break,
                },
                Ok(()) = self.members.changed() => {
                    Input::Membership(self.members.borrow_and_update().clone())
                }
                Ok(()) = self.position.changed() => {
                    Input::LogPosition(*self.position.borrow_and_update())
                }
                () = sleep => Input::Tick,
            };
            let now = self.now();
            let actions = self.machine.handle(now, input);
            self.publish();
            self.execute(actions).await;
        }
        debug!(device = %self.machine.me(), "leadership driver stopped");
    }

    fn publish(&self) {
        self.status.send_replace(self.machine.status());
    }

    /// Executes actions in order; a save completes before its acknowledgement is fed back
    /// and before any later action runs.
    async fn execute(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Persist(record) => {
                    let store = Arc::clone(&self.store);
                    let to_save = record.clone();
                    match tokio::task::spawn_blocking(move || store.save(&to_save)).await {
                        Ok(Ok(())) => {
                            let now = self.now();
                            let more = self.machine.handle(now, Input::Persisted(record));
                            self.publish();
                            queue.extend(more);
                        }
                        Ok(Err(err)) => {
                            error!(device = %self.machine.me(), error = %err, "saving leadership failed");
                        }
                        Err(err) => {
                            error!(device = %self.machine.me(), error = %err, "leadership save task failed");
                        }
                    }
                }
                Action::Send { to, message } => {
                    trace!(device = %self.machine.me(), %to, ?message, "send");
                    self.transport.send(to, message);
                }
                Action::RoleChange(change) => self.observer.on_change(&change),
            }
        }
    }
}
