//! GSLB policies: which members of a service answer one query.
//!
//! Pure and allocation-free on the query path: a [`Service`] (built once per
//! config), the [`ServiceHealth`] of its members (a snapshot from
//! [`crate::health`]), the client and a per-query sequence number go in; a
//! [`Choice`] (member indices on the stack, TTL, ECS scope, the deciding
//! [`Rule`]) comes out. `explain` calls the same [`decide`] as the server.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use fabric::model::{self, Config, GslbAllDown, GslbPolicy, GSLB_MEMBERS_MAX};
use ipnet::IpNet;

/// A GSLB service ready to answer from.
#[derive(Debug, Clone)]
pub struct Service {
    /// Its name, normalized.
    pub fqdn: String,
    /// The policy.
    pub policy: GslbPolicy,
    /// TTL while every member is up and stable.
    pub ttl_secs: u32,
    /// TTL while a member is down or settling, and of all-down answers.
    pub unhealthy_ttl_secs: u32,
    /// Most addresses per answer (the policy's default already applied).
    pub max_answers: usize,
    /// The all-down rule.
    pub all_down: GslbAllDown,
    /// Addresses of the `fallback` all-down rule.
    pub fallback: Vec<IpAddr>,
    /// Members in config order.
    pub members: Vec<Member>,
    /// How member health is decided.
    pub health: model::GslbHealth,
}

/// One member with its address resolved.
#[derive(Debug, Clone)]
pub struct Member {
    /// The VS name or the address, as the config names it.
    pub label: String,
    /// The VS name, for VS members (SEs report by it).
    pub vs: Option<String>,
    /// The address answered.
    pub addr: IpAddr,
    /// Where DNS-side probes connect.
    pub probe_port: u16,
    /// Index into [`Sites`], if it has a site.
    pub site: Option<usize>,
    /// Weight (1..=1000).
    pub weight: u32,
    /// Priority: lowest healthy wins.
    pub priority: u32,
    /// Per-member hash salt for consistent hashing (from its label, so it
    /// survives reordering in the config).
    salt: u64,
}

/// What the health snapshot says about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// No source has reported yet: treated as up.
    #[default]
    Unknown,
    /// Up by quorum.
    Up,
    /// Down by quorum.
    Down,
}

impl State {
    /// Whether answers may carry it.
    pub fn usable(self) -> bool {
        self != State::Down
    }
}

/// One member's health in a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberHealth {
    /// The verdict.
    pub state: State,
    /// It changed state less than `settle_secs` ago.
    pub settling: bool,
    /// It was up the last time any member of the service was.
    pub last_good: bool,
}

/// The health of a service's members, by member index; members past the
/// end are `Unknown`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// By member index.
    pub members: Vec<MemberHealth>,
}

impl ServiceHealth {
    /// Health of member `i`.
    pub fn of(&self, i: usize) -> MemberHealth {
        self.members.get(i).copied().unwrap_or_default()
    }
}

/// The client as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The network the answer is for: the EDNS Client Subnet (address
    /// already truncated to its prefix), else the source address as a
    /// host network.
    pub addr: IpAddr,
    /// The prefix length known (ECS source prefix, or 32/128).
    pub prefix: u8,
    /// Whether it came from ECS (then the response carries a scope).
    pub ecs: bool,
}

impl Client {
    /// A client known by its source address alone.
    pub fn from_source(addr: IpAddr) -> Client {
        Client {
            addr,
            prefix: max_prefix(addr),
            ecs: false,
        }
    }
}

/// Which address family a selection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

