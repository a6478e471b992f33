//! The `gfs-master` configuration: a TOML file, overridden by flags, checked
//! once into [`MasterConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use gfs_proto::auth::Token;
use gfs_proto::limits::DEFAULT_CHUNK_SIZE_BYTES;
use serde::Deserialize;

/// The file as written; every field optional so flags can fill the gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub id: Option<u64>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// Every master of the cluster, this one included: id -> "host:port".
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    #[serde(default)]
    pub raft: RaftFile,
    #[serde(default)]
    pub chunks: ChunksFile,
    #[serde(default)]
    pub duties: DutiesFile,
    /// Where to serve Prometheus metrics (`GET /metrics`); none if unset.
    pub metrics_listen: Option<SocketAddr>,
    /// The cluster token's file (`gfs_proto::auth`): calls without the
    /// token are refused, and this master presents it to its peers and the
    /// chunkservers. None: nothing is checked.
    pub auth_token_file: Option<PathBuf>,
}

/// The leader's background duties.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DutiesFile {
    /// A dead chunkserver's replicas still count this long (past the
    /// heartbeat timeout) before they are re-replicated.
    pub rereplication_grace_ms: Option<u64>,
    /// Clones one chunkserver takes part in at once (source or target).
    pub clones_per_server: Option<usize>,
    /// Bandwidth of one clone (0: unlimited).
    pub clone_rate_bytes_per_s: Option<u64>,
    /// How long a deleted file stays recoverable.
    pub retention_ms: Option<u64>,
    /// Period of the re-replication and reclaim pass.
    pub repair_interval_ms: Option<u64>,
    /// Most replica deletions one heartbeat reply asks for.
    pub deletes_per_heartbeat: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    pub heartbeat_ms: Option<u64>,
    pub election_min_ms: Option<u64>,
    pub election_max_ms: Option<u64>,
    pub snapshot_every_entries: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunksFile {
    pub chunk_size_bytes: Option<u64>,
    pub default_replication: Option<u8>,
    pub lease_ms: Option<u64>,
    pub lease_grace_ms: Option<u64>,
    /// A chunkserver silent for this long is dead for placement and reads.
    pub chunkserver_timeout_ms: Option<u64>,
    /// Servers with less free space are full for placement.
    pub min_free_bytes: Option<u64>,
}

/// A chunk lease's length. A primary that stops (killed, stalled, cut
/// off) holds its chunks' writers until its lease has certainly expired
/// (this plus `lease_grace_ms`), so it is short: the paper's 60 s cost a
/// 1 GiB `gfs put` 43-112 s with one of four chunkservers SIGSTOPped
/// mid-write (0.45 s healthy). Busy primaries extend it on heartbeats at
/// about half of it, so it costs the masters a log entry per primary
/// every ~5 s while it is written to.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

pub const DEFAULT_HEARTBEAT_MS: u64 = 30;
pub const DEFAULT_ELECTION_MIN_MS: u64 = 100;
pub const DEFAULT_ELECTION_MAX_MS: u64 = 200;

