//! The background scrubber: re-verifies idle chunks at a bounded rate and
//! reports the corrupt ones. It only reports; what to do with a corrupt
//! replica (re-replicate, then delete) is the chunkserver's and master's call.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{ChunkStore, CorruptChunk};
use crate::error::StoreError;

impl ChunkStore {
    /// Verifies every chunk that saw no mutation for `idle`, reading at most
    /// `rate_bytes_per_s` (0: unthrottled). Returns the corrupt ones.
    pub async fn scrub_pass(&self, rate_bytes_per_s: u64, idle: Duration) -> Vec<CorruptChunk> {
        let chunks = self.every_chunk();
        let started = Instant::now();
        let mut read = 0u64;
        let mut corrupt = Vec::new();
        let piece = self.inner.config.max_request_bytes;
        for c in chunks {
            let last = c.last_mutation_ms.load(Ordering::Relaxed);
            if self.now_ms().saturating_sub(last) < idle.as_millis() as u64 {
                continue;
            }
            let Ok(info) = self.info(c.handle).await else {
                continue;
            };
            let mut at = 0;
            while at < info.length {
                let n = piece.min(info.length - at);
                let reason = match self.read(c.handle, at, n).await {
                    Ok(_) => None,
                    Err(StoreError::NotFound(_)) => break,
                    Err(StoreError::Corrupt { block, .. }) => {
                        Some(format!("checksum mismatch in block {block}"))
                    }
                    Err(e) => Some(e.to_string()),
                };
                if let Some(reason) = reason {
                    let dir = self.dir(&c).root.clone();
                    corrupt.push(CorruptChunk {
                        handle: c.handle,
                        dir,
                        reason,
                    });
                    break;
                }
                at += n;
                read += n;
                if rate_bytes_per_s > 0 {
                    let due = Duration::from_secs_f64(read as f64 / rate_bytes_per_s as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        corrupt
    }

    /// Runs scrub passes at the configured rate, sending each corrupt chunk
    /// found on the returned channel. Ends when the store or the receiver
    /// is dropped.
    pub fn spawn_scrubber(&self) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<CorruptChunk>) {
        let (tx, rx) = mpsc::channel(64);
        let weak = Arc::downgrade(&self.inner);
        let rate = self.inner.config.scrub_rate_bytes_per_s;
        let idle = Duration::from_millis(self.inner.config.scrub_idle_ms);
        let task = tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let found = ChunkStore { inner }.scrub_pass(rate, idle).await;
                for c in found {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        (task, rx)
    }
}
