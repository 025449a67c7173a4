//! The UDP and TCP loops around the [`Engine`]: bytes in, bytes out.
//!
//! Everything here comes from [`fabric::rt`], so it runs unchanged in the
//! simulation. Queries are answered inline on the receiving task: answering is
//! a lookup and a memcpy, far cheaper than a task spawn. UDP moves in batches
//! ([`rt::UdpBatch`]: `recvmmsg`/`sendmmsg` on a host, one datagram at a time
//! in the simulation), over `dns.udp_workers` sockets ([`run_with`]).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fabric::rt::{self, TcpListener, TcpStream, UdpSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::{Engine, Transport};

/// Largest UDP datagram we read; larger ones cannot exist on IPv4 or IPv6.
const UDP_RECV_BYTES: usize = 65535;
/// Datagrams read by one `recvmmsg` on a real host (docs/decisions.md: as
/// gdnsd's 16; knot reads 10).
pub const UDP_BATCH: usize = 16;
/// A TCP connection with no complete query for this long is closed; the same
/// bound applies to reading one query and to writing one response.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open TCP connections at once; further ones wait in the listen backlog.
const TCP_MAX_CONNECTIONS: usize = 256;
/// Tries to find a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 16;

/// Shared, swappable engine: config changes swap the `Arc` atomically;
/// queries in flight keep the old one.
#[derive(Clone, Debug)]
pub struct EngineHandle(Arc<RwLock<Arc<Engine>>>);

impl EngineHandle {
    /// A handle serving `engine` until the next [`swap`](Self::swap).
    pub fn new(engine: Engine) -> Self {
        EngineHandle(Arc::new(RwLock::new(Arc::new(engine))))
    }

    /// Serve `engine` from now on.
    pub fn swap(&self, engine: Engine) {
        let engine = Arc::new(engine);
        // The lock guards a single pointer store; a panic elsewhere cannot
        // leave it half-written, so a poisoned lock is still consistent.
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = engine;
    }

    /// The engine to answer the next query with.
    pub fn current(&self) -> Arc<Engine> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Serve UDP on `socket` until the returned worker is dropped or the socket
/// fails. One datagram in, at most one out.
///
/// [`rt::UdpBatch::serve`] runs the loop: on a real host a thread of its own
/// (`dns-udp-WORKER`) reading batches of up to [`UDP_BATCH`] with one
/// blocking `recvmmsg` and answering them with one `sendmmsg`, as gdnsd's UDP
/// threads do; in the simulation a task taking one datagram at a time.
/// Buffers are allocated once, there. Each batch is answered by the engine
/// current when it arrived. Errors that concern a single peer (an
/// ICMP-reported refusal, a failed send) are logged and skipped: one client
/// must not stop the server.
pub fn serve_udp(
    socket: UdpSocket,
    engine: EngineHandle,
    worker: usize,
) -> io::Result<rt::BatchWorker> {
    let batch = rt::UdpBatch::new(socket, UDP_BATCH, UDP_RECV_BYTES);
    let mut current = engine.current();
    batch.serve(
        format!("dns-udp-{worker}"),
        move |index, query, peer, response| {
            if index == 0 {
                current = engine.current();
            }
            current.answer_into(query, peer.ip(), Transport::Udp, response)
        },
    )
}

/// Serve DNS over TCP (RFC 7766: 2-byte length prefix, several queries per
/// connection, idle timeout 10 s, at most 256 connections, queries up to the
/// 65535 bytes the prefix can frame) until the listener fails.
pub async fn serve_tcp(listener: TcpListener, engine: EngineHandle) -> io::Result<()> {
    rt::accept_loop(listener, TCP_MAX_CONNECTIONS, move |stream, peer| {
        let engine = engine.clone();
        async move {
            if let Err(e) = on_connection(stream, peer.ip(), &engine).await {
                tracing::debug!(%peer, error = %e, "DNS over TCP: connection ended");
            }
        }
    })
    .await
}

/// Answer queries on one connection, in order, until the peer closes, goes
/// idle, or sends something that gets no response (which only a broken or
/// hostile peer does).
async fn on_connection(
    mut stream: TcpStream,
    from: std::net::IpAddr,
    engine: &EngineHandle,
) -> io::Result<()> {
    let mut query = Vec::new();
    let mut response = Vec::new();
    let mut framed = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        match rt::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await {
            Err(_idle) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        query.resize(u16::from_be_bytes(prefix) as usize, 0);
        rt::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query))
            .await
            .map_err(timed_out)??;
        if !engine
            .current()
            .answer_into(&query, from, Transport::Tcp, &mut response)
        {
            return Ok(());
        }
        let Ok(len) = u16::try_from(response.len()) else {
            // The engine truncates TCP answers to 65535 bytes; not framing a
            // longer one is the safe reaction to a bug there.
            return Err(io::Error::other(format!(
                "DNS response of {} bytes cannot be framed",
                response.len()
            )));
        };
        framed.clear();
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        // One write per response, then flush: simulated TCP sends only on flush.
        let write = async {
            stream.write_all(&framed).await?;
            stream.flush().await
        };
        rt::timeout(TCP_IDLE_TIMEOUT, write)
            .await
            .map_err(timed_out)??;
    }
}

