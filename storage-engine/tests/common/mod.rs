//! Shared set-up for the engine's integration suites.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gfs_proto::{ChunkHandle, ChunkVersion};
use gfs_storage_engine::{BackendKind, ChunkStore, FaultSwitch, RecoveryReport, StoreConfigFile};

pub const CHUNK: u64 = 1 << 20;
pub const MAX_REQUEST: u64 = 256 << 10;

/// The backends every conformance case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Uring,
    Portable,
    /// The fault injector around io_uring, with no fault armed.
    Faulty,
    /// The portable backend with O_DIRECT turned off: the buffered path a
    /// filesystem that refuses O_DIRECT gets.
    Buffered,
}

/// A store in its own temporary directory, reopenable like a restarted server.
pub struct Harness {
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    pub faults: FaultSwitch,
    pub verify_on_open: bool,
    /// Overrides the pool of deleted chunks' files kept per directory.
    pub recycle_chunk_files: Option<u32>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Harness {
    pub fn new(kind: Kind) -> Self {
        init_tracing();
        Self {
            kind,
            dir: tempfile::tempdir().expect("temp dir"),
            faults: FaultSwitch::default(),
            verify_on_open: false,
            recycle_chunk_files: None,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("d0")
    }

    pub fn chunks_dir(&self) -> PathBuf {
        self.root().join("chunks")
    }

    pub fn config(&self) -> StoreConfigFile {
        let cfg = config_for(&self.root(), self.kind, self.verify_on_open);
        StoreConfigFile {
            recycle_chunk_files: self.recycle_chunk_files.unwrap_or(cfg.recycle_chunk_files),
            ..cfg
        }
    }

    pub fn recycle_dir(&self) -> PathBuf {
        self.root().join("recycle")
    }

    pub async fn open(&self) -> (ChunkStore, RecoveryReport) {
        let cfg = self.config();
        let opened = match self.kind {
            Kind::Faulty => ChunkStore::open_with_faults(cfg, self.faults.clone()).await,
            _ => ChunkStore::open(cfg).await,
        };
        let (store, report) = opened.expect("store opens");
        let want = match self.kind {
            Kind::Uring => "io_uring",
            Kind::Portable => "portable",
            Kind::Faulty => "faulty",
            Kind::Buffered => "portable",
        };
        let usage = &store.usage()[0];
        assert_eq!(usage.backend, want);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        // As root, RLIMIT_MEMLOCK does not stop io_uring from pinning the arena.
        let uring = matches!(self.kind, Kind::Uring | Kind::Faulty);
        assert_eq!(usage.registered_buffers, root && uring);
        assert_eq!(usage.direct_io, self.kind != Kind::Buffered);
        (store, report)
    }
}

pub fn config_for(root: &Path, kind: Kind, verify_on_open: bool) -> StoreConfigFile {
    StoreConfigFile {
        chunk_size_bytes: CHUNK,
        max_request_bytes: MAX_REQUEST,
        // Small I/Os so one request has several in flight.
        io_size_bytes: 64 << 10,
        io_depth: 8,
        buffer_memory_bytes: 8 << 20,
        backend: match kind {
            Kind::Portable | Kind::Buffered => BackendKind::Portable,
            Kind::Uring | Kind::Faulty => BackendKind::Uring,
        },
        direct_io: kind != Kind::Buffered,
        verify_on_open,
        scrub_rate_bytes_per_s: 0,
        scrub_idle_ms: 0,
        ..StoreConfigFile::for_dir(root)
    }
}

pub fn h(n: u64) -> ChunkHandle {
    ChunkHandle(n)
}

pub fn v(n: u64) -> ChunkVersion {
    ChunkVersion(n)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
