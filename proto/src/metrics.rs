//! What the servers share of their Prometheus metrics: the `/metrics`
//! HTTP endpoint ([`serve`]), a tower layer that counts gRPC calls by
//! method and status ([`GrpcCalls`]), and [`Scraped`], values read from a
//! server's state when Prometheus asks (gauges, and counters the state
//! already keeps), so nothing is counted twice and nothing goes stale.
//!
//! Label values come from the server's own names (methods it served,
//! its data directories), never from what a request says: a request for
//! an unknown method is counted under `other`, so no client can grow the
//! label sets.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The content type of [`prometheus_client::encoding::text::encode`]'s
/// output (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes served at once; more connections wait to be accepted.
const CONNECTIONS: usize = 16;
/// A scrape whose request head takes longer is dropped (a slow or idle
/// client holds no connection slot for long).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole scrape connection at most.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// A server's registry: the process's own figures under Prometheus's
/// usual names (`process_*`, [`Process`]) and `gfs_build_info`, then
/// whatever `fill` registers, its names prefixed `gfs_` (with what
/// `fill` returns).
pub fn server_registry<T>(fill: impl FnOnce(&mut Registry) -> T) -> (Registry, T) {
    let mut root = Registry::default();
    root.register_collector(Box::new(Process));
    let gfs = root.sub_registry_with_prefix("gfs");
    gfs.register_collector(Box::new(Scraped(|e: &mut Emit<'_, '_>| {
        e.gauges(
            "build_info",
            "The gfs-rs version this server runs (always 1)",
            [([("version", env!("CARGO_PKG_VERSION"))], Value::Int(1))],
        )
    })));
    let filled = fill(gfs);
    (root, filled)
}

/// The text of `registry` (every metric and collector in it).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector's own error would
    // leave the text cut short, which Prometheus reports as a bad scrape.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

/// Serves `GET /metrics` with the text of `registry` on every connection
/// `listener` accepts, until the task running it is dropped (its
/// connections with it). Anything else gets 404 (another path) or 405
/// (another method); a connection that sends no request head within 5 s
/// is closed.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: pause, go on.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = answer(&req, &registry);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A broken request or a closed connection ends just this one.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn answer<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into())
    } else if req.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        )
    } else {
        (StatusCode::OK, CONTENT_TYPE, render(registry))
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Binds `addr` for [`serve`]: a clear error if it cannot.
pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding the metrics address {addr}: {e}"))
}

// ---- the process ---------------------------------------------------------

/// The process's CPU time, memory, threads, file descriptors and start,
/// from `/proc/self` when scraped (`process_*`, as Prometheus's client
/// libraries name them). Nothing is reported of what cannot be read.
#[derive(Debug)]
pub struct Process;

/// The fields of `/proc/self/stat` the process metrics use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// User and system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    /// Since boot, in clock ticks.
    pub start_ticks: u64,
    pub virtual_bytes: u64,
    pub resident_pages: u64,
}

/// Parses `/proc/PID/stat`: the command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest's first field is field 3 (the state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        cpu_ticks: num(14)? + num(15)?,
        threads: num(20)?,
        start_ticks: num(22)?,
        virtual_bytes: num(23)?,
        resident_pages: num(24)?,
    })
}

