//! Connections from the SE to servers: plain TCP, or TLS when the pool says
//! so (`pools[].tls`), opened within a time limit that covers the handshake;
//! and UDP sockets toward them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fabric::model::PoolTls;
use fabric::rt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How to speak TLS to a pool's servers, built once per config.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<rustls::ClientConfig>,
    name: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// The settings for `tls`, offering `alpn` (none for L4).
    pub fn new(tls: &PoolTls, alpn: &[&[u8]]) -> Result<Self, String> {
        let config = fabric::pki::upstream_client_config(tls, alpn).map_err(|e| e.to_string())?;
        let name = match &tls.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Self { config, name })
    }
}

/// A connection to a server.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(rt::TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<rt::TcpStream>>),
}

/// A UDP socket on an ephemeral port of the address family of `server`,
/// to send it datagrams from.
pub async fn udp_socket_toward(server: SocketAddr) -> io::Result<rt::UdpSocket> {
    let local = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    rt::UdpSocket::bind(local).await
}

/// Connect to `server` within `limit` (TCP, and the TLS handshake if `tls`).
pub async fn connect(
    server: SocketAddr,
    limit: Duration,
    tls: Option<&UpstreamTls>,
) -> io::Result<Stream> {
    let open = async {
        let tcp = rt::connect(server).await?;
        let Some(tls) = tls else {
            return Ok(Stream::Plain(tcp));
        };
        let name = tls
            .name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(server.ip().into()));
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("TLS: {e}")))?;
        Ok(Stream::Tls(Box::new(stream)))
    };
    rt::timeout(limit, open)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
