//! The foundation slice, in the simulation: HTTP through an SE to two
//! origins, DNS answering the VIP, an SE crash and restart, and a headless
//! Controller. Replay any failure with the seed it prints:
//! `MADSIM_TEST_SEED=<seed> RUSTFLAGS="--cfg madsim" cargo test -p chaos --target-dir target/sim --test slice`
#![cfg(madsim)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use sim::world::World;

const SETTLE: Duration = Duration::from_secs(10);

/// Print how much simulated time a scenario covered (for the sim/wall ratio).
fn report(name: &str, started: std::time::Instant) {
    println!(
        "scenario {name}: simulated {:.3} s",
        (fabric::rt::now() - started).as_secs_f64()
    );
}

/// The slice world, once its VIP serves.
async fn serving_world() -> World {
    let world = World::builder().build().await.unwrap();
    world
        .wait_until("the VIP serves", SETTLE, || serving(&world))
        .await
        .unwrap();
    world
}

/// Wait until every SE has acknowledged config `version` (or a later one:
/// a placement change after it moves the SE version on).
async fn acked(world: &World, version: u64) {
    let controller = world.controller().unwrap();
    world
        .wait_until(
            &format!("the SEs ack version {version}"),
            SETTLE,
            || async {
                controller
                    .ses()
                    .iter()
                    .all(|s| s.applied_version >= version)
            },
        )
        .await
        .unwrap();
}

async fn serving(world: &World) -> bool {
    matches!(world.http_get("/").await, Ok(r) if r.status == 200)
}

#[madsim::test]
async fn http_round_robins_over_both_origins_through_the_se() {
    let started = fabric::rt::now();
    let world = serving_world().await;

    let mut origins = BTreeSet::new();
    for _ in 0..6 {
        let r = world.http_get("/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.se.as_deref(), Some("se-1"));
        assert_eq!(
            r.body,
            format!("hello from {}\n", r.origin.clone().unwrap())
        );
        origins.insert(r.origin.unwrap());
    }
    assert_eq!(
        origins.into_iter().collect::<Vec<_>>(),
        ["origin-1", "origin-2"]
    );

    let controller = world.controller().unwrap();
    let se = &controller.ses()[0];
    assert!(
        se.connected && se.applied_version == controller.desired().se_version(),
        "{se:?}"
    );
    report(
        "http_round_robins_over_both_origins_through_the_se",
        started,
    );
}

#[madsim::test]
async fn a_config_change_reaches_the_se_and_traffic_follows_it() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    let controller = world.controller().unwrap();
    let mut config = world.config.clone();
    config.pools[0].servers.truncate(1);
    let version = controller.apply(config).await.unwrap();
    acked(&world, version).await;
    for _ in 0..4 {
        let r = world.http_get("/").await.unwrap();
        assert_eq!(r.origin.as_deref(), Some("origin-1"), "{r:?}");
    }

    // An invalid change is refused whole: nothing moves.
    let mut bad = world.config.clone();
    bad.pools[0].servers.clear();
    assert!(controller.apply(bad).await.is_err());
    assert_eq!(controller.desired().version, version);
    report(
        "a_config_change_reaches_the_se_and_traffic_follows_it",
        started,
    );
}