impl Family {
    fn holds(self, addr: IpAddr) -> bool {
        matches!(
            (self, addr),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// What an answer is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The chosen members' addresses.
    Members,
    /// The service's fallback addresses (of the family asked).
    Fallback,
    /// SERVFAIL.
    Servfail,
    /// NOERROR without addresses.
    Nodata,
}

/// The rule that decided an answer: what `explain` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No member has an address of the family asked (NODATA).
    NoMemberOfFamily,
    /// Round robin over the healthy members, starting at this one.
    RoundRobin {
        /// Healthy members of the family.
        healthy: usize,
    },
    /// A weighted pick.
    Weighted {
        /// Healthy members of the family.
        healthy: usize,
        /// Their total weight.
        total_weight: u32,
    },
    /// The lowest priority with a healthy member.
    Priority {
        /// That priority.
        priority: u32,
        /// Healthy members at it.
        healthy: usize,
    },
    /// The client's site has a healthy member.
    TopologySite {
        /// The site (index into [`Sites`]).
        site: usize,
        /// The client network it matched.
        subnet: IpNet,
    },
    /// The client's site is down; a fallback site answered.
    TopologyFallback {
        /// The client's site.
        site: usize,
        /// The client network it matched.
        subnet: IpNet,
        /// The site that answered.
        to: usize,
    },
    /// The client's site and its fallbacks are down (or it matched no site):
    /// any healthy member.
    TopologyAny {
        /// The client's site, if one matched.
        site: Option<usize>,
    },
    /// Rendezvous hashing of the client network.
    ConsistentHash {
        /// The network hashed.
        key: IpNet,
        /// Healthy members of the family.
        healthy: usize,
    },
    /// No member is healthy: the `when_all_down` rule.
    AllDown(GslbAllDown),
}

/// The decision for one query and family.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    /// Chosen member indices, in answer order.
    picked: [u16; GSLB_MEMBERS_MAX],
    len: usize,
    /// What the answer is made of.
    pub outcome: Outcome,
    /// TTL of the answer.
    pub ttl_secs: u32,
    /// ECS scope prefix length to return (for ECS clients).
    pub scope: u8,
    /// Why.
    pub rule: Rule,
}

impl Choice {
    fn new(rule: Rule) -> Choice {
        Choice {
            picked: [0; GSLB_MEMBERS_MAX],
            len: 0,
            outcome: Outcome::Members,
            ttl_secs: 0,
            scope: 0,
            rule,
        }
    }

    /// Add `member` unless a chosen member has its address (two VS
    /// members on one VIP, different ports): an RRset holds each address once.
    fn push(&mut self, service: &Service, member: usize) {
        let addr = service.members[member].addr;
        if self.members().any(|m| service.members[m].addr == addr) {
            return;
        }
        if self.len < GSLB_MEMBERS_MAX {
            self.picked[self.len] = member as u16;
            self.len += 1;
        }
    }

    /// The chosen member indices, in answer order.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        self.picked[..self.len].iter().map(|&m| m as usize)
    }
}

/// GSLB sites and the client-network table of the topology policy.
#[derive(Debug, Clone, Default)]
pub struct Sites {
    /// Site names by index.
    pub names: Vec<String>,
    /// Each site's fallback sites, in order.
    pub fallback: Vec<Vec<usize>>,
    /// Client networks: per family, per prefix length (longest first), the
    /// networks (as masked integers) and their site.
    v4: Vec<(u8, BTreeMap<u128, usize>)>,
    v6: Vec<(u8, BTreeMap<u128, usize>)>,
}

impl Sites {
    /// From the config's `gslb_sites`.
    pub fn from_config(config: &Config) -> Sites {
        let names: Vec<String> = config.gslb_sites.iter().map(|s| s.name.clone()).collect();
        let index = |n: &String| names.iter().position(|m| m == n);
        let fallback = config
            .gslb_sites
            .iter()
            .map(|s| s.fallback.iter().filter_map(index).collect())
            .collect();
        let mut v4: BTreeMap<u8, BTreeMap<u128, usize>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, BTreeMap<u128, usize>> = BTreeMap::new();
        for (site, s) in config.gslb_sites.iter().enumerate() {
            for net in &s.client_subnets {
                let net = net.trunc();
                let table = match net {
                    IpNet::V4(_) => &mut v4,
                    IpNet::V6(_) => &mut v6,
                };
                // The first site to list a network keeps it.
                table
                    .entry(net.prefix_len())
                    .or_default()
                    .entry(bits(net.network()))
                    .or_insert(site);
            }
        }
        Sites {
            names,
            fallback,
            v4: v4.into_iter().rev().collect(),
            v6: v6.into_iter().rev().collect(),
        }
    }

