//! Scale and backpressure over the in-memory network: a follower far behind, and a follower
//! that stops reading. Each ends with equal content hashes and every acknowledged write
//! present; each prints what it measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use library_models as _;

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use sync_proto::Faults;
use sync_service::SyncState;

/// Resident memory of this process, from /proc (0 where unavailable).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A follower 100,000 entries behind catches up: it fetches in pages of at most `page`
/// (1,000) entries, so it never holds the whole range, and ends with the leader's content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_100_000_entries_behind_catches_up_in_pages() {
    let mut c = Cluster::new(3, common::seed(21)).await;
    c.wait_leader(Duration::from_secs(20)).await;
    c.kill(2);
    for _ in 0..100 {
        c.write_many(0, 1_000).await;
    }
    c.wait_for("the leader and the other follower", Duration::from_secs(300), || async {
        c.converged().await
    })
    .await;
    assert_eq!(c.svc(0).status().log_head.seq.0, 100_000);
    let started = Instant::now();
    c.start(2).await;
    c.wait_converged(Duration::from_secs(600)).await;
    eprintln!("100,000 entries behind: caught up in {:?} (debug build)", started.elapsed());
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// A follower that stops reading (a stopped process: nothing it sends or is sent gets
/// through) does not grow the leader's memory without bound: the leader's queue for it is
/// bounded (`peer_queue` messages), beyond it the leader only owes a `PushNotice`, the other
/// follower keeps up at full speed, the leader's status says the stalled one is stuck, and
/// once it is back it fetches and converges. Prints the leader process's memory growth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_keeps_the_leader_memory_bounded() {
    let mut config = common::test_config();
    config.stuck_after = Duration::from_secs(1);
    let mut c = Cluster::with_config(3, common::seed(22), config).await;
    c.wait_leader(Duration::from_secs(20)).await;
    let stall = Faults { delay: Duration::from_secs(3_600), ..Faults::NONE };
    c.set_faults(0, 2, stall);
    c.set_faults(2, 0, stall);
    c.set_faults(1, 2, stall);
    c.set_faults(2, 1, stall);
    let before = rss_bytes();
    let mut peak = before;
    for round in 0..40 {
        for _ in 0..25 {
            c.write_many(0, 20).await;
        }
        peak = peak.max(rss_bytes());
        if round % 10 == 9 {
            eprintln!("stalled follower: {} entries, RSS {} MiB", (round + 1) * 500, peak >> 20);
        }
    }
    c.wait_for("the running follower to keep up", Duration::from_secs(60), || async {
        let l = c.svc(0).status();
        let f = c.svc(1).status();
        f.applied_seq == l.log_head.seq && l.outbox_len == 0
    })
    .await;
    // The leader tells "stuck" (connected, behind, not advancing) from "in sync".
    c.wait_for(
        "the leader to call the stalled follower stuck",
        Duration::from_secs(30),
        || async {
            let s = c.svc(0).status();
            s.peers.iter().any(|p| p.device == c.devices[2].id && p.connected && p.stuck)
                && matches!(s.state, SyncState::Stuck { .. })
        },
    )
    .await;
    let grown = peak.saturating_sub(before);
    eprintln!(
        "bench: stalled_follower_leader_rss_growth_mib = {:.1} (20,000 entries, 1,000 pushes)",
        grown as f64 / (1 << 20) as f64
    );
    // Generous: the bound is what the queue and the lane hold, not a timing.
    assert!(grown < 512 << 20, "leader memory grew by {grown} bytes");
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        c.set_faults(a, b, Faults::NONE);
    }
    for i in [0, 1] {
        c.net.cut(c.devices[i].endpoint, c.devices[2].endpoint);
    }
    c.wait_converged(Duration::from_secs(120)).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}

/// Commits one transaction of 1,000 tags of 20 KB each (20 MB, more than a 16 MiB frame) on
/// the leader and another on a follower: the follower's submit is split, the leader's push
/// becomes a notice and its fetch pages end early, so no message outgrows the frame limit
/// (which would end the session and wedge the sync on every retry); all three converge with
/// every write present, a restarted follower included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_pages_larger_than_a_frame_still_sync() {
    let mut c = Cluster::new(3, common::seed(23)).await;
    c.wait_leader(Duration::from_secs(20)).await;
    c.kill(2);
    for i in [0, 1] {
        let tags: Vec<library_models::Tag> = (0..1_000)
            .map(|k| library_models::Tag::new(format!("{i}.{k} {}", "x".repeat(20_000)), None))
            .collect();
        c.acknowledged.extend(tags.iter().map(|t| t.uuid.0));
        c.svc(i).commit(tags.into_iter().map(txn_manager::Op::put).collect()).await.unwrap();
    }
    c.wait_converged(Duration::from_secs(120)).await;
    c.start(2).await;
    c.wait_converged(Duration::from_secs(120)).await;
    c.assert_all_present().await;
    c.shutdown_all().await;
}
