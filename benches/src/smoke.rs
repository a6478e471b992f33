//! `gfs-bench smoke`: every benchmark at tiny sizes, each run as this
//! binary's own subcommand with `--json`, checked for sane output (an
//! object on the last line, the keys it promises, no missing or
//! non-finite number). It guards the benchmarks, not the speed.
//!
//! The benchmarks that can measure an existing cluster run twice: against
//! the local cluster they start themselves, and with `--masters` against
//! one the smoke starts and keeps. That cluster holds a bystander's files
//! from the start: a run there must leave nothing of its own behind and
//! the bystander's files as they were. Its files get 2 replicas, not the
//! local cluster's 3: the limits must use the replication the cluster
//! gives them. `figure3`, `cluster-write` and `cluster-read` run there
//! once more with `--hosts`, the ceilings of made-up chunkserver hosts,
//! and must take their limits from them.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use gfs_tests::cluster::{Cluster, chunk_files_under, files_under};
use serde_json::Value;

/// One benchmark run: its arguments and the keys its JSON must hold.
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Run with `--masters` against the smoke's own running cluster.
    running: bool,
    keys: &'static [&'static str],
    /// An SVG file, in the scratch directory, the run must draw.
    plot: Option<&'static str>,
}

/// The figure3 case's plot.
const PLOT: &str = "figure3-smoke.svg";

/// What `cluster-write` and `cluster-read` report.
const CLUSTER_KEYS: &[&str] = &[
    "mb_s",
    "limit_mb_s",
    "ratio",
    "replication",
    "busy",
    "bound",
];

