//! The HTTP/1.x relay on loopback, spoken to in raw bytes: pipelining,
//! bodies by length and chunked, 100-continue, HTTP/1.0, WebSocket-style
//! upgrades, slow clients, smuggling shapes, servers that break off.
//! The servers are hyper (an implementation independent of ours) or raw
//! sockets where the test needs exact bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::model::{Algorithm, VsHttp};
use fabric::rt;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use se::lb::ServerSet;
use se::proxy::VirtualService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::LOCALHOST;

/// A hyper server that answers with what it got: `x-path`, `x-xff` and
/// `x-len` headers and the request body echoed; `GET /big` gets 1 MiB.
async fn echo_server() -> SocketAddr {
    common::tcp_server(|stream| async move {
        let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let path = req.uri().path().to_string();
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = if path == "/big" {
                Bytes::from(vec![b'b'; 1 << 20])
            } else {
                body
            };
            let resp = hyper::Response::builder()
                .header("x-path", path)
                .header("x-xff", xff)
                .header("x-len", body.len())
                .body(Full::new(body))
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    })
    .await
}

/// A raw server: reads one request head, writes `answer`, then echoes
/// every byte it gets (for upgrades) until the client closes.
async fn raw_server(answer: &'static [u8], echo: bool) -> SocketAddr {
    common::tcp_server(move |mut stream| async move {
        let mut seen = Vec::new();
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 1024];
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        stream.write_all(answer).await.unwrap();
        if !echo {
            return;
        }
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    })
    .await
}

/// A client connection through a proxy to a [`raw_server`] that answers
/// `answer`, with `request` sent.
async fn through_raw(answer: &'static [u8], echo: bool, request: &[u8]) -> rt::TcpStream {
    let vip = proxy_to(raw_server(answer, echo).await, VsHttp::default()).await;
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(request).await.unwrap();
    c
}

async fn proxy_to(server: SocketAddr, http: VsHttp) -> SocketAddr {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let vs = Arc::new(
        VirtualService::new(
            "relay".into(),
            "se-relay".into(),
            ServerSet::standalone(Algorithm::RoundRobin, &[server]),
        )
        .with_http(http),
    );
    rt::spawn(rt::accept_loop(listener, 64, move |stream, peer| {
        se::proxy::serve_connection(vs.clone(), stream, peer)
    }));
    addr
}

/// A response as read off the wire: status, head (lowercased), body.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Read one response with a Content-Length body (or none) from `stream`,
/// `pending` holding bytes read already.
async fn read_response(stream: &mut rt::TcpStream, pending: &mut Vec<u8>) -> Option<Raw> {
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut buf = [0u8; 16384];
        let n = rt::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
    pending.drain(..head_end);
    let status = head[9..12].parse().unwrap();
    let mut raw = Raw {
        status,
        head,
        body: Vec::new(),
    };
    let len: usize = raw
        .header("content-length")
        .map_or(0, |v| v.parse().unwrap());
    while pending.len() < len {
        let mut buf = [0u8; 16384];
        let n = rt::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("body in time")
            .unwrap();
        if n == 0 {
            raw.body = std::mem::take(pending);
            return Some(raw);
        }
        pending.extend_from_slice(&buf[..n]);
    }
    raw.body = pending.drain(..len).collect();
    Some(raw)
}

/// Whether the proxy closes `stream` within two seconds.
async fn closes(stream: &mut rt::TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match rt::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let vip = proxy_to(echo_server().await, VsHttp::default()).await;
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyGET /4 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    for path in ["/1", "/2", "/3", "/4"] {
        let r = read_response(&mut c, &mut pending).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-path"), Some(path));
        assert_eq!(r.header("x-xff"), Some("127.0.0.1"));
        assert_eq!(r.header("x-fabric-se"), Some("se-relay"));
    }
}

