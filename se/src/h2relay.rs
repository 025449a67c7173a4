//! HTTP/2 clients (TLS with ALPN `h2`) relayed to servers over the same
//! pooled HTTP/1.1 connections as the HTTP/1.x relay ([`crate::relay`]).
//!
//! The `h2` crate does the framing, HPACK and flow control. Every stream
//! of a client connection runs inside that connection's task (a
//! `FuturesUnordered`, not a task per stream), so a request costs no task
//! spawn, no channel and no cross-task wakeup: the stream writes its
//! request head to a pooled server connection, reads the response head
//! with [`h1::parse_response_fields`], and sends the body on as DATA
//! frames (chunked bodies decoded on the way), waiting for the client's
//! flow-control window before each read so that a slow client holds at
//! most one read of a response in memory.
//!
//! The failure rules are the relay's: a server that refuses the
//! connection is skipped for the next eligible one; idempotent requests
//! without a body may go on a reused connection and are sent again on a
//! new one if the server had closed it; a failure after the request went
//! out is answered 502, no answer in time 504, never a retry.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use fabric::rt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::h1::{self, BodyEnd, Forwarding, Framing};
use crate::lb::Picked;
use crate::proxy::{VirtualService, MAX_CONNECT_ATTEMPTS};
use crate::relay::{self, Failed, Limits, Upstream};

