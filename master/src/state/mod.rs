//! The master's replicated state machine, as pure code: no I/O, no clock,
//! no randomness. The leader stamps the time into every [`Request`]; every
//! replica applying the same requests in the same order reaches the same
//! state and the same replies.
//!
//! State: the namespace (a prefix-compressed [`PathTable`] from full path to
//! [`Inode`]), the chunk table (version and reference count per handle, and
//! the handle allocator), lease records, deleted files awaiting reclaim, and
//! the recent replies of each client session (so a retried mutation gets
//! its first reply instead of a second execution).

mod pack;
pub mod persist;
pub mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::ControlFlow;

use gfs_proto::{ChunkHandle, ChunkVersion, GfsPath, NodeId};
use serde::{Deserialize, Serialize};

pub use table::PathTable;

/// Replies remembered per client session.
pub const SESSION_REPLIES: usize = 32;
/// A session unseen for this long is forgotten.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Largest page a list returns.
pub const MAX_LIST_PAGE: usize = 10_000;
pub const MAX_REPLICATION: u8 = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub length: u64,
    pub mtime_ms: u64,
    pub replication: u8,
    pub chunks: Vec<ChunkHandle>,
}

/// A directory's policy for what is created or deleted below it; unset
/// fields inherit from the nearest ancestor that sets them (then the
/// master's defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPolicy {
    /// Replication of new files.
    pub replication: Option<u8>,
    /// How long deleted files stay recoverable.
    pub retention_ms: Option<u64>,
}

impl DirPolicy {
    fn is_empty(&self) -> bool {
        self.replication.is_none() && self.retention_ms.is_none()
    }

