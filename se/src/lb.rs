//! Load-balancing selection over an immutable server set.
//!
//! A [`ServerSet`] is built once per config version and swapped whole on
//! change (never mutated under traffic); only atomics move under it: the pick
//! cursor and, per server, the health flag and the in-flight count. Those
//! per-server values live in a [`ServerState`] that the data plane keeps by
//! pool and address, so a server that stays across a config change keeps its
//! health and in-flight count.
//!
//! A pick considers only eligible servers: admin state `enabled`, up, and
//! not ejected by outlier detection ([`crate::outlier`]). It returns a
//! [`Picked`] guard that counts the request as in flight until it
//! is dropped (least connections and power of two choices read that count).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fabric::model::{AdminState, Algorithm, Server, MAX_POOL_SERVERS, MAX_SERVER_WEIGHT};
use fabric::stats::{AtomicHistogram, ServerStats};
use http::{HeaderMap, HeaderName};

use crate::health::{HealthChange, HealthEvents, HealthMachine};
use crate::outlier::{Outcome, OutlierMachine, PoolOutliers};

/// Ring points per unit of weight for consistent hashing (ketama uses 160).
pub const RING_POINTS_PER_WEIGHT: usize = 160;
/// Most points on one hash ring; weights are scaled down to fit.
pub const MAX_RING_POINTS: usize = 1 << 18;
/// Most steps spent computing a smooth weighted round-robin schedule
/// (schedule length times servers); weights are scaled down to fit.
pub const MAX_SCHEDULE_WORK: usize = 1 << 22;
/// Random draws power of two choices makes before scanning instead.
const P2C_DRAWS: usize = 16;

/// What the selection knows of one server beyond config: shared by every
/// config version that lists the server.
#[derive(Debug)]
pub struct ServerState {
    pool: Arc<str>,
    addr: SocketAddr,
    up: AtomicBool,
    in_flight: AtomicUsize,
    /// Set while an up server has failures counted since its last success,
    /// so successful requests take the lock only when there is a count to reset.
    suspect: AtomicBool,
    /// Present while the pool has a health monitor.
    health: Mutex<Option<HealthMachine>>,
    /// Set while the server is ejected (until seen to return), so picks of
    /// servers that are not take no lock and read no clock.
    ejected: AtomicBool,
    /// Set while the outlier machine counts failures, so successes take the
    /// lock only when there is a count to reset.
    outlier_streak: AtomicBool,
    /// Present while the pool has outlier detection.
    outlier: Mutex<Option<Outlier>>,
    events: Option<Arc<HealthEvents>>,
    /// Requests (or connections, or flows) picked for it, ever.
    requests: AtomicU64,
    /// Failures counted against it, ever.
    failures: AtomicU64,
    /// Time to its response heads (or connects).
    latency: AtomicHistogram,
}

impl ServerState {
    /// A server of `pool` at `addr`, up and unmonitored; changes are pushed
    /// to `events` if given.
    pub fn new(pool: &str, addr: SocketAddr, events: Option<Arc<HealthEvents>>) -> Self {
        Self {
            pool: pool.into(),
            addr,
            up: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            suspect: AtomicBool::new(false),
            health: Mutex::new(None),
            ejected: AtomicBool::new(false),
            outlier_streak: AtomicBool::new(false),
            outlier: Mutex::new(None),
            events,
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency: AtomicHistogram::default(),
        }
    }

    /// Count how long a request took to get its response head (or a
    /// connection to open).
    pub fn record_latency(&self, d: std::time::Duration) {
        self.latency.record(d);
    }

    /// Its counters now, for a stats report.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            addr: self.addr,
            up: self.is_up(),
            ejected: self.is_ejected(),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            in_flight: self.in_flight() as u64,
            latency: self.latency.snapshot(),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it counts as up.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Requests picked for it and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether a health monitor decides its state.
    pub fn is_monitored(&self) -> bool {
        lock(&self.health).is_some()
    }

    /// Start monitoring with `rise`/`fall`, or change them; the current state stays.
    pub fn monitor(&self, rise: u32, fall: u32) {
        let mut health = lock(&self.health);
        match health.as_mut() {
            Some(m) => m.set_thresholds(rise, fall),
            None => *health = Some(HealthMachine::new(self.is_up(), rise, fall)),
        }
        self.suspect.store(false, Ordering::Relaxed);
    }

    /// Stop monitoring: the server counts as up from now on.
    pub fn unmonitor(&self, reason: &str) {
        let was_monitored = lock(&self.health).take().is_some();
        self.suspect.store(false, Ordering::Relaxed);
        if was_monitored && !self.up.swap(true, Ordering::Relaxed) {
            self.report(true, reason);
        }
    }

