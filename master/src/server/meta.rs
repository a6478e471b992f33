//! The client metadata service. Every request is validated into domain
//! types first (paths into `GfsPath`), then either proposed through the log
//! (mutations) or served from the applied state behind the read gate.

use std::sync::Arc;
use std::time::Duration;

use gfs_proto::wire::master::master_meta_server::MasterMeta;
use gfs_proto::wire::master::{
    ChunkInfo, CreateRequest, DeleteReply, DeleteRequest, DeletedEntry, Empty, FileInfo,
    ListDeletedReply, ListDeletedRequest, ListReply, ListRequest, LocateReply, LocateRequest,
    MkdirRequest, RenameRequest, ReportLengthRequest, Session, SetPolicyRequest, SnapshotReply,
    SnapshotRequest, StatRequest, UndeleteReply, UndeleteRequest, WriteChunkRequest,
};
use gfs_proto::wire::{ErrorKind, error};
use gfs_proto::{ChunkHandle, ChunkVersion, GfsPath, NodeId};
use tonic::{Request, Response, Status};

use super::node::{Node, meta_status, now_ms};
use crate::placement::place;
use crate::state::{Command, DirPolicy, FileMeta, Inode, MAX_LIST_PAGE, MAX_REPLICATION, Reply};

#[derive(Debug, Clone)]
pub struct MetaService {
    pub node: Arc<Node>,
}

pub fn path(raw: &str) -> Result<GfsPath, Status> {
    GfsPath::parse(raw).map_err(|e| error(ErrorKind::InvalidPath, format!("`{raw}`: {e}")))
}

fn session(s: Option<Session>) -> (u64, u64) {
    s.map(|s| (s.client_id, s.seq)).unwrap_or((0, 0))
}

fn info(name: String, inode: &Inode) -> FileInfo {
    match inode {
        Inode::Dir { mtime_ms, policy } => FileInfo {
            name,
            is_dir: true,
            length: 0,
            mtime_ms: *mtime_ms,
            replication: policy
                .as_ref()
                .and_then(|p| p.replication)
                .map_or(0, u32::from),
            chunks: 0,
            retention_ms: policy.as_ref().and_then(|p| p.retention_ms).unwrap_or(0),
        },
        Inode::File(f) => FileInfo {
            name,
            is_dir: false,
            length: f.length,
            mtime_ms: f.mtime_ms,
            replication: u32::from(f.replication),
            chunks: f.chunks.len() as u64,
            retention_ms: 0,
        },
    }
}

/// The chunk's version in the applied state (`fallback` if it has none).
pub(crate) fn version_of(node: &Node, handle: ChunkHandle, fallback: ChunkVersion) -> ChunkVersion {
    node.state()
        .state
        .chunk(handle)
        .map_or(fallback, |c| c.version)
}

/// Live servers for a new chunk's replicas, their space reserved.
fn place_new(node: &Node, replication: u8, now: u64) -> Result<Vec<NodeId>, Status> {
    let timeout = node.cfg.chunkserver_timeout_ms;
    let draining = node.state().state.draining().clone();
    let views = node.soft().views(now, timeout, &draining);
    let chosen = place(&views, usize::from(replication), node.cfg.min_free_bytes);
    // A master started less than a chunkserver timeout ago (a leader
    // killed and restarted, then elected again) may not have heard from
    // every live server yet: too few is then "retry", not a chunk placed
    // short of its replicas nor "no space" (a writer failed on that).
    if chosen.len() < usize::from(replication) && node.learning_servers(now) {
        return Err(error(
            ErrorKind::Unavailable,
            format!(
                "this master is still learning which chunkservers are live ({} of {replication} \
                 replicas placeable); retry",
                chosen.len()
            ),
        ));
    }
    if chosen.is_empty() {
        return Err(error(
            ErrorKind::NoSpace,
            "no live chunkserver with free space to place a chunk on",
        ));
    }
    let mut soft = node.soft();
    for n in &chosen {
        soft.reserve(*n, node.cfg.chunk_size_bytes);
    }
    Ok(chosen)
}

pub(crate) fn unexpected(r: Reply) -> Status {
    error(ErrorKind::Internal, format!("unexpected reply {r:?}"))
}

