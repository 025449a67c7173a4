//! HTTP/2 clients through the SE to HTTP/1.1 servers, on loopback: what the
//! server receives (head, cookies, forwarding headers, body framing), what
//! the client gets back (chunked and close-delimited bodies decoded, large
//! bodies through flow control), many streams on one connection, reuse of
//! server connections, a client that resets a stream, and the SE's own
//! answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fabric::model::Algorithm;
use fabric::rt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use se::lb::ServerSet;
use se::proxy::VirtualService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::LOCALHOST;

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
type Sender = hyper::client::conn::http2::SendRequest<Body>;

/// A TLS virtual service over `servers` on a port of its own.
async fn h2_vs(servers: &[SocketAddr]) -> (SocketAddr, Arc<VirtualService>) {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let vs = Arc::new(VirtualService::new(
        "h2".into(),
        "se-h2".into(),
        ServerSet::standalone(Algorithm::RoundRobin, servers),
    ));
    let cert = fabric::pki::self_signed("h2", &["h2.test"]).unwrap();
    vs.set_tls(Some(se::tls::server_config(&[cert], true, true).unwrap()));
    let for_loop = vs.clone();
    rt::spawn(rt::accept_loop(listener, 64, move |stream, peer| {
        se::proxy::serve_connection(for_loop.clone(), stream, peer)
    }));
    (addr, vs)
}

async fn h2_client(vip: SocketAddr) -> Sender {
    let config = fabric::pki::insecure_client_config(&[b"h2"], false);
    let tcp = rt::connect(vip).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("h2.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::handshake(rt::Exec, TokioIo::new(tls))
        .await
        .unwrap();
    rt::spawn(conn);
    sender
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

async fn send(sender: &mut Sender, req: http::Request<Body>) -> (u16, http::HeaderMap, Bytes) {
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

fn get(path: &str) -> http::Request<Body> {
    http::Request::get(format!("https://h2.test{path}"))
        .body(empty())
        .unwrap()
}

/// What a raw HTTP/1.1 server saw: each request's head and body bytes.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<String>>,
    connections: AtomicUsize,
    closed_by_peer: AtomicUsize,
}

/// A raw HTTP/1.1 server: reads each request (a body by Content-Length or
/// chunked, kept as received), records it, and answers with
/// `respond(path)`'s bytes; closes after a response that says so.
async fn raw_server(respond: fn(&str) -> Vec<u8>) -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let record = seen.clone();
    let addr = common::tcp_server(move |mut stream| {
        let seen = record.clone();
        async move {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            loop {
                let Some(head_end) = read_until(&mut stream, &mut buf, b"\r\n\r\n", 0).await else {
                    seen.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let lower = head.to_ascii_lowercase();
                let mut end = head_end;
                if let Some(n) = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                {
                    while buf.len() < head_end + n {
                        if !read_more(&mut stream, &mut buf).await {
                            return;
                        }
                    }
                    end = head_end + n;
                } else if lower.contains("transfer-encoding: chunked") {
                    let Some(e) = read_until(&mut stream, &mut buf, b"0\r\n\r\n", head_end).await
                    else {
                        return;
                    };
                    end = e;
                }
                let request = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end);
                seen.requests.lock().unwrap().push(request);
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let answer = respond(&path);
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
                if String::from_utf8_lossy(&answer)
                    .to_ascii_lowercase()
                    .contains("connection: close")
                {
                    return;
                }
            }
        }
    })
    .await;
    (addr, seen)
}

async fn read_more(stream: &mut rt::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Read until `needle` occurs in `buf` after `from`; the index just past it.
async fn read_until(
    stream: &mut rt::TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
    from: usize,
) -> Option<usize> {
    loop {
        if let Some(i) = buf[from..].windows(needle.len()).position(|w| w == needle) {
            return Some(from + i + needle.len());
        }
        if !read_more(stream, buf).await {
            return None;
        }
    }
}

fn answers(path: &str) -> Vec<u8> {
    match path {
        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\ntrailer: x\r\n\r\n".to_vec(),
        "/close" => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end".to_vec(),
        "/big" => {
            let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 1 << 20).into_bytes();
            r.extend((0..1u32 << 20).map(|i| (i % 251) as u8));
            r
        }
        "/hop" => b"HTTP/1.1 200 OK\r\nconnection: x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        // A head and the start of a long body, then nothing more.
        "/stall" => b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nthe start".to_vec(),
        "/bad" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec(),
    }
}

#[tokio::test]
async fn an_h2_request_reaches_the_server_as_http1_with_forwarding_headers() {
    let (server, seen) = raw_server(answers).await;
    let (vip, _vs) = h2_vs(&[server]).await;
    let mut client = h2_client(vip).await;
    let req = http::Request::get("https://h2.test/a/b?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-forwarded-proto", "gopher")
        .header("x-custom", "yes")
        .body(empty())
        .unwrap();
    let (status, headers, body) = send(&mut client, req).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"ok\n");
    assert_eq!(headers[se::SE_HEADER], "se-h2");
    assert_eq!(headers["content-length"], "3");
    let request = seen.requests.lock().unwrap()[0].clone();
    assert!(
        request.starts_with("GET /a/b?q=1 HTTP/1.1\r\nhost: h2.test\r\n"),
        "{request}"
    );
    assert!(request.contains("\r\ncookie: a=1; b=2\r\n"), "{request}");
    assert!(request.contains("\r\nx-custom: yes\r\n"), "{request}");
    assert!(
        request.contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains("\r\nx-forwarded-proto: https\r\n"),
        "{request}"
    );
    assert!(!request.contains("gopher"), "{request}");
    assert!(
        !request.contains("content-length"),
        "a GET without body: {request}"
    );
}

