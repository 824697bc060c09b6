//! Failure scenarios over the in-memory network with fault injection. Each states its
//! property; each ends with equal content hashes on every device and every acknowledged write
//! present. Seeds are printed; `SYNC_SEED=<n>` replays one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use library_models as _;

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use sync_proto::Faults;
use sync_service::Role;

const T: Duration = Duration::from_secs(30);

/// A single isolated device causes no divergence at all: the leader cut off alone pauses
/// (it sequences nothing more), the others elect, both sides write, and after the heal every
/// device converges with zero rewinds; the same for a follower cut off alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_isolated_device_causes_zero_rewinds() {
    let mut c = Cluster::new(3, common::seed(11)).await;
    c.wait_leader(T).await;
    c.write(0, "before").await;
    c.wait_converged(T).await;

    // The leader, alone.
    c.partition(&[&[0], &[1, 2]]);
    c.wait_for("the lone leader to pause", T, || async {
        c.svc(0).status().role == Role::PausedLeader
    })
    .await;
    c.write(0, "lone leader").await;
    c.write(1, "majority side").await;
    c.wait_for("the others to elect", T, || async {
        [1, 2].iter().any(|&i| c.svc(i).status().role == Role::Leader)
    })
    .await;
    c.heal();
    c.wait_converged(T).await;
    c.assert_all_present().await;
    assert_eq!(c.total_rewinds(), 0, "{}", c.describe());

    // A follower, alone.
    let leader = c.wait_leader(T).await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != follower).collect();
    c.partition(&[&[follower], &others]);
    c.write(follower, "lone follower").await;
    c.write(leader, "leader side").await;
    c.wait_for("the lone follower to lose its lease", T, || async {
        c.svc(follower).status().role == Role::NoLeader
    })
    .await;
    c.heal();
    c.wait_converged(T).await;
    c.assert_all_present().await;
    assert_eq!(c.total_rewinds(), 0, "{}", c.describe());
    assert_eq!(c.wait_leader(T).await, leader, "the healthy leader was not deposed");
    c.shutdown_all().await;
}

/// Four devices, after a first write everyone has, split 2|2 — {0, 1} keep their leader,
/// {2, 3} elect one of their own.
async fn split_two_two(c: &mut Cluster) {
    c.wait_leader(T).await;
    c.write(0, "before").await;
    c.wait_converged(T).await;
    c.partition(&[&[0, 1], &[2, 3]]);
    c.wait_for("the other side to elect", T, || async {
        [2, 3].iter().any(|&i| c.svc(i).status().role == Role::Leader)
    })
    .await;
}

/// Waits until every device's outbox is empty: each side sequenced its writes.
async fn wait_both_sides_sequenced(c: &Cluster) {
    c.wait_for("both sides to sequence", T, || async {
        (0..4).all(|i| c.svc(i).status().outbox_len == 0)
    })
    .await;
}

/// Four devices split 2|2: both sides write and elect (two histories), and on heal they
/// converge with zero loss: the losing side rewinds and re-submits its suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_two_split_converges_without_loss() {
    let mut c = Cluster::new(4, common::seed(12)).await;
    split_two_two(&mut c).await;
    for k in 0..4 {
        c.write(k, &format!("side write {k}")).await;
    }
    wait_both_sides_sequenced(&c).await;
    c.heal();
    c.wait_converged(T).await;
    c.assert_all_present().await;
    assert!(c.total_rewinds() >= 1, "one side had to rewind\n{}", c.describe());
    c.shutdown_all().await;
}

