//! TLS termination end to end on loopback: certificates chosen by SNI, ALPN
//! to HTTP/2 or HTTP/1.1, HTTP/2 clients proxied to HTTP/1.1 servers, a
//! certificate reload that keeps open connections, garbage and bad
//! certificates refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::model::{Algorithm, Certificate, Server};
use fabric::platform::LoopbackL2;
use fabric::proto::{SeConfig, SeVirtualService};
use fabric::rt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use se::dataplane::{ApplyError, DataPlane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::LOCALHOST;

fn self_signed(name: &str, dns: &[&str]) -> Certificate {
    fabric::pki::self_signed(name, dns).unwrap()
}

fn der(c: &Certificate) -> Vec<u8> {
    fabric::pki::leaf_der(&c.cert_pem).unwrap()
}

type Tls = tokio_rustls::client::TlsStream<rt::TcpStream>;

/// A TLS connection to `vip` asking for `sni` (None: by IP, so no SNI),
/// offering `alpn`, with TLS 1.3 or only 1.2; any certificate is accepted
/// (the tests look at which one came).
async fn connect(vip: SocketAddr, sni: Option<&str>, alpn: &[&[u8]], tls12_only: bool) -> Tls {
    let config = fabric::pki::insecure_client_config(alpn, tls12_only);
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_string()).unwrap(),
        None => ServerName::IpAddress(vip.ip().into()),
    };
    let tcp = rt::connect(vip).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

fn presented(tls: &Tls) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn alpn(tls: &Tls) -> Option<Vec<u8>> {
    tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// One GET over HTTP/2 on an open sender: status, SE tag, body.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    authority: &str,
) -> (u16, String, String) {
    let req = http::Request::builder()
        .uri(format!("https://{authority}/"))
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let se = resp.headers()[se::SE_HEADER].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, se, String::from_utf8_lossy(&body).into_owned())
}

async fn h2(tls: Tls) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http2::handshake(rt::Exec, TokioIo::new(tls))
        .await
        .unwrap();
    rt::spawn(conn);
    sender
}

async fn h1_get(tls: Tls, host: &str) -> u16 {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    rt::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap().status().as_u16()
}

fn config(version: u64, port: u16, origin: SocketAddr, certs: &[Certificate]) -> SeConfig {
    SeConfig {
        version,
        virtual_services: vec![SeVirtualService {
            name: "secure".into(),
            vip: LOCALHOST,
            port,
            pool: "web".into(),
            algorithm: Algorithm::RoundRobin,
            hash_header: None,
            servers: vec![Server::from(origin)],
            health_monitor: None,
            tls: Some(certs.to_vec()),
            tls_resumption: true,
            http: Default::default(),
            server_tls: None,
            server_http2: false,
            protocol: Default::default(),
            l4: Default::default(),
            outlier_detection: None,
            secondary: false,
            scaleout: Vec::new(),
        }],
        ha: None,
        peers: Vec::new(),
    }
}

#[tokio::test]
async fn tls_termination_by_sni_with_h2_and_http1_and_a_live_certificate_reload() {
    let origin_listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let origin = origin_listener.local_addr().unwrap();
    rt::spawn(se::origin::serve("origin-1".into(), origin_listener));
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let a = self_signed("a", &["a.test"]);
    let b = self_signed("b", &["*.b.test"]);
    let mut plane = DataPlane::new("se-tls", Arc::new(LoopbackL2));
    plane
        .apply(&config(1, port, origin, &[a.clone(), b.clone()]))
        .await
        .unwrap();

    // SNI a.test, ALPN h2: certificate a, HTTP/2 to the client, HTTP/1.1 to the origin.
    let tls = connect(vip, Some("a.test"), &[b"h2", b"http/1.1"], false).await;
    assert_eq!(presented(&tls), der(&a));
    assert_eq!(alpn(&tls).as_deref(), Some(&b"h2"[..]));
    let mut open_h2 = h2(tls).await;
    let (status, se_name, body) = h2_get(&mut open_h2, "a.test").await;
    assert_eq!((status, se_name.as_str()), (200, "se-tls"));
    assert_eq!(body, "hello from origin-1\n");

    // SNI under the wildcard, HTTP/1.1 only, TLS 1.2: certificate b.
    let tls = connect(vip, Some("x.b.test"), &[b"http/1.1"], true).await;
    assert_eq!(presented(&tls), der(&b));
    assert_eq!(alpn(&tls).as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1_get(tls, "x.b.test").await, 200);

    // No SNI and no ALPN: the first certificate, HTTP/1.1.
    let tls = connect(vip, None, &[], false).await;
    assert_eq!(presented(&tls), der(&a));
    assert_eq!(alpn(&tls), None);
    assert_eq!(h1_get(tls, "127.0.0.1").await, 200);

    // Garbage instead of a ClientHello: dropped; the listener serves on.
    let mut raw = rt::connect(vip).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = rt::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");

    // A certificate that does not parse: refused whole, version 1 serves on.
    let broken = Certificate {
        key_pem: b.key_pem.clone(),
        ..a.clone()
    };
    let e = plane
        .apply(&config(2, port, origin, &[broken]))
        .await
        .unwrap_err();
    assert!(matches!(e, ApplyError::Tls { .. }), "{e}");
    assert_eq!(plane.applied_version(), 1);

    // Reload: a new certificate for a.test. New handshakes get it; the
    // HTTP/2 connection opened before keeps working.
    let a2 = self_signed("a2", &["a.test"]);
    plane
        .apply(&config(3, port, origin, &[a2.clone(), b.clone()]))
        .await
        .unwrap();
    let tls = connect(vip, Some("a.test"), &[b"h2"], false).await;
    assert_eq!(presented(&tls), der(&a2));
    let (status, _, _) = h2_get(&mut open_h2, "a.test").await;
    assert_eq!(status, 200, "the connection opened before the reload");
    let mut fresh = h2(tls).await;
    assert_eq!(h2_get(&mut fresh, "a.test").await.0, 200);
}

