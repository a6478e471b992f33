//! The client's master side: a list of masters, the one believed to lead,
//! retries that follow leader hints and back off while there is no leader,
//! and a cache of chunk locations. A failover shows up as a delay, never as
//! an error: every mutation carries (client id, sequence number), reused on
//! retry, so a mutation whose reply was lost is answered, not re-applied.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gfs_proto::auth::{AuthChannel, Token, with_token};
use gfs_proto::wire::master::master_admin_client::MasterAdminClient;
use gfs_proto::wire::master::master_meta_client::MasterMetaClient;
use gfs_proto::wire::master::{
    ChunkInfo, CreateRequest, DecommissionRequest, DeleteReply, DeleteRequest, Empty, FileInfo,
    FsckReply, FsckRequest, ListDeletedReply, ListDeletedRequest, ListReply, ListRequest,
    LocateReply, LocateRequest, MkdirRequest, RenameRequest, ReportLengthRequest, Session,
    SetPolicyRequest, SnapshotReply, SnapshotRequest, StatRequest, StatusReply, UndeleteRequest,
    WriteChunkRequest,
};
use gfs_proto::wire::{ErrorKind, MAX_MESSAGE_BYTES, detail_of};
use tokio::sync::Notify;
use tonic::transport::Endpoint;
use tonic::{Response, Status};

use crate::window::Window;

/// Sequence numbers a client hands out ahead of its oldest unanswered
/// mutation: the masters remember the last 32 replies per client, so a
/// retry always finds its first reply (`window`).
pub const MUTATION_WINDOW: u64 = 32;

#[derive(Clone, Debug)]
pub struct MasterOptions {
    /// Give up on a request after this long without an answer.
    pub deadline: Duration,
    /// Bound on one attempt against one master.
    pub attempt_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a cached chunk location is trusted.
    pub location_ttl: Duration,
    /// The cluster token, presented with every call to the masters and
    /// chunkservers. None: the file `GFS_AUTH_TOKEN_FILE` names, if set.
    pub auth_token: Option<Token>,
}

impl Default for MasterOptions {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            location_ttl: Duration::from_secs(30),
            auth_token: None,
        }
    }
}

/// An error the masters answered (or the deadline, as `Unavailable`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct MasterError {
    pub kind: ErrorKind,
    pub message: String,
}

impl MasterError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn from_status(s: &Status) -> Self {
        let d = detail_of(s);
        Self {
            kind: d.kind(),
            message: d.message,
        }
    }
}

/// A mutation's sequence number, unanswered until dropped.
struct Open<'a> {
    inner: &'a Inner,
    seq: u64,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.inner
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close(self.seq);
        self.inner.answered.notify_waiters();
    }
}

#[derive(Debug)]
struct Inner {
    addrs: Vec<String>,
    meta: Vec<MasterMetaClient<AuthChannel>>,
    admin: Vec<MasterAdminClient<AuthChannel>>,
    leader: AtomicUsize,
    client_id: u64,
    /// The sequence numbers of mutations, and which are unanswered.
    window: Mutex<Window>,
    /// Signalled when a mutation is answered: the window may have room.
    answered: Notify,
    opts: MasterOptions,
    locations: Mutex<HashMap<(String, u64), (ChunkInfo, Instant)>>,
    chunk_size: AtomicU64,
    /// Presented with every call (and by the data plane of a `Client`).
    token: Option<Token>,
}

/// The token in the file `GFS_AUTH_TOKEN_FILE` names, if it is set.
fn token_from_env() -> Result<Option<Token>, MasterError> {
    gfs_proto::auth::token_from_env().map_err(|message| MasterError {
        kind: ErrorKind::InvalidArgument,
        message,
    })
}

/// A handle to the masters; cheap to clone, shared by tasks.
#[derive(Clone, Debug)]
pub struct MasterClient {
    inner: Arc<Inner>,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Retry at once at this master.
    Goto(usize),
    /// Retry at the next master after a pause.
    Rotate,
    Fail,
}

/// Pure retry decision, from the status and the master list.
fn next_step(s: &Status, addrs: &[String], current: usize) -> Next {
    let d = detail_of(s);
    match d.kind() {
        ErrorKind::NotLeader => match addrs.iter().position(|a| *a == d.leader_addr) {
            Some(i) if i != current => Next::Goto(i),
            _ => Next::Rotate,
        },
        ErrorKind::Unavailable => Next::Rotate,
        _ => Next::Fail,
    }
}

