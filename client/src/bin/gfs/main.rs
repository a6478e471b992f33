//! `gfs`: the gfs-rs command line.

mod cluster;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures_util::{StreamExt, TryStreamExt};
use gfs_client::{Client, MasterClient, Reader, RecordReader, Writer};
use gfs_proto::wire::master::{
    AddMasterRequest, FileInfo, RemoveMasterRequest, TransferLeaderRequest,
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Parser)]
#[command(
    name = "gfs",
    version,
    about = "gfs-rs command line",
    after_help = "A cluster that requires a token: set GFS_AUTH_TOKEN_FILE to its token file."
)]
struct Args {
    /// Comma-separated master addresses (host:port). Default: GFS_MASTERS,
    /// else the local cluster's (`<cluster dir>/masters`).
    #[arg(long, env = "GFS_MASTERS", value_delimiter = ',')]
    masters: Vec<String>,
    /// Directory of the local cluster (`gfs cluster`).
    #[arg(
        long,
        env = "GFS_CLUSTER_DIR",
        default_value = "gfs-cluster",
        global = true
    )]
    dir: PathBuf,
    /// Machine-readable output where a script would want it.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Make a directory (-p: with its parents, no error if it exists).
    Mkdir {
        path: String,
        #[arg(short)]
        p: bool,
    },
    /// Create an empty file (fails if it exists).
    Touch {
        path: String,
        #[arg(long, default_value_t = 0)]
        replication: u32,
    },
    /// A file's metadata, its chunks, versions and replicas.
    Stat {
        path: String,
        /// Serve from any master without confirming leadership.
        #[arg(long)]
        stale: bool,
    },
    /// List a directory (-l: kind, size, chunks, replication).
    Ls {
        #[arg(default_value = "/")]
        path: String,
        /// Long format: kind, size (human), chunks, replication, name.
        #[arg(short)]
        l: bool,
        /// Deleted entries awaiting reclaim instead (id for `undelete`,
        /// when they are reclaimed); PATH is ignored.
        #[arg(long)]
        deleted: bool,
    },
    /// Rename a file or directory (atomic).
    Mv { from: String, to: String },
    /// Delete (recoverable with `undelete` until reclaimed). Deleting a
    /// path that only exists as deleted entries reclaims them at once.
    Rm {
        path: String,
        #[arg(short)]
        r: bool,
        /// Reclaim the space now instead of after the retention period.
        #[arg(long)]
        purge: bool,
    },
    /// Set a directory's policy for what is created or deleted below it
    /// (unset values are inherited from the directories above, then the
    /// masters' defaults). `gfs stat DIR` shows it.
    Policy {
        dir: String,
        /// Replication of new files below DIR.
        #[arg(long)]
        replication: Option<u32>,
        /// How long files deleted below DIR stay recoverable, in seconds
        /// (a temp directory might use 1).
        #[arg(long)]
        retention_secs: Option<f64>,
    },
    /// Copy-on-write snapshot of a file or directory tree (metadata only;
    /// chunks are copied on their first write).
    Snapshot { src: String, dst: String },
    /// Restore a deleted entry by its id (`gfs ls --deleted`).
    Undelete { id: u64 },
    /// Copy a local file into gfs (creates REMOTE).
    Put { local: PathBuf, remote: String },
    /// Copy a gfs file to a local file.
    Get { remote: String, local: PathBuf },
    /// Write a gfs file to stdout.
    Cat { path: String },
    /// Record-append each line of FILE (default stdin) to PATH, creating it
    /// if needed; prints each record's offset, in the order of the lines.
    Append {
        path: String,
        file: Option<PathBuf>,
        /// Records in flight at once. 1 (the default) appends each line
        /// after the one before, so they land in the file in their order;
        /// more is many times faster (the primary takes several records a
        /// round), and the records land in an order of the cluster's
        /// choosing, as record appends from several clients do.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
        in_flight: u16,
    },
    /// Print each record of an appended file once, in file order.
    Records { path: String },
    /// A local cluster: 3 masters and 4 chunkservers on 127.0.0.x.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Cluster administration: status, fsck, leadership, masters,
    /// decommissioning.
    #[command(subcommand)]
    Admin(Admin),
    /// The throughput benchmarks: runs `gfs-bench` (beside this binary, else
    /// on PATH) with the arguments that follow (`gfs bench figure3 --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// Start it (data, logs and pids under --dir) and wait until it serves.
    Start(cluster::StartArgs),
    /// End exactly the processes `start` recorded.
    Stop,
    Status,
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// Every master's view: role, term, leader, log and applied index.
    Status,
    /// Hand leadership to another master (0: the most up to date).
    TransferLeader {
        #[arg(default_value_t = 0)]
        to: u64,
    },
    AddMaster {
        id: u64,
        addr: String,
    },
    RemoveMaster {
        id: u64,
    },
    /// Drain chunkserver ID: it gets no new replicas and every chunk it
    /// holds is copied elsewhere, then deleted from it; `admin status`
    /// shows when it is safe to remove.
    Decommission {
        id: u64,
        /// Stop draining it.
        #[arg(long)]
        cancel: bool,
    },
    /// Health of every chunk under PATH (under-replicated, missing) and
    /// the cluster's repair work; exits non-zero when data is at risk.
    Fsck {
        #[arg(default_value = "/")]
        path: String,
        /// List healthy files too.
        #[arg(long)]
        all: bool,
    },
}

fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn file_json(f: &FileInfo) -> serde_json::Value {
    serde_json::json!({
        "name": f.name,
        "dir": f.is_dir,
        "length": f.length,
        "chunks": f.chunks,
        "replication": f.replication,
        "retention_ms": f.retention_ms,
        "mtime_ms": f.mtime_ms,
    })
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

fn report(json: bool, verb: &str, path: &str, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    let mb_s = bytes as f64 / 1e6 / secs.max(1e-9);
    if json {
        println!(
            "{}",
            serde_json::json!({"op": verb, "path": path, "bytes": bytes, "seconds": secs, "mb_s": mb_s})
        );
    } else {
        eprintln!(
            "{verb} {path}: {} in {secs:.2} s ({mb_s:.1} MB/s)",
            human(bytes)
        );
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Quiet unless asked (`RUST_LOG=gfs_client=debug` shows each retried
    // mutation and read, and why); on stderr, apart from the output.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gfs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn masters_of(a: &Args) -> anyhow::Result<Vec<String>> {
    if !a.masters.is_empty() {
        return Ok(a.masters.clone());
    }
    let file = a.dir.join("masters");
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no masters given: pass --masters, set GFS_MASTERS, or start a local cluster \
             (`gfs cluster start`; looked for {})",
            file.display()
        )
    })?;
    Ok(text.trim().split(',').map(String::from).collect())
}

/// Becomes `gfs-bench ARGS` (the same process: its output, its exit
/// status).
fn bench(args: &[String]) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = cluster::sibling("gfs-bench");
    let e = std::process::Command::new(&bin).args(args).exec();
    anyhow::bail!(
        "running {}: {e} (build it with `cargo build --release`)",
        bin.display()
    )
}

