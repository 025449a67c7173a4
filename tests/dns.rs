//! End to end on this host: `fabric dns` as an operator runs it, with two
//! origins as GSLB members in two sites probed by the DNS server itself.
//! Topology answers by EDNS Client Subnet, a member taken down moves its
//! clients to the other site with the short TTL, `fabric ctl dns explain`
//! says why, and SIGHUP reloads the config (a bad one changes nothing, a
//! good one bumps the serial). A second site's server follows the first:
//! its config, its probe reports as a source, and answers on its own when
//! the first is gone. Ports 20500-20999, from the test's PID.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};

const FABRIC: &str = env!("CARGO_BIN_EXE_fabric");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(base: u16, ttl: &str) -> String {
    format!(
        r#"
[controller]
listen = "127.0.0.1:{controller}"

[[health_monitors]]
name = "http"
type = "http"
interval_ms = 200
timeout_ms = 150
rise = 2
fall = 2
http = {{ path = "/", expected_status = [200] }}

[dns]
listen = "127.0.0.1:{dns}"
api_listen = "127.0.0.1:{api}"

[[dns.zones]]
name = "gslb.test"

[[gslb_sites]]
name = "east"
client_subnets = ["10.0.0.0/8"]
fallback = ["west"]

[[gslb_sites]]
name = "west"
client_subnets = ["192.168.0.0/16"]
fallback = ["east"]

[[gslb_services]]
fqdn = "www.gslb.test"
policy = "topology"
ttl_secs = {ttl}
members = [
  {{ address = "127.0.0.1", port = {east}, site = "east" }},
  {{ address = "127.0.0.2", port = {west}, site = "west" }},
]
health = {{ monitor = "http", settle_secs = 1 }}
"#,
        controller = base,
        dns = base + 1,
        api = base + 2,
        east = base + 3,
        west = base + 4,
    )
}

/// (addresses, TTL) of `www.gslb.test A` for a client in `ecs`.
fn ask(server: SocketAddr, ecs: &str) -> (Vec<IpAddr>, u32) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut q = Message::query();
    q.metadata.id = 77;
    q.add_query(Query::query(
        Name::from_ascii("www.gslb.test.").unwrap(),
        RecordType::A,
    ));
    let (addr, len) = ecs.split_once('/').unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            addr.parse().unwrap(),
            len.parse().unwrap(),
            0,
        )));
    q.set_edns(edns);
    socket.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    let addrs = r
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    (addrs, r.answers.first().map_or(0, |r| r.ttl))
}

