//! Static records (config `records` and zone text) through the engine, with
//! hickory-proto parsing every answer.

mod common;

use std::net::{Ipv4Addr, Ipv6Addr};

use common::{bytes, config, parse, query, query_edns, static_config};
use fabric::model::{Config, StaticRecord};
use gslb::{Engine, Transport};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

fn ask(engine: &Engine, message: &Message, transport: Transport) -> Message {
    let response = engine
        .answer(&bytes(message), transport)
        .expect("a query gets a response");
    parse(&response)
}

fn ask_static(name: &str, rtype: RecordType) -> Message {
    ask(
        &Engine::from_config(&static_config(), 1),
        &query(name, rtype),
        Transport::Udp,
    )
}

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn types(records: &[Record]) -> Vec<(String, RecordType)> {
    records
        .iter()
        .map(|r| (r.name.to_ascii().to_ascii_lowercase(), r.record_type()))
        .collect()
}

fn record(name: &str, rtype: &str, value: &str) -> StaticRecord {
    StaticRecord {
        name: name.into(),
        rtype: rtype.into(),
        value: value.into(),
        ttl_secs: None,
    }
}

/// The test config plus static records in `fabric.test`.
fn with_records(records: Vec<StaticRecord>) -> Config {
    let mut config = config();
    config.dns.as_mut().unwrap().zones[0].records = records;
    config.validate().unwrap_or_else(|e| panic!("{e}"));
    config
}

#[test]
fn a_zone_file_soa_and_ns_replace_the_generated_ones() {
    let response = ask_static("example.com.", RecordType::SOA);
    let RData::SOA(soa) = &response.answers[0].data else {
        panic!("{response}")
    };
    assert_eq!(
        soa.serial, 2024010101,
        "the file's serial, not the engine's"
    );
    assert_eq!(soa.minimum, 120);
    assert_eq!(response.answers[0].ttl, 300);

    let response = ask_static("example.com.", RecordType::NS);
    let mut ns: Vec<String> = response
        .answers
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    ns.sort();
    assert_eq!(ns, ["ns.elsewhere.net.", "ns1.example.com."]);
    assert_eq!(
        types(&response.additionals),
        [
            ("ns1.example.com.".into(), RecordType::A),
            ("ns1.example.com.".into(), RecordType::AAAA)
        ],
        "glue for the in-zone name server only"
    );

    // Negative answers carry the file's SOA with min(TTL, minimum).
    let response = ask_static("nothing.example.com.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(response.authorities[0].ttl, 120);
}

#[test]
fn cnames_are_followed_inside_the_zone() {
    let response = ask_static("chain1.example.com.", RecordType::AAAA);
    assert_eq!(
        types(&response.answers),
        [
            ("chain1.example.com.".into(), RecordType::CNAME),
            ("chain2.example.com.".into(), RecordType::CNAME),
            ("www.example.com.".into(), RecordType::AAAA),
        ]
    );
    assert!(response.authorities.is_empty());

    let response = ask_static("dangling.example.com.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(response.answers.len(), 1);
    assert_eq!(response.authorities[0].record_type(), RecordType::SOA);

    let response = ask_static("alias.example.com.", RecordType::MX);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert_eq!(response.answers.len(), 1, "the CNAME, then NODATA");
    assert_eq!(response.authorities[0].record_type(), RecordType::SOA);

    let response = ask_static("loop1.example.com.", RecordType::A);
    assert_eq!(response.answers.len(), 2, "a loop ends where it repeats");

    let response = ask_static("outside.example.com.", RecordType::A);
    assert_eq!(response.answers.len(), 1);
    assert!(response.authorities.is_empty());
}

#[test]
fn txt_srv_and_mx_answer_with_additional_addresses() {
    let response = ask_static("txt.example.com.", RecordType::TXT);
    let mut texts: Vec<Vec<&[u8]>> = response
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::TXT(txt) => txt.txt_data.iter().map(|s| &s[..]).collect(),
            other => panic!("not TXT: {other}"),
        })
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        [vec![&b"hello world"[..], b"second string"], vec![b"plain"]]
    );

    let response = ask_static("quoted.example.com.", RecordType::TXT);
    let RData::TXT(txt) = &response.answers[0].data else {
        panic!("{response}")
    };
    assert_eq!(&*txt.txt_data[0], b"with \"quotes\" and a ; semicolon");

    let response = ask_static("_sip._tcp.example.com.", RecordType::SRV);
    assert_eq!(response.answers.len(), 2);
    assert_eq!(
        types(&response.additionals),
        [("sipserver.example.com.".into(), RecordType::AAAA)]
    );

    let response = ask_static("example.com.", RecordType::MX);
    assert_eq!(
        types(&response.additionals),
        [("mail.example.com.".into(), RecordType::A)]
    );
}

#[test]
fn static_names_match_case_insensitively_and_keep_the_question_case() {
    let response = ask_static("WWW2.Example.COM.", RecordType::A);
    assert_eq!(response.answers.len(), 1);
    assert!(response.answers[0].name.eq_case(&name("WWW2.Example.COM.")));
    let response = ask_static("Alias.EXAMPLE.com.", RecordType::A);
    assert!(response.answers[0]
        .name
        .eq_case(&name("Alias.EXAMPLE.com.")));
    let RData::CNAME(target) = &response.answers[0].data else {
        panic!("{response}")
    };
    assert_eq!(target.0, name("www.example.com."));
}

