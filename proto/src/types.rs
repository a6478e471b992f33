//! Identifiers shared by the master, the chunkservers and the client.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Globally unique, immutable name of a chunk, allocated by the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkHandle(pub u64);

impl fmt::Display for ChunkHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Version of a chunk. The master bumps it whenever it grants a new lease, so
/// a replica that missed mutations carries an older version and is stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkVersion(pub u64);

impl fmt::Display for ChunkVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// Identity of a server (a master in the Raft group, or a chunkserver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_print_as_fixed_width_hex() {
        assert_eq!(ChunkHandle(0xab).to_string(), "00000000000000ab");
        assert_eq!(ChunkVersion(7).to_string(), "v7");
    }
}
