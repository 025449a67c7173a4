//! End to end on this host: `fabric up` as a user runs it (the real binary,
//! the SE as a child process fed by the Controller over the network), then
//! HTTP and DNS against it, then a clean stop. Also `fabric check` on bad
//! config. Ports are derived from the test's PID to avoid collisions.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

use common::{start_up, FABRIC};

fn dns_query(server: SocketAddr, name: &str) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut q = Message::query();
    q.metadata.id = 4242;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    socket.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 2048];
    let (len, _) = socket.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_http_and_dns_then_stops() {
    let base = common::base_port();
    let dir = std::env::temp_dir().join(format!("fabric-up-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fabric.toml");
    std::fs::write(&path, common::config(base, "")).unwrap();
    let (child, printed) = start_up(&path);
    let vip = common::vip(base);
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("curl -i http://{vip}/"))),
        "{printed:?}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("dig @127.0.0.1 -p {} app.fabric.test", base + 4))),
        "{printed:?}"
    );

    let mut origins = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let resp = se::proxy::get(vip, "app", "/").await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[se::SE_HEADER], "se-1");
        origins.insert(
            resp.headers()[se::origin::ORIGIN_HEADER]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        origins.len(),
        2,
        "round robin over both origins: {origins:?}"
    );

    let dns = SocketAddr::new("127.0.0.1".parse().unwrap(), base + 4);
    let answer = dns_query(dns, "app.fabric.test.");
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let addrs: Vec<IpAddr> = answer
        .answers
        .iter()
        .filter_map(|r| {
            if let RData::A(a) = &r.data {
                Some(IpAddr::V4(a.0))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(addrs, vec![vip.ip()]);
    assert_eq!(
        dns_query(dns, "nope.fabric.test.").metadata.response_code,
        ResponseCode::NXDomain
    );

    // The REST API with the admin token `up` printed; `fabric ctl backup` through it.
    let api: SocketAddr = printed
        .iter()
        .find_map(|l| l.strip_prefix("REST API on http://"))
        .and_then(|l| l.split_whitespace().next())
        .expect("up prints the API address")
        .parse()
        .unwrap();
    assert_eq!(api.port(), base + 7);
    let token = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("export FABRIC_TOKEN="))
        .expect("up prints an admin token")
        .to_string();
    let backup = dir.join("backup.json");
    let out = Command::new(FABRIC)
        .args(["ctl", "--api", &api.to_string(), "backup"])
        .arg(&backup)
        .env("FABRIC_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&backup).unwrap();
    assert!(
        text.contains("fabric-backup/1") && text.contains("\"app\""),
        "{text}"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup holds the CA key: owner only");
    }
    let out = Command::new(FABRIC)
        .args([
            "ctl",
            "--api",
            &api.to_string(),
            "--token",
            "wrong",
            "backup",
        ])
        .arg(dir.join("nope.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // `fabric ctl drain`: an unknown SE is refused; se-1 drains and comes back.
    let ctl = |args: &[&str]| {
        Command::new(FABRIC)
            .args(["ctl", "--api", &api.to_string()])
            .args(args)
            .env("FABRIC_TOKEN", &token)
            .output()
            .unwrap()
    };
    let out = ctl(&["drain", "nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );
    for args in [&["drain", "se-1"][..], &["drain", "se-1", "--stop"][..]] {
        let out = ctl(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("\"se\":\"se-1\""),
            "{out:?}"
        );
    }
    assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 200);

    // Malformed HTTP gets a 400 and the connection closes; the SE keeps serving.
    {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(vip).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(b"GARBAGE \x00\x01 nonsense\r\n\r\n").unwrap();
        let mut reply = Vec::new();
        let _ = raw.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        let mut huge = std::net::TcpStream::connect(vip).unwrap();
        huge.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "GET / HTTP/1.1\r\nHost: app\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let _ = huge.write_all(head.as_bytes());
        let mut reply = Vec::new();
        let _ = huge.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        assert_eq!(se::proxy::get(vip, "app", "/").await.unwrap().status(), 200);
    }

    // A clean stop takes the child SE down too: the VIP stops answering.
    common::stop(child);
    let stopped = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&vip, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < stopped,
            "the SE child still serves after `fabric up` stopped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_names_the_field_and_applies_nothing() {
    let dir = std::env::temp_dir().join(format!("fabric-check-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "port = 8080",
            "port = 0",
            "virtual_services[0].port: port 0 is not a usable port",
        ),
        (
            "pool = \"web\"",
            "pool = \"web\"\ncolour = 1",
            "unknown field `colour`",
        ),
        ("port = 8080", "port = \"http\"", "virtual_services[0].port"),
    ];
    for (i, (from, to, expect)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, fabric::model::EXAMPLE_CONFIG.replacen(from, to, 1)).unwrap();
        for cmd in ["check", "up"] {
            let mut args = vec![cmd.to_string()];
            if cmd == "up" {
                args.push("--config".into());
            }
            args.push(path.display().to_string());
            let out = Command::new(FABRIC).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{cmd} {expect}: {stderr}");
            assert!(
                stderr.contains(expect),
                "{cmd}: expected {expect:?} in {stderr}"
            );
            assert!(stderr.contains("nothing applied"), "{stderr}");
        }
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, fabric::model::EXAMPLE_CONFIG).unwrap();
    let out = Command::new(FABRIC)
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::remove_dir_all(&dir).unwrap();
}
