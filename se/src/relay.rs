//! The HTTP/1.x reverse proxy's connection loop: client requests relayed to
//! pooled server connections byte for byte, around the pure head and body
//! handling of [`crate::h1`].
//!
//! Per request: read the head (bounded in size and time), pick a server,
//! send the rewritten head with whatever body bytes already arrived in one
//! write, stream the rest of the body, read the response head, send it with
//! the body bytes that came with it in one write, stream the rest. Nothing
//! is buffered beyond one read, so memory per connection is bounded and a
//! request or response of any size streams through.
//!
//! Failure handling, in the order a request meets it:
//! - a server that refuses the connection is skipped for the next eligible
//!   one (the request was not sent), up to [`MAX_CONNECT_ATTEMPTS`];
//! - idempotent requests that fit in one write may go on a reused idle
//!   connection, and are sent again on a new one if the server had closed
//!   it; every other request gets a new connection, so no request is sent
//!   twice to a server that may have acted on it;
//! - a server that fails after the request went out gets 502, one that
//!   does not answer in time 504, never a retry; a response that breaks
//!   off after its head closes the client connection.
//!
//! `Upgrade` requests that a server answers 101 (WebSocket) become a
//! tunnel: bytes both ways until either side closes or the tunnel is idle
//! for [`Limits::tunnel_idle`].

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::model::VsHttp;
use fabric::rt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::h1::{self, BodyEnd, Forwarding, Framing, HeadError, ResponseRewrite};
use crate::lb::Picked;
use crate::proxy::{VirtualService, MAX_CONNECT_ATTEMPTS};

/// Time and size limits of one HTTP/1.x client connection, from its
/// virtual service's [`VsHttp`] when the connection started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a whole request head once it started
    /// one (slow clients are cut off: 408).
    pub header: Duration,
    /// Time a keep-alive client connection may sit idle between requests.
    pub client_idle: Duration,
    /// Time allowed to open a connection to a server.
    pub connect: Duration,
    /// Time a server has to start its response once the request is sent.
    pub response: Duration,
    /// Longest pause inside a body, either way.
    pub body_idle: Duration,
    /// Longest pause in an upgraded (WebSocket) tunnel.
    pub tunnel_idle: Duration,
    /// Largest request or response head.
    pub max_head: usize,
    /// Largest request body (`u64::MAX`: no limit).
    pub max_body: u64,
}

impl From<&VsHttp> for Limits {
    fn from(h: &VsHttp) -> Self {
        let ms = Duration::from_millis;
        Self {
            header: ms(h.header_timeout_ms),
            client_idle: ms(h.client_idle_timeout_ms),
            connect: ms(h.connect_timeout_ms),
            response: ms(h.response_timeout_ms),
            body_idle: ms(h.body_idle_timeout_ms),
            tunnel_idle: ms(h.tunnel_idle_timeout_ms),
            max_head: h.max_header_bytes as usize,
            max_body: match h.max_body_bytes {
                0 => u64::MAX,
                n => n,
            },
        }
    }
}

/// Bytes read from a socket per read call (and the buffer's initial size).
const READ_CHUNK: usize = 16 * 1024;

/// An open connection to a server with what it sent and no one read yet.
pub struct Upstream {
    pub(crate) stream: crate::upstream::Stream,
    pub(crate) buf: Vec<u8>,
}

