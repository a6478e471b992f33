//! Administration: cluster status, membership changes, leadership transfer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use gfs_proto::wire::master::master_admin_client::MasterAdminClient;
use gfs_proto::wire::master::master_admin_server::MasterAdmin;
use gfs_proto::wire::master::raft_client::RaftClient;
use gfs_proto::wire::master::{
    AddMasterRequest, DecommissionRequest, Draining, Empty, FsckReply, FsckRequest, Member,
    RemoveMasterRequest, StatusReply, TransferLeaderRequest,
};
use gfs_proto::wire::{ErrorKind, error};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tonic::{Request, Response, Status};

use gfs_proto::NodeId;

use super::network::channel;
use super::node::{Node, now_ms};
use crate::state::Command;

#[derive(Debug, Clone)]
pub struct AdminService {
    pub node: Arc<Node>,
}

fn write_err(node: &Node, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => node.not_leader(Some(f)),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            error(ErrorKind::InvalidArgument, e.to_string())
        }
        RaftError::Fatal(e) => error(ErrorKind::Unavailable, e.to_string()),
    }
}

fn voters(node: &Node) -> BTreeSet<u64> {
    node.raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

async fn change_voters(node: &Node, voters: BTreeSet<u64>) -> Result<Response<Empty>, Status> {
    node.raft
        .change_membership(voters, false)
        .await
        .map_err(|e| write_err(node, e))?;
    Ok(Response::new(Empty {}))
}

/// Asks `target` to start an election and waits (up to `wait`) until this
/// master sees another leader. openraft 0.9 has no transfer primitive, and
/// followers refuse votes while they still hear from a leader (its lease),
/// so the caller first stops heartbeats; the election then succeeds once
/// the followers' lease runs out (`election_max_ms`).
pub async fn hand_over(node: &Node, target: u64, wait: Duration) -> Result<(), Status> {
    let addr = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&target)
        .map(|n| n.addr.clone())
        .ok_or_else(|| {
            error(
                ErrorKind::InvalidArgument,
                format!("{target} is not a member"),
            )
        })?;
    node.raft.runtime_config().heartbeat(false);
    let deadline = tokio::time::Instant::now() + wait;
    let lease = Duration::from_millis(node.cfg.raft.election_max_ms);
    tokio::time::sleep(lease).await;
    let ch = channel(
        &addr,
        Some(node.cfg.listen.ip()),
        node.cfg.auth_token.as_ref(),
    )
    .map_err(|e| error(ErrorKind::Internal, e))?;
    let mut client = RaftClient::new(ch.clone());
    let mut target_status = MasterAdminClient::new(ch);
    let mut metrics = node.raft.metrics();
    loop {
        // A leader whose way in is cut (`reach`) never hears its successor:
        // asked again, the successor would elect itself again.
        let asked =
            tokio::time::timeout(Duration::from_millis(300), target_status.status(Empty {}));
        if let Ok(Ok(r)) = asked.await
            && r.get_ref().state == "leader"
        {
            node.raft.runtime_config().heartbeat(true);
            return Ok(());
        }
        let _ = client.elect(Empty {}).await;
        let elected = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let m = metrics.borrow_and_update().clone();
                if m.current_leader.is_some_and(|l| l != node.cfg.id) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if elected.is_ok() {
            node.raft.runtime_config().heartbeat(true);
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            node.raft.runtime_config().heartbeat(true);
            return Err(error(
                ErrorKind::Unavailable,
                format!("master {target} did not take over in time"),
            ));
        }
    }
}

/// Another voter to hand leadership to: the one whose log is furthest.
pub fn successor(node: &Node) -> Option<u64> {
    let m = node.raft.metrics().borrow().clone();
    let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let matched = m.replication.clone().unwrap_or_default();
    voters
        .into_iter()
        .filter(|v| *v != node.cfg.id)
        .max_by_key(|v| matched.get(v).cloned().flatten().map(|l| l.index))
}

#[tonic::async_trait]
impl MasterAdmin for AdminService {
    async fn status(&self, _req: Request<Empty>) -> Result<Response<StatusReply>, Status> {
        let node = &self.node;
        let m = node.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let (leader_id, leader_addr) = node.leader_hint();
        let (files, chunks, draining) = {
            let a = node.state();
            let soft = node.soft();
            let draining = a
                .state
                .draining()
                .iter()
                .map(|n| {
                    let left = soft.held_count(*n) as u64;
                    Draining {
                        node_id: n.0,
                        chunks_left: left,
                        safe_to_remove: left == 0,
                    }
                })
                .collect();
            (
                a.state.files() as u64,
                a.state.chunk_count() as u64,
                draining,
            )
        };
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        // One lock of the soft state, taken and dropped here: a guard
        // taken inside the struct below would live to its end.
        let (live, heard_ms_ago) = {
            let soft = node.soft();
            let now = now_ms();
            (
                soft.live_count(now, node.cfg.chunkserver_timeout_ms) as u64,
                soft.newest_heartbeat_ms().map(|at| now.saturating_sub(at)),
            )
        };
        Ok(Response::new(StatusReply {
            id: node.cfg.id,
            leader_id,
            leader_addr,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
            chunkservers: live,
            files,
            chunks,
            state: state.to_string(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            draining,
            heard_ms_ago,
        }))
    }

    async fn fsck(&self, req: Request<FsckRequest>) -> Result<Response<FsckReply>, Status> {
        super::fsck::fsck(&self.node, req.into_inner())
            .await
            .map(Response::new)
    }

    async fn decommission(
        &self,
        req: Request<DecommissionRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(error(
                ErrorKind::InvalidArgument,
                "node_id must be positive",
            ));
        }
        let node = &self.node;
        if !node.is_leader() {
            return Err(node.not_leader(None));
        }
        let cmd = Command::SetDraining {
            node: NodeId(r.node_id),
            draining: !r.cancel,
        };
        node.propose(0, 0, cmd).await?;
        tracing::info!(server = r.node_id, cancel = r.cancel, "decommission");
        Ok(Response::new(Empty {}))
    }

    async fn add_master(&self, req: Request<AddMasterRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        if r.id == 0 || r.addr.is_empty() {
            return Err(error(
                ErrorKind::InvalidArgument,
                "id and addr are required",
            ));
        }
        let node = &self.node;
        node.raft
            .add_learner(r.id, BasicNode { addr: r.addr }, true)
            .await
            .map_err(|e| write_err(node, e))?;
        let mut voters = voters(node);
        voters.insert(r.id);
        change_voters(node, voters).await
    }

    async fn remove_master(
        &self,
        req: Request<RemoveMasterRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let node = &self.node;
        let mut voters = voters(node);
        if !voters.remove(&r.id) {
            return Err(error(
                ErrorKind::NotFound,
                format!("{} is not a voter", r.id),
            ));
        }
        if voters.is_empty() {
            return Err(error(
                ErrorKind::InvalidArgument,
                "cannot remove the last master",
            ));
        }
        change_voters(node, voters).await
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<Empty>, Status> {
        let node = &self.node;
        if !node.is_leader() {
            return Err(node.not_leader(None));
        }
        let target = match req.into_inner().to {
            0 => successor(node)
                .ok_or_else(|| error(ErrorKind::InvalidArgument, "no other voter"))?,
            t => t,
        };
        hand_over(node, target, Duration::from_secs(5)).await?;
        Ok(Response::new(Empty {}))
    }
}