fn soa_serial(server: SocketAddr) -> u32 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut q = Message::query();
    q.add_query(Query::query(
        Name::from_ascii("gslb.test.").unwrap(),
        RecordType::SOA,
    ));
    socket.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    match &r.answers[0].data {
        RData::SOA(soa) => soa.serial,
        other => panic!("not a SOA: {other:?}"),
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `fabric ctl --dns-api API dns ARGS...`.
fn ctl_dns(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(FABRIC)
        .args(["ctl", "--dns-api", api, "dns"])
        .args(args)
        .output()
        .unwrap()
}

fn origin(name: &str, listen: SocketAddr) -> Proc {
    Proc(
        Command::new(FABRIC)
            .args(["origin", "--name", name, "--listen", &listen.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn dns_answers_follow_health_explain_says_why_and_sighup_reloads() {
    let base = 20_500 + (std::process::id() % 70) as u16 * 7;
    let dir = std::env::temp_dir().join(format!("fabric-dns-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gslb.toml");
    std::fs::write(&path, config(base, "30")).unwrap();
    let east_addr = SocketAddr::new("127.0.0.1".parse().unwrap(), base + 3);
    let west_addr = SocketAddr::new("127.0.0.2".parse().unwrap(), base + 4);
    let _east = origin("east", east_addr);
    let west = origin("west", west_addr);

    let mut dns = Command::new(FABRIC)
        .args(["dns", "--site", "east", "--config"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dns.stdout.take().unwrap();
    let dns = Proc(dns);
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("DNS on"))
        .expect("fabric dns reports where it listens");
    let server = SocketAddr::new("127.0.0.1".parse().unwrap(), base + 1);
    assert!(ready.contains(&server.to_string()), "{ready}");

    let east = IpAddr::from([127, 0, 0, 1]);
    let westip = IpAddr::from([127, 0, 0, 2]);
    // (A member whose origin was not listening yet at the first probe is
    // down, then back and settling for a second: wait for both to settle.)
    wait_for("both members up and stable TTL", || {
        ask(server, "192.168.1.0/24") == (vec![westip], 30)
            && ask(server, "10.2.0.0/16") == (vec![east], 30)
    });

    // West goes away: after fall (2 x 200 ms) its clients get east, TTL 5.
    let down_at = Instant::now();
    drop(west);
    wait_for("west's clients moved to east", || {
        ask(server, "192.168.1.0/24").0 == vec![east]
    });
    let detected = down_at.elapsed();
    assert!(detected < Duration::from_secs(3), "took {detected:?}");
    assert_eq!(
        ask(server, "192.168.1.0/24").1,
        5,
        "short TTL while a member is down"
    );

    let api = format!("127.0.0.1:{}", base + 2);
    let out = ctl_dns(
        &api,
        &[
            "explain",
            "www.gslb.test",
            "--client",
            "192.168.4.4",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(x["answers"][0], "www.gslb.test. 5 IN A 127.0.0.1", "{x:#}");
    let g = &x["gslb"];
    assert_eq!(g["client_site"]["site"], "west");
    assert!(
        g["decisions"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("fallback"),
        "{g:#}"
    );
    let west_member = &g["members"][1];
    assert_eq!(west_member["health"], "down");
    assert_eq!(west_member["sources"][0]["source"], "dns:east");
    // Human-readable form too.
    let out = ctl_dns(
        &api,
        &["explain", "www.gslb.test", "--ecs", "192.168.0.0/16"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in site west by 192.168.0.0/16"), "{text}");
    // Bad input to the API: 400 with the reason, nothing crashes.
    let out = ctl_dns(&api, &["explain", "www.gslb.test", "--ecs", "10.0.0.0/99"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ecs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGHUP: a broken file changes nothing; a good one bumps the serial.
    let serial = soa_serial(server);
    let hup = || {
        let pid = dns.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    std::fs::write(&path, config(base, "\"x\"")).unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(soa_serial(server), serial, "a bad config applies nothing");
    std::fs::write(&path, config(base, "40")).unwrap();
    hup();
    wait_for("the serial bumped", || soa_serial(server) > serial);

    // A second site's server follows this one (the leader site): it serves
    // the leader's config (TTL 40, not its own file's 17) and counts the
    // leader's probe reports as a source beside its own.
    let west_cfg = config(base, "17")
        .replace(
            &format!("127.0.0.1:{}", base + 1),
            &format!("127.0.0.1:{}", base + 5),
        )
        .replace(
            &format!("127.0.0.1:{}", base + 2),
            &format!("127.0.0.1:{}", base + 6),
        );
    let west_path = dir.join("west.toml");
    let _west_back = origin("west", west_addr);
    std::fs::write(&west_path, west_cfg).unwrap();
    let west_dns = Proc(
        Command::new(FABRIC)
            .args(["dns", "--site", "west", "--follow", &api, "--config"])
            .arg(&west_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let west_server = SocketAddr::new("127.0.0.1".parse().unwrap(), base + 5);
    let west_api = format!("127.0.0.1:{}", base + 6);
    wait_for("the west site serves the leader's config", || {
        std::net::TcpStream::connect(west_server).is_ok()
            && ask(west_server, "10.2.0.0/16") == (vec![east], 40)
    });
    let sources = |api: &str| {
        let out = ctl_dns(api, &["health"]);
        let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names: Vec<String> = h[0]["members"][0]["sources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["source"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    wait_for("west counts east's reports and its own", || {
        sources(&west_api) == ["dns:east", "dns:west"]
    });
    // The leader site goes away: west keeps answering on its own.
    drop(dns);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ask(west_server, "192.168.1.0/24").0, vec![westip]);
    assert_eq!(ask(west_server, "10.2.0.0/16").0, vec![east]);
    drop(west_dns);
    let _ = std::fs::remove_dir_all(&dir);
}
