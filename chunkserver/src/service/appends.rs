//! Record appends at a chunk's primary: queued, grouped into rounds
//! (`order::plan_appends`), and committed with up to `APPEND_PIPELINE`
//! rounds in flight, each replica applying them in serial order.

use std::collections::VecDeque;
use std::sync::Arc;

use gfs_proto::ChunkHandle;
use gfs_proto::record::RecordId;
use gfs_proto::wire::chunk::{MutateReply, MutateRequest, MutationKind, Replica};
use gfs_proto::wire::{ErrorKind, error};
use tokio::sync::oneshot;
use tonic::Status;

use super::{ChunkService, Ordered, Planned, Shared, Slot};
use crate::buffer::Parts;
use crate::order::{Placed, plan_appends};

/// Rounds of record appends one chunk's primary keeps in flight: while the
/// replicas' answers to one come back, each replica already writes the
/// next, so the disk is never idle between rounds. Four appenders on the
/// development VM kept 1-3 rounds waiting at each replica with 4.
const APPEND_PIPELINE: usize = 4;

/// The last round of appends planned while earlier ones are in flight: the
/// next round may follow it only under the same version and secondaries.
#[derive(Debug)]
pub(super) struct Tail {
    pub(super) version: u64,
    pub(super) secondaries: Vec<Replica>,
    pub(super) end: u64,
    pub(super) serial: u64,
}

/// A round of record appends: the batch, where its records go, and the
/// mutations that put them there (the records that fit, then the padding
/// if one did not).
#[derive(Debug)]
struct Round {
    /// The first request: chunk, version, secondaries.
    r: MutateRequest,
    batch: Vec<Queued>,
    placed: Vec<Placed>,
    /// The chunk's length before the round, and after its records.
    length: u64,
    end: u64,
    write: Option<Planned>,
    pad: Option<Planned>,
    now: u64,
}

/// What the replicas made of a round's mutations: the chunk's length at
/// the primary after each, and the secondaries that failed it.
type Outcome = Result<(Option<(u64, Vec<u64>)>, Option<(u64, Vec<u64>)>), Status>;

/// A record append waiting to be committed with the others queued for its
/// chunk.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) r: MutateRequest,
    pub(super) data: Parts,
    pub(super) reply: oneshot::Sender<Result<MutateReply, Status>>,
    /// When it was queued (traced: how long rounds keep appends waiting).
    pub(super) queued: std::time::Instant,
}

impl ChunkService {
    /// A record append: queued for the chunk, then committed by whichever
    /// append holds the order lock next, together with every other append
    /// queued by then (one disk write per replica for all of them).
    pub(super) async fn append(
        &self,
        slot: Arc<Slot>,
        r: MutateRequest,
        data: Parts,
    ) -> Result<MutateReply, Status> {
        let (tx, rx) = oneshot::channel();
        Shared::lock(&slot.appends).push_back(Queued {
            r,
            data,
            reply: tx,
            queued: std::time::Instant::now(),
        });
        slot.queued.notify_one();
        // In a task of its own: a client that goes away must not cancel a
        // commit that carries other clients' records.
        let me = self.clone();
        tokio::spawn(async move {
            let mut order = slot.order.lock().await;
            me.drain_appends(&slot, &mut order).await;
            drop(order);
            slot.applied.notify_waiters();
        });
        rx.await
            .unwrap_or_else(|_| Err(error(ErrorKind::Internal, "the append was dropped")))
    }

