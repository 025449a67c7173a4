//! Build a simulated fabric and act on it as a failover drill would.
//!
//! Address plan (one madsim node each): Controller nodes `10.0.0.1`-`.3`
//! (SE sessions on the config's controller port, Raft on the next port), DNS
//! `10.0.0.53`, SEs `10.0.1.N` (created through [`SimCloud`]), origins
//! `10.0.2.N`, the client `10.0.9.1`; the VIP `10.0.100.1` is not a node
//! address: clients find its owner through the simulated L2 segment.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;

use fabric::cluster::{ClusterNode, NodeAddr, NodeOptions, RaftTimings};
use fabric::controller::Controller;
use fabric::model::Config;
use fabric::platform::{CloudConnector, MemStorage, SeSpec, Storage};
use fabric::rt;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cloud::SimCloud;
use crate::l2::{HostPort, Segment, SegmentConfig};

/// The fabric of the foundation slice: one SE group, one HTTP virtual
/// service over two origins, and a DNS zone answering its name with the VIP.
pub const SLICE_CONFIG: &str = r#"
[controller]
listen = "10.0.0.1:7470"
heartbeat_ms = 500

[[se_groups]]
name = "default"

[[pools]]
name = "web"
servers = ["10.0.2.1:80", "10.0.2.2:80"]

[[virtual_services]]
name = "app"
vip = "10.0.100.1"
port = 80
pool = "web"

[dns]
listen = "10.0.0.53:53"

[[dns.zones]]
name = "fabric.test"

[[gslb_services]]
fqdn = "app.fabric.test"
members = ["app"]

[[demo_origins]]
name = "origin-1"
listen = "10.0.2.1:80"

[[demo_origins]]
name = "origin-2"
listen = "10.0.2.2:80"
"#;

/// A legacy active/standby pair (build it with `.ses(2)`): SE group
/// `pair` with `ha_profile` `profile` (`fast` or `default`), one HTTP
/// virtual service on the VIP over one origin. se-1 (priority 150) and se-2
/// (100) are each other's peer.
pub fn pair_config(profile: &str) -> String {
    format!(
        r#"
[controller]
listen = "10.0.0.1:7470"
heartbeat_ms = 500

[[se_groups]]
name = "pair"
ha_mode = "legacy_active_standby"
ha_profile = "{profile}"

[[pools]]
name = "web"
servers = ["10.0.2.1:80"]

[[virtual_services]]
name = "app"
vip = "10.0.100.1"
port = 80
pool = "web"
se_group = "pair"

[[demo_origins]]
name = "origin-1"
listen = "10.0.2.1:80"
"#
    )
}

/// An elastic SE group `elastic` (build it with `.ses(n)`) with the group
/// settings `group` (TOML lines, e.g. `ha_mode = "elastic_active_active"`)
/// and `vss` HTTP virtual services `vs-1`.. on VIPs `10.0.100.1`.. (ports
/// 80, 81, ..) over one origin.
pub fn elastic_config(group: &str, vss: usize) -> String {
    let mut text = format!(
        r#"
[controller]
listen = "10.0.0.1:7470"
heartbeat_ms = 500

[[se_groups]]
name = "elastic"
{group}

[[pools]]
name = "web"
servers = ["10.0.2.1:80"]

[[demo_origins]]
name = "origin-1"
listen = "10.0.2.1:80"
"#
    );
    for i in 1..=vss {
        // Ports differ: a simulated SE listens on its own address for every
        // VIP it holds (one address per node), so VIPs cannot share a port.
        let port = 79 + i;
        text += &format!(
            "\n[[virtual_services]]\nname = \"vs-{i}\"\nvip = \"10.0.100.{i}\"\nport = {port}\npool = \"web\"\nse_group = \"elastic\"\n"
        );
    }
    text
}

