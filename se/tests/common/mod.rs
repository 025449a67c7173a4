//! Helpers the SE's loopback tests share (each test file uses some).
#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use fabric::rt;

/// 127.0.0.1.
pub const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A TCP server on a loopback port of its own: each accepted connection
/// goes to `handler` on a task of its own.
pub async fn tcp_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(rt::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            rt::spawn(handler(stream));
        }
    });
    addr
}

/// A UDP socket on a loopback port of its own.
pub async fn udp_socket() -> rt::UdpSocket {
    rt::UdpSocket::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap()
}

/// A port free for both TCP and UDP.
/// An address whose connections are refused for as long as the returned
/// socket lives: bound, never listening, so no other test can take the port
/// meanwhile (a port from [`free_port`] could be reused by a test running
/// beside this one, and then answer).
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

pub async fn free_port() -> u16 {
    loop {
        let tcp = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
            .await
            .unwrap();
        let port = tcp.local_addr().unwrap().port();
        if rt::UdpSocket::bind(SocketAddr::new(LOCALHOST, port))
            .await
            .is_ok()
        {
            return port;
        }
    }
}
