//! L4 virtual services: TCP connections and UDP flows, each kept on one
//! server of the pool.
//!
//! TCP: the server is picked when the client connects (a refused or timed
//! out connect tries the next eligible server, up to
//! [`MAX_CONNECT_ATTEMPTS`], and counts toward its `fall`); then bytes go
//! both ways until both sides have finished or the connection idles for the
//! idle timeout. Half-closes pass through. With `tls`, the SE terminates
//! TLS first and relays the plaintext.
//!
//! UDP: a flow is the datagrams of one client address. Its first datagram
//! picks a server (by the pool's algorithm; `consistent_hash` keeps a client
//! on one server across flows) and opens a socket of its own toward it;
//! the server's answers go back to the client from the VIP. A flow that
//! idles for the idle timeout is forgotten. At most `max_udp_flows` flows
//! are kept; datagrams of new clients beyond that are dropped (and counted
//! in the virtual service's counters), as are datagrams larger than
//! [`MAX_DATAGRAM`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::rt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::lb::Picked;
use crate::proxy::{VirtualService, MAX_CONNECT_ATTEMPTS};

/// Largest UDP datagram relayed either way; larger ones are dropped.
pub const MAX_DATAGRAM: usize = 16 * 1024;

fn pick(vs: &VirtualService, client: SocketAddr, tried: &[SocketAddr]) -> Option<Picked> {
    vs.servers().pick_for(client.ip(), None, None, tried)
}

/// Relay one TCP client connection of `vs` to a server.
pub async fn serve_tcp<S>(vs: Arc<VirtualService>, mut client: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let l4 = vs.l4();
    let connect_timeout = Duration::from_millis(l4.connect_timeout_ms);
    let idle = l4.idle_timeout(fabric::model::VsProtocol::Tcp);
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    while tried.len() < MAX_CONNECT_ATTEMPTS {
        let Some(picked) = pick(&vs, peer, &tried) else {
            break;
        };
        let server = picked.addr();
        let connecting = rt::now();
        let tls = vs.upstream_tls();
        let why = match crate::upstream::connect(server, connect_timeout, tls.as_deref()).await {
            Ok(mut upstream) => {
                picked.state().on_request_succeeded();
                picked
                    .state()
                    .record_latency(rt::now().saturating_duration_since(connecting));
                // The connection counts in flight on its server (least
                // connections) until it ends.
                let (up, down) =
                    crate::relay::tunnel(&mut client, &[], &mut upstream, &[], idle).await;
                vs.counters().bytes(up, down);
                return;
            }
            Err(e) => format!("connect failed: {e}"),
        };
        picked.state().on_request_failed(&why);
        tried.push(server);
    }
    tracing::debug!(vs = %vs.name, %peer, ?tried, "no server for a TCP connection");
    let _ = client.shutdown().await;
}

/// One UDP flow: a client's datagrams to one server, or (on a scale-out
/// primary) to the secondary SE that takes the flow.
struct Flow {
    upstream: rt::UdpSocket,
    /// The server, or the secondary's relay address.
    server: SocketAddr,
    /// For a flow relayed to a secondary: the PROXY v2 header put before
    /// each of its datagrams (`scaleout::proxy_v2_dgram`).
    header: Option<Box<[u8]>>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
    /// Keeps the flow counted in flight on its server (none for a relayed
    /// flow: the secondary counts it on its own).
    _picked: Option<Picked>,
    /// Keeps the flow counted open on the virtual service.
    _open: crate::counters::Open,
}

impl Flow {
    /// A flow of `vs` toward `server` on a socket of its own.
    async fn new(
        vs: &VirtualService,
        server: SocketAddr,
        header: Option<Box<[u8]>>,
        picked: Option<Picked>,
    ) -> Option<Self> {
        Some(Self {
            upstream: crate::upstream::udp_socket_toward(server).await.ok()?,
            server,
            header,
            last: AtomicU64::new(0),
            _picked: picked,
            _open: vs.counters().open(),
        })
    }

    fn touch(&self, epoch: Instant) {
        let ms = rt::now().saturating_duration_since(epoch).as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self, epoch: Instant) -> Duration {
        let now = rt::now().saturating_duration_since(epoch).as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }

    /// Send `datagram` on: as it is, or after the relay header into
    /// `scratch`.
    async fn forward(&self, datagram: &[u8], scratch: &mut Vec<u8>) -> std::io::Result<usize> {
        match &self.header {
            None => self.upstream.send_to(datagram, self.server).await,
            Some(header) => {
                scratch.clear();
                scratch.extend_from_slice(header);
                scratch.extend_from_slice(datagram);
                self.upstream.send_to(scratch, self.server).await
            }
        }
    }
}

