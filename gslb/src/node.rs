//! A DNS server node: the engine, the health it answers with, and why.
//!
//! [`DnsNode`] owns what changes while the server runs: the config (serial
//! bumped on every change), the [`Tracker`] fed by health reports, the
//! engine rebuilt from both and swapped into the [`EngineHandle`] the
//! socket loops read, counters, and `explain`. [`run_probes`] is the
//! DNS-side monitor: every member of a service with `health.monitor`,
//! probed from this node's site. All time comes from [`fabric::rt`], so the
//! simulation runs it unchanged.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fabric::model::{Config, GslbPolicy, HealthMonitor};
use fabric::rt;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};
use ipnet::IpNet;
use serde::Serialize;

use crate::engine::{Engine, Transport};
use crate::health::{Change, Hysteresis, SourceReport, StateName, Tracker};
use crate::policy::{Client, Family, Outcome};
use crate::server::EngineHandle;

/// Health changes kept for the API, newest last.
const CHANGES_KEPT: usize = 256;
/// How often the node re-decides health (reports age out, settling ends).
pub const TICK: Duration = Duration::from_secs(1);

/// One check of one member, as the DNS-side monitor runs it.
#[async_trait]
pub trait Prober: Send + Sync + 'static {
    /// Check `target` once as `monitor` says, within its timeout.
    async fn probe(&self, monitor: &HealthMonitor, target: SocketAddr) -> Result<(), String>;
}

/// Any `Fn(monitor, target) -> future` is a prober, e.g.
/// `|m, t| async move { se::health::probe(&m, t).await }`.
#[async_trait]
impl<F, Fut> Prober for F
where
    F: Fn(HealthMonitor, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    async fn probe(&self, monitor: &HealthMonitor, target: SocketAddr) -> Result<(), String> {
        self(monitor.clone(), target).await
    }
}

/// A running DNS server's state.
#[derive(Clone, Debug)]
pub struct DnsNode {
    inner: Arc<Mutex<Inner>>,
    engine: EngineHandle,
    /// This node's site: its probes report as `dns:<site>`.
    site: String,
    epoch: Instant,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    serial: u32,
    /// The engine without health, rebuilt on config changes only.
    base: Engine,
    tracker: Tracker,
    changes: VecDeque<TimedChange>,
    /// The last health published, to publish only on change.
    published: Vec<crate::policy::ServiceHealth>,
}

/// A health change with when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct TimedChange {
    /// Milliseconds since the node started.
    pub at_ms: u64,
    /// What changed.
    #[serde(flatten)]
    pub change: Change,
}

impl DnsNode {
    /// A node serving `config` with zone serial `serial`, its probes in
    /// `site` (`""`: the node has no site).
    pub fn new(config: Config, site: &str, serial: u32) -> DnsNode {
        let base = Engine::from_config(&config, serial);
        let mut tracker = Tracker::default();
        tracker.reconfigure(base.services());
        let engine = EngineHandle::new(base.clone());
        DnsNode {
            inner: Arc::new(Mutex::new(Inner {
                config,
                serial,
                base,
                tracker,
                changes: VecDeque::new(),
                published: Vec::new(),
            })),
            engine,
            site: site.to_string(),
            epoch: rt::now(),
        }
    }

    /// What the socket loops answer from.
    pub fn engine(&self) -> EngineHandle {
        self.engine.clone()
    }

