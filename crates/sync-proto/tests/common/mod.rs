//! Fixtures shared by the integration tests: ids, local states, an answering handler that
//! records what it saw, proptest strategies, and waiting with deadlines (never sleeping).

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iroh::{EndpointId, SecretKey};
use proptest::prelude::*;
use sync_log::{
    Change, ChangeType, Checksum, DeviceId, Epoch, Hlc, LibraryId, LogEntry, OriginKey, Position,
    Seq,
};
use sync_proto::*;
use tokio::sync::Notify;
use uuid::Uuid;

/// Generous deadline for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {DEADLINE:?}"),
    }
}

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_bytes(&[n; 32])
}

pub fn id(n: u8) -> EndpointId {
    key(n).public()
}

pub fn library(n: u128) -> LibraryId {
    LibraryId(Uuid::from_u128(0x1000 + n))
}

pub fn device(n: u128) -> DeviceId {
    DeviceId(Uuid::from_u128(0x2000 + n))
}

pub fn local(library: LibraryId, device: DeviceId, seq: u64) -> LocalState {
    LocalState {
        library,
        device,
        epoch: Epoch(3),
        position: Position { seq: Seq(seq), checksum: Checksum([seq as u8; 32]) },
        models: vec!["tag".into(), "location".into()],
    }
}

/// A refused handshake as the acceptor's handler saw it.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub peer: EndpointId,
    pub code: ErrorCode,
    pub text: String,
    pub retryable: bool,
}

/// Answers pings with pongs and submits with acks; records nonces received, session ends and
/// refusals, and wakes waiters on every change.
#[derive(Default)]
pub struct Answering {
    states: Mutex<HashMap<LibraryId, LocalState>>,
    pub refusals: Mutex<Vec<Refusal>>,
    pub nonces: Mutex<Vec<u64>>,
    pub ends: Mutex<Vec<String>>,
    pub sessions: Mutex<Vec<SessionInfo>>,
    changed: Notify,
}

impl Answering {
    pub fn new(states: impl IntoIterator<Item = LocalState>) -> Arc<Self> {
        let me = Self::default();
        me.states.lock().unwrap().extend(states.into_iter().map(|s| (s.library, s)));
        Arc::new(me)
    }

    /// Hosts one more library.
    pub fn add_state(&self, state: LocalState) {
        self.states.lock().unwrap().insert(state.library, state);
    }

    /// Waits until `check` holds on this handler (checked after every change).
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Self) -> bool) {
        wait_notified(&self.changed, what, || check(self)).await;
    }

    pub async fn wait_refusal(&self) -> Refusal {
        self.wait_for("a refusal", |h| !h.refusals.lock().unwrap().is_empty()).await;
        self.refusals.lock().unwrap()[0].clone()
    }
}

impl SessionHandler for Answering {
    fn local_state(&self, library: &LibraryId) -> Option<LocalState> {
        self.states.lock().unwrap().get(library).cloned()
    }

    async fn serve(&self, mut session: Session) {
        self.sessions.lock().unwrap().push(session.info().clone());
        self.changed.notify_waiters();
        let end = loop {
            let msg = match session.recv().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break "end".to_string(),
                Err(e) => break format!("error: {e}"),
            };
            let answer = match msg {
                Message::Ping(p) => {
                    self.nonces.lock().unwrap().push(p.nonce);
                    self.changed.notify_waiters();
                    Message::Pong(Pong { nonce: p.nonce, payload: p.payload })
                }
                Message::Submit(s) => Message::SubmitAck(SubmitAck {
                    epoch: Epoch(3),
                    assigned: s
                        .changes
                        .iter()
                        .enumerate()
                        .map(|(i, c)| Assigned { origin: c.origin, seq: Seq(100 + i as u64) })
                        .collect(),
                }),
                Message::Error(e) if e.code == ErrorCode::SHUTTING_DOWN => {
                    session.close_gracefully(ErrorCode::SHUTTING_DOWN, "asked to").await;
                    break "closed on request".to_string();
                }
                _ => continue,
            };
            if let Err(e) = session.send(&answer).await {
                break format!("error: {e}");
            }
        };
        self.ends.lock().unwrap().push(end);
        self.changed.notify_waiters();
    }

    fn refused(&self, peer: &EndpointId, error: &ProtoError) {
        self.refusals.lock().unwrap().push(Refusal {
            peer: *peer,
            code: error.code(),
            text: error.to_string(),
            retryable: error.is_retryable(),
        });
        self.changed.notify_waiters();
    }
}

