//! GSLB policies, health-driven TTL, all-down answers and ECS, through the
//! engine's wire answers (queries built and responses read by hickory).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{bytes, parse, query};
use fabric::model::Config;
use gslb::health::{Hysteresis, Tracker};
use gslb::{Engine, Transport};
use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{RData, RecordType};

const CONFIG: &str = r#"
[controller]
listen = "127.0.0.1:7470"

[dns]
listen = "127.0.0.1:8053"

[[dns.zones]]
name = "gslb.test"

[[gslb_sites]]
name = "east"
client_subnets = ["10.0.0.0/8"]
fallback = ["west"]

[[gslb_sites]]
name = "west"
client_subnets = ["192.168.0.0/16"]

[[gslb_sites]]
name = "lab"
client_subnets = ["10.1.0.0/16"]

[[gslb_services]]
fqdn = "rr.gslb.test"
members = [{ address = "192.0.2.1" }, { address = "192.0.2.2" }, { address = "192.0.2.3" }]
ttl_secs = 30

[[gslb_services]]
fqdn = "wtd.gslb.test"
policy = "weighted"
members = [
  { address = "192.0.2.21", weight = 10 },
  { address = "192.0.2.22", weight = 5 },
  { address = "192.0.2.23", weight = 1 },
]

[[gslb_services]]
fqdn = "prio.gslb.test"
policy = "priority"
members = [
  { address = "192.0.2.31", priority = 1 },
  { address = "192.0.2.32", priority = 0 },
  { address = "192.0.2.33", priority = 0 },
]

[[gslb_services]]
fqdn = "topo.gslb.test"
policy = "topology"
members = [
  { address = "192.0.2.41", site = "east" },
  { address = "192.0.2.42", site = "west" },
  { address = "192.0.2.43", site = "lab" },
]

[[gslb_services]]
fqdn = "hash.gslb.test"
policy = "consistent_hash"
members = [
  { address = "192.0.2.51" }, { address = "192.0.2.52" },
  { address = "192.0.2.53" }, { address = "192.0.2.54" },
]

[[gslb_services]]
fqdn = "fb.gslb.test"
members = [{ address = "192.0.2.61" }]
when_all_down = "fallback"
fallback_addresses = ["198.51.100.1", "2001:db8::1"]

[[gslb_services]]
fqdn = "sf.gslb.test"
members = [{ address = "192.0.2.71" }]
when_all_down = "servfail"

[[gslb_services]]
fqdn = "nd.gslb.test"
members = [{ address = "192.0.2.81" }]
when_all_down = "nodata"

[[gslb_services]]
fqdn = "lkg.gslb.test"
members = [{ address = "192.0.2.91" }, { address = "192.0.2.92" }]
"#;

fn config() -> Config {
    Config::parse(CONFIG).expect("the test config is valid")
}

const SOURCE: &str = "dns:test";

/// An engine over [`CONFIG`] with the members `down` (service fqdn,
/// address) reported down and every other member up, as of `at` seconds.
fn engine_with(down: &[(&str, &str)], at: u64) -> Engine {
    let engine = Engine::from_config(&config(), 1);
    let mut tracker = Tracker::default();
    tracker.reconfigure(engine.services());
    for s in engine.services().iter().flatten() {
        for m in &s.members {
            let is_down = down.iter().any(|(f, a)| *f == s.fqdn && *a == m.label);
            tracker.report(&s.fqdn, &m.label, SOURCE, !is_down, Duration::from_secs(at));
        }
    }
    engine.with_health(tracker.snapshot(Duration::from_secs(at)))
}

fn ask_from(engine: &Engine, message: &Message, from: IpAddr) -> Message {
    let mut out = Vec::new();
    assert!(engine.answer_into(&bytes(message), from, Transport::Udp, &mut out));
    parse(&out)
}

fn addresses(response: &Message) -> Vec<String> {
    response
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.to_string(),
            RData::AAAA(a) => a.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

fn ttls(response: &Message) -> Vec<u32> {
    response.answers.iter().map(|r| r.ttl).collect()
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

fn a(name: &str) -> Message {
    query(name, RecordType::A)
}

fn with_ecs(mut message: Message, net: &str) -> Message {
    let (addr, len) = net.split_once('/').unwrap();
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            addr.parse().unwrap(),
            len.parse().unwrap(),
            0,
        )));
    message.set_edns(edns);
    message
}

fn ecs_scope(response: &Message) -> Option<u8> {
    match response.edns.as_ref()?.option(EdnsCode::Subnet) {
        Some(EdnsOption::Subnet(s)) => Some(s.scope_prefix()),
        _ => None,
    }
}

