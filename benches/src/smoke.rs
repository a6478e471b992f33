//! `gfs-bench smoke`: every benchmark at tiny sizes, each run as this
//! binary's own subcommand with `--json`, checked for sane output (an
//! object on the last line, the keys it promises, no missing or
//! non-finite number). It guards the benchmarks, not the speed.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// One benchmark run: its arguments and the keys its JSON must hold.
struct Case {
    name: &'static str,
    args: Vec<String>,
    keys: &'static [&'static str],
    /// An SVG file, in the scratch directory, the run must draw.
    plot: Option<&'static str>,
}

/// The figure3 case's plot.
const PLOT: &str = "figure3-smoke.svg";

fn cases(dir: &Path) -> Vec<Case> {
    let d = dir.display().to_string();
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        Case {
            name: "limits",
            args: a(&["limits", "--dirs", &d, "--size", "33554432"]),
            keys: &["disks", "tcp_mb_s", "crc32c_mb_s", "cores"],
            plot: None,
        },
        Case {
            name: "engine",
            args: a(&["engine", "--dir", &d, "--size", "67108864", "--runs", "1"]),
            keys: &["write_ratio", "rewrite_ratio", "read_ratio"],
            plot: None,
        },
        Case {
            name: "cluster-write",
            args: a(&[
                "cluster-write",
                "--dir",
                &d,
                "--size",
                "16777216",
                "--runs",
                "1",
            ]),
            keys: &["mb_s", "limit_mb_s", "ratio", "busy", "bound"],
            plot: None,
        },
        Case {
            name: "cluster-read",
            args: a(&[
                "cluster-read",
                "--dir",
                &d,
                "--size",
                "16777216",
                "--runs",
                "1",
            ]),
            keys: &["mb_s", "limit_mb_s", "ratio", "busy", "bound"],
            plot: None,
        },
        Case {
            name: "meta",
            args: a(&["meta", "--clients", "1,2", "--seconds", "0.5"]),
            keys: &["creates_per_s", "stats_per_s", "lists_per_s"],
            plot: None,
        },
        Case {
            name: "failover",
            args: a(&["failover", "--kills", "1", "--clients", "2"]),
            keys: &["max_ms", "each_ms"],
            plot: None,
        },
        Case {
            name: "meta-memory",
            args: a(&["meta-memory", "--files", "2000"]),
            keys: &["bytes_per_file", "bytes_per_chunk"],
            plot: None,
        },
        Case {
            name: "snapshot",
            args: a(&[
                "snapshot",
                "--files",
                "20",
                "--bytes",
                "1073741824",
                "--runs",
                "2",
            ]),
            keys: &["first_ms", "median_ms"],
            plot: None,
        },
        Case {
            name: "repair",
            args: a(&["repair", "--dir", &d, "--size", "134217728"]),
            keys: &[
                "bytes_repaired",
                "seconds",
                "repair_mb_s",
                "device_write_mb_s",
            ],
            plot: None,
        },
        Case {
            name: "figure3",
            args: a(&[
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
                "--limit-bytes",
                "33554432",
                "--rounds",
                "2",
                "--plot",
                &format!("{d}/{PLOT}"),
            ]),
            keys: &["results", "limits"],
            plot: Some(PLOT),
        },
    ]
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

fn check(case: &Case, stdout: &str) -> Result<()> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("no output")?;
    let v: Value = serde_json::from_str(last).context("the last line is not JSON")?;
    ensure!(v.is_object(), "the last line is not a JSON object");
    for k in case.keys {
        ensure!(v.get(k).is_some(), "no `{k}` in {last}");
    }
    sane(&v, case.name)?;
    if case.name == "figure3" {
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

pub fn run(dir: &Path, only: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe()?;
    let mut failed = Vec::new();
    for case in cases(dir) {
        if !only.is_empty() && !only.iter().any(|o| o == case.name) {
            continue;
        }
        let start = std::time::Instant::now();
        if let Some(p) = case.plot {
            let _ = std::fs::remove_file(dir.join(p));
        }
        let out = Command::new(&exe)
            .args(&case.args)
            .arg("--json")
            .output()
            .with_context(|| format!("running {}", case.name))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let verdict = if out.status.success() {
            check(&case, &stdout).and_then(|()| match case.plot {
                Some(p) => drawn(&dir.join(p)),
                None => Ok(()),
            })
        } else {
            Err(anyhow::anyhow!(
                "exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ))
        };
        match verdict {
            Ok(()) => println!(
                "ok    {:<14} {:>6.1} s",
                case.name,
                start.elapsed().as_secs_f64()
            ),
            Err(e) => {
                println!("FAIL  {:<14} {e:#}", case.name);
                failed.push(case.name);
            }
        }
    }
    ensure!(failed.is_empty(), "smoke failed: {failed:?}");
    Ok(())
}
