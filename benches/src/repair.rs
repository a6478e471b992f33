//! `gfs-bench repair`: fill a local cluster (5 chunkservers, replication 3,
//! 64 MiB chunks), kill the chunkserver holding the most replicas for good,
//! and time the leader's re-replication until every chunk has three live
//! replicas again. Reported next to the device's O_DIRECT write bandwidth
//! measured in the same run: every repaired byte is written once more on
//! the one disk all servers share, so that is the bound. The kill comes
//! after the fill's leases ran out (see `run`).
//!
//! `gfs-bench snapshot`: the time a copy-on-write snapshot of a tree takes
//! (metadata only: the tree's chunks are allocated and its lengths set, no
//! chunk data is written, as a snapshot never touches chunk data).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gfs_client::Client;
use gfs_tests::cluster::{Cluster, Spec};
use serde::Serialize;

use crate::{fill_random, median, progress, raw};

const CHUNK: u64 = gfs_proto::limits::DEFAULT_CHUNK_SIZE_BYTES;

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    /// Directory on the disk under test.
    #[arg(long, default_value = "gfs-data")]
    pub dir: PathBuf,
    /// Bytes of file data written before the kill (times 3 on disk).
    #[arg(long, default_value_t = 1 << 30)]
    pub size: u64,
    /// Clones one chunkserver takes part in at once.
    #[arg(long, default_value_t = 2)]
    pub clones_per_server: u64,
    /// Bandwidth cap of one clone in bytes/s (0: none).
    #[arg(long, default_value_t = 0)]
    pub clone_rate: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct RepairReport {
    pub bench: &'static str,
    pub bytes_repaired: u64,
    pub chunks_repaired: u64,
    /// From the leader declaring the server dead to full replication.
    pub seconds: f64,
    pub repair_mb_s: f64,
    /// From the kill to the leader declaring the server dead (heartbeat
    /// timeout plus the re-replication grace).
    pub detect_seconds: f64,
    pub device_write_mb_s: f64,
    pub ratio: f64,
}

async fn fill(c: &Client, size: u64) -> Result<()> {
    let mut block = vec![0u8; 8 << 20];
    fill_random(&mut block, 11);
    let bar = progress(size, "fill");
    c.mkdir("/repair", true).await?;
    let block = bytes::Bytes::from(block);
    crate::cluster::write_stream(c, "/repair/data", size, &block, Some(&bar)).await?;
    bar.finish_and_clear();
    Ok(())
}

const LEASE_MS: u64 = 10_000;
const LEASE_GRACE_MS: u64 = 1_000;

/// A primary extends its leases while it saw a mutation in the last 5 s
/// (`gfs_chunkserver::heartbeat::EXTEND_IF_MUTATED_WITHIN_MS`); then a
/// lease lasts at most its duration plus the grace.
fn spec_lease_wait() -> u64 {
    5_000 + LEASE_MS + LEASE_GRACE_MS + 500
}

pub async fn run(args: &RepairArgs) -> Result<RepairReport> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let device_write_mb_s = raw::ceiling(&[&args.dir], args.size.min(1 << 30), 1 << 20)?.write;
    let mut cluster = Cluster::start(Spec {
        chunkservers: 5,
        chunk_size_bytes: CHUNK,
        lease_ms: LEASE_MS,
        lease_grace_ms: LEASE_GRACE_MS,
        chunkserver_timeout_ms: 3_000,
        heartbeat_ms: 500,
        base_dir: Some(args.dir.clone()),
        rereplication_grace_ms: 0,
        clones_per_server: args.clones_per_server,
        clone_rate_bytes_per_s: args.clone_rate,
        repair_interval_ms: 200,
        ..Spec::default()
    })
    .await?;
    let client = cluster.client();
    fill(&client, args.size).await?;
    // Leases from the fill run out first: a chunk whose primary dies under
    // a lease is copied only after that lease expired (it could still be
    // writing), which would measure the lease, not the repair.
    tokio::time::sleep(Duration::from_millis(spec_lease_wait())).await;
    let fsck = cluster.fsck().await?;
    let victim = fsck
        .servers
        .iter()
        .max_by_key(|s| (s.chunks, s.node_id))
        .context("no chunkservers")?;
    let (victim_id, victim_chunks) = (victim.node_id, victim.chunks);
    let i = cluster.server_index(victim_id).context("unknown server")?;
    let killed = Instant::now();
    cluster.kill_server(i)?;
    cluster
        .wait_dead(&[victim_id], Duration::from_secs(60))
        .await?;
    let detected = Instant::now();
    let bar = progress(victim_chunks, "repair (chunks)");
    let done = loop {
        let r = cluster.fsck().await?;
        bar.set_position(r.clones_done);
        if r.under_replicated == 0 && r.missing == 0 && r.clones_in_flight == 0 {
            break r;
        }
        anyhow::ensure!(
            detected.elapsed() < Duration::from_secs(3600),
            "not repaired within an hour: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    if std::env::var_os("GFS_BENCH_DEBUG").is_some() {
        for s in &cluster.servers {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            for l in text.lines().filter(|l| l.contains("copied")) {
                eprintln!("cs{}: {l}", s.id);
            }
        }
    }
    let seconds = detected.elapsed().as_secs_f64();
    let repair_mb_s = done.bytes_cloned as f64 / 1e6 / seconds;
    Ok(RepairReport {
        bench: "repair",
        bytes_repaired: done.bytes_cloned,
        chunks_repaired: done.clones_done,
        seconds,
        repair_mb_s,
        detect_seconds: (detected - killed).as_secs_f64(),
        device_write_mb_s,
        ratio: repair_mb_s / device_write_mb_s,
    })
}

