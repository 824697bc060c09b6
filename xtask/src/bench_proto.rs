//! `cargo xtask bench proto`: the sync protocol over real iroh endpoints on loopback, against
//! a bare iroh stream carrying the same bytes, in one run.
//!
//! - Round trips: 64-byte `Ping` → `Pong` through the framing and a session, after a warm-up;
//!   p50 and p99 of `ROUND_TRIPS` samples.
//! - Throughput: `TOTAL_MIB` MiB as 1 MiB `SnapshotChunk` frames, then a ping whose pong
//!   proves every byte was decoded; versus the same bytes written as 1 MiB chunks on a bare
//!   bi-stream (new connection on a raw ALPN) read to its end and answered with one byte.
//!   Best of `ROUNDS` for each side, alternating.
//!
//! Both sides use the protocol's QUIC transport settings (`sync_proto::transport_config`: one
//! bidirectional stream, the default stream and connection receive windows), the bare stream
//! included, and the window sizes are printed with the figures. For reference, the bare stream
//! is also measured against an endpoint with iroh's default transport settings (1.25 MB stream
//! window, no connection cap, 100 + 100 streams): what the bounded windows cost.
//!
//! Figures mean something only in release: `cargo run --release -p xtask -- bench proto`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use iroh::endpoint::Connection;
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use sync_log::{DeviceId, Epoch, LibraryId, Position};
use sync_proto::{
    Connector, IrohConnector, LocalState, MemberTable, Message, Ping, Pong, ProtoConfig, SYNC_ALPN,
    Session, SessionHandler, SnapshotChunk, SyncProtocol,
};

/// The settings measured: the defaults every node uses.
fn config() -> ProtoConfig {
    ProtoConfig::default()
}

const RAW_ALPN: &[u8] = b"library-sync/bench-raw/0";
const WARMUP: usize = 1_000;
const ROUND_TRIPS: usize = 10_000;
const CHUNK: usize = 1024 * 1024;
const TOTAL_MIB: usize = 256;
const ROUNDS: usize = 5;
const DONE: u64 = u64::MAX;

pub(crate) fn run() -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: debug build; for real figures run `cargo run --release -p xtask -- bench proto`"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(bench())
}

/// Answers pings with pongs and swallows snapshot chunks.
struct Echo {
    state: LocalState,
}

impl SessionHandler for Echo {
    fn local_state(&self, library: &LibraryId) -> Option<LocalState> {
        (*library == self.state.library).then(|| self.state.clone())
    }

    async fn serve(&self, mut session: Session) {
        while let Ok(Some(msg)) = session.recv().await {
            if let Message::Ping(Ping { nonce, payload }) = msg
                && session.send(&Message::Pong(Pong { nonce, payload })).await.is_err()
            {
                break;
            }
        }
    }
}

/// Reads a bare stream to its end, then answers with one byte.
#[derive(Debug)]
struct RawSink;

impl ProtocolHandler for RawSink {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let mut total = 0usize;
        while let Some(chunk) = recv.read_chunk(usize::MAX).await.map_err(AcceptError::from_err)? {
            total += chunk.len();
        }
        send.write_all(&[u8::from(total == TOTAL_MIB * CHUNK)])
            .await
            .map_err(AcceptError::from_err)?;
        send.finish().map_err(AcceptError::from_err)?;
        connection.closed().await;
        Ok(())
    }
}

fn state(library: LibraryId, device: DeviceId) -> LocalState {
    LocalState {
        library,
        device,
        epoch: Epoch(1),
        position: Position::default(),
        models: vec!["tag".into()],
    }
}