impl MasterClient {
    /// A client of the masters at `addrs` ("host:port"); connects lazily.
    pub fn new(addrs: &[String], opts: MasterOptions) -> Result<Self, MasterError> {
        if addrs.is_empty() {
            return Err(MasterError {
                kind: ErrorKind::InvalidArgument,
                message: "no master addresses".into(),
            });
        }
        let token = match &opts.auth_token {
            Some(t) => Some(t.clone()),
            None => token_from_env()?,
        };
        let mut meta = Vec::new();
        let mut admin = Vec::new();
        for a in addrs {
            let ch = Endpoint::from_shared(format!("http://{a}"))
                .map_err(|e| MasterError {
                    kind: ErrorKind::InvalidArgument,
                    message: format!("bad master address {a}: {e}"),
                })?
                .connect_timeout(Duration::from_millis(300))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(1))
                .keep_alive_timeout(Duration::from_secs(2))
                .connect_lazy();
            let ch = with_token(ch, token.as_ref());
            meta.push(
                MasterMetaClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
            admin.push(MasterAdminClient::new(ch));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                addrs: addrs.to_vec(),
                meta,
                admin,
                leader: AtomicUsize::new(0),
                client_id: rand::random::<u64>() | 1,
                window: Mutex::new(Window::new(MUTATION_WINDOW)),
                answered: Notify::new(),
                opts,
                locations: Mutex::new(HashMap::new()),
                chunk_size: AtomicU64::new(0),
                token,
            }),
        })
    }

    /// The cluster token this client presents, if any.
    pub fn token(&self) -> Option<Token> {
        self.inner.token.clone()
    }

    pub fn addrs(&self) -> &[String] {
        &self.inner.addrs
    }

    /// The next sequence number, once the window has room for it.
    async fn take_seq(&self) -> Open<'_> {
        loop {
            let answered = self.inner.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let taken = self
                .inner
                .window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(seq) = taken {
                return Open {
                    inner: &self.inner,
                    seq,
                };
            }
            answered.await;
        }
    }

    /// Runs `attempt` against the leader, following hints and backing off
    /// until it answers or the deadline passes.
    async fn call<T, F, Fut>(&self, attempt: F) -> Result<T, MasterError>
    where
        F: Fn(MasterMetaClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let inner = &self.inner;
        let start = Instant::now();
        let mut backoff = inner.opts.backoff_min;
        let mut i = inner.leader.load(Ordering::Relaxed) % inner.addrs.len();
        loop {
            let fut = attempt(inner.meta[i].clone());
            let status = match tokio::time::timeout(inner.opts.attempt_timeout, fut).await {
                Ok(Ok(r)) => {
                    inner.leader.store(i, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) => s,
                Err(_) => Status::unavailable(format!("{} did not answer", inner.addrs[i])),
            };
            let step = next_step(&status, &inner.addrs, i);
            if step == Next::Fail {
                return Err(MasterError::from_status(&status));
            }
            if start.elapsed() >= inner.opts.deadline {
                return Err(MasterError {
                    kind: ErrorKind::Unavailable,
                    message: format!(
                        "no master answered within {:?}: {}",
                        inner.opts.deadline,
                        status.message()
                    ),
                });
            }
            match step {
                Next::Goto(j) => i = j,
                _ => {
                    i = (i + 1) % inner.addrs.len();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(inner.opts.backoff_max);
                }
            }
        }
    }

    async fn mutate<T, F, Fut>(&self, attempt: F) -> Result<T, MasterError>
    where
        F: Fn(MasterMetaClient<AuthChannel>, Option<Session>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        // Answered (or given up on) when `open` drops, however this ends.
        let open = self.take_seq().await;
        let session = Some(Session {
            client_id: self.inner.client_id,
            seq: open.seq,
        });
        self.call(|c| attempt(c, session)).await
    }

    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), MasterError> {
        self.mutate(|mut c, session| {
            let path = path.to_string();
            async move {
                c.mkdir(MkdirRequest {
                    session,
                    path,
                    parents,
                })
                .await
            }
        })
        .await
        .map(|_| ())
    }

    /// Exclusive create; `replication` 0 takes the masters' default.
    pub async fn create(&self, path: &str, replication: u32) -> Result<(), MasterError> {
        self.mutate(|mut c, session| {
            let path = path.to_string();
            async move {
                c.create(CreateRequest {
                    session,
                    path,
                    replication,
                })
                .await
            }
        })
        .await
        .map(|_| ())
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), MasterError> {
        self.mutate(|mut c, session| {
            let (from, to) = (from.to_string(), to.to_string());
            async move { c.rename(RenameRequest { session, from, to }).await }
        })
        .await?;
        self.forget(from);
        Ok(())
    }

    /// Hides `path`; returns the id that undeletes it.
    pub async fn delete(&self, path: &str, recursive: bool) -> Result<u64, MasterError> {
        Ok(self.delete_with(path, recursive, false).await?.deleted_id)
    }

    /// Delete, reclaiming at once with `purge` (or when `path` names only
    /// already-deleted entries).
    pub async fn delete_with(
        &self,
        path: &str,
        recursive: bool,
        purge: bool,
    ) -> Result<DeleteReply, MasterError> {
        let r = self
            .mutate(|mut c, session| {
                let path = path.to_string();
                async move {
                    c.delete(DeleteRequest {
                        session,
                        path,
                        recursive,
                        purge,
                    })
                    .await
                }
            })
            .await?;
        self.forget(path);
        Ok(r)
    }

    /// Copy-on-write snapshot of a file or tree: (files, chunks) shared.
    pub async fn snapshot(&self, src: &str, dst: &str) -> Result<SnapshotReply, MasterError> {
        self.mutate(|mut c, session| {
            let (src, dst) = (src.to_string(), dst.to_string());
            async move { c.snapshot(SnapshotRequest { session, src, dst }).await }
        })
        .await
    }

    /// A directory's policy; 0 leaves a value to the directories above.
    pub async fn set_policy(
        &self,
        path: &str,
        replication: u32,
        retention_ms: u64,
    ) -> Result<(), MasterError> {
        self.mutate(|mut c, session| {
            let path = path.to_string();
            async move {
                c.set_policy(SetPolicyRequest {
                    session,
                    path,
                    replication,
                    retention_ms,
                })
                .await
            }
        })
        .await
        .map(|_| ())
    }

    /// One page of deleted entries awaiting reclaim, after id `after`.
    pub async fn list_deleted(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<ListDeletedReply, MasterError> {
        self.call(|mut c| async move { c.list_deleted(ListDeletedRequest { after, limit }).await })
            .await
    }

    pub async fn undelete(&self, deleted_id: u64) -> Result<String, MasterError> {
        self.mutate(|mut c, session| async move {
            c.undelete(UndeleteRequest {
                session,
                deleted_id,
            })
            .await
        })
        .await
        .map(|r| r.path)
    }

    /// Stat; `stale` serves from any master without confirming leadership.
    pub async fn stat(&self, path: &str, stale: bool) -> Result<FileInfo, MasterError> {
        self.call(|mut c| {
            let path = path.to_string();
            async move { c.stat(StatRequest { path, stale }).await }
        })
        .await
    }

    /// One page of a directory listing after `after` ("" from the start).
    pub async fn list_page(
        &self,
        path: &str,
        after: &str,
        limit: u32,
        stale: bool,
    ) -> Result<ListReply, MasterError> {
        self.call(|mut c| {
            let (path, after) = (path.to_string(), after.to_string());
            async move {
                c.list(ListRequest {
                    path,
                    after,
                    limit,
                    stale,
                })
                .await
            }
        })
        .await
    }

    /// A whole directory listing, page by page.
    pub async fn list(&self, path: &str) -> Result<Vec<FileInfo>, MasterError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.list_page(path, &after, 1000, false).await?;
            all.extend(page.entries);
            if page.next_after.is_empty() {
                return Ok(all);
            }
            after = page.next_after;
        }
    }

    /// Raises the recorded length of a file (after acknowledged writes).
    pub async fn report_length(&self, path: &str, length: u64) -> Result<(), MasterError> {
        self.mutate(|mut c, session| {
            let path = path.to_string();
            async move {
                c.report_length(ReportLengthRequest {
                    session,
                    path,
                    length,
                })
                .await
            }
        })
        .await
        .map(|_| ())
    }

    /// The file's length and chunk count as the masters know them, and the
    /// locations of up to `count` chunks from `first` (cached). Never
    /// served from the cache.
    pub async fn locate_file(
        &self,
        path: &str,
        first: u64,
        count: u32,
    ) -> Result<LocateReply, MasterError> {
        // Before asking: a lease's time left counts from no later than the
        // masters' answer.
        let asked = Instant::now();
        let reply = self
            .call(|mut c| {
                let path = path.to_string();
                async move {
                    c.locate(LocateRequest {
                        path,
                        first_index: first,
                        count,
                        stale: false,
                    })
                    .await
                }
            })
            .await?;
        check_chunk_size(reply.chunk_size_bytes)?;
        self.inner
            .chunk_size
            .store(reply.chunk_size_bytes, Ordering::Relaxed);
        let mut cache = self.cache();
        for c in &reply.found {
            cache.insert((path.to_string(), c.index), (c.clone(), asked));
        }
        drop(cache);
        Ok(reply)
    }

    /// The cluster's chunk size, once any locate has answered (0 before).
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunk_size.load(Ordering::Relaxed)
    }

    /// This client's id (sessions, record ids).
    pub fn client_id(&self) -> u64 {
        self.inner.client_id
    }

    /// A cached location of chunk `index`, if fresh, with its
    /// `lease_left_ms` counted down by the time it has been cached (this
    /// client's monotonic clock: its wall clock may disagree with the
    /// masters', which stamp `lease_expires_ms`).
    pub fn cached(&self, path: &str, index: u64) -> Option<ChunkInfo> {
        self.cache()
            .get(&(path.to_string(), index))
            .filter(|(_, at)| at.elapsed() < self.inner.opts.location_ttl)
            .map(|(c, at)| ChunkInfo {
                lease_left_ms: lease_left(c.lease_left_ms, at.elapsed()),
                ..c.clone()
            })
    }

    /// Drops the cached location of one chunk (after a replica error).
    pub fn forget_chunk(&self, path: &str, index: u64) {
        self.cache().remove(&(path.to_string(), index));
    }

    /// Where chunk `index` of `path` lives; cached for `location_ttl`.
    pub async fn locate(&self, path: &str, index: u64) -> Result<Option<ChunkInfo>, MasterError> {
        let key = (path.to_string(), index);
        if let Some((c, at)) = self.cache().get(&key)
            && at.elapsed() < self.inner.opts.location_ttl
        {
            return Ok(Some(c.clone()));
        }
        let reply = self.locate_file(path, index, 16).await?;
        Ok(reply.found.into_iter().find(|c| c.index == index))
    }

    /// Write access to chunk `index` (added if it is the next one), with
    /// its primary and lease.
    /// `failed` names replicas that failed a mutation under the current
    /// lease: the leader gives the chunk a new version without them.
    pub async fn write_chunk(
        &self,
        path: &str,
        index: u64,
        failed: &[u64],
    ) -> Result<ChunkInfo, MasterError> {
        let asked = Instant::now();
        let info = self
            .mutate(|mut c, session| {
                let path = path.to_string();
                let failed = failed.to_vec();
                async move {
                    c.write_chunk(WriteChunkRequest {
                        session,
                        path,
                        index,
                        failed,
                    })
                    .await
                }
            })
            .await?;
        self.cache()
            .insert((path.to_string(), index), (info.clone(), asked));
        Ok(info)
    }

    /// Drops cached locations of `path` (after an error from a replica).
    pub fn forget(&self, path: &str) {
        self.cache().retain(|(p, _), _| p != path);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), (ChunkInfo, Instant)>> {
        self.inner
            .locations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Status of the master at `addrs[i]` (admin).
    pub async fn status_of(&self, i: usize) -> Result<StatusReply, MasterError> {
        let mut c = self.inner.admin[i].clone();
        match tokio::time::timeout(self.inner.opts.attempt_timeout, c.status(Empty {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(MasterError::from_status(&s)),
            Err(_) => Err(MasterError {
                kind: ErrorKind::Unavailable,
                message: format!("{} did not answer", self.inner.addrs[i]),
            }),
        }
    }

    /// An admin call answered by the leader: each master is asked until
    /// one answers.
    async fn leader_admin<T, F, Fut>(&self, what: &str, call: F) -> Result<T, MasterError>
    where
        F: Fn(MasterAdminClient<AuthChannel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut last = None;
        for c in &self.inner.admin {
            match tokio::time::timeout(Duration::from_secs(30), call(c.clone())).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) => last = Some(MasterError::from_status(&s)),
                Err(_) => {}
            }
        }
        Err(last.unwrap_or(MasterError {
            kind: ErrorKind::Unavailable,
            message: format!("no master answered {what}"),
        }))
    }

    /// `fsck` from the leader.
    pub async fn fsck(&self, path: &str, all: bool) -> Result<FsckReply, MasterError> {
        self.leader_admin("fsck", |mut c| {
            let req = FsckRequest {
                path: path.to_string(),
                all,
            };
            async move { c.fsck(req).await }
        })
        .await
    }

    /// Starts (or with `cancel` stops) draining chunkserver `node_id`.
    pub async fn decommission(&self, node_id: u64, cancel: bool) -> Result<(), MasterError> {
        self.leader_admin("decommission", |mut c| async move {
            c.decommission(DecommissionRequest { node_id, cancel })
                .await
        })
        .await
        .map(|_| ())
    }

    /// Admin client of the master at `addrs[i]`.
    pub fn admin(&self, i: usize) -> MasterAdminClient<AuthChannel> {
        self.inner.admin[i].clone()
    }
}

