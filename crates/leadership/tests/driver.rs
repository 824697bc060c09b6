//! The async driver on tokio, in paused (virtual) time, over an in-memory transport.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leadership::driver::{self, DriverParams, FirstStart};
use leadership::{
    Config, DriverHandle, Epoch, Error, MemberId, MemoryStore, Message, RoleChange, RoleKind,
    Status, Term, Verdict,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

const L: Duration = Duration::from_secs(5);
const H: Duration = Duration::from_secs(1);
const DELAY: Duration = Duration::from_millis(20);

/// Routes messages between running drivers after a fixed delay; a device missing from the
/// routing table is down.
#[derive(Clone, Default)]
struct Net {
    handles: Arc<Mutex<HashMap<MemberId, DriverHandle>>>,
}

impl Net {
    fn transport(&self, from: MemberId) -> impl leadership::Transport {
        let handles = Arc::clone(&self.handles);
        move |to: MemberId, message: Message| {
            let handles = Arc::clone(&handles);
            tokio::spawn(async move {
                tokio::time::sleep(DELAY).await;
                let target = handles.lock().unwrap().get(&to).cloned();
                if let Some(target) = target {
                    let _ = target.deliver(from, message);
                }
            });
        }
    }
}

struct Device {
    id: MemberId,
    store: Arc<MemoryStore>,
    handle: DriverHandle,
    task: JoinHandle<()>,
    /// (change, epoch saved in the store when the change was announced)
    changes: Arc<Mutex<Vec<(RoleChange, Epoch)>>>,
}

async fn start(
    net: &Net,
    id: MemberId,
    members: &BTreeSet<MemberId>,
    first_start: FirstStart,
    store: Arc<MemoryStore>,
) -> Device {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let observed_store = Arc::clone(&store);
    let observer = move |change: &RoleChange| {
        let saved = observed_store.snapshot().map(|r| r.max_epoch).unwrap_or_default();
        seen.lock().unwrap().push((change.clone(), saved));
    };
    let params = DriverParams {
        config: Config::default(),
        me: id,
        members: members.clone(),
        first_start,
        position: Default::default(),
    };
    let (handle, task) = driver::spawn(
        params,
        Arc::clone(&store) as Arc<dyn leadership::LeadershipStore>,
        net.transport(id),
        observer,
    )
    .await
    .unwrap();
    net.handles.lock().unwrap().insert(id, handle.clone());
    Device { id, store, handle, task, changes }
}

fn crash(net: &Net, device: &Device) {
    net.handles.lock().unwrap().remove(&device.id);
    device.task.abort();
}

/// Waits (in virtual time) until `pred` holds for the device's status.
async fn wait_for(device: &Device, within: Duration, pred: impl FnMut(&Status) -> bool) -> Status {
    let mut rx = device.handle.watch();
    let status =
        timeout(within, rx.wait_for(pred)).await.expect("deadline passed").expect("driver alive");
    *status
}

async fn cluster(net: &Net, n: u128) -> Vec<Device> {
    let ids: Vec<MemberId> = (1..=n).map(MemberId::from_u128).collect();
    let members: BTreeSet<MemberId> = ids.iter().copied().collect();
    let mut devices = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let first = if i == 0 { FirstStart::Create } else { FirstStart::Join };
        devices.push(start(net, id, &members, first, Arc::new(MemoryStore::new())).await);
    }
    devices
}

/// The creator leads epoch 1 — saved before it was announced — and every joiner follows it
/// within one heartbeat.
#[tokio::test(start_paused = true)]
async fn creator_leads_epoch_one_after_saving_it_and_joiners_follow() {
    let net = Net::default();
    let devices = cluster(&net, 3).await;
    let one = Term::new(Epoch(1), devices[0].id);
    for d in &devices {
        wait_for(d, H + DELAY * 2, |s| s.leader == Some(one) && s.durable_epoch == Epoch(1)).await;
    }
    let changes = devices[0].changes.lock().unwrap().clone();
    assert_eq!(changes, vec![(RoleChange::BecomeLeader { term: one }, Epoch(1))]);
    assert_eq!(devices[0].handle.fence().can_sequence(), Some(one));
    assert_eq!(devices[1].handle.fence().check(one), Verdict::Accept);
    assert_eq!(devices[1].store.snapshot().unwrap().last_leader, Some(one));
}

