//! Heartbeats from chunkservers. Every master records them (so a new leader
//! starts with a warm location map); only the leader extends leases.

use std::sync::Arc;
use std::time::Duration;

use gfs_proto::wire::master::master_chunkserver_server::MasterChunkserver;
use gfs_proto::wire::master::{HeartbeatReply, HeartbeatRequest};
use gfs_proto::wire::{ErrorKind, error};
use gfs_proto::{ChunkHandle, ChunkVersion, NodeId};
use tonic::{Request, Response, Status};

use super::node::{Node, now_ms};
use super::soft::Beat;
use crate::state::{Command, Reply};

/// Most chunks one report may name: 64 TiB of 64 MiB chunks.
pub const MAX_REPORT_CHUNKS: usize = 1 << 20;
const MAX_FIELD_BYTES: usize = 256;

#[derive(Debug, Clone)]
pub struct ChunkserverService {
    pub node: Arc<Node>,
}

fn validate(r: &HeartbeatRequest) -> Result<(), Status> {
    if r.node_id == 0 {
        return Err(error(
            ErrorKind::InvalidArgument,
            "node_id must be positive",
        ));
    }
    if r.addr.is_empty() || r.addr.len() > MAX_FIELD_BYTES || r.rack.len() > MAX_FIELD_BYTES {
        return Err(error(
            ErrorKind::InvalidArgument,
            "addr must be 1..=256 bytes and rack at most 256",
        ));
    }
    if [
        r.chunks.len(),
        r.extend_leases.len(),
        r.changed.len(),
        r.removed.len(),
        r.relinquish.len(),
    ]
    .iter()
    .any(|n| *n > MAX_REPORT_CHUNKS)
    {
        return Err(error(
            ErrorKind::InvalidArgument,
            "report names too many chunks",
        ));
    }
    if r.used_bytes > r.capacity_bytes {
        return Err(error(
            ErrorKind::InvalidArgument,
            "used_bytes exceeds capacity_bytes",
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl MasterChunkserver for ChunkserverService {
    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let r = req.into_inner();
        validate(&r)?;
        let node = &self.node;
        let id = NodeId(r.node_id);
        let stalled = Duration::from_millis(r.disk_stalled_ms);
        let beat = Beat {
            id,
            addr: r.addr,
            rack: r.rack,
            capacity_bytes: r.capacity_bytes,
            used_bytes: r.used_bytes,
            draining: r.draining,
            chunks: r.full_report.then(|| {
                r.chunks
                    .iter()
                    .map(|c| (ChunkHandle(c.handle), ChunkVersion(c.version)))
                    .collect()
            }),
            changed: r
                .changed
                .iter()
                .map(|c| (ChunkHandle(c.handle), ChunkVersion(c.version)))
                .collect(),
            removed: r.removed.iter().map(|h| ChunkHandle(*h)).collect(),
        };
        let want_full_report = {
            let (mut soft, now) = (node.soft(), now_ms());
            let owed = soft.beat(beat, now);
            if stalled >= gfs_proto::data::PROBE.disk_stalled {
                // Heartbeating, but its disks have stopped: placed on last,
                // as a server a writer reported failed (before any has).
                soft.suspect(id, now);
            }
            owed
        };
        let (leader_id, _) = node.leader_hint();
        let mut reply = HeartbeatReply {
            leader: leader_id == node.cfg.id,
            leader_id,
            want_full_report,
            extended: Vec::new(),
            lease_expires_ms: 0,
            delete_chunks: Vec::new(),
            now_ms: 0,
        };
        if reply.leader && !r.relinquish.is_empty() {
            let cmd = Command::ReleaseLeases {
                primary: id,
                handles: r.relinquish.iter().map(|h| ChunkHandle(*h)).collect(),
            };
            node.propose(0, 0, cmd).await?;
        }
        if reply.leader && !want_full_report {
            reply.delete_chunks =
                super::duties::collect_garbage(node, id, node.cfg.deletes_per_heartbeat);
        }
        if reply.leader && !r.extend_leases.is_empty() {
            let duration_ms = node.cfg.lease_ms;
            let cmd = Command::ExtendLeases {
                primary: id,
                handles: r.extend_leases.iter().map(|h| ChunkHandle(*h)).collect(),
                duration_ms,
            };
            let stamped = now_ms();
            if let Reply::Extended { handles } = node.propose(0, 0, cmd).await? {
                reply.extended = handles.into_iter().map(|h| h.0).collect();
                reply.lease_expires_ms = stamped + duration_ms;
            }
        }
        // Last: no later than the answer leaves, so a chunkserver's
        // estimate of this clock (`now_ms` plus the time since it asked)
        // is never behind it.
        reply.now_ms = now_ms();
        Ok(Response::new(reply))
    }
}