impl MetaService {
    /// Chunk `index` of `p` is shared with a snapshot: each live replica
    /// copies it locally under a new handle, then the file moves to the
    /// copy. Returns the chunk the file holds afterwards.
    async fn copy_on_write(
        &self,
        p: &GfsPath,
        index: u64,
        old: ChunkHandle,
        version: ChunkVersion,
    ) -> Result<(ChunkHandle, ChunkVersion), Status> {
        let node = &self.node;
        let timeout = node.cfg.chunkserver_timeout_ms;
        let replicas: Vec<(NodeId, String)> = node
            .soft()
            .replicas(old, version, now_ms(), timeout)
            .iter()
            .map(|s| (s.id, s.addr.clone()))
            .collect();
        if replicas.is_empty() {
            return Err(error(
                ErrorKind::Unavailable,
                format!("no live replica of shared chunk {old} to copy"),
            ));
        }
        let new = match node.propose(0, 0, Command::AllocHandle).await? {
            Reply::Handle { handle } => handle,
            other => return Err(unexpected(other)),
        };
        let copied = node
            .chunkservers
            .copy_local(old, new, version, &replicas)
            .await;
        if copied.is_empty() {
            return Err(error(
                ErrorKind::Unavailable,
                format!("no replica could copy shared chunk {old}; retry"),
            ));
        }
        let cmd = Command::SplitChunk {
            path: p.clone(),
            index,
            old,
            new,
            version,
        };
        match node.propose(0, 0, cmd).await? {
            Reply::Chunk {
                handle, version, ..
            } => {
                if handle == new {
                    let mut soft = node.soft();
                    for n in &copied {
                        soft.expect(new, *n, version);
                    }
                    tracing::info!(from = %old, to = %new, replicas = copied.len(), "copied a shared chunk");
                }
                Ok((handle, version))
            }
            other => Err(unexpected(other)),
        }
    }

    fn file(&self, p: &GfsPath) -> Result<FileMeta, Status> {
        let a = self.node.state();
        match a.state.stat(p).map_err(|e| meta_status(&e))? {
            Inode::File(f) => Ok(f.clone()),
            Inode::Dir { .. } => Err(error(
                ErrorKind::IsADirectory,
                format!("{p} is a directory"),
            )),
        }
    }

    /// Where chunk `index` is, for readers and writers. The lease is shown
    /// only when it is confirmed and every replica of its grant is live
    /// here: a writer handed a shorter list would leave one behind at the
    /// same version, so it must ask `WriteChunk`, which versions it out.
    /// Whether a chunk's replicas may only be late here
    /// (`grant::still_learning`): an empty list would tell a reader the
    /// chunk has no replica at all.
    fn still_learning(&self, handle: ChunkHandle, now: u64) -> bool {
        let members = self
            .node
            .state()
            .state
            .members(handle)
            .map(<[NodeId]>::to_vec);
        members
            .is_some_and(|m| super::grant::still_learning(&self.node, &self.node.soft(), &m, now))
    }

    /// Adds chunk `index` of `p` on `replicas` with its first lease, in
    /// one log entry, and completes that grant (the replicas create the
    /// chunk at the lease's version, then a `ConfirmVersion`) before any
    /// client hears of it. Returns the chunk and its version; if another
    /// request added the chunk first, that chunk, with nothing placed.
    async fn add_chunk(
        &self,
        p: &GfsPath,
        index: u64,
        replicas: Vec<NodeId>,
        replication: u8,
    ) -> Result<(ChunkHandle, ChunkVersion), Status> {
        let node = &self.node;
        // Under the lock every grant holds until it is confirmed: the
        // leader's duty would otherwise take the new chunk's grant for one
        // a dead leader left unconfirmed.
        let _grants = node.grants.lock().await;
        let cmd = Command::AddChunkLeased {
            path: p.clone(),
            index,
            replicas,
            duration_ms: node.cfg.lease_ms,
            grace_ms: node.cfg.lease_grace_ms,
        };
        match node.propose(0, 0, cmd).await? {
            Reply::ChunkLeased {
                handle,
                replicas,
                lease,
                ..
            } => {
                {
                    // Counted at the new version before the replicas take
                    // it, as `grant` does.
                    let mut soft = node.soft();
                    for n in &replicas {
                        soft.expect(handle, *n, lease.version);
                    }
                }
                let again =
                    super::grant::finish(node, handle, (lease, true), &replicas, true, true)
                        .await?;
                if !again.is_empty() {
                    let replication = usize::from(replication);
                    super::grant::grant_rounds(node, handle, lease.version, replication, true)
                        .await?;
                }
                // Another round bumped the version again.
                let version = node.state().state.chunk(handle).map(|c| c.version);
                Ok((handle, version.unwrap_or(lease.version)))
            }
            Reply::Chunk {
                handle, version, ..
            } => Ok((handle, version)),
            other => Err(unexpected(other)),
        }
    }

