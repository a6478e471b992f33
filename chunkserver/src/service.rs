//! The chunkserver's gRPC service, the control plane: mutate (the primary
//! orders, applies and forwards), apply (a secondary), set version, revoke,
//! clone, delete. Pushed data arrives, and reads leave, by the data plane
//! ([`crate::data_plane`]); both meet in [`Shared`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gfs_proto::data::{DataPool, Op, PIECE_BYTES, PROBE, probe_of};
use gfs_proto::wire::chunk::chunkserver_server::Chunkserver;
use gfs_proto::wire::chunk::{
    ApplyReply, ApplyRequest, CloneReply, CloneRequest, CopyLocalRequest, DeleteRequest, Empty,
    HostCounters, MutateReply, MutateRequest, MutationKind, ReadRequest, RevokeRequest,
    SetVersionRequest,
};
use gfs_proto::wire::{ErrorKind, MAX_FRAME_BYTES, error};
use gfs_proto::{ChunkHandle, ChunkVersion};
use gfs_storage_engine::{ChunkInfo, ChunkStore, Landing, Prepared, Received, StoreError};
use tonic::{Request, Response, Status};

mod appends;
mod turns;

use self::appends::Tail;
use self::turns::Slot;
use crate::buffer::{DataBuffer, Full, Parts, parts_len};
use crate::changes::Changes;
use crate::clone::{Cloning, clone_chunk, copy_local};
use crate::config::ChunkserverConfig;
use crate::order::{Committed, Fence, fence_forwarded, fence_mutation, fence_read};
use crate::pieces::PiecePool;

/// Longest chain a push may name.
pub(crate) const MAX_CHAIN: usize = 16;
/// Bound on one forwarded call to a peer.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(10);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What this server knows of a lease it holds as primary. Every time in
/// it is the leader's clock's, as this server estimates it
/// (`Shared::lease_now`).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeldLease {
    pub expires_ms: u64,
    /// When this server learned `expires_ms` (a claim or an extension
    /// that moved it later): the lease is about `expires_ms - since_ms`
    /// long, and is asked to be extended once half of that is gone.
    pub since_ms: u64,
    pub last_mutation_ms: u64,
    /// Given up: claims of leases expiring at or before this are refused
    /// (a later grant expires later).
    pub relinquished_up_to: u64,
    /// Revoked by the leader: mutations naming this version or an older
    /// one are refused whatever lease they claim (the next grant brings a
    /// newer version).
    pub revoked_through: u64,
}

impl HeldLease {
    /// Moves the expiry to `expires_ms` if that is later, learned at `now`.
    pub fn extend_to(&mut self, expires_ms: u64, now: u64) {
        if expires_ms > self.expires_ms {
            self.expires_ms = expires_ms;
            self.since_ms = now;
        }
    }
}

/// Per chunk, at its primary: the serial order of mutations, the appends
/// committed recently, and while rounds of appends are in flight, where
/// the last one planned leaves the chunk.
#[derive(Debug, Default)]
struct Ordered {
    serial: u64,
    committed: Committed,
    tail: Option<Tail>,
}

impl Ordered {
    /// The next mutation in this chunk's serial order, to be applied at
    /// each replica after mutation `after` (0: none is in flight).
    fn plan(&mut self, kind: MutationKind, offset: u64, data: Parts, after: u64) -> Planned {
        self.serial += 1;
        Planned {
            kind,
            offset,
            data,
            ids: Vec::new(),
            dropped: Vec::new(),
            serial: self.serial,
            after,
            sync: false,
        }
    }
}

/// A mutation the primary ordered: its place in the serial order and
/// what it writes (`ids` name the pushed data at the secondaries; the data
/// in `dropped` is no longer needed once it is applied).
#[derive(Debug)]
struct Planned {
    kind: MutationKind,
    offset: u64,
    data: Parts,
    ids: Vec<u64>,
    dropped: Vec<u64>,
    serial: u64,
    after: u64,
    sync: bool,
}

/// How long a write that arrived before the data in front of it waits for
/// that data (a client keeps several pieces of one chunk in flight).
const OUT_OF_ORDER_WAIT: Duration = Duration::from_secs(2);

/// State shared by the service and the heartbeat loops.
#[derive(Debug)]
pub struct Shared {
    pub cfg: ChunkserverConfig,
    pub store: ChunkStore,
    buffer: Mutex<DataBuffer>,
    ordered: Mutex<HashMap<ChunkHandle, Arc<Slot>>>,
    pub leases: Mutex<HashMap<ChunkHandle, HeldLease>>,
    pub changes: Mutex<Changes>,
    /// Leases given up, to tell the leader with the next heartbeat.
    pub relinquished: Mutex<Vec<ChunkHandle>>,
    /// Data-plane connections to peers (forwarding pushes and mutations,
    /// clone reads).
    pub data: Arc<DataPool>,
    /// Receive buffers of pushed pieces.
    pub pieces: Arc<PiecePool>,
    pub cloning: Cloning,
    /// Pushes being received (a mutation may come before its data).
    pub arrivals: crate::arrivals::Arrivals,
    /// Names this process in the serials it gives mutations as a primary.
    run: u64,
    /// The leader's clock, which leases are stamped and timed by.
    pub leader_clock: crate::leader_clock::LeaderClock,
    /// The data plane's requests and bytes (`metrics`).
    pub traffic: crate::metrics::Traffic,
    /// Heartbeats unanswered, and the leader's last answer (`metrics`).
    pub beats: crate::metrics::Beats,
}

