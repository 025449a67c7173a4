//! Raft RPCs and forwarded requests between Controller nodes, over TCP.
//!
//! One persistent connection per (node, peer), carrying one request and its
//! response at a time (openraft calls a peer's client sequentially). Frames
//! are `fabric::proto`'s length-prefixed JSON with a larger limit. A call
//! that is cancelled midway (openraft times RPCs out) drops its connection
//! with it, so a late response can never be read as the answer to the next
//! request.

use std::collections::BTreeSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::node::ClusterError;
use super::state::{Command, Reply};
use super::{NodeAddr, NodeId, Raft, TypeConfig};
use crate::proto::{read_frame_limited, write_frame_limited, FrameError};
use crate::rt;

/// Largest frame between Controller nodes (a batch of log entries, a snapshot chunk).
pub const MAX_PEER_FRAME_BYTES: usize = 64 << 20;
/// Time allowed to open a connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Most peer connections a node serves at once.
pub const MAX_PEER_CONNECTIONS: usize = 64;

/// A request from one Controller node to another.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRequest {
    /// Raft: replicate entries / heartbeat.
    Append(AppendEntriesRequest<TypeConfig>),
    /// Raft: request a vote.
    Vote(VoteRequest<NodeId>),
    /// Raft: a snapshot chunk.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client write forwarded to the leader.
    Write(Command),
    /// A linearizable read barrier forwarded to the leader: returns the
    /// log index the reader must have applied.
    ReadIndex,
    /// Membership change forwarded to the leader.
    Membership(MembershipChange),
    /// What this node knows of the cluster (answered by any node).
    Status,
    /// A request from a client (`fabric ctl`), not a peer: the receiving
    /// node forwards it to the leader if it is not the leader itself.
    Client(Box<PeerRequest>),
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node answering.
    pub id: NodeId,
    /// Its role: leader, follower, candidate, learner.
    pub state: String,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Voters.
    pub voters: BTreeSet<NodeId>,
    /// Every member (voters and learners) with its addresses.
    pub nodes: std::collections::BTreeMap<NodeId, NodeAddr>,
    /// Last log index applied to its state machine.
    pub applied_index: u64,
    /// Desired-state version it serves.
    pub version: u64,
    /// Entries in its local log (bounded by snapshots).
    pub log_entries: usize,
    /// Index of its latest snapshot.
    pub snapshot_index: Option<u64>,
    /// SHA-256 of the cluster's CA certificate (what SEs pin), once it has one.
    pub ca_sha256: Option<String>,
}

/// A change of the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipChange {
    /// Add a node as a voter (it is caught up as a learner first).
    Add {
        /// Its id.
        id: NodeId,
        /// Its addresses.
        addr: NodeAddr,
    },
    /// Remove a voter.
    Remove {
        /// Its id.
        id: NodeId,
    },
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerResponse {
    /// To `Append`.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// To `Vote`.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// To `Snapshot`.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// To `Write`, `ReadIndex` and `Membership`.
    Forwarded(Result<Forwarded, ClusterError>),
}

/// Outcome of a forwarded request on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarded {
    /// The write's reply.
    Reply(Reply),
    /// The read index.
    ReadIndex(u64),
    /// The membership change is done; the voters now.
    Voters(BTreeSet<NodeId>),
    /// The answering node's view.
    Status(ClusterStatus),
}

/// Creates [`PeerClient`]s for openraft.
#[derive(Debug, Clone, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient::new(target, node.raft.clone())
    }
}

/// A connection to one peer, opened lazily.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    addr: String,
    // `Sync` is required by openraft and simulated streams are not `Sync`:
    // the Mutex is only ever reached through `get_mut` (we hold `&mut self`).
    conn: Mutex<Option<rt::TcpStream>>,
}

/// A call to a peer failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect.
    #[error("cannot connect to node {0} at {1}: {2}")]
    Unreachable(NodeId, String, io::Error),
    /// Connected, but the exchange failed.
    #[error("exchange with node {0} failed: {1}")]
    Network(NodeId, FrameError),
}