/// Address of the simulated client.
pub const CLIENT_IP: [u8; 4] = [10, 0, 9, 1];
/// How a client request's error begins when no host answered ARP for the
/// VIP (the request was never sent).
pub const NO_ARP_ANSWER: &str = "nobody answers ARP for";
/// The simulator's message latency when nothing slows the network
/// (madsim's default).
pub const NORMAL_LATENCY: std::ops::Range<Duration> =
    Duration::from_millis(1)..Duration::from_millis(10);

/// Builds a [`World`].
#[derive(Debug)]
pub struct WorldBuilder {
    config: String,
    ses: usize,
    controllers: usize,
    grow: bool,
    timings: RaftTimings,
    segment: SegmentConfig,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        Self {
            config: SLICE_CONFIG.to_string(),
            ses: 1,
            controllers: 1,
            grow: false,
            timings: RaftTimings::default(),
            segment: SegmentConfig::default(),
        }
    }
}

impl WorldBuilder {
    /// Use another fabric config (TOML), with the address plan above.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_string();
        self
    }

    /// Number of Controller nodes (1 or 3; at most 9), one Raft cluster.
    pub fn controllers(mut self, n: usize) -> Self {
        self.controllers = n.clamp(1, 9);
        self
    }

    /// Bootstrap node 1 as a one-node cluster and leave the other
    /// controller nodes empty, to be added live (`ClusterNode::change_membership`).
    pub fn grow_from_one(mut self) -> Self {
        self.grow = true;
        self
    }

    /// Election timing of the Controller cluster.
    pub fn raft_timings(mut self, timings: RaftTimings) -> Self {
        self.timings = timings;
        self
    }

    /// Number of SEs in the (first) SE group.
    pub fn ses(mut self, n: usize) -> Self {
        self.ses = n;
        self
    }

    /// Settings of the L2 segment.
    pub fn segment(mut self, config: SegmentConfig) -> Self {
        self.segment = config;
        self
    }

    /// Create every node. Call inside a madsim runtime.
    pub async fn build(self) -> Result<World> {
        crate::init_tracing();
        let config = Config::parse(&self.config).map_err(|e| anyhow!("{e}"))?;
        let handle = Handle::current();
        let segment = Segment::new(self.segment);

        for origin in &config.demo_origins {
            let (name, listen) = (origin.name.clone(), origin.listen);
            handle
                .create_node()
                .name(name.clone())
                .ip(listen.ip())
                .init(move || {
                    let name = name.clone();
                    async move {
                        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), listen.port());
                        let listener = rt::TcpListener::bind(any).await.expect("origin port free");
                        let udp = rt::UdpSocket::bind(any)
                            .await
                            .expect("origin UDP port free");
                        rt::spawn(se::origin::serve_udp(name.clone(), udp));
                        let _ = se::origin::serve(name, listener).await;
                    }
                })
                .build();
        }

        let se_port = config.controller.listen.port();
        let members: BTreeMap<u64, NodeAddr> = (1..=self.controllers as u64)
            .map(|id| {
                let ip = controller_ip(id);
                let addr = NodeAddr {
                    raft: SocketAddr::new(ip, se_port + 1).to_string(),
                    api: String::new(),
                };
                (id, addr)
            })
            .collect();
        let cloud = SimCloud::new(segment.clone());
        // What the SEs dial, ours and the ones auto-healing creates.
        let se_controllers: Vec<SocketAddr> = members
            .keys()
            .map(|&id| SocketAddr::new(controller_ip(id), se_port))
            .collect();
        let mut controllers = Vec::new();
        let bootstrap_members = if self.grow {
            members
                .iter()
                .take(1)
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        } else {
            members.clone()
        };
        for (&id, addr) in &members {
            let slot: Arc<Mutex<Option<Controller>>> = Arc::default();
            // The disk outlives the node: a restart finds what was synced.
            let disk = MemStorage::new();
            let (config, members, addr, timings) = (
                config.clone(),
                bootstrap_members.clone(),
                addr.clone(),
                self.timings,
            );
            let (init_slot, init_disk) = (slot.clone(), disk.clone());
            let (init_cloud, init_dials) = (cloud.clone(), se_controllers.clone());
            let node = handle
                .create_node()
                .name(format!("controller-{id}"))
                .ip(controller_ip(id))
                .init(move || {
                    let (config, members, addr) = (config.clone(), members.clone(), addr.clone());
                    let (slot, disk) = (init_slot.clone(), init_disk.clone());
                    let (cloud, dials) = (init_cloud.clone(), init_dials.clone());
                    async move {
                        let any = |port| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
                        let raft = rt::TcpListener::bind(any(se_port + 1))
                            .await
                            .expect("raft port free");
                        let storage: Arc<dyn Storage> = Arc::new(disk);
                        let opts = NodeOptions {
                            timings,
                            ..NodeOptions::new(id, addr, storage)
                        };
                        let node = ClusterNode::start(opts, raft).await.expect("node starts");
                        let controller = Controller::new(node.clone());
                        controller.set_cloud(Arc::new(cloud), dials);
                        *lock(&slot) = Some(controller.clone());
                        let listener = rt::TcpListener::bind(any(se_port))
                            .await
                            .expect("controller port free");
                        let api = rt::TcpListener::bind(any(se_port + 2))
                            .await
                            .expect("API port free");
                        rt::spawn(fabric::api::serve(controller.clone(), api));
                        if id == 1 {
                            rt::spawn(async move {
                                if let Err(e) = node.bootstrap_with(members, config).await {
                                    tracing::warn!(error = %e, "bootstrap failed");
                                }
                            });
                        }
                        let _ = controller.serve(listener).await;
                        std::future::pending::<()>().await;
                    }
                })
                .build();
            controllers.push(ControllerSlot {
                node: node.id(),
                slot,
                disk,
            });
        }

        let dns_addr = config.dns.as_ref().map(|d| (d.listen, d.udp_workers));
        if let Some((listen, udp_workers)) = dns_addr {
            let config = config.clone();
            handle
                .create_node()
                .name("dns")
                .ip(listen.ip())
                .init(move || {
                    let config = config.clone();
                    async move {
                        // The DNS server as `fabric dns` runs it: the node,
                        // its sockets, its own probes of GSLB members.
                        let node = gslb::DnsNode::new(config, "sim", 1);
                        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), listen.port());
                        // More than one UDP worker still binds one simulated socket.
                        gslb::run_with(any, node.engine(), udp_workers)
                            .await
                            .expect("DNS port free");
                        let prober = |m: fabric::model::HealthMonitor, target| async move {
                            se::health::probe(&m, target).await
                        };
                        gslb::node::run_probes(node, Arc::new(prober)).await;
                    }
                })
                .build();
        }

        let group = config
            .se_groups
            .first()
            .map(|g| g.name.clone())
            .unwrap_or_else(|| "default".into());
        // A legacy active/standby group of two: se-1 (priority 150) and
        // se-2 (100), each other's peer (SimCloud numbers hosts in order).
        let pair = config
            .se_groups
            .first()
            .is_some_and(|g| g.ha_mode == fabric::model::HaMode::LegacyActiveStandby)
            && self.ses == 2;
        for i in 0..self.ses {
            let name = format!("se-{}", i + 1);
            let join = loop {
                // The first node bootstraps the cluster and its CA; until
                // then there is no token to give.
                let label = name.clone();
                match controllers[0].token(&handle, label).await {
                    Some(t) => break t,
                    None => rt::sleep(Duration::from_millis(50)).await,
                }
            };
            let spec = SeSpec {
                join: Some(join),
                name,
                group: group.clone(),
                controllers: se_controllers.clone(),
                ha: pair.then(|| fabric::ha::PairPeer {
                    peer: SocketAddr::new(
                        IpAddr::from([10, 0, 1, (2 - i) as u8]),
                        fabric::ha::DEFAULT_PAIR_PORT,
                    ),
                    priority: if i == 0 { 150 } else { 100 },
                }),
            };
            cloud.create_se(spec).await?;
        }

        let client_port: Arc<Mutex<Option<Arc<HostPort>>>> = Arc::default();
        let client = {
            let (segment, slot) = (segment.clone(), client_port.clone());
            let ip = IpAddr::from(CLIENT_IP);
            handle
                .create_node()
                .name("client")
                .ip(ip)
                .init(move || {
                    let (segment, slot) = (segment.clone(), slot.clone());
                    async move {
                        let port = segment.attach(ip).await.expect("client ARP port free");
                        *lock(&slot) = Some(port);
                        // A node lives as long as its init task, like a process and its main.
                        std::future::pending::<()>().await;
                    }
                })
                .build()
        };

        Ok(World {
            config,
            handle,
            cloud,
            controllers,
            client,
            client_port,
            dns_addr: dns_addr.map(|(listen, _)| listen),
        })
    }
}