#[test]
fn empty_non_terminals_of_static_names_are_nodata() {
    let response = ask_static("ent.example.com.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.answers.is_empty());
    let response = ask_static("_tcp.example.com.", RecordType::SRV);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    let response = ask_static("x.ent.example.com.", RecordType::A);
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn config_records_answer_beside_gslb_names() {
    let config = with_records(vec![
        record("www", "CNAME", "app"),
        record("@", "MX", "10 app"),
        record("@", "TXT", "hello"),
        record("static", "AAAA", "2001:db8::7"),
    ]);
    let engine = Engine::from_config(&config, 3);
    // A static CNAME to a GSLB name answers with the GSLB addresses.
    let response = ask(
        &engine,
        &query("www.fabric.test.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(
        types(&response.answers),
        [
            ("www.fabric.test.".into(), RecordType::CNAME),
            ("app.fabric.test.".into(), RecordType::A),
        ]
    );
    assert_eq!(
        response.answers[1].data,
        RData::A(A(Ipv4Addr::new(127, 0, 0, 10)))
    );
    // MX to a GSLB name: its addresses as additional records.
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::MX),
        Transport::Udp,
    );
    assert_eq!(
        types(&response.additionals),
        [
            ("app.fabric.test.".into(), RecordType::A),
            ("app.fabric.test.".into(), RecordType::AAAA),
        ]
    );
    // The apex keeps the generated SOA (with the engine's serial) and NS.
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::ANY),
        Transport::Udp,
    );
    let kinds: Vec<RecordType> = response.answers.iter().map(Record::record_type).collect();
    assert_eq!(
        kinds,
        [
            RecordType::SOA,
            RecordType::NS,
            RecordType::MX,
            RecordType::TXT
        ]
    );
    let RData::SOA(soa) = &response.answers[0].data else {
        panic!("{response}")
    };
    assert_eq!(soa.serial, 3);
    let response = ask(
        &engine,
        &query("static.fabric.test.", RecordType::AAAA),
        Transport::Udp,
    );
    assert_eq!(
        response.answers[0].data,
        RData::AAAA(AAAA("2001:db8::7".parse::<Ipv6Addr>().unwrap()))
    );
}

#[test]
fn static_addresses_of_ns1_replace_the_listen_address() {
    let config = with_records(vec![record("ns1", "A", "192.0.2.53")]);
    let engine = Engine::from_config(&config, 1);
    let response = ask(
        &engine,
        &query("fabric.test.", RecordType::NS),
        Transport::Udp,
    );
    assert_eq!(
        response.additionals[0].data,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 53)))
    );
    assert_eq!(response.additionals.len(), 1);
}

#[test]
fn additional_records_that_do_not_fit_are_dropped_without_tc() {
    // 40 MX records fit in 1232 bytes; their 40 addresses do not.
    let mut records: Vec<StaticRecord> = (0..40)
        .map(|i| record("@", "MX", &format!("{i} mail-{i}")))
        .collect();
    records.extend((0..40).map(|i| record(&format!("mail-{i}"), "A", &format!("192.0.2.{i}"))));
    let engine = Engine::from_config(&with_records(records), 1);
    let message = query_edns("fabric.test.", RecordType::MX, 1232, false);
    let response = ask(&engine, &message, Transport::Udp);
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 40);
    let glue = response.additionals.len();
    assert!(glue > 0 && glue < 40, "as many as fit: {response}");
    assert!(response.edns.is_some(), "the OPT record stays");
    // Over TCP they all are there.
    let response = ask(&engine, &message, Transport::Tcp);
    assert_eq!(response.additionals.len(), 40);
}

#[test]
fn names_written_past_the_pointer_range_are_spelled_out() {
    // ANY at the apex writes SOA, then 1100 A records (~17 KB), then NS and
    // MX: their targets lie past the 16 KB a compression pointer reaches, so
    // the glue owners are written in full.
    let mut records: Vec<StaticRecord> = (0..1100u32)
        .map(|i| record("@", "A", &format!("10.1.{}.{}", i / 250, i % 250 + 1)))
        .collect();
    records.push(record("@", "MX", "10 mail"));
    records.push(record("mail", "A", "192.0.2.25"));
    let engine = Engine::from_config(&with_records(records), 1);
    let raw = engine
        .answer(
            &bytes(&query("fabric.test.", RecordType::ANY)),
            Transport::Tcp,
        )
        .unwrap();
    assert!(raw.len() > 0x4000, "{} bytes", raw.len());
    let response = parse(&raw);
    assert_eq!(response.answers.len(), 1 + 1100 + 1 + 1);
    let mut glue = types(&response.additionals);
    glue.sort();
    assert_eq!(
        glue,
        [
            ("mail.fabric.test.".into(), RecordType::A),
            ("ns1.fabric.test.".into(), RecordType::A),
        ]
    );
}

#[test]
fn rdata_names_are_compressed_against_the_question() {
    let config = with_records(vec![
        record("sub", "MX", "10 mail.sub"),
        record("mail.sub", "A", "192.0.2.25"),
    ]);
    let engine = Engine::from_config(&config, 1);
    let raw = engine
        .answer(
            &bytes(&query("Sub.fabric.test.", RecordType::MX)),
            Transport::Udp,
        )
        .unwrap();
    let response = parse(&raw);
    let RData::MX(mx) = &response.answers[0].data else {
        panic!("{response}")
    };
    assert_eq!(mx.exchange, name("mail.sub.fabric.test."));
    assert_eq!(
        types(&response.additionals),
        [("mail.sub.fabric.test.".into(), RecordType::A)]
    );
    // Header 12, question 21, MX 12 + 9 (`\x04mail` and a pointer to the
    // question's `Sub...`), glue 16.
    assert_eq!(raw.len(), 12 + 21 + 21 + 16);
}
