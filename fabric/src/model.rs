//! The desired-state vocabulary: what an operator writes in a config file.
//!
//! Parsing is strict (unknown fields are errors) and every error names the
//! path of the offending field and why it is wrong. [`Config::parse`] either
//! returns a fully validated config or nothing: callers apply only what
//! parsed and validated, so a bad file never half-applies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The example fabric that `fabric up` runs when given no config file.
pub const EXAMPLE_CONFIG: &str = include_str!("example.toml");

/// A whole fabric's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the Controller listens.
    pub controller: ControllerConfig,
    /// Groups of Service Engines sharing HA mode and sizing.
    #[serde(default)]
    pub se_groups: Vec<SeGroup>,
    /// Server pools that virtual services balance over.
    #[serde(default)]
    pub pools: Vec<Pool>,
    /// Active health monitors that pools refer to by name.
    #[serde(default)]
    pub health_monitors: Vec<HealthMonitor>,
    /// Virtual services: a VIP and port served by Service Engines.
    #[serde(default)]
    pub virtual_services: Vec<VirtualService>,
    /// The authoritative DNS listener and its zones, if any.
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    /// GSLB sites: where members run and which clients each serves best.
    #[serde(default)]
    pub gslb_sites: Vec<GslbSite>,
    /// GSLB services: DNS names answered with the VIPs of their members.
    #[serde(default)]
    pub gslb_services: Vec<GslbService>,
    /// Small built-in HTTP servers, for examples and drills.
    #[serde(default)]
    pub demo_origins: Vec<DemoOrigin>,
    /// Tenants: owners of objects, invisible to each other (the `admin`
    /// tenant always exists and is not listed).
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    /// TLS certificates with their keys, which virtual services offer.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
}

/// A TLS certificate and its private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// Unique name, referred to by `virtual_services[].tls.certificates`.
    pub name: String,
    /// The certificate chain, PEM, leaf first.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// TLS termination of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsTls {
    /// Names of the certificates it offers. The client's SNI name picks the
    /// first one valid for it; without SNI, or when none is, the first.
    pub certificates: Vec<String>,
    /// Let clients resume sessions (TLS 1.3 tickets, TLS 1.2 tickets and
    /// session IDs). Off: every connection is a full handshake.
    #[serde(default = "yes")]
    pub session_resumption: bool,
}

fn yes() -> bool {
    true
}

/// HTTP settings of a virtual service: time and size limits, and the
/// headers the SE adds for servers. Every field has a default; changes reach
/// new client connections, open ones keep the settings they started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VsHttp {
    /// Time a client has to send a whole request head once it started one
    /// (slow clients get 408).
    pub header_timeout_ms: u64,
    /// Time a keep-alive client connection may idle between requests.
    pub client_idle_timeout_ms: u64,
    /// Time allowed to connect to a server.
    pub connect_timeout_ms: u64,
    /// Time a server has to start its response (then 504).
    pub response_timeout_ms: u64,
    /// Longest pause inside a request or response body.
    pub body_idle_timeout_ms: u64,
    /// Longest pause in an upgraded (WebSocket) connection.
    pub tunnel_idle_timeout_ms: u64,
    /// Largest request head (request line and headers); larger gets 431.
    pub max_header_bytes: u32,
    /// Add `X-Forwarded-For` and `X-Forwarded-Proto` (replacing a client's
    /// own `X-Forwarded-Proto`).
    pub x_forwarded_for: bool,
    /// Add `Forwarded: for=...;proto=...` (RFC 7239).
    pub forwarded: bool,
    /// Most client connections open at once; more wait in the kernel's
    /// backlog until one closes.
    pub max_connections: u32,
    /// Most requests in flight at once over all its client connections;
    /// more are answered 503 by the SE.
    pub max_requests_in_flight: u32,
    /// Most streams one HTTP/2 client connection may have open
    /// (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_h2_streams: u32,
    /// Largest request body; a larger one is answered 413 (0: no limit).
    pub max_body_bytes: u64,
}

impl Default for VsHttp {
    fn default() -> Self {
        Self {
            header_timeout_ms: 10_000,
            client_idle_timeout_ms: 60_000,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 30_000,
            body_idle_timeout_ms: 30_000,
            tunnel_idle_timeout_ms: 300_000,
            max_header_bytes: 64 * 1024,
            x_forwarded_for: true,
            forwarded: false,
            max_connections: 10_000,
            max_requests_in_flight: 10_000,
            max_h2_streams: 256,
            max_body_bytes: 0,
        }
    }
}

impl VsHttp {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    fn validate(&self, at: &str, err: &mut impl FnMut(String, String)) {
        let timeouts = [
            ("header_timeout_ms", self.header_timeout_ms),
            ("client_idle_timeout_ms", self.client_idle_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("body_idle_timeout_ms", self.body_idle_timeout_ms),
            ("tunnel_idle_timeout_ms", self.tunnel_idle_timeout_ms),
        ];
        for (name, ms) in timeouts {
            if !(1..=3_600_000).contains(&ms) {
                err(
                    format!("{at}.{name}"),
                    "must be between 1 and 3600000 (one hour)".into(),
                );
            }
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            err(
                format!("{at}.max_header_bytes"),
                "must be between 1024 and 1048576".into(),
            );
        }
        if self.max_body_bytes > 1 << 40 {
            err(
                format!("{at}.max_body_bytes"),
                "must be at most 1099511627776 (1 TiB; 0: no limit)".into(),
            );
        }
        for (name, n, most) in [
            ("max_connections", self.max_connections, 1_000_000),
            (
                "max_requests_in_flight",
                self.max_requests_in_flight,
                1_000_000,
            ),
            ("max_h2_streams", self.max_h2_streams, 10_000),
        ] {
            if !(1..=most).contains(&n) {
                err(
                    format!("{at}.{name}"),
                    format!("must be between 1 and {most}"),
                );
            }
        }
    }
}

/// What a virtual service carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VsProtocol {
    /// HTTP/1.x, and HTTP/2 over TLS: requests balanced one by one.
    #[default]
    Http,
    /// TCP streams relayed byte for byte (after TLS termination with `tls`):
    /// each connection goes to one server.
    Tcp,
    /// UDP datagrams: each client address is a flow kept on one server
    /// while it is active.
    Udp,
}

impl VsProtocol {
    fn is_http(&self) -> bool {
        *self == VsProtocol::Http
    }
}

/// Limits of a `tcp` or `udp` virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VsL4 {
    /// A TCP connection, or a UDP flow, that moves nothing this long is
    /// closed. Default: 300000 for TCP, 30000 for UDP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Time allowed to connect to a server (TCP).
    pub connect_timeout_ms: u64,
    /// Most UDP flows kept at once; datagrams of new clients beyond it are dropped.
    pub max_udp_flows: u32,
    /// Most TCP client connections open at once; more wait in the
    /// kernel's backlog until one closes.
    pub max_connections: u32,
}

impl Default for VsL4 {
    fn default() -> Self {
        Self {
            idle_timeout_ms: None,
            connect_timeout_ms: 2_000,
            max_udp_flows: 10_000,
            max_connections: 10_000,
        }
    }
}

impl VsL4 {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The idle timeout for `protocol`.
    pub fn idle_timeout(&self, protocol: VsProtocol) -> std::time::Duration {
        let default = if protocol == VsProtocol::Udp {
            30_000
        } else {
            300_000
        };
        std::time::Duration::from_millis(self.idle_timeout_ms.unwrap_or(default))
    }

    fn validate(&self, at: &str, err: &mut impl FnMut(String, String)) {
        for (name, ms) in [
            ("idle_timeout_ms", self.idle_timeout_ms.unwrap_or(1)),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if !(1..=86_400_000).contains(&ms) {
                err(
                    format!("{at}.{name}"),
                    "must be between 1 and 86400000 (a day)".into(),
                );
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            err(
                format!("{at}.max_connections"),
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.max_udp_flows) {
            err(
                format!("{at}.max_udp_flows"),
                "must be between 1 and 1000000".into(),
            );
        }
    }
}

/// A tenant. Its operators see and change only the objects it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Unique name: 1-64 lowercase letters, digits, `-`, `_` or `.`; not `admin`.
    pub name: String,
    /// Free text for operators.
    #[serde(default)]
    pub description: String,
}

/// Whether `name` is a usable tenant name.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Controller settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address for Service Engine sessions (`fabric::proto`).
    pub listen: SocketAddr,
    /// How often SEs send heartbeats; a session missing 3 is considered lost.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    1000
}

/// How a group's SEs back each other up (seed 002).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaMode {
    /// Spare capacity for M failures across N active SEs (the default).
    #[default]
    ElasticNPlusM,
    /// A virtual service placed on several SEs at once.
    ElasticActiveActive,
    /// Pairs of SEs; the standby takes the VIP with gratuitous ARP.
    LegacyActiveStandby,
}

/// A group of Service Engines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeGroup {
    /// Unique name.
    pub name: String,
    /// HA mode of the group.
    #[serde(default)]
    pub ha_mode: HaMode,
    /// Most virtual services one SE of this group carries.
    #[serde(default = "default_max_vs_per_se")]
    pub max_vs_per_se: u32,
    /// Heartbeat timing of a legacy active/standby pair (docs/ha.md).
    #[serde(default)]
    pub ha_profile: HaProfile,
    /// Legacy active/standby: whether the SE with the higher priority takes
    /// the VIPs back when it returns.
    #[serde(default)]
    pub ha_preempt: bool,
    /// Elastic modes: fill the SEs one at a time (seed 002's compactor)
    /// instead of spreading virtual services evenly (docs/placement.md).
    #[serde(default)]
    pub compact: bool,
    /// Elastic N+M: SEs kept free as spare capacity for that many failures
    /// (the M).
    #[serde(default = "default_buffer_ses")]
    pub buffer_ses: u32,
    /// SEs each virtual service is placed on; the first one holds the VIP.
    /// Left out: 1, or 2 in active/active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_scaleout_per_vs: Option<u32>,
    /// Memory of one SE, MB.
    #[serde(default = "default_se_memory_mb")]
    pub se_memory_mb: u32,
    /// Memory one virtual service takes on each SE that carries it, MB.
    #[serde(default = "default_vs_memory_mb")]
    pub vs_memory_mb: u32,
    /// An SE whose CPU use (as it reports it) is above this percentage
    /// takes no new virtual services.
    #[serde(default = "default_max_cpu_percent")]
    pub max_cpu_percent: u32,
    /// Elastic modes: the Controller creates SEs through its cloud
    /// connector when the group has fewer up than its placement wants (a
    /// failed SE, a spent buffer), and deletes failed ones once replaced.
    #[serde(default)]
    pub auto_heal: bool,
    /// Most SEs auto-healing brings the group to.
    #[serde(default = "default_max_ses")]
    pub max_ses: u32,
    /// Elastic modes: place a virtual service on one more SE when an SE
    /// carrying it reports more CPU than `max_cpu_percent`, and on one fewer
    /// when every SE carrying the group's reports less than
    /// `min_cpu_percent` (seed 002: 80% and 30%), at most once per
    /// `autoscale_cooldown_ms` per group; with `auto_heal`, SEs come and go
    /// with it.
    #[serde(default)]
    pub autoscale: bool,
    /// Autoscale in below this CPU percentage.
    #[serde(default = "default_min_cpu_percent")]
    pub min_cpu_percent: u32,
    /// Most SEs autoscale puts one virtual service on.
    #[serde(default = "default_max_scaleout_per_vs")]
    pub max_scaleout_per_vs: u32,
    /// Time between two autoscale steps of the group, ms.
    #[serde(default = "default_autoscale_cooldown_ms")]
    pub autoscale_cooldown_ms: u64,
    /// `reactive` (the default): autoscale follows the CPU the SEs report.
    /// `predictive`: also learns each virtual service's load over every
    /// `autoscale_period_ms` (a day), and adds an SE `autoscale_lead_ms`
    /// before a learned peak and keeps it through the peak
    /// (docs/placement.md, "Predictive autoscale").
    #[serde(default)]
    pub autoscale_mode: AutoscaleMode,
    /// The period of the load pattern predictive autoscale learns, ms.
    #[serde(default = "default_autoscale_period_ms")]
    pub autoscale_period_ms: u64,
    /// How far ahead predictive autoscale looks for a learned peak, ms (a
    /// new SE's boot time and more).
    #[serde(default = "default_autoscale_lead_ms")]
    pub autoscale_lead_ms: u64,
}

