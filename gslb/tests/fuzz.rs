//! The engine reads bytes from anyone: no input may panic it, and whatever
//! it answers must be a well-formed DNS message. Seeded, so a failure
//! replays exactly.

mod common;

use common::{bytes, config, parse, query, query_edns, static_config};
use gslb::{Engine, Transport};
use hickory_proto::rr::RecordType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x6e5b_d15c_0000_0053;
const CASES: usize = 20_000;

/// Check one answer: the ID is echoed, QR is set, the size fits the
/// transport, and hickory parses it.
fn check(engine: &Engine, input: &[u8], transport: Transport, case: usize) {
    let Some(output) = engine.answer(input, transport) else {
        return;
    };
    let context = || format!("seed {SEED:#x} case {case} input {input:02x?}");
    assert!(output.len() >= 12, "{}", context());
    assert_eq!(output[..2], input[..2], "ID echoed, {}", context());
    assert_ne!(output[2] & 0x80, 0, "QR set, {}", context());
    let limit = if transport == Transport::Udp {
        1232
    } else {
        65535
    };
    assert!(
        output.len() <= limit,
        "{} bytes, {}",
        output.len(),
        context()
    );
    if let Err(e) = hickory_proto::op::Message::from_vec(&output) {
        panic!("unparseable response ({e:?}) {output:02x?}, {}", context());
    }
}

fn transport(rng: &mut SmallRng) -> Transport {
    if rng.gen() {
        Transport::Udp
    } else {
        Transport::Tcp
    }
}

#[test]
fn random_bytes_never_panic() {
    let engine = Engine::from_config(&config(), 1);
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut answered = 0;
    for case in 0..CASES {
        let len = rng.gen_range(0..600);
        let mut input = vec![0u8; len];
        rng.fill(&mut input[..]);
        // Half the time look like a query (QR clear) so the parser is reached.
        if len > 2 && rng.gen() {
            input[2] &= 0x07;
        }
        let transport = transport(&mut rng);
        answered += usize::from(engine.answer(&input, transport).is_some());
        check(&engine, &input, transport, case);
    }
    assert!(
        answered > CASES / 4,
        "only {answered} random inputs answered: the test lost its teeth"
    );
}

#[test]
fn mutated_queries_never_panic() {
    let engine = Engine::from_config(&config(), 1);
    let mut rng = SmallRng::seed_from_u64(SEED + 1);
    let seeds = [
        bytes(&query("app.fabric.test.", RecordType::A)),
        bytes(&query_edns("big.fabric.test.", RecordType::A, 1232, true)),
        bytes(&query_edns("fabric.test.", RecordType::ANY, 4096, false)),
        bytes(&query("b.fabric.test.", RecordType::NS)),
    ];
    for seed in &seeds {
        parse(seed);
    }
    let mut answered_noerror = 0;
    for case in 0..CASES {
        let mut input = seeds[case % seeds.len()].clone();
        for _ in 0..rng.gen_range(1..=4) {
            let at = rng.gen_range(0..input.len());
            input[at] ^= 1 << rng.gen_range(0..8);
            if rng.gen_ratio(1, 4) {
                input[at] = rng.gen();
            }
        }
        match rng.gen_range(0..8) {
            0 => input.truncate(rng.gen_range(0..input.len())),
            1 => input.extend((0..rng.gen_range(1..20)).map(|_| rng.gen::<u8>())),
            _ => {}
        }
        let transport = transport(&mut rng);
        if let Some(output) = engine.answer(&input, transport) {
            answered_noerror += usize::from(output.len() > 3 && output[3] & 0x0F == 0);
        }
        check(&engine, &input, transport, case);
    }
    assert!(
        answered_noerror > CASES / 20,
        "only {answered_noerror} NOERROR answers: mutations too destructive"
    );
}

#[test]
fn mutated_queries_to_a_static_zone_never_panic() {
    let engine = Engine::from_config(&static_config(), 1);
    let mut rng = SmallRng::seed_from_u64(SEED + 2);
    let seeds = [
        bytes(&query("chain1.example.com.", RecordType::AAAA)),
        bytes(&query_edns("example.com.", RecordType::MX, 1232, true)),
        bytes(&query_edns("huge.example.com.", RecordType::A, 4096, false)),
        bytes(&query("_sip._tcp.example.com.", RecordType::SRV)),
        bytes(&query("loop1.example.com.", RecordType::A)),
        bytes(&query("big.example.com.", RecordType::ANY)),
    ];
    let mut answered_noerror = 0;
    for case in 0..CASES {
        let mut input = seeds[case % seeds.len()].clone();
        for _ in 0..rng.gen_range(1..=3) {
            let at = rng.gen_range(0..input.len());
            input[at] ^= 1 << rng.gen_range(0..8);
        }
        if rng.gen_ratio(1, 8) {
            input.truncate(rng.gen_range(0..input.len()));
        }
        let transport = transport(&mut rng);
        if let Some(output) = engine.answer(&input, transport) {
            answered_noerror += usize::from(output.len() > 3 && output[3] & 0x0F == 0);
        }
        check(&engine, &input, transport, case);
    }
    assert!(
        answered_noerror > CASES / 20,
        "only {answered_noerror} NOERROR answers: mutations too destructive"
    );
}
