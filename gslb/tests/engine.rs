//! The answer engine against hickory-proto as the client: one test per
//! behaviour an authoritative server must get right.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{bytes, config, parse, query, query_edns};
use fabric::model::Config;
use gslb::{Engine, Transport};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

const SERIAL: u32 = 7;

fn engine() -> Engine {
    Engine::from_config(&config(), SERIAL)
}

fn ask(engine: &Engine, message: &Message, transport: Transport) -> Message {
    let response = engine
        .answer(&bytes(message), transport)
        .expect("a query gets a response");
    if transport == Transport::Udp {
        assert!(
            response.len() <= 1232,
            "UDP response of {} bytes",
            response.len()
        );
    }
    parse(&response)
}

fn ask_udp(message: &Message) -> Message {
    ask(&engine(), message, Transport::Udp)
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn v4s(records: &[Record]) -> Vec<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

fn v6s(records: &[Record]) -> Vec<Ipv6Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(AAAA(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

/// Header invariants of every answer to `query(..)`: ID, QR, opcode, RD.
fn assert_echoes_header(response: &Message) {
    assert_eq!(response.metadata.id, 0xBEEF);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert_eq!(response.metadata.op_code, OpCode::Query);
    assert!(
        response.metadata.recursion_desired,
        "RD is copied from the query"
    );
    assert!(
        !response.metadata.recursion_available,
        "an authoritative-only server offers no recursion"
    );
}

/// A negative answer (NXDOMAIN or NODATA): AA, no answers, the zone's SOA
/// in the authority section with the negative TTL.
fn assert_negative(response: &Message, rcode: ResponseCode) {
    assert_echoes_header(response);
    assert_eq!(response.metadata.response_code, rcode);
    assert!(response.metadata.authoritative);
    assert!(response.answers.is_empty(), "{response}");
    assert_eq!(response.authorities.len(), 1, "{response}");
    let soa = &response.authorities[0];
    assert_eq!(soa.name, name("fabric.test."));
    let RData::SOA(data) = &soa.data else {
        panic!("authority is not a SOA: {soa}")
    };
    assert_eq!(soa.ttl, 300.min(data.minimum));
    assert_eq!(data.serial, SERIAL);
}

#[test]
fn gslb_name_answers_a_with_the_member_vip() {
    let response = ask_udp(&query("app.fabric.test.", RecordType::A));
    assert_echoes_header(&response);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert!(!response.metadata.truncation);
    assert_eq!(
        response.queries,
        vec![Query::query(name("app.fabric.test."), RecordType::A)]
    );
    assert_eq!(response.answers.len(), 1);
    let answer = &response.answers[0];
    assert_eq!(answer.name, name("app.fabric.test."));
    assert_eq!(answer.dns_class, DNSClass::IN);
    assert_eq!(answer.ttl, 30);
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 10)]);
    assert!(
        response.authorities.is_empty(),
        "minimal responses: no authority on answers"
    );
    assert!(response.additionals.is_empty());
    assert!(
        response.edns.is_none(),
        "no OPT in the response to a query without one"
    );
}

#[test]
fn the_plain_example_config_answers() {
    let engine = Engine::from_config(&Config::example(), SERIAL);
    let response = ask(
        &engine,
        &query("app.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 10)]);
    let response = ask(
        &engine,
        &query("app.fabric.test.", RecordType::AAAA),
        Transport::Udp,
    );
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn names_match_case_insensitively_and_the_question_keeps_its_case() {
    let response = ask_udp(&query("ApP.FaBrIc.TeSt.", RecordType::A));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(response.queries.len(), 1);
    assert_eq!(
        response.queries[0].name.to_ascii(),
        "ApP.FaBrIc.TeSt.",
        "question echoed byte for byte"
    );
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 10)]);
    assert!(response.answers[0].name.eq_case(&name("ApP.FaBrIc.TeSt.")));
}

#[test]
fn ipv6_vips_answer_aaaa() {
    let response = ask_udp(&query("app.fabric.test.", RecordType::AAAA));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        v6s(&response.answers),
        vec!["fd00::10".parse::<Ipv6Addr>().unwrap()]
    );
    assert_eq!(response.answers[0].ttl, 30);
}