/// A running simulated fabric.
pub struct World {
    /// The fabric's desired state.
    pub config: Config,
    /// The simulated cloud holding the SEs.
    pub cloud: SimCloud,
    handle: Handle,
    controllers: Vec<ControllerSlot>,
    client: NodeHandle,
    client_port: Arc<Mutex<Option<Arc<HostPort>>>>,
    dns_addr: Option<SocketAddr>,
}

/// What the client saw of one HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// The SE that answered (its response tag).
    pub se: Option<String>,
    /// The origin that produced the body.
    pub origin: Option<String>,
    /// The body, as text.
    pub body: String,
}

/// What the client saw of one request over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsReply {
    /// The HTTP exchange.
    pub reply: HttpReply,
    /// The certificate the SE presented (DER).
    pub cert_der: Vec<u8>,
    /// The protocol ALPN chose, if any.
    pub alpn: Option<Vec<u8>>,
}

/// What the client saw of one REST API call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiReply {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The JSON body (Null if it was not JSON).
    pub body: serde_json::Value,
}

async fn api_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Result<ApiReply> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
    let resp = se::proxy::fetch(addr, req).await?;
    Ok(ApiReply {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: serde_json::from_slice(resp.body()).unwrap_or(serde_json::Value::Null),
    })
}

/// What the client saw of one DNS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsReply {
    /// Response code.
    pub rcode: ResponseCode,
    /// Whether the AA bit was set.
    pub authoritative: bool,
    /// Addresses in the answer section.
    pub addrs: Vec<IpAddr>,
    /// Number of records in the authority section.
    pub authorities: usize,
    /// TTL of the first answer record.
    pub ttl_secs: Option<u32>,
}

