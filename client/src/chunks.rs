//! The client's side of the chunkservers: pooled data-plane connections
//! for the three calls of the data path (push along a chain, mutate at the
//! primary, read a piece from one replica), and which replica a read goes
//! to: the one this client has the fewest reads in flight with.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use gfs_proto::data::{DataPool, Op, Pieces, probe_of};
use gfs_proto::wire::MAX_FRAME_BYTES;
use gfs_proto::wire::chunk::{MutateReply, MutateRequest, PushHeader, ReadRequest};
use gfs_proto::wire::master::Replica;

use crate::limping;
use crate::master::MasterError;

const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A read not answered after this long is asked of another replica too:
/// a piece takes milliseconds on a healthy server, even a busy one ...
pub const HEDGE_AFTER: Duration = Duration::from_secs(1);
/// ... or after this many times the reads' recent mean, if longer: on a
/// cluster so loaded that reads take a large part of a second, asking a
/// second replica would only add load.
const HEDGE_AFTER_MEANS: u32 = 8;

/// When a read still unanswered is asked of another replica too, given
/// the recent mean time of a read.
pub fn hedge_after(mean: Duration) -> Duration {
    HEDGE_AFTER.max(mean.saturating_mul(HEDGE_AFTER_MEANS))
}

#[derive(Clone, Debug, Default)]
pub struct ChunkPool {
    data: Arc<DataPool>,
    /// Mean time of this client's answered reads, in microseconds (a
    /// moving average: each read weighs 1/16).
    read_us: Arc<std::sync::atomic::AtomicU64>,
    /// What this client's reads found of each server, by address.
    reading: Arc<Mutex<HashMap<String, ReadLoad>>>,
}

impl ChunkPool {
    /// A pool whose data-plane connections present `token`.
    pub fn with_token(token: Option<gfs_proto::auth::Token>) -> Self {
        Self {
            data: Arc::new(DataPool::with_token(token)),
            ..Self::default()
        }
    }
}

/// A server that failed a read is tried after the others for this long
/// (or until a read from it succeeds): with no reads in flight it would
/// otherwise look the least busy, and a host that is down costs every
/// attempt the connect timeout, a stalled one the call timeout. Twice
/// the call timeout, and longer than the masters take to declare a
/// silent server dead (15 s by default): a stalled server costs a reader
/// one timeout, not one every few seconds until the masters drop it.
const FAILED_READS_LAST_FOR: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, Default)]
struct ReadLoad {
    in_flight: u32,
    failed_at: Option<Instant>,
}

impl ReadLoad {
    fn failed_lately(&self, now: Instant) -> bool {
        self.failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < FAILED_READS_LAST_FOR)
    }

    /// Nothing worth keeping.
    fn idle(&self, now: Instant) -> bool {
        self.in_flight == 0 && !self.failed_lately(now)
    }
}

/// Replica indices in the order a read tries them: those that did not
/// fail a read lately first, then fewest reads in flight (`loads[i]` for
/// replica `i`: whether it failed lately, its reads in flight), equal ones
/// in turn from `start`. A random choice leaves one server a queue while
/// another idles: with 4 MiB regions read in 512 KiB pieces by four
/// readers, each of four servers had nothing to read 5-31 % of the time
/// while another had up to 18 reads queued (BENCHMARKS.md, 2026-12-02,
/// night).
pub fn least_loaded_first(loads: &[(bool, u32)], start: usize) -> Vec<usize> {
    let n = loads.len().max(1);
    let mut order: Vec<usize> = (0..loads.len()).collect();
    order.sort_by_key(|&i| (loads[i], (i + n - start % n) % n));
    order
}

/// One read counted in flight with its server until dropped.
struct InFlight<'a> {
    reading: &'a Mutex<HashMap<String, ReadLoad>>,
    addr: &'a str,
}

impl<'a> InFlight<'a> {
    fn start(reading: &'a Mutex<HashMap<String, ReadLoad>>, addr: &'a str) -> Self {
        let mut r = reading.lock().unwrap_or_else(|p| p.into_inner());
        r.entry(addr.to_string()).or_default().in_flight += 1;
        Self { reading, addr }
    }

