//! Cluster-level tests of gfs-rs: the harness that starts real master and
//! chunkserver processes on loopback, each in its own temporary directory,
//! and the integration, fault and bad-input suites that run against it.
//!
//! There is no cluster to start yet (the master and chunkserver arrive with
//! their issues), so this crate holds no tests. The storage engine's own
//! suites (conformance of every backend, injected faults, the SIGKILL crash
//! test) live beside the engine in `storage-engine/tests/`.
