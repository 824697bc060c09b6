//! `cargo xtask bench failover`: three devices over real iroh on loopback with the default
//! leadership timings. While a follower commits one change every 10 ms, the leader's service
//! stops as a crash would and its endpoint is closed. `failover_ms` is the time from the close
//! until a change the follower committed after it is sequenced by the new leader (its first
//! `Applied` event on a survivor); `writes_lost` counts the follower's acknowledged writes
//! missing on either survivor once they have converged (must be 0).
//!
//! Target: `failover_ms` ≤ lease + 1 s (6,000 ms with the default lease of 5 s).

use std::time::{Duration, Instant};

use anyhow::Context;
use library_models::{Id, LibraryModel, Tag};
use txn_manager::Op;
use uuid::Uuid;

use crate::sync_cluster::{AppliedAt, Cluster};

pub(crate) fn run() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let config = sync_service::Config::default();
        let lease = config.leadership.lease();
        let mut cluster = Cluster::start(3, config).await?;
        let result = measure(&mut cluster, lease).await;
        cluster.stop_all().await;
        result
    })
}

async fn measure(cluster: &mut Cluster, lease: Duration) -> anyhow::Result<()> {
    let seen = [AppliedAt::watch(cluster.svc(1)), AppliedAt::watch(cluster.svc(2))];
    let mut written: Vec<Uuid> = Vec::new();
    let commit = |cluster: &Cluster, k: usize| {
        let tag = Tag::new(format!("failover {k}"), None);
        let id = tag.uuid.0;
        let svc = cluster.svc(1).clone();
        async move { svc.commit(vec![Op::put(tag)]).await.map(|_| id) }
    };
    let mut k = 0;
    let tick = Duration::from_millis(10);
    // One second of steady writes, then the leader goes.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        written.push(commit(cluster, k).await?);
        k += 1;
        tokio::time::sleep(tick).await;
    }
    let closed_at = Instant::now();
    cluster.kill(0).await;
    let first_after = written.len();
    let mut failover = None;
    let deadline = closed_at + lease * 4;
    while Instant::now() < deadline {
        written.push(commit(cluster, k).await?);
        k += 1;
        if failover.is_none() {
            failover = written[first_after..]
                .iter()
                .filter_map(|id| seen.iter().filter_map(|s| s.get(id)).min())
                .min()
                .map(|at| at.saturating_duration_since(closed_at));
        }
        if let Some(f) = failover
            && closed_at.elapsed() > f + Duration::from_secs(1)
        {
            break;
        }
        tokio::time::sleep(tick).await;
    }
    let failover = failover.context("no change was sequenced after the leader closed")?;
    // Every acknowledged write gets up to a minute to reach both survivors; what is still
    // missing then is lost.
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && !written.iter().all(|id| seen.iter().all(|s| s.get(id).is_some()))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lost = 0;
    for i in [1, 2] {
        let ids = written.clone();
        lost += cluster
            .svc(i)
            .transaction_manager()
            .with(move |l| {
                let mut missing = 0u64;
                for id in ids {
                    if Tag::load(l.conn(), Id(id))?.is_none() {
                        missing += 1;
                    }
                }
                Ok(missing)
            })
            .await?;
    }
    println!("bench: lease_ms = {}", lease.as_millis());
    println!("bench: writes = {} (one per 10 ms on a follower)", written.len());
    println!("bench: failover_ms = {:.0}", failover.as_secs_f64() * 1e3);
    println!("bench: writes_lost = {lost}");
    if lost > 0 {
        anyhow::bail!("{lost} acknowledged writes lost");
    }
    Ok(())
}