/// Idle connections of type `C` to servers, reused by later requests: at
/// most [`crate::proxy::MAX_IDLE_PER_SERVER`] per server, none idle longer
/// than [`crate::proxy::IDLE_TIMEOUT`]. Taking and giving back are a lock and
/// a queue operation.
pub struct IdlePool<C> {
    idle: Mutex<BTreeMap<SocketAddr, VecDeque<(Instant, C)>>>,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        Self {
            idle: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<C> IdlePool<C> {
    /// The most recently used idle connection to `server` that is `usable`
    /// now. Expired ones are dropped; unusable ones stay (a response may
    /// still be finishing on them) until they expire or are pushed out.
    pub(crate) fn take(
        &self,
        server: SocketAddr,
        now: Instant,
        usable: impl Fn(&C) -> bool,
    ) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let queue = idle.get_mut(&server)?;
        // Oldest first: the expired ones are at the front.
        while queue.front().is_some_and(|(since, _)| {
            now.saturating_duration_since(*since) >= crate::proxy::IDLE_TIMEOUT
        }) {
            queue.pop_front();
        }
        let at = queue.iter().rposition(|(_, c)| usable(c))?;
        queue.remove(at).map(|(_, c)| c)
    }

    /// Keep `conn` for reuse from `now` (the oldest goes when the server
    /// has too many).
    pub(crate) fn give_back(&self, server: SocketAddr, conn: C, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let queue = idle.entry(server).or_default();
        if queue.len() >= crate::proxy::MAX_IDLE_PER_SERVER {
            queue.pop_front();
        }
        queue.push_back((now, conn));
    }

    /// Idle connections kept now, over all servers.
    pub fn idle(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(VecDeque::len).sum()
    }

    /// Drop idle connections to servers not in `keep`.
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|addr, _| keep(addr));
    }
}

/// The HTTP/1.x relay's pool of plain server connections.
pub type ConnPool = IdlePool<Upstream>;

pub(crate) async fn connect(
    server: SocketAddr,
    limits: &Limits,
    tls: Option<&crate::upstream::UpstreamTls>,
) -> io::Result<Upstream> {
    let stream = crate::upstream::connect(server, limits.connect, tls).await?;
    Ok(Upstream {
        stream,
        buf: Vec::with_capacity(READ_CHUNK),
    })
}

/// Read once from `stream`, appending to `buf`; `Ok(0)` at end of stream.
async fn read_some<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