#[test]
fn round_robin_rotates_over_healthy_members_and_skips_a_down_one() {
    let engine = engine_with(&[], 0);
    let firsts: Vec<String> = (0..3)
        .map(|_| addresses(&ask_from(&engine, &a("rr.gslb.test."), CLIENT))[0].clone())
        .collect();
    assert_eq!(firsts, ["192.0.2.1", "192.0.2.2", "192.0.2.3"]);
    let all = addresses(&ask_from(&engine, &a("rr.gslb.test."), CLIENT));
    assert_eq!(all.len(), 3, "round robin answers every healthy member");

    let engine = engine_with(&[("rr.gslb.test", "192.0.2.2")], 0);
    for _ in 0..6 {
        let r = ask_from(&engine, &a("rr.gslb.test."), CLIENT);
        assert!(!addresses(&r).contains(&"192.0.2.2".to_string()));
        assert_eq!(addresses(&r).len(), 2);
    }
}

#[test]
fn weighted_answers_one_member_in_proportion_to_weights() {
    let engine = engine_with(&[], 0);
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..16_000 {
        let r = ask_from(&engine, &a("wtd.gslb.test."), CLIENT);
        let got = addresses(&r);
        assert_eq!(got.len(), 1);
        *counts.entry(got[0].clone()).or_default() += 1;
    }
    // Expected 10000 / 5000 / 1000; allow 5%.
    for (addr, expected) in [
        ("192.0.2.21", 10_000.0),
        ("192.0.2.22", 5_000.0),
        ("192.0.2.23", 1_000.0),
    ] {
        let got = counts[addr] as f64;
        assert!(
            (got - expected).abs() < expected * 0.05,
            "{addr}: {got} vs {expected} ({counts:?})"
        );
    }

    let engine = engine_with(&[("wtd.gslb.test", "192.0.2.21")], 0);
    for _ in 0..500 {
        let got = addresses(&ask_from(&engine, &a("wtd.gslb.test."), CLIENT));
        assert_ne!(got[0], "192.0.2.21");
    }
}

#[test]
fn priority_answers_the_lowest_priority_with_a_healthy_member() {
    let engine = engine_with(&[], 0);
    let r = ask_from(&engine, &a("prio.gslb.test."), CLIENT);
    let mut got = addresses(&r);
    got.sort();
    assert_eq!(got, ["192.0.2.32", "192.0.2.33"]);

    let engine = engine_with(
        &[
            ("prio.gslb.test", "192.0.2.32"),
            ("prio.gslb.test", "192.0.2.33"),
        ],
        0,
    );
    let r = ask_from(&engine, &a("prio.gslb.test."), CLIENT);
    assert_eq!(addresses(&r), ["192.0.2.31"]);
}

#[test]
fn topology_follows_the_client_network_then_the_fallback_site() {
    let engine = engine_with(&[], 0);
    let east = "10.9.0.1".parse().unwrap();
    let west = "192.168.1.1".parse().unwrap();
    let lab = "10.1.2.3".parse().unwrap();
    assert_eq!(
        addresses(&ask_from(&engine, &a("topo.gslb.test."), east)),
        ["192.0.2.41"]
    );
    assert_eq!(
        addresses(&ask_from(&engine, &a("topo.gslb.test."), west)),
        ["192.0.2.42"]
    );
    assert_eq!(
        addresses(&ask_from(&engine, &a("topo.gslb.test."), lab)),
        ["192.0.2.43"],
        "the longest client network wins"
    );
    // No site's network: any healthy member.
    assert_eq!(
        addresses(&ask_from(&engine, &a("topo.gslb.test."), CLIENT)).len(),
        3
    );

    let engine = engine_with(&[("topo.gslb.test", "192.0.2.41")], 0);
    assert_eq!(
        addresses(&ask_from(&engine, &a("topo.gslb.test."), east)),
        ["192.0.2.42"],
        "east is down: its fallback west answers"
    );
}

