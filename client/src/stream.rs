//! Streaming I/O: [`Writer`] (`AsyncWrite`) keeps several chunks in flight
//! for large sequential writes; [`Reader`] (`AsyncRead` + `AsyncSeek`)
//! fetches pieces ahead for sequential reads; [`RecordReader`] delivers
//! each acknowledged record of an appended file exactly once.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use gfs_proto::record::{self, RecordId};
use gfs_proto::wire::MAX_FRAME_BYTES;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::PollSender;

use crate::client::{Client, Result};
use crate::master::MasterError;

fn io_err(e: MasterError) -> io::Error {
    io::Error::other(e)
}

enum Msg {
    Piece(u64, Bytes),
    Flush(oneshot::Sender<Result<()>>),
}

/// A sequential writer from a starting offset. Pieces of up to 4 MiB are
/// written by one task per chunk, `write_depth` chunks at a time; within a
/// chunk they go in order. `shutdown` (or `close`) waits for every piece to
/// be acknowledged and records the length with the masters.
pub struct Writer {
    tx: PollSender<Msg>,
    pending: BytesMut,
    /// File offset of `pending`'s first byte.
    pos: u64,
    chunk_size: u64,
    flushing: Option<oneshot::Receiver<Result<()>>>,
    driver: Option<JoinHandle<Result<u64>>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("pos", &self.pos).finish()
    }
}

impl Writer {
    /// Writes `path` (which must exist) from `offset` on.
    pub async fn open(client: &Client, path: &str, offset: u64) -> Result<Self> {
        let chunk_size = client.chunk_size(path).await?;
        let (tx, rx) = mpsc::channel(2);
        let driver = tokio::spawn(drive(client.clone(), path.to_string(), chunk_size, rx));
        Ok(Self {
            tx: PollSender::new(tx),
            pending: BytesMut::new(),
            pos: offset,
            chunk_size,
            flushing: None,
            driver: Some(driver),
        })
    }

    /// Creates `path` and writes it from the start.
    pub async fn create(client: &Client, path: &str) -> Result<Self> {
        client.create(path, 0).await?;
        Self::open(client, path, 0).await
    }

    fn piece_limit(&self) -> usize {
        let left_in_chunk = self.chunk_size - self.pos % self.chunk_size;
        (MAX_FRAME_BYTES as u64).min(left_in_chunk) as usize
    }

    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let data = self.pending.split().freeze();
        Poll::Ready(self.send_reserved(data))
    }

    /// Sends `data` as the next piece, in the slot `poll_reserve` gave.
    fn send_reserved(&mut self, data: Bytes) -> io::Result<()> {
        let at = self.pos;
        self.pos += data.len() as u64;
        self.tx
            .send_item(Msg::Piece(at, data))
            .map_err(|_| closed())
    }

    /// Writes `data` without copying what fills whole pieces: those go to
    /// the chunks as they are (the caller's memory, shared, not copied), and
    /// only the bytes short of a piece boundary are buffered, as `write`
    /// buffers them. For callers that hold their data as `Bytes` already:
    /// `write` copies every byte into the writer's buffer.
    pub async fn write_bytes(&mut self, mut data: Bytes) -> io::Result<()> {
        use bytes::Buf;
        use tokio::io::AsyncWriteExt;
        while !data.is_empty() {
            let limit = self.piece_limit();
            if !self.pending.is_empty() || data.len() < limit {
                // Up to the next piece boundary, buffered (and a full
                // buffer sent) as `write` does.
                let n = self.write(&data[..data.len().min(limit)]).await?;
                data.advance(n);
                if self.pending.len() >= self.piece_limit() {
                    self.flush_pending().await?;
                }
                continue;
            }
            let piece = data.split_to(limit);
            let sent = std::future::poll_fn(|cx| self.tx.poll_reserve(cx))
                .await
                .map_err(|_| closed())
                .and_then(|()| self.send_reserved(piece));
            if let Err(e) = sent {
                return Err(self.stopped(e).await);
            }
        }
        Ok(())
    }

    /// Sends what is buffered as a piece.
    async fn flush_pending(&mut self) -> io::Result<()> {
        match std::future::poll_fn(|cx| self.poll_send_pending(cx)).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stopped(e).await),
        }
    }

    /// Why the writer stopped: the driver's error if it has one, else `e`.
    async fn stopped(&mut self, e: io::Error) -> io::Error {
        match std::future::poll_fn(|cx| self.poll_driver(cx)).await {
            Err(driver) => driver,
            Ok(_) => e,
        }
    }

    /// The driver's error, once it has stopped.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let Some(d) = self.driver.as_mut() else {
            return Poll::Ready(Err(closed()));
        };
        let r = ready!(Pin::new(d).poll(cx));
        self.driver = None;
        Poll::Ready(match r {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(io_err(e)),
            Err(e) => Err(io::Error::other(e)),
        })
    }

    /// Shuts down and returns the length the file was written up to.
    pub async fn close(mut self) -> io::Result<u64> {
        use tokio::io::AsyncWriteExt;
        self.shutdown().await?;
        Ok(self.pos)
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the writer stopped after an error",
    )
}

