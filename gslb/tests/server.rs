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
