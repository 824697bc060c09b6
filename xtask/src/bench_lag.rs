//! `cargo xtask bench lag`: real-time sync over real iroh on loopback, one leader and two
//! followers in one process, default leadership timings.
//!
//! - 1,000 commits per second for 10 s, one change each, on the leader: the time from
//!   `commit` returning on the leader to the change applied on a follower (its `Applied`
//!   event), one clock: `lag_p50_ms`, `lag_p99_ms` (both followers' samples).
//! - The same from a follower's commit to the *other* follower applying it (forwarded,
//!   sequenced, pushed): `follower_lag_p99_ms`.
//! - Commits of 100 changes on the leader as fast as the followers keep up (at most 50
//!   commits ahead of the slower follower) for 10 s: changes applied on both followers per
//!   second, `sustained_commits_per_s`, and that divided by the local batched commit rate of
//!   the same changes on a library without sync, measured in the same run:
//!   `sustained_vs_local`.
//!
//! Targets: `lag_p99_ms` ≤ 5, `follower_lag_p99_ms` ≤ 10, `sustained_commits_per_s` ≥ 20,000.

use std::time::{Duration, Instant};

use anyhow::Context;
use library_models::Tag;
use txn_manager::{Op, TransactionManager};
use uuid::Uuid;

use crate::sync_cluster::{AppliedAt, Cluster, quantile_ms};

const RATE_PER_S: u64 = 1_000;
const SECONDS: u64 = 10;
const BATCH: usize = 100;

pub(crate) fn run() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut cluster = Cluster::start(3, sync_service::Config::default()).await?;
        let result = measure(&cluster).await;
        cluster.stop_all().await;
        result
    })
}

/// Commits one tag per millisecond on `from` for `SECONDS`; returns each commit's return
/// time.
async fn paced_commits(cluster: &Cluster, from: usize) -> anyhow::Result<Vec<(Uuid, Instant)>> {
    let start = tokio::time::Instant::now();
    let total = RATE_PER_S * SECONDS;
    let mut done = Vec::with_capacity(total as usize);
    for k in 0..total {
        tokio::time::sleep_until(start + Duration::from_micros(k * 1_000_000 / RATE_PER_S)).await;
        let tag = Tag::new(format!("lag {k}"), None);
        let id = tag.uuid.0;
        cluster.svc(from).commit(vec![Op::put(tag)]).await?;
        done.push((id, Instant::now()));
    }
    Ok(done)
}

/// Lags of `commits` as applied on the devices in `seen`; waits (bounded) for the last ones.
async fn lags(
    cluster: &Cluster,
    commits: &[(Uuid, Instant)],
    seen: &[&AppliedAt],
) -> anyhow::Result<Vec<Duration>> {
    cluster
        .wait(Duration::from_secs(60), || {
            seen.iter().all(|s| commits.iter().all(|(id, _)| s.get(id).is_some()))
        })
        .await
        .context("not every change was applied on the followers")?;
    let mut lags = Vec::new();
    for s in seen {
        for (id, at) in commits {
            if let Some(applied) = s.get(id) {
                lags.push(applied.saturating_duration_since(*at));
            }
        }
    }
    lags.sort();
    Ok(lags)
}

async fn measure(cluster: &Cluster) -> anyhow::Result<()> {
    let (f1, f2) = (AppliedAt::watch(cluster.svc(1)), AppliedAt::watch(cluster.svc(2)));
    // Warm-up: connections, caches.
    for k in 0..200 {
        cluster.svc(0).commit(vec![Op::put(Tag::new(format!("warm {k}"), None))]).await?;
    }
    cluster.wait(Duration::from_secs(30), || f1.len() >= 200 && f2.len() >= 200).await?;

    let commits = paced_commits(cluster, 0).await?;
    let lag = lags(cluster, &commits, &[&f1, &f2]).await?;
    println!("bench: leader_commits = {} at {RATE_PER_S}/s", commits.len());
    println!("bench: lag_p50_ms = {:.3}", quantile_ms(&lag, 0.50));
    println!("bench: lag_p99_ms = {:.3}", quantile_ms(&lag, 0.99));
    println!("bench: lag_max_ms = {:.3}", quantile_ms(&lag, 1.0));

    let commits = paced_commits(cluster, 1).await?;
    let lag = lags(cluster, &commits, &[&f2]).await?;
    println!("bench: follower_lag_p50_ms = {:.3}", quantile_ms(&lag, 0.50));
    println!("bench: follower_lag_p99_ms = {:.3}", quantile_ms(&lag, 0.99));

    // Sustained: batches of 100 changes, never more than 50 batches ahead of the followers.
    let slowest =
        || cluster.svc(1).status().applied_seq.0.min(cluster.svc(2).status().applied_seq.0);
    let base = slowest();
    for i in 0..3 {
        let st = cluster.svc(i).status();
        eprintln!(
            "before sustained: device {i} {:?} applied {} head {} outbox {} state {:?}",
            st.role, st.applied_seq, st.log_head.seq, st.outbox_len, st.state
        );
    }
    let start = Instant::now();
    let mut batches = 0u64;
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let tags: Vec<Op> =
            (0..BATCH).map(|k| Op::put(Tag::new(format!("bulk {batches}.{k}"), None))).collect();
        cluster.svc(0).commit(tags).await?;
        batches += 1;
        let head = cluster.svc(0).status().log_head.seq.0;
        while head.saturating_sub(slowest()) > 50 * BATCH as u64 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    eprintln!("sustained: {batches} batches committed in {:?}", start.elapsed());
    let target = base + batches * BATCH as u64;
    cluster
        .wait(Duration::from_secs(120), || slowest() >= target)
        .await
        .context("followers did not catch up")?;
    let elapsed = start.elapsed();
    let sustained = (batches * BATCH as u64) as f64 / elapsed.as_secs_f64();

    // The same commits on a library without sync.
    let dir = tempfile::tempdir()?;
    let library = sync_log::LibraryId::new_v7();
    let log = sync_log::SyncLog::open_or_create(dir.path().join("sync.db"), library).await?;
    let tm = TransactionManager::open(
        dir.path().join("library.db"),
        log,
        sync_log::DeviceId::new_v7(),
        syncable::Registry::from_inventory()?,
        Default::default(),
    )
    .await?;
    let local_start = Instant::now();
    for b in 0..batches {
        let tags: Vec<Op> =
            (0..BATCH).map(|k| Op::put(Tag::new(format!("local {b}.{k}"), None))).collect();
        tm.commit(tags).await?;
    }
    let local = (batches * BATCH as u64) as f64 / local_start.elapsed().as_secs_f64();
    println!("bench: sustained_batches = {batches} of {BATCH} changes in {elapsed:?}");
    println!("bench: sustained_commits_per_s = {sustained:.0}");
    println!("bench: local_batched_changes_per_s = {local:.0}");
    println!("bench: sustained_vs_local = {:.2}", sustained / local);
    Ok(())
}