#[tokio::test]
async fn request_bodies_go_with_their_length_or_chunked() {
    let (server, seen) = raw_server(answers).await;
    let (vip, _vs) = h2_vs(&[server]).await;
    let mut client = h2_client(vip).await;

    let with_length = http::Request::post("https://h2.test/form")
        .header("content-length", "11")
        .body(Full::new(Bytes::from_static(b"hello=world")).boxed())
        .unwrap();
    assert_eq!(send(&mut client, with_length).await.0, 200);

    // A body streamed in pieces, with no declared length.
    let pieces = futures_util::stream::iter(
        [&b"first,"[..], b"second,", b"third"]
            .map(|p| Ok(hyper::body::Frame::data(Bytes::from_static(p)))),
    );
    let streamed = http::Request::put("https://h2.test/upload")
        .body(StreamBody::new(pieces).boxed())
        .unwrap();
    assert_eq!(send(&mut client, streamed).await.0, 200);

    let requests = seen.requests.lock().unwrap().clone();
    assert!(
        requests[0].starts_with("POST /form HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].contains("\r\ncontent-length: 11\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].ends_with("\r\n\r\nhello=world"),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].starts_with("PUT /upload HTTP/1.1\r\n"),
        "{}",
        requests[1]
    );
    assert!(
        requests[1].contains("\r\ntransfer-encoding: chunked\r\n"),
        "{}",
        requests[1]
    );
    let body = &requests[1][requests[1].find("\r\n\r\n").unwrap() + 4..];
    let decoded: String = body
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(decoded, "first,second,third", "{body:?}");
}

#[tokio::test]
async fn chunked_close_delimited_and_large_bodies_arrive_whole() {
    let (server, _seen) = raw_server(answers).await;
    let (vip, _vs) = h2_vs(&[server]).await;
    let mut client = h2_client(vip).await;

    let (status, headers, body) = send(&mut client, get("/chunked")).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"hello, world");
    assert_eq!(headers["x-kind"], "chunked");
    assert!(!headers.contains_key("transfer-encoding"));

    let (status, _, body) = send(&mut client, get("/close")).await;
    assert_eq!((status, &body[..]), (200, &b"until the end"[..]));

    // 1 MiB: sixteen times the client's initial window.
    let (status, headers, body) = send(&mut client, get("/big")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-length"], (1u32 << 20).to_string().as_str());
    assert_eq!(body.len(), 1 << 20);
    assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));

    // Hop-by-hop headers, and those `Connection` names, stay behind.
    let (status, headers, _) = send(&mut client, get("/hop")).await;
    assert_eq!(status, 200);
    assert!(!headers.contains_key("x-secret") && !headers.contains_key("keep-alive"));

    // A response with conflicting lengths is the server's fault: 502.
    let (status, headers, body) = send(&mut client, get("/bad")).await;
    assert_eq!(status, 502, "{body:?}");
    assert_eq!(headers[se::SE_HEADER], "se-h2");
}

