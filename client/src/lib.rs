//! The gfs-rs client library.
//!
//! - [`master`]: the master side: leader discovery, retries through
//!   failovers with idempotent mutations, chunk location cache.
//!
//! The data path (chunkservers, `Writer`/`Reader`, record append) comes with
//! the chunkserver issue.

pub mod master;

pub use master::{MasterClient, MasterError, MasterOptions};
