//! The real [`L2Fabric`] for a LAN segment on Linux: a claimed VIP is an
//! address on one interface (added and removed through rtnetlink), and its
//! move is announced with gratuitous ARP or unsolicited neighbour
//! advertisements sent through an AF_PACKET socket (frames from
//! [`super::garp`]).
//!
//! Real hosts only (the simulation has its own segment in `sim::l2`). Needs
//! `CAP_NET_ADMIN` (addresses) and `CAP_NET_RAW` (the packet socket).
//!
//! Each operation opens its own netlink connection: claims are rare, and a
//! connection made at the call sees the interface as it is now (renamed,
//! recreated with a new index or a new MAC) and the network namespace of
//! the calling thread.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::garp::{self, Announcement, Mac};
use super::l2::{L2Error, L2Fabric};
use crate::rt;

/// Announcements sent per claim, by default: keepalived's
/// `vrrp_garp_master_repeat` default (5).
pub const DEFAULT_GARP_COUNT: u32 = 5;
/// Time between two announcements of one claim, by default: `arping`'s
/// default interval (1 s). keepalived sends its five back to back
/// (`vrrp_garp_interval` 0) and a second five after `vrrp_garp_master_delay`
/// (5 s); spreading one train over 4 s covers the same span, and a short
/// outage (a switch port still learning after a link flap) cannot swallow
/// all of it.
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_secs(1);
/// Prefix length of IPv4 VIPs, by default: a host address, as keepalived
/// adds a `virtual_ipaddress` without a mask. A /32 adds no subnet route
/// and never becomes the primary address other addresses are secondary to
/// (deleting a primary deletes its secondaries unless
/// `promote_secondaries` is set).
pub const DEFAULT_PREFIX_LEN_V4: u8 = 32;
/// Prefix length of IPv6 VIPs, by default: a host address.
pub const DEFAULT_PREFIX_LEN_V6: u8 = 128;
/// Most announcements one claim may send.
pub const MAX_GARP_COUNT: u32 = 100;
/// Longest time between two announcements.
pub const MAX_GARP_INTERVAL: Duration = Duration::from_secs(60);
/// Longest wait for room in the interface's transmit queue for one frame.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// The kernel's lifetime of a VIP address, by default (see
/// [`NetlinkL2Config::address_lifetime`]).
pub const DEFAULT_ADDRESS_LIFETIME: Duration = Duration::from_secs(6);
/// Shortest lifetime: the kernel counts in whole seconds, and renewing
/// a third of it apart must leave it room.
pub const MIN_ADDRESS_LIFETIME: Duration = Duration::from_secs(3);
/// Longest lifetime (an hour: past that, say none).
pub const MAX_ADDRESS_LIFETIME: Duration = Duration::from_secs(3600);

/// Where and how [`NetlinkL2`] claims VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetlinkL2Config {
    /// The interface VIPs are added to and announced on (`eth0`, `bond0.12`).
    pub interface: String,
    /// Prefix length IPv4 VIPs are added with.
    pub prefix_len_v4: u8,
    /// Prefix length IPv6 VIPs are added with.
    pub prefix_len_v6: u8,
    /// Announcements per claim or announce, the first at once (at least 1).
    pub garp_count: u32,
    /// Time between two announcements of one train.
    pub garp_interval: Duration,
    /// The lifetime VIP addresses are added with (`valid_lft`, whole
    /// seconds), renewed every third of it while this host claims them; the
    /// kernel deletes an address that is not renewed in time. So a VIP
    /// outlives a crashed SE process by at most this, where a permanent
    /// address stayed (answering ARP for a VIP another SE took over) until
    /// the SE started again. `None`: permanent addresses.
    pub address_lifetime: Option<Duration>,
}

impl NetlinkL2Config {
    /// How long after claiming a VIP other hosts' announcements of it are
    /// ignored: twice one train.
    pub fn claim_grace(&self) -> Duration {
        self.garp_interval * self.garp_count.max(1) * 2
    }