#[test]
fn existing_name_without_the_type_is_nodata_with_soa() {
    // `mid` has only IPv4 members.
    let response = ask_udp(&query("mid.fabric.test.", RecordType::AAAA));
    assert_negative(&response, ResponseCode::NoError);
    let response = ask_udp(&query("app.fabric.test.", RecordType::MX));
    assert_negative(&response, ResponseCode::NoError);
    // SOA and NS exist only at the apex.
    let response = ask_udp(&query("app.fabric.test.", RecordType::SOA));
    assert_negative(&response, ResponseCode::NoError);
    let response = ask_udp(&query("app.fabric.test.", RecordType::NS));
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn nonexistent_name_is_nxdomain_with_soa() {
    let response = ask_udp(&query("nope.fabric.test.", RecordType::A));
    assert_negative(&response, ResponseCode::NXDomain);
    let response = ask_udp(&query("x.app.fabric.test.", RecordType::A));
    assert_negative(&response, ResponseCode::NXDomain);
}

#[test]
fn empty_non_terminal_is_nodata_and_below_it_nxdomain() {
    let response = ask_udp(&query("a.b.fabric.test.", RecordType::A));
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 20)]);
    assert_eq!(response.answers[0].ttl, 60);
    let response = ask_udp(&query("b.fabric.test.", RecordType::A));
    assert_negative(&response, ResponseCode::NoError);
    let response = ask_udp(&query("x.b.fabric.test.", RecordType::A));
    assert_negative(&response, ResponseCode::NXDomain);
}

#[test]
fn names_outside_every_zone_are_refused_without_aa() {
    for outside in [
        "app.example.com.",
        "test.",
        "fabric.test.example.",
        "xfabric.test.",
        ".",
    ] {
        let response = ask_udp(&query(outside, RecordType::A));
        assert_echoes_header(&response);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{outside}"
        );
        assert!(!response.metadata.authoritative, "{outside}");
        assert_eq!(response.queries.len(), 1, "question echoed for {outside}");
        assert!(response.answers.is_empty() && response.authorities.is_empty());
    }
}

#[test]
fn other_classes_and_zone_transfers_are_refused() {
    let mut chaos = query("app.fabric.test.", RecordType::TXT);
    chaos.queries[0].query_class = DNSClass::CH;
    let response = ask_udp(&chaos);
    assert_eq!(response.metadata.response_code, ResponseCode::Refused);
    for transfer in [RecordType::AXFR, RecordType::IXFR] {
        let response = ask(&engine(), &query("fabric.test.", transfer), Transport::Tcp);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::Refused,
            "{transfer}"
        );
        assert!(response.answers.is_empty());
    }
}

#[test]
fn apex_has_soa_and_ns_with_glue() {
    let response = ask_udp(&query("fabric.test.", RecordType::SOA));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert_eq!(response.answers.len(), 1);
    let soa = &response.answers[0];
    assert_eq!(soa.name, name("fabric.test."));
    assert_eq!(soa.ttl, 300);
    let RData::SOA(data) = &soa.data else {
        panic!("not a SOA: {soa}")
    };
    assert_eq!(data.mname, name("ns1.fabric.test."));
    assert_eq!(data.rname, name("hostmaster.fabric.test."));
    assert_eq!(
        (
            data.serial,
            data.refresh,
            data.retry,
            data.expire,
            data.minimum
        ),
        (SERIAL, 3600, 600, 86400, 300)
    );
    assert!(response.authorities.is_empty());

    let response = ask_udp(&query("Fabric.Test.", RecordType::NS));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(response.answers.len(), 1);
    assert_eq!(
        response.answers[0].data,
        RData::NS(NS(name("ns1.fabric.test.")))
    );
    assert_eq!(response.answers[0].ttl, 300);
    assert_eq!(response.additionals.len(), 1, "glue for ns1: {response}");
    let glue = &response.additionals[0];
    assert_eq!(glue.name, name("ns1.fabric.test."));
    assert_eq!(
        glue.data,
        RData::A(A(Ipv4Addr::LOCALHOST)),
        "the dns.listen IP"
    );

    let response = ask_udp(&query("ns1.fabric.test.", RecordType::A));
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::LOCALHOST]);
    // The apex has no address records of its own.
    let response = ask_udp(&query("fabric.test.", RecordType::A));
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn the_serial_is_the_one_given() {
    let engine = Engine::from_config(&config(), 4_000_000_000);
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::SOA),
        Transport::Udp,
    );
    let RData::SOA(data) = &response.answers[0].data else {
        panic!("not a SOA")
    };
    assert_eq!(data.serial, 4_000_000_000);
}