/// `btime` of `/proc/stat`: when the system booted, in seconds since the
/// epoch.
pub fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut Emit { enc: &mut encoder };
        // SAFETY: sysconf reads a system constant; no memory is touched.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        if let (Some(st), true) = (stat.as_deref().and_then(parse_proc_stat), tick > 0) {
            let tick = tick as f64;
            e.counter(
                "process_cpu_seconds",
                "User and system CPU time spent",
                st.cpu_ticks as f64 / tick,
            )?;
            e.gauge(
                "process_resident_memory_bytes",
                "Resident memory size",
                st.resident_pages.saturating_mul(page.max(0) as u64),
            )?;
            e.gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size",
                st.virtual_bytes,
            )?;
            e.gauge("process_threads", "OS threads", st.threads)?;
            let boot = std::fs::read_to_string("/proc/stat").ok();
            if let Some(b) = boot.as_deref().and_then(parse_boot_time) {
                e.gauge(
                    "process_start_time_seconds",
                    "Start time of the process since the epoch",
                    b as f64 + st.start_ticks as f64 / tick,
                )?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            e.gauge("process_open_fds", "Open file descriptors", fds.count())?;
        }
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the one struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            e.gauge(
                "process_max_fds",
                "Most open file descriptors allowed",
                lim.rlim_cur,
            )?;
        }
        Ok(())
    }
}

// ---- gRPC calls ----------------------------------------------------------

/// The gRPC status names, by code (grpc-go's spelling, as dashboards
/// expect them).
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const UNIMPLEMENTED: &str = "Unimplemented";

/// Longest method path counted under its own name.
const MAX_METHOD_LABEL: usize = 128;

/// The status name of a gRPC response from its head: `grpc-status` is in
/// the head when the call failed before any message (how tonic answers
/// a handler's error); a call whose head has none is counted as `OK` (its
/// status comes later, in the trailers).
pub fn status_name(grpc_status: Option<&[u8]>) -> &'static str {
    let Some(v) = grpc_status else {
        return CODES[0];
    };
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("Unknown")
}

/// The `method` label of a call to `path` that got `status`: the path
/// itself ("/gfs.master.v1.Master/Create") if a handler served it, else
/// `other`. A path no handler serves gets `Unimplemented` from tonic, so
/// only the server's own methods become labels, whatever clients send.
pub fn method_label<'a>(path: &'a str, status: &str) -> &'a str {
    let plausible = path.len() <= MAX_METHOD_LABEL
        && path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._".contains(&b));
    if status == UNIMPLEMENTED || !plausible {
        "other"
    } else {
        path
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CallLabels {
    method: String,
    code: &'static str,
}

impl EncodeLabelSet for CallLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), fmt::Error> {
        [("method", self.method.as_str()), ("code", self.code)].encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct MethodLabel {
    method: String,
}

impl EncodeLabelSet for MethodLabel {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), fmt::Error> {
        [("method", self.method.as_str())].encode(encoder)
    }
}

type Seconds = Family<MethodLabel, Histogram, fn() -> Histogram>;

/// A histogram of request times: 0.25 ms to 8 s, doubling.
pub fn call_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// gRPC calls a server answered, by method and status, and how long each
/// took to its response's head (for a streaming answer, to its first
/// message): `gfs_grpc_calls_total` and `gfs_grpc_call_seconds`.
#[derive(Clone, Debug)]
pub struct GrpcCalls {
    calls: Family<CallLabels, Counter>,
    seconds: Seconds,
}

impl GrpcCalls {
    /// Registers both families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let seconds: Seconds = Family::new_with_constructor(call_seconds);
        registry.register(
            "grpc_calls",
            "gRPC calls answered, by method and status",
            calls.clone(),
        );
        registry.register(
            "grpc_call_seconds",
            "Time from a gRPC call's arrival to its response's head",
            seconds.clone(),
        );
        Self { calls, seconds }
    }

    /// Counts a call to `path` (the request's, kept as the label when it
    /// is one: no second copy).
    fn record(&self, path: String, status: &'static str, took: Duration) {
        let method = if method_label(&path, status) == path {
            path
        } else {
            "other".to_string()
        };
        self.seconds
            .get_or_create(&MethodLabel {
                method: method.clone(),
            })
            .observe(took.as_secs_f64());
        self.calls
            .get_or_create(&CallLabels {
                method,
                code: status,
            })
            .inc();
    }
}

impl<S> tower_layer::Layer<S> for GrpcCalls {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            calls: self.clone(),
        }
    }
}

