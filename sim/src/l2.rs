//! A simulated layer-2 segment: ARP caches, gratuitous ARP, VIP ownership.
//!
//! A madsim node has exactly one IP address, so a VIP that moves between
//! SEs cannot be a node address. Instead every host attached to a
//! [`Segment`] runs an ARP agent on a UDP port. An SE that claims a VIP
//! sends gratuitous ARP frames (datagrams) to every host; each host's agent
//! updates its [`ArpCache`]. A client resolving a VIP looks in its cache
//! and, on a miss or an expired entry, broadcasts who-has and waits for the
//! owner's is-at. Frames travel over the (simulated) network, so loss,
//! delay and partitions apply to them exactly as on a real segment.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fabric::platform::{L2Error, L2Fabric};
use fabric::rt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Most entries an ARP cache holds; the entry expiring first is evicted.
pub const MAX_ARP_ENTRIES: usize = 4096;

/// Settings of a segment.
#[derive(Debug, Clone)]
pub struct SegmentConfig {
    /// UDP port every host's ARP agent listens on.
    pub arp_port: u16,
    /// How long a learned entry stays valid.
    pub arp_ttl: Duration,
    /// Gratuitous ARP frames sent per claim.
    pub garp_count: u32,
    /// Gap between those frames.
    pub garp_interval: Duration,
    /// How long a who-has waits for an answer before asking again.
    pub resolve_timeout: Duration,
    /// Who-has attempts before resolving fails.
    pub resolve_attempts: u32,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        Self {
            arp_port: 2054,
            arp_ttl: Duration::from_secs(60),
            garp_count: 3,
            garp_interval: Duration::from_millis(100),
            resolve_timeout: Duration::from_millis(200),
            resolve_attempts: 3,
        }
    }
}

/// What travels on the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Gratuitous ARP: `owner` now answers for `vip`.
    Garp {
        /// The VIP.
        vip: IpAddr,
        /// The host that owns it.
        owner: IpAddr,
    },
    /// Who has `vip`? Tell `asker`.
    WhoHas {
        /// The VIP.
        vip: IpAddr,
        /// Where to answer.
        asker: IpAddr,
    },
    /// `owner` has `vip`.
    IsAt {
        /// The VIP.
        vip: IpAddr,
        /// The host that owns it.
        owner: IpAddr,
    },
}

/// A host's ARP cache: VIP -> owner, each entry valid until its deadline.
#[derive(Debug, Default, Clone)]
pub struct ArpCache {
    entries: BTreeMap<IpAddr, (IpAddr, Instant)>,
}

impl ArpCache {
    /// Learn that `owner` has `vip`, valid until `expires`.
    pub fn learn(&mut self, vip: IpAddr, owner: IpAddr, expires: Instant) {
        if !self.entries.contains_key(&vip) && self.entries.len() >= MAX_ARP_ENTRIES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(vip, (owner, expires));
    }

    /// The owner of `vip` if an entry is still valid at `now`.
    pub fn lookup(&self, vip: IpAddr, now: Instant) -> Option<IpAddr> {
        self.entries
            .get(&vip)
            .filter(|(_, t)| *t > now)
            .map(|(owner, _)| *owner)
    }

    /// Forget `vip`.
    pub fn forget(&mut self, vip: IpAddr) {
        self.entries.remove(&vip);
    }

    /// Number of entries, valid or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Counters of one host's segment port.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortStats {
    /// Gratuitous ARP frames sent.
    pub garp_sent: u64,
    /// Gratuitous ARP frames received.
    pub garp_received: u64,
    /// Who-has frames sent.
    pub who_has_sent: u64,
    /// VIPs given up to a newer claim by another host.
    pub yielded: u64,
}

/// The segment: the set of attached hosts (the switch's ports) and settings.
#[derive(Debug, Clone, Default)]
pub struct Segment {
    hosts: Arc<Mutex<BTreeSet<IpAddr>>>,
    config: SegmentConfig,
    /// While set, every gratuitous ARP frame is lost on the wire.
    garp_loss: Arc<std::sync::atomic::AtomicBool>,
}

