//! End to end over real iroh on loopback (127.0.0.1, relays off, the Minimal preset): three
//! endpoints in one test process, each with its own router, acceptor and files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use library_models as _;

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iroh::SecretKey;
use iroh::protocol::Router;
use leadership::MemoryStore;
use library_models::{Id, LibraryModel, Location, Tag, UserMetadata, UserMetadataTag};
use sync_log::{DeviceId, LibraryId, SyncLog};
use sync_proto::{MemberTable, ProtoConfig, SYNC_ALPN, SyncProtocol};
use sync_service::{Acceptor, FirstStart, Member, Role, ServiceParams, SyncService};
use tempfile::TempDir;
use txn_manager::{Op, TransactionManager};
use uuid::Uuid;

const T: Duration = Duration::from_secs(30);

struct Node {
    id: DeviceId,
    key: SecretKey,
    dir: TempDir,
    store: Arc<MemoryStore>,
    svc: Option<SyncService>,
    router: Option<Router>,
}

struct Net {
    library: LibraryId,
    nodes: Vec<Node>,
    members: Vec<Member>,
}

impl Net {
    async fn new() -> Self {
        common::init_tracing();
        let library = LibraryId(Uuid::now_v7());
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        for i in 0..3u8 {
            let key = SecretKey::from_bytes(&[40 + i; 32]);
            let id = DeviceId(Uuid::from_u128(0xe000 + u128::from(i)));
            nodes.push(Node {
                id,
                key,
                dir: tempfile::tempdir().unwrap(),
                store: Arc::new(MemoryStore::new()),
                svc: None,
                router: None,
            });
        }
        // Bind first (the addresses are part of the member list), then start.
        let mut endpoints = Vec::new();
        for n in &nodes {
            let endpoint = sync_proto::bind_loopback(Some(n.key.clone())).await.unwrap();
            members.push(Member { device: n.id, addr: sync_proto::loopback_addr(&endpoint) });
            endpoints.push(endpoint);
        }
        let mut net = Self { library, nodes, members };
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            net.start_on(i, endpoint).await;
        }
        net
    }

    fn paths(&self, i: usize) -> (PathBuf, PathBuf) {
        let dir = self.nodes[i].dir.path();
        (dir.join("library.db"), dir.join("sync.db"))
    }

    async fn start_on(&mut self, i: usize, endpoint: iroh::Endpoint) {
        let (lib_path, log_path) = self.paths(i);
        let log = SyncLog::open_or_create(log_path, self.library).await.unwrap();
        let registry = syncable::Registry::from_inventory().unwrap();
        let node = &self.nodes[i];
        let tm =
            TransactionManager::open(lib_path, log.clone(), node.id, registry, Default::default())
                .await
                .unwrap();
        let table = MemberTable::new();
        let acceptor = Acceptor::new();
        let protocol =
            SyncProtocol::new(table.clone(), Arc::new(acceptor.clone()), ProtoConfig::default());
        let connector = protocol.connector(endpoint.clone());
        let router = Router::builder(endpoint).accept(SYNC_ALPN, protocol).spawn();
        let first = if i == 0 { FirstStart::Create } else { FirstStart::Join };
        let mut params = ServiceParams::new(
            self.library,
            node.id,
            tm,
            log,
            Arc::clone(&node.store) as Arc<dyn leadership::LeadershipStore>,
            first,
            self.members.clone(),
            table,
            acceptor,
        );
        params.config = common::test_config();
        let svc = SyncService::start(params, connector).await.unwrap();
        self.nodes[i].svc = Some(svc);
        self.nodes[i].router = Some(router);
    }

    /// Restarts node `i` on its files and its key, on a new port (the others learn the new
    /// address from the member list; node 0 dials everyone anyway, being the lowest id).
    async fn restart(&mut self, i: usize) {
        let endpoint = sync_proto::bind_loopback(Some(self.nodes[i].key.clone())).await.unwrap();
        self.members[i].addr = sync_proto::loopback_addr(&endpoint);
        for (j, n) in self.nodes.iter().enumerate() {
            if j != i
                && let Some(svc) = &n.svc
            {
                svc.set_members(self.members.clone()).unwrap();
            }
        }
        self.start_on(i, endpoint).await;
    }

    /// Stops node `i` abruptly: the service as a crash, the endpoint closed.
    async fn kill(&mut self, i: usize) {
        if let Some(svc) = self.nodes[i].svc.take() {
            svc.abort();
        }
        if let Some(router) = self.nodes[i].router.take() {
            let endpoint = router.endpoint().clone();
            let _ = router.shutdown().await;
            endpoint.close().await;
        }
    }

    fn svc(&self, i: usize) -> &SyncService {
        self.nodes[i].svc.as_ref().unwrap()
    }

    fn running(&self) -> Vec<usize> {
        (0..3).filter(|&i| self.nodes[i].svc.is_some()).collect()
    }

    async fn wait(&self, what: &str, mut f: impl AsyncFnMut() -> bool) {
        let end = tokio::time::Instant::now() + T;
        while !f().await {
            if tokio::time::Instant::now() > end {
                let states: Vec<_> = self.running().iter().map(|&i| self.svc(i).status()).collect();
                panic!("timed out waiting for {what}: {states:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn has<M: LibraryModel + 'static>(&self, i: usize, id: Uuid) -> bool {
        self.svc(i)
            .transaction_manager()
            .with(move |l| Ok(M::load(l.conn(), Id(id))?.is_some_and(|r| !r.is_tombstone())))
            .await
            .unwrap()
    }

    async fn converged(&self) -> bool {
        let mut hashes = Vec::new();
        for i in self.running() {
            let s = self.svc(i).status();
            if s.outbox_len > 0 || s.applied_seq != s.log_head.seq {
                return false;
            }
            hashes.push(format!("{:?}", self.svc(i).content_hash().await.unwrap()));
        }
        hashes.windows(2).all(|w| w[0] == w[1])
    }

    async fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|&i| self.svc(i).status().role == Role::Leader)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }
}