/// A gRPC service whose calls [`GrpcCalls`] counts.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    calls: GrpcCalls,
}

impl<S, B, RB> tower_service::Service<Request<B>> for Counted<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let path = req.uri().path().to_string();
        let calls = self.calls.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            let status = match &r {
                Ok(resp) => status_name(resp.headers().get("grpc-status").map(|v| v.as_bytes())),
                // The transport failed: no status was sent.
                Err(_) => "Unknown",
            };
            calls.record(path, status, started.elapsed());
            r
        })
    }
}

// ---- values read when scraped ---------------------------------------------

/// A collector that reads its values from a server's state on every
/// scrape: `read` writes them through [`Emit`].
pub struct Scraped<F>(pub F);

impl<F> fmt::Debug for Scraped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scraped")
    }
}

impl<F> Collector for Scraped<F>
where
    F: Fn(&mut Emit<'_, '_>) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut Emit { enc: &mut encoder })
    }
}

/// Writes one scrape's values (names get the registry's prefix).
pub struct Emit<'a, 'b> {
    enc: &'b mut DescriptorEncoder<'a>,
}

impl fmt::Debug for Emit<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Emit")
    }
}

/// A value of a gauge: whole numbers or not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v.into())
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl From<Duration> for Value {
    fn from(v: Duration) -> Self {
        Value::Float(v.as_secs_f64())
    }
}

fn gauge_of(v: Value) -> GaugeOf {
    match v {
        Value::Int(i) => GaugeOf::Int(ConstGauge::new(i)),
        Value::Float(f) => GaugeOf::Float(ConstGauge::new(f)),
    }
}

enum GaugeOf {
    Int(ConstGauge<i64>),
    Float(ConstGauge<f64>),
}

impl GaugeOf {
    fn encode(&self, e: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        match self {
            GaugeOf::Int(g) => g.encode(e),
            GaugeOf::Float(g) => g.encode(e),
        }
    }
}

impl Emit<'_, '_> {
    /// A gauge with no labels.
    pub fn gauge(&mut self, name: &str, help: &str, v: impl Into<Value>) -> fmt::Result {
        let g = gauge_of(v.into());
        let e =
            self.enc
                .encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
        g.encode(e)
    }

    /// A counter with no labels (the registry's text adds `_total`).
    pub fn counter(&mut self, name: &str, help: &str, v: impl EncodeCounterValue) -> fmt::Result {
        let c = ConstCounter::new(v);
        c.encode(
            self.enc
                .encode_descriptor(name, help, None, c.metric_type())?,
        )
    }

