//! A node's bookkeeping of its live sessions and pending handshakes, shared by every
//! transport: what bounds what one member can pin, and how membership changes and shutdown
//! reach live sessions.
//!
//! - **One accepted session per (library, device).** Registering an accepted session closes
//!   an older accepted one of the same device for the same library with
//!   [`ErrorCode::REPLACED`]. (Dialled sessions are the node's own choice and are not counted:
//!   two nodes dialling each other at once must not cut each other's sessions.)
//! - **Revocation.** When the [`Membership`] reports a change, every live session whose peer
//!   is no longer the member it was is closed at once with [`ErrorCode::NOT_A_MEMBER`].
//! - **Pending handshakes per endpoint** are capped; more are refused at once with
//!   [`ErrorCode::BUSY`].
//! - **Shutdown** closes pending handshakes and live sessions gracefully with
//!   [`ErrorCode::SHUTTING_DOWN`], and refuses new connections with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use iroh::EndpointId;
use sync_log::{DeviceId, LibraryId};
use tokio::sync::oneshot;

use crate::membership::{Lookup, Membership};
use crate::message::ErrorCode;
use crate::session::{Link, OnDrop, Role, SessionHandle, SessionInfo};

struct Entry {
    library: LibraryId,
    endpoint: EndpointId,
    device: DeviceId,
    role: Role,
    handle: SessionHandle,
}

#[derive(Default)]
struct State {
    sessions: HashMap<u64, Entry>,
    pending: HashMap<EndpointId, usize>,
    pending_links: HashMap<u64, Link>,
    /// Dropping it stops the membership watcher.
    stop_watcher: Option<oneshot::Sender<()>>,
}

struct Inner {
    membership: Arc<dyn Membership>,
    state: Mutex<State>,
    next: AtomicU64,
    watching: AtomicBool,
    shutting_down: AtomicBool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes every live session whose peer is no longer the member it was.
    fn recheck(&self) {
        let revoked: Vec<(SessionHandle, Lookup)> = self
            .state()
            .sessions
            .values()
            .filter_map(|e| {
                let now = self.membership.lookup(&e.library, &e.endpoint);
                (now != Lookup::Member(e.device)).then(|| (e.handle.clone(), now))
            })
            .collect();
        for (handle, now) in revoked {
            let (code, why) = match now {
                Lookup::ForeignLibrary => {
                    (ErrorCode::FOREIGN_LIBRARY, "the library is no longer hosted here")
                }
                _ => (ErrorCode::NOT_A_MEMBER, "membership revoked"),
            };
            tracing::info!(%code, "closing a live session: {why}");
            handle.terminate(code, why);
        }
    }
}

/// The live sessions and pending handshakes of one node (cloning shares them).
#[derive(Clone)]
pub(crate) struct Registry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state();
        f.debug_struct("Registry")
            .field("sessions", &state.sessions.len())
            .field("pending", &state.pending_links.len())
            .finish()
    }
}

/// A connection counted as awaiting its handshake; uncounted when dropped.
pub(crate) struct Pending {
    inner: Weak<Inner>,
    endpoint: EndpointId,
    id: u64,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut state = inner.state();
            state.pending_links.remove(&self.id);
            if let Some(n) = state.pending.get_mut(&self.endpoint) {
                *n -= 1;
                if *n == 0 {
                    state.pending.remove(&self.endpoint);
                }
            }
        }
    }
}

/// Why a connection was not admitted to the handshake.
pub(crate) enum Refusal {
    /// The endpoint already has the most pending handshakes allowed.
    Busy,
    /// The node is shutting down.
    ShuttingDown,
}