    /// How the read ended: a failure of the replica marks it for
    /// `FAILED_READS_LAST_FOR`, a success clears the mark.
    fn ended(&self, replica_failed: bool) {
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = r.get_mut(self.addr) {
            l.failed_at = replica_failed.then(Instant::now);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = r.get_mut(self.addr) {
            l.in_flight -= 1;
            if l.idle(Instant::now()) {
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
    /// Pushes `data` to `chain[0]`, which forwards it down the rest;
    /// records how long each hop held it up (`limping`).
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
                    tracing::trace!(?chain, lag_us = ?r.lag_us, "pushed");
                    limping::shared().record(chain, &r.lag_us, Instant::now());
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
    /// request costs fewer task hand-offs than a gRPC call). A primary
    /// that stops answering pings meanwhile fails it (`data::PROBE`): the
    /// writer then waits for its lease to end, not for the call timeout.
    pub async fn mutate(&self, addr: &str, req: MutateRequest) -> Result<MutateReply, MasterError> {
        self.data
            .call_probed(addr, Op::Mutate, &req, (CALL_TIMEOUT, probe_of(req.handle)))
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
        let counted = InFlight::start(&self.reading, addr);
        let started = Instant::now();
        let got = self
            .data
            .read_into(addr, &req, dst, CALL_TIMEOUT)
            .await
            .map_err(|s| MasterError::from_status(&s));
        if got.is_ok() {
            use std::sync::atomic::Ordering::Relaxed;
            let took = started.elapsed().as_micros() as u64;
            // A lost race between two readers costs one sample.
            let mean = self.read_us.load(Relaxed);
            self.read_us.store(mean - mean / 16 + took / 16, Relaxed);
        }
        counted.ended(matches!(&got, Err(e) if crate::client::replica_failed(e.kind)));
        got
    }

    /// `req` from the first of `replicas` (address, node id) that answers,
    /// tried in [`ChunkPool::read_order`] from `start`, into `dst` (empty, with room): how many bytes,
    /// and the chunk's length there. The next replica is asked at once
    /// when one fails, and also when one has not answered for
    /// [`hedge_after`]: a stalled server (stopped, a hung disk) then costs
    /// a reader seconds, not the call timeout. The first answer wins; a
    /// later replica's answer is copied into `dst` (the first's lands
    /// there straight from the socket).
    pub async fn read_hedged(
        &self,
        replicas: &[(&str, u64)],
        start: usize,
        req: ReadRequest,
        dst: &mut BytesMut,
    ) -> Result<(usize, u64), MasterError> {
        let addrs: Vec<&str> = replicas.iter().map(|r| r.0).collect();
        let mut rest = self.read_order(&addrs, start).into_iter();
        let Some(first) = rest.next() else {
            return Err(MasterError::new(
                gfs_proto::wire::ErrorKind::Unavailable,
                "the chunk has no replica to read",
            ));
        };
        dst.clear();
        let mut own = Some(Box::pin(self.read(replicas[first].0, req, dst)));
        let mut others = futures_util::stream::FuturesUnordered::new();
        let ask = |k: usize| {
            let (pool, addr) = (self.clone(), replicas[k].0.to_string());
            async move {
                let mut buf = BytesMut::with_capacity(req.length as usize);
                let got = pool.read(&addr, req, &mut buf).await;
                (k, got, buf)
            }
        };
        // Replicas asked and not answered yet; whether one was asked
        // because another was slow (once a read: at most twice the load).
        let (mut waiting, mut hedged) = (vec![first], false);
        let mean = self.read_us.load(std::sync::atomic::Ordering::Relaxed);
        let hedge = hedge_after(Duration::from_micros(mean));
        let mut last = None;
        loop {
            tokio::select! {
                got = async { own.as_mut().expect("polled only while set").await }, if own.is_some() => {
                    match got {
                        Ok(got) => return Ok(got),
                        Err(e) => {
                            own = None;
                            waiting.retain(|&w| w != first);
                            tracing::debug!(replica = replicas[first].1, error = %e, "read failed; trying another replica");
                            last = Some(e);
                        }
                    }
                }
                Some(answer) = futures_util::StreamExt::next(&mut others), if !others.is_empty() => {
                    let (k, got, buf): (usize, Result<_, MasterError>, BytesMut) = answer;
                    match got {
                        Ok(got) => {
                            // The first attempt, still reading into `dst`,
                            // ends here (its connection is not reused).
                            drop(own);
                            dst.clear();
                            dst.extend_from_slice(&buf);
                            return Ok(got);
                        }
                        Err(e) => {
                            waiting.retain(|&w| w != k);
                            tracing::debug!(replica = replicas[k].1, error = %e, "read failed; trying another replica");
                            last = Some(e);
                        }
                    }
                }
                () = tokio::time::sleep(hedge), if !hedged => {
                    hedged = true;
                    // Slow as a failed one: later reads go elsewhere first.
                    for &k in &waiting {
                        self.mark_failed(replicas[k].0);
                    }
                    tracing::debug!(replicas = ?waiting.iter().map(|&k| replicas[k].1).collect::<Vec<_>>(), after = ?hedge, "read not answered; asking another replica too");
                }
            }
            match rest.next() {
                Some(k) => {
                    waiting.push(k);
                    others.push(ask(k));
                }
                None if waiting.is_empty() => {
                    return Err(last.unwrap_or_else(|| {
                        MasterError::new(
                            gfs_proto::wire::ErrorKind::Unavailable,
                            "no replica answered the read",
                        )
                    }));
                }
                None => {}
            }
        }
    }

    /// The node id of the limping server (`limping`) among `replicas` of
    /// chunk `handle`, if it was not reported for it yet.
    pub fn limping_to_report(&self, handle: u64, replicas: &[Replica]) -> Option<u64> {
        let addrs = replicas.iter().map(|r| &r.addr);
        let addr = limping::shared().to_report(handle, addrs, Instant::now())?;
        replicas.iter().find(|r| r.addr == addr).map(|r| r.node_id)
    }

    /// Marks `addr` as failed lately (see `FAILED_READS_LAST_FOR`).
    fn mark_failed(&self, addr: &str) {
        let mut r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        r.entry(addr.to_string()).or_default().failed_at = Some(Instant::now());
    }

    /// The order to try `addrs` (one chunk's replicas) for a read:
    /// [`least_loaded_first`] by what this client's reads found, equal
    /// ones from `start`; a limping server (`limping`) goes last, as one
    /// that failed a read does.
    pub fn read_order(&self, addrs: &[&str], start: usize) -> Vec<usize> {
        let now = Instant::now();
        let limping: Vec<bool> = {
            let hops = limping::shared();
            addrs.iter().map(|a| hops.is_limping(*a, now)).collect()
        };
        let loads: Vec<(bool, u32)> = {
            let r = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            addrs
                .iter()
                .zip(limping)
                .map(|(a, limping)| {
                    let (failed, in_flight) = r
                        .get(*a)
                        .map_or((false, 0), |l| (l.failed_lately(now), l.in_flight));
                    (failed || limping, in_flight)
                })
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
        let ok = |n| (false, n);
        assert_eq!(least_loaded_first(&[ok(2), ok(0), ok(1)], 0), [1, 2, 0]);
        assert_eq!(least_loaded_first(&[ok(0), ok(0), ok(0)], 0), [0, 1, 2]);
        assert_eq!(least_loaded_first(&[ok(0), ok(0), ok(0)], 2), [2, 0, 1]);
        assert_eq!(least_loaded_first(&[ok(1), ok(0), ok(0)], 1), [1, 2, 0]);
        assert_eq!(least_loaded_first(&[ok(1), ok(0), ok(0)], 2), [2, 1, 0]);
        // A replica that failed lately goes last, however idle.
        assert_eq!(least_loaded_first(&[(true, 0), ok(3), ok(1)], 0), [2, 1, 0]);
        assert!(least_loaded_first(&[], 3).is_empty());
    }

    #[test]
    fn a_read_counts_in_flight_until_it_ends_and_a_failure_for_a_while() {
        let pool = ChunkPool::default();
        let (a, b) = ("127.0.0.1:1", "127.0.0.1:2");
        let first = InFlight::start(&pool.reading, a);
        let second = InFlight::start(&pool.reading, a);
        assert_eq!(pool.read_order(&[a, b], 0), [1, 0]);
        let on_b = InFlight::start(&pool.reading, b);
        assert_eq!(pool.read_order(&[a, b], 0), [1, 0], "2 against 1");
        drop((first, second));
        assert_eq!(pool.read_order(&[a, b], 0), [0, 1]);
        // b fails: tried last while the mark lasts, though a is busier.
        on_b.ended(true);
        drop(on_b);
        let busy = InFlight::start(&pool.reading, a);
        assert_eq!(pool.read_order(&[a, b], 0), [0, 1]);
        // Once a read from b succeeds, the mark is gone.
        let again = InFlight::start(&pool.reading, b);
        again.ended(false);
        drop((again, busy));
        assert_eq!(pool.read_order(&[a, b], 1), [1, 0]);
        assert!(
            pool.reading.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn a_limping_server_is_read_last() {
        let pool = ChunkPool::default();
        let [a, b, c, d] = ["10.9.9.1:1", "10.9.9.2:1", "10.9.9.3:1", "10.9.9.4:1"];
        assert_eq!(pool.read_order(&[a, b], 0), [0, 1]);
        {
            let mut hops = limping::shared();
            let chain = |s: [&str; 3]| s.map(String::from);
            for _ in 0..4 {
                let now = Instant::now();
                hops.record(&chain([c, a, b]), &[5_000, 900_000, 3_000], now);
                hops.record(&chain([d, a, c]), &[5_000, 900_000, 3_000], now);
                hops.record(&chain([b, c, d]), &[5_000, 3_000, 3_000], now);
            }
        }
        assert_eq!(pool.read_order(&[a, b], 0), [1, 0]);
        assert_eq!(pool.read_order(&[b, a, c], 0), [0, 2, 1]);
    }

    #[test]
    fn a_second_replica_is_asked_after_a_second_or_eight_recent_means() {
        let ms = Duration::from_millis;
        assert_eq!(hedge_after(ms(0)), ms(1000));
        assert_eq!(hedge_after(ms(3)), ms(1000), "a healthy cluster");
        assert_eq!(hedge_after(ms(125)), ms(1000));
        assert_eq!(hedge_after(ms(400)), ms(3200), "an overloaded one");
        assert_eq!(hedge_after(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn a_failure_mark_wears_off() {
        let now = Instant::now();
        let failed = |ago| ReadLoad {
            in_flight: 0,
            failed_at: now.checked_sub(ago),
        };
        assert!(failed(Duration::from_secs(1)).failed_lately(now));
        let long_ago = failed(FAILED_READS_LAST_FOR);
        assert!(long_ago.failed_at.is_none() || !long_ago.failed_lately(now));
        assert!(long_ago.failed_at.is_none() || long_ago.idle(now));
    }
}