impl AsyncWrite for Writer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.tx.is_closed() {
            return self.poll_driver(cx).map(|r| r.and(Err(closed())));
        }
        if self.driver.is_none() {
            return Poll::Ready(Err(closed()));
        }
        if self.pending.len() >= self.piece_limit()
            && let Err(e) = ready!(self.poll_send_pending(cx))
        {
            // The driver stopped: its error says why.
            return self.poll_driver(cx).map(|r| r.and(Err(e)));
        }
        let n = buf.len().min(self.piece_limit() - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(rx) = self.flushing.as_mut() {
                let r = ready!(Pin::new(rx).poll(cx));
                self.flushing = None;
                return Poll::Ready(match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(io_err(e)),
                    Err(_) => Err(closed()),
                });
            }
            ready!(self.poll_send_pending(cx))?;
            ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
            let (tx, rx) = oneshot::channel();
            self.tx.send_item(Msg::Flush(tx)).map_err(|_| closed())?;
            self.flushing = Some(rx);
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.driver.is_none() {
            return Poll::Ready(Ok(()));
        }
        if !self.tx.is_closed() {
            if let Err(e) = ready!(self.poll_send_pending(cx)) {
                // The driver stopped: its error says why.
                return self.poll_driver(cx).map(|r| r.and(Err(e)));
            }
            self.tx.close();
        }
        self.poll_driver(cx).map_ok(|_| ())
    }
}

/// One chunk being written by its own task.
struct ChunkTask {
    index: u64,
    /// `None` once the writer has moved past this chunk.
    tx: Option<mpsc::Sender<(u64, Bytes)>>,
    handle: JoinHandle<Result<()>>,
}

async fn join(task: ChunkTask) -> Result<()> {
    // Dropping the sender ends the task's input; then wait for it.
    let ChunkTask { tx, handle, .. } = task;
    drop(tx);
    handle
        .await
        .map_err(|e| MasterError::new(gfs_proto::wire::ErrorKind::Internal, e.to_string()))?
}

/// Waits for every chunk task; the first error wins.
async fn finish(tasks: &mut VecDeque<ChunkTask>) -> Result<()> {
    let mut first = Ok(());
    for t in tasks.drain(..) {
        let r = join(t).await;
        if first.is_ok() {
            first = r;
        }
    }
    first
}