impl Case {
    /// `gfs-bench <args>`, run on the local cluster it starts, drawing nothing.
    fn new(name: &'static str, args: &[&str], keys: &'static [&'static str]) -> Self {
        Case {
            name,
            args: args.iter().map(|s| s.to_string()).collect(),
            running: false,
            keys,
            plot: None,
        }
    }
}

fn cases(dir: &Path) -> Vec<Case> {
    let d = dir.display().to_string();
    let size = "16777216";
    let plot = format!("{d}/{PLOT}");
    vec![
        Case::new(
            "limits",
            &["limits", "--dirs", &d, "--size", "33554432"],
            &["disks", "tcp_mb_s", "crc32c_mb_s", "cores"],
        ),
        Case::new(
            "engine",
            &["engine", "--dir", &d, "--size", "67108864", "--runs", "1"],
            &["write_ratio", "rewrite_ratio", "read_ratio"],
        ),
        Case::new(
            "cluster-write",
            &["cluster-write", "--dir", &d, "--size", size, "--runs", "1"],
            CLUSTER_KEYS,
        ),
        Case::new(
            "cluster-read",
            &["cluster-read", "--dir", &d, "--size", size, "--runs", "1"],
            CLUSTER_KEYS,
        ),
        Case::new(
            "meta",
            &["meta", "--clients", "1,2", "--seconds", "0.5"],
            &["creates_per_s", "stats_per_s", "lists_per_s"],
        ),
        Case::new(
            "failover",
            &["failover", "--kills", "1", "--clients", "2"],
            &["max_ms", "each_ms"],
        ),
        Case::new(
            "meta-memory",
            &["meta-memory", "--files", "2000"],
            &["bytes_per_file", "bytes_per_chunk"],
        ),
        Case::new(
            "snapshot",
            &[
                "snapshot",
                "--files",
                "20",
                "--bytes",
                "1073741824",
                "--runs",
                "2",
            ],
            &["first_ms", "median_ms"],
        ),
        Case::new(
            "repair",
            &["repair", "--dir", &d, "--size", "134217728"],
            &[
                "bytes_repaired",
                "seconds",
                "repair_mb_s",
                "device_write_mb_s",
            ],
        ),
        Case {
            plot: Some(PLOT),
            ..Case::new(
                "figure3",
                &[
                    "figure3",
                    "--dir",
                    &d,
                    "--clients",
                    "1,2",
                    "--write-bytes",
                    "8388608",
                    "--read-set-bytes",
                    "33554432",
                    "--reads",
                    "16",
                    "--records",
                    "2",
                    "--append-in-flight",
                    "2",
                    "--limit-bytes",
                    "33554432",
                    "--rounds",
                    "2",
                    "--plot",
                    &plot,
                ],
                &["results", "limits", "replication", "local_cluster"],
            )
        },
    ]
}

/// The replication factor of the smoke's running cluster (a policy at its
/// root).
const RUNNING_REPLICATION: u32 = 2;

/// The benchmarks that can target an existing cluster (`--masters`).
const RUNNING: &[&str] = &[
    "figure3",
    "cluster-write",
    "cluster-read",
    "meta",
    "snapshot",
];

/// `cases` of the benchmarks in [`RUNNING`] again, against the cluster at
/// `masters`.
fn running_cases(dir: &Path, masters: &str) -> Vec<Case> {
    cases(dir)
        .into_iter()
        .filter(|c| RUNNING.contains(&c.name))
        .map(|mut c| {
            c.args
                .extend(["--masters".to_string(), masters.to_string()]);
            c.running = true;
            c
        })
        .collect()
}

/// Every number finite (serde_json writes NaN and infinities as null).
fn sane(v: &Value, at: &str) -> Result<()> {
    match v {
        Value::Null => bail!("{at} is null (a NaN or a missing figure)"),
        Value::Number(n) => ensure!(n.as_f64().is_some_and(f64::is_finite), "{at} = {n}"),
        Value::Array(xs) => {
            for (i, x) in xs.iter().enumerate() {
                sane(x, &format!("{at}[{i}]"))?;
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                sane(x, &format!("{at}.{k}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A cluster elsewhere (`running`): its chunkservers' hosts reported what
/// they were busy with during measurement `r`, every one of them; a local
/// cluster's are this host's own, so none are.
fn servers_reported(case: &Case, r: &serde_json::Value) -> Result<()> {
    let servers = r.get("servers").and_then(|s| s.as_array());
    if !case.running {
        ensure!(
            servers.is_none(),
            "servers' figures for a local cluster: {r}"
        );
        return Ok(());
    }
    let servers = servers.context("no servers' figures for a cluster elsewhere")?;
    let chunkservers = gfs_tests::cluster::Spec::default().chunkservers;
    ensure!(
        servers.len() == chunkservers,
        "{} servers' figures, not the running cluster's {chunkservers}: {r}",
        servers.len()
    );
    for sv in servers {
        let cpu = sv["cpu"].as_f64().unwrap_or(-1.0);
        ensure!(
            sv["addr"].is_string() && (0.0..=1.0).contains(&cpu),
            "a server's figures without its address or CPU: {sv}"
        );
    }
    Ok(())
}

fn check(case: &Case, stdout: &str) -> Result<()> {
    let v = last_json(stdout)?;
    ensure!(v.is_object(), "the last line is not a JSON object");
    for k in case.keys {
        ensure!(v.get(k).is_some(), "no `{k}` in {v}");
    }
    sane(&v, case.name)?;
    if let Some(r) = v.get("replication") {
        let want = if case.running { RUNNING_REPLICATION } else { 3 };
        ensure!(
            r.as_u64() == Some(u64::from(want)),
            "replication {r}, not the cluster's {want}"
        );
    }
    if case.name.starts_with("cluster-") {
        servers_reported(case, &v)?;
    }
    if case.name == "figure3" {
        ensure!(
            v["local_cluster"].as_bool() == Some(!case.running),
            "local_cluster is {}, the run {} the cluster",
            v["local_cluster"],
            if case.running {
                "did not start"
            } else {
                "started"
            }
        );
        ensure!(
            v["append_in_flight"].as_u64() == Some(2),
            "append_in_flight {}, not the 2 asked for",
            v["append_in_flight"]
        );
        let results = v["results"].as_array().context("results is not a list")?;
        ensure!(
            results.len() == 6,
            "3 benchmarks x 2 client counts expected"
        );
        for r in results {
            for k in ["bench", "clients", "mb_s", "limit_mb_s", "efficiency"] {
                ensure!(r.get(k).is_some(), "a result has no `{k}`: {r}");
            }
            ensure!(
                r["mb_s"].as_f64().unwrap_or(0.0) > 0.0,
                "zero throughput: {r}"
            );
            ensure!(
                r["rounds"].as_array().map(Vec::len) == Some(2),
                "two rounds expected: {r}"
            );
            // A cluster elsewhere does not share this host's cores.
            ensure!(
                !(case.running && r.get("cpu_limit_mb_s").is_some()),
                "a CPU limit is for a local cluster only: {r}"
            );
            servers_reported(case, r)?;
            // The host's CPU time is always there to read; a round may be
            // too short to see a clock tick, but not both of a point's.
            let cpu = r["busy"]["cpu"].as_f64().unwrap_or(-1.0);
            ensure!((0.0..=1.0).contains(&cpu), "no share of CPU time: {r}");
            ensure!(
                ["CPU", "disk", "CPU+disk", "latency", "unknown"]
                    .contains(&r["bound"].as_str().unwrap_or("")),
                "no bound named: {r}"
            );
        }
    }
    Ok(())
}

/// An SVG document with something drawn in it.
fn drawn(path: &Path) -> Result<()> {
    let svg =
        std::fs::read_to_string(path).with_context(|| format!("no plot at {}", path.display()))?;
    ensure!(
        svg.trim_start().starts_with("<svg") && svg.contains("<polyline"),
        "{} is not an SVG with lines in it",
        path.display()
    );
    Ok(())
}

/// Files of somebody else's on the smoke's running cluster, where the
/// benchmarks once put their own (`/fig3`, `/bench`).
const BYSTANDER: &[&str] = &["/fig3/other-run", "/bench/other-run"];

/// Gives the cluster's new files [`RUNNING_REPLICATION`] replicas, then
/// writes the bystander's files; returns what each holds.
async fn place_bystander(c: &gfs_client::Client) -> Result<Vec<Vec<u8>>> {
    c.master().set_policy("/", RUNNING_REPLICATION, 0).await?;
    let mut held = Vec::new();
    for (i, path) in BYSTANDER.iter().enumerate() {
        let mut data = vec![0u8; 1 << 20];
        crate::fill_random(&mut data, 1000 + i as u64);
        c.mkdir(path.rsplit_once('/').map_or("/", |(d, _)| d), true)
            .await?;
        c.create(path, 0).await?;
        c.write_at(path, 0, &data).await?;
        held.push(data);
    }
    Ok(held)
}

/// The running cluster after the benchmarks: the bystander's files as
/// they were, and nothing else in the namespace.
async fn check_bystander(c: &gfs_client::Client, held: &[Vec<u8>]) -> Result<()> {
    let mut top: Vec<String> = c.list("/").await?.into_iter().map(|f| f.name).collect();
    top.sort();
    ensure!(
        top == ["bench", "fig3"],
        "the benchmarks left {top:?} at the root (only the bystander's bench, fig3 expected)"
    );
    for (path, want) in BYSTANDER.iter().zip(held) {
        let (dir, name) = path.rsplit_once('/').context("an absolute path")?;
        let names: Vec<String> = c.list(dir).await?.into_iter().map(|f| f.name).collect();
        ensure!(names == [name], "{dir} holds {names:?}, not only {name}");
        let got = c.read_at(path, 0, want.len() as u64).await?;
        ensure!(got[..] == want[..], "{path} changed");
    }
    Ok(())
}

/// Whether a process of this host names `dir` on its command line (a
/// server of a cluster with its data there).
fn process_under(dir: &Path) -> bool {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(&dir))
}

/// Starts `gfs-bench <args>`, interrupts it (SIGINT, as Ctrl-C sends)
/// once `under_way` says it is, and checks that it stops within 60 s
/// and fails saying "interrupted"; its stderr goes to `log`.
fn interrupt(exe: &Path, args: &[String], log: &Path, under_way: impl Fn() -> bool) -> Result<()> {
    let mut child = Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting the run to interrupt")?;
    let poll = std::time::Duration::from_millis(100);
    let stopped = (|| -> Result<std::process::ExitStatus> {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !under_way() {
            if let Some(st) = child.try_wait()? {
                bail!("it exited with {st} before it was under way");
            }
            ensure!(
                std::time::Instant::now() < until,
                "not under way within 120 s"
            );
            std::thread::sleep(poll);
        }
        gfs_tests::signal(Some(&child), libc::SIGINT)?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            ensure!(
                std::time::Instant::now() < until,
                "still running 60 s after SIGINT"
            );
            std::thread::sleep(poll);
        }
    })();
    if stopped.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stopped = stopped?;
    let stderr = std::fs::read_to_string(log).unwrap_or_default();
    ensure!(
        !stopped.success() && stderr.contains("Error: interrupted"),
        "interrupted, it exited with {stopped} and said: {}",
        stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
    );
    Ok(())
}

/// A `cluster-write` of 1 GiB with its data and ceilings under `dir`,
/// against the cluster at `masters` or a local one.
fn long_write(dir: &Path, masters: Option<&str>) -> Vec<String> {
    let d = dir.display().to_string();
    let mut args: Vec<String> = [
        "cluster-write",
        "--dir",
        &d,
        "--size",
        "1073741824",
        "--runs",
        "1",
    ]
    .map(String::from)
    .into();
    if let Some(m) = masters {
        args.extend(["--masters".to_string(), m.to_string()]);
    }
    args
}

/// A local cluster-write interrupted while it writes: its servers stop and
/// nothing of it stays under its directory.
fn interrupt_local(exe: &Path, dir: &Path) -> Result<()> {
    let at = dir.join("interrupted");
    std::fs::create_dir_all(&at)?;
    let args = long_write(&at, None);
    let log = dir.join("interrupted.log");
    interrupt(exe, &args, &log, || !chunk_files_under(&at).is_empty())?;
    let left = files_under(&at);
    ensure!(
        left.is_empty(),
        "interrupted, it left {} files, as {:?}",
        left.len(),
        left.first()
    );
    ensure!(
        !process_under(&at),
        "a server of the interrupted run is still running"
    );
    Ok(())
}

/// A cluster-write against the running cluster, interrupted while it
/// writes: its directory there is purged.
fn interrupt_running(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    dir: &Path,
    (masters, client): (&str, &gfs_client::Client),
) -> Result<()> {
    let args = long_write(dir, Some(masters));
    // Its directory holds the file being written.
    let writing = || {
        rt.block_on(async {
            for e in client.list("/").await.unwrap_or_default() {
                if e.name.starts_with("bench-")
                    && !client
                        .list(&format!("/{}", e.name))
                        .await
                        .unwrap_or_default()
                        .is_empty()
                {
                    return true;
                }
            }
            false
        })
    };
    interrupt(exe, &args, &dir.join("interrupted-running.log"), writing)?;
    let top: Vec<String> = rt
        .block_on(client.list("/"))?
        .into_iter()
        .map(|f| f.name)
        .collect();
    ensure!(
        !top.iter().any(|n| n.starts_with("bench-")),
        "the interrupted run left its directory: {top:?}"
    );
    Ok(())
}

/// Runs `gfs-bench <args> --json`: its output, or how it failed (the end
/// of what it said).
fn run_json(exe: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(exe)
        .args(args)
        .arg("--json")
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("exited with {}: {}", out.status, error_of(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a failed run said: its error and causes (without any backtrace,
/// as `RUST_BACKTRACE` adds), or else the last lines it wrote.
fn error_of(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = match text.rfind("Error: ") {
        Some(at) => text[at..]
            .lines()
            .take_while(|l| !l.starts_with("Stack backtrace:"))
            .filter(|l| !l.trim().is_empty())
            .take(8)
            .collect(),
        None => text.lines().rev().take(5).collect(),
    };
    lines.join(" | ")
}

/// The last line of a run's output, as JSON.
fn last_json(stdout: &str) -> Result<Value> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("no output")?;
    serde_json::from_str(last).context("the last line is not JSON")
}

/// Runs one case as this binary's subcommand; its verdict.
fn run_case(exe: &Path, dir: &Path, case: &Case) -> Result<()> {
    if let Some(p) = case.plot {
        let _ = std::fs::remove_file(dir.join(p));
    }
    check(case, &run_json(exe, &case.args)?)?;
    match case.plot {
        Some(p) => drawn(&dir.join(p)),
        None => Ok(()),
    }
}

/// A `gfs-bench tcp-sink --listen` of the smoke's own on loopback,
/// stopped when dropped.
struct Sink {
    child: std::process::Child,
    addr: String,
}

impl Sink {
    fn start(exe: &Path) -> Result<Self> {
        let mut child = Command::new(exe)
            .args(["tcp-sink", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a TCP sink")?;
        let mut addr = String::new();
        let out = child.stdout.take().context("the sink's stdout")?;
        let read = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut addr);
        let mut sink = Sink { child, addr };
        ensure!(
            read.is_ok() && !sink.addr.trim().is_empty(),
            "the TCP sink named no address"
        );
        sink.addr = sink.addr.trim().to_string();
        Ok(sink)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP ceilings of the smoke's made-up chunkserver hosts, MB/s: far
/// below loopback and any disk, so they alone set the limits.
const HOST_TCP: [f64; 3] = [10.0, 20.0, 40.0];

/// `figure3`, `cluster-write` and `cluster-read` with `--masters --hosts`:
/// a chunkserver host's ceilings measured by `limits --tcp-to` to a sink
/// of the smoke's, turned into three hosts with the links of
/// [`HOST_TCP`]; each run's limits must be the cluster's from those files
/// (at the running cluster's replication 2), every round of every point.
/// With fewer hosts than replicas it must refuse.
fn judged_on_hosts(exe: &Path, dir: &Path, masters: &str) -> Result<()> {
    let sink = Sink::start(exe)?;
    // Two data directories: the host's disks are measured at once too.
    let d = ["host-a", "host-b"].map(|h| dir.join(h).display().to_string());
    let both = d.join(",");
    let args = [
        "limits",
        "--dirs",
        &both,
        "--size",
        "16777216",
        "--tcp-to",
        &sink.addr,
        "--tcp-streams",
        "2",
    ]
    .map(String::from);
    let measured = last_json(&run_json(exe, &args)?)?;
    ensure!(
        measured["tcp_to"].as_str() == Some(sink.addr.as_str()),
        "limits --tcp-to reports tcp_to {}, not {}",
        measured["tcp_to"],
        sink.addr
    );
    ensure!(
        measured["together"]["dir"].as_str() == Some(both.as_str())
            && measured["together"]["read_mb_s"].as_f64().unwrap_or(0.0) > 0.0,
        "limits of two directories did not measure them at once: {}",
        measured["together"]
    );
    let mut files = Vec::new();
    for (i, tcp) in HOST_TCP.iter().enumerate() {
        let mut host = measured.clone();
        host["tcp_mb_s"] = (*tcp).into();
        let set = |disk: &mut serde_json::Value| {
            for k in ["write_mb_s", "new_blocks_write_mb_s", "read_mb_s"] {
                disk[k] = 1000.0.into();
            }
        };
        host["disks"]
            .as_array_mut()
            .context("no disks")?
            .iter_mut()
            .for_each(set);
        set(&mut host["together"]);
        let file = dir.join(format!("host{i}.json"));
        std::fs::write(&file, format!("{host}\n"))?;
        files.push(file.display().to_string());
    }
    let mut case = running_cases(dir, masters)
        .into_iter()
        .find(|c| c.name == "figure3")
        .context("no figure3 case")?;
    // Drawing is checked elsewhere.
    case.plot = None;
    if let Some(i) = case.args.iter().position(|a| a == "--plot") {
        case.args.drain(i..i + 2);
    }
    let with_hosts = |hosts: &[String]| {
        let mut args = case.args.clone();
        args.extend(["--hosts", &hosts.join(","), "--tcp-to", &sink.addr].map(String::from));
        args
    };
    // One host cannot hold two replicas of a chunk.
    let e = run_json(exe, &with_hosts(&files[..1])).err();
    ensure!(
        e.as_ref()
            .is_some_and(|e| e.to_string().contains("fewer than the 2 replicas")),
        "with one host for two replicas it did not refuse as expected: {e:?}"
    );
    let stdout = run_json(exe, &with_hosts(&files))?;
    check(&case, &stdout)?;
    let v = last_json(&stdout)?;
    ensure!(
        v["hosts"].as_array().map(Vec::len) == Some(3),
        "the JSON does not hold the 3 hosts"
    );
    for s in v["limit_samples"].as_array().context("no limit_samples")? {
        ensure!(
            s["tcp_to"].as_str() == Some(sink.addr.as_str())
                && s["disks"].as_array().is_some_and(Vec::is_empty),
            "a sample is not of this host's link to {}: {s}",
            sink.addr
        );
    }
    // Read: 10 + 20 + 40; write: that / 2; append: the chain of the two
    // fastest, 20.
    let sum: f64 = HOST_TCP.iter().sum();
    for r in v["results"].as_array().context("no results")? {
        let want = match r["bench"].as_str() {
            Some("read") => sum,
            Some("write") => sum / 2.0,
            _ => HOST_TCP[1],
        };
        let rounds = r["rounds"].as_array().context("no rounds")?;
        for limit in std::iter::once(r).chain(rounds).map(|x| &x["limit_mb_s"]) {
            ensure!(
                limit.as_f64() == Some(want),
                "limit {limit}, not the hosts' {want}: {r}"
            );
        }
    }
    // One client, judged the same way: writes against the sum / 2, reads
    // against the sum.
    for (name, want) in [("cluster-write", sum / 2.0), ("cluster-read", sum)] {
        let case = running_cases(dir, masters)
            .into_iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no {name} case"))?;
        let mut args = case.args.clone();
        args.extend(["--hosts", &files.join(","), "--tcp-to", &sink.addr].map(String::from));
        let stdout = run_json(exe, &args)?;
        check(&case, &stdout).with_context(|| name.to_string())?;
        let v = last_json(&stdout)?;
        ensure!(
            v["limit_mb_s"].as_f64() == Some(want),
            "{name}: limit {}, not the hosts' {want}",
            v["limit_mb_s"]
        );
        ensure!(
            v["hosts"].as_array().map(Vec::len) == Some(3)
                && v.get("device_write_mb_s").is_none()
                && v["client_link_mb_s"].as_f64().is_some_and(|l| l > 0.0),
            "{name}: not judged against the hosts and this host's link alone: {v}"
        );
    }
    Ok(())
}

/// The checks run so far: each is timed and printed, `ok` or `FAIL`.
#[derive(Default)]
struct Verdicts {
    failed: Vec<String>,
}

impl Verdicts {
    fn check(&mut self, label: impl Into<String>, f: impl FnOnce() -> Result<()>) {
        let label = label.into();
        let start = std::time::Instant::now();
        match f() {
            Ok(()) => println!("ok    {label:<30} {:>6.1} s", start.elapsed().as_secs_f64()),
            Err(e) => {
                println!("FAIL  {label:<30} {e:#}");
                self.failed.push(label);
            }
        }
    }
}

pub fn run(rt: &tokio::runtime::Runtime, dir: &Path, only: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe()?;
    let named = |n: &str| only.is_empty() || only.iter().any(|o| o == n);
    let mut v = Verdicts::default();
    for case in cases(dir).into_iter().filter(|c| named(c.name)) {
        v.check(case.name, || run_case(&exe, dir, &case));
    }
    let interrupts = named("interrupt");
    if interrupts {
        v.check("interrupted, local", || interrupt_local(&exe, dir));
    }
    if interrupts || RUNNING.iter().any(|n| named(n)) {
        // Clients made outside `block_on` still need the runtime's reactor.
        let _rt = rt.enter();
        let base = dir.join("running");
        std::fs::create_dir_all(&base)?;
        let start = std::time::Instant::now();
        let cluster = rt.block_on(Cluster::start(crate::cluster::bench_spec(&base)))?;
        let masters = cluster.masters.addrs().join(",");
        let client = cluster.client();
        let held = rt.block_on(place_bystander(&client))?;
        println!(
            "ok    {:<30} {:>6.1} s",
            "running cluster",
            start.elapsed().as_secs_f64()
        );
        for case in running_cases(dir, &masters)
            .into_iter()
            .filter(|c| named(c.name))
        {
            v.check(format!("{} --masters", case.name), || {
                run_case(&exe, dir, &case)
            });
        }
        if named("figure3") {
            v.check("figure3, cluster-* --hosts", || {
                judged_on_hosts(&exe, dir, &masters)
            });
        }
        if interrupts {
            v.check("interrupted, --masters", || {
                interrupt_running(rt, &exe, dir, (&masters, &client))
            });
        }
        v.check("nothing left, nothing touched", || {
            rt.block_on(check_bystander(&client, &held))
        });
    }
    ensure!(v.failed.is_empty(), "smoke failed: {:?}", v.failed);
    Ok(())
}
