//! L4 virtual services on loopback: TCP connections spread over servers,
//! half-closes passed through, refused servers skipped; UDP flows kept on
//! one server, answered from the VIP, bounded and forgotten when idle. A TCP
//! and a UDP virtual service share one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fabric::model::{Algorithm, Server, VsL4, VsProtocol};
use fabric::platform::LoopbackL2;
use fabric::proto::{SeConfig, SeVirtualService};
use fabric::rt;
use se::dataplane::DataPlane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::LOCALHOST;

/// A TCP server that greets with its name, echoes, and says `bye` when
/// the client has finished sending.
async fn tcp_server(name: &'static str) -> SocketAddr {
    common::tcp_server(move |mut s| async move {
        s.write_all(format!("{name}\n").as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                let _ = s.write_all(b"bye\n").await;
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    })
    .await
}

/// A UDP server that answers `NAME:payload`.
async fn udp_server(name: &'static str) -> SocketAddr {
    let socket = common::udp_socket().await;
    let addr = socket.local_addr().unwrap();
    rt::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let mut answer = format!("{name}:").into_bytes();
            answer.extend_from_slice(&buf[..n]);
            socket.send_to(&answer, from).await.unwrap();
        }
    });
    addr
}

fn vs(
    name: &str,
    port: u16,
    protocol: VsProtocol,
    servers: &[SocketAddr],
    l4: VsL4,
) -> SeVirtualService {
    SeVirtualService {
        name: name.into(),
        vip: LOCALHOST,
        port,
        pool: name.into(),
        algorithm: Algorithm::RoundRobin,
        hash_header: None,
        servers: servers.iter().map(|a| Server::from(*a)).collect(),
        health_monitor: None,
        tls: None,
        tls_resumption: true,
        http: Default::default(),
        server_tls: None,
        server_http2: false,
        protocol,
        l4,
        outlier_detection: None,
        secondary: false,
        scaleout: Vec::new(),
    }
}

async fn plane(config: SeConfig) -> DataPlane {
    let mut plane = DataPlane::new("se-l4", Arc::new(LoopbackL2));
    plane.apply(&config).await.unwrap();
    plane
}

/// Connect, read the greeting, send `msg`, half-close, read the rest.
async fn tcp_exchange(vip: SocketAddr, msg: &str) -> String {
    let mut c = rt::connect(vip).await.unwrap();
    c.write_all(msg.as_bytes()).await.unwrap();
    c.shutdown().await.unwrap();
    let mut all = String::new();
    rt::timeout(Duration::from_secs(5), c.read_to_string(&mut all))
        .await
        .unwrap()
        .unwrap();
    all
}

async fn udp_ask(
    client: &rt::UdpSocket,
    vip: SocketAddr,
    msg: &str,
) -> Option<(String, SocketAddr)> {
    client.send_to(msg.as_bytes(), vip).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = rt::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

#[tokio::test]
async fn tcp_connections_spread_over_servers_and_half_closes_pass_through() {
    let port = common::free_port().await;
    let dead = {
        let l = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
            .await
            .unwrap();
        l.local_addr().unwrap()
    };
    let servers = [tcp_server("t1").await, dead, tcp_server("t2").await];
    let plane = plane(SeConfig {
        version: 1,
        virtual_services: vec![vs("tcp", port, VsProtocol::Tcp, &servers, VsL4::default())],
        ha: None,
        peers: Vec::new(),
    })
    .await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let mut seen = Vec::new();
    for i in 0..6 {
        let reply = tcp_exchange(vip, &format!("hello {i}\n")).await;
        let (name, rest) = reply.split_once('\n').unwrap();
        assert_eq!(
            rest,
            format!("hello {i}\nbye\n"),
            "echo, then the server's answer to our half-close"
        );
        seen.push(name.to_string());
    }
    // The refused server is skipped every time, never failing a connection.
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["t1", "t2"]);

    // The counters saw it all: 6 connections, their bytes, the refusals.
    let stats = plane.stats();
    let tcp = &stats.virtual_services[0];
    assert_eq!((tcp.connections, tcp.open_connections), (6, 0));
    assert_eq!(
        tcp.bytes_in,
        (0..6)
            .map(|i| format!("hello {i}\n").len() as u64)
            .sum::<u64>()
    );
    assert!(tcp.bytes_out > tcp.bytes_in);
    let pool = &stats.pools[0].servers;
    let served: u64 = pool
        .iter()
        .filter(|s| s.addr != dead)
        .map(|s| s.requests)
        .sum();
    assert_eq!(served, 6);
    let refused = pool.iter().find(|s| s.addr == dead).unwrap();
    assert_eq!(refused.requests, refused.failures);
    assert!(refused.failures >= 1);
    assert!(pool
        .iter()
        .filter(|s| s.addr != dead)
        .all(|s| s.latency.total() == s.requests));
}

#[tokio::test]
async fn udp_flows_stay_on_one_server_and_answers_come_from_the_vip() {
    let port = common::free_port().await;
    let udp = [udp_server("u1").await, udp_server("u2").await];
    let tcp = [tcp_server("t1").await];
    let _plane = plane(SeConfig {
        version: 1,
        virtual_services: vec![
            vs("tcp", port, VsProtocol::Tcp, &tcp, VsL4::default()),
            vs("udp", port, VsProtocol::Udp, &udp, VsL4::default()),
        ],
        ha: None,
        peers: Vec::new(),
    })
    .await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let (a, b) = (common::udp_socket().await, common::udp_socket().await);
    let (first_a, from) = udp_ask(&a, vip, "a0").await.unwrap();
    assert_eq!(from, vip, "answers come from the VIP");
    let server_a = first_a.split(':').next().unwrap().to_string();
    let (first_b, _) = udp_ask(&b, vip, "b0").await.unwrap();
    let server_b = first_b.split(':').next().unwrap().to_string();
    assert_ne!(server_a, server_b, "round robin over new flows");
    for i in 1..5 {
        assert_eq!(
            udp_ask(&a, vip, &format!("a{i}")).await.unwrap().0,
            format!("{server_a}:a{i}")
        );
        assert_eq!(
            udp_ask(&b, vip, &format!("b{i}")).await.unwrap().0,
            format!("{server_b}:b{i}")
        );
    }
    // The TCP virtual service on the same port is unaffected.
    assert!(tcp_exchange(vip, "x").await.starts_with("t1\n"));
}

#[tokio::test]
async fn udp_flows_are_bounded_and_forgotten_when_idle() {
    let port = common::free_port().await;
    let udp = [udp_server("u1").await];
    let l4 = VsL4 {
        idle_timeout_ms: Some(300),
        max_udp_flows: 1,
        ..VsL4::default()
    };
    let _plane = plane(SeConfig {
        version: 1,
        virtual_services: vec![vs("udp", port, VsProtocol::Udp, &udp, l4)],
        ha: None,
        peers: Vec::new(),
    })
    .await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let (a, b) = (common::udp_socket().await, common::udp_socket().await);
    assert!(udp_ask(&a, vip, "a").await.is_some());
    assert!(
        udp_ask(&b, vip, "b").await.is_none(),
        "the one flow is taken: dropped"
    );
    // Once `a` has been quiet longer than the idle timeout, `b` gets a flow.
    rt::sleep(Duration::from_millis(700)).await;
    assert_eq!(udp_ask(&b, vip, "b").await.unwrap().0, "u1:b");
}