/// Fail-over through the driver: when the leader's task dies, the survivors agree on one new
/// leader at epoch 2 within L + H (virtual time), and it announced leadership only after
/// saving epoch 2.
#[tokio::test(start_paused = true)]
async fn driver_fails_over_within_lease_plus_heartbeat() {
    let net = Net::default();
    let devices = cluster(&net, 3).await;
    wait_for(&devices[2], H, |s| s.leader.is_some()).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    crash(&net, &devices[0]);
    let crashed_at = Instant::now();
    let two = Term::new(Epoch(2), devices[2].id);
    for d in &devices[1..] {
        wait_for(d, L + H, |s| s.leader == Some(two)).await;
    }
    assert!(crashed_at.elapsed() <= L + H, "{:?}", crashed_at.elapsed());
    let changes = devices[2].changes.lock().unwrap().clone();
    assert_eq!(changes.last(), Some(&(RoleChange::BecomeLeader { term: two }, Epoch(2))));
}

/// A restarted device resumes from its store: it keeps its epoch, comes back as a follower
/// without a leader, and follows the current leader at its next heartbeat.
#[tokio::test(start_paused = true)]
async fn a_restarted_driver_resumes_from_its_store() {
    let net = Net::default();
    let devices = cluster(&net, 2).await;
    let one = Term::new(Epoch(1), devices[0].id);
    wait_for(&devices[1], H * 2, |s| s.leader == Some(one)).await;
    crash(&net, &devices[1]);
    let members: BTreeSet<MemberId> = devices.iter().map(|d| d.id).collect();
    let again =
        start(&net, devices[1].id, &members, FirstStart::Join, Arc::clone(&devices[1].store)).await;
    let status = again.handle.status();
    assert_eq!(
        (status.role, status.leader, status.max_epoch),
        (RoleKind::Follower, None, Epoch(1))
    );
    wait_for(&again, H + DELAY * 2, |s| s.leader == Some(one)).await;
}

/// Persist before acting, through the driver: while saves fail the creator never leads; once
/// the store works again it leads a *new* epoch, saved first.
#[tokio::test(start_paused = true)]
async fn a_failing_store_delays_leadership_and_never_loses_an_epoch() {
    let net = Net::default();
    let id = MemberId::from_u128(1);
    let store = Arc::new(MemoryStore::new());
    store.set_failing(true);
    let device = start(&net, id, &[id].into(), FirstStart::Create, Arc::clone(&store)).await;
    tokio::time::sleep(L * 3).await;
    assert_eq!(device.handle.status().can_sequence(), None);
    assert!(device.changes.lock().unwrap().is_empty());
    store.set_failing(false);
    let status = wait_for(&device, L + H, |s| s.role == RoleKind::Leader).await;
    let term = status.leader.unwrap();
    assert!(term.epoch > Epoch(1), "epoch 1 was claimed in memory, so it is not reused");
    assert_eq!(store.snapshot().unwrap().max_epoch, term.epoch);
}

/// The fence seam: a push stamped with an unknown newer term is reported, fed back with
/// `observe`, and then accepted; the deposed leader's fence stops sequencing.
#[tokio::test(start_paused = true)]
async fn observing_a_newer_term_moves_the_fence() {
    let net = Net::default();
    let devices = cluster(&net, 3).await;
    let one = Term::new(Epoch(1), devices[0].id);
    wait_for(&devices[0], H, |s| s.role == RoleKind::Leader).await;
    let newer = Term::new(Epoch(5), devices[2].id);
    let fence = devices[0].handle.fence();
    assert_eq!(fence.check(newer), Verdict::NewerTerm { theirs: newer });
    devices[0].handle.observe(newer).unwrap();
    let status = wait_for(&devices[0], H, |s| s.leader == Some(newer)).await;
    assert_eq!(status.can_sequence(), None);
    assert!(matches!(devices[0].handle.fence().check(one), Verdict::RefuseStale { .. }));
    let changes = devices[0].changes.lock().unwrap().clone();
    assert!(matches!(&changes[1].0, RoleChange::StepDown(s) if s.term == one));
}

/// Shutting a driver down ends its task; its handle then reports that it stopped.
#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_driver() {
    let net = Net::default();
    let devices = cluster(&net, 1).await;
    let device = devices.into_iter().next().unwrap();
    device.handle.shutdown().await.unwrap();
    device.task.await.unwrap();
    let err = device
        .handle
        .deliver(
            MemberId::from_u128(9),
            Message::Heartbeat {
                term: Term::new(Epoch(1), MemberId::from_u128(9)),
                position: Default::default(),
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::DriverStopped));
}