    /// Outcome of an active check.
    pub fn on_check(&self, result: Result<(), &str>) {
        match result {
            Ok(()) => self.step(true, "check passed"),
            Err(reason) => self.step(false, &format!("check failed: {reason}")),
        }
    }

    /// A request to the server failed to connect, was reset or timed out:
    /// counts toward `fall` like a failed check (passive monitoring), and as
    /// a gateway failure for outlier detection.
    pub fn on_request_failed(&self, reason: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.step(false, &format!("request failed: {reason}"));
        self.on_outcome(Outcome::Failed, reason);
    }

    /// A request to the server got a response, or a connection opened:
    /// resets the failure counts. Never brings a down server up (only
    /// active checks do).
    pub fn on_request_succeeded(&self) {
        if self.suspect.load(Ordering::Relaxed) && self.is_up() {
            self.step(true, "request succeeded");
        }
        if self.outlier_streak.load(Ordering::Relaxed) {
            self.on_outcome(Outcome::Success, "");
        }
    }

    /// A response head with `status` arrived: a success for the health
    /// monitor whatever the status, judged by status for outlier detection.
    pub fn on_response_status(&self, status: u16) {
        if self.suspect.load(Ordering::Relaxed) && self.is_up() {
            self.step(true, "request succeeded");
        }
        if status >= 500 || self.outlier_streak.load(Ordering::Relaxed) {
            self.on_outcome(Outcome::Status(status), &format!("status {status}"));
        }
    }

    /// Whether outlier detection has the server ejected now. An ejection
    /// whose time has passed ends here (and is reported), so a server
    /// returns at its next pick or stats report.
    pub fn is_ejected(&self) -> bool {
        if !self.ejected.load(Ordering::Relaxed) {
            return false;
        }
        let now = fabric::rt::now();
        let returned = {
            let mut outlier = lock(&self.outlier);
            let Some(o) = outlier.as_mut() else {
                self.ejected.store(false, Ordering::Relaxed);
                return false;
            };
            if !o.machine.on_time(now) {
                return true;
            }
            o.pool.on_return(self.addr);
            self.ejected.store(false, Ordering::Relaxed);
            o.length
        };
        self.report_outlier(
            true,
            &format!("ejection of {} ms ended", returned.as_millis()),
        );
        false
    }

    /// Whether a pick may choose it, admin state aside: up and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_up() && !self.is_ejected()
    }

    /// Detect outliers with the pool's shared `outliers`, or stop (`None`:
    /// an ejected server returns at once). Counts and ejections stay while
    /// the pool keeps outlier detection.
    pub fn set_outliers(&self, outliers: Option<Arc<PoolOutliers>>) {
        let ended = {
            let mut outlier = lock(&self.outlier);
            match (outlier.as_mut(), outliers) {
                (Some(o), Some(pool)) => {
                    o.pool = pool;
                    false
                }
                (None, Some(pool)) => {
                    *outlier = Some(Outlier {
                        machine: OutlierMachine::default(),
                        pool,
                        length: std::time::Duration::ZERO,
                    });
                    false
                }
                (Some(o), None) => {
                    let ended = o.machine.end(fabric::rt::now());
                    o.pool.on_return(self.addr);
                    *outlier = None;
                    self.ejected.store(false, Ordering::Relaxed);
                    self.outlier_streak.store(false, Ordering::Relaxed);
                    ended
                }
                (None, None) => false,
            }
        };
        if ended {
            self.report_outlier(true, "outlier detection turned off");
        }
    }

    fn on_outcome(&self, outcome: Outcome, what: &str) {
        if self.is_ejected() {
            // Requests picked before the ejection: not counted.
            return;
        }
        let ejected = {
            let mut outlier = lock(&self.outlier);
            let Some(o) = outlier.as_mut() else {
                return;
            };
            let settings = o.pool.settings();
            let trip = o.machine.on_outcome(outcome, &settings);
            let ejected = trip.and_then(|trip| {
                let length = o.pool.try_eject(self.addr, &mut o.machine, fabric::rt::now());
                if length.is_none() {
                    tracing::debug!(pool = %self.pool, server = %self.addr, %trip, "not ejected: max_ejected_percent reached");
                }
                length.map(|length| (trip, length))
            });
            self.outlier_streak
                .store(o.machine.has_streak(), Ordering::Relaxed);
            if let Some((_, length)) = ejected {
                o.length = length;
                self.ejected.store(true, Ordering::Relaxed);
            }
            ejected
        };
        if let Some((trip, length)) = ejected {
            self.report_outlier(
                false,
                &format!(
                    "ejected for {} ms: {trip} (last: {what})",
                    length.as_millis()
                ),
            );
        }
    }

    fn report_outlier(&self, returned: bool, reason: &str) {
        if let Some(events) = &self.events {
            events.push(HealthChange {
                pool: self.pool.to_string(),
                server: self.addr,
                up: returned,
                reason: fabric::proto::truncate(reason, fabric::proto::MAX_REASON_BYTES).into(),
                outlier: true,
            });
        }
    }

    fn step(&self, success: bool, reason: &str) {
        let change = {
            let mut health = lock(&self.health);
            let Some(machine) = health.as_mut() else {
                return;
            };
            let change = if success {
                machine.on_success()
            } else {
                machine.on_failure()
            };
            self.suspect
                .store(machine.is_up() && machine.failures() > 0, Ordering::Relaxed);
            if let Some(up) = change {
                self.up.store(up, Ordering::Relaxed);
            }
            change
        };
        if let Some(up) = change {
            self.report(up, reason);
        }
    }

    fn report(&self, up: bool, reason: &str) {
        if let Some(events) = &self.events {
            events.push(HealthChange {
                pool: self.pool.to_string(),
                server: self.addr,
                up,
                reason: fabric::proto::truncate(reason, fabric::proto::MAX_REASON_BYTES).into(),
                outlier: false,
            });
        }
    }
}

