//! Auto-healing on this host, end to end: `fabric up` with an auto-healing
//! SE group (one virtual service, no buffer), the SE child process killed
//! with SIGKILL, and the Controller starting a new SE process through the
//! local cloud connector, which then serves the VIP. Ports are derived from
//! the test's PID (each test binary runs alone, so tests/up.rs's formula
//! does not collide with ours).

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
    text.replace(group, &format!("{group}auto_heal = true\nbuffer_ses = 0\n"))
}

/// The SE answering `vip`, if one does.
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
async fn a_killed_se_process_is_replaced_and_the_vip_serves_again() {
    let base = 10_000 + (std::process::id() % 1100) as u16 * 9;
    let dir = std::env::temp_dir().join(format!("fabric-heal-test-{}", std::process::id()));
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
    assert_eq!(serving_se(vip).await.as_deref(), Some("se-1"));

    // The SE child of this `up`: its data directory names the parent.
    let marker = format!("fabric-up-{}/se-1", child.id());
    let pgrep = Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pgrep.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no SE process matching {marker}"))
        .to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    let killed = Instant::now();

    // Detection (3 heartbeats of 1 s), a new process registering, placement.
    let healed = loop {
        if let Some(se) = serving_se(vip).await {
            if se != "se-1" {
                break se;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no SE serves the VIP 30 s after se-1 was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "healed by {healed} after {} ms",
        killed.elapsed().as_millis()
    );
    assert_eq!(healed, "default-auto-1");
    for _ in 0..4 {
        assert_eq!(serving_se(vip).await.as_deref(), Some("default-auto-1"));
    }

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    let stopped = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < stopped,
            "an SE still serves after `fabric up` stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