impl Shared {
    pub fn new(cfg: ChunkserverConfig, store: ChunkStore) -> Arc<Self> {
        Arc::new(Self {
            data: Arc::new(DataPool::with_token(cfg.auth_token.clone())),
            beats: crate::metrics::Beats::new(&cfg.masters),
            buffer: Mutex::new(DataBuffer::new(cfg.buffer_bytes, cfg.buffer_ttl_ms)),
            // Free buffers kept: a quarter of the push buffer's bound.
            pieces: PiecePool::new(
                PIECE_BYTES,
                (cfg.buffer_bytes / 4 / PIECE_BYTES as u64) as usize,
            ),
            cfg,
            store,
            ordered: Mutex::default(),
            leases: Mutex::default(),
            changes: Mutex::new(Changes::new(1 << 16)),
            relinquished: Mutex::default(),
            cloning: Cloning::default(),
            arrivals: crate::arrivals::Arrivals::default(),
            run: rand::random::<u64>() | 1,
            leader_clock: Default::default(),
            traffic: Default::default(),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn note(&self, handle: ChunkHandle, version: Option<ChunkVersion>) {
        Self::lock(&self.changes).note(handle, version);
    }

    fn ordered(&self, h: ChunkHandle) -> Arc<Slot> {
        Self::lock(&self.ordered).entry(h).or_default().clone()
    }

    /// The pushed data of `ids`, one after the other, which must come to
    /// `len` bytes.
    pub(crate) fn data(&self, ids: &[u64], len: u64) -> Result<Parts, Status> {
        let now = now_ms();
        let buffer = Self::lock(&self.buffer);
        let mut out = Parts::new();
        for &id in ids {
            let d = buffer.get(id, now).ok_or_else(|| {
                error(
                    ErrorKind::DataMissing,
                    format!(
                        "data {id:#x} is not buffered here (expired or never pushed): push again"
                    ),
                )
            })?;
            out.extend(d);
        }
        if parts_len(&out) != len {
            return Err(error(
                ErrorKind::InvalidArgument,
                format!(
                    "data {ids:x?} holds {} bytes, the mutation names {len}",
                    parts_len(&out)
                ),
            ));
        }
        Ok(out)
    }

    /// The pushed data of `ids` as [`Self::data`] gives it, waiting up to
    /// `limit` for data still being pushed here, and briefly for a push
    /// yet to start (`arrivals`): a record append's mutation is sent while
    /// its data is pushed.
    pub(crate) async fn data_arriving(
        &self,
        ids: &[u64],
        len: u64,
        limit: Duration,
    ) -> Result<Parts, Status> {
        // Pushed first (every mutation but a record append): no waiting.
        let here = self.data(ids, len);
        if !here
            .as_ref()
            .is_err_and(|e| gfs_proto::wire::detail_of(e).kind() == ErrorKind::DataMissing)
        {
            return here;
        }
        let started = tokio::time::Instant::now();
        for &id in ids {
            if !self.arrived(id, started, limit).await {
                break;
            }
        }
        self.data(ids, len)
    }

    /// Whether the data of `id` is here, once it came or will not (see
    /// [`Self::data_arriving`]; `started`: when the mutation began to wait).
    async fn arrived(&self, id: u64, started: tokio::time::Instant, limit: Duration) -> bool {
        use crate::arrivals::{START_GRACE, Verdict, verdict};
        let watch = self.arrivals.watch(id);
        loop {
            // Registered before looking, so that a push done in between
            // still wakes it (its data is stored before it signals).
            let done = watch.done().notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if Self::lock(&self.buffer).get(id, now_ms()).is_some() {
                return true;
            }
            let incoming = watch.incoming();
            if verdict(incoming, started.elapsed(), limit) == Verdict::Missing {
                return false;
            }
            // Without a push under way, look again at the grace's end (a
            // push that starts meanwhile is waited for from then on).
            let until = started + if incoming { limit } else { START_GRACE };
            let _ = tokio::time::timeout_at(until, done).await;
        }
    }

    /// Up to `r.length` bytes at `r.offset` if this replica is at the
    /// version the reader expects, verified; and the chunk's length here.
    /// A corrupt replica is quarantined, never served.
    pub(crate) async fn read_chunk(&self, r: &ReadRequest) -> Result<(Bytes, u64), Status> {
        if r.length > MAX_FRAME_BYTES as u64 {
            return Err(invalid(format!(
                "a read returns at most {MAX_FRAME_BYTES} bytes, {} were asked for",
                r.length
            )));
        }
        let h = ChunkHandle(r.handle);
        let info = self.store.info(h).await.map_err(store_status)?;
        if fence_read(info.version.0, r.version) == Fence::Refuse {
            return Err(error(
                ErrorKind::StaleVersion,
                format!(
                    "chunk {h} is at version {} here, the reader expects {}: read another replica",
                    info.version.0, r.version
                ),
            ));
        }
        let len = r.length.min(info.length.saturating_sub(r.offset));
        let data = if len == 0 {
            Bytes::new()
        } else {
            match self.store.read(h, r.offset, len).await {
                Ok(d) => d,
                Err(e @ StoreError::Corrupt { .. }) => {
                    // Never served: the replica goes to quarantine, the
                    // masters hear it is gone, and the reader tries another.
                    tracing::error!(chunk = %h, error = %e, "corrupt replica quarantined");
                    if self.store.quarantine(h, &e.to_string()).await.is_ok() {
                        self.note(h, None);
                    }
                    return Err(store_status(e));
                }
                Err(e) => return Err(store_status(e)),
            }
        };
        Ok((data, info.length))
    }

    /// After a mutation every replica took: its data is no longer needed,
    /// and the lease saw a mutation.
    fn committed(&self, h: ChunkHandle, ids: &[u64], now: u64) {
        self.forget_data(ids);
        if let Some(l) = Self::lock(&self.leases).get_mut(&h) {
            l.last_mutation_ms = now;
        }
    }

    /// Drops pushed data from the buffer. Data not here yet (a mutation
    /// may come before it: `arrivals`) is refused when it comes.
    fn forget_data(&self, ids: &[u64]) {
        let mut buffer = Self::lock(&self.buffer);
        for &id in ids {
            if !buffer.remove(id) {
                self.arrivals.forget(id, now_ms());
            }
        }
    }

    /// Room in the push buffer for `bytes` more.
    pub(crate) fn reserve(&self, bytes: u64) -> Result<(), Full> {
        Self::lock(&self.buffer).reserve(bytes, now_ms())
    }

    /// Gives back a reservation whose push failed.
    pub(crate) fn release(&self, bytes: u64) {
        Self::lock(&self.buffer).release(bytes);
    }

    /// Keeps a push that reserved `reserved` bytes for its mutation.
    pub(crate) fn store_pushed(
        &self,
        id: u64,
        data: Parts,
        received: Option<Received>,
        reserved: u64,
    ) {
        let now = now_ms();
        let mut buffer = Self::lock(&self.buffer);
        if self.arrivals.unwanted(id, now) {
            // Dropped before it came: nothing will use it.
            buffer.release(reserved);
            return;
        }
        buffer.insert(id, data, received, reserved, now);
    }

    /// The chunk's state here, creating it (at `version`) if it is absent
    /// and the mutation starts a new chunk.
    async fn local(&self, h: ChunkHandle, version: u64, create: bool) -> Result<ChunkInfo, Status> {
        if self.cloning.contains(h) {
            return Err(error(
                ErrorKind::Busy,
                format!("chunk {h} is still being copied here"),
            ));
        }
        match self.store.info(h).await {
            Ok(i) => Ok(i),
            Err(StoreError::NotFound(_)) if create => {
                match self.store.create(h, ChunkVersion(version)).await {
                    Ok(()) | Err(StoreError::AlreadyExists(_)) => {}
                    Err(e) => return Err(store_status(e)),
                }
                self.note(h, Some(ChunkVersion(version)));
                self.store.info(h).await.map_err(store_status)
            }
            Err(e) => Err(store_status(e)),
        }
    }

    /// Version fencing for a mutation at the primary (or a `SetVersion`
    /// from the master); adopts a newer version durably.
    async fn fence(&self, info: &ChunkInfo, version: u64) -> Result<(), Status> {
        self.fence_by(fence_mutation(info.version.0, version), info, version)
            .await
    }

    async fn fence_by(&self, fence: Fence, info: &ChunkInfo, version: u64) -> Result<(), Status> {
        match fence {
            Fence::Current => Ok(()),
            Fence::Adopt => {
                self.store
                    .set_version(info.handle, ChunkVersion(version))
                    .await
                    .map_err(store_status)?;
                self.note(info.handle, Some(ChunkVersion(version)));
                Ok(())
            }
            Fence::Refuse => Err(error(
                ErrorKind::StaleVersion,
                format!(
                    "chunk {} is at version {} here, the request names {version}: ask the master again",
                    info.handle, info.version.0
                ),
            )),
        }
    }

    /// A write's data checksummed, and copied into its I/O buffer unless
    /// it was received into the store's memory and lands on a sector,
    /// before its turn: done while the mutation ahead of it is on the disk.
    /// `data` is the data of `ids`, one after the other.
    pub(crate) fn prepare(
        &self,
        kind: MutationKind,
        offset: u64,
        ids: &[u64],
        data: &[Bytes],
    ) -> Option<Prepared> {
        if kind == MutationKind::Pad {
            return None;
        }
        let received: Option<Vec<Received>> = {
            let (buffer, now) = (Self::lock(&self.buffer), now_ms());
            ids.iter().map(|&id| buffer.received(id, now)).collect()
        };
        let was_received = received.is_some();
        if let Some(p) = received.and_then(|r| self.store.prepare_received(offset, &r)) {
            tracing::trace!(offset, parts = ids.len(), "prepared in place");
            return Some(p);
        }
        let parts: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        tracing::trace!(offset, parts = ids.len(), was_received, "prepared by copy");
        self.store.prepare(offset, &parts)
    }

    /// Applies one mutation locally, from its prepared buffer if it has
    /// one: once this returns, the mutation is ordered here (the next may
    /// follow it); the landing says when it is on the disk.
    async fn submit_local(
        &self,
        h: ChunkHandle,
        kind: MutationKind,
        (offset, data, prepared): (u64, &[Bytes], Option<Prepared>),
        at_end: bool,
    ) -> Result<Landing, Status> {
        let parts: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        match kind {
            MutationKind::Pad => self.store.pad_to_end(h).await.map(Landing::landed_at),
            _ if at_end => self.store.submit_at_end(h, offset, &parts, prepared).await,
            _ => {
                self.store
                    .submit_prepared(h, offset, &parts, prepared)
                    .await
            }
        }
        .map_err(store_status)
    }

    /// Waits until a mutation submitted here is on the disk (and durable,
    /// with `sync`); returns the chunk's length after it.
    async fn landed(&self, h: ChunkHandle, landing: Landing, sync: bool) -> Result<u64, Status> {
        let len = landing.landed().await.map_err(store_status)?;
        if sync {
            self.store.sync(h).await.map_err(store_status)?;
        }
        Ok(len)
    }

    /// Now, as leases are timed: by the leader's clock (`leader_clock`).
    pub fn lease_now(&self) -> u64 {
        self.leader_clock.now_ms()
    }

    /// Leases held that have not expired at `now` (`lease_now`).
    pub fn leases_held(&self, now: u64) -> usize {
        let leases = Self::lock(&self.leases);
        leases.values().filter(|l| l.expires_ms > now).count()
    }

    /// Bytes the push buffer holds or has reserved for pushes arriving.
    pub fn buffer_used(&self) -> u64 {
        Self::lock(&self.buffer).used()
    }

    fn held_lease(
        &self,
        h: ChunkHandle,
        claimed_expiry: u64,
        version: u64,
        now: u64,
    ) -> Result<(), Status> {
        let mut leases = Self::lock(&self.leases);
        let l = leases.entry(h).or_default();
        if version <= l.revoked_through {
            return Err(error(
                ErrorKind::NotPrimary,
                format!("the lease on chunk {h} was revoked: ask the master for the primary"),
            ));
        }
        if claimed_expiry > l.relinquished_up_to {
            l.extend_to(claimed_expiry, now);
        }
        if now >= l.expires_ms {
            return Err(error(
                ErrorKind::NotPrimary,
                format!("no valid lease on chunk {h} here: ask the master for the primary"),
            ));
        }
        Ok(())
    }

    /// Deletes a replica the leader named, unless it is being cloned or
    /// has reached `below_version` since (0: any version). Returns whether
    /// it is gone.
    pub async fn delete_replica(&self, h: ChunkHandle, below_version: u64) -> Result<bool, Status> {
        if self.cloning.contains(h) {
            return Ok(false);
        }
        match self.store.info(h).await {
            Ok(i) if below_version != 0 && i.version.0 >= below_version => return Ok(false),
            Ok(_) => {}
            Err(StoreError::NotFound(_)) => return Ok(true),
            Err(e) => return Err(store_status(e)),
        }
        match self.store.delete(h).await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(store_status(e)),
        }
        Self::lock(&self.leases).remove(&h);
        self.note(h, None);
        Ok(true)
    }

    /// Stops acting as primary for `h` under any lease granted so far, and
    /// has the leader told, so it can choose another primary at once.
    fn relinquish(&self, h: ChunkHandle) {
        if let Some(l) = Self::lock(&self.leases).get_mut(&h) {
            l.relinquished_up_to = l.relinquished_up_to.max(l.expires_ms);
            l.expires_ms = 0;
        }
        Self::lock(&self.relinquished).push(h);
        tracing::warn!(chunk = %h, "gave up the lease after a local failure");
    }

    /// Gives up every lease held (`relinquish`) on a chunk whose disk has
    /// completed no I/O for `PROBE.disk_stalled`: the leader then chooses
    /// other primaries at once, where it would wait out the leases of a
    /// primary it still hears from (the mutations held on that disk fail
    /// at their callers' probes, which see the same stall). Chunks on the
    /// other disks keep theirs.
    /// `stalled`: the store's `stalled_for`, the worst disk's.
    pub(crate) fn give_up_leases_if_disks_stalled(&self, now: u64, stalled: Duration) {
        if stalled < PROBE.disk_stalled {
            return;
        }
        let held: Vec<ChunkHandle> = Self::lock(&self.leases)
            .iter()
            .filter(|(_, l)| l.expires_ms > now)
            .map(|(h, _)| *h)
            .filter(|h| self.store.stalled_for_chunk(*h) >= PROBE.disk_stalled)
            .collect();
        if !held.is_empty() {
            tracing::warn!(
                ?stalled,
                leases = held.len(),
                "a disk completed no I/O for too long; giving up the leases of its chunks"
            );
        }
        for h in held {
            self.relinquish(h);
        }
    }
}

/// Maps an engine error to what the caller should do.
pub fn store_status(e: StoreError) -> Status {
    let kind = match &e {
        StoreError::NotFound(_) => ErrorKind::NotFound,
        StoreError::Withdrawn(_) | StoreError::NotAtEnd { .. } => ErrorKind::Unavailable,
        StoreError::OutOfRange { .. }
        | StoreError::ChunkFull { .. }
        | StoreError::TooLarge { .. }
        | StoreError::AlreadyExists(_) => ErrorKind::InvalidArgument,
        StoreError::Corrupt { .. } => ErrorKind::Corrupt,
        StoreError::NoSpace { .. } => ErrorKind::NoSpace,
        StoreError::Poisoned { .. } | StoreError::Io { .. } | StoreError::Config(_) => {
            ErrorKind::Internal
        }
    };
    error(kind, e.to_string())
}

/// A request the chunkserver refuses as malformed.
pub(crate) fn invalid(msg: impl Into<String>) -> Status {
    error(ErrorKind::InvalidArgument, msg)
}

fn kind_of(k: i32, allow_pad: bool) -> Result<MutationKind, Status> {
    match MutationKind::try_from(k) {
        Ok(MutationKind::Write | MutationKind::Append) => {
            Ok(MutationKind::try_from(k).unwrap_or_default())
        }
        Ok(MutationKind::Pad) if allow_pad => Ok(MutationKind::Pad),
        _ => Err(invalid(format!("mutation kind {k} is not valid here"))),
    }
}

#[derive(Debug, Clone)]
pub struct ChunkService {
    pub shared: Arc<Shared>,
}

impl ChunkService {
    fn check_size(&self, offset: u64, len: u64) -> Result<(), Status> {
        let max = self.shared.cfg.store.max_request_bytes;
        if len > max {
            return Err(invalid(format!(
                "{len} bytes exceed the {max}-byte mutation limit"
            )));
        }
        let size = self.shared.cfg.chunk_size_bytes;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(invalid(format!(
                "range {offset}+{len} is outside the {size}-byte chunk"
            )));
        }
        Ok(())
    }

    /// Forwards a mutation to every secondary at once, but those that
    /// failed one of the chunk's version already (`Missed`).
    async fn forward(&self, r: &MutateRequest, apply: ApplyRequest, slot: &Slot) -> Forwarded {
        let missed = Shared::lock(&slot.missed).at(r.version).to_vec();
        // Over the data plane: a framed request on a pooled connection
        // costs far fewer task hand-offs than a gRPC call (h2's connection
        // task on both sides).
        let mut calls = tokio::task::JoinSet::new();
        let mut failed: Vec<u64> = Vec::new();
        for s in &r.secondaries {
            if missed.contains(&s.node_id) {
                failed.push(s.node_id);
                continue;
            }
            let (id, req, addr) = (s.node_id, apply.clone(), s.addr.clone());
            let pool = self.shared.data.clone();
            calls.spawn(async move {
                // As long as the secondary's disk takes, but not on a
                // secondary that stopped answering at all.
                let res = pool
                    .call_probed::<_, ApplyReply>(
                        &addr,
                        Op::Apply,
                        &req,
                        (PEER_TIMEOUT, probe_of(req.handle)),
                    )
                    .await;
                (id, res)
            });
        }
        let (mut failing, mut missing, mut superseded) = (Vec::new(), false, false);
        while let Some(done) = calls.join_next().await {
            let Ok((id, res)) = done else { continue };
            match res.map_err(|s| (gfs_proto::wire::detail_of(&s).kind(), s)) {
                Ok(_) => {}
                Err((ErrorKind::DataMissing, _)) => missing = true,
                Err((ErrorKind::NotPrimary, _)) => superseded = true,
                Err((_, s)) => {
                    tracing::warn!(secondary = id, error = %s.message(), "secondary failed a mutation");
                    failing.push(id);
                }
            }
        }
        if !failing.is_empty() {
            Shared::lock(&slot.missed).add(r.version, &failing);
        }
        failed.extend(failing);
        failed.sort_unstable();
        Forwarded {
            failed,
            missing,
            superseded,
        }
    }
}

/// How the secondaries took a mutation.
struct Forwarded {
    /// Those that failed it.
    failed: Vec<u64>,
    /// Whether one only lacked the pushed data.
    missing: bool,
    /// Whether one holds a newer version of the chunk: the lease is over.
    superseded: bool,
}

#[tonic::async_trait]
impl Chunkserver for ChunkService {
    async fn mutate(&self, req: Request<MutateRequest>) -> Result<Response<MutateReply>, Status> {
        let me = self.clone();
        to_end(async move { me.mutate_now(req).await }).await
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyReply>, Status> {
        let me = self.clone();
        to_end(async move { me.apply_now(req).await }).await
    }

    async fn set_version(
        &self,
        req: Request<SetVersionRequest>,
    ) -> Result<Response<Empty>, Status> {
        let me = self.clone();
        to_end(async move { me.set_version_now(req).await }).await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<Empty>, Status> {
        let me = self.clone();
        to_end(async move { me.delete_now(req).await }).await
    }

    async fn counters(&self, _: Request<Empty>) -> Result<Response<HostCounters>, Status> {
        let dirs = self.shared.cfg.store.dirs.clone();
        // A few small reads of /proc and /sys, off the runtime's threads.
        tokio::task::spawn_blocking(move || crate::host::counters_now(&dirs))
            .await
            .map(Response::new)
            .map_err(|e| error(ErrorKind::Internal, format!("reading the counters: {e}")))
    }

    async fn revoke(&self, req: Request<RevokeRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let h = ChunkHandle(r.handle);
        let sh = &self.shared;
        {
            let mut leases = Shared::lock(&sh.leases);
            let l = leases.entry(h).or_default();
            l.revoked_through = l.revoked_through.max(r.version);
            l.relinquished_up_to = l.relinquished_up_to.max(l.expires_ms);
            l.expires_ms = 0;
        }
        // The next heartbeat says so too: this answer may never reach the
        // leader (a mutation held on a hung disk holds it up past the
        // leader's wait), and with the lease ended here the disk's stall
        // would no longer give it up (`give_up_leases_if_disks_stalled`).
        Shared::lock(&sh.relinquished).push(h);
        // Wait out the mutation being applied, if any: once this returns,
        // nothing more is applied under the revoked lease.
        let slot = sh.ordered(h);
        drop(slot.order.lock().await);
        tracing::info!(chunk = %h, version = r.version, "lease revoked by the leader");
        Ok(Response::new(Empty {}))
    }

    async fn copy_local(
        &self,
        req: Request<CopyLocalRequest>,
    ) -> Result<Response<CloneReply>, Status> {
        let length = copy_local(&self.shared, req.into_inner()).await?;
        Ok(Response::new(CloneReply { length }))
    }

    async fn clone_chunk(
        &self,
        req: Request<CloneRequest>,
    ) -> Result<Response<CloneReply>, Status> {
        let length = clone_chunk(&self.shared, req.into_inner()).await?;
        Ok(Response::new(CloneReply { length }))
    }
}

/// The state-changing handlers, each run to the end by `to_end`.
impl ChunkService {
    async fn mutate_now(
        &self,
        req: Request<MutateRequest>,
    ) -> Result<Response<MutateReply>, Status> {
        let r = req.into_inner();
        let kind = kind_of(r.kind, false)?;
        let h = ChunkHandle(r.handle);
        let sh = &self.shared;
        if r.secondaries.len() > MAX_CHAIN {
            return Err(invalid("too many secondaries"));
        }
        let record_max = gfs_proto::limits::max_record_bytes(sh.cfg.chunk_size_bytes);
        match kind {
            MutationKind::Append if r.length > record_max.min(sh.cfg.store.max_request_bytes) => {
                return Err(invalid(format!(
                    "a record of {} bytes exceeds the limit of {}",
                    r.length,
                    record_max.min(sh.cfg.store.max_request_bytes)
                )));
            }
            MutationKind::Append => self.check_size(0, r.length)?,
            _ => self.check_size(r.offset, r.length)?,
        }
        sh.held_lease(h, r.lease_expires_ms, r.version, sh.lease_now())?;
        let data = sh
            .data_arriving(&[r.data_id], r.length, PEER_TIMEOUT)
            .await?;
        // The lease again, as of now: the data may have been a while coming.
        let now = sh.lease_now();
        sh.held_lease(h, r.lease_expires_ms, r.version, now)?;
        let slot = sh.ordered(h);
        if kind == MutationKind::Append {
            return self.append(slot, r, data).await.map(Response::new);
        }
        let waited_out = tokio::time::Instant::now() + OUT_OF_ORDER_WAIT;
        let mut order = loop {
            let order = slot.order.lock().await;
            let length = sh.store.info(h).await.map_or(0, |i| i.length);
            if r.offset <= length {
                break order;
            }
            if tokio::time::Instant::now() >= waited_out {
                // A small gap is filled with zeros (a sparse write); a
                // larger one means the data before it is still coming.
                if r.offset - length + r.length <= sh.cfg.store.max_request_bytes {
                    break order;
                }
                return Err(error(
                    ErrorKind::Busy,
                    format!(
                        "chunk {h} holds {length} bytes; the write at {} waits for the data before it",
                        r.offset
                    ),
                ));
            }
            let notified = slot.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            drop(order);
            let _ = tokio::time::timeout_at(waited_out, notified).await;
        };
        // A revocation may have come while this waited for its turn.
        let result = match sh.held_lease(h, r.lease_expires_ms, r.version, now) {
            Ok(()) => self.write_ordered(&r, data, &slot, &mut order, now).await,
            Err(e) => Err(e),
        };
        drop(order);
        slot.applied.notify_waiters();
        result.map(Response::new)
    }
    async fn apply_now(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyReply>, Status> {
        let r = req.into_inner();
        let kind = kind_of(r.kind, true)?;
        let slot = self.shared.ordered(ChunkHandle(r.handle));
        let turn = (r.primary_run, r.serial, r.after_serial);
        // The data is found and prepared now, its errors reported in turn.
        let data = self.incoming(&r, kind).await;
        let landing = slot
            .in_turn(turn, PEER_TIMEOUT, self.apply_here(&slot, &r, kind, data))
            .await?;
        let sh = &self.shared;
        let length = sh.landed(ChunkHandle(r.handle), landing, r.sync).await?;
        sh.forget_data(&r.data_ids);
        sh.forget_data(&r.dropped_data_ids);
        Ok(Response::new(ApplyReply {
            chunk_length: length,
        }))
    }
    async fn set_version_now(
        &self,
        req: Request<SetVersionRequest>,
    ) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let h = ChunkHandle(r.handle);
        let sh = &self.shared;
        // Not behind the chunk's ordering lock: mutations may be queued
        // there for seconds, and adopting a newer version is idempotent.
        let info = sh.local(h, r.version, r.create).await?;
        sh.fence(&info, r.version).await?;
        Ok(Response::new(Empty {}))
    }
    async fn delete_now(&self, req: Request<DeleteRequest>) -> Result<Response<Empty>, Status> {
        let r = req.into_inner();
        let h = ChunkHandle(r.handle);
        if !self.shared.delete_replica(h, r.below_version).await? {
            return Err(error(
                ErrorKind::Conflict,
                format!("chunk {h} is being cloned or is current here; kept"),
            ));
        }
        Ok(Response::new(Empty {}))
    }
}

/// Runs a handler in a task of its own, so it ends as it would have if its
/// caller had waited. tonic drops a handler when its caller gives up (the
/// master's 1 s on `SetVersion`, a client's timeout on a mutation), and a
/// create, a version change or a mutation cut off half-way left the replica
/// in a state nothing expected: a chunk whose files existed but that the
/// store did not know, failing every later mutation of it.
async fn to_end<T: Send + 'static>(
    handler: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(handler).await.unwrap_or_else(|e| {
        Err(error(
            ErrorKind::Internal,
            format!("the handler failed: {e}"),
        ))
    })
}

impl ChunkService {
    /// A write at the client's offset, under the chunk's order lock: fence,
    /// apply here and at the secondaries.
    async fn write_ordered(
        &self,
        r: &MutateRequest,
        data: Parts,
        slot: &Slot,
        order: &mut Ordered,
        now: u64,
    ) -> Result<MutateReply, Status> {
        let sh = &self.shared;
        let h = ChunkHandle(r.handle);
        let info = sh.local(h, r.version, r.offset == 0).await?;
        sh.fence(&info, r.version).await?;
        let m = Planned {
            ids: vec![r.data_id],
            sync: r.sync,
            ..order.plan(MutationKind::Write, r.offset, data, 0)
        };
        let (length, failed) = self.commit(r, &m, slot).await?;
        if failed.is_empty() {
            sh.committed(h, &[r.data_id], now);
        }
        Ok(MutateReply {
            offset: r.offset,
            chunk_length: length,
            chunk_full: false,
            failed,
        })
    }