#[madsim::test]
async fn config_swaps_under_load_drop_no_request_and_slow_ones_finish() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    let controller = world.controller().unwrap();
    let until = fabric::rt::now() + Duration::from_secs(8);
    // Four clients in a loop, one of them on a path the origins answer
    // after 1.5 s, so requests are in flight on servers the swaps remove.
    let load = |path: &'static str| {
        let world = &world;
        async move {
            let (mut ok, mut failed) = (0, Vec::new());
            while fabric::rt::now() < until {
                match world.http_get(path).await {
                    Ok(r) if r.status == 200 && r.origin.is_some() => ok += 1,
                    other => failed.push(format!("{path}: {other:?}")),
                }
            }
            (ok, failed)
        }
    };
    let swaps = async {
        let mut versions = Vec::new();
        for i in 0..6 {
            fabric::rt::sleep(Duration::from_millis(1200)).await;
            let mut config = world.config.clone();
            match i % 3 {
                0 => config.pools[0].servers.truncate(1),
                1 => config.pools[0].algorithm = fabric::model::Algorithm::LeastConnections,
                _ => config.pools[0].servers.reverse(),
            }
            versions.push(controller.apply(config).await.unwrap());
        }
        versions
    };
    let (slow, a, b, c, versions) =
        tokio::join!(load("/slow/1500"), load("/"), load("/"), load("/"), swaps);
    let failed: Vec<String> = [&slow, &a, &b, &c]
        .iter()
        .flat_map(|(_, f)| f.clone())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(slow.0 >= 3, "slow requests finished: {}", slow.0);
    assert!(a.0 + b.0 + c.0 > 100, "{} {} {}", a.0, b.0, c.0);
    acked(&world, *versions.last().unwrap()).await;
    report(
        "config_swaps_under_load_drop_no_request_and_slow_ones_finish",
        started,
    );
}

#[madsim::test]
async fn a_drained_server_finishes_its_requests_and_gets_no_new_ones() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    let controller = world.controller().unwrap();
    // Slow requests in flight on both origins, then origin-2 is drained.
    let drain = async {
        fabric::rt::sleep(Duration::from_millis(300)).await;
        let mut config = world.config.clone();
        config.pools[0].servers[1].admin_state = fabric::model::AdminState::Draining;
        let version = controller.apply(config).await.unwrap();
        acked(&world, version).await;
        let mut after = BTreeSet::new();
        for _ in 0..20 {
            after.insert(world.http_get("/").await.unwrap().origin.unwrap());
        }
        after
    };
    // Four concurrent slow requests (two per origin by round robin).
    let slow_many = async {
        let (a, b, c, d) = tokio::join!(
            world.http_get("/slow/2000"),
            world.http_get("/slow/2000"),
            world.http_get("/slow/2000"),
            world.http_get("/slow/2000")
        );
        [a, b, c, d]
    };
    let (in_flight, after) = tokio::join!(slow_many, drain);
    let origins: BTreeSet<String> = in_flight
        .into_iter()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.origin.unwrap()
        })
        .collect();
    assert!(
        origins.contains("origin-2"),
        "a slow request was on origin-2: {origins:?}"
    );
    assert_eq!(
        after.into_iter().collect::<Vec<_>>(),
        ["origin-1"],
        "no new request on the drained one"
    );
    report(
        "a_drained_server_finishes_its_requests_and_gets_no_new_ones",
        started,
    );
}

#[madsim::test]
async fn traffic_counters_reach_the_controller_and_its_api() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    for _ in 0..40 {
        assert_eq!(world.http_get("/").await.unwrap().status, 200);
    }
    // A request the SE refuses itself.
    let refused = world
        .tcp_exchange(b"GET / HTTP/1.1\r\n\r\n".to_vec())
        .await
        .unwrap();
    assert!(
        refused.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&refused)
    );
    let controller = world.controller().unwrap();
    let vs_name = world.config.virtual_services[0].name.clone();
    world
        .wait_until("the SE's counters reach the Controller", SETTLE, || async {
            let (sum, _) = controller.stats();
            sum.virtual_services
                .iter()
                .any(|v| v.name == vs_name && v.requests >= 41 && v.own_errors >= 1)
        })
        .await
        .unwrap();
    let (sum, reporting) = controller.stats();
    assert_eq!(reporting, 1);
    let vs = sum
        .virtual_services
        .iter()
        .find(|v| v.name == vs_name)
        .unwrap();
    assert!(vs.responses[1] >= 40 && vs.responses[3] >= 1, "{vs:?}");
    assert_eq!(vs.latency.total(), vs.responses.iter().sum::<u64>());
    let servers = &sum.pools[0].servers;
    assert_eq!(servers.len(), 2);
    let to_servers: u64 = servers.iter().map(|s| s.requests).sum();
    assert!(to_servers >= 40, "{servers:?}");
    assert!(
        servers.iter().all(|s| s.requests >= 20 && s.up),
        "round robin: {servers:?}"
    );

    let token = world.admin_token(0).await.unwrap();
    let reply = world
        .api(0, "GET", "/api/v1/stats", &token, None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let item = &reply.body["virtual_services"][0];
    assert_eq!(item["name"], vs_name.as_str());
    assert!(item["requests"].as_u64().unwrap() >= 41);
    assert!(item["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{item}");
    assert!(reply.body["pools"][0]["servers"][0]["latency_ms"]["p50"].is_number());
    report("traffic_counters_reach_the_controller_and_its_api", started);
}

#[madsim::test]
async fn malformed_http_gets_400_and_the_se_keeps_serving() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    let reply = world
        .tcp_exchange(b"GARBAGE \x00\x01 nonsense\r\n\r\n".to_vec())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let mut huge = b"GET / HTTP/1.1\r\nHost: app\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 100 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let reply = world.tcp_exchange(huge).await.unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(serving(&world).await);
    report("malformed_http_gets_400_and_the_se_keeps_serving", started);
}

