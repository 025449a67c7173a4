//! One Controller node: Raft, its storage, its peer server, and the calls
//! the rest of the Controller makes (write, read, membership).
//!
//! Writes go to the leader: a follower forwards them over its peer
//! connection. Every failure says whether the write may have happened:
//! [`ClusterError::may_have_applied`] is false for refusals and fail-fast
//! errors (no leader, leader without quorum, leader unreachable), true when
//! a write was handed to Raft but its commit was not seen in time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::net::{
    self, CallError, Forwarded, MembershipChange, PeerClient, PeerRequest, PeerResponse,
};
use super::state::{Command, Desired, Objects, Refusal, Reply};
use super::store::{LogStore, StateMachine};
use super::{NodeAddr, NodeId, Raft};
use crate::platform::Storage;
use crate::rt;

/// Election and heartbeat timing of the Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftTimings {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Shortest election timeout (> heartbeat).
    pub election_min_ms: u64,
    /// Longest election timeout (> min).
    pub election_max_ms: u64,
}

impl Default for RaftTimings {
    /// 100/300/600 ms: a new leader in about 1-2 s after the old one dies
    /// (docs/research/openraft-0.9.md, section 4), while a follower
    /// tolerates several lost heartbeats before it starts an election.
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 300,
            election_max_ms: 600,
        }
    }
}

impl RaftTimings {
    /// How long a write may wait for its commit before the outcome is
    /// reported unknown.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.election_max_ms * 5)
    }
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's id (not 0).
    pub id: NodeId,
    /// Its addresses as peers and clients should use them.
    pub addr: NodeAddr,
    /// Its disk.
    pub storage: Arc<dyn Storage>,
    /// Election timing.
    pub timings: RaftTimings,
    /// Take a snapshot (and purge the log) every this many entries.
    pub snapshot_every: u64,
}

impl NodeOptions {
    /// Options with default timings and snapshot policy.
    pub fn new(id: NodeId, addr: NodeAddr, storage: Arc<dyn Storage>) -> Self {
        Self {
            id,
            addr,
            storage,
            timings: RaftTimings::default(),
            snapshot_every: 1000,
        }
    }
}

/// Why a cluster call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "error", content = "detail")]
pub enum ClusterError {
    /// The state machine refused the change; nothing changed.
    #[error("{0}")]
    Refused(Refusal),
    /// This node is not the leader (used between nodes; clients see the others).
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// No leader is known: an election is running or there is no quorum. Nothing changed.
    #[error(
        "no leader: the Controller cluster has no quorum or is electing one; nothing was written"
    )]
    NoLeader,
    /// The leader has not heard from a quorum recently. Nothing changed.
    #[error("no quorum: the leader has not heard from a majority for {0} ms; nothing was written")]
    NoQuorum(u64),
    /// The leader could not be reached. Nothing changed.
    #[error("leader unreachable: {0}; nothing was written")]
    Unreachable(String),
    /// The write was submitted but its commit was not seen: it may or may not apply.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The cluster call itself is invalid (e.g. a bad membership change).
    #[error("{0}")]
    Invalid(String),
    /// This node is shutting down or broken.
    #[error("node stopped: {0}")]
    Fatal(String),
}

impl ClusterError {
    /// Whether the write may have been applied despite the error.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, ClusterError::Unknown(_))
    }
}

/// A read served from this node's state machine, and how fresh it is.
#[derive(Debug, Clone)]
pub struct ReadView {
    /// The objects.
    pub objects: Objects,
    /// Last log index applied to them.
    pub applied_index: u64,
    /// Whether the read was confirmed with a quorum (linearizable).
    pub linearizable: bool,
    /// For a local read: ms since this node last heard from a leader (0 if
    /// it is the leader with a fresh quorum; None if never).
    pub stale_ms: Option<u64>,
}

/// A running Controller node. Clones share it.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: NodeId,
    addr: NodeAddr,
    timings: RaftTimings,
    raft: Raft,
    sm: StateMachine,
    log: LogStore,
    damage: Vec<String>,
    last_leader_contact: Mutex<Option<Instant>>,
    peers: tokio::sync::Mutex<BTreeMap<NodeId, PeerClient>>,
    server: Mutex<Option<rt::JoinHandle<()>>>,
}