/// How autoscale decides (`se_groups[].autoscale_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoscaleMode {
    /// From the CPU reported now.
    #[default]
    Reactive,
    /// From the CPU reported now and the load learned for the time ahead.
    Predictive,
}

fn default_autoscale_period_ms() -> u64 {
    86_400_000
}

fn default_autoscale_lead_ms() -> u64 {
    600_000
}

impl SeGroup {
    /// SEs each virtual service of this group is placed on.
    pub fn scaleout(&self) -> u32 {
        match (self.min_scaleout_per_vs, self.ha_mode) {
            (Some(n), _) => n,
            (None, HaMode::ElasticActiveActive) => 2,
            (None, _) => 1,
        }
    }
}

fn default_buffer_ses() -> u32 {
    1
}

fn default_se_memory_mb() -> u32 {
    2048
}

fn default_vs_memory_mb() -> u32 {
    128
}

fn default_max_cpu_percent() -> u32 {
    80
}

fn default_max_ses() -> u32 {
    10
}

fn default_min_cpu_percent() -> u32 {
    30
}

fn default_max_scaleout_per_vs() -> u32 {
    4
}

fn default_autoscale_cooldown_ms() -> u64 {
    60_000
}

/// Most SEs one group may have.
pub const MAX_SES_PER_GROUP: u32 = 256;

/// Heartbeat timing of a legacy active/standby pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HaProfile {
    /// A beat every 3 s, dead after 3 missed: failover in about 9 s (seed 002).
    #[default]
    Default,
    /// A beat every 100 ms, dead after 3 missed: failover in under a second.
    Fast,
}

impl HaProfile {
    /// The timing it names.
    pub fn timing(self) -> crate::ha::Profile {
        match self {
            HaProfile::Default => crate::ha::Profile::DEFAULT,
            HaProfile::Fast => crate::ha::Profile::FAST,
        }
    }
}

/// Most SEs one virtual service is placed on.
pub const MAX_SCALEOUT_PER_VS: u32 = 16;
/// Most buffer SEs of an N+M group.
pub const MAX_BUFFER_SES: u32 = 16;

fn default_max_vs_per_se() -> u32 {
    10
}

/// Load-balancing algorithm of a pool. Every algorithm picks only among
/// eligible servers: enabled (not disabled or draining) and up (health).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each server in turn; weights are ignored.
    #[default]
    RoundRobin,
    /// Each server in turn as often as its weight says, interleaved the way
    /// nginx's smooth weighted round robin does (weights 5,1,1: `a a b a c a a`).
    WeightedRoundRobin,
    /// The server with the fewest requests in flight per unit of weight.
    LeastConnections,
    /// Two servers drawn at random; the one with fewer requests in flight per
    /// unit of weight.
    PowerOfTwoChoices,
    /// A hash ring with virtual nodes over the client IP, or over the value of
    /// the pool's `hash_header`: the same key goes to the same server while it
    /// is eligible, and removing one of N servers moves only its keys.
    ConsistentHash,
}

/// Most servers one pool may list.
pub const MAX_POOL_SERVERS: usize = 1024;
/// Largest server weight.
pub const MAX_SERVER_WEIGHT: u32 = 100;

/// What an operator wants a server to do, apart from its health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes traffic while up (the default).
    #[default]
    Enabled,
    /// Takes no new requests; requests in flight finish; not health-monitored.
    Disabled,
    /// Takes no new requests; requests in flight finish; still monitored, so
    /// its health is known when it is enabled again.
    Draining,
}

/// One server of a pool. Written either as `"ip:port"` or as a table
/// `{ addr = "ip:port", weight = 2, admin_state = "draining" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Share of traffic relative to the pool's other servers, 1 to
    /// [`MAX_SERVER_WEIGHT`] (default 1).
    pub weight: u32,
    /// Enabled, disabled or draining (default enabled).
    pub admin_state: AdminState,
}

impl From<SocketAddr> for Server {
    fn from(addr: SocketAddr) -> Self {
        Server {
            addr,
            weight: 1,
            admin_state: AdminState::Enabled,
        }
    }
}

fn default_weight() -> u32 {
    1
}

/// The table form of [`Server`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    addr: SocketAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    admin_state: AdminState,
}

impl Serialize for Server {
    /// A plain `"ip:port"` when weight and state are the defaults, so configs
    /// (and SE frames) that use neither look exactly as before.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.weight == 1 && self.admin_state == AdminState::Enabled {
            self.addr.serialize(s)
        } else {
            ServerTable {
                addr: self.addr,
                weight: self.weight,
                admin_state: self.admin_state,
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Server {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Server;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a server address `ip:port` or a table with `addr`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Server, E> {
                v.parse::<SocketAddr>()
                    .map(Server::from)
                    .map_err(|_| E::custom(format!("`{v}` is not an `ip:port` address")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Server, A::Error> {
                let t =
                    ServerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Server {
                    addr: t.addr,
                    weight: t.weight,
                    admin_state: t.admin_state,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A pool of servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Unique name.
    pub name: String,
    /// How requests are spread over `servers`.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// With `consistent_hash`: hash on this request header instead of the
    /// client IP (its first value up to the first comma, trimmed; requests
    /// without it fall back to the client IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Name of the health monitor that checks every server (none: servers
    /// count as up, and passive failures are not counted either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_monitor: Option<String>,
    /// Servers, at least one and at most [`MAX_POOL_SERVERS`].
    pub servers: Vec<Server>,
    /// Speak TLS to the servers (absent: plain TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PoolTls>,
    /// Passive monitoring: take servers that keep failing out of the
    /// rotation for a while (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Speak HTTP/2 to the servers (HTTP virtual services): over `tls`
    /// with ALPN `h2`, else in the clear with prior knowledge (h2c, RFC 9113
    /// §3.3); requests of all clients are multiplexed on one connection per
    /// server. Default false: HTTP/1.1.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
}

/// Outlier detection of a pool, with Envoy's semantics: a server whose
/// responses fail `consecutive_errors` (or `consecutive_5xx`) times in a row
/// is ejected, taking no new requests for `ejection_ms` times the number of
/// times it was ejected (at most `max_ejection_ms`), and never more than
/// `max_ejected_percent` of the pool's servers at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Gateway failures in a row that eject a server: refused, reset or
    /// timed-out requests, bad responses, and 502, 503 and 504 responses
    /// (Envoy's `consecutive_gateway_failure`); 0: off. Default 5.
    pub consecutive_errors: u32,
    /// 5xx responses (and the failures above) in a row that eject a server
    /// (Envoy's `consecutive_5xx`); 0: off (the default).
    pub consecutive_5xx: u32,
    /// The first ejection's length; the n-th in a row lasts n times this.
    /// Default 30000.
    pub ejection_ms: u64,
    /// The longest an ejection lasts. Default 300000.
    pub max_ejection_ms: u64,
    /// Most servers of the pool ejected at once, in percent of its servers
    /// (rounded down, so 50 in a pool of 3 is 1). Default 50.
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_errors: 5,
            consecutive_5xx: 0,
            ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejected_percent: 50,
        }
    }
}

/// Largest `consecutive_errors` or `consecutive_5xx`.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 1000;
/// Longest ejection accepted (one day).
pub const MAX_EJECTION_MS: u64 = 86_400_000;

impl OutlierDetection {
    /// The first ejection's length.
    pub fn ejection(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ejection_ms)
    }

    /// The longest ejection.
    pub fn max_ejection(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_ejection_ms)
    }

    /// Check the values; errors name the field below `at`.
    pub fn validate(&self, at: &str, err: &mut impl FnMut(String, String)) {
        for (field, value) in [
            ("consecutive_errors", self.consecutive_errors),
            ("consecutive_5xx", self.consecutive_5xx),
        ] {
            if value > MAX_CONSECUTIVE_ERRORS {
                err(
                    format!("{at}.{field}"),
                    format!("must be between 0 (off) and {MAX_CONSECUTIVE_ERRORS}"),
                );
            }
        }
        if self.consecutive_errors == 0 && self.consecutive_5xx == 0 {
            err(
                format!("{at}.consecutive_errors"),
                "consecutive_errors and consecutive_5xx are both 0: nothing would eject a server"
                    .into(),
            );
        }
        if !(1..=MAX_EJECTION_MS).contains(&self.ejection_ms) {
            err(
                format!("{at}.ejection_ms"),
                format!("must be between 1 and {MAX_EJECTION_MS}"),
            );
        }
        if self.max_ejection_ms < self.ejection_ms || self.max_ejection_ms > MAX_EJECTION_MS {
            err(
                format!("{at}.max_ejection_ms"),
                format!(
                    "must be between ejection_ms ({}) and {MAX_EJECTION_MS}",
                    self.ejection_ms
                ),
            );
        }
        if !(1..=100).contains(&self.max_ejected_percent) {
            err(
                format!("{at}.max_ejected_percent"),
                "must be between 1 and 100".into(),
            );
        }
    }
}

/// TLS from the SE to a pool's servers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTls {
    /// The name to send as SNI and to verify the certificate against
    /// (absent: the server's IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Verify the servers' certificates against `ca_pem` (default true).
    /// Off: any certificate is accepted, which only encrypts.
    #[serde(default = "yes")]
    pub verify: bool,
    /// The CA certificates (PEM, one or more) that servers' certificates
    /// must chain to; required when `verify` is on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_pem: String,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorKind {
    /// A TCP connection opens.
    Tcp,
    /// An HTTP/1.1 GET answers an expected status (and body substring).
    Http,
    /// The same as `http`, over TLS: the pool's `tls` settings, or the
    /// monitor's own `tls` for pools without them.
    Https,
    /// A UDP datagram gets an answer (containing an expected text).
    Udp,
    /// A DNS query over UDP gets a NOERROR answer.
    Dns,
}

/// What a `udp` health check sends and expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpCheck {
    /// The datagram to send (1-512 bytes of text).
    pub send: String,
    /// If set, the answer must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// What a `dns` health check asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsCheck {
    /// The name to query, e.g. `health.example.com`.
    pub name: String,
    /// The record type: `A` (default), `AAAA`, `NS`, `SOA` or `TXT`.
    #[serde(default = "default_dns_check_type")]
    pub rtype: String,
}

