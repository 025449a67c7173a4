//! Scale-out on this host, end to end: `fabric up` with an active/active,
//! auto-healing SE group. `up` starts one SE; the virtual service wants two,
//! so the Controller creates a second SE process through the local cloud
//! connector and makes it the secondary. The primary holds the VIP (a
//! loopback address) and hands a share of new connections to the
//! secondary's relay listener with a PROXY line; both SEs answer, and a
//! TLS-free HTTP client sees the second one's name in the SE header. A UDP
//! virtual service on the same VIP scales out too: flows relayed to the
//! secondary's relay port behind PROXY v2 headers, answered through the
//! primary; the Controller's stats show flows open on both SEs.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{serving_se, start_up, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_hands_connections_to_a_secondary_process() {
    let base = common::base_port();
    let dir = std::env::temp_dir().join(format!("fabric-scaleout-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fabric.toml");
    let group = "ha_mode = \"elastic_active_active\"\nauto_heal = true\n";
    let echo = UdpEcho::start();
    let udp = format!(
        "\n[[pools]]\nname = \"udp-echo\"\nservers = [\"{}\"]\n\n[[virtual_services]]\nname = \"udp-app\"\nse_group = \"default\"\nvip = \"127.0.0.10\"\nport = {base}\npool = \"udp-echo\"\nprotocol = \"udp\"\n",
        echo.addr
    );
    std::fs::write(&path, common::config(base, group) + &udp).unwrap();
    let (child, printed) = start_up(&path);
    let vip = common::vip(base);

    // Until the second SE is up and placed, the first serves everything;
    // then new connections (each from a port of its own) spread over both.
    let start = Instant::now();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    while counts.len() < 2 || counts.values().sum::<usize>() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no second SE answered within 30 s: {counts:?}"
        );
        match serving_se(vip).await {
            Some(se) => *counts.entry(se).or_default() += 1,
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Now count a clean round.
    let mut round: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..60 {
        let se = serving_se(vip).await.expect("every request answered");
        *round.entry(se).or_default() += 1;
    }
    println!("scale-out on this host: {round:?}");
    assert_eq!(
        round.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default-auto-1", "se-1"],
        "{round:?}"
    );
    for (se, n) in &round {
        assert!(*n >= 10, "{se} answered only {n} of 60: {round:?}");
    }

    // Data-path beats between the two SE processes (UDP on their relay
    // ports): the Controller hears from each that the other is heard.
    let api = printed
        .iter()
        .find_map(|l| l.strip_prefix("REST API on http://"))
        .and_then(|l| l.split_whitespace().next())
        .expect("up prints the API address")
        .to_string();
    let token = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export FABRIC_TOKEN="))
        .expect("up prints an admin token")
        .to_string();
    let start = Instant::now();
    loop {
        let ses = get_json(&api, "/api/v1/ses", &token).await;
        let heard: Vec<&str> = ses["items"]
            .as_array()
            .expect("a list of SEs")
            .iter()
            .filter(|s| {
                s["peers_heard_ms_ago"]
                    .as_u64()
                    .is_some_and(|ms| ms < 1_500)
            })
            .filter_map(|s| s["name"].as_str())
            .collect();
        if heard.len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the SEs do not hear each other's beats: {ses}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // UDP: 40 flows, each from a socket of its own, all answered; then
    // both SEs report flows of udp-app open (the secondary's came relayed).
    let udp_vip = std::net::SocketAddr::new(vip.ip(), base);
    for i in 0..40 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 256];
        let mut answered = None;
        for _ in 0..3 {
            socket
                .send_to(format!("flow {i}").as_bytes(), udp_vip)
                .await
                .unwrap();
            if let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf)).await
            {
                answered = Some((buf[..n].to_vec(), from));
                break;
            }
        }
        let (answer, from) = answered.unwrap_or_else(|| panic!("UDP flow {i} not answered"));
        assert_eq!(answer, format!("flow {i}").into_bytes());
        assert_eq!(from, udp_vip, "answered from the VIP");
    }
    let start = Instant::now();
    loop {
        let ses = get_json(&api, "/api/v1/ses", &token).await;
        let carrying: Vec<&str> = ses["items"]
            .as_array()
            .expect("a list of SEs")
            .iter()
            .filter(|s| {
                s["stats"]["virtual_services"]
                    .as_array()
                    .is_some_and(|vss| {
                        vss.iter().any(|v| {
                            v["name"] == "udp-app" && v["open_connections"].as_u64() > Some(0)
                        })
                    })
            })
            .filter_map(|s| s["name"].as_str())
            .collect();
        if carrying.len() == 2 {
            println!("UDP flows open on {carrying:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "UDP flows are not on both SEs: {ses}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    stop(child);
    drop(echo);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A UDP echo server on loopback, for as long as it lives (a thread that
/// checks every 100 ms whether it should stop).
struct UdpEcho {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UdpEcho {
    fn start() -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        Self { addr, stop }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `GET path` on the REST API at `api` with `token`: the JSON body.
async fn get_json(api: &str, path: &str, token: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the API answers within 5 s")
        .unwrap();
    let text = String::from_utf8(reply).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