    /// Histograms kept by the server, one per label set.
    pub fn histograms<'h, L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, &'h Histogram)>,
    ) -> fmt::Result {
        let mut e = self
            .enc
            .encode_descriptor(name, help, None, call_seconds().metric_type())?;
        for (labels, h) in values {
            h.encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge with one value per label set.
    pub fn gauges<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, Value)>,
    ) -> fmt::Result {
        let mut e =
            self.enc
                .encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
        for (labels, v) in values {
            gauge_of(v).encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A counter with one value per label set.
    pub fn counters<L: EncodeLabelSet, N: EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        values: impl IntoIterator<Item = (L, N)>,
    ) -> fmt::Result {
        let mut e =
            self.enc
                .encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
        for (labels, v) in values {
            ConstCounter::new(v).encode(e.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_comes_from_the_head_or_is_ok() {
        assert_eq!(status_name(None), "OK");
        assert_eq!(status_name(Some(b"0")), "OK");
        assert_eq!(status_name(Some(b"3")), "InvalidArgument");
        assert_eq!(status_name(Some(b"14")), "Unavailable");
        assert_eq!(status_name(Some(b"16")), "Unauthenticated");
        assert_eq!(status_name(Some(b"17")), "Unknown");
        assert_eq!(status_name(Some(b"-1")), "Unknown");
        assert_eq!(status_name(Some(b"x")), "Unknown");
        assert_eq!(status_name(Some(&[0xff, 0xfe])), "Unknown");
    }

    #[test]
    fn the_process_figures_are_read_past_the_command_name() {
        // A command name with a space and a parenthesis of its own.
        let stat = "4242 (gfs (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 0 0 20 0 7 0 1234 567890 321 18446744073709551615";
        assert_eq!(
            parse_proc_stat(stat),
            Some(ProcStat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 1234,
                virtual_bytes: 567890,
                resident_pages: 321,
            })
        );
        assert_eq!(parse_proc_stat("4242 (gfs) S 1 2"), None);
        assert_eq!(parse_proc_stat("no parenthesis"), None);
        let boot = "cpu 1 2\nbtime 1764720000\nprocesses 9\n";
        assert_eq!(parse_boot_time(boot), Some(1764720000));
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }

    #[test]
    fn a_server_registry_has_the_process_and_the_build() {
        let (r, ()) = server_registry(|gfs| {
            gfs.register_collector(Box::new(Scraped(|e: &mut Emit<'_, '_>| {
                e.gauge("files", "Files", 1u64)
            })));
        });
        let text = render(&r);
        let has = |p: &str| text.lines().any(|l| l.starts_with(p));
        assert!(has("process_cpu_seconds_total "), "{text}");
        assert!(has("process_resident_memory_bytes "), "{text}");
        assert!(has("process_open_fds "), "{text}");
        assert!(has("process_start_time_seconds "), "{text}");
        assert!(has("gfs_build_info{version=\""), "{text}");
        assert!(has("gfs_files 1"), "{text}");
    }

    #[test]
    fn only_served_methods_become_labels() {
        let m = "/gfs.master.v1.Master/Create";
        assert_eq!(method_label(m, "OK"), m);
        assert_eq!(method_label(m, "NotFound"), m);
        // Whatever a client names, an unknown method is `other`.
        assert_eq!(
            method_label("/gfs.master.v1.Master/Nope", "Unimplemented"),
            "other"
        );
        assert_eq!(method_label("/anything/at/all", "Unimplemented"), "other");
        // A served path that is odd or long is not copied into a label.
        assert_eq!(method_label("/a b", "OK"), "other");
        assert_eq!(method_label("/a\"b", "OK"), "other");
        assert_eq!(method_label("no-slash", "OK"), "other");
        let long = format!("/{}", "a".repeat(MAX_METHOD_LABEL));
        assert_eq!(method_label(&long, "OK"), "other");
    }

    fn registry_with_values() -> Registry {
        let mut r = Registry::with_prefix("gfs");
        r.register_collector(Box::new(Scraped(|e: &mut Emit<'_, '_>| {
            e.gauge("files", "Files in the namespace", 3u64)?;
            e.gauge("lag_seconds", "A lag", Duration::from_millis(1500))?;
            e.counter("bytes_read", "Bytes read", 42u64)?;
            e.gauges(
                "disk_free_bytes",
                "Free bytes of each data directory",
                [
                    ([("dir", "/d1")], Value::from(7u64)),
                    ([("dir", "/d2")], 9u64.into()),
                ],
            )?;
            e.counters(
                "disk_ios",
                "Device I/Os",
                [([("dir", "/d1"), ("op", "read")], 5u64)],
            )
        })));
        let h = call_seconds();
        h.observe(0.001);
        h.observe(0.003);
        r.register_collector(Box::new(Scraped(move |e: &mut Emit<'_, '_>| {
            e.histograms("took_seconds", "Times", [([("op", "read")], &h)])
        })));
        r
    }

    #[test]
    fn scraped_values_render_as_openmetrics_text() {
        let text = render(&registry_with_values());
        let want = "\
# HELP gfs_files Files in the namespace
# TYPE gfs_files gauge
gfs_files 3
# HELP gfs_lag_seconds A lag
# TYPE gfs_lag_seconds gauge
gfs_lag_seconds 1.5
# HELP gfs_bytes_read Bytes read
# TYPE gfs_bytes_read counter
gfs_bytes_read_total 42
# HELP gfs_disk_free_bytes Free bytes of each data directory
# TYPE gfs_disk_free_bytes gauge
gfs_disk_free_bytes{dir=\"/d1\"} 7
gfs_disk_free_bytes{dir=\"/d2\"} 9
# HELP gfs_disk_ios Device I/Os
# TYPE gfs_disk_ios counter
gfs_disk_ios_total{dir=\"/d1\",op=\"read\"} 5
# HELP gfs_took_seconds Times
# TYPE gfs_took_seconds histogram
gfs_took_seconds_sum{op=\"read\"} 0.004
gfs_took_seconds_count{op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.00025\",op=\"read\"} 0
gfs_took_seconds_bucket{le=\"0.0005\",op=\"read\"} 0
gfs_took_seconds_bucket{le=\"0.001\",op=\"read\"} 1
gfs_took_seconds_bucket{le=\"0.002\",op=\"read\"} 1
gfs_took_seconds_bucket{le=\"0.004\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.008\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.016\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.032\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.064\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.128\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.256\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"0.512\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"1.024\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"2.048\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"4.096\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"8.192\",op=\"read\"} 2
gfs_took_seconds_bucket{le=\"+Inf\",op=\"read\"} 2
# EOF
";
        assert_eq!(text, want);
    }

    #[test]
    fn grpc_calls_are_counted_by_method_and_status() {
        let mut r = Registry::with_prefix("gfs");
        let calls = GrpcCalls::register(&mut r);
        let m = "/gfs.chunk.v1.Chunkserver/Write";
        calls.record(m.into(), "OK", Duration::from_millis(1));
        calls.record(m.into(), "OK", Duration::from_millis(3));
        calls.record(m.into(), "Unavailable", Duration::from_millis(3));
        calls.record("/x.Y/Z".into(), UNIMPLEMENTED, Duration::from_millis(3));
        let text = render(&r);
        let line = |s: &str| text.lines().any(|l| l == s);
        assert!(
            line("gfs_grpc_calls_total{method=\"/gfs.chunk.v1.Chunkserver/Write\",code=\"OK\"} 2"),
            "{text}"
        );
        assert!(line(
            "gfs_grpc_calls_total{method=\"/gfs.chunk.v1.Chunkserver/Write\",code=\"Unavailable\"} 1"
        ));
        assert!(line(
            "gfs_grpc_calls_total{method=\"other\",code=\"Unimplemented\"} 1"
        ));
        assert!(line(
            "gfs_grpc_call_seconds_count{method=\"/gfs.chunk.v1.Chunkserver/Write\"} 3"
        ));
        assert!(line(
            "gfs_grpc_call_seconds_bucket{le=\"0.001\",method=\"/gfs.chunk.v1.Chunkserver/Write\"} 1"
        ));
    }

    async fn get(addr: std::net::SocketAddr, request: impl AsRef<[u8]>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The server may close before a huge request is all sent.
        let _ = s.write_all(request.as_ref()).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_refuses_the_rest() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = tokio::spawn(serve(l, Arc::new(registry_with_values())));
        let ok = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(CONTENT_TYPE), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP gfs_files"), "{ok}");
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let q = get(
            addr,
            "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(q.starts_with("HTTP/1.1 200 OK\r\n"), "{q}");
        let other = get(
            addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        // Garbage gets an error answer or a closed connection, and the
        // endpoint goes on serving.
        let bad = get(
            addr,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        )
        .await;
        assert!(bad.is_empty() || bad.starts_with("HTTP/1.1 400"), "{bad}");
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
        let _ = get(addr, huge).await;
        let again = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");
        server.abort();
    }
}
