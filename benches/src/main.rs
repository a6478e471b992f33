//! `gfs-bench`: throughput benchmarks that print each figure next to the
//! limit measured in the same run.

mod busy;
mod cluster;
mod engine;
mod etcd;
mod failover;
mod figure3;
mod hosts;
mod limits;
mod load;
mod meta;
mod meta_memory;
mod plot;
mod raw;
mod repair;
mod smoke;

#[global_allocator]
static ALLOC: meta_memory::Counting = meta_memory::Counting;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gfs-bench",
    version,
    about = "gfs-rs throughput benchmarks, each against a limit measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The storage engine against the raw device (O_DIRECT io_uring, like fio) on one directory.
    Engine(engine::EngineArgs),
    /// One client writing one large file to a local 3 + 4 cluster
    /// (replication 3), against device write bandwidth / 3 (/ R of a cluster
    /// named by --masters; with --hosts, against that cluster's hosts).
    ClusterWrite(cluster::ClusterArgs),
    /// One client reading one large file, against device read bandwidth
    /// (with --hosts, against the hosts of a cluster named by --masters).
    ClusterRead(cluster::ClusterArgs),
    /// Creates, stats and lists per second against a 3-master cluster it starts.
    Meta(meta::MetaArgs),
    /// The `meta` creates and stats against an etcd cluster (for comparison).
    Etcd(etcd::EtcdArgs),
    /// kill -9 the leader K times under a create load: time to the next mutation.
    Failover(failover::FailoverArgs),
    /// This machine's ceilings: O_DIRECT bandwidth of each data directory,
    /// loopback TCP between two processes (or, with --tcp-to, TCP to a sink
    /// on another host), CRC32C of one core, and what the first two cost
    /// the CPUs per MB.
    Limits(limits::LimitsArgs),
    /// The GFS paper's Figure 3: N clients reading, writing, appending,
    /// each point against the better of the ceilings sampled just before
    /// and just after it, with what it kept busy (CPU, disk) and so what
    /// bounded it; a local cluster also against the CPU limit (what the
    /// host's shared cores allow).
    Figure3(figure3::Figure3Args),
    /// Every benchmark at tiny sizes, checked for sane JSON (CI).
    Smoke {
        /// Scratch directory.
        #[arg(long, default_value = "gfs-data/smoke")]
        dir: std::path::PathBuf,
        /// Only these benchmarks.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The receiving end of the TCP ceiling: prints its address, then reads
    /// and discards what each sender sends. `limits` starts one on loopback
    /// itself; on a real cluster run one with --listen on a host for
    /// `limits --tcp-to` and `figure3 --tcp-to` elsewhere to measure to.
    TcpSink {
        /// Address to listen on (as 0.0.0.0:7100), serving until killed.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Kill a chunkserver of a filled local cluster for good: time and
    /// bandwidth of re-replication, against device write bandwidth.
    Repair(repair::RepairArgs),
    /// Time of a copy-on-write snapshot of a tree (10 GiB by default).
    Snapshot(repair::SnapshotArgs),
    /// Bytes of master memory per file and per chunk for N files in a realistic tree.
    MetaMemory(meta_memory::MetaMemoryArgs),
    /// Raw device only, with and without io_uring registered buffers, with
    /// the CPU time each spends: the evidence for whether registered buffers pay.
    RegisteredBuffers {
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 1 << 30)]
        size: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::MetaMemory(args) => emit(
            args.json,
            &meta_memory::run(&args)?,
            meta_memory::print_table,
        )?,
        Command::RegisteredBuffers { dir, size, runs } => {
            println!(
                "{:<5} {:<10} {:>12} {:>12} {:>14}",
                "run", "buffers", "write MB/s", "read MB/s", "CPU ms/GiB"
            );
            for run in 1..=runs {
                for fixed in [false, true] {
                    let cpu = cpu_time();
                    let (w, r) = raw::measure(&dir, size, 1 << 20, 8, fixed)?;
                    let cpu_ms = (cpu_time() - cpu).as_secs_f64() * 1e3 / (2 * size) as f64
                        * (1u64 << 30) as f64;
                    let kind = if fixed { "registered" } else { "plain" };
                    println!(
                        "{run:<5} {kind:<10} {:>12.0} {:>12.0} {cpu_ms:>14.1}",
                        mb_s(size, w),
                        mb_s(size, r)
                    );
                }
            }
        }
        Command::Meta(args) => emit(
            args.json,
            &until_interrupted(&rt, meta::run(&args))?,
            meta::print_table,
        )?,
        Command::Etcd(args) => emit(
            args.json,
            &until_interrupted(&rt, etcd::run(&args))?,
            etcd::print_table,
        )?,
        Command::Failover(args) => emit(
            args.json,
            &until_interrupted(&rt, failover::run(&args))?,
            failover::print_table,
        )?,
        Command::ClusterWrite(args) | Command::ClusterRead(args) if args.size == 0 => {
            anyhow::bail!("--size must be positive");
        }
        Command::ClusterWrite(args) => emit(
            args.json,
            &until_interrupted(&rt, cluster::run(&args, false))?,
            cluster::print_table,
        )?,
        Command::ClusterRead(args) => emit(
            args.json,
            &until_interrupted(&rt, cluster::run(&args, true))?,
            cluster::print_table,
        )?,
        Command::Limits(args) => emit(args.json, &limits::limits(&args)?, limits::print_limits)?,
        Command::Figure3(args) => emit(
            args.json,
            &until_interrupted(&rt, figure3::figure3(&args))?,
            figure3::print_figure3,
        )?,
        Command::Smoke { dir, only } => smoke::run(&rt, &dir, &only)?,
        Command::TcpSink { listen } => limits::tcp_sink(listen.as_deref())?,
        Command::Repair(args) => emit(
            args.json,
            &until_interrupted(&rt, repair::run(&args))?,
            repair::print_repair,
        )?,
        Command::Snapshot(args) => emit(
            args.json,
            &until_interrupted(&rt, repair::snapshot(&args))?,
            repair::print_snapshot,
        )?,
        Command::Engine(args) => {
            let json = args.json;
            let report = until_interrupted(&rt, engine::run(args))?;
            engine::print_table(&report);
            if json {
                println!("{}", serde_json::to_string(&report)?);
            }
        }
    }
    Ok(())
}

