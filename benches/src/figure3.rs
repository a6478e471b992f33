//! `gfs-bench figure3`: the GFS paper's Figure 3 micro-benchmarks (N
//! clients reading, writing, appending) against limits computed from this
//! machine's ceilings, measured in the same run (`crate::limits`: what
//! each ceiling is and how each limit, the new-files limit and the CPU
//! limit are computed).
//!
//! `figure3` measures the ceilings just before and just after every point
//! (one sample serves as the "after" of a point and the "before" of the
//! next when nothing ran between them) and judges the point against the
//! better of the two, each ceiling on its own: on a VM the same disk swings
//! 2x from one minute to the next, so a point is only comparable with what
//! the device showed it could do at the same time. `--rounds K` measures
//! every point K times (the points of a round in order, the rounds one
//! after another) and reports the median throughput, the median limit and
//! the median of the K paired efficiencies. All samples and every round
//! are in the JSON.
//!
//! Each round also records what it kept busy (`busy`): this host's CPU
//! time and, for a local cluster, the data directory's device (share of
//! the time with a request in flight, requests in flight, bytes moved),
//! read from the kernel's counters just before and after it; and from
//! that what bounded it (`bound`: `CPU`, `disk`, or `latency` when neither
//! was saturated). A point short of its limit then says why in the same
//! run: a disk busy all the time at 20 requests deep cannot be driven
//! harder, whatever a ceiling sample a minute earlier showed.
//!
//! The paper reports efficiency against its network limits: 75 % read,
//! 52 % write, 38 % append at N = 16.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use gfs_client::Client;
use gfs_tests::cluster::{Spec, chunk_files_under};
use serde::Serialize;

use crate::busy::{
    Busy, Probes, ServerBusy, all_between, bound_with, median_busy, median_servers, saturated_at,
    server_line,
};

/// What this host and, for a cluster elsewhere, each chunkserver's host
/// were busy with during a measurement.
type Seen = (Busy, Vec<ServerBusy>);
use crate::cluster::write_stream;
use crate::hosts::{Hosts, HostsArgs};
use crate::limits::{Limits, LimitsArgs, ceilings, cpu_costs, crc_bandwidth};
use crate::{fill_random, mb_s, median, progress, raw};

const MIB: u64 = 1 << 20;

#[derive(clap::Args, Debug, Clone)]
pub struct Figure3Args {
    /// Client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub clients: Vec<usize>,
    /// Benchmarks to run.
    #[arg(long, value_delimiter = ',', default_value = "read,write,append")]
    pub benches: Vec<String>,
    /// Data directory of the local cluster and of the disk measurement.
    #[arg(long, default_value = "gfs-data")]
    pub dir: PathBuf,
    /// An existing cluster instead of a local one (without --hosts, the
    /// ceilings are still measured on --dir of this host). Every file goes
    /// under a directory of the run's own, /bench-<pid>-<random>, removed
    /// at the end.
    #[arg(long, value_delimiter = ',')]
    pub masters: Vec<String>,
    #[command(flatten)]
    pub on_hosts: HostsArgs,
    /// write: bytes each client writes to its own file (four chunks: the
    /// writers cross chunk boundaries). Points of well under a second
    /// measured mostly their start and their stragglers (read at N = 4: 74-80 %
    /// of the limit at 64 regions per client, 99 % at 1500).
    #[arg(long, default_value_t = 256 << 20)]
    pub write_bytes: u64,
    /// read: bytes of the file set the clients read from.
    #[arg(long, default_value_t = 512 << 20)]
    pub read_set_bytes: u64,
    /// read: random 4 MiB regions each client reads (the paper's 256: 1 GiB).
    #[arg(long, default_value_t = 256)]
    pub reads: u64,
    /// append: 1 MiB records each client appends to the shared file.
    #[arg(long, default_value_t = 256)]
    pub records: u64,
    /// append: records each client keeps in flight (the paper's clients
    /// append one at a time; an ingestion job pipelines them, and its
    /// records land in an order of the cluster's choosing).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub append_in_flight: u64,
    /// Bytes per ceiling measurement (taken before and after every point).
    #[arg(long, default_value_t = 256 << 20)]
    pub limit_bytes: u64,
    /// Times every point is measured; the medians are reported.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Draw the figure (aggregate MB/s against N with the limit line, one
    /// panel per benchmark) to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// One round of one point, judged against the ceilings sampled around it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Round {
    pub mb_s: f64,
    pub limit_mb_s: f64,
    pub efficiency: f64,
    /// Writes and appends: the limit from the new-blocks ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_blocks_limit_mb_s: Option<f64>,
    /// A cluster on this host: the limit its CPUs set (`Limits::cpu_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_mb_s: Option<f64>,
    /// Reads of a cluster on this host: the device's random 1 MiB read of
    /// the read set (as `data_read_mb_s`) with every core kept busy the
    /// share of the time this round kept them (`busy.cpu`; `load`), taken
    /// right after it. What the disk gives while the CPUs work as they did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_read_mb_s: Option<f64>,
    /// Indices into `limit_samples` of the ceilings taken just before and
    /// just after this measurement.
    pub samples: [usize; 2],
    /// What this host's CPUs and the data directory's device did meanwhile.
    pub busy: Busy,
    /// A cluster elsewhere: what each chunkserver's host was busy with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerBusy>,
    /// What bounded it: `CPU`, `disk`, `CPU+disk`, or `latency`, on this
    /// host or, for a cluster elsewhere, on any of its hosts.
    pub bound: &'static str,
    /// A cluster elsewhere: where it was saturated (`client CPU`, `ADDR
    /// disk`, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bound_at: Vec<String>,
}

