use super::*;
use rand::{rngs::SmallRng, Rng, SeedableRng};

const MAX: usize = 64 * 1024;

fn fwd() -> Forwarding {
    Forwarding::new("192.0.2.7".parse().unwrap(), false, true, true)
}

fn req(bytes: &str) -> Result<Option<(RequestHead, String)>, HeadError> {
    let mut out = Vec::new();
    parse_request(bytes.as_bytes(), MAX, &fwd(), Some("x-user"), &mut out)
        .map(|h| h.map(|h| (h, String::from_utf8(out).unwrap())))
}

fn ok(bytes: &str) -> (RequestHead, String) {
    req(bytes).unwrap().unwrap()
}

fn err(bytes: &str) -> u16 {
    req(bytes).unwrap_err().status()
}

#[test]
fn a_request_is_rewritten_for_the_server() {
    let (head, out) = ok("GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n\
         Keep-Alive: 5\r\nX-Forwarded-Proto: https\r\nX-User: alice\r\nAccept: */*\r\n\r\nGET /next");
    let received =
        "GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n\
         Keep-Alive: 5\r\nX-Forwarded-Proto: https\r\nX-User: alice\r\nAccept: */*\r\n\r\n";
    assert_eq!(head.len, received.len());
    assert!(head.keep_alive && !head.http10 && !head.upgrade && !head.is_head);
    assert_eq!(head.framing, Framing::Empty);
    assert_eq!(
        out,
        "GET /a?b HTTP/1.1\r\nHost: x\r\nX-User: alice\r\nAccept: */*\r\n\
         x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\
         forwarded: for=192.0.2.7;proto=http\r\n\r\n"
    );
    let (a, b) = head.hash_value.unwrap();
    assert_eq!(&received[a..b], "alice");
}

#[test]
fn incomplete_heads_ask_for_more_until_too_large() {
    assert_eq!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nA: {}", "a".repeat(MAX));
    assert_eq!(err(&big), 431);
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("h{i}: v\r\n"))
        .collect();
    assert_eq!(
        err(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
        431
    );
}

#[test]
fn ambiguous_framing_is_refused_not_guessed() {
    // The classic smuggling shapes (CL.TE, TE.CL, TE.TE) and their cousins.
    for bad in [
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(err(bad), 400, "{bad:?}");
    }
    let (head, out) =
        ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(head.framing, Framing::Length(5));
    assert_eq!(out.matches("content-length: 5\r\n").count(), 1, "{out}");
    let (head, out) = ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(head.framing, Framing::Chunked);
    assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    let (head, _) = ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(head.framing, Framing::Empty);
}

