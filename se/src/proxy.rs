//! The HTTP reverse proxy of one virtual service: HTTP/1.1 in the clear, or
//! TLS (rustls, [`crate::tls`]) and then HTTP/1.1 ([`crate::relay`]) or
//! HTTP/2 ([`crate::h2relay`]) as ALPN decides. Servers are spoken to in
//! HTTP/1.1 either way, over one shared pool of idle connections.
//!
//! Each request picks a server from the virtual service's current
//! [`ServerSet`] by the client's address and the request's headers. A server
//! that cannot be connected to is skipped and the next eligible one tried
//! (the request has not been sent, so that is safe), up to
//! [`MAX_CONNECT_ATTEMPTS`]; a failure after the request was sent is
//! answered 502/504, never retried. Every such failure counts toward the
//! server's `fall` (passive health). When no server is eligible the answer is
//! 503. Responses carry [`SE_HEADER`](crate::SE_HEADER) naming this SE.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use fabric::model::{VsHttp, VsL4, VsProtocol};
use fabric::rt;
use http_body_util::BodyExt;
use hyper::client::conn::http1 as client_http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::lb::ServerSet;

/// Time allowed to open a connection to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a server to start its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most servers one request tries to connect to.
pub const MAX_CONNECT_ATTEMPTS: usize = 4;

/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most idle keep-alive connections kept per server.
pub const MAX_IDLE_PER_SERVER: usize = 256;
/// How long an idle connection to a server is kept for reuse (below the
/// usual servers' keep-alive timeouts, so they rarely close one under us).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A virtual service as the data plane serves it.
pub struct VirtualService {
    /// Name of the virtual service.
    pub name: String,
    se_name: Arc<str>,
    servers: RwLock<Arc<ServerSet>>,
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    conns: crate::relay::ConnPool,
    http: RwLock<VsHttp>,
    l4: RwLock<(VsProtocol, VsL4)>,
    counters: Arc<crate::counters::VsCounters>,
    upstream_tls: RwLock<Option<Arc<crate::upstream::UpstreamTls>>>,
    gate: Arc<rt::ConnGate>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    upstream_h2: std::sync::atomic::AtomicBool,
    h2_conns: crate::h2up::H2Pool,
    scaleout: RwLock<Arc<Vec<fabric::proto::ScaleoutPeer>>>,
}

/// A request counted in flight on its virtual service until dropped.
pub struct RequestSlot(Arc<VirtualService>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for VirtualService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualService")
            .field("name", &self.name)
            .field("tls", &self.tls().is_some())
            .finish_non_exhaustive()
    }
}

impl VirtualService {
    /// A virtual service served by SE `se_name` over `servers`.
    pub fn new(name: String, se_name: Arc<str>, servers: ServerSet) -> Self {
        Self {
            name,
            se_name,
            servers: RwLock::new(Arc::new(servers)),
            tls: RwLock::new(None),
            conns: crate::relay::ConnPool::default(),
            http: RwLock::new(VsHttp::default()),
            l4: RwLock::new((VsProtocol::Http, VsL4::default())),
            counters: Arc::default(),
            upstream_tls: RwLock::new(None),
            gate: Arc::new(rt::ConnGate::new(
                VsHttp::default().max_connections as usize,
            )),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(VsHttp::default().max_requests_in_flight as usize),
            upstream_h2: Default::default(),
            h2_conns: Default::default(),
            scaleout: RwLock::default(),
        }
    }

