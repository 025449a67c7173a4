//! The SE's listeners, one per virtual service, changed atomically.
//!
//! [`DataPlane::apply`] takes a whole [`SeConfig`] in two phases: first it
//! claims every new VIP and binds every new listener; if any of that fails,
//! it undoes what it did and the previous config keeps serving untouched.
//! Only then does it commit: new listeners start, changed server sets are
//! swapped, removed listeners stop (their open connections finish).
//!
//! Server health lives beside the listeners, per pool and server address:
//! a server that stays across config versions keeps its health, its
//! in-flight count and its outlier-detection state, and each monitored
//! server has one checker task, stopped when a config drops the server, its
//! pool or the pool's monitor.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use fabric::model::{AdminState, HealthMonitor, OutlierDetection, PoolTls, VsProtocol};
use fabric::platform::{L2Error, L2Fabric};
use fabric::proto::{SeConfig, SeVirtualService};
use fabric::rt;
use fabric::stats;

use crate::health::{self, Checker, HealthEvents, MAX_PENDING_CHANGES};
use crate::lb::{ServerSet, ServerState};
use crate::outlier::PoolOutliers;
use crate::proxy::{self, VirtualService};

/// Whether `vs` speaks HTTP/2 to its servers.
fn speaks_h2(vs: &SeVirtualService) -> bool {
    vs.server_http2 && vs.protocol == VsProtocol::Http
}

/// The ALPN protocols TLS to `vs`'s servers offers.
fn alpn(vs: &SeVirtualService) -> &'static [&'static [u8]] {
    match vs.protocol {
        VsProtocol::Http if vs.server_http2 => &[b"h2"],
        VsProtocol::Http => &[b"http/1.1"],
        VsProtocol::Tcp | VsProtocol::Udp => &[],
    }
}

/// Why a config could not be applied (the previous one still serves).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Older than what is applied: versions never go backwards.
    #[error("config version {version} is older than the applied version {applied}")]
    Stale {
        /// Offered version.
        version: u64,
        /// Applied version.
        applied: u64,
    },
    /// A listener could not bind.
    #[error("virtual service `{vs}`: cannot listen on {addr}: {source}")]
    Bind {
        /// Virtual service.
        vs: String,
        /// Address.
        addr: SocketAddr,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The VIP could not be claimed.
    #[error("virtual service `{vs}`: {source}")]
    Vip {
        /// Virtual service.
        vs: String,
        /// Why.
        #[source]
        source: L2Error,
    },
    /// The TLS settings could not be built (a certificate that does not parse
    /// or does not match its key).
    #[error("virtual service `{vs}`: TLS: {reason}")]
    Tls {
        /// Virtual service.
        vs: String,
        /// Why.
        reason: String,
    },
    /// The config lists one VIP and port twice.
    #[error("virtual service `{0}`: VIP and port used twice in one config")]
    Duplicate(String),
}

/// Where a listener listens: VIP, port, and whether it is UDP (a UDP and a
/// TCP virtual service may share a port).
type ListenKey = (IpAddr, u16, bool);

fn listen_key(vs: &SeVirtualService) -> ListenKey {
    (vs.vip, vs.port, vs.protocol == VsProtocol::Udp)
}

/// A bound listener, not yet serving.
enum Bound {
    Tcp(rt::TcpListener),
    Udp(rt::UdpSocket),
    /// A secondary: no socket of its own, connections come through the
    /// SE's relay listener.
    Relay,
}

struct Listener {
    vs: Arc<VirtualService>,
    vip: IpAddr,
    task: rt::JoinHandle<()>,
    /// What its server set was built from.
    spec: SeVirtualService,
}

/// The health side of one pool, kept across config versions.
#[derive(Default)]
struct PoolHealth {
    /// Its monitor, what the checks were built from, and the checks.
    checker: Option<(CheckSpec, Checker)>,
    outliers: Option<Arc<PoolOutliers>>,
    servers: BTreeMap<SocketAddr, Tracked>,
}

