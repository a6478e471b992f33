//! The client's side of the chunkservers: pooled data-plane connections
//! for the three calls of the data path (push along a chain, mutate at the
//! primary, read a piece from one replica).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use gfs_proto::data::{DataPool, Op, Pieces};
use gfs_proto::wire::MAX_FRAME_BYTES;
use gfs_proto::wire::chunk::{MutateReply, MutateRequest, PushHeader, ReadRequest};

use crate::master::MasterError;

const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Default)]
pub struct ChunkPool {
    data: Arc<DataPool>,
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
    /// Pushes `data` to `chain[0]`, which forwards it down the rest.
    pub async fn push(
        &self,
        chain: &[String],
        data_id: u64,
        data: Pieces,
    ) -> Result<(), PushError> {
        let Some(first) = chain.first() else {
            return Ok(());
        };
        let header = PushHeader {
            data_id,
            total_bytes: data.remaining() as u64,
            chain: chain[1..].to_vec(),
        };
        // All at hand: written with one vectored write.
        let (tx, rx) = tokio::sync::mpsc::channel(data.iter().count().max(1));
        for piece in data.iter() {
            let _ = tx.try_send(piece.clone());
        }
        drop(tx);
        match self.data.push(first, &header, rx, CALL_TIMEOUT).await {
            Ok(r) => {
                let stored = r.stored as usize;
                if stored >= chain.len() {
                    Ok(())
                } else if r.busy {
                    Err(PushError::Busy(stored))
                } else {
                    Err(PushError::Broken(stored))
                }
            }
            Err(s) => {
                let e = MasterError::from_status(&s);
                if crate::client::replica_failed(e.kind) {
                    Err(PushError::Broken(0))
                } else {
                    Err(PushError::Other(e))
                }
            }
        }
    }

    /// A mutation at the chunk's primary, over the data plane (a framed
    /// request costs fewer task hand-offs than a gRPC call).
    pub async fn mutate(&self, addr: &str, req: MutateRequest) -> Result<MutateReply, MasterError> {
        self.data
            .call(addr, Op::Mutate, &req, CALL_TIMEOUT)
            .await
            .map_err(|s| MasterError::from_status(&s))
    }

    /// A piece of a chunk from one replica, appended to `dst`: how many
    /// bytes, and the chunk's length there.
    pub async fn read(
        &self,
        addr: &str,
        req: ReadRequest,
        dst: &mut BytesMut,
    ) -> Result<(usize, u64), MasterError> {
        debug_assert!(req.length <= MAX_FRAME_BYTES as u64);
        self.data
            .read_into(addr, &req, dst, CALL_TIMEOUT)
            .await
            .map_err(|s| MasterError::from_status(&s))
    }
}
