//! Disaster recovery end to end, with the real binaries on loopback: a
//! Controller and a registered SE serve a virtual service; `fabric ctl
//! backup` saves the desired state; the Controller is lost with its disk; a
//! fresh Controller bootstrapped from an empty config is given the backup
//! with `fabric ctl restore`, and the same SE, restarted with only the
//! credentials it registered with, serves the same virtual service again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FABRIC: &str = env!("CARGO_BIN_EXE_fabric");

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    let child = Command::new(FABRIC)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(FABRIC).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "fabric {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serves(vip: SocketAddr) -> bool {
    matches!(se::proxy::get(vip, "app", "/").await, Ok(r) if r.status() == 200)
}

fn controller(config: &Path, data: &Path, base: u16) -> Proc {
    let addr = |off: u16| format!("127.0.0.1:{}", base + off);
    spawn(&[
        "controller",
        "--config",
        config.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--listen",
        &addr(5),
        "--raft",
        &addr(6),
        "--api",
        &addr(7),
    ])
}

async fn admin_token(data: &Path) -> String {
    let file = data.join("admin.token");
    wait_for("the bootstrap admin token", || async { file.exists() }).await;
    std::fs::read_to_string(&file).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_into_a_fresh_controller_serves_the_same_virtual_service() {
    // Below the ephemeral port range (32768-60999), where a connection's
    // local port could take ours; tests/up.rs uses 10000-20499.
    let base = 21_000 + (std::process::id() % 1100) as u16 * 10;
    let dir: PathBuf = std::env::temp_dir().join(format!("fabric-restore-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let vip = SocketAddr::new("127.0.0.11".parse().unwrap(), base + 3);
    let full = fabric::model::EXAMPLE_CONFIG
        .replace("127.0.0.1:7470", &format!("127.0.0.1:{}", base + 5))
        .replace("127.0.0.1:8481", &format!("127.0.0.1:{}", base + 1))
        .replace("127.0.0.1:8482", &format!("127.0.0.1:{}", base + 2))
        .replace("127.0.0.10", "127.0.0.11")
        .replace("port = 8080", &format!("port = {}", base + 3))
        .replace("127.0.0.1:8053", &format!("127.0.0.1:{}", base + 4));
    std::fs::write(dir.join("full.toml"), full).unwrap();
    let empty = format!("[controller]\nlisten = \"127.0.0.1:{}\"\n", base + 5);
    std::fs::write(dir.join("empty.toml"), empty).unwrap();
    let raft = format!("127.0.0.1:{}", base + 6);
    let api = format!("127.0.0.1:{}", base + 7);
    let se_controller = format!("127.0.0.1:{}", base + 5);
    let _origins: Vec<Proc> = (1..=2)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", base + i);
            spawn(&[
                "origin",
                "--name",
                &format!("origin-{i}"),
                "--listen",
                &listen,
            ])
        })
        .collect();

    // A Controller with the full config; an SE registers with a join token.
    let first = controller(&dir.join("full.toml"), &dir.join("a"), base);
    let token = admin_token(&dir.join("a")).await;
    let out = run(&["ctl", "--controller", &raft, "se-token", "--label", "se-1"]);
    let flags = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    assert_eq!(flags[0], "--join-token", "{flags:?}");
    let se_data = dir.join("se-1");
    let se_args = |join: &[&str]| {
        let mut a = vec![
            "se",
            "--name",
            "se-1",
            "--controller",
            &se_controller,
            "--data",
        ];
        a.push(se_data.to_str().unwrap());
        a.extend_from_slice(join);
        a.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let args = se_args(&flags);
    let se = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for("the SE serves the VIP", || serves(vip)).await;

    // Back up; lose the Controller (and its disk) and the SE.
    let backup = dir.join("backup.json");
    run(&[
        "ctl",
        "--api",
        &api,
        "--token",
        &token,
        "backup",
        backup.to_str().unwrap(),
    ]);
    drop(first);
    drop(se);
    std::fs::remove_dir_all(dir.join("a")).unwrap();
    assert!(!serves(vip).await);

    // A fresh Controller knows nothing of the service or the SE: the SE,
    // restarted with only the credentials it registered with (its join token
    // is spent), cannot get a session and serves nothing.
    let _second = controller(&dir.join("empty.toml"), &dir.join("b"), base);
    let token = admin_token(&dir.join("b")).await;
    let args = se_args(&[]);
    let _se = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!serves(vip).await, "an SE of another cluster got a config");

    // After the restore the cluster has the old CA and knows the SE's
    // certificate: the SE is trusted back and serves the same service.
    let out = run(&[
        "ctl",
        "--api",
        &api,
        "--token",
        &token,
        "restore",
        backup.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"restored\":true"));
    wait_for("the restored cluster's SE serves the VIP", || serves(vip)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
