//! A chunkserver in the test's own process over a store whose disk
//! misbehaves on command (`gfs_storage_engine::FaultSwitch`: writes held
//! back, EIO, ENOSPC, torn writes, flipped bits): the faults of a failing
//! disk under a server that is otherwise well, still heartbeating and
//! answering, which no signal to a process can give.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use gfs_chunkserver::config::ConfigFile;
use gfs_storage_engine::{ChunkStore, FaultSwitch};

#[derive(Debug)]
pub struct FaultyServer {
    pub id: u64,
    pub addr: String,
    /// Arm faults here; they hit the server's next disk operations.
    pub faults: FaultSwitch,
    /// The server's store, shared with it: I/O of the test's own.
    pub store: ChunkStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

/// Where and as whom a [`FaultyServer`] joins a cluster.
#[derive(Clone, Debug)]
pub struct Joining {
    pub id: u64,
    pub ip: Ipv4Addr,
    pub rack: String,
    pub masters: Vec<String>,
    pub chunk_size_bytes: u64,
    pub heartbeat_ms: u64,
}

impl FaultyServer {
    /// Opens a store in a directory of its own and serves it on the
    /// running tokio runtime, heartbeating to `j.masters`.
    pub async fn start(j: Joining) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = crate::masters::free_port(j.ip)?;
        let listen = SocketAddr::from((j.ip, port));
        let cfg = ConfigFile {
            id: Some(j.id),
            listen: Some(listen),
            data_dirs: vec![dir.path().join("data")],
            rack: Some(j.rack),
            masters: j.masters,
            heartbeat_ms: Some(j.heartbeat_ms),
            chunk_size_bytes: Some(j.chunk_size_bytes),
            ..ConfigFile::default()
        }
        .validate()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
        let faults = FaultSwitch::default();
        let (store, _) = ChunkStore::open_with_faults(cfg.store.clone(), faults.clone())
            .await
            .context("opening the store")?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = store.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = gfs_chunkserver::serve(cfg, served, listener, shutdown).await {
                tracing::warn!(error = %e, "the in-process chunkserver stopped");
            }
        });
        Ok(Self {
            id: j.id,
            addr: listen.to_string(),
            faults,
            store,
            stop: Some(stop),
            _dir: dir,
        })
    }

    /// Clears every fault and lets every held write go.
    pub fn heal(&self) {
        self.faults.arm(|f| *f = Default::default());
        self.faults.release();
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        // Nothing may stay held: a store waits for its I/O as it closes.
        self.heal();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