/// A virtual service's flows, by the address their datagrams come from.
type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Serve the UDP virtual service `vs` (`vip`, its address and port as
/// configured) on `socket` until the task is stopped.
/// With scale-out secondaries, each new flow goes to the SE that ranks
/// first for the client (`scaleout::owner`): this one, or a secondary its
/// datagrams are relayed to behind a PROXY v2 header; the secondary's
/// answers come back here and go to the client from the VIP.
pub async fn serve_udp(vs: Arc<VirtualService>, socket: rt::UdpSocket, vip: SocketAddr) {
    let counters = vs.counters().clone();
    let socket = Arc::new(socket);
    let flows: Flows = Arc::default();
    let epoch = rt::now();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let mut scratch = Vec::with_capacity(MAX_DATAGRAM + crate::scaleout::MAX_PROXY_V2_HEADER);
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(vs = %vs.name, error = %e, "UDP receive failed");
                rt::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if n > MAX_DATAGRAM {
            counters.dropped();
            continue;
        }
        // A flow relayed to a secondary that is no longer one (dead, drained,
        // scaled in) starts over: the flow is the client's, not the SE's.
        let known = lock(&flows)
            .get(&client)
            .filter(|f| f.header.is_none() || vs.scaleout().iter().any(|p| p.relay == f.server))
            .cloned();
        let flow = match known {
            Some(flow) => flow,
            None => {
                let opened = match relayed_to(&vs, client, vip) {
                    Some((peer, header)) => {
                        open_relayed(&vs, &flows, client, peer, header, epoch).await
                    }
                    None => open_flow(&vs, &flows, client, client, epoch).await,
                };
                let Some(flow) = opened else {
                    counters.dropped();
                    continue;
                };
                let idle = vs.l4().idle_timeout(fabric::model::VsProtocol::Udp);
                rt::spawn(answers(
                    counters.clone(),
                    flow.clone(),
                    socket.clone(),
                    client,
                    flows.clone(),
                    idle,
                    epoch,
                ));
                flow
            }
        };
        flow.touch(epoch);
        counters.bytes(n as u64, 0);
        if let Err(e) = flow.forward(&buf[..n], &mut scratch).await {
            tracing::debug!(vs = %vs.name, server = %flow.server, error = %e, "UDP send failed");
        }
    }
}

/// The secondary that takes a new flow from `client` to `vip`, and the
/// header its datagrams get; `None` when this SE takes it.
fn relayed_to(
    vs: &VirtualService,
    client: SocketAddr,
    vip: SocketAddr,
) -> Option<(SocketAddr, Box<[u8]>)> {
    let peers = vs.scaleout();
    let peer = crate::scaleout::taker(vs.se_name(), &peers, client)?;
    let mut header = Vec::with_capacity(crate::scaleout::MAX_PROXY_V2_HEADER);
    crate::scaleout::proxy_v2_dgram(client, vip, &mut header);
    Some((peer.relay, header.into_boxed_slice()))
}

/// Whether `flows` has room for one more flow of `vs`.
fn room(vs: &VirtualService, flows: &Flows) -> bool {
    lock(flows).len() < vs.l4().max_udp_flows as usize
}

/// A new flow for the datagrams from `key`, to a server picked for
/// `client` (the same address, unless the flow was relayed here), unless
/// the table is full or no server is eligible.
async fn open_flow(
    vs: &VirtualService,
    flows: &Flows,
    key: SocketAddr,
    client: SocketAddr,
    epoch: Instant,
) -> Option<Arc<Flow>> {
    if !room(vs, flows) {
        return None;
    }
    let picked = pick(vs, client, &[])?;
    let flow = Flow::new(vs, picked.addr(), None, Some(picked)).await?;
    Some(insert(flows, key, flow, epoch))
}

/// A new flow from `client` relayed to the secondary at `relay`.
async fn open_relayed(
    vs: &VirtualService,
    flows: &Flows,
    client: SocketAddr,
    relay: SocketAddr,
    header: Box<[u8]>,
    epoch: Instant,
) -> Option<Arc<Flow>> {
    if !room(vs, flows) {
        return None;
    }
    let flow = Flow::new(vs, relay, Some(header), None).await?;
    Some(insert(flows, client, flow, epoch))
}

/// `flow` as the flow of `key`, fresh.
fn insert(flows: &Flows, key: SocketAddr, flow: Flow, epoch: Instant) -> Arc<Flow> {
    let flow = Arc::new(flow);
    flow.touch(epoch);
    lock(flows).insert(key, flow.clone());
    flow
}