    /// This node's probe source name.
    pub fn source(&self) -> String {
        if self.site.is_empty() {
            "dns".into()
        } else {
            format!("dns:{}", self.site)
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves `Inner` consistent, so a panic
        // elsewhere does not make it unusable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn elapsed(&self) -> Duration {
        rt::now().saturating_duration_since(self.epoch)
    }

    /// The serial of generated SOAs now.
    pub fn serial(&self) -> u32 {
        self.lock().serial
    }

    /// The config served now.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// Serve `config` from now on, with the serial bumped: to `floor` when
    /// that is higher (pass the Controller's config version, so every DNS
    /// server of a cluster gives the same serial, or the Unix time in
    /// seconds), else by one. Member health is
    /// kept for members that remain. An unchanged config changes nothing.
    pub fn apply_config(&self, config: Config, floor: u32) -> u32 {
        let mut inner = self.lock();
        if inner.config == config {
            return inner.serial;
        }
        let serial = if floor > inner.serial {
            floor
        } else {
            inner.serial.wrapping_add(1)
        };
        let base = Engine::from_config(&config, serial).continuing(&inner.base);
        inner.tracker.reconfigure(base.services());
        inner.config = config;
        inner.serial = serial;
        inner.base = base;
        inner.published.clear();
        self.publish(&mut inner, true);
        serial
    }

    /// `source` saw member `member` (its label: VS name or address) of the
    /// service at `fqdn` up or down now.
    pub fn report(&self, fqdn: &str, member: &str, source: &str, up: bool) {
        let now = self.elapsed();
        let mut inner = self.lock();
        let changes = inner.tracker.report(fqdn, member, source, up, now);
        self.note(&mut inner, changes, now);
    }

    /// `source` (an SE) saw virtual service `vs` up or down now.
    pub fn report_vs(&self, vs: &str, source: &str, up: bool) {
        let now = self.elapsed();
        let mut inner = self.lock();
        let changes = inner.tracker.report_vs(vs, source, up, now);
        self.note(&mut inner, changes, now);
    }

    /// Re-decide health now: reports age out, settling windows end.
    pub fn tick(&self) {
        let now = self.elapsed();
        let mut inner = self.lock();
        let changes = inner.tracker.evaluate(now);
        self.note(&mut inner, changes, now);
    }

    fn note(&self, inner: &mut Inner, changes: Vec<Change>, now: Duration) {
        for change in changes {
            tracing::info!(
                fqdn = %change.fqdn, member = %change.member, from = ?change.from, to = ?change.to,
                up_sources = change.up_sources, sources = change.sources, "GSLB member health changed"
            );
            if inner.changes.len() == CHANGES_KEPT {
                inner.changes.pop_front();
            }
            inner.changes.push_back(TimedChange {
                at_ms: now.as_millis() as u64,
                change,
            });
        }
        self.publish(inner, false);
    }

    fn publish(&self, inner: &mut Inner, force: bool) {
        let health = inner.tracker.snapshot(self.elapsed());
        if force || health != inner.published {
            self.engine.swap(inner.base.with_health(health.clone()));
            inner.published = health;
        }
    }

    /// What this node shares with the other sites: its config and serial,
    /// and its own probes' last reports (never what it heard from others, so
    /// reports do not echo between sites).
    pub fn state(&self) -> SiteState {
        let now = self.elapsed();
        let source = self.source();
        let inner = self.lock();
        SiteState {
            site: self.site.clone(),
            serial: inner.serial,
            config: inner.config.clone(),
            reports: inner
                .tracker
                .reports_of(&source)
                .into_iter()
                .map(|(service, member, up, at)| SharedReport {
                    service,
                    member,
                    up,
                    age_ms: now.saturating_sub(at).as_millis() as u64,
                })
                .collect(),
        }
    }

    /// Take in another site's state: its reports count as its source
    /// (`dns:<its site>`), dated by their age; with `follow`, its config too
    /// (the leader site's), at its serial. A peer that says it is this
    /// node's own site is ignored.
    pub fn absorb(&self, peer: &SiteState, follow: bool) {
        if peer.site == self.site {
            return;
        }
        if follow {
            self.apply_config(peer.config.clone(), peer.serial);
        }
        let source = if peer.site.is_empty() {
            "dns:peer".to_string()
        } else {
            format!("dns:{}", peer.site)
        };
        let now = self.elapsed();
        let mut inner = self.lock();
        let mut changes = Vec::new();
        for r in &peer.reports {
            let at = now.saturating_sub(Duration::from_millis(r.age_ms));
            changes.extend(
                inner
                    .tracker
                    .report(&r.service, &r.member, &source, r.up, at),
            );
        }
        changes.extend(inner.tracker.evaluate(now));
        self.note(&mut inner, changes, now);
    }

    /// The counters now.
    pub fn metrics(&self) -> crate::metrics::MetricsSnapshot {
        self.engine.current().metrics().snapshot()
    }

    /// Every GSLB member's health and what each source last said.
    pub fn health_report(&self) -> Vec<ServiceHealthReport> {
        let engine = self.engine.current();
        let now = self.elapsed();
        let inner = self.lock();
        engine
            .services()
            .iter()
            .enumerate()
            .filter_map(|(index, s)| {
                let s = s.as_ref()?;
                let health = engine.health(index);
                Some(ServiceHealthReport {
                    service: s.fqdn.clone(),
                    members: s
                        .members
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let h = health.of(i);
                            MemberHealthReport {
                                member: m.label.clone(),
                                address: m.addr,
                                health: h.state.into(),
                                settling: h.settling,
                                sources: inner.tracker.sources(index, i, now),
                            }
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// The last health changes, oldest first.
    pub fn changes(&self) -> Vec<TimedChange> {
        self.lock().changes.iter().cloned().collect()
    }

    /// What the server answers a query for `name` and `qtype` from `client`
    /// (with EDNS Client Subnet `ecs` if given), and why. The answer is the
    /// server's own response to that query, taken without moving round
    /// robin's turn, so the next real query gets exactly it.
    pub fn explain(
        &self,
        name: &str,
        qtype: &str,
        client: IpAddr,
        ecs: Option<IpNet>,
    ) -> Result<Explanation, String> {
        let rtype = RecordType::from_str(&qtype.to_ascii_uppercase())
            .map_err(|_| format!("`{qtype}` is not a record type"))?;
        let qname =
            Name::from_ascii(name).map_err(|e| format!("`{name}` is not a DNS name: {e}"))?;
        let mut query = Message::new(0, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(qname, rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        if let Some(net) = ecs {
            let net = net.trunc();
            edns.options_mut()
                .insert(EdnsOption::Subnet(ClientSubnet::new(
                    net.addr(),
                    net.prefix_len(),
                    0,
                )));
        }
        query.set_edns(edns);
        let bytes = query
            .to_vec()
            .map_err(|e| format!("cannot build the query: {e}"))?;
        let engine = self.engine.current();
        let mut out = Vec::new();
        if !engine.answer_peek(&bytes, client, Transport::Tcp, &mut out) {
            return Err("the query gets no response".into());
        }
        let response = Message::from_vec(&out).map_err(|e| format!("unreadable response: {e}"))?;
        let scope = response.edns.as_ref().and_then(|e| {
            match e.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet) {
                Some(EdnsOption::Subnet(s)) => Some(s.scope_prefix()),
                _ => None,
            }
        });
        let records = |section: &[hickory_proto::rr::Record]| {
            section.iter().map(|r| r.to_string()).collect::<Vec<_>>()
        };
        let normalized = fabric::model::normalize_name(name).unwrap_or_default();
        let policy_client = match ecs {
            Some(net) => Client {
                addr: net.trunc().addr(),
                prefix: net.prefix_len(),
                ecs: true,
            },
            None => Client::from_source(client),
        };
        let families: &[Family] = match rtype {
            RecordType::A => &[Family::V4],
            RecordType::AAAA => &[Family::V6],
            RecordType::ANY => &[Family::V4, Family::V6],
            _ => &[],
        };
        let gslb = engine.service_at(&normalized).and_then(|index| {
            let service = engine.services()[index].as_ref()?;
            let health = engine.health(index);
            let now = self.elapsed();
            let inner = self.lock();
            let decisions: Vec<_> = families
                .iter()
                .filter_map(|f| {
                    engine
                        .peek_decision(index, &policy_client, *f)
                        .map(|c| (*f, c))
                })
                .collect();
            let sites = engine.sites();
            let client_site = sites
                .lookup(&policy_client)
                .map(|(site, subnet)| ClientSite {
                    site: sites.names[site].clone(),
                    subnet: subnet.to_string(),
                });
            Some(GslbExplanation {
                service: service.fqdn.clone(),
                policy: service.policy,
                client_network: match ecs {
                    Some(net) => net.trunc().to_string(),
                    None => IpNet::from(client).to_string(),
                },
                client_site,
                decisions: decisions
                    .iter()
                    .map(|(family, c)| Decision {
                        family: match family {
                            Family::V4 => "A",
                            Family::V6 => "AAAA",
                        },
                        rule: c.rule.to_string(),
                        outcome: match c.outcome {
                            Outcome::Members => "members",
                            Outcome::Fallback => "fallback_addresses",
                            Outcome::Servfail => "servfail",
                            Outcome::Nodata => "nodata",
                        },
                        chosen: c
                            .members()
                            .map(|m| service.members[m].label.clone())
                            .collect(),
                        ttl_secs: c.ttl_secs,
                    })
                    .collect(),
                members: service
                    .members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let h = health.of(i);
                        MemberExplanation {
                            member: m.label.clone(),
                            address: m.addr,
                            site: m.site.map(|s| sites.names[s].clone()),
                            weight: m.weight,
                            priority: m.priority,
                            health: h.state.into(),
                            settling: h.settling,
                            last_good: h.last_good,
                            chosen: decisions.iter().any(|(_, c)| c.members().any(|c| c == i)),
                            sources: inner.tracker.sources(index, i, now),
                        }
                    })
                    .collect(),
            })
        });
        Ok(Explanation {
            name: name.to_string(),
            qtype: rtype.to_string(),
            client: client.to_string(),
            ecs: ecs.map(|n| n.trunc().to_string()),
            rcode: response.metadata.response_code.to_string(),
            authoritative: response.metadata.authoritative,
            answers: records(&response.answers),
            authority: records(&response.authorities),
            additional: records(&response.additionals),
            ecs_scope: scope,
            serial: self.serial(),
            gslb,
        })
    }
}

/// What a DNS node shares with the other sites (`GET /api/v1/dns/state`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SiteState {
    /// Its site.
    pub site: String,
    /// Its serial.
    pub serial: u32,
    /// The config it serves.
    pub config: Config,
    /// Its own probes' last reports.
    pub reports: Vec<SharedReport>,
}

/// One probe report shared between sites.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SharedReport {
    /// The service.
    pub service: String,
    /// The member's label.
    pub member: String,
    /// What the probe said.
    pub up: bool,
    /// How long ago.
    pub age_ms: u64,
}

/// Poll the DNS APIs of `peers` (other sites' `dns.api_listen`) every
/// [`TICK`] for ever: their probe reports become sources here; the config
/// of `leader` (one of them, if given) is served here. A peer that does
/// not answer within a second is skipped: its reports go stale and this
/// site decides on its own (and keeps the last config it had).
pub async fn follow_peers(node: DnsNode, peers: Vec<SocketAddr>, leader: Option<SocketAddr>) {
    loop {
        for &peer in &peers {
            match rt::timeout(TICK, fetch_state(peer)).await {
                Ok(Ok(state)) => node.absorb(&state, Some(peer) == leader),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "peer DNS state unavailable"),
                Err(_) => tracing::debug!(%peer, "peer DNS state: no answer within a second"),
            }
        }
        rt::sleep(TICK).await;
    }
}

/// Largest state document taken from a peer.
const STATE_MAX_BYTES: usize = 16 << 20;

async fn fetch_state(peer: SocketAddr) -> Result<SiteState, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    let stream = rt::connect(peer).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    rt::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get("/api/v1/dns/state")
        .header("host", peer.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), STATE_MAX_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let state: SiteState = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    // A peer's config is validated as any other before it is served.
    state
        .config
        .validate()
        .map_err(|e| format!("invalid config: {e}"))?;
    Ok(state)
}

/// One service in the health report.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealthReport {
    /// The service.
    pub service: String,
    /// Its members.
    pub members: Vec<MemberHealthReport>,
}