/// A server's outlier detection: its machine and its pool's shared part.
#[derive(Debug)]
struct Outlier {
    machine: OutlierMachine,
    pool: Arc<PoolOutliers>,
    /// Length of the current (or last) ejection, for the return's report.
    length: std::time::Duration,
}

/// A picked server: the request counts as in flight on it until this drops.
#[derive(Debug)]
pub struct Picked {
    state: Arc<ServerState>,
}

impl Picked {
    fn new(state: &Arc<ServerState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        Self {
            state: state.clone(),
        }
    }

    /// Where to send the request.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// The server's shared state (for passive health reports).
    pub fn state(&self) -> &ServerState {
        &self.state
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        let before = self.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "in-flight count underflow");
    }
}

/// What one pick may depend on.
#[derive(Debug, Clone, Copy)]
pub struct PickContext<'a> {
    /// The client's address (consistent hashing's default key).
    pub client: IpAddr,
    /// The request's headers (consistent hashing on a header).
    pub headers: Option<&'a HeaderMap>,
    /// The value of the set's [`hash_header`](ServerSet::hash_header) when
    /// the caller looked it up itself (it wins over `headers`).
    pub header_value: Option<&'a [u8]>,
    /// Randomness for power of two choices, from the world's generator.
    pub random: u64,
}

impl<'a> PickContext<'a> {
    /// A context with only a client address (no headers, no randomness).
    pub fn client(client: IpAddr) -> Self {
        Self {
            client,
            headers: None,
            header_value: None,
            random: 0,
        }
    }
}

#[derive(Debug)]
struct Backend {
    state: Arc<ServerState>,
    weight: u32,
    admin: AdminState,
}

/// The servers of one pool, at one config version, with their selection state.
#[derive(Debug)]
pub struct ServerSet {
    algorithm: Algorithm,
    hash_header: Option<HeaderName>,
    backends: Vec<Backend>,
    cursor: AtomicUsize,
    /// Weighted round robin: backend indices in smooth order, one period.
    schedule: Vec<u16>,
    /// Consistent hash: (point, backend index), sorted.
    ring: Vec<(u64, u16)>,
}