    /// VIPs on `interface` with the default prefix lengths and train.
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            prefix_len_v4: DEFAULT_PREFIX_LEN_V4,
            prefix_len_v6: DEFAULT_PREFIX_LEN_V6,
            garp_count: DEFAULT_GARP_COUNT,
            garp_interval: DEFAULT_GARP_INTERVAL,
            address_lifetime: Some(DEFAULT_ADDRESS_LIFETIME),
        }
    }

    /// Every problem with the settings, or nothing.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.interface;
        // IFNAMSIZ is 16 with the terminating NUL.
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." {
            return Err(format!(
                "interface name {name:?} is not a Linux interface name"
            ));
        }
        if !(1..=32).contains(&self.prefix_len_v4) {
            return Err(format!(
                "prefix_len_v4 {} is not between 1 and 32",
                self.prefix_len_v4
            ));
        }
        if !(1..=128).contains(&self.prefix_len_v6) {
            return Err(format!(
                "prefix_len_v6 {} is not between 1 and 128",
                self.prefix_len_v6
            ));
        }
        if !(1..=MAX_GARP_COUNT).contains(&self.garp_count) {
            return Err(format!(
                "garp_count {} is not between 1 and {MAX_GARP_COUNT}",
                self.garp_count
            ));
        }
        if self.garp_interval > MAX_GARP_INTERVAL {
            return Err(format!(
                "garp_interval {:?} is over {MAX_GARP_INTERVAL:?}",
                self.garp_interval
            ));
        }
        if let Some(l) = self.address_lifetime {
            if !(MIN_ADDRESS_LIFETIME..=MAX_ADDRESS_LIFETIME).contains(&l) || l.subsec_nanos() != 0
            {
                return Err(format!(
                    "address_lifetime {l:?} is not a whole number of seconds between {} and {} (or none)",
                    MIN_ADDRESS_LIFETIME.as_secs(),
                    MAX_ADDRESS_LIFETIME.as_secs()
                ));
            }
        }
        Ok(())
    }

    fn prefix_len(&self, vip: IpAddr) -> u8 {
        match vip {
            IpAddr::V4(_) => self.prefix_len_v4,
            IpAddr::V6(_) => self.prefix_len_v6,
        }
    }
}

/// Why `vip` cannot be a VIP on a LAN interface, if it cannot.
pub fn lan_vip_problem(vip: IpAddr) -> Option<&'static str> {
    match vip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address is not a VIP"),
        IpAddr::V4(a) if a.is_loopback() => {
            Some("loopback VIPs are served by the loopback fabric, not on a LAN interface")
        }
        IpAddr::V4(a) if a.is_multicast() || a.is_broadcast() => {
            Some("a VIP must be a unicast address")
        }
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address is not a VIP"),
        IpAddr::V6(a) if a.is_loopback() => {
            Some("loopback VIPs are served by the loopback fabric, not on a LAN interface")
        }
        IpAddr::V6(a) if a.is_multicast() => Some("a VIP must be a unicast address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            Some("link-local addresses are scoped to one link and cannot be VIPs")
        }
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address: use the IPv4 address")
        }
        _ => None,
    }
}

/// VIPs as addresses on a LAN interface, announced with gratuitous ARP (IPv4)
/// and unsolicited neighbour advertisements (IPv6).
///
/// A claim adds the address (present already: fine), sends the first
/// announcement before it returns and the rest of the train from a task;
/// a release stops the train first, so this host never announces a VIP it
/// gave up, then deletes the address (absent: fine).
///
/// Watchers read the interface's ARP traffic and its IPv6 neighbour
/// advertisements (only those: a BPF filter drops the rest in the kernel):
/// when another MAC sends an ARP packet from an IPv4 VIP, or advertises an
/// IPv6 VIP, that this host claimed more than two trains ago, the newer
/// claim wins and this host deletes the address (see [`L2Fabric::lost`]).
#[derive(Debug)]
pub struct NetlinkL2 {
    config: NetlinkL2Config,
    shared: Arc<Shared>,
    /// The claim watchers and the address renewer, stopped on drop.
    tasks: Vec<rt::JoinHandle<()>>,
}

