//! The chunkserver's Prometheus metrics (`--metrics-listen`): what its
//! store and devices did, its data plane's traffic, and its gRPC calls
//! (`gfs_proto::metrics`). Values are read from the server's state when
//! scraped; the data plane counts its requests in [`Traffic`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use gfs_proto::metrics::prometheus_client::metrics::histogram::Histogram;
use gfs_proto::metrics::prometheus_client::registry::Registry;
use gfs_proto::metrics::{Emit, GrpcCalls, Scraped, Value, call_seconds};
use gfs_storage_engine::DirIo;

use crate::service::Shared;

/// A data-plane request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOp {
    Read,
    Push,
    Mutate,
    Apply,
    Ping,
}

const OPS: [DataOp; 5] = [
    DataOp::Read,
    DataOp::Push,
    DataOp::Mutate,
    DataOp::Apply,
    DataOp::Ping,
];

impl DataOp {
    fn name(self) -> &'static str {
        match self {
            DataOp::Read => "read",
            DataOp::Push => "push",
            DataOp::Mutate => "mutate",
            DataOp::Apply => "apply",
            DataOp::Ping => "ping",
        }
    }
}

/// The data plane's requests, bytes and times since the server started.
#[derive(Debug)]
pub struct Traffic {
    requests: [AtomicU64; 5],
    /// From a request's header to its answer sent, by kind (a push's
    /// includes receiving its data; a mutation's, its secondaries').
    seconds: [Histogram; 5],
    /// Answered with an error (a refused push counts here too).
    failed: [AtomicU64; 5],
    /// Pushed bytes received (each server of a chain counts its copy).
    pushed_bytes: AtomicU64,
    /// Chunk bytes sent to readers.
    read_bytes: AtomicU64,
    /// Pushes refused because the push buffer was full.
    busy: AtomicU64,
    /// Connections refused for want of the cluster token.
    unauthenticated: AtomicU64,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            requests: Default::default(),
            seconds: std::array::from_fn(|_| call_seconds()),
            failed: Default::default(),
            pushed_bytes: Default::default(),
            read_bytes: Default::default(),
            busy: Default::default(),
            unauthenticated: Default::default(),
        }
    }
}

impl Traffic {
    pub fn took(&self, op: DataOp, d: std::time::Duration) {
        self.seconds[op as usize].observe(d.as_secs_f64());
    }