/// A point of the figure: the medians over its rounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub bench: String,
    pub clients: usize,
    pub mb_s: f64,
    pub limit_mb_s: f64,
    /// The median of the rounds' efficiencies (each against its own limit).
    pub efficiency: f64,
    /// Writes and appends: the median of the rounds' new-blocks limits,
    /// and of their efficiencies against them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_blocks_limit_mb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_blocks_efficiency: Option<f64>,
    /// A cluster on this host: the median of the rounds' CPU limits, and of
    /// their efficiencies against them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit_mb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_efficiency: Option<f64>,
    /// Reads of a cluster on this host: the median of the rounds' device
    /// reads under their CPU load, and of their efficiencies against them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_read_mb_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_read_efficiency: Option<f64>,
    /// The median of each of the rounds' figures, and what that bounds.
    pub busy: Busy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<ServerBusy>,
    pub bound: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bound_at: Vec<String>,
    pub rounds: Vec<Round>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure3 {
    pub bench: &'static str,
    /// The median of each ceiling over `limit_samples` (a summary: every
    /// point is judged against the samples taken around it).
    pub limits: Limits,
    /// The ceilings, in the order they were measured.
    pub limit_samples: Vec<Limits>,
    /// The replication factor of the benchmark's files (R in the limits).
    pub replication: u32,
    /// Whether the run started the cluster on this host; `false` for one
    /// named by `--masters`, judged against this host's ceilings unless
    /// `hosts` holds the cluster's.
    pub local_cluster: bool,
    /// Records each appender kept in flight (`--append-in-flight`).
    pub append_in_flight: u64,
    /// With `--hosts`: the chunkserver hosts' ceilings the limits come
    /// from (`limit_samples` then hold this client host's TCP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Hosts>,
    pub results: Vec<Point>,
}

/// A throughput measured between the ceiling samples `before` and `after`.
#[derive(Debug, Clone)]
struct Measured {
    bench: String,
    clients: usize,
    mb_s: f64,
    before: usize,
    after: usize,
    busy: Busy,
    servers: Vec<ServerBusy>,
    loaded_read_mb_s: Option<f64>,
}

/// What the points are judged against.
#[derive(Debug, Clone, Copy)]
enum Basis<'a> {
    /// This host's ceilings; `shared`: the cluster runs on this host, so
    /// the CPU limit applies too.
    ThisHost { shared: bool },
    /// The chunkserver hosts' ceilings, with the client host's TCP of the
    /// samples.
    Hosts(&'a Hosts),
}

impl Basis<'_> {
    /// The limit, the new-files limit and the CPU limit of `bench` at
    /// replication `r` from the ceilings `l`.
    fn limits(self, l: &Limits, bench: &str, r: u32) -> (f64, Option<f64>, Option<f64>) {
        match self {
            Basis::ThisHost { shared } => (
                l.limit(bench, r),
                l.new_blocks_limit(bench, r),
                l.cpu_limit(bench, r).filter(|_| shared),
            ),
            Basis::Hosts(h) => (
                h.limit(bench, r, l.tcp_mb_s),
                h.new_blocks_limit(bench, r, l.tcp_mb_s),
                None,
            ),
        }
    }
}

/// Judges every measurement against the better of the two ceiling
/// samples around it (each ceiling on its own), and folds the rounds of
/// each (bench, clients) point, in the order the points were first
/// measured, into their medians. `basis` says what the limits come from;
/// `r` is the replication factor of the benchmark's files.
fn judge(measured: &[Measured], samples: &[Limits], basis: Basis, r: u32) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    for m in measured {
        let around = [samples[m.before].clone(), samples[m.after].clone()];
        let best = Limits::best_of(&around);
        let (limit_mb_s, new_blocks_limit_mb_s, cpu_limit_mb_s) = basis.limits(&best, &m.bench, r);
        let round = Round {
            mb_s: m.mb_s,
            limit_mb_s,
            efficiency: m.mb_s / limit_mb_s,
            new_blocks_limit_mb_s,
            cpu_limit_mb_s,
            loaded_read_mb_s: m.loaded_read_mb_s,
            samples: [m.before, m.after],
            busy: m.busy,
            servers: m.servers.clone(),
            bound: bound_with(&m.busy, &m.servers),
            bound_at: saturated_at(&m.busy, &m.servers),
        };
        match points
            .iter_mut()
            .find(|p| p.bench == m.bench && p.clients == m.clients)
        {
            Some(p) => p.rounds.push(round),
            None => points.push(Point {
                bench: m.bench.clone(),
                clients: m.clients,
                mb_s: f64::NAN,
                limit_mb_s: f64::NAN,
                efficiency: f64::NAN,
                new_blocks_limit_mb_s: None,
                new_blocks_efficiency: None,
                cpu_limit_mb_s: None,
                cpu_efficiency: None,
                loaded_read_mb_s: None,
                loaded_read_efficiency: None,
                busy: m.busy,
                servers: Vec::new(),
                bound: "unknown",
                bound_at: Vec::new(),
                rounds: vec![round],
            }),
        }
    }
    for p in &mut points {
        let of = |f: fn(&Round) -> f64| median(p.rounds.iter().map(f).collect());
        (p.mb_s, p.limit_mb_s, p.efficiency) =
            (of(|r| r.mb_s), of(|r| r.limit_mb_s), of(|r| r.efficiency));
        let against = |limit: fn(&Round) -> Option<f64>| {
            let limits: Vec<f64> = p.rounds.iter().map(limit).collect::<Option<_>>()?;
            let effs = p
                .rounds
                .iter()
                .zip(&limits)
                .map(|(r, l)| r.mb_s / l)
                .collect();
            Some((median(limits), median(effs)))
        };
        if let Some((l, e)) = against(|r| r.new_blocks_limit_mb_s) {
            (p.new_blocks_limit_mb_s, p.new_blocks_efficiency) = (Some(l), Some(e));
        }
        if let Some((l, e)) = against(|r| r.cpu_limit_mb_s) {
            (p.cpu_limit_mb_s, p.cpu_efficiency) = (Some(l), Some(e));
        }
        if let Some((l, e)) = against(|r| r.loaded_read_mb_s) {
            (p.loaded_read_mb_s, p.loaded_read_efficiency) = (Some(l), Some(e));
        }
        let all: Vec<Busy> = p.rounds.iter().map(|r| r.busy).collect();
        p.busy = median_busy(&all);
        let servers: Vec<Vec<ServerBusy>> = p.rounds.iter().map(|r| r.servers.clone()).collect();
        p.servers = median_servers(&servers);
        p.bound = bound_with(&p.busy, &p.servers);
        p.bound_at = saturated_at(&p.busy, &p.servers);
    }
    points
}

