//! openraft storage on RocksDB: the Raft log and the state machine in
//! column families of one database, so a log append, or an applied batch
//! with its `last_applied`, is one atomic `WriteBatch`. Log writes (and
//! the vote) are synced; applied batches and the committed log id are
//! not: they can always be applied (or learned from the leader) again from
//! the log, and since all share RocksDB's one write-ahead log, the next
//! synced write (the next append, or the purge that drops the entries they
//! came from) makes them durable first. A committed id that survives a
//! crash is so never ahead of the log that survives with it, and one lost
//! only makes the restarted master apply less at start, until the leader
//! tells it the commit index again. (Synced, it cost every entry a second
//! fsync in a row, on the leader and on every follower, inside openraft's
//! core task: 2026-12-02, BENCHMARKS.md.)
//!
//! Column families:
//! - `log`: entry index (big-endian) -> postcard-encoded entry;
//! - `meta`: vote, committed, last purged log id, last applied log id,
//!   last membership, the current snapshot;
//! - `sm`: the state machine's key-value image (`state::persist`).
//!
//! The whole state machine is also held in memory (`MasterState`), loaded
//! from `sm` at open, and shared with the services for reads.

// openraft's traits fix the error type (`StorageError`, 200+ bytes); the
// helpers here return it too rather than convert at every call.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state::{MasterState, Outcome, Reply, Request};

openraft::declare_raft_types!(
    /// The master's Raft types: requests are state machine commands.
    pub TypeConfig:
        D = Request,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::runtime::Runtime,
);

type NodeId = u64;
type SError = StorageError<NodeId>;

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const CF_SM: &str = "sm";

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";
const SNAPSHOT: &[u8] = b"snapshot";

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("raft values always serialize")
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

fn idx(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Opens (creating if needed) the master's database. `chunk_size_bytes`
/// seeds a brand-new state machine; an existing one keeps its own.
pub fn open(dir: &Path, chunk_size_bytes: u64) -> Result<(LogStore, StateMachineStore), SError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_META, CF_SM].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    let db =
        Arc::new(DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| StorageIOError::read(&e))?);
    let sm = StateMachineStore::load(db.clone(), chunk_size_bytes)?;
    Ok((LogStore { db }, sm))
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created at open")
}

fn get_meta<T: DeserializeOwned>(db: &DB, key: &[u8]) -> Result<Option<T>, SError> {
    let raw = db
        .get_cf(cf(db, CF_META), key)
        .map_err(|e| StorageIOError::read(&e))?;
    raw.map(|b| dec(&b).map_err(|e| StorageIOError::read(&e).into()))
        .transpose()
}

// ---- the log ----------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl LogStore {
    /// Writes a `meta` key, synced when `durable` (else on the write-ahead
    /// log's next sync: see the module comment).
    fn put_meta<T: Serialize>(
        &self,
        (key, durable): (&[u8], bool),
        v: &T,
        err: fn(&rocksdb::Error) -> StorageIOError<NodeId>,
    ) -> Result<(), SError> {
        let opts = if durable {
            synced()
        } else {
            WriteOptions::default()
        };
        self.db
            .put_cf_opt(cf(&self.db, CF_META), key, enc(v), &opts)
            .map_err(|e| err(&e).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let iter = self.db.iterator_cf(
            cf(&self.db, CF_LOG),
            IteratorMode::From(&idx(start), Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let i = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                StorageIOError::read_logs(&std::io::Error::other("malformed log key"))
            })?);
            if !range.contains(&i) {
                break;
            }
            out.push(dec(&v).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.db, LAST_PURGED)?;
        let mut iter = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        let last = match iter.next() {
            Some(item) => {
                let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let e: Entry<TypeConfig> = dec(&v).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        self.put_meta((VOTE, true), vote, |e| StorageIOError::write_vote(e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        get_meta(&self.db, VOTE)
    }

    /// Not synced. Safe because `append` returns only once its entries are
    /// synced, so any committed id openraft saves here (on a follower, up
    /// to what it accepted) follows its entries in the write-ahead log.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        self.put_meta((COMMITTED, false), &committed, |e| StorageIOError::write(e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db, COMMITTED)?.flatten())
    }

    /// One synced `WriteBatch` per call: openraft hands over every entry
    /// it has queued, so concurrent proposals share one fsync. Returns
    /// only once it is synced (`save_committed` relies on that).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        for e in entries {
            batch.put_cf(log, idx(e.log_id.index), enc(&e));
        }
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || db.write_opt(batch, &synced()))
            .await
            .map_err(|e| StorageIOError::write_logs(&std::io::Error::other(e.to_string())))?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), idx(log_id.index), idx(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META), LAST_PURGED, enc(&log_id));
        batch.delete_range_cf(cf(&self.db, CF_LOG), idx(0), idx(log_id.index + 1));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

// ---- the state machine -------------------------------------------------------

/// What the services read: the state and how far it has applied.
#[derive(Debug)]
pub struct Applied {
    pub state: MasterState,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
}

#[derive(Debug, Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    applied: Arc<RwLock<Applied>>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