/// The writer's background half: starts one task per chunk, in order, at
/// most `write_depth` at a time.
async fn drive(
    client: Client,
    path: String,
    chunk_size: u64,
    mut rx: mpsc::Receiver<Msg>,
) -> Result<u64> {
    let depth = client.options().write_depth.max(1);
    let mut tasks: VecDeque<ChunkTask> = VecDeque::new();
    let mut end = 0u64;
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Piece(at, data) => {
                let index = at / chunk_size;
                end = end.max(at + data.len() as u64);
                if tasks.back().is_none_or(|t| t.index != index) {
                    // Earlier chunks get no more data.
                    for t in tasks.iter_mut() {
                        t.tx = None;
                    }
                    while tasks.len() >= depth {
                        if let Some(t) = tasks.pop_front() {
                            join(t).await?;
                        }
                    }
                    client.ensure_chunk(&path, index).await?;
                    let (tx, prx) = mpsc::channel(2);
                    let handle =
                        tokio::spawn(write_chunk(client.clone(), path.clone(), index, prx));
                    tasks.push_back(ChunkTask {
                        index,
                        tx: Some(tx),
                        handle,
                    });
                }
                let tx = tasks.back().and_then(|t| t.tx.clone());
                if let Some(tx) = tx
                    && tx.send((at % chunk_size, data)).await.is_err()
                {
                    // The chunk's task stopped: its error surfaces here.
                    finish(&mut tasks).await?;
                }
            }
            Msg::Flush(done) => {
                let r = match finish(&mut tasks).await {
                    Ok(()) if end > 0 => client.master().report_length(&path, end).await,
                    other => other,
                };
                let failed = r.clone().err();
                let _ = done.send(r);
                if let Some(e) = failed {
                    return Err(e);
                }
            }
        }
    }
    finish(&mut tasks).await?;
    if end > 0 {
        client.master().report_length(&path, end).await?;
    }
    Ok(end)
}

/// Pieces of one chunk a writer keeps in flight: their mutations overlap
/// each other and the next piece's push (pushes go in offset order, see
/// `PushTurn`; the primary applies in offset order).
const PIECES_IN_FLIGHT: usize = 8;

async fn write_chunk(
    client: Client,
    path: String,
    index: u64,
    mut rx: mpsc::Receiver<(u64, Bytes)>,
) -> Result<()> {
    let path: Arc<str> = path.into();
    let mut flight = tokio::task::JoinSet::new();
    let mut turn: Option<Arc<crate::client::PushTurn>> = None;
    let joined = |r: Result<Result<()>, tokio::task::JoinError>| {
        r.map_err(|e| MasterError::new(gfs_proto::wire::ErrorKind::Internal, e.to_string()))?
    };
    while let Some((offset, data)) = rx.recv().await {
        if flight.len() >= PIECES_IN_FLIGHT
            && let Some(r) = flight.join_next().await
        {
            joined(r)?;
        }
        let turn = turn
            .get_or_insert_with(|| Arc::new(crate::client::PushTurn::new(offset)))
            .clone();
        let (client, path) = (client.clone(), path.clone());
        flight.spawn(async move {
            client
                .write_piece(&path, index, offset, data, false, Some(turn))
                .await
        });
    }
    while let Some(r) = flight.join_next().await {
        joined(r)?;
    }
    Ok(())
}

type Fetch = JoinHandle<Result<Bytes>>;

/// A sequential reader with read-ahead, and seek. The length is taken when
/// the reader opens.
pub struct Reader {
    client: Client,
    path: Arc<str>,
    chunk_size: u64,
    len: u64,
    pos: u64,
    next_fetch: u64,
    ahead: VecDeque<Fetch>,
    current: Bytes,
    seek_to: Option<u64>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .field("len", &self.len)
            .finish()
    }
}