/// Runs a benchmark on `rt` until it ends or is interrupted (SIGINT, as
/// Ctrl-C sends, or SIGTERM). Interrupted, it is not polled again: the
/// directories it opened on a cluster ([`Space`]) are purged while any
/// local cluster it started still runs, then it is dropped, which stops
/// that cluster and removes its data (the guards of `gfs_tests`), and the
/// run fails with "interrupted". Without this the servers died with the
/// process but their data directories, gigabytes of chunk files under
/// `--dir`, stayed, as did the run's files on a cluster named by
/// `--masters`. A benchmark inside a blocking measurement (a ceiling
/// sample) stops when that returns; a second signal quits at once,
/// leaving what the run made.
fn until_interrupted<T>(
    rt: &tokio::runtime::Runtime,
    bench: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let interrupted = std::sync::Arc::new(tokio::sync::Notify::new());
        // On a worker thread: it answers even while the benchmark blocks
        // this one.
        let watcher = tokio::spawn({
            let interrupted = interrupted.clone();
            async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                eprintln!(
                    "interrupted: stopping after the current step, then removing what the run \
                     made (interrupt again to quit at once)"
                );
                interrupted.notify_one();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                eprintln!("interrupted again: quitting, leaving what the run made");
                std::process::exit(130);
            }
        });
        // Pinned here, so it outlives the purge below and is dropped
        // (stopping any local cluster) only when this block returns.
        let mut bench = std::pin::pin!(bench);
        tokio::select! {
            r = &mut bench => {
                watcher.abort();
                return r;
            }
            () = interrupted.notified() => {}
        }
        Space::purge_open().await;
        anyhow::bail!("interrupted")
    })
}