async fn bench() -> anyhow::Result<()> {
    let library = LibraryId::new_v7();
    let (server_device, client_device) = (DeviceId::new_v7(), DeviceId::new_v7());
    let config = config();
    let server_ep = sync_proto::bind_loopback_with(None, &config).await?;
    let client_ep = sync_proto::bind_loopback_with(None, &config).await?;

    let server_members = MemberTable::new();
    server_members.add(library, client_ep.id(), client_device);
    let client_members = MemberTable::new();
    client_members.add(library, server_ep.id(), server_device);

    let echo = Arc::new(Echo { state: state(library, server_device) });
    let protocol = SyncProtocol::new(server_members, echo, config.clone());
    let router = Router::builder(server_ep.clone())
        .accept(SYNC_ALPN, protocol)
        .accept(RAW_ALPN, RawSink)
        .spawn();
    let server_addr = sync_proto::loopback_addr(&server_ep);

    // Reference: a bare stream to an endpoint with iroh's default transport settings.
    let default_ep = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0")
        .context("bind address")?
        .bind()
        .await
        .context("bind the reference endpoint")?;
    let default_router = Router::builder(default_ep.clone()).accept(RAW_ALPN, RawSink).spawn();
    let default_addr = sync_proto::loopback_addr(&default_ep);

    let dialer = IrohConnector::new(client_ep.clone(), client_members, config.clone());
    let mut session = dialer.connect(server_addr.clone(), state(library, client_device)).await?;

    // Round trips.
    let payload = Bytes::from(vec![0x5A; 64]);
    for n in 0..WARMUP {
        ping(&mut session, n as u64, &payload).await?;
    }
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for n in 0..ROUND_TRIPS {
        let start = Instant::now();
        ping(&mut session, n as u64, &payload).await?;
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];

    // Throughput, alternating sides, best of each.
    let chunk = Bytes::from(vec![0xC3; CHUNK]);
    let (mut best_proto, mut best_raw) = (Duration::MAX, Duration::MAX);
    let mut best_default = Duration::MAX;
    for _ in 0..ROUNDS {
        best_proto = best_proto.min(proto_transfer(&mut session, &chunk).await?);
        best_raw = best_raw.min(raw_transfer(&client_ep, &server_addr, &chunk).await?);
        best_default = best_default.min(raw_transfer(&client_ep, &default_addr, &chunk).await?);
    }
    let mib_s = |d: Duration| TOTAL_MIB as f64 / d.as_secs_f64();
    let (proto, raw, default) = (mib_s(best_proto), mib_s(best_raw), mib_s(best_default));

    drop(session);
    router.shutdown().await.context("router shutdown")?;
    default_router.shutdown().await.context("reference router shutdown")?;
    client_ep.close().await;

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("bench: stream_window_kib = {}", config.stream_window / 1024);
    println!("bench: connection_window_kib = {}", config.connection_window / 1024);
    println!(
        "bench: rounds = {ROUND_TRIPS} round trips after {WARMUP} warm-up; {TOTAL_MIB} MiB in 1 MiB frames, best of {ROUNDS}"
    );
    println!("bench: rtt_p50_us = {:.1}", us(pct(50)));
    println!("bench: rtt_p99_us = {:.1}", us(pct(99)));
    println!("bench: proto_throughput_mib_s = {proto:.0}");
    println!("bench: raw_stream_throughput_mib_s = {raw:.0}");
    println!("bench: proto_vs_raw = {:.2}", proto / raw);
    println!("bench: raw_stream_default_windows_throughput_mib_s = {default:.0}");
    println!("bench: bounded_vs_default_windows = {:.2}", raw / default);
    Ok(())
}

async fn ping(session: &mut Session, nonce: u64, payload: &Bytes) -> anyhow::Result<()> {
    session.send(&Message::Ping(Ping { nonce, payload: payload.clone() })).await?;
    match session.recv().await? {
        Some(Message::Pong(pong)) if pong.nonce == nonce => Ok(()),
        other => bail!("expected pong {nonce}, got {other:?}"),
    }
}

async fn proto_transfer(session: &mut Session, chunk: &Bytes) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for i in 0..TOTAL_MIB {
        let msg = SnapshotChunk { offset: (i * CHUNK) as u64, data: chunk.clone() };
        session.send(&Message::SnapshotChunk(msg)).await?;
    }
    ping(session, DONE, &Bytes::new()).await?;
    Ok(start.elapsed())
}

async fn raw_transfer(
    endpoint: &iroh::Endpoint,
    addr: &iroh::EndpointAddr,
    chunk: &Bytes,
) -> anyhow::Result<Duration> {
    let conn = endpoint.connect(addr.clone(), RAW_ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let start = Instant::now();
    for _ in 0..TOTAL_MIB {
        send.write_all(chunk).await?;
    }
    send.finish()?;
    let mut ok = [0u8; 1];
    recv.read_exact(&mut ok).await?;
    let elapsed = start.elapsed();
    conn.close(0u32.into(), b"done");
    if ok[0] != 1 {
        bail!("raw sink did not receive every byte");
    }
    Ok(elapsed)
}