impl Segment {
    /// An empty segment.
    pub fn new(config: SegmentConfig) -> Self {
        Self {
            hosts: Arc::default(),
            config,
            garp_loss: Arc::default(),
        }
    }

    /// The segment's settings.
    pub fn config(&self) -> &SegmentConfig {
        &self.config
    }

    /// Lose (`true`) or deliver again every gratuitous ARP frame (a fault:
    /// a switch dropping them, a neighbour ignoring them).
    pub fn set_garp_loss(&self, lost: bool) {
        self.garp_loss
            .store(lost, std::sync::atomic::Ordering::Relaxed);
    }

    /// Attach host `ip` (call it on that host: it binds the ARP port there
    /// and spawns the host's ARP agent, which dies with the host).
    pub async fn attach(&self, ip: IpAddr) -> io::Result<Arc<HostPort>> {
        let socket = rt::UdpSocket::bind(SocketAddr::new(ip, self.config.arp_port)).await?;
        lock(&self.hosts).insert(ip);
        let port = Arc::new(HostPort {
            ip,
            segment: self.clone(),
            socket: Arc::new(socket),
            cache: Mutex::default(),
            owned: Arc::default(),
            claims: Mutex::default(),
            learned: Notify::new(),
            stats: Arc::default(),
        });
        rt::spawn(port.clone().run_agent());
        Ok(port)
    }

    fn others(&self, me: IpAddr) -> Vec<IpAddr> {
        lock(&self.hosts)
            .iter()
            .copied()
            .filter(|h| *h != me)
            .collect()
    }
}

/// One host's attachment to the segment: its ARP agent, cache and VIPs.
#[derive(Debug)]
pub struct HostPort {
    ip: IpAddr,
    segment: Segment,
    socket: Arc<rt::UdpSocket>,
    cache: Mutex<ArpCache>,
    owned: Arc<Mutex<BTreeSet<IpAddr>>>,
    /// When each VIP was claimed, and the VIPs lost to a newer claim.
    claims: Mutex<Claims>,
    learned: Notify,
    stats: Arc<Mutex<PortStats>>,
}

#[derive(Debug, Default)]
struct Claims {
    since: BTreeMap<IpAddr, Instant>,
    lost: BTreeSet<IpAddr>,
}

/// What a GARP train needs, apart from the port: it runs as a task of its own.
#[derive(Debug, Clone)]
struct Announcer {
    ip: IpAddr,
    segment: Segment,
    socket: Arc<rt::UdpSocket>,
    owned: Arc<Mutex<BTreeSet<IpAddr>>>,
    stats: Arc<Mutex<PortStats>>,
}

impl Announcer {
    /// Frames `from..to` of a train, the interval apart (before each but
    /// the first of the train), while the VIP is still held.
    async fn train(self, vip: IpAddr, from: u32, to: u32) {
        let config = self.segment.config.clone();
        for i in from..to {
            if i > 0 {
                rt::sleep(config.garp_interval).await;
            }
            if !lock(&self.owned).contains(&vip) {
                return;
            }
            let frame = Frame::Garp {
                vip,
                owner: self.ip,
            };
            let bytes = serde_json::to_vec(&frame).expect("frames always serialize");
            lock(&self.stats).garp_sent += 1;
            if self
                .segment
                .garp_loss
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                continue;
            }
            for host in self.segment.others(self.ip) {
                let to = SocketAddr::new(host, config.arp_port);
                let _ = self.socket.send_to(&bytes, to).await;
            }
        }
    }
}

impl HostPort {
    /// This host's address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Counters so far.
    pub fn stats(&self) -> PortStats {
        *lock(&self.stats)
    }