/// The leader killed in the middle of a stream of pushes: the survivors elect, every write
/// acknowledged anywhere is present after the old leader restarts, and all converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_push_loses_nothing() {
    let mut c = Cluster::new(3, common::seed(13)).await;
    c.wait_leader(T).await;
    for k in 0..30 {
        c.write(0, &format!("stream {k}")).await;
        c.write(1 + k % 2, &format!("follower stream {k}")).await;
    }
    c.kill(0);
    for k in 0..10 {
        c.write(1 + k % 2, &format!("after {k}")).await;
    }
    c.wait_leader(T).await;
    c.start(0).await;
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// Pushes dropped (20%), delayed and reordered across lanes on every link: heartbeats
/// announce the newest seq, so a follower that missed a push fetches it; re-deliveries are
/// skipped. All converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_delayed_and_reordered_pushes_still_converge() {
    let mut c = Cluster::new(3, common::seed(14)).await;
    c.wait_leader(T).await;
    let faults = Faults {
        drop_probability: 0.2,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(10),
        ..Faults::NONE
    };
    c.set_faults_everywhere(faults);
    for k in 0..40 {
        c.write(k % 3, &format!("lossy {k}")).await;
    }
    // Drops can cut heartbeats too (leadership may move): what matters is the end state.
    c.set_faults_everywhere(Faults::NONE);
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// Frames duplicated (30%: each copy right behind its original), dropped (10%), delayed and
/// reordered across lanes on every link both ways, while the two followers write: every
/// re-delivered push, submit, ack and leadership message is harmless. All converge with zero
/// rewinds and every acknowledged write present, and the leader's log sequences each origin
/// key exactly once. (Drops stay at 10% so that losing a lease's worth of heartbeats — six in
/// a row — is out of reach: leadership stays put, and a rewind would be the duplicates' doing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_dropped_and_reordered_frames_sequence_each_change_once() {
    let mut c = Cluster::new(3, common::seed(17)).await;
    let leader = c.wait_leader(T).await;
    let writers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    c.write(writers[0], "before").await;
    c.wait_converged(T).await;
    c.set_faults_everywhere(Faults {
        drop_probability: 0.1,
        duplicate_probability: 0.3,
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(10),
    });
    // Four rounds, each converging under the faults, so that every kind of message (submit,
    // submit-ack, push, fetch, entries, ack, heartbeat, presence) crosses the faulty links.
    for round in 0..4 {
        for k in 0..10 {
            c.write(writers[k % 2], &format!("duplicated {round}.{k}")).await;
        }
        c.wait_converged(T).await;
    }
    c.set_faults_everywhere(Faults::NONE);
    c.wait_converged(T).await;
    c.assert_all_present().await;
    assert_eq!(c.total_rewinds(), 0, "seed {}\n{}", c.seed, c.describe());
    let leader = c.wait_leader(T).await;
    c.assert_each_origin_sequenced_once(leader).await;
    c.shutdown_all().await;
}

/// A follower killed while it applies a large catch-up restarts on its files and finishes:
/// the applied seq moved with the data, so nothing is skipped and nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_mid_apply_finishes_its_catch_up() {
    let mut c = Cluster::new(3, common::seed(15)).await;
    c.wait_leader(T).await;
    c.kill(2);
    for _ in 0..10 {
        c.write_many(0, 500).await;
    }
    c.wait_converged(T).await;
    c.start(2).await;
    c.wait_for("the follower to start applying", T, || async {
        c.svc(2).status().applied_seq.0 > 0
    })
    .await;
    c.kill(2);
    c.start(2).await;
    c.wait_converged(T).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// A follower whose unsent backlog is far larger than one submit (400 changes, pages of 4)
/// forwards it page after page as each page comes back from the log, not one page per
/// resend timeout: it converges well within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_unsent_backlog_is_forwarded_page_after_page() {
    let mut config = common::test_config();
    config.page = 4;
    config.resend_after = Duration::from_secs(5);
    let mut c = Cluster::with_config(3, common::seed(16), config).await;
    c.wait_leader(T).await;
    c.partition(&[&[0, 2], &[1]]);
    for k in 0..400 {
        c.write(1, &format!("backlog {k}")).await;
    }
    c.heal();
    c.wait_converged(Duration::from_secs(20)).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// A 2|2 split where each side sequences more than a page of changes (1,600, above
