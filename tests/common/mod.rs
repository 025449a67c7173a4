//! What the end-to-end tests that run `fabric up` share: the example config
//! on ports derived from the test's PID, starting `up` and reading what it
//! prints until it is ready, asking the VIP which SE answers.
#![allow(dead_code)] // Each test binary uses its own part of it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const FABRIC: &str = env!("CARGO_BIN_EXE_fabric");

/// The first of the 9 ports this test process uses (base..=base+8): below
/// the ephemeral range, where a connection's local port could take ours
/// (tests/restore.rs uses 21000-31999). Each test binary runs alone, so
/// binaries may share the formula.
pub fn base_port() -> u16 {
    10_000 + (std::process::id() % 1100) as u16 * 9
}

/// The embedded example config on ports from `base`: the Controller's SE,
/// Raft and API ports base+5..=base+7, the VIP's base+3, the DNS base+4 and
/// its API base+8; `group` (TOML lines) added to its SE group.
pub fn config(base: u16, group: &str) -> String {
    let text = fabric::model::EXAMPLE_CONFIG
        .replace("127.0.0.1:7470", &format!("127.0.0.1:{}", base + 5))
        .replace("127.0.0.1:8481", &format!("127.0.0.1:{}", base + 1))
        .replace("127.0.0.1:8482", &format!("127.0.0.1:{}", base + 2))
        .replace("port = 8080", &format!("port = {}", base + 3))
        .replace("127.0.0.1:8053", &format!("127.0.0.1:{}", base + 4))
        .replace("127.0.0.1:8054", &format!("127.0.0.1:{}", base + 8));
    let head = "[[se_groups]]\nname = \"default\"\n";
    assert!(text.contains(head), "the example's SE group moved");
    text.replace(head, &format!("{head}{group}"))
}

/// The VIP of the example on ports from `base`.
pub fn vip(base: u16) -> SocketAddr {
    SocketAddr::new("127.0.0.10".parse().unwrap(), base + 3)
}

/// `fabric up --config path`, once it printed that it is ready (30 s at
/// most), and the lines it printed.
pub fn start_up(path: &Path) -> (Child, Vec<String>) {
    let mut child = Command::new(FABRIC)
        .args(["up", "--config"])
        .arg(path)
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
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !printed.iter().any(|l: &String| l.starts_with("Ctrl-C")) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => printed.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("fabric up did not report ready in 30 s; printed {printed:?}");
            }
        }
    }
    (child, printed)
}

/// Stop `up` with SIGTERM as Ctrl-C would; it must exit cleanly.
pub fn stop(mut child: Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The SE answering one new connection to `vip`, if one does (2 s).
pub async fn serving_se(vip: SocketAddr) -> Option<String> {
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