/// What the claims and the watcher share.
#[derive(Debug, Default)]
struct Shared {
    /// The running announcement train of each VIP.
    trains: Mutex<BTreeMap<IpAddr, rt::JoinHandle<()>>>,
    /// When each VIP was claimed, and the VIPs lost to a newer claim.
    claims: Mutex<Claims>,
    /// Held by whatever adds, renews or deletes a VIP's address (claims,
    /// releases, the watchers' yields, the renewals), so a renewal never
    /// puts back an address a release or yield just took away.
    addresses: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Claims {
    since: BTreeMap<IpAddr, Instant>,
    lost: BTreeSet<IpAddr>,
}

impl Shared {
    fn trains(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, rt::JoinHandle<()>>> {
        // A panic while holding the lock leaves only join handles behind:
        // still usable.
        self.trains.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_train(&self, vip: IpAddr) {
        if let Some(train) = self.trains().remove(&vip) {
            train.abort();
        }
    }
}

impl NetlinkL2 {
    /// Check `config` and that its interface exists and is Ethernet.
    pub async fn open(config: NetlinkL2Config) -> io::Result<Self> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let netlink = Netlink::connect()?;
        let link = netlink.link(&config.interface).await?;
        let shared = Arc::new(Shared::default());
        // What each watcher reads from a frame: who claims which address.
        let arp: Claimant = |f| garp::arp_sender(f).map(|s| (s.mac, IpAddr::V4(s.ip)));
        let na: Claimant = |f| garp::na_sender(f).map(|s| (s.mac, IpAddr::V6(s.ip)));
        let mut tasks = Vec::new();
        for (what, ethertype, filter, read) in [
            ("ARP", garp::ETHERTYPE_ARP, None, arp),
            (
                "IPv6 neighbour advertisements",
                garp::ETHERTYPE_IPV6,
                Some(&garp::NA_FILTER[..]),
                na,
            ),
        ] {
            match WatchSocket::open(link.index, ethertype, filter) {
                Ok(socket) => tasks.push(rt::spawn(watch_claims(
                    socket,
                    read,
                    link.clone(),
                    config.claim_grace(),
                    shared.clone(),
                ))),
                Err(e) => {
                    tracing::warn!(interface = %config.interface, error = %e,
                        "cannot watch {what}: another host's claim of a VIP will not be noticed");
                }
            }
        }
        if let Some(lifetime) = config.address_lifetime {
            tasks.push(rt::spawn(renew_claims(
                link.clone(),
                config.clone(),
                lifetime,
                shared.clone(),
            )));
        }
        Ok(Self {
            config,
            shared,
            tasks,
        })
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &NetlinkL2Config {
        &self.config
    }

    fn check(vip: IpAddr) -> Result<(), L2Error> {
        match lan_vip_problem(vip) {
            None => Ok(()),
            Some(reason) => Err(L2Error::Unsupported {
                vip,
                reason: reason.into(),
            }),
        }
    }

    /// Stop the announcement train of `vip`, if one runs.
    fn stop_train(&self, vip: IpAddr) {
        self.shared.stop_train(vip);
    }

    fn trains_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, rt::JoinHandle<()>>> {
        self.shared.trains()
    }

    /// Send the first announcement of `vip` now and start the rest of the
    /// train, replacing any train still running for it.
    async fn announce_on(&self, link: &Link, vip: IpAddr) -> Result<(), L2Error> {
        self.stop_train(vip);
        let socket = PacketSocket::open()
            .map_err(|e| io_error(vip, e, format!("opening a packet socket for {}", link.name)))?;
        let frame = garp::announcement(link.mac, vip);
        socket
            .send(link.index, &frame)
            .await
            .map_err(|e| io_error(vip, e, format!("announcing on {}", link.name)))?;
        let remaining = self.config.garp_count - 1;
        if remaining > 0 {
            let train = rt::spawn(train(
                socket,
                link.clone(),
                vip,
                frame,
                remaining,
                self.config.garp_interval,
            ));
            let mut trains = self.trains_lock();
            trains.retain(|_, t| !t.is_finished());
            // Calls for one VIP come one at a time (the data plane applies
            // one config at a time); should two overlap anyway, the train
            // displaced here stops rather than running on unowned.
            if let Some(displaced) = trains.insert(vip, train) {
                displaced.abort();
            }
        }
        Ok(())
    }

    fn connect(&self, vip: IpAddr) -> Result<Netlink, L2Error> {
        Netlink::connect().map_err(|e| io_error(vip, e, "opening a netlink socket".into()))
    }

    async fn link(&self, netlink: &Netlink, vip: IpAddr) -> Result<Link, L2Error> {
        netlink
            .link(&self.config.interface)
            .await
            .map_err(|source| L2Error::Io { vip, source })
    }
}

impl Drop for NetlinkL2 {
    fn drop(&mut self) {
        for train in self.trains_lock().values() {
            train.abort();
        }
        for w in &self.tasks {
            w.abort();
        }
    }
}

#[async_trait]
impl L2Fabric for NetlinkL2 {
    async fn claim_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        Self::check(vip)?;
        let _addresses = self.shared.addresses.lock().await;
        let netlink = self.connect(vip)?;
        let link = self.link(&netlink, vip).await?;
        let prefix_len = self.config.prefix_len(vip);
        let lifetime = self.config.address_lifetime;
        let added = match (
            netlink
                .add_address(link.index, vip, prefix_len, lifetime)
                .await,
            lifetime,
        ) {
            // There already (an earlier run's, or permanent): this host's
            // from now on, with its lifetime.
            (Ok(false), Some(lifetime)) => netlink
                .renew_address(link.index, vip, prefix_len, lifetime)
                .await
                .map(|_| false),
            (other, _) => other,
        }
        .map_err(|e| {
            io_error(
                vip,
                e,
                format!("adding {vip}/{prefix_len} to {}", link.name),
            )
        })?;
        if let Err(e) = self.announce_on(&link, vip).await {
            // Unannounced is not claimed: take back what this call added.
            if added {
                if let Err(undo) = netlink.delete_address(link.index, vip).await {
                    tracing::warn!(%vip, interface = %link.name, error = %undo,
                        "removing the VIP after a failed announcement failed");
                }
            }
            return Err(e);
        }
        {
            let mut claims = self.shared.claims();
            claims.lost.remove(&vip);
            claims.since.insert(vip, rt::now());
        }
        tracing::info!(%vip, interface = %link.name, mac = %garp::format_mac(&link.mac),
            prefix_len, already_present = !added, "claimed VIP");
        Ok(())
    }

    async fn release_vip(&self, vip: IpAddr) -> Result<(), L2Error> {
        Self::check(vip)?;
        let _addresses = self.shared.addresses.lock().await;
        self.stop_train(vip);
        {
            let mut claims = self.shared.claims();
            claims.since.remove(&vip);
            claims.lost.remove(&vip);
        }
        let netlink = self.connect(vip)?;
        let link = match netlink.find_link(&self.config.interface).await {
            Ok(Some(link)) => link,
            // No interface, no address on it.
            Ok(None) => return Ok(()),
            Err(source) => return Err(L2Error::Io { vip, source }),
        };
        let removed = netlink
            .delete_address(link.index, vip)
            .await
            .map_err(|e| io_error(vip, e, format!("removing {vip} from {}", link.name)))?;
        tracing::info!(%vip, interface = %link.name, was_present = removed, "released VIP");
        Ok(())
    }

    async fn announce(&self, vip: IpAddr) -> Result<(), L2Error> {
        Self::check(vip)?;
        let netlink = self.connect(vip)?;
        let link = self.link(&netlink, vip).await?;
        let present = netlink
            .has_address(link.index, vip)
            .await
            .map_err(|e| io_error(vip, e, format!("listing the addresses of {}", link.name)))?;
        if !present {
            // Announcing an address this host does not hold would pull its
            // traffic here to be dropped.
            return Err(L2Error::Io {
                vip,
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "{vip} is not on {}: claim it before announcing it",
                        link.name
                    ),
                ),
            });
        }
        self.announce_on(&link, vip).await
    }