/// Raft timing. Defaults are tuned for a loaded 2-core machine on loopback.
/// openraft makes a follower refuse votes for `election_max_ms` after it
/// last heard from a leader (the "leader lease") and only then starts its
/// own election timer, so a dead leader is replaced about
/// `election_max_ms` + 100-200 ms after its last heartbeat. Measured
/// (`gfs-bench failover --kills 20`, kill to first acknowledged mutation):
/// 300-600 ms elections gave a p50 of 1.18 s; 150-300 ms (heartbeat 50)
/// p50 0.58-0.68 s with a max of 1.5-1.9 s against the 2 s limit;
/// 100-200 ms (heartbeat 30) p50 0.47 s, max 1.19-1.29 s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    pub snapshot_every_entries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterConfig {
    pub id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub peers: BTreeMap<u64, String>,
    pub raft: RaftTimings,
    pub chunk_size_bytes: u64,
    pub default_replication: u8,
    pub lease_ms: u64,
    pub lease_grace_ms: u64,
    pub chunkserver_timeout_ms: u64,
    pub min_free_bytes: u64,
    pub rereplication_grace_ms: u64,
    pub clones_per_server: usize,
    pub clone_rate_bytes_per_s: u64,
    pub retention_ms: u64,
    pub repair_interval_ms: u64,
    pub deletes_per_heartbeat: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub auth_token: Option<Token>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("missing `{0}` (set it in the config file or with --{0})")]
    Missing(&'static str),
    #[error("peer id `{0}` is not a positive integer")]
    BadPeerId(String),
    #[error("peers must include this master's own id {0}")]
    SelfNotInPeers(u64),
    #[error("{0}")]
    Invalid(String),
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Checks the file into a config. An empty peer list means a
    /// single-master cluster of this node alone.
    pub fn validate(self) -> Result<MasterConfig, ConfigError> {
        let ConfigFile {
            id,
            listen,
            data_dir,
            peers,
            raft,
            chunks,
            duties,
            metrics_listen,
            auth_token_file,
        } = self;
        let id = id.ok_or(ConfigError::Missing("id"))?;
        let listen = listen.ok_or(ConfigError::Missing("listen"))?;
        let data_dir = data_dir.ok_or(ConfigError::Missing("data-dir"))?;
        if id == 0 {
            return Err(ConfigError::Invalid("id must be positive".into()));
        }
        let mut peer_map = BTreeMap::new();
        for (k, v) in peers {
            let pid: u64 = k.parse().map_err(|_| ConfigError::BadPeerId(k.clone()))?;
            if pid == 0 {
                return Err(ConfigError::BadPeerId(k));
            }
            peer_map.insert(pid, v);
        }
        if peer_map.is_empty() {
            peer_map.insert(id, listen.to_string());
        }
        if !peer_map.contains_key(&id) {
            return Err(ConfigError::SelfNotInPeers(id));
        }
        let raft = RaftTimings {
            heartbeat_ms: raft.heartbeat_ms.unwrap_or(DEFAULT_HEARTBEAT_MS),
            election_min_ms: raft.election_min_ms.unwrap_or(DEFAULT_ELECTION_MIN_MS),
            election_max_ms: raft.election_max_ms.unwrap_or(DEFAULT_ELECTION_MAX_MS),
            snapshot_every_entries: raft.snapshot_every_entries.unwrap_or(50_000),
        };
        if raft.heartbeat_ms == 0 || raft.election_min_ms <= raft.heartbeat_ms * 2 {
            return Err(ConfigError::Invalid(
                "raft.election_min_ms must exceed twice raft.heartbeat_ms".into(),
            ));
        }
        if raft.election_max_ms <= raft.election_min_ms {
            return Err(ConfigError::Invalid(
                "raft.election_max_ms must exceed raft.election_min_ms".into(),
            ));
        }
        let chunk_size_bytes = chunks.chunk_size_bytes.unwrap_or(DEFAULT_CHUNK_SIZE_BYTES);
        if chunk_size_bytes == 0 || chunk_size_bytes % gfs_proto::limits::CHECKSUM_BLOCK_BYTES != 0
        {
            return Err(ConfigError::Invalid(
                "chunks.chunk_size_bytes must be a positive multiple of 64 KiB".into(),
            ));
        }
        let default_replication = chunks.default_replication.unwrap_or(3);
        if default_replication == 0 || default_replication > crate::state::MAX_REPLICATION {
            return Err(ConfigError::Invalid(format!(
                "chunks.default_replication must be 1..={}",
                crate::state::MAX_REPLICATION
            )));
        }
        Ok(MasterConfig {
            id,
            listen,
            data_dir,
            peers: peer_map,
            raft,
            chunk_size_bytes,
            default_replication,
            lease_ms: chunks.lease_ms.unwrap_or(DEFAULT_LEASE_MS),
            lease_grace_ms: chunks.lease_grace_ms.unwrap_or(5_000),
            chunkserver_timeout_ms: chunks.chunkserver_timeout_ms.unwrap_or(15_000),
            min_free_bytes: chunks.min_free_bytes.unwrap_or(DEFAULT_CHUNK_SIZE_BYTES),
            rereplication_grace_ms: duties.rereplication_grace_ms.unwrap_or(60_000),
            clones_per_server: duties.clones_per_server.unwrap_or(2).max(1),
            clone_rate_bytes_per_s: duties.clone_rate_bytes_per_s.unwrap_or(100 << 20),
            retention_ms: duties.retention_ms.unwrap_or(3 * 24 * 3600 * 1000),
            repair_interval_ms: duties.repair_interval_ms.unwrap_or(1000).max(10),
            deletes_per_heartbeat: duties.deletes_per_heartbeat.unwrap_or(64).max(1),
            metrics_listen,
            auth_token: auth_token_file
                .map(|p| Token::from_file(&p))
                .transpose()
                .map_err(ConfigError::Invalid)?,
        })
    }
}

/// Parses `id=host:port`, the `--peer` flag's form.
pub fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected ID=HOST:PORT"))?;
    Ok((id.to_string(), addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_file_validates_with_defaults_filled() {
        let f = ConfigFile::parse(
            r#"
            id = 2
            listen = "127.0.0.2:7000"
            data_dir = "/var/lib/gfs/master"
            metrics_listen = "127.0.0.2:9100"
            [peers]
            1 = "127.0.0.1:7000"
            2 = "127.0.0.2:7000"
            3 = "127.0.0.3:7000"
            [raft]
            heartbeat_ms = 40
            "#,
        )
        .unwrap();
        let c = f.validate().unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers[&3], "127.0.0.3:7000");
        assert_eq!(c.raft.heartbeat_ms, 40);
        assert_eq!(c.raft.election_min_ms, DEFAULT_ELECTION_MIN_MS);
        assert_eq!(c.default_replication, 3);
        assert_eq!(c.lease_ms, DEFAULT_LEASE_MS);
        assert_eq!(c.metrics_listen, "127.0.0.2:9100".parse().ok());
    }

    #[test]
    fn missing_and_invalid_fields_say_which() {
        assert_eq!(
            ConfigFile::default().validate().unwrap_err(),
            ConfigError::Missing("id")
        );
        let base = |extra: &str| {
            ConfigFile::parse(&format!(
                "id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n{extra}"
            ))
            .unwrap()
            .validate()
        };
        assert!(base("").is_ok(), "a lone master needs no peers");
        assert_eq!(
            base("[peers]\n2 = \"a:1\"").unwrap_err(),
            ConfigError::SelfNotInPeers(1)
        );
        assert_eq!(
            base("[peers]\nx = \"a:1\"").unwrap_err(),
            ConfigError::BadPeerId("x".into())
        );
        assert!(matches!(
            base("[raft]\nheartbeat_ms = 200").unwrap_err(),
            ConfigError::Invalid(_)
        ));
        assert!(ConfigFile::parse("bogus = 1").is_err());
        assert_eq!(parse_peer("3=h:1").unwrap(), ("3".into(), "h:1".into()));
        assert!(parse_peer("h:1").is_err());
    }
}
