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
        http: matches!(kind, MonitorKind::Http | MonitorKind::Https).then(|| HttpCheck {
            path: "/health".into(),
            expected_status: vec![200],
            body_match: Some("ok".into()),
        }),
        tls: None,
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
    let (_held, dead) = common::refusing_addr();
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
    let (_held, dead) = common::refusing_addr();
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

/// An HTTP/1.1 server on loopback, over TLS with `tls` if given, answering
/// every request with the status in `status` and the body `ok`.
async fn status_server(
    status: Arc<std::sync::atomic::AtomicU16>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> SocketAddr {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    common::tcp_server(move |tcp| {
        let status = status.clone();
        let tls = tls.clone();
        async move {
            let service = hyper::service::service_fn(move |_req| {
                let code = status.load(Ordering::Relaxed);
                async move {
                    let mut resp =
                        hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok\n")));
                    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                }
                Some(config) => {
                    let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(tls), service).await;
                }
            }
        }
    })
    .await
}

/// TLS server settings with a certificate for 127.0.0.1 issued by `ca`.
fn tls_for_loopback(ca: &fabric::pki::CaMaterial) -> Arc<rustls::ServerConfig> {
    let node = ca.issue_node_cert("origin", &[LOCALHOST]).unwrap();
    let cert = fabric::model::Certificate {
        name: "origin".into(),
        cert_pem: node.cert_pem,
        key_pem: node.key_pem,
    };
    se::tls::server_config(&[cert], true, true).unwrap()
}

#[tokio::test]
async fn https_checks_verify_the_certificate_and_judge_status_and_body() {
    use fabric::model::PoolTls;
    use se::health::Checker;
    let ca = fabric::pki::CaMaterial::generate("pool-ca").unwrap();
    let other = fabric::pki::CaMaterial::generate("other-ca").unwrap();
    let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let server = status_server(status.clone(), Some(tls_for_loopback(&ca))).await;
    let verified = PoolTls {
        server_name: None,
        verify: true,
        ca_pem: ca.cert_pem.clone(),
    };
    let check = monitor(MonitorKind::Https, 1_000, 1, 1);

    // The pool's TLS settings: status and body as expected.
    let https = Checker::new(&check, Some(&verified)).unwrap();
    let started = rt::now();
    assert_eq!(https.probe(server).await, Ok(()));
    println!("one https check took {:?}", rt::now() - started);
    let mut other_body = check.clone();
    other_body.http.as_mut().unwrap().body_match = Some("healthy".into());
    let e = Checker::new(&other_body, Some(&verified))
        .unwrap()
        .probe(server)
        .await
        .unwrap_err();
    assert!(e.contains("body lacks `healthy`"), "{e}");
    status.store(503, Ordering::Relaxed);
    let e = https.probe(server).await.unwrap_err();
    assert!(e.contains("status 503"), "{e}");
    status.store(200, Ordering::Relaxed);

    // A certificate that does not chain to the CA fails, verify = false passes.
    let wrong = PoolTls {
        ca_pem: other.cert_pem.clone(),
        ..verified.clone()
    };
    let e = Checker::new(&check, Some(&wrong))
        .unwrap()
        .probe(server)
        .await
        .unwrap_err();
    assert!(e.contains("TLS") && e.contains("certificate"), "{e}");
    let unverified = PoolTls {
        server_name: Some("anything.test".into()),
        verify: false,
        ca_pem: String::new(),
    };
    let any = Checker::new(&check, Some(&unverified)).unwrap();
    assert_eq!(any.probe(server).await, Ok(()));

    // The monitor's own `tls` serves pools without one; the pool's wins.
    let mut own = check.clone();
    own.tls = Some(wrong.clone());
    assert!(se::health::probe(&own, server).await.is_err());
    let pool_wins = Checker::new(&own, Some(&verified)).unwrap();
    assert_eq!(pool_wins.probe(server).await, Ok(()));
    assert!(
        Checker::new(&check, None).is_err(),
        "https without TLS settings"
    );
    // A plain http check of a TLS server fails: the answer is not HTTP.
    let plain = monitor(MonitorKind::Http, 1_000, 1, 1);
    assert!(se::health::probe(&plain, server).await.is_err());
}

#[tokio::test]
async fn an_https_monitor_takes_a_server_down_and_up_through_the_data_plane() {
    use fabric::model::PoolTls;
    let ca = fabric::pki::CaMaterial::generate("pool-ca").unwrap();
    let other = fabric::pki::CaMaterial::generate("other-ca").unwrap();
    let status = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let server = status_server(status.clone(), Some(tls_for_loopback(&ca))).await;
    let port = common::free_port().await;
    // A TLS handshake in a debug build takes tens of milliseconds: the
    // check may take the whole interval.
    let mut check = monitor(MonitorKind::Https, 200, 1, 1);
    check.timeout_ms = check.interval_ms;
    let with_tls = |version: u64, ca_pem: &str| {
        let mut c = config(
            version,
            port,
            vec![Server::from(server)],
            Some(check.clone()),
        );
        c.virtual_services[0].server_tls = Some(PoolTls {
            server_name: None,
            verify: true,
            ca_pem: ca_pem.into(),
        });
        c
    };
    let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
    plane.apply(&with_tls(1, &ca.cert_pem)).await.unwrap();
    let vip = SocketAddr::new(LOCALHOST, port);
    assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 200);
    status.store(500, Ordering::Relaxed);
    wait_for("down on 500", || is_up(&plane, server) == Some(false)).await;
    status.store(200, Ordering::Relaxed);
    wait_for("up on 200", || is_up(&plane, server) == Some(true)).await;

    // Another CA for the pool: the checks restart with it and fail.
    plane.apply(&with_tls(2, &other.cert_pem)).await.unwrap();
    wait_for("down on a certificate that does not verify", || {
        is_up(&plane, server) == Some(false)
    })
    .await;
    let reasons: Vec<String> = plane
        .health_events()
        .drain()
        .into_iter()
        .map(|c| c.reason)
        .collect();
    assert!(
        reasons.last().is_some_and(|r| r.contains("certificate")),
        "{reasons:?}"
    );

    // An https monitor with no TLS settings anywhere is refused whole.
    let mut bare = with_tls(3, &ca.cert_pem);
    bare.virtual_services[0].server_tls = None;
    assert!(matches!(
        plane.apply(&bare).await,
        Err(se::dataplane::ApplyError::Tls { .. })
    ));
    assert_eq!(plane.applied_version(), 2);
}

