//! The client's side of the chunkservers: pooled data-plane connections
//! for the three calls of the data path (push along a chain, mutate at the
//! primary, read a piece from one replica), and which replica a read goes
//! to: the one this client has the fewest reads in flight with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    /// Reads in flight per server address.
    reading: Arc<Mutex<HashMap<String, u32>>>,
}

/// Replica indices in the order a read tries them: fewest reads in flight
/// first (`loads[i]` for replica `i`), equal ones in turn from `start`.
/// A random choice leaves one server a queue while another idles: with
/// 4 MiB regions read in 512 KiB pieces by four readers, each of four
/// servers had nothing to read 15-33 % of the time while another had up
/// to 18 reads queued (BENCHMARKS.md, 2026-12-02, night).
pub fn least_loaded_first(loads: &[u32], start: usize) -> Vec<usize> {
    let n = loads.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (loads[i], (i + n - start % n.max(1)) % n.max(1)));
    order
}

/// One read counted in flight with its server until dropped.
struct InFlight<'a> {
    reading: &'a Mutex<HashMap<String, u32>>,
    addr: &'a str,
}

impl<'a> InFlight<'a> {
    fn start(reading: &'a Mutex<HashMap<String, u32>>, addr: &'a str) -> Self {
        let mut r = reading.lock().unwrap_or_else(|p| p.into_inner());
        *r.entry(addr.to_string()).or_default() += 1;
        Self { reading, addr }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = r.get_mut(self.addr) {
            *n -= 1;
            if *n == 0 {
                r.remove(self.addr);
            }
        }
    }
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
        let _counted = InFlight::start(&self.reading, addr);
        self.data
            .read_into(addr, &req, dst, CALL_TIMEOUT)
            .await
            .map_err(|s| MasterError::from_status(&s))
    }

    /// The order to try `addrs` (one chunk's replicas) for a read:
    /// [`least_loaded_first`] by this client's reads in flight, equal ones
    /// from `start`.
    pub fn read_order(&self, addrs: &[&str], start: usize) -> Vec<usize> {
        let loads: Vec<u32> = {
            let r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            addrs
                .iter()
                .map(|a| r.get(*a).copied().unwrap_or(0))
                .collect()
        };
        least_loaded_first(&loads, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_to_the_replica_with_fewest_in_flight_equal_ones_in_turn() {
        assert_eq!(least_loaded_first(&[2, 0, 1], 0), [1, 2, 0]);
        assert_eq!(least_loaded_first(&[0, 0, 0], 0), [0, 1, 2]);
        assert_eq!(least_loaded_first(&[0, 0, 0], 2), [2, 0, 1]);
        assert_eq!(least_loaded_first(&[1, 0, 0], 1), [1, 2, 0]);
        assert_eq!(least_loaded_first(&[1, 0, 0], 2), [2, 1, 0]);
        assert!(least_loaded_first(&[], 3).is_empty());
    }

    #[test]
    fn a_read_counts_in_flight_until_it_ends() {
        let pool = ChunkPool::default();
        let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
        let first = InFlight::start(&pool.reading, a);
        let second = InFlight::start(&pool.reading, a);
        assert_eq!(pool.read_order(&[a, b], 0), [1, 0]);
        let on_b = InFlight::start(&pool.reading, b);
        assert_eq!(pool.read_order(&[a, b], 0), [1, 0], "2 against 1");
        drop((first, second));
        assert_eq!(pool.read_order(&[a, b], 0), [0, 1]);
        drop(on_b);
        assert!(
            pool.reading.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }
}