/// What a pool's checks are built from: the monitor and the TLS settings
/// its checks use.
type CheckSpec = (HealthMonitor, Option<PoolTls>);

/// A pool's monitor and the TLS settings its checks would use, from `vs`.
fn check_spec(vs: &SeVirtualService) -> Option<CheckSpec> {
    let monitor = vs.health_monitor.as_ref()?;
    let tls = Checker::tls_settings(monitor, vs.server_tls.as_ref()).cloned();
    Some((monitor.clone(), tls))
}

/// One server's shared state and, while monitored, its checker task.
struct Tracked {
    state: Arc<ServerState>,
    checker: Option<rt::JoinHandle<()>>,
}

impl Tracked {
    fn start(&mut self, checker: &Checker) {
        if let Some(old) = self.checker.take() {
            old.abort();
        }
        let monitor = checker.monitor();
        self.state.monitor(monitor.rise, monitor.fall);
        self.checker = Some(rt::spawn(health::run_monitor(
            checker.clone(),
            self.state.clone(),
        )));
    }

    fn stop(&mut self, reason: &str) {
        if let Some(old) = self.checker.take() {
            old.abort();
        }
        self.state.unmonitor(reason);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(checker) = &self.checker {
            checker.abort();
        }
    }
}

/// The pool a virtual service's servers belong to (its own name if the
/// Controller predates pool names in the protocol).
fn pool_key(vs: &SeVirtualService) -> &str {
    if vs.pool.is_empty() {
        &vs.name
    } else {
        &vs.pool
    }
}

/// Whether two specs build the same server set.
fn same_servers(a: &SeVirtualService, b: &SeVirtualService) -> bool {
    pool_key(a) == pool_key(b)
        && a.algorithm == b.algorithm
        && a.hash_header == b.hash_header
        && a.servers == b.servers
}

/// How long a secondary of a scaled-out virtual service keeps taking
/// hand-offs for it once its config drops it: a push reaches the SEs one by
/// one, and the primary may still hand a new connection over until it has
/// applied the same push; refused, that connection would fail (a scale-in
/// in chaos test `predictive_autoscale_adds_an_se_before_the_learned_peak`).
pub const RELAY_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The listeners of one SE.
pub struct DataPlane {
    se_name: Arc<str>,
    l2: Arc<dyn L2Fabric>,
    listeners: BTreeMap<ListenKey, Listener>,
    pools: BTreeMap<String, PoolHealth>,
    events: Arc<HealthEvents>,
    applied: u64,
    /// The virtual services served here as a secondary, by VIP and port.
    relays: crate::scaleout::RelayTable,
    /// Where the relay listener takes hand-offs, if one runs.
    relay_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("se_name", &self.se_name)
            .field("listeners", &self.listeners.keys().collect::<Vec<_>>())
            .field("applied", &self.applied)
            .finish()
    }
}

impl DataPlane {
    /// An empty data plane for SE `se_name` on the segment `l2`.
    pub fn new(se_name: &str, l2: Arc<dyn L2Fabric>) -> Self {
        Self {
            se_name: se_name.into(),
            l2,
            listeners: BTreeMap::new(),
            pools: BTreeMap::new(),
            events: Arc::new(HealthEvents::new(MAX_PENDING_CHANGES)),
            applied: 0,
            relays: Arc::default(),
            relay_addr: None,
        }
    }