#[madsim::test]
async fn dns_answers_the_vip_authoritatively() {
    let started = fabric::rt::now();
    let world = World::builder().build().await.unwrap();
    let vip: IpAddr = "10.0.100.1".parse().unwrap();
    let a = world.dns("app.fabric.test.", RecordType::A).await.unwrap();
    assert_eq!(
        (a.rcode, a.authoritative, a.addrs.clone()),
        (ResponseCode::NoError, true, vec![vip]),
        "{a:?}"
    );
    let mixed = world.dns("App.Fabric.TEST.", RecordType::A).await.unwrap();
    assert_eq!(mixed.addrs, vec![vip]);

    let nx = world.dns("nope.fabric.test.", RecordType::A).await.unwrap();
    assert_eq!(
        (nx.rcode, nx.authorities),
        (ResponseCode::NXDomain, 1),
        "SOA in authority: {nx:?}"
    );
    let nodata = world
        .dns("app.fabric.test.", RecordType::AAAA)
        .await
        .unwrap();
    assert_eq!(
        (nodata.rcode, nodata.addrs.len(), nodata.authorities),
        (ResponseCode::NoError, 0, 1)
    );
    let refused = world.dns("example.com.", RecordType::A).await.unwrap();
    assert_eq!(refused.rcode, ResponseCode::Refused);

    // A malformed query (header claims a question that is not there) gets FORMERR with its ID.
    let reply = world
        .dns_exchange(vec![
            0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x07,
        ])
        .await
        .unwrap();
    assert_eq!(&reply[..2], &[0xab, 0xcd]);
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    report("dns_answers_the_vip_authoritatively", started);
}

#[madsim::test]
async fn service_resumes_after_the_se_crashes_and_restarts() {
    let started = fabric::rt::now();
    let world = serving_world().await;

    world.cloud.kill("se-1").unwrap();
    world
        .wait_until("the VIP stops serving", SETTLE, || async {
            !serving(&world).await
        })
        .await
        .unwrap();

    world.cloud.restart("se-1").unwrap();
    let took = world
        .wait_until("the VIP serves again", SETTLE, || serving(&world))
        .await
        .unwrap();
    println!("service resumed {took:?} after the SE restarted");

    let controller = world.controller().unwrap();
    let ups = controller
        .events()
        .iter()
        .filter(|e| e.kind == "se_up" && e.object == "se-1")
        .count();
    assert_eq!(
        ups,
        2,
        "the SE registered again after its restart: {:#?}",
        controller.events()
    );
    report("service_resumes_after_the_se_crashes_and_restarts", started);
}