    /// Commits the queued appends round by round, with up to
    /// `APPEND_PIPELINE` rounds in flight. Each replica applies them in
    /// their serial order; each round is answered once every replica
    /// applied it. While there is room in the pipeline, appends that arrive
    /// during a round go out in the next one at once, not after it: the
    /// replicas then have the next round in hand when they finish one.
    async fn drain_appends(&self, slot: &Arc<Slot>, order: &mut Ordered) {
        let mut rounds = VecDeque::new();
        loop {
            while rounds.len() < APPEND_PIPELINE {
                let batch = self.next_batch(slot, order.tail.as_ref());
                if batch.is_empty() {
                    break;
                }
                if let Some(round) = self.plan_round(batch, order).await {
                    let (me, slot) = (self.clone(), slot.clone());
                    let ahead = rounds.len();
                    rounds.push_back(tokio::spawn(async move {
                        let started = std::time::Instant::now();
                        let outcome = me.run_round(&round, &slot).await;
                        tracing::trace!(
                            records = round.batch.len(),
                            ahead,
                            waited_ms = round
                                .batch
                                .iter()
                                .map(|q| started - q.queued)
                                .max()
                                .unwrap_or_default()
                                .as_secs_f64()
                                * 1e3,
                            commit_ms = started.elapsed().as_secs_f64() * 1e3,
                            "round"
                        );
                        (round, outcome)
                    }));
                }
            }
            let room = rounds.len() < APPEND_PIPELINE;
            let Some(front) = rounds.front_mut() else {
                break;
            };
            let done = if room {
                tokio::select! {
                    done = front => done,
                    () = slot.queued.notified() => continue,
                }
            } else {
                front.await
            };
            rounds.pop_front();
            // A round that panicked drops its answers: those appends fail.
            if let Ok((round, outcome)) = done {
                self.finish_round(round, outcome, order);
            }
            if rounds.is_empty() {
                order.tail = None;
            }
        }
    }

    /// The queued appends at the front that can go in one mutation: same
    /// version and secondaries (as the round in flight, if any), at most
    /// `max_request_bytes` together.
    fn next_batch(&self, slot: &Slot, tail: Option<&Tail>) -> Vec<Queued> {
        let max = self.shared.cfg.store.max_request_bytes;
        let mut queue = Shared::lock(&slot.appends);
        let mut batch: Vec<Queued> = Vec::new();
        let mut bytes = 0;
        while let Some(q) = queue.front() {
            let fits = match (batch.first(), tail) {
                (Some(first), _) => {
                    first.r.version == q.r.version
                        && first.r.secondaries == q.r.secondaries
                        && bytes + q.r.length <= max
                }
                (None, Some(t)) => t.version == q.r.version && t.secondaries == q.r.secondaries,
                (None, None) => true,
            };
            if !fits {
                break;
            }
            bytes += q.r.length;
            batch.extend(queue.pop_front());
        }
        batch
    }

    /// Places a batch of appends after the round in flight (or at the
    /// chunk's end here) and orders the mutations that write them. Appends
    /// that cannot go (a revoked lease, a refused version) are answered now.
    async fn plan_round(&self, batch: Vec<Queued>, order: &mut Ordered) -> Option<Round> {
        let sh = &self.shared;
        let now = sh.lease_now();
        // A revocation may have come while these waited for their turn.
        let mut held = Vec::with_capacity(batch.len());
        for q in batch {
            let h = ChunkHandle(q.r.handle);
            match sh.held_lease(h, q.r.lease_expires_ms, q.r.version, now) {
                Ok(()) => held.push(q),
                Err(e) => {
                    let _ = q.reply.send(Err(e));
                }
            }
        }
        let batch = held;
        let r = batch.first()?.r.clone();
        let (length, after) = match &order.tail {
            Some(t) => (t.end, t.serial),
            None => match self.fenced_info(&r).await {
                Ok(length) => (length, 0),
                Err(e) => {
                    for q in batch {
                        let _ = q.reply.send(Err(e.clone()));
                    }
                    return None;
                }
            },
        };
        let id = |q: &Queued| RecordId {
            client_id: q.r.client_id,
            seq: q.r.seq,
        };
        let records: Vec<_> = batch.iter().map(|q| (id(q), q.r.length)).collect();
        let chunk_size = sh.cfg.chunk_size_bytes;
        let (placed, end) = plan_appends(length, chunk_size, &records, &order.committed);
        let (mut written, mut unused) = (Vec::new(), Vec::new());
        for (q, p) in batch.iter().zip(&placed) {
            match p {
                Placed::At(_) => written.push(q),
                _ => unused.push(q.r.data_id),
            }
        }
        // Data no mutation will use: dropped here now, at the secondaries
        // with the last mutation of the round.
        sh.forget_data(&unused);
        let pads = placed.contains(&Placed::Full);
        let mut last = after;
        let write = (!written.is_empty()).then(|| {
            let data = written
                .iter()
                .flat_map(|q| q.data.iter().cloned())
                .collect();
            let m = Planned {
                ids: written.iter().map(|q| q.r.data_id).collect(),
                dropped: if pads { Vec::new() } else { unused.clone() },
                sync: written.iter().any(|q| q.r.sync),
                ..order.plan(MutationKind::Write, length, data, last)
            };
            last = m.serial;
            m
        });
        let pad = pads.then(|| {
            let m = Planned {
                dropped: unused,
                sync: r.sync,
                ..order.plan(MutationKind::Pad, end, Parts::new(), last)
            };
            last = m.serial;
            m
        });
        order.tail = Some(Tail {
            version: r.version,
            secondaries: r.secondaries.clone(),
            end: if pads { chunk_size } else { end },
            serial: last,
        });
        Some(Round {
            r,
            batch,
            placed,
            length,
            end,
            write,
            pad,
            now,
        })
    }