/// `n` clients each running `job(client, i)`: the aggregate rate, and
/// what the host was busy with meanwhile.
async fn clients<F, Fut>(
    masters: &[String],
    probe: &Probes,
    n: usize,
    bytes_each: u64,
    job: F,
) -> Result<(f64, Seen)>
where
    F: Fn(Client, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let cs: Vec<Client> = (0..n)
        .map(|_| Client::connect(masters))
        .collect::<Result<_, _>>()?;
    let before = probe.before().await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in cs.into_iter().enumerate() {
        tasks.spawn(job(c, i));
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let after = probe.after().await;
    let took = after.host.at - before.host.at;
    Ok((
        mb_s(bytes_each * n as u64, took),
        all_between(&before, &after),
    ))
}

/// Until the chunk files of a local cluster under `dir` stop
/// disappearing (at most 60 s): the chunkservers delete the last
/// benchmark's replicas in the background, and that disk work would count
/// against the first points of the next benchmark. Returns at once for a
/// cluster elsewhere.
async fn settle(dir: &std::path::Path) {
    let mut last = chunk_files_under(dir).len();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = chunk_files_under(dir).len();
        if now >= last {
            return;
        }
        last = now;
    }
}

/// Bytes a local cluster's run needs on the disk of `--dir` at once: the
/// read set and the largest point's files, each byte on `replication`
/// disks (every point's files are deleted before the next), and the
/// ceilings' scratch file.
fn disk_needed(a: &Figure3Args, replication: u64) -> u64 {
    let n = a.clients.iter().copied().max().unwrap_or(0) as u64;
    let has = |b: &str| a.benches.iter().any(|x| x == b);
    let read_set = if has("read") { a.read_set_bytes } else { 0 };
    let write = if has("write") { n * a.write_bytes } else { 0 };
    let append = if has("append") {
        n * a.records * MIB
    } else {
        0
    };
    replication * (read_set + write.max(append)) + a.limit_bytes
}

fn random_block(seed: u64, len: usize) -> bytes::Bytes {
    let mut b = vec![0u8; len];
    fill_random(&mut b, seed);
    b.into()
}

/// One measurement of `bench` with `n` clients, its files under `base`;
/// the bytes the clients move are counted on a bar of its own under
/// `multi` (elapsed time and current throughput, on a terminal).
async fn one_point(
    a: &Figure3Args,
    (masters, probe, multi): (&[String], &Probes, &indicatif::MultiProgress),
    base: &str,
    (bench, n, run): (&str, usize, u64),
    read_set: &[String],
) -> Result<(f64, Seen)> {
    let block = random_block(run * 31 + n as u64, 4 * MIB as usize);
    let dir = format!("{base}/{run}-{bench}-{n}");
    let each = match bench {
        "write" => a.write_bytes,
        "append" => a.records * MIB,
        _ => a.reads * 4 * MIB,
    };
    let bar = multi.add(progress(each * n as u64, &format!("{bench} N={n}")));
    let counted = bar.clone();
    let got = match bench {
        "write" => {
            clients(masters, probe, n, each, move |c, i| {
                let (block, path, bar) = (block.clone(), format!("{dir}-w{i}"), counted.clone());
                async move { write_stream(&c, &path, each, &block, Some(&bar)).await }
            })
            .await
        }
        "append" => {
            let path = format!("{dir}-log");
            let seed = Client::connect(masters)?;
            seed.create(&path, 0).await?;
            let (records, in_flight) = (a.records, a.append_in_flight);
            clients(masters, probe, n, each, move |c, _| {
                let (block, path, bar) = (block.clone(), path.clone(), counted.clone());
                async move { append_records(&c, &path, &block, (records, in_flight), &bar).await }
            })
            .await
        }
        _ => {
            let files = std::sync::Arc::new(read_set.to_vec());
            let per_file = a.read_set_bytes / read_set.len() as u64;
            let reads = a.reads;
            clients(masters, probe, n, each, move |c, i| {
                let (files, bar) = (files.clone(), counted.clone());
                async move {
                    use rand::{Rng, SeedableRng};
                    let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64 * 7 + run);
                    for _ in 0..reads {
                        let f = &files[rng.random_range(0..files.len())];
                        let max = per_file.saturating_sub(4 * MIB) / MIB;
                        let off = rng.random_range(0..=max) * MIB;
                        let got = c.read_at(f, off, 4 * MIB).await?;
                        anyhow::ensure!(got.len() as u64 == 4 * MIB, "short read of {f}");
                        bar.inc(4 * MIB);
                    }
                    Ok(())
                }
            })
            .await
        }
    };
    bar.finish_and_clear();
    multi.remove(&bar);
    got
}