fn default_dns_check_type() -> String {
    "A".into()
}

impl DnsCheck {
    /// The query type's number, if it is one we ask for.
    pub fn qtype(&self) -> Option<u16> {
        match self.rtype.to_ascii_uppercase().as_str() {
            "A" => Some(1),
            "NS" => Some(2),
            "SOA" => Some(6),
            "TXT" => Some(16),
            "AAAA" => Some(28),
            _ => None,
        }
    }

    /// Whether `name` is a DNS name we can ask for.
    pub fn valid_name(&self) -> bool {
        let name = self.name.trim_end_matches('.');
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    }
}

/// An active health monitor, referenced by pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthMonitor {
    /// Unique name.
    pub name: String,
    /// `tcp`, `http`, `https`, `udp` or `dns`.
    #[serde(rename = "type")]
    pub kind: MonitorKind,
    /// Time between the starts of two checks of one server (default 10000).
    #[serde(default = "default_monitor_interval_ms")]
    pub interval_ms: u64,
    /// Time one check may take before it counts as failed (default 4000;
    /// at most `interval_ms`).
    #[serde(default = "default_monitor_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down server up (default 2).
    #[serde(default = "default_rise_fall")]
    pub rise: u32,
    /// Consecutive failures (active checks, or refused/reset/timed-out
    /// requests) that take an up server down (default 2).
    #[serde(default = "default_rise_fall")]
    pub fall: u32,
    /// What an `http` or `https` check sends and expects (defaults if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// TLS of an `https` check for pools that have no `tls` of their own
    /// (a pool's `tls` wins: checks then speak TLS as the traffic does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PoolTls>,
    /// What a `udp` check sends and expects (required with `udp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpCheck>,
    /// What a `dns` check asks (required with `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCheck>,
}

fn default_monitor_interval_ms() -> u64 {
    10_000
}

fn default_monitor_timeout_ms() -> u64 {
    4_000
}

fn default_rise_fall() -> u32 {
    2
}

/// The request and expectations of an `http` health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// Path (and query) to GET (default `/`).
    #[serde(default = "default_check_path")]
    pub path: String,
    /// Status codes that count as success (default `[200]`).
    #[serde(default = "default_expected_status")]
    pub expected_status: Vec<u16>,
    /// If set, the first 64 KiB of the body must contain this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_match: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        Self {
            path: default_check_path(),
            expected_status: default_expected_status(),
            body_match: None,
        }
    }
}

fn default_check_path() -> String {
    "/".to_string()
}

fn default_expected_status() -> Vec<u16> {
    vec![200]
}

/// Shortest health-check interval accepted.
pub const MIN_MONITOR_INTERVAL_MS: u64 = 10;
/// Longest health-check interval accepted (one hour).
pub const MAX_MONITOR_INTERVAL_MS: u64 = 3_600_000;
/// Largest `rise` or `fall`.
pub const MAX_RISE_FALL: u32 = 100;
/// Longest HTTP check path, and longest body match.
pub const MAX_CHECK_TEXT_BYTES: usize = 1024;
/// Most expected status codes of one HTTP check.
pub const MAX_EXPECTED_STATUS: usize = 32;

/// A virtual service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualService {
    /// Unique name.
    pub name: String,
    /// SE group that carries it.
    #[serde(default = "default_group")]
    pub se_group: String,
    /// The virtual IP clients connect to.
    pub vip: IpAddr,
    /// The port on the VIP.
    pub port: u16,
    /// Name of the pool it balances over.
    pub pool: String,
    /// TLS termination: clients speak TLS (1.2 or 1.3) and then HTTP/1.1 or
    /// HTTP/2 (ALPN); servers are spoken to in HTTP/1.1 as without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<VsTls>,
    /// HTTP limits and added headers (defaults when left out).
    #[serde(default, skip_serializing_if = "VsHttp::is_default")]
    pub http: VsHttp,
    /// `http` (default), `tcp` or `udp`.
    #[serde(default, skip_serializing_if = "VsProtocol::is_http")]
    pub protocol: VsProtocol,
    /// Limits of `tcp` and `udp` virtual services.
    #[serde(default, skip_serializing_if = "VsL4::is_default")]
    pub l4: VsL4,
}

fn default_group() -> String {
    "default".to_string()
}

/// The authoritative DNS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP address to answer on.
    pub listen: SocketAddr,
    /// Zones this server is authoritative for; other names get REFUSED.
    pub zones: Vec<ZoneConfig>,
    /// Where the DNS server's read-only HTTP API listens (explain, member
    /// health, metrics; docs/gslb.md). It has no authentication: give it a
    /// loopback or management address. None: no API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_listen: Option<SocketAddr>,
    /// UDP sockets on `listen`, each read by its own task (1 to 64). Above 1
    /// they share the address with `SO_REUSEPORT`, and the kernel spreads
    /// clients over them, so on a multi-thread runtime (`--threads`) they
    /// answer in parallel. The simulation always uses one socket.
    #[serde(
        default = "default_udp_workers",
        skip_serializing_if = "is_default_udp_workers"
    )]
    pub udp_workers: usize,
}

/// Most UDP sockets `dns.udp_workers` opens.
pub const MAX_DNS_UDP_WORKERS: usize = 64;

fn default_udp_workers() -> usize {
    1
}

fn is_default_udp_workers(n: &usize) -> bool {
    *n == default_udp_workers()
}

/// One authoritative zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The apex, e.g. `fabric.test`.
    pub name: String,
    /// TTL of the SOA and NS records, and the negative-caching TTL; also
    /// the TTL of `records` entries that give none.
    #[serde(default = "default_zone_ttl")]
    pub ttl_secs: u32,
    /// Static records (A, AAAA, CNAME, TXT, SRV, MX).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<StaticRecord>,
    /// Static records in RFC 1035 master-file format, origin the zone name
    /// (docs/dns.md). A SOA here replaces the generated one, NS records the
    /// generated `ns1` NS. This is what a replicated config carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_text: Option<String>,
    /// A master file, relative to the config file's directory: read by
    /// [`Config::load`] into `zone_text`, so an unreadable file fails the load
    /// and nothing downstream ever reads a path. Not allowed in a config given
    /// as text ([`Config::parse`], the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone_file: Option<std::path::PathBuf>,
}

/// One static DNS record in the config. Names follow the zone-file rule:
/// `@` is the apex, a name ending in `.` is absolute, others are relative to
/// the zone (`www` in `example.com` is `www.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRecord {
    /// Owner name.
    pub name: String,
    /// A, AAAA, CNAME, TXT, SRV or MX (any letter case).
    #[serde(rename = "type")]
    pub rtype: String,
    /// The data: an address, a name, `PREF EXCHANGE` (MX),
    /// `PRIORITY WEIGHT PORT TARGET` (SRV), or a text (TXT: one string, or
    /// zone-file `"..." "..."` strings when it starts with a quote).
    pub value: String,
    /// TTL (default: the zone's `ttl_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u32>,
}

fn default_zone_ttl() -> u32 {
    300
}

/// A GSLB site: a place where members run (a data centre, a region), and
/// the client networks it is closest to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GslbSite {
    /// Unique name, referred to by `gslb_services[].members[].site`.
    pub name: String,
    /// Client networks this site serves best (the `topology` policy): a
    /// client (or its EDNS Client Subnet) in one of them gets this site's
    /// members while one is healthy. The longest match over all sites wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_subnets: Vec<ipnet::IpNet>,
    /// Sites to try, in order, when every member here is down (`topology`);
    /// after them, any healthy member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
}

/// A GSLB service: a DNS name answered with the addresses of its healthy
/// members, chosen by a policy (docs/gslb.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GslbService {
    /// The name, inside one of the DNS zones.
    pub fqdn: String,
    /// Its members: virtual services of this fabric (by name, or
    /// `{ vs = "name", ... }`) or outside addresses (`{ address = "..." }`).
    pub members: Vec<GslbMember>,
    /// How members are chosen for an answer (default `round_robin`).
    #[serde(default)]
    pub policy: GslbPolicy,
    /// TTL of the answers while every member is up and stable.
    #[serde(default = "default_gslb_ttl")]
    pub ttl_secs: u32,
    /// TTL while a member is down or changed state less than
    /// `health.settle_secs` ago, and of all-down answers (default 5, at
    /// most `ttl_secs`): resolvers come back sooner while things move.
    #[serde(default = "default_gslb_unhealthy_ttl")]
    pub unhealthy_ttl_secs: u32,
    /// Most addresses in one answer; 0 = the policy's default (one for
    /// `weighted` and `consistent_hash`, every chosen member otherwise).
    #[serde(default)]
    pub max_answers: u32,
    /// What to answer while no member is healthy.
    #[serde(default)]
    pub when_all_down: GslbAllDown,
    /// The addresses of `when_all_down = "fallback"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_addresses: Vec<IpAddr>,
    /// How member health is decided.
    #[serde(default)]
    pub health: GslbHealth,
}

impl GslbService {
    /// A service at `fqdn` over `members` with every other field at its
    /// default (round robin, `ttl_secs`).
    pub fn new(fqdn: &str, members: Vec<GslbMember>, ttl_secs: u32) -> Self {
        GslbService {
            fqdn: fqdn.into(),
            members,
            policy: GslbPolicy::default(),
            ttl_secs,
            unhealthy_ttl_secs: default_gslb_unhealthy_ttl().min(ttl_secs),
            max_answers: 0,
            when_all_down: GslbAllDown::default(),
            fallback_addresses: Vec::new(),
            health: GslbHealth::default(),
        }
    }
}

impl From<&str> for GslbMember {
    fn from(vs: &str) -> Self {
        GslbMember::vs(vs)
    }
}

/// One member of a GSLB service. In a config, a plain string is a virtual
/// service's name with the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GslbMember {
    /// A virtual service of this fabric: its VIP answers, its SEs report
    /// its health.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs: Option<String>,
    /// An address outside the fabric (a third-party site), probed only by
    /// `health.monitor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Port the DNS-side monitor probes (default: the VS's port; 80 for an
    /// address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The `gslb_sites` entry it runs in (needed by `topology`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Share of answers (`weighted`, `priority`, `consistent_hash`), 1..=1000.
    #[serde(default = "default_member_weight")]
    pub weight: u32,
    /// `priority`: the lowest value with a healthy member wins (default 0).
    #[serde(default)]
    pub priority: u32,
}

fn default_member_weight() -> u32 {
    1
}

impl GslbMember {
    /// A member for the virtual service `vs`, with the defaults.
    pub fn vs(vs: &str) -> Self {
        GslbMember {
            vs: Some(vs.to_string()),
            address: None,
            port: None,
            site: None,
            weight: default_member_weight(),
            priority: 0,
        }
    }

    /// How explain and events name it: the VS name or the address.
    pub fn label(&self) -> String {
        match (&self.vs, self.address) {
            (Some(vs), _) => vs.clone(),
            (None, Some(addr)) => addr.to_string(),
            (None, None) => "?".into(),
        }
    }
}

