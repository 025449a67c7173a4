//! A small HTTP origin server built into the binary, so examples and drills
//! need nothing else. It answers every path with its name; `/slow/MS`
//! answers after MS milliseconds. [`serve_udp`] is its UDP twin: every
//! datagram comes back prefixed with the origin's name.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use fabric::rt;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Header naming the origin that produced a response.
pub const ORIGIN_HEADER: &str = "x-fabric-origin";

/// Serve `hello from NAME` on every request until the listener fails.
pub async fn serve(name: String, listener: rt::TcpListener) -> std::io::Result<()> {
    let name: std::sync::Arc<str> = name.into();
    rt::accept_loop(listener, 4096, move |stream, _peer| {
        let name = name.clone();
        async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    // `/slow/MS`: answer after MS milliseconds (at most a
                    // minute), a slow server for drills and tests.
                    if let Some(ms) = req.uri().path().strip_prefix("/slow/") {
                        let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
                        rt::sleep(Duration::from_millis(ms)).await;
                    }
                    Ok::<_, Infallible>(respond(&name, &req))
                }
            });
            let _ = http1::Builder::new()
                .timer(rt::Timer)
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

fn respond<B>(name: &str, req: &Request<B>) -> Response<Full<Bytes>> {
    let body = if req.uri().path() == "/health" {
        "ok\n".to_string()
    } else {
        format!("hello from {name}\n")
    };
    Response::builder()
        .header(ORIGIN_HEADER, name)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Answer every datagram on `socket` with `NAME: `, the datagram, and
/// ` <- SENDER` (the address it came from: which SE relayed it), until the
/// socket fails (a UDP origin for L4 tests and drills).
pub async fn serve_udp(name: String, socket: rt::UdpSocket) -> std::io::Result<()> {
    use std::io::Write;
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(2048 + name.len() + 64);
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        out.clear();
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[..n]);
        let _ = write!(out, " <- {from}");
        // A reply that cannot go out is the client's loss, not the origin's.
        let _ = socket.send_to(&out, from).await;
    }
}