    fn bind_addr(&self, vip: IpAddr) -> IpAddr {
        vip
    }

    fn lost(&self, vip: IpAddr) -> bool {
        self.shared.claims().lost.contains(&vip)
    }
}

/// Reads who a frame says is at which address (`None`: not a claim).
type Claimant = fn(&[u8]) -> Option<(Mac, IpAddr)>;

/// Read the interface's ARP traffic (or its neighbour advertisements); when
/// another MAC speaks for a VIP this host claimed at least `grace` ago,
/// give the VIP up: stop its train, delete the address, mark it lost.
/// Within `grace` of a claim, other hosts' frames for the VIP are the tail
/// of the train of the host this one took over from, and are ignored.
async fn watch_claims(
    socket: WatchSocket,
    read: Claimant,
    link: Link,
    grace: Duration,
    shared: Arc<Shared>,
) {
    let mut buf = [0u8; 128];
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n.min(buf.len()),
            Err(e) => {
                tracing::warn!(interface = %link.name, error = %e, "reading ARP/ND failed");
                rt::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some((mac, vip)) = read(&buf[..n]) else {
            continue;
        };
        if mac == link.mac {
            continue; // Our own frames, as the socket sees them go out.
        }
        let _addresses = shared.addresses.lock().await;
        let yields = {
            let mut claims = shared.claims();
            let old = claims
                .since
                .get(&vip)
                .is_some_and(|t| rt::now().saturating_duration_since(*t) >= grace);
            if old {
                claims.since.remove(&vip);
                claims.lost.insert(vip);
            }
            old
        };
        if !yields {
            continue;
        }
        shared.stop_train(vip);
        tracing::warn!(%vip, interface = %link.name, other = %garp::format_mac(&mac),
            "another host announced the VIP: yielding it");
        let deleted = match Netlink::connect() {
            Ok(netlink) => netlink.delete_address(link.index, vip).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            tracing::warn!(%vip, interface = %link.name, error = %e,
                "removing a VIP another host took failed");
        }
    }
}