#[test]
fn topology_uses_the_client_subnet_and_returns_a_safe_scope() {
    let engine = engine_with(&[], 0);
    // The resolver is elsewhere; ECS says the client is in east.
    let r = ask_from(
        &engine,
        &with_ecs(a("topo.gslb.test."), "10.9.0.0/24"),
        CLIENT,
    );
    assert_eq!(addresses(&r), ["192.0.2.41"]);
    // 10.0.0.0/8 holds the lab's 10.1.0.0/16, so /8 is not a safe scope;
    // 10.9.0.0/16 holds no other network.
    assert_eq!(ecs_scope(&r), Some(16));

    let r = ask_from(
        &engine,
        &with_ecs(a("topo.gslb.test."), "192.168.7.0/24"),
        CLIENT,
    );
    assert_eq!(addresses(&r), ["192.0.2.42"]);
    assert_eq!(
        ecs_scope(&r),
        Some(16),
        "west's /16 holds nothing more specific"
    );

    let r = ask_from(
        &engine,
        &with_ecs(a("topo.gslb.test."), "10.1.0.0/16"),
        CLIENT,
    );
    assert_eq!(addresses(&r), ["192.0.2.43"]);
    assert_eq!(ecs_scope(&r), Some(16));

    // Policies that ignore the client answer scope 0.
    let r = ask_from(
        &engine,
        &with_ecs(a("rr.gslb.test."), "10.9.0.0/24"),
        CLIENT,
    );
    assert_eq!(ecs_scope(&r), Some(0));
    // Source prefix 0: the client opted out; no site matches.
    let r = ask_from(
        &engine,
        &with_ecs(a("topo.gslb.test."), "0.0.0.0/0"),
        "10.9.9.9".parse().unwrap(),
    );
    assert_eq!(
        addresses(&r).len(),
        3,
        "the source address is not used when ECS says /0"
    );
}

#[test]
fn consistent_hash_keeps_clients_and_moves_only_a_down_members_share() {
    let engine = engine_with(&[], 0);
    let client = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8) + 7));
    let before: Vec<String> = (0..1000)
        .map(|i| addresses(&ask_from(&engine, &a("hash.gslb.test."), client(i)))[0].clone())
        .collect();
    // Same /24, another host: same member.
    let again = addresses(&ask_from(
        &engine,
        &a("hash.gslb.test."),
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (5 << 8) + 200)),
    ));
    assert_eq!(again[0], before[5]);
    let mut share: BTreeMap<&str, u32> = BTreeMap::new();
    for b in &before {
        *share.entry(b).or_default() += 1;
    }
    assert_eq!(share.len(), 4);
    for n in share.values() {
        assert!((150..=350).contains(n), "uneven spread {share:?}");
    }
    let engine = engine_with(&[("hash.gslb.test", "192.0.2.52")], 0);
    let mut moved = 0;
    for (i, b) in before.iter().enumerate() {
        let now = addresses(&ask_from(&engine, &a("hash.gslb.test."), client(i as u32)))[0].clone();
        if b != "192.0.2.52" {
            assert_eq!(&now, b, "client {i} moved though its member is up");
        } else {
            assert_ne!(now, "192.0.2.52");
            moved += 1;
        }
    }
    assert_eq!(moved, share["192.0.2.52"]);
}

#[test]
fn ttl_is_short_while_a_member_is_down_or_settling() {
    let engine = engine_with(&[], 0);
    assert_eq!(
        ttls(&ask_from(&engine, &a("rr.gslb.test."), CLIENT)),
        [30, 30, 30]
    );
    let engine = engine_with(&[("rr.gslb.test", "192.0.2.3")], 0);
    assert_eq!(
        ttls(&ask_from(&engine, &a("rr.gslb.test."), CLIENT)),
        [5, 5]
    );

    // Down at 0 s, back at 10 s: settling (60 s) until 70 s.
    let base = Engine::from_config(&config(), 1);
    let mut tracker = Tracker::default();
    tracker.reconfigure(base.services());
    let t = Duration::from_secs;
    tracker.report("rr.gslb.test", "192.0.2.3", SOURCE, false, t(0));
    tracker.report("rr.gslb.test", "192.0.2.3", SOURCE, true, t(10));
    let at = |secs| base.with_health(tracker.snapshot(t(secs)));
    assert_eq!(
        ttls(&ask_from(&at(69), &a("rr.gslb.test."), CLIENT)),
        [5, 5, 5]
    );
    assert_eq!(
        ttls(&ask_from(&at(71), &a("rr.gslb.test."), CLIENT)),
        [30, 30, 30]
    );
}

#[test]
fn every_member_down_gets_the_configured_answer() {
    let down = [
        ("fb.gslb.test", "192.0.2.61"),
        ("sf.gslb.test", "192.0.2.71"),
        ("nd.gslb.test", "192.0.2.81"),
    ];
    let engine = engine_with(&down, 0);
    let r = ask_from(&engine, &a("fb.gslb.test."), CLIENT);
    assert_eq!(addresses(&r), ["198.51.100.1"]);
    assert_eq!(ttls(&r), [5]);
    let r = ask_from(&engine, &query("fb.gslb.test.", RecordType::AAAA), CLIENT);
    assert_eq!(addresses(&r), ["2001:db8::1"]);

    let r = ask_from(&engine, &a("sf.gslb.test."), CLIENT);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty());

    let r = ask_from(&engine, &a("nd.gslb.test."), CLIENT);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities.len(), 1, "NODATA carries the SOA");
}