    fn chunk_info(&self, index: u64, handle: ChunkHandle) -> ChunkInfo {
        let now = now_ms();
        let timeout = self.node.cfg.chunkserver_timeout_ms;
        let (version, lease, members) = {
            let a = self.node.state();
            (
                a.state
                    .chunk(handle)
                    .map(|c| c.version)
                    .unwrap_or(ChunkVersion(0)),
                a.state
                    .lease(handle)
                    .filter(|_| !a.state.unconfirmed(handle)),
                a.state.members(handle).map(<[NodeId]>::to_vec),
            )
        };
        let soft = self.node.soft();
        let live = soft.replicas(handle, version, now, timeout);
        let whole = members.is_none_or(|m| m.iter().all(|n| live.iter().any(|s| s.id == *n)));
        let replicas = live
            .into_iter()
            .map(|s| gfs_proto::wire::master::Replica {
                node_id: s.id.0,
                addr: s.addr.clone(),
            })
            .collect();
        let (primary, lease_expires_ms) = match lease {
            Some(l) if l.expires_at_ms > now && whole => (l.primary.0, l.expires_at_ms),
            _ => (0, 0),
        };
        ChunkInfo {
            index,
            handle: handle.0,
            version: version.0,
            replicas,
            primary,
            lease_expires_ms,
            lease_left_ms: lease_expires_ms.saturating_sub(now),
        }
    }
}

#[tonic::async_trait]
impl MasterMeta for MetaService {
    async fn mkdir(&self, req: Request<MkdirRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        let (c, s) = session(r.session);
        let cmd = Command::Mkdir {
            path: p,
            parents: r.parents,
        };
        self.node.propose(c, s, cmd).await?;
        Ok(Response::new(Empty {}))
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        let replication = match r.replication {
            // Inherited from the directories above, else the default.
            0 => {
                let a = self.node.state();
                a.state
                    .policy_at(&p)
                    .replication
                    .unwrap_or(self.node.cfg.default_replication)
            }
            n if n <= u32::from(MAX_REPLICATION) => n as u8,
            n => {
                return Err(error(
                    ErrorKind::InvalidArgument,
                    format!("replication {n} exceeds {MAX_REPLICATION}"),
                ));
            }
        };
        let (c, s) = session(r.session);
        let cmd = Command::Create {
            path: p,
            replication,
        };
        self.node.propose(c, s, cmd).await?;
        Ok(Response::new(Empty {}))
    }