    /// Where this SE's relay listener takes hand-offs (told to the Controller).
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay_addr
    }

    /// Record where the relay listener runs.
    pub fn set_relay_addr(&mut self, addr: Option<SocketAddr>) {
        self.relay_addr = addr;
    }

    /// What the SE's relay listener serves (`scaleout::serve_relay`).
    pub fn relays(&self) -> crate::scaleout::RelayTable {
        self.relays.clone()
    }

    /// Health changes of this SE's servers, for the agent to report.
    pub fn health_events(&self) -> Arc<HealthEvents> {
        self.events.clone()
    }

    /// Servers of `pool` that outlier detection has ejected now.
    pub fn ejected(&self, pool: &str) -> Vec<SocketAddr> {
        self.pools.get(pool).map_or_else(Vec::new, |p| {
            p.servers
                .iter()
                .filter(|(_, t)| t.state.is_ejected())
                .map(|(addr, _)| *addr)
                .collect()
        })
    }

    /// Each server of `pool` with whether it is up now.
    pub fn pool_health(&self, pool: &str) -> Vec<(SocketAddr, bool)> {
        self.pools.get(pool).map_or_else(Vec::new, |p| {
            p.servers
                .iter()
                .map(|(addr, t)| (*addr, t.state.is_up()))
                .collect()
        })
    }

    /// Traffic counters of every virtual service and server, since this SE
    /// started serving them (at most [`stats::MAX_REPORTED`] of each kind).
    pub fn stats(&self) -> stats::SeStats {
        stats::SeStats {
            cpu_percent: None,
            virtual_services: self
                .listeners
                .values()
                .take(stats::MAX_REPORTED)
                .map(|l| l.vs.counters().snapshot(&l.vs.name))
                .collect(),
            pools: self
                .pools
                .iter()
                .take(stats::MAX_REPORTED)
                .map(|(name, p)| stats::PoolStats {
                    name: name.clone(),
                    servers: p.servers.values().map(|t| t.state.stats()).collect(),
                })
                .collect(),
        }
    }

    /// The config version serving now (0: none yet).
    pub fn applied_version(&self) -> u64 {
        self.applied
    }

    /// Virtual services serving now, by VIP and port.
    pub fn serving(&self) -> Vec<(String, IpAddr, u16)> {
        self.listeners
            .iter()
            .map(|((vip, port, _), l)| (l.vs.name.clone(), *vip, *port))
            .collect()
    }

    /// Make `config` the serving config, all of it or none of it.
    pub async fn apply(&mut self, config: &SeConfig) -> Result<(), ApplyError> {
        if config.version < self.applied {
            return Err(ApplyError::Stale {
                version: config.version,
                applied: self.applied,
            });
        }
        let mut wanted: BTreeMap<ListenKey, &SeVirtualService> = BTreeMap::new();
        // A secondary does not claim the VIP or listen on it: the primary
        // hands it connections through the relay listener (docs/placement.md).
        for vs in &config.virtual_services {
            if wanted.insert(listen_key(vs), vs).is_some() {
                return Err(ApplyError::Duplicate(vs.name.clone()));
            }
        }

        // Phase 1: everything that can fail, undone on failure. TLS
        // settings first (building them changes nothing).
        let mut tls = BTreeMap::new();
        for (key, vs) in &wanted {
            if self.listeners.get(key).is_some_and(|l| {
                (&l.spec.tls, l.spec.tls_resumption, l.spec.protocol)
                    == (&vs.tls, vs.tls_resumption, vs.protocol)
            }) {
                continue;
            }
            let config = match &vs.tls {
                None => None,
                Some(certs) => Some(
                    crate::tls::server_config(
                        certs,
                        vs.tls_resumption,
                        vs.protocol == VsProtocol::Http,
                    )
                    .map_err(|reason| ApplyError::Tls {
                        vs: vs.name.clone(),
                        reason,
                    })?,
                ),
            };
            tls.insert(*key, config);
        }
        // TLS to servers, for virtual services whose setting is new.
        let mut upstream_tls = BTreeMap::new();
        for (key, vs) in &wanted {
            if self.listeners.get(key).is_some_and(|l| {
                (&l.spec.server_tls, l.spec.protocol, l.spec.server_http2)
                    == (&vs.server_tls, vs.protocol, vs.server_http2)
            }) {
                continue;
            }
            let built = match &vs.server_tls {
                None => None,
                Some(t) => Some(Arc::new(
                    crate::upstream::UpstreamTls::new(t, alpn(vs)).map_err(|reason| {
                        ApplyError::Tls {
                            vs: vs.name.clone(),
                            reason: format!("to servers: {reason}"),
                        }
                    })?,
                )),
            };
            upstream_tls.insert(*key, built);
        }
        // Health checks, for pools whose monitor or check TLS is new.
        let mut checkers: BTreeMap<&str, Option<(CheckSpec, Checker)>> = BTreeMap::new();
        for vs in &config.virtual_services {
            let pool = pool_key(vs);
            if checkers.contains_key(pool) {
                continue;
            }
            let spec = check_spec(vs);
            let built = match (spec, self.pools.get(pool).and_then(|p| p.checker.as_ref())) {
                (None, _) => None,
                (Some(spec), Some((old, checker))) if *old == spec => Some((spec, checker.clone())),
                (Some(spec), _) => {
                    let checker = Checker::new(&spec.0, spec.1.as_ref()).map_err(|reason| {
                        ApplyError::Tls {
                            vs: vs.name.clone(),
                            reason: format!("health monitor `{}`: {reason}", spec.0.name),
                        }
                    })?;
                    Some((spec, checker))
                }
            };
            checkers.insert(pool, built);
        }
        // A VIP another host took while this config did not change (this SE
        // was cut off and its virtual service placed elsewhere): a config
        // that still puts it here takes it back.
        for (key, vs) in &wanted {
            let kept = self.listeners.get(key).is_some_and(|l| !l.spec.secondary);
            if kept && !vs.secondary && self.l2.lost(vs.vip) {
                tracing::warn!(se = %self.se_name, vs = %vs.name, vip = %vs.vip,
                    "claiming again a VIP another host had taken");
                self.claim(vs).await?;
            }
        }
        let mut prepared = Vec::new();
        for (key, vs) in &wanted {
            // A listener in the same role is kept; one changing role (a
            // secondary made primary, or the reverse) is prepared anew.
            if self
                .listeners
                .get(key)
                .is_some_and(|l| l.spec.secondary == vs.secondary)
            {
                continue;
            }
            match self.prepare(vs).await {
                Ok(listener) => prepared.push((*key, vs, listener)),
                Err(e) => {
                    for ((vip, _, _), _, _) in prepared {
                        self.release_if_unused(vip).await;
                    }
                    return Err(e);
                }
            }
        }

        // Phase 2: commit; nothing below fails.
        let removed: Vec<_> = self
            .listeners
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in removed {
            if let Some(old) = self.listeners.remove(&key) {
                old.task.abort();
                self.unrelay(&key);
                self.release_if_unused(old.vip).await;
                tracing::info!(se = %self.se_name, vs = %old.vs.name, "virtual service stopped");
            }
        }
        // Listeners changing role make way for their new selves.
        let mut released = Vec::new();
        for (key, vs, _) in &prepared {
            if let Some(old) = self.listeners.remove(key) {
                old.task.abort();
                self.unrelay(key);
                if !old.spec.secondary && vs.secondary {
                    released.push(old.vip);
                }
                tracing::info!(se = %self.se_name, vs = %old.vs.name, secondary = vs.secondary, "virtual service changes role");
            }
        }
        self.sync_pools(config, checkers);
        for (key, listener) in self.listeners.iter_mut() {
            let vs = wanted[key];
            if !same_servers(&listener.spec, vs) {
                listener.vs.set_servers(server_set(&self.pools, vs));
            }
            if listener.spec.http != vs.http {
                listener.vs.set_http(vs.http);
            }
            if listener.spec.scaleout != vs.scaleout {
                listener.vs.set_scaleout(vs.scaleout.clone());
            }
            if (listener.spec.protocol, listener.spec.l4) != (vs.protocol, vs.l4) {
                listener.vs.set_l4(vs.protocol, vs.l4);
            }
            if let Some(upstream) = upstream_tls.remove(key) {
                listener.vs.set_upstream_tls(upstream);
                listener.vs.set_upstream_h2(speaks_h2(vs));
            }
            if let Some(config) = tls.remove(key) {
                // A certificate reload: new connections get the new
                // settings, open ones keep theirs.
                listener.vs.set_tls(config);
            }
            listener.spec = vs.clone();
        }
        for (key, vs, listener) in prepared {
            let service = Arc::new(VirtualService::new(
                vs.name.clone(),
                self.se_name.clone(),
                server_set(&self.pools, vs),
            ));
            service.set_tls(tls.remove(&key).flatten());
            service.set_http(vs.http);
            service.set_l4(vs.protocol, vs.l4);
            service.set_upstream_tls(upstream_tls.remove(&key).flatten());
            service.set_upstream_h2(speaks_h2(vs));
            service.set_scaleout(vs.scaleout.clone());
            let for_task = service.clone();
            let gate = service.gate().clone();
            let (l2, vip) = (self.l2.clone(), vs.vip);
            let vip_port = SocketAddr::new(vs.vip, vs.port);
            let task = match listener {
                Bound::Tcp(listener) => rt::spawn(async move {
                    let result = rt::accept_loop_gated(listener, gate, move |stream, peer| {
                        // A VIP this host does not hold now (an HA standby,
                        // a simulated node after a takeover): dropped, as a
                        // kernel without the address would.
                        let serves = l2.serves(vip);
                        let vs = for_task.clone();
                        async move {
                            if serves {
                                serve_or_hand_off(vs, stream, peer, vip_port).await;
                            }
                        }
                    })
                    .await;
                    if let Err(e) = result {
                        tracing::error!(error = %e, "listener failed");
                    }
                }),
                Bound::Udp(socket) => rt::spawn(crate::l4::serve_udp(for_task, socket, vip_port)),
                Bound::Relay => {
                    lock(&self.relays).insert(vip_port, service.clone());
                    rt::spawn(async {})
                }
            };
            tracing::info!(se = %self.se_name, vs = %vs.name, vip = %vs.vip, port = vs.port, "virtual service serving");
            self.listeners.insert(
                key,
                Listener {
                    vs: service,
                    vip: vs.vip,
                    task,
                    spec: (*vs).clone(),
                },
            );
        }
        for vip in released {
            self.release_if_unused(vip).await;
        }
        self.applied = config.version;
        Ok(())
    }

    /// Make the pools' health side match `config`: states for new servers,
    /// checkers started, restarted (monitor changed) or stopped, outlier
    /// detection set, changed or stopped.
    fn sync_pools(
        &mut self,
        config: &SeConfig,
        mut checkers: BTreeMap<&str, Option<(CheckSpec, Checker)>>,
    ) {
        // Per pool: its outlier detection, and each server with whether to
        // check it.
        type Wanted = (Option<OutlierDetection>, BTreeMap<SocketAddr, bool>);
        let mut wanted: BTreeMap<&str, Wanted> = BTreeMap::new();
        for vs in &config.virtual_services {
            let (_, servers) = wanted
                .entry(pool_key(vs))
                .or_insert((vs.outlier_detection, BTreeMap::new()));
            for s in &vs.servers {
                *servers.entry(s.addr).or_default() |= s.admin_state != AdminState::Disabled;
            }
        }
        self.pools
            .retain(|name, _| wanted.contains_key(name.as_str()));
        for (name, (outlier_detection, servers)) in wanted {
            let pool = self.pools.entry(name.to_string()).or_default();
            let checker = checkers.remove(name).flatten();
            let monitor_changed = pool.checker.as_ref().map(|(spec, _)| spec)
                != checker.as_ref().map(|(spec, _)| spec);
            pool.checker = checker;
            pool.outliers = match (outlier_detection, pool.outliers.take()) {
                (None, _) => None,
                (Some(o), Some(existing)) => {
                    existing.set(o, servers.len());
                    existing.retain(|addr| servers.contains_key(addr));
                    Some(existing)
                }
                (Some(o), None) => Some(Arc::new(PoolOutliers::new(o, servers.len()))),
            };
            pool.servers.retain(|addr, _| servers.contains_key(addr));
            for (addr, checked) in servers {
                let tracked = pool.servers.entry(addr).or_insert_with(|| Tracked {
                    state: Arc::new(ServerState::new(name, addr, Some(self.events.clone()))),
                    checker: None,
                });
                tracked.state.set_outliers(pool.outliers.clone());
                match &pool.checker {
                    Some((_, c)) if checked => {
                        if monitor_changed || tracked.checker.is_none() {
                            tracked.start(c);
                        }
                    }
                    Some(_) => tracked.stop("disabled, so not monitored"),
                    None => tracked.stop("the pool has no health monitor"),
                }
            }
        }
    }

    async fn claim(&self, vs: &SeVirtualService) -> Result<(), ApplyError> {
        self.l2
            .claim_vip(vs.vip)
            .await
            .map_err(|source| ApplyError::Vip {
                vs: vs.name.clone(),
                source,
            })
    }

    async fn prepare(&self, vs: &SeVirtualService) -> Result<Bound, ApplyError> {
        if vs.secondary {
            return Ok(Bound::Relay);
        }
        self.claim(vs).await?;
        let addr = SocketAddr::new(self.l2.bind_addr(vs.vip), vs.port);
        let bound = if vs.protocol == VsProtocol::Udp {
            rt::UdpSocket::bind_nonlocal(addr).await.map(Bound::Udp)
        } else {
            rt::listen_nonlocal(addr).await.map(Bound::Tcp)
        };
        match bound {
            Ok(b) => Ok(b),
            Err(source) => {
                self.release_if_unused(vs.vip).await;
                Err(ApplyError::Bind {
                    vs: vs.name.clone(),
                    addr,
                    source,
                })
            }
        }
    }

    /// Stop taking hand-offs for `key` as a secondary, after
    /// [`RELAY_GRACE`]: the primary applies the same push at its own time
    /// and may hand a connection over until then. Unless the entry was
    /// replaced meanwhile (the virtual service came back).
    fn unrelay(&self, key: &ListenKey) {
        let addr = SocketAddr::new(key.0, key.1);
        let Some(service) = lock(&self.relays).get(&addr).cloned() else {
            return;
        };
        let relays = self.relays.clone();
        rt::spawn(async move {
            rt::sleep(RELAY_GRACE).await;
            let mut table = lock(&relays);
            if table.get(&addr).is_some_and(|s| Arc::ptr_eq(s, &service)) {
                table.remove(&addr);
            }
        });
    }

    /// Release `vip` unless a primary listener still uses it (a secondary
    /// never claimed it).
    async fn release_if_unused(&self, vip: IpAddr) {
        if !self
            .listeners
            .values()
            .any(|l| l.vip == vip && !l.spec.secondary)
        {
            if let Err(e) = self.l2.release_vip(vip).await {
                tracing::warn!(%vip, error = %e, "releasing VIP failed");
            }
        }
    }
}