/// One member in the health report.
#[derive(Debug, Clone, Serialize)]
pub struct MemberHealthReport {
    /// The VS name or address.
    pub member: String,
    /// Its address.
    pub address: IpAddr,
    /// The verdict.
    pub health: StateName,
    /// Changed state within `settle_secs`.
    pub settling: bool,
    /// What each source last said.
    pub sources: Vec<SourceReport>,
}

/// Why a client gets its answer: `explain`'s output.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The name asked.
    pub name: String,
    /// The type asked.
    pub qtype: String,
    /// The client's source address.
    pub client: String,
    /// The EDNS Client Subnet sent, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecs: Option<String>,
    /// The response code.
    pub rcode: String,
    /// AA.
    pub authoritative: bool,
    /// The answer section, in presentation format.
    pub answers: Vec<String>,
    /// The authority section.
    pub authority: Vec<String>,
    /// The additional section (without OPT).
    pub additional: Vec<String>,
    /// The ECS scope returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecs_scope: Option<u8>,
    /// The zone serial.
    pub serial: u32,
    /// For a GSLB name: the policy's decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gslb: Option<GslbExplanation>,
}

/// The GSLB part of an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct GslbExplanation {
    /// The service.
    pub service: String,
    /// Its policy.
    pub policy: GslbPolicy,
    /// The client network the policy used (ECS, else the source address).
    pub client_network: String,
    /// The site whose client networks hold it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_site: Option<ClientSite>,
    /// One decision per address family asked.
    pub decisions: Vec<Decision>,
    /// Every member with its health.
    pub members: Vec<MemberExplanation>,
}