pub(crate) async fn read_timed<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<usize> {
    rt::timeout(limit, read_some(stream, buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
}

pub(crate) async fn write_all<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Move the body bytes at the start of `buf` that `end` accepts into
/// `out`; returns how many.
fn take_body(
    end: &mut BodyEnd,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<usize, h1::ChunkError> {
    let n = end.feed(buf)?;
    out.extend_from_slice(&buf[..n]);
    buf.drain(..n);
    Ok(n)
}

/// Why streaming a body stopped early.
enum BodyError {
    /// The sending side broke off, misframed, or paused too long.
    Source,
    /// The receiving side failed.
    Sink,
    /// More body than allowed.
    TooLarge,
}

/// Stream the rest of a body from `src` (with `srcbuf` holding what was
/// read already) to `dst` until `end` says it is complete; `UntilClose`
/// bodies end when `src` closes.
async fn relay_body<R, W>(
    src: &mut R,
    srcbuf: &mut Vec<u8>,
    dst: &mut W,
    end: &mut BodyEnd,
    idle: Duration,
    scratch: &mut Vec<u8>,
    budget: &mut u64,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if end.is_done() {
            return Ok(());
        }
        srcbuf.clear();
        match read_timed(src, srcbuf, idle).await {
            Ok(0) if *end == BodyEnd::UntilClose => return Ok(()),
            Ok(0) | Err(_) => return Err(BodyError::Source),
            Ok(_) => {}
        }
        scratch.clear();
        let n = take_body(end, srcbuf, scratch).map_err(|_| BodyError::Source)?;
        *budget = budget.checked_sub(n as u64).ok_or(BodyError::TooLarge)?;
        write_all(dst, scratch).await.map_err(|_| BodyError::Sink)?;
    }
}

/// Wait up to `limit` for the first bytes of the response to a request
/// just sent on `upstream`. A connection closed or reset before any of
/// them is [`Failed::Stale`]: the server had closed it (a reused one) or
/// dropped the request unread.
pub(crate) async fn first_bytes(upstream: &mut Upstream, limit: Duration) -> Result<(), Failed> {
    first_bytes_verdict(read_timed(&mut upstream.stream, &mut upstream.buf, limit).await)
}

/// What the first read of a response says about the exchange.
fn first_bytes_verdict(read: io::Result<usize>) -> Result<(), Failed> {
    match read {
        Ok(0) => Err(Failed::Stale),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(Failed::Timeout),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Err(Failed::Stale)
        }
        Err(e) => Err(Failed::Broken(e.to_string())),
    }
}

/// Read once from `stream` into `buf`, giving up at `at` (one reused timer
/// per connection: `timer`).
async fn read_by<S: AsyncRead + Unpin>(
    timer: &mut rt::Deadline,
    stream: &mut S,
    buf: &mut Vec<u8>,
    at: Instant,
) -> io::Result<usize> {
    timer
        .run(at, read_some(stream, buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
}

/// One client connection and its buffers (reused request after request).
struct Conn<S> {
    vs: Arc<VirtualService>,
    limits: Limits,
    client: S,
    peer: SocketAddr,
    se_name: Vec<u8>,
    /// Client bytes read and not yet relayed.
    inbuf: Vec<u8>,
    /// The request for the server: head and first body bytes.
    out: Vec<u8>,
    /// The response for the client: head and first body bytes.
    resp: Vec<u8>,
    /// Body bytes on their way.
    scratch: Vec<u8>,
    /// When the current request's head had arrived.
    started: Instant,
    /// When the current request went to its server.
    sent_at: Instant,
    /// When the last response was done (the client's idle time starts).
    responded: Instant,
    /// The timer of every wait on this connection's reads.
    timer: rt::Deadline,
    /// Request body bytes the current request may still send.
    budget: u64,
}

/// Serve one HTTP/1.x client connection of `vs` (plain, or TLS already
/// terminated: `tls`).
pub async fn serve<S>(vs: Arc<VirtualService>, client: S, peer: SocketAddr, tls: bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let http = vs.http();
    let fwd = Forwarding::new(peer.ip(), tls, http.x_forwarded_for, http.forwarded);
    let mut conn = Conn {
        limits: Limits::from(&http),
        se_name: vs.se_name().as_bytes().to_vec(),
        vs,
        client,
        peer,
        inbuf: Vec::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        resp: Vec::with_capacity(READ_CHUNK),
        scratch: Vec::new(),
        started: rt::now(),
        sent_at: rt::now(),
        responded: rt::now(),
        timer: rt::Deadline::new(),
        budget: u64::MAX,
    };
    let mut first = true;
    loop {
        let servers = conn.vs.servers();
        let Some(head) = conn.read_head(&fwd, &servers, first).await else {
            return;
        };
        first = false;
        conn.vs.counters().request();
        let hash_value = head.hash_value.map(|(a, b)| conn.inbuf[a..b].to_vec());
        conn.inbuf.drain(..head.len);
        let Some(_slot) = conn.vs.begin_request() else {
            // Not read: a body would have to be skipped, so that closes.
            let close = head.framing != Framing::Empty || !head.keep_alive;
            match conn.answer(503, "too many requests in flight", close).await {
                Exchange::KeepAlive => continue,
                Exchange::Close => {
                    let _ = conn.client.shutdown().await;
                    return;
                }
                Exchange::Gone => return,
            }
        };
        if head.expect_continue
            && head.framing != Framing::Empty
            && conn.inbuf.is_empty()
            && write_all(&mut conn.client, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        // The head for the server, then the body bytes that came with it.
        let mut req_end = BodyEnd::new(head.framing);
        let first = match take_body(&mut req_end, &mut conn.inbuf, &mut conn.out) {
            Ok(n) => n as u64,
            Err(_) => {
                let e = HeadError::Framing("malformed chunked body");
                conn.refuse(&e).await;
                return;
            }
        };
        let declared = match head.framing {
            Framing::Length(n) => n,
            _ => first,
        };
        if declared > conn.limits.max_body {
            let _ = conn.answer(413, "request body too large", true).await;
            let _ = conn.client.shutdown().await;
            return;
        }
        conn.budget = conn.limits.max_body - declared;
        let outcome = conn
            .exchange(&servers, &head, &mut req_end, hash_value.as_deref())
            .await;
        match outcome {
            Exchange::KeepAlive if head.keep_alive && req_end.is_done() => continue,
            Exchange::KeepAlive | Exchange::Close => {
                let _ = conn.client.shutdown().await;
                return;
            }
            Exchange::Gone => return,
        }
    }
}

/// How a request ended for the client connection.
enum Exchange {
    /// A complete response went out; the connection may serve another.
    KeepAlive,
    /// Answered, but the connection must close.
    Close,
    /// The connection broke, or became a tunnel that ended.
    Gone,
}

/// Why no response came from a server.
pub(crate) enum Failed {
    /// Connecting failed (the request was not sent: try another server).
    Connect(io::Error),
    /// A reused connection was closed by the server before it answered.
    Stale,
    /// Sending the request or reading the response failed.
    Broken(String),
    /// No response head in time.
    Timeout,
    /// The client broke off while its body streamed.
    Client,
    /// The request body is larger than allowed.
    TooLarge,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// The next request head (its rewritten form in `out`), or `None` when
    /// the connection is done (closed, idle too long, or refused a bad head).
    async fn read_head(
        &mut self,
        fwd: &Forwarding,
        servers: &crate::lb::ServerSet,
        first: bool,
    ) -> Option<h1::RequestHead> {
        let hash_header = servers.hash_header().map(|h| h.as_str());
        // The client may idle before it starts a head, and then has
        // `limits.header` to finish it.
        let mut deadline = None;
        if first || !self.inbuf.is_empty() {
            self.started = rt::now();
            deadline = Some(self.started + self.limits.header);
        }
        loop {
            match h1::parse_request(
                &self.inbuf,
                self.limits.max_head,
                fwd,
                hash_header,
                &mut self.out,
            ) {
                Ok(Some(head)) => return Some(head),
                Ok(None) => {}
                Err(e) => {
                    self.refuse(&e).await;
                    return None;
                }
            }
            let at = deadline.unwrap_or(self.responded + self.limits.client_idle);
            match read_by(&mut self.timer, &mut self.client, &mut self.inbuf, at).await {
                Ok(0) => return None,
                Ok(_) => {
                    // The head is complete with some read: its time is the
                    // request's start.
                    self.started = rt::now();
                    deadline.get_or_insert(self.started + self.limits.header);
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut && !self.inbuf.is_empty() => {
                    let message = "request head not received in time";
                    self.vs.counters().request();
                    self.vs.counters().response(408, rt::now(), true);
                    h1::own_response(408, message, &self.se_name, true, &mut self.resp);
                    let _ = write_all(&mut self.client, &self.resp).await;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    async fn refuse(&mut self, e: &HeadError) {
        tracing::debug!(peer = %self.peer, error = %e, "request refused");
        self.vs.counters().request();
        self.vs.counters().response(e.status(), rt::now(), true);
        h1::own_response(
            e.status(),
            &e.to_string(),
            &self.se_name,
            true,
            &mut self.resp,
        );
        let _ = write_all(&mut self.client, &self.resp).await;
        let _ = self.client.shutdown().await;
    }

    /// Answer with an error of our own; the connection stays open if the
    /// request was read to its end.
    async fn answer(&mut self, status: u16, message: &str, close: bool) -> Exchange {
        self.responded = rt::now();
        self.vs
            .counters()
            .response_at(status, self.started, self.responded, true);
        h1::own_response(status, message, &self.se_name, close, &mut self.resp);
        match write_all(&mut self.client, &self.resp).await {
            Ok(()) if close => Exchange::Close,
            Ok(()) => Exchange::KeepAlive,
            Err(_) => Exchange::Gone,
        }
    }

    /// Send the request in `out` to a server of `servers` and relay the response.
    async fn exchange(
        &mut self,
        servers: &crate::lb::ServerSet,
        head: &h1::RequestHead,
        req_end: &mut BodyEnd,
        hash_value: Option<&[u8]>,
    ) -> Exchange {
        if self.vs.upstream_h2() {
            return self.exchange_h2(servers, head, req_end, hash_value).await;
        }
        // An idempotent request that is all in `out` may go on a reused
        // connection and be sent again if that one turns out closed; any
        // other request gets a new connection, so that it is never sent
        // twice to a server that may have acted on it.
        let reuse = req_end.is_done() && head.idempotent;
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut tried = [unspecified; MAX_CONNECT_ATTEMPTS];
        let mut attempts = 0;
        let mut failures: Vec<String> = Vec::new();
        while attempts < MAX_CONNECT_ATTEMPTS {
            let Some(picked) =
                servers.pick_for(self.peer.ip(), None, hash_value, &tried[..attempts])
            else {
                break;
            };
            let server = picked.addr();
            match self.send(server, reuse, req_end).await {
                Ok(upstream) => return self.relay_response(picked, upstream, head).await,
                Err(Failed::Connect(e)) => {
                    picked.state().on_request_failed(&e.to_string());
                    failures.push(format!("{server}: {e}"));
                    tried[attempts] = server;
                    attempts += 1;
                }
                Err(Failed::Stale) => unreachable!("send replays stale connections"),
                Err(Failed::Client) => return Exchange::Gone,
                Err(Failed::TooLarge) => {
                    return self.answer(413, "request body too large", true).await
                }
                Err(Failed::Timeout) => {
                    picked.state().on_request_failed("response timed out");
                    let message = format!("server {server} did not answer in time");
                    return self.answer(504, &message, !req_end.is_done()).await;
                }
                Err(Failed::Broken(why)) => {
                    picked.state().on_request_failed(&why);
                    let message = format!("server {server} failed: {why}");
                    return self.answer(502, &message, !req_end.is_done()).await;
                }
            }
        }
        tracing::debug!(vs = %self.vs.name, ?failures, "connects failed");
        let (status, message) = crate::proxy::no_server(&self.vs.name, &tried[..attempts]);
        self.answer(status, message, !req_end.is_done()).await
    }

    /// [`Conn::exchange`] to HTTP/2 servers ([`crate::h2up`]): the head in
    /// `out` becomes an HTTP/2 request, the body goes as DATA frames
    /// (chunked coding removed), and the response comes back as HTTP/1.1
    /// (chunked unless the server gave a length).
    async fn exchange_h2(
        &mut self,
        servers: &crate::lb::ServerSet,
        head: &h1::RequestHead,
        req_end: &mut BodyEnd,
        hash_value: Option<&[u8]>,
    ) -> Exchange {
        let unread = !req_end.is_done();
        if head.upgrade {
            let message = "upgrades are not relayed to HTTP/2 servers";
            return self.answer(501, message, true).await;
        }
        let Some(head_len) = self.out.windows(4).position(|w| w == b"\r\n\r\n") else {
            return self.answer(500, "request head lost", true).await;
        };
        let head_len = head_len + 4;
        let scheme = if self.vs.upstream_tls().is_some() {
            "https"
        } else {
            "http"
        };
        let (parts, ()) = match h1::h1_head_to_h2(&self.out[..head_len], scheme) {
            Ok(req) => req.into_parts(),
            Err(e) => return self.answer(e.status(), &e.to_string(), true).await,
        };
        let end = head.framing == Framing::Empty;
        let tls = self.vs.upstream_tls();
        let mut tried = Vec::new();
        while tried.len() < MAX_CONNECT_ATTEMPTS {
            let Some(picked) = servers.pick_for(self.peer.ip(), None, hash_value, &tried) else {
                break;
            };
            let server = picked.addr();
            let limits = self.limits;
            let ready = self
                .vs
                .h2_pool()
                .ready(server, limits.connect, limits.response, tls.as_deref())
                .await;
            let mut sender = match ready {
                Ok(sender) => sender,
                Err(Failed::Connect(e)) => {
                    picked.state().on_request_failed(&e.to_string());
                    tried.push(server);
                    continue;
                }
                Err(Failed::Timeout) => {
                    let message = format!("server {server} has no free stream");
                    return self.answer(503, &message, unread).await;
                }
                Err(_) => {
                    let message = format!("server {server} failed");
                    return self.answer(502, &message, unread).await;
                }
            };
            self.sent_at = rt::now();
            let req = crate::h2up::request_like(&parts);
            let (answer, mut up) = match sender.send_request(req, end) {
                Ok(pair) => pair,
                Err(e) => {
                    picked.state().on_request_failed(&format!("http2: {e}"));
                    let message = format!("server {server} failed: {e}");
                    return self.answer(502, &message, unread).await;
                }
            };
            if !end {
                match self
                    .h2_send_body(&mut up, head_len, head.framing, req_end)
                    .await
                {
                    Ok(()) => {}
                    Err(BodyError::Source) => return Exchange::Gone,
                    Err(BodyError::TooLarge) => {
                        return self.answer(413, "request body too large", true).await
                    }
                    Err(BodyError::Sink) => {
                        picked.state().on_request_failed("server stopped reading");
                        let message = format!("server {server} stopped reading");
                        return self.answer(502, &message, true).await;
                    }
                }
            }
            let resp = match rt::timeout(limits.response, answer).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    picked.state().on_request_failed(&format!("http2: {e}"));
                    let message = format!("server {server} failed: {e}");
                    return self.answer(502, &message, !req_end.is_done()).await;
                }
                Err(_) => {
                    picked.state().on_request_failed("response timed out");
                    let message = format!("server {server} did not answer in time");
                    return self.answer(504, &message, !req_end.is_done()).await;
                }
            };
            return self.h2_relay_response(picked, resp, head).await;
        }
        let (status, message) = crate::proxy::no_server(&self.vs.name, &tried);
        self.answer(status, message, !req_end.is_done()).await
    }

    /// Send the request body (its first bytes in `out` after the head,
    /// the rest still to read from the client) as DATA frames.
    async fn h2_send_body(
        &mut self,
        up: &mut h2::SendStream<bytes::Bytes>,
        head_len: usize,
        framing: Framing,
        req_end: &mut BodyEnd,
    ) -> Result<(), BodyError> {
        let idle = self.limits.body_idle;
        // `dec` decodes the body from its start; `req_end` had seen the
        // bytes in `out` already and keeps tracking the raw framing.
        let mut dec = BodyEnd::new(framing);
        let mut data = Vec::new();
        dec.decode(&self.out[head_len..], &mut data)
            .map_err(|_| BodyError::Source)?;
        loop {
            let done = dec.is_done();
            if !data.is_empty() || done {
                crate::h2up::capacity(up, idle)
                    .await
                    .map_err(|_| BodyError::Sink)?;
                up.send_data(bytes::Bytes::copy_from_slice(&data), done)
                    .map_err(|_| BodyError::Sink)?;
            }
            if done {
                return Ok(());
            }
            data.clear();
            match read_timed(&mut self.client, &mut self.inbuf, idle).await {
                Ok(n) if n > 0 => {}
                _ => return Err(BodyError::Source),
            }
            let n = req_end.feed(&self.inbuf).map_err(|_| BodyError::Source)?;
            self.budget = self
                .budget
                .checked_sub(n as u64)
                .ok_or(BodyError::TooLarge)?;
            dec.decode(&self.inbuf[..n], &mut data)
                .map_err(|_| BodyError::Source)?;
            self.inbuf.drain(..n);
        }
    }

    /// Relay a response from an HTTP/2 server to the HTTP/1.x client.
    async fn h2_relay_response(
        &mut self,
        picked: Picked,
        resp: http::Response<h2::RecvStream>,
        head: &h1::RequestHead,
    ) -> Exchange {
        let status = resp.status().as_u16();
        picked.state().on_response_status(status);
        picked
            .state()
            .record_latency(rt::now().saturating_duration_since(self.sent_at));
        let rw = ResponseRewrite {
            is_head: head.is_head,
            upgrade: false,
            close: !head.keep_alive,
            http10_keep_alive: head.http10 && head.keep_alive,
            se_name: &self.se_name,
        };
        let framing =
            h1::h2_response_head(status, resp.headers(), &rw, head.http10, &mut self.resp);
        if write_all(&mut self.client, &self.resp).await.is_err() {
            return Exchange::Gone;
        }
        self.vs.counters().response(status, self.started, false);
        let mut body = resp.into_body();
        if framing != Framing::Empty {
            loop {
                match rt::timeout(self.limits.body_idle, body.data()).await {
                    Ok(Some(Ok(data))) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        if data.is_empty() {
                            continue;
                        }
                        self.scratch.clear();
                        if framing == Framing::Chunked {
                            h1::push_chunk(&mut self.scratch, &data);
                        } else {
                            self.scratch.extend_from_slice(&data);
                        }
                        if write_all(&mut self.client, &self.scratch).await.is_err() {
                            return Exchange::Gone;
                        }
                    }
                    Ok(None) => break,
                    Ok(Some(Err(_))) | Err(_) => {
                        picked.state().on_request_failed("response body broke off");
                        return Exchange::Gone;
                    }
                }
            }
            if framing == Framing::Chunked
                && write_all(&mut self.client, b"0\r\n\r\n").await.is_err()
            {
                return Exchange::Gone;
            }
        }
        self.responded = rt::now();
        if framing == Framing::UntilClose || !head.keep_alive {
            Exchange::Close
        } else {
            Exchange::KeepAlive
        }
    }

    /// Send the request to `server` (streaming the rest of its body) and
    /// wait until its response head has arrived; the connection is returned
    /// with the response's bytes in its buffer.
    async fn send(
        &mut self,
        server: SocketAddr,
        reuse: bool,
        req_end: &mut BodyEnd,
    ) -> Result<Upstream, Failed> {
        let pool = self.vs.conn_pool();
        if reuse {
            if let Some(mut upstream) = pool.take(server, self.started, |_| true) {
                self.sent_at = self.started;
                match self.try_send(&mut upstream, req_end).await {
                    Ok(()) => return Ok(upstream),
                    Err(Failed::Stale) => {} // replayed below on a new connection
                    Err(e) => return Err(e),
                }
            }
        }
        let tls = self.vs.upstream_tls();
        let mut upstream = connect(server, &self.limits, tls.as_deref())
            .await
            .map_err(Failed::Connect)?;
        self.sent_at = rt::now();
        match self.try_send(&mut upstream, req_end).await {
            Ok(()) => Ok(upstream),
            Err(Failed::Stale) => Err(Failed::Broken("connection closed".into())),
            Err(e) => Err(e),
        }
    }

    async fn try_send(
        &mut self,
        upstream: &mut Upstream,
        req_end: &mut BodyEnd,
    ) -> Result<(), Failed> {
        upstream.buf.clear();
        if let Err(e) = write_all(&mut upstream.stream, &self.out).await {
            return Err(if req_end.is_done() {
                Failed::Stale
            } else {
                Failed::Broken(e.to_string())
            });
        }
        if !req_end.is_done() {
            match relay_body(
                &mut self.client,
                &mut self.inbuf,
                &mut upstream.stream,
                req_end,
                self.limits.body_idle,
                &mut self.scratch,
                &mut self.budget,
            )
            .await
            {
                Ok(()) => {}
                Err(BodyError::TooLarge) => return Err(Failed::TooLarge),
                Err(BodyError::Source) => return Err(Failed::Client),
                Err(BodyError::Sink) => {
                    return Err(Failed::Broken("server stopped reading".into()))
                }
            }
        }
        let at = self.sent_at + self.limits.response;
        first_bytes_verdict(
            read_by(&mut self.timer, &mut upstream.stream, &mut upstream.buf, at).await,
        )
    }

    /// Relay the response whose first bytes are in `upstream.buf`.
    async fn relay_response(
        &mut self,
        picked: Picked,
        mut upstream: Upstream,
        head: &h1::RequestHead,
    ) -> Exchange {
        let server = picked.addr();
        let rw = ResponseRewrite {
            is_head: head.is_head,
            upgrade: head.upgrade,
            close: !head.keep_alive,
            http10_keep_alive: head.http10 && head.keep_alive,
            se_name: &self.se_name,
        };
        let deadline = self.sent_at + self.limits.response;
        let resp = loop {
            match h1::parse_response(&upstream.buf, self.limits.max_head, &rw, &mut self.resp) {
                Ok(Some(resp)) if resp.is_interim() => {
                    upstream.buf.drain(..resp.len);
                    if write_all(&mut self.client, &self.resp).await.is_err() {
                        return Exchange::Gone;
                    }
                    continue;
                }
                Ok(Some(resp)) => break resp,
                Ok(None) => {}
                Err(e) => {
                    picked
                        .state()
                        .on_request_failed(&format!("bad response: {e}"));
                    let message = format!("server {server} sent a bad response: {e}");
                    return self.answer(502, &message, false).await;
                }
            }
            let read = read_by(
                &mut self.timer,
                &mut upstream.stream,
                &mut upstream.buf,
                deadline,
            );
            match read.await {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) => {
                    picked
                        .state()
                        .on_request_failed("response broke off in its head");
                    let message = format!("server {server} failed: response broke off");
                    return self.answer(502, &message, false).await;
                }
            }
        };
        picked.state().on_response_status(resp.status);
        self.responded = rt::now();
        picked
            .state()
            .record_latency(self.responded.saturating_duration_since(self.sent_at));
        upstream.buf.drain(..resp.len);
        let mut end = BodyEnd::new(resp.framing);
        if take_body(&mut end, &mut upstream.buf, &mut self.resp).is_err() {
            return Exchange::Gone;
        }
        if write_all(&mut self.client, &self.resp).await.is_err() {
            return Exchange::Gone;
        }
        self.vs
            .counters()
            .response_at(resp.status, self.started, self.responded, false);
        if resp.status == 101 {
            let rest = std::mem::take(&mut upstream.buf);
            tunnel(
                &mut self.client,
                &self.inbuf,
                &mut upstream.stream,
                &rest,
                self.limits.tunnel_idle,
            )
            .await;
            return Exchange::Gone;
        }
        if !end.is_done() {
            let relayed = relay_body(
                &mut upstream.stream,
                &mut upstream.buf,
                &mut self.client,
                &mut end,
                self.limits.body_idle,
                &mut self.scratch,
                &mut { u64::MAX },
            )
            .await;
            match relayed {
                Ok(()) => {}
                Err(BodyError::Source | BodyError::TooLarge) => {
                    picked.state().on_request_failed("response body broke off");
                    return Exchange::Gone;
                }
                Err(BodyError::Sink) => return Exchange::Gone,
            }
            self.responded = rt::now();
        }
        if resp.keep_alive && upstream.buf.is_empty() {
            self.vs
                .conn_pool()
                .give_back(server, upstream, self.responded);
        }
        drop(picked);
        if resp.framing == Framing::UntilClose {
            Exchange::Close
        } else {
            Exchange::KeepAlive
        }
    }
}

/// What one step of a [`tunnel`] did.
enum Moved {
    /// Bytes went one way.
    Bytes,
    /// The client finished sending (EOF).
    ClientDone,
    /// The server finished sending (EOF).
    ServerDone,
    /// A side failed.
    Broken,
}

/// Bytes both ways between a client and a server (an upgraded HTTP
/// connection, or an L4 TCP one) until both have finished sending, either
/// fails, or nothing moves for `idle`. A side that finishes (EOF) has that
/// passed on as a half-close, and the other direction carries on.
/// `to_server` and `to_client` are bytes that arrived before. Returns the
/// bytes moved (to the server, to the client).
pub(crate) async fn tunnel<C, U>(
    client: &mut C,
    to_server: &[u8],
    server: &mut U,
    to_client: &[u8],
    idle: Duration,
) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut moved = (to_server.len() as u64, to_client.len() as u64);
    if !to_client.is_empty() && write_all(client, to_client).await.is_err() {
        return moved;
    }
    if !to_server.is_empty() && write_all(server, to_server).await.is_err() {
        return moved;
    }
    let mut a = vec![0u8; READ_CHUNK];
    let mut b = vec![0u8; READ_CHUNK];
    let (mut client_sends, mut server_sends) = (true, true);
    while client_sends || server_sends {
        let step = rt::timeout(idle, async {
            tokio::select! {
                r = client.read(&mut a), if client_sends => match r {
                    Ok(0) => Moved::ClientDone,
                    Ok(n) if write_all(server, &a[..n]).await.is_ok() => {
                        moved.0 += n as u64;
                        Moved::Bytes
                    }
                    _ => Moved::Broken,
                },
                r = server.read(&mut b), if server_sends => match r {
                    Ok(0) => Moved::ServerDone,
                    Ok(n) if write_all(client, &b[..n]).await.is_ok() => {
                        moved.1 += n as u64;
                        Moved::Bytes
                    }
                    _ => Moved::Broken,
                },
            }
        })
        .await;
        match step {
            Ok(Moved::Bytes) => {}
            Ok(Moved::ClientDone) => {
                client_sends = false;
                let _ = server.shutdown().await;
            }
            Ok(Moved::ServerDone) => {
                server_sends = false;
                let _ = client.shutdown().await;
            }
            Ok(Moved::Broken) | Err(_) => break,
        }
    }
    let _ = client.shutdown().await;
    let _ = server.shutdown().await;
    moved
}