/// Serve a connection accepted on the VIP, or hand it to the secondary
/// that ranks first for it (docs/placement.md, "Scale-out"); a secondary
/// that cannot be reached in time leaves it to this SE.
async fn serve_or_hand_off(
    vs: Arc<VirtualService>,
    stream: rt::TcpStream,
    peer: SocketAddr,
    vip: SocketAddr,
) {
    let peers = vs.scaleout();
    if let Some(secondary) = crate::scaleout::taker(vs.se_name(), &peers, peer) {
        match crate::scaleout::hand_off(stream, peer, vip, secondary).await {
            Ok(()) => return,
            Err(stream) => return proxy::serve_connection(vs, stream, peer).await,
        }
    }
    proxy::serve_connection(vs, stream, peer).await
}

/// The server set of `vs` over its pool's shared server states.
fn server_set(pools: &BTreeMap<String, PoolHealth>, vs: &SeVirtualService) -> ServerSet {
    let pool = pools.get(pool_key(vs));
    ServerSet::new(
        vs.algorithm,
        vs.hash_header.as_deref(),
        vs.servers.iter().filter_map(|s| {
            let tracked = pool?.servers.get(&s.addr)?;
            Some((*s, tracked.state.clone()))
        }),
    )
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.task.abort();
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::model::{Algorithm, Server};
    use fabric::platform::LoopbackL2;

    fn vs(name: &str, port: u16) -> SeVirtualService {
        SeVirtualService {
            name: name.into(),
            vip: "127.0.0.1".parse().unwrap(),
            port,
            pool: "web".into(),
            algorithm: Algorithm::RoundRobin,
            hash_header: None,
            servers: vec![Server::from("127.0.0.1:9".parse::<SocketAddr>().unwrap())],
            health_monitor: None,
            tls: None,
            tls_resumption: true,
            http: Default::default(),
            server_tls: None,
            server_http2: false,
            protocol: VsProtocol::Http,
            l4: Default::default(),
            outlier_detection: None,
            secondary: false,
            scaleout: Vec::new(),
        }
    }

    #[tokio::test]
    async fn apply_is_all_or_nothing_and_never_goes_backwards() {
        let taken = rt::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .await
            .unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let free = rt::TcpListener::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .await
            .unwrap();
        let free_port = free.local_addr().unwrap().port();
        drop(free);

        let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
        let v1 = SeConfig {
            version: 1,
            virtual_services: vec![vs("a", free_port)],
            ha: None,
            peers: Vec::new(),
        };
        plane.apply(&v1).await.unwrap();
        assert_eq!(
            plane.serving(),
            vec![("a".to_string(), v1.virtual_services[0].vip, free_port)]
        );

        // v2 adds a VS whose port is taken: refused, v1 keeps serving untouched.
        let v2 = SeConfig {
            version: 2,
            virtual_services: vec![vs("a", free_port), vs("b", taken_port)],
            ha: None,
            peers: Vec::new(),
        };
        let err = plane.apply(&v2).await.unwrap_err();
        assert!(
            matches!(err, ApplyError::Bind { ref vs, .. } if vs == "b"),
            "{err}"
        );
        assert_eq!(plane.applied_version(), 1);
        assert_eq!(plane.serving().len(), 1);
        assert!(
            rt::connect(SocketAddr::new(v1.virtual_services[0].vip, free_port))
                .await
                .is_ok()
        );

        let stale = SeConfig {
            version: 0,
            virtual_services: vec![],
            ha: None,
            peers: Vec::new(),
        };
        assert!(matches!(
            plane.apply(&stale).await,
            Err(ApplyError::Stale { .. })
        ));

        let dup = SeConfig {
            version: 3,
            virtual_services: vec![vs("a", free_port), vs("c", free_port)],
            ha: None,
            peers: Vec::new(),
        };
        assert!(matches!(
            plane.apply(&dup).await,
            Err(ApplyError::Duplicate(_))
        ));

        // v4 removes everything: the listener closes.
        plane
            .apply(&SeConfig {
                version: 4,
                virtual_services: vec![],
                ha: None,
                peers: Vec::new(),
            })
            .await
            .unwrap();
        assert!(plane.serving().is_empty());
        rt::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            rt::connect(SocketAddr::new(v1.virtual_services[0].vip, free_port))
                .await
                .is_err()
        );
        drop(taken);
    }
}