/// The table form of [`GslbMember`], strict about its fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GslbMemberTable {
    #[serde(default)]
    vs: Option<String>,
    #[serde(default)]
    address: Option<IpAddr>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    site: Option<String>,
    #[serde(default = "default_member_weight")]
    weight: u32,
    #[serde(default)]
    priority: u32,
}

impl<'de> Deserialize<'de> for GslbMember {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = GslbMember;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a virtual service name or a table { vs | address, site, weight, priority, port }")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<GslbMember, E> {
                Ok(GslbMember::vs(name))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<GslbMember, A::Error> {
                let t = GslbMemberTable::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(GslbMember {
                    vs: t.vs,
                    address: t.address,
                    port: t.port,
                    site: t.site,
                    weight: t.weight,
                    priority: t.priority,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How a GSLB service picks members for an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GslbPolicy {
    /// Healthy members in turn, each answer starting one further.
    #[default]
    RoundRobin,
    /// Healthy members in proportion to their weights.
    Weighted,
    /// The healthy members of the lowest `priority`, weighted among them.
    Priority,
    /// The members of the site whose `client_subnets` hold the client
    /// (or its EDNS Client Subnet), then its `fallback` sites, then any.
    Topology,
    /// The same client network gets the same member while it is healthy;
    /// a member going down moves only its own clients (rendezvous hashing
    /// on the client's /24 or /56, weighted).
    ConsistentHash,
}

/// The answer while no member of a GSLB service is healthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GslbAllDown {
    /// The members that were healthy last (all of them if none ever was):
    /// a monitoring fault must not take the name off the internet.
    #[default]
    LastKnownGood,
    /// `fallback_addresses` (a sorry server, another provider).
    Fallback,
    /// SERVFAIL: resolvers try another server or report the failure.
    Servfail,
    /// NOERROR with no address (NODATA), cached for the SOA's negative TTL.
    Nodata,
}

/// How the health of a GSLB service's members is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GslbHealth {
    /// A `health_monitors` entry the DNS servers themselves run against
    /// every member, from every site (in addition to the SEs' reports for
    /// VS members).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
    /// Sources (DNS servers' probes, SEs) that must see a member up for it
    /// to be up; 0 = a majority of the sources that reported recently.
    pub quorum: u32,
    /// A source's report older than this is not counted (a site cut off);
    /// with no recent source at all, the last verdict stays.
    pub stale_secs: u32,
    /// A member that changed state less than this long ago is "settling":
    /// its service answers with `unhealthy_ttl_secs`.
    pub settle_secs: u32,
}

impl Default for GslbHealth {
    fn default() -> Self {
        GslbHealth {
            monitor: None,
            quorum: 0,
            stale_secs: 60,
            settle_secs: 60,
        }
    }
}

/// Most members of one GSLB service (answers are assembled on the stack).
pub const GSLB_MEMBERS_MAX: usize = 256;

fn default_gslb_ttl() -> u32 {
    30
}

fn default_gslb_unhealthy_ttl() -> u32 {
    5
}

/// A built-in HTTP origin server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoOrigin {
    /// Name it puts in its responses.
    pub name: String,
    /// Where it listens.
    pub listen: SocketAddr,
}

/// One thing wrong with a config: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the field, e.g. `virtual_services[0].port`; empty for the file as a whole.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Everything wrong with a config (at least one entry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config, nothing applied:")?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Parse and validate TOML text. Unknown fields, wrong types and invalid
    /// values are errors naming the field's path.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let config = Config::from_toml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a config file; `dns.zones[].zone_file` paths
    /// (relative to the file's directory) are read into `zone_text` here, so
    /// the config that comes out refers to no file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let one = |path: String, reason: String| ConfigErrors(vec![ConfigError { path, reason }]);
        let text = std::fs::read_to_string(path)
            .map_err(|e| one(String::new(), format!("reading {}: {e}", path.display())))?;
        let mut config = Config::from_toml(&text)?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let mut errors = Vec::new();
        if let Some(dns) = &mut config.dns {
            for (i, zone) in dns.zones.iter_mut().enumerate() {
                let Some(file) = zone.zone_file.take() else {
                    continue;
                };
                let at = format!("dns.zones[{i}].zone_file");
                if zone.zone_text.is_some() {
                    errors.push(ConfigError {
                        path: at,
                        reason: "give zone_file or zone_text, not both".into(),
                    });
                    continue;
                }
                let full = base.join(&file);
                match std::fs::read_to_string(&full) {
                    Ok(text) => zone.zone_text = Some(text),
                    Err(e) => errors.push(ConfigError {
                        path: at,
                        reason: format!("cannot read `{}`: {e}", full.display()),
                    }),
                }
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML into a config, without the checks types cannot express.
    fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let one = |path: String, reason: String| ConfigErrors(vec![ConfigError { path, reason }]);
        let value: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            one(String::new(), format!("not valid TOML: {}", e.message()))
        })?;
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                one(path, e.into_inner().message().to_string())
            })?;
        Ok(config)
    }

    /// The embedded example config, parsed.
    pub fn example() -> Config {
        Config::parse(EXAMPLE_CONFIG).expect("the embedded example config is valid")
    }

    /// Check every rule that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut err = |path: String, reason: String| errors.push(ConfigError { path, reason });

        if self.controller.listen.port() == 0 {
            err(
                "controller.listen".into(),
                "port 0 is not a usable port".into(),
            );
        }
        if self.controller.heartbeat_ms == 0 || self.controller.heartbeat_ms > 60_000 {
            err(
                "controller.heartbeat_ms".into(),
                "must be between 1 and 60000".into(),
            );
        }

        let groups = unique_names(
            self.se_groups.iter().map(|g| &g.name),
            "se_groups",
            &mut err,
        );
        for (i, g) in self.se_groups.iter().enumerate() {
            if g.max_vs_per_se == 0 {
                err(
                    format!("se_groups[{i}].max_vs_per_se"),
                    "must be at least 1".into(),
                );
            }
            if let Some(n) = g.min_scaleout_per_vs {
                if n == 0 || n > MAX_SCALEOUT_PER_VS {
                    err(
                        format!("se_groups[{i}].min_scaleout_per_vs"),
                        format!("must be between 1 and {MAX_SCALEOUT_PER_VS}"),
                    );
                } else if g.ha_mode == HaMode::LegacyActiveStandby {
                    err(
                        format!("se_groups[{i}].min_scaleout_per_vs"),
                        "a legacy active/standby pair carries every virtual service on both SEs"
                            .into(),
                    );
                } else if g.ha_mode == HaMode::ElasticActiveActive && n < 2 {
                    err(
                        format!("se_groups[{i}].min_scaleout_per_vs"),
                        "active/active places each virtual service on at least 2 SEs".into(),
                    );
                }
            }
            if g.buffer_ses > MAX_BUFFER_SES {
                err(
                    format!("se_groups[{i}].buffer_ses"),
                    format!("must be at most {MAX_BUFFER_SES}"),
                );
            }
            if g.vs_memory_mb == 0 || g.vs_memory_mb > g.se_memory_mb {
                err(
                    format!("se_groups[{i}].vs_memory_mb"),
                    format!("must be between 1 and se_memory_mb ({} MB)", g.se_memory_mb),
                );
            }
            if g.max_ses == 0 || g.max_ses > MAX_SES_PER_GROUP {
                err(
                    format!("se_groups[{i}].max_ses"),
                    format!("must be between 1 and {MAX_SES_PER_GROUP}"),
                );
            }
            if g.min_cpu_percent >= g.max_cpu_percent {
                err(
                    format!("se_groups[{i}].min_cpu_percent"),
                    format!("must be below max_cpu_percent ({})", g.max_cpu_percent),
                );
            }
            if g.max_scaleout_per_vs < g.scaleout() || g.max_scaleout_per_vs > MAX_SCALEOUT_PER_VS {
                err(
                    format!("se_groups[{i}].max_scaleout_per_vs"),
                    format!(
                        "must be between min_scaleout_per_vs ({}) and {MAX_SCALEOUT_PER_VS}",
                        g.scaleout()
                    ),
                );
            }
            if g.autoscale && g.ha_mode == HaMode::LegacyActiveStandby {
                err(
                    format!("se_groups[{i}].autoscale"),
                    "a legacy active/standby pair does not scale".into(),
                );
            }
            if g.autoscale_mode == AutoscaleMode::Predictive {
                if !g.autoscale {
                    err(
                        format!("se_groups[{i}].autoscale_mode"),
                        "predictive needs autoscale = true".into(),
                    );
                }
                let bucket_ms = crate::forecast::BUCKETS as u64;
                if g.autoscale_period_ms < bucket_ms * 100
                    || g.autoscale_period_ms > 30 * 86_400_000
                {
                    err(
                        format!("se_groups[{i}].autoscale_period_ms"),
                        format!("must be between {} ms and 30 days", bucket_ms * 100),
                    );
                } else if g.autoscale_lead_ms == 0
                    || g.autoscale_lead_ms >= g.autoscale_period_ms / 2
                {
                    err(
                        format!("se_groups[{i}].autoscale_lead_ms"),
                        "must be above 0 and under half of autoscale_period_ms".into(),
                    );
                }
            }
            if g.auto_heal && g.ha_mode == HaMode::LegacyActiveStandby {
                err(
                    format!("se_groups[{i}].auto_heal"),
                    "a legacy active/standby pair is two SEs an operator sets up".into(),
                );
            }
            if g.max_cpu_percent == 0 || g.max_cpu_percent > 100 {
                err(
                    format!("se_groups[{i}].max_cpu_percent"),
                    "must be between 1 and 100".into(),
                );
            }
        }

        unique_names(self.tenants.iter().map(|t| &t.name), "tenants", &mut err);
        for (i, t) in self.tenants.iter().enumerate() {
            if t.name == "admin" || !valid_tenant_name(&t.name) {
                err(
                    format!("tenants[{i}].name"),
                    "must be 1-64 lowercase letters, digits, '-', '_' or '.', and not `admin`"
                        .into(),
                );
            }
        }

        let monitors = self.validate_health_monitors(&mut err);
        let pools = unique_names(self.pools.iter().map(|p| &p.name), "pools", &mut err);
        for (i, p) in self.pools.iter().enumerate() {
            validate_pool(i, p, &monitors, &mut err);
            if let Some(tls) = &p.tls {
                if let Err(e) = crate::pki::upstream_client_config(tls, &[]) {
                    err(format!("pools[{i}].tls"), e.to_string());
                }
            }
            let monitor = p
                .health_monitor
                .as_ref()
                .and_then(|m| self.health_monitor(m));
            if let Some(m) = monitor {
                if m.kind == MonitorKind::Https && p.tls.is_none() && m.tls.is_none() {
                    err(
                        format!("pools[{i}].health_monitor"),
                        format!(
                            "`{}` is an https monitor: the pool or the monitor needs a `tls` table",
                            m.name
                        ),
                    );
                }
            }
            if let Some(o) = &p.outlier_detection {
                o.validate(&format!("pools[{i}].outlier_detection"), &mut err);
            }
        }

        let certs = unique_names(
            self.certificates.iter().map(|c| &c.name),
            "certificates",
            &mut err,
        );
        for (i, c) in self.certificates.iter().enumerate() {
            if let Err(e) = crate::pki::certified_key(&c.cert_pem, &c.key_pem) {
                err(format!("certificates[{i}]"), e.to_string());
            }
        }
        let vs_names = unique_names(
            self.virtual_services.iter().map(|v| &v.name),
            "virtual_services",
            &mut err,
        );
        for (i, v) in self.virtual_services.iter().enumerate() {
            let Some(tls) = &v.tls else { continue };
            if tls.certificates.is_empty() {
                err(
                    format!("virtual_services[{i}].tls.certificates"),
                    "needs at least one certificate".into(),
                );
            }
            for (j, c) in tls.certificates.iter().enumerate() {
                if !certs.contains(c.as_str()) {
                    err(
                        format!("virtual_services[{i}].tls.certificates[{j}]"),
                        format!("no certificate named `{c}`"),
                    );
                }
            }
        }
        let mut vips: BTreeMap<(IpAddr, u16, bool), &str> = BTreeMap::new();
        for (i, v) in self.virtual_services.iter().enumerate() {
            v.http
                .validate(&format!("virtual_services[{i}].http"), &mut err);
            v.l4.validate(&format!("virtual_services[{i}].l4"), &mut err);
            if v.protocol == VsProtocol::Udp && v.tls.is_some() {
                err(
                    format!("virtual_services[{i}].tls"),
                    "TLS is for `http` and `tcp` virtual services, not `udp`".into(),
                );
            }
            if v.port == 0 {
                err(
                    format!("virtual_services[{i}].port"),
                    "port 0 is not a usable port".into(),
                );
            }
            if v.vip.is_unspecified() || v.vip.is_multicast() {
                err(
                    format!("virtual_services[{i}].vip"),
                    format!("{} cannot be a VIP", v.vip),
                );
            }
            if !pools.contains(v.pool.as_str()) {
                err(
                    format!("virtual_services[{i}].pool"),
                    format!("no pool named `{}`", v.pool),
                );
            }
            if !groups.contains(v.se_group.as_str()) {
                err(
                    format!("virtual_services[{i}].se_group"),
                    format!("no SE group named `{}`", v.se_group),
                );
            }
            // UDP and TCP may share a port (DNS does); two TCP-based ones may not.
            let udp = v.protocol == VsProtocol::Udp;
            if let Some(other) = vips.insert((v.vip, v.port, udp), &v.name) {
                err(
                    format!("virtual_services[{i}].vip"),
                    format!(
                        "duplicate VIP {}:{}/{}, already used by virtual service `{other}`",
                        v.vip,
                        v.port,
                        if udp { "udp" } else { "tcp" }
                    ),
                );
            }
        }

        let mut zones = Vec::new();
        // Owner names of static records, with the index of their zone.
        let mut static_names: BTreeMap<String, usize> = BTreeMap::new();
        if let Some(dns) = &self.dns {
            if dns.listen.port() == 0 {
                err("dns.listen".into(), "port 0 is not a usable port".into());
            }
            if !(1..=MAX_DNS_UDP_WORKERS).contains(&dns.udp_workers) {
                err(
                    "dns.udp_workers".into(),
                    format!("must be between 1 and {MAX_DNS_UDP_WORKERS}"),
                );
            }
            for (i, z) in dns.zones.iter().enumerate() {
                match normalize_name(&z.name) {
                    Some(n) => zones.push(n),
                    None => err(
                        format!("dns.zones[{i}].name"),
                        format!("`{}` is not a valid DNS name", z.name),
                    ),
                }
            }
            let mut seen = BTreeSet::new();
            for (i, z) in zones.iter().enumerate() {
                if !seen.insert(z.clone()) {
                    err(
                        format!("dns.zones[{i}].name"),
                        format!("zone `{z}` is listed twice"),
                    );
                }
            }
            for (i, z) in dns.zones.iter().enumerate() {
                let at = format!("dns.zones[{i}]");
                if z.zone_file.is_some() {
                    err(
                        format!("{at}.zone_file"),
                        "a zone file is read when a config file is loaded (`--config FILE`); \
                         a config given as text carries zone_text instead"
                            .into(),
                    );
                }
                let apex = normalize_name(&z.name);
                match crate::zone::zone_records(z, &at) {
                    Err(problems) => problems.into_iter().for_each(|(p, r)| err(p, r)),
                    Ok(records) => {
                        for r in records {
                            // A name under a nested zone belongs to that zone.
                            let closer = zones.iter().find(|other| {
                                Some(*other) != apex.as_ref()
                                    && in_zone(other, apex.as_deref().unwrap_or(""))
                                    && in_zone(&r.owner, other)
                            });
                            if let Some(closer) = closer {
                                err(
                                    at.clone(),
                                    format!(
                                        "`{}` is inside zone `{closer}`: put its records there",
                                        r.owner
                                    ),
                                );
                            }
                            static_names.insert(r.owner, i);
                        }
                    }
                }
            }
        }
        let site_names = unique_names(
            self.gslb_sites.iter().map(|s| &s.name),
            "gslb_sites",
            &mut err,
        );
        for (i, site) in self.gslb_sites.iter().enumerate() {
            for (j, fallback) in site.fallback.iter().enumerate() {
                if fallback == &site.name || !site_names.contains(fallback.as_str()) {
                    err(
                        format!("gslb_sites[{i}].fallback[{j}]"),
                        format!("`{fallback}` is not another gslb_sites entry"),
                    );
                }
            }
            if site.client_subnets.len() > 10_000 {
                err(
                    format!("gslb_sites[{i}].client_subnets"),
                    "at most 10000 networks per site".into(),
                );
            }
        }
        let mut fqdns = BTreeSet::new();
        for (i, s) in self.gslb_services.iter().enumerate() {
            match normalize_name(&s.fqdn) {
                None => err(
                    format!("gslb_services[{i}].fqdn"),
                    format!("`{}` is not a valid DNS name", s.fqdn),
                ),
                Some(n) => {
                    if !zones.iter().any(|z| in_zone(&n, z)) {
                        err(
                            format!("gslb_services[{i}].fqdn"),
                            format!("`{n}` is in no zone of `dns.zones`"),
                        );
                    }
                    if let Some(zone) = static_names.get(&n) {
                        err(
                            format!("gslb_services[{i}].fqdn"),
                            format!(
                                "`{n}` has static records in dns.zones[{zone}]: \
                                 a GSLB name has only its GSLB answers"
                            ),
                        );
                    }
                    if !fqdns.insert(n.clone()) {
                        err(
                            format!("gslb_services[{i}].fqdn"),
                            format!("`{n}` is defined twice"),
                        );
                    }
                }
            }
            if s.members.is_empty() {
                err(
                    format!("gslb_services[{i}].members"),
                    "a GSLB service needs at least one member".into(),
                );
            }
            if s.members.len() > GSLB_MEMBERS_MAX {
                err(
                    format!("gslb_services[{i}].members"),
                    format!("at most {GSLB_MEMBERS_MAX} members"),
                );
            }
            for (j, m) in s.members.iter().enumerate() {
                let path = format!("gslb_services[{i}].members[{j}]");
                match (&m.vs, m.address) {
                    (Some(vs), None) => {
                        if !vs_names.contains(vs.as_str()) {
                            err(path.clone(), format!("no virtual service named `{vs}`"));
                        }
                    }
                    (None, Some(_)) => {}
                    _ => err(
                        path.clone(),
                        "give exactly one of `vs` (a virtual service) and `address`".into(),
                    ),
                }
                match &m.site {
                    Some(site) if !site_names.contains(site.as_str()) => err(
                        format!("{path}.site"),
                        format!("no gslb_sites entry named `{site}`"),
                    ),
                    None if s.policy == GslbPolicy::Topology => err(
                        format!("{path}.site"),
                        "the topology policy needs the site of every member".into(),
                    ),
                    _ => {}
                }
                if !(1..=1000).contains(&m.weight) {
                    err(format!("{path}.weight"), "must be 1..=1000".into());
                }
                if m.port == Some(0) {
                    err(format!("{path}.port"), "must be 1..=65535".into());
                }
            }
            if s.unhealthy_ttl_secs > s.ttl_secs {
                err(
                    format!("gslb_services[{i}].unhealthy_ttl_secs"),
                    format!("must be at most ttl_secs ({})", s.ttl_secs),
                );
            }
            if s.max_answers as usize > GSLB_MEMBERS_MAX {
                err(
                    format!("gslb_services[{i}].max_answers"),
                    format!("must be 0..={GSLB_MEMBERS_MAX}"),
                );
            }
            match (s.when_all_down, s.fallback_addresses.is_empty()) {
                (GslbAllDown::Fallback, true) => err(
                    format!("gslb_services[{i}].fallback_addresses"),
                    "`when_all_down = \"fallback\"` needs at least one address".into(),
                ),
                (GslbAllDown::Fallback, false) => {}
                (_, false) => err(
                    format!("gslb_services[{i}].fallback_addresses"),
                    "only used with `when_all_down = \"fallback\"`".into(),
                ),
                (_, true) => {}
            }
            if s.fallback_addresses.len() > GSLB_MEMBERS_MAX {
                err(
                    format!("gslb_services[{i}].fallback_addresses"),
                    format!("at most {GSLB_MEMBERS_MAX} addresses"),
                );
            }
            let h = &s.health;
            if let Some(monitor) = &h.monitor {
                if !self.health_monitors.iter().any(|m| &m.name == monitor) {
                    err(
                        format!("gslb_services[{i}].health.monitor"),
                        format!("no health_monitors entry named `{monitor}`"),
                    );
                }
            }
            if h.quorum > 16 {
                err(
                    format!("gslb_services[{i}].health.quorum"),
                    "must be 0..=16 (0: a majority of the recent sources)".into(),
                );
            }
            if !(1..=86_400).contains(&h.stale_secs) {
                err(
                    format!("gslb_services[{i}].health.stale_secs"),
                    "must be 1..=86400".into(),
                );
            }
            if h.settle_secs > 86_400 {
                err(
                    format!("gslb_services[{i}].health.settle_secs"),
                    "must be 0..=86400".into(),
                );
            }
        }

        let _ = unique_names(
            self.demo_origins.iter().map(|o| &o.name),
            "demo_origins",
            &mut err,
        );
        for (i, o) in self.demo_origins.iter().enumerate() {
            if o.listen.port() == 0 {
                err(
                    format!("demo_origins[{i}].listen"),
                    "port 0 is not a usable port".into(),
                );
            }
        }

        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The virtual service named `name`.
    pub fn virtual_service(&self, name: &str) -> Option<&VirtualService> {
        self.virtual_services.iter().find(|v| v.name == name)
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The health monitor named `name`.
    pub fn health_monitor(&self, name: &str) -> Option<&HealthMonitor> {
        self.health_monitors.iter().find(|m| m.name == name)
    }

    /// Check the health monitors; their names.
    fn validate_health_monitors<'a>(
        &'a self,
        err: &mut impl FnMut(String, String),
    ) -> BTreeSet<&'a str> {
        let names = unique_names(
            self.health_monitors.iter().map(|m| &m.name),
            "health_monitors",
            err,
        );
        for (i, m) in self.health_monitors.iter().enumerate() {
            let at = |field: &str| format!("health_monitors[{i}].{field}");
            if !(MIN_MONITOR_INTERVAL_MS..=MAX_MONITOR_INTERVAL_MS).contains(&m.interval_ms) {
                err(
                    at("interval_ms"),
                    format!(
                        "must be between {MIN_MONITOR_INTERVAL_MS} and {MAX_MONITOR_INTERVAL_MS}"
                    ),
                );
            }
            if m.timeout_ms == 0 || m.timeout_ms > m.interval_ms {
                err(
                    at("timeout_ms"),
                    format!("must be between 1 and interval_ms ({})", m.interval_ms),
                );
            }
            for (field, value) in [("rise", m.rise), ("fall", m.fall)] {
                if value == 0 || value > MAX_RISE_FALL {
                    err(at(field), format!("must be between 1 and {MAX_RISE_FALL}"));
                }
            }
            match (&m.kind, &m.http) {
                (MonitorKind::Http | MonitorKind::Https, Some(h)) => {
                    validate_http_check(&at("http"), h, err)
                }
                (_, Some(_)) => err(
                    at("http"),
                    "only allowed with type = \"http\" or \"https\"".into(),
                ),
                _ => {}
            }
            match (&m.kind, &m.tls) {
                (MonitorKind::Https, Some(t)) => validate_server_tls(&at("tls"), t, err),
                (_, Some(_)) => err(at("tls"), "only allowed with type = \"https\"".into()),
                _ => {}
            }
            match (&m.kind, &m.udp) {
                (MonitorKind::Udp, None) => err(at("udp"), "a udp check needs `send`".into()),
                (MonitorKind::Udp, Some(u)) => {
                    if !(1..=512).contains(&u.send.len()) {
                        err(at("udp.send"), "must be 1 to 512 bytes".into());
                    }
                    if u.expect.as_ref().is_some_and(|e| e.len() > 512) {
                        err(at("udp.expect"), "must be at most 512 bytes".into());
                    }
                }
                (_, Some(_)) => err(at("udp"), "only allowed with type = \"udp\"".into()),
                _ => {}
            }
            match (&m.kind, &m.dns) {
                (MonitorKind::Dns, None) => err(at("dns"), "a dns check needs `name`".into()),
                (MonitorKind::Dns, Some(d)) => {
                    if !d.valid_name() {
                        err(
                            at("dns.name"),
                            "must be a DNS name of 1-253 characters, labels of 1-63".into(),
                        );
                    }
                    if d.qtype().is_none() {
                        err(at("dns.rtype"), "must be A, AAAA, NS, SOA or TXT".into());
                    }
                }
                (_, Some(_)) => err(at("dns"), "only allowed with type = \"dns\"".into()),
                _ => {}
            }
        }
        names
    }
}

