//! [`ChunkStore`]: the async, cloneable handle the chunkserver talks to.
//!
//! Concurrency: the chunk map sits behind a short std lock; each chunk has a
//! tokio `RwLock` so reads run together and mutations of one chunk are
//! serialised (the primary orders them anyway). I/O never happens under the
//! map lock.
//!
//! Write path (append, write_at, pad): build one sector-aligned buffer for
//! the affected region (reusing the cached tail sector or reading the edge
//! blocks, verified, for an overwrite), compute the new block checksums
//! (incrementally for an append into a partial block), then submit the data
//! writes and the entry updates together and wait for all of them. The
//! entries go to each block's other slot, so the old state stays readable
//! until the new one is complete.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use gfs_proto::{ChunkHandle, ChunkVersion};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::faulty::{FaultSwitch, FaultyBackend};
use crate::backend::timed::{Outstanding, TimedBackend};
use crate::backend::{IoBackend, IoOp};
use crate::buf::{AlignedBuf, Arena, BufPool, IoSlice};
use crate::config::{StoreConfig, StoreConfigFile};
use crate::error::{IoContext, Result, StoreError};
use crate::io as eio;
use crate::layout::{self, Header, SECTOR_BYTES};

mod ahead;
pub use ahead::Landing;
mod data;
pub use data::Prepared;
use data::Staged;
mod files;
mod received;
pub use received::{Received, Receiving};
mod recycle;
mod scrub;

const STORE_MARKER: &str = "STORE";
const CHUNKS: &str = "chunks";
const QUARANTINE: &str = "quarantine";
/// A directory whose disk has left an I/O undone this long gets new chunks
/// only when every other has too (`pick_dir`): no device I/O takes a
/// second on a well disk, and a false alarm costs only the choice.
pub const STALLED_DIR: Duration = Duration::from_secs(1);

/// One chunk as `list` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub handle: ChunkHandle,
    pub version: ChunkVersion,
    pub length: u64,
}

/// Space and health of one data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskUsage {
    pub dir: PathBuf,
    pub backend: &'static str,
    pub direct_io: bool,
    /// I/O buffers are registered with io_uring.
    pub registered_buffers: bool,
    /// Bytes of chunk data stored here.
    pub used_bytes: u64,
    /// Free space: the filesystem's, plus `pooled_bytes`.
    pub free_bytes: u64,
    /// Space held by the data files of deleted chunks waiting for new ones
    /// (`recycle`): taken by the next creates without allocating.
    pub pooled_bytes: u64,
    pub total_bytes: u64,
    /// Why the directory refuses writes, if it does.
    pub poisoned: Option<String>,
}

/// A chunk found corrupt, by recovery or the scrubber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptChunk {
    pub handle: ChunkHandle,
    pub dir: PathBuf,
    pub reason: String,
}

/// What opening the store found and did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub chunks: usize,
    /// Chunks whose torn tail was cut: (handle, claimed length, recovered length).
    pub cut: Vec<(ChunkHandle, u64, u64)>,
    /// Chunks moved to `quarantine/`.
    pub quarantined: Vec<CorruptChunk>,
    /// Leftovers of interrupted creates and deletes that were removed.
    pub removed: Vec<PathBuf>,
    /// The backend chosen for each directory and why.
    pub backends: Vec<(PathBuf, &'static str, String)>,
}

/// One data directory's device I/O for the store (`ChunkStore::io`).
#[derive(Clone, Debug)]
pub struct DirIo {
    pub dir: PathBuf,
    pub counts: crate::backend::timed::IoCounts,
    /// How long its oldest outstanding I/O has waited (zero: none).
    pub oldest: Duration,
}

/// Cheap to clone; all clones share one store.
#[derive(Clone, Debug)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: StoreConfig,
    dirs: Vec<Dir>,
    chunks: RwLock<HashMap<ChunkHandle, Arc<Chunk>>>,
    creating: Mutex<HashSet<ChunkHandle>>,
    /// Woken whenever a create ends, for a create of the same handle
    /// waiting on it.
    created: tokio::sync::Notify,
    pool: BufPool,
    /// Buffer memory, in sectors.
    memory: Arc<Semaphore>,
    /// The part of `memory` prepared appends may hold while they wait for
    /// their turn: all of it but what the largest request needs, so a
    /// mutation in its turn always finds memory once other mutations in
    /// their turn and reads let theirs go, never waiting on a preparation
    /// that waits on it.
    preparing: Arc<Semaphore>,
    /// The part of `preparing` data received into the store's memory may
    /// hold (half): a push can wait long for its mutation (or never get
    /// one, until it expires), and reads and copied preparations keep the
    /// other half.
    receiving: Arc<Semaphore>,
    epoch: Instant,
    /// Each directory's I/O submitted and not completed, by directory
    /// (`stalled_for`), and what its device did (`io`).
    outstanding: Vec<Arc<Outstanding>>,
    /// Reads that found a block whose checksum did not match (`read`,
    /// which the scrubber's passes go through too).
    checksum_failures: AtomicU64,
}

