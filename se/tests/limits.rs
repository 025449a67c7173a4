//! A virtual service's limits on loopback: connections over
//! `max_connections` wait in the backlog (and the cap changes live),
//! requests over `max_requests_in_flight` get 503 from the SE over HTTP/1.1
//! and HTTP/2, and HTTP/2 clients are told `max_h2_streams`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::model::{Algorithm, VsHttp};
use fabric::rt;
use se::lb::ServerSet;
use se::proxy::VirtualService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::LOCALHOST;

/// The built-in origin (`/slow/MS` answers late) behind a virtual service
/// whose accept loop admits through its gate, as the data plane's does.
async fn service(http: VsHttp, tls: bool) -> (SocketAddr, Arc<VirtualService>) {
    let origin = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let origin_addr = origin.local_addr().unwrap();
    rt::spawn(se::origin::serve("origin".into(), origin));
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let vs = Arc::new(
        VirtualService::new(
            "limited".into(),
            "se-limits".into(),
            ServerSet::standalone(Algorithm::RoundRobin, &[origin_addr]),
        )
        .with_http(http),
    );
    if tls {
        let cert = fabric::pki::self_signed("limits", &["limits.test"]).unwrap();
        vs.set_tls(Some(se::tls::server_config(&[cert], true, true).unwrap()));
    }
    let (for_loop, gate) = (vs.clone(), vs.gate().clone());
    rt::spawn(rt::accept_loop_gated(
        listener,
        gate,
        move |stream, peer| se::proxy::serve_connection(for_loop.clone(), stream, peer),
    ));
    (addr, vs)
}

/// Send a GET for `path` on `c` and read the status of its answer, if one
/// comes within `wait`.
async fn get(c: &mut rt::TcpStream, path: &str, wait: Duration) -> Option<u16> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: limits.test\r\n\r\n");
    c.write_all(req.as_bytes()).await.ok()?;
    status(c, wait).await
}

