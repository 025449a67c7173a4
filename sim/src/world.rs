//! Build a simulated fabric and act on it as a failover drill would.
//!
//! Address plan (one madsim node each): Controller `10.0.0.1`, DNS
//! `10.0.0.53`, SEs `10.0.1.N` (created through [`SimCloud`]), origins
//! `10.0.2.N`, the client `10.0.9.1`; the VIP `10.0.100.1` is not a node
//! address: clients find its owner through the simulated L2 segment.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use fabric::controller::Controller;
use fabric::model::Config;
use fabric::platform::{CloudConnector, SeSpec};
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

/// Address of the simulated client.
pub const CLIENT_IP: [u8; 4] = [10, 0, 9, 1];

/// Builds a [`World`].
#[derive(Debug)]
pub struct WorldBuilder {
    config: String,
    ses: usize,
    segment: SegmentConfig,
}

impl Default for WorldBuilder {
    fn default() -> Self {
        Self {
            config: SLICE_CONFIG.to_string(),
            ses: 1,
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
                        let _ = se::origin::serve(name, listener).await;
                    }
                })
                .build();
        }

        let controller_slot: Arc<Mutex<Option<Controller>>> = Arc::default();
        let controller_node = {
            let (config, slot) = (config.clone(), controller_slot.clone());
            let listen = config.controller.listen;
            handle
                .create_node()
                .name("controller")
                .ip(listen.ip())
                .init(move || {
                    let (config, slot) = (config.clone(), slot.clone());
                    async move {
                        let controller = Controller::new(config).expect("world config is valid");
                        *lock(&slot) = Some(controller.clone());
                        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), listen.port());
                        let listener = rt::TcpListener::bind(any)
                            .await
                            .expect("controller port free");
                        let _ = controller.serve(listener).await;
                    }
                })
                .build()
        };

        let dns_addr = config.dns.as_ref().map(|d| d.listen);
        if let Some(listen) = dns_addr {
            let config = config.clone();
            handle
                .create_node()
                .name("dns")
                .ip(listen.ip())
                .init(move || {
                    let config = config.clone();
                    async move {
                        let engine = gslb::EngineHandle::new(gslb::Engine::from_config(&config, 1));
                        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), listen.port());
                        gslb::run(any, engine).await.expect("DNS port free");
                        std::future::pending::<()>().await;
                    }
                })
                .build();
        }

        let cloud = SimCloud::new(segment.clone());
        let group = config
            .se_groups
            .first()
            .map(|g| g.name.clone())
            .unwrap_or_else(|| "default".into());
        for i in 0..self.ses {
            let spec = SeSpec {
                name: format!("se-{}", i + 1),
                group: group.clone(),
                controller: config.controller.listen,
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
            controller_node: controller_node.id(),
            controller_slot,
            client,
            client_port,
            dns_addr,
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
    controller_node: NodeId,
    controller_slot: Arc<Mutex<Option<Controller>>>,
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
}

impl World {
    /// A builder with the slice preset.
    pub fn builder() -> WorldBuilder {
        WorldBuilder::default()
    }

    /// The Controller object of the running controller node (it changes on restart).
    pub fn controller(&self) -> Option<Controller> {
        lock(&self.controller_slot).clone()
    }

    /// Crash the controller node.
    pub fn kill_controller(&self) {
        *lock(&self.controller_slot) = None;
        self.handle.kill(self.controller_node);
    }

    /// Boot the controller node again.
    pub fn restart_controller(&self) {
        self.handle.restart(self.controller_node);
    }

    /// The first virtual service's VIP and port.
    pub fn vip(&self) -> SocketAddr {
        let vs = &self.config.virtual_services[0];
        SocketAddr::new(vs.vip, vs.port)
    }

    async fn on_client<F, T>(
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
                f(port).await
            })
            .await
            .map_err(|e| anyhow!("client task failed: {e}"))?
    }

    /// `GET path` on the first virtual service's VIP from the client, which
    /// finds the VIP's owner through its ARP cache like a real host.
    pub async fn http_get(&self, path: &str) -> Result<HttpReply> {
        let vip = self.vip();
        let (host, path) = (
            self.config.virtual_services[0].name.clone(),
            path.to_string(),
        );
        self.on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow!("nobody answers ARP for {}", vip.ip()))?;
            let resp = rt::timeout(
                Duration::from_secs(5),
                se::proxy::get(SocketAddr::new(owner, vip.port()), &host, &path),
            )
            .await
            .context("HTTP request timed out")??;
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

    /// Send raw bytes to the VIP over TCP and return what comes back before
    /// the server closes (or 5 s pass).
    pub async fn tcp_exchange(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let vip = self.vip();
        self.on_client(move |port| async move {
            let owner = port
                .resolve(vip.ip())
                .await
                .ok_or_else(|| anyhow!("nobody answers ARP for {}", vip.ip()))?;
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
        let mut query = Message::query();
        query.metadata.id = (rt::random_u64() & 0xffff) as u16;
        query.add_query(Query::query(Name::from_ascii(name)?, rtype));
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
