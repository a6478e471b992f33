//! `gfs-master`: one master of a gfs-rs cluster.

use std::path::PathBuf;

use clap::Parser;
use gfs_master::server::config::{ConfigFile, parse_peer};

/// A gfs-rs master. Three of them, each listing all three as peers, form a
/// Raft-replicated cluster; the lowest id initialises it on first start.
///
/// Start a 3-master cluster by hand:
///
///   gfs-master --id 1 --listen 127.0.0.1:7001 --data-dir m1 \
///       --peer 1=127.0.0.1:7001 --peer 2=127.0.0.1:7002 --peer 3=127.0.0.1:7003
///
///   (the same with --id 2 --listen 127.0.0.1:7002 --data-dir m2, and 3)
///
/// or put the same settings in a TOML file (`id`, `listen`, `data_dir`,
/// `metrics_listen`, `auth_token_file`, `[peers]`, `[raft]`, `[chunks]`, `[duties]`) and pass
/// `--config`. Flags win.
#[derive(Debug, Parser)]
#[command(name = "gfs-master", version, verbatim_doc_comment)]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This master's id (positive, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Address to serve clients, chunkservers and peers on.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory of the Raft log and state machine (RocksDB).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A cluster member as ID=HOST:PORT; repeat for every master, this one
    /// included.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(String, String)>,
    /// Raft heartbeat interval.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Lower bound of the election timeout.
    #[arg(long)]
    election_min_ms: Option<u64>,
    /// Upper bound of the election timeout.
    #[arg(long)]
    election_max_ms: Option<u64>,
    /// Chunk lease duration.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Log entries between Raft snapshots.
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// Grace after a lease's expiry before another primary is chosen.
    #[arg(long)]
    lease_grace_ms: Option<u64>,
    /// Chunk size (a multiple of 64 KiB; every chunkserver must agree).
    #[arg(long)]
    chunk_size_bytes: Option<u64>,
    /// A chunkserver silent for this long counts as dead.
    #[arg(long)]
    chunkserver_timeout_ms: Option<u64>,
    /// Chunkservers with less free space get no new chunks.
    #[arg(long)]
    min_free_bytes: Option<u64>,
    /// A dead chunkserver's replicas are re-replicated this long after it
    /// counts as dead (a quick restart causes no clones).
    #[arg(long)]
    rereplication_grace_ms: Option<u64>,
    /// Clones one chunkserver takes part in at once.
    #[arg(long)]
    clones_per_server: Option<usize>,
    /// Bandwidth of one clone in bytes/s (0: unlimited).
    #[arg(long)]
    clone_rate_bytes_per_s: Option<u64>,
    /// How long a deleted file stays recoverable (`gfs undelete`).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Period of the leader's re-replication and reclaim pass.
    #[arg(long)]
    repair_interval_ms: Option<u64>,
    /// Most replica deletions one heartbeat reply asks for.
    #[arg(long)]
    deletes_per_heartbeat: Option<usize>,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The cluster token's file: refuse whoever does not present it, and
    /// present it to peers and chunkservers.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match start(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs-master: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(a: Args) -> Result<(), String> {
    let mut file = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            ConfigFile::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => ConfigFile::default(),
    };
    file.id = a.id.or(file.id);
    file.listen = a.listen.or(file.listen);
    file.data_dir = a.data_dir.or(file.data_dir);
    file.metrics_listen = a.metrics_listen.or(file.metrics_listen);
    file.auth_token_file = a.auth_token_file.or(file.auth_token_file);
    if !a.peers.is_empty() {
        file.peers = a.peers.into_iter().collect();
    }
    file.raft.heartbeat_ms = a.heartbeat_ms.or(file.raft.heartbeat_ms);
    file.raft.election_min_ms = a.election_min_ms.or(file.raft.election_min_ms);
    file.raft.election_max_ms = a.election_max_ms.or(file.raft.election_max_ms);
    file.raft.snapshot_every_entries = a.snapshot_every.or(file.raft.snapshot_every_entries);
    file.chunks.lease_ms = a.lease_ms.or(file.chunks.lease_ms);
    file.chunks.lease_grace_ms = a.lease_grace_ms.or(file.chunks.lease_grace_ms);
    file.chunks.chunk_size_bytes = a.chunk_size_bytes.or(file.chunks.chunk_size_bytes);
    file.chunks.chunkserver_timeout_ms = a
        .chunkserver_timeout_ms
        .or(file.chunks.chunkserver_timeout_ms);
    file.chunks.min_free_bytes = a.min_free_bytes.or(file.chunks.min_free_bytes);
    let d = &mut file.duties;
    d.rereplication_grace_ms = a.rereplication_grace_ms.or(d.rereplication_grace_ms);
    d.clones_per_server = a.clones_per_server.or(d.clones_per_server);
    d.clone_rate_bytes_per_s = a.clone_rate_bytes_per_s.or(d.clone_rate_bytes_per_s);
    d.retention_ms = a.retention_ms.or(d.retention_ms);
    d.repair_interval_ms = a.repair_interval_ms.or(d.repair_interval_ms);
    d.deletes_per_heartbeat = a.deletes_per_heartbeat.or(d.deletes_per_heartbeat);
    let cfg = file.validate().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", cfg.listen))?;
        gfs_master::server::run(cfg, listener, shutdown_signal()).await
    })
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