    fn table(&self, addr: IpAddr) -> &[(u8, BTreeMap<u128, usize>)] {
        match addr {
            IpAddr::V4(_) => &self.v4,
            IpAddr::V6(_) => &self.v6,
        }
    }

    /// The longest configured network holding `client` (only networks no
    /// longer than what the client's prefix tells).
    pub fn lookup(&self, client: &Client) -> Option<(usize, IpNet)> {
        let addr = bits(client.addr);
        self.table(client.addr)
            .iter()
            .filter(|(len, _)| *len <= client.prefix)
            .find_map(|(len, nets)| {
                let key = mask(addr, *len, client.addr);
                nets.get(&key)
                    .map(|&site| (site, net_of(client.addr, key, *len)))
            })
    }

    /// The ECS scope for an answer that depends on the client's network
    /// from `base` bits on: the shortest prefix, at least `base`, whose
    /// network around the client holds no longer configured network (whose
    /// clients may get another answer).
    pub fn scope(&self, client: &Client, base: u8) -> u8 {
        let addr = bits(client.addr);
        let table = self.table(client.addr);
        let max = max_prefix(client.addr);
        let mut scope = base;
        loop {
            let lo = mask(addr, scope, client.addr);
            let hi = lo | host_bits(scope, client.addr);
            let nested = table
                .iter()
                .filter(|(len, _)| *len > scope)
                .any(|(_, nets)| nets.range(lo..=hi).next().is_some());
            if !nested {
                return scope;
            }
            match table
                .iter()
                .map(|(len, _)| *len)
                .filter(|l| *l > scope)
                .min()
            {
                Some(next) => scope = next,
                None => return max,
            }
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn host_bits(len: u8, family: IpAddr) -> u128 {
    let width = max_prefix(family) as u32;
    let len = (len as u32).min(width);
    if len == width {
        0
    } else {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        all >> len
    }
}

fn mask(addr: u128, len: u8, family: IpAddr) -> u128 {
    addr & !host_bits(len, family)
        & if matches!(family, IpAddr::V4(_)) {
            u32::MAX as u128
        } else {
            u128::MAX
        }
}

fn net_of(family: IpAddr, key: u128, len: u8) -> IpNet {
    let addr = match family {
        IpAddr::V4(_) => IpAddr::V4((key as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(key.into()),
    };
    IpNet::new(addr, len).unwrap_or_else(|_| IpNet::from(addr))
}

/// The network consistent hashing keys on: /24 (IPv4) or /56 (IPv6), or
/// the client's prefix when shorter.
fn hash_key(client: &Client) -> IpNet {
    let len = match client.addr {
        IpAddr::V4(_) => 24,
        IpAddr::V6(_) => 56,
    }
    .min(client.prefix);
    net_of(client.addr, mask(bits(client.addr), len, client.addr), len)
}

/// SplitMix64: a fast, well-mixed 64-bit hash step.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn hash_str(s: &str) -> u64 {
    // FNV-1a, then mixed: stable across runs and builds.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

impl Service {
    /// Build from one validated `gslb_services` entry; `None` if it refers to
    /// nothing that resolves.
    pub fn from_config(config: &Config, sites: &Sites, s: &model::GslbService) -> Option<Service> {
        let fqdn = model::normalize_name(&s.fqdn)?;
        let members = s
            .members
            .iter()
            .filter_map(|m| {
                let (addr, port) = match (&m.vs, m.address) {
                    (Some(vs), _) => {
                        let vs = config.virtual_service(vs)?;
                        (vs.vip, m.port.unwrap_or(vs.port))
                    }
                    (None, Some(addr)) => (addr, m.port.unwrap_or(80)),
                    (None, None) => return None,
                };
                let label = m.label();
                Some(Member {
                    salt: hash_str(&label),
                    label,
                    vs: m.vs.clone(),
                    addr,
                    probe_port: port,
                    site: m
                        .site
                        .as_ref()
                        .and_then(|n| sites.names.iter().position(|s| s == n)),
                    weight: m.weight.max(1),
                    priority: m.priority,
                })
            })
            .take(GSLB_MEMBERS_MAX)
            .collect();
        let max_answers = match (s.max_answers, s.policy) {
            (0, GslbPolicy::Weighted | GslbPolicy::ConsistentHash) => 1,
            (0, _) => GSLB_MEMBERS_MAX,
            (n, _) => n as usize,
        };
        Some(Service {
            fqdn,
            policy: s.policy,
            ttl_secs: s.ttl_secs,
            unhealthy_ttl_secs: s.unhealthy_ttl_secs.min(s.ttl_secs),
            max_answers,
            all_down: s.when_all_down,
            fallback: s.fallback_addresses.clone(),
            members,
            health: s.health.clone(),
        })
    }

    /// Whether any member (or fallback address) has an address of `family`.
    pub fn has_family(&self, family: Family) -> bool {
        self.members.iter().any(|m| family.holds(m.addr))
    }
}

/// Decide the answer of `service` for `client` and `family`, `seq` being
/// the query's sequence number (round robin's turn, weighted's draw).
pub fn decide(
    service: &Service,
    health: &ServiceHealth,
    sites: &Sites,
    client: &Client,
    family: Family,
    seq: u64,
) -> Choice {
    let of_family = |i: &usize| family.holds(service.members[*i].addr);
    let usable = |i: &usize| health.of(*i).state.usable();
    let n = service.members.len();
    if !(0..n).any(|i| of_family(&i)) {
        let all_down = !(0..n).any(|i| usable(&i));
        let fallback = service.fallback.iter().any(|a| family.holds(*a));
        if all_down && fallback && service.all_down == GslbAllDown::Fallback {
            // The fallback set stands in for the whole service, both families.
            return all_down_choice(service, health, family, seq);
        }
        let mut choice = Choice::new(Rule::NoMemberOfFamily);
        choice.outcome = Outcome::Nodata;
        choice.ttl_secs = service.ttl_secs;
        return choice;
    }
    // TTL: short while any member is down or settling.
    let unsettled = (0..n).any(|i| {
        let h = health.of(i);
        h.state == State::Down || h.settling
    });
    let ttl_secs = if unsettled {
        service.unhealthy_ttl_secs
    } else {
        service.ttl_secs
    };
    let healthy = (0..n).filter(of_family).filter(usable).count();
    if healthy == 0 {
        return all_down_choice(service, health, family, seq);
    }
    let mut choice = match service.policy {
        GslbPolicy::RoundRobin => {
            let mut c = Choice::new(Rule::RoundRobin { healthy });
            rotate(
                &mut c,
                service,
                (0..n).filter(of_family).filter(usable),
                healthy,
                seq,
                service.max_answers,
            );
            c
        }
        GslbPolicy::Weighted => {
            let eligible = || (0..n).filter(of_family).filter(usable);
            let total_weight = eligible().map(|i| service.members[i].weight).sum();
            let mut c = Choice::new(Rule::Weighted {
                healthy,
                total_weight,
            });
            weighted(&mut c, service, eligible, seq, service.max_answers);
            c
        }
        GslbPolicy::Priority => {
            let best = (0..n)
                .filter(of_family)
                .filter(usable)
                .map(|i| service.members[i].priority)
                .min()
                .unwrap_or(0);
            let eligible = || {
                (0..n)
                    .filter(of_family)
                    .filter(usable)
                    .filter(move |i| service.members[*i].priority == best)
            };
            let mut c = Choice::new(Rule::Priority {
                priority: best,
                healthy: eligible().count(),
            });
            weighted(&mut c, service, eligible, seq, service.max_answers);
            c
        }
        GslbPolicy::Topology => topology(service, health, sites, client, family, seq),
        GslbPolicy::ConsistentHash => {
            let key = hash_key(client);
            let mut c = Choice::new(Rule::ConsistentHash { key, healthy });
            rendezvous(
                &mut c,
                service,
                (0..n).filter(of_family).filter(usable),
                key,
                service.max_answers,
            );
            if client.ecs {
                c.scope = key.prefix_len();
            }
            c
        }
    };
    choice.ttl_secs = ttl_secs;
    choice
}

/// `take` members of `eligible` (of which there are `count`), starting at
/// turn `seq`.
fn rotate(
    choice: &mut Choice,
    service: &Service,
    eligible: impl Iterator<Item = usize> + Clone,
    count: usize,
    seq: u64,
    take: usize,
) {
    if count == 0 {
        return;
    }
    let start = (seq % count as u64) as usize;
    for m in eligible.clone().skip(start).chain(eligible.take(start)) {
        if choice.len >= take {
            break;
        }
        choice.push(service, m);
    }
}

/// A weighted draw for the first address, then the next members in order.
fn weighted<I: Iterator<Item = usize> + Clone>(
    choice: &mut Choice,
    service: &Service,
    eligible: impl Fn() -> I,
    seq: u64,
    take: usize,
) {
    let total: u64 = eligible().map(|i| service.members[i].weight as u64).sum();
    if total == 0 {
        return;
    }
    let mut draw = mix(seq) % total;
    let count = eligible().count();
    let mut first = 0;
    for (k, i) in eligible().enumerate() {
        let w = service.members[i].weight as u64;
        if draw < w {
            first = k;
            break;
        }
        draw -= w;
    }
    let all = eligible();
    for m in all.clone().skip(first).chain(all.take(first)) {
        if choice.len >= take.min(count) {
            break;
        }
        choice.push(service, m);
    }
}

/// Weighted rendezvous hashing: each member scores `-weight / ln(u)` with
/// `u` from hash(key, member); the highest scores win.
fn rendezvous(
    choice: &mut Choice,
    service: &Service,
    eligible: impl Iterator<Item = usize>,
    key: IpNet,
    take: usize,
) {
    let key_hash = mix(bits(key.network()) as u64
        ^ (bits(key.network()) >> 64) as u64
        ^ key.prefix_len() as u64);
    let mut scored: [(f64, u16); GSLB_MEMBERS_MAX] = [(0.0, 0); GSLB_MEMBERS_MAX];
    let mut len = 0;
    for i in eligible {
        let m = &service.members[i];
        let h = mix(key_hash ^ m.salt);
        // In (0, 1): never 0 or 1, so ln is finite and negative.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        scored[len] = (-(m.weight as f64) / u.ln(), i as u16);
        len += 1;
    }
    let scored = &mut scored[..len];
    scored.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in scored.iter() {
        if choice.len >= take {
            break;
        }
        choice.push(service, *i as usize);
    }
}

fn topology(
    service: &Service,
    health: &ServiceHealth,
    sites: &Sites,
    client: &Client,
    family: Family,
    seq: u64,
) -> Choice {
    let n = service.members.len();
    let eligible_in = move |site: usize| {
        (0..n).filter(move |i| {
            let m = &service.members[*i];
            m.site == Some(site) && family.holds(m.addr) && health.of(*i).state.usable()
        })
    };
    let matched = sites.lookup(client);
    let mut choice = match matched {
        Some((site, subnet)) => {
            let here = eligible_in(site).count();
            if here > 0 {
                let mut c = Choice::new(Rule::TopologySite { site, subnet });
                rotate(
                    &mut c,
                    service,
                    eligible_in(site),
                    here,
                    seq,
                    service.max_answers,
                );
                c
            } else if let Some((to, count)) = sites
                .fallback
                .get(site)
                .into_iter()
                .flatten()
                .map(|&to| (to, eligible_in(to).count()))
                .find(|(_, count)| *count > 0)
            {
                let mut c = Choice::new(Rule::TopologyFallback { site, subnet, to });
                rotate(
                    &mut c,
                    service,
                    eligible_in(to),
                    count,
                    seq,
                    service.max_answers,
                );
                c
            } else {
                any_healthy(service, health, family, seq, Some(site))
            }
        }
        None => any_healthy(service, health, family, seq, None),
    };
    if client.ecs {
        let base = matched.map_or(client.prefix, |(_, subnet)| subnet.prefix_len());
        choice.scope = sites.scope(client, base);
    }
    choice
}

fn any_healthy(
    service: &Service,
    health: &ServiceHealth,
    family: Family,
    seq: u64,
    site: Option<usize>,
) -> Choice {
    let n = service.members.len();
    let eligible =
        (0..n).filter(|i| family.holds(service.members[*i].addr) && health.of(*i).state.usable());
    let mut c = Choice::new(Rule::TopologyAny { site });
    let count = eligible.clone().count();
    rotate(&mut c, service, eligible, count, seq, service.max_answers);
    c
}

fn all_down_choice(service: &Service, health: &ServiceHealth, family: Family, seq: u64) -> Choice {
    let mut c = Choice::new(Rule::AllDown(service.all_down));
    c.ttl_secs = service.unhealthy_ttl_secs;
    let n = service.members.len();
    let of_family = |i: &usize| family.holds(service.members[*i].addr);
    match service.all_down {
        GslbAllDown::LastKnownGood => {
            let good = || (0..n).filter(of_family).filter(|i| health.of(*i).last_good);
            let count = good().count();
            if count > 0 {
                rotate(&mut c, service, good(), count, seq, service.max_answers);
            } else {
                let all = (0..n).filter(of_family);
                let count = all.clone().count();
                rotate(&mut c, service, all, count, seq, service.max_answers);
            }
        }
        GslbAllDown::Fallback => c.outcome = Outcome::Fallback,
        GslbAllDown::Servfail => c.outcome = Outcome::Servfail,
        GslbAllDown::Nodata => c.outcome = Outcome::Nodata,
    }
    // Nothing about the answer depends on the client.
    c.scope = 0;
    c
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::NoMemberOfFamily => write!(f, "no member has an address of this type"),
            Rule::RoundRobin { healthy } => write!(f, "round robin over {healthy} healthy members"),
            Rule::Weighted { healthy, total_weight } => {
                write!(f, "weighted draw over {healthy} healthy members (total weight {total_weight})")
            }
            Rule::Priority { priority, healthy } => write!(
                f,
                "priority {priority} is the lowest with a healthy member ({healthy} there, weighted draw)"
            ),
            Rule::TopologySite { subnet, .. } => write!(f, "topology: the client is in {subnet}, its site has a healthy member"),
            Rule::TopologyFallback { subnet, .. } => {
                write!(f, "topology: the client is in {subnet}, its site is down; first fallback site with a healthy member")
            }
            Rule::TopologyAny { site: Some(_) } => {
                write!(f, "topology: the client's site and its fallbacks are down; any healthy member")
            }
            Rule::TopologyAny { site: None } => write!(f, "topology: the client is in no site's networks; any healthy member"),
            Rule::ConsistentHash { key, healthy } => {
                write!(f, "consistent hash of the client network {key} over {healthy} healthy members")
            }
            Rule::AllDown(GslbAllDown::LastKnownGood) => {
                write!(f, "every member is down: the members healthy last (when_all_down = last_known_good)")
            }
            Rule::AllDown(GslbAllDown::Fallback) => write!(f, "every member is down: fallback_addresses"),
            Rule::AllDown(GslbAllDown::Servfail) => write!(f, "every member is down: SERVFAIL"),
            Rule::AllDown(GslbAllDown::Nodata) => write!(f, "every member is down: NODATA"),
        }
    }
}

impl Rule {
    /// Every kind of rule, as counted in metrics.
    pub const KINDS: [&'static str; 12] = [
        "no_member_of_family",
        "round_robin",
        "weighted",
        "priority",
        "topology_site",
        "topology_fallback",
        "topology_any",
        "consistent_hash",
        "all_down_last_known_good",
        "all_down_fallback",
        "all_down_servfail",
        "all_down_nodata",
    ];

    /// Its index in [`KINDS`](Self::KINDS).
    pub fn kind(&self) -> usize {
        match self {
            Rule::NoMemberOfFamily => 0,
            Rule::RoundRobin { .. } => 1,
            Rule::Weighted { .. } => 2,
            Rule::Priority { .. } => 3,
            Rule::TopologySite { .. } => 4,
            Rule::TopologyFallback { .. } => 5,
            Rule::TopologyAny { .. } => 6,
            Rule::ConsistentHash { .. } => 7,
            Rule::AllDown(GslbAllDown::LastKnownGood) => 8,
            Rule::AllDown(GslbAllDown::Fallback) => 9,
            Rule::AllDown(GslbAllDown::Servfail) => 10,
            Rule::AllDown(GslbAllDown::Nodata) => 11,
        }
    }
}