#[derive(Debug)]
struct Dir {
    root: PathBuf,
    chunks: PathBuf,
    backend: Box<dyn IoBackend>,
    direct: bool,
    poisoned: Mutex<Option<String>>,
    used_bytes: AtomicU64,
    /// `recycle/`, and the data files of deleted chunks waiting there for
    /// new chunks (`recycle`).
    recycle: PathBuf,
    recycled: Mutex<Vec<PathBuf>>,
}

#[derive(Debug)]
struct Chunk {
    handle: ChunkHandle,
    dir: usize,
    state: tokio::sync::RwLock<ChunkState>,
    /// Milliseconds since the store's epoch at the last mutation.
    last_mutation_ms: AtomicU64,
    /// Signalled each time an append accepted ahead lands or fails.
    landed: tokio::sync::Notify,
}

#[derive(Debug)]
struct ChunkState {
    version: u64,
    length: u64,
    crcs: Vec<u32>,
    slots: Vec<u8>,
    next_seq: u64,
    synced_seq: u64,
    header_seq: u64,
    header_slot: u8,
    data: Arc<File>,
    meta: Arc<File>,
    /// Bytes of the data file known to be allocated: its size. Writes below
    /// it neither extend the file nor allocate blocks, so ext4 takes them
    /// under its shared inode lock and io_uring does not hand them to its
    /// worker threads (`files::grow_to`).
    allocated: u64,
    /// The last, partial sector of the data, so an unaligned append does not
    /// have to read it back.
    tail: Option<(u64, Box<[u8]>)>,
    deleted: bool,
    /// Appends accepted while earlier ones may still be on the disk
    /// (`ahead`).
    ahead: Option<ahead::Ahead>,
}

/// A pooled buffer that returns to the pool, and gives back its memory
/// permits, when the last `Bytes` pointing into it is dropped.
struct Leased {
    buf: Option<AlignedBuf>,
    pool: Weak<Inner>,
    _permit: OwnedSemaphorePermit,
    /// A prepared append's share of the memory preparations may hold.
    _preparing: Option<OwnedSemaphorePermit>,
    /// Received data's share of that.
    _receiving: Option<OwnedSemaphorePermit>,
}

/// Memory permits a buffer of `len` bytes counts for: what the heap pool
/// would allocate (a power of two), capped at the whole bound so a request
/// never waits for more than exists.
fn permits(config: &StoreConfig, len: usize) -> u32 {
    let size = len.max(SECTOR_BYTES as usize).next_power_of_two();
    let total = config.buffer_memory_bytes / SECTOR_BYTES;
    (size as u64 / SECTOR_BYTES).min(total) as u32
}

/// Permits preparations may hold together: the bound less what the
/// largest request (its region has a partial sector at each end) counts for.
fn preparing_permits(config: &StoreConfig) -> u32 {
    let total = (config.buffer_memory_bytes / SECTOR_BYTES) as u32;
    let largest = config.max_request_bytes + 2 * SECTOR_BYTES;
    total - permits(config, largest as usize)
}

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_slice())
    }
}

impl Drop for Leased {
    fn drop(&mut self) {
        if let (Some(buf), Some(inner)) = (self.buf.take(), self.pool.upgrade()) {
            inner.pool.put(buf);
        }
    }
}

fn data_path(dir: &Path, h: ChunkHandle) -> PathBuf {
    dir.join(format!("{h}.chunk"))
}

fn meta_path(dir: &Path, h: ChunkHandle) -> PathBuf {
    dir.join(format!("{h}.meta"))
}

fn parse_handle(stem: &str) -> Option<ChunkHandle> {
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok().map(ChunkHandle))
        .flatten()
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

