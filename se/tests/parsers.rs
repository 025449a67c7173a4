//! Property tests: random and mutated bytes against every parser the SE
//! exposes to the network (the HTTP/1.1 listener, the TLS listener with
//! ALPN h2, and the Controller protocol's frames). Each input must end with
//! the connection closed (after a 4xx, or nothing) within a few seconds, no
//! panic, and the SE must serve a good request afterwards. Seeded: a failure
//! names its seed and input.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fabric::model::Algorithm;
use fabric::rt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use se::lb::ServerSet;
use se::proxy::VirtualService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const SEED: u64 = 0x5e_5e_5e;
const CASES: usize = 150;

const GOOD_REQUEST: &[u8] =
    b"GET /path?q=1 HTTP/1.1\r\nHost: app\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";

/// Random bytes, or a good request (or TLS ClientHello prefix) with bytes
/// flipped, cut, repeated or inserted.
fn input(rng: &mut SmallRng, seed_input: &[u8]) -> Vec<u8> {
    match rng.gen_range(0..3) {
        0 => (0..rng.gen_range(0..2048)).map(|_| rng.gen()).collect(),
        _ => {
            let mut v = seed_input.to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..=v.len());
                match rng.gen_range(0..4) {
                    0 if at < v.len() => v[at] = rng.gen(),
                    1 => v.truncate(at),
                    2 => {
                        let chunk = v[at..].to_vec();
                        v.extend_from_slice(&chunk);
                    }
                    _ => v.insert(at, rng.gen()),
                }
            }
            v
        }
    }
}

async fn listener_for(vs: Arc<VirtualService>) -> SocketAddr {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt::spawn(rt::accept_loop(listener, 256, move |stream, peer| {
        se::proxy::serve_connection(vs.clone(), stream, peer)
    }));
    addr
}

/// Send `bytes`, close our side, and read what comes back until the SE closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = rt::connect(addr).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    match rt::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await {
        Ok(_) => out,
        Err(_) => panic!(
            "seed {SEED:#x}: the connection stayed open 5 s after input {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// The first bytes a real client sends: a TLS ClientHello offering h2.
async fn client_hello() -> Vec<u8> {
    let (client, mut server) = tokio::io::duplex(1 << 16);
    let config = fabric::pki::insecure_client_config(&[b"h2", b"http/1.1"], false);
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    rt::spawn(async move {
        let _ = tokio_rustls::TlsConnector::from(config)
            .connect(name, client)
            .await;
    });
    let mut buf = vec![0u8; 4096];
    let n = server.read(&mut buf).await.unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn random_bytes_never_crash_the_http_or_tls_listener() {
    // No server behind: a request that parses gets 503, which is fine.
    let plain = Arc::new(VirtualService::new(
        "plain".into(),
        "se-fuzz".into(),
        ServerSet::standalone(Algorithm::RoundRobin, &[]),
    ));
    let tls = Arc::new(VirtualService::new(
        "tls".into(),
        "se-fuzz".into(),
        ServerSet::standalone(Algorithm::RoundRobin, &[]),
    ));
    tls.set_tls(Some(
        se::tls::server_config(
            &[fabric::pki::self_signed("app", &["app.test"]).unwrap()],
            true,
            true,
        )
        .unwrap(),
    ));
    let plain_addr = listener_for(plain).await;
    let tls_addr = listener_for(tls).await;
    let hello = client_hello().await;
    assert_eq!(hello[0], 0x16, "a TLS handshake record");

    let mut rng = SmallRng::seed_from_u64(SEED);
    for case in 0..CASES {
        let bytes = input(&mut rng, GOOD_REQUEST);
        let reply = exchange(plain_addr, &bytes).await;
        let text = String::from_utf8_lossy(&reply);
        assert!(
            reply.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.1 503"),
            "seed {SEED:#x} case {case}: {:?} -> {text:?}",
            String::from_utf8_lossy(&bytes)
        );
        let bytes = input(&mut rng, &hello);
        // A TLS listener answers garbage with an alert or nothing, never HTTP.
        let reply = exchange(tls_addr, &bytes).await;
        assert!(!reply.starts_with(b"HTTP/"), "seed {SEED:#x} case {case}");
    }

    // Both still serve a good client.
    let reply = exchange(plain_addr, GOOD_REQUEST).await;
    assert!(
        reply.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    let config = fabric::pki::insecure_client_config(&[b"h2"], false);
    let tcp = rt::connect(tls_addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

#[test]
fn random_bytes_are_refused_by_the_controller_protocol() {
    use fabric::proto::{ControllerMessage, SeMessage};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED);
    rt.block_on(async {
        let mut framed = Vec::new();
        let good = ControllerMessage::HeartbeatAck { desired_version: 7 };
        fabric::proto::write_frame(&mut framed, &good)
            .await
            .unwrap();
        for _ in 0..2000 {
            let bytes = input(&mut rng, &framed);
            let mut r = &bytes[..];
            // Either a message, a clean end, or an error: never a panic.
            let _ = fabric::proto::read_frame::<_, ControllerMessage>(&mut r).await;
            let mut r = &bytes[..];
            let _ = fabric::proto::read_frame::<_, SeMessage>(&mut r).await;
        }
    });
}
