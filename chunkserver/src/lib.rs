//! The gfs-rs chunkserver: the gRPC service around the storage engine.
//!
//! - [`data_plane`]: the framed-TCP data plane on the same port: pushes
//!   along the replica chain (each server forwards pieces while still
//!   receiving them), version-fenced reads with verified checksums;
//! - [`service`]: the gRPC control plane: mutations ordered by the primary
//!   under its lease and forwarded to the secondaries, delete, clone;
//!   `service::appends` groups and pipelines record appends,
//!   `service::turns` holds each mutation at a replica until its turn;
//! - [`clone`]: copying a chunk from a peer for re-replication;
//! - [`heartbeat`]: one loop per master;
//! - [`leader_clock`]: the leader's clock, which leases are timed by;
//! - [`host`]: the kernel's counters of the server's host, on request;
//! - [`metrics`]: Prometheus metrics (`--metrics-listen`);
//! - pure decisions, tested by exact output: [`order`] (version fencing,
//!   record placement, deduplication), [`buffer`] (pushed data awaiting its
//!   mutation), [`changes`] (incremental chunk reports);
//! - [`pieces`]: recycled receive buffers for pushed pieces;
//! - [`arrivals`]: pushes being received, which early mutations wait for;
//! - [`config`]: TOML + flags.

pub mod arrivals;
pub mod buffer;
pub mod changes;
pub mod clone;
pub mod config;
pub mod data_plane;
pub mod heartbeat;
pub mod host;
pub mod leader_clock;
pub mod metrics;
pub mod order;
pub mod pieces;
pub mod service;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gfs_proto::wire::MAX_MESSAGE_BYTES;
use gfs_proto::wire::chunk::chunkserver_server::ChunkserverServer;
use gfs_storage_engine::ChunkStore;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::ChunkserverConfig;
use crate::service::{ChunkService, Shared};

/// Opens the store, serves on `listener` and heartbeats until `shutdown`.
pub async fn run(
    cfg: ChunkserverConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (store, report) = ChunkStore::open(cfg.store.clone())
        .await
        .map_err(|e| format!("opening the chunk store: {e}"))?;
    tracing::info!(
        id = cfg.id,
        addr = %cfg.advertise,
        chunks = report.chunks,
        cut = report.cut.len(),
        quarantined = report.quarantined.len(),
        "chunk store recovered"
    );
    serve(cfg, store, listener, shutdown).await
}

/// Serves `store` (opened and recovered) on `listener` and heartbeats
/// until `shutdown`. The tests' harness runs a chunkserver this way over
/// a store whose disk misbehaves on command
/// (`ChunkStore::open_with_faults`).
pub async fn serve(
    cfg: ChunkserverConfig,
    store: ChunkStore,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let metrics_at = cfg.metrics_listen;
    let token = cfg.auth_token.clone();
    let shared = Shared::new(cfg, store);
    let (registry, calls) = metrics::registry(&shared);
    let metrics = match metrics_at {
        Some(at) => {
            let l = gfs_proto::metrics::bind(at).await?;
            tracing::info!(addr = %at, "serving metrics");
            Some(tokio::spawn(gfs_proto::metrics::serve(
                l,
                Arc::new(registry),
            )))
        }
        None => None,
    };
    let beats = heartbeat::spawn(shared.clone());
    let trimmer = tokio::spawn(trim_pools_forever(shared.clone()));
    let svc = ChunkserverServer::new(ChunkService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // One port for both planes: the acceptor keeps data-plane connections
    // and hands the rest to tonic.
    let (grpc_tx, grpc_rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio::spawn(data_plane::accept(shared.clone(), listener, grpc_tx));
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(calls)
        .layer(gfs_proto::auth::RequireToken(token))
        .add_service(svc)
        .serve_with_incoming_shutdown(ReceiverStream::new(grpc_rx), shutdown)
        .await
        .map_err(|e| format!("serving: {e}"));
    acceptor.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    for b in beats {
        b.abort();
    }
    trimmer.abort();
    tracing::info!("chunkserver stopped");
    result
}

/// Keeps the pools of deleted chunks' files within what the filesystems
/// have free (`ChunkStore::trim_pools`), once a heartbeat period: a
/// server that creates nothing must still give way to others filling a
/// filesystem it shares.
async fn trim_pools_forever(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(shared.cfg.heartbeat_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        shared.store.trim_pools().await;
    }
}
