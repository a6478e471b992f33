//! Re-replication, the receiving side: the leader names a chunk, a version
//! and a peer holding it; this server reads the chunk from the peer (reads
//! are version-fenced and checksum-verified there) and writes it locally.
//!
//! The copy stays invisible until it is whole: it is created at version 0,
//! which is older than any real version (they start at 1), so a crash
//! mid-copy leaves a stale replica that is never read and is collected.
//! Only after the data is synced does it take the real version.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gfs_proto::wire::chunk::{CloneRequest, ReadRequest};
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
    sh.store
        .create(h, ChunkVersion(0))
        .await
        .map_err(store_status)?;
    match copy(sh, h, &r).await {
        Ok(length) => Ok(length),
        Err(e) => {
            if let Err(d) = sh.store.delete(h).await {
                tracing::warn!(chunk = %h, error = %d, "could not drop a failed clone");
            }
            Err(e)
        }
    }
}

async fn copy(sh: &Shared, h: ChunkHandle, r: &CloneRequest) -> Result<u64, Status> {
    let mut source = sh.peer(&r.source)?;
    let (start, mut offset) = (Instant::now(), 0u64);
    let piece = MAX_FRAME_BYTES as u64;
    loop {
        let req = ReadRequest {
            handle: h.0,
            version: r.version,
            offset,
            length: piece,
        };
        let reply = tokio::time::timeout(READ_TIMEOUT, source.read(req))
            .await
            .map_err(|_| error(ErrorKind::Unavailable, "the clone source timed out"))??
            .into_inner();
        if !reply.data.is_empty() {
            sh.store
                .write_at(h, offset, &reply.data)
                .await
                .map_err(store_status)?;
            offset += reply.data.len() as u64;
        }
        if offset >= reply.chunk_length || (reply.data.len() as u64) < piece {
            break;
        }
        pace(start, offset, r.rate_bytes_per_s).await;
    }
    sh.store.sync(h).await.map_err(store_status)?;
    sh.store
        .set_version(h, ChunkVersion(r.version))
        .await
        .map_err(store_status)?;
    sh.note(h, Some(ChunkVersion(r.version)));
    tracing::info!(chunk = %h, version = r.version, bytes = offset, source = %r.source,
        ms = start.elapsed().as_millis() as u64, "cloned");
    Ok(offset)
}
