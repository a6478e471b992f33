//! The gfs-rs chunkserver: the gRPC service around the storage engine.
//!
//! - [`service`]: push along the replica chain (each server forwards frames
//!   while still receiving them), mutations ordered by the primary under its
//!   lease and forwarded to the secondaries, version-fenced reads with
//!   verified checksums, delete;
//! - [`clone`]: copying a chunk from a peer for re-replication;
//! - [`heartbeat`]: one loop per master;
//! - pure decisions, tested by exact output: [`order`] (version fencing,
//!   record placement, deduplication), [`buffer`] (pushed data awaiting its
//!   mutation), [`changes`] (incremental chunk reports);
//! - [`config`]: TOML + flags.

pub mod buffer;
pub mod changes;
pub mod clone;
pub mod config;
pub mod heartbeat;
pub mod order;
pub mod service;

use std::future::Future;

use gfs_proto::wire::MAX_MESSAGE_BYTES;
use gfs_proto::wire::chunk::chunkserver_server::ChunkserverServer;
use gfs_storage_engine::ChunkStore;
use tonic::transport::server::TcpIncoming;

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
    let shared = Shared::new(cfg, store);
    let beats = heartbeat::spawn(shared.clone());
    let svc = ChunkserverServer::new(ChunkService {
        shared: shared.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let result = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY on accepted sockets, replies wait out the
            // peer's 40 ms delayed ACK (tonic applies the builder's
            // nodelay only to listeners it binds itself).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .map_err(|e| format!("serving: {e}"));
    for b in beats {
        b.abort();
    }
    tracing::info!("chunkserver stopped");
    result
}