impl ClusterNode {
    /// Start a node: open its storage (cutting damaged tails), start Raft,
    /// and serve peers on `listener`.
    pub async fn start(opts: NodeOptions, listener: rt::TcpListener) -> Result<Self, ClusterError> {
        let t = opts.timings;
        let config = openraft::Config {
            cluster_name: "fabric-controller".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: 100,
            snapshot_max_chunk_size: 512 * 1024,
            max_payload_entries: 64,
            install_snapshot_timeout: t.election_max_ms.max(200),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Invalid(format!("raft timings: {e}")))?;
        let io = |e: std::io::Error| ClusterError::Fatal(format!("storage: {e}"));
        let (log, mut damage) = LogStore::open(opts.storage.clone()).map_err(io)?;
        let (sm, d) = StateMachine::open(opts.storage.clone()).map_err(io)?;
        damage.extend(d);
        for d in &damage {
            tracing::warn!(node = opts.id, damage = %d, "storage damage cut off at open");
        }
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            net::Network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        let node = ClusterNode {
            inner: Arc::new(NodeInner {
                id: opts.id,
                addr: opts.addr,
                timings: t,
                raft: raft.clone(),
                sm,
                log,
                damage,
                last_leader_contact: Mutex::new(None),
                peers: tokio::sync::Mutex::new(BTreeMap::new()),
                server: Mutex::new(None),
            }),
        };
        let handler = node.clone();
        let server = rt::spawn(async move {
            if let Err(e) = net::serve(listener, raft, handler).await {
                tracing::error!(error = %e, "peer listener failed");
            }
        });
        *lock(&node.inner.server) = Some(server);
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// This node's addresses.
    pub fn addr(&self) -> &NodeAddr {
        &self.inner.addr
    }

    /// Election timing in use.
    pub fn timings(&self) -> RaftTimings {
        self.inner.timings
    }

    /// The Raft handle (metrics, tests).
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Storage damage found (and cut off) when the node opened.
    pub fn damage(&self) -> &[String] {
        &self.inner.damage
    }

    /// Entries in the local log (bounded by snapshots).
    pub fn log_len(&self) -> usize {
        self.inner.log.len()
    }

    /// Follow the applied desired state.
    pub fn desired(&self) -> watch::Receiver<Arc<Desired>> {
        self.inner.sm.subscribe()
    }

    /// Look at this node's applied state without copying it.
    pub fn peek<R>(&self, f: impl FnOnce(&Objects) -> R) -> R {
        self.inner.sm.peek(f)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The voters and all members (voters and learners) with their addresses.
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeMap<NodeId, NodeAddr>) {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        let voters = m.membership().voter_ids().collect();
        let nodes = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
        (voters, nodes)
    }

    /// Make this node a one-voter cluster if it has never been part of one,
    /// and load `config` if the cluster holds none yet. A cluster with a
    /// config keeps it (the file is only the first state).
    pub async fn bootstrap(&self, config: crate::model::Config) -> Result<(), ClusterError> {
        let members = BTreeMap::from([(self.inner.id, self.inner.addr.clone())]);
        self.bootstrap_with(members, config).await
    }

    /// [`bootstrap`](Self::bootstrap) as a cluster of `members` (all started,
    /// this one among them; only one node may call this).
    pub async fn bootstrap_with(
        &self,
        members: BTreeMap<NodeId, NodeAddr>,
        config: crate::model::Config,
    ) -> Result<(), ClusterError> {
        let raft = &self.inner.raft;
        let fatal = |e: openraft::error::Fatal<NodeId>| ClusterError::Fatal(e.to_string());
        if !raft.is_initialized().await.map_err(fatal)? {
            if let Err(e) = raft.initialize(members).await {
                tracing::info!(error = %e, "initialize skipped");
            }
        }
        let deadline = rt::now() + self.inner.timings.write_timeout();
        loop {
            match self
                .write(Command::Replace {
                    config: Box::new(config.clone()),
                    version_floor: 0,
                    only_if_empty: true,
                })
                .await
            {
                Ok(_) | Err(ClusterError::Refused(Refusal::Conflict { .. })) => break,
                Err(ClusterError::NoLeader | ClusterError::Unreachable(_))
                    if rt::now() < deadline =>
                {
                    rt::sleep(Duration::from_millis(self.inner.timings.heartbeat_ms)).await
                }
                Err(e) => return Err(e),
            }
        }
        if self.peek(|o| o.ca.is_some()) {
            return Ok(());
        }
        let ca = crate::pki::CaMaterial::generate("fabric controller CA")
            .map_err(|e| ClusterError::Fatal(e.to_string()))?;
        match self.write(Command::InitCa { ca }).await {
            Ok(_) | Err(ClusterError::Refused(Refusal::Conflict { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Write `cmd` through the leader; the new version on success.
    pub async fn write(&self, cmd: Command) -> Result<u64, ClusterError> {
        let reply = self.forward_or_local(PeerRequest::Write(cmd)).await?;
        match reply {
            Forwarded::Reply(Reply::Applied(v)) => Ok(v),
            Forwarded::Reply(Reply::Refused(r)) => Err(ClusterError::Refused(r)),
            other => Err(ClusterError::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Add a voter (caught up as a learner first) or remove one; returns the voters.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<BTreeSet<NodeId>, ClusterError> {
        match self
            .forward_or_local(PeerRequest::Membership(change))
            .await?
        {
            Forwarded::Voters(v) => Ok(v),
            other => Err(ClusterError::Fatal(format!("unexpected reply {other:?}"))),
        }
    }

    /// A linearizable read: confirmed with a quorum through the leader,
    /// served from this node once it has applied that far.
    pub async fn read(&self) -> Result<ReadView, ClusterError> {
        let index = match self.forward_or_local(PeerRequest::ReadIndex).await? {
            Forwarded::ReadIndex(i) => i,
            other => return Err(ClusterError::Fatal(format!("unexpected reply {other:?}"))),
        };
        let wait = self
            .inner
            .raft
            .wait(Some(self.inner.timings.write_timeout()))
            .applied_index_at_least(Some(index), "linearizable read")
            .await;
        if wait.is_err() {
            return Err(ClusterError::Unreachable(format!(
                "this node did not apply up to index {index} in time"
            )));
        }
        let (objects, applied_index) = self.inner.sm.objects();
        Ok(ReadView {
            objects,
            applied_index,
            linearizable: true,
            stale_ms: Some(0),
        })
    }

    /// A read of this node's state as it is, saying how stale it may be.
    pub fn read_local(&self) -> ReadView {
        let (objects, applied_index) = self.inner.sm.objects();
        let m = self.inner.raft.metrics().borrow().clone();
        let stale_ms = if m.state == ServerState::Leader {
            m.millis_since_quorum_ack
        } else {
            lock(&self.inner.last_leader_contact)
                .map(|t| rt::now().saturating_duration_since(t).as_millis() as u64)
        };
        ReadView {
            objects,
            applied_index,
            linearizable: false,
            stale_ms,
        }
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> net::ClusterStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let (voters, nodes) = self.membership();
        net::ClusterStatus {
            id: self.inner.id,
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            voters,
            nodes,
            applied_index: m.last_applied.map_or(0, |l| l.index),
            version: self.inner.sm.subscribe().borrow().version,
            log_entries: self.inner.log.len(),
            snapshot_index: m.snapshot.map(|l| l.index),
            ca_sha256: self.peek(|o| o.ca.as_ref().and_then(|ca| ca.fingerprint().ok())),
        }
    }

    /// Stop Raft and the peer server.
    pub async fn shutdown(&self) {
        if let Some(s) = lock(&self.inner.server).take() {
            s.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }

    /// Run `req` here if this node leads, else on the leader.
    async fn forward_or_local(&self, req: PeerRequest) -> Result<Forwarded, ClusterError> {
        let t = self.inner.timings;
        let deadline = rt::now() + Duration::from_millis(t.election_max_ms * 2);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let leader = self.leader();
            let result = match leader {
                Some(l) if l == self.inner.id => self.local(&req).await,
                Some(l) => self.forward(l, &req).await,
                None => Err(ClusterError::NoLeader),
            };
            match result {
                // Leadership moved or is being decided: look again, briefly.
                Err(ClusterError::NotLeader(_) | ClusterError::NoLeader)
                    if attempts < 10 && rt::now() < deadline =>
                {
                    rt::sleep(Duration::from_millis(t.heartbeat_ms)).await;
                }
                Err(ClusterError::NotLeader(_)) => return Err(ClusterError::NoLeader),
                other => return other,
            }
        }
    }

    async fn forward(&self, leader: NodeId, req: &PeerRequest) -> Result<Forwarded, ClusterError> {
        let (_, nodes) = self.membership();
        let Some(addr) = nodes.get(&leader) else {
            return Err(ClusterError::NoLeader);
        };
        let mut peers = self.inner.peers.lock().await;
        let client = peers
            .entry(leader)
            .or_insert_with(|| PeerClient::new(leader, addr.raft.clone()));
        let limit = self.inner.timings.write_timeout() + Duration::from_secs(1);
        let r = rt::timeout(limit, client.call(req)).await;
        match r {
            Ok(Ok(PeerResponse::Forwarded(r))) => r,
            Ok(Ok(_)) => Err(ClusterError::Unknown(format!(
                "node {leader} answered the wrong request"
            ))),
            Ok(Err(CallError::Unreachable(..))) => Err(ClusterError::Unreachable(format!(
                "node {leader} at {}",
                addr.raft
            ))),
            Ok(Err(e @ CallError::Network(..))) if is_write(req) => {
                Err(ClusterError::Unknown(e.to_string()))
            }
            Ok(Err(e)) => Err(ClusterError::Unreachable(e.to_string())),
            Err(_) if is_write(req) => Err(ClusterError::Unknown(format!(
                "node {leader} did not answer in time"
            ))),
            Err(_) => Err(ClusterError::Unreachable(format!(
                "node {leader} did not answer in time"
            ))),
        }
    }

    /// Serve a request on this node, which must be the leader.
    async fn local(&self, req: &PeerRequest) -> Result<Forwarded, ClusterError> {
        let raft = &self.inner.raft;
        let t = self.inner.timings;
        let m = raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(ClusterError::NotLeader(m.current_leader));
        }
        // Fail fast when the leader has not heard from a quorum for longer
        // than a follower waits before electing someone else.
        let lease = t.election_max_ms * 2;
        if let Some(ms) = m.millis_since_quorum_ack.filter(|ms| *ms > lease) {
            return Err(ClusterError::NoQuorum(ms));
        }
        let limit = t.write_timeout();
        match req {
            PeerRequest::Write(cmd) => {
                match rt::timeout(limit, raft.client_write(cmd.clone())).await {
                    Ok(Ok(resp)) => Ok(Forwarded::Reply(resp.data)),
                    Ok(Err(e)) => Err(write_error(e)),
                    Err(_) => Err(ClusterError::Unknown(format!(
                        "not committed within {limit:?}: no quorum?"
                    ))),
                }
            }
            PeerRequest::ReadIndex => match rt::timeout(limit, raft.ensure_linearizable()).await {
                // openraft 0.9 computes the read index as max(committed, the
                // first entry this leader appended). A leader that restarts
                // resumes its leadership at once without appending anything,
                // with `committed` as it was last persisted (possibly older):
                // it would serve reads from before writes it had already
                // acknowledged (found by the linearizability scenario, seed
                // 160). Reading at the leader's last log index instead is
                // never too early: every committed entry is in its log.
                Ok(Ok(id)) => {
                    let last = m.last_log_index.unwrap_or(0);
                    Ok(Forwarded::ReadIndex(id.map_or(0, |l| l.index).max(last)))
                }
                Ok(Err(RaftError::APIError(e))) => Err(ClusterError::NotLeader(match e {
                    openraft::error::CheckIsLeaderError::ForwardToLeader(f) => f.leader_id,
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(_) => None,
                })),
                Ok(Err(e)) => Err(ClusterError::Fatal(e.to_string())),
                Err(_) => Err(ClusterError::NoQuorum(limit.as_millis() as u64)),
            },
            PeerRequest::Membership(change) => self.local_membership(change).await,
            _ => Err(ClusterError::Invalid("not a forwardable request".into())),
        }
    }

    async fn local_membership(&self, change: &MembershipChange) -> Result<Forwarded, ClusterError> {
        let raft = &self.inner.raft;
        let limit = self.inner.timings.write_timeout() * 4;
        let changes = match change {
            MembershipChange::Add { id, addr } => {
                if *id == 0 {
                    return Err(ClusterError::Invalid("node id 0 is reserved".into()));
                }
                match rt::timeout(limit, raft.add_learner(*id, addr.clone(), true)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(write_error(e)),
                    Err(_) => {
                        return Err(ClusterError::Unknown(format!(
                            "node {id} at {} did not catch up within {limit:?}",
                            addr.raft
                        )))
                    }
                }
                ChangeMembers::AddVoterIds(BTreeSet::from([*id]))
            }
            MembershipChange::Remove { id } => {
                let (voters, _) = self.membership();
                if !voters.contains(id) {
                    return Err(ClusterError::Invalid(format!("node {id} is not a voter")));
                }
                if voters.len() == 1 {
                    return Err(ClusterError::Invalid("cannot remove the last voter".into()));
                }
                ChangeMembers::RemoveVoters(BTreeSet::from([*id]))
            }
        };
        match rt::timeout(limit, raft.change_membership(changes, false)).await {
            Ok(Ok(_)) => Ok(Forwarded::Voters(self.membership().0)),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(ClusterError::Unknown(format!(
                "membership change not committed within {limit:?}"
            ))),
        }
    }
}

impl std::fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn is_write(req: &PeerRequest) -> bool {
    matches!(req, PeerRequest::Write(_) | PeerRequest::Membership(_))
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ClusterError::NotLeader(f.leader_id)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::Invalid(e.to_string())
        }
        RaftError::Fatal(e) => ClusterError::Fatal(e.to_string()),
    }
}

impl net::ForwardHandler for ClusterNode {
    async fn forwarded(&self, req: PeerRequest) -> Result<Forwarded, ClusterError> {
        match req {
            PeerRequest::Status => Ok(Forwarded::Status(self.status())),
            PeerRequest::Client(inner) => match *inner {
                PeerRequest::Status => Ok(Forwarded::Status(self.status())),
                PeerRequest::Client(_) => {
                    Err(ClusterError::Invalid("nested client request".into()))
                }
                inner => self.forward_or_local(inner).await,
            },
            // From a peer that believes this node leads: never forward again.
            req => self.local(&req).await,
        }
    }

    fn leader_contact(&self) {
        *lock(&self.inner.last_leader_contact) = Some(rt::now());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
