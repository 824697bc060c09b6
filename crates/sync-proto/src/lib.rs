//! # sync-proto
//!
//! **One job:** carry the sync protocol between two devices — the messages, their framing on
//! a byte stream, the handshake with its membership and version checks, and the transports
//! (iroh, and an in-memory network with fault injection for tests). The wire format is
//! specified in `docs/protocol.md`.
//!
//! **Must not know:** storage (SQLite, diesel, the sync log's tables), the models and how they
//! are applied, or leadership policy (who leads, when to step down, what to do with a
//! divergence). It moves [`LogEntry`](sync_log::LogEntry)s, [`Change`](sync_log::Change)s and
//! [`Position`](sync_log::Position)s from `sync-log` without looking inside them. Membership
//! and the local state come in through seams ([`Membership`], [`SessionHandler`]) that the
//! service implements.
//!
//! ## Layers
//!
//! - [`Message`]: one variant per protocol message, each wrapping a serde payload struct.
//! - [`frame`]: `u32 length | u16 kind | bincode payload`, with a maximum frame size checked
//!   before allocation and decode limits ([`limits`]); typed [`FrameError`]s.
//! - Handshake: hello / hello-ack; refuses unknown endpoints before reading, foreign libraries
//!   and non-members after reading only the bounded hello; no common version gives both sides
//!   [`ProtoError::VersionMismatch`] naming both ranges.
//! - [`Session`]: the authenticated, ordered message channel the service talks through. It
//!   owns the small link seam (send a frame, read a frame, close) that each transport
//!   implements, so the transports depend on the session and never the reverse.
//! - Transports: [`SyncProtocol`] (an iroh `ProtocolHandler` for [`SYNC_ALPN`]) with
//!   [`IrohConnector`]; and, behind the **`test-util`** feature, `MemoryNetwork` with
//!   `MemoryConnector` and `Faults` — the same handshake, framing and node rules over
//!   channels, with seeded fault injection, for the service's fast tests. Enable it from a
//!   dev-dependency: `sync-proto = { workspace = true, features = ["test-util"] }`.
//!
//! ## What one member can pin
//!
//! A paired device can turn hostile. Per connection: one bidirectional stream and no other
//! ([`transport_config`]), [`ProtoConfig::stream_window`] / [`ProtoConfig::connection_window`]
//! bytes ahead of the reader, one frame being read (allocated as its bytes arrive, complete
//! within [`ProtoConfig::frame_timeout`]). Per (library, device): one accepted session — a
//! newer one replaces the older ([`ErrorCode::REPLACED`]). Per endpoint:
//! [`ProtoConfig::max_pending_handshakes`] connections awaiting a hello. A silent session is
//! probed after [`ProtoConfig::idle_timeout`] and closed after twice that. Removing a member
//! ([`Membership::subscribe`]) closes its live sessions at once. `docs/protocol.md` lists
//! every limit and timeout.
//!
//! ## Closing
//!
//! A graceful close ([`Session::close_gracefully`], dropping a session, returning from
//! [`SessionHandler::serve`], node shutdown with [`ErrorCode::SHUTTING_DOWN`]) delivers
//! everything sent before it; [`Session::close`] is abrupt and may lose data in flight. Both
//! transports behave the same (one test suite runs against both).
//!
//! ## Plugging in the service
//!
//! ```no_run
//! use std::sync::Arc;
//! use sync_proto::{
//!     Connector, IrohConnector, LocalState, MemberTable, Message, Pong, ProtoConfig, Session,
//!     SessionHandler, SyncProtocol, SYNC_ALPN,
//! };
//!
//! struct Service;
//!
//! impl SessionHandler for Service {
//!     fn local_state(&self, library: &sync_log::LibraryId) -> Option<LocalState> {
//!         None // look the library up; `None` refuses it as foreign
//!     }
//!     async fn serve(&self, mut session: Session) {
//!         while let Ok(Some(msg)) = session.recv().await {
//!             if let Message::Ping(p) = msg {
//!                 let pong = Message::Pong(Pong { nonce: p.nonce, payload: p.payload });
//!                 if session.send(&pong).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         }
//!     }
//! }
//!
//! # async fn run() -> Result<(), sync_proto::ProtoError> {
//! let members = MemberTable::new();
//! let endpoint = sync_proto::bind_loopback(None).await?;
//! let protocol = SyncProtocol::new(members.clone(), Arc::new(Service), ProtoConfig::default());
//! let router = iroh::protocol::Router::builder(endpoint.clone()).accept(SYNC_ALPN, protocol).spawn();
//! let dialer = IrohConnector::new(endpoint, members, ProtoConfig::default());
//! # let (peer, local): (iroh::EndpointAddr, LocalState) = todo!();
//! let session = dialer.connect(peer, local).await?;
//! # drop(session);
//! router.shutdown().await.ok();
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod frame;
pub mod limits;

mod error;
mod handshake;
mod membership;
#[cfg(feature = "test-util")]
mod memory;
mod message;
mod net;
mod registry;
mod session;
mod version;

pub use error::{FrameError, MAX_REASON_LEN, ProtoError, sanitize_reason};
pub use frame::FrameConfig;
pub use limits::{MAX_FRAME_SIZE_CEILING, MAX_MODEL_NAMES};
pub use membership::{Lookup, MemberTable, Membership};
#[cfg(feature = "test-util")]
pub use memory::{Faults, MemoryConnector, MemoryNetwork};
pub use message::{
    Ack, Assigned, Claim, Divergence, Entries, ErrorCode, ErrorMessage, Fetch, Follows, Heartbeat,
    Hello, HelloAck, Message, MessageKind, Ping, Pong, Presence, Push, PushNotice, SnapshotChunk,
    SnapshotEnd, SnapshotFetch, SnapshotRequired, Submit, SubmitAck, VersionMismatch,
};
pub use net::{
    IrohConnector, SYNC_ALPN, SyncProtocol, bind_loopback, bind_loopback_with, loopback_addr,
    transport_config,
};
pub use session::{
    Connector, DEFAULT_CONNECTION_WINDOW, DEFAULT_STREAM_WINDOW, LocalState, PeerInfo, ProtoConfig,
    Role, Session, SessionHandler, SessionInfo, SessionReceiver, SessionSender,
};
pub use version::{ProtocolVersion, VersionRange};
