//! The HTTP reverse proxy of one virtual service: HTTP/1.1 in the clear, or
//! TLS (rustls, [`crate::tls`]) and then HTTP/1.1 or HTTP/2 as ALPN decides.
//! Servers are spoken to in HTTP/1.1 either way.
//!
//! Each request picks a server from the virtual service's current
//! [`ServerSet`] by the client's address and the request's headers. A server
//! that cannot be connected to is skipped and the next eligible one tried
//! (the request has not been sent, so that is safe), up to
//! [`MAX_CONNECT_ATTEMPTS`]; a failure after the request was sent is
//! answered 502/504, never retried. Every such failure counts toward the
//! server's `fall` (passive health). When no server is eligible the answer is
//! 503. Responses carry [`SE_HEADER`](crate::SE_HEADER) naming this SE.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fabric::model::{Algorithm, VsHttp, VsL4, VsProtocol};
use fabric::rt;
use http::{HeaderValue, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1 as client_http1;
use hyper::server::conn::http2 as server_http2;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::lb::{PickContext, Picked, ServerSet};

/// Time allowed to open a connection to a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for a server to start its response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most servers one request tries to connect to.
pub const MAX_CONNECT_ATTEMPTS: usize = 4;

/// Body of a proxied response: the server's, or one we made.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most HTTP/2 streams one client connection may have open.
pub const MAX_H2_STREAMS: u32 = 256;
/// Most idle keep-alive connections kept per server.
pub const MAX_IDLE_PER_SERVER: usize = 256;
/// How long an idle connection to a server is kept for reuse (below the
/// usual servers' keep-alive timeouts, so they rarely close one under us).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Idle hyper HTTP/1.1 connections to servers, for HTTP/2 clients' requests.
#[derive(Default)]
pub struct ServerPool(crate::relay::IdlePool<Sender>);

type Sender = client_http1::SendRequest<Incoming>;

impl ServerPool {
    /// An idle connection to `server` that can take a request now, if any.
    fn take(&self, server: SocketAddr) -> Option<Sender> {
        self.0.take(server, |s| s.is_ready() && !s.is_closed())
    }

    /// Keep `sender` for reuse: at once, with no task; until its connection
    /// has finished the response it is skipped by `take`, and dropped if it
    /// closes.
    fn give_back(&self, server: SocketAddr, sender: Sender) {
        if !sender.is_closed() {
            self.0.give_back(server, sender);
        }
    }

    /// Idle connections kept now, over all servers.
    pub fn idle(&self) -> usize {
        self.0.idle()
    }

    /// Drop idle connections to servers not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.0.retain(keep)
    }
}

/// A virtual service as the data plane serves it.
pub struct VirtualService {
    /// Name of the virtual service.
    pub name: String,
    se_name: Arc<str>,
    servers: RwLock<Arc<ServerSet>>,
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    pool: Arc<ServerPool>,
    conns: crate::relay::ConnPool,
    http: RwLock<VsHttp>,
    l4: RwLock<(VsProtocol, VsL4)>,
    counters: Arc<crate::counters::VsCounters>,
    upstream_tls: RwLock<Option<Arc<crate::upstream::UpstreamTls>>>,
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
            pool: Arc::default(),
            conns: crate::relay::ConnPool::default(),
            http: RwLock::new(VsHttp::default()),
            l4: RwLock::new((VsProtocol::Http, VsL4::default())),
            counters: Arc::default(),
            upstream_tls: RwLock::new(None),
        }
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
        self.pool.retain(|_| false);
        self.conns.retain(|_| false);
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
    }

    /// The SE it runs on.
    pub fn se_name(&self) -> &str {
        &self.se_name
    }

    /// Idle HTTP/1.1 connections to servers kept for its HTTP/2 clients.
    pub fn pool(&self) -> &ServerPool {
        &self.pool
    }

    /// Idle connections to servers kept for its HTTP/1.x clients.
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
        self.pool.retain(|a| addrs.contains(a));
        self.conns.retain(|a| addrs.contains(a));
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
        let max_header_bytes = vs.http().max_header_bytes;
        let service = service_fn(move |req| {
            let vs = vs.clone();
            async move {
                let since = rt::now();
                vs.counters().request();
                let resp = handle(&vs, req, peer, true).await;
                let own = resp.extensions().get::<OwnResponse>().is_some();
                vs.counters().response(resp.status().as_u16(), since, own);
                Ok::<_, Infallible>(resp)
            }
        });
        let _ = server_http2::Builder::new(rt::Exec)
            .timer(rt::Timer)
            .max_header_list_size(max_header_bytes)
            .max_concurrent_streams(MAX_H2_STREAMS)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    } else {
        crate::relay::serve(vs, stream, peer, true).await
    }
}

