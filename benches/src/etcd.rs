//! `gfs-bench etcd`: the `meta` benchmark's creates and stats against an
//! etcd cluster, for comparison on the same machine (`scripts/etcd-compare`
//! starts a 3-node etcd and runs both).
//!
//! A create is what the gfs master does for one: an exclusive insert, here
//! an etcd transaction "put if the key was never created"; a stat is a
//! linearizable get of one key. Requests go through etcd's JSON gateway
//! (`/v3/kv/txn`, `/v3/kv/range`) over one HTTP/1.1 keep-alive connection
//! per client, spread over the endpoints; the gateway costs etcd some CPU
//! that a gRPC client would not, which the report says.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::meta::ops_per_s;

#[derive(clap::Args, Debug)]
pub struct EtcdArgs {
    /// etcd client endpoints (host:port), comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Client counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub clients: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct EtcdReport {
    pub clients: Vec<usize>,
    pub creates_per_s: Vec<f64>,
    pub stats_per_s: Vec<f64>,
    pub seconds: f64,
}

/// A value the size of a small file's metadata.
const VALUE: &[u8] = b"length=0 mtime=1795000000000 replication=3 chunks=[]";

struct Conn {
    host: String,
    send: SendRequest<Full<Bytes>>,
}

async fn connect(endpoint: &str) -> Result<Conn> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match tokio::net::TcpStream::connect(endpoint).await {
            Ok(s) => break s,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%endpoint, error = %e, "etcd not up yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to etcd at {endpoint}")),
        }
    };
    stream.set_nodelay(true)?;
    let (send, conn) = handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "etcd connection ended");
        }
    });
    Ok(Conn {
        host: endpoint.to_string(),
        send,
    })
}

impl Conn {
    /// One JSON call; the reply's JSON.
    async fn call(&mut self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let req = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("etcd {path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Creates `key` if it was never created; false if it exists.
    async fn create(&mut self, key: &str) -> Result<bool> {
        let k = B64.encode(key);
        let txn = serde_json::json!({
            "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": B64.encode(VALUE)}}],
        });
        let reply = self.call("/v3/kv/txn", txn).await?;
        // proto3 JSON leaves `false` out.
        Ok(reply["succeeded"].as_bool().unwrap_or(false))
    }

    /// A linearizable get of `key`; whether it exists.
    async fn stat(&mut self, key: &str) -> Result<bool> {
        let reply = self
            .call("/v3/kv/range", serde_json::json!({"key": B64.encode(key)}))
            .await?;
        Ok(reply["count"].as_str().is_some_and(|c| c != "0"))
    }
}

async fn clients(endpoints: &[String], n: usize) -> Result<Vec<Conn>> {
    let mut out = Vec::new();
    for c in 0..n {
        out.push(connect(&endpoints[c % endpoints.len()]).await?);
    }
    Ok(out)
}

pub async fn run(args: &EtcdArgs) -> Result<EtcdReport> {
    let base = crate::bench_dir();
    let mut setup = connect(&args.endpoints[0]).await?;
    let stat_keys = 100u64;
    for i in 0..stat_keys {
        setup.create(&format!("{base}/list/f{i}")).await?;
    }
    let mut report = EtcdReport {
        clients: args.clients.clone(),
        creates_per_s: Vec::new(),
        stats_per_s: Vec::new(),
        seconds: args.seconds,
    };
    for (round, &n) in args.clients.iter().enumerate() {
        let workers: Vec<_> = clients(&args.endpoints, n)
            .await?
            .into_iter()
            .enumerate()
            .map(|(c, conn)| (conn, format!("{base}/r{round}/c{c}")))
            .collect();
        report.creates_per_s.push(
            ops_per_s(
                workers,
                args.seconds,
                &format!("etcd creates, {n} clients"),
                |(mut conn, dir), i| async move {
                    let key = format!("{dir}/part-{i:06}");
                    if !conn.create(&key).await? {
                        bail!("{key} existed before its create");
                    }
                    Ok((conn, dir))
                },
            )
            .await?,
        );
        let list = format!("{base}/list");
        let workers: Vec<_> = clients(&args.endpoints, n)
            .await?
            .into_iter()
            .map(|conn| (conn, list.clone()))
            .collect();
        report.stats_per_s.push(
            ops_per_s(
                workers,
                args.seconds,
                &format!("etcd stats, {n} clients"),
                move |(mut conn, list), i| async move {
                    let key = format!("{list}/f{}", i % stat_keys);
                    if !conn.stat(&key).await? {
                        bail!("{key} is missing");
                    }
                    Ok((conn, list))
                },
            )
            .await?,
        );
    }
    Ok(report)
}

pub fn print_table(r: &EtcdReport) {
    println!(
        "etcd through its JSON gateway, one HTTP/1.1 connection per client; create = txn put-if-absent, stat = linearizable get; {} s per figure",
        r.seconds
    );
    println!("{:>8} {:>12} {:>12}", "clients", "creates/s", "stats/s");
    for (i, c) in r.clients.iter().enumerate() {
        println!(
            "{:>8} {:>12.0} {:>12.0}",
            c, r.creates_per_s[i], r.stats_per_s[i]
        );
    }
}