#[test]
fn unspecified_listen_address_means_no_glue_and_no_ns1() {
    let mut config = config();
    config.dns.as_mut().unwrap().listen = "0.0.0.0:8053".parse().unwrap();
    let engine = Engine::from_config(&config, SERIAL);
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::NS),
        Transport::Udp,
    );
    assert_eq!(response.answers.len(), 1);
    assert!(response.additionals.is_empty(), "{response}");
    let response = ask(
        &engine,
        &query("ns1.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn ipv6_listen_address_is_aaaa_glue() {
    let mut config = config();
    config.dns.as_mut().unwrap().listen = "[::1]:8053".parse().unwrap();
    let engine = Engine::from_config(&config, SERIAL);
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::NS),
        Transport::Udp,
    );
    assert_eq!(v6s(&response.additionals), vec![Ipv6Addr::LOCALHOST]);
    assert!(v4s(&response.additionals).is_empty());
}

#[test]
fn a_gslb_service_named_ns1_is_the_glue() {
    let mut config = config();
    common::add_service(&mut config, "ns1.fabric.test", &["app"], 45);
    config
        .gslb_services
        .last_mut()
        .unwrap()
        .members
        .push("app6".into());
    config.validate().unwrap();
    let engine = Engine::from_config(&config, SERIAL);
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::NS),
        Transport::Udp,
    );
    assert_eq!(
        v4s(&response.additionals),
        vec![Ipv4Addr::new(127, 0, 0, 10)]
    );
    assert_eq!(
        v6s(&response.additionals),
        vec!["fd00::10".parse::<Ipv6Addr>().unwrap()]
    );
    for glue in &response.additionals {
        assert_eq!(glue.name, name("ns1.fabric.test."));
        assert_eq!(glue.ttl, 45);
    }
}

#[test]
fn any_answers_every_rrset_at_the_name() {
    let response = ask_udp(&query("fabric.test.", RecordType::ANY));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    let types: Vec<RecordType> = response.answers.iter().map(Record::record_type).collect();
    assert_eq!(types, vec![RecordType::SOA, RecordType::NS]);
    assert_eq!(response.additionals.len(), 1, "glue after NS");

    let response = ask_udp(&query("app.fabric.test.", RecordType::ANY));
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 10)]);
    assert_eq!(
        v6s(&response.answers),
        vec!["fd00::10".parse::<Ipv6Addr>().unwrap()]
    );
    assert_eq!(response.answers.len(), 2);

    let response = ask_udp(&query("b.fabric.test.", RecordType::ANY));
    assert_negative(&response, ResponseCode::NoError);
}