impl ServerSet {
    /// A set over `servers`, each with its shared state. Bad input never
    /// panics: weights are clamped to 1..=[`MAX_SERVER_WEIGHT`], servers past
    /// [`MAX_POOL_SERVERS`] are ignored, an invalid `hash_header` hashes on
    /// the client IP, and an empty set picks nothing.
    pub fn new(
        algorithm: Algorithm,
        hash_header: Option<&str>,
        servers: impl IntoIterator<Item = (Server, Arc<ServerState>)>,
    ) -> Self {
        let backends: Vec<Backend> = servers
            .into_iter()
            .take(MAX_POOL_SERVERS)
            .map(|(server, state)| Backend {
                state,
                weight: server.weight.clamp(1, MAX_SERVER_WEIGHT),
                admin: server.admin_state,
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let schedule = match algorithm {
            Algorithm::WeightedRoundRobin => smooth_schedule(&weights),
            _ => Vec::new(),
        };
        let ring = match algorithm {
            Algorithm::ConsistentHash => {
                let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.state.addr).collect();
                build_ring(&addrs, &weights)
            }
            _ => Vec::new(),
        };
        Self {
            algorithm,
            hash_header: hash_header.and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            backends,
            cursor: AtomicUsize::new(0),
            schedule,
            ring,
        }
    }

    /// A set over `addrs` with weight 1, enabled, each with a fresh state of
    /// its own (pool `-`): for tests and tools.
    pub fn standalone(algorithm: Algorithm, addrs: &[SocketAddr]) -> Self {
        Self::new(
            algorithm,
            None,
            addrs
                .iter()
                .map(|a| (Server::from(*a), Arc::new(ServerState::new("-", *a, None)))),
        )
    }

    /// The header consistent hashing keys on, if any.
    pub fn hash_header(&self) -> Option<&HeaderName> {
        self.hash_header.as_ref()
    }

    /// [`ServerSet::pick`] for a request from `client` with these headers
    /// (or the hash header's value, looked up already). Only power of two
    /// choices draws randomness: other algorithms leave the world's
    /// generator (and so a simulation's other random choices) untouched.
    pub fn pick_for(
        &self,
        client: IpAddr,
        headers: Option<&HeaderMap>,
        header_value: Option<&[u8]>,
        exclude: &[SocketAddr],
    ) -> Option<Picked> {
        let draws = self.algorithm() == Algorithm::PowerOfTwoChoices;
        let ctx = PickContext {
            client,
            headers,
            header_value,
            random: if draws { fabric::rt::random_u64() } else { 0 },
        };
        self.pick(&ctx, exclude)
    }

    /// The next server for a request, skipping those in `exclude` (tried
    /// already); `None` if no server is eligible.
    pub fn pick(&self, ctx: &PickContext<'_>, exclude: &[SocketAddr]) -> Option<Picked> {
        let eligible = |i: usize| {
            let b = &self.backends[i];
            b.admin == AdminState::Enabled
                && !exclude.contains(&b.state.addr)
                && b.state.is_available()
        };
        let n = self.backends.len();
        if n == 0 {
            return None;
        }
        let index = match self.algorithm {
            Algorithm::RoundRobin => self.rotate(n, eligible),
            Algorithm::WeightedRoundRobin => {
                if !(0..n).any(eligible) {
                    return None;
                }
                let schedule = &self.schedule;
                self.rotate(schedule.len(), |i| eligible(usize::from(schedule[i])))
                    .map(|i| usize::from(schedule[i]))
            }
            Algorithm::LeastConnections => self.least_loaded(eligible),
            Algorithm::PowerOfTwoChoices => self.two_choices(ctx.random, eligible),
            Algorithm::ConsistentHash => {
                if !(0..n).any(eligible) {
                    return None;
                }
                self.on_ring(self.hash_key(ctx), eligible)
            }
        }?;
        Some(Picked::new(&self.backends[index].state))
    }

    /// Next index in rotation that is eligible; every concurrent pick moves
    /// the cursor, so ineligible entries' turns are skipped, not inherited
    /// by their successors.
    fn rotate(&self, len: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..len {
            let i = self.cursor.fetch_add(1, Ordering::Relaxed) % len;
            if eligible(i) {
                return Some(i);
            }
        }
        // Concurrent picks may have taken our turns: any eligible one will do.
        (0..len).find(|&i| eligible(i))
    }

    /// The eligible server with the fewest requests in flight per unit of
    /// weight, counting the one about to start (as HAProxy's leastconn);
    /// ties go round robin.
    fn least_loaded(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.backends.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if eligible(i) && best.is_none_or(|b| self.less_loaded(i, b)) {
                best = Some(i);
            }
        }
        best
    }

    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let load = |i: usize| {
            let backend = &self.backends[i];
            (
                backend.state.in_flight() as u64 + 1,
                u64::from(backend.weight),
            )
        };
        let ((fa, wa), (fb, wb)) = (load(a), load(b));
        fa * wb < fb * wa
    }

    /// Two distinct eligible servers drawn at random; the less loaded one.
    fn two_choices(&self, random: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.backends.len() as u64;
        let mut rng = SplitMix64(random);
        let mut draw = |other: Option<usize>| {
            (0..P2C_DRAWS)
                .map(|_| (rng.next() % n) as usize)
                .find(|&i| Some(i) != other && eligible(i))
        };
        match draw(None) {
            Some(a) => match draw(Some(a)) {
                Some(b) => Some(if self.less_loaded(b, a) { b } else { a }),
                None => self.least_loaded(&eligible),
            },
            // Few eligible servers: scanning finds them (or that there are none).
            None => self.least_loaded(&eligible),
        }
    }

    fn hash_key(&self, ctx: &PickContext<'_>) -> u64 {
        let from_header = self
            .hash_header
            .as_ref()
            .and_then(|name| {
                ctx.header_value
                    .or_else(|| Some(ctx.headers?.get(name)?.as_bytes()))
            })
            .and_then(hash_input);
        match from_header {
            Some(input) => hash64(input, 0),
            None => hash_ip(ctx.client),
        }
    }

    /// The first eligible server at or after `key` on the ring: a server that
    /// is not eligible hands its keys to the points that follow its own,
    /// and no other key moves.
    fn on_ring(&self, key: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(point, _)| point < key);
        (0..len)
            .map(|k| usize::from(self.ring[(start + k) % len].1))
            .find(|&i| eligible(i))
    }

    /// The set's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The servers' addresses, in order.
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.backends.iter().map(|b| b.state.addr)
    }

    /// The shared state of the server at `addr`, if the set has it.
    pub fn state(&self, addr: SocketAddr) -> Option<&ServerState> {
        self.backends
            .iter()
            .find(|b| b.state.addr == addr)
            .map(|b| &*b.state)
    }

    /// Number of servers a pick may choose now.
    pub fn eligible(&self) -> usize {
        self.backends
            .iter()
            .filter(|b| b.admin == AdminState::Enabled && b.state.is_available())
            .count()
    }
}