fn timed_out(elapsed: rt::Elapsed) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, elapsed)
}

/// Bind UDP and TCP on `addr` and serve both: spawns the two loops with
/// [`rt::spawn`] and returns once bound, with the bound address, so a caller
/// passing port 0 learns the port (the same one for UDP and TCP).
///
/// A loop that fails logs its error and ends; the other keeps serving.
pub async fn run(addr: SocketAddr, engine: EngineHandle) -> io::Result<SocketAddr> {
    run_with(addr, engine, 1).await
}

/// [`run`] with `udp_workers` UDP sockets on `addr` (`dns.udp_workers`),
/// sharing it with `SO_REUSEPORT` when more than one, each served by its
/// own worker ([`serve_udp`]: a thread on a real host); the simulation uses
/// one ([`rt::UdpSocket::bind_reuse_port`]).
pub async fn run_with(
    addr: SocketAddr,
    engine: EngineHandle,
    udp_workers: usize,
) -> io::Result<SocketAddr> {
    let (udp, tcp, local) = bind_pair(addr, udp_workers).await?;
    let workers = udp
        .into_iter()
        .enumerate()
        .map(|(worker, socket)| serve_udp(socket, engine.clone(), worker))
        .collect::<io::Result<Vec<_>>>()?;
    // The UDP workers live as long as this task: until the runtime that
    // started the server ends (a test's, or the process's).
    rt::spawn(async move {
        let _workers = workers;
        std::future::pending::<()>().await
    });
    rt::spawn(async move {
        if let Err(e) = serve_tcp(tcp, engine).await {
            tracing::error!(%local, error = %e, "DNS over TCP stopped");
        }
    });
    Ok(local)
}

/// `udp_workers` UDP sockets and a TCP listener on the same address. For
/// port 0 the first UDP socket picks the port; if TCP finds it taken, try
/// again with a new one.
async fn bind_pair(
    addr: SocketAddr,
    udp_workers: usize,
) -> io::Result<(Vec<UdpSocket>, TcpListener, SocketAddr)> {
    let (udp, tcp, local) = bind_pair_once(addr, udp_workers).await?;
    // Answers are never fragmented (RFC 9715): TC and TCP carry big ones.
    for socket in &udp {
        socket.set_dont_fragment()?;
    }
    Ok((udp, tcp, local))
}

async fn bind_pair_once(
    addr: SocketAddr,
    udp_workers: usize,
) -> io::Result<(Vec<UdpSocket>, TcpListener, SocketAddr)> {
    if addr.port() != 0 {
        let udp = UdpSocket::bind_reuse_port(addr, udp_workers).await?;
        let tcp = TcpListener::bind(addr).await?;
        let local = udp[0].local_addr()?;
        return Ok((udp, tcp, local));
    }
    let mut last_error = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind_reuse_port(addr, udp_workers).await?;
        let local = udp[0].local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::AddrInUse, "no port free for UDP and TCP")
    }))
}
