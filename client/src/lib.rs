//! The gfs-rs client library.
//!
//! - [`Client`]: metadata calls, `write_at`, `append(record) -> offset`,
//!   `read_at`, `length`, `sync`;
//! - [`Writer`] / [`Reader`] / [`RecordReader`]: streaming I/O;
//! - [`master`]: the master side: leader discovery, retries through
//!   failovers with idempotent mutations, chunk location cache;
//! - [`chunks`]: connections to chunkservers and the data-path calls.
//!
//! Errors are one type, [`Error`]: a kind that says what to do next and a
//! message.

pub mod chunks;
pub mod client;
pub mod limping;
pub mod master;
mod seen;
pub mod stream;
mod window;

pub use client::{Client, ClientOptions};
pub use master::{MasterClient, MasterError, MasterError as Error, MasterOptions};
pub use stream::{Reader, Record, RecordReader, Writer};