#[test]
fn last_known_good_answers_the_members_healthy_last() {
    let base = Engine::from_config(&config(), 1);
    let mut tracker = Tracker::default();
    tracker.reconfigure(base.services());
    let t = Duration::from_secs;
    tracker.report("lkg.gslb.test", "192.0.2.91", SOURCE, false, t(0));
    tracker.report("lkg.gslb.test", "192.0.2.92", SOURCE, true, t(0));
    tracker.report("lkg.gslb.test", "192.0.2.92", SOURCE, false, t(5));
    let engine = base.with_health(tracker.snapshot(t(5)));
    let r = ask_from(&engine, &a("lkg.gslb.test."), CLIENT);
    assert_eq!(addresses(&r), ["192.0.2.92"], "92 was the last one up");
    assert_eq!(ttls(&r), [5]);
}

#[test]
fn quorum_staleness_and_hysteresis() {
    let base = Engine::from_config(&config(), 1);
    let mut tracker = Tracker::default();
    tracker.reconfigure(base.services());
    let t = Duration::from_secs;
    let (f, m) = ("rr.gslb.test", "192.0.2.1");
    let state = |tracker: &Tracker, secs| tracker.snapshot(t(secs))[0].of(0).state;
    use gslb::policy::State;
    assert_eq!(state(&tracker, 0), State::Unknown);
    tracker.report(f, m, "dns:a", true, t(0));
    tracker.report(f, m, "dns:b", false, t(0));
    // 1 of 2 up: a majority of 2 is 2.
    assert_eq!(state(&tracker, 0), State::Down);
    tracker.report(f, m, "dns:c", true, t(1));
    assert_eq!(state(&tracker, 1), State::Up, "2 of 3 up");
    // b and c go stale (60 s); a keeps reporting up.
    tracker.report(f, m, "dns:b", false, t(30));
    tracker.report(f, m, "dns:a", true, t(70));
    assert_eq!(
        state(&tracker, 70),
        State::Down,
        "a up, b down, c stale: 1 of 2 is no majority"
    );
    let _ = tracker.evaluate(t(95));
    // At 95 only a (70) is recent: a sees it up.
    assert_eq!(state(&tracker, 95), State::Up);
    // Nobody recent: the verdict stays.
    let _ = tracker.evaluate(t(500));
    assert_eq!(state(&tracker, 500), State::Up);

    let mut h = Hysteresis::new(2, 3);
    assert!(h.observe(true));
    assert!(h.observe(false) && h.observe(false), "fall = 3");
    assert!(!h.observe(false));
    assert!(!h.observe(true), "rise = 2");
    assert!(h.observe(true));
}

#[test]
fn bad_client_subnets_are_formerr() {
    let engine = engine_with(&[], 0);
    let raw = |option: &[u8]| {
        let mut message = a("rr.gslb.test.");
        message.set_edns(Edns::new());
        let mut b = bytes(&message);
        // Replace the OPT RDATA (empty) with `option` and fix RDLENGTH.
        let len = b.len();
        b[len - 2..].copy_from_slice(&(option.len() as u16).to_be_bytes());
        b.extend_from_slice(option);
        b
    };
    let cases: [(&str, &[u8]); 5] = [
        ("family 3", &[0, 8, 0, 4, 0, 3, 0, 0]),
        ("prefix 33", &[0, 8, 0, 9, 0, 1, 33, 0, 10, 0, 0, 0, 0]),
        ("address too long for /8", &[0, 8, 0, 6, 0, 1, 8, 0, 10, 0]),
        ("bits past the prefix", &[0, 8, 0, 5, 0, 1, 7, 0, 11]),
        ("scope set in a query", &[0, 8, 0, 5, 0, 1, 8, 8, 10]),
    ];
    for (what, option) in cases {
        let mut out = Vec::new();
        assert!(engine.answer_into(&raw(option), CLIENT, Transport::Udp, &mut out));
        assert_eq!(out[3] & 0x0F, 1, "{what}: FORMERR");
    }
    // A good one for contrast.
    let mut out = Vec::new();
    assert!(engine.answer_into(
        &raw(&[0, 8, 0, 5, 0, 1, 8, 0, 10]),
        CLIENT,
        Transport::Udp,
        &mut out
    ));
    assert_eq!(out[3] & 0x0F, 0);
}