pub fn print_repair(r: &RepairReport) {
    println!(
        "repaired {} chunks ({:.0} MB) in {:.2} s after detection ({:.2} s): {:.0} MB/s, \
         device write {:.0} MB/s (limit), {:.0} % of it",
        r.chunks_repaired,
        r.bytes_repaired as f64 / 1e6,
        r.seconds,
        r.detect_seconds,
        r.repair_mb_s,
        r.device_write_mb_s,
        r.ratio * 100.0
    );
}

#[derive(clap::Args, Debug)]
pub struct SnapshotArgs {
    /// Files in the tree.
    #[arg(long, default_value_t = 1000)]
    pub files: u64,
    /// Logical bytes in the tree (spread evenly over the files).
    #[arg(long, default_value_t = 10 << 30)]
    pub bytes: u64,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// An existing cluster instead of a local one (the tree goes under a
    /// directory of its own, /bench-<pid>-<random>, removed at the end).
    #[arg(long, value_delimiter = ',')]
    pub masters: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct SnapshotReport {
    pub bench: &'static str,
    pub files: u64,
    pub chunks: u64,
    pub logical_bytes: u64,
    /// The first snapshot, which also revokes the leases the tree's
    /// chunks still had.
    pub first_ms: f64,
    /// Median of the later ones (no leases left to revoke).
    pub median_ms: f64,
}

pub async fn snapshot(args: &SnapshotArgs) -> Result<SnapshotReport> {
    anyhow::ensure!(args.files > 0, "--files must be positive");
    let spec = Spec {
        chunk_size_bytes: CHUNK,
        lease_ms: 60_000,
        lease_grace_ms: 5_000,
        ..Spec::default()
    };
    let (_local, masters) = crate::cluster::target(&args.masters, spec).await?;
    let c = Client::connect(&masters)?;
    let m = c.master();
    // The tree and its snapshots go under a directory of their own,
    // removed at the end.
    let space = crate::Space::make(m).await?;
    let base = space.path.clone();
    let run = async {
        m.mkdir(&format!("{base}/tree"), true).await?;
        let probe = format!("{base}/probe");
        m.create(&probe, 0).await?;
        let chunk = c.chunk_size(&probe).await?;
        let per_file = args.bytes / args.files;
        let chunks_per_file = per_file.div_ceil(chunk).max(1);
        let bar = progress(args.files, "tree (files)");
        for f in 0..args.files {
            let path = format!("{base}/tree/d{:02}/f{f:05}", f % 32);
            m.mkdir(&format!("{base}/tree/d{:02}", f % 32), true)
                .await?;
            m.create(&path, 0).await?;
            for index in 0..chunks_per_file {
                m.write_chunk(&path, index, &[]).await?;
            }
            m.report_length(&path, per_file).await?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mut times = Vec::new();
        let mut chunks = 0;
        for run in 0..args.runs.max(2) {
            let start = Instant::now();
            let r = m
                .snapshot(&format!("{base}/tree"), &format!("{base}/snap{run}"))
                .await?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
            chunks = r.chunks;
        }
        let first_ms = times[0];
        Ok(SnapshotReport {
            bench: "snapshot",
            files: args.files,
            chunks,
            logical_bytes: per_file * args.files,
            first_ms,
            median_ms: median(times[1..].to_vec()),
        })
    };
    space.purge(m, run.await).await
}

pub fn print_snapshot(r: &SnapshotReport) {
    println!(
        "snapshot of {} files, {} chunks, {:.1} GiB: first {:.1} ms (revokes leases), then {:.1} ms (median)",
        r.files,
        r.chunks,
        r.logical_bytes as f64 / (1u64 << 30) as f64,
        r.first_ms,
        r.median_ms
    );
}