impl World {
    /// A builder with the slice preset.
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// The Controller of the leader node if one is known, else of the first
    /// running node (it changes on restart).
    pub fn controller(&self) -> Option<Controller> {
        let running: Vec<Controller> = self
            .controllers
            .iter()
            .filter_map(|c| lock(&c.slot).clone())
            .collect();
        running
            .iter()
            .find(|c| c.node().is_leader())
            .or(running.first())
            .cloned()
    }

    /// The Controller of node `i` (0-based), if it runs.
    pub fn controller_at(&self, i: usize) -> Option<Controller> {
        lock(&self.controllers.get(i)?.slot).clone()
    }

    /// Number of Controller nodes.
    pub fn controller_count(&self) -> usize {
        self.controllers.len()
    }

    /// Index of the node that is leader now (by its own account), if any.
    pub fn leader_index(&self) -> Option<usize> {
        (0..self.controllers.len())
            .find(|&i| self.controller_at(i).is_some_and(|c| c.node().is_leader()))
    }

    /// Crash the first controller node.
    pub fn kill_controller(&self) {
        self.kill_controller_at(0, |_, _| 0);
    }

    /// Boot the first controller node again.
    pub fn restart_controller(&self) {
        self.restart_controller_at(0);
    }

    /// Crash controller node `i`: its process dies and its disk keeps only
    /// what was synced, plus `keep_tail(file, unsynced)` bytes of torn writes.
    pub fn kill_controller_at(&self, i: usize, keep_tail: impl FnMut(&str, usize) -> usize) {
        let c = &self.controllers[i];
        *lock(&c.slot) = None;
        self.handle.kill(c.node);
        c.disk.crash(keep_tail);
    }

