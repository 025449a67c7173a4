//! The UDP and TCP loops on real loopback sockets (normal build; the
//! simulation exercises the same code through `sim`).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{bytes, config, parse, query};
use fabric::rt;
use gslb::{Engine, EngineHandle};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(5);

fn v4s(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

async fn ask_udp(server: SocketAddr, query: &[u8]) -> Message {
    let client = rt::UdpSocket::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    client.send_to(query, server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (len, from) = rt::timeout(PATIENCE, client.recv_from(&mut buf))
        .await
        .expect("UDP answer in time")
        .unwrap();
    assert_eq!(from, server);
    parse(&buf[..len])
}

async fn read_framed(stream: &mut rt::TcpStream) -> Message {
    let mut prefix = [0u8; 2];
    rt::timeout(PATIENCE, stream.read_exact(&mut prefix))
        .await
        .expect("TCP answer in time")
        .unwrap();
    let mut response = vec![0u8; u16::from_be_bytes(prefix) as usize];
    rt::timeout(PATIENCE, stream.read_exact(&mut response))
        .await
        .unwrap()
        .unwrap();
    parse(&response)
}

fn framed(query: &[u8]) -> Vec<u8> {
    let mut out = (query.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(query);
    out
}

#[tokio::test]
async fn answers_over_udp_and_tcp_and_follows_swaps() {
    let handle = EngineHandle::new(Engine::from_config(&config(), 1));
    let server = gslb::run("127.0.0.1:0".parse().unwrap(), handle.clone())
        .await
        .unwrap();
    assert_ne!(server.port(), 0, "the bound port is returned");

    let app = bytes(&query("app.fabric.test.", RecordType::A));
    let response = ask_udp(server, &app).await;
    assert_eq!(response.metadata.id, 0xBEEF);
    assert_eq!(v4s(&response), vec![Ipv4Addr::new(127, 0, 0, 10)]);

    // TCP: two queries pipelined in one write, answered in order on one connection.
    let big = bytes(&query("big.fabric.test.", RecordType::A));
    let mut stream = rt::connect(server).await.unwrap();
    let mut both = framed(&app);
    both.extend_from_slice(&framed(&big));
    stream.write_all(&both).await.unwrap();
    stream.flush().await.unwrap();
    let first = read_framed(&mut stream).await;
    assert_eq!(v4s(&first), vec![Ipv4Addr::new(127, 0, 0, 10)]);
    let second = read_framed(&mut stream).await;
    assert!(!second.metadata.truncation);
    assert_eq!(second.answers.len(), 100, "TCP carries what UDP cannot");

    // The same big answer over UDP is truncated.
    let response = ask_udp(server, &big).await;
    assert!(response.metadata.truncation);
    assert!(response.answers.is_empty());

    // A swap is seen by the next query, on UDP and on an open TCP connection.
    let mut changed = config();
    changed.virtual_services[0].vip = "127.0.0.11".parse().unwrap();
    handle.swap(Engine::from_config(&changed, 2));
    assert_eq!(
        v4s(&ask_udp(server, &app).await),
        vec![Ipv4Addr::new(127, 0, 0, 11)]
    );
    stream
        .write_all(&framed(&bytes(&query("fabric.test.", RecordType::SOA))))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let soa = read_framed(&mut stream).await;
    let RData::SOA(data) = &soa.answers[0].data else {
        panic!("not a SOA: {soa}")
    };
    assert_eq!(data.serial, 2);

    // Garbage still gets a FORMERR on both transports.
    let response = ask_udp(server, &[0x12, 0x34, 0x00]).await;
    assert_eq!(
        (response.metadata.id, response.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    stream
        .write_all(&framed(&[0x12, 0x34, 0x00]))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let response = read_framed(&mut stream).await;
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
}

#[tokio::test]
async fn tcp_closes_on_a_message_that_gets_no_answer() {
    let handle = EngineHandle::new(Engine::from_config(&config(), 1));
    let server = gslb::run("127.0.0.1:0".parse().unwrap(), handle)
        .await
        .unwrap();
    let mut not_a_query = query("app.fabric.test.", RecordType::A);
    not_a_query.metadata.message_type = hickory_proto::op::MessageType::Response;
    let mut stream = rt::connect(server).await.unwrap();
    stream
        .write_all(&framed(&bytes(&not_a_query)))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let read = rt::timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "expected EOF, got {read:?}");
}

/// Clients sending at once, each keeping this many queries in flight: 8
/// clients keep 128 datagrams queued at the server at most, well inside a
/// default 208 KiB receive buffer, so a loss is a bug, not an overflow.
const WINDOW: usize = 16;

/// Query `i` of client `client`: a mix of answers (positive, SOA, NXDOMAIN,
/// TC, EDNS, FORMERR), each with an ID unique in the burst.
fn burst_query(client: usize, i: usize) -> (u16, Vec<u8>) {
    let id = (client * 1000 + i) as u16;
    let mut message = match i % 6 {
        0 => query("app.fabric.test.", RecordType::A),
        1 => query("fabric.test.", RecordType::SOA),
        2 => query("nope.fabric.test.", RecordType::A),
        3 => query("big.fabric.test.", RecordType::A),
        4 => common::query_edns("mid.fabric.test.", RecordType::A, 1232, i.is_multiple_of(4)),
        _ => return (id, vec![(id >> 8) as u8, id as u8, 0x00]),
    };
    message.metadata.id = id;
    (id, bytes(&message))
}

/// A response with its answer records in a canonical order: round robin
/// rotates GSLB answers per query, so the server's answer and the one the
/// test asked the engine for hold the same records from different starts.
/// Header, length, and the other sections stay exact.
fn canonical(response: &[u8]) -> (Vec<u8>, usize, Vec<String>, Vec<String>, Vec<String>) {
    let header = response[..response.len().min(12)].to_vec();
    let Ok(m) = hickory_proto::op::Message::from_vec(response) else {
        return (
            response.to_vec(),
            response.len(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
    };
    let strings =
        |rs: &[hickory_proto::rr::Record]| rs.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    let mut answers = strings(&m.answers);
    answers.sort();
    (
        header,
        response.len(),
        answers,
        strings(&m.authorities),
        strings(&m.additionals),
    )
}

/// `clients` sockets send `per_client` queries each to `server`, all at
/// once; every query must get exactly one response, what the engine answers
/// (up to round robin's order, see [`canonical`]), from the server's address. Messages that get no answer
/// (a response, a 1-byte datagram) are mixed in and must change nothing.
async fn burst(
    server: SocketAddr,
    engine: std::sync::Arc<Engine>,
    clients: usize,
    per_client: usize,
) {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let engine = engine.clone();
        tasks.push(rt::spawn(async move {
            let socket = rt::UdpSocket::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let queries: Vec<(u16, Vec<u8>)> =
                (0..per_client).map(|i| burst_query(client, i)).collect();
            let mut expected = std::collections::BTreeMap::new();
            for (id, q) in &queries {
                let answer = engine.answer(q, gslb::Transport::Udp).expect("answered");
                expected.insert(*id, answer);
            }
            let mut not_a_query = query("app.fabric.test.", RecordType::A);
            not_a_query.metadata.message_type = hickory_proto::op::MessageType::Response;
            let not_a_query = bytes(&not_a_query);

            let mut next = 0;
            let mut buf = vec![0u8; 65535];
            let mut answered = 0;
            while answered < queries.len() {
                while next < queries.len() && next - answered < WINDOW {
                    socket.send_to(&queries[next].1, server).await.unwrap();
                    if next.is_multiple_of(10) {
                        socket.send_to(&not_a_query, server).await.unwrap();
                        socket.send_to(&[0x42], server).await.unwrap();
                    }
                    next += 1;
                }
                let received = rt::timeout(PATIENCE, socket.recv_from(&mut buf)).await;
                let Ok(received) = received else {
                    panic!(
                        "client {client}: no answer in time; {} of {} unanswered: {:?}",
                        expected.len(),
                        queries.len(),
                        expected.keys().collect::<Vec<_>>()
                    );
                };
                let (len, from) = received.unwrap();
                assert_eq!(from, server, "client {client}: answer from elsewhere");
                let response = &buf[..len];
                let id = u16::from_be_bytes([response[0], response[1]]);
                let Some(want) = expected.remove(&id) else {
                    panic!("client {client}: answer with ID {id} not asked or answered twice");
                };
                assert_eq!(
                    canonical(response),
                    canonical(&want),
                    "client {client}: answer to ID {id}"
                );
                answered += 1;
            }
            // Nothing more arrives: no duplicates, nothing for the non-queries.
            let extra = rt::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await;
            assert!(extra.is_err(), "client {client}: an unexpected datagram");
            answered
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("client task");
    }
    assert_eq!(total, clients * per_client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_many_clients_gets_every_answer() {
    let engine = Engine::from_config(&config(), 1);
    let handle = EngineHandle::new(engine);
    let server = gslb::run("127.0.0.1:0".parse().unwrap(), handle.clone())
        .await
        .unwrap();
    burst(server, handle.current(), 8, 63).await;
    // The server is still serving after the burst.
    let app = bytes(&query("app.fabric.test.", RecordType::A));
    assert_eq!(
        v4s(&ask_udp(server, &app).await),
        vec![Ipv4Addr::new(127, 0, 0, 10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_udp_workers_share_the_port_and_answer_a_burst() {
    let handle = EngineHandle::new(Engine::from_config(&config(), 1));
    let server = gslb::run_with("127.0.0.1:0".parse().unwrap(), handle.clone(), 2)
        .await
        .unwrap();
    assert_ne!(server.port(), 0);
    burst(server, handle.current(), 8, 63).await;

    // TCP is on the same port, and a swap reaches every worker: many
    // clients (so both sockets) all see the new answer.
    let mut stream = rt::connect(server).await.unwrap();
    let app = bytes(&query("app.fabric.test.", RecordType::A));
    stream.write_all(&framed(&app)).await.unwrap();
    stream.flush().await.unwrap();
    assert_eq!(
        v4s(&read_framed(&mut stream).await),
        vec![Ipv4Addr::new(127, 0, 0, 10)]
    );
    let mut changed = config();
    changed.virtual_services[0].vip = "127.0.0.11".parse().unwrap();
    handle.swap(Engine::from_config(&changed, 2));
    for _ in 0..16 {
        assert_eq!(
            v4s(&ask_udp(server, &app).await),
            vec![Ipv4Addr::new(127, 0, 0, 11)]
        );
    }
}

#[tokio::test]
async fn a_taken_port_is_an_error_with_several_workers_too() {
    let handle = EngineHandle::new(Engine::from_config(&config(), 1));
    let server = gslb::run_with("127.0.0.1:0".parse().unwrap(), handle.clone(), 2)
        .await
        .unwrap();
    // SO_REUSEPORT sockets of the server do not let a plain bind in, nor
    // another server on the same address.
    let again = gslb::run_with(server, handle.clone(), 1).await;
    assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
}