/// The part of a header value that consistent hashing uses: up to the first
/// comma (the original client of an `X-Forwarded-For` list, say), without
/// surrounding spaces and tabs; `None` if that is empty.
pub fn hash_input(value: &[u8]) -> Option<&[u8]> {
    let first = value.split(|&b| b == b',').next().unwrap_or_default();
    let start = first.iter().position(|&b| b != b' ' && b != b'\t')?;
    let end = first.iter().rposition(|&b| b != b' ' && b != b'\t')?;
    Some(&first[start..=end])
}

fn hash_ip(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash64(&v4.octets(), 0),
        IpAddr::V6(v6) => hash64(&v6.octets(), 0),
    }
}

fn hash_addr(addr: SocketAddr, point: u64) -> u64 {
    let mut bytes = [0u8; 18];
    let ip = match addr.ip().to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    bytes[..16].copy_from_slice(&ip);
    bytes[16..].copy_from_slice(&addr.port().to_be_bytes());
    hash64(&bytes, point)
}

/// FNV-1a with murmur3's 64-bit finalizer: stable across builds, platforms
/// and processes (std's hasher promises none of that), so every SE maps a
/// key to the same server.
pub fn hash64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Ring points: [`RING_POINTS_PER_WEIGHT`] per unit of weight, each a hash of
/// the server's address and the point's number, so a server's points do not
/// depend on the other servers.
fn build_ring(addrs: &[SocketAddr], weights: &[u32]) -> Vec<(u64, u16)> {
    let total: usize = weights.iter().map(|&w| w as usize).sum();
    let per_weight = (MAX_RING_POINTS / total.max(1)).clamp(1, RING_POINTS_PER_WEIGHT);
    let mut ring: Vec<(u64, u16)> = Vec::with_capacity(total * per_weight);
    for (i, (&addr, &weight)) in addrs.iter().zip(weights).enumerate() {
        let Ok(index) = u16::try_from(i) else { break };
        for point in 0..weight as usize * per_weight {
            ring.push((hash_addr(addr, point as u64), index));
        }
    }
    ring.sort_unstable();
    ring
}

/// One period of nginx's smooth weighted round robin: each step adds every
/// weight to its server's current value, picks the largest (first on ties)
/// and takes the total off it. Weights are divided by their gcd, and scaled
/// down if the period would cost more than [`MAX_SCHEDULE_WORK`] steps.
fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    let n = weights.len().min(usize::from(u16::MAX));
    if n == 0 {
        return Vec::new();
    }
    let g = weights[..n].iter().fold(0, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<i64> = weights[..n]
        .iter()
        .map(|&x| i64::from(x.max(1) / g))
        .collect();
    let total: i64 = w.iter().sum();
    let budget = (MAX_SCHEDULE_WORK / n).max(1) as i64;
    if total > budget {
        for x in &mut w {
            *x = (*x * budget / total).max(1);
        }
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; n];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..n {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A tiny generator over a seed handed in (from `fabric::rt::random_u64`).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