async fn run(a: Args) -> anyhow::Result<()> {
    if let Cmd::Cluster(c) = &a.cmd {
        return run_cluster(&a, c).await;
    }
    if let Cmd::Bench { args } = &a.cmd {
        return bench(args);
    }
    let masters = masters_of(&a)?;
    let client = Client::connect(&masters)?;
    let c = client.master();
    match a.cmd {
        Cmd::Mkdir { path, p } => c.mkdir(&path, p).await?,
        Cmd::Touch { path, replication } => c.create(&path, replication).await?,
        Cmd::Stat { path, stale } => stat(&client, &path, stale, a.json).await?,
        Cmd::Ls { deleted: true, .. } => list_deleted(c, a.json).await?,
        Cmd::Ls { path, l, .. } => {
            let list = c.list(&path).await?;
            if a.json {
                let v: Vec<_> = list.iter().map(file_json).collect();
                println!("{}", serde_json::Value::Array(v));
            }
            for f in list.iter().filter(|_| !a.json) {
                match (l, f.is_dir) {
                    (false, _) => println!("{}{}", f.name, if f.is_dir { "/" } else { "" }),
                    (true, true) => println!("d {:>10} {:>6} {:>3} {}/", "-", "-", "-", f.name),
                    (true, false) => println!(
                        "- {:>10} {:>6} r{:<2} {}",
                        human(f.length),
                        f.chunks,
                        f.replication,
                        f.name
                    ),
                }
            }
        }
        Cmd::Mv { from, to } => c.rename(&from, &to).await?,
        Cmd::Rm { path, r, purge } => {
            let d = c.delete_with(&path, r, purge).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"deleted_id": d.deleted_id, "purged": d.purged})
                );
            } else if d.deleted_id == 0 {
                println!(
                    "purged {} deleted entr{}",
                    d.purged,
                    if d.purged == 1 { "y" } else { "ies" }
                );
            } else {
                println!("deleted, undelete id {}", d.deleted_id);
            }
        }
        Cmd::Policy {
            dir,
            replication,
            retention_secs,
        } => {
            let retention_ms = retention_secs.map_or(0, |s| ((s * 1000.0) as u64).max(1));
            c.set_policy(&dir, replication.unwrap_or(0), retention_ms)
                .await?;
        }
        Cmd::Snapshot { src, dst } => {
            let start = Instant::now();
            let r = c.snapshot(&src, &dst).await?;
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"files": r.files, "chunks": r.chunks, "ms": ms})
                );
            } else {
                println!(
                    "snapshot {src} -> {dst}: {} files, {} chunks shared, {ms:.1} ms",
                    r.files, r.chunks
                );
            }
        }
        Cmd::Undelete { id } => println!("restored {}", c.undelete(id).await?),
        Cmd::Put { local, remote } => {
            let start = Instant::now();
            let mut src = tokio::fs::File::open(&local)
                .await
                .with_context(|| format!("opening {}", local.display()))?;
            let len = src.metadata().await?.len();
            let bar = progress(len, "put");
            let mut w = Writer::create(&client, &remote).await?;
            loop {
                // Memory of its own each time, handed over whole: the
                // writer sends the whole pieces in it without a copy.
                let mut buf = bytes::BytesMut::with_capacity(PUT_BUFFER_BYTES);
                while buf.len() < PUT_BUFFER_BYTES && src.read_buf(&mut buf).await? > 0 {}
                if buf.is_empty() {
                    break;
                }
                let n = buf.len() as u64;
                w.write_bytes(buf.freeze()).await?;
                bar.inc(n);
            }
            let written = w.close().await?;
            bar.finish_and_clear();
            report(a.json, "put", &remote, written, start);
        }
        Cmd::Get { remote, local } => {
            let start = Instant::now();
            let mut r = Reader::open(&client, &remote).await?;
            let bar = progress(r.len(), "get");
            let mut dst = tokio::fs::File::create(&local)
                .await
                .with_context(|| format!("creating {}", local.display()))?;
            let n = copy(&mut r, &mut dst, Some(&bar)).await?;
            dst.flush().await?;
            bar.finish_and_clear();
            report(a.json, "get", &remote, n, start);
        }
        Cmd::Cat { path } => {
            let mut r = Reader::open(&client, &path).await?;
            let mut out = tokio::io::stdout();
            copy(&mut r, &mut out, None).await?;
            out.flush().await?;
        }
        Cmd::Append {
            path,
            file,
            in_flight,
        } => append(&client, &path, file, usize::from(in_flight), a.json).await?,
        Cmd::Records { path } => {
            let mut rr = RecordReader::open(&client, &path).await?;
            let mut out = tokio::io::stdout();
            while let Some(r) = rr.next().await? {
                out.write_all(&r.data).await?;
                out.write_all(b"\n").await?;
            }
            out.flush().await?;
        }
        Cmd::Admin(Admin::Fsck { path, all }) => fsck(c, &path, all, a.json).await?,
        Cmd::Admin(cmd) => admin(c, &masters, cmd).await?,
        Cmd::Cluster(_) | Cmd::Bench { .. } => unreachable!("handled above"),
    }
    Ok(())
}

