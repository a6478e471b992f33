//! The gfs-rs master: namespace, chunk table, leases and placement,
//! replicated with openraft and persisted in RocksDB.
//!
//! Built so far (the pure core, no I/O, no clock):
//! - [`state`]: the replicated state machine: `MasterState::apply(Request)
//!   -> Outcome`, with the namespace as a prefix-compressed path table
//!   ([`state::PathTable`]), the chunk table and handle allocator, leases,
//!   deleted trees awaiting reclaim, and per-client reply caches that make
//!   retried mutations idempotent;
//! - [`placement`]: where a new chunk's replicas go;
//! - [`repair`]: the leader's duties as rules: which chunks get a new
//!   replica, in what order, from where to where; which replicas go;
//! - [`store`]: openraft's log and state-machine storage on RocksDB
//!   (column families `log`, `meta`, `sm`; synced, batched appends; applied
//!   changes and `last_applied` in one batch; snapshots), passing openraft's
//!   storage test suite.
//!
//! Invariants: the leader stamps `now_ms` into every request, so replicas
//! applying the same log agree exactly; a lease grant bumps the chunk
//! version; a different primary is granted only after the old lease has
//! expired plus a grace period.
//!
//! Around the core, [`server`] is the `gfs-master` process: the Raft
//! network, the tonic services, the soft chunkserver view and the leader's
//! background duties.

pub mod placement;
pub mod repair;
pub mod runtime;
pub mod server;
pub mod state;
pub mod store;