fn validate_http_check(at: &str, h: &HttpCheck, err: &mut impl FnMut(String, String)) {
    let valid_path = h.path.starts_with('/')
        && h.path.len() <= MAX_CHECK_TEXT_BYTES
        && h.path.parse::<http::uri::PathAndQuery>().is_ok();
    if !valid_path {
        err(
            format!("{at}.path"),
            format!(
                "`{}` is not a request path (`/...`, at most {MAX_CHECK_TEXT_BYTES} bytes)",
                h.path
            ),
        );
    }
    if h.expected_status.is_empty() || h.expected_status.len() > MAX_EXPECTED_STATUS {
        err(
            format!("{at}.expected_status"),
            format!("needs 1 to {MAX_EXPECTED_STATUS} status codes"),
        );
    }
    for (j, code) in h.expected_status.iter().enumerate() {
        if !(100..=599).contains(code) {
            err(
                format!("{at}.expected_status[{j}]"),
                format!("{code} is not an HTTP status code (100-599)"),
            );
        }
    }
    if let Some(m) = &h.body_match {
        if m.is_empty() || m.len() > MAX_CHECK_TEXT_BYTES {
            err(
                format!("{at}.body_match"),
                format!("must be 1 to {MAX_CHECK_TEXT_BYTES} bytes"),
            );
        }
    }
}