#[madsim::test]
async fn the_se_keeps_serving_while_the_controller_is_down() {
    let started = fabric::rt::now();
    let world = serving_world().await;

    world.kill_controller();
    for _ in 0..20 {
        assert!(
            serving(&world).await,
            "headless: the SE must keep its last config"
        );
        madsim::time::sleep(Duration::from_millis(500)).await;
    }
    world.restart_controller();
    world
        .wait_until(
            "the SE resyncs with the restarted controller",
            SETTLE,
            || async {
                world
                    .controller()
                    .is_some_and(|c| c.ses().iter().any(|s| s.connected))
            },
        )
        .await
        .unwrap();
    assert!(serving(&world).await);
    report("the_se_keeps_serving_while_the_controller_is_down", started);
}

/// The slice fabric with an HTTP health monitor on its pool.
fn monitored_config() -> String {
    let monitor = r#"[[health_monitors]]
name = "web-http"
type = "http"
interval_ms = 500
timeout_ms = 250
rise = 2
fall = 2
http = { path = "/health", expected_status = [200], body_match = "ok" }

[[pools]]
name = "web"
health_monitor = "web-http"
"#;
    let config = sim::world::SLICE_CONFIG.replacen("[[pools]]\nname = \"web\"\n", monitor, 1);
    assert_ne!(
        config,
        sim::world::SLICE_CONFIG,
        "the slice config changed shape"
    );
    config
}

/// Health changes of origin-2 the Controller recorded, as (up, reason).
fn origin_2_changes(world: &World) -> Vec<(bool, String)> {
    world.controller().map_or_else(Vec::new, |c| {
        c.events()
            .into_iter()
            .filter(|e| e.kind == "health_change" && e.object == "web/10.0.2.2:80")
            .map(|e| (e.reason.starts_with("up "), e.reason))
            .collect()
    })
}

async fn only_origin_1(world: &World, requests: usize) {
    for _ in 0..requests {
        let r = world.http_get("/").await.unwrap();
        assert_eq!(
            (r.status, r.origin.as_deref()),
            (200, Some("origin-1")),
            "{r:?}"
        );
    }
}