    /// Drop this host's entry for `vip`: the next [`resolve`](Self::resolve)
    /// asks the segment. A client calls it when the cached owner stopped
    /// answering, as a kernel marks a neighbour failed after its probes
    /// (Linux: a few seconds with default sysctls; here at once).
    pub fn forget(&self, vip: IpAddr) {
        lock(&self.cache).forget(vip);
    }

    /// Whether this host holds `vip` now (answers ARP for it).
    pub fn holds(&self, vip: IpAddr) -> bool {
        lock(&self.owned).contains(&vip)
    }

    /// The owner of `vip` as this host's cache has it, without asking.
    pub fn cached_owner(&self, vip: IpAddr) -> Option<IpAddr> {
        if lock(&self.owned).contains(&vip) {
            return Some(self.ip);
        }
        lock(&self.cache).lookup(vip, rt::now())
    }

    /// Which host answers for `vip`: from the cache, else by asking the segment.
    pub async fn resolve(&self, vip: IpAddr) -> Option<IpAddr> {
        for _ in 0..self.segment.config.resolve_attempts {
            if let Some(owner) = self.cached_owner(vip) {
                return Some(owner);
            }
            let notified = self.learned.notified();
            self.broadcast(Frame::WhoHas {
                vip,
                asker: self.ip,
            })
            .await;
            lock(&self.stats).who_has_sent += 1;
            let _ = rt::timeout(self.segment.config.resolve_timeout, notified).await;
        }
        self.cached_owner(vip)
    }

    async fn send(&self, frame: Frame, to: IpAddr) {
        let bytes = serde_json::to_vec(&frame).expect("frames always serialize");
        let _ = self
            .socket
            .send_to(&bytes, SocketAddr::new(to, self.segment.config.arp_port))
            .await;
    }

    async fn broadcast(&self, frame: Frame) {
        for host in self.segment.others(self.ip) {
            self.send(frame, host).await;
        }
    }

    fn announcer(&self) -> Announcer {
        Announcer {
            ip: self.ip,
            segment: self.segment.clone(),
            socket: self.socket.clone(),
            owned: self.owned.clone(),
            stats: self.stats.clone(),
        }
    }

    /// A GARP train for `vip`: the first frame before returning, the rest
    /// from a task, as `NetlinkL2` does (a takeover is not slowed by the
    /// train's length).
    async fn send_garps(&self, vip: IpAddr) {
        let announcer = self.announcer();
        let count = self.segment.config.garp_count;
        announcer.clone().train(vip, 0, count.min(1)).await;
        if count > 1 {
            rt::spawn(announcer.train(vip, 1, count));
        }
    }

    async fn run_agent(self: Arc<Self>) {
        let mut buf = [0u8; 512];
        loop {
            let Ok((len, _from)) = self.socket.recv_from(&mut buf).await else {
                return;
            };
            // Anything that is not a frame is line noise on the segment.
            let Ok(frame) = serde_json::from_slice::<Frame>(&buf[..len]) else {
                continue;
            };
            self.on_frame(frame).await;
        }
    }

    /// How long after its claim a host ignores other hosts' announcements
    /// of the VIP (the tail of a train sent before it took over): twice its
    /// own train.
    fn claim_grace(&self) -> Duration {
        let c = &self.segment.config;
        c.garp_interval * c.garp_count.max(1) * 2
    }

    /// Another host announced `vip`: if this host holds it and its own
    /// claim is older than the grace, the newer claim wins and this host
    /// stops answering for it.
    fn on_other_claim(&self, vip: IpAddr, owner: IpAddr) {
        let now = rt::now();
        let mut claims = lock(&self.claims);
        let old = claims
            .since
            .get(&vip)
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.claim_grace());
        if old && lock(&self.owned).remove(&vip) {
            claims.lost.insert(vip);
            lock(&self.stats).yielded += 1;
            tracing::warn!(%vip, %owner, "another host announced the VIP: yielding it");
        }
    }

    async fn on_frame(&self, frame: Frame) {
        let expires = rt::now() + self.segment.config.arp_ttl;
        match frame {
            Frame::Garp { vip, owner } => {
                lock(&self.stats).garp_received += 1;
                if owner != self.ip {
                    self.on_other_claim(vip, owner);
                }
                lock(&self.cache).learn(vip, owner, expires);
                self.learned.notify_waiters();
            }
            Frame::IsAt { vip, owner } => {
                lock(&self.cache).learn(vip, owner, expires);
                self.learned.notify_waiters();
            }
            Frame::WhoHas { vip, asker } => {
                if lock(&self.owned).contains(&vip) {
                    self.send(
                        Frame::IsAt {
                            vip,
                            owner: self.ip,
                        },
                        asker,
                    )
                    .await;
                }
            }
        }
    }
}