/// Check TLS settings toward servers field by field (`server_name`, then
/// `ca_pem` with `verify`).
fn validate_server_tls(at: &str, tls: &PoolTls, err: &mut impl FnMut(String, String)) {
    if let Some(name) = &tls.server_name {
        if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
            err(
                format!("{at}.server_name"),
                format!("`{name}` is not a DNS name or an IP address"),
            );
            return;
        }
    }
    if let Err(e) = crate::pki::upstream_client_config(tls, &[b"http/1.1"]) {
        let reason = e.to_string();
        let reason = reason.strip_prefix("ca_pem: ").unwrap_or(&reason);
        err(format!("{at}.ca_pem"), reason.to_string());
    }
}

fn validate_pool(
    i: usize,
    p: &Pool,
    monitors: &BTreeSet<&str>,
    err: &mut impl FnMut(String, String),
) {
    if p.servers.is_empty() {
        err(
            format!("pools[{i}].servers"),
            "a pool needs at least one server".into(),
        );
    }
    if p.servers.len() > MAX_POOL_SERVERS {
        err(
            format!("pools[{i}].servers"),
            format!("at most {MAX_POOL_SERVERS} servers per pool"),
        );
    }
    let mut seen = BTreeSet::new();
    for (j, s) in p.servers.iter().enumerate() {
        if s.addr.port() == 0 {
            err(
                format!("pools[{i}].servers[{j}]"),
                "port 0 is not a usable port".into(),
            );
        }
        if !seen.insert(s.addr) {
            err(
                format!("pools[{i}].servers[{j}]"),
                format!("server {} is listed twice", s.addr),
            );
        }
        if s.weight == 0 || s.weight > MAX_SERVER_WEIGHT {
            err(
                format!("pools[{i}].servers[{j}].weight"),
                format!("must be between 1 and {MAX_SERVER_WEIGHT}"),
            );
        }
    }
    if let Some(m) = &p.health_monitor {
        if !monitors.contains(m.as_str()) {
            err(
                format!("pools[{i}].health_monitor"),
                format!("no health monitor named `{m}`"),
            );
        }
    }
    if let Some(h) = &p.hash_header {
        if p.algorithm != Algorithm::ConsistentHash {
            err(
                format!("pools[{i}].hash_header"),
                "only used with algorithm = \"consistent_hash\"".into(),
            );
        }
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            err(
                format!("pools[{i}].hash_header"),
                format!("`{h}` is not an HTTP header name"),
            );
        }
    }
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a String>,
    list: &str,
    err: &mut impl FnMut(String, String),
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            err(format!("{list}[{i}].name"), "must not be empty".into());
        } else if !seen.insert(n.as_str()) {
            err(format!("{list}[{i}].name"), format!("`{n}` is used twice"));
        }
    }
    seen
}