async fn copy<W: tokio::io::AsyncWrite + Unpin>(
    r: &mut Reader,
    w: &mut W,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<u64> {
    let mut total = 0u64;
    loop {
        // The bytes as fetched, written out without a copy of ours.
        let part = r.read_bytes().await?;
        if part.is_empty() {
            return Ok(total);
        }
        w.write_all(&part).await?;
        total += part.len() as u64;
        if let Some(b) = bar {
            b.inc(part.len() as u64);
        }
    }
}

/// What `put` reads from the local file at a time: one whole write piece,
/// so the writer copies none of it.
const PUT_BUFFER_BYTES: usize = gfs_proto::wire::MAX_FRAME_BYTES;

async fn stat(client: &Client, path: &str, stale: bool, json: bool) -> anyhow::Result<()> {
    let f = client.master().stat(path, stale).await?;
    let chunks = if f.is_dir {
        Vec::new()
    } else {
        client.chunks(path).await?
    };
    let length = if f.is_dir {
        0
    } else {
        client.length(path).await?
    };
    if json {
        let cs: Vec<_> = chunks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "index": c.index, "handle": c.handle, "version": c.version,
                    "primary": c.primary,
                    "replicas": c.replicas.iter().map(|r| serde_json::json!({"id": r.node_id, "addr": r.addr})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut v = file_json(&f);
        v["length"] = length.into();
        v["chunk_list"] = cs.into();
        println!("{v}");
        return Ok(());
    }
    if f.is_dir {
        let or_inherited = |v: u64, show: String| {
            if v == 0 {
                "inherited".to_string()
            } else {
                show
            }
        };
        println!(
            "{path}: directory; new files' replication {}, deleted files kept {}",
            or_inherited(u64::from(f.replication), f.replication.to_string()),
            or_inherited(
                f.retention_ms,
                format!("{} s", f.retention_ms as f64 / 1000.0)
            )
        );
        return Ok(());
    }
    println!(
        "{path}: {} ({length} bytes), {} chunks, replication {}",
        human(length),
        f.chunks,
        f.replication
    );
    for c in &chunks {
        let reps: Vec<String> = c
            .replicas
            .iter()
            .map(|r| {
                let p = if r.node_id == c.primary { "*" } else { "" };
                format!("{}{p}@{}", r.node_id, r.addr)
            })
            .collect();
        println!(
            "  chunk {:>4}  handle {:016x}  version {:>3}  replicas {}",
            c.index,
            c.handle,
            c.version,
            reps.join(" ")
        );
    }
    Ok(())
}

async fn append(
    client: &Client,
    path: &str,
    file: Option<PathBuf>,
    in_flight: usize,
    json: bool,
) -> anyhow::Result<()> {
    match client.create(path, 0).await {
        Ok(()) => {}
        Err(e) if e.kind == gfs_proto::wire::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    let text = match file {
        Some(f) => tokio::fs::read(&f)
            .await
            .with_context(|| format!("reading {}", f.display()))?,
        None => {
            let mut v = Vec::new();
            tokio::io::stdin().read_to_end(&mut v).await?;
            v
        }
    };
    let text = bytes::Bytes::from(text);
    let lines = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| text.slice_ref(l));
    let offsets: Vec<u64> = futures_util::stream::iter(lines)
        .map(|line| client.append_bytes(path, line))
        .buffered(in_flight)
        .try_collect()
        .await?;
    // Record the new length with the masters (`ls` and `stat` show it).
    client.sync(path).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({"path": path, "records": offsets.len(), "offsets": offsets})
        );
    } else {
        for o in &offsets {
            println!("{o}");
        }
    }
    Ok(())
}