async fn handle(
    vs: &VirtualService,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
) -> Response<ProxyBody> {
    let settings = vs.http();
    let response_timeout = Duration::from_millis(settings.response_timeout_ms);
    let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
    if head_bytes(&req) > settings.max_header_bytes as usize {
        let mut resp = error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large",
        );
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        tag(&mut resp, &vs.se_name);
        return resp;
    }
    add_forwarded_for(&mut req, peer, tls, &settings);
    to_http1(&mut req);
    let servers = vs.servers();
    let upstream_tls = vs.upstream_tls();
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    let mut failures = Vec::new();
    // Only power of two choices draws: other algorithms leave the world's
    // generator (and so a simulation's other random choices) untouched.
    let draws = servers.algorithm() == Algorithm::PowerOfTwoChoices;
    while tried.len() < MAX_CONNECT_ATTEMPTS {
        let ctx = PickContext {
            client: peer.ip(),
            headers: Some(req.headers()),
            header_value: None,
            random: if draws { rt::random_u64() } else { 0 },
        };
        let Some(picked) = servers.pick(&ctx, &tried) else {
            break;
        };
        let server = picked.addr();
        let mut sender = match vs.pool.take(server) {
            Some(sender) => sender,
            None => match open_via(server, connect_timeout, upstream_tls.as_deref()).await {
                Ok(sender) => sender,
                Err(e) => {
                    picked.state().on_request_failed(&e.to_string());
                    failures.push(format!("{server}: {e}"));
                    tried.push(server);
                    continue;
                }
            },
        };
        let sent_at = rt::now();
        let mut sent = rt::timeout(response_timeout, sender.try_send_request(req)).await;
        if let Ok(Err(e)) = &mut sent {
            if let Some(back) = e.take_message() {
                // The idle connection had closed before the request went
                // out: it goes out again on a new connection.
                match open_via(server, connect_timeout, upstream_tls.as_deref()).await {
                    Ok(fresh) => {
                        sender = fresh;
                        sent = rt::timeout(response_timeout, sender.try_send_request(back)).await;
                    }
                    Err(e) => {
                        picked.state().on_request_failed(&e.to_string());
                        failures.push(format!("{server}: {e}"));
                        tried.push(server);
                        req = back;
                        continue;
                    }
                }
            }
        }
        let mut resp = match sent {
            Ok(Ok(resp)) => {
                picked.state().on_response_status(resp.status().as_u16());
                picked
                    .state()
                    .record_latency(rt::now().saturating_duration_since(sent_at));
                // The request stays in flight on the server until its body
                // is done; then the connection goes back to the pool.
                let pool = vs.pool.clone();
                resp.map(|body| {
                    Guarded {
                        body,
                        _picked: picked,
                        back: Some((pool, server, sender)),
                    }
                    .boxed()
                })
            }
            Ok(Err(e)) => {
                let e = e.into_error();
                picked.state().on_request_failed(&format!("http: {e}"));
                error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!("server {server} failed: {e}"),
                )
            }
            Err(_) => {
                picked.state().on_request_failed("response timed out");
                error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("server {server} did not answer in time"),
                )
            }
        };
        tag(&mut resp, &vs.se_name);
        return resp;
    }
    let mut resp = if tried.is_empty() {
        tracing::debug!(vs = %vs.name, "no eligible server");
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no server of the pool is available",
        )
    } else {
        tracing::warn!(vs = %vs.name, ?failures, "no server reachable");
        error_response(
            StatusCode::BAD_GATEWAY,
            "no server of the pool is reachable",
        )
    };
    tag(&mut resp, &vs.se_name);
    resp
}

/// A response body that keeps its request counted in flight on the server
/// until the body ends or is dropped, and then hands the connection back
/// to the pool (which keeps it only if the response was read to the end).
struct Guarded<B> {
    body: B,
    _picked: Picked,
    back: Option<(Arc<ServerPool>, SocketAddr, Sender)>,
}

impl<B> Drop for Guarded<B> {
    fn drop(&mut self) {
        if let Some((pool, server, sender)) = self.back.take() {
            pool.give_back(server, sender);
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Size of the request line and headers as received (hyper bounds its read
/// buffer, but a head that arrives in one read is not checked against it).
fn head_bytes<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// Make a request (HTTP/2, or HTTP/1.0) one that HTTP/1.1 to a server can
/// carry: the authority becomes the Host header, the target its origin form.
fn to_http1<B>(req: &mut Request<B>) {
    if req.version() == http::Version::HTTP_11 {
        return;
    }
    *req.version_mut() = http::Version::HTTP_11;
    if let Some(authority) = req.uri().authority().cloned() {
        if !req.headers().contains_key(http::header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if let Ok(uri) = target.parse() {
        *req.uri_mut() = uri;
    }
}

/// The headers [`VsHttp`] asks for, as the HTTP/1.x relay adds them
/// (`docs/http.md`).
fn add_forwarded_for(req: &mut Request<Incoming>, peer: SocketAddr, tls: bool, http: &VsHttp) {
    let headers = req.headers_mut();
    let proto = if tls { "https" } else { "http" };
    if http.x_forwarded_for {
        headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.append("x-forwarded-for", v);
        }
    }
    if http.forwarded {
        let value = format!("{};proto={proto}", crate::h1::ForwardedFor(peer.ip()));
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append("forwarded", v);
        }
    }
}

fn tag(resp: &mut Response<ProxyBody>, se_name: &str) {
    if let Ok(v) = HeaderValue::from_str(se_name) {
        resp.headers_mut().insert(crate::SE_HEADER, v);
    }
}

/// Marks a response the SE made itself (for the counters).
#[derive(Debug, Clone, Copy)]
struct OwnResponse;

fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.extensions_mut().insert(OwnResponse);
    resp
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