/// Lower-case a DNS name without its trailing dot; `None` if it is not a
/// valid host name (labels of 1-63 letters, digits, `-` or `_`, 253 bytes in all).
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// Whether the normalized `name` is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<ConfigError> {
        Config::parse(text)
            .expect_err("config should be rejected")
            .0
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(EXAMPLE_CONFIG.contains(replace), "example lacks {replace}");
        EXAMPLE_CONFIG.replacen(replace, by, 1)
    }

    #[test]
    fn example_is_valid() {
        let c = Config::example();
        assert_eq!(c.virtual_services.len(), 1);
        assert_eq!(c.pools[0].servers.len(), 2);
        assert_eq!(c.pools[0].health_monitor.as_deref(), Some("web-http"));
        assert_eq!(c.health_monitors[0].kind, MonitorKind::Http);
    }

    #[test]
    fn unknown_field_names_its_path() {
        let e = errors_of(&with("pool = \"web\"", "pool = \"web\"\ncolour = \"blue\""));
        assert_eq!(e.len(), 1);
        assert!(e[0].path.starts_with("virtual_services[0]"), "{:?}", e[0]);
        assert!(e[0].reason.contains("unknown field `colour`"), "{:?}", e[0]);
    }

    #[test]
    fn wrong_type_names_its_path() {
        let e = errors_of(&with("port = 8080", "port = \"eighty\""));
        assert_eq!(e[0].path, "virtual_services[0].port");
        let e = errors_of(&with("port = 8080", "port = 70000"));
        assert_eq!(e[0].path, "virtual_services[0].port");
    }

    #[test]
    fn invalid_values_are_all_reported() {
        let e = errors_of(&with("port = 8080", "port = 0"));
        assert_eq!(
            e,
            vec![ConfigError {
                path: "virtual_services[0].port".into(),
                reason: "port 0 is not a usable port".into()
            }]
        );

        let e = errors_of(&with(
            "servers = [\"127.0.0.1:8481\", \"127.0.0.1:8482\"]",
            "servers = []",
        ));
        assert_eq!(e[0].path, "pools[0].servers");

        let dup = with(
            "[dns]",
            "[[virtual_services]]\nname = \"app2\"\nvip = \"127.0.0.10\"\nport = 8080\npool = \"web\"\n\n[dns]",
        );
        let e = errors_of(&dup);
        assert_eq!(e[0].path, "virtual_services[1].vip");
        assert!(e[0].reason.contains("duplicate VIP"), "{:?}", e[0]);
    }

    #[test]
    fn gslb_fields_are_checked_by_path() {
        let cases = [
            (
                "members = [{ vs = \"app\", address = \"192.0.2.1\" }]",
                "gslb_services[0].members[0]",
                "exactly one of",
            ),
            (
                "members = [{ site = \"x\" }]",
                "gslb_services[0].members[0]",
                "exactly one of",
            ),
            (
                "members = [{ vs = \"app\", site = \"nowhere\" }]",
                "gslb_services[0].members[0].site",
                "no gslb_sites",
            ),
            (
                "members = [{ vs = \"app\", weight = 0 }]",
                "gslb_services[0].members[0].weight",
                "1..=1000",
            ),
            (
                "members = [\"app\"]\npolicy = \"topology\"",
                "gslb_services[0].members[0].site",
                "topology",
            ),
            (
                "members = [\"app\"]\nunhealthy_ttl_secs = 60",
                "gslb_services[0].unhealthy_ttl_secs",
                "at most ttl_secs",
            ),
            (
                "members = [\"app\"]\nwhen_all_down = \"fallback\"",
                "gslb_services[0].fallback_addresses",
                "at least one",
            ),
            (
                "members = [\"app\"]\nfallback_addresses = [\"192.0.2.9\"]",
                "gslb_services[0].fallback_addresses",
                "only used",
            ),
            (
                "members = [\"app\"]\nhealth = { monitor = \"nope\" }",
                "gslb_services[0].health.monitor",
                "no health_monitors",
            ),
            (
                "members = [\"app\"]\nhealth = { stale_secs = 0 }",
                "gslb_services[0].health.stale_secs",
                "1..=86400",
            ),
        ];
        for (by, path, why) in cases {
            let e = errors_of(&with("members = [\"app\"]", by));
            assert_eq!(e[0].path, path, "{by}: {e:?}");
            assert!(e[0].reason.contains(why), "{by}: {e:?}");
        }
        let e = errors_of(&with(
            "[dns]",
            "[[gslb_sites]]\nname = \"a\"\nfallback = [\"a\"]\n\n[dns]",
        ));
        assert_eq!(e[0].path, "gslb_sites[0].fallback[0]");
        let e = errors_of(&with(
            "[dns]",
            "[[gslb_sites]]\nname = \"a\"\nclient_subnets = [\"10.0.0.0/33\"]\n\n[dns]",
        ));
        assert!(e[0].path.starts_with("gslb_sites"), "{e:?}");
        let e = errors_of(&with(
            "members = [\"app\"]",
            "members = [{ vs = \"app\", colour = 1 }]",
        ));
        assert!(e[0].reason.contains("colour"), "{e:?}");
        // A member as a name and as a table is the same member.
        let short = Config::parse(EXAMPLE_CONFIG).unwrap();
        let long =
            Config::parse(&with("members = [\"app\"]", "members = [{ vs = \"app\" }]")).unwrap();
        assert_eq!(short, long);
    }

    #[test]
    fn dns_udp_workers_default_to_one_and_are_range_checked() {
        let dns = Config::example().dns.unwrap();
        assert_eq!(dns.udp_workers, 1);
        // The default is not written out: a replicated config stays as it was.
        let text = toml::to_string(&dns).unwrap();
        assert!(!text.contains("udp_workers"), "{text}");

        let listen = "listen = \"127.0.0.1:8053\"";
        let four = Config::parse(&with(listen, &format!("{listen}\nudp_workers = 4"))).unwrap();
        assert_eq!(four.dns.unwrap().udp_workers, 4);
        let most = format!("{listen}\nudp_workers = {MAX_DNS_UDP_WORKERS}");
        assert!(Config::parse(&with(listen, &most)).is_ok());
        for bad in [0, MAX_DNS_UDP_WORKERS + 1, 100_000] {
            let e = errors_of(&with(listen, &format!("{listen}\nudp_workers = {bad}")));
            assert_eq!(
                e,
                vec![ConfigError {
                    path: "dns.udp_workers".into(),
                    reason: "must be between 1 and 64".into()
                }],
                "udp_workers = {bad}"
            );
        }
        let e = errors_of(&with(listen, &format!("{listen}\nudp_workers = -1")));
        assert_eq!(e[0].path, "dns.udp_workers");
    }

    #[test]
    fn dangling_references_are_errors() {
        let e = errors_of(&with("pool = \"web\"", "pool = \"nope\""));
        assert_eq!(e[0].path, "virtual_services[0].pool");
        let e = errors_of(&with("members = [\"app\"]", "members = [\"ghost\"]"));
        assert_eq!(e[0].path, "gslb_services[0].members[0]");
        let e = errors_of(&with(
            "fqdn = \"app.fabric.test\"",
            "fqdn = \"app.elsewhere.test\"",
        ));
        assert_eq!(e[0].path, "gslb_services[0].fqdn");
    }

    #[test]
    fn predictive_autoscale_needs_autoscale_and_a_sane_period_and_lead() {
        let mut config = Config::example();
        let g = &mut config.se_groups[0];
        g.autoscale = true;
        g.autoscale_mode = AutoscaleMode::Predictive;
        config.validate().unwrap();
        let paths = |c: &Config| -> Vec<String> {
            c.validate()
                .unwrap_err()
                .0
                .into_iter()
                .map(|e| e.path)
                .collect()
        };
        let mut bad = config.clone();
        bad.se_groups[0].autoscale = false;
        assert_eq!(paths(&bad), ["se_groups[0].autoscale_mode"]);
        let mut bad = config.clone();
        bad.se_groups[0].autoscale_period_ms = 1000;
        assert_eq!(paths(&bad), ["se_groups[0].autoscale_period_ms"]);
        let mut bad = config.clone();
        bad.se_groups[0].autoscale_lead_ms = bad.se_groups[0].autoscale_period_ms / 2;
        assert_eq!(paths(&bad), ["se_groups[0].autoscale_lead_ms"]);
        let mut bad = config;
        bad.se_groups[0].autoscale_lead_ms = 0;
        assert_eq!(paths(&bad), ["se_groups[0].autoscale_lead_ms"]);
        // A reactive group ignores the predictive settings.
        bad.se_groups[0].autoscale_mode = AutoscaleMode::Reactive;
        bad.validate().unwrap();
    }

    #[test]
    fn certificates_are_checked_and_referenced_by_name() {
        let other = crate::pki::self_signed("other", &["other.test"]).unwrap();
        let mut config = Config::example();
        config
            .certificates
            .push(crate::pki::self_signed("app", &["app.fabric.test"]).unwrap());
        config.virtual_services[0].tls = Some(VsTls {
            certificates: vec!["app".into()],
            session_resumption: true,
        });
        config.validate().unwrap();
        assert!(!format!("{:?}", config.certificates[0]).contains("PRIVATE KEY"));

        let mut bad = config.clone();
        bad.certificates[0].key_pem = other.key_pem;
        let e = bad.validate().unwrap_err().0;
        assert_eq!(e[0].path, "certificates[0]");
        assert!(e[0].reason.contains("key"), "{}", e[0].reason);
        bad.certificates[0].cert_pem = "not a certificate".into();
        assert_eq!(bad.validate().unwrap_err().0[0].path, "certificates[0]");

        let mut dangling = config.clone();
        dangling.virtual_services[0].tls = Some(VsTls {
            certificates: vec!["ghost".into()],
            session_resumption: true,
        });
        let e = dangling.validate().unwrap_err().0;
        assert_eq!(e[0].path, "virtual_services[0].tls.certificates[0]");
        dangling.virtual_services[0].tls = Some(VsTls {
            certificates: vec![],
            session_resumption: true,
        });
        let e = dangling.validate().unwrap_err().0;
        assert_eq!(e[0].path, "virtual_services[0].tls.certificates");
    }

    #[test]
    fn tcp_and_udp_may_share_a_port_but_udp_has_no_tls() {
        let mut config = Config::example();
        let mut udp = config.virtual_services[0].clone();
        udp.name = "app-udp".into();
        udp.protocol = VsProtocol::Udp;
        udp.l4.idle_timeout_ms = Some(5_000);
        config.virtual_services.push(udp);
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("protocol = \"udp\""), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);

        let mut twice = config.clone();
        twice.virtual_services[1].protocol = VsProtocol::Tcp;
        let e = twice.validate().unwrap_err().0;
        assert_eq!(e[0].path, "virtual_services[1].vip");
        assert!(e[0].reason.contains("/tcp"), "{}", e[0].reason);

        let mut tls = config.clone();
        tls.certificates
            .push(crate::pki::self_signed("c", &["a.test"]).unwrap());
        tls.virtual_services[1].tls = Some(VsTls {
            certificates: vec!["c".into()],
            session_resumption: true,
        });
        tls.virtual_services[1].l4.max_udp_flows = 0;
        tls.virtual_services[1].l4.max_connections = 0;
        let e = tls.validate().unwrap_err().0;
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "virtual_services[1].l4.max_connections",
                "virtual_services[1].l4.max_udp_flows",
                "virtual_services[1].tls"
            ]
        );
    }

    #[test]
    fn udp_and_dns_monitors_need_their_check() {
        let parse = |monitor: &str| {
            let text = format!(
                "[controller]\nlisten = \"127.0.0.1:7000\"\n[[se_groups]]\nname = \"default\"\n\
                 [[health_monitors]]\nname = \"m\"\n{monitor}\n"
            );
            let config: Config = toml::from_str(&text).unwrap();
            config
                .validate()
                .err()
                .map(|e| e.0.into_iter().map(|e| e.path).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert!(parse("type = \"udp\"\nudp = { send = \"ping\", expect = \"pong\" }").is_empty());
        assert!(
            parse("type = \"dns\"\ndns = { name = \"health.example.com.\", rtype = \"soa\" }")
                .is_empty()
        );
        assert_eq!(parse("type = \"udp\""), ["health_monitors[0].udp"]);
        assert_eq!(
            parse("type = \"udp\"\nudp = { send = \"\" }"),
            ["health_monitors[0].udp.send"]
        );
        assert_eq!(parse("type = \"dns\""), ["health_monitors[0].dns"]);
        assert_eq!(
            parse("type = \"dns\"\ndns = { name = \"bad..name\", rtype = \"MX\" }"),
            [
                "health_monitors[0].dns.name",
                "health_monitors[0].dns.rtype"
            ]
        );
        assert_eq!(
            parse("type = \"tcp\"\ndns = { name = \"a.b\" }"),
            ["health_monitors[0].dns"]
        );
    }

    #[test]
    fn pool_tls_needs_a_ca_to_verify_against() {
        let mut config = Config::example();
        config.pools[0].tls = Some(PoolTls {
            server_name: Some("origin.internal".into()),
            verify: false,
            ca_pem: String::new(),
        });
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        for (verify, ca_pem, name) in [
            (true, "", None),
            (true, "garbage", None),
            (false, "", Some("not a name!")),
        ] {
            let mut bad = config.clone();
            bad.pools[0].tls = Some(PoolTls {
                server_name: name.map(str::to_string),
                verify,
                ca_pem: ca_pem.into(),
            });
            let e = bad.validate().unwrap_err().0;
            assert_eq!(e[0].path, "pools[0].tls", "{e:?}");
        }
        let ca = crate::pki::CaMaterial::generate("ca").unwrap();
        config.pools[0].tls = Some(PoolTls {
            server_name: None,
            verify: true,
            ca_pem: ca.cert_pem,
        });
        config.validate().unwrap();
    }

    /// Paths of the errors of `config` (empty: valid).
    fn error_paths(config: &Config) -> Vec<String> {
        config
            .validate()
            .err()
            .map(|e| e.0.into_iter().map(|e| e.path).collect())
            .unwrap_or_default()
    }

    #[test]
    fn https_monitors_take_the_pool_tls_or_their_own() {
        let ca = crate::pki::CaMaterial::generate("ca").unwrap();
        let text = with("type = \"http\"", "type = \"https\"");
        let config: Config = toml::from_str(&text).unwrap();
        // Neither the pool nor the monitor says how to speak TLS.
        assert_eq!(error_paths(&config), ["pools[0].health_monitor"]);
        let e = config.validate().unwrap_err().0;
        assert!(e[0].reason.contains("needs a `tls` table"), "{e:?}");

        // The pool's `tls` will do, and so will the monitor's own.
        let mut pool_tls = config.clone();
        pool_tls.pools[0].tls = Some(PoolTls {
            server_name: None,
            verify: true,
            ca_pem: ca.cert_pem.clone(),
        });
        assert_eq!(error_paths(&pool_tls), Vec::<String>::new());
        let own = with(
            "type = \"http\"",
            "type = \"https\"\ntls = { server_name = \"origin.internal\", verify = false }",
        );
        let own = Config::parse(&own).unwrap();
        assert_eq!(
            own.health_monitors[0].tls.as_ref().map(|t| t.verify),
            Some(false)
        );
        let text = toml::to_string(&own).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), own, "{text}");

        // Errors name the field, and nothing is applied: parse fails whole.
        for (tls, path, why) in [
            (
                "tls = { verify = true }",
                "health_monitors[0].tls.ca_pem",
                "at least one CA",
            ),
            (
                "tls = { ca_pem = \"garbage\" }",
                "health_monitors[0].tls.ca_pem",
                "at least one CA",
            ),
            (
                "tls = { server_name = \"not a name!\", verify = false }",
                "health_monitors[0].tls.server_name",
                "not a DNS name",
            ),
            (
                "tls = { verify = false, colour = 1 }",
                "health_monitors[0]",
                "unknown field",
            ),
        ] {
            let text = with("type = \"http\"", &format!("type = \"https\"\n{tls}"));
            let e = errors_of(&text);
            assert!(e[0].path.starts_with(path), "{tls}: {e:?}");
            assert!(e[0].reason.contains(why), "{tls}: {e:?}");
            assert!(Config::parse(&text).is_err());
        }
        // `tls` belongs to https monitors only.
        let e = errors_of(&with(
            "type = \"http\"",
            "type = \"http\"\ntls = { verify = false }",
        ));
        assert_eq!(e[0].path, "health_monitors[0].tls");
        assert!(e[0].reason.contains("only allowed with type = \"https\""));
    }

    #[test]
    fn pools_may_speak_http2_to_their_servers() {
        let servers = "servers = [\"127.0.0.1:8481\", \"127.0.0.1:8482\"]";
        let plain = Config::parse(&with(servers, servers)).unwrap();
        assert!(!plain.pools[0].http2);
        assert!(!toml::to_string(&plain).unwrap().contains("http2"));
        let c = Config::parse(&with(servers, &format!("{servers}\nhttp2 = true"))).unwrap();
        assert!(c.pools[0].http2);
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c, "{text}");
        let se = crate::proto::SeConfig::for_group(&c, "default", 1);
        assert!(se.virtual_services[0].server_http2);
        assert!(Config::parse(&with(servers, &format!("{servers}\nhttp2 = 1"))).is_err());
    }

    #[test]
    fn outlier_detection_defaults_and_is_checked_by_field() {
        let servers = "servers = [\"127.0.0.1:8481\", \"127.0.0.1:8482\"]";
        let parse = |table: &str| {
            Config::parse(&with(
                servers,
                &format!("{servers}\noutlier_detection = {table}"),
            ))
        };
        let c = parse("{}").unwrap();
        assert_eq!(
            c.pools[0].outlier_detection,
            Some(OutlierDetection {
                consecutive_errors: 5,
                consecutive_5xx: 0,
                ejection_ms: 30_000,
                max_ejection_ms: 300_000,
                max_ejected_percent: 50,
            })
        );
        let c =
            parse("{ consecutive_errors = 0, consecutive_5xx = 3, ejection_ms = 100 }").unwrap();
        let o = c.pools[0].outlier_detection.unwrap();
        assert_eq!(
            (o.consecutive_errors, o.consecutive_5xx, o.ejection_ms),
            (0, 3, 100)
        );
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c, "{text}");
        // The SE gets it with its pool.
        let se = crate::proto::SeConfig::for_group(&c, "default", 1);
        assert_eq!(se.virtual_services[0].outlier_detection, Some(o));

        let at = "pools[0].outlier_detection";
        for (table, field) in [
            ("{ consecutive_errors = 0 }", "consecutive_errors"),
            ("{ consecutive_5xx = 5000 }", "consecutive_5xx"),
            ("{ ejection_ms = 0 }", "ejection_ms"),
            (
                "{ ejection_ms = 10000, max_ejection_ms = 5000 }",
                "max_ejection_ms",
            ),
            ("{ max_ejected_percent = 0 }", "max_ejected_percent"),
            ("{ max_ejected_percent = 101 }", "max_ejected_percent"),
        ] {
            let e = parse(table).unwrap_err().0;
            assert_eq!(e[0].path, format!("{at}.{field}"), "{table}: {e:?}");
        }
        let e = parse("{ interval_ms = 5 }").unwrap_err().0;
        assert!(e[0].path.starts_with("pools[0]"), "{e:?}");
        assert!(e[0].reason.contains("unknown field `interval_ms`"), "{e:?}");
    }

    #[test]
    fn http_settings_default_and_are_range_checked() {
        let config: Config = toml::from_str(
            r#"
            [controller]
            listen = "127.0.0.1:7000"
            [[se_groups]]
            name = "default"
            [[pools]]
            name = "web"
            servers = ["127.0.0.1:9000"]
            [[virtual_services]]
            name = "app"
            vip = "127.0.0.10"
            port = 80
            pool = "web"
            http = { header_timeout_ms = 0, max_header_bytes = 10, forwarded = true, max_h2_streams = 0, max_connections = 5, max_body_bytes = 2199023255552 }
            "#,
        )
        .unwrap();
        let http = config.virtual_services[0].http;
        assert!(http.forwarded && http.x_forwarded_for);
        assert_eq!(http.max_connections, 5);
        assert_eq!(http.max_requests_in_flight, 10_000);
        assert_eq!(
            http.client_idle_timeout_ms,
            VsHttp::default().client_idle_timeout_ms
        );
        let e = config.validate().unwrap_err().0;
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "virtual_services[0].http.header_timeout_ms",
                "virtual_services[0].http.max_header_bytes",
                "virtual_services[0].http.max_body_bytes",
                "virtual_services[0].http.max_h2_streams"
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for text in [
            "",
            "[[[",
            "controller = 5",
            "\u{0}\u{1}",
            "[controller]\nlisten = \"nowhere\"",
        ] {
            assert!(Config::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn servers_are_addresses_or_tables() {
        let c = Config::parse(
            &with(
                "servers = [\"127.0.0.1:8481\", \"127.0.0.1:8482\"]",
                "algorithm = \"weighted_round_robin\"\nservers = [\"127.0.0.1:8481\", \
             { addr = \"127.0.0.1:8482\", weight = 3, admin_state = \"draining\" }]",
            )
            .replace("algorithm = \"round_robin\"\n", ""),
        )
        .unwrap();
        let pool = &c.pools[0];
        assert_eq!(pool.algorithm, Algorithm::WeightedRoundRobin);
        assert_eq!(
            pool.servers[0],
            Server::from("127.0.0.1:8481".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(
            (pool.servers[1].weight, pool.servers[1].admin_state),
            (3, AdminState::Draining)
        );
        // What serializes parses back the same.
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), c, "{text}");
    }

    #[test]
    fn pool_and_server_errors_name_their_paths() {
        let servers = "servers = [\"127.0.0.1:8481\", \"127.0.0.1:8482\"]";
        let cases = [
            (
                "servers = [\"127.0.0.1:8481\", { addr = \"127.0.0.1:8482\", weight = 0 }]",
                "pools[0].servers[1].weight",
            ),
            (
                "servers = [\"127.0.0.1:8481\", { addr = \"127.0.0.1:8482\", colour = 1 }]",
                "pools[0].servers[1]",
            ),
            ("servers = [\"nowhere\"]", "pools[0].servers[0]"),
            ("servers = [5]", "pools[0].servers[0]"),
        ];
        for (replacement, path) in cases {
            let e = errors_of(&with(servers, replacement));
            assert!(e[0].path.starts_with(path), "{replacement}: {e:?}");
        }
        let e = errors_of(&with(
            "health_monitor = \"web-http\"",
            "health_monitor = \"nope\"",
        ));
        assert_eq!(e[0].path, "pools[0].health_monitor");
        assert!(e[0].reason.contains("no health monitor named `nope`"));
        let e = errors_of(&with(
            "algorithm = \"round_robin\"",
            "hash_header = \"x-user\"",
        ));
        assert_eq!(e[0].path, "pools[0].hash_header");
        let e = errors_of(&with(
            "algorithm = \"round_robin\"",
            "algorithm = \"consistent_hash\"\nhash_header = \"bad header\"",
        ));
        assert_eq!(e[0].path, "pools[0].hash_header");
        assert!(Config::parse(&with(
            "algorithm = \"round_robin\"",
            "algorithm = \"consistent_hash\"\nhash_header = \"x-user\"",
        ))
        .is_ok());
    }

    #[test]
    fn health_monitor_values_are_checked() {
        let cases = [
            (
                "timeout_ms = 1000",
                "timeout_ms = 5000",
                "health_monitors[0].timeout_ms",
            ),
            (
                "interval_ms = 2000",
                "interval_ms = 1",
                "health_monitors[0].interval_ms",
            ),
            ("rise = 2", "rise = 0", "health_monitors[0].rise"),
            ("fall = 2", "fall = 1000", "health_monitors[0].fall"),
            (
                "type = \"http\"",
                "type = \"tcp\"",
                "health_monitors[0].http",
            ),
            (
                "type = \"http\"",
                "type = \"icmp\"",
                "health_monitors[0].type",
            ),
            (
                "expected_status = [200]",
                "expected_status = [700]",
                "health_monitors[0].http.expected_status[0]",
            ),
            (
                "expected_status = [200]",
                "expected_status = []",
                "health_monitors[0].http.expected_status",
            ),
            (
                "path = \"/health\"",
                "path = \"health\"",
                "health_monitors[0].http.path",
            ),
            (
                "body_match = \"ok\"",
                "body_match = \"\"",
                "health_monitors[0].http.body_match",
            ),
            (
                "name = \"web-http\"",
                "name = \"\"",
                "health_monitors[0].name",
            ),
        ];
        for (replace, by, path) in cases {
            let e = errors_of(&with(replace, by));
            assert!(e.iter().any(|e| e.path == path), "{by}: {e:?}");
        }
        // Defaults: an http monitor needs only a name and a type.
        let c = Config::parse(&with(
            "interval_ms = 2000        # between the starts of two checks of a server\ntimeout_ms = 1000         # at most interval_ms\nrise = 2\nfall = 2\nhttp = { path = \"/health\", expected_status = [200], body_match = \"ok\" }\n",
            "",
        ))
        .unwrap();
        let m = &c.health_monitors[0];
        assert_eq!(
            (m.interval_ms, m.timeout_ms, m.rise, m.fall, m.http.clone()),
            (10_000, 4_000, 2, 2, None)
        );
    }

    /// Property: the example config with random bytes changed, cut or
    /// repeated parses or is refused, never panics.
    #[test]
    fn mangled_configs_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let pieces = [
            "weight = 0",
            "{",
            "]",
            "\"",
            "\u{0}",
            "admin_state = 7",
            "http = 1",
            "=",
            "\n",
            "[[pools]]",
            ",",
        ];
        for _ in 0..2000 {
            let mut text = EXAMPLE_CONFIG.to_string();
            for _ in 0..rng.gen_range(1..4) {
                let mut at = rng.gen_range(0..=text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                match rng.gen_range(0..3) {
                    0 => text.insert_str(at, pieces[rng.gen_range(0..pieces.len())]),
                    1 => text.truncate(at),
                    _ => {
                        let mut end = (at + rng.gen_range(1..20)).min(text.len());
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.replace_range(at..end, "");
                    }
                }
            }
            let _ = Config::parse(&text);
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            normalize_name("App.Fabric.TEST.").as_deref(),
            Some("app.fabric.test")
        );
        assert_eq!(normalize_name("a..b"), None);
        assert!(in_zone("app.fabric.test", "fabric.test"));
        assert!(in_zone("fabric.test", "fabric.test"));
        assert!(!in_zone("xfabric.test", "fabric.test"));
    }
}