    pub fn request(&self, op: DataOp) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, op: DataOp) {
        self.failed[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn pushed(&self, bytes: u64) {
        self.pushed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn read(&self, bytes: u64) {
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn unauthenticated(&self) {
        self.unauthenticated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.failed(DataOp::Push);
    }
}

/// Heartbeats to each master that got no answer, and when a leader last
/// answered one.
#[derive(Debug)]
pub struct Beats {
    failed: Vec<(String, AtomicU64)>,
    leader_answered: Mutex<Option<Instant>>,
}

impl Beats {
    pub fn new(masters: &[String]) -> Self {
        Self {
            failed: masters
                .iter()
                .map(|m| (m.clone(), AtomicU64::new(0)))
                .collect(),
            leader_answered: Mutex::new(None),
        }
    }

    /// A heartbeat to the `i`th master (in the configured order) failed.
    pub fn failed(&self, i: usize) {
        if let Some((_, n)) = self.failed.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn leader_answered(&self) {
        *self
            .leader_answered
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn leader_silent_for(&self) -> Option<std::time::Duration> {
        let at = *self
            .leader_answered
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        at.map(|t| t.elapsed())
    }
}

/// The registry `/metrics` serves, and the gRPC layer counting into it.
pub fn registry(shared: &Arc<Shared>) -> (Registry, GrpcCalls) {
    let sh = Arc::downgrade(shared);
    gfs_proto::metrics::server_registry(|gfs| {
        gfs.register_collector(Box::new(Scraped(move |e: &mut Emit<'_, '_>| {
            // A scrape racing the server's shutdown reports nothing.
            match sh.upgrade() {
                Some(sh) => emit(&sh, e),
                None => Ok(()),
            }
        })));
        GrpcCalls::register(gfs)
    })
}

/// Each data directory's `f` of its device I/O for `op`, labelled.
fn per_dir_op<'a, N: 'a>(
    io: &'a [DirIo],
    op: &'static str,
    f: fn(&DirIo) -> N,
) -> impl Iterator<Item = ([(&'static str, String); 2], N)> + 'a {
    io.iter().map(move |d| {
        (
            [("dir", d.dir.display().to_string()), ("op", op.into())],
            f(d),
        )
    })
}

fn emit(sh: &Shared, e: &mut Emit<'_, '_>) -> fmt::Result {
    let store = &sh.store;
    e.gauge(
        "chunkserver_chunks",
        "Chunk replicas held",
        store.chunk_count(),
    )?;
    let now = sh.lease_now();
    e.gauge(
        "chunkserver_leases",
        "Chunks this server is the primary of (unexpired leases)",
        sh.leases_held(now),
    )?;
    e.gauge(
        "chunkserver_push_buffer_bytes",
        "Pushed data held or being received, awaiting its mutation",
        sh.buffer_used(),
    )?;
    e.gauge(
        "chunkserver_push_buffer_limit_bytes",
        "Bound on the push buffer",
        sh.cfg.buffer_bytes,
    )?;
    e.counter(
        "chunkserver_checksum_failures",
        "Reads (the scrubber's too) that found a block not matching its CRC32C",
        store.checksum_failures(),
    )?;
    let usage = store.usage();
    let dir = |d: &std::path::Path| [("dir", d.display().to_string())];
    let per_dir = |f: fn(&gfs_storage_engine::DiskUsage) -> Value| {
        usage.iter().map(move |u| (dir(&u.dir), f(u)))
    };
    e.gauges(
        "chunkserver_disk_free_bytes",
        "Free bytes of each data directory's filesystem (with deleted chunks' files kept for reuse)",
        per_dir(|u| u.free_bytes.into()),
    )?;
    e.gauges(
        "chunkserver_disk_total_bytes",
        "Size of each data directory's filesystem",
        per_dir(|u| u.total_bytes.into()),
    )?;
    e.gauges(
        "chunkserver_disk_chunk_bytes",
        "Bytes of chunk data in each data directory",
        per_dir(|u| u.used_bytes.into()),
    )?;
    e.gauges(
        "chunkserver_disk_writable",
        "1 while a data directory takes writes; 0 once a failed sync or write poisoned it",
        per_dir(|u| u.poisoned.is_none().into()),
    )?;
    let io = store.io();
    let io_dir =
        |f: fn(&gfs_storage_engine::DirIo) -> Value| io.iter().map(move |d| (dir(&d.dir), f(d)));
    e.gauges(
        "chunkserver_disk_ios_in_flight",
        "Device I/Os submitted and not completed",
        io_dir(|d| d.counts.in_flight.into()),
    )?;
    e.gauges(
        "chunkserver_disk_oldest_io_seconds",
        "How long the oldest outstanding device I/O has waited (a hung disk grows it)",
        io_dir(|d| d.oldest.into()),
    )?;
    e.counters(
        "chunkserver_disk_ios",
        "Device I/Os completed (failed ones too)",
        per_dir_op(&io, "read", |d| d.counts.reads)
            .chain(per_dir_op(&io, "write", |d| d.counts.writes))
            .chain(per_dir_op(&io, "sync", |d| d.counts.syncs)),
    )?;
    e.counters(
        "chunkserver_disk_bytes",
        "Bytes moved by device I/Os that succeeded",
        per_dir_op(&io, "read", |d| d.counts.read_bytes)
            .chain(per_dir_op(&io, "write", |d| d.counts.written_bytes)),
    )?;
    e.counters(
        "chunkserver_disk_io_seconds",
        "Time device I/Os took from submission to completion, summed",
        per_dir_op(&io, "read", |d| d.counts.read_time.as_secs_f64())
            .chain(per_dir_op(&io, "write", |d| {
                d.counts.write_time.as_secs_f64()
            }))
            .chain(per_dir_op(&io, "sync", |d| {
                d.counts.sync_time.as_secs_f64()
            })),
    )?;
    e.counters(
        "chunkserver_disk_io_errors",
        "Device I/Os that failed",
        io.iter().map(|d| (dir(&d.dir), d.counts.errors)),
    )?;
    let t = &sh.traffic;
    let by_kind = |a: &[AtomicU64; 5]| -> Vec<([(&str, &str); 1], u64)> {
        OPS.iter()
            .map(|op| ([("op", op.name())], a[*op as usize].load(Ordering::Relaxed)))
            .collect()
    };
    e.counters(
        "chunkserver_data_requests",
        "Data-plane requests received",
        by_kind(&t.requests),
    )?;
    e.counters(
        "chunkserver_data_failures",
        "Data-plane requests answered with an error",
        by_kind(&t.failed),
    )?;
    e.histograms(
        "chunkserver_data_seconds",
        "Data-plane requests from header to answer (a push's with its data, a mutation's with its secondaries')",
        OPS.iter()
            .map(|op| ([("op", op.name())], &t.seconds[*op as usize])),
    )?;
    e.counter(
        "chunkserver_pushed_bytes",
        "Pushed bytes received",
        t.pushed_bytes.load(Ordering::Relaxed),
    )?;
    e.counter(
        "chunkserver_read_bytes",
        "Chunk bytes sent to readers",
        t.read_bytes.load(Ordering::Relaxed),
    )?;
    e.counter(
        "chunkserver_push_busy",
        "Pushes refused: the push buffer was full",
        t.busy.load(Ordering::Relaxed),
    )?;
    e.counter(
        "chunkserver_data_unauthenticated",
        "Data-plane connections refused: no cluster token, or another",
        t.unauthenticated.load(Ordering::Relaxed),
    )?;
    let b = &sh.beats;
    e.counters(
        "chunkserver_heartbeat_failures",
        "Heartbeats to each master that got no answer",
        b.failed
            .iter()
            .map(|(m, n)| ([("master", m.as_str())], n.load(Ordering::Relaxed))),
    )?;
    match b.leader_silent_for() {
        Some(d) => e.gauge(
            "chunkserver_leader_heartbeat_age_seconds",
            "Time since the master leader last answered a heartbeat (leases and placement depend on it)",
            d,
        ),
        None => Ok(()),
    }
}