async fn status(c: &mut rt::TcpStream, wait: Duration) -> Option<u16> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The head, then the body by its length (the origin always sends one).
    let head_end = rt::timeout(wait, async {
        loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(i + 4);
            }
            match c.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return None,
            }
        }
    })
    .await
    .ok()??;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + len {
        match c.read(&mut buf).await {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    head.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes_and_the_cap_changes_live() {
    let http = VsHttp {
        max_connections: 2,
        ..VsHttp::default()
    };
    let (vip, vs) = service(http, false).await;
    let short = Duration::from_millis(300);
    let mut a = rt::connect(vip).await.unwrap();
    let mut b = rt::connect(vip).await.unwrap();
    assert_eq!(get(&mut a, "/", short * 10).await, Some(200));
    assert_eq!(get(&mut b, "/", short * 10).await, Some(200));
    // The third connects (the kernel's backlog) but is not served.
    let mut c = rt::connect(vip).await.unwrap();
    assert_eq!(get(&mut c, "/", short).await, None);
    assert_eq!(vs.gate().open(), 2);
    // One closes: the third is served.
    drop(a);
    assert_eq!(status(&mut c, short * 10).await, Some(200));

    // A higher cap admits a fourth at once; a lower one admits no more.
    let mut d = rt::connect(vip).await.unwrap();
    assert_eq!(get(&mut d, "/", short).await, None);
    vs.set_http(VsHttp {
        max_connections: 3,
        ..VsHttp::default()
    });
    assert_eq!(status(&mut d, short * 10).await, Some(200));
    vs.set_http(VsHttp {
        max_connections: 1,
        ..VsHttp::default()
    });
    drop(b);
    let mut e = rt::connect(vip).await.unwrap();
    assert_eq!(
        get(&mut e, "/", short).await,
        None,
        "c and d still hold 2 > 1"
    );
    drop((c, d));
    assert_eq!(status(&mut e, short * 10).await, Some(200));
}

#[tokio::test]
async fn requests_over_the_in_flight_cap_get_503_and_the_connection_stays_usable() {
    let http = VsHttp {
        max_requests_in_flight: 1,
        ..VsHttp::default()
    };
    let (vip, vs) = service(http, false).await;
    let mut slow = rt::connect(vip).await.unwrap();
    slow.write_all(b"GET /slow/500 HTTP/1.1\r\nhost: limits.test\r\n\r\n")
        .await
        .unwrap();
    rt::sleep(Duration::from_millis(100)).await;
    assert_eq!(vs.requests_in_flight(), 1);
    let mut other = rt::connect(vip).await.unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(get(&mut other, "/", wait).await, Some(503));
    assert_eq!(status(&mut slow, wait).await, Some(200));
    // The refused request had no body: its connection carries on.
    assert_eq!(get(&mut other, "/", wait).await, Some(200));
    assert_eq!(vs.requests_in_flight(), 0);
}

async fn h2_client(vip: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let config = fabric::pki::insecure_client_config(&[b"h2"], false);
    let tcp = rt::connect(vip).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("limits.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    rt::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn h2_get(client: &mut h2::client::SendRequest<Bytes>, path: &str) -> u16 {
    let req = http::Request::get(format!("https://limits.test{path}"))
        .body(())
        .unwrap();
    let mut ready = client.clone().ready().await.unwrap();
    let (resp, _) = ready.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

#[tokio::test]
async fn h2_clients_are_told_the_stream_cap_and_meet_the_in_flight_cap() {
    let http = VsHttp {
        max_h2_streams: 3,
        max_requests_in_flight: 1,
        ..VsHttp::default()
    };
    let (vip, _vs) = service(http, true).await;
    let mut client = h2_client(vip).await;
    // The SETTINGS frame has arrived once a first request is answered.
    assert_eq!(h2_get(&mut client, "/").await, 200);
    assert_eq!(client.current_max_send_streams(), 3);

    let mut slow = client.clone();
    let pending = rt::spawn(async move { h2_get(&mut slow, "/slow/500").await });
    rt::sleep(Duration::from_millis(100)).await;
    assert_eq!(h2_get(&mut client, "/").await, 503);
    assert_eq!(pending.await.unwrap(), 200);
    assert_eq!(h2_get(&mut client, "/").await, 200);
}

#[tokio::test]
async fn a_tcp_service_takes_its_connection_cap_from_l4() {
    use fabric::model::{VsL4, VsProtocol};
    let (_vip, vs) = service(VsHttp::default(), false).await;
    assert_eq!(vs.gate().max(), 10_000);
    let l4 = VsL4 {
        max_connections: 7,
        ..VsL4::default()
    };
    vs.set_l4(VsProtocol::Tcp, l4);
    assert_eq!(vs.gate().max(), 7);
    vs.set_l4(VsProtocol::Http, l4);
    assert_eq!(vs.gate().max(), 10_000);
}

#[tokio::test]
async fn request_bodies_over_max_body_bytes_get_413() {
    let http = VsHttp {
        max_body_bytes: 10,
        ..VsHttp::default()
    };
    let (vip, vs) = service(http, false).await;
    let wait = Duration::from_secs(5);
    // Within the limit: relayed.
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nhost: limits.test\r\ncontent-length: 10\r\n\r\n0123456789")
        .await
        .unwrap();
    assert_eq!(status(&mut c, wait).await, Some(200));
    // A declared length over it: 413 before anything goes to a server, and
    // the connection closes (its body was not read).
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nhost: limits.test\r\ncontent-length: 11\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&mut c, wait).await, Some(413));
    let mut rest = Vec::new();
    let n = rt::timeout(wait, c.read_to_end(&mut rest)).await.unwrap();
    assert!(n.is_ok(), "closed");
    // A chunked body that grows past it: 413 too.
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(b"POST / HTTP/1.1\r\nhost: limits.test\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    rt::sleep(Duration::from_millis(50)).await;
    c.write_all(b"8\r\n01234567\r\n8\r\n89abcdef\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status(&mut c, wait).await, Some(413));
    assert_eq!(vs.requests_in_flight(), 0);

    // HTTP/2: a declared length, and a streamed body, over it.
    let (vip, _vs) = service(
        VsHttp {
            max_body_bytes: 10,
            ..VsHttp::default()
        },
        true,
    )
    .await;
    let client = h2_client(vip).await;
    for declared in [true, false] {
        let mut req = http::Request::post("https://limits.test/");
        if declared {
            req = req.header("content-length", "20");
        }
        let mut ready = client.clone().ready().await.unwrap();
        let (resp, mut body) = ready.send_request(req.body(()).unwrap(), false).unwrap();
        body.send_data(Bytes::from_static(b"0123456789abcdefghij"), true)
            .unwrap();
        let resp = rt::timeout(wait, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 413, "declared: {declared}");
    }
}