    async fn stat(&self, req: Request<StatRequest>) -> Result<Response<FileInfo>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        self.node.read_gate(r.stale).await?;
        let a = self.node.state();
        let inode = a.state.stat(&p).map_err(|e| meta_status(&e))?;
        Ok(Response::new(info(p.as_str().to_string(), &inode)))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        if r.after.contains('/') || r.after.contains('\0') {
            return Err(error(ErrorKind::InvalidArgument, "`after` must be a name"));
        }
        let limit = if r.limit == 0 {
            1000
        } else {
            (r.limit as usize).min(MAX_LIST_PAGE)
        };
        self.node.read_gate(r.stale).await?;
        let a = self.node.state();
        let after = (!r.after.is_empty()).then_some(r.after.as_str());
        let page = a
            .state
            .list(&p, after, limit)
            .map_err(|e| meta_status(&e))?;
        Ok(Response::new(ListReply {
            entries: page
                .entries
                .into_iter()
                .map(|e| info(e.name, &e.inode))
                .collect(),
            next_after: page.next_after.unwrap_or_default(),
        }))
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let (from, to) = (path(&r.from)?, path(&r.to)?);
        let (c, s) = session(r.session);
        self.node
            .propose(c, s, Command::Rename { from, to })
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteReply>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        let (c, s) = session(r.session);
        let cmd = Command::Delete {
            path: p,
            recursive: r.recursive,
            purge: r.purge,
        };
        match self.node.propose(c, s, cmd).await? {
            Reply::Deleted { id } => Ok(Response::new(DeleteReply {
                deleted_id: id,
                purged: 0,
            })),
            Reply::Reclaimed { entries, .. } => Ok(Response::new(DeleteReply {
                deleted_id: 0,
                purged: entries,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn undelete(
        &self,
        req: Request<UndeleteRequest>,
    ) -> Result<Response<UndeleteReply>, Status> {
        let r = req.into_inner();
        let (c, s) = session(r.session);
        let cmd = Command::Undelete { id: r.deleted_id };
        match self.node.propose(c, s, cmd).await? {
            Reply::Undeleted { path } => Ok(Response::new(UndeleteReply {
                path: path.as_str().to_string(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn set_policy(&self, req: Request<SetPolicyRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        let replication = match r.replication {
            0 => None,
            n => Some(u8::try_from(n).map_err(|_| {
                error(
                    ErrorKind::InvalidArgument,
                    format!("replication {n} is too large"),
                )
            })?),
        };
        let policy = DirPolicy {
            replication,
            retention_ms: (r.retention_ms != 0).then_some(r.retention_ms),
        };
        let (c, s) = session(r.session);
        self.node
            .propose(c, s, Command::SetPolicy { path: p, policy })
            .await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_deleted(
        &self,
        req: Request<ListDeletedRequest>,
    ) -> Result<Response<ListDeletedReply>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            (r.limit as usize).min(MAX_LIST_PAGE)
        };
        self.node.read_gate(false).await?;
        let retention = self.node.cfg.retention_ms;
        let a = self.node.state();
        let mut entries: Vec<DeletedEntry> = a
            .state
            .deleted()
            .filter(|(id, _)| *id > r.after)
            .take(limit + 1)
            .map(|(id, d)| {
                let (files, bytes) = d.entries.iter().fold((0, 0), |(n, b), (_, i)| match i {
                    Inode::File(f) => (n + 1, b + f.length),
                    Inode::Dir { .. } => (n, b),
                });
                DeletedEntry {
                    id,
                    path: d.path.as_str().to_string(),
                    deleted_at_ms: d.deleted_at_ms,
                    reclaim_at_ms: d
                        .deleted_at_ms
                        .saturating_add(d.retention_ms.unwrap_or(retention)),
                    files,
                    bytes,
                }
            })
            .collect();
        let next_after = if entries.len() > limit {
            entries.truncate(limit);
            entries.last().map_or(0, |e| e.id)
        } else {
            0
        };
        Ok(Response::new(ListDeletedReply {
            entries,
            next_after,
        }))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let r = req.into_inner();
        let (src, dst) = (path(&r.src)?, path(&r.dst)?);
        let (c, s) = session(r.session);
        let node = &self.node;
        let (files, chunks, leases) =
            match node.propose(c, s, Command::Snapshot { src, dst }).await? {
                Reply::Snapshotted {
                    files,
                    chunks,
                    leases,
                } => (files, chunks, leases),
                other => return Err(unexpected(other)),
            };
        // The leases ended in the log; their primaries stop now. One that
        // cannot be told keeps writing until its lease runs out: wait.
        let mut waits = tokio::task::JoinSet::new();
        for (h, primary, version) in leases {
            let addr = node.soft().server(primary).map(|s| s.addr.clone());
            let node = node.clone();
            waits.spawn(async move {
                let req = gfs_proto::wire::chunk::RevokeRequest {
                    handle: h.0,
                    version: version.0,
                };
                let revoked = match addr {
                    Some(a) => node.chunkservers.revoke(&a, req).await.is_ok(),
                    None => false,
                };
                if !revoked {
                    let until = now_ms() + node.cfg.lease_ms + node.cfg.lease_grace_ms;
                    tracing::info!(chunk = %h, %primary, "primary unreachable; waiting out its lease");
                    tokio::time::sleep(Duration::from_millis(until.saturating_sub(now_ms()))).await;
                }
            });
        }
        while waits.join_next().await.is_some() {}
        Ok(Response::new(SnapshotReply { files, chunks }))
    }

    async fn locate(&self, req: Request<LocateRequest>) -> Result<Response<LocateReply>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        self.node.read_gate(r.stale).await?;
        let f = self.file(&p)?;
        let count = (r.count.clamp(1, 1024)) as usize;
        let first = usize::try_from(r.first_index).unwrap_or(usize::MAX);
        let found: Vec<ChunkInfo> = f
            .chunks
            .iter()
            .enumerate()
            .skip(first)
            .take(count)
            .map(|(i, h)| self.chunk_info(i as u64, *h))
            .collect();
        let now = now_ms();
        if let Some(c) = found
            .iter()
            .find(|c| c.replicas.is_empty() && self.still_learning(ChunkHandle(c.handle), now))
        {
            return Err(error(
                ErrorKind::Unavailable,
                format!(
                    "this master is still learning where chunk {} is; retry",
                    c.index
                ),
            ));
        }
        Ok(Response::new(LocateReply {
            length: f.length,
            chunks: f.chunks.len() as u64,
            found,
            chunk_size_bytes: self.node.cfg.chunk_size_bytes,
        }))
    }

    async fn write_chunk(
        &self,
        req: Request<WriteChunkRequest>,
    ) -> Result<Response<ChunkInfo>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        let node = &self.node;
        if !node.is_leader() {
            return Err(node.not_leader(None));
        }
        node.read_gate(false).await?;
        let f = self.file(&p)?;
        let now = now_ms();
        let timeout = node.cfg.chunkserver_timeout_ms;
        // Place only a chunk that does not exist yet; the command is
        // idempotent by index, so a racing or retried request gets the
        // chunk that won.
        let existing = usize::try_from(r.index)
            .ok()
            .and_then(|i| f.chunks.get(i).copied());
        let replicas = if r.index == f.chunks.len() as u64 {
            place_new(node, f.replication, now)?
        } else {
            Vec::new()
        };
        // An existing chunk needs no log entry (the common case: every
        // write to a chunk asks until its client caches the lease).
        let (handle, version, placed) = match existing {
            // A chunk never written whose placement died with the leader
            // that made it (no replica holds it, so none reports it): it
            // is placed again.
            Some(h)
                if node.state().state.pristine(h)
                    && node
                        .soft()
                        .replicas(h, ChunkVersion(1), now, timeout)
                        .is_empty() =>
            {
                (h, ChunkVersion(1), place_new(node, f.replication, now)?)
            }
            Some(h) => {
                let v = node.state().state.chunk(h).map(|c| c.version);
                (h, v.unwrap_or(ChunkVersion(0)), Vec::new())
            }
            None => {
                let (h, v) = self.add_chunk(&p, r.index, replicas, f.replication).await?;
                (h, v, Vec::new())
            }
        };
        {
            let mut soft = node.soft();
            for n in &placed {
                soft.expect(handle, *n, version);
            }
        }
        let shared = node.state().state.chunk(handle).is_some_and(|c| c.refs > 1);
        let (handle, version) = if shared {
            self.copy_on_write(&p, r.index, handle, version).await?
        } else {
            (handle, version)
        };
        let mut failed: Vec<NodeId> = r.failed.iter().map(|n| NodeId(*n)).collect();
        if !failed.is_empty() {
            // A server that failed a writer may be stalled yet heartbeating,
            // or not declared dead yet: new chunks go elsewhere first.
            let mut soft = node.soft();
            for n in &failed {
                soft.suspect(*n, now);
            }
        }
        // A replica of the lease that stopped heartbeating is treated as
        // failed (versioned out), never left out of the writer's list.
        for n in super::grant::absent_members(node, handle, now)? {
            if !failed.contains(&n) {
                failed.push(n);
            }
        }
        // The common case: a live lease and nothing to report.
        let leased = {
            let a = node.state();
            a.state.lease(handle).is_some_and(|l| l.expires_at_ms > now)
                && !a.state.unconfirmed(handle)
        };
        if failed.is_empty() && leased {
            let info = self.chunk_info(r.index, handle);
            if info.replicas.len() < usize::from(f.replication) {
                node.duties.mark_blocked(handle, now);
            }
            return Ok(Response::new(info));
        }
        // A reported primary that still heartbeats (a writer found it
        // limping: `gfs_client::limping`) is asked to give its lease up,
        // so the next is granted once it did rather than once its lease
        // and the grace period ran out, which a primary still taking
        // mutations keeps extending. In the background: one whose disk
        // hangs may not answer (and gives its leases up by itself), and
        // the writer, told `LeaseHeld` meanwhile, retries.
        let reported_primary = node
            .state()
            .state
            .lease(handle)
            .filter(|l| l.expires_at_ms + node.cfg.lease_grace_ms > now)
            .map(|l| l.primary)
            .filter(|p| failed.contains(p) && node.soft().heard_lately(*p, now));
        if let Some(p) = reported_primary
            && node
                .revoking
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(handle)
        {
            let node = node.clone();
            tokio::spawn(async move {
                if let Err(e) = super::grant::revoke_lease(&node, handle, "a writer's report").await
                {
                    tracing::info!(chunk = %handle, primary = %p, error = %e, "could not revoke a reported primary's lease");
                }
                node.revoking
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&handle);
            });
        }
        // One lease decision at a time: two clients reporting different
        // failed replicas must not each pick candidates from a view the
        // other is changing, or a replica left out of one's bump could be
        // given the next version by the other after missing acknowledged
        // mutations.
        let _grants = node.grants.lock().await;
        let version = version_of(node, handle, version);
        let lease = node.state().state.lease(handle);
        let replication = usize::from(f.replication);
        let unconfirmed = node.state().state.unconfirmed(handle);
        let (bump, live) = {
            // Forgetting the failed replicas and counting the rest in one
            // view: a heartbeat cannot bring one back in between.
            let mut soft = node.soft();
            // A report the grant of this version already dealt with needs
            // no other (`Soft::was_left_out`).
            let counted = failed
                .iter()
                .any(|n| !soft.was_left_out(handle, version, *n));
            // A failed replica still holds every acknowledged mutation (one
            // is acknowledged only once every replica applied it, and a
            // replica applies a chunk's mutations in order): it is left
            // out of the next version only if another replica can carry
            // it. With none left (a lossy network can fail every replica
            // in turn), forgetting them would leave the chunk none at all
            // until each server's next full report.
            let floor = if unconfirmed {
                ChunkVersion(version.0.saturating_sub(1))
            } else {
                version
            };
            let others = soft
                .replicas(handle, floor, now, timeout)
                .iter()
                .any(|s| !failed.contains(&s.id));
            for n in failed.iter().filter(|_| others) {
                // It missed a mutation: it must not count as current even
                // before the new version makes it stale.
                soft.forget(handle, *n);
            }
            // An unconfirmed grant was never handed out: grant again.
            let bump = lease.is_some_and(|l| l.version == version && counted) || unconfirmed;
            (bump, soft.replicas(handle, version, now, timeout).len())
        };
        if live < replication {
            node.duties.mark_blocked(handle, now);
        }
        if let Some(l) = lease
            && l.expires_at_ms > now
            && !bump
        {
            return Ok(Response::new(self.chunk_info(r.index, handle)));
        }
        if node.duties.cloning(handle) {
            // A copy in flight would miss mutations under a new lease.
            return Err(error(
                ErrorKind::LeaseHeld,
                format!("chunk {handle} is being re-replicated; retry shortly"),
            ));
        }
        super::grant::grant_rounds(node, handle, version, replication, bump).await?;
        if bump && !failed.is_empty() {
            // The failed servers were forgotten before the grant, so none
            // of its rounds counted them.
            let now_at = version_of(node, handle, version);
            node.soft().left_out(handle, now_at, &failed);
        }
        let info = self.chunk_info(r.index, handle);
        tracing::debug!(
            chunk = %handle,
            ?failed,
            version = info.version,
            primary = info.primary,
            replicas = ?info.replicas.iter().map(|r| r.node_id).collect::<Vec<_>>(),
            "granted for a writer"
        );
        Ok(Response::new(info))
    }
    async fn report_length(
        &self,
        req: Request<ReportLengthRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let p = path(&r.path)?;
        let (c, s) = session(r.session);
        let cmd = Command::SetLength {
            path: p,
            length: r.length,
        };
        self.node.propose(c, s, cmd).await?;
        Ok(Response::new(Empty {}))
    }
}