#[test]
fn nested_zones_answer_from_the_closest() {
    let mut config = config();
    let dns = config.dns.as_mut().unwrap();
    let mut child = dns.zones[0].clone();
    child.name = "b.fabric.test".into();
    child.ttl_secs = 77;
    dns.zones.push(child);
    config.validate().unwrap();
    let engine = Engine::from_config(&config, SERIAL);
    let response = ask(
        &engine,
        &query("a.b.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 20)]);
    let response = ask(
        &engine,
        &query("b.fabric.test.", RecordType::SOA),
        Transport::Udp,
    );
    assert_eq!(response.answers.len(), 1);
    assert_eq!(response.answers[0].ttl, 77);
    let response = ask(
        &engine,
        &query("x.b.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(response.authorities[0].name, name("b.fabric.test."));
}

#[test]
fn duplicate_member_vips_are_one_record() {
    let mut config = config();
    common::add_vs(
        &mut config,
        "app-8081",
        "127.0.0.10".parse::<IpAddr>().unwrap(),
    );
    config.virtual_services.last_mut().unwrap().port = 8081;
    config.gslb_services[0].members.push("app-8081".into());
    config.validate().unwrap();
    let engine = Engine::from_config(&config, SERIAL);
    let response = ask(
        &engine,
        &query("app.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 10)]);
}

#[test]
fn no_dns_config_refuses_everything() {
    let mut config = Config::example();
    config.dns = None;
    config.gslb_services.clear();
    let engine = Engine::from_config(&config, SERIAL);
    let response = ask(
        &engine,
        &query("app.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(response.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn malformed_queries_get_formerr_echoing_the_id() {
    let engine = engine();
    let short = engine
        .answer(&[0xAB, 0xCD], Transport::Udp)
        .expect("an ID is enough for a FORMERR");
    let response = parse(&short);
    assert_eq!(response.metadata.id, 0xABCD);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);

    // A whole header with RD but a question cut short: opcode and RD echoed.
    let mut cut = bytes(&query("app.fabric.test.", RecordType::A));
    cut.truncate(20);
    let response = parse(&engine.answer(&cut, Transport::Udp).unwrap());
    assert_eq!(response.metadata.id, 0xBEEF);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    assert!(response.metadata.recursion_desired);
    assert!(response.queries.is_empty());

    // Trailing bytes after the last record.
    let mut trailing = bytes(&query("app.fabric.test.", RecordType::A));
    trailing.push(0);
    let response = parse(&engine.answer(&trailing, Transport::Udp).unwrap());
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);

    // A compression pointer in the question: there is nothing to point at.
    let mut pointer = bytes(&query("app.fabric.test.", RecordType::A));
    pointer.splice(12..29, [0xC0, 0x0C]);
    let response = parse(&engine.answer(&pointer, Transport::Udp).unwrap());
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn qdcount_other_than_one_is_formerr() {
    let mut two = query("app.fabric.test.", RecordType::A);
    two.add_query(Query::query(name("mid.fabric.test."), RecordType::A));
    let response = ask_udp(&two);
    assert_echoes_header(&response);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    assert!(response.answers.is_empty());

    let mut none = query("app.fabric.test.", RecordType::A);
    none.queries.clear();
    let response = ask_udp(&none);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn two_opt_records_are_formerr() {
    let mut raw = bytes(&query_edns("app.fabric.test.", RecordType::A, 1232, false));
    let opt = raw[raw.len() - 11..].to_vec();
    raw.extend_from_slice(&opt);
    raw[11] = 2; // ARCOUNT
    let response = parse(&engine().answer(&raw, Transport::Udp).unwrap());
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    for op_code in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut message = query("app.fabric.test.", RecordType::SOA);
        message.metadata.op_code = op_code;
        let response = ask_udp(&message);
        assert_eq!(response.metadata.id, 0xBEEF);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::NotImp,
            "{op_code:?}"
        );
        assert_eq!(response.metadata.op_code, op_code, "opcode echoed");
        assert!(response.answers.is_empty());
    }
}

#[test]
fn responses_and_fragments_get_nothing() {
    let engine = engine();
    let mut response = query("app.fabric.test.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(engine.answer(&bytes(&response), Transport::Udp), None);
    assert_eq!(engine.answer(&bytes(&response), Transport::Tcp), None);
    assert_eq!(engine.answer(&[], Transport::Udp), None);
    assert_eq!(engine.answer(&[0xAB], Transport::Tcp), None);
}

#[test]
fn edns_is_echoed_with_our_payload_size_and_the_do_bit() {
    for dnssec_ok in [false, true] {
        let response = ask_udp(&query_edns(
            "app.fabric.test.",
            RecordType::A,
            4096,
            dnssec_ok,
        ));
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(v4s(&response.answers), vec![Ipv4Addr::new(127, 0, 0, 10)]);
        let edns = response.edns.as_ref().expect("OPT answered with OPT");
        assert_eq!(edns.max_payload(), 1232);
        assert_eq!(edns.version(), 0);
        assert_eq!(edns.flags().dnssec_ok, dnssec_ok);
        assert!(
            response.additionals.is_empty(),
            "the OPT is the only additional record"
        );
    }
    // Negative answers and REFUSED carry the OPT too.
    let response = ask_udp(&query_edns("nope.fabric.test.", RecordType::A, 1232, true));
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert!(response.edns.is_some());
    let response = ask_udp(&query_edns("example.com.", RecordType::A, 1232, false));
    assert_eq!(response.metadata.response_code, ResponseCode::Refused);
    assert!(response.edns.is_some());
}

#[test]
fn unknown_edns_version_is_badvers() {
    let mut message = query_edns("app.fabric.test.", RecordType::A, 1232, true);
    message.edns.as_mut().unwrap().set_version(1);
    let response = ask_udp(&message);
    // Code 16 is both BADVERS and BADSIG; hickory decodes it as the latter.
    assert_eq!(u16::from(response.metadata.response_code), 16, "BADVERS");
    assert!(response.answers.is_empty());
    let edns = response.edns.as_ref().expect("BADVERS travels in the OPT");
    assert_eq!(edns.version(), 0, "we answer with the version we speak");
    assert_eq!(edns.rcode_high(), 1);
}

#[test]
fn large_answers_truncate_on_udp_and_fit_on_tcp() {
    let engine = engine();
    let big = query("big.fabric.test.", RecordType::A);

    let raw = engine.answer(&bytes(&big), Transport::Udp).unwrap();
    assert!(raw.len() <= 512, "{} bytes without EDNS", raw.len());
    let response = parse(&raw);
    assert!(
        response.metadata.truncation,
        "TC tells the client to retry over TCP"
    );
    assert!(response.metadata.authoritative);
    assert_eq!(response.queries.len(), 1, "question kept");
    assert!(
        response.answers.is_empty()
            && response.authorities.is_empty()
            && response.additionals.is_empty()
    );

    let response = ask(&engine, &big, Transport::Tcp);
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 100);

    // 100 A records exceed even 1232 bytes: truncated, with the OPT kept.
    let raw = engine.answer(
        &bytes(&query_edns("big.fabric.test.", RecordType::A, 4096, true)),
        Transport::Udp,
    );
    let raw = raw.unwrap();
    assert!(raw.len() <= 1232);
    let response = parse(&raw);
    assert!(response.metadata.truncation);
    assert!(response.answers.is_empty());
    assert!(response.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
}

#[test]
fn edns_raises_the_udp_limit_to_the_smaller_of_both_sizes() {
    let engine = engine();
    // 50 A records: about 850 bytes.
    let plain = ask(
        &engine,
        &query("mid.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert!(plain.metadata.truncation);
    let edns = ask(
        &engine,
        &query_edns("mid.fabric.test.", RecordType::A, 1232, false),
        Transport::Udp,
    );
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 50);
    let small = ask(
        &engine,
        &query_edns("mid.fabric.test.", RecordType::A, 800, false),
        Transport::Udp,
    );
    assert!(small.metadata.truncation, "the client's 800 bytes bind us");
    // A client size below 512 counts as 512 (RFC 6891 6.2.5).
    let mut tiny = bytes(&query_edns("app.fabric.test.", RecordType::A, 1232, false));
    let class_at = tiny.len() - 11 + 3;
    tiny[class_at..class_at + 2].copy_from_slice(&100u16.to_be_bytes());
    let response = parse(&engine.answer(&tiny, Transport::Udp).unwrap());
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 1);
}

#[test]
fn checking_disabled_is_copied() {
    let mut message = query("app.fabric.test.", RecordType::A);
    message.metadata.checking_disabled = true;
    let response = ask_udp(&message);
    assert!(response.metadata.checking_disabled);
    assert!(!response.metadata.authentic_data);
}
