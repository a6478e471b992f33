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
pub mod metrics;
pub mod network;
pub mod node;
mod outage;
pub mod reach;
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

use crate::store::TypeConfig;

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

/// The first wait out of service after a run of the master ended with its
/// store failing, doubled after every start that failed again, up to
/// [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(4);

/// How often an unchanged reason for being out of service is logged.
const SAY_AGAIN: Duration = Duration::from_secs(60);

/// How long a stopping server may take to finish the calls in flight.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How one start of the master ended.
enum Ended {
    /// `shutdown` resolved.
    Stopped,
    /// The store failed under Raft (a full disk, an I/O error): Raft has
    /// stopped, and the services with it.
    StoreFailed(String),
}

/// Serves this master on `listener` until `shutdown` resolves; then, if it
/// leads, hands leadership to another voter before stopping.
///
/// A store that fails once the master has started (a full disk, an I/O
/// error: R11) stops Raft, and a stopped Raft would leave a master that
/// answers but never serves again. Instead the master closes its services,
/// answers every call with `UNAVAILABLE` naming the failure (`outage`),
/// and starts again from its store every [`RETRY_MIN`] to [`RETRY_MAX`],
/// as a restarted process would: the log on disk and the leader bring it
/// back up to date, so space freed on a full disk is all it takes. A start
/// that fails before the master ever served (a bad directory, a store it
/// cannot open) is returned as an error.
pub async fn run(
    cfg: MasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let metrics = metrics::Metrics::new();
    // Dropping the set (whenever `run` returns) stops the endpoint.
    let mut endpoint = tokio::task::JoinSet::new();
    if let Some(at) = cfg.metrics_listen {
        let l = gfs_proto::metrics::bind(at).await?;
        tracing::info!(addr = %at, "serving metrics");
        endpoint.spawn(gfs_proto::metrics::serve(l, metrics.registry.clone()));
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut listener = Some(listener);
    let mut served = false;
    let mut retry = RETRY_MIN;
    let mut said: Option<(String, tokio::time::Instant)> = None;
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => bind(cfg.listen).await?,
        };
        let started = tokio::time::Instant::now();
        let why = match serve(&cfg, &metrics, l, shutdown.as_mut(), &mut served).await {
            Ok(Ended::Stopped) => return Ok(()),
            Ok(Ended::StoreFailed(why)) => why,
            Err(e) if served => e,
            Err(e) => return Err(e),
        };
        // A start that held for a while earns a quick retry; one that
        // failed again at once (the disk is still full) a longer wait.
        if started.elapsed() > RETRY_MAX * 2 {
            retry = RETRY_MIN;
        }
        let why = format!("master {} is out of service: {why}", cfg.id);
        // Once a minute while nothing changes, not at every retry.
        if said
            .as_ref()
            .is_none_or(|(w, at)| *w != why || at.elapsed() >= SAY_AGAIN)
        {
            tracing::error!("{why}; starting again from its store every {RETRY_MAX:?} at most");
            said = Some((why.clone(), tokio::time::Instant::now()));
        }
        if outage::refuse_for(cfg.listen, &why, retry, shutdown.as_mut()).await? {
            return Ok(());
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Binds `addr`, waiting a little for a server of this process that just
/// stopped to let go of it.
async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    let mut tries = 0;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("binding {addr}: {e}")),
        }
    }
}

/// Waits for a server told to stop to finish the calls in flight, for
/// [`STOP_WAIT`] at most; then drops it with its connections.
async fn stop_server<E: std::fmt::Display>(
    server: &mut tokio::task::JoinHandle<Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(STOP_WAIT, &mut *server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("server: {e}")),
        Ok(Err(e)) => Err(format!("server task: {e}")),
        Err(_) => {
            server.abort();
            let _ = (&mut *server).await;
            Ok(())
        }
    }
}

/// The reason Raft stopped, once it has.
async fn raft_stopped(raft: &Raft<TypeConfig>) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(e) = &metrics.borrow_and_update().running_state {
            return e.to_string();
        }
        if metrics.changed().await.is_err() {
            return "Raft stopped".into();
        }
    }
}

/// One start of the master: opens the store, starts Raft and serves every
/// service on `listener` until `shutdown` resolves or the store fails.
/// `served` is set once the services are up.
async fn serve(
    cfg: &MasterConfig,
    metrics: &metrics::Metrics,
    listener: TcpListener,
    shutdown: std::pin::Pin<&mut (impl Future<Output = ()> + ?Sized)>,
    served: &mut bool,
) -> Result<Ended, String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.data_dir.display()))?;
    let (log, sm) = crate::store::open(&cfg.data_dir.join("raft"), cfg.chunk_size_bytes)
        .map_err(|e| format!("opening the master store: {e}"))?;
    let applied = sm.applied();
    let net = network::Network::new(Some(cfg.listen.ip()), cfg.auth_token.clone());
    let raft = Raft::new(cfg.id, Arc::new(raft_config(cfg)?), net, log, sm)
        .await
        .map_err(|e| format!("starting raft: {e}"))?;
    let node = Arc::new(Node {
        cfg: cfg.clone(),
        raft: raft.clone(),
        applied,
        soft: Mutex::new(soft::Soft::default()),
        chunkservers: versions::Chunkservers::from_address(cfg.listen.ip(), cfg.auth_token.clone()),
        duties: duties::Duties::default(),
        reads: node::ReadRounds::default(),
        grants: tokio::sync::Mutex::new(()),
        revoking: Mutex::default(),
        proposer: batch::Proposer::start(raft.clone()),
        started_ms: node::now_ms(),
    });
    metrics.serve_from(&node);
    if let Err(e) = bootstrap(&node).await {
        let _ = raft.shutdown().await;
        return Err(e);
    }
    let background = tokio::spawn(duties::run(node.clone()));
    let reach = tokio::spawn(reach::run(node.clone()));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .layer(metrics.calls.clone())
        .layer(gfs_proto::auth::RequireToken(cfg.auth_token.clone()))
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
    let mut server = tokio::spawn(serve);
    *served = true;
    tracing::info!(id = cfg.id, listen = %cfg.listen, "master serving");
    let ended = tokio::select! {
        () = shutdown => Ended::Stopped,
        why = raft_stopped(&raft) => Ended::StoreFailed(why),
    };
    if let Ended::Stopped = ended {
        tracing::info!("shutting down");
        if node.is_leader()
            && let Some(target) = admin::successor(&node)
        {
            match admin::hand_over(&node, target, Duration::from_secs(5)).await {
                Ok(()) => tracing::info!(to = target, "leadership handed over"),
                Err(e) => tracing::warn!("leadership hand-over failed: {}", e.message()),
            }
        }
    }
    background.abort();
    let _ = background.await;
    reach.abort();
    let _ = reach.await;
    let _ = stop_tx.send(());
    let stopped = stop_server(&mut server).await;
    let _ = raft.shutdown().await;
    match ended {
        Ended::Stopped => stopped.map(|()| Ended::Stopped),
        failed => Ok(failed),
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
        let Ok(ch) = network::channel(
            addr,
            Some(node.cfg.listen.ip()),
            node.cfg.auth_token.as_ref(),
        ) else {
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