/// The site a client network matched.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSite {
    /// The site.
    pub site: String,
    /// The network of its `client_subnets` that matched.
    pub subnet: String,
}

/// The decision for one address family.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// `A` or `AAAA`.
    pub family: &'static str,
    /// The deciding rule, in words.
    pub rule: String,
    /// What the answer is made of.
    pub outcome: &'static str,
    /// The members answered, in order.
    pub chosen: Vec<String>,
    /// The TTL given.
    pub ttl_secs: u32,
}

/// One member in an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct MemberExplanation {
    /// The VS name or address.
    pub member: String,
    /// Its address.
    pub address: IpAddr,
    /// Its site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Weight.
    pub weight: u32,
    /// Priority.
    pub priority: u32,
    /// The verdict.
    pub health: StateName,
    /// Changed state within `settle_secs`.
    pub settling: bool,
    /// Up the last time any member was.
    pub last_good: bool,
    /// In the answer.
    pub chosen: bool,
    /// What each source last said.
    pub sources: Vec<SourceReport>,
}

/// Run the DNS-side monitors of `node` until the process ends: every member
/// of every service with `health.monitor`, probed every `interval_ms`
/// through `prober`, results through rise/fall hysteresis, reported as this
/// node's source. Restarts its probe set when the config changes (checked
/// every tick), and ticks the node.
pub async fn run_probes(node: DnsNode, prober: Arc<dyn Prober>) {
    // The serial moves exactly when the config changes: compare it rather
    // than copying the whole config every tick.
    let mut running: Option<(u32, Vec<rt::JoinHandle<()>>)> = None;
    loop {
        let serial = node.serial();
        if running.as_ref().is_none_or(|(s, _)| *s != serial) {
            if let Some((_, tasks)) = running.take() {
                for t in tasks {
                    t.abort();
                }
            }
            let tasks = probe_tasks(&node, &node.config(), &prober);
            running = Some((serial, tasks));
        }
        node.tick();
        rt::sleep(TICK).await;
    }
}