#[tokio::test]
async fn outlier_detection_ejects_a_server_answering_503_and_lets_it_back() {
    use fabric::model::OutlierDetection;
    let (_a_task, a) = origin("origin-a", 0).await;
    let failing = Arc::new(std::sync::atomic::AtomicU16::new(503));
    let b = status_server(failing, None).await;
    let port = common::free_port().await;
    let vip = SocketAddr::new(LOCALHOST, port);
    let (errors, ejection_ms) = (3, 1_000);
    let mut c = config(1, port, vec![Server::from(a), Server::from(b)], None);
    c.virtual_services[0].outlier_detection = Some(OutlierDetection {
        consecutive_errors: errors,
        ejection_ms,
        max_ejected_percent: 50,
        ..Default::default()
    });
    let mut plane = DataPlane::new("se-test", Arc::new(LoopbackL2));
    plane.apply(&c).await.unwrap();
    let events = plane.health_events();

    // Round robin: b gets every other request until its third 503.
    let mut to_b = 0;
    for _ in 0..2 * errors {
        if request(vip).await.0 == 503 {
            to_b += 1;
        }
    }
    assert_eq!(to_b, errors);
    let ejected_at = rt::now();
    assert_eq!(plane.ejected("web"), [b]);
    assert_eq!(is_up(&plane, b), Some(true), "ejected, not down");
    for _ in 0..10 {
        assert_eq!(request(vip).await, (200, Some("origin-a".into())));
    }
    assert!(rt::now() - ejected_at < Duration::from_millis(ejection_ms));

    // After ejection_ms it takes requests again.
    rt::sleep(Duration::from_millis(ejection_ms) - (rt::now() - ejected_at)).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(request(vip).await.0);
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(plane.ejected("web").is_empty());

    let changes: Vec<_> = events
        .drain()
        .into_iter()
        .map(|c| (c.server, c.up, c.outlier))
        .collect();
    assert_eq!(changes, [(b, false, true), (b, true, true)]);
    let stats = plane.stats();
    let web = &stats.pools[0].servers;
    assert!(web.iter().all(|s| !s.ejected), "{web:?}");
}
