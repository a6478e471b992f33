//! A network link with a delay and a bandwidth, for faults `tc netem`
//! would give and this machine has not (RELIABILITY.md: delay must come
//! from a proxy): a TCP proxy in the test's own process, on a runtime of
//! its own, in front of one server. The server listens elsewhere and
//! advertises the link's address, so every connection to it (clients',
//! peers', the masters') crosses the link, both ways; its own connections
//! to others do not.
//!
//! Each direction of a connection delivers what it read `delay` later, in
//! order; all connections together carry no more than `bytes_per_s` each
//! way (one link's bandwidth, shared); a rate of 0 holds every byte (a
//! link that still takes connections but carries nothing). The shape can
//! change while connections are open.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where a server listens and where others reach it: the same address,
/// or a link's in front of it.
#[derive(Debug)]
pub struct Reached {
    pub addr: String,
    pub listen: String,
    pub link: Option<Link>,
}

impl Reached {
    /// A free port on `ip`, behind a link of `shape` if there is one.
    pub fn at(ip: std::net::Ipv4Addr, shape: Option<Shape>) -> anyhow::Result<Self> {
        let addr = format!("{ip}:{}", crate::masters::free_port(ip)?);
        let Some(shape) = shape else {
            return Ok(Self {
                listen: addr.clone(),
                addr,
                link: None,
            });
        };
        let listen = format!("{ip}:{}", crate::masters::free_port(ip)?);
        let link = Link::start(addr.parse()?, listen.parse()?, shape)?;
        Ok(Self {
            addr,
            listen,
            link: Some(link),
        })
    }

    /// The link in front (panics if there is none: a test asked for one).
    pub fn link(&self) -> &Link {
        self.link
            .as_ref()
            .expect("the server has a link (`links` in its spec)")
    }
}

/// How a link carries bytes, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// One way: a round trip across the link costs twice this.
    pub delay: Duration,
    /// `None`: as fast as loopback; `Some(0)`: nothing moves.
    pub bytes_per_s: Option<u64>,
}

impl Shape {
    pub fn delay_ms(ms: u64) -> Self {
        Self {
            delay: Duration::from_millis(ms),
            bytes_per_s: None,
        }
    }

    pub fn rate(bytes_per_s: u64) -> Self {
        Self {
            delay: Duration::ZERO,
            bytes_per_s: Some(bytes_per_s),
        }
    }
}

/// Bytes read from one side, released to the other at `due`.
struct Carried {
    due: Instant,
    bytes: Vec<u8>,
}

/// Largest read, and the step at which a limited rate releases bytes.
const READ_BYTES: usize = 64 * 1024;
const STEP_BYTES: usize = 8 * 1024;

/// Reads in flight per direction: what a link holds beyond the sockets'
/// own buffers (256 KiB), so a slow link holds its sender back as a
/// router's queue would.
const IN_FLIGHT: usize = 4;