    /// The pushed data a secondary's mutation names, prepared for the disk.
    async fn incoming(
        &self,
        r: &ApplyRequest,
        kind: MutationKind,
    ) -> Result<(Parts, Option<Prepared>), Status> {
        if kind == MutationKind::Pad {
            return Ok((Parts::new(), None));
        }
        self.check_size(r.offset, r.length)?;
        let data = self
            .shared
            .data_arriving(&r.data_ids, r.length, PEER_TIMEOUT)
            .await?;
        let prepared = self.shared.prepare(kind, r.offset, &r.data_ids, &data);
        Ok((data, prepared))
    }

    /// A secondary's part of a mutation, in its turn: fence and submit.
    async fn apply_here(
        &self,
        slot: &Slot,
        r: &ApplyRequest,
        kind: MutationKind,
        incoming: Result<(Parts, Option<Prepared>), Status>,
    ) -> Result<Landing, Status> {
        let h = ChunkHandle(r.handle);
        let sh = &self.shared;
        let (data, prepared) = incoming?;
        let _order = slot.order.lock().await;
        let info = sh.local(h, r.version, r.create).await?;
        if info.version.0 > r.version {
            // The masters granted a new version since the primary took
            // this mutation: its lease is over, and this replica is not
            // at fault (the primary must not report it failed).
            return Err(error(
                ErrorKind::NotPrimary,
                format!(
                    "chunk {h} is at version {} here, newer than the mutation's {}: the lease it came under is over",
                    info.version.0, r.version
                ),
            ));
        }
        let fence = fence_forwarded(info.version.0, r.version);
        sh.fence_by(fence, &info, r.version).await?;
        sh.submit_local(h, kind, (r.offset, &data[..], prepared), false)
            .await
    }