async fn run_cluster(a: &Args, c: &ClusterCmd) -> anyhow::Result<()> {
    match c {
        ClusterCmd::Start(s) => {
            let masters = cluster::start(&a.dir, s).await?;
            println!(
                "cluster up: {} masters, {} chunkservers; data, logs and pids in {}",
                s.masters,
                s.chunkservers,
                a.dir.display()
            );
            println!("export GFS_MASTERS={}", masters.join(","));
        }
        ClusterCmd::Stop => {
            let n = cluster::stop(&a.dir)?;
            println!("stopped {n} processes");
        }
        ClusterCmd::Status => {
            let procs = cluster::status(&a.dir);
            if procs.is_empty() {
                bail!("no cluster recorded in {}", a.dir.display());
            }
            for (name, pid, metrics) in &procs {
                let at = metrics
                    .as_ref()
                    .map(|m| format!(", metrics at http://{m}/metrics"))
                    .unwrap_or_default();
                match pid {
                    Some(p) => println!("{name:<16} running (pid {p}){at}"),
                    None => println!("{name:<16} stopped"),
                }
            }
            if let Ok(m) = masters_of(a) {
                let mc = MasterClient::new(&m, gfs_client::MasterOptions::default())?;
                admin(&mc, &m, Admin::Status).await?;
            }
        }
    }
    Ok(())
}