pub fn ping(nonce: u64) -> Message {
    Message::Ping(Ping { nonce, payload: Bytes::from(vec![nonce as u8; 64]) })
}

/// Sends a ping and expects its pong.
pub async fn round_trip(session: &mut Session, nonce: u64) {
    within("ping round trip", async {
        session.send(&ping(nonce)).await.unwrap();
        match session.recv().await.unwrap() {
            Some(Message::Pong(p)) => {
                assert_eq!(p.nonce, nonce);
                assert_eq!(p.payload.len(), 64);
            }
            other => panic!("expected a pong, got {other:?}"),
        }
    })
    .await;
}

// ---- proptest strategies ----

pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

pub fn any_library() -> impl Strategy<Value = LibraryId> {
    uuid().prop_map(LibraryId)
}

pub fn any_device() -> impl Strategy<Value = DeviceId> {
    uuid().prop_map(DeviceId)
}

pub fn any_seq() -> impl Strategy<Value = Seq> {
    any::<u64>().prop_map(Seq)
}

pub fn any_epoch() -> impl Strategy<Value = Epoch> {
    any::<u64>().prop_map(Epoch)
}

pub fn any_position() -> impl Strategy<Value = Position> {
    (any_seq(), any::<[u8; 32]>()).prop_map(|(seq, c)| Position { seq, checksum: Checksum(c) })
}

pub fn any_versions() -> impl Strategy<Value = VersionRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(a, b)| VersionRange::new(a, b))
}

pub fn any_models() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(".{0,24}", 0..8)
}

pub fn any_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

pub fn any_change() -> impl Strategy<Value = Change> {
    (
        (any_device(), any::<u64>()),
        any::<u64>(),
        ".{0,16}",
        uuid(),
        prop_oneof![
            Just(ChangeType::Insert),
            Just(ChangeType::Update),
            Just(ChangeType::Delete),
            Just(ChangeType::Bulk)
        ],
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|((device, seq), hlc, model, record, change, version, payload)| Change {
            origin: OriginKey { device, seq },
            hlc: Hlc(hlc),
            model,
            record,
            change,
            version,
            payload,
        })
}

pub fn any_entry() -> impl Strategy<Value = LogEntry> {
    (any_seq(), any_epoch(), any_change(), any::<[u8; 32]>())
        .prop_map(|(seq, epoch, change, c)| LogEntry { seq, epoch, change, checksum: Checksum(c) })
}

pub fn any_entries() -> impl Strategy<Value = Vec<LogEntry>> {
    prop::collection::vec(any_entry(), 0..6)
}

pub fn hello() -> impl Strategy<Value = Message> {
    (any_versions(), any_library(), any_device(), any_epoch(), any_position(), any_models())
        .prop_map(|(versions, library, device, epoch, position, models)| {
            Message::Hello(Hello { versions, library, device, epoch, position, models })
        })
}

pub fn hello_ack() -> impl Strategy<Value = Message> {
    (any::<u16>(), any_library(), any_device(), any_epoch(), any_position(), any_models()).prop_map(
        |(v, library, device, epoch, position, models)| {
            Message::HelloAck(HelloAck {
                version: ProtocolVersion(v),
                library,
                device,
                epoch,
                position,
                models,
            })
        },
    )
}

pub fn version_mismatch() -> impl Strategy<Value = Message> {
    (any_versions(), any_versions()).prop_map(|(dialer, acceptor)| {
        Message::VersionMismatch(VersionMismatch { dialer, acceptor })
    })
}

pub fn error() -> impl Strategy<Value = Message> {
    (any::<u32>(), ".{0,64}")
        .prop_map(|(code, message)| Message::Error(ErrorMessage { code: ErrorCode(code), message }))
}

pub fn push() -> impl Strategy<Value = Message> {
    (any_epoch(), any_entries()).prop_map(|(epoch, entries)| Message::Push(Push { epoch, entries }))
}

pub fn push_notice() -> impl Strategy<Value = Message> {
    (any_epoch(), any_seq(), any_seq())
        .prop_map(|(epoch, first, latest)| Message::PushNotice(PushNotice { epoch, first, latest }))
}

pub fn fetch() -> impl Strategy<Value = Message> {
    (any_seq(), any::<u32>()).prop_map(|(after, limit)| Message::Fetch(Fetch { after, limit }))
}

pub fn entries() -> impl Strategy<Value = Message> {
    (any_entries(), any_seq(), any::<bool>())
        .prop_map(|(entries, latest, more)| Message::Entries(Entries { entries, latest, more }))
}

pub fn ack() -> impl Strategy<Value = Message> {
    any_position().prop_map(|applied| Message::Ack(Ack { applied }))
}