/// Every third of `lifetime`, give each VIP this host claims its address
/// lifetime again (adding it back should the kernel have let it expire:
/// this process did not run for that long, yet still claims it).
async fn renew_claims(
    link: Link,
    config: NetlinkL2Config,
    lifetime: Duration,
    shared: Arc<Shared>,
) {
    loop {
        rt::sleep(lifetime / 3).await;
        let vips: Vec<IpAddr> = shared.claims().since.keys().copied().collect();
        if vips.is_empty() {
            continue;
        }
        let netlink = match Netlink::connect() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(interface = %link.name, error = %e, "renewing VIP addresses: no netlink socket");
                continue;
            }
        };
        for vip in vips {
            let _addresses = shared.addresses.lock().await;
            // Released or yielded since the list was taken: not ours.
            if !shared.claims().since.contains_key(&vip) {
                continue;
            }
            match netlink
                .renew_address(link.index, vip, config.prefix_len(vip), lifetime)
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(%vip, interface = %link.name,
                    "the VIP's address had expired (this process did not run for its lifetime): added back"),
                Err(e) => tracing::warn!(%vip, interface = %link.name, error = %e,
                    "renewing the VIP's address failed"),
            }
        }
    }
}

/// The rest of a claim's announcements, `interval` apart.
async fn train(
    socket: PacketSocket,
    link: Link,
    vip: IpAddr,
    frame: Announcement,
    remaining: u32,
    interval: Duration,
) {
    for _ in 0..remaining {
        rt::sleep(interval).await;
        if let Err(e) = socket.send(link.index, &frame).await {
            // A lost announcement is a late cache update, not a lost VIP:
            // the next one (or the neighbours' own ARP) still moves them.
            tracing::warn!(%vip, interface = %link.name, error = %e, "announcing VIP failed");
        }
    }
}

/// `source` with what was being done, for an [`L2Error`] about `vip`.
fn io_error(vip: IpAddr, source: io::Error, doing: String) -> L2Error {
    L2Error::Io {
        vip,
        source: io::Error::new(source.kind(), format!("{doing}: {source}")),
    }
}

/// An interface as the kernel reports it now.
#[derive(Debug, Clone)]
struct Link {
    name: String,
    index: u32,
    mac: Mac,
}

/// One rtnetlink connection, its driver task stopped on drop.
struct Netlink {
    handle: rtnetlink::Handle,
    driver: rt::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn netlink_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

impl Netlink {
    fn connect() -> io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        let driver = rt::spawn(connection);
        Ok(Self { handle, driver })
    }

