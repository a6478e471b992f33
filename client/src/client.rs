//! [`Client`]: the file system as a library. Metadata goes to the masters;
//! data is pushed along the replica chain, mutated through the primary and
//! read from one replica, with the retries the paper describes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use gfs_proto::data::Pieces;
use gfs_proto::record::{self, RecordId};
use gfs_proto::wire::chunk::{MutateReply, MutateRequest, MutationKind, ReadRequest, Replica};
use gfs_proto::wire::master::{ChunkInfo, FileInfo};
use gfs_proto::wire::{ErrorKind, MAX_FRAME_BYTES};
use rand::seq::SliceRandom;

use crate::chunks::{ChunkPool, PushError};
use crate::master::{MasterClient, MasterError, MasterOptions};

pub type Result<T, E = MasterError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub master: MasterOptions,
    /// Give up on one mutation after this long. It covers waiting out the
    /// lease of a dead primary (60 s by default on the masters).
    pub mutation_deadline: Duration,
    /// Chunks a `Writer` keeps in flight.
    pub write_depth: usize,
    /// Pieces a `Reader` fetches ahead.
    pub read_depth: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            master: MasterOptions::default(),
            mutation_deadline: Duration::from_secs(120),
            write_depth: 4,
            read_depth: 8,
        }
    }
}

/// Cheap to clone; clones share connections, caches and the client id.
#[derive(Clone, Debug)]
pub struct Client {
    master: MasterClient,
    pool: ChunkPool,
    opts: Arc<ClientOptions>,
    record_seq: Arc<AtomicU64>,
    /// The chunk each file's appends last went to.
    append_index: Arc<Mutex<HashMap<String, u64>>>,
    /// The chunk after it, once asked for ahead of time (`append`).
    next_asked: Arc<Mutex<HashMap<String, u64>>>,
}

/// Whether an error from a replica means that replica is unusable (as
/// opposed to "refresh the locations" or "the request is wrong").
pub(crate) fn replica_failed(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Unavailable
            | ErrorKind::Internal
            | ErrorKind::NoSpace
            | ErrorKind::Unspecified
            | ErrorKind::Corrupt
    )
}

/// Whether the masters' answer to "where do I write chunk N" says to ask
/// again: a lease held by a primary they cannot hand out yet, no leader or
/// a master still learning where replicas are, no live replica for now.
fn lookup_retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::LeaseHeld | ErrorKind::Unavailable | ErrorKind::NoReplica
    )
}

/// The error of a mutation that was not acknowledged by its deadline:
/// `UNAVAILABLE`, or `NO_SPACE` if a replica had answered so (`no_space`
/// times). A replica out of space is left out and its chunk re-replicated,
/// which on a cluster whose every disk is full never ends: the writer
/// hears "being re-replicated" until its deadline, and the cause is the
/// space.
fn out_of_time(what: &str, waited: Duration, last: &MasterError, no_space: u32) -> MasterError {
    if no_space > 0 {
        MasterError::new(
            ErrorKind::NoSpace,
            format!(
                "{what}: a replica ran out of space, and no mutation was acknowledged within {waited:?}: {}",
                last.message
            ),
        )
    } else {
        MasterError::new(
            ErrorKind::Unavailable,
            format!(
                "{what}: no acknowledged mutation within {waited:?}: {}",
                last.message
            ),
        )
    }
}

/// `NO_SPACE` answers one mutation takes before it fails with that error.
const MAX_NO_SPACE_RETRIES: u32 = 6;

/// A read is split into pieces of at most this many bytes ...
pub(crate) const READ_PIECE_BYTES: u64 = 1 << 20;
/// ... (a read of a few MiB on its own into pieces down to this many, so
/// more replicas and disks work on it at once: random 4 MiB reads at
/// N = 4 went 11 % faster in 512 KiB pieces, BENCHMARKS.md; a streaming
/// reader, with reads of its own in flight, keeps 1 MiB, which a disk
/// serves at less cost per byte) ...
const LONE_READ_PIECE_BYTES: u64 = 512 << 10;
/// ... of which this many bytes' worth are read at once ...
const READ_BYTES_IN_FLIGHT: u64 = 4 << 20;
/// ... into buffers of at most this many bytes (a longer read is copied
/// together from them).
const READ_SPAN_BYTES: u64 = 64 << 20;
/// Pushes of one mutation a replica may refuse for lack of buffer space
/// (with backoff, ~15 s) before it is reported as failed.
const MAX_BUSY_PUSHES: u32 = 20;