async fn list_deleted(c: &MasterClient, json: bool) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut after = 0;
    let mut all = Vec::new();
    loop {
        let page = c.list_deleted(after, 1000).await?;
        all.extend(page.entries);
        if page.next_after == 0 {
            break;
        }
        after = page.next_after;
    }
    if json {
        let v: Vec<_> = all
            .iter()
            .map(|e| {
                serde_json::json!({"id": e.id, "path": e.path, "deleted_at_ms": e.deleted_at_ms,
                    "reclaim_at_ms": e.reclaim_at_ms, "files": e.files, "bytes": e.bytes})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    for e in all {
        let left = e.reclaim_at_ms.saturating_sub(now) / 1000;
        println!(
            "{:>6} {:>10} {:>5} files  reclaimed in {:>3}h{:02}m  {}",
            e.id,
            human(e.bytes),
            e.files,
            left / 3600,
            left % 3600 / 60,
            e.path
        );
    }
    Ok(())
}

async fn fsck(c: &MasterClient, path: &str, all: bool, json: bool) -> anyhow::Result<()> {
    use gfs_proto::wire::master::ChunkHealth;
    let r = c.fsck(path, all).await?;
    let name = |h: i32| match ChunkHealth::try_from(h) {
        Ok(ChunkHealth::Healthy) => "healthy",
        Ok(ChunkHealth::UnderReplicated) => "under-replicated",
        Ok(ChunkHealth::Missing) => "missing",
        Ok(ChunkHealth::Empty) => "empty",
        _ => "unknown",
    };
    if json {
        let files: Vec<_> = r
            .files
            .iter()
            .map(|f| {
                let chunks: Vec<_> = f
                    .chunks
                    .iter()
                    .map(|c| {
                        serde_json::json!({"index": c.index, "handle": c.handle,
                        "version": c.version, "health": name(c.health), "live": c.live,
                        "wanted": c.wanted, "stale": c.stale, "copying": c.copying})
                    })
                    .collect();
                serde_json::json!({"path": f.path, "health": name(f.health), "length": f.length,
                    "chunks": chunks})
            })
            .collect();
        let servers: Vec<_> = r
            .servers
            .iter()
            .map(|s| {
                serde_json::json!({"id": s.node_id, "addr": s.addr, "rack": s.rack,
                "live": s.live, "used_bytes": s.used_bytes, "capacity_bytes": s.capacity_bytes,
                "chunks": s.chunks, "draining": s.draining})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"files": files, "files_checked": r.files_checked,
                "chunks_checked": r.chunks_checked, "healthy": r.healthy,
                "under_replicated": r.under_replicated, "missing": r.missing,
                "replicas_pending_deletion": r.replicas_pending_deletion,
                "clones_in_flight": r.clones_in_flight, "clones_queued": r.clones_queued,
                "deleted_entries": r.deleted_entries, "servers": servers})
        );
    } else {
        for f in &r.files {
            println!("{:<16} {:>10} {}", name(f.health), human(f.length), f.path);
            for c in f
                .chunks
                .iter()
                .filter(|c| all || name(c.health) != "healthy")
            {
                let copying = match c.copying {
                    0 => String::new(),
                    n => format!(", {n} being copied"),
                };
                println!(
                    "    chunk {:>4} handle {} v{} {} ({}/{} live, {} stale{copying})",
                    c.index,
                    c.handle,
                    c.version,
                    name(c.health),
                    c.live,
                    c.wanted,
                    c.stale
                );
            }
        }
        println!(
            "{} files, {} chunks: {} healthy, {} under-replicated, {} missing",
            r.files_checked, r.chunks_checked, r.healthy, r.under_replicated, r.missing
        );
        println!(
            "replicas pending deletion {}, clones in flight {}, queued {}, deleted entries {}",
            r.replicas_pending_deletion, r.clones_in_flight, r.clones_queued, r.deleted_entries
        );
        for s in &r.servers {
            println!(
                "  server {} {} rack {} {} {} / {} used, {} chunks{}",
                s.node_id,
                s.addr,
                if s.rack.is_empty() { "-" } else { &s.rack },
                if s.live { "live" } else { "DEAD" },
                human(s.used_bytes),
                human(s.capacity_bytes),
                s.chunks,
                if s.draining { ", draining" } else { "" }
            );
        }
    }
    if r.under_replicated + r.missing > 0 {
        anyhow::bail!(
            "data at risk: {} under-replicated and {} missing chunks",
            r.under_replicated,
            r.missing
        );
    }
    Ok(())
}

async fn admin(c: &MasterClient, masters: &[String], cmd: Admin) -> anyhow::Result<()> {
    if let Admin::Status = cmd {
        for (i, addr) in masters.iter().enumerate() {
            match c.status_of(i).await {
                Ok(s) => println!(
                    "{addr}: id {} {} term {} leader {} log {} applied {} files {} chunks {} chunkservers {}",
                    s.id,
                    s.state,
                    s.term,
                    s.leader_id,
                    s.last_log_index,
                    s.applied_index,
                    s.files,
                    s.chunks,
                    s.chunkservers
                ),
                Err(e) => println!("{addr}: {e}"),
            }
        }
        let leader = leader_index(c, masters).await?;
        for d in c.status_of(leader).await?.draining {
            println!(
                "chunkserver {} draining: {} replicas left{}",
                d.node_id,
                d.chunks_left,
                if d.safe_to_remove {
                    ", safe to remove"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    let leader = leader_index(c, masters).await?;
    let mut admin = c.admin(leader);
    match cmd {
        Admin::TransferLeader { to } => {
            admin.transfer_leader(TransferLeaderRequest { to }).await?;
        }
        Admin::AddMaster { id, addr } => {
            admin.add_master(AddMasterRequest { id, addr }).await?;
        }
        Admin::RemoveMaster { id } => {
            admin.remove_master(RemoveMasterRequest { id }).await?;
        }
        Admin::Decommission { id, cancel } => c.decommission(id, cancel).await?,
        Admin::Status | Admin::Fsck { .. } => unreachable!("handled above"),
    }
    println!("done");
    Ok(())
}

async fn leader_index(c: &MasterClient, masters: &[String]) -> anyhow::Result<usize> {
    for i in 0..masters.len() {
        if let Ok(s) = c.status_of(i).await
            && s.state == "leader"
        {
            return Ok(i);
        }
    }
    anyhow::bail!("no master is the leader right now")
}
