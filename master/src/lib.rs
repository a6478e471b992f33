//! The gfs-rs master: namespace, chunk table, leases and placement,
//! replicated with openraft and persisted in RocksDB.
//!
//! Nothing is implemented yet: the master is built by its own issue ("The
//! Raft-replicated master"). This crate exists so that the workspace has its
//! final shape; it exports nothing and pretends nothing.
