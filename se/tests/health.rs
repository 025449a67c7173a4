//! Health monitoring end to end on real loopback sockets: a data plane with a
//! monitored pool, demo origins that are stopped and started again, and
//! requests through the virtual service.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fabric::model::{AdminState, Algorithm, HealthMonitor, HttpCheck, MonitorKind, Server};
use fabric::platform::LoopbackL2;
use fabric::proto::{SeConfig, SeVirtualService};
use fabric::rt;
use se::dataplane::DataPlane;
use se::origin::ORIGIN_HEADER;

mod common;
use common::LOCALHOST;

async fn origin(name: &str, port: u16) -> (rt::JoinHandle<()>, SocketAddr) {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_string();
    let task = rt::spawn(async move {
        let _ = se::origin::serve(name, listener).await;
    });
    (task, addr)
}

fn monitor(kind: MonitorKind, interval_ms: u64, rise: u32, fall: u32) -> HealthMonitor {
    HealthMonitor {
        name: "check".into(),
        kind,
        interval_ms,
        timeout_ms: interval_ms / 2,
        rise,
        fall,
        http: (kind == MonitorKind::Http).then(|| HttpCheck {
            path: "/health".into(),
            expected_status: vec![200],
            body_match: Some("ok".into()),
        }),
        udp: None,
        dns: None,
    }
}

fn config(
    version: u64,
    port: u16,
    servers: Vec<Server>,
    health_monitor: Option<HealthMonitor>,
) -> SeConfig {
    SeConfig {
        version,
        virtual_services: vec![SeVirtualService {
            name: "app".into(),
            vip: LOCALHOST,
            port,
            pool: "web".into(),
            algorithm: Algorithm::RoundRobin,
            hash_header: None,
            servers,
            health_monitor,
            tls: None,
            tls_resumption: true,
            http: Default::default(),
            server_tls: None,
            protocol: Default::default(),
            l4: Default::default(),
        }],
    }
}

/// Status and origin of one request through the virtual service.
async fn request(vip: SocketAddr) -> (u16, Option<String>) {
    let resp = se::proxy::get(vip, "app", "/").await.unwrap();
    let origin = resp
        .headers()
        .get(ORIGIN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp.status().as_u16(), origin)
}

async fn origins_seen(vip: SocketAddr, requests: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..requests {
        let (status, origin) = request(vip).await;
        assert_eq!(status, 200);
        seen.insert(origin.unwrap());
    }
    seen
}

fn is_up(plane: &DataPlane, server: SocketAddr) -> Option<bool> {
    plane
        .pool_health("web")
        .into_iter()
        .find(|(a, _)| *a == server)
        .map(|(_, up)| up)
}

/// Poll `check` every 5 ms; how long it took to hold (fails after 5 s).
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = rt::now();
    while !check() {
        assert!(
            rt::now() - started < Duration::from_secs(5),
            "{what}: not within 5 s"
        );
        rt::sleep(Duration::from_millis(5)).await;
    }
    rt::now() - started
}

#[tokio::test]
async fn a_stopped_server_leaves_the_pool_within_interval_times_fall_and_returns_after_rise() {
    let (_a_task, a) = origin("origin-a", 0).await;
    let (b_task, b) = origin("origin-b", 0).await;
    let (interval_ms, rise, fall) = (100, 2, 3);
    let check = monitor(MonitorKind::Http, interval_ms, rise, fall);
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
    let servers = vec![Server::from(a), Server::from(b)];
    plane
        .apply(&config(1, port, servers, Some(check)))
        .await
        .unwrap();
    assert_eq!(origins_seen(vip, 4).await.len(), 2);
    let events = plane.health_events();

    b_task.abort();
    let went_down = wait_for("origin-b marked down", || is_up(&plane, b) == Some(false)).await;
    println!(
        "stopped server marked down after {went_down:?} (interval {interval_ms} ms x fall {fall})"
    );
    let interval = Duration::from_millis(interval_ms);
    // The next check is at most one interval away; `fall` checks fail in a row.
    assert!(
        went_down <= interval * fall + Duration::from_millis(100),
        "{went_down:?}"
    );
    assert_eq!(
        origins_seen(vip, 10).await,
        BTreeSet::from(["origin-a".to_string()])
    );

    let (_b_task, _) = origin("origin-b", b.port()).await;
    let came_back = wait_for("origin-b back up", || is_up(&plane, b) == Some(true)).await;
    println!(
        "restarted server back up after {came_back:?} (interval {interval_ms} ms x rise {rise})"
    );
    assert!(
        came_back <= interval * rise + Duration::from_millis(100),
        "{came_back:?}"
    );
    assert_eq!(origins_seen(vip, 4).await.len(), 2);

    let changes: Vec<_> = events
        .drain()
        .into_iter()
        .map(|c| (c.pool, c.server, c.up))
        .collect();
    assert_eq!(
        changes,
        [("web".to_string(), b, false), ("web".to_string(), b, true)]
    );
}

#[tokio::test]
async fn refused_requests_take_a_dead_server_out_and_no_request_fails() {
    let (_a_task, a) = origin("origin-a", 0).await;
    let dead = SocketAddr::new(LOCALHOST, common::free_port().await);
    // Checks too rare to matter: passive failures must do the work.
    let check = monitor(MonitorKind::Tcp, 60_000, 1, 2);
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
    let servers = vec![Server::from(dead), Server::from(a)];
    plane
        .apply(&config(1, port, servers, Some(check)))
        .await
        .unwrap();
    for _ in 0..6 {
        assert_eq!(request(vip).await, (200, Some("origin-a".into())));
    }
    assert_eq!(is_up(&plane, dead), Some(false));
    assert_eq!(is_up(&plane, a), Some(true));
}

