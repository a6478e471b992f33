//! `gfs-bench meta`: creates, stats and lists per second with C concurrent
//! clients against a 3-master cluster this command starts itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use gfs_client::{MasterClient, MasterOptions};
use gfs_tests::masters::{MasterCluster, Timings};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct MetaArgs {
    /// Client counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Entries in the directory each list call reads (one page).
    #[arg(long, default_value_t = 100)]
    pub list_entries: u32,
    /// An existing cluster instead of 3 local masters (the files go under
    /// a directory of their own, /bench-<pid>-<random>, removed at the end).
    #[arg(long, value_delimiter = ',')]
    pub masters: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct MetaReport {
    pub clients: Vec<usize>,
    pub creates_per_s: Vec<f64>,
    pub stats_per_s: Vec<f64>,
    pub lists_per_s: Vec<f64>,
    pub list_entries: u32,
    pub seconds: f64,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Create,
    Stat,
    List,
}

/// Runs `step` in a loop on each worker's state, all at once, for `secs`;
/// returns completed steps per second over all workers. A step gets its
/// worker's state and its own count, and gives the state back. On a
/// terminal a bar named `what` shows the time elapsed and the rate so far.
pub async fn ops_per_s<S, F, Fut>(workers: Vec<S>, secs: f64, what: &str, step: F) -> Result<f64>
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<S>> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for mut state in workers {
        let (stop, done, step) = (stop.clone(), done.clone(), step.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                state = step(state, i).await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    let ms = (secs * 1e3) as u64;
    let bar = crate::progress_as(ms, what, "{msg} [{elapsed_precise}] {bar:30}");
    let end = start + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        tokio::time::sleep(
            Duration::from_millis(250).min(end.saturating_duration_since(Instant::now())),
        )
        .await;
        let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        bar.set_position(start.elapsed().as_millis() as u64);
        bar.set_message(format!("{what}: {rate:.0}/s"));
    }
    bar.finish_and_clear();
    let count = done.load(Ordering::Relaxed);
    let took = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(count as f64 / took.as_secs_f64())
}

/// Runs `op` from `n` clients for `secs`; returns operations per second.
async fn phase(
    masters: &[String],
    n: usize,
    secs: f64,
    op: Op,
    round: usize,
    page: u32,
    base: &str,
) -> Result<f64> {
    let mut workers = Vec::new();
    for c in 0..n {
        let client = MasterClient::new(masters, MasterOptions::default())?;
        let dir = format!("{base}/r{round}/c{c}");
        client.mkdir(&dir, true).await?;
        workers.push((client, dir, format!("{base}/list")));
    }
    let what = format!("{op:?}s, {n} clients");
    ops_per_s(
        workers,
        secs,
        &what,
        move |(client, dir, list), i| async move {
            match op {
                Op::Create => client.create(&format!("{dir}/part-{i:06}"), 0).await,
                Op::Stat => client
                    .stat(&format!("{list}/f{}", i % u64::from(page)), false)
                    .await
                    .map(|_| ()),
                Op::List => client.list_page(&list, "", page, false).await.map(|_| ()),
            }?;
            Ok((client, dir, list))
        },
    )
    .await
}

pub async fn run(args: &MetaArgs) -> Result<MetaReport> {
    let _local;
    let masters = if args.masters.is_empty() {
        let cluster = MasterCluster::start(3, Timings::default())?;
        cluster.leader(Duration::from_secs(20)).await?;
        let m = cluster.addrs();
        _local = Some(cluster);
        m
    } else {
        _local = None;
        args.masters.clone()
    };
    let setup = MasterClient::new(&masters, MasterOptions::default())?;
    // Every file of the run goes under a directory of its own, removed at
    // the end.
    let space = crate::Space::make(&setup).await?;
    let base = space.path.clone();
    let run = async {
        setup.mkdir(&format!("{base}/list"), true).await?;
        for i in 0..args.list_entries {
            setup.create(&format!("{base}/list/f{i}"), 0).await?;
        }
        let mut report = MetaReport {
            clients: args.clients.clone(),
            creates_per_s: Vec::new(),
            stats_per_s: Vec::new(),
            lists_per_s: Vec::new(),
            list_entries: args.list_entries,
            seconds: args.seconds,
        };
        for (round, &n) in args.clients.iter().enumerate() {
            let p = args.list_entries;
            report
                .creates_per_s
                .push(phase(&masters, n, args.seconds, Op::Create, round, p, &base).await?);
            report
                .stats_per_s
                .push(phase(&masters, n, args.seconds, Op::Stat, round, p, &base).await?);
            report
                .lists_per_s
                .push(phase(&masters, n, args.seconds, Op::List, round, p, &base).await?);
        }
        Ok(report)
    };
    space.purge(&setup, run.await).await
}

pub fn print_table(r: &MetaReport) {
    println!(
        "3 masters on loopback, linearizable reads; list = one page of {} entries; {} s per figure",
        r.list_entries, r.seconds
    );
    println!(
        "{:>8} {:>12} {:>12} {:>12}",
        "clients", "creates/s", "stats/s", "lists/s"
    );
    for (i, c) in r.clients.iter().enumerate() {
        println!(
            "{c:>8} {:>12.0} {:>12.0} {:>12.0}",
            r.creates_per_s[i], r.stats_per_s[i], r.lists_per_s[i]
        );
    }
}