impl Registry {
    pub(crate) fn new(membership: Arc<dyn Membership>) -> Self {
        Self {
            inner: Arc::new(Inner {
                membership,
                state: Mutex::new(State::default()),
                next: AtomicU64::new(1),
                watching: AtomicBool::new(false),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// Counts a connection from `endpoint` as awaiting its handshake, unless `max` already
    /// are or the node is shutting down.
    pub(crate) fn admit(
        &self,
        endpoint: EndpointId,
        link: &Link,
        max: usize,
    ) -> Result<Pending, Refusal> {
        if self.is_shutting_down() {
            return Err(Refusal::ShuttingDown);
        }
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut state = self.inner.state();
        let n = state.pending.entry(endpoint).or_default();
        if *n >= max {
            return Err(Refusal::Busy);
        }
        *n += 1;
        state.pending_links.insert(id, link.clone());
        Ok(Pending { inner: Arc::downgrade(&self.inner), endpoint, id })
    }

    /// Whether [`Registry::shutdown`] has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Records a live session; returns the hook that forgets it when the session is gone.
    /// An accepted session replaces an older accepted one of the same (library, device).
    pub(crate) fn register(&self, info: &SessionInfo, handle: &SessionHandle) -> OnDrop {
        self.start_watcher();
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            library: info.library,
            endpoint: info.peer.endpoint,
            device: info.peer.device,
            role: info.role,
            handle: handle.clone(),
        };
        let replaced: Vec<SessionHandle> = {
            let mut state = self.inner.state();
            let old: Vec<u64> = state
                .sessions
                .iter()
                .filter(|(_, e)| {
                    entry.role == Role::Acceptor
                        && e.role == Role::Acceptor
                        && e.library == entry.library
                        && e.device == entry.device
                })
                .map(|(id, _)| *id)
                .collect();
            let replaced =
                old.iter().filter_map(|id| state.sessions.remove(id)).map(|e| e.handle).collect();
            state.sessions.insert(id, entry);
            replaced
        };
        for old in replaced {
            tracing::info!(library = %info.library, device = %info.peer.device, "a newer session of this device replaces an older one");
            old.terminate(ErrorCode::REPLACED, "replaced by a newer session of the same device");
        }
        // A session made while the membership changed must not slip through.
        self.inner.recheck();
        let inner = Arc::downgrade(&self.inner);
        Box::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.state().sessions.remove(&id);
            }
        })
    }

    /// Live sessions now.
    pub(crate) fn live(&self) -> usize {
        self.inner.state().sessions.len()
    }

    /// Connections awaiting their handshake now.
    pub(crate) fn pending(&self) -> usize {
        self.inner.state().pending_links.len()
    }

    /// Closes every pending handshake and live session with [`ErrorCode::SHUTTING_DOWN`]
    /// (sessions gracefully, each waiting at most `linger`), and refuses new ones from now on.
    pub(crate) async fn shutdown(&self, linger: Duration) {
        self.inner.shutting_down.store(true, Ordering::Release);
        let (pending, sessions): (Vec<Link>, Vec<SessionHandle>) = {
            let mut state = self.inner.state();
            state.stop_watcher = None;
            (
                state.pending_links.values().cloned().collect(),
                state.sessions.values().map(|e| e.handle.clone()).collect(),
            )
        };
        for link in pending {
            link.terminate(ErrorCode::SHUTTING_DOWN, "node shutting down");
        }
        let closes = sessions.iter().map(|handle| {
            handle.close_gracefully(ErrorCode::SHUTTING_DOWN, "node shutting down", linger)
        });
        futures_join_all(closes).await;
    }

    /// Starts, once, the task that re-checks live sessions when the membership changes.
    fn start_watcher(&self) {
        if self.inner.watching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(mut changes) = self.inner.membership.subscribe() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (stop, mut stopped) = oneshot::channel();
        self.inner.state().stop_watcher = Some(stop);
        let inner = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        let Some(inner) = inner.upgrade() else { break };
                        if changed.is_err() {
                            break;
                        }
                        inner.recheck();
                    }
                    _ = &mut stopped => break,
                }
            }
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the watcher task.
        self.state.get_mut().unwrap_or_else(PoisonError::into_inner).stop_watcher = None;
    }
}

/// Runs futures concurrently and waits for all (a tiny `join_all`).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
    })
    .await;
}
