//! The membership seam: who may sync which library.
//!
//! Peer identity is the iroh endpoint id (public key) that authenticated the connection. The
//! service owns the member lists and answers through [`Membership`]; [`MemberTable`] is a
//! simple in-memory implementation for tests and small hosts.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use iroh::EndpointId;
use sync_log::{DeviceId, LibraryId};
use tokio::sync::watch;

/// What [`Membership::lookup`] knows about an endpoint in a library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The library is not hosted here.
    ForeignLibrary,
    /// The library is hosted here, but the endpoint is not one of its members.
    NotAMember,
    /// The endpoint is the member with this device id.
    Member(DeviceId),
}

/// Answers membership questions for the protocol. Implemented by the service.
///
/// The questions are asked on the connection's task and must be quick (no I/O): keep the
/// member lists in memory.
///
/// # Revocation
///
/// Removing a member must cut its live sessions at once. The protocol learns of changes
/// through [`Membership::subscribe`]: a [`watch`] channel whose value the service bumps after
/// every change to its member lists (removal, unhosting a library, a device re-bound to
/// another key). On every change, each node re-asks [`Membership::lookup`] for every live
/// session and closes those whose peer is no longer the member it was with
/// [`ErrorCode::NOT_A_MEMBER`](crate::ErrorCode::NOT_A_MEMBER) (or
/// [`ErrorCode::FOREIGN_LIBRARY`](crate::ErrorCode::FOREIGN_LIBRARY) when the library is no
/// longer hosted). [`MemberTable`] does this by itself.
pub trait Membership: Send + Sync + 'static {
    /// Whether the endpoint is a member of at least one library hosted here. Asked before
    /// anything is read from a new connection: `false` closes it with
    /// [`ErrorCode::NOT_A_MEMBER`](crate::ErrorCode::NOT_A_MEMBER).
    fn is_known(&self, endpoint: &EndpointId) -> bool;

    /// Who the endpoint is in `library`. Asked after the bounded hello is read (acceptor) and
    /// before dialling (dialer).
    fn lookup(&self, library: &LibraryId, endpoint: &EndpointId) -> Lookup;

    /// A channel that changes after every change to the member lists (see "Revocation").
    /// Default: `None` — live sessions are then never re-checked, and a removed member keeps
    /// its sessions until they end: implement this.
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

impl<T: Membership + ?Sized> Membership for Arc<T> {
    fn is_known(&self, endpoint: &EndpointId) -> bool {
        (**self).is_known(endpoint)
    }

    fn lookup(&self, library: &LibraryId, endpoint: &EndpointId) -> Lookup {
        (**self).lookup(library, endpoint)
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        (**self).subscribe()
    }
}

/// An in-memory [`Membership`]: per library, the endpoint → device map of its members.
/// Cloning shares the table. Every change is announced through [`Membership::subscribe`], so
/// [`MemberTable::remove`] cuts the removed member's live sessions.
///
/// ```
/// use sync_proto::{Lookup, MemberTable, Membership};
/// use sync_log::{DeviceId, LibraryId};
/// let table = MemberTable::new();
/// let lib = LibraryId::new_v7();
/// let dev = DeviceId::new_v7();
/// let key = iroh::SecretKey::from_bytes(&[7; 32]).public();
/// assert_eq!(table.lookup(&lib, &key), Lookup::ForeignLibrary);
/// table.add(lib, key, dev);
/// assert!(table.is_known(&key));
/// assert_eq!(table.lookup(&lib, &key), Lookup::Member(dev));
/// ```
#[derive(Clone, Debug)]
pub struct MemberTable {
    libraries: Arc<RwLock<HashMap<LibraryId, HashMap<EndpointId, DeviceId>>>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for MemberTable {
    fn default() -> Self {
        Self { libraries: Arc::default(), changes: Arc::new(watch::channel(0).0) }
    }
}

impl MemberTable {
    /// An empty table (no library hosted).
    pub fn new() -> Self {
        Self::default()
    }

    /// Hosts `library` (with no members yet, unless it was hosted already).
    pub fn host(&self, library: LibraryId) {
        self.write().entry(library).or_default();
        self.changed();
    }

    /// Hosts `library` and adds a member (replacing the device bound to that endpoint: the
    /// endpoint's live sessions under the old device are cut).
    pub fn add(&self, library: LibraryId, endpoint: EndpointId, device: DeviceId) {
        self.write().entry(library).or_default().insert(endpoint, device);
        self.changed();
    }

    /// Removes a member, cutting its live sessions in that library; returns its device id if it
    /// was one.
    pub fn remove(&self, library: &LibraryId, endpoint: &EndpointId) -> Option<DeviceId> {
        let removed = self.write().get_mut(library).and_then(|m| m.remove(endpoint));
        self.changed();
        removed
    }

    /// Stops hosting `library`, cutting every live session about it.
    pub fn unhost(&self, library: &LibraryId) {
        self.write().remove(library);
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<LibraryId, HashMap<EndpointId, DeviceId>>> {
        self.libraries.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<LibraryId, HashMap<EndpointId, DeviceId>>> {
        self.libraries.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Membership for MemberTable {
    fn is_known(&self, endpoint: &EndpointId) -> bool {
        self.read().values().any(|members| members.contains_key(endpoint))
    }

    fn lookup(&self, library: &LibraryId, endpoint: &EndpointId) -> Lookup {
        match self.read().get(library) {
            None => Lookup::ForeignLibrary,
            Some(members) => {
                members.get(endpoint).map_or(Lookup::NotAMember, |d| Lookup::Member(*d))
            }
        }
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}
