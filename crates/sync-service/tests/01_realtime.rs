//! Real-time sync between devices over the in-memory network. Each test states its property;
//! each ends with equal content hashes on every device and every acknowledged write present.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use library_models as _;

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Cluster;
use sync_service::{Config, Event, Role, SyncState};

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

/// Removing a member cuts its live sessions at once and refuses it from then on: once the
/// others drop device 2 from their member list, its sessions close, their new changes no
/// longer reach it, its writes no longer reach them, and the remaining two stay in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_member_cuts_its_sessions_at_once() {
    let mut c = Cluster::new(3, common::seed(4)).await;
    c.wait_leader(T).await;
    c.write(0, "before").await;
    c.wait_converged(T).await;
    let remaining = c.members()[..2].to_vec();
    for i in 0..2 {
        c.svc(i).set_members(remaining.clone()).unwrap();
    }
    c.wait_for("device 2 to be cut off", T, || async {
        c.svc(2).status().peers.iter().all(|p| !p.connected)
    })
    .await;
    let removed_head = c.svc(2).status().log_head.seq;
    c.svc(2)
        .commit(vec![txn_manager::Op::put(library_models::Tag::new("removed".into(), None))])
        .await
        .unwrap();
    c.write(0, "after the removal").await;
    c.write(1, "from the other").await;
    c.wait_for("the two members to converge", T, || async {
        let (a, b) = (c.svc(0).status(), c.svc(1).status());
        a.log_head == b.log_head && a.outbox_len == 0 && b.outbox_len == 0 && a.log_head.seq.0 == 3
    })
    .await;
    assert_eq!(c.svc(2).status().log_head.seq, removed_head, "nothing reached the removed device");
    c.kill(2);
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// The conflict log: a follower cut off alone edits a tag that the leader edits too; when it
/// returns, the leader's change arrives while its own is still unsent, and the service's
/// `conflicts()` lists the record with both changes; every device converges to one value and
/// `clear_conflicts()` empties the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_edit_is_listed_in_the_conflict_log() {
    let mut c = Cluster::new(3, common::seed(5)).await;
    c.wait_leader(T).await;
    let mut tag = library_models::Tag::new("shared".into(), None);
    let id = tag.uuid.0;
    c.svc(0).commit(vec![txn_manager::Op::put(tag.clone())]).await.unwrap();
    c.acknowledged.push(id);
    c.wait_converged(T).await;
    c.partition(&[&[0, 1], &[2]]);
    tag.name = "edited alone".into();
    c.svc(2).commit(vec![txn_manager::Op::put(tag.clone())]).await.unwrap();
    tag.name = "edited by the leader".into();
    c.svc(0).commit(vec![txn_manager::Op::put(tag)]).await.unwrap();
    c.heal();
    c.wait_converged(T).await;
    let conflicts = c.svc(2).conflicts(10).await.unwrap();
    assert!(
        conflicts.iter().any(|k| k.record == id && k.model == "tag"),
        "{conflicts:?}\n{}",
        c.describe()
    );
    assert!(c.svc(2).clear_conflicts().await.unwrap() >= 1);
    assert!(c.svc(2).conflicts(10).await.unwrap().is_empty());
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// A burst of 300 single-change commits on the leader, faster than a follower syncs its log
/// once per push: each follower applies every seq exactly once and in order (its `Applied`
/// events tile the log, however many pushes one apply took), and the leader learns each
/// follower's final position — acks are spaced out, but the last one is never held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_is_applied_in_order_and_the_final_position_acked() {
    let mut c = Cluster::new(3, common::seed(7)).await;
    assert_eq!(c.wait_leader(T).await, 0);
    let mut events = c.svc(1).events();
    for k in 0..300 {
        c.write(0, &format!("burst {k}")).await;
    }
    c.wait_converged(T).await;
    c.assert_all_present().await;
    let head = c.svc(0).status().log_head;
    assert_eq!(head.seq.0, 300);
    c.wait_for("the leader to see both followers at its head", T, || async {
        let s = c.svc(0).status();
        s.peers.iter().filter(|p| p.connected && p.position == head).count() == 2
    })
    .await;
    let mut next = 1;
    while let Ok(ev) = events.try_recv() {
        if let Event::Applied { from, through, .. } = ev {
            assert_eq!(from.0, next, "applied batches tile the log in order");
            next = through.0 + 1;
        }
    }
    assert_eq!(next, 301, "every seq applied once");
    c.shutdown_all().await;
}

/// Commits larger than one push (`push_max`) and than one page, on the leader and on a
/// follower: every device, the leader included, is told of every record in `Applied` events
/// that tile the log in order — whether the entries went as a push, as a notice the followers
/// fetched, or were applied by the leader without being pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_is_told_of_commits_past_one_push() {
    let config = Config::default();
    let count = config.push_max + config.page as usize / 2;
    let mut c = Cluster::new(3, common::seed(8)).await;
    assert_eq!(c.wait_leader(T).await, 0);
    let mut events: Vec<_> = (0..3).map(|i| c.svc(i).events()).collect();
    let mut written: BTreeSet<_> = c.write_many(0, count).await.into_iter().collect();
    c.wait_converged(T).await;
    written.extend(c.write_many(1, count).await);
    c.wait_converged(T).await;
    c.assert_all_present().await;
    let head = c.svc(0).status().log_head.seq.0;
    assert_eq!(head, 2 * count as u64);
    for (i, events) in events.iter_mut().enumerate() {
        let (mut next, mut named) = (1, BTreeSet::new());
        while let Ok(ev) = events.try_recv() {
            if let Event::Applied { from, through, records, truncated } = ev {
                assert_eq!(from.0, next, "device {i}: applied batches tile the log in order");
                assert!(!truncated, "device {i}: {} records in one event", records.len());
                next = through.0 + 1;
                named.extend(records.iter().map(|r| r.record));
            }
        }
        assert_eq!(next, head + 1, "device {i}: every seq applied once");
        assert_eq!(named, written, "device {i}: every record named");
    }
    c.shutdown_all().await;
}

/// The status never says "in sync" while a commit is unsent: right after `commit` returns, on
/// a follower and on the leader, the status counts the write as waiting — and once it is
/// sequenced and applied everywhere, every device says in sync again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_counts_a_commit_as_unsent_until_the_engine_has_it() {
    let mut c = Cluster::new(3, common::seed(9)).await;
    assert_eq!(c.wait_leader(T).await, 0);
    c.wait_synced(&[0, 1, 2], T).await;
    for k in 0..20 {
        let i = [1, 0][k % 2];
        c.write(i, &format!("status {k}")).await;
        let s = c.svc(i).status();
        assert!(s.outbox_len >= 1, "device {i} after commit {k}: {s:?}");
        assert_ne!(s.state, SyncState::InSync, "device {i} after commit {k}");
        c.wait_for("every device to say in sync", T, || async {
            (0..3).all(|i| c.svc(i).status().state == SyncState::InSync)
        })
        .await;
    }
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}
