//! The Controller quorum: openraft over [`Storage`](crate::platform::Storage)
//! and TCP, with the desired state as its state machine.
//!
//! - [`records`]: checksummed records; torn or corrupt tails are cut, never applied.
//! - [`state`]: the objects, the commands that change them, and their checks.
//! - [`store`]: the Raft log, vote and snapshots on disk, and the state machine.
//! - [`net`]: Raft RPCs and forwarded client requests between nodes.
//! - [`node`]: one running node: start, bootstrap, write, read, membership.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub mod net;
pub mod node;
pub mod records;
pub mod state;
pub mod store;

pub use node::{ClusterError, ClusterNode, NodeOptions, RaftTimings};
pub use state::{Command, Desired, Objects, Refusal, Reply, Stored};

/// A Controller node's id (1, 2, 3, ...).
pub type NodeId = u64;

/// Where a node can be reached; travels in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddr {
    /// Raft RPCs and forwarded requests (`ip:port`).
    pub raft: String,
    /// The REST API (`ip:port`), for clients to be redirected to.
    pub api: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft, self.api)
    }
}

openraft::declare_raft_types!(
    /// The Controller's Raft type configuration.
    pub TypeConfig:
        D            = Command,
        R            = Reply,
        NodeId       = NodeId,
        Node         = NodeAddr,
        Entry        = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder    = openraft::impls::OneshotResponder<TypeConfig>,
        // Never leave this out: the default is openraft's TokioRuntime,
        // which compiles in the simulation and panics there.
        AsyncRuntime = crate::rt::raft::RtRuntime,
);

/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// What the Raft handle reports of itself.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeAddr>;
