//! Chunkserver configuration: [`ConfigFile`] is what TOML and flags say,
//! [`ChunkserverConfig`] the validated form, built once with one error per
//! bad field.

use std::net::SocketAddr;
use std::path::PathBuf;

use gfs_proto::auth::Token;
use gfs_proto::limits::{CHECKSUM_BLOCK_BYTES, DEFAULT_CHUNK_SIZE_BYTES};
use gfs_proto::wire::MAX_FRAME_BYTES;
use gfs_storage_engine::{BackendKind, StoreConfigFile};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Unique among the cluster's chunkservers, positive.
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    /// Where clients and peers reach this server (default: `listen`).
    pub advertise: Option<String>,
    /// One data directory per disk.
    #[serde(default)]
    pub data_dirs: Vec<PathBuf>,
    pub rack: Option<String>,
    /// Every master, "host:port".
    #[serde(default)]
    pub masters: Vec<String>,
    pub heartbeat_ms: Option<u64>,
    pub chunk_size_bytes: Option<u64>,
    /// Bound on pushed data waiting for its mutation.
    pub buffer_bytes: Option<u64>,
    /// Pushed data no mutation used is dropped after this long.
    pub buffer_ttl_ms: Option<u64>,
    pub backend: Option<BackendKind>,
    pub direct_io: Option<bool>,
    /// Data files of deleted whole chunks kept per data directory for new
    /// chunks to write over (default 64; 0 removes them at once).
    pub recycle_chunk_files: Option<u32>,
    /// Device I/Os in flight per data directory (default 8). Servers that
    /// share one disk should share its queue (BENCHMARKS.md: this VM's
    /// disk read 33 % faster with four servers at 2 each than at 8).
    pub io_depth: Option<u32>,
    /// Appends of one chunk on the disk at once (default 2; 1 writes
    /// them one at a time, each waiting for the one before).
    pub appends_ahead: Option<u32>,
    /// Where to serve Prometheus metrics (`GET /metrics`); none if unset.
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster token's file (`gfs_proto::auth`): calls and data-plane
    /// connections without the token are refused, and this server presents
    /// it to masters and peers. None: nothing is checked.
    pub auth_token_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ChunkserverConfig {
    pub id: u64,
    pub listen: SocketAddr,
    pub advertise: String,
    pub rack: String,
    pub masters: Vec<String>,
    pub heartbeat_ms: u64,
    pub chunk_size_bytes: u64,
    pub buffer_bytes: u64,
    pub buffer_ttl_ms: u64,
    pub store: StoreConfigFile,
    pub metrics_listen: Option<SocketAddr>,
    pub auth_token: Option<Token>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing `{0}` (set it in the config file or with --{0})")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn validate(self) -> Result<ChunkserverConfig, ConfigError> {
        let ConfigFile {
            id,
            listen,
            advertise,
            data_dirs,
            rack,
            masters,
            heartbeat_ms,
            chunk_size_bytes,
            buffer_bytes,
            buffer_ttl_ms,
            backend,
            direct_io,
            recycle_chunk_files,
            io_depth,
            appends_ahead,
            metrics_listen,
            auth_token_file,
        } = self;
        let id = id.ok_or(ConfigError::Missing("id"))?;
        if id == 0 {
            return Err(ConfigError::Invalid("id must be positive".into()));
        }
        let listen = listen.ok_or(ConfigError::Missing("listen"))?;
        if data_dirs.is_empty() {
            return Err(ConfigError::Missing("data-dir"));
        }
        if masters.is_empty() {
            return Err(ConfigError::Missing("master"));
        }
        let chunk_size_bytes = chunk_size_bytes.unwrap_or(DEFAULT_CHUNK_SIZE_BYTES);
        if chunk_size_bytes == 0 || !chunk_size_bytes.is_multiple_of(CHECKSUM_BLOCK_BYTES) {
            return Err(ConfigError::Invalid(
                "chunk_size_bytes must be a positive multiple of 64 KiB".into(),
            ));
        }
        let buffer_bytes = buffer_bytes.unwrap_or(256 << 20);
        if buffer_bytes < MAX_FRAME_BYTES as u64 {
            return Err(ConfigError::Invalid(format!(
                "buffer_bytes must be at least one frame ({MAX_FRAME_BYTES})"
            )));
        }
        let heartbeat_ms = heartbeat_ms.unwrap_or(500);
        if heartbeat_ms == 0 {
            return Err(ConfigError::Invalid("heartbeat_ms must be positive".into()));
        }
        let mut store = StoreConfigFile {
            dirs: data_dirs,
            chunk_size_bytes,
            // One mutation carries at most one frame of pushed data.
            max_request_bytes: (MAX_FRAME_BYTES as u64).min(chunk_size_bytes),
            ..StoreConfigFile::default()
        };
        if let Some(b) = backend {
            store.backend = b;
        }
        if let Some(d) = direct_io {
            store.direct_io = d;
        }
        if let Some(n) = recycle_chunk_files {
            store.recycle_chunk_files = n;
        }
        if let Some(d) = io_depth {
            if d == 0 || d > 4096 {
                return Err(ConfigError::Invalid(format!(
                    "io_depth must be in 1..=4096, got {d}"
                )));
            }
            store.io_depth = d;
        }
        if let Some(n) = appends_ahead {
            if n == 0 || n > 64 {
                return Err(ConfigError::Invalid(format!(
                    "appends_ahead must be in 1..=64, got {n}"
                )));
            }
            store.appends_ahead = n;
        }
        Ok(ChunkserverConfig {
            id,
            advertise: advertise.unwrap_or_else(|| listen.to_string()),
            listen,
            rack: rack.unwrap_or_default(),
            masters,
            heartbeat_ms,
            chunk_size_bytes,
            buffer_bytes,
            buffer_ttl_ms: buffer_ttl_ms.unwrap_or(60_000),
            store,
            metrics_listen,
            auth_token: auth_token_file
                .map(|p| Token::from_file(&p))
                .transpose()
                .map_err(ConfigError::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_validates_with_defaults() {
        let c = ConfigFile::parse(
            r#"
            id = 4
            listen = "127.0.0.4:7100"
            data_dirs = ["/d1", "/d2"]
            rack = "r1"
            masters = ["127.0.0.1:7000"]
            chunk_size_bytes = 1048576
            recycle_chunk_files = 0
            io_depth = 2
            appends_ahead = 3
            metrics_listen = "127.0.0.4:9100"
            "#,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.advertise, "127.0.0.4:7100");
        assert_eq!(c.metrics_listen, "127.0.0.4:9100".parse().ok());
        assert_eq!(c.store.recycle_chunk_files, 0);
        assert_eq!(c.store.io_depth, 2);
        assert_eq!(c.store.appends_ahead, 3);
        assert_eq!(c.store.dirs.len(), 2);
        assert_eq!(c.store.chunk_size_bytes, 1 << 20);
        assert_eq!(c.store.max_request_bytes, 1 << 20);
        assert_eq!((c.heartbeat_ms, c.buffer_bytes), (500, 256 << 20));
    }

    #[test]
    fn each_bad_field_is_named() {
        let ok = || ConfigFile {
            id: Some(1),
            listen: Some("127.0.0.1:1".parse().unwrap()),
            data_dirs: vec!["/d".into()],
            masters: vec!["m:1".into()],
            ..ConfigFile::default()
        };
        assert!(ok().validate().is_ok());
        let bad = [
            (ConfigFile { id: None, ..ok() }, "missing `id`"),
            (
                ConfigFile {
                    id: Some(0),
                    ..ok()
                },
                "id must be positive",
            ),
            (
                ConfigFile {
                    data_dirs: vec![],
                    ..ok()
                },
                "missing `data-dir`",
            ),
            (
                ConfigFile {
                    masters: vec![],
                    ..ok()
                },
                "missing `master`",
            ),
            (
                ConfigFile {
                    chunk_size_bytes: Some(1000),
                    ..ok()
                },
                "chunk_size_bytes must be",
            ),
            (
                ConfigFile {
                    appends_ahead: Some(0),
                    ..ok()
                },
                "appends_ahead must be in 1..=64, got 0",
            ),
            (
                ConfigFile {
                    io_depth: Some(0),
                    ..ok()
                },
                "io_depth must be in 1..=4096, got 0",
            ),
        ];
        for (f, want) in bad {
            let e = f.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
        assert!(ConfigFile::parse("nonsense = 1").is_err());
    }
}
