//! `gfs admin fsck`: the health of every chunk of the files under a path,
//! as the leader sees it (chunk table plus what chunkservers reported), and
//! the cluster-wide repair work.

use gfs_proto::GfsPath;
use gfs_proto::wire::master::{
    ChunkHealth, FsckChunk, FsckFile, FsckReply, FsckRequest, ServerUsage,
};
use tonic::Status;

use super::duties::{self, Clock, holders};
use super::meta::path;
use super::node::{Node, meta_status};
use crate::repair::Holder;
use crate::state::ChunkMeta;
use gfs_proto::NodeId;

/// Most files listed in one reply.
const MAX_FILES: usize = 10_000;

/// One chunk's health. `written` says whether the file's length reaches
/// into the chunk (a chunk past it may never have been created);
/// `copying_to` is the server a re-replication clone of it is being
/// copied to, whose replica (at an older version until whole) is the copy
/// being made, not a stale one.
pub fn chunk_health(
    meta: Option<ChunkMeta>,
    holders: &[Holder],
    written: bool,
    copying_to: Option<NodeId>,
) -> FsckChunk {
    let Some(m) = meta else {
        return FsckChunk {
            health: ChunkHealth::Missing as i32,
            ..FsckChunk::default()
        };
    };
    let live = holders
        .iter()
        .filter(|h| h.version == m.version && h.live)
        .count() as u32;
    let stale = holders
        .iter()
        .filter(|h| h.version < m.version && Some(h.node) != copying_to)
        .count() as u32;
    let wanted = u32::from(m.replication);
    let health = if live >= wanted {
        ChunkHealth::Healthy
    } else if live == 0 && !written {
        ChunkHealth::Empty
    } else if live == 0 {
        ChunkHealth::Missing
    } else {
        ChunkHealth::UnderReplicated
    };
    FsckChunk {
        version: m.version.0,
        health: health as i32,
        live,
        wanted,
        stale,
        copying: u32::from(copying_to.is_some()),
        ..FsckChunk::default()
    }
}

/// Worst first: missing, under-replicated, healthy, empty.
fn severity(h: i32) -> u8 {
    match ChunkHealth::try_from(h) {
        Ok(ChunkHealth::Missing) => 3,
        Ok(ChunkHealth::UnderReplicated) => 2,
        Ok(ChunkHealth::Healthy) => 1,
        _ => 0,
    }
}

pub async fn fsck(node: &Node, r: FsckRequest) -> Result<FsckReply, Status> {
    if !node.is_leader() {
        return Err(node.not_leader(None));
    }
    let p: GfsPath = if r.path.is_empty() {
        path("/")?
    } else {
        path(&r.path)?
    };
    node.read_gate(false).await?;
    // Taken before the state and soft state, and let go.
    let copies = node.duties.copies();
    let clock = Clock::of(node);
    let chunk_size = node.cfg.chunk_size_bytes;
    let a = node.state();
    let soft = node.soft();
    let files = a.state.files_under(&p).map_err(|e| meta_status(&e))?;
    let mut reply = FsckReply::default();
    for (name, f) in files {
        reply.files_checked += 1;
        let mut file = FsckFile {
            path: name,
            health: ChunkHealth::Healthy as i32,
            length: f.length,
            chunks: Vec::with_capacity(f.chunks.len()),
        };
        for (i, h) in f.chunks.iter().enumerate() {
            let hs = holders(&soft, soft.locations(*h), a.state.draining(), clock);
            let written = (i as u64) * chunk_size < f.length;
            let copying_to = copies.get(h).copied();
            let mut c = chunk_health(a.state.chunk(*h), &hs, written, copying_to);
            c.index = i as u64;
            c.handle = h.0;
            reply.chunks_checked += 1;
            match ChunkHealth::try_from(c.health) {
                Ok(ChunkHealth::Healthy | ChunkHealth::Empty) => reply.healthy += 1,
                Ok(ChunkHealth::UnderReplicated) => reply.under_replicated += 1,
                _ => reply.missing += 1,
            }
            if severity(c.health) > severity(file.health) {
                file.health = c.health;
            }
            file.chunks.push(c);
        }
        let bad = severity(file.health) > 1;
        if (bad || r.all) && reply.files.len() < MAX_FILES {
            if !bad && !r.all {
                file.chunks.clear();
            }
            reply.files.push(file);
        }
    }
    reply.replicas_pending_deletion = duties::pending_deletion(&a.state, &soft);
    reply.deleted_entries = a.state.deleted().count() as u64;
    let mut servers: Vec<ServerUsage> = soft
        .servers()
        .map(|s| ServerUsage {
            node_id: s.id.0,
            addr: s.addr.clone(),
            rack: s.rack.clone(),
            live: s.last_seen_ms + clock.timeout_ms >= clock.now,
            used_bytes: s.used_bytes,
            capacity_bytes: s.capacity_bytes,
            chunks: soft.held_count(s.id) as u64,
            draining: s.draining || a.state.draining().contains(&s.id),
        })
        .collect();
    servers.sort_by_key(|s| s.node_id);
    reply.servers = servers;
    drop(soft);
    drop(a);
    reply.clones_in_flight = node.duties.clones_in_flight() as u64;
    let st = node.duties.stats();
    reply.clones_queued = st.queued;
    reply.clones_done = st.cloned;
    reply.clones_failed = st.failed;
    reply.bytes_cloned = st.bytes_cloned;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use gfs_proto::{ChunkVersion, NodeId};

    use super::*;

    fn holder(node: u64, version: u64, live: bool) -> Holder {
        Holder {
            node: NodeId(node),
            version: ChunkVersion(version),
            confirmed: true,
            live,
            counts: live,
            used_ppm: 0,
            draining: false,
        }
    }

    fn meta(version: u64) -> Option<ChunkMeta> {
        Some(ChunkMeta {
            version: ChunkVersion(version),
            refs: 1,
            replication: 3,
        })
    }

    #[test]
    fn a_copy_being_made_is_not_stale() {
        let hs = [
            holder(1, 5, true),
            holder(2, 5, true),
            holder(3, 0, true),
            holder(4, 4, true),
        ];
        let c = chunk_health(meta(5), &hs, true, Some(NodeId(3)));
        assert_eq!(
            (c.live, c.wanted, c.stale, c.copying),
            (2, 3, 1, 1),
            "{c:?}"
        );
        assert_eq!(c.health, ChunkHealth::UnderReplicated as i32);
        // Without the clone order, the copy's replica is stale like any.
        let c = chunk_health(meta(5), &hs, true, None);
        assert_eq!((c.live, c.stale, c.copying), (2, 2, 0), "{c:?}");
        // A clone ordered and not reported yet.
        let c = chunk_health(meta(5), &hs[..2], true, Some(NodeId(3)));
        assert_eq!((c.live, c.stale, c.copying), (2, 0, 1), "{c:?}");
    }

    #[test]
    fn health_follows_the_live_current_replicas() {
        let all = [holder(1, 5, true), holder(2, 5, true), holder(3, 5, true)];
        let c = chunk_health(meta(5), &all, true, None);
        assert_eq!(c.health, ChunkHealth::Healthy as i32);
        let dead = [holder(1, 5, false)];
        assert_eq!(
            chunk_health(meta(5), &dead, true, None).health,
            ChunkHealth::Missing as i32
        );
        assert_eq!(
            chunk_health(meta(5), &[], false, None).health,
            ChunkHealth::Empty as i32
        );
        assert_eq!(
            chunk_health(None, &all, true, None).health,
            ChunkHealth::Missing as i32
        );
    }
}