fn probe_tasks(
    node: &DnsNode,
    config: &Config,
    prober: &Arc<dyn Prober>,
) -> Vec<rt::JoinHandle<()>> {
    // Members resolved as the engine does, without building its zones.
    let sites = crate::policy::Sites::from_config(config);
    let mut tasks = Vec::new();
    for s in &config.gslb_services {
        let Some(monitor) = s
            .health
            .monitor
            .as_ref()
            .and_then(|name| config.health_monitors.iter().find(|m| &m.name == name))
        else {
            continue;
        };
        let Some(built) = crate::policy::Service::from_config(config, &sites, s) else {
            continue;
        };
        for member in &built.members {
            let node = node.clone();
            let prober = prober.clone();
            let monitor = monitor.clone();
            let fqdn = built.fqdn.clone();
            let label = member.label.clone();
            let target = SocketAddr::new(member.addr, member.probe_port);
            tasks.push(rt::spawn(async move {
                let source = node.source();
                let mut hysteresis = Hysteresis::new(monitor.rise, monitor.fall);
                let interval = Duration::from_millis(monitor.interval_ms.max(1));
                loop {
                    let started = rt::now();
                    let ok = prober.probe(&monitor, target).await.is_ok();
                    let up = hysteresis.observe(ok);
                    node.report(&fqdn, &label, &source, up);
                    let spent = rt::now().saturating_duration_since(started);
                    rt::sleep(interval.saturating_sub(spent)).await;
                }
            }));
        }
    }
    tasks
}
