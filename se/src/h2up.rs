//! HTTP/2 to servers (`pools[].http2`): one multiplexed connection per
//! server (the `h2` crate's client; TLS with ALPN `h2`, or h2c with prior
//! knowledge), shared by the requests of every client of the virtual
//! service, HTTP/1.x ([`crate::relay`]) and HTTP/2 ([`crate::h2relay`]).
//! A connection that closed (GOAWAY, reset, idle) is replaced on the next
//! request; the server's `SETTINGS_MAX_CONCURRENT_STREAMS` bounds how many
//! requests share one.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use fabric::rt;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};

use crate::relay::Failed;
use crate::upstream::UpstreamTls;

/// The HTTP/2 connections of one virtual service to its servers.
#[derive(Default)]
pub struct H2Pool {
    conns: Mutex<BTreeMap<SocketAddr, SendRequest<Bytes>>>,
}

impl H2Pool {
    /// A sender on the connection to `server`, ready for one more stream:
    /// the shared connection, or a new one (connected within `connect`)
    /// when there is none or it has closed. Waiting for a free stream is
    /// bounded by `wait`.
    pub(crate) async fn ready(
        &self,
        server: SocketAddr,
        connect: Duration,
        wait: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<SendRequest<Bytes>, Failed> {
        let shared = self.lock().get(&server).cloned();
        if let Some(sender) = shared {
            match rt::timeout(wait, sender.ready()).await {
                Ok(Ok(sender)) => return Ok(sender),
                Ok(Err(_)) => {
                    self.lock().remove(&server);
                }
                Err(_) => return Err(Failed::Timeout),
            }
        }
        let stream = crate::upstream::connect(server, connect, tls)
            .await
            .map_err(Failed::Connect)?;
        let handshake = h2::client::Builder::new().handshake::<_, Bytes>(stream);
        let (sender, conn) = match rt::timeout(connect, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(Failed::Connect(io::Error::other(e))),
            Err(_) => {
                return Err(Failed::Connect(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP/2 handshake timed out",
                )))
            }
        };
        rt::spawn(async move {
            let _ = conn.await;
        });
        self.lock().insert(server, sender.clone());
        match rt::timeout(wait, sender.ready()).await {
            Ok(Ok(sender)) => Ok(sender),
            Ok(Err(e)) => Err(Failed::Broken(format!("http2: {e}"))),
            Err(_) => Err(Failed::Timeout),
        }
    }

    /// Close the connections to servers not in `keep` (new requests open new ones).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        self.lock().retain(|addr, _| keep(addr));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, SendRequest<Bytes>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request with the method, URI and headers of `parts`, to send again
/// (an HTTP/2 request is consumed by sending it).
pub(crate) fn request_like(parts: &http::request::Parts) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    req
}

/// Which side of a [`pipe`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PipeError {
    /// The sending side broke off or paused longer than allowed.
    Source,
    /// The receiving side reset the stream or stopped reading.
    Sink,
    /// More than the allowed bytes came.
    TooLarge,
}

/// Wait until `send` may take more data (the peer's window), at most `idle`.
pub(crate) async fn capacity(send: &mut SendStream<Bytes>, idle: Duration) -> Result<(), ()> {
    send.reserve_capacity(1);
    while send.capacity() == 0 {
        match rt::timeout(idle, poll_fn(|cx| send.poll_capacity(cx))).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Move a body, then its trailers, from one HTTP/2 stream to another: data
/// is taken from `src` only once `dst` has window for it, so at most one
/// frame per stream waits in memory. No pause may be longer than `idle`,
/// and no more than `max` bytes may come.
pub(crate) async fn pipe(
    src: &mut RecvStream,
    dst: &mut SendStream<Bytes>,
    idle: Duration,
    mut max: u64,
) -> Result<(), PipeError> {
    loop {
        capacity(dst, idle).await.map_err(|_| PipeError::Sink)?;
        match rt::timeout(idle, src.data()).await {
            Ok(Some(Ok(data))) => {
                let n = data.len();
                max = max.checked_sub(n as u64).ok_or(PipeError::TooLarge)?;
                dst.send_data(data, false).map_err(|_| PipeError::Sink)?;
                let _ = src.flow_control().release_capacity(n);
            }
            Ok(None) => break,
            Ok(Some(Err(_))) | Err(_) => return Err(PipeError::Source),
        }
    }
    match rt::timeout(idle, src.trailers()).await {
        Ok(Ok(Some(trailers))) => dst.send_trailers(trailers),
        Ok(Ok(None)) => dst.send_data(Bytes::new(), true),
        Ok(Err(_)) | Err(_) => return Err(PipeError::Source),
    }
    .map_err(|_| PipeError::Sink)
}