    /// Boot controller node `i` again from its disk.
    pub fn restart_controller_at(&self, i: usize) {
        self.handle.restart(self.controllers[i].node);
    }

    /// Run `f` with controller node `i`'s Controller, on that node (so its
    /// network calls leave from the node's address). Err if the node is down
    /// or dies meanwhile.
    pub async fn on_controller<F, T>(
        &self,
        i: usize,
        f: impl FnOnce(Controller) -> F + Send + 'static,
    ) -> Result<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let c = self
            .controller_at(i)
            .ok_or_else(|| anyhow!("controller node {i} is down"))?;
        let node = self
            .handle
            .get_node(self.controllers[i].node)
            .ok_or_else(|| anyhow!("controller node {i} does not exist"))?;
        node.spawn(f(c))
            .await
            .map_err(|e| anyhow!("controller node {i} task failed: {e}"))
    }

    /// Address of controller node `i`'s REST API.
    pub fn api_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(
            controller_ip(i as u64 + 1),
            self.config.controller.listen.port() + 2,
        )
    }

    /// A new admin API token (written through controller node `i`).
    pub async fn admin_token(&self, i: usize) -> Result<String> {
        let token = fabric::cluster::state::ApiToken {
            label: "sim".into(),
            role: fabric::cluster::state::Role::Admin,
            tenant: None,
        };
        self.on_controller(i, move |c| async move {
            fabric::api::create_api_token(&c, token).await
        })
        .await?
        .map(|(secret, _)| secret)
        .map_err(|e| anyhow!("{e}"))
    }

    /// One REST API call from the client to controller node `i` (5 s limit).
    pub async fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> Result<ApiReply> {
        let addr = self.api_addr(i);
        let (method, path, token) = (method.to_string(), path.to_string(), token.to_string());
        self.on_client(move |_| async move {
            rt::timeout(
                Duration::from_secs(5),
                api_call(addr, &method, &path, &token, body),
            )
            .await
            .context("API call timed out")?
        })
        .await
    }

    /// Make controller node `i`'s clock run at `rate` (1.0: true time), as
    /// its Raft timers see it (`fabric::rt::skew`).
    pub fn skew_controller_at(&self, i: usize, rate: f64) {
        rt::skew::set_rate(self.controllers[i].node, rate);
    }

    /// Make every Raft write (log append, vote) on controller node `i`'s
    /// disk wait `delay` for its sync (zero heals); the disk stays slow
    /// across restarts until healed.
    pub fn slow_disk_at(&self, i: usize, delay: Duration) {
        self.controllers[i].disk.set_sync_delay(delay);
    }

    /// Cut what controller node `i` sends (`outbound`) or what it receives
    /// (`!outbound`), or heal that direction. In the simulator a one-way cut
    /// drops UDP and holds TCP bytes in the cut direction (they arrive after
    /// the heal), refuses connects made across it, and lets the other
    /// direction through.
    pub fn one_way_cut_controller_at(&self, i: usize, outbound: bool, cut: bool) {
        let net = madsim::net::NetSim::current();
        let node = self.controllers[i].node;
        match (outbound, cut) {
            (true, true) => net.clog_node_out(node),
            (true, false) => net.unclog_node_out(node),
            (false, true) => net.clog_node_in(node),
            (false, false) => net.unclog_node_in(node),
        }
    }

    /// Drop each UDP datagram anywhere in the world with probability `rate`
    /// (0 heals); see [`fabric::rt::netem`].
    pub fn set_udp_loss(&self, rate: f64) {
        rt::netem::set_udp_loss(rate);
    }

    /// Give every message on the network (each UDP datagram, each TCP
    /// write) a latency drawn from `range`; [`NORMAL_LATENCY`] heals.
    pub fn set_latency(&self, range: std::ops::Range<Duration>) {
        let range = if range.is_empty() {
            range.start..range.start + Duration::from_nanos(1)
        } else {
            range
        };
        madsim::net::NetSim::current().update_config(|c| c.send_latency = range);
    }

    /// Cut controller node `i` off the network (both ways), or heal it.
    pub fn isolate_controller_at(&self, i: usize, isolated: bool) {
        let net = madsim::net::NetSim::current();
        let node = self.controllers[i].node;
        if isolated {
            net.clog_node(node);
        } else {
            net.unclog_node(node);
        }
    }

    /// The simulator's node id of controller node `i`.
    pub fn controller_node(&self, i: usize) -> NodeId {
        self.controllers[i].node
    }

    /// The simulator's node id of the client.
    pub fn client_node(&self) -> NodeId {
        self.client.id()
    }

    /// Cut (or heal) the one-way link from node `from` to node `to`.
    pub fn clog_link(&self, from: NodeId, to: NodeId, clogged: bool) {
        let net = madsim::net::NetSim::current();
        if clogged {
            net.clog_link(from, to);
        } else {
            net.unclog_link(from, to);
        }
    }

    /// The first virtual service's VIP and port.
    pub fn vip(&self) -> SocketAddr {
        let vs = &self.config.virtual_services[0];
        SocketAddr::new(vs.vip, vs.port)
    }

    /// Run `f` as a task on the client node, with its segment port (to
    /// resolve VIPs); for clients the helpers here do not cover.
    pub async fn on_client<F, T>(
        &self,
        f: impl FnOnce(Arc<HostPort>) -> F + Send + 'static,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let slot = self.client_port.clone();
        self.client
            .spawn(async move {
                let port = loop {
                    if let Some(p) = lock(&slot).clone() {
                        break p;
                    }
                    rt::sleep(Duration::from_millis(10)).await;
                };
                // Boxed: a client's request future is large, and is polled
                // in place rather than moved inside this one's state.
                Box::pin(f(port)).await
            })
            .await
            .map_err(|e| anyhow!("client task failed: {e}"))?
    }

    /// `GET path` on the first virtual service's VIP from the client, which
    /// finds the VIP's owner through its ARP cache like a real host.
    pub async fn http_get(&self, path: &str) -> Result<HttpReply> {
        self.http_get_within(path, Duration::from_secs(5)).await
    }

    /// [`http_get`](Self::http_get) given up after `limit`; a request that
    /// fails or times out makes the client forget the VIP's cached owner
    /// ([`HostPort::forget`]), so the next one asks the segment again.
    pub async fn http_get_within(&self, path: &str, limit: Duration) -> Result<HttpReply> {
        let vs = self.config.virtual_services[0].name.clone();
        self.http_get_vs_within(&vs, path, limit).await
    }

    /// [`http_get_within`](Self::http_get_within) on virtual service `vs`.
    pub async fn http_get_vs_within(
        &self,
        vs: &str,
        path: &str,
        limit: Duration,
    ) -> Result<HttpReply> {
        let vip = self
            .vip_of(vs)
            .ok_or_else(|| anyhow!("no virtual service named {vs}"))?;
        let (host, path) = (vs.to_string(), path.to_string());
        self.on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow!("{NO_ARP_ANSWER} {}", vip.ip()))?;
            let result = rt::timeout(
                limit,
                se::proxy::get(SocketAddr::new(owner, vip.port()), &host, &path),
            )
            .await
            .context("HTTP request timed out")
            .and_then(|r| r.map_err(anyhow::Error::from));
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    port.forget(vip.ip());
                    return Err(e);
                }
            };
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            Ok(HttpReply {
                status: resp.status().as_u16(),
                se: header(se::SE_HEADER),
                origin: header(se::origin::ORIGIN_HEADER),
                body: String::from_utf8_lossy(resp.body()).into_owned(),
            })
        })
        .await
    }

    /// `GET path` over TLS on the first virtual service's VIP, asking for
    /// `sni` and offering `h2` and `http/1.1` (`h2`) or only `http/1.1`; any
    /// certificate is accepted and returned with the reply.
    pub async fn https_get(&self, sni: &str, path: &str, h2: bool) -> Result<TlsReply> {
        use http_body_util::BodyExt;
        let vip = self.vip();
        let (sni, path) = (sni.to_string(), path.to_string());
        self.on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow!("{NO_ARP_ANSWER} {}", vip.ip()))?;
            let alpn: &[&[u8]] = if h2 {
                &[b"h2", b"http/1.1"]
            } else {
                &[b"http/1.1"]
            };
            let config = fabric::pki::insecure_client_config(alpn, false);
            let exchange = async {
                let tcp = rt::connect(SocketAddr::new(owner, vip.port())).await?;
                let name = rustls::pki_types::ServerName::try_from(sni.clone())?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await?;
                let session = tls.get_ref().1;
                let cert_der = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec())
                    .unwrap_or_default();
                let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                let io = hyper_util::rt::TokioIo::new(tls);
                let body = http_body_util::Empty::<bytes::Bytes>::new();
                let resp = if alpn.as_deref() == Some(b"h2") {
                    let (mut send, conn) =
                        hyper::client::conn::http2::handshake(rt::Exec, io).await?;
                    rt::spawn(conn);
                    let req = http::Request::get(format!("https://{sni}{path}")).body(body)?;
                    send.send_request(req).await?
                } else {
                    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
                    rt::spawn(conn);
                    let req = http::Request::get(path.as_str())
                        .header("host", &sni)
                        .body(body)?;
                    send.send_request(req).await?
                };
                let header = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let (status, se, origin) = (
                    resp.status().as_u16(),
                    header(se::SE_HEADER),
                    header(se::origin::ORIGIN_HEADER),
                );
                let body = resp.into_body().collect().await?.to_bytes();
                let reply = HttpReply {
                    status,
                    se,
                    origin,
                    body: String::from_utf8_lossy(&body).into_owned(),
                };
                Ok::<_, anyhow::Error>(TlsReply {
                    reply,
                    cert_der,
                    alpn,
                })
            };
            rt::timeout(Duration::from_secs(5), exchange)
                .await
                .context("HTTPS request timed out")?
        })
        .await
    }

    /// The VIP and port of the virtual service `name`.
    pub fn vip_of(&self, name: &str) -> Option<SocketAddr> {
        self.config
            .virtual_services
            .iter()
            .find(|vs| vs.name == name)
            .map(|vs| SocketAddr::new(vs.vip, vs.port))
    }

    /// Send raw bytes to the first virtual service's VIP over TCP and return
    /// what comes back before the server closes (or 5 s pass).
    pub async fn tcp_exchange(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.tcp_exchange_to(self.vip(), bytes).await
    }

    /// Send datagrams from the client's UDP port `from_port` (one flow; 0:
    /// any free port) to `vip`, each after the answer to the one before; the
    /// answers, and the address each came from.
    pub async fn udp_exchange_to(
        &self,
        from_port: u16,
        vip: SocketAddr,
        datagrams: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, SocketAddr)>> {
        self.on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow!("{NO_ARP_ANSWER} {}", vip.ip()))?;
            let socket =
                rt::UdpSocket::bind(SocketAddr::new(IpAddr::from(CLIENT_IP), from_port)).await?;
            let mut answers = Vec::new();
            let mut buf = vec![0u8; 4096];
            for d in datagrams {
                socket
                    .send_to(&d, SocketAddr::new(owner, vip.port()))
                    .await?;
                let (n, from) = rt::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                    .await
                    .context("no UDP answer within 2 s")??;
                answers.push((buf[..n].to_vec(), from));
            }
            Ok(answers)
        })
        .await
    }

    /// Send raw bytes to `vip` over TCP and return what comes back before
    /// the server closes (or 5 s pass).
    pub async fn tcp_exchange_to(&self, vip: SocketAddr, bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow!("{NO_ARP_ANSWER} {}", vip.ip()))?;
            let mut stream = rt::connect(SocketAddr::new(owner, vip.port())).await?;
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            let mut out = Vec::new();
            let _ = rt::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            Ok(out)
        })
        .await
    }

    /// Send one raw DNS datagram from the client; the raw reply.
    pub async fn dns_exchange(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        let server = self
            .dns_addr
            .ok_or_else(|| anyhow!("this world has no DNS server"))?;
        self.on_client(move |_| async move {
            let socket = rt::UdpSocket::bind(SocketAddr::new(IpAddr::from(CLIENT_IP), 0)).await?;
            socket.send_to(&query, server).await?;
            let mut buf = vec![0u8; 4096];
            let (len, _) = rt::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
                .await
                .context("no DNS answer within 2 s")??;
            buf.truncate(len);
            Ok(buf)
        })
        .await
    }

    /// Ask the DNS server for `name` `rtype`.
    pub async fn dns(&self, name: &str, rtype: RecordType) -> Result<DnsReply> {
        self.dns_for(name, rtype, None).await
    }

    /// Ask the DNS server for `name` `rtype` on behalf of a client in
    /// network `ecs` (EDNS Client Subnet), if given.
    pub async fn dns_for(
        &self,
        name: &str,
        rtype: RecordType,
        ecs: Option<(IpAddr, u8)>,
    ) -> Result<DnsReply> {
        let mut query = Message::query();
        query.metadata.id = (rt::random_u64() & 0xffff) as u16;
        query.add_query(Query::query(Name::from_ascii(name)?, rtype));
        if let Some((addr, prefix)) = ecs {
            let mut edns = hickory_proto::op::Edns::new();
            edns.set_max_payload(1232);
            edns.options_mut()
                .insert(hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
                    hickory_proto::rr::rdata::opt::ClientSubnet::new(addr, prefix, 0),
                ));
            query.set_edns(edns);
        }
        let id = query.metadata.id;
        let reply = Message::from_vec(&self.dns_exchange(query.to_vec()?).await?)?;
        if reply.metadata.id != id {
            bail!(
                "DNS reply id {} does not match query id {id}",
                reply.metadata.id
            );
        }
        let addrs = reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect();
        Ok(DnsReply {
            rcode: reply.metadata.response_code,
            authoritative: reply.metadata.authoritative,
            addrs,
            authorities: reply.authorities.len(),
            ttl_secs: reply.answers.first().map(|r| r.ttl),
        })
    }

    /// Poll `check` every 50 ms until it holds; fail after `deadline` of
    /// simulated time, naming `what`.
    pub async fn wait_until<F, Fut>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: F,
    ) -> Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = rt::now();
        loop {
            if check().await {
                return Ok(rt::now() - start);
            }
            if rt::now() - start > deadline {
                bail!("{what}: not reached within {deadline:?}");
            }
            rt::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One Controller node of a world: its madsim node, the Controller running
/// on it (None while down), and its disk.
struct ControllerSlot {
    node: NodeId,
    slot: Arc<Mutex<Option<Controller>>>,
    disk: MemStorage,
}

impl ControllerSlot {
    /// A join token from this node's Controller, if it runs and can make one.
    async fn token(&self, handle: &Handle, label: String) -> Option<fabric::pki::JoinTicket> {
        let c = lock(&self.slot).clone()?;
        let node = handle.get_node(self.node)?;
        node.spawn(async move { c.create_join_token(&label).await.ok() })
            .await
            .ok()
            .flatten()
    }
}

/// Address of Controller node `id` (1-based).
pub fn controller_ip(id: u64) -> IpAddr {
    IpAddr::from([10, 0, 0, id as u8])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
