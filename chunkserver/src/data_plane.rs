//! The server side of the data plane (`gfs_proto::data`): one listener for
//! both planes. Each accepted connection is classified by its first four
//! bytes; data-plane connections are served here, the rest go to tonic.
//! Mutations that arrive on the data plane run the gRPC handlers' code
//! (`Chunkserver::mutate`, `Chunkserver::apply`) and answer the same way.
//!
//! A push is received in pieces of `PIECE_BYTES`, read by the kernel
//! straight into the store's sector-aligned memory when it has room (the
//! mutation then writes the data where it lies), otherwise each into its
//! own buffer (recycled: `pieces`). Each piece is kept for the mutation and
//! handed as it is to the connection that forwards it to the next server
//! of the chain.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gfs_proto::data::{
    self, MAGIC, Op, PIECE_BYTES, encode_ok, encode_status, read_request, write_with,
};
use gfs_proto::wire::chunk::chunkserver_server::Chunkserver;
use gfs_proto::wire::chunk::{
    Empty, HelloRequest, PingReply, PingRequest, PushHeader, PushReply, ReadHead, ReadRequest,
};
use gfs_proto::wire::{ErrorKind, detail_of, error};
use gfs_storage_engine::Receiving;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::Request;

use crate::metrics::DataOp;
use crate::pieces::PiecePool;
use crate::service::{ChunkService, MAX_CHAIN, PEER_TIMEOUT, Shared, invalid};

/// A connection that sends nothing for this long is closed (a pooled
/// client connection is reopened).
const IDLE: Duration = Duration::from_secs(60);

/// How long a new connection may take to send its first four bytes.
const FIRST_BYTES: Duration = Duration::from_secs(10);

