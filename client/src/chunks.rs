//! The client's side of the chunkservers: one lazily connected channel per
//! server, and the three calls of the data path (push along a chain,
//! mutate at the primary, read a piece from one replica).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gfs_proto::wire::MAX_FRAME_BYTES;
use gfs_proto::wire::chunk::chunkserver_client::ChunkserverClient;
use gfs_proto::wire::chunk::{MutateReply, MutateRequest, PushFrame, ReadReply, ReadRequest};
use tonic::transport::Channel;

use crate::master::MasterError;

/// Bytes per pushed frame: small enough that each server forwards the
/// start of a piece while the rest is still arriving.
pub const PUSH_FRAME_BYTES: usize = 1 << 20;

const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Default)]
pub struct ChunkPool {
    conns: Arc<Mutex<HashMap<String, ChunkserverClient<Channel>>>>,
}

/// Why a push did not reach the whole chain.
#[derive(Debug)]
pub enum PushError {
    /// The server at this position of the chain did not store the data.
    Broken(usize),
    /// The server at this position had no buffer space (BUSY): not a
    /// failure, retry later.
    Busy(usize),
    Other(MasterError),
}

impl ChunkPool {
    pub fn get(&self, addr: &str) -> Result<ChunkserverClient<Channel>, MasterError> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.get(addr) {
            return Ok(c.clone());
        }
        let c = gfs_proto::wire::chunk_client(addr).map_err(|e| {
            MasterError::new(
                gfs_proto::wire::ErrorKind::InvalidArgument,
                format!("bad chunkserver address {addr}: {e}"),
            )
        })?;
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Pushes `data` to `chain[0]`, which forwards it down the rest.
    pub async fn push(&self, chain: &[String], data_id: u64, data: Bytes) -> Result<(), PushError> {
        let Some(first) = chain.first() else {
            return Ok(());
        };
        let mut c = self.get(first).map_err(PushError::Other)?;
        let total = data.len();
        let mut frames = Vec::with_capacity(total / PUSH_FRAME_BYTES + 1);
        let mut at = 0;
        loop {
            let end = (at + PUSH_FRAME_BYTES).min(total);
            frames.push(PushFrame {
                data_id,
                total_bytes: if at == 0 { total as u64 } else { 0 },
                chain: if at == 0 {
                    chain[1..].to_vec()
                } else {
                    Vec::new()
                },
                data: data.slice(at..end),
            });
            at = end;
            if at >= total {
                break;
            }
        }
        match tokio::time::timeout(CALL_TIMEOUT, c.push(tokio_stream::iter(frames))).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let stored = r.stored as usize;
                if stored >= chain.len() {
                    Ok(())
                } else if r.busy {
                    Err(PushError::Busy(stored))
                } else {
                    Err(PushError::Broken(stored))
                }
            }
            Ok(Err(s)) => {
                let e = MasterError::from_status(&s);
                if crate::client::replica_failed(e.kind) {
                    Err(PushError::Broken(0))
                } else {
                    Err(PushError::Other(e))
                }
            }
            Err(_) => Err(PushError::Broken(0)),
        }
    }

    pub async fn mutate(&self, addr: &str, req: MutateRequest) -> Result<MutateReply, MasterError> {
        let mut c = self.get(addr)?;
        match tokio::time::timeout(CALL_TIMEOUT, c.mutate(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(MasterError::from_status(&s)),
            Err(_) => Err(unavailable(addr)),
        }
    }

    pub async fn read(&self, addr: &str, req: ReadRequest) -> Result<ReadReply, MasterError> {
        debug_assert!(req.length <= MAX_FRAME_BYTES as u64);
        let mut c = self.get(addr)?;
        match tokio::time::timeout(CALL_TIMEOUT, c.read(req)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(MasterError::from_status(&s)),
            Err(_) => Err(unavailable(addr)),
        }
    }
}

fn unavailable(addr: &str) -> MasterError {
    MasterError::new(
        gfs_proto::wire::ErrorKind::Unavailable,
        format!("chunkserver {addr} did not answer"),
    )
}
