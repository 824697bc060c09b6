//! A cluster of devices running `SyncService` over the in-memory network, for scenario tests.
//!
//! Every device has its own temporary directory with its library database and sync log, so a
//! device can be killed (`abort`: as a crash) and restarted on its files. Waits are on
//! conditions with a deadline, never sleeps. The seed of every run is printed.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iroh::{EndpointAddr, EndpointId, SecretKey};
use leadership::MemoryStore;
use library_models::Tag;
use sync_log::{DeviceId, LibraryId, OriginKey, Seq, SyncLog};
use sync_proto::{Faults, MemberTable, MemoryNetwork, ProtoConfig};
use sync_service::{Acceptor, Config, FirstStart, Member, Role, ServiceParams, SyncService};
use tempfile::TempDir;
use txn_manager::{Op, TransactionManager};
use uuid::Uuid;

/// Leadership timing for tests: H = 100 ms, L = 600 ms (claim window 25 ms).
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.leadership =
        leadership::Config::new(Duration::from_millis(100), Duration::from_millis(600)).unwrap();
    c.tick = Duration::from_millis(50);
    c.resend_after = Duration::from_millis(300);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(300);
    c
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The seed of a run: `SYNC_SEED` if set, else a fixed default per test; printed.
pub fn seed(default: u64) -> u64 {
    let seed = std::env::var("SYNC_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    eprintln!("seed {seed} (replay with SYNC_SEED={seed})");
    seed
}

pub struct Device {
    pub id: DeviceId,
    pub endpoint: EndpointId,
    pub dir: TempDir,
    pub store: Arc<MemoryStore>,
    pub svc: Option<SyncService>,
    /// The device's sync log, while it runs (the service holds the same one).
    pub log: Option<SyncLog>,
    pub creator: bool,
}

pub struct Cluster {
    pub net: MemoryNetwork,
    pub library: LibraryId,
    pub devices: Vec<Device>,
    pub config: Config,
    pub seed: u64,
    /// Every write acknowledged by `commit` (tag ids), to check none is lost.
    pub acknowledged: Vec<Uuid>,
    /// The members each device's host names at start (`None`: every device).
    pub named: Vec<Option<Vec<usize>>>,
}

impl Cluster {
    /// `n` devices; device 0 created the library and leads epoch 1. Devices are ordered by id.
    pub async fn new(n: usize, seed: u64) -> Self {
        Self::with_config(n, seed, test_config()).await
    }

    pub async fn with_config(n: usize, seed: u64, config: Config) -> Self {
        Self::with_named(n, seed, config, vec![None; n]).await
    }

    /// Like [`Cluster::with_config`], device `i`'s host naming the devices `named[i]` (every
    /// device for `None`) as members at start.
    pub async fn with_named(
        n: usize,
        seed: u64,
        config: Config,
        named: Vec<Option<Vec<usize>>>,
    ) -> Self {
        init_tracing();
        let net = MemoryNetwork::new(seed);
        let library = LibraryId(Uuid::from_u128(0x1b_0000 + u128::from(seed)));
        let devices = (0..n)
            .map(|i| Device {
                id: DeviceId(Uuid::from_u128(0xd000 + i as u128)),
                endpoint: SecretKey::from_bytes(&[i as u8 + 1; 32]).public(),
                dir: tempfile::tempdir().unwrap(),
                store: Arc::new(MemoryStore::new()),
                svc: None,
                log: None,
                creator: i == 0,
            })
            .collect();
        let mut cluster =
            Self { net, library, devices, config, seed, acknowledged: Vec::new(), named };
        for i in 0..n {
            cluster.start(i).await;
        }
        cluster
    }

    /// The members device `i`'s host names.
    pub fn named_by(&self, i: usize) -> Vec<Member> {
        match self.named.get(i).cloned().flatten() {
            Some(list) => list.into_iter().map(|j| self.member(j)).collect(),
            None => self.members(),
        }
    }

    pub fn member(&self, i: usize) -> Member {
        Member { device: self.devices[i].id, addr: EndpointAddr::new(self.devices[i].endpoint) }
    }

    /// A device row for device `i`, paired with its endpoint id.
    pub fn device_row(&self, i: usize) -> library_models::Device {
        library_models::Device::with_id(
            library_models::Id(self.devices[i].id.0),
            format!("device {i}"),
            "test".into(),
            self.devices[i].endpoint.as_bytes().to_vec(),
        )
    }

    pub fn members(&self) -> Vec<Member> {
        self.devices
            .iter()
            .map(|d| Member { device: d.id, addr: EndpointAddr::new(d.endpoint) })
            .collect()
    }

    fn paths(&self, i: usize) -> (PathBuf, PathBuf) {
        let dir = self.devices[i].dir.path();
        (dir.join("library.db"), dir.join("sync.db"))
    }

    /// Starts (or restarts, on its files) device `i`.
    pub async fn start(&mut self, i: usize) {
        let (lib_path, log_path) = self.paths(i);
        let d = &self.devices[i];
        let log = SyncLog::open_or_create(log_path, self.library).await.unwrap();
        let log_handle = log.clone();
        let registry = syncable::Registry::from_inventory().unwrap();
        let tm = TransactionManager::open(
            lib_path,
            log.clone(),
            d.id,
            registry,
            txn_manager::Config::default(),
        )
        .await
        .unwrap();
        let table = MemberTable::new();
        let acceptor = Acceptor::new();
        let connector = self.net.add_node(
            d.endpoint,
            table.clone(),
            Arc::new(acceptor.clone()),
            ProtoConfig::default(),
        );
        let first = if d.creator { FirstStart::Create } else { FirstStart::Join };
        let mut params = ServiceParams::new(
            self.library,
            d.id,
            tm,
            log,
            Arc::clone(&d.store) as Arc<dyn leadership::LeadershipStore>,
            first,
            self.named_by(i),
            table,
            acceptor,
        );
        params.config = self.config.clone();
        params.seed = self.seed.wrapping_add(i as u64);
        let svc = SyncService::start(params, connector).await.unwrap();
        self.devices[i].svc = Some(svc);
        self.devices[i].log = Some(log_handle);
    }

    pub fn svc(&self, i: usize) -> &SyncService {
        self.devices[i].svc.as_ref().expect("device is running")
    }

    /// Kills device `i` as a crash would (nothing flushed), and removes it from the network.
    pub fn kill(&mut self, i: usize) {
        if let Some(svc) = self.devices[i].svc.take() {
            svc.abort();
        }
        self.devices[i].log = None;
        self.net.remove_node(&self.devices[i].endpoint);
    }

    /// Shuts device `i` down cleanly.
    pub async fn stop(&mut self, i: usize) {
        if let Some(svc) = self.devices[i].svc.take() {
            svc.shutdown().await.unwrap();
        }
        self.devices[i].log = None;
        self.net.remove_node(&self.devices[i].endpoint);
    }

    /// Only devices in the same group can talk (sessions across groups are cut).
    pub fn partition(&self, groups: &[&[usize]]) {
        let n = self.devices.len();
        let group = |i: usize| groups.iter().position(|g| g.contains(&i));
        for a in 0..n {
            for b in a + 1..n {
                let (ea, eb) = (self.devices[a].endpoint, self.devices[b].endpoint);
                if group(a).is_some() && group(a) == group(b) {
                    self.net.heal(ea, eb);
                } else {
                    self.net.partition(ea, eb);
                }
            }
        }
    }

    pub fn heal(&self) {
        let n = self.devices.len();
        for a in 0..n {
            for b in a + 1..n {
                self.net.heal(self.devices[a].endpoint, self.devices[b].endpoint);
            }
        }
    }

    pub fn set_faults(&self, from: usize, to: usize, faults: Faults) {
        self.net.set_faults(self.devices[from].endpoint, self.devices[to].endpoint, faults);
    }

    /// The same faults on every link, both ways.
    pub fn set_faults_everywhere(&self, faults: Faults) {
        let n = self.devices.len();
        for a in 0..n {
            for b in (0..n).filter(|&b| b != a) {
                self.set_faults(a, b, faults);
            }
        }
    }

    /// Commits one new tag on device `i`; remembers it as acknowledged.
    pub async fn write(&mut self, i: usize, name: &str) -> Uuid {
        let tag = Tag::new(name.into(), None);
        let id = tag.uuid.0;
        self.svc(i).commit(vec![Op::put(tag)]).await.unwrap();
        self.acknowledged.push(id);
        id
    }

    /// Commits `count` tags in one transaction on device `i`; returns their ids.
    pub async fn write_many(&mut self, i: usize, count: usize) -> Vec<Uuid> {
        let tags: Vec<Tag> = (0..count).map(|k| Tag::new(format!("t{k}"), None)).collect();
        let ids: Vec<Uuid> = tags.iter().map(|t| t.uuid.0).collect();
        self.svc(i).commit(tags.into_iter().map(Op::put).collect()).await.unwrap();
        self.acknowledged.extend(ids.iter().copied());
        ids
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.devices.len()).filter(|&i| self.devices[i].svc.is_some()).collect()
    }

    /// Waits until `f` holds (checked every 20 ms), or panics after `deadline` with `what`.
    pub async fn wait_for<F, Fut>(&self, what: &str, deadline: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if f().await {
                return;
            }
            if tokio::time::Instant::now() > end {
                panic!("seed {}: timed out waiting for {what}\n{}", self.seed, self.describe());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (i, d) in self.devices.iter().enumerate() {
            match &d.svc {
                Some(svc) => {
                    let s = svc.status();
                    out += &format!(
                        "  device {i}: {:?} epoch {} leader {:?} applied {} head {} leader_seq {} outbox {} resubmit {} rewinds {} state {:?} err {:?}\n",
                        s.role,
                        s.epoch,
                        s.leader.map(|l| self.index_of(l)),
                        s.applied_seq,
                        s.log_head.seq,
                        s.leader_seq,
                        s.outbox_len,
                        s.resubmit_len,
                        s.rewinds,
                        s.state,
                        s.last_error
                    );
                }
                None => out += &format!("  device {i}: down\n"),
            }
        }
        out
    }

    pub fn index_of(&self, id: DeviceId) -> usize {
        self.devices.iter().position(|d| d.id == id).unwrap_or(usize::MAX)
    }

    /// The running device that leads (and may sequence), if exactly one does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .running()
            .into_iter()
            .filter(|&i| self.svc(i).status().role == Role::Leader)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    pub async fn wait_leader(&self, deadline: Duration) -> usize {
        self.wait_for("one leader followed by all", deadline, || async {
            let Some(l) = self.leader() else { return false };
            let id = self.devices[l].id;
            self.running().iter().all(|&i| self.svc(i).status().leader == Some(id))
        })
        .await;
        self.leader().unwrap()
    }

    /// Waits until `devices` hold the same log head and have nothing left to send (the
    /// others may be cut off).
    pub async fn wait_synced(&self, devices: &[usize], deadline: Duration) {
        self.wait_for("the devices to sync", deadline, || async {
            let statuses: Vec<_> = devices.iter().map(|&i| self.svc(i).status()).collect();
            statuses.iter().all(|s| s.outbox_len == 0 && s.log_head == statuses[0].log_head)
        })
        .await;
    }

    /// Every running device: same content hash, nothing waiting to be sent, same head.
    pub async fn converged(&self) -> bool {
        let running = self.running();
        let mut hashes = BTreeSet::new();
        let mut heads = BTreeSet::new();
        for &i in &running {
            let s = self.svc(i).status();
            if s.outbox_len > 0 || s.resubmit_len > 0 || s.applied_seq != s.log_head.seq {
                return false;
            }
            heads.insert(format!("{:?}", s.log_head));
            match self.svc(i).content_hash().await {
                Ok(h) => {
                    hashes.insert(format!("{h:?}"));
                }
                Err(_) => return false,
            }
        }
        hashes.len() == 1 && heads.len() == 1
    }

    pub async fn wait_converged(&self, deadline: Duration) {
        self.wait_for("equal content hashes and empty outboxes", deadline, || self.converged())
            .await;
    }

    /// Every acknowledged write is present on every running device.
    pub async fn assert_all_present(&self) {
        for &i in &self.running() {
            let ids = self.acknowledged.clone();
            let missing: Vec<Uuid> = self
                .svc(i)
                .transaction_manager()
                .with(move |l| {
                    let mut missing = Vec::new();
                    for id in ids {
                        use library_models::LibraryModel;
                        if Tag::load(l.conn(), library_models::Id(id))?.is_none() {
                            missing.push(id);
                        }
                    }
                    Ok(missing)
                })
                .await
                .unwrap();
            assert!(
                missing.is_empty(),
                "seed {}: device {i} misses {} acknowledged writes (e.g. {:?})\n{}",
                self.seed,
                missing.len(),
                missing.first(),
                self.describe()
            );
        }
    }

    /// How many times each origin key appears in running device `i`'s log (read through the
    /// log's own API, from seq 0).
    pub async fn origin_counts(&self, i: usize) -> BTreeMap<OriginKey, usize> {
        let log = self.devices[i].log.as_ref().expect("device is running");
        let mut counts = BTreeMap::new();
        let mut after = Seq(0);
        loop {
            let page = log.read_after(after, 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            for entry in &page {
                *counts.entry(entry.change.origin).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Device `i`'s log holds every origin key any running device has handed out — each
    /// device's keys `1..=` its last — exactly once, and no other.
    pub async fn assert_each_origin_sequenced_once(&self, i: usize) {
        let mut expected = BTreeMap::new();
        for &d in &self.running() {
            let last =
                self.svc(d).transaction_manager().with(|l| Ok(l.origin_seq())).await.unwrap();
            for seq in 1..=last {
                expected.insert(OriginKey { device: self.devices[d].id, seq }, 1);
            }
        }
        let counts = self.origin_counts(i).await;
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "seed {}: sequenced more than once: {twice:?}", self.seed);
        assert_eq!(
            counts,
            expected,
            "seed {}: device {i}'s log versus the origin keys
{}",
            self.seed,
            self.describe()
        );
    }

    pub fn total_rewinds(&self) -> u64 {
        self.running().iter().map(|&i| self.svc(i).status().rewinds).sum()
    }

    pub async fn shutdown_all(&mut self) {
        for i in 0..self.devices.len() {
            self.stop(i).await;
        }
    }
}