/// Accepts connections until the task is dropped (which ends every data
/// connection it started); gRPC connections go to `grpc`.
pub async fn accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    grpc: mpsc::Sender<io::Result<TcpStream>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (s, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without TCP_NODELAY, replies wait out the peer's delayed ACK.
                let _ = s.set_nodelay(true);
                let (shared, grpc) = (shared.clone(), grpc.clone());
                conns.spawn(async move {
                    match tokio::time::timeout(FIRST_BYTES, is_data_plane(&s)).await {
                        Ok(Ok(true)) => serve(&shared, s).await,
                        Ok(Ok(false)) => {
                            let _ = grpc.send(Ok(s)).await;
                        }
                        _ => {}
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Whether the connection starts with the data plane's magic; false for
/// anything else (tonic then refuses what is not HTTP/2).
async fn is_data_plane(s: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 4];
    loop {
        let n = s.peek(&mut first).await?;
        if n == 0 || first[..n] != MAGIC[..n] {
            return Ok(false);
        }
        if n == MAGIC.len() {
            return Ok(true);
        }
        // A prefix of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Serves requests one at a time until the client closes, idles or sends
/// something that breaks the framing.
async fn serve(shared: &Arc<Shared>, mut s: TcpStream) {
    let sh: &Shared = shared;
    // With a cluster token, nothing but a ping before the token.
    let mut admitted = sh.cfg.auth_token.is_none();
    loop {
        let (op, header) = match tokio::time::timeout(IDLE, read_request(&mut s)).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                // Tell the client why (best effort), then close: the
                // framing is lost.
                let _ = s.write_all(&encode_status(&invalid(e.to_string()))).await;
                return;
            }
        };
        if op == Op::Hello {
            match decoded::<HelloRequest>(&mut s, header.clone(), "hello").await {
                Ok(Some(h)) if admits(sh, &h.token) => {
                    admitted = true;
                    if s.write_all(&encode_ok(&Empty {})).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Another token: refused, whatever came before.
                Ok(Some(_)) => return refuse(sh, &mut s).await,
                _ => return,
            }
        }
        if !admitted && op != Op::Ping {
            // Refused before anything is read or done; what follows the
            // header is not read.
            return refuse(sh, &mut s).await;
        }
        let kind = match op {
            Op::Read => DataOp::Read,
            Op::Push => DataOp::Push,
            Op::Mutate => DataOp::Mutate,
            Op::Apply => DataOp::Apply,
            Op::Ping | Op::Hello => DataOp::Ping,
        };
        sh.traffic.request(kind);
        let started = Instant::now();
        let keep = match op {
            Op::Read => match decoded(&mut s, header, "read").await {
                Ok(Some(req)) => read(sh, &mut s, req).await,
                other => other.map(|_| false),
            },
            Op::Push => match decoded(&mut s, header, "push").await {
                Ok(Some(h)) => push(sh, &mut s, h).await,
                other => other.map(|_| false),
            },
            Op::Mutate => match decoded(&mut s, header, "mutation").await {
                Ok(Some(r)) => {
                    let out = service(shared).mutate(Request::new(r)).await;
                    answer(sh, DataOp::Mutate, &mut s, out).await
                }
                other => other.map(|_| false),
            },
            Op::Apply => match decoded(&mut s, header, "forwarded mutation").await {
                Ok(Some(r)) => {
                    let out = service(shared).apply(Request::new(r)).await;
                    answer(sh, DataOp::Apply, &mut s, out).await
                }
                other => other.map(|_| false),
            },
            // Answered above.
            Op::Hello => Ok(true),
            // Answered at once: this process is alive, and whether its
            // disks still complete I/O (`data::Probe`).
            Op::Ping => match decoded::<PingRequest>(&mut s, header, "ping").await {
                Ok(Some(p)) => {
                    let stalled = match p.handle {
                        0 => sh.store.stalled_for(),
                        h => sh.store.stalled_for_chunk(gfs_proto::ChunkHandle(h)),
                    }
                    .as_millis();
                    let reply = PingReply {
                        disk_stalled_ms: u64::try_from(stalled).unwrap_or(u64::MAX),
                    };
                    s.write_all(&encode_ok(&reply)).await.map(|()| true)
                }
                other => other.map(|_| false),
            },
        };
        sh.traffic.took(kind, started.elapsed());
        if !matches!(keep, Ok(true)) {
            return;
        }
    }
}

/// Answers `UNAUTHENTICATED`; the caller then closes the connection.
async fn refuse(sh: &Shared, s: &mut TcpStream) {
    sh.traffic.unauthenticated();
    let e = error(ErrorKind::Unauthenticated, gfs_proto::auth::REFUSAL);
    let _ = s.write_all(&encode_status(&e)).await;
}

/// Whether `token` is the cluster's (any is, without one).
fn admits(sh: &Shared, token: &[u8]) -> bool {
    sh.cfg.auth_token.as_ref().is_none_or(|t| t.matches(token))
}

/// The request's header, or `None` after telling the client it could not
/// be decoded (the connection is then closed).
async fn decoded<M: Message + Default>(
    s: &mut TcpStream,
    header: Bytes,
    what: &str,
) -> io::Result<Option<M>> {
    match M::decode(header) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            let refusal = invalid(format!("bad {what} header: {e}"));
            s.write_all(&encode_status(&refusal)).await?;
            Ok(None)
        }
    }
}

/// The gRPC service's handlers, for the mutations that come this way.
fn service(shared: &Arc<Shared>) -> ChunkService {
    ChunkService {
        shared: shared.clone(),
    }
}

/// Sends a control call's answer, as its gRPC twin would have; the
/// connection stays usable.
async fn answer<M: Message>(
    sh: &Shared,
    op: DataOp,
    s: &mut TcpStream,
    out: Result<tonic::Response<M>, tonic::Status>,
) -> io::Result<bool> {
    match out {
        Ok(reply) => s.write_all(&encode_ok(&reply.into_inner())).await?,
        Err(e) => {
            sh.traffic.failed(op);
            s.write_all(&encode_status(&e)).await?
        }
    }
    Ok(true)
}

/// Answers a read; whether the connection is still usable.
async fn read(sh: &Shared, s: &mut TcpStream, req: ReadRequest) -> io::Result<bool> {
    let started = std::time::Instant::now();
    match sh.read_chunk(&req).await {
        Ok((data, chunk_length)) => {
            let read = started.elapsed();
            let bytes = data.len();
            let head = ReadHead {
                chunk_length,
                data_bytes: bytes as u64,
            };
            write_with(s, encode_ok(&head), data).await?;
            sh.traffic.read(bytes as u64);
            tracing::trace!(
                bytes,
                read_ms = read.as_secs_f64() * 1e3,
                send_ms = (started.elapsed() - read).as_secs_f64() * 1e3,
                "read"
            );
        }
        Err(e) => {
            sh.traffic.failed(DataOp::Read);
            s.write_all(&encode_status(&e)).await?
        }
    }
    Ok(true)
}

/// Receives a push while forwarding it down the chain; answers how many
/// servers of the chain stored it. Whether the connection is still usable.
async fn push(sh: &Shared, s: &mut TcpStream, h: PushHeader) -> io::Result<bool> {
    let total = h.total_bytes;
    let max = sh.cfg.store.max_request_bytes;
    if h.data_id == 0 || total > max || h.chain.len() > MAX_CHAIN {
        // The payload that follows is not read: answer and close.
        sh.traffic.failed(DataOp::Push);
        let e = invalid(format!(
            "a push needs a nonzero data id, at most {max} bytes and {MAX_CHAIN} servers; got {total} bytes and {} servers",
            h.chain.len()
        ));
        s.write_all(&encode_status(&e)).await?;
        return Ok(false);
    }
    if let Err(full) = sh.reserve(total) {
        sh.traffic.busy();
        // Read and drop the data so the connection stays in step.
        drain(s, total).await?;
        s.write_all(&encode_status(&error(ErrorKind::Busy, full.to_string())))
            .await?;
        return Ok(true);
    }
    // Mutations that came before the data wait while it is received.
    let arriving = sh.arrivals.receiving(h.data_id);
    let (tx, downstream) = match h.chain.split_first() {
        Some((next, rest)) => {
            let (tx, rx) = mpsc::channel::<Bytes>(8);
            let fwd = PushHeader {
                data_id: h.data_id,
                total_bytes: total,
                chain: rest.to_vec(),
            };
            let (pool, next) = (sh.data.clone(), next.clone());
            let task = tokio::spawn(async move { pool.push(&next, &fwd, rx, PEER_TIMEOUT).await });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let mut parts = Vec::with_capacity(total.div_ceil(PIECE_BYTES as u64) as usize);
    let mut receiving = sh.store.receiving(total as usize);
    let mut got = 0u64;
    while got < total {
        let want = (total - got).min(PIECE_BYTES as u64) as usize;
        let piece = receive_piece(s, &mut receiving, &sh.pieces, want);
        match tokio::time::timeout(PEER_TIMEOUT, piece).await {
            Ok(Ok(p)) => {
                got += p.len() as u64;
                if let Some(tx) = &tx {
                    // A dead next server shows in its reply; keep receiving.
                    let _ = tx.send(p.clone()).await;
                }
                parts.push(p);
            }
            Ok(Err(e)) => {
                sh.release(total);
                sh.traffic.failed(DataOp::Push);
                return Err(e);
            }
            Err(_) => {
                sh.release(total);
                sh.traffic.failed(DataOp::Push);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "push stalled mid-data",
                ));
            }
        }
    }
    drop(tx);
    sh.traffic.pushed(total);
    let received = receiving.and_then(Receiving::finish);
    sh.store_pushed(h.data_id, parts, received, total);
    drop(arriving);
    let held = Instant::now();
    // The lags of the hops below, this server's to the next first.
    let (below, busy, lag_us) = match downstream {
        Some(task) => match task.await {
            Ok(Ok(r)) => (r.stored, r.busy, r.lag_us),
            Ok(Err(e)) => {
                tracing::debug!(error = %e.message(), "push down the chain failed");
                (0, detail_of(&e).kind() == ErrorKind::Busy, Vec::new())
            }
            Err(_) => (0, false, Vec::new()),
        },
        None => (0, false, Vec::new()),
    };
    let reply = PushReply {
        stored: 1 + below,
        busy,
        waited_us: u64::try_from(held.elapsed().as_micros()).unwrap_or(u64::MAX),
        lag_us,
    };
    s.write_all(&data::encode_ok(&reply)).await?;
    Ok(true)
}

/// Reads the next `n` bytes of a push: into the store's memory when it
/// gave a buffer for the push, else into a pooled piece.
async fn receive_piece(
    s: &mut TcpStream,
    receiving: &mut Option<Receiving>,
    pieces: &Arc<PiecePool>,
    n: usize,
) -> io::Result<Bytes> {
    match receiving {
        Some(r) => {
            s.read_exact(r.unfilled(n)).await?;
            Ok(r.advance(n))
        }
        None => {
            let mut buf = pieces.take(n);
            data::read_exact_into(s, &mut buf, n).await?;
            Ok(pieces.freeze(buf))
        }
    }
}

/// Reads and drops `n` bytes.
async fn drain(s: &mut TcpStream, n: u64) -> io::Result<()> {
    let mut buf = BytesMut::zeroed(PIECE_BYTES.min(n as usize));
    let mut left = n;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let got = tokio::time::timeout(PEER_TIMEOUT, s.read(&mut buf[..want]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "push stalled mid-data"))??;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        left -= got as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use gfs_proto::wire::chunk::MutationKind;
    use gfs_storage_engine::ChunkStore;

    use super::*;
    use crate::config::ConfigFile;

    /// A server of the data plane on a port of its own, with a store in `dir`.
    async fn server(dir: &std::path::Path) -> (Arc<Shared>, String, tokio::task::JoinHandle<()>) {
        server_with(dir, None).await
    }

    /// As `server`, with the cluster token in the file `token`.
    async fn server_with(
        dir: &std::path::Path,
        token: Option<std::path::PathBuf>,
    ) -> (Arc<Shared>, String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let cfg = ConfigFile {
            id: Some(1),
            listen: Some(addr),
            data_dirs: vec![dir.to_path_buf()],
            masters: vec!["127.0.0.1:1".into()],
            auth_token_file: token,
            ..ConfigFile::default()
        }
        .validate()
        .expect("config");
        let (store, _) = ChunkStore::open(cfg.store.clone()).await.expect("store");
        let shared = Shared::new(cfg, store);
        let (grpc, _) = mpsc::channel(1);
        let task = tokio::spawn(accept(shared.clone(), listener, grpc));
        (shared, addr.to_string(), task)
    }

    async fn push_to(addr: &str, chain: &[String], id: u64, data: &[u8]) -> PushReply {
        let (tx, rx) = mpsc::channel(4);
        let header = PushHeader {
            data_id: id,
            total_bytes: data.len() as u64,
            chain: chain.to_vec(),
        };
        let pieces: Vec<Bytes> = data.chunks(300_000).map(Bytes::copy_from_slice).collect();
        let feed = tokio::spawn(async move {
            for p in pieces {
                let _ = tx.send(p).await;
            }
        });
        let reply = data::DataPool::new()
            .push(addr, &header, rx, Duration::from_secs(10))
            .await
            .expect("push");
        feed.await.expect("feeder");
        reply
    }

    /// With a cluster token, a connection serves nothing but pings until
    /// it presented the token; another token is refused (and the
    /// connection closed) also after the right one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_is_served_once_it_presented_the_token() {
        use gfs_proto::auth::Token;
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("token");
        std::fs::write(&file, "data-plane-token-0123456789\n").expect("token file");
        let store = dir.path().join("store");
        std::fs::create_dir(&store).expect("store dir");
        let (_sh, addr, task) = server_with(&store, Some(file)).await;
        let read = ReadRequest {
            handle: 9,
            version: 1,
            offset: 0,
            length: 10,
        };
        let kind =
            |r: Result<(Bytes, u64), tonic::Status>| detail_of(&r.expect_err("fails")).kind();
        let t = |s: &str| Token::new(s).expect("token");
        let timeout = Duration::from_secs(5);
        let none = data::DataPool::new();
        assert_eq!(
            kind(none.read(&addr, &read, timeout).await),
            ErrorKind::Unauthenticated
        );
        assert!(none.ping(&addr, timeout).await, "pings need no token");
        let wrong = data::DataPool::with_token(Some(t("another-token-0123456789")));
        assert_eq!(
            kind(wrong.read(&addr, &read, timeout).await),
            ErrorKind::Unauthenticated
        );
        // The right token gets as far as the store: no such chunk.
        let right = data::DataPool::with_token(Some(t("data-plane-token-0123456789")));
        assert_eq!(
            kind(right.read(&addr, &read, timeout).await),
            ErrorKind::NotFound
        );

        // Raw: the right token, then another on the same connection.
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let hello = |t: &str| {
            data::encode_request(
                Op::Hello,
                &HelloRequest {
                    token: Bytes::copy_from_slice(t.as_bytes()),
                },
            )
        };
        s.write_all(&hello("data-plane-token-0123456789"))
            .await
            .expect("send");
        let ok = data::read_reply::<Empty, _>(&mut s).await.expect("answer");
        assert!(ok.is_ok(), "{ok:?}");
        s.write_all(&hello("another-token-0123456789"))
            .await
            .expect("send");
        let refused = tokio::time::timeout(timeout, data::read_reply::<Empty, _>(&mut s))
            .await
            .expect("answered, not left waiting")
            .expect("answer");
        assert_eq!(
            refused.expect_err("refused").kind(),
            ErrorKind::Unauthenticated
        );
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(timeout, s.read_to_end(&mut rest)).await;
        assert!(
            matches!(closed, Ok(Ok(0))),
            "connection left open: {closed:?}"
        );
        task.abort();
    }

    /// A push lands in the store's aligned memory at every server of the
    /// chain, and a mutation on a sector then writes it from there; off a
    /// sector, or when the store's memory is taken, it is copied as before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushed_data_is_written_where_it_was_received() {
        let dirs = [
            tempfile::tempdir().expect("dir"),
            tempfile::tempdir().expect("dir"),
        ];
        let (a, a_addr, a_task) = server(dirs[0].path()).await;
        let (b, b_addr, b_task) = server(dirs[1].path()).await;
        let data: Vec<u8> = (0..(1 << 20) + 4096u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let reply = push_to(&a_addr, std::slice::from_ref(&b_addr), 7, &data).await;
        assert_eq!(reply.stored, 2);
        // One lag per hop: the pusher's to a, then a's to b.
        assert_eq!(reply.lag_us.len(), 2, "{reply:?}");
        for sh in [&a, &b] {
            let parts = sh.data(&[7], data.len() as u64).expect("buffered");
            assert_eq!(parts.concat(), data);
            let on_sector = sh.prepare(MutationKind::Write, 4096, &[7], &parts);
            assert!(on_sector.expect("prepared").is_in_place());
            let off_sector = sh.prepare(MutationKind::Write, 100, &[7], &parts);
            assert!(!off_sector.expect("prepared").is_in_place());
        }

        // With the store's memory taken, the push is received into pieces
        // of its own and the mutation copies it.
        let take = || a.store.receiving(4 << 20).or_else(|| a.store.receiving(1));
        let held: Vec<_> = std::iter::from_fn(take).collect();
        assert!(!held.is_empty());
        let reply = push_to(&a_addr, &[], 8, &data[..5000]).await;
        assert_eq!(reply.stored, 1);
        assert_eq!((reply.lag_us.len(), reply.waited_us), (1, 0), "{reply:?}");
        let parts = a.data(&[8], 5000).expect("buffered");
        assert_eq!(parts.concat(), &data[..5000]);
        assert!(
            a.prepare(MutationKind::Write, 0, &[8], &parts)
                .is_none_or(|p| !p.is_in_place())
        );
        drop(held);
        a_task.abort();
        b_task.abort();
    }
}