/// Relay `flow`'s server's answers to `client` (from `listener`) until the
/// flow idles out.
async fn answers(
    counters: Arc<crate::counters::VsCounters>,
    flow: Arc<Flow>,
    listener: Arc<rt::UdpSocket>,
    client: SocketAddr,
    flows: Flows,
    idle: Duration,
    epoch: Instant,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let wait = idle.saturating_sub(flow.idle_for(epoch));
        if wait.is_zero() {
            break;
        }
        match rt::timeout(wait, flow.upstream.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == flow.server && n <= MAX_DATAGRAM => {
                flow.touch(epoch);
                counters.bytes(0, n as u64);
                let _ = listener.send_to(&buf[..n], client).await;
            }
            // Not from our server, or too large: not relayed.
            Ok(Ok(_)) => {}
            Ok(Err(_)) => rt::sleep(Duration::from_millis(10)).await,
            // Idle on this side; the client may still be sending.
            Err(_) => {}
        }
    }
    // Unless the client's flow started over meanwhile (a new entry).
    let mut flows = lock(&flows);
    if flows.get(&client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
        flows.remove(&client);
    }
}

/// The secondary's side of UDP scale-out: datagrams a primary relayed to
/// this SE's relay port behind a PROXY v2 header (`peers::run` hands them
/// over). Each primary-side flow (the address its datagrams come from) is a
/// flow here, to a server of the virtual service's pool picked for the
/// real client; the server's answers go back to that address, bare, and
/// the primary sends them on to the client from the VIP. A virtual service
/// this SE no longer serves as a secondary takes no new flows; its flows
/// run until they idle out (draining).
pub struct UdpRelay {
    table: crate::scaleout::RelayTable,
    socket: Arc<rt::UdpSocket>,
    /// Per VIP and port: its virtual service and flows.
    services: Mutex<HashMap<SocketAddr, (Arc<VirtualService>, Flows)>>,
    epoch: Instant,
}

impl UdpRelay {
    /// Relayed flows for the virtual services of `table`, answered through
    /// `socket` (the relay port's).
    pub fn new(table: crate::scaleout::RelayTable, socket: Arc<rt::UdpSocket>) -> Self {
        Self {
            table,
            socket,
            services: Mutex::default(),
            epoch: rt::now(),
        }
    }

    /// One relayed datagram from `from` (a primary's flow).
    pub async fn on_datagram(&self, datagram: &[u8], from: SocketAddr) {
        let (client, vip, start) = match crate::scaleout::parse_proxy_v2_dgram(datagram) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::debug!(%from, error = %e, "relayed datagram refused");
                return;
            }
        };
        let payload = &datagram[start..];
        let entry = lock(&self.services).get(&vip).cloned();
        let known = entry
            .as_ref()
            .and_then(|(vs, flows)| Some((vs.clone(), lock(flows).get(&from).cloned()?)));
        let (vs, flow) = match known {
            Some(found) => found,
            None => {
                let Some(vs) = lock(&self.table)
                    .get(&vip)
                    .filter(|vs| vs.protocol() == fabric::model::VsProtocol::Udp)
                    .cloned()
                else {
                    tracing::debug!(%from, %vip, "relayed datagram for a UDP virtual service this SE does not serve");
                    return;
                };
                let flows = {
                    let mut services = lock(&self.services);
                    // Forget the services nothing runs on any more.
                    services.retain(|_, (_, f)| !lock(f).is_empty());
                    let e = services
                        .entry(vip)
                        .or_insert_with(|| (vs.clone(), Flows::default()));
                    e.0 = vs.clone();
                    e.1.clone()
                };
                let Some(flow) = open_flow(&vs, &flows, from, client, self.epoch).await else {
                    vs.counters().dropped();
                    return;
                };
                let idle = vs.l4().idle_timeout(fabric::model::VsProtocol::Udp);
                rt::spawn(answers(
                    vs.counters().clone(),
                    flow.clone(),
                    self.socket.clone(),
                    from,
                    flows,
                    idle,
                    self.epoch,
                ));
                (vs, flow)
            }
        };
        if payload.len() > MAX_DATAGRAM {
            vs.counters().dropped();
            return;
        }
        flow.touch(self.epoch);
        vs.counters().bytes(payload.len() as u64, 0);
        if let Err(e) = flow.upstream.send_to(payload, flow.server).await {
            tracing::debug!(vs = %vs.name, server = %flow.server, error = %e, "relayed UDP send failed");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