#[tokio::test]
async fn bodies_stream_through_by_length_and_chunked() {
    let vip = proxy_to(echo_server().await, VsHttp::default()).await;
    let mut c = rt::connect(vip).await.unwrap();
    let mut pending = Vec::new();
    // 300 kB by length: more than any one read.
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "PUT /len HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body).await.unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    // Chunked, in pieces that split chunk headers, with a trailer.
    let chunked = b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n1;x=y\r\n \r\n6\r\nworld!\r\n0\r\nT: 1\r\n\r\n";
    for piece in chunked.chunks(7) {
        c.write_all(piece).await.unwrap();
        rt::sleep(Duration::from_millis(1)).await;
    }
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello world!");
    // A 1 MiB response streams back on the same connection.
    c.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(r.body.len(), 1 << 20);
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_proxy() {
    let vip = proxy_to(echo_server().await, VsHttp::default()).await;
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let interim = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(interim.status, 100);
    c.write_all(b"12345").await.unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"12345"[..]));
}

#[tokio::test]
async fn http10_clients_get_responses_they_can_read() {
    let vip = proxy_to(echo_server().await, VsHttp::default()).await;
    let mut c = rt::connect(vip).await.unwrap();
    let mut pending = Vec::new();
    c.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.head);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.write_all(b"GET /b HTTP/1.0\r\n\r\n").await.unwrap();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(r.header("x-path"), Some("/b"));
    assert!(closes(&mut c).await, "HTTP/1.0 without keep-alive closes");
}

#[tokio::test]
async fn smuggling_shapes_and_garbage_get_400_and_the_connection_closes() {
    let vip = proxy_to(echo_server().await, VsHttp::default()).await;
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"\x00\x01garbage\r\n\r\n",
    ] {
        let mut c = rt::connect(vip).await.unwrap();
        c.write_all(bad).await.unwrap();
        let r = read_response(&mut c, &mut Vec::new()).await.unwrap();
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(closes(&mut c).await);
    }
}

#[tokio::test]
async fn slow_clients_get_408_and_idle_ones_are_closed() {
    let http = VsHttp {
        header_timeout_ms: 300,
        client_idle_timeout_ms: 300,
        ..VsHttp::default()
    };
    let vip = proxy_to(echo_server().await, http).await;
    // Slowloris: a head that never ends.
    let mut c = rt::connect(vip).await.unwrap();
    let started = rt::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    for _ in 0..10 {
        rt::sleep(Duration::from_millis(50)).await;
        if c.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break;
        }
    }
    let r = read_response(&mut c, &mut Vec::new()).await.unwrap();
    assert_eq!(r.status, 408);
    assert!(rt::now() - started < Duration::from_secs(2));
    // An idle keep-alive connection is closed without a word.
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut pending = Vec::new();
    assert_eq!(
        read_response(&mut c, &mut pending).await.unwrap().status,
        200
    );
    assert!(closes(&mut c).await);
}

#[tokio::test]
async fn an_upgrade_becomes_a_tunnel_both_ways() {
    let mut c = through_raw(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nhi",
        true,
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .await;
    let mut pending = Vec::new();
    let r = read_response(&mut c, &mut pending).await.unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    // Bytes the server sent with its 101, then an echo of ours.
    while pending.len() < 2 {
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).await.unwrap();
        pending.extend_from_slice(&buf[..n]);
    }
    assert_eq!(pending, b"hi");
    for round in 0..3 {
        let msg = format!("frame {round}");
        c.write_all(msg.as_bytes()).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        rt::timeout(Duration::from_secs(2), c.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg.as_bytes());
    }
}

#[tokio::test]
async fn a_server_that_breaks_off_mid_body_closes_the_client_connection() {
    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b";
    let mut c = through_raw(answer, false, GET).await;
    let r = read_response(&mut c, &mut Vec::new()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, b"only ten b",
        "the head and what came, then the end"
    );
    // A server that answers garbage: 502, and the client may go on.
    let mut c = through_raw(b"SSH-2.0-nope\r\n\r\n", false, GET).await;
    let r = read_response(&mut c, &mut Vec::new()).await.unwrap();
    assert_eq!(r.status, 502);
}
