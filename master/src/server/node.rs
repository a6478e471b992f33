//! One running master: its Raft handle, the applied state it serves reads
//! from, the soft chunkserver view, and the two gates every service uses:
//! [`Node::propose`] (a mutation through the log, stamped with the leader's
//! clock) and [`Node::read_gate`] (ReadIndex, or nothing for stale reads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use gfs_proto::wire::{ErrorDetail, ErrorKind, error, status};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, Raft};
use tonic::Status;

use super::config::MasterConfig;
use super::soft::Soft;
use crate::state::{Command, MetaError, Reply, Request};
use crate::store::{Applied, TypeConfig};

pub struct Node {
    pub cfg: MasterConfig,
    pub raft: Raft<TypeConfig>,
    pub applied: Arc<RwLock<Applied>>,
    pub soft: Mutex<Soft>,
    pub chunkservers: super::versions::Chunkservers,
    pub duties: super::duties::Duties,
    pub reads: ReadRounds,
    /// Held while a lease is granted and its new version handed out.
    pub grants: tokio::sync::Mutex<()>,
    /// Chunks whose lease is being taken back from a primary a writer
    /// reported (`MetaService::write_chunk`).
    pub revoking: Mutex<std::collections::HashSet<gfs_proto::ChunkHandle>>,
    /// Every proposal goes through here, batched with concurrent ones.
    pub proposer: super::batch::Proposer,
    /// When this process started (its chunk locations are complete once
    /// every live chunkserver has heartbeated since).
    pub started_ms: u64,
}

/// Linearizable reads share ReadIndex rounds: a read joins the first round
/// that starts after it arrived, so one quorum confirmation serves every
/// read waiting behind the round in flight (instead of one round each).
#[derive(Debug)]
pub struct ReadRounds {
    /// Rounds started so far; a round's id is this count when it starts.
    started: AtomicU64,
    /// Held while a round runs; the last finished round and its outcome.
    last: tokio::sync::Mutex<(u64, Result<(), Status>)>,
}

impl Default for ReadRounds {
    fn default() -> Self {
        Self {
            started: AtomicU64::new(0),
            last: tokio::sync::Mutex::new((0, Ok(()))),
        }
    }
}

impl ReadRounds {
    /// The outcome of a round that started after this call: `round` runs
    /// one unless a round that started later already finished.
    pub async fn after_now<F>(&self, round: impl FnOnce() -> F) -> Result<(), Status>
    where
        F: std::future::Future<Output = Result<(), Status>>,
    {
        let arrived = self.started.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if last.0 > arrived {
            return last.1.clone();
        }
        let id = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let outcome = round().await;
        *last = (id, outcome.clone());
        outcome
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.cfg.id)
            .finish_non_exhaustive()
    }
}

/// Wall-clock milliseconds: what the leader stamps into commands (lease
/// expiry is compared against the next leader's clock, so masters need
/// synchronised clocks; the lease grace period covers their skew).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wire form of a state-machine error.
pub fn meta_status(e: &MetaError) -> Status {
    let kind = match e {
        MetaError::NotFound(_) | MetaError::NoSuchDeleted(_) | MetaError::NoSuchChunk(_) => {
            ErrorKind::NotFound
        }
        MetaError::AlreadyExists(_) => ErrorKind::AlreadyExists,
        MetaError::NotADirectory(_) => ErrorKind::NotADirectory,
        MetaError::IsADirectory(_) => ErrorKind::IsADirectory,
        MetaError::DirectoryNotEmpty(_) => ErrorKind::DirectoryNotEmpty,
        MetaError::RenameIntoItself { .. }
        | MetaError::SnapshotIntoItself { .. }
        | MetaError::Root(_) => ErrorKind::Conflict,
        // A snapshot came between the copy-on-write check and the grant:
        // asking again copies the chunk.
        MetaError::LeaseHeld { .. } | MetaError::SharedChunk(_) => ErrorKind::LeaseHeld,
        MetaError::ChunkIndexGap { .. }
        | MetaError::LengthBeyondChunks { .. }
        | MetaError::InvalidArgument(_) => ErrorKind::InvalidArgument,
    };
    error(kind, e.to_string())
}

impl Node {
    /// `NotLeader`, with the leader's id and address when one is known.
    pub fn not_leader(&self, fwd: Option<ForwardToLeader<u64, BasicNode>>) -> Status {
        let (leader_id, leader_addr) = match fwd {
            Some(ForwardToLeader {
                leader_id: Some(id),
                leader_node,
            }) => (id, leader_node.map(|n| n.addr).unwrap_or_default()),
            _ => self.leader_hint(),
        };
        status(ErrorDetail {
            kind: ErrorKind::NotLeader as i32,
            message: if leader_id == 0 {
                format!(
                    "master {} is not the leader; no leader is known",
                    self.cfg.id
                )
            } else {
                format!(
                    "master {} is not the leader; try {leader_addr}",
                    self.cfg.id
                )
            },
            leader_id,
            leader_addr,
        })
    }

