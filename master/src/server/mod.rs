//! The `gfs-master` server: configuration, the Raft network, the services,
//! and [`run`], which ties them to one listening socket.

pub mod admin;
pub mod batch;
pub mod chunkservers;
pub mod config;
pub mod duties;
pub mod fsck;
pub mod grant;
pub mod meta;
pub mod network;
pub mod node;
pub mod soft;
pub mod versions;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gfs_proto::wire::MAX_MESSAGE_BYTES;
use gfs_proto::wire::master::master_admin_server::MasterAdminServer;
use gfs_proto::wire::master::master_chunkserver_server::MasterChunkserverServer;
use gfs_proto::wire::master::master_meta_server::MasterMetaServer;
use gfs_proto::wire::master::raft_server::RaftServer;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use config::MasterConfig;
pub use node::Node;

/// Builds the openraft config from the timings.
fn raft_config(cfg: &MasterConfig) -> Result<openraft::Config, String> {
    let c = openraft::Config {
        cluster_name: "gfs".into(),
        heartbeat_interval: cfg.raft.heartbeat_ms,
        election_timeout_min: cfg.raft.election_min_ms,
        election_timeout_max: cfg.raft.election_max_ms,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_every_entries),
        max_in_snapshot_log_to_keep: cfg.raft.snapshot_every_entries.min(1000),
        ..Default::default()
    };
    c.validate().map_err(|e| e.to_string())
}

/// Opens the store, starts Raft and serves every service on `listener`
/// until `shutdown` resolves; then, if this master leads, hands leadership
/// to another voter before stopping.
pub async fn run(
    cfg: MasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.data_dir.display()))?;
    let (log, sm) = crate::store::open(&cfg.data_dir.join("raft"), cfg.chunk_size_bytes)
        .map_err(|e| format!("opening the master store: {e}"))?;
    let applied = sm.applied();
    let net = network::Network::new(Some(cfg.listen.ip()));
    let raft = Raft::new(cfg.id, Arc::new(raft_config(&cfg)?), net, log, sm)
        .await
        .map_err(|e| format!("starting raft: {e}"))?;
    let node = Arc::new(Node {
        cfg: cfg.clone(),
        raft: raft.clone(),
        applied,
        soft: Mutex::new(soft::Soft::default()),
        chunkservers: versions::Chunkservers::from_address(cfg.listen.ip()),
        duties: duties::Duties::default(),
        reads: node::ReadRounds::default(),
        grants: tokio::sync::Mutex::new(()),
        proposer: batch::Proposer::start(raft.clone()),
        started_ms: node::now_ms(),
    });
    bootstrap(&node).await?;
    let background = tokio::spawn(duties::run(node.clone()));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .add_service(
            MasterMetaServer::new(meta::MetaService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MasterChunkserverServer::new(chunkservers::ChunkserverService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            MasterAdminServer::new(admin::AdminService { node: node.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            RaftServer::new(network::RaftService { raft: raft.clone() })
                .max_decoding_message_size(MAX_MESSAGE_BYTES * 8),
        )
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY on accepted sockets, replies wait out the
            // peer's 40 ms delayed ACK (tonic applies the builder's
            // nodelay only to listeners it binds itself).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    let server = tokio::spawn(serve);
    tracing::info!(id = cfg.id, listen = %cfg.listen, "master serving");
    shutdown.await;
    tracing::info!("shutting down");
    if node.is_leader()
        && let Some(target) = admin::successor(&node)
    {
        match admin::hand_over(&node, target, Duration::from_secs(5)).await {
            Ok(()) => tracing::info!(to = target, "leadership handed over"),
            Err(e) => tracing::warn!("leadership hand-over failed: {}", e.message()),
        }
    }
    background.abort();
    let _ = stop_tx.send(());
    let _ = raft.shutdown().await;
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("server: {e}")),
        Err(e) => Err(format!("server task: {e}")),
    }
}

/// A fresh cluster is initialised by its lowest-id master with every peer
/// as a voter; the others wait to be contacted. A master with a store is
/// never initialised again, and one whose store was wiped first asks the
/// peers: if any of them already belongs to a cluster, it waits to be
/// brought back by the leader (log replay or snapshot) instead of starting
/// a rival cluster.
async fn bootstrap(node: &Node) -> Result<(), String> {
    let initialized = node
        .raft
        .is_initialized()
        .await
        .map_err(|e| format!("raft: {e}"))?;
    let first = node.cfg.peers.keys().next().copied();
    if initialized || first != Some(node.cfg.id) {
        return Ok(());
    }
    if let Some(peer) = peer_in_cluster(node).await {
        tracing::info!("master {peer} already belongs to a cluster; waiting to be caught up");
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = node
        .cfg
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    match node.raft.initialize(members).await {
        Ok(()) => tracing::info!("initialised a new cluster of {:?}", node.cfg.peers),
        Err(e) => tracing::info!("not initialising: {e}"),
    }
    Ok(())
}

/// A peer that answers with a term: a cluster exists already.
async fn peer_in_cluster(node: &Node) -> Option<u64> {
    use gfs_proto::wire::master::Empty;
    use gfs_proto::wire::master::master_admin_client::MasterAdminClient;
    for (id, addr) in &node.cfg.peers {
        if *id == node.cfg.id {
            continue;
        }
        let Ok(ch) = network::channel(addr, Some(node.cfg.listen.ip())) else {
            continue;
        };
        let mut c = MasterAdminClient::new(ch);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(1), c.status(Empty {})).await
            && s.get_ref().term > 0
        {
            return Some(*id);
        }
    }
    None
}