/// Whether an append that left its chunk `length` bytes long should have
/// the next chunk made ready: when less than a quarter of the chunk (the
/// largest record) is left, one of the next few records will not fit.
fn next_chunk_due(chunk_size: u64, length: u64) -> bool {
    chunk_size.saturating_sub(length) < chunk_size / 4
}

/// A cached lease is used only with this much of it left (by this
/// client's monotonic clock since the masters answered: `MasterClient::cached`).
const LEASE_MARGIN_MS: u64 = 2_000;

impl Client {
    pub fn connect(masters: &[String]) -> Result<Self> {
        Self::with_options(masters, ClientOptions::default())
    }

    pub fn with_options(masters: &[String], opts: ClientOptions) -> Result<Self> {
        let master = MasterClient::new(masters, opts.master.clone())?;
        Ok(Self {
            pool: ChunkPool::with_token(master.token()),
            master,
            opts: Arc::new(opts),
            record_seq: Arc::new(AtomicU64::new(1)),
            append_index: Arc::default(),
            next_asked: Arc::default(),
        })
    }

    pub fn master(&self) -> &MasterClient {
        &self.master
    }

    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    // ---- metadata ---------------------------------------------------------

    /// Creates an empty file (exclusive), replication 0 = the default.
    pub async fn create(&self, path: &str, replication: u32) -> Result<()> {
        self.master.create(path, replication).await
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        self.master.mkdir(path, parents).await
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo> {
        self.master.stat(path, false).await
    }

    pub async fn list(&self, path: &str) -> Result<Vec<FileInfo>> {
        self.master.list(path).await
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.master.rename(from, to).await
    }

    pub async fn delete(&self, path: &str, recursive: bool) -> Result<u64> {
        self.master.delete(path, recursive).await
    }

    /// The cluster's chunk size (asks the masters once).
    pub async fn chunk_size(&self, path: &str) -> Result<u64> {
        match self.master.chunk_size() {
            0 => Ok(self.master.locate_file(path, 0, 1).await?.chunk_size_bytes),
            n => Ok(n),
        }
    }

    /// Locations of every chunk of `path` (for `gfs stat`).
    pub async fn chunks(&self, path: &str) -> Result<Vec<ChunkInfo>> {
        let mut out = Vec::new();
        loop {
            let r = self
                .master
                .locate_file(path, out.len() as u64, 1024)
                .await?;
            let done = r.found.is_empty() || out.len() as u64 + r.found.len() as u64 >= r.chunks;
            out.extend(r.found);
            if done {
                return Ok(out);
            }
        }
    }

    /// The file's length: what the masters recorded, or more if the last
    /// chunk holding data already holds more on its replicas (acknowledged
    /// appends and writes whose writer has not reported its length yet).
    /// Empty chunks at the end (an appender has the next chunk made before
    /// its chunk fills) add nothing: the data ends in the chunk before them.
    pub async fn length(&self, path: &str) -> Result<u64> {
        let r = self.master.locate_file(path, 0, 1).await?;
        let Some((index, chunk_len)) = self.last_with_data(path, r.chunks).await? else {
            return Ok(r.length);
        };
        // Saturating: both come from the network.
        let replicas_end = index
            .saturating_mul(r.chunk_size_bytes)
            .saturating_add(chunk_len);
        Ok(r.length.max(replicas_end))
    }

    /// The last of the file's first `chunks` chunks that holds data, and its
    /// length on a replica; `None` when none does.
    async fn last_with_data(&self, path: &str, chunks: u64) -> Result<Option<(u64, u64)>> {
        for index in (0..chunks).rev() {
            let len = self.chunk_length(path, index).await?;
            if len > 0 {
                return Ok(Some((index, len)));
            }
        }
        Ok(None)
    }

    /// The chunk a client's first append to `path` tries: the file's last
    /// chunk, or the one before it when the last is still empty (made
    /// ahead by an appender, `ask_ahead`). A chunk gets records only after
    /// the one before it is full, which readers rely on: `read_at` ends at
    /// a short chunk. A full chunk answers so and the append moves on.
    async fn append_start(&self, path: &str) -> Result<u64> {
        let chunks = self.master.locate_file(path, 0, 1).await?.chunks;
        let last = chunks.saturating_sub(1);
        if last == 0 {
            return Ok(0);
        }
        let len = self.chunk_length(path, last).await?;
        Ok(if len == 0 { last - 1 } else { last })
    }

    /// Chunk `index`'s length on one of its replicas (0 for a chunk the
    /// file does not have).
    async fn chunk_length(&self, path: &str, index: u64) -> Result<u64> {
        let (_, len) = self
            .read_piece(path, index, 0, 0, &mut BytesMut::new())
            .await?;
        Ok(len)
    }

    /// Records the file's current length with the masters, so a reader
    /// that trusts `stat` sees every acknowledged byte. Acknowledged data is
    /// already on every replica's device (O_DIRECT); `WriteOptions::sync`
    /// adds an fdatasync per mutation.
    pub async fn sync(&self, path: &str) -> Result<u64> {
        let len = self.length(path).await?;
        self.master.report_length(path, len).await?;
        Ok(len)
    }

    // ---- mutations --------------------------------------------------------

    /// Write access to chunk `index`: the cached lease if enough of it is
    /// left, else the masters (which add the chunk if it is the next one,
    /// and give it a new version without `failed`).
    ///
    /// A limping replica (`limping`) of the cached chunk is reported as
    /// failed, once per chunk, while two others would be left: a slow
    /// replica is better than one copy of the data.
    async fn writable(&self, path: &str, index: u64, failed: &mut Vec<u64>) -> Result<ChunkInfo> {
        if let Some(c) = self.master.cached(path, index) {
            if c.replicas.len() > 2
                && let Some(id) = self.pool.limping_to_report(c.handle, &c.replicas)
                && !failed.contains(&id)
            {
                failed.push(id);
            }
            if failed.is_empty() && c.primary != 0 && c.lease_left_ms > LEASE_MARGIN_MS {
                return Ok(c);
            }
        }
        let started = Instant::now();
        let info = self.master.write_chunk(path, index, failed).await?;
        tracing::trace!(
            %path,
            index,
            ?failed,
            version = info.version,
            primary = info.primary,
            replicas = ?info.replicas.iter().map(|r| r.node_id).collect::<Vec<_>>(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "asked the masters for a writable chunk"
        );
        failed.clear();
        Ok(info)
    }

    /// Makes sure chunk `index` exists (chunks are added in order), asking
    /// again while the masters answer "retry" (a leader just elected, a
    /// lease about to end) until the mutation deadline: a stream crossing
    /// into its next chunk during a failover failed on the first such
    /// answer.
    pub(crate) async fn ensure_chunk(&self, path: &str, index: u64) -> Result<()> {
        let deadline = Instant::now() + self.opts.mutation_deadline;
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.writable(path, index, &mut Vec::new()).await {
                Ok(_) => return Ok(()),
                Err(e) if lookup_retryable(e.kind) && Instant::now() < deadline => {
                    tracing::debug!(%path, index, error = %e, "retrying a chunk's creation");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One mutation of one chunk, retried until it is acknowledged by every
    /// replica or the deadline passes. A replica that failed is reported to
    /// the masters, which version it out.
    pub(crate) async fn mutate_chunk(
        &self,
        path: &str,
        index: u64,
        m: Mutation,
    ) -> Result<MutateReply> {
        let deadline = Instant::now() + self.opts.mutation_deadline;
        let mut failed = Vec::new();
        let mut backoff = Duration::from_millis(10);
        let data_id = rand::random::<u64>() | 1;
        let mut last: MasterError;
        let mut no_space = 0;
        let mut tries = Tries::default();
        loop {
            last = match self
                .mutate_once(path, index, &m, data_id, &mut failed, &mut tries)
                .await
            {
                Ok(r) => return Ok(r),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => e,
            };
            // One full replica is worked around (it is versioned out or
            // gives its lease up); several in a row mean the cluster is out
            // of space: say so instead of retrying to the deadline.
            if last.kind == ErrorKind::NoReplica && no_space > 0 {
                // Its replicas failed for lack of space and were dropped.
                return Err(MasterError::new(
                    ErrorKind::NoSpace,
                    format!("chunk {index} of {path}: every replica ran out of space"),
                ));
            }
            if last.kind == ErrorKind::NoSpace {
                no_space += 1;
                if no_space >= MAX_NO_SPACE_RETRIES {
                    return Err(MasterError::new(
                        ErrorKind::NoSpace,
                        format!(
                            "chunk {index} of {path}: no replica has space: {}",
                            last.message
                        ),
                    ));
                }
            }
            self.master.forget_chunk(path, index);
            if Instant::now() >= deadline {
                let waited = self.opts.mutation_deadline;
                return Err(out_of_time(
                    &format!("chunk {index} of {path}"),
                    waited,
                    &last,
                    no_space,
                ));
            }
            tracing::debug!(%path, index, error = %last, "retrying a mutation");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn mutate_once(
        &self,
        path: &str,
        index: u64,
        m: &Mutation,
        data_id: u64,
        failed: &mut Vec<u64>,
        tries: &mut Tries,
    ) -> Result<MutateReply, Attempt> {
        // The turn first, then where to push: a piece that waited behind
        // one stuck on a stalled replica would otherwise push along the
        // chain it was given before that replica was versioned out, and
        // each piece in flight cost the next a push timeout in turn.
        if let Some(t) = &m.turn {
            t.wait_for(m.offset).await;
        }
        let info = self
            .writable(path, index, failed)
            .await
            .map_err(|e| match e.kind {
                // No space counts towards `MAX_NO_SPACE_RETRIES`.
                k if lookup_retryable(k) || k == ErrorKind::NoSpace => Attempt::Retry(e),
                _ => Attempt::Fatal(e),
            })?;
        let Some(primary) = info.replicas.iter().find(|r| r.node_id == info.primary) else {
            return Err(Attempt::Retry(MasterError::new(
                ErrorKind::Unavailable,
                format!("chunk {index} of {path} has no live primary yet"),
            )));
        };
        // The chain in an order of its own each time, so that a limping
        // server is not first in every chain, where its hop (the client's
        // own) is not counted against it (`limping`).
        let mut order = info.replicas.clone();
        order.shuffle(&mut rand::rng());
        let chain: Vec<String> = order.iter().map(|r| r.addr.clone()).collect();
        let req = MutateRequest {
            handle: info.handle,
            version: info.version,
            kind: m.kind as i32,
            offset: m.offset,
            data_id,
            length: m.data.remaining() as u64,
            secondaries: info
                .replicas
                .iter()
                .filter(|r| r.node_id != info.primary)
                .map(|r| Replica {
                    node_id: r.node_id,
                    addr: r.addr.clone(),
                })
                .collect(),
            lease_expires_ms: info.lease_expires_ms,
            client_id: m.record.map_or(0, |r| r.client_id),
            seq: m.record.map_or(0, |r| r.seq),
            sync: m.sync,
        };
        // A record append's mutation goes out with its push: each replica
        // takes it once its own copy is in (waiting for it there), not
        // after the whole chain acknowledged the push.
        let early = m.kind == MutationKind::Append;
        let chain_ids: Vec<u64> = order.iter().map(|r| r.node_id).collect();
        // Data every replica of the chain holds from an attempt before is
        // not pushed again: a push that outlasted its lease was otherwise
        // pushed again under each new one, and outlasted each.
        let held = chain_ids.iter().all(|n| tries.holders.contains(n));
        let started = Instant::now();
        let push = async {
            let pushed = if held {
                Ok(())
            } else {
                self.pool.push(&chain, data_id, m.data.clone()).await
            };
            (pushed, started.elapsed())
        };
        let ((pushed, push_took), sent) = if early {
            let (p, sent) = tokio::join!(push, self.pool.mutate(&primary.addr, req.clone()));
            (p, Some(sent))
        } else {
            (push.await, None)
        };
        // A mutation every replica applied stands, whatever the push's
        // answer said; otherwise a failed push is what to report.
        let applied = matches!(&sent, Some(Ok(r)) if r.failed.is_empty());
        match &pushed {
            Ok(()) => tries.holders.clone_from(&chain_ids),
            Err(PushError::Broken(i) | PushError::Busy(i)) => {
                tries.holders = chain_ids[..(*i).min(chain_ids.len())].to_vec();
            }
            Err(PushError::Other(_)) => {}
        }
        if !applied {
            match pushed {
                Ok(()) => {
                    if let Some(t) = &m.turn {
                        t.pushed_to(m.offset + m.data.remaining() as u64);
                    }
                }
                Err(PushError::Broken(i)) => {
                    if let Some(id) = chain_ids.get(i) {
                        failed.push(*id);
                    }
                    tracing::debug!(
                        %path,
                        index,
                        version = info.version,
                        primary = info.primary,
                        chain = ?chain_ids,
                        "push broke at replica {i}"
                    );
                    return Err(Attempt::Retry(MasterError::new(
                        ErrorKind::Unavailable,
                        format!("push stopped at replica {i} of chunk {index}"),
                    )));
                }
                Err(PushError::Busy(i)) => {
                    // A replica out of buffer space is not a failed one; only
                    // one that stays so, attempt after attempt, is reported.
                    tries.busy_pushes += 1;
                    if tries.busy_pushes >= MAX_BUSY_PUSHES
                        && let Some(id) = chain_ids.get(i)
                    {
                        failed.push(*id);
                    }
                    return Err(Attempt::Retry(MasterError::new(
                        ErrorKind::Busy,
                        format!("replica {i} of chunk {index} has no buffer space; retrying"),
                    )));
                }
                Err(PushError::Other(e)) if e.kind == ErrorKind::Busy => {
                    return Err(Attempt::Retry(e));
                }
                Err(PushError::Other(e)) => return Err(Attempt::Fatal(e)),
            }
        }
        let mutated = match sent {
            Some(sent) => sent,
            None => self.pool.mutate(&primary.addr, req).await,
        };
        tracing::trace!(
            bytes = m.data.remaining(),
            early,
            push_ms = push_took.as_secs_f64() * 1e3,
            // With the push (`early`): from the push's end to the answer
            // (0 when the answer came first).
            mutate_ms = started.elapsed().saturating_sub(push_took).as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "mutation"
        );
        // A replica lost the data (restarted, or it expired there), or some
        // applied the mutation, and so dropped it, while others failed it.
        let dropped = match &mutated {
            Err(e) => e.kind == ErrorKind::DataMissing,
            Ok(r) => !r.failed.is_empty(),
        };
        if dropped {
            tries.holders.clear();
        }
        match mutated {
            Ok(r) if r.failed.is_empty() => Ok(r),
            Ok(r) => {
                failed.extend(&r.failed);
                Err(Attempt::Retry(MasterError::new(
                    ErrorKind::Unavailable,
                    format!("replicas {:?} failed a mutation of chunk {index}", r.failed),
                )))
            }
            Err(e) => match e.kind {
                ErrorKind::StaleVersion
                | ErrorKind::NotPrimary
                | ErrorKind::NotFound
                | ErrorKind::DataMissing
                | ErrorKind::Busy => Err(Attempt::Retry(e)),
                k if replica_failed(k) => {
                    failed.push(primary.node_id);
                    Err(Attempt::Retry(e))
                }
                _ => Err(Attempt::Fatal(e)),
            },
        }
    }

    /// Writes `data` at `offset` of an existing file, piece by piece, each
    /// piece acknowledged by every replica before the next is sent. The
    /// masters' length is raised afterwards.
    pub async fn write_at(&self, path: &str, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.chunk_size(path).await?;
        let mut at = 0usize;
        while at < data.len() {
            let pos = offset + at as u64;
            let (index, in_chunk) = (pos / cs, pos % cs);
            let n = (data.len() - at)
                .min(MAX_FRAME_BYTES)
                .min((cs - in_chunk) as usize);
            self.write_piece(
                path,
                index,
                in_chunk,
                Bytes::copy_from_slice(&data[at..at + n]),
                false,
                None,
            )
            .await?;
            at += n;
        }
        if !data.is_empty() {
            self.master
                .report_length(path, offset + data.len() as u64)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn write_piece(
        &self,
        path: &str,
        index: u64,
        offset: u64,
        data: Bytes,
        sync: bool,
        turn: Option<Arc<PushTurn>>,
    ) -> Result<()> {
        // Chunks are added in order: make sure the ones before exist.
        if self.master.cached(path, index).is_none() && index > 0 {
            let r = self.master.locate_file(path, 0, 1).await?;
            for i in r.chunks..index {
                self.ensure_chunk(path, i).await?;
            }
        }
        let m = Mutation {
            kind: MutationKind::Write,
            offset,
            data: Pieces::from(vec![data]),
            record: None,
            sync,
            turn,
        };
        self.mutate_chunk(path, index, m).await.map(|_| ())
    }

    /// Appends one record atomically, at least once, at an offset the
    /// primary chooses; returns that offset in the file. A record is at
    /// most a quarter of a chunk (minus its frame header); a large one is
    /// padded to whole sectors (`record::framed_len`), so the next one
    /// appended after it starts on a sector.
    pub async fn append(&self, path: &str, payload: &[u8]) -> Result<u64> {
        self.append_bytes(path, Bytes::copy_from_slice(payload))
            .await
    }

    /// [`Client::append`] of a payload the caller already holds as
    /// `Bytes`: it is sent as it is, between its frame's header and
    /// padding, never copied.
    pub async fn append_bytes(&self, path: &str, payload: Bytes) -> Result<u64> {
        let cs = self.chunk_size(path).await?;
        let id = RecordId {
            client_id: self.master.client_id(),
            seq: self.record_seq.fetch_add(1, Ordering::Relaxed),
        };
        // Both bounds are whole sectors, so padding never crosses them.
        let max = (gfs_proto::limits::max_record_bytes(cs) as usize).min(MAX_FRAME_BYTES);
        let framed_len = record::framed_len(payload.len());
        if framed_len > max {
            return Err(MasterError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "a record holds at most {} bytes here, not {}",
                    max - record::HEADER_BYTES,
                    payload.len()
                ),
            ));
        }
        let header = Bytes::copy_from_slice(&record::header(id, &payload));
        let padding = Bytes::from_static(record::padding(payload.len()));
        let framed = Pieces::from(vec![header, payload, padding]);
        let known = self
            .append_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .copied();
        let mut index = match known {
            Some(i) => i,
            None => self.append_start(path).await?,
        };
        loop {
            let m = Mutation {
                kind: MutationKind::Append,
                offset: 0,
                data: framed.clone(),
                record: Some(id),
                sync: false,
                turn: None,
            };
            let r = self.mutate_chunk(path, index, m).await?;
            if !r.chunk_full {
                if r.offset
                    .checked_add(framed_len as u64)
                    .is_none_or(|end| end > cs)
                {
                    return Err(MasterError::new(
                        ErrorKind::Internal,
                        format!(
                            "chunk {index} of {path}: the primary placed a record of {framed_len} bytes at {}, outside the {cs}-byte chunk",
                            r.offset
                        ),
                    ));
                }
                self.append_index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(path.to_string(), index);
                if next_chunk_due(cs, r.chunk_length) {
                    self.ask_ahead(path, index + 1);
                }
                return Ok(index * cs + r.offset);
            }
            index += 1;
        }
    }

    /// Has the masters add chunk `index` of `path` (and grant its lease)
    /// in the background, once: appenders then find the next chunk ready
    /// when theirs fills, instead of all waiting for the masters to
    /// replicate its creation (~8 ms on the development VM, every 64 MiB).
    fn ask_ahead(&self, path: &str, index: u64) {
        {
            let mut asked = self.next_asked.lock().unwrap_or_else(|p| p.into_inner());
            if asked.get(path).is_some_and(|&i| i >= index) {
                return;
            }
            asked.insert(path.to_string(), index);
        }
        let (me, path) = (self.clone(), path.to_string());
        tokio::spawn(async move {
            if let Err(e) = me.ensure_chunk(&path, index).await {
                // The append that needs it asks again.
                tracing::debug!(%path, index, error = %e, "asking ahead for a chunk failed");
            }
        });
    }

    // ---- reads ------------------------------------------------------------

    /// Up to `len` bytes of chunk `index` from `offset`, into `dst` (empty,
    /// with room for them: the socket's bytes land in it as they are,
    /// nothing is zeroed first), from the first replica that answers with
    /// verified data: how many, and the chunk's length on that replica. A
    /// chunk the file does not have reads as empty.
    pub(crate) async fn read_piece(
        &self,
        path: &str,
        index: u64,
        offset: u64,
        len: usize,
        dst: &mut BytesMut,
    ) -> Result<(usize, u64)> {
        let mut last = None;
        for round in 0..3 {
            if round > 0 {
                self.master.forget_chunk(path, index);
                tokio::time::sleep(Duration::from_millis(50 * round)).await;
            }
            let Some(info) = self.master.locate(path, index).await? else {
                return Ok((0, 0));
            };
            // The replica this client reads least from just now; readers
            // with nothing in flight spread at random.
            let n = info.replicas.len();
            let start = if n == 0 { 0 } else { rand::random_range(0..n) };
            let replicas: Vec<(&str, u64)> = info
                .replicas
                .iter()
                .map(|r| (r.addr.as_str(), r.node_id))
                .collect();
            let req = ReadRequest {
                handle: info.handle,
                version: info.version,
                offset,
                length: len as u64,
            };
            match self.pool.read_hedged(&replicas, start, req, dst).await {
                Ok(got) => return Ok(got),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            MasterError::new(
                ErrorKind::Unavailable,
                format!("chunk {index} of {path} has no live replica"),
            )
        }))
    }

    /// After a short read of chunk `index`: whether the location it used
    /// was older than the masters' (then the cache entry is refreshed).
    /// A short chunk is normal only at the end of a file, and only for the
    /// version the masters name now.
    async fn stale_end(&self, path: &str, index: u64) -> Result<bool> {
        let used = self.master.cached(path, index).map(|c| c.version);
        self.master.forget_chunk(path, index);
        let fresh = self.master.locate(path, index).await?;
        Ok(fresh.is_some_and(|f| Some(f.version) != used))
    }

    /// Up to `len` bytes from `offset`; fewer at the end of the file.
    pub async fn read_at(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
        let piece = (len / 8).clamp(LONE_READ_PIECE_BYTES, READ_PIECE_BYTES);
        self.read_in_pieces(path, offset, len, piece).await
    }

    /// As `read_at`, in pieces of at most `piece` bytes.
    pub(crate) async fn read_in_pieces(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        piece: u64,
    ) -> Result<Bytes> {
        let cs = self.chunk_size(path).await?;
        let mut out = BytesMut::new();
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let span = (end - pos).min(READ_SPAN_BYTES);
            let got = self.read_span(path, cs, (pos, span), piece).await?;
            let short = (got.len() as u64) < span;
            pos += got.len() as u64;
            if out.is_empty() {
                out = got;
            } else {
                out.extend_from_slice(&got);
            }
            if short {
                break;
            }
        }
        Ok(out.freeze())
    }

    /// Up to `len` bytes from `offset`, read straight into one buffer (not
    /// zeroed first) in pieces of at most `piece` bytes (never across a
    /// chunk boundary), `READ_BYTES_IN_FLIGHT` worth at a time, each from a
    /// replica of its own choosing: one reader keeps several disks and
    /// connections busy, and no byte is copied after the socket.
    async fn read_span(
        &self,
        path: &str,
        cs: u64,
        (offset, len): (u64, u64),
        piece: u64,
    ) -> Result<BytesMut> {
        // One allocation, not zeroed: each piece gets its own stretch of
        // it (empty, with room for the piece) and the socket fills it.
        let mut rest = BytesMut::with_capacity(len as usize);
        let mut parts = Vec::new();
        let (mut pos, end) = (offset, offset + len);
        while pos < end {
            let n = (end - pos).min(piece).min(cs - pos % cs) as usize;
            let tail = rest.split_off(n);
            parts.push((pos, n, std::mem::replace(&mut rest, tail)));
            pos += n as u64;
        }
        let mut done = futures_util::stream::iter(parts)
            .map(|(at, want, mut part)| async move {
                let (index, in_chunk) = (at / cs, at % cs);
                let (mut got, _) = self
                    .read_piece(path, index, in_chunk, want, &mut part)
                    .await?;
                if got < want && self.stale_end(path, index).await? {
                    // The cached version was old and a replica left out of
                    // a later version answered: read again at the current one.
                    got = self
                        .read_piece(path, index, in_chunk, want, &mut part)
                        .await?
                        .0;
                }
                part.truncate(got);
                Ok::<_, MasterError>((part, got < want))
            })
            .buffered((READ_BYTES_IN_FLIGHT / piece.max(1)).max(1) as usize);
        let mut out = BytesMut::new();
        while let Some(piece) = done.next().await {
            let (part, short) = piece?;
            // Contiguous with what came before: no copy.
            out.unsplit(part);
            if short {
                // The end of the file: later pieces read nothing.
                break;
            }
        }
        Ok(out)
    }
}

/// One mutation as the client retries it.
#[derive(Clone, Debug)]
pub(crate) struct Mutation {
    pub kind: MutationKind,
    pub offset: u64,
    pub data: Pieces,
    pub record: Option<RecordId>,
    pub sync: bool,
    /// The pieces of one chunk that a writer keeps in flight push in
    /// offset order (their mutations still overlap): a piece never holds
    /// chunkserver buffer space while the one before it cannot get in.
    pub turn: Option<Arc<PushTurn>>,
}

/// Whose turn it is to push, among the pieces of one chunk: the offset
/// every piece before has been pushed up to.
#[derive(Debug)]
pub(crate) struct PushTurn {
    next: tokio::sync::watch::Sender<u64>,
}

impl PushTurn {
    pub(crate) fn new(start: u64) -> Self {
        Self {
            next: tokio::sync::watch::channel(start).0,
        }
    }

    /// Until every byte before `offset` was pushed (a retry of an earlier
    /// piece passes at once).
    async fn wait_for(&self, offset: u64) {
        let mut rx = self.next.subscribe();
        let _ = rx.wait_for(|n| *n >= offset).await;
    }

    fn pushed_to(&self, end: u64) {
        self.next.send_if_modified(|n| {
            let later = end > *n;
            if later {
                *n = end;
            }
            later
        });
    }
}

/// What one mutation's attempts have learned so far.
#[derive(Debug, Default)]
struct Tries {
    /// Pushes answered BUSY.
    busy_pushes: u32,
    /// The servers known to hold the mutation's pushed data.
    holders: Vec<u64>,
}

enum Attempt {
    Retry(MasterError),
    Fatal(MasterError),
}

#[cfg(test)]
mod tests {
    use super::{Duration, ErrorKind, MasterError, lookup_retryable, next_chunk_due, out_of_time};

    #[test]
    fn a_mutation_out_of_time_after_a_full_replica_says_no_space() {
        let last = MasterError::new(
            ErrorKind::LeaseHeld,
            "chunk 0000000000000076 is being re-replicated; retry shortly",
        );
        let waited = Duration::from_secs(120);
        let e = out_of_time("chunk 3 of /f", waited, &last, 1);
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert_eq!(
            e.message,
            "chunk 3 of /f: a replica ran out of space, and no mutation was acknowledged \
             within 120s: chunk 0000000000000076 is being re-replicated; retry shortly"
        );
        let e = out_of_time("chunk 3 of /f", waited, &last, 0);
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(
            e.message,
            "chunk 3 of /f: no acknowledged mutation within 120s: \
             chunk 0000000000000076 is being re-replicated; retry shortly"
        );
    }

    #[test]
    fn a_chunk_lookup_is_asked_again_only_on_answers_that_say_retry() {
        let again = [
            ErrorKind::LeaseHeld,
            ErrorKind::Unavailable,
            ErrorKind::NoReplica,
        ];
        for k in again {
            assert!(lookup_retryable(k), "{k:?}");
        }
        for k in [
            ErrorKind::NoSpace,
            ErrorKind::NotFound,
            ErrorKind::InvalidArgument,
            ErrorKind::IsADirectory,
            ErrorKind::Internal,
        ] {
            assert!(!lookup_retryable(k), "{k:?}");
        }
    }

    #[test]
    fn the_next_chunk_is_due_once_less_than_a_largest_record_is_left() {
        let cs = 64 << 20;
        assert!(!next_chunk_due(cs, 0));
        assert!(!next_chunk_due(cs, 48 << 20));
        assert!(next_chunk_due(cs, (48 << 20) + 1));
        assert!(next_chunk_due(cs, cs));
        assert!(
            next_chunk_due(cs, cs + 1),
            "a length past the end is no panic"
        );
    }
}