    /// The leader this master believes in, as (id, address); (0, "") if none.
    pub fn leader_hint(&self) -> (u64, String) {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(id) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default();
                (id, addr)
            }
            None => (0, String::new()),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.cfg.id)
    }

    /// Proposes `cmd` and waits for it to be applied here.
    pub async fn propose(&self, client: u64, seq: u64, cmd: Command) -> Result<Reply, Status> {
        // A follower answers at once rather than queue behind batches that
        // Raft may hold while this master starts or an election runs.
        if !self.is_leader() {
            return Err(self.not_leader(None));
        }
        let req = Request {
            client,
            seq,
            now_ms: 0,
            cmd,
        };
        let written = self
            .proposer
            .propose(req)
            .await
            .ok_or_else(|| error(ErrorKind::Unavailable, "this master is shutting down"))?;
        match written {
            Ok(outcome) => outcome.map_err(|e| meta_status(&e)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(Some(f)))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(error(ErrorKind::InvalidArgument, e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(error(ErrorKind::Unavailable, e.to_string())),
        }
    }

    /// Waits until this master may serve a linearizable read (it is the
    /// leader, confirmed by a quorum, and has applied everything committed
    /// before the read arrived). Stale reads pass at once.
    pub async fn read_gate(&self, stale: bool) -> Result<(), Status> {
        if stale {
            return Ok(());
        }
        self.reads
            .after_now(|| async {
                match self.raft.ensure_linearizable().await {
                    Ok(_) => Ok(()),
                    Err(RaftError::APIError(
                        openraft::error::CheckIsLeaderError::ForwardToLeader(f),
                    )) => Err(self.not_leader(Some(f))),
                    Err(RaftError::APIError(e)) => {
                        Err(error(ErrorKind::Unavailable, e.to_string()))
                    }
                    Err(RaftError::Fatal(e)) => Err(error(ErrorKind::Unavailable, e.to_string())),
                }
            })
            .await
    }

    /// Whether this master started less than a chunkserver timeout ago:
    /// it may not have heard from every live chunkserver yet (locations
    /// are soft state, learned from heartbeats), so what it does not know
    /// of may only be late.
    pub fn learning_servers(&self, now: u64) -> bool {
        now < self.started_ms + self.cfg.chunkserver_timeout_ms
    }

    /// The soft state. Lock order: a caller holding both takes `state()`
    /// first; none takes `state()` while holding this (a reader waiting
    /// behind the applier's write lock would otherwise deadlock with a
    /// reader of the state waiting for this).
    pub fn soft(&self) -> std::sync::MutexGuard<'_, Soft> {
        self.soft.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.applied.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::Semaphore;

    use super::*;

    /// Rounds count themselves and finish only when the test lets them.
    struct Rig {
        rounds: ReadRounds,
        ran: AtomicUsize,
        gate: Semaphore,
    }

    impl Rig {
        async fn read(&self) -> Result<(), Status> {
            self.rounds
                .after_now(|| async {
                    let n = self.ran.fetch_add(1, Ordering::SeqCst);
                    self.gate.acquire().await.expect("open").forget();
                    if n == 0 {
                        Ok(())
                    } else {
                        Err(Status::unavailable(format!("round {n}")))
                    }
                })
                .await
        }
    }

    #[tokio::test]
    async fn reads_waiting_behind_a_round_share_the_next_one() {
        let rig = Arc::new(Rig {
            rounds: ReadRounds::default(),
            ran: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        });
        // The first read starts round 0 and holds it open.
        let first = tokio::spawn({
            let rig = rig.clone();
            async move { rig.read().await }
        });
        while rig.ran.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        // Five reads arrive while round 0 runs: it started before them, so
        // they must not take its outcome; one new round serves all five.
        let later: Vec<_> = (0..5)
            .map(|_| {
                let rig = rig.clone();
                tokio::spawn(async move { rig.read().await })
            })
            .collect();
        tokio::task::yield_now().await;
        rig.gate.add_permits(1);
        first.await.expect("task").expect("round 0 succeeds");
        rig.gate.add_permits(1);
        for r in later {
            let e = r.await.expect("task").expect_err("round 1 fails");
            assert_eq!(e.message(), "round 1");
        }
        assert_eq!(rig.ran.load(Ordering::SeqCst), 2);
    }
}