#[tokio::test]
async fn many_streams_on_one_connection_share_a_few_server_connections() {
    let (server, seen) = raw_server(answers).await;
    let (vip, vs) = h2_vs(&[server]).await;
    let client = h2_client(vip).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut c = client.clone();
        tasks.push(rt::spawn(async move { send(&mut c, get("/")).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let opened = seen.connections.load(Ordering::SeqCst);
    assert!(opened <= 200, "{opened}");
    // Sequential requests now reuse the pool: no new connections.
    let mut c = client.clone();
    for _ in 0..20 {
        assert_eq!(send(&mut c, get("/")).await.0, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), opened);
    assert!(vs.conn_pool().idle() >= 1);
    assert_eq!(seen.requests.lock().unwrap().len(), 220);
}

#[tokio::test]
async fn a_reset_stream_leaves_the_connection_and_the_pool_sound() {
    let (server, seen) = raw_server(answers).await;
    let (vip, _vs) = h2_vs(&[server]).await;
    let mut client = h2_client(vip).await;
    // Take the head of a response whose body stalls, then drop the body:
    // a reset. (A whole body could fit in the client's window and be done
    // before the reset, so the stall makes the case certain.)
    let resp = client.send_request(get("/stall")).await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    for _ in 0..5 {
        let (status, _, body) = send(&mut client, get("/")).await;
        assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    }
    // The connection with the response still on it was not reused, and
    // the SE closed it when the client reset the stream.
    assert!(seen.connections.load(Ordering::SeqCst) >= 2);
    for _ in 0..100 {
        if seen.closed_by_peer.load(Ordering::SeqCst) >= 1 {
            break;
        }
        rt::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(seen.closed_by_peer.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_se_answers_itself_when_no_server_can() {
    // A port nothing listens on.
    let dead = {
        let l = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
            .await
            .unwrap();
        l.local_addr().unwrap()
    };
    let (vip, vs) = h2_vs(&[dead]).await;
    let mut client = h2_client(vip).await;
    let (status, headers, body) = send(&mut client, get("/")).await;
    assert_eq!(status, 502, "{body:?}");
    assert_eq!(headers[se::SE_HEADER], "se-h2");
    assert!(
        String::from_utf8_lossy(&body).contains("not reachable")
            || String::from_utf8_lossy(&body).contains("reachable")
    );

    vs.set_servers(ServerSet::standalone(Algorithm::RoundRobin, &[]));
    let (status, _, body) = send(&mut client, get("/")).await;
    assert_eq!(status, 503, "{body:?}");
}

/// An HTTP/2 server in the clear (h2c, prior knowledge; hyper, an
/// implementation independent of ours): echoes what it got in `x-seen`
/// (method, URI, version, X-Forwarded-For) and the request body; `/stream`
/// answers a body of unknown length with trailers, gRPC style. Counts its
/// connections.
async fn h2c_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = common::tcp_server(move |stream| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let seen = format!(
                        "{} {} {:?} xff={}",
                        req.method(),
                        req.uri(),
                        req.version(),
                        req.headers()
                            .get("x-forwarded-for")
                            .map_or("", |v| v.to_str().unwrap())
                    );
                    let stream = req.uri().path() == "/stream";
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let body: Body = if stream {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = [
                            hyper::body::Frame::data(Bytes::from_static(b"part one, ")),
                            hyper::body::Frame::data(Bytes::from_static(b"part two")),
                            hyper::body::Frame::trailers(trailers),
                        ];
                        StreamBody::new(futures_util::stream::iter(frames.map(Ok))).boxed()
                    } else {
                        Full::new(body).boxed()
                    };
                    let resp = http::Response::builder()
                        .header("x-seen", seen)
                        .body(body)
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http2::Builder::new(rt::Exec)
                .timer(rt::Timer)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
    (addr, accepted)
}

/// A plain HTTP virtual service over `server`, speaking HTTP/2 to it.
async fn plain_vs_to_h2(server: SocketAddr) -> SocketAddr {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let vs = Arc::new(VirtualService::new(
        "h2up".into(),
        "se-h2".into(),
        ServerSet::standalone(Algorithm::RoundRobin, &[server]),
    ));
    vs.set_upstream_h2(true);
    rt::spawn(rt::accept_loop(listener, 64, move |stream, peer| {
        se::proxy::serve_connection(vs.clone(), stream, peer)
    }));
    addr
}

/// Read one whole HTTP/1.x response off `c` (length, chunked, or until
/// close), returning its head and decoded body.
async fn read_h1(c: &mut rt::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let head_end = read_until(c, &mut buf, b"\r\n\r\n", 0).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut body = Vec::new();
    if let Some(n) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        while buf.len() < head_end + n {
            assert!(read_more(c, &mut buf).await, "body cut short");
        }
        body.extend_from_slice(&buf[head_end..head_end + n]);
    } else if head.contains("transfer-encoding: chunked") {
        let end = read_until(c, &mut buf, b"0\r\n\r\n", head_end)
            .await
            .unwrap();
        let mut dec = se::h1::BodyEnd::new(se::h1::Framing::Chunked);
        dec.decode(&buf[head_end..end], &mut body).unwrap();
        assert!(dec.is_done());
    } else {
        while read_more(c, &mut buf).await {}
        body.extend_from_slice(&buf[head_end..]);
    }
    (head, body)
}

#[tokio::test]
async fn http1_clients_reach_an_h2c_server_over_one_shared_connection() {
    let (server, accepted) = h2c_server().await;
    let vip = plain_vs_to_h2(server).await;
    let mut c = rt::connect(vip).await.unwrap();

    c.write_all(b"GET /a?b=1 HTTP/1.1\r\nhost: app.test\r\nx-custom: 1\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_h1(&mut c).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("x-seen: get http://app.test/a?b=1 http/2.0 xff=127.0.0.1"),
        "{head}"
    );
    assert!(head.contains("x-fabric-se: se-h2"), "{head}");
    assert!(body.is_empty());

    // A chunked request body reaches the server decoded; the echo has a length.
    c.write_all(
        b"POST /up HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    rt::sleep(std::time::Duration::from_millis(20)).await;
    c.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let (head, body) = read_h1(&mut c).await;
    assert!(head.contains("content-length: 11"), "{head}");
    assert_eq!(body, b"hello world");

    // A body of unknown length goes chunked to an HTTP/1.1 client (the
    // trailers stay behind), and until close to an HTTP/1.0 one.
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_h1(&mut c).await;
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(body, b"part one, part two");
    let mut old = rt::connect(vip).await.unwrap();
    old.write_all(b"GET /stream HTTP/1.0\r\nhost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_h1(&mut old).await;
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, b"part one, part two");

    // Many clients at once: one connection to the server carries them all.
    let mut tasks = Vec::new();
    for i in 0..50 {
        tasks.push(rt::spawn(async move {
            let mut c = rt::connect(vip).await.unwrap();
            let req = format!("GET /n/{i} HTTP/1.1\r\nhost: app.test\r\n\r\n");
            c.write_all(req.as_bytes()).await.unwrap();
            read_h1(&mut c).await.0
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let head = t.await.unwrap();
        assert!(head.contains(&format!("/n/{i} ")), "{head}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2_clients_reach_an_h2c_server_with_bodies_and_trailers() {
    let (server, accepted) = h2c_server().await;
    let (vip, vs) = h2_vs(&[server]).await;
    vs.set_upstream_h2(true);
    let mut client = h2_client(vip).await;
    let post = http::Request::post("https://h2.test/echo")
        .body(Full::new(Bytes::from_static(b"ping")).boxed())
        .unwrap();
    let (status, headers, body) = send(&mut client, post).await;
    assert_eq!((status, &body[..]), (200, &b"ping"[..]));
    let seen = headers["x-seen"].to_str().unwrap();
    assert!(
        seen.starts_with("POST https://h2.test/echo HTTP/2.0 xff=127.0.0.1"),
        "{seen}"
    );
    assert_eq!(headers[se::SE_HEADER], "se-h2");

    // Trailers come through (gRPC's status travels in them).
    let resp = client.send_request(get("/stream")).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"part one, part two");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
