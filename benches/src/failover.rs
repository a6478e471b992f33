//! `gfs-bench failover --kills K`: kill -9 the leader K times while clients
//! create files; for each kill, the time until an operation started after
//! the kill succeeds. Limits: p50 < 1 s, max < 2 s, no failed operation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use gfs_client::{MasterClient, MasterOptions};
use gfs_master::server::config::{
    DEFAULT_ELECTION_MAX_MS, DEFAULT_ELECTION_MIN_MS, DEFAULT_HEARTBEAT_MS,
};
use gfs_tests::masters::{MasterCluster, Timings};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Concurrent clients creating files.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Steady-state time between a restart and the next kill.
    #[arg(long, default_value_t = 1500)]
    pub settle_ms: u64,
    #[arg(long, default_value_t = DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_ms: u64,
    #[arg(long, default_value_t = DEFAULT_ELECTION_MIN_MS)]
    pub election_min_ms: u64,
    #[arg(long, default_value_t = DEFAULT_ELECTION_MAX_MS)]
    pub election_max_ms: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub kills: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failed_ops: u64,
    pub ops: u64,
    pub each_ms: Vec<f64>,
    pub heartbeat_ms: u64,
    pub election_ms: (u64, u64),
}

/// The q-quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub async fn run(args: &FailoverArgs) -> Result<FailoverReport> {
    let timings = Timings {
        heartbeat_ms: Some(args.heartbeat_ms),
        election_min_ms: Some(args.election_min_ms),
        election_max_ms: Some(args.election_max_ms),
        ..Timings::default()
    };
    let mut cluster = MasterCluster::start(3, timings)?;
    cluster.leader(Duration::from_secs(20)).await?;
    let masters = cluster.addrs();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let ops = Arc::new(AtomicU64::new(0));
    // (started, finished) of every successful create.
    let done: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let client = MasterClient::new(&masters, MasterOptions::default())?;
        let dir = format!("/ingest/c{c}");
        client.mkdir(&dir, true).await?;
        let (stop, failed, ops, done) = (stop.clone(), failed.clone(), ops.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                match client.create(&format!("{dir}/f{i}"), 0).await {
                    Ok(()) => done.lock().expect("log").push((start, Instant::now())),
                    Err(e) => {
                        eprintln!("client {c}: create failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    let mut each = Vec::new();
    for k in 0..args.kills {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let l = cluster.leader(Duration::from_secs(20)).await?;
        let killed_at = Instant::now();
        cluster.kill(l)?;
        // Wait for the first create started after the kill to succeed.
        let recovered = loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let first = done
                .lock()
                .expect("log")
                .iter()
                .filter(|(s, _)| *s > killed_at)
                .map(|(_, f)| *f)
                .min();
            if let Some(f) = first {
                break f;
            }
            anyhow::ensure!(
                killed_at.elapsed() < Duration::from_secs(30),
                "no create succeeded within 30 s of kill {k}"
            );
        };
        let ms = (recovered - killed_at).as_secs_f64() * 1e3;
        eprintln!(
            "kill {:>2}: master {} -> first create after {ms:.0} ms",
            k + 1,
            l + 1
        );
        each.push(ms);
        cluster.restart(l)?;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let mut sorted = each.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(FailoverReport {
        kills: args.kills,
        p50_ms: quantile(&sorted, 0.5),
        p99_ms: quantile(&sorted, 0.99),
        max_ms: sorted.last().copied().unwrap_or(f64::NAN),
        failed_ops: failed.load(Ordering::Relaxed),
        ops: ops.load(Ordering::Relaxed),
        each_ms: each,
        heartbeat_ms: args.heartbeat_ms,
        election_ms: (args.election_min_ms, args.election_max_ms),
    })
}

pub fn print_table(r: &FailoverReport) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "{} kills of the leader (kill -9), heartbeat {} ms, election timeout {}-{} ms",
        r.kills, r.heartbeat_ms, r.election_ms.0, r.election_ms.1
    );
    println!(
        "{:<22} {:>10} {:>10} {:>8}",
        "figure", "measured", "limit", ""
    );
    println!(
        "{:<22} {:>8.0}ms {:>8}ms {:>8}",
        "p50 kill->mutation",
        r.p50_ms,
        1000,
        verdict(r.p50_ms < 1000.0)
    );
    println!(
        "{:<22} {:>8.0}ms {:>10}",
        "p99 kill->mutation", r.p99_ms, ""
    );
    println!(
        "{:<22} {:>8.0}ms {:>8}ms {:>8}",
        "max kill->mutation",
        r.max_ms,
        2000,
        verdict(r.max_ms < 2000.0)
    );
    println!(
        "{:<22} {:>10} {:>10} {:>8}",
        "failed client ops",
        r.failed_ops,
        0,
        verdict(r.failed_ops == 0)
    );
    println!("{:<22} {:>10}", "client ops in total", r.ops);
}
