//! Copying whole chunks. Re-replication, the receiving side: the leader
//! names a chunk, a version and a peer holding it; this server reads the
//! chunk from the peer (reads are version-fenced and checksum-verified
//! there) and writes it locally. Copy-on-write after a snapshot: the
//! leader names a shared chunk and a new handle; the copy is made from the
//! local replica, without the network.
//!
//! The copy stays invisible until it is whole: it is created at version 0,
//! which is older than any real version (they start at 1), so a crash
//! mid-copy leaves a stale replica that is never read and is collected.
//! Only after the data is synced does it take the real version.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gfs_proto::wire::chunk::{CloneRequest, CopyLocalRequest, ReadRequest};
use gfs_proto::wire::{ErrorKind, MAX_FRAME_BYTES, error};
use gfs_proto::{ChunkHandle, ChunkVersion};
use gfs_storage_engine::StoreError;
use tonic::Status;

use crate::service::{Shared, store_status};

/// Bound on one read from the source.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunks being copied here; deletes and a second clone leave them alone.
#[derive(Debug, Default)]
pub struct Cloning(Mutex<HashSet<ChunkHandle>>);

impl Cloning {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<ChunkHandle>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn contains(&self, h: ChunkHandle) -> bool {
        self.set().contains(&h)
    }

    fn begin(&self, h: ChunkHandle) -> Option<CloneGuard<'_>> {
        self.set().insert(h).then_some(CloneGuard { set: self, h })
    }
}

struct CloneGuard<'a> {
    set: &'a Cloning,
    h: ChunkHandle,
}

impl Drop for CloneGuard<'_> {
    fn drop(&mut self) {
        self.set.set().remove(&self.h);
    }
}

/// Sleeps as needed to keep `bytes` copied since `start` under `rate`.
async fn pace(start: Instant, bytes: u64, rate: u64) {
    if rate == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(start.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

/// Copies the chunk; returns its length. Idempotent: a replica already at
/// `version` or newer answers at once.
pub async fn clone_chunk(sh: &Shared, r: CloneRequest) -> Result<u64, Status> {
    let h = ChunkHandle(r.handle);
    if r.version == 0 || r.source.is_empty() || r.source == sh.cfg.advertise {
        return Err(error(
            ErrorKind::InvalidArgument,
            "a clone names a positive version and another server",
        ));
    }
    let Some(_guard) = sh.cloning.begin(h) else {
        return Err(error(
            ErrorKind::Busy,
            format!("chunk {h} is being cloned here already"),
        ));
    };
    match sh.store.info(h).await {
        Ok(i) if i.version.0 >= r.version => return Ok(i.length),
        Ok(_) => {
            // A stale copy: replaced by the current one.
            match sh.store.delete(h).await {
                Ok(()) | Err(StoreError::NotFound(_)) => sh.note(h, None),
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(store_status(e)),
    }
    copy_into(
        sh,
        h,
        r.version,
        Source::Peer(&r.source),
        r.rate_bytes_per_s,
    )
    .await
}

/// Where a copy reads from.
enum Source<'a> {
    Peer(&'a str),
    Local(ChunkHandle),
}

/// Makes `to` a whole copy of the source at `version`: created at version
/// 0, written, synced, then given `version`. A failed copy is dropped.
async fn copy_into(
    sh: &Shared,
    to: ChunkHandle,
    version: u64,
    from: Source<'_>,
    rate: u64,
) -> Result<u64, Status> {
    sh.store
        .create(to, ChunkVersion(0))
        .await
        .map_err(store_status)?;
    match copy(sh, to, version, &from, rate).await {
        Ok(length) => Ok(length),
        Err(e) => {
            if let Err(d) = sh.store.delete(to).await {
                tracing::warn!(chunk = %to, error = %d, "could not drop a failed copy");
            }
            Err(e)
        }
    }
}

/// One piece of the source at `offset`, and the source chunk's length.
async fn read_piece(
    sh: &Shared,
    from: &Source<'_>,
    (to, version): (ChunkHandle, u64),
    offset: u64,
) -> Result<(Bytes, u64), Status> {
    let piece = MAX_FRAME_BYTES as u64;
    match from {
        Source::Local(h) => {
            let info = sh.store.info(*h).await.map_err(store_status)?;
            if info.version.0 != version {
                return Err(error(
                    ErrorKind::StaleVersion,
                    format!(
                        "chunk {h} is at version {} here, not {version}",
                        info.version.0
                    ),
                ));
            }
            let len = piece.min(info.length.saturating_sub(offset));
            let data = if len == 0 {
                Bytes::new()
            } else {
                sh.store.read(*h, offset, len).await.map_err(store_status)?
            };
            Ok((data, info.length))
        }
        Source::Peer(addr) => {
            let req = ReadRequest {
                handle: to.0,
                version,
                offset,
                length: piece,
            };
            sh.data.read(addr, &req, READ_TIMEOUT).await
        }
    }
}

/// Copies piece by piece, reading the next piece while writing this one.
async fn copy(
    sh: &Shared,
    to: ChunkHandle,
    version: u64,
    from: &Source<'_>,
    rate: u64,
) -> Result<u64, Status> {
    let (start, mut offset) = (Instant::now(), 0u64);
    let piece = MAX_FRAME_BYTES as u64;
    let mut pending = read_piece(sh, from, (to, version), 0).await?;
    loop {
        let (data, chunk_length) = pending;
        let end = offset + data.len() as u64;
        let write = async {
            if data.is_empty() {
                Ok(0)
            } else {
                sh.store
                    .write_at(to, offset, &data)
                    .await
                    .map_err(store_status)
            }
        };
        if end >= chunk_length || (data.len() as u64) < piece {
            write.await?;
            offset = end;
            break;
        }
        let read = read_piece(sh, from, (to, version), end);
        let (written, next) = tokio::join!(write, read);
        written?;
        pending = next?;
        offset = end;
        pace(start, offset, rate).await;
    }
    // The last piece too: a chunk of one piece was never paced at all.
    pace(start, offset, rate).await;
    sh.store.sync(to).await.map_err(store_status)?;
    sh.store
        .set_version(to, ChunkVersion(version))
        .await
        .map_err(store_status)?;
    sh.note(to, Some(ChunkVersion(version)));
    tracing::info!(chunk = %to, version, bytes = offset,
        ms = start.elapsed().as_millis() as u64, "copied");
    Ok(offset)
}

/// Copy-on-write: makes `to` a local copy of `from` at `version`. A
/// replica that never held `from` (it is created by its first mutation)
/// answers NOT_FOUND. Idempotent: an existing `to` at `version` or newer
/// answers at once.
pub async fn copy_local(sh: &Shared, r: CopyLocalRequest) -> Result<u64, Status> {
    let (from, to) = (ChunkHandle(r.from), ChunkHandle(r.to));
    if r.version == 0 || from == to {
        return Err(error(
            ErrorKind::InvalidArgument,
            "a copy names a positive version and two different chunks",
        ));
    }
    let Some(_guard) = sh.cloning.begin(to) else {
        return Err(error(
            ErrorKind::Busy,
            format!("chunk {to} is being copied here already"),
        ));
    };
    match sh.store.info(to).await {
        Ok(i) if i.version.0 >= r.version => return Ok(i.length),
        Ok(_) => {
            sh.store.delete(to).await.map_err(store_status)?;
        }
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(store_status(e)),
    }
    sh.store.info(from).await.map_err(store_status)?;
    copy_into(sh, to, r.version, Source::Local(from), 0).await
}