impl Reader {
    pub async fn open(client: &Client, path: &str) -> Result<Self> {
        // Start from the masters' current versions: a cached location from
        // before a version bump could name a replica that is stale now.
        client.master().forget(path);
        let chunk_size = client.chunk_size(path).await?;
        let len = client.length(path).await?;
        Ok(Self {
            client: client.clone(),
            path: path.into(),
            chunk_size,
            len,
            pos: 0,
            next_fetch: 0,
            ahead: VecDeque::new(),
            current: Bytes::new(),
            seek_to: None,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn fill_ahead(&mut self) {
        let depth = self.client.options().read_depth.max(1);
        while self.ahead.len() < depth && self.next_fetch < self.len {
            let at = self.next_fetch;
            let left_in_chunk = self.chunk_size - at % self.chunk_size;
            let n = (MAX_FRAME_BYTES as u64)
                .min(left_in_chunk)
                .min(self.len - at);
            let (client, path) = (self.client.clone(), self.path.clone());
            self.ahead.push_back(tokio::spawn(
                // Reads of its own in flight already: 1 MiB pieces, which
                // a disk serves at less cost per byte than finer ones.
                async move {
                    let piece = crate::client::READ_PIECE_BYTES;
                    client.read_in_pieces(&path, at, n, piece).await
                },
            ));
            self.next_fetch += n;
        }
    }

    fn reset(&mut self, pos: u64) {
        for h in self.ahead.drain(..) {
            h.abort();
        }
        self.current = Bytes::new();
        self.pos = pos;
        self.next_fetch = pos;
    }
}

impl Reader {
    /// The next bytes of the file in order, as they were fetched (up to one
    /// fetch: 4 MiB), without a copy; empty at the end of the file. For a
    /// caller that keeps or forwards the bytes (as `Writer::write_bytes`
    /// takes them): `AsyncRead` copies every byte into the caller's buffer.
    pub async fn read_bytes(&mut self) -> io::Result<Bytes> {
        std::future::poll_fn(|cx| self.poll_bytes(cx, usize::MAX)).await
    }

    /// Up to `max` of the next bytes, fetching them if none are at hand;
    /// empty at the end of the file.
    fn poll_bytes(&mut self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Bytes>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(max);
                let part = self.current.split_to(n);
                self.pos += n as u64;
                return Poll::Ready(Ok(part));
            }
            if self.pos >= self.len {
                return Poll::Ready(Ok(Bytes::new()));
            }
            self.fill_ahead();
            let Some(front) = self.ahead.front_mut() else {
                return Poll::Ready(Ok(Bytes::new()));
            };
            let r = ready!(Pin::new(front).poll(cx));
            self.ahead.pop_front();
            let data = r.map_err(io::Error::other)?.map_err(io_err)?;
            if data.is_empty() {
                // Shorter than it was at open (cannot shrink; a replica
                // that lost data is refused by its version): stop here.
                let pos = self.pos;
                self.len = pos;
                self.reset(pos);
                return Poll::Ready(Ok(Bytes::new()));
            }
            self.current = data;
        }
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let part = ready!(self.poll_bytes(cx, buf.remaining()))?;
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for Reader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let target = match position {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.seek_to = Some(target);
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if let Some(t) = self.seek_to.take()
            && t != self.pos
        {
            self.reset(t);
        }
        Poll::Ready(Ok(self.pos))
    }
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Where its frame starts in the file.
    pub offset: u64,
    pub id: RecordId,
    pub data: Bytes,
}

/// Reads an appended file record by record: skips padding and torn
/// fragments, and delivers each record id once (a retried append can leave
/// a copy). It reads the file as it is when each chunk is reached.
#[derive(Debug)]
pub struct RecordReader {
    client: Client,
    path: String,
    chunk_size: u64,
    next_chunk: u64,
    ready: VecDeque<Record>,
    seen: crate::seen::Seen,
}

impl RecordReader {
    pub async fn open(client: &Client, path: &str) -> Result<Self> {
        client.master().forget(path);
        Ok(Self {
            chunk_size: client.chunk_size(path).await?,
            client: client.clone(),
            path: path.to_string(),
            next_chunk: 0,
            ready: VecDeque::new(),
            seen: crate::seen::Seen::default(),
        })
    }

    pub async fn next(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Ok(Some(r));
            }
            let chunks = self
                .client
                .master()
                .locate_file(&self.path, 0, 1)
                .await?
                .chunks;
            if self.next_chunk >= chunks {
                return Ok(None);
            }
            let base = self.next_chunk * self.chunk_size;
            let data = self
                .client
                .read_at(&self.path, base, self.chunk_size)
                .await?;
            for f in record::scan(&data) {
                if self.seen.insert(f.id) {
                    self.ready.push_back(Record {
                        offset: base + f.offset as u64,
                        id: f.id,
                        data: data.slice(f.payload),
                    });
                }
            }
            self.next_chunk += 1;
        }
    }
}