impl Dir {
    fn check_writable(&self) -> Result<()> {
        match &*self.poisoned.lock().expect("poison lock") {
            Some(reason) => Err(StoreError::Poisoned {
                dir: self.root.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Marks the directory as refusing writes. Logged here, once, where the
    /// failure is handled.
    fn poison(&self, reason: String) -> StoreError {
        let mut p = self.poisoned.lock().expect("poison lock");
        if p.is_none() {
            tracing::error!(dir = %self.root.display(), %reason, "data directory refuses further writes");
            *p = Some(reason.clone());
        }
        StoreError::Poisoned {
            dir: self.root.clone(),
            reason,
        }
    }
}

/// Removes a leftover of an interrupted create or delete found at open.
async fn remove_leftover(path: &Path, report: &mut RecoveryReport) -> Result<()> {
    let p = path.to_path_buf();
    blocking(move || std::fs::remove_file(&p).context(|| format!("remove {}", p.display())))
        .await?;
    tracing::info!(file = %path.display(), "removed leftover of an interrupted create or delete");
    report.removed.push(path.to_path_buf());
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking store task panicked")
}

/// Removes files taken out of a directory's pool.
async fn remove_pooled(files: Vec<PathBuf>) {
    blocking(move || {
        for f in files {
            if let Err(e) = std::fs::remove_file(&f) {
                tracing::warn!(file = %f.display(), error = %e, "could not remove a pooled chunk file");
            }
        }
    })
    .await;
}

impl ChunkStore {
    /// Opens (creating if needed) every data directory and recovers its chunks.
    pub async fn open(config: StoreConfigFile) -> Result<(ChunkStore, RecoveryReport)> {
        Self::open_inner(config, None).await
    }

    /// As `open`, with every directory's backend wrapped in a fault injector.
    pub async fn open_with_faults(
        config: StoreConfigFile,
        faults: FaultSwitch,
    ) -> Result<(ChunkStore, RecoveryReport)> {
        Self::open_inner(config, Some(faults)).await
    }

    async fn open_inner(
        config: StoreConfigFile,
        faults: Option<FaultSwitch>,
    ) -> Result<(ChunkStore, RecoveryReport)> {
        let config = config.validate()?;
        let mut report = RecoveryReport::default();
        let arena = config
            .registered_buffers
            .then(|| Arena::new(config.buffer_memory_bytes as usize));
        let mut dirs = Vec::new();
        let mut outstanding = Vec::new();
        for (i, root) in config.dirs.iter().enumerate() {
            let (cfg, root, arena) = (config.clone(), root.clone(), arena.clone());
            let (dir, reason) = blocking(move || files::prepare_dir(&cfg, i, root, arena)).await?;
            let backend = match &faults {
                Some(switch) => Box::new(FaultyBackend::new(dir.backend, switch.clone())),
                None => dir.backend,
            };
            outstanding.push(Arc::new(Outstanding::default()));
            let backend = Box::new(TimedBackend::new(backend, outstanding[i].clone()));
            let dir = Dir { backend, ..dir };
            tracing::info!(dir = %dir.root.display(), backend = dir.backend.name(), direct_io = dir.direct, %reason, "chunk store directory opened");
            report
                .backends
                .push((dir.root.clone(), dir.backend.name(), reason));
            dirs.push(dir);
        }
        let keep = 16;
        let inner = Arc::new(Inner {
            memory: Arc::new(Semaphore::new(
                (config.buffer_memory_bytes / SECTOR_BYTES) as usize,
            )),
            preparing: Arc::new(Semaphore::new(preparing_permits(&config) as usize)),
            receiving: Arc::new(Semaphore::new(preparing_permits(&config) as usize / 2)),
            config,
            dirs,
            chunks: RwLock::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            created: tokio::sync::Notify::new(),
            pool: BufPool::new(keep, arena),
            epoch: Instant::now(),
            outstanding,
            checksum_failures: AtomicU64::new(0),
        });
        let store = ChunkStore { inner };
        for i in 0..store.inner.dirs.len() {
            store.recover_dir(i, &mut report).await?;
        }
        report.chunks = store.inner.chunks.read().expect("chunk map lock").len();
        Ok((store, report))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// How long the oldest I/O the disks have not completed has waited
    /// (zero with none outstanding): a disk that stopped completing I/O
    /// while this process is well.
    pub fn stalled_for(&self) -> Duration {
        let now = Instant::now();
        let each = self.inner.outstanding.iter().map(|o| o.oldest_at(now));
        each.max().unwrap_or_default()
    }

    /// As `stalled_for`, for the directory a new chunk would go to (the
    /// least stalled writable one, `pick_dir`): whether this store can take
    /// new chunks, where one hung disk of several would make `stalled_for`
    /// say no.
    pub fn stalled_for_new_chunks(&self) -> Duration {
        let now = Instant::now();
        let dirs = self.inner.dirs.iter().zip(&self.inner.outstanding);
        dirs.filter(|(d, _)| d.check_writable().is_ok())
            .map(|(_, o)| o.oldest_at(now))
            .min()
            .unwrap_or_else(|| self.stalled_for())
    }

    /// As `stalled_for`, for the directory holding `handle` only (zero for
    /// a chunk not here): one hung disk of several holds only its own
    /// chunks' mutations.
    pub fn stalled_for_chunk(&self, handle: ChunkHandle) -> Duration {
        match self.chunk(handle) {
            Ok(c) => self.inner.outstanding[c.dir].oldest_at(Instant::now()),
            Err(_) => Duration::ZERO,
        }
    }

    fn chunk(&self, handle: ChunkHandle) -> Result<Arc<Chunk>> {
        let map = self.inner.chunks.read().expect("chunk map lock");
        map.get(&handle)
            .cloned()
            .ok_or(StoreError::NotFound(handle))
    }

    /// Every chunk the map holds now (deleted ones too, until their
    /// removal ends), without holding the map's lock past the call.
    fn every_chunk(&self) -> Vec<Arc<Chunk>> {
        let map = self.inner.chunks.read().expect("chunk map lock");
        map.values().cloned().collect()
    }

    fn dir(&self, chunk: &Chunk) -> &Dir {
        &self.inner.dirs[chunk.dir]
    }

    fn now_ms(&self) -> u64 {
        self.inner.epoch.elapsed().as_millis() as u64
    }

    fn leased(
        &self,
        len: usize,
        permit: OwnedSemaphorePermit,
        preparing: Option<OwnedSemaphorePermit>,
    ) -> Leased {
        Leased {
            buf: Some(self.inner.pool.get(len)),
            pool: Arc::downgrade(&self.inner),
            _permit: permit,
            _preparing: preparing,
            _receiving: None,
        }
    }

    /// A buffer of at least `len` bytes, counted against the memory bound.
    async fn lease(&self, len: usize) -> Result<Leased> {
        let permit = self
            .inner
            .memory
            .clone()
            .acquire_many_owned(permits(&self.inner.config, len))
            .await
            .expect("the memory semaphore is never closed");
        Ok(self.leased(len, permit, None))
    }

    /// A buffer for a prepared append, only if the memory is free right now
    /// and within the share preparations may hold.
    fn lease_to_prepare(&self, len: usize) -> Option<Leased> {
        let n = permits(&self.inner.config, len);
        let share = self.inner.preparing.clone().try_acquire_many_owned(n);
        let share = share.ok()?;
        let permit = self.inner.memory.clone().try_acquire_many_owned(n).ok()?;
        Some(self.leased(len, permit, Some(share)))
    }

    /// A sector-aligned buffer to receive `len` bytes of data into, for
    /// [`prepare_received`](Self::prepare_received): `None` when `len` is 0
    /// or over the largest request, or the memory is not free right now
    /// within received data's share (half of what preparations may hold;
    /// receive into ordinary memory then, and the mutation copies it).
    pub fn receiving(&self, len: usize) -> Option<Receiving> {
        if len == 0 || len as u64 > self.inner.config.max_request_bytes {
            return None;
        }
        let len_sectors = layout::align_up(len as u64) as usize;
        let n = permits(&self.inner.config, len_sectors);
        let share = self.inner.receiving.clone().try_acquire_many_owned(n);
        let share = share.ok()?;
        let mut lease = self.lease_to_prepare(len_sectors)?;
        lease._receiving = Some(share);
        Some(Receiving::new(lease, len))
    }

    // ---- recovery -------------------------------------------------------

    async fn recover_dir(&self, i: usize, report: &mut RecoveryReport) -> Result<()> {
        let dir = &self.inner.dirs[i];
        let chunks_dir = dir.chunks.clone();
        let names = blocking(move || files::list_names(&chunks_dir)).await?;
        for name in names {
            let path = dir.chunks.join(&name);
            if name.ends_with(".meta.tmp") {
                remove_leftover(&path, report).await?;
            } else if let Some(stem) = name.strip_suffix(".chunk") {
                let has_meta =
                    parse_handle(stem).is_some_and(|h| meta_path(&dir.chunks, h).exists());
                if !has_meta && parse_handle(stem).is_some() {
                    remove_leftover(&path, report).await?;
                }
            } else if let Some(stem) = name.strip_suffix(".meta") {
                match parse_handle(stem) {
                    Some(h) => self.recover_chunk(i, h, report).await?,
                    None => {
                        tracing::warn!(file = %path.display(), "ignoring unknown file in chunk directory")
                    }
                }
            } else {
                tracing::warn!(file = %path.display(), "ignoring unknown file in chunk directory");
            }
        }
        eio::sync_dir(&dir.chunks).context(|| format!("fsync {}", dir.chunks.display()))?;
        Ok(())
    }

    async fn recover_chunk(
        &self,
        i: usize,
        h: ChunkHandle,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        let dir = &self.inner.dirs[i];
        let (chunks_dir, direct) = (dir.chunks.clone(), dir.direct);
        let chunk_size = self.inner.config.chunk_size_bytes;
        let verify_all = self.inner.config.verify_on_open;
        let outcome =
            blocking(move || files::recover(&chunks_dir, h, direct, chunk_size, verify_all)).await;
        match outcome {
            Ok(files::Recovered { state, cut }) => {
                if let Some((from, to)) = cut {
                    tracing::warn!(chunk = %h, claimed = from, recovered = to, "cut torn tail");
                    report.cut.push((h, from, to));
                }
                dir.used_bytes.fetch_add(state.length, Ordering::Relaxed);
                let chunk = Arc::new(Chunk {
                    handle: h,
                    dir: i,
                    state: tokio::sync::RwLock::new(state),
                    last_mutation_ms: AtomicU64::new(0),
                    landed: tokio::sync::Notify::new(),
                });
                self.inner
                    .chunks
                    .write()
                    .expect("chunk map lock")
                    .insert(h, chunk);
            }
            Err(files::RecoverError::Corrupt(reason)) => {
                let root = dir.root.clone();
                let chunks_dir = dir.chunks.clone();
                blocking(move || files::quarantine(&root, &chunks_dir, h)).await?;
                tracing::error!(chunk = %h, %reason, "chunk quarantined at open");
                report.quarantined.push(CorruptChunk {
                    handle: h,
                    dir: dir.root.clone(),
                    reason,
                });
            }
            Err(files::RecoverError::Store(e)) => return Err(e),
        }
        Ok(())
    }

    // ---- chunk lifecycle ------------------------------------------------

    /// Creates an empty chunk in the directory with the most free space.
    ///
    /// Runs to the end in a task of its own, whatever becomes of the
    /// caller: a create dropped while its files were being made (an RPC
    /// handler dropped when its client gave up) left the files on disk, the
    /// chunk unknown here and its handle marked as being created, so every
    /// later mutation of it failed until a restart.
    pub async fn create(&self, handle: ChunkHandle, version: ChunkVersion) -> Result<()> {
        let store = self.clone();
        tokio::spawn(async move { store.create_now(handle, version).await })
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::io(
                    format!("create chunk {handle}"),
                    io::Error::other(e),
                ))
            })
    }

    /// `AlreadyExists` once the chunk is in the map; a create of a handle
    /// whose create is in flight waits for that one to end first, so a
    /// caller told `AlreadyExists` finds the chunk (a chunkserver answering
    /// a retried `SetVersion` next to the first one did not, and failed).
    async fn create_now(&self, handle: ChunkHandle, version: ChunkVersion) -> Result<()> {
        loop {
            let ended = self.inner.created.notified();
            let mut ended = std::pin::pin!(ended);
            // Registered before looking, so an end in between is not missed.
            ended.as_mut().enable();
            if self
                .inner
                .chunks
                .read()
                .expect("chunk map lock")
                .contains_key(&handle)
            {
                return Err(StoreError::AlreadyExists(handle));
            }
            if self
                .inner
                .creating
                .lock()
                .expect("creating lock")
                .insert(handle)
            {
                break;
            }
            ended.await;
        }
        self.trim_pools().await;
        let result = self.create_files(handle, version).await;
        let result = result.map(|(i, state)| {
            let chunk = Arc::new(Chunk {
                handle,
                dir: i,
                state: tokio::sync::RwLock::new(state),
                last_mutation_ms: AtomicU64::new(self.now_ms()),
                landed: tokio::sync::Notify::new(),
            });
            self.inner
                .chunks
                .write()
                .expect("chunk map lock")
                .insert(handle, chunk);
        });
        self.inner
            .creating
            .lock()
            .expect("creating lock")
            .remove(&handle);
        self.inner.created.notify_waiters();
        result
    }

    async fn create_files(
        &self,
        h: ChunkHandle,
        version: ChunkVersion,
    ) -> Result<(usize, ChunkState)> {
        let i = self.pick_dir()?;
        let dir = &self.inner.dirs[i];
        let (chunks_dir, direct) = (dir.chunks.clone(), dir.direct);
        let chunk_size = self.inner.config.chunk_size_bytes;
        let reuse = dir.recycled.lock().expect("pool lock").pop();
        let created =
            blocking(move || files::create(&chunks_dir, h, version.0, direct, chunk_size, reuse))
                .await;
        match created {
            Ok(state) => Ok((i, state)),
            Err((_, e)) if is_enospc(&e) => Err(self.out_of_space(dir).await),
            Err((_, e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(StoreError::AlreadyExists(h))
            }
            Err((what, e)) => Err(StoreError::io(what, e)),
        }
    }

    /// The writable directory with the most free space, counted in whole
    /// GiB; among directories with as much (the same filesystem, or disks
    /// within a GiB of each other), the one holding the fewest chunk bytes,
    /// so chunks spread. A directory whose disk has left an I/O undone for
    /// [`STALLED_DIR`] comes after every other: a hung disk of several
    /// would otherwise take new chunks (and hold their writers) as long as
    /// it had the most room.
    fn pick_dir(&self) -> Result<usize> {
        let now = Instant::now();
        // Well first, then free GiB, then fewest chunk bytes.
        type Rank = (bool, u64, std::cmp::Reverse<u64>);
        let mut best: Option<(usize, Rank)> = None;
        let mut refusal = None;
        for (i, d) in self.inner.dirs.iter().enumerate() {
            if let Err(e) = d.check_writable() {
                refusal = Some(e);
                continue;
            }
            let free = eio::disk_space(&d.root).map_or(0, |(free, _)| free) + self.pooled_bytes(d);
            let well = self.inner.outstanding[i].oldest_at(now) < STALLED_DIR;
            let key = (
                well,
                free >> 30,
                std::cmp::Reverse(d.used_bytes.load(Ordering::Relaxed)),
            );
            if best.is_none_or(|(_, k)| key > k) {
                best = Some((i, key));
            }
        }
        best.map(|(i, _)| i)
            .ok_or_else(|| refusal.expect("at least one directory exists"))
    }

    /// Takes a chunk out of the map for good (delete or quarantine).
    async fn retire(&self, handle: ChunkHandle) -> Result<(Arc<Chunk>, u64)> {
        let chunk = self.chunk(handle)?;
        let mut st = self.settled(&chunk, None).await;
        if st.deleted {
            return Err(StoreError::NotFound(handle));
        }
        st.deleted = true;
        self.inner
            .chunks
            .write()
            .expect("chunk map lock")
            .remove(&handle);
        self.dir(&chunk)
            .used_bytes
            .fetch_sub(st.length, Ordering::Relaxed);
        let length = st.length;
        drop(st);
        Ok((chunk, length))
    }

    /// Removes a chunk for good. Its data file joins the directory's pool
    /// if it is a whole chunk and there is room (`recycle`).
    pub async fn delete(&self, handle: ChunkHandle) -> Result<()> {
        let chunk = self.chunk(handle)?;
        let dir = self.dir(&chunk);
        dir.check_writable()?;
        self.retire(handle).await?;
        let (chunks_dir, pool) = (dir.chunks.clone(), dir.recycle.clone());
        let cap = self.inner.config.recycle_chunk_files as usize;
        let chunk_size = self.inner.config.chunk_size_bytes;
        let free = eio::disk_space(&dir.root).map_or(0, |(free, _)| free);
        let pooled = dir.recycled.lock().expect("pool lock").len();
        let room = pooled < cap && recycle::keep(pooled + 1, free, chunk_size) > pooled;
        let kept = blocking(move || {
            files::delete(&chunks_dir, handle, room.then_some((&*pool, chunk_size)))
        })
        .await?;
        // Deletes running together may each have seen room for one.
        let over = kept.and_then(|path| {
            let mut pool = dir.recycled.lock().expect("pool lock");
            if pool.len() < cap {
                pool.push(path);
                None
            } else {
                Some(path)
            }
        });
        if let Some(path) = over {
            let shown = path.display().to_string();
            blocking(move || std::fs::remove_file(&path))
                .await
                .context(|| format!("remove {shown}, past the pool's bound"))?;
        }
        Ok(())
    }

    /// Space held by a directory's pool of deleted chunks' files: free to
    /// the chunks created there.
    fn pooled_bytes(&self, d: &Dir) -> u64 {
        let n = d.recycled.lock().expect("pool lock").len() as u64;
        n * self.inner.config.chunk_size_bytes
    }

    /// Moves a chunk aside into `quarantine/` (it is never deleted silently)
    /// and forgets it.
    pub async fn quarantine(&self, handle: ChunkHandle, reason: &str) -> Result<CorruptChunk> {
        let (chunk, _) = self.retire(handle).await?;
        let dir = self.dir(&chunk);
        let (root, chunks_dir) = (dir.root.clone(), dir.chunks.clone());
        blocking(move || files::quarantine(&root, &chunks_dir, handle)).await?;
        tracing::error!(chunk = %handle, reason, "chunk quarantined");
        Ok(CorruptChunk {
            handle,
            dir: dir.root.clone(),
            reason: reason.into(),
        })
    }

    /// Every chunk with its version and length, by handle.
    pub async fn list(&self) -> Vec<ChunkInfo> {
        let chunks = self.every_chunk();
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            let st = c.state.read().await;
            if !st.deleted {
                out.push(ChunkInfo {
                    handle: c.handle,
                    version: ChunkVersion(st.version),
                    length: st.length,
                });
            }
        }
        out.sort_by_key(|c| c.handle);
        out
    }

    pub async fn info(&self, handle: ChunkHandle) -> Result<ChunkInfo> {
        let chunk = self.chunk(handle)?;
        let st = chunk.state.read().await;
        if st.deleted {
            return Err(StoreError::NotFound(handle));
        }
        Ok(ChunkInfo {
            handle,
            version: ChunkVersion(st.version),
            length: st.length,
        })
    }

    /// Bytes used and free, backend and health, per data directory.
    /// What each data directory's device did for the store since it
    /// opened, with how long its oldest outstanding I/O has waited.
    pub fn io(&self) -> Vec<DirIo> {
        let now = Instant::now();
        let dirs = self.inner.dirs.iter().zip(&self.inner.outstanding);
        dirs.map(|(d, o)| DirIo {
            dir: d.root.clone(),
            counts: o.counts(),
            oldest: o.oldest_at(now),
        })
        .collect()
    }

    /// Chunks held.
    pub fn chunk_count(&self) -> usize {
        self.inner.chunks.read().expect("chunk map lock").len()
    }

    /// Reads (the scrubber's too) that found a block not matching its
    /// checksum, since the store opened.
    pub fn checksum_failures(&self) -> u64 {
        self.inner.checksum_failures.load(Ordering::Relaxed)
    }

    pub fn usage(&self) -> Vec<DiskUsage> {
        self.inner
            .dirs
            .iter()
            .map(|d| {
                let (free, total) = eio::disk_space(&d.root).unwrap_or((0, 0));
                let pooled = self.pooled_bytes(d);
                DiskUsage {
                    dir: d.root.clone(),
                    backend: d.backend.name(),
                    direct_io: d.direct,
                    registered_buffers: d.backend.registered_buffers(),
                    used_bytes: d.used_bytes.load(Ordering::Relaxed),
                    free_bytes: free + pooled,
                    pooled_bytes: pooled,
                    total_bytes: total,
                    poisoned: d.poisoned.lock().expect("poison lock").clone(),
                }
            })
            .collect()
    }

    // ---- versions and durability -----------------------------------------

    /// Records a new version durably (the header is fdatasynced).
    pub async fn set_version(&self, handle: ChunkHandle, version: ChunkVersion) -> Result<()> {
        let chunk = self.chunk(handle)?;
        let dir = self.dir(&chunk);
        dir.check_writable()?;
        let mut st = self.settled(&chunk, None).await;
        if st.deleted {
            return Err(StoreError::NotFound(handle));
        }
        let synced = st.synced_seq;
        self.write_header(dir, &chunk, &mut st, version.0, synced)
            .await
    }

    /// Writes a new header to the slot not holding the current one, then
    /// fdatasyncs the metadata file.
    async fn write_header(
        &self,
        dir: &Dir,
        chunk: &Chunk,
        st: &mut ChunkState,
        version: u64,
        synced_seq: u64,
    ) -> Result<()> {
        let header = Header {
            seq: st.header_seq + 1,
            handle: chunk.handle.0,
            version,
            synced_seq,
            chunk_size: self.inner.config.chunk_size_bytes,
        };
        let slot = 1 - st.header_slot;
        // Metadata buffers are a few KiB and short-lived: they come from the
        // pool without counting against the buffer memory bound.
        let mut buf = self.inner.pool.get(SECTOR_BYTES as usize);
        buf.as_mut_slice()[..layout::HEADER_BYTES].copy_from_slice(&header.encode());
        let buf = Arc::new(buf);
        let write = IoOp::Write {
            file: st.meta.clone(),
            offset: layout::header_offset(slot),
            buf: IoSlice::new(buf.clone(), 0, layout::HEADER_BYTES),
        };
        self.run_mutation(dir, vec![write], true).await?;
        self.run_mutation(
            dir,
            vec![IoOp::Sync {
                file: st.meta.clone(),
            }],
            true,
        )
        .await?;
        self.recycle(buf);
        st.header_seq = header.seq;
        st.header_slot = slot;
        st.version = version;
        st.synced_seq = synced_seq;
        Ok(())
    }

    /// Makes everything written to the chunk durable (fdatasync of data and
    /// checksums), then records that in the header so recovery can trust it.
    pub async fn sync(&self, handle: ChunkHandle) -> Result<()> {
        let chunk = self.chunk(handle)?;
        let dir = self.dir(&chunk);
        dir.check_writable()?;
        let mut st = self.settled(&chunk, None).await;
        if st.deleted {
            return Err(StoreError::NotFound(handle));
        }
        let upto = st.next_seq - 1;
        if upto == st.synced_seq {
            return Ok(());
        }
        let syncs = vec![
            IoOp::Sync {
                file: st.data.clone(),
            },
            IoOp::Sync {
                file: st.meta.clone(),
            },
        ];
        self.run_mutation(dir, syncs, true).await?;
        let version = st.version;
        self.write_header(dir, &chunk, &mut st, version, upto).await
    }

    /// Runs mutation I/O. Any failure but ENOSPC poisons the directory: after
    /// a failed write or fsync the kernel may have dropped dirty pages, so
    /// nothing this store believes about the disk can be trusted. ENOSPC
    /// poisons too unless the caller says it only wrote past the old end;
    /// it also gives the directory's pool of deleted chunks' files back to
    /// the filesystem, so the chunks being written get that space.
    async fn run_mutation(&self, dir: &Dir, ops: Vec<IoOp>, enospc_is_fatal: bool) -> Result<()> {
        let submitted = eio::submit_all(dir.backend.as_ref(), ops);
        self.finish_mutation(dir, submitted, enospc_is_fatal).await
    }

    /// `run_mutation` for I/O already submitted.
    async fn finish_mutation(
        &self,
        dir: &Dir,
        submitted: eio::Submitted,
        enospc_is_fatal: bool,
    ) -> Result<()> {
        match submitted.wait().await {
            Ok(()) => Ok(()),
            Err(e) if is_enospc(&e) && !enospc_is_fatal => Err(self.out_of_space(dir).await),
            Err(e) => Err(dir.poison(format!("write or fsync failed: {e}"))),
        }
    }

    /// A directory out of space: its pool goes back to the filesystem.
    async fn out_of_space(&self, dir: &Dir) -> StoreError {
        self.release_pool(dir).await;
        StoreError::NoSpace {
            dir: dir.root.clone(),
        }
    }

    /// Removes every file of a directory's pool (`recycle`), when the
    /// filesystem ran out of space: kept files would only hold it.
    async fn release_pool(&self, dir: &Dir) {
        let files = std::mem::take(&mut *dir.recycled.lock().expect("pool lock"));
        if !files.is_empty() {
            tracing::warn!(dir = %dir.root.display(), files = files.len(), "out of space: removing the pool of deleted chunks' files");
            remove_pooled(files).await;
        }
    }

    /// Gives back to the filesystem the pooled files of each directory
    /// beyond what the space free there allows (`recycle::keep`). Run at
    /// every create, and by the chunkserver about once a heartbeat, so that
    /// a pool gives way while its filesystem fills (several chunkservers
    /// on one filesystem, or other files), not only once a write of its
    /// own failed.
    pub async fn trim_pools(&self) {
        let chunk_size = self.inner.config.chunk_size_bytes;
        for d in &self.inner.dirs {
            let Ok((free, _)) = eio::disk_space(&d.root) else {
                continue;
            };
            let over = {
                let mut pool = d.recycled.lock().expect("pool lock");
                let keep = recycle::keep(pool.len(), free, chunk_size);
                pool.split_off(keep)
            };
            if !over.is_empty() {
                tracing::info!(dir = %d.root.display(), files = over.len(), free, "the filesystem is filling: removing files from the pool of deleted chunks' files");
                remove_pooled(over).await;
            }
        }
    }

    fn recycle(&self, buf: Arc<AlignedBuf>) {
        if let Ok(buf) = Arc::try_unwrap(buf) {
            self.inner.pool.put(buf);
        }
    }
}