    /// The secondaries new connections are shared with (empty: none).
    pub fn scaleout(&self) -> Arc<Vec<fabric::proto::ScaleoutPeer>> {
        self.scaleout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Share new connections with `peers` from now on; open ones stay
    /// where they are (a removed secondary drains).
    pub fn set_scaleout(&self, peers: Vec<fabric::proto::ScaleoutPeer>) {
        *self.scaleout.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(peers);
    }

    /// Whether requests go to servers in HTTP/2 (`pools[].http2`).
    pub fn upstream_h2(&self) -> bool {
        self.upstream_h2.load(Ordering::Relaxed)
    }

    /// Speak HTTP/2 to servers (or HTTP/1.1); connections of the other
    /// kind are closed.
    pub fn set_upstream_h2(&self, h2: bool) {
        if self.upstream_h2.swap(h2, Ordering::Relaxed) != h2 {
            self.conns.retain(|_| false);
            self.h2_conns.retain(|_| false);
        }
    }

    /// Its HTTP/2 connections to servers.
    pub fn h2_pool(&self) -> &crate::h2up::H2Pool {
        &self.h2_conns
    }

    /// The cap on its open client connections (its accept loop admits
    /// through it).
    pub fn gate(&self) -> &Arc<rt::ConnGate> {
        &self.gate
    }

    /// Count a request in flight, unless `max_requests_in_flight` already are.
    pub fn begin_request(self: &Arc<Self>) -> Option<RequestSlot> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_in_flight.load(Ordering::Relaxed) {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(RequestSlot(self.clone()))
    }

    /// Requests in flight now.
    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The connection cap of what it carries now.
    fn update_gate(&self) {
        let max = match self.protocol() {
            VsProtocol::Tcp => self.l4().max_connections,
            VsProtocol::Http | VsProtocol::Udp => self.http().max_connections,
        };
        self.gate.set_max(max as usize);
    }

    /// How new connections to servers speak TLS (None: plain TCP).
    pub fn upstream_tls(&self) -> Option<Arc<crate::upstream::UpstreamTls>> {
        self.upstream_tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Change how connections to servers speak TLS; idle ones made the old
    /// way are closed.
    pub fn set_upstream_tls(&self, tls: Option<Arc<crate::upstream::UpstreamTls>>) {
        *self.upstream_tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        self.conns.retain(|_| false);
        self.h2_conns.retain(|_| false);
    }

    /// Its traffic counters on this SE.
    pub fn counters(&self) -> &Arc<crate::counters::VsCounters> {
        &self.counters
    }

    /// What it carries and its L4 limits (for new connections).
    pub fn protocol(&self) -> VsProtocol {
        self.l4.read().unwrap_or_else(|p| p.into_inner()).0
    }

    /// Its L4 limits for new connections and flows.
    pub fn l4(&self) -> VsL4 {
        self.l4.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Change what it carries (new connections) and its L4 limits.
    pub fn set_l4(&self, protocol: VsProtocol, l4: VsL4) {
        *self.l4.write().unwrap_or_else(|p| p.into_inner()) = (protocol, l4);
        self.update_gate();
    }

    /// The same carrying `protocol` with `l4` limits.
    pub fn with_l4(self, protocol: VsProtocol, l4: VsL4) -> Self {
        self.set_l4(protocol, l4);
        self
    }

    /// The same with other HTTP settings.
    pub fn with_http(self, http: VsHttp) -> Self {
        self.set_http(http);
        self
    }

    /// Its HTTP settings (limits, added headers) for new connections.
    pub fn http(&self) -> VsHttp {
        *self.http.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Change its HTTP settings; open connections keep theirs.
    pub fn set_http(&self, http: VsHttp) {
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = http;
        self.max_in_flight
            .store(http.max_requests_in_flight as usize, Ordering::Relaxed);
        self.update_gate();
    }

    /// The SE it runs on.
    pub fn se_name(&self) -> &str {
        &self.se_name
    }

    /// Idle connections to servers, kept for its clients' requests.
    pub fn conn_pool(&self) -> &crate::relay::ConnPool {
        &self.conns
    }

    /// The TLS settings new connections get (None: plain HTTP/1.1).
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swap the TLS settings (a certificate reload); open connections keep theirs.
    pub fn set_tls(&self, tls: Option<Arc<rustls::ServerConfig>>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// The server set requests use now.
    pub fn servers(&self) -> Arc<ServerSet> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Swap in a new server set; requests already past their pick keep the
    /// old one. Idle connections to servers no longer in it are closed.
    pub fn set_servers(&self, servers: ServerSet) {
        let addrs: std::collections::BTreeSet<SocketAddr> = servers.addrs().collect();
        *self.servers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(servers);
        self.conns.retain(|a| addrs.contains(a));
        self.h2_conns.retain(|a| addrs.contains(a));
    }
}

/// Serve one client connection of `vs`. Malformed requests get hyper's 4xx
/// answer (400, 431 for oversized headers) and the connection closes; a
/// client that does not complete a TLS handshake in time, or sends garbage,
/// is dropped.
pub async fn serve_connection(vs: Arc<VirtualService>, stream: rt::TcpStream, peer: SocketAddr) {
    let _open = vs.counters().open();
    let tcp = vs.protocol() == VsProtocol::Tcp;
    let Some(tls) = vs.tls() else {
        return if tcp {
            crate::l4::serve_tcp(vs, stream, peer).await
        } else {
            crate::relay::serve(vs, stream, peer, false).await
        };
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match rt::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(vs = %vs.name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(vs = %vs.name, %peer, "TLS handshake timed out");
            return;
        }
    };
    if tcp {
        crate::l4::serve_tcp(vs, stream, peer).await
    } else if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        crate::h2relay::serve(vs, stream, peer).await
    } else {
        crate::relay::serve(vs, stream, peer, true).await
    }
}

/// The SE's answer when no server took a request: 503 when none was
/// eligible, 502 when every one tried refused the connection.
pub(crate) fn no_server(vs: &str, tried: &[SocketAddr]) -> (u16, &'static str) {
    if tried.is_empty() {
        tracing::debug!(vs, "no eligible server");
        (503, "no server of the pool is available")
    } else {
        tracing::warn!(vs, ?tried, "no server reachable");
        (502, "no server of the pool is reachable")
    }
}

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The connection failed.
    #[error("connect failed: {0}")]
    Connect(#[from] std::io::Error),
    /// HTTP failed on the connection.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// No response in time.
    #[error("response timed out")]
    ResponseTimeout,
}

/// An HTTP/1.1 connection to `server`, connected within [`CONNECT_TIMEOUT`];
/// the connection's task ends when the sender and its responses are dropped.
pub(crate) async fn open<B>(
    server: SocketAddr,
) -> Result<client_http1::SendRequest<B>, UpstreamError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    open_via(server, CONNECT_TIMEOUT, None).await
}

/// [`open`], over TLS when `tls` is given.
pub(crate) async fn open_via<B>(
    server: SocketAddr,
    limit: Duration,
    tls: Option<&crate::upstream::UpstreamTls>,
) -> Result<client_http1::SendRequest<B>, UpstreamError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = crate::upstream::connect(server, limit, tls)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => UpstreamError::ConnectTimeout,
            _ => UpstreamError::Connect(e),
        })?;
    let (sender, conn) =
        client_http1::handshake(TokioIo::new(rt::FlushOnWrite::new(stream))).await?;
    rt::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Send one request to `server` on a new connection and read the whole
/// response: for clients in tests, drills and the simulation.
pub async fn fetch<B>(server: SocketAddr, req: Request<B>) -> Result<Response<Bytes>, UpstreamError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut sender = open(server).await?;
    let resp = rt::timeout(RESPONSE_TIMEOUT, sender.send_request(req))
        .await
        .map_err(|_| UpstreamError::ResponseTimeout)??;
    let (parts, body) = resp.into_parts();
    let body = rt::timeout(RESPONSE_TIMEOUT, body.collect())
        .await
        .map_err(|_| UpstreamError::ResponseTimeout)??
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// `GET path` on `server` with `Host: host`; the whole response.
pub async fn get(
    server: SocketAddr,
    host: &str,
    path: &str,
) -> Result<Response<Bytes>, UpstreamError> {
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| {
            UpstreamError::Connect(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        })?;
    fetch(server, req).await
}
