//! `gfs-chunkserver`: stores chunk replicas for a gfs-rs cluster.

use std::path::PathBuf;

use clap::Parser;
use gfs_chunkserver::config::ConfigFile;
use gfs_storage_engine::BackendKind;

/// A gfs-rs chunkserver. It heartbeats to every master and serves chunk
/// data to clients and its peers.
///
///   gfs-chunkserver --id 1 --listen 127.0.0.1:7101 --data-dir cs1 \
///       --master 127.0.0.1:7001 --master 127.0.0.1:7002 --master 127.0.0.1:7003
///
/// or put the same settings in a TOML file (`id`, `listen`, `advertise`,
/// `data_dirs`, `rack`, `masters`, `heartbeat_ms`, `chunk_size_bytes`,
/// `buffer_bytes`, `buffer_ttl_ms`, `backend`, `direct_io`,
/// `recycle_chunk_files`, `io_depth`, `appends_ahead`, `metrics_listen`, `auth_token_file`) and
/// pass `--config`. Flags win.
#[derive(Debug, Parser)]
#[command(name = "gfs-chunkserver", version, verbatim_doc_comment)]
struct Args {
    #[arg(long)]
    config: Option<PathBuf>,
    /// Unique, positive id of this chunkserver.
    #[arg(long)]
    id: Option<u64>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address clients and peers use (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// A data directory (one per disk); repeat for several.
    #[arg(long = "data-dir")]
    data_dirs: Vec<PathBuf>,
    #[arg(long)]
    rack: Option<String>,
    /// A master's address; repeat for every master, or separate by commas.
    #[arg(long = "master", value_delimiter = ',')]
    masters: Vec<String>,
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Must match the masters' chunk size.
    #[arg(long)]
    chunk_size_bytes: Option<u64>,
    #[arg(long)]
    buffer_bytes: Option<u64>,
    /// auto, uring or portable.
    #[arg(long)]
    backend: Option<String>,
    /// Data files of deleted whole chunks kept per data directory, for new
    /// chunks to write over: writes over allocated blocks are faster than
    /// into new ones. Default 64 (4 GiB of 64 MiB chunks); 0 removes a
    /// deleted chunk's files at once.
    #[arg(long)]
    recycle_chunk_files: Option<u32>,
    /// Device I/Os in flight per data directory (default 8). Servers that
    /// share one disk should share its queue.
    #[arg(long)]
    io_depth: Option<u32>,
    /// Appends of one chunk on the disk at once (default 2; 1 writes each
    /// only after the one before it landed).
    #[arg(long)]
    appends_ahead: Option<u32>,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The cluster token's file: refuse whoever does not present it, and
    /// present it to masters and peers.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match start(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs-chunkserver: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(a: Args) -> Result<(), String> {
    let mut f = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            ConfigFile::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => ConfigFile::default(),
    };
    f.id = a.id.or(f.id);
    f.listen = a.listen.or(f.listen);
    f.advertise = a.advertise.or(f.advertise);
    if !a.data_dirs.is_empty() {
        f.data_dirs = a.data_dirs;
    }
    f.rack = a.rack.or(f.rack);
    if !a.masters.is_empty() {
        f.masters = a.masters;
    }
    f.heartbeat_ms = a.heartbeat_ms.or(f.heartbeat_ms);
    f.chunk_size_bytes = a.chunk_size_bytes.or(f.chunk_size_bytes);
    f.buffer_bytes = a.buffer_bytes.or(f.buffer_bytes);
    f.recycle_chunk_files = a.recycle_chunk_files.or(f.recycle_chunk_files);
    f.io_depth = a.io_depth.or(f.io_depth);
    f.appends_ahead = a.appends_ahead.or(f.appends_ahead);
    f.metrics_listen = a.metrics_listen.or(f.metrics_listen);
    f.auth_token_file = a.auth_token_file.or(f.auth_token_file);
    if let Some(b) = a.backend {
        f.backend = Some(match b.as_str() {
            "auto" => BackendKind::Auto,
            "uring" => BackendKind::Uring,
            "portable" => BackendKind::Portable,
            other => {
                return Err(format!(
                    "--backend {other}: expected auto, uring or portable"
                ));
            }
        });
    }
    let cfg = f.validate().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", cfg.listen))?;
        gfs_chunkserver::run(cfg, listener, shutdown_signal()).await
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
