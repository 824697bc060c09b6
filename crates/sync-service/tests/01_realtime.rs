//! Real-time sync between devices over the in-memory network. Each test states its property;
//! each ends with equal content hashes on every device and every acknowledged write present.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use library_models as _;

mod common;

use std::time::Duration;

use common::Cluster;
use sync_service::{Event, Role};

const T: Duration = Duration::from_secs(20);

/// Realtime both ways with three devices: a change on the leader reaches both followers, and
/// a change on a follower is forwarded, sequenced by the leader and reaches the third device;
/// the follower is told (an `Applied` event naming the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_flow_both_ways_between_three_devices() {
    let mut c = Cluster::new(3, common::seed(1)).await;
    assert_eq!(c.wait_leader(T).await, 0);
    let mut events = c.svc(2).events();
    let on_leader = c.write(0, "from the leader").await;
    c.wait_converged(T).await;
    let on_follower = c.write(1, "from a follower").await;
    c.wait_converged(T).await;
    c.assert_all_present().await;
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let Event::Applied { records, .. } = ev {
            seen.extend(records.iter().map(|r| r.record));
        }
    }
    assert!(seen.contains(&on_leader) && seen.contains(&on_follower), "{seen:?}");
    for i in 0..3 {
        let s = c.svc(i).status();
        assert_eq!(s.rewinds, 0);
        assert_eq!(s.log_head.seq.0, 2, "{}", c.describe());
    }
    c.shutdown_all().await;
}

/// Writes on a follower while the leader is down are kept (durable, in the outbox) and
/// sequenced by the new leader after failover; the old leader restarts on its files and
/// converges; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_while_the_leader_is_down_are_sequenced_after_failover() {
    let mut c = Cluster::new(3, common::seed(2)).await;
    c.wait_leader(T).await;
    c.write(0, "before").await;
    c.wait_converged(T).await;
    c.kill(0);
    for k in 0..5 {
        c.write(1 + k % 2, &format!("while down {k}")).await;
    }
    let leader = c.wait_leader(T).await;
    assert_ne!(leader, 0);
    c.wait_converged(T).await;
    c.start(0).await;
    c.wait_converged(T).await;
    c.assert_all_present().await;
    assert_eq!(c.svc(0).status().role, Role::Follower, "{}", c.describe());
    c.shutdown_all().await;
}

/// Clean shutdown delivers: a leader that commits and shuts down at once has sequenced and
/// pushed the change (the followers have it), and a stopped service refuses new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_delivers_what_was_committed() {
    let mut c = Cluster::new(3, common::seed(3)).await;
    c.wait_leader(T).await;
    c.write(0, "last words").await;
    let svc = c.svc(0).clone();
    c.devices[0].svc = None;
    svc.shutdown().await.unwrap();
    assert!(svc.commit(vec![]).await.is_err(), "no writes after shutdown");
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}