#[async_trait]
impl L2Fabric for HostPort {
    async fn claim_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        {
            let mut claims = lock(&self.claims);
            claims.lost.remove(&vip);
            claims.since.insert(vip, rt::now());
        }
        lock(&self.owned).insert(vip);
        lock(&self.cache).forget(vip);
        self.send_garps(vip).await;
        Ok(())
    }

    async fn release_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        lock(&self.owned).remove(&vip);
        let mut claims = lock(&self.claims);
        claims.since.remove(&vip);
        claims.lost.remove(&vip);
        Ok(())
    }

    fn lost(&self, vip: IpAddr) -> bool {
        lock(&self.claims).lost.contains(&vip)
    }

    async fn announce(&self, vip: IpAddr) -> Result<(), L2Error> {
        self.send_garps(vip).await;
        Ok(())
    }

    fn bind_addr(&self, _vip: IpAddr) -> IpAddr {
        // The node has one address; traffic for the VIP arrives on it.
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }

    fn serves(&self, vip: IpAddr) -> bool {
        // As a kernel without the address: a client with a stale ARP entry
        // reaches this node, but nothing answers for the VIP.
        lock(&self.owned).contains(&vip)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_expire_and_are_bounded() {
        let t0 = rt::now();
        let vip: IpAddr = "10.0.100.1".parse().unwrap();
        let a: IpAddr = "10.0.1.1".parse().unwrap();
        let mut cache = ArpCache::default();
        cache.learn(vip, a, t0 + Duration::from_secs(60));
        assert_eq!(cache.lookup(vip, t0), Some(a));
        assert_eq!(cache.lookup(vip, t0 + Duration::from_secs(61)), None);
        for i in 0..(MAX_ARP_ENTRIES as u32 + 10) {
            cache.learn(
                IpAddr::V4(Ipv4Addr::from(i)),
                a,
                t0 + Duration::from_secs(u64::from(i)),
            );
        }
        assert_eq!(cache.len(), MAX_ARP_ENTRIES);
    }

    #[tokio::test]
    async fn garp_moves_a_vip_between_hosts_over_loopback() {
        let config = SegmentConfig {
            arp_port: 20_000 + (std::process::id() % 20_000) as u16,
            garp_interval: Duration::from_millis(5),
            ..SegmentConfig::default()
        };
        let segment = Segment::new(config);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let se1 = segment.attach(ip("127.0.3.1")).await.unwrap();
        let se2 = segment.attach(ip("127.0.3.2")).await.unwrap();
        let client = segment.attach(ip("127.0.3.9")).await.unwrap();
        let vip = ip("10.0.100.1");

        assert_eq!(client.resolve(vip).await, None, "nobody owns it yet");
        se1.claim_vip(vip).await.unwrap();
        assert_eq!(client.resolve(vip).await, Some(se1.ip()));

        // Takeover: se2 claims, its GARP moves the client's cache.
        se1.release_vip(vip).await.unwrap();
        se2.claim_vip(vip).await.unwrap();
        rt::sleep(Duration::from_millis(50)).await;
        assert_eq!(client.cached_owner(vip), Some(se2.ip()));
        assert_eq!(se2.stats().garp_sent, 3);
        assert!(client.stats().garp_received >= 4);
    }
}