impl PeerClient {
    /// A client for node `target` at `addr` (its raft address).
    pub fn new(target: NodeId, addr: String) -> Self {
        Self {
            target,
            addr,
            conn: Mutex::new(None),
        }
    }

    /// Send one request and wait for its response.
    pub async fn call(&mut self, req: &PeerRequest) -> Result<PeerResponse, CallError> {
        let slot = self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
        // Taken out for the duration of the call: if this future is dropped
        // midway, the connection goes with it.
        let mut stream = match slot.take() {
            Some(s) => s,
            None => {
                let addr = self.addr.parse().map_err(|e| {
                    CallError::Unreachable(self.target, self.addr.clone(), io::Error::other(e))
                })?;
                match rt::timeout(CONNECT_TIMEOUT, rt::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return Err(CallError::Unreachable(self.target, self.addr.clone(), e))
                    }
                    Err(e) => {
                        let e = io::Error::new(io::ErrorKind::TimedOut, e.to_string());
                        return Err(CallError::Unreachable(self.target, self.addr.clone(), e));
                    }
                }
            }
        };
        let net = |e| CallError::Network(self.target, e);
        write_frame_limited(&mut stream, req, MAX_PEER_FRAME_BYTES)
            .await
            .map_err(net)?;
        let resp = read_frame_limited(&mut stream, MAX_PEER_FRAME_BYTES)
            .await
            .map_err(net)?
            .ok_or_else(|| {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
                net(FrameError::Io(eof))
            })?;
        *self.conn.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(stream);
        Ok(resp)
    }

    fn rpc_error<E: std::error::Error>(&self, e: CallError) -> RPCError<NodeId, NodeAddr, E> {
        match e {
            CallError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(..) => RPCError::Network(NetworkError::new(&e)),
        }
    }
}

fn unexpected<E: std::error::Error>(target: NodeId) -> RPCError<NodeId, NodeAddr, E> {
    let e = io::Error::new(
        io::ErrorKind::InvalidData,
        format!("node {target} answered the wrong request"),
    );
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        match self.call(&PeerRequest::Append(rpc)).await {
            Ok(PeerResponse::Append(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected(self.target)),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(&PeerRequest::Snapshot(rpc)).await {
            Ok(PeerResponse::Snapshot(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected(self.target)),
            Err(e) => Err(self.rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        match self.call(&PeerRequest::Vote(rpc)).await {
            Ok(PeerResponse::Vote(r)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(unexpected(self.target)),
            Err(e) => Err(self.rpc_error(e)),
        }
    }
}

/// What serves forwarded requests on this node (the cluster node).
pub trait ForwardHandler: Clone + Send + Sync + 'static {
    /// Handle a request forwarded from another node.
    fn forwarded(
        &self,
        req: PeerRequest,
    ) -> impl std::future::Future<Output = Result<Forwarded, ClusterError>> + Send;

    /// A leader's append was accepted here (for staleness reporting).
    fn leader_contact(&self);
}

/// Serve peers on `listener` until it fails.
pub async fn serve<H: ForwardHandler>(
    listener: rt::TcpListener,
    raft: Raft,
    handler: H,
) -> io::Result<()> {
    rt::accept_loop(listener, MAX_PEER_CONNECTIONS, move |mut stream, _peer| {
        let raft = raft.clone();
        let handler = handler.clone();
        async move {
            loop {
                let req: PeerRequest =
                    match read_frame_limited(&mut stream, MAX_PEER_FRAME_BYTES).await {
                        Ok(Some(r)) => r,
                        _ => return,
                    };
                let resp = match req {
                    PeerRequest::Append(r) => {
                        let r = raft.append_entries(r).await;
                        if matches!(r, Ok(AppendEntriesResponse::Success)) {
                            handler.leader_contact();
                        }
                        PeerResponse::Append(r)
                    }
                    PeerRequest::Vote(r) => PeerResponse::Vote(raft.vote(r).await),
                    PeerRequest::Snapshot(r) => {
                        PeerResponse::Snapshot(raft.install_snapshot(r).await)
                    }
                    other => PeerResponse::Forwarded(handler.forwarded(other).await),
                };
                if write_frame_limited(&mut stream, &resp, MAX_PEER_FRAME_BYTES)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
    .await
}