    /// Applies a mutation here and at the secondaries, each in its turn in
    /// this chunk's serial order: the chunk's length here after it, and
    /// the secondaries that failed it.
    async fn commit(
        &self,
        r: &MutateRequest,
        m: &Planned,
        slot: &Slot,
    ) -> Result<(u64, Vec<u64>), Status> {
        let sh = &self.shared;
        let h = ChunkHandle(r.handle);
        let apply = ApplyRequest {
            handle: r.handle,
            version: r.version,
            kind: m.kind as i32,
            offset: m.offset,
            data_ids: m.ids.clone(),
            dropped_data_ids: m.dropped.clone(),
            length: parts_len(&m.data),
            serial: m.serial,
            sync: m.sync,
            create: m.offset == 0 && m.kind != MutationKind::Pad,
            after_serial: m.after,
            primary_run: sh.run,
        };
        // The secondaries write while this replica does: the disk sees the
        // three writes together, not one and then two. A failure anywhere
        // leaves the region inconsistent, as a failed secondary always did.
        let started = std::time::Instant::now();
        let prepared = sh.prepare(m.kind, m.offset, &m.ids, &m.data);
        let here = async {
            // A round of appends placed after one in flight goes at the
            // chunk's end or not at all (`submit_at_end`); one placed
            // after a failure fails as that one did.
            let submit = async {
                slot.follows_a_failure(m.after)?;
                let at_end = m.after != 0;
                sh.submit_local(h, m.kind, (m.offset, &m.data, prepared), at_end)
                    .await
                    .map_err(|e| slot.follows_a_failure(m.after).err().unwrap_or(e))
            };
            let turn = (sh.run, m.serial, m.after);
            let out = match slot.in_turn(turn, PEER_TIMEOUT, submit).await {
                Ok(landing) => sh.landed(h, landing, m.sync).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &out {
                slot.failed_here(m.serial, e);
            }
            tracing::trace!(
                serial = m.serial,
                local_ms = started.elapsed().as_secs_f64() * 1e3,
                "committed here"
            );
            out
        };
        let forwarded = async {
            let out = self.forward(r, apply, slot).await;
            tracing::trace!(
                serial = m.serial,
                forward_ms = started.elapsed().as_secs_f64() * 1e3,
                "committed at the secondaries"
            );
            out
        };
        let (local, forwarded) = tokio::join!(here, forwarded);
        let Forwarded {
            failed,
            missing,
            superseded,
        } = forwarded;
        let length = match local {
            Ok(l) => l,
            Err(e) => {
                // This replica cannot take the mutation (disk full, I/O
                // error), or missed one that rounds of appends in flight
                // were placed after: another primary must order the chunk.
                if m.after != 0
                    || matches!(
                        gfs_proto::wire::detail_of(&e).kind(),
                        ErrorKind::NoSpace | ErrorKind::Internal
                    )
                {
                    sh.relinquish(h);
                }
                return Err(e);
            }
        };
        if superseded {
            return Err(error(
                ErrorKind::StaleVersion,
                format!("chunk {h} has a newer version at a secondary: ask the master again"),
            ));
        }
        if missing && failed.is_empty() {
            return Err(error(
                ErrorKind::DataMissing,
                "a secondary lacks the pushed data: push again and retry",
            ));
        }
        Ok((length, failed))
    }
}