#[tokio::test]
async fn no_eligible_server_gets_503_and_health_survives_config_changes() {
    let (_a_task, a) = origin("origin-a", 0).await;
    let dead = SocketAddr::new(LOCALHOST, common::free_port().await);
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let check = monitor(MonitorKind::Tcp, 60_000, 1, 1);
    let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
    let disabled = Server {
        admin_state: AdminState::Disabled,
        ..Server::from(a)
    };
    let draining = Server {
        admin_state: AdminState::Draining,
        ..Server::from(a)
    };
    plane
        .apply(&config(
            1,
            port,
            vec![disabled, Server::from(dead)],
            Some(check.clone()),
        ))
        .await
        .unwrap();
    wait_for("the dead server's first check", || {
        is_up(&plane, dead) == Some(false)
    })
    .await;
    let resp = se::proxy::get(vip, "app", "/").await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(&resp.body()[..], b"no server of the pool is available\n");

    plane
        .apply(&config(
            2,
            port,
            vec![draining, Server::from(dead)],
            Some(check.clone()),
        ))
        .await
        .unwrap();
    assert_eq!(request(vip).await.0, 503);

    // Enabled again: traffic flows; the dead server is still known down
    // (a config change does not reset health), so nothing even tries it.
    plane
        .apply(&config(
            3,
            port,
            vec![Server::from(a), Server::from(dead)],
            Some(check),
        ))
        .await
        .unwrap();
    assert_eq!(is_up(&plane, dead), Some(false));
    assert_eq!(
        origins_seen(vip, 4).await,
        BTreeSet::from(["origin-a".to_string()])
    );

    // Without a monitor every server counts as up again.
    plane
        .apply(&config(
            4,
            port,
            vec![Server::from(a), Server::from(dead)],
            None,
        ))
        .await
        .unwrap();
    assert_eq!(is_up(&plane, dead), Some(true));
}

#[tokio::test]
async fn checkers_stop_when_the_config_drops_their_server() {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let counted = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let _counter = rt::spawn(async move {
        while listener.accept().await.is_ok() {
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    let port = common::free_port().await;
    let check = monitor(MonitorKind::Tcp, 20, 1, 1);
    let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
    plane
        .apply(&config(
            1,
            port,
            vec![Server::from(counted)],
            Some(check.clone()),
        ))
        .await
        .unwrap();
    wait_for("a few checks", || accepted.load(Ordering::Relaxed) >= 3).await;

    let other = SocketAddr::new(LOCALHOST, common::free_port().await);
    plane
        .apply(&config(2, port, vec![Server::from(other)], Some(check)))
        .await
        .unwrap();
    assert!(plane.pool_health("web").iter().all(|(a, _)| *a == other));
    rt::sleep(Duration::from_millis(50)).await;
    let after = accepted.load(Ordering::Relaxed);
    rt::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        after,
        "the dropped server is still checked"
    );
}

/// A UDP server on loopback that answers each datagram with `reply(datagram)`.
async fn udp_responder(reply: fn(&[u8]) -> Vec<u8>) -> SocketAddr {
    let socket = common::udp_socket().await;
    let addr = socket.local_addr().unwrap();
    rt::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&reply(&buf[..n]), from).await;
        }
    });
    addr
}

#[tokio::test]
async fn udp_and_dns_probes_check_the_answer() {
    use fabric::model::{DnsCheck, UdpCheck};
    let pong = udp_responder(|d| [b"pong:", d].concat()).await;
    let mut udp = monitor(MonitorKind::Udp, 400, 1, 1);
    udp.udp = Some(UdpCheck {
        send: "ping".into(),
        expect: Some("pong:ping".into()),
    });
    assert_eq!(se::health::probe(&udp, pong).await, Ok(()));
    udp.udp.as_mut().unwrap().expect = Some("other".into());
    assert!(se::health::probe(&udp, pong)
        .await
        .unwrap_err()
        .contains("lacks"));
    // Nobody there: no answer within the timeout.
    let silent = common::udp_socket().await;
    let nobody = silent.local_addr().unwrap();
    assert!(se::health::probe(&udp, nobody)
        .await
        .unwrap_err()
        .contains("no answer"));

    // A DNS server that answers NOERROR, one that answers NXDOMAIN (rcode 3),
    // and one that echoes the query (not an answer: QR clear).
    let noerror = udp_responder(|q| {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a
    })
    .await;
    let nxdomain = udp_responder(|q| {
        let mut a = q.to_vec();
        a[2] |= 0x80;
        a[3] = (a[3] & 0xf0) | 3;
        a
    })
    .await;
    let echo = udp_responder(|q| q.to_vec()).await;
    let mut dns = monitor(MonitorKind::Dns, 400, 1, 1);
    dns.dns = Some(DnsCheck {
        name: "health.fabric.test".into(),
        rtype: "AAAA".into(),
    });
    assert_eq!(se::health::probe(&dns, noerror).await, Ok(()));
    assert!(se::health::probe(&dns, nxdomain)
        .await
        .unwrap_err()
        .contains("rcode 3"));
    assert!(se::health::probe(&dns, echo)
        .await
        .unwrap_err()
        .contains("not an answer"));
}