#[madsim::test]
async fn a_killed_origin_is_taken_out_of_the_pool_and_no_request_fails() {
    const INTERVAL: Duration = Duration::from_millis(500);
    const TIMEOUT: Duration = Duration::from_millis(250);
    let started = fabric::rt::now();
    let world = World::builder()
        .config(&monitored_config())
        .build()
        .await
        .unwrap();
    world
        .wait_until("the VIP serves", SETTLE, || serving(&world))
        .await
        .unwrap();
    let mut origins = BTreeSet::new();
    for _ in 0..4 {
        origins.insert(world.http_get("/").await.unwrap().origin.unwrap());
    }
    assert_eq!(origins.len(), 2, "{origins:?}");
    let handle = madsim::runtime::Handle::current();
    // Detection window: the next check is at most one interval away, then
    // `fall` (2) failures in a row, each within the check timeout.
    let window = INTERVAL * 2 + TIMEOUT;

    // 1. No traffic: the active checks find the dead origin.
    handle.kill("origin-2");
    madsim::time::sleep(window).await;
    only_origin_1(&world, 20).await;
    world
        .wait_until("the controller records origin-2 down", SETTLE, || async {
            origin_2_changes(&world).len() == 1
        })
        .await
        .unwrap();
    let (up, reason) = &origin_2_changes(&world)[0];
    assert!(!up && reason.contains("check failed"), "{reason}");

    // 2. Restarted, it takes traffic again once `rise` (2) checks pass.
    handle.restart("origin-2");
    let took = world
        .wait_until("origin-2 takes traffic again", SETTLE, || async {
            matches!(world.http_get("/").await, Ok(r) if r.origin.as_deref() == Some("origin-2"))
        })
        .await
        .unwrap();
    println!("origin-2 took traffic again {took:?} after its restart");
    assert!(took <= INTERVAL * 2 + TIMEOUT, "{took:?}");

    // 3. Killed under traffic: no request fails even inside the window (a
    // refused connect is retried on origin-1 and counts toward the fall), and
    // after it every request goes to origin-1.
    handle.kill("origin-2");
    let killed = fabric::rt::now();
    while fabric::rt::now() - killed < window {
        let r = world.http_get("/").await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    only_origin_1(&world, 20).await;
    world
        .wait_until(
            "the controller records up, then down again",
            SETTLE,
            || async {
                origin_2_changes(&world)
                    .iter()
                    .map(|(up, _)| *up)
                    .collect::<Vec<_>>()
                    == [false, true, false]
            },
        )
        .await
        .unwrap();
    report(
        "a_killed_origin_is_taken_out_of_the_pool_and_no_request_fails",
        started,
    );
}

/// ring (TLS keys, handshakes) draws its randomness from the world's seeded
/// generator: the same seed makes the same CA, byte for byte, and another
/// seed another one (the `syscall` override in `fabric::rt`).
#[test]
fn tls_keys_follow_the_seed() {
    let ca = |seed: u64| {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(async {
            fabric::pki::CaMaterial::generate("determinism")
                .unwrap()
                .key_pem
        })
    };
    assert_eq!(ca(7), ca(7));
    assert_ne!(ca(7), ca(8));
}

/// Registration: a join token works once; a second SE with the same token,
/// an SE with a made-up token and an SE that pins another CA never get a
/// session, and the Controller records why.
#[madsim::test]
async fn a_join_token_registers_one_se_and_nothing_else_gets_in() {
    use fabric::pki::JoinTicket;
    use fabric::platform::{CloudConnector, SeSpec};
    let world = serving_world().await;
    let controller = world.controller().unwrap();
    let ticket = world
        .on_controller(0, |c| async move { c.create_join_token("se-8").await })
        .await
        .unwrap()
        .unwrap();
    let spec = |name: &str, join: JoinTicket| SeSpec {
        name: name.into(),
        group: "default".into(),
        controllers: vec![world.config.controller.listen],
        join: Some(join),
        ha: None,
    };
    let forged = JoinTicket {
        token: fabric::pki::new_secret(),
        ..ticket.clone()
    };
    let wrong_ca = JoinTicket {
        ca_sha256: "ab".repeat(32),
        ..ticket.clone()
    };
    world
        .cloud
        .create_se(spec("se-8", ticket.clone()))
        .await
        .unwrap();
    world
        .wait_until("se-8 registers and connects", SETTLE, || async {
            controller
                .ses()
                .iter()
                .any(|s| s.name == "se-8" && s.connected)
        })
        .await
        .unwrap();
    world.cloud.create_se(spec("se-9", ticket)).await.unwrap();
    world.cloud.create_se(spec("se-10", forged)).await.unwrap();
    world
        .cloud
        .create_se(spec("se-11", wrong_ca))
        .await
        .unwrap();
    fabric::rt::sleep(Duration::from_secs(10)).await;
    let names: Vec<String> = controller.ses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["se-1", "se-8"], "only registered SEs have sessions");
    let refused: Vec<(String, String)> = controller
        .events()
        .into_iter()
        .filter(|e| e.kind == "se_registration_refused")
        .map(|e| (e.object, e.reason))
        .collect();
    assert!(
        refused
            .iter()
            .any(|(se, why)| se == "se-9" && why.contains("already used")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|(se, why)| se == "se-10" && why.contains("unknown join token")),
        "{refused:?}"
    );
    // se-11 refuses the Controller itself (its CA does not match the pin):
    // it never even sends its token.
    assert!(!refused.iter().any(|(se, _)| se == "se-11"), "{refused:?}");
}

/// A self-signed certificate for `name`: (PEM, DER, key PEM).
fn certificate(name: &str) -> (String, Vec<u8>, String) {
    let c = fabric::pki::self_signed("app-cert", &[name]).unwrap();
    let der = fabric::pki::leaf_der(&c.cert_pem).unwrap();
    (c.cert_pem, der, c.key_pem)
}

