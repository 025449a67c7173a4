//! The answer engine's own cost per query, without sockets or the kernel:
//! the two queries `benches/dns.sh` sends (`www.example.com A` from the
//! static zone, `wtd.example.com A` with EDNS Client Subnet from a weighted
//! GSLB service), each answered `N` times into one reused buffer.
//!
//! `cargo run --release -p benches --bin dns-engine -- [N]` prints ns per
//! query; under `valgrind --tool=callgrind` the instruction counts compare two
//! builds whatever else the host is doing.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use gslb::engine::{Engine, Transport};

const CONFIG: &str = r#"
[controller]
listen = "127.0.0.1:7470"

[dns]
listen = "127.0.0.1:5353"

[[dns.zones]]
name = "example.com"
zone_text = """
$ORIGIN example.com.
$TTL 300
@    IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300
@    IN NS  ns1.example.com.
ns1  IN A   127.0.0.1
www  IN A   192.0.2.10
www  IN AAAA 2001:db8::10
"""

[[gslb_services]]
fqdn = "wtd.example.com"
policy = "weighted"
ttl_secs = 30
members = [
  { address = "192.0.2.21", weight = 10 },
  { address = "192.0.2.22", weight = 5 },
  { address = "192.0.2.23", weight = 1 },
]
"#;

/// A query as dnsperf sends it: RD, EDNS with a 4096-byte payload, and
/// `ecs` (an ECS option's data) when given.
fn query(name: &str, ecs: Option<&[u8]>) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root, type A, class IN
    let options: Vec<u8> = match ecs {
        Some(data) => [&[0, 8][..], &(data.len() as u16).to_be_bytes(), data].concat(),
        None => Vec::new(),
    };
    q.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0]);
    q.extend_from_slice(&(options.len() as u16).to_be_bytes());
    q.extend_from_slice(&options);
    q
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let config = match fabric::model::Config::parse(CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dns-engine: the embedded config does not parse: {e}");
            std::process::exit(1);
        }
    };
    let engine = Engine::from_config(&config, 1);
    let from = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let mut out = Vec::with_capacity(1232);
    for (label, mut q) in [
        ("static www A", query("www.example.com", None)),
        (
            "weighted wtd A + ECS",
            query("wtd.example.com", Some(&[0, 1, 24, 0, 192, 0, 2])),
        ),
    ] {
        assert!(engine.answer_into(&q, from, Transport::Udp, &mut out));
        assert_eq!(out[3] & 0x0F, 0, "{label}: rcode {}", out[3] & 0x0F);
        let bytes = out.len();
        let started = Instant::now();
        for i in 0..n {
            q[..2].copy_from_slice(&(i as u16).to_be_bytes());
            engine.answer_into(std::hint::black_box(&q), from, Transport::Udp, &mut out);
            std::hint::black_box(&out);
        }
        let ns = started.elapsed().as_nanos() as f64 / n as f64;
        println!("{label}: {ns:.0} ns per query ({n} queries, {bytes}-byte answer)");
    }
}