    /// `self`, with unset fields taken from `outer`.
    fn or(self, outer: DirPolicy) -> DirPolicy {
        DirPolicy {
            replication: self.replication.or(outer.replication),
            retention_ms: self.retention_ms.or(outer.retention_ms),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Inode {
    /// A directory; most have no policy (the box keeps them small).
    Dir {
        mtime_ms: u64,
        policy: Option<Box<DirPolicy>>,
    },
    File(FileMeta),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub version: ChunkVersion,
    /// Files (live, deleted or snapshotted) referencing the chunk.
    pub refs: u32,
    /// Replicas wanted: the highest replication of the files referencing
    /// it (re-replication works from the chunk table alone).
    pub replication: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub primary: NodeId,
    pub version: ChunkVersion,
    pub expires_at_ms: u64,
}

/// A deleted file or directory tree: hidden, with its deletion time, until
/// it is undeleted or reclaimed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub path: GfsPath,
    pub deleted_at_ms: u64,
    /// Entries relative to `path` ("" is `path` itself), in path order.
    pub entries: Vec<(String, Inode)>,
    /// Retention that applied where it was deleted (`None`: the master's).
    pub retention_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client session; 0 means "no deduplication".
    pub client: u64,
    /// Per-session request number; a retry reuses it.
    pub seq: u64,
    /// Leader's clock when it proposed the request.
    pub now_ms: u64,
    pub cmd: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Mkdir {
        path: GfsPath,
        parents: bool,
    },
    /// Exclusive create of an empty file.
    Create {
        path: GfsPath,
        replication: u8,
    },
    /// Atomic rename of a file or a whole directory tree.
    Rename {
        from: GfsPath,
        to: GfsPath,
    },
    /// Hides the file or tree; it stays recoverable until reclaimed. With
    /// `purge` it is reclaimed at once. Deleting a path that only exists as
    /// deleted entries purges those.
    Delete {
        path: GfsPath,
        recursive: bool,
        purge: bool,
    },
    /// Drops deleted entries for good (their retention ran out): chunks no
    /// file references any more leave the chunk table, and chunkservers
    /// are told to delete them. Entries already gone are skipped.
    Reclaim {
        ids: Vec<u64>,
    },
    Undelete {
        id: u64,
    },
    /// Adds chunk number `index` to a file. Asking for an index the file
    /// already has returns that chunk, so racing appenders and retries
    /// agree on one chunk. `replicas` is the leader's placement, echoed.
    AddChunk {
        path: GfsPath,
        index: u64,
        replicas: Vec<NodeId>,
    },
    /// Grants (bumping the version) or extends a chunk lease. With `bump`,
    /// a live lease of the same primary gets a new version too: a replica
    /// failed a mutation, and must be stale from now on.
    GrantLease {
        handle: ChunkHandle,
        primary: NodeId,
        duration_ms: u64,
        grace_ms: u64,
        bump: bool,
    },
    /// Extends the leases `primary` holds on `handles` (heartbeats).
    ExtendLeases {
        primary: NodeId,
        handles: Vec<ChunkHandle>,
        duration_ms: u64,
    },
    /// The primary gives up its leases on `handles` (it failed them
    /// locally and refuses further mutations under them), so another
    /// primary can be chosen without waiting for expiry.
    ReleaseLeases {
        primary: NodeId,
        handles: Vec<ChunkHandle>,
    },
    /// Raises a file's length (never lowers it).
    SetLength {
        path: GfsPath,
        length: u64,
    },
    /// Copy-on-write snapshot of a file or a tree: `dst` gets the same
    /// metadata and shares every chunk (reference counts go up). Leases on
    /// the shared chunks end here; the leader then takes them back from
    /// their primaries, so no later write reaches a shared chunk.
    Snapshot {
        src: GfsPath,
        dst: GfsPath,
    },
    /// Allocates a chunk handle for the copy of a shared chunk.
    AllocHandle,
    /// Sets a directory's policy (unset fields inherit).
    SetPolicy {
        path: GfsPath,
        policy: DirPolicy,
    },
    /// Starts (or stops) draining a chunkserver: it gets no new replicas,
    /// its replicas stop counting, and the leader copies them elsewhere.
    SetDraining {
        node: NodeId,
        draining: bool,
    },
    /// Chunk `index` of `path`, shared (`old`), is replaced by its copy
    /// `new` at `version` (made by each replica's chunkserver). If the
    /// file no longer holds `old` there, nothing changes and the reply
    /// names the chunk it holds.
    SplitChunk {
        path: GfsPath,
        index: u64,
        old: ChunkHandle,
        new: ChunkHandle,
        version: ChunkVersion,
    },
    /// Several clients' requests in one log entry, applied in order, each
    /// with its own session (so each is deduplicated on its own) and the
    /// outer request's time. The leader batches concurrent proposals so a
    /// burst of creates costs one entry, not one each.
    Batch(Vec<Request>),
    /// `replicas` took the version `GrantLease` gave the chunk and no other
    /// candidate refused it; the grant is complete, and these replicas are
    /// the ones every writer under it is sent to. (After `Batch`: log
    /// entries written before it existed keep their encoding.)
    ConfirmVersion {
        handle: ChunkHandle,
        version: ChunkVersion,
        replicas: Vec<NodeId>,
    },
    /// `AddChunk` and the new chunk's first lease in one entry: a chunk
    /// added here gets a lease for `replicas[0]`, as `GrantLease` would
    /// give it right after (version 2, unconfirmed until `ConfirmVersion`),
    /// and the reply is `ChunkLeased`. An index the file already has
    /// returns that chunk as `Chunk`, with no replicas and no grant: the
    /// placement was not used. (After `ConfirmVersion`, for the same
    /// reason.)
    AddChunkLeased {
        path: GfsPath,
        index: u64,
        replicas: Vec<NodeId>,
        duration_ms: u64,
        grace_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Deleted {
        id: u64,
    },
    /// Entries reclaimed for good, and the chunks that left the table.
    Reclaimed {
        entries: u64,
        chunks: u64,
    },
    Undeleted {
        path: GfsPath,
    },
    Chunk {
        handle: ChunkHandle,
        version: ChunkVersion,
        index: u64,
        replicas: Vec<NodeId>,
    },
    Lease {
        handle: ChunkHandle,
        lease: Lease,
        granted: bool,
    },
    Extended {
        handles: Vec<ChunkHandle>,
    },
    Snapshotted {
        files: u64,
        chunks: u64,
        /// Leases that ended: (chunk, primary, version) to revoke.
        leases: Vec<(ChunkHandle, NodeId, ChunkVersion)>,
    },
    Handle {
        handle: ChunkHandle,
    },
    /// One outcome per request of a `Batch`, in order.
    Batch(Vec<Outcome>),
    /// A chunk `AddChunkLeased` added, placed on `replicas`, and its lease.
    ChunkLeased {
        handle: ChunkHandle,
        index: u64,
        replicas: Vec<NodeId>,
        lease: Lease,
    },
}

/// Errors that cross the wire; each tells the caller what to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("{0} does not exist")]
    NotFound(GfsPath),
    #[error("{0} already exists")]
    AlreadyExists(GfsPath),
    #[error("{0} is not a directory")]
    NotADirectory(GfsPath),
    #[error("{0} is a directory")]
    IsADirectory(GfsPath),
    #[error("{0} is not empty (delete it recursively)")]
    DirectoryNotEmpty(GfsPath),
    #[error("cannot move {from} into itself ({to})")]
    RenameIntoItself { from: GfsPath, to: GfsPath },
    #[error("cannot snapshot {from} into itself ({to})")]
    SnapshotIntoItself { from: GfsPath, to: GfsPath },
    #[error("chunk {0} is shared with a snapshot: copy it before writing")]
    SharedChunk(ChunkHandle),
    #[error("the root directory cannot be {0}")]
    Root(String),
    #[error("no deleted entry {0}")]
    NoSuchDeleted(u64),
    #[error("chunk {0} does not exist")]
    NoSuchChunk(ChunkHandle),
    #[error("{path} has {chunks} chunks; chunk {index} cannot be added yet")]
    ChunkIndexGap {
        path: GfsPath,
        chunks: u64,
        index: u64,
    },
    #[error("chunk {handle} is leased to {primary} until {expires_at_ms} ms")]
    LeaseHeld {
        handle: ChunkHandle,
        primary: NodeId,
        expires_at_ms: u64,
    },
    #[error("length {length} exceeds what the {chunks} chunks of {path} hold")]
    LengthBeyondChunks {
        path: GfsPath,
        length: u64,
        chunks: u64,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

pub type Outcome = Result<Reply, MetaError>;

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub name: String,
    pub inode: Inode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub entries: Vec<Listed>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next_after: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    replies: VecDeque<(u64, Outcome)>,
    last_seen_ms: u64,
}

#[derive(Clone, Debug)]
pub struct MasterState {
    chunk_size_bytes: u64,
    ns: PathTable<Inode>,
    chunks: HashMap<ChunkHandle, ChunkMeta>,
    next_handle: u64,
    leases: HashMap<ChunkHandle, Lease>,
    deleted: BTreeMap<u64, Deleted>,
    next_deleted: u64,
    sessions: HashMap<u64, Session>,
    /// Chunkservers being decommissioned.
    draining: BTreeSet<NodeId>,
    /// Chunks whose last grant is not confirmed: its leader may have died
    /// before any replica took the new version. Their replicas at the
    /// version before still count, and their lease was never handed to a
    /// client (the leader answers only after the confirmation).
    unconfirmed: BTreeSet<ChunkHandle>,
    /// Per chunk, the replicas that took its version at its last confirmed
    /// grant. A writer is only ever sent to all of them: one that stopped
    /// answering is versioned out first, never silently left out (it would
    /// miss acknowledged mutations and still pass for current).
    members: HashMap<ChunkHandle, Vec<NodeId>>,
    /// Keys changed since the last `take_dirty`: what the storage layer must
    /// write (or delete) in the same batch as `last_applied`.
    dirty: Vec<persist::Key>,
}

fn key(p: &GfsPath) -> &[u8] {
    p.as_str().as_bytes()
}

impl MasterState {
    pub fn new(chunk_size_bytes: u64) -> Self {
        let mut ns = PathTable::default();
        ns.insert(
            b"/",
            &Inode::Dir {
                mtime_ms: 0,
                policy: None,
            },
        );
        Self {
            chunk_size_bytes,
            ns,
            chunks: HashMap::new(),
            next_handle: 1,
            leases: HashMap::new(),
            deleted: BTreeMap::new(),
            next_deleted: 1,
            sessions: HashMap::new(),
            draining: BTreeSet::new(),
            unconfirmed: BTreeSet::new(),
            members: HashMap::new(),
            dirty: vec![persist::Key::Path("/".into()), persist::Key::Counters],
        }
    }

    /// Applies one request. A request a session already had applied gets
    /// the reply it got then, and changes nothing.
    pub fn apply(&mut self, req: Request) -> Outcome {
        if let Command::Batch(reqs) = req.cmd {
            let outcomes = reqs
                .into_iter()
                .map(|r| match r.cmd {
                    Command::Batch(_) => Err(MetaError::InvalidArgument("nested batch".into())),
                    _ => self.apply(Request {
                        now_ms: req.now_ms,
                        ..r
                    }),
                })
                .collect();
            return Ok(Reply::Batch(outcomes));
        }
        if req.client != 0
            && let Some(s) = self.sessions.get_mut(&req.client)
        {
            s.last_seen_ms = s.last_seen_ms.max(req.now_ms);
            if let Some((_, reply)) = s.replies.iter().find(|(seq, _)| *seq == req.seq) {
                return reply.clone();
            }
        }
        let outcome = self.execute(req.now_ms, req.cmd);
        if req.client != 0 {
            self.remember(req.client, req.seq, req.now_ms, outcome.clone());
        }
        outcome
    }

    fn remember(&mut self, client: u64, seq: u64, now_ms: u64, outcome: Outcome) {
        if !self.sessions.contains_key(&client) && self.sessions.len() % 1024 == 1023 {
            let dirty = &mut self.dirty;
            self.sessions.retain(|c, s| {
                let keep = s.last_seen_ms + SESSION_TTL_MS >= now_ms;
                if !keep {
                    dirty.push(persist::Key::Session(*c));
                }
                keep
            });
        }
        self.dirty.push(persist::Key::Session(client));
        let s = self.sessions.entry(client).or_default();
        s.last_seen_ms = s.last_seen_ms.max(now_ms);
        s.replies.push_back((seq, outcome));
        if s.replies.len() > SESSION_REPLIES {
            s.replies.pop_front();
        }
    }

    fn execute(&mut self, now: u64, cmd: Command) -> Outcome {
        match cmd {
            Command::Mkdir { path, parents } => self.mkdir(now, &path, parents),
            Command::Create { path, replication } => self.create(now, &path, replication),
            Command::Rename { from, to } => self.rename(now, &from, &to),
            Command::Delete {
                path,
                recursive,
                purge,
            } => self.delete(now, &path, recursive, purge),
            Command::Reclaim { ids } => Ok(self.reclaim(&ids)),
            Command::Undelete { id } => self.undelete(now, id),
            Command::AddChunk {
                path,
                index,
                replicas,
            } => self.add_chunk(now, &path, index, replicas),
            Command::GrantLease {
                handle,
                primary,
                duration_ms,
                grace_ms,
                bump,
            } => self.grant_lease(now, handle, primary, (duration_ms, grace_ms), bump),
            Command::ExtendLeases {
                primary,
                handles,
                duration_ms,
            } => Ok(self.extend_leases(now, primary, &handles, duration_ms)),
            Command::ReleaseLeases { primary, handles } => {
                Ok(self.release_leases(primary, &handles))
            }
            Command::SetLength { path, length } => self.set_length(now, &path, length),
            Command::Snapshot { src, dst } => self.snapshot(now, &src, &dst),
            Command::SetPolicy { path, policy } => self.set_policy(now, &path, policy),
            Command::SetDraining { node, draining } => {
                let changed = if draining {
                    self.draining.insert(node)
                } else {
                    self.draining.remove(&node)
                };
                if changed {
                    self.dirty.push(persist::Key::Draining(node));
                }
                Ok(Reply::Done)
            }
            Command::AllocHandle => {
                let handle = ChunkHandle(self.next_handle);
                self.next_handle += 1;
                self.dirty.push(persist::Key::Counters);
                Ok(Reply::Handle { handle })
            }
            Command::SplitChunk {
                path,
                index,
                old,
                new,
                version,
            } => self.split_chunk(&path, index, (old, new), version),
            Command::ConfirmVersion {
                handle,
                version,
                mut replicas,
            } => {
                let current = self
                    .chunks
                    .get(&handle)
                    .is_some_and(|c| c.version == version);
                if current {
                    if self.unconfirmed.remove(&handle) {
                        self.dirty.push(persist::Key::Unconfirmed(handle));
                    }
                    replicas.sort_unstable();
                    replicas.dedup();
                    self.members.insert(handle, replicas);
                    self.dirty.push(persist::Key::Members(handle));
                }
                Ok(Reply::Done)
            }
            Command::AddChunkLeased {
                path,
                index,
                replicas,
                duration_ms,
                grace_ms,
            } => self.add_chunk_leased(now, &path, (index, replicas), (duration_ms, grace_ms)),
            // `apply` takes batches apart; one inside a batch is refused.
            Command::Batch(_) => Err(MetaError::InvalidArgument("nested batch".into())),
        }
    }

    // ---- reads ----------------------------------------------------------

    pub fn stat(&self, path: &GfsPath) -> Result<Inode, MetaError> {
        self.ns
            .get(key(path))
            .ok_or_else(|| MetaError::NotFound(path.clone()))
    }

    /// One page of a directory's children in name order, after `after`.
    pub fn list(
        &self,
        dir: &GfsPath,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, MetaError> {
        match self.stat(dir)? {
            Inode::Dir { .. } => {}
            Inode::File(_) => return Err(MetaError::NotADirectory(dir.clone())),
        }
        let prefix = dir.child_prefix();
        let after_key = after.map(|a| format!("{prefix}{a}"));
        let limit = limit.clamp(1, MAX_LIST_PAGE);
        let mut entries = Vec::new();
        let mut more = false;
        self.ns.scan(
            prefix.as_bytes(),
            after_key.as_deref().map(str::as_bytes),
            true,
            |k, v| {
                if k.len() == prefix.len() {
                    // The root itself: its key is its children's prefix.
                    return ControlFlow::Continue(());
                }
                if entries.len() == limit {
                    more = true;
                    return ControlFlow::Break(());
                }
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                entries.push(Listed { name, inode: v });
                ControlFlow::Continue(())
            },
        );
        let next_after = if more {
            entries.last().map(|e| e.name.clone())
        } else {
            None
        };
        Ok(Page {
            entries,
            next_after,
        })
    }

    pub fn chunk(&self, handle: ChunkHandle) -> Option<ChunkMeta> {
        self.chunks.get(&handle).copied()
    }

    pub fn lease(&self, handle: ChunkHandle) -> Option<Lease> {
        self.leases.get(&handle).copied()
    }

    /// Whether the chunk's last grant is unconfirmed (see `unconfirmed`).
    pub fn unconfirmed(&self, handle: ChunkHandle) -> bool {
        self.unconfirmed.contains(&handle)
    }

    /// Whether the chunk was certainly never written: no grant of it was
    /// ever confirmed (version 1, or 2 with the grant unconfirmed), so no
    /// client ever held a lease on it. Its replicas, if any, are empty.
    pub fn pristine(&self, handle: ChunkHandle) -> bool {
        self.chunks.get(&handle).is_some_and(|c| {
            c.version == ChunkVersion(1)
                || (c.version == ChunkVersion(2) && self.unconfirmed.contains(&handle))
        })
    }

    /// The replicas of the chunk's last confirmed grant, if one was logged
    /// with them.
    pub fn members(&self, handle: ChunkHandle) -> Option<&[NodeId]> {
        self.members.get(&handle).map(Vec::as_slice)
    }

    pub fn unconfirmed_chunks(&self) -> impl Iterator<Item = ChunkHandle> + '_ {
        self.unconfirmed.iter().copied()
    }

    pub fn deleted(&self) -> impl Iterator<Item = (u64, &Deleted)> {
        self.deleted.iter().map(|(id, d)| (*id, d))
    }

    pub fn files(&self) -> usize {
        self.ns.len()
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The files at or under `path`, in path order.
    pub fn files_under(&self, path: &GfsPath) -> Result<Vec<(String, FileMeta)>, MetaError> {
        let mut out = Vec::new();
        match self.stat(path)? {
            Inode::File(f) => out.push((path.as_str().to_string(), f)),
            Inode::Dir { .. } => {
                self.ns
                    .scan(path.child_prefix().as_bytes(), None, false, |k, v| {
                        if let Inode::File(f) = v {
                            out.push((String::from_utf8_lossy(k).into_owned(), f));
                        }
                        ControlFlow::Continue(())
                    });
            }
        }
        Ok(out)
    }

    /// Chunkservers being decommissioned.
    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// Every chunk in the table, in no particular order.
    pub fn chunks(&self) -> impl Iterator<Item = (ChunkHandle, ChunkMeta)> + '_ {
        self.chunks.iter().map(|(h, c)| (*h, *c))
    }

    /// Whether `handle` was ever allocated: a handle below this that is not
    /// in the table was reclaimed (handles are never reused).
    pub fn allocated(&self, handle: ChunkHandle) -> bool {
        handle.0 < self.next_handle
    }

    /// The policy in force at `path`: its own (a directory's) over its
    /// ancestors', nearest first.
    pub fn policy_at(&self, path: &GfsPath) -> DirPolicy {
        let mut p = DirPolicy::default();
        let own = std::iter::once(path.clone());
        for a in own.chain(path.ancestors().into_iter().rev()) {
            if let Some(Inode::Dir {
                policy: Some(d), ..
            }) = self.ns.get(key(&a))
            {
                p = p.or(*d);
            }
        }
        p
    }

    /// Deleted entries whose retention ran out at `now_ms` (their own, or
    /// `default_ms`), oldest first.
    pub fn expired_deleted(&self, now_ms: u64, default_ms: u64, max: usize) -> Vec<u64> {
        self.deleted
            .iter()
            .filter(|(_, d)| {
                let keep = d.retention_ms.unwrap_or(default_ms);
                d.deleted_at_ms.saturating_add(keep) <= now_ms
            })
            .map(|(id, _)| *id)
            .take(max)
            .collect()
    }

    // ---- namespace mutations ----------------------------------------------

    fn dir_exists(&self, p: &GfsPath) -> Result<(), MetaError> {
        match self.ns.get(key(p)) {
            Some(Inode::Dir { .. }) => Ok(()),
            Some(Inode::File(_)) => Err(MetaError::NotADirectory(p.clone())),
            None => Err(MetaError::NotFound(p.clone())),
        }
    }

    fn touch(&mut self, dir: Option<GfsPath>, now: u64) {
        let Some(d) = dir else { return };
        let touched = self.ns.update(key(&d), |inode| {
            if let Inode::Dir { mtime_ms, .. } = inode {
                *mtime_ms = (*mtime_ms).max(now);
            }
        });
        if touched.is_some() {
            self.dirty.push(persist::Key::Path(d.as_str().into()));
        }
    }

    /// The file at `path`; change it, then [`Self::put_file`] it back.
    fn file(&self, path: &GfsPath) -> Result<FileMeta, MetaError> {
        match self.ns.get(key(path)) {
            Some(Inode::File(f)) => Ok(f),
            Some(Inode::Dir { .. }) => Err(MetaError::IsADirectory(path.clone())),
            None => Err(MetaError::NotFound(path.clone())),
        }
    }

    fn put_file(&mut self, path: &GfsPath, f: FileMeta) {
        self.ns_put(path.as_str(), Inode::File(f));
    }

    fn mkdir(&mut self, now: u64, path: &GfsPath, parents: bool) -> Outcome {
        match self.ns.get(key(path)) {
            Some(Inode::Dir { .. }) if parents => return Ok(Reply::Done),
            Some(_) => return Err(MetaError::AlreadyExists(path.clone())),
            None => {}
        }
        let mut missing = Vec::new();
        for a in path.ancestors() {
            match self.ns.get(key(&a)) {
                Some(Inode::Dir { .. }) => {}
                Some(Inode::File(_)) => return Err(MetaError::NotADirectory(a)),
                None if parents => missing.push(a),
                None => return Err(MetaError::NotFound(a)),
            }
        }
        for d in missing.iter().chain(std::iter::once(path)) {
            self.ns_put(
                d.as_str(),
                Inode::Dir {
                    mtime_ms: now,
                    policy: None,
                },
            );
        }
        self.touch(missing.first().unwrap_or(path).parent(), now);
        Ok(Reply::Done)
    }

    fn create(&mut self, now: u64, path: &GfsPath, replication: u8) -> Outcome {
        if !(1..=MAX_REPLICATION).contains(&replication) {
            return Err(MetaError::InvalidArgument(format!(
                "replication {replication} is not in 1..={MAX_REPLICATION}"
            )));
        }
        if self.ns.contains(key(path)) {
            return Err(MetaError::AlreadyExists(path.clone()));
        }
        let parent = path
            .parent()
            .ok_or_else(|| MetaError::AlreadyExists(path.clone()))?;
        self.dir_exists(&parent)?;
        let file = FileMeta {
            length: 0,
            mtime_ms: now,
            replication,
            chunks: Vec::new(),
        };
        self.ns_put(path.as_str(), Inode::File(file));
        self.touch(Some(parent), now);
        Ok(Reply::Done)
    }

    /// Removes `path` and everything below it; returns the entries relative
    /// to `path`, in path order.
    fn take_tree(&mut self, path: &GfsPath) -> Vec<(String, Inode)> {
        let mut keys = vec![path.as_str().to_string()];
        if matches!(self.ns.get(key(path)), Some(Inode::Dir { .. })) {
            let below = self.ns.collect_prefix(path.child_prefix().as_bytes());
            keys.extend(
                below
                    .into_iter()
                    .map(|(k, _)| String::from_utf8_lossy(&k).into_owned()),
            );
        }
        let base = path.as_str().len();
        keys.into_iter()
            .filter_map(|k| {
                let inode = self.ns.remove(k.as_bytes())?;
                let rel = k[base..].to_string();
                self.dirty.push(persist::Key::Path(k));
                Some((rel, inode))
            })
            .collect()
    }

    fn ns_put(&mut self, path: &str, inode: Inode) {
        self.ns.insert(path.as_bytes(), &inode);
        self.dirty.push(persist::Key::Path(path.into()));
    }

    fn put_tree(&mut self, at: &GfsPath, entries: Vec<(String, Inode)>) {
        for (rel, inode) in entries {
            self.ns_put(&format!("{at}{rel}"), inode);
        }
    }

    fn rename(&mut self, now: u64, from: &GfsPath, to: &GfsPath) -> Outcome {
        if from.is_root() || to.is_root() {
            return Err(MetaError::Root("renamed".into()));
        }
        self.stat(from)?;
        if from == to {
            return Ok(Reply::Done);
        }
        if from.is_ancestor_of(to) {
            return Err(MetaError::RenameIntoItself {
                from: from.clone(),
                to: to.clone(),
            });
        }
        if self.ns.contains(key(to)) {
            return Err(MetaError::AlreadyExists(to.clone()));
        }
        let to_parent = to.parent().expect("not the root");
        self.dir_exists(&to_parent)?;
        let tree = self.take_tree(from);
        self.put_tree(to, tree);
        self.touch(from.parent(), now);
        self.touch(Some(to_parent), now);
        Ok(Reply::Done)
    }

    fn delete(&mut self, now: u64, path: &GfsPath, recursive: bool, purge: bool) -> Outcome {
        if path.is_root() {
            return Err(MetaError::Root("deleted".into()));
        }
        if !self.ns.contains(key(path)) {
            // Deleting what is already deleted reclaims it now.
            let ids: Vec<u64> = self
                .deleted
                .iter()
                .filter(|(_, d)| d.path == *path)
                .map(|(id, _)| *id)
                .collect();
            if !ids.is_empty() {
                return Ok(self.reclaim(&ids));
            }
        }
        if let Inode::Dir { .. } = self.stat(path)? {
            let mut has_children = false;
            self.ns
                .scan(path.child_prefix().as_bytes(), None, true, |_, _| {
                    has_children = true;
                    ControlFlow::Break(())
                });
            if has_children && !recursive {
                return Err(MetaError::DirectoryNotEmpty(path.clone()));
            }
        }
        let retention_ms = self.policy_at(path).retention_ms;
        let entries = self.take_tree(path);
        for (_, inode) in &entries {
            if let Inode::File(f) = inode {
                for h in &f.chunks {
                    // A deleted chunk can no longer be written.
                    if self.leases.remove(h).is_some() {
                        self.dirty.push(persist::Key::Lease(*h));
                    }
                }
            }
        }
        let id = self.next_deleted;
        self.next_deleted += 1;
        self.deleted.insert(
            id,
            Deleted {
                path: path.clone(),
                deleted_at_ms: now,
                entries,
                retention_ms,
            },
        );
        self.dirty
            .extend([persist::Key::Deleted(id), persist::Key::Counters]);
        self.touch(path.parent(), now);
        if purge {
            return Ok(self.reclaim(&[id]));
        }
        Ok(Reply::Deleted { id })
    }

    fn reclaim(&mut self, ids: &[u64]) -> Reply {
        let (mut entries, mut chunks) = (0, 0);
        for id in ids {
            let Some(d) = self.deleted.remove(id) else {
                continue;
            };
            entries += 1;
            self.dirty.push(persist::Key::Deleted(*id));
            for (_, inode) in d.entries {
                let Inode::File(f) = inode else { continue };
                for h in f.chunks {
                    let Some(c) = self.chunks.get_mut(&h) else {
                        continue;
                    };
                    c.refs = c.refs.saturating_sub(1);
                    self.dirty.push(persist::Key::Chunk(h));
                    if c.refs == 0 {
                        self.chunks.remove(&h);
                        chunks += 1;
                        if self.unconfirmed.remove(&h) {
                            self.dirty.push(persist::Key::Unconfirmed(h));
                        }
                        if self.members.remove(&h).is_some() {
                            self.dirty.push(persist::Key::Members(h));
                        }
                        if self.leases.remove(&h).is_some() {
                            self.dirty.push(persist::Key::Lease(h));
                        }
                    }
                }
            }
        }
        Reply::Reclaimed { entries, chunks }
    }

    fn undelete(&mut self, now: u64, id: u64) -> Outcome {
        let d = self.deleted.get(&id).ok_or(MetaError::NoSuchDeleted(id))?;
        if self.ns.contains(key(&d.path)) {
            return Err(MetaError::AlreadyExists(d.path.clone()));
        }
        let parent = d.path.parent().expect("the root is never deleted");
        self.dir_exists(&parent)?;
        let d = self.deleted.remove(&id).expect("checked above");
        self.dirty.push(persist::Key::Deleted(id));
        self.put_tree(&d.path, d.entries);
        self.touch(Some(parent), now);
        Ok(Reply::Undeleted { path: d.path })
    }

    fn add_chunk(
        &mut self,
        now: u64,
        path: &GfsPath,
        index: u64,
        replicas: Vec<NodeId>,
    ) -> Outcome {
        let mut f = self.file(path)?;
        let have = f.chunks.len() as u64;
        if index < have {
            let handle = f.chunks[index as usize];
            let version = self
                .chunks
                .get(&handle)
                .map_or(ChunkVersion(0), |c| c.version);
            return Ok(Reply::Chunk {
                handle,
                version,
                index,
                replicas,
            });
        }
        if index > have {
            return Err(MetaError::ChunkIndexGap {
                path: path.clone(),
                chunks: have,
                index,
            });
        }
        let handle = ChunkHandle(self.next_handle);
        self.next_handle += 1;
        f.chunks.push(handle);
        f.mtime_ms = f.mtime_ms.max(now);
        let version = ChunkVersion(1);
        let replication = f.replication;
        self.put_file(path, f);
        self.chunks.insert(
            handle,
            ChunkMeta {
                version,
                refs: 1,
                replication,
            },
        );
        self.dirty
            .extend([persist::Key::Chunk(handle), persist::Key::Counters]);
        Ok(Reply::Chunk {
            handle,
            version,
            index,
            replicas,
        })
    }

    fn add_chunk_leased(
        &mut self,
        now: u64,
        path: &GfsPath,
        (index, replicas): (u64, Vec<NodeId>),
        terms: (u64, u64),
    ) -> Outcome {
        let new = self.file(path)?.chunks.len() as u64 == index;
        let primary = replicas.first().copied();
        match self.add_chunk(now, path, index, replicas)? {
            Reply::Chunk {
                handle,
                index,
                replicas,
                ..
            } if new && let Some(primary) = primary => {
                match self.grant_lease(now, handle, primary, terms, false)? {
                    Reply::Lease { lease, .. } => Ok(Reply::ChunkLeased {
                        handle,
                        index,
                        replicas,
                        lease,
                    }),
                    other => Ok(other),
                }
            }
            Reply::Chunk {
                handle,
                version,
                index,
                ..
            } => Ok(Reply::Chunk {
                handle,
                version,
                index,
                replicas: Vec::new(),
            }),
            other => Ok(other),
        }
    }

    fn set_length(&mut self, now: u64, path: &GfsPath, length: u64) -> Outcome {
        let chunk_size = self.chunk_size_bytes;
        let mut f = self.file(path)?;
        let cap = f.chunks.len() as u64 * chunk_size;
        if length > cap {
            let chunks = f.chunks.len() as u64;
            return Err(MetaError::LengthBeyondChunks {
                path: path.clone(),
                length,
                chunks,
            });
        }
        if length > f.length {
            f.length = length;
            f.mtime_ms = f.mtime_ms.max(now);
            self.put_file(path, f);
        }
        Ok(Reply::Done)
    }

    fn set_policy(&mut self, now: u64, path: &GfsPath, policy: DirPolicy) -> Outcome {
        if policy
            .replication
            .is_some_and(|r| !(1..=MAX_REPLICATION).contains(&r))
        {
            return Err(MetaError::InvalidArgument(format!(
                "replication must be 1..={MAX_REPLICATION}"
            )));
        }
        let mtime_ms = match self.ns.get(key(path)) {
            Some(Inode::Dir { mtime_ms, .. }) => mtime_ms.max(now),
            Some(Inode::File(_)) => return Err(MetaError::NotADirectory(path.clone())),
            None => return Err(MetaError::NotFound(path.clone())),
        };
        let policy = (!policy.is_empty()).then(|| Box::new(policy));
        self.ns_put(path.as_str(), Inode::Dir { mtime_ms, policy });
        Ok(Reply::Done)
    }

    // ---- snapshots ------------------------------------------------------

    fn snapshot(&mut self, now: u64, src: &GfsPath, dst: &GfsPath) -> Outcome {
        if src.is_root() || dst.is_root() {
            return Err(MetaError::Root("snapshotted".into()));
        }
        self.stat(src)?;
        if src == dst || src.is_ancestor_of(dst) {
            return Err(MetaError::SnapshotIntoItself {
                from: src.clone(),
                to: dst.clone(),
            });
        }
        if self.ns.contains(key(dst)) {
            return Err(MetaError::AlreadyExists(dst.clone()));
        }
        let dst_parent = dst.parent().expect("not the root");
        self.dir_exists(&dst_parent)?;
        let mut entries: Vec<(String, Inode)> = vec![(String::new(), self.stat(src)?)];
        if matches!(entries[0].1, Inode::Dir { .. }) {
            let base = src.as_str().len();
            for (k, v) in self.ns.collect_prefix(src.child_prefix().as_bytes()) {
                let k = String::from_utf8_lossy(&k).into_owned();
                entries.push((k[base..].to_string(), v));
            }
        }
        let (mut files, mut chunks, mut leases) = (0, 0, Vec::new());
        for (_, inode) in &entries {
            let Inode::File(f) = inode else { continue };
            files += 1;
            for h in &f.chunks {
                let Some(c) = self.chunks.get_mut(h) else {
                    continue;
                };
                c.refs += 1;
                c.replication = c.replication.max(f.replication);
                chunks += 1;
                self.dirty.push(persist::Key::Chunk(*h));
                if let Some(l) = self.leases.remove(h) {
                    self.dirty.push(persist::Key::Lease(*h));
                    if l.expires_at_ms > now {
                        leases.push((*h, l.primary, l.version));
                    }
                }
            }
        }
        for (_, inode) in &mut entries {
            match inode {
                Inode::File(f) => f.mtime_ms = f.mtime_ms.max(now),
                Inode::Dir { mtime_ms, .. } => *mtime_ms = (*mtime_ms).max(now),
            }
        }
        self.put_tree(dst, entries);
        self.touch(Some(dst_parent), now);
        Ok(Reply::Snapshotted {
            files,
            chunks,
            leases,
        })
    }

    fn split_chunk(
        &mut self,
        path: &GfsPath,
        index: u64,
        (old, new): (ChunkHandle, ChunkHandle),
        version: ChunkVersion,
    ) -> Outcome {
        let mut f = self.file(path)?;
        let at = usize::try_from(index).ok().filter(|i| *i < f.chunks.len());
        let Some(at) = at else {
            return Err(MetaError::NoSuchChunk(old));
        };
        let current = f.chunks[at];
        let shared = self.chunks.get(&old).is_some_and(|c| c.refs > 1);
        if current != old || !shared || new.0 >= self.next_handle || self.chunks.contains_key(&new)
        {
            let version = self
                .chunks
                .get(&current)
                .map_or(ChunkVersion(0), |c| c.version);
            return Ok(Reply::Chunk {
                handle: current,
                version,
                index,
                replicas: Vec::new(),
            });
        }
        f.chunks[at] = new;
        let replication = f.replication;
        self.put_file(path, f);
        if let Some(c) = self.chunks.get_mut(&old) {
            c.refs -= 1;
        }
        self.chunks.insert(
            new,
            ChunkMeta {
                version,
                refs: 1,
                replication,
            },
        );
        self.dirty
            .extend([persist::Key::Chunk(old), persist::Key::Chunk(new)]);
        Ok(Reply::Chunk {
            handle: new,
            version,
            index,
            replicas: Vec::new(),
        })
    }

    // ---- leases ---------------------------------------------------------

    fn grant_lease(
        &mut self,
        now: u64,
        handle: ChunkHandle,
        primary: NodeId,
        (duration_ms, grace_ms): (u64, u64),
        bump: bool,
    ) -> Outcome {
        let chunk = self
            .chunks
            .get_mut(&handle)
            .ok_or(MetaError::NoSuchChunk(handle))?;
        if chunk.refs > 1 {
            return Err(MetaError::SharedChunk(handle));
        }
        if let Some(l) = self.leases.get_mut(&handle) {
            if l.primary == primary && now < l.expires_at_ms && !bump {
                l.expires_at_ms = l.expires_at_ms.max(now + duration_ms);
                self.dirty.push(persist::Key::Lease(handle));
                return Ok(Reply::Lease {
                    handle,
                    lease: *l,
                    granted: false,
                });
            }
            // Another primary only once the old lease has certainly expired,
            // with `grace_ms` for clock drift between masters and servers;
            // at once if no client was ever given it.
            if l.primary != primary
                && now < l.expires_at_ms + grace_ms
                && !self.unconfirmed.contains(&handle)
            {
                let (primary, expires_at_ms) = (l.primary, l.expires_at_ms);
                return Err(MetaError::LeaseHeld {
                    handle,
                    primary,
                    expires_at_ms,
                });
            }
        }
        chunk.version = ChunkVersion(chunk.version.0 + 1);
        let lease = Lease {
            primary,
            version: chunk.version,
            expires_at_ms: now + duration_ms,
        };
        self.leases.insert(handle, lease);
        self.unconfirmed.insert(handle);
        self.dirty.extend([
            persist::Key::Chunk(handle),
            persist::Key::Lease(handle),
            persist::Key::Unconfirmed(handle),
        ]);
        Ok(Reply::Lease {
            handle,
            lease,
            granted: true,
        })
    }

    fn extend_leases(
        &mut self,
        now: u64,
        primary: NodeId,
        handles: &[ChunkHandle],
        duration_ms: u64,
    ) -> Reply {
        let mut extended = Vec::new();
        for h in handles {
            if let Some(l) = self.leases.get_mut(h)
                && l.primary == primary
                && now < l.expires_at_ms
            {
                l.expires_at_ms = l.expires_at_ms.max(now + duration_ms);
                extended.push(*h);
                self.dirty.push(persist::Key::Lease(*h));
            }
        }
        Reply::Extended { handles: extended }
    }

    fn release_leases(&mut self, primary: NodeId, handles: &[ChunkHandle]) -> Reply {
        let mut released = Vec::new();
        for h in handles {
            if self.leases.get(h).is_some_and(|l| l.primary == primary) {
                self.leases.remove(h);
                released.push(*h);
                self.dirty.push(persist::Key::Lease(*h));
            }
        }
        Reply::Extended { handles: released }
    }
}

#[cfg(test)]
mod tests;
