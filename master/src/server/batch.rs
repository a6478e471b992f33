//! Concurrent proposals share log entries. Every mutation a service
//! proposes goes through one queue; a batch is what is queued when a slot
//! frees up (at most [`MAX_BATCHES_IN_FLIGHT`] batches are in Raft at a
//! time, so proposals arriving meanwhile wait and form the next one). A
//! batch of one is proposed as it is; more become one `Command::Batch`
//! entry, applied in order with each request's own session.
//!
//! openraft already shares one fsync among the entries it appends
//! together, but each entry still costs its own trip through the Raft core,
//! the replication messages and the state machine; under 64 creating
//! clients that per-entry cost, not the disk, bounded creates per second.

use std::sync::Arc;

use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::node::now_ms;
use crate::state::{Command, MetaError, Outcome, Reply, Request};
use crate::store::TypeConfig;

/// Proposals in one log entry, at most.
pub const MAX_BATCH: usize = 256;
/// Batches in Raft at once.
pub const MAX_BATCHES_IN_FLIGHT: usize = 2;
/// Proposals waiting for a slot, at most (callers wait beyond this).
const QUEUE: usize = 4096;

pub type WriteError = RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>;
type Pending = (Request, oneshot::Sender<Result<Outcome, WriteError>>);

/// The sending side, held by the node.
#[derive(Debug, Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// A proposer feeding `raft`; its task ends when every `Proposer` is
    /// dropped.
    pub fn start(raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `req` (its time is stamped when its batch goes out) and
    /// waits for its outcome. `None`: the proposer has stopped.
    pub async fn propose(&self, req: Request) -> Option<Result<Outcome, WriteError>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((req, tx)).await.ok()?;
        rx.await.ok()
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            submit(&raft, batch).await;
            drop(slot);
        });
    }
}

async fn submit(raft: &Raft<TypeConfig>, mut batch: Vec<Pending>) {
    let now_ms = now_ms();
    if batch.len() == 1 {
        let (mut req, tx) = batch.pop().expect("one proposal");
        req.now_ms = now_ms;
        let _ = tx.send(raft.client_write(req).await.map(|r| r.data));
        return;
    }
    let (reqs, txs): (Vec<Request>, Vec<_>) = batch.into_iter().unzip();
    let n = reqs.len();
    let outer = Request {
        client: 0,
        seq: 0,
        now_ms,
        cmd: Command::Batch(reqs),
    };
    match raft.client_write(outer).await {
        Ok(r) => {
            let outcomes = match r.data {
                Ok(Reply::Batch(o)) if o.len() == n => o,
                other => {
                    let e = MetaError::InvalidArgument(format!("a batch was answered {other:?}"));
                    vec![Err(e); n]
                }
            };
            for (tx, o) in txs.into_iter().zip(outcomes) {
                let _ = tx.send(Ok(o));
            }
        }
        Err(e) => {
            for tx in txs {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}