#[test]
fn bad_requests_get_their_status() {
    assert_eq!(err("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
    assert_eq!(err("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    assert_eq!(err("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(err("CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
    assert_eq!(err("GET nowhere HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
        400
    );
    assert_eq!(
        err("GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n"),
        400
    );
    assert_eq!(err("GET / HTTP/1.1\r\nHost: x\r\nA: b\0c\r\n\r\n"), 400);
    assert_eq!(err("\x16\x03\x01\x00\x05hello"), 400);
}

#[test]
fn connection_semantics_follow_the_version() {
    let (h, out) = ok("GET / HTTP/1.0\r\n\r\n");
    assert!(h.http10 && !h.keep_alive);
    assert!(
        out.starts_with("GET / HTTP/1.0\r\nconnection: keep-alive\r\n"),
        "{out}"
    );
    let (h, _) = ok("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert!(h.keep_alive);
    let (h, _) = ok("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(!h.keep_alive);
    let (h, out) =
        ok("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert!(h.upgrade);
    assert!(
        out.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
        "{out}"
    );
    let (h, out) = ok("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n");
    assert!(!h.upgrade, "Upgrade without Connection: upgrade is not one");
    assert!(!out.to_ascii_lowercase().contains("upgrade"), "{out}");
    let (h, out) =
        ok("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
    assert!(h.expect_continue);
    assert!(!out.to_ascii_lowercase().contains("expect"), "{out}");
    let (h, _) = ok("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(h.is_head);
}

#[test]
fn ipv6_clients_are_quoted_in_forwarded() {
    let mut out = Vec::new();
    let f = Forwarding::new("2001:db8::1".parse().unwrap(), true, false, true);
    parse_request(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: z\r\n\r\n",
        MAX,
        &f,
        None,
        &mut out,
    )
    .unwrap()
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("forwarded: for=\"[2001:db8::1]\";proto=https\r\n"),
        "{out}"
    );
    assert!(
        out.contains("X-Forwarded-Proto: z"),
        "not ours to replace when off: {out}"
    );
    assert!(!out.contains("x-forwarded-for"), "{out}");
}

fn rw(is_head: bool, upgrade: bool, close: bool) -> ResponseRewrite<'static> {
    ResponseRewrite {
        is_head,
        upgrade,
        close,
        http10_keep_alive: false,
        se_name: b"se-1",
    }
}

fn resp(bytes: &str, rw: &ResponseRewrite<'_>) -> Result<(ResponseHead, String), HeadError> {
    let mut out = Vec::new();
    parse_response(bytes.as_bytes(), MAX, rw, &mut out)
        .map(|h| (h.unwrap(), String::from_utf8(out).unwrap()))
}

#[test]
fn responses_are_framed_and_tagged() {
    let plain = rw(false, false, false);
    let (h, out) = resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Fabric-Se: spoofed\r\nConnection: keep-alive\r\n\r\nabc",
        &plain,
    )
    .unwrap();
    assert_eq!(
        (h.status, h.framing, h.keep_alive),
        (200, Framing::Length(3), true)
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-fabric-se: se-1\r\n\r\n"
    );

    let (h, out) = resp(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        &plain,
    )
    .unwrap();
    assert_eq!(h.framing, Framing::Chunked);
    assert!(out.contains("transfer-encoding: chunked\r\n"));

    let (h, out) = resp("HTTP/1.1 200 OK\r\n\r\n", &plain).unwrap();
    assert_eq!(h.framing, Framing::UntilClose);
    assert!(!h.keep_alive);
    assert!(out.contains("connection: close\r\n"), "{out}");

    let (h, out) = resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        &rw(true, false, false),
    )
    .unwrap();
    assert_eq!(h.framing, Framing::Empty);
    assert!(
        out.contains("content-length: 9\r\n"),
        "HEAD keeps the length: {out}"
    );

    for code in [204, 304] {
        let (h, _) = resp(
            &format!("HTTP/1.1 {code} X\r\nContent-Length: 9\r\n\r\n"),
            &plain,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Empty, "{code}");
    }
    let (h, out) = resp("HTTP/1.1 100 Continue\r\n\r\n", &plain).unwrap();
    assert!(h.is_interim());
    assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");

    let (_, out) = resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        &rw(false, false, true),
    )
    .unwrap();
    assert!(out.contains("connection: close\r\n"), "{out}");

    let (h, out) = resp(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        &rw(false, true, false),
    )
    .unwrap();
    assert_eq!((h.status, h.keep_alive), (101, false));
    assert!(
        out.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
        "{out}"
    );
    assert!(resp(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        &plain
    )
    .is_err());

    assert!(resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        &plain
    )
    .is_err());
    assert!(resp(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        &plain
    )
    .is_err());
    assert!(resp("HTTP/1.1 999 What\r\n\r\n", &plain).is_err());
    assert!(resp("SSH-2.0-OpenSSH\r\n\r\n", &plain).is_err());
}

#[test]
fn own_responses_are_complete_messages() {
    let mut out = Vec::new();
    own_response(503, "no server", b"se-1", false, &mut out);
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\
         x-fabric-se: se-1\r\n\r\nno server\n"
    );
    own_response(431, "too big", b"se-1", true, &mut out);
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("connection: close\r\n"));
}

const BODY: &[u8] =
    b"4\r\nwiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n";

#[test]
fn chunked_bodies_end_where_they_end_however_they_arrive() {
    let mut whole = BODY.to_vec();
    whole.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let mut c = Chunked::new();
    assert_eq!(c.feed(&whole), Ok(BODY.len()));
    assert!(c.is_done());

    let mut rng = SmallRng::seed_from_u64(1);
    for _ in 0..500 {
        let mut c = Chunked::new();
        let mut at = 0;
        while !c.is_done() {
            let step = rng.gen_range(1..8).min(whole.len() - at);
            at += c.feed(&whole[at..at + step]).unwrap();
        }
        assert_eq!(at, BODY.len());
    }
    let mut c = Chunked::new();
    assert_eq!(c.feed(b"0\r\n\r\n"), Ok(5));
    assert!(c.is_done());
}

#[test]
fn malformed_chunks_are_refused() {
    for bad in [
        &b"4\nwiki\r\n0\r\n\r\n"[..],
        b"4\r\nwikix\r\n0\r\n\r\n",
        b"x\r\n",
        b"\r\n",
        b"11111111111111111\r\n",
        b"4\r\nwiki\r\n0\r\n\n",
        b"4\r\nwiki\r\n0\r\nT: x\n\r\n",
        b"4;a\x01\r\n",
        b"4\r\nwiki\r\r",
    ] {
        let mut c = Chunked::new();
        assert!(c.feed(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let mut c = Chunked::new();
    let mut trailers = b"0\r\n".to_vec();
    trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILER_BYTES + 1));
    assert!(c.feed(&trailers).is_err(), "trailers are bounded");
}

#[test]
fn random_bytes_never_panic_the_parsers() {
    let mut rng = SmallRng::seed_from_u64(7);
    let seeds: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
        BODY,
    ];
    let mut out = Vec::new();
    for round in 0..20_000 {
        let mut input = seeds[round % seeds.len()].to_vec();
        for _ in 0..rng.gen_range(0..6) {
            let at = rng.gen_range(0..=input.len());
            match rng.gen_range(0..3) {
                0 => input.insert(at, rng.gen()),
                1 if at < input.len() => {
                    input.remove(at);
                }
                _ => {
                    let special = b"\r\n:; ,0fF\x00\x7f";
                    input.insert(at, special[rng.gen_range(0..special.len())]);
                }
            }
        }
        if rng.gen_bool(0.1) {
            input = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
        }
        let _ = parse_request(&input, 256, &fwd(), Some("host"), &mut out);
        let _ = parse_response(&input, 256, &rw(rng.gen(), rng.gen(), rng.gen()), &mut out);
        let mut headers = 0usize;
        if let Ok(Some(head)) = parse_response_fields(&input, 256, rng.gen(), |_, _| headers += 1) {
            assert!(head.len <= input.len() && headers <= MAX_HEADERS + 1);
        }
        let mut c = BodyEnd::new(Framing::Chunked);
        if let Ok(n) = c.feed(&input) {
            assert!(n <= input.len());
        }
        let (mut c, mut decoded) = (Chunked::new(), 0);
        if let Ok(n) = c.feed_with(&input, |d| decoded += d.len()) {
            assert!(decoded <= n && n <= input.len());
        }
    }
}

#[test]
fn decimals_are_written_without_fmt() {
    for n in [0u64, 7, 10, 200, 65_535, u64::MAX] {
        let mut out = Vec::new();
        push_decimal(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
    }
}

/// Chunked bodies of random chunk sizes, fed at random split points,
/// decode to exactly the data that was chunked.
#[test]
fn chunked_bodies_decode_to_their_data_however_they_arrive() {
    let mut rng = SmallRng::seed_from_u64(11);
    for _ in 0..2_000 {
        let data: Vec<u8> = (0..rng.gen_range(0..3000)).map(|_| rng.gen()).collect();
        let mut wire = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = rng.gen_range(1..=rest.len().min(700));
            wire.extend_from_slice(format!("{n:x}").as_bytes());
            if rng.gen_bool(0.2) {
                wire.extend_from_slice(b";ext=v");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        wire.extend_from_slice(b"0\r\n");
        if rng.gen_bool(0.3) {
            wire.extend_from_slice(b"trailer: t\r\n");
        }
        wire.extend_from_slice(b"\r\nNEXT");
        let (mut c, mut decoded, mut at) = (Chunked::new(), Vec::new(), 0);
        while !c.is_done() {
            let end = (at + rng.gen_range(1..64)).min(wire.len());
            let used = c
                .feed_with(&wire[at..end], |d| decoded.extend_from_slice(d))
                .unwrap();
            at += used;
            assert!(used == end - (at - used) || c.is_done());
        }
        assert_eq!(decoded, data);
        assert_eq!(&wire[at..], b"NEXT");
    }
}

#[test]
fn response_fields_drop_hop_by_hop_and_keep_the_length() {
    let mut seen = Vec::new();
    let head = parse_response_fields(
        b"HTTP/1.1 200 OK\r\nConnection: x-a, keep-alive\r\nX-A: 1\r\nX-B: 2\r\nKeep-Alive: 5\r\nContent-Length: 2\r\n\r\nok",
        MAX,
        false,
        |n, v| seen.push(format!("{n}={}", String::from_utf8_lossy(v))),
    )
    .unwrap()
    .unwrap();
    assert_eq!((head.status, head.framing), (200, Framing::Length(2)));
    assert_eq!(seen, ["X-B=2", "content-length=2"]);
    // HEAD keeps the length a GET would get; 101 is not relayed to HTTP/2.
    let head = parse_response_fields(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        MAX,
        true,
        |_, _| {},
    )
    .unwrap()
    .unwrap();
    assert_eq!(head.framing, Framing::Empty);
    assert!(parse_response_fields(
        b"HTTP/1.1 101 Switching\r\nUpgrade: ws\r\n\r\n",
        MAX,
        false,
        |_, _| {}
    )
    .is_err());
    assert!(parse_response_fields(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        MAX,
        false,
        |_, _| {}
    )
    .is_err());
}

#[test]
fn chunks_carry_their_size_in_hex() {
    for n in [1usize, 15, 16, 255, 4096, 70_000] {
        let data = vec![b'x'; n];
        let mut out = Vec::new();
        push_chunk(&mut out, &data);
        let mut expected = format!("{n:x}\r\n").into_bytes();
        expected.extend_from_slice(&data);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(out, expected);
    }
}