#[tokio::test]
async fn session_resumption_follows_the_setting() {
    use rustls::HandshakeKind::{Full, Resumed};
    for (resumption, tls12_only) in [(true, false), (true, true), (false, false), (false, true)] {
        let server =
            se::tls::server_config(&[self_signed("app", &["app.test"])], resumption, true).unwrap();
        // One client config: its session store offers what the server gave.
        let client = fabric::pki::insecure_client_config(&[b"http/1.1"], tls12_only);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
            let connector = tokio_rustls::TlsConnector::from(client.clone());
            let name = ServerName::try_from("app.test").unwrap();
            let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
            let (mut s, mut c) = (s.unwrap(), c.unwrap());
            // TLS 1.3 tickets come after the handshake: read past them.
            s.write_all(b"x").await.unwrap();
            s.flush().await.unwrap();
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).await.unwrap();
            kinds.push(c.get_ref().1.handshake_kind().unwrap());
        }
        let expected = if resumption {
            [Full, Resumed, Resumed]
        } else {
            [Full, Full, Full]
        };
        assert_eq!(
            kinds, expected,
            "resumption {resumption}, TLS 1.2 only {tls12_only}"
        );
    }
}

/// An HTTPS origin on loopback with a certificate for 127.0.0.1 issued by
/// `ca`; answers `secure origin` to HTTP/1.1.
async fn tls_origin(ca: &fabric::pki::CaMaterial) -> SocketAddr {
    let node = ca.issue_node_cert("origin", &[LOCALHOST]).unwrap();
    let cert = Certificate {
        name: "origin".into(),
        cert_pem: node.cert_pem,
        key_pem: node.key_pem,
    };
    let acceptor =
        tokio_rustls::TlsAcceptor::from(se::tls::server_config(&[cert], true, true).unwrap());
    common::tcp_server(move |tcp| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"secure origin\n"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    })
    .await
}

#[tokio::test]
async fn tls_to_servers_verifies_them_against_the_pool_ca() {
    use fabric::model::PoolTls;
    let ca = fabric::pki::CaMaterial::generate("pool-ca").unwrap();
    let origin = tls_origin(&ca).await;
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let with = |version: u64, server_tls: Option<PoolTls>| {
        let mut config = config(version, port, origin, &[]);
        config.virtual_services[0].tls = None;
        config.virtual_services[0].server_tls = server_tls;
        config
    };
    let mut plane = DataPlane::new("se-tls", Arc::new(LoopbackL2));
    let verified = PoolTls {
        server_name: None,
        verify: true,
        ca_pem: ca.cert_pem.clone(),
    };
    plane.apply(&with(1, Some(verified))).await.unwrap();
    let resp = se::proxy::get(vip, "app", "/").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body().as_ref(), b"secure origin\n");

    // Another CA: the origin's certificate does not verify, nothing is sent.
    let other = fabric::pki::CaMaterial::generate("other-ca").unwrap();
    let wrong = PoolTls {
        server_name: None,
        verify: true,
        ca_pem: other.cert_pem.clone(),
    };
    plane.apply(&with(2, Some(wrong))).await.unwrap();
    assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 502);

    // verify = false: encrypted, not authenticated.
    let unverified = PoolTls {
        server_name: Some("anything.test".into()),
        verify: false,
        ca_pem: String::new(),
    };
    plane.apply(&with(3, Some(unverified))).await.unwrap();
    assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 200);

    // Plain TCP to a TLS server: the server's answer is not HTTP.
    plane.apply(&with(4, None)).await.unwrap();
    assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 502);

    // A pool CA that does not parse is refused whole.
    let garbage = PoolTls {
        server_name: None,
        verify: true,
        ca_pem: "not a certificate".into(),
    };
    assert!(matches!(
        plane.apply(&with(5, Some(garbage))).await,
        Err(ApplyError::Tls { .. })
    ));
    assert_eq!(plane.applied_version(), 4);
}

#[tokio::test]
async fn http2_to_servers_over_tls_negotiates_h2_by_alpn() {
    use fabric::model::PoolTls;
    // An HTTP/2-only origin behind TLS: it serves only what ALPN chose h2 for.
    let cert = self_signed("h2-origin", &["origin.test"]);
    let server_config = se::tls::server_config(&[cert], false, true).unwrap();
    let origin = common::tcp_server(move |tcp| {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config.clone());
        async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return;
            }
            let service = hyper::service::service_fn(|req: http::Request<_>| async move {
                let body = format!("h2 origin saw {:?}\n", req.version());
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    Bytes::from(body),
                )))
            });
            let _ = hyper::server::conn::http2::Builder::new(rt::Exec)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    })
    .await;
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let mut config = config(1, port, origin, &[]);
    config.virtual_services[0].tls = None;
    config.virtual_services[0].server_tls = Some(PoolTls {
        server_name: Some("origin.test".into()),
        verify: false,
        ca_pem: String::new(),
    });
    let mut plane = DataPlane::new("se-tls", Arc::new(LoopbackL2));
    plane.apply(&config).await.unwrap();
    // HTTP/1.1 to the origin: ALPN offers only http/1.1, the origin hangs up.
    assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 502);
    // http2 = true: ALPN h2, requests multiplexed over it.
    config.version = 2;
    config.virtual_services[0].server_http2 = true;
    plane.apply(&config).await.unwrap();
    let resp = se::proxy::get(vip, "app", "/").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body().as_ref(), b"h2 origin saw HTTP/2.0\n");
}