/// A running link; dropping it closes it and every connection across it.
#[derive(Debug)]
pub struct Link {
    addr: SocketAddr,
    shape: Arc<Mutex<Shape>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Link {
    /// Listens on `listen` and carries every connection to `target`.
    pub fn start(listen: SocketAddr, target: SocketAddr, shape: Shape) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("link")
            .enable_all()
            .build()?;
        // Bound here, not in the runtime: the caller may be in one.
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shape = Arc::new(Mutex::new(shape));
        let carried = shape.clone();
        runtime.spawn(async move {
            if let Ok(listener) = TcpListener::from_std(listener) {
                accept(listener, target, carried).await;
            }
        });
        Ok(Self {
            addr,
            shape,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the shape for bytes read from now on (and for those held
    /// by a rate of 0).
    pub fn set(&self, shape: Shape) {
        *lock(&self.shape) = shape;
    }

    pub fn shape(&self) -> Shape {
        *lock(&self.shape)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

fn lock(shape: &Mutex<Shape>) -> std::sync::MutexGuard<'_, Shape> {
    shape
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// When a direction of the link may carry its next byte (its rate's
/// schedule, shared by every connection).
type Schedule = Arc<Mutex<Instant>>;

async fn accept(listener: TcpListener, target: SocketAddr, shape: Arc<Mutex<Shape>>) {
    let to_server: Schedule = Arc::new(Mutex::new(Instant::now()));
    let from_server: Schedule = Arc::new(Mutex::new(Instant::now()));
    while let Ok((inbound, _)) = listener.accept().await {
        let shape = shape.clone();
        let (to_server, from_server) = (to_server.clone(), from_server.clone());
        tokio::spawn(async move {
            // The server down: the connection closes, as it would.
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_r, in_w) = inbound.into_split();
            let (out_r, out_w) = outbound.into_split();
            tokio::spawn(carry(in_r, out_w, (shape.clone(), to_server)));
            tokio::spawn(carry(out_r, in_w, (shape, from_server)));
        });
    }
}

/// One direction: a reader stamping what it reads, a writer releasing it
/// when due at the link's rate. An end or error of either side closes the
/// direction (the writer shuts its side down once everything before the
/// end is delivered).
async fn carry(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    (shape, schedule): (Arc<Mutex<Shape>>, Schedule),
) {
    let (tx, mut rx) = mpsc::channel::<Carried>(IN_FLIGHT);
    let reader = {
        let shape = shape.clone();
        async move {
            loop {
                let mut bytes = vec![0u8; READ_BYTES];
                let n = match from.read(&mut bytes).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                bytes.truncate(n);
                let due = Instant::now() + lock(&shape).delay;
                if tx.send(Carried { due, bytes }).await.is_err() {
                    return;
                }
            }
        }
    };
    let writer = async move {
        while let Some(c) = rx.recv().await {
            tokio::time::sleep_until(c.due).await;
            for step in c.bytes.chunks(STEP_BYTES) {
                loop {
                    let rate = lock(&shape).bytes_per_s;
                    match rate {
                        None => break,
                        Some(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                        Some(rate) => {
                            let at = {
                                let mut free = schedule.lock().unwrap_or_else(|p| p.into_inner());
                                *free = (*free).max(Instant::now())
                                    + Duration::from_secs_f64(step.len() as f64 / rate as f64);
                                *free
                            };
                            tokio::time::sleep_until(at).await;
                            break;
                        }
                    }
                }
                if to.write_all(step).await.is_err() {
                    return;
                }
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::spawn(reader);
    writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that echoes what it reads.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(link: &Link, bytes: usize) -> Duration {
        let mut s = TcpStream::connect(link.addr()).await.expect("connect");
        let sent: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&sent).await.expect("write");
        };
        let mut back = vec![0u8; bytes];
        let read = async {
            r.read_exact(&mut back).await.expect("read");
        };
        tokio::join!(write, read);
        assert!(back == sent, "the link changed the bytes");
        started.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_link_delays_and_limits_and_carries_every_byte() {
        let target = echo().await;
        let link = Link::start(
            "127.0.0.1:0".parse().expect("addr"),
            target,
            Shape::default(),
        )
        .expect("link");
        let fast = round_trip(&link, 1 << 20).await;
        assert!(fast < Duration::from_millis(500), "{fast:?}");

        // 100 ms each way: a round trip of at least 200 ms.
        link.set(Shape::delay_ms(100));
        let slow = round_trip(&link, 10).await;
        assert!(slow >= Duration::from_millis(200), "{slow:?}");
        assert!(slow < Duration::from_millis(1000), "{slow:?}");

        // 1 MB/s each way: 256 KiB there and back in about half a second.
        link.set(Shape::rate(1_000_000));
        let limited = round_trip(&link, 256 * 1024).await;
        assert!(limited >= Duration::from_millis(250), "{limited:?}");
        assert!(limited < Duration::from_secs(3), "{limited:?}");

        // Two connections share the rate: 128 KiB each, as long as 256 KiB
        // on one (each alone would take half of it).
        let (a, b) = tokio::join!(round_trip(&link, 128 * 1024), round_trip(&link, 128 * 1024));
        assert!(a.max(b) >= Duration::from_millis(250), "{a:?} {b:?}");

        // Nothing moves at a rate of 0, and everything once it is lifted.
        link.set(Shape::rate(0));
        let held = tokio::time::timeout(Duration::from_millis(300), round_trip(&link, 10)).await;
        assert!(held.is_err(), "bytes crossed a link carrying nothing");
        let lift = {
            let shape = link.shape.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                *lock(&shape) = Shape::default();
            }
        };
        let (_, resumed) = tokio::join!(lift, round_trip(&link, 1000));
        assert!(resumed >= Duration::from_millis(150), "{resumed:?}");
    }
}
