//! Progress on a data-plane connection: when bytes last moved either way.
//! A push fails once its peer has taken nothing for a while (stopped,
//! stalled, cut off), with no bound on how long a healthy push may take.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// When bytes last moved on a connection, and whether its user is waiting
/// for data of its own to send (then the peer is not to blame).
#[derive(Debug)]
pub struct Watch {
    start: Instant,
    last_ms: AtomicU64,
    paused: AtomicBool,
}

impl Watch {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            paused: AtomicBool::new(false),
        })
    }

    /// Bytes moved now.
    pub fn moved(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// While paused, no progress is expected; either way the clock starts
    /// again now.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
        self.moved();
    }

    /// Returns once nothing moved for `stall` while not paused.
    pub async fn stalled(&self, stall: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.start.elapsed().saturating_sub(last);
            let paused = self.paused.load(Ordering::Relaxed);
            if !paused && idle >= stall {
                return;
            }
            let wait = if paused { stall } else { stall - idle };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }
}

/// A connection whose reads and writes tell its [`Watch`].
#[derive(Debug)]
pub struct Watched {
    s: TcpStream,
    watch: Arc<Watch>,
}

impl Watched {
    pub fn new(s: TcpStream) -> Self {
        Self {
            s,
            watch: Watch::new(),
        }
    }

    pub fn watch(&self) -> &Arc<Watch> {
        &self.watch
    }

    pub fn into_inner(self) -> TcpStream {
        self.s
    }

    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.watch.moved();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.s).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.moved();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.s).poll_write(cx, buf);
        this.wrote(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.s).poll_write_vectored(cx, bufs);
        this.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.s.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().s).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_watch_fires_only_after_a_stall_while_not_paused() {
        let w = Watch::new();
        let started = Instant::now();
        // Bytes moving every 50 ms for 500 ms: no stall.
        let mover = {
            let w = w.clone();
            async move {
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    w.moved();
                }
            }
        };
        tokio::select! {
            () = w.stalled(STALL) => panic!("stalled while bytes moved"),
            () = mover => {}
        }
        // Paused (waiting for its own data) for 500 ms: no stall either.
        w.pause(true);
        tokio::select! {
            () = w.stalled(STALL) => panic!("stalled while paused"),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // Resumed and then nothing: a stall, about STALL later.
        w.pause(false);
        let resumed = Instant::now();
        w.stalled(STALL).await;
        let took = resumed.elapsed();
        assert!(took >= STALL && took < STALL * 3, "{took:?}");
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
