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
//! - [`limits`]: chunk and block sizes, request bounds.
//!
//! The `.proto` files and the generated tonic code of the master and
//! chunkserver services land here with the issues that introduce those
//! services; nothing in this crate talks to the network yet.

pub mod limits;
pub mod path;
pub mod types;

pub use path::{GfsPath, PathError};
pub use types::{ChunkHandle, ChunkVersion, NodeId};