pub fn heartbeat() -> impl Strategy<Value = Message> {
    (any_epoch(), any_device(), any_seq())
        .prop_map(|(epoch, leader, seq)| Message::Heartbeat(Heartbeat { epoch, leader, seq }))
}

pub fn claim() -> impl Strategy<Value = Message> {
    (any_epoch(), any_device(), any_seq())
        .prop_map(|(epoch, device, position)| Message::Claim(Claim { epoch, device, position }))
}

pub fn any_follows() -> impl Strategy<Value = Follows> {
    prop_oneof![
        Just(Follows::Nobody),
        (any_epoch(), any_device()).prop_map(|(epoch, leader)| Follows::Leader { epoch, leader }),
    ]
}

pub fn presence() -> impl Strategy<Value = Message> {
    (any_device(), any_epoch(), any_follows())
        .prop_map(|(device, epoch, follows)| Message::Presence(Presence { device, epoch, follows }))
}

pub fn submit() -> impl Strategy<Value = Message> {
    prop::collection::vec(any_change(), 0..6)
        .prop_map(|changes| Message::Submit(Submit { changes }))
}

pub fn submit_ack() -> impl Strategy<Value = Message> {
    (
        any_epoch(),
        prop::collection::vec(
            ((any_device(), any::<u64>()), any_seq()).prop_map(|((device, seq), global)| {
                Assigned { origin: OriginKey { device, seq }, seq: global }
            }),
            0..8,
        ),
    )
        .prop_map(|(epoch, assigned)| Message::SubmitAck(SubmitAck { epoch, assigned }))
}

pub fn snapshot_required() -> impl Strategy<Value = Message> {
    (any_seq(), any_position(), any::<u64>()).prop_map(
        |(compacted_through, snapshot, total_bytes)| {
            Message::SnapshotRequired(SnapshotRequired { compacted_through, snapshot, total_bytes })
        },
    )
}

pub fn snapshot_fetch() -> impl Strategy<Value = Message> {
    (any_position(), any::<u64>())
        .prop_map(|(snapshot, offset)| Message::SnapshotFetch(SnapshotFetch { snapshot, offset }))
}

pub fn snapshot_chunk() -> impl Strategy<Value = Message> {
    (any::<u64>(), any_bytes())
        .prop_map(|(offset, data)| Message::SnapshotChunk(SnapshotChunk { offset, data }))
}

pub fn snapshot_end() -> impl Strategy<Value = Message> {
    (any_position(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(snapshot, total_bytes, digest)| {
        Message::SnapshotEnd(SnapshotEnd { snapshot, total_bytes, digest })
    })
}

pub fn divergence() -> impl Strategy<Value = Message> {
    (any_epoch(), any_device(), any_position(), any_position()).prop_map(
        |(epoch, leader, yours, ours)| {
            Message::Divergence(Divergence { epoch, leader, yours, ours })
        },
    )
}

pub fn ping_msg() -> impl Strategy<Value = Message> {
    (any::<u64>(), any_bytes()).prop_map(|(nonce, payload)| Message::Ping(Ping { nonce, payload }))
}

pub fn pong_msg() -> impl Strategy<Value = Message> {
    (any::<u64>(), any_bytes()).prop_map(|(nonce, payload)| Message::Pong(Pong { nonce, payload }))
}

/// One strategy per message kind, boxed, in kind-code order.
pub fn per_kind() -> Vec<BoxedStrategy<Message>> {
    vec![
        hello().boxed(),
        hello_ack().boxed(),
        version_mismatch().boxed(),
        error().boxed(),
        push().boxed(),
        push_notice().boxed(),
        fetch().boxed(),
        entries().boxed(),
        ack().boxed(),
        heartbeat().boxed(),
        claim().boxed(),
        presence().boxed(),
        submit().boxed(),
        submit_ack().boxed(),
        snapshot_required().boxed(),
        snapshot_fetch().boxed(),
        snapshot_chunk().boxed(),
        snapshot_end().boxed(),
        divergence().boxed(),
        ping_msg().boxed(),
        pong_msg().boxed(),
    ]
}

/// Any message of any kind.
pub fn any_message() -> impl Strategy<Value = Message> {
    proptest::strategy::Union::new(per_kind())
}

/// Waits (with the common deadline) until `check` holds, re-checking it each time `changed`
/// is notified; registered before each check, so no notification is missed.
pub async fn wait_notified(changed: &tokio::sync::Notify, what: &str, check: impl Fn() -> bool) {
    within(what, async {
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if check() {
                return;
            }
            notified.await;
        }
    })
    .await;
}