/// What is left of a lease that had `left_ms` to run when its answer was
/// asked for, `since` then.
fn lease_left(left_ms: u64, since: Duration) -> u64 {
    left_ms.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// The chunk size a master answered, if it is one a cluster can have: a
/// whole number of checksum blocks. Every offset the client computes
/// divides by it; a zero would panic the caller.
fn check_chunk_size(bytes: u64) -> Result<(), MasterError> {
    let block = gfs_proto::limits::CHECKSUM_BLOCK_BYTES;
    if bytes == 0 || !bytes.is_multiple_of(block) {
        return Err(MasterError::new(
            ErrorKind::Internal,
            format!(
                "the masters answered a chunk size of {bytes} bytes, not a multiple of {block}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use gfs_proto::wire::{ErrorDetail, error, status};

    use super::*;

    fn addrs() -> Vec<String> {
        vec!["a:1".into(), "b:1".into(), "c:1".into()]
    }

    #[test]
    fn a_cached_lease_counts_down_by_this_clients_own_clock() {
        assert_eq!(lease_left(3_000, Duration::from_millis(0)), 3_000);
        assert_eq!(lease_left(3_000, Duration::from_millis(1_250)), 1_750);
        assert_eq!(lease_left(3_000, Duration::from_secs(60)), 0);
        assert_eq!(lease_left(0, Duration::from_secs(1)), 0);
    }

    fn not_leader(hint: &str) -> Status {
        status(ErrorDetail {
            kind: ErrorKind::NotLeader as i32,
            message: String::new(),
            leader_id: u64::from(!hint.is_empty()),
            leader_addr: hint.into(),
        })
    }

    #[test]
    fn chunk_sizes_no_cluster_has_are_refused() {
        for bad in [0, 1, 4096, 64 * 1024 + 1] {
            assert_eq!(
                check_chunk_size(bad).map_err(|e| e.kind),
                Err(ErrorKind::Internal),
                "{bad}"
            );
        }
        for good in [64 * 1024, 1 << 20, 64 << 20] {
            assert!(check_chunk_size(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn hints_are_followed_and_everything_else_decides_exactly() {
        let a = addrs();
        assert_eq!(next_step(&not_leader("c:1"), &a, 0), Next::Goto(2));
        assert_eq!(next_step(&not_leader(""), &a, 0), Next::Rotate);
        assert_eq!(
            next_step(&not_leader("a:1"), &a, 0),
            Next::Rotate,
            "self hint"
        );
        assert_eq!(
            next_step(&not_leader("z:9"), &a, 1),
            Next::Rotate,
            "unknown hint"
        );
        assert_eq!(
            next_step(&Status::unavailable("refused"), &a, 0),
            Next::Rotate
        );
        assert_eq!(
            next_step(&error(ErrorKind::AlreadyExists, "/x"), &a, 0),
            Next::Fail
        );
        assert_eq!(
            next_step(&Status::invalid_argument("bad"), &a, 0),
            Next::Fail
        );
    }
}
