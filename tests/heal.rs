//! Auto-healing on this host, end to end: `fabric up` with an auto-healing
//! SE group (one virtual service, no buffer), the SE child process killed
//! with SIGKILL, and the Controller starting a new SE process through the
//! local cloud connector, which then serves the VIP. Ports are derived from
//! the test's PID (each test binary runs alone, so tests/up.rs's formula
//! does not collide with ours).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{serving_se, start_up, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_se_process_is_replaced_and_the_vip_serves_again() {
    let base = common::base_port();
    let dir = std::env::temp_dir().join(format!("fabric-heal-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fabric.toml");
    std::fs::write(
        &path,
        common::config(base, "auto_heal = true\nbuffer_ses = 0\n"),
    )
    .unwrap();
    let (child, _) = start_up(&path);
    let vip = common::vip(base);
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

    stop(child);
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