/// `Config::page`), healed while the devices keep committing: the losing side re-submits its
/// whole suffix page after page — the pages past the first are not held back behind the
/// new commits — and everything converges with zero loss while the writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suffix_of_more_than_a_page_is_resubmitted_while_writes_go_on() {
    let mut c = Cluster::new(4, common::seed(21)).await;
    split_two_two(&mut c).await;
    for k in 0..4 {
        c.write_many(k, 800).await;
    }
    wait_both_sides_sequenced(&c).await;
    c.heal();
    let deadline = tokio::time::Instant::now() + T;
    let mut k = 0;
    loop {
        // A commit every 20 ms somewhere: each is forwarded at once.
        c.write(k % 4, &format!("after the heal {k}")).await;
        k += 1;
        let drained = (0..4).all(|i| c.svc(i).status().resubmit_len == 0);
        if drained && k > 50 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "re-submissions stuck\n{}", c.describe());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.wait_converged(T).await;
    c.assert_all_present().await;
    assert!(c.total_rewinds() >= 1, "one side had to rewind\n{}", c.describe());
    c.shutdown_all().await;
}

/// Accepts nothing: the raw member below only dials.
struct DialOnly;

impl sync_proto::SessionHandler for DialOnly {
    fn local_state(&self, _: &sync_log::LibraryId) -> Option<sync_proto::LocalState> {
        None
    }

    async fn serve(&self, _: sync_proto::Session) {}
}

/// A member's submit that mixes a change under an origin key the log already holds with
/// another change (the device handed the key out twice, as after a restored backup) with new
/// changes: the leader sets the reused key aside and sequences the rest — one reused key never
/// wedges a member's submits — and the log keeps the original change under that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_with_a_reused_origin_key_sequences_the_rest() {
    use sync_proto::{Connector as _, LocalState, MemberTable, Message, ProtoConfig, Submit};
    let mut c = Cluster::new(3, common::seed(31)).await;
    assert_eq!(c.wait_leader(T).await, 0);
    c.write(2, "an honest change").await;
    c.wait_converged(T).await;
    let (me, status) = (c.devices[2].id, c.svc(2).status());
    let log = c.devices[0].log.clone().unwrap();
    let entries = log.read_after(sync_log::Seq::ZERO, 1_000).await.unwrap();
    let taken = entries.iter().find(|e| e.change.origin.device == me).unwrap().clone();
    c.stop(2).await;
    // Device 2 comes back as a bare session that sends what it likes.
    let table = MemberTable::new();
    table.add(c.library, c.devices[0].endpoint, c.devices[0].id);
    let connector =
        c.net.add_node(c.devices[2].endpoint, table, Arc::new(DialOnly), ProtoConfig::default());
    let local = LocalState {
        library: c.library,
        device: me,
        epoch: status.epoch,
        position: status.log_head,
        models: vec!["tag".into()],
    };
    let mut session =
        connector.connect(iroh::EndpointAddr::new(c.devices[0].endpoint), local).await.unwrap();
    let mut reused = taken.change.clone();
    reused.hlc = sync_log::Hlc(reused.hlc.0 + 1);
    let fresh: Vec<_> = (1..=3u64)
        .map(|k| {
            let mut change = taken.change.clone();
            change.origin.seq += k;
            change.hlc = sync_log::Hlc(change.hlc.0 + k);
            change
        })
        .collect();
    let mut changes = vec![reused];
    changes.extend(fresh.iter().cloned());
    session.send(&Message::Submit(Submit { changes })).await.unwrap();
    c.wait_for("the leader to sequence the changes under new keys", T, || async {
        let counts = c.origin_counts(0).await;
        fresh.iter().all(|f| counts.get(&f.origin) == Some(&1))
    })
    .await;
    let kept = log.read_after(sync_log::Seq(taken.seq.0 - 1), 1).await.unwrap();
    assert_eq!(kept[0].change, taken.change, "the log keeps the original under the key");
    drop(session);
    c.shutdown_all().await;
}