/// TLS termination in the simulation: the slice's virtual service on 443
/// with a certificate, HTTP/2 and HTTP/1.1 by ALPN, and a certificate
/// pushed by the Controller that new handshakes get.
#[madsim::test]
async fn tls_termination_serves_h2_and_http1_and_reloads_its_certificate() {
    let started = fabric::rt::now();
    let (cert, der, key) = certificate("app.fabric.test");
    let config = sim::world::SLICE_CONFIG
        .replace("port = 80\n", "port = 443\n")
        .replace(
            "pool = \"web\"\n",
            "pool = \"web\"\ntls = { certificates = [\"app-cert\"] }\n",
        )
        + &format!(
            "\n[[certificates]]\nname = \"app-cert\"\ncert_pem = '''\n{cert}'''\nkey_pem = '''\n{key}'''\n"
        );
    let world = World::builder().config(&config).build().await.unwrap();
    world
        .wait_until("the TLS VIP serves", SETTLE, || async {
            matches!(world.https_get("app.fabric.test", "/", true).await, Ok(r) if r.reply.status == 200)
        })
        .await
        .unwrap();

    let mut origins = BTreeSet::new();
    for _ in 0..4 {
        let r = world.https_get("app.fabric.test", "/", true).await.unwrap();
        assert_eq!(r.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(r.cert_der, der);
        assert_eq!(r.reply.status, 200, "{r:?}");
        assert_eq!(r.reply.se.as_deref(), Some("se-1"));
        origins.insert(r.reply.origin.unwrap());
    }
    assert_eq!(origins.len(), 2, "round robin over HTTP/2: {origins:?}");
    let r = world
        .https_get("app.fabric.test", "/", false)
        .await
        .unwrap();
    assert_eq!(r.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.reply.status, 200);
    // Plain HTTP on the TLS port is not served.
    assert!(!matches!(world.http_get("/").await, Ok(r) if r.status == 200));

    // The Controller pushes a new certificate: new handshakes present it.
    let (cert2, der2, key2) = certificate("app.fabric.test");
    let controller = world.controller().unwrap();
    let mut changed = world.config.clone();
    changed.certificates[0].cert_pem = cert2;
    changed.certificates[0].key_pem = key2;
    controller.apply(changed).await.unwrap();
    world
        .wait_until("new handshakes get the new certificate", SETTLE, || async {
            matches!(world.https_get("app.fabric.test", "/", true).await, Ok(r) if r.cert_der == der2 && r.reply.status == 200)
        })
        .await
        .unwrap();
    report(
        "tls_termination_serves_h2_and_http1_and_reloads_its_certificate",
        started,
    );
}

/// The slice fabric plus a TCP and a UDP virtual service on the same VIP,
/// over the same origins (which answer UDP on their port too).
fn l4_config() -> String {
    format!(
        "{}{}",
        sim::world::SLICE_CONFIG,
        r#"
[[virtual_services]]
name = "app-tcp"
vip = "10.0.100.1"
port = 8080
pool = "web"
protocol = "tcp"

[[virtual_services]]
name = "app-udp"
vip = "10.0.100.1"
port = 5353
pool = "web"
protocol = "udp"
l4 = { idle_timeout_ms = 2000 }
"#
    )
}

/// The origin that answered a raw HTTP exchange relayed over L4.
fn origin_of(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-fabric-origin: ")
            .map(str::to_string)
    })
}