    /// The Ethernet interface `name`.
    async fn link(&self, name: &str) -> io::Result<Link> {
        self.find_link(name).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {name}: no such interface"),
            )
        })
    }

    /// The Ethernet interface `name`, `None` when there is no such interface.
    async fn find_link(&self, name: &str) -> io::Result<Option<Link>> {
        let context = |e: io::Error| io::Error::new(e.kind(), format!("interface {name}: {e}"));
        let mut links = self.handle.link().get().match_name(name).execute();
        let message = match links.try_next().await.map_err(netlink_io) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
            Err(e) => return Err(context(e)),
        };
        if message.header.link_layer_type != LinkLayerType::Ether {
            return Err(context(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "link type {:?}: VIPs need an Ethernet interface",
                    message.header.link_layer_type
                ),
            )));
        }
        let mac = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => Mac::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        let Some(mac) = mac else {
            return Err(context(io::Error::new(
                io::ErrorKind::Unsupported,
                "no Ethernet address",
            )));
        };
        Ok(Some(Link {
            name: name.to_string(),
            index: message.header.index,
            mac,
        }))
    }

    /// Add `vip/prefix_len` to interface `index`, with `lifetime` (`None`:
    /// permanent); `Ok(false)` when it was there already (left as it was).
    async fn add_address(
        &self,
        index: u32,
        vip: IpAddr,
        prefix_len: u8,
        lifetime: Option<Duration>,
    ) -> io::Result<bool> {
        let request = self.address_request(index, vip, prefix_len, lifetime);
        match request.execute().await.map_err(netlink_io) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The request that adds (or, `.replace()`d, updates) `vip/prefix_len`.
    fn address_request(
        &self,
        index: u32,
        vip: IpAddr,
        prefix_len: u8,
        lifetime: Option<Duration>,
    ) -> rtnetlink::AddressAddRequest {
        let mut request = self.handle.address().add(index, vip, prefix_len);
        let attributes = &mut request.message_mut().attributes;
        if vip.is_ipv6() {
            // No duplicate address detection: a VIP that moves is expected
            // to have had another owner a moment ago, and a tentative
            // address cannot be bound for the second DAD takes.
            attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let Some(lifetime) = lifetime {
            let seconds = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
            let mut info = CacheInfo::default();
            info.ifa_valid = seconds;
            info.ifa_preferred = seconds;
            attributes.push(AddressAttribute::CacheInfo(info));
        }
        request
    }

    /// Give `vip` on interface `index` `lifetime` again, at each prefix
    /// length it has there; add it (at `prefix_len`) when it is not there.
    /// `Ok(false)` when it had to be added.
    async fn renew_address(
        &self,
        index: u32,
        vip: IpAddr,
        prefix_len: u8,
        lifetime: Duration,
    ) -> io::Result<bool> {
        let found = self.addresses(index, vip).await?;
        if found.is_empty() {
            self.add_address(index, vip, prefix_len, Some(lifetime))
                .await?;
            return Ok(false);
        }
        for message in found {
            self.address_request(index, vip, message.header.prefix_len, Some(lifetime))
                .replace()
                .execute()
                .await
                .map_err(netlink_io)?;
        }
        Ok(true)
    }

    /// The addresses `vip` on interface `index` (any prefix length).
    async fn addresses(&self, index: u32, vip: IpAddr) -> io::Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(vip)
            .execute()
            .try_collect()
            .await
            .map_err(netlink_io)
    }

    async fn has_address(&self, index: u32, vip: IpAddr) -> io::Result<bool> {
        Ok(!self.addresses(index, vip).await?.is_empty())
    }

    /// Delete `vip` from interface `index`, whatever its prefix length;
    /// `Ok(false)` when it was not there.
    async fn delete_address(&self, index: u32, vip: IpAddr) -> io::Result<bool> {
        let found = self.addresses(index, vip).await?;
        let removed = !found.is_empty();
        for message in found {
            match self
                .handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(netlink_io)
            {
                Ok(()) => {}
                // Gone meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

/// An AF_PACKET socket that receives the frames of one EtherType on one
/// interface, those a classic BPF program keeps if one is given.
struct WatchSocket(AsyncFd<OwnedFd>);

impl WatchSocket {
    fn open(index: u32, ethertype: u16, filter: Option<&[(u16, u8, u8, u32)]>) -> io::Result<Self> {
        let protocol = ethertype.to_be();
        // SAFETY: socket(2) with constant arguments; it touches no memory.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol.into(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Until the bind the socket receives from every interface: what
        // came in before the filter is read and dropped by the watcher's
        // parse, and before any claim nothing counts anyway.
        if let Some(rows) = filter {
            attach_filter(&fd, rows)?;
        }
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        at.sll_family = libc::AF_PACKET as libc::c_ushort;
        at.sll_protocol = protocol;
        at.sll_ifindex = i32::try_from(index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: `at` outlives the call and the length passed is its own.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&at as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as in `PacketSocket::open`.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self(fd))
    }

    /// The next frame, truncated to `buf`; its full length.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            let got = ready.try_io(|fd| {
                // SAFETY: `buf` outlives the call and its length is passed.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(result) => return result,
                // Spurious readiness: wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

/// Attach the classic BPF program `rows` (`(code, jt, jf, k)`, as
/// `struct sock_filter`) to `fd` (`SO_ATTACH_FILTER`).
fn attach_filter(fd: &OwnedFd, rows: &[(u16, u8, u8, u32)]) -> io::Result<()> {
    let mut program: Vec<libc::sock_filter> = rows
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` and the rows it points to outlive the call (the kernel
    // copies them), and the length passed is `prog`'s own.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A send-only AF_PACKET socket (protocol 0: it receives nothing, so no
/// queue of other hosts' frames builds up behind it).
struct PacketSocket(AsyncFd<OwnedFd>);

impl PacketSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; it touches no memory.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` moves into the `AsyncFd` and is closed only
        // when it is dropped, so the descriptor stays open and the same.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) }?;
        Ok(Self(fd))
    }

    /// Send `frame` out of interface `index`, waiting (up to a second) for
    /// room in its queue.
    async fn send(&self, index: u32, frame: &Announcement) -> io::Result<()> {
        let index = i32::try_from(index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index"))?;
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as libc::c_ushort;
        to.sll_protocol = frame.ethertype.to_be();
        to.sll_ifindex = index;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame.destination);
        let bytes = &frame.frame;
        let send = async {
            loop {
                let mut ready = self.0.writable().await?;
                let sent = ready.try_io(|fd| {
                    // SAFETY: `bytes` and `to` outlive the call, and the
                    // lengths passed are theirs.
                    let n = unsafe {
                        libc::sendto(
                            fd.as_raw_fd(),
                            bytes.as_ptr().cast(),
                            bytes.len(),
                            0,
                            (&to as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                });
                match sent {
                    Ok(Ok(n)) if n == bytes.len() => return Ok(()),
                    Ok(Ok(n)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            format!("sent {n} of {} bytes", bytes.len()),
                        ))
                    }
                    Ok(Err(e)) => return Err(e),
                    // Spurious readiness: wait again.
                    Err(_would_block) => continue,
                }
            }
        };
        rt::timeout(SEND_TIMEOUT, send)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e.to_string()))?
    }
}

#[cfg(test)]
mod netns_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = NetlinkL2Config::new("eth0");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.prefix_len_v4, c.prefix_len_v6), (32, 128));
        assert_eq!((c.garp_count, c.garp_interval), (5, Duration::from_secs(1)));
    }

    #[test]
    fn validate_names_the_problem() {
        let bad = |f: fn(&mut NetlinkL2Config)| {
            let mut c = NetlinkL2Config::new("eth0");
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.interface.clear()).contains("interface name"));
        assert!(bad(|c| c.interface = "a-very-long-ifname".into()).contains("interface name"));
        assert!(bad(|c| c.prefix_len_v4 = 33).contains("prefix_len_v4"));
        assert!(bad(|c| c.prefix_len_v4 = 0).contains("prefix_len_v4"));
        assert!(bad(|c| c.prefix_len_v6 = 129).contains("prefix_len_v6"));
        assert!(bad(|c| c.garp_count = 0).contains("garp_count"));
        assert!(bad(|c| c.garp_count = MAX_GARP_COUNT + 1).contains("garp_count"));
        assert!(bad(|c| c.garp_interval = Duration::from_secs(61)).contains("garp_interval"));
        for l in [2_000, 3_500, 3_601_000] {
            let mut c = NetlinkL2Config::new("eth0");
            c.address_lifetime = Some(Duration::from_millis(l));
            assert!(
                c.validate().unwrap_err().contains("address_lifetime"),
                "{l} ms"
            );
        }
        let mut c = NetlinkL2Config::new("eth0");
        c.address_lifetime = None;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn only_unicast_lan_addresses_are_vips() {
        for ok in ["192.0.2.10", "10.0.0.1", "2001:db8::1", "fd00::5"] {
            assert_eq!(lan_vip_problem(ok.parse().unwrap()), None, "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(lan_vip_problem(bad.parse().unwrap()).is_some(), "{bad}");
        }
    }
}
