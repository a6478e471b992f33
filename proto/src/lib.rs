//! Shared ground of every gfs-rs component.
//!
//! What this crate owns:
//! - the domain types that cross component boundaries ([`ChunkHandle`],
//!   [`ChunkVersion`]), each a newtype so a handle can never be passed where
//!   a version is expected;
//! - the size limits and layout constants of the system ([`limits`]), with
//!   their relations asserted at compile time.
//!
//! Modules:
//! - [`types`]: identifiers and versions;
//! - [`path`]: [`GfsPath`], validated once at the wire boundary;
//! - [`limits`]: chunk and block sizes, request bounds;
//! - [`crc`]: CRC-32C, the one implementation every checksum uses.
//!
//! - [`auth`]: the cluster token, presented by clients and checked by
//!   servers (gRPC header, data-plane hello);
//! - [`metrics`]: the servers' Prometheus `/metrics` endpoint, gRPC call
//!   counts, values read from a server's state when scraped;
//! - [`data`]: the chunkservers' data plane, framed TCP for pushes and
//!   reads, and its client side;
//! - [`wire`]: the generated tonic code of `proto/master.proto` (client
//!   metadata, chunkserver heartbeats, admin, Raft) and the wire-error
//!   mapping (`ErrorDetail` in status details: what to do next).

pub mod auth;
pub mod codec;
pub mod crc;
pub mod data;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod record;
pub mod types;
pub mod wire;

pub use path::{GfsPath, PathError};
pub use types::{ChunkHandle, ChunkVersion, NodeId};
