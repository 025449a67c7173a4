//! Test configs and a hickory-based client side: queries are built and
//! responses parsed by hickory-proto, an implementation independent of the
//! engine's own wire code.
#![allow(dead_code)] // each test binary uses a different part

use std::net::IpAddr;

use fabric::model::{Config, DnsConfig, GslbService, VirtualService, ZoneConfig};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// The example config plus: an IPv6 member of `app`, a name two labels
/// below the apex (so `b.fabric.test` is an empty non-terminal), and `big`
/// (100 IPv4 VIPs) and `mid` (50) for size limits.
pub fn config() -> Config {
    let mut config = Config::example();
    add_vs(&mut config, "app6", "fd00::10".parse().unwrap());
    config.gslb_services[0].members.push("app6".into());
    add_vs(&mut config, "deep", "127.0.0.20".parse().unwrap());
    add_service(&mut config, "a.b.fabric.test", &["deep"], 60);
    let big: Vec<String> = (0..100).map(|i| format!("big-{i}")).collect();
    for (i, name) in big.iter().enumerate() {
        add_vs(
            &mut config,
            name,
            IpAddr::from([10, 0, (i / 200) as u8, (i % 200 + 1) as u8]),
        );
    }
    let names: Vec<&str> = big.iter().map(String::as_str).collect();
    add_service(&mut config, "big.fabric.test", &names, 30);
    add_service(&mut config, "mid.fabric.test", &names[..50], 30);
    config.validate().expect("test config is valid");
    config
}

pub fn add_vs(config: &mut Config, name: &str, vip: IpAddr) {
    let template = config.virtual_services[0].clone();
    config.virtual_services.push(VirtualService {
        name: name.into(),
        vip,
        ..template
    });
}

pub fn add_service(config: &mut Config, fqdn: &str, members: &[&str], ttl_secs: u32) {
    let members = members.iter().map(|&m| m.into()).collect();
    config
        .gslb_services
        .push(GslbService::new(fqdn, members, ttl_secs));
}

/// A query with ID 0xBEEF and RD set.
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut message = Message::new(0xBEEF, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    message
}

/// `query` with an OPT record.
pub fn query_edns(name: &str, rtype: RecordType, payload: u16, dnssec_ok: bool) -> Message {
    let mut message = query(name, rtype);
    let mut edns = Edns::new();
    edns.set_max_payload(payload).set_dnssec_ok(dnssec_ok);
    message.set_edns(edns);
    message
}

pub fn bytes(message: &Message) -> Vec<u8> {
    message.to_vec().expect("hickory encodes the test query")
}

pub fn parse(response: &[u8]) -> Message {
    Message::from_vec(response)
        .unwrap_or_else(|e| panic!("response does not parse: {e:?}\n{response:02x?}"))
}

/// The static zone that knot serves in the conformance test.
pub const STATIC_ZONE: &str = include_str!("../data/conformance.zone");

/// A config serving only `example.com` from [`STATIC_ZONE`].
pub fn static_config() -> Config {
    let mut config = Config::example();
    config.gslb_services.clear();
    config.dns = Some(DnsConfig {
        listen: "127.0.0.1:53".parse().unwrap(),
        zones: vec![ZoneConfig {
            name: "example.com".into(),
            ttl_secs: 300,
            records: Vec::new(),
            zone_text: Some(STATIC_ZONE.into()),
            zone_file: None,
        }],
        api_listen: None,
        udp_workers: 1,
    });
    config.validate().expect("the static zone is valid");
    config
}