/// Prints a report's table, then, with `--json`, the report as one JSON
/// line (the last line of the output).
fn emit<R: serde::Serialize>(json: bool, report: &R, table: fn(&R)) -> Result<()> {
    table(report);
    if json {
        println!("{}", serde_json::to_string(report)?);
    }
    Ok(())
}

/// User plus system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: rusage is plain old data and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A namespace directory of this run's own, so benchmarks against an
/// existing cluster never touch anything else.
pub fn bench_dir() -> String {
    format!(
        "/bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// A namespace directory of one benchmark run's own on the cluster it
/// measures ([`bench_dir`]): a run against an existing cluster works only
/// in it, and [`Space::purge`] removes it for good when the run ends,
/// whether it succeeded or not, so nothing is left behind and nothing
/// else is touched.
#[derive(Debug)]
pub struct Space {
    pub path: String,
}

/// The [`Space`]s made and not yet purged, with their cluster: what an
/// interrupted run purges ([`until_interrupted`]).
static OPEN_SPACES: std::sync::Mutex<Vec<(String, gfs_client::MasterClient)>> =
    std::sync::Mutex::new(Vec::new());

fn open_spaces() -> std::sync::MutexGuard<'static, Vec<(String, gfs_client::MasterClient)>> {
    OPEN_SPACES.lock().unwrap_or_else(|p| p.into_inner())
}

impl Space {
    pub async fn make(m: &gfs_client::MasterClient) -> Result<Self> {
        let path = bench_dir();
        m.mkdir(&path, true).await?;
        open_spaces().push((path.clone(), m.clone()));
        Ok(Self { path })
    }

    /// Purges every space still open, each given at most 30 s: an
    /// interrupted run's.
    async fn purge_open() {
        let open = std::mem::take(&mut *open_spaces());
        for (path, m) in open {
            let purge = m.delete_with(&path, true, true);
            match tokio::time::timeout(Duration::from_secs(30), purge).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("warning: could not remove {path}: {e}"),
                Err(_) => eprintln!("warning: could not remove {path} within 30 s"),
            }
        }
    }

    /// The replication factor the cluster gives a new file here (from a
    /// probe file, created and removed).
    pub async fn replication(&self, m: &gfs_client::MasterClient) -> Result<u32> {
        let probe = format!("{}/replication-probe", self.path);
        m.create(&probe, 0).await?;
        let r = m.stat(&probe, false).await?.replication;
        m.delete_with(&probe, false, true).await?;
        anyhow::ensure!(r > 0, "the cluster reports replication 0 for {probe}");
        Ok(r)
    }

    /// Deletes the directory and everything in it at once (no retention
    /// period), then hands back `result`: the run's own error first; a
    /// directory that could not be removed is reported, not fatal.
    pub async fn purge<T>(self, m: &gfs_client::MasterClient, result: Result<T>) -> Result<T> {
        open_spaces().retain(|(p, _)| *p != self.path);
        if let Err(e) = m.delete_with(&self.path, true, true).await {
            eprintln!(
                "warning: could not remove the benchmark's directory {}: {e}",
                self.path
            );
        }
        result
    }
}

/// Decimal megabytes per second.
pub fn mb_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64()
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Incompressible bytes (benchmarks never write zeros).
pub fn fill_random(buf: &mut [u8], seed: u64) {
    use rand::{RngCore, SeedableRng};
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(buf);
}

/// A progress bar on a terminal counting bytes, with the elapsed time and
/// the current throughput; hidden when stderr is not one.
pub fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    progress_as(
        total,
        what,
        "{msg} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
    )
}

/// [`progress`] drawn with indicatif's `template`.
pub fn progress_as(total: u64, what: &str, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).expect("valid progress template"),
    );
    bar.set_message(what.to_string());
    bar
}

/// Drops the page cache so buffered reads come from the device (needs root;
/// only used when a directory refused O_DIRECT).
pub fn drop_page_cache() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "1").is_err() {
        eprintln!("warning: could not drop the page cache; buffered read figures may be flattered");
    }
}