/// Serve one HTTP/2 client connection of `vs` (TLS already terminated).
pub async fn serve<S>(vs: Arc<VirtualService>, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let http = vs.http();
    let ctx = StreamCtx {
        limits: Limits::from(&http),
        fwd: Forwarding::new(peer.ip(), true, http.x_forwarded_for, http.forwarded),
        se_name: HeaderValue::from_str(vs.se_name())
            .unwrap_or_else(|_| HeaderValue::from_static("se")),
        peer,
        vs,
    };
    let handshake = h2::server::Builder::new()
        .max_header_list_size(u32::try_from(ctx.limits.max_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(http.max_h2_streams)
        .handshake::<_, Bytes>(io);
    let mut conn = match rt::timeout(ctx.limits.header, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let mut running = FuturesUnordered::new();
    let mut closing = false;
    loop {
        let accepted = if running.is_empty() {
            // Idle: a new stream within the idle timeout, or the connection
            // is told to go away (GOAWAY), and then dropped if it lingers.
            match rt::timeout(ctx.limits.client_idle, conn.accept()).await {
                Ok(accepted) => accepted,
                Err(_) if closing => return,
                Err(_) => {
                    conn.graceful_shutdown();
                    closing = true;
                    continue;
                }
            }
        } else {
            // Every stream that can make progress runs before the
            // connection is polled (which writes what they queued), so
            // responses that arrive together leave in one write.
            poll_fn(|cx| {
                while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
                conn.poll_accept(cx)
            })
            .await
        };
        match accepted {
            Some(Ok((req, respond))) => running.push(ctx.stream(req, respond)),
            Some(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection failed");
                return;
            }
            // Closed, with every stream done.
            None => return,
        }
    }
}

/// What every stream of one client connection shares.
struct StreamCtx {
    vs: Arc<VirtualService>,
    limits: Limits,
    fwd: Forwarding,
    se_name: HeaderValue,
    peer: SocketAddr,
}

/// How a stream ended.
enum Outcome {
    /// A server's response went out (or started to) with this status.
    Relayed(u16),
    /// The SE answers itself.
    Own(u16, String),
    /// The client reset the stream or went away.
    Gone,
}

impl StreamCtx {
    async fn stream(&self, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let started = rt::now();
        let counters = self.vs.counters();
        counters.request();
        match self.exchange(req, &mut respond).await {
            Outcome::Relayed(status) => counters.response(status, started, false),
            Outcome::Own(status, message) => {
                counters.response(status, started, true);
                self.answer(&mut respond, status, &message);
            }
            Outcome::Gone => respond.send_reset(Reason::CANCEL),
        }
    }

    fn answer(&self, respond: &mut SendResponse<Bytes>, status: u16, message: &str) {
        let body = Bytes::from(format!("{message}\n"));
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        headers.insert(crate::SE_HEADER, self.se_name.clone());
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(body, true);
        }
    }

    async fn exchange(
        &self,
        req: Request<RecvStream>,
        respond: &mut SendResponse<Bytes>,
    ) -> Outcome {
        let Some(_slot) = self.vs.begin_request() else {
            return Outcome::Own(503, "too many requests in flight".into());
        };
        let (parts, mut body) = req.into_parts();
        if parts.method == http::Method::CONNECT {
            return Outcome::Own(405, "method not allowed".into());
        }
        if head_bytes(&parts) > self.limits.max_head {
            return Outcome::Own(431, "request headers too large".into());
        }
        let authority = parts.uri.authority().map(|a| a.as_str());
        if authority.is_none() && !parts.headers.contains_key(http::header::HOST) {
            return Outcome::Own(400, "request without :authority or Host".into());
        }
        let framing = if body.is_end_stream() {
            Framing::Empty
        } else {
            // The h2 decoder checked that the DATA frames add up to it.
            match parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
            {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            }
        };
        if matches!(framing, Framing::Length(n) if n > self.limits.max_body) {
            return Outcome::Own(413, "request body too large".into());
        }
        let servers = self.vs.servers();
        if self.vs.upstream_h2() {
            return self.to_h2_server(parts, body, respond, &servers).await;
        }
        let method = parts.method.as_str();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(256 + parts.headers.len() * 32);
        h1::h2_request_head(
            method,
            target,
            authority,
            &parts.headers,
            framing,
            &self.fwd,
            &mut head,
        );
        let is_head = parts.method == http::Method::HEAD;
        let idempotent = matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        );
        let reuse = idempotent && framing == Framing::Empty;
        let mut tried = Vec::new();
        while tried.len() < MAX_CONNECT_ATTEMPTS {
            let Some(picked) = servers.pick_for(self.peer.ip(), Some(&parts.headers), None, &tried)
            else {
                break;
            };
            let server = picked.addr();
            let sent_at = rt::now();
            match self.send(server, reuse, &head, &mut body, framing).await {
                Ok(upstream) => {
                    return self
                        .relay_response(picked, upstream, respond, is_head, sent_at)
                        .await
                }
                Err(Failed::Connect(e)) => {
                    picked.state().on_request_failed(&e.to_string());
                    tried.push(server);
                }
                Err(Failed::Stale) => unreachable!("send replays stale connections"),
                Err(Failed::Client) => return Outcome::Gone,
                Err(Failed::TooLarge) => return Outcome::Own(413, "request body too large".into()),
                Err(Failed::Timeout) => {
                    picked.state().on_request_failed("response timed out");
                    return Outcome::Own(504, format!("server {server} did not answer in time"));
                }
                Err(Failed::Broken(why)) => {
                    picked.state().on_request_failed(&why);
                    return Outcome::Own(502, format!("server {server} failed: {why}"));
                }
            }
        }
        let (status, message) = crate::proxy::no_server(&self.vs.name, &tried);
        Outcome::Own(status, message.into())
    }

    /// The request as it goes to an HTTP/2 server: the client's, minus
    /// `Host` when there is an authority, plus the forwarding headers.
    fn h2_request(&self, parts: &http::request::Parts) -> Request<()> {
        let mut req = crate::h2up::request_like(parts);
        let headers = req.headers_mut();
        if parts.uri.authority().is_some() {
            headers.remove(http::header::HOST);
        }
        self.fwd.add_to(headers);
        req
    }

    /// Relay the request to an HTTP/2 server, streams piped both ways.
    async fn to_h2_server(
        &self,
        parts: http::request::Parts,
        mut body: RecvStream,
        respond: &mut SendResponse<Bytes>,
        servers: &crate::lb::ServerSet,
    ) -> Outcome {
        let end = body.is_end_stream();
        let tls = self.vs.upstream_tls();
        let mut tried = Vec::new();
        while tried.len() < MAX_CONNECT_ATTEMPTS {
            let Some(picked) = servers.pick_for(self.peer.ip(), Some(&parts.headers), None, &tried)
            else {
                break;
            };
            let server = picked.addr();
            let limits = &self.limits;
            let pool = self.vs.h2_pool();
            let mut sender = match pool
                .ready(server, limits.connect, limits.response, tls.as_deref())
                .await
            {
                Ok(sender) => sender,
                Err(Failed::Connect(e)) => {
                    picked.state().on_request_failed(&e.to_string());
                    tried.push(server);
                    continue;
                }
                Err(Failed::Timeout) => {
                    return Outcome::Own(503, format!("server {server} has no free stream"))
                }
                Err(_) => return Outcome::Own(502, format!("server {server} failed")),
            };
            let sent_at = rt::now();
            let (answer, mut up) = match sender.send_request(self.h2_request(&parts), end) {
                Ok(pair) => pair,
                Err(e) => {
                    picked.state().on_request_failed(&format!("http2: {e}"));
                    return Outcome::Own(502, format!("server {server} failed: {e}"));
                }
            };
            if !end {
                match crate::h2up::pipe(&mut body, &mut up, limits.body_idle, limits.max_body).await
                {
                    Ok(()) => {}
                    Err(crate::h2up::PipeError::Source) => return Outcome::Gone,
                    Err(crate::h2up::PipeError::TooLarge) => {
                        up.send_reset(Reason::CANCEL);
                        return Outcome::Own(413, "request body too large".into());
                    }
                    Err(crate::h2up::PipeError::Sink) => {
                        picked.state().on_request_failed("server stopped reading");
                        return Outcome::Own(502, format!("server {server} stopped reading"));
                    }
                }
            }
            let resp = match rt::timeout(limits.response, answer).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    picked.state().on_request_failed(&format!("http2: {e}"));
                    return Outcome::Own(502, format!("server {server} failed: {e}"));
                }
                Err(_) => {
                    picked.state().on_request_failed("response timed out");
                    return Outcome::Own(504, format!("server {server} did not answer in time"));
                }
            };
            let status = resp.status().as_u16();
            picked.state().on_response_status(status);
            picked
                .state()
                .record_latency(rt::now().saturating_duration_since(sent_at));
            let (mut head, mut from_server) = resp.into_parts();
            head.headers.insert(crate::SE_HEADER, self.se_name.clone());
            let end = from_server.is_end_stream();
            let Ok(mut to_client) = respond.send_response(Response::from_parts(head, ()), end)
            else {
                return Outcome::Gone;
            };
            if !end {
                let piped =
                    crate::h2up::pipe(&mut from_server, &mut to_client, limits.body_idle, u64::MAX)
                        .await;
                if piped == Err(crate::h2up::PipeError::Source) {
                    picked.state().on_request_failed("response body broke off");
                    to_client.send_reset(Reason::INTERNAL_ERROR);
                }
            }
            return Outcome::Relayed(status);
        }
        let (status, message) = crate::proxy::no_server(&self.vs.name, &tried);
        Outcome::Own(status, message.into())
    }

    /// Send the request to `server` and wait for its first response bytes.
    async fn send(
        &self,
        server: SocketAddr,
        reuse: bool,
        head: &[u8],
        body: &mut RecvStream,
        framing: Framing,
    ) -> Result<Upstream, Failed> {
        if reuse {
            if let Some(mut upstream) = self.vs.conn_pool().take(server, rt::now(), |_| true) {
                match self.try_send(&mut upstream, head, body, framing).await {
                    Ok(()) => return Ok(upstream),
                    Err(Failed::Stale) => {} // sent again below on a new connection
                    Err(e) => return Err(e),
                }
            }
        }
        let tls = self.vs.upstream_tls();
        let mut upstream = relay::connect(server, &self.limits, tls.as_deref())
            .await
            .map_err(Failed::Connect)?;
        match self.try_send(&mut upstream, head, body, framing).await {
            Ok(()) => Ok(upstream),
            Err(Failed::Stale) => Err(Failed::Broken("connection closed".into())),
            Err(e) => Err(e),
        }
    }

    async fn try_send(
        &self,
        upstream: &mut Upstream,
        head: &[u8],
        body: &mut RecvStream,
        framing: Framing,
    ) -> Result<(), Failed> {
        upstream.buf.clear();
        if let Err(e) = relay::write_all(&mut upstream.stream, head).await {
            return Err(if framing == Framing::Empty {
                Failed::Stale
            } else {
                Failed::Broken(e.to_string())
            });
        }
        if framing != Framing::Empty {
            self.send_body(upstream, body, framing == Framing::Chunked)
                .await?;
        }
        relay::first_bytes(upstream, self.limits.response).await
    }

    /// Stream the client's DATA frames to the server (chunk-encoded when
    /// the client declared no length), giving the window back as they go.
    async fn send_body(
        &self,
        upstream: &mut Upstream,
        body: &mut RecvStream,
        chunked: bool,
    ) -> Result<(), Failed> {
        let mut out = Vec::new();
        let mut budget = self.limits.max_body;
        loop {
            let data = match rt::timeout(self.limits.body_idle, body.data()).await {
                Ok(Some(Ok(data))) => data,
                Ok(None) => break,
                Ok(Some(Err(_))) | Err(_) => return Err(Failed::Client),
            };
            let _ = body.flow_control().release_capacity(data.len());
            budget = budget
                .checked_sub(data.len() as u64)
                .ok_or(Failed::TooLarge)?;
            if data.is_empty() {
                continue;
            }
            out.clear();
            if chunked {
                h1::push_chunk(&mut out, &data);
            } else {
                out.extend_from_slice(&data);
            }
            relay::write_all(&mut upstream.stream, &out)
                .await
                .map_err(|_| Failed::Broken("server stopped reading".into()))?;
        }
        if chunked {
            relay::write_all(&mut upstream.stream, b"0\r\n\r\n")
                .await
                .map_err(|_| Failed::Broken("server stopped reading".into()))?;
        }
        Ok(())
    }

    /// Relay the response whose first bytes are in `upstream.buf`.
    async fn relay_response(
        &self,
        picked: Picked,
        mut upstream: Upstream,
        respond: &mut SendResponse<Bytes>,
        is_head: bool,
        sent_at: Instant,
    ) -> Outcome {
        let server = picked.addr();
        let deadline = rt::now() + self.limits.response;
        let mut headers = HeaderMap::new();
        let head = loop {
            headers.clear();
            let parsed =
                h1::parse_response_fields(&upstream.buf, self.limits.max_head, is_head, |n, v| {
                    if let (Ok(n), Ok(v)) = (
                        HeaderName::from_bytes(n.as_bytes()),
                        HeaderValue::from_bytes(v),
                    ) {
                        headers.append(n, v);
                    }
                });
            match parsed {
                Ok(Some(head)) if head.is_interim() => {
                    upstream.buf.drain(..head.len);
                    continue;
                }
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    picked
                        .state()
                        .on_request_failed(&format!("bad response: {e}"));
                    return Outcome::Own(502, format!("server {server} sent a bad response: {e}"));
                }
            }
            let wait = deadline.saturating_duration_since(rt::now());
            match relay::read_timed(&mut upstream.stream, &mut upstream.buf, wait).await {
                Ok(n) if n > 0 => {}
                Ok(_) | Err(_) => {
                    picked
                        .state()
                        .on_request_failed("response broke off in its head");
                    return Outcome::Own(
                        502,
                        format!("server {server} failed: response broke off"),
                    );
                }
            }
        };
        picked.state().on_response_status(head.status);
        picked
            .state()
            .record_latency(rt::now().saturating_duration_since(sent_at));
        upstream.buf.drain(..head.len);
        headers.insert(crate::SE_HEADER, self.se_name.clone());
        let mut resp = Response::new(());
        *resp.status_mut() = match StatusCode::from_u16(head.status) {
            Ok(status) => status,
            Err(_) => return Outcome::Own(502, format!("server {server} sent a bad status")),
        };
        *resp.headers_mut() = headers;
        let mut end = BodyEnd::new(head.framing);
        if end.is_done() {
            if respond.send_response(resp, true).is_err() {
                return Outcome::Gone;
            }
        } else {
            let Ok(mut send) = respond.send_response(resp, false) else {
                return Outcome::Gone;
            };
            match self.relay_body(&mut upstream, &mut send, &mut end).await {
                Ok(()) => {}
                Err(BodyError::Server) => {
                    picked.state().on_request_failed("response body broke off");
                    send.send_reset(Reason::INTERNAL_ERROR);
                    return Outcome::Relayed(head.status);
                }
                Err(BodyError::Client) => return Outcome::Relayed(head.status),
            }
        }
        if head.keep_alive && upstream.buf.is_empty() && head.framing != Framing::UntilClose {
            self.vs.conn_pool().give_back(server, upstream, rt::now());
        }
        Outcome::Relayed(head.status)
    }

    /// Send the response body (the rest of `upstream.buf`, then what the
    /// server sends) as DATA frames until `end` says it is complete.
    async fn relay_body(
        &self,
        upstream: &mut Upstream,
        send: &mut SendStream<Bytes>,
        end: &mut BodyEnd,
    ) -> Result<(), BodyError> {
        let idle = self.limits.body_idle;
        let mut data = Vec::new();
        loop {
            data.clear();
            let used = end
                .decode(&upstream.buf, &mut data)
                .map_err(|_| BodyError::Server)?;
            upstream.buf.drain(..used);
            let done = end.is_done();
            if !data.is_empty() || done {
                send.send_data(Bytes::copy_from_slice(&data), done)
                    .map_err(|_| BodyError::Client)?;
            }
            if done {
                return Ok(());
            }
            // The client's window: wait until what was sent has room
            // before reading more (one read in memory per stream).
            crate::h2up::capacity(send, idle)
                .await
                .map_err(|_| BodyError::Client)?;
            // A client that resets the stream meanwhile ends it at once
            // (the server connection, mid-response, is closed).
            let read = relay::read_timed(&mut upstream.stream, &mut upstream.buf, idle);
            let mut read = std::pin::pin!(read);
            let read = poll_fn(|cx| {
                if let Poll::Ready(r) = read.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                send.poll_reset(cx).map(|_| None)
            })
            .await;
            let Some(read) = read else {
                return Err(BodyError::Client);
            };
            match read {
                Ok(0) if *end == BodyEnd::UntilClose => {
                    send.send_data(Bytes::new(), true)
                        .map_err(|_| BodyError::Client)?;
                    return Ok(());
                }
                Ok(0) | Err(_) => return Err(BodyError::Server),
                Ok(_) => {}
            }
        }
    }
}

/// Why relaying a response body stopped early.
enum BodyError {
    /// The server broke off, misframed, or paused too long.
    Server,
    /// The client reset the stream or stopped reading.
    Client,
}

/// The size of a request head as HTTP/1.1 would carry it.
fn head_bytes(parts: &http::request::Parts) -> usize {
    let uri = &parts.uri;
    let target = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = parts.method.as_str().len() + target + 12;
    parts
        .headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}