/// Over real iroh: a location created on A appears on B and C; a tag linked on C appears on
/// A; the leader is stopped abruptly, writes continue on the others and are sequenced by a
/// new leader; the old leader restarts on its files and converges. Every device ends with
/// the same content hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_sync_fail_over_and_recover_over_iroh() {
    let mut net = Net::new().await;
    net.wait("node 0 to lead", async || net.leader().await == Some(0)).await;

    let owner = Id(net.nodes[0].id.0);
    let location = Location::new(owner, "Photos".into(), "/home/a/Photos".into());
    let location_id = location.uuid.0;
    net.svc(0).commit(vec![Op::put(location)]).await.unwrap();
    net.wait("the location on B and C", async || {
        net.has::<Location>(1, location_id).await && net.has::<Location>(2, location_id).await
    })
    .await;

    let tag = Tag::new("holiday".into(), None);
    let meta = UserMetadata::new(None, Some("beach".into()), true, false);
    let link = UserMetadataTag::link(meta.uuid, tag.uuid);
    let link_id = link.uuid.0;
    net.svc(2).commit(vec![Op::put(tag), Op::put(meta), Op::put(link)]).await.unwrap();
    net.wait("the link on A", async || net.has::<UserMetadataTag>(0, link_id).await).await;
    net.wait("convergence", async || net.converged().await).await;

    net.kill(0).await;
    let mut written = Vec::new();
    for k in 0..5 {
        let tag = Tag::new(format!("while A is down {k}"), None);
        written.push(tag.uuid.0);
        net.svc(1 + k % 2).commit(vec![Op::put(tag)]).await.unwrap();
    }
    net.wait("a new leader", async || matches!(net.leader().await, Some(1 | 2))).await;
    net.wait("the writes sequenced", async || net.converged().await).await;

    net.restart(0).await;
    net.wait("the old leader to converge", async || {
        net.running().len() == 3 && net.converged().await
    })
    .await;
    for id in written {
        for i in 0..3 {
            assert!(net.has::<Tag>(i, id).await, "device {i} misses {id}");
        }
    }
    assert_ne!(net.svc(0).status().role, Role::Leader);
    for i in 0..3 {
        net.kill(i).await;
    }
}
