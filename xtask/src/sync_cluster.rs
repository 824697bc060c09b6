//! Three (or more) devices running `SyncService` over real iroh endpoints on loopback, in one
//! process: the setup shared by `bench lag` and `bench failover`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use iroh::SecretKey;
use iroh::protocol::Router;
use library_models as _;
use sync_log::{DeviceId, LibraryId, SyncLog};
use sync_proto::{MemberTable, ProtoConfig, SYNC_ALPN, SyncProtocol};
use sync_service::{Acceptor, Config, Event, FirstStart, Member, Role, ServiceParams, SyncService};
use tempfile::TempDir;
use txn_manager::TransactionManager;
use uuid::Uuid;

/// One device.
pub(crate) struct Node {
    svc: SyncService,
    running: bool,
    router: Option<Router>,
    _dir: TempDir,
}

/// The devices; device 0 created the library (and leads first).
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` devices with `config`, waits until device 0 leads and all follow it.
    pub(crate) async fn start(n: usize, config: Config) -> anyhow::Result<Self> {
        let library = LibraryId(Uuid::now_v7());
        let ids: Vec<DeviceId> =
            (0..n).map(|i| DeviceId(Uuid::from_u128(0xbe00 + i as u128))).collect();
        let mut endpoints = Vec::new();
        let mut members = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let key = SecretKey::from_bytes(&[90 + i as u8; 32]);
            let endpoint = sync_proto::bind_loopback(Some(key)).await?;
            members.push(Member { device: *id, addr: sync_proto::loopback_addr(&endpoint) });
            endpoints.push(endpoint);
        }
        let mut nodes = Vec::new();
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let dir = tempfile::tempdir()?;
            let log = SyncLog::open_or_create(dir.path().join("sync.db"), library).await?;
            let registry = syncable::Registry::from_inventory()?;
            let tm = TransactionManager::open(
                dir.path().join("library.db"),
                log.clone(),
                ids[i],
                registry,
                Default::default(),
            )
            .await?;
            let table = MemberTable::new();
            let acceptor = Acceptor::new();
            let protocol = SyncProtocol::new(
                table.clone(),
                Arc::new(acceptor.clone()),
                ProtoConfig::default(),
            );
            let connector = protocol.connector(endpoint.clone());
            let router = Router::builder(endpoint).accept(SYNC_ALPN, protocol).spawn();
            let first = if i == 0 { FirstStart::Create } else { FirstStart::Join };
            let mut params = ServiceParams::new(
                library,
                ids[i],
                tm,
                log,
                Arc::new(leadership::MemoryStore::new()),
                first,
                members.clone(),
                table,
                acceptor,
            );
            params.config = config.clone();
            let svc = SyncService::start(params, connector).await?;
            nodes.push(Node { svc, running: true, router: Some(router), _dir: dir });
        }
        let cluster = Self { nodes };
        let leader = ids[0];
        cluster
            .wait(Duration::from_secs(30), || {
                cluster.running().iter().all(|&i| cluster.svc(i).status().leader == Some(leader))
                    && cluster.svc(0).status().role == Role::Leader
            })
            .await
            .context("device 0 never led")?;
        Ok(cluster)
    }

    /// Device `i`'s service (stopped, after [`Cluster::kill`]).
    pub(crate) fn svc(&self, i: usize) -> &SyncService {
        &self.nodes[i].svc
    }

    pub(crate) fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].running).collect()
    }

    /// Polls `f` every millisecond until it holds; `Err` after `deadline`.
    pub(crate) async fn wait(
        &self,
        deadline: Duration,
        mut f: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let end = Instant::now() + deadline;
        while !f() {
            if Instant::now() > end {
                anyhow::bail!("timed out after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Closes device `i` abruptly: its service stops as a crash would, its endpoint closes.
    pub(crate) async fn kill(&mut self, i: usize) {
        if std::mem::take(&mut self.nodes[i].running) {
            self.nodes[i].svc.abort();
        }
        if let Some(router) = self.nodes[i].router.take() {
            let endpoint = router.endpoint().clone();
            let _ = router.shutdown().await;
            endpoint.close().await;
        }
    }

    pub(crate) async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            if std::mem::take(&mut self.nodes[i].running) {
                let _ = self.nodes[i].svc.shutdown().await;
            }
            if let Some(router) = self.nodes[i].router.take() {
                let _ = router.shutdown().await;
            }
        }
    }
}

/// When each record was first applied on one device (from its event stream).
#[derive(Clone, Default)]
pub(crate) struct AppliedAt(Arc<Mutex<HashMap<Uuid, Instant>>>);

impl AppliedAt {
    /// Records the event stream of `svc` from now on, on a task of its own.
    pub(crate) fn watch(svc: &SyncService) -> Self {
        let seen = Self::default();
        let map = Arc::clone(&seen.0);
        let mut events = svc.events();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::Applied { records, .. }) => {
                        let now = Instant::now();
                        let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        for r in records.iter() {
                            map.entry(r.record).or_insert(now);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("warning: event stream lagged by {n} events");
                    }
                    Err(_) => return,
                }
            }
        });
        seen
    }

    pub(crate) fn get(&self, id: &Uuid) -> Option<Instant> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).copied()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

/// The `q` quantile (0..=1) of sorted samples, in milliseconds.
pub(crate) fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}