    /// The chunk's length here once it is at the request's version
    /// (created if this is its first mutation).
    async fn fenced_info(&self, r: &MutateRequest) -> Result<u64, Status> {
        let info = self
            .shared
            .local(ChunkHandle(r.handle), r.version, true)
            .await?;
        self.shared.fence(&info, r.version).await?;
        Ok(info.length)
    }

    /// Commits a round's mutations, every one of them (the rounds after it
    /// follow them in each replica's order).
    async fn run_round(&self, round: &Round, slot: &Slot) -> Outcome {
        let write = match &round.write {
            Some(m) => Some(self.commit(&round.r, m, slot).await),
            None => None,
        };
        let pad = match &round.pad {
            Some(m) => Some(self.commit(&round.r, m, slot).await),
            None => None,
        };
        Ok((write.transpose()?, pad.transpose()?))
    }

    /// Answers a round's appends, and remembers its records for retries
    /// once every replica has them.
    fn finish_round(&self, round: Round, outcome: Outcome, order: &mut Ordered) {
        let sh = &self.shared;
        let (write, pad) = match outcome {
            Ok(o) => o,
            Err(e) => {
                for q in round.batch {
                    let _ = q.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let (length, failed) = write.unwrap_or((round.length, Vec::new()));
        let (padded, pad_failed) = pad.unwrap_or((length, Vec::new()));
        if let (Some(m), true) = (&round.write, failed.is_empty()) {
            for (q, p) in round.batch.iter().zip(&round.placed) {
                if let (Placed::At(at), true) = (p, q.r.client_id != 0) {
                    let id = RecordId {
                        client_id: q.r.client_id,
                        seq: q.r.seq,
                    };
                    order.committed.record(id, *at);
                }
            }
            sh.committed(ChunkHandle(round.r.handle), &m.ids, round.now);
        }
        for (q, p) in round.batch.into_iter().zip(&round.placed) {
            let reply = match *p {
                Placed::At(at) => MutateReply {
                    offset: at,
                    chunk_length: length,
                    chunk_full: false,
                    failed: failed.clone(),
                },
                Placed::Duplicate(at) => MutateReply {
                    offset: at,
                    chunk_length: round.length,
                    chunk_full: false,
                    failed: Vec::new(),
                },
                Placed::Full => MutateReply {
                    offset: round.end,
                    chunk_length: padded,
                    chunk_full: true,
                    failed: pad_failed.clone(),
                },
            };
            let _ = q.reply.send(Ok(reply));
        }
    }
}