/// Appends `records` 1 MiB records (slices of `block`) to `path` with
/// `in_flight` of them in flight, each appender taking the next record as
/// it finishes its last.
async fn append_records(
    c: &Client,
    path: &str,
    block: &bytes::Bytes,
    (records, in_flight): (u64, u64),
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut each = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (c, block, path, bar) = (c.clone(), block.clone(), path.to_string(), bar.clone());
        let next = next.clone();
        each.spawn(async move {
            loop {
                let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if r >= records {
                    return anyhow::Ok(());
                }
                let at = (r as usize * 4096) % (3 * MIB as usize);
                c.append_bytes(&path, block.slice(at..at + MIB as usize))
                    .await?;
                bar.inc(MIB);
            }
        });
    }
    while let Some(r) = each.join_next().await {
        r??;
    }
    Ok(())
}

pub async fn figure3(a: &Figure3Args) -> Result<Figure3> {
    anyhow::ensure!(!a.clients.is_empty(), "--clients names no count");
    anyhow::ensure!(a.rounds > 0, "--rounds must be at least 1");
    for b in &a.benches {
        anyhow::ensure!(
            ["read", "write", "append"].contains(&b.as_str()),
            "unknown benchmark {b}: read, write or append"
        );
    }
    // Read first: bad ceilings fail the run before it starts anything.
    let hosts = a.on_hosts.load()?;
    let crc32c_mb_s = crc_bandwidth();
    let measure = |data: &[PathBuf], seed: u64| -> Result<Limits> {
        // With the hosts' ceilings, only this host's link to the cluster.
        let args = LimitsArgs {
            dirs: if hosts.is_some() {
                Vec::new()
            } else {
                vec![a.dir.clone()]
            },
            size: a.limit_bytes,
            tcp_to: a.on_hosts.tcp_to.clone(),
            tcp_streams: a.on_hosts.tcp_streams,
            json: false,
        };
        let mut l = ceilings(&args, crc32c_mb_s)?;
        if !data.is_empty() {
            l.data_read_mb_s = Some(raw::read_spread(data, a.limit_bytes, MIB as usize, seed)?);
        }
        Ok(l)
    };
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    if a.masters.is_empty() {
        // A local cluster's replication: said before it starts, not when
        // a write fails for space minutes into the run.
        let (needed, free) = (
            disk_needed(a, 3),
            gfs_storage_engine::disk_space(&a.dir)
                .with_context(|| format!("free space of {}", a.dir.display()))?
                .0,
        );
        anyhow::ensure!(
            free >= needed,
            "this run needs about {} MiB free under {} (the read set and its largest point, \
             each on 3 disks, and a scratch file), which has {} MiB: give fewer --clients \
             or a smaller --write-bytes, --records or --read-set-bytes",
            needed >> 20,
            a.dir.display(),
            free >> 20
        );
    }
    let spec = Spec {
        rereplication_grace_ms: 60_000,
        ..crate::cluster::bench_spec(&a.dir)
    };
    let (local, masters) = crate::cluster::target(&a.masters, spec).await?;
    let admin = Client::connect(&masters)?;
    // Every file of the run goes under a directory of its own, removed at
    // the end: a cluster named by --masters keeps nothing of the run, and
    // two runs against it (from two client hosts) never touch each
    // other's files.
    let space = crate::Space::make(admin.master()).await?;
    let base = space.path.clone();
    let run = async {
        let replication = space.replication(admin.master()).await?;
        if let Some(h) = &hosts {
            h.check_replication(replication)?;
        }
        // The device under --dir is the cluster's only when it is local;
        // a cluster elsewhere has its chunkservers' hosts probed.
        let local_dir = local.is_some().then_some(a.dir.as_path());
        let probe = Probes::of_cluster(local_dir, admin.master(), &base).await?;
        // The read set: a few files written once, read by every point.
        let mut read_set = Vec::new();
        if a.benches.iter().any(|b| b == "read") {
            let files = 4u64;
            let bar = progress(a.read_set_bytes, "read set");
            let block = random_block(99, 4 * MIB as usize);
            for f in 0..files {
                let path = format!("{base}/set{f}");
                write_stream(&admin, &path, a.read_set_bytes / files, &block, None).await?;
                bar.inc(a.read_set_bytes / files);
                read_set.push(path);
            }
            bar.finish_and_clear();
        }
        // The read set's chunk files, for the device's read of that data (a
        // local cluster only; nothing else is stored yet).
        let data: Vec<PathBuf> = match &local {
            Some(c) if !read_set.is_empty() => c
                .servers
                .iter()
                .flat_map(|s| chunk_files_under(&s.data_dir))
                .collect(),
            _ => Vec::new(),
        };
        // The points done, and under it the one running.
        let multi = indicatif::MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let total = (a.rounds * a.benches.len() * a.clients.len()) as u64;
        let bar = multi.add(crate::progress_as(
            total,
            "",
            "figure3 [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        ));
        let mut samples: Vec<Limits> = Vec::new();
        // Whether the last sample was taken after everything that ran so far,
        // so that it can serve as the next point's "before".
        let mut fresh = false;
        let mut measured = Vec::new();
        for round in 1..=a.rounds {
            for bench in &a.benches {
                for &n in &a.clients {
                    bar.set_message(format!("round {round}: ceilings"));
                    if !fresh {
                        samples.push(measure(&data, samples.len() as u64)?);
                    }
                    let before = samples.len() - 1;
                    bar.set_message(format!("round {round}: {bench} N={n}"));
                    let run = measured.len() as u64;
                    let (got, (busy, servers)) = one_point(
                        a,
                        (&masters, &probe, &multi),
                        &base,
                        (bench, n, run),
                        &read_set,
                    )
                    .await?;
                    bar.set_message(format!("round {round}: {bench} N={n}: {got:.0} MB/s"));
                    // The disk under the CPU load this read put on the cores.
                    let loaded_read_mb_s = match busy.cpu {
                        Some(share) if bench == "read" && !data.is_empty() => {
                            let seed = samples.len() as u64;
                            let read =
                                || raw::read_spread(&data, a.limit_bytes, MIB as usize, seed);
                            Some(crate::load::busy_at(share, read).0?)
                        }
                        _ => None,
                    };
                    samples.push(measure(&data, samples.len() as u64)?);
                    fresh = true;
                    measured.push(Measured {
                        bench: bench.clone(),
                        clients: n,
                        mb_s: got,
                        before,
                        after: samples.len() - 1,
                        busy,
                        servers,
                        loaded_read_mb_s,
                    });
                    bar.inc(1);
                    // Free the space for the next point: the points of a
                    // benchmark together (at the default counts 31 files
                    // of 256 MiB, each on three disks) need more disk than
                    // its largest alone, and more than some hosts have.
                    let mut deleted = false;
                    for f in admin.list(&base).await? {
                        let path = format!("{base}/{}", f.name);
                        if !read_set.contains(&path) {
                            admin.master().delete_with(&path, false, true).await?;
                            deleted = true;
                        }
                    }
                    if deleted {
                        settle(&a.dir).await;
                        fresh = false;
                    }
                }
            }
        }
        bar.finish_and_clear();
        anyhow::Ok((samples, measured, replication))
    };
    let run = run.await;
    let (samples, measured, replication) = space.purge(admin.master(), run).await?;
    let basis = match &hosts {
        Some(h) => Basis::Hosts(h),
        None => Basis::ThisHost {
            shared: local.is_some(),
        },
    };
    let fig = Figure3 {
        bench: "figure3",
        limits: Limits::median_of(&samples),
        results: judge(&measured, &samples, basis, replication),
        replication,
        local_cluster: local.is_some(),
        append_in_flight: a.append_in_flight,
        limit_samples: samples,
        hosts,
    };
    if let Some(p) = &a.plot {
        crate::plot::figure3_svg(&fig, p)?;
    }
    Ok(fig)
}

/// The ceilings of this host, as `print_figure3` prints them.
/// The range of ceiling `g` over a run's samples, as `lo-hi`.
fn range(f: &Figure3, g: impl Fn(&Limits) -> f64) -> String {
    let v: Vec<f64> = f.limit_samples.iter().map(g).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.0}-{hi:.0}")
}

fn print_this_host(f: &Figure3) {
    println!(
        "ceilings, {} samples (median, range): device read {:.0} MB/s ({}), write {:.0} MB/s ({}), loopback TCP {:.0} MB/s ({})",
        f.limit_samples.len(),
        f.limits.sequential_read(),
        range(f, |l| l.sequential_read()),
        f.limits.disk_write(),
        range(f, |l| l.disk_write()),
        f.limits.tcp_mb_s,
        range(f, |l| l.tcp_mb_s),
    );
    println!(
        "device write into new files (as chunk files fill) {:.0} MB/s ({})",
        f.limits.disk_new_blocks_write(),
        range(f, |l| l.disk_new_blocks_write()),
    );
    if let Some(d) = f.limits.data_read_mb_s {
        println!(
            "device read of the read set's chunk files, random 1 MiB: {d:.0} MB/s ({})",
            range(f, |l| l.data_read_mb_s.unwrap_or(f64::NAN))
        );
    }
    println!(
        "limits: read min(device read, TCP); write and append min(device write, TCP) / R, \
         R = {} (the replication of the benchmark's files)",
        f.replication
    );
}

/// The chunkserver hosts' ceilings (`--hosts`) and this client host's
/// link, as `print_figure3` prints them.
fn print_hosts(f: &Figure3, hosts: &Hosts) {
    for h in &hosts.0 {
        let disks: Vec<String> = h
            .disks
            .iter()
            .map(|d| {
                format!(
                    "{} read {:.0}, write {:.0} (new files {:.0})",
                    d.dir, d.read_mb_s, d.write_mb_s, d.new_blocks_write_mb_s
                )
            })
            .collect();
        println!(
            "chunkserver host {}: {} MB/s; TCP to {} {:.0} MB/s",
            h.file,
            disks.join("; "),
            h.tcp_to,
            h.tcp_mb_s
        );
    }
    println!(
        "this client host, {} samples (median, range): {} {:.0} MB/s ({})",
        f.limit_samples.len(),
        f.limits.tcp_name(),
        f.limits.tcp_mb_s,
        range(f, |l| l.tcp_mb_s),
    );
    println!(
        "limits, the cluster's (R = {}, the replication of the benchmark's files): read \
         min(client TCP, sum over the hosts of min(their disks' read, TCP)); write min(client \
         TCP, sum over the hosts of min(their disks' write, TCP) / R); append min(client TCP, \
         the R-th best host's min(one disk's write, TCP)): one chunk's chain takes every record",
        f.replication
    );
}

pub fn print_figure3(f: &Figure3) {
    match &f.hosts {
        Some(hosts) => print_hosts(f, hosts),
        None => print_this_host(f),
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0));
    let shared_host = f.results.iter().any(|p| p.cpu_limit_mb_s.is_some());
    if let (true, Some(line)) = (shared_host, cpu_costs(&f.limits, f.replication)) {
        println!("{line} (medians)");
    }
    println!(
        "{:<7} {:>7} {:>8} {:>10} {:>10} {:>9} {:>9} {:>5} {:>6} {:>24}  {:<8} each round: MB/s against its limit",
        "bench",
        "clients",
        "MB/s",
        "limit MB/s",
        "efficiency",
        "new files",
        "CPU limit",
        "CPU",
        "stolen",
        "disk (in flight) MB/s",
        "bound"
    );
    for p in &f.results {
        let rounds: Vec<String> = p
            .rounds
            .iter()
            .map(|r| {
                format!(
                    "{:.0}/{:.0} {:.0}% ({})",
                    r.mb_s,
                    r.limit_mb_s,
                    r.efficiency * 100.0,
                    r.bound
                )
            })
            .collect();
        let bound = crate::busy::bound_where(p.bound, &p.bound_at);
        let disk = p.busy.disk.map_or("-".to_string(), |d| {
            format!(
                "{:.0}% ({:.1}) {:.0}",
                d.util * 100.0,
                d.in_flight,
                d.read_mb_s + d.write_mb_s
            )
        });
        println!(
            "{:<7} {:>7} {:>8.0} {:>10.0} {:>9.0}% {:>9} {:>9} {:>5} {:>6} {:>24}  {:<8} {}",
            p.bench,
            p.clients,
            p.mb_s,
            p.limit_mb_s,
            p.efficiency * 100.0,
            pct(p.new_blocks_efficiency),
            pct(p.cpu_efficiency),
            pct(p.busy.cpu),
            pct(p.busy.cpu_steal),
            disk,
            bound,
            rounds.join(", ")
        );
        for sv in &p.servers {
            println!("{:>17} {}", "", server_line(sv));
        }
    }
    for p in f.results.iter().filter(|p| p.loaded_read_mb_s.is_some()) {
        println!(
            "read N={}: the device read the read set's chunk files (random 1 MiB) at {:.0} MB/s \
             with every core kept {} busy, as the point kept them: the point is {} of that",
            p.clients,
            p.loaded_read_mb_s.unwrap_or(f64::NAN),
            pct(p.busy.cpu),
            pct(p.loaded_read_efficiency),
        );
    }
    println!(
        "new files: writes and appends against the limit from the device's write into new \
         files (the efficiency is against the better of a fresh and an overwriting pass)"
    );
    if !f.local_cluster && f.hosts.is_none() {
        println!(
            "limits: from this host's ceilings (--dir, loopback TCP), as if the cluster named by \
             --masters were one such host; for the cluster's own, give --hosts the ceilings \
             `gfs-bench limits --tcp-to` measured on each chunkserver host (BENCHMARKS.md, \
             \"Running them\")"
        );
    }
    if shared_host {
        println!(
            "CPU limit: against what this host's CPUs allow when clients and servers share \
             them (every core on nothing but each byte's loopback hops, device I/O and CRC32C)"
        );
    }
    println!(
        "CPU: share of this host's CPU time working; stolen: given by the hypervisor to others \
         (a VM's steal time: neither work nor idle); disk: share of the time the data \
         directory's device had a request in flight (requests in flight on average, and what it \
         moved: every replica, and the other I/O of the host); \
         bound: what was saturated (>= {:.0}%; the CPUs with stolen time), `latency` when \
         neither was; for a cluster elsewhere, on any of its hosts (named, each chunkserver \
         host's figures below its point, as it reported them)",
        crate::busy::SATURATED * 100.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::tests::sample;

    #[test]
    fn a_run_needs_the_read_set_and_its_largest_point_on_three_disks() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Figure3Args,
        }
        let a = Cli::parse_from(["figure3"]).a;
        // Defaults: 512 MiB read set; 16 writers of 256 MiB or 16
        // appenders of 256 MiB; a 256 MiB scratch file.
        assert_eq!(disk_needed(&a, 3), 3 * (512 + 16 * 256) * MIB + 256 * MIB);
        let a = Cli::parse_from(["figure3", "--clients", "4", "--benches", "append"]).a;
        assert_eq!(disk_needed(&a, 3), 3 * 4 * 256 * MIB + 256 * MIB);
    }

    /// What the host did during a measurement: CPUs busy, device busy.
    fn busy(cpu: f64, util: f64) -> Busy {
        Busy {
            cpu: Some(cpu),
            cpu_iowait: Some(0.0),
            cpu_steal: Some(0.0),
            disk: Some(crate::busy::DiskBusy {
                util,
                in_flight: 1.0,
                read_mb_s: 0.0,
                write_mb_s: 0.0,
            }),
        }
    }

    fn measured(
        bench: &str,
        clients: usize,
        (mb_s, busy): (f64, Busy),
        before: usize,
        after: usize,
    ) -> Measured {
        Measured {
            bench: bench.into(),
            clients,
            mb_s,
            before,
            after,
            busy,
            servers: Vec::new(),
            loaded_read_mb_s: None,
        }
    }

    #[test]
    fn each_round_is_judged_against_the_ceilings_around_it() {
        // Write ceilings 1500, 900, 1200, 600 (limits / 3: 500, 300, 400, 200).
        let samples = [
            sample(1500.0, 1000.0, 9000.0),
            sample(900.0, 2000.0, 9000.0),
            sample(1200.0, 1000.0, 9000.0),
            sample(600.0, 1000.0, 9000.0),
        ];
        let got = judge(
            &[
                measured("write", 4, (320.0, busy(0.95, 0.5)), 0, 1),
                measured("read", 1, (1200.0, busy(0.4, 0.99)), 1, 2),
                measured("write", 4, (175.0, busy(0.5, 0.2)), 2, 3),
                measured("write", 4, (350.0, busy(0.97, 0.6)), 1, 2),
            ],
            &samples,
            Basis::ThisHost { shared: true },
            3,
        );
        // Every sample's new-blocks write is 3/4 of its write; the CPU
        // limits are 500 for writes, 1500 for reads.
        let round = |(mb_s, busy): (f64, Busy), limit_mb_s: f64, samples: [usize; 2]| Round {
            mb_s,
            limit_mb_s,
            efficiency: mb_s / limit_mb_s,
            new_blocks_limit_mb_s: Some(limit_mb_s * 0.75),
            cpu_limit_mb_s: Some(500.0),
            loaded_read_mb_s: None,
            samples,
            busy,
            servers: Vec::new(),
            bound: crate::busy::bound(&busy),
            bound_at: Vec::new(),
        };
        assert_eq!(
            got,
            vec![
                Point {
                    bench: "write".into(),
                    clients: 4,
                    mb_s: 320.0,
                    limit_mb_s: 400.0,
                    // 320 / 500, 175 / 400, 350 / 400: the middle one.
                    efficiency: 0.64,
                    // 375, 300, 300; 320 / 375, 175 / 300, 350 / 300.
                    new_blocks_limit_mb_s: Some(300.0),
                    new_blocks_efficiency: Some(320.0 / 375.0),
                    cpu_limit_mb_s: Some(500.0),
                    cpu_efficiency: Some(320.0 / 500.0),
                    // The median round kept the CPUs busy.
                    loaded_read_mb_s: None,
                    loaded_read_efficiency: None,
                    busy: busy(0.95, 0.5),
                    servers: Vec::new(),
                    bound: "CPU",
                    bound_at: Vec::new(),
                    rounds: vec![
                        round((320.0, busy(0.95, 0.5)), 500.0, [0, 1]),
                        round((175.0, busy(0.5, 0.2)), 400.0, [2, 3]),
                        round((350.0, busy(0.97, 0.6)), 400.0, [1, 2]),
                    ],
                },
                Point {
                    bench: "read".into(),
                    clients: 1,
                    mb_s: 1200.0,
                    limit_mb_s: 2000.0,
                    efficiency: 0.6,
                    new_blocks_limit_mb_s: None,
                    new_blocks_efficiency: None,
                    cpu_limit_mb_s: Some(1500.0),
                    cpu_efficiency: Some(0.8),
                    loaded_read_mb_s: None,
                    loaded_read_efficiency: None,
                    busy: busy(0.4, 0.99),
                    servers: Vec::new(),
                    bound: "disk",
                    bound_at: Vec::new(),
                    rounds: vec![Round {
                        new_blocks_limit_mb_s: None,
                        cpu_limit_mb_s: Some(1500.0),
                        ..round((1200.0, busy(0.4, 0.99)), 2000.0, [1, 2])
                    }],
                },
            ]
        );
    }

    #[test]
    fn reads_are_also_judged_against_the_disk_under_their_cpu_load() {
        let samples = [
            sample(1500.0, 4000.0, 9000.0),
            sample(1500.0, 4000.0, 9000.0),
        ];
        let read = |mb_s, loaded| Measured {
            loaded_read_mb_s: loaded,
            ..measured("read", 4, (mb_s, busy(0.5, 0.95)), 0, 1)
        };
        let got = judge(
            &[
                read(3000.0, Some(3200.0)),
                read(2900.0, Some(2900.0)),
                read(3100.0, Some(3500.0)),
            ],
            &samples,
            Basis::ThisHost { shared: true },
            3,
        );
        let p = &got[0];
        let loaded: Vec<_> = p.rounds.iter().map(|r| r.loaded_read_mb_s).collect();
        assert_eq!(loaded, [Some(3200.0), Some(2900.0), Some(3500.0)]);
        assert_eq!(p.loaded_read_mb_s, Some(3200.0));
        // 3000 / 3200, 2900 / 2900, 3100 / 3500: the middle one.
        assert_eq!(p.loaded_read_efficiency, Some(3000.0 / 3200.0));
        assert_eq!(
            p.efficiency,
            3000.0 / 4000.0,
            "the efficiency stays against the limit"
        );
        // A round without one (the counters did not move): none for the point.
        let got = judge(
            &[read(3000.0, Some(3200.0)), read(2900.0, None)],
            &samples,
            Basis::ThisHost { shared: true },
            3,
        );
        assert_eq!(got[0].loaded_read_mb_s, None);
        assert_eq!(got[0].loaded_read_efficiency, None);
    }

    #[test]
    fn a_cluster_elsewhere_is_not_judged_against_this_hosts_cpus() {
        let samples = [
            sample(1500.0, 1000.0, 9000.0),
            sample(900.0, 2000.0, 9000.0),
        ];
        let got = judge(
            &[measured("write", 4, (320.0, busy(0.95, 0.5)), 0, 1)],
            &samples,
            Basis::ThisHost { shared: false },
            3,
        );
        assert_eq!(got[0].cpu_limit_mb_s, None);
        assert_eq!(got[0].cpu_efficiency, None);
        assert_eq!(got[0].rounds[0].cpu_limit_mb_s, None);
        assert_eq!(got[0].efficiency, 320.0 / 500.0);
    }

    #[test]
    fn a_cluster_elsewhere_is_bound_by_whichever_of_its_hosts_was_saturated() {
        let samples = [sample(1500.0, 1000.0, 9000.0)];
        let server = |addr: &str, cpu, util| ServerBusy {
            addr: addr.into(),
            busy: busy(cpu, util),
        };
        // This host has no disk of the cluster's.
        let client = |cpu| Busy {
            disk: None,
            ..busy(cpu, 0.0)
        };
        let round = |c, servers: Vec<ServerBusy>| Measured {
            servers,
            ..measured("write", 4, (300.0, client(c)), 0, 0)
        };
        let got = judge(
            &[
                round(0.5, vec![server("cs1", 0.3, 0.5), server("cs2", 0.4, 0.95)]),
                round(0.95, vec![server("cs1", 0.3, 0.5), server("cs2", 0.4, 0.5)]),
                round(0.5, vec![server("cs1", 0.5, 0.7), server("cs2", 0.2, 0.97)]),
            ],
            &samples,
            Basis::ThisHost { shared: false },
            3,
        );
        let p = &got[0];
        let at: Vec<&Vec<String>> = p.rounds.iter().map(|r| &r.bound_at).collect();
        assert_eq!(
            at,
            [
                &vec!["cs2 disk".to_string()],
                &vec!["client CPU".into()],
                &vec!["cs2 disk".into()]
            ]
        );
        let bounds: Vec<&str> = p.rounds.iter().map(|r| r.bound).collect();
        assert_eq!(bounds, ["disk", "CPU", "disk"]);
        // The point: each server's medians.
        assert_eq!(
            p.servers,
            [server("cs1", 0.3, 0.5), server("cs2", 0.4, 0.95)]
        );
        assert_eq!(
            (p.bound, p.bound_at.clone()),
            ("disk", vec!["cs2 disk".to_string()])
        );
        // Nothing saturated anywhere, every figure known: latency; a
        // server without a device figure: unknown.
        let calm = judge(
            &[round(0.5, vec![server("cs1", 0.3, 0.5)])],
            &samples,
            Basis::ThisHost { shared: false },
            3,
        );
        assert_eq!((calm[0].bound, calm[0].bound_at.len()), ("latency", 0));
        let blind = vec![ServerBusy {
            addr: "cs1".into(),
            busy: client(0.3),
        }];
        let unknown = judge(
            &[round(0.5, blind)],
            &samples,
            Basis::ThisHost { shared: false },
            3,
        );
        assert_eq!(unknown[0].bound, "unknown");
    }

    #[test]
    fn a_cluster_on_hosts_of_its_own_is_judged_against_their_ceilings_and_this_hosts_link() {
        use crate::hosts::{Host, Hosts};
        use crate::limits::DiskLimit;
        // Three hosts, each one disk (write 900, new files 600, read 1200)
        // behind a 1000 MB/s link.
        let host = Host {
            file: "cs".into(),
            disks: vec![DiskLimit {
                dir: "/nvme".into(),
                write_mb_s: 900.0,
                new_blocks_write_mb_s: 600.0,
                read_mb_s: 1200.0,
                io_mb_per_cpu_s: None,
            }],
            together: None,
            tcp_mb_s: 1000.0,
            tcp_to: "10.0.0.1:7100".into(),
        };
        let hosts = Hosts(vec![host; 3]);
        // This host's disk is no part of it; its link to the cluster is
        // 2500 then 5000 MB/s.
        let samples = [sample(1.0, 1.0, 2500.0), sample(1.0, 1.0, 5000.0)];
        let got = judge(
            &[
                measured("read", 4, (1500.0, busy(0.5, 0.0)), 0, 0),
                measured("read", 8, (1500.0, busy(0.5, 0.0)), 0, 1),
                measured("write", 4, (600.0, busy(0.5, 0.0)), 0, 1),
                measured("append", 4, (450.0, busy(0.5, 0.0)), 0, 1),
            ],
            &samples,
            Basis::Hosts(&hosts),
            3,
        );
        // Read: 3 x min(1200, 1000), within the client's link.
        assert_eq!(got[0].limit_mb_s, 2500.0);
        assert_eq!(got[1].limit_mb_s, 3000.0);
        assert_eq!(got[1].efficiency, 0.5);
        assert_eq!(got[1].new_blocks_limit_mb_s, None);
        // Write: 3 x 900 / 3; new files 3 x 600 / 3.
        assert_eq!(got[2].limit_mb_s, 900.0);
        assert_eq!(got[2].new_blocks_limit_mb_s, Some(600.0));
        assert_eq!(got[2].new_blocks_efficiency, Some(1.0));
        // Append: one chain of three, each as fast as one disk.
        assert_eq!(got[3].limit_mb_s, 900.0);
        assert_eq!(got[3].efficiency, 0.5);
        // Nothing of the cluster runs on this host's CPUs.
        assert!(got.iter().all(|p| p.cpu_limit_mb_s.is_none()));
    }

    #[test]
    fn writes_and_appends_are_judged_at_the_clusters_replication() {
        let samples = [sample(1500.0, 1000.0, 9000.0)];
        let got = judge(
            &[
                measured("write", 4, (600.0, busy(0.9, 0.5)), 0, 0),
                measured("read", 4, (800.0, busy(0.9, 0.5)), 0, 0),
            ],
            &samples,
            Basis::ThisHost { shared: true },
            2,
        );
        // Every byte lands twice: 1500 / 2; a read is read once.
        assert_eq!(got[0].limit_mb_s, 750.0);
        assert_eq!(got[0].efficiency, 600.0 / 750.0);
        assert_eq!(got[0].new_blocks_limit_mb_s, Some(1125.0 / 2.0));
        assert_eq!(got[0].cpu_limit_mb_s, Some(750.0));
        assert_eq!(got[1].limit_mb_s, 1000.0);
        assert_eq!(got[1].cpu_limit_mb_s, Some(1500.0));
    }
}
