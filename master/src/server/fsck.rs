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

/// Most files listed in one reply.
const MAX_FILES: usize = 10_000;

/// One chunk's health. `written` says whether the file's length reaches
/// into the chunk (a chunk past it may never have been created).
pub fn chunk_health(meta: Option<ChunkMeta>, holders: &[Holder], written: bool) -> FsckChunk {
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
    let stale = holders.iter().filter(|h| h.version < m.version).count() as u32;
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
            let mut c = chunk_health(a.state.chunk(*h), &hs, written);
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
