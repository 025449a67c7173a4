//! Scale-out on this host, end to end: `fabric up` with an active/active,
//! auto-healing SE group. `up` starts one SE; the virtual service wants two,
//! so the Controller creates a second SE process through the local cloud
//! connector and makes it the secondary. The primary holds the VIP (a
//! loopback address) and hands a share of new connections to the
//! secondary's relay listener with a PROXY line; both SEs answer, and a
//! TLS-free HTTP client sees the second one's name in the SE header.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FABRIC: &str = env!("CARGO_BIN_EXE_fabric");

fn config(base: u16) -> String {
    let text = fabric::model::EXAMPLE_CONFIG
        .replace("127.0.0.1:7470", &format!("127.0.0.1:{}", base + 5))
        .replace("127.0.0.1:8481", &format!("127.0.0.1:{}", base + 1))
        .replace("127.0.0.1:8482", &format!("127.0.0.1:{}", base + 2))
        .replace("port = 8080", &format!("port = {}", base + 3))
        .replace("127.0.0.1:8053", &format!("127.0.0.1:{}", base + 4))
        .replace("127.0.0.1:8054", &format!("127.0.0.1:{}", base + 8));
    let group = "[[se_groups]]\nname = \"default\"\n";
    assert!(text.contains(group), "the example's SE group moved");
    text.replace(
        group,
        &format!("{group}ha_mode = \"elastic_active_active\"\nauto_heal = true\n"),
    )
}

/// The SE answering one new connection to `vip`, if one does.
async fn serving_se(vip: SocketAddr) -> Option<String> {
    let resp = tokio::time::timeout(Duration::from_secs(2), se::proxy::get(vip, "app", "/"))
        .await
        .ok()?
        .ok()?;
    (resp.status() == 200)
        .then(|| {
            resp.headers()
                .get(se::SE_HEADER)?
                .to_str()
                .ok()
                .map(str::to_string)
        })
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_hands_connections_to_a_secondary_process() {
    let base = 10_000 + (std::process::id() % 1100) as u16 * 9;
    let dir = std::env::temp_dir().join(format!("fabric-scaleout-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fabric.toml");
    std::fs::write(&path, config(base)).unwrap();
    let mut child = Command::new(FABRIC)
        .args(["up", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("Ctrl-C") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("fabric up did not report ready in 30 s");
            }
        }
    }
    let vip = SocketAddr::new("127.0.0.10".parse().unwrap(), base + 3);

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

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
}
