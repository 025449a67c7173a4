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

/// One UDP flow: a client's datagrams to one server.
struct Flow {
    upstream: rt::UdpSocket,
    server: SocketAddr,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
    /// Keeps the flow counted in flight on its server.
    _picked: Picked,
    /// Keeps the flow counted open on the virtual service.
    _open: crate::counters::Open,
}

impl Flow {
    fn touch(&self, epoch: Instant) {
        let ms = rt::now().saturating_duration_since(epoch).as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self, epoch: Instant) -> Duration {
        let now = rt::now().saturating_duration_since(epoch).as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last.load(Ordering::Relaxed)))
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

/// Serve the UDP virtual service `vs` on `socket` until the task is stopped.
pub async fn serve_udp(vs: Arc<VirtualService>, socket: rt::UdpSocket) {
    let counters = vs.counters().clone();
    let socket = Arc::new(socket);
    let flows: Flows = Arc::default();
    let epoch = rt::now();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
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
        let known = flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .cloned();
        let flow = match known {
            Some(flow) => flow,
            None => match open_flow(&vs, &flows, client, epoch).await {
                Some(flow) => {
                    let l4 = vs.l4();
                    let idle = l4.idle_timeout(fabric::model::VsProtocol::Udp);
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
                None => {
                    counters.dropped();
                    continue;
                }
            },
        };
        flow.touch(epoch);
        counters.bytes(n as u64, 0);
        if let Err(e) = flow.upstream.send_to(&buf[..n], flow.server).await {
            tracing::debug!(vs = %vs.name, server = %flow.server, error = %e, "UDP send failed");
        }
    }
}

/// A new flow for `client`, unless the table is full or no server is eligible.
async fn open_flow(
    vs: &VirtualService,
    flows: &Flows,
    client: SocketAddr,
    epoch: Instant,
) -> Option<Arc<Flow>> {
    let max = vs.l4().max_udp_flows as usize;
    if flows.lock().unwrap_or_else(|p| p.into_inner()).len() >= max {
        return None;
    }
    let picked = pick(vs, client, &[])?;
    let server = picked.addr();
    let upstream = crate::upstream::udp_socket_toward(server).await.ok()?;
    let flow = Arc::new(Flow {
        upstream,
        server,
        last: AtomicU64::new(0),
        _picked: picked,
        _open: vs.counters().open(),
    });
    flow.touch(epoch);
    flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(client, flow.clone());
    Some(flow)
}

/// Relay `flow`'s server's answers to `client` until the flow idles out.
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
    flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&client);
}
