//! The gfs-rs chunkserver: the gRPC service around the storage engine, the
//! pipelined data push, primary ordering under a lease, heartbeats.
//!
//! Nothing is implemented yet: the chunkserver is built by the data-path
//! issue, on top of `gfs-storage-engine`. This crate exists so that the
//! workspace has its final shape; it exports nothing and pretends nothing.