#[madsim::test]
async fn l4_tcp_and_udp_balance_over_the_origins_and_survive_a_killed_one() {
    let started = fabric::rt::now();
    let world = World::builder().config(&l4_config()).build().await.unwrap();
    world
        .wait_until("the VIP serves", SETTLE, || serving(&world))
        .await
        .unwrap();
    let tcp = world.vip_of("app-tcp").unwrap();
    let udp = world.vip_of("app-udp").unwrap();
    let request = b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n".to_vec();

    // TCP: each connection goes to the next origin, bytes through untouched
    // (no SE header: L4 does not look inside).
    let mut tcp_origins = Vec::new();
    for _ in 0..6 {
        let reply = world.tcp_exchange_to(tcp, request.clone()).await.unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
        assert!(!String::from_utf8_lossy(&reply).contains(se::SE_HEADER));
        tcp_origins.push(origin_of(&reply).unwrap());
    }
    let distinct: BTreeSet<&String> = tcp_origins.iter().collect();
    assert_eq!(distinct.len(), 2, "{tcp_origins:?}");

    // UDP: a flow (a client address) stays on one origin; new flows
    // spread over both.
    let mut udp_origins = BTreeSet::new();
    for flow in 0..4 {
        let datagrams = (0..3).map(|i| format!("flow {flow} datagram {i}").into_bytes());
        let answers = world
            .udp_exchange_to(40_000 + flow, udp, datagrams.collect())
            .await
            .unwrap();
        let names: BTreeSet<String> = answers
            .iter()
            .map(|(a, from)| {
                assert_eq!(from.port(), udp.port(), "answered from the VIP's port");
                let text = String::from_utf8_lossy(a).into_owned();
                let (name, rest) = text.split_once(": ").unwrap();
                assert!(rest.starts_with(&format!("flow {flow} datagram")), "{text}");
                name.to_string()
            })
            .collect();
        assert_eq!(names.len(), 1, "flow {flow} moved: {names:?}");
        udp_origins.extend(names);
    }
    assert_eq!(udp_origins.len(), 2, "{udp_origins:?}");

    // A killed origin: TCP connections skip it (refused, next server), and
    // every one still succeeds.
    madsim::runtime::Handle::current().kill("origin-2");
    for _ in 0..6 {
        let reply = world.tcp_exchange_to(tcp, request.clone()).await.unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 200"), "{reply:?}");
        assert_eq!(origin_of(&reply).as_deref(), Some("origin-1"));
    }
    report(
        "l4_tcp_and_udp_balance_over_the_origins_and_survive_a_killed_one",
        started,
    );
}

/// The chaos suite's packet loss (`fabric::rt::netem`): every UDP datagram
/// lost at rate 1, some at 0.5, none once healed; TCP (HTTP) untouched.
#[madsim::test]
async fn packet_loss_drops_datagrams_and_heals() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    world.set_udp_loss(1.0);
    assert!(world.dns("app.fabric.test.", RecordType::A).await.is_err());
    assert!(serving(&world).await, "TCP is not lost");
    world.set_udp_loss(0.5);
    let mut answered = 0;
    for _ in 0..40 {
        answered += u32::from(world.dns("app.fabric.test.", RecordType::A).await.is_ok());
    }
    // Query and answer both pass with probability 1/4.
    assert!((1..40).contains(&answered), "{answered} of 40 answered");
    world.set_udp_loss(0.0);
    for _ in 0..10 {
        world.dns("app.fabric.test.", RecordType::A).await.unwrap();
    }
    report("packet_loss_drops_datagrams_and_heals", started);
}

/// The chaos suite's slow disk (`Storage::sync_delay`): a config write on a
/// Controller whose syncs take 400 ms takes at least that; healed, it is
/// quick again.
#[madsim::test]
async fn a_slow_disk_slows_raft_writes_until_healed() {
    let started = fabric::rt::now();
    let world = serving_world().await;
    let controller = world.controller().unwrap();
    let write = |servers: usize| {
        let mut config = world.config.clone();
        config.pools[0].servers.truncate(servers);
        let controller = controller.clone();
        async move {
            let t = fabric::rt::now();
            controller.apply(config).await.unwrap();
            fabric::rt::now() - t
        }
    };
    world.slow_disk_at(0, Duration::from_millis(400));
    let slow = write(1).await;
    assert!(slow >= Duration::from_millis(400), "{slow:?}");
    world.slow_disk_at(0, Duration::ZERO);
    let fast = write(2).await;
    assert!(fast < Duration::from_millis(100), "{fast:?}");
    report("a_slow_disk_slows_raft_writes_until_healed", started);
}