impl StateMachineStore {
    fn load(db: Arc<DB>, chunk_size_bytes: u64) -> Result<Self, SError> {
        let mut pairs = Vec::new();
        for item in db.iterator_cf(cf(&db, CF_SM), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| StorageIOError::read_state_machine(&e))?;
            pairs.push((k.to_vec(), v.to_vec()));
        }
        let state = if pairs.is_empty() {
            MasterState::new(chunk_size_bytes)
        } else {
            MasterState::load(pairs).map_err(|e| StorageIOError::read_state_machine(&e))?
        };
        let last_applied = get_meta::<Option<LogId<NodeId>>>(&db, LAST_APPLIED)?.flatten();
        let membership = get_meta(&db, MEMBERSHIP)?.unwrap_or_default();
        let applied = Applied {
            state,
            last_applied,
            membership,
        };
        Ok(Self {
            db,
            applied: Arc::new(RwLock::new(applied)),
        })
    }

    /// The shared, applied state, for serving reads.
    pub fn applied(&self) -> Arc<RwLock<Applied>> {
        self.applied.clone()
    }

    /// Writes the changed keys with `last_applied` and membership in one
    /// batch (not synced: see the module comment).
    fn persist(&self, a: &mut Applied) -> Result<(), SError> {
        let mut batch = WriteBatch::default();
        let sm = cf(&self.db, CF_SM);
        for k in a.state.take_dirty() {
            match a.state.value_of(&k) {
                Some(v) => batch.put_cf(sm, k.encode(), v),
                None => batch.delete_cf(sm, k.encode()),
            }
        }
        let meta = cf(&self.db, CF_META);
        batch.put_cf(meta, LAST_APPLIED, enc(&a.last_applied));
        batch.put_cf(meta, MEMBERSHIP, enc(&a.membership));
        self.db
            .write(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e).into())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), SError> {
        let a = self.applied.read().expect("state lock");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut a = self.applied.write().expect("state lock");
        let mut replies = Vec::new();
        for e in entries {
            a.last_applied = Some(e.log_id);
            replies.push(match e.payload {
                EntryPayload::Blank => Ok(Reply::Done),
                EntryPayload::Normal(req) => a.state.apply(req),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                    Ok(Reply::Done)
                }
            });
        }
        self.persist(&mut a)?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let data = snapshot.into_inner();
        let read_err = |e: &dyn std::error::Error| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::other(e.to_string()),
            )
        };
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = dec(&data).map_err(|e| read_err(&e))?;
        // Validate the whole image before replacing anything.
        let state = MasterState::load(pairs.clone()).map_err(|e| read_err(&e))?;
        let mut batch = WriteBatch::default();
        let sm = cf(&self.db, CF_SM);
        batch.delete_range_cf(sm, b"".as_slice(), [0xffu8; 9].as_slice());
        for (k, v) in &pairs {
            batch.put_cf(sm, k, v);
        }
        let meta_cf = cf(&self.db, CF_META);
        batch.put_cf(meta_cf, LAST_APPLIED, enc(&meta.last_log_id));
        batch.put_cf(meta_cf, MEMBERSHIP, enc(&meta.last_membership));
        batch.put_cf(
            meta_cf,
            SNAPSHOT,
            enc(&StoredSnapshot {
                meta: meta.clone(),
                data,
            }),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut a = self.applied.write().expect("state lock");
        *a = Applied {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let stored: Option<StoredSnapshot> = get_meta(&self.db, SNAPSHOT)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let (data, last_log_id, last_membership) = {
            let a = self.applied.read().expect("state lock");
            (enc(&a.state.dump()), a.last_applied, a.membership.clone())
        };
        let snapshot_id = match last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.db
            .put_cf_opt(cf(&self.db, CF_META), SNAPSHOT, enc(&stored), &synced())
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), SError> {
            let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
            let (log, sm) = open(dir.path(), 1 << 20)?;
            Ok((dir, log, sm))
        }
    }

    fn entry(index: u64, req: Request) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(req),
        }
    }

    /// Applied state survives a restart: it is reloaded from RocksDB whole,
    /// with `last_applied`, and the replies were the state machine's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applied_state_is_reloaded_at_open() -> Result<(), SError> {
        use crate::state::Command;
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(&e))?;
        let path = |s: &str| gfs_proto::GfsPath::parse(s).expect("valid path");
        let reqs = [
            Command::Mkdir {
                path: path("/logs/2026"),
                parents: true,
            },
            Command::Create {
                path: path("/logs/2026/a"),
                replication: 3,
            },
            Command::Create {
                path: path("/logs/2026/a"),
                replication: 3,
            },
        ];
        let before = {
            let (_log, mut sm) = open(dir.path(), 1 << 20)?;
            let entries: Vec<_> = reqs
                .iter()
                .enumerate()
                .map(|(i, cmd)| {
                    let req = Request {
                        client: 1,
                        seq: i as u64,
                        now_ms: 5,
                        cmd: cmd.clone(),
                    };
                    entry(i as u64 + 1, req)
                })
                .collect();
            let replies = sm.apply(entries).await?;
            assert_eq!(replies[..2], [Ok(Reply::Done), Ok(Reply::Done)]);
            assert!(replies[2].is_err(), "the second create of one path fails");
            let a = sm.applied();
            let a = a.read().expect("lock");
            a.state.dump()
        };
        let (_log, mut sm) = open(dir.path(), 1 << 20)?;
        let (last, _) = sm.applied_state().await?;
        assert_eq!(last.map(|l| l.index), Some(3));
        assert_eq!(sm.applied().read().expect("lock").state.dump(), before);
        Ok(())
    }

    /// R1: openraft's own storage test suite, whole.
    #[test]
    fn openraft_storage_suite() -> Result<(), SError> {
        Suite::test_all(Builder)
    }
}
