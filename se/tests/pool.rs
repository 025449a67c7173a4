//! Connection reuse to servers on loopback: keep-alive connections are
//! pooled and reused, a server that closes its connections (at once, or
//! after idling) costs no failed request, and the pool stays bounded.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::model::Algorithm;
use fabric::rt;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use se::lb::ServerSet;
use se::proxy::{VirtualService, MAX_IDLE_PER_SERVER};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A server that counts the connections it accepts; with `close`, it asks
/// for each connection to be closed after one response; with `idle_close`,
/// it closes a connection that idles that long.
async fn counting_server(
    close: bool,
    idle_close: Option<Duration>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    rt::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            rt::spawn(async move {
                let service = service_fn(move |_req| async move {
                    let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok\n")));
                    if close {
                        resp.headers_mut()
                            .insert("connection", http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(resp)
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(rt::Timer).keep_alive(!close);
                if let Some(idle) = idle_close {
                    builder.header_read_timeout(idle);
                }
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A virtual service over `server` on a loopback port of its own.
async fn proxy_to(server: SocketAddr) -> (SocketAddr, Arc<VirtualService>) {
    let listener = rt::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let vs = Arc::new(VirtualService::new(
        "pooled".into(),
        "se-pool".into(),
        ServerSet::standalone(Algorithm::RoundRobin, &[server]),
    ));
    let for_loop = vs.clone();
    rt::spawn(rt::accept_loop(listener, 64, move |stream, peer| {
        se::proxy::serve_connection(for_loop.clone(), stream, peer)
    }));
    (addr, vs)
}

async fn get(vip: SocketAddr) -> u16 {
    se::proxy::get(vip, "pooled", "/")
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (server, accepted) = counting_server(false, None).await;
    let (vip, vs) = proxy_to(server).await;
    for _ in 0..20 {
        assert_eq!(get(vip).await, 200);
        // The connection goes back to the pool once its response is read.
        rt::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "20 requests, one connection"
    );
    assert_eq!(vs.conn_pool().idle(), 1);

    // A POST is not idempotent: it never rides a reused connection (it
    // could not be sent again if that one had been closed under us).
    let post = hyper::Request::post("/")
        .header("host", "pooled")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(se::proxy::fetch(vip, post).await.unwrap().status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "the POST got its own");
    rt::sleep(Duration::from_millis(5)).await;
    assert_eq!(get(vip).await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "and gave it back");

    // Concurrent requests need more connections; the pool keeps at most its bound.
    let burst = (0..MAX_IDLE_PER_SERVER + 8).map(|_| get(vip));
    let statuses = futures_join_all(burst).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    rt::sleep(Duration::from_millis(50)).await;
    assert!(vs.conn_pool().idle() <= MAX_IDLE_PER_SERVER);
}

#[tokio::test]
async fn servers_that_close_connections_cost_no_failed_request() {
    // Closes after every response: nothing is pooled, every request works.
    let (server, accepted) = counting_server(true, None).await;
    let (vip, vs) = proxy_to(server).await;
    for _ in 0..10 {
        assert_eq!(get(vip).await, 200);
        rt::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
    assert_eq!(vs.conn_pool().idle(), 0);

    // Closes connections that idle 100 ms: a request after that gets a new one.
    let (server, accepted) = counting_server(false, Some(Duration::from_millis(100))).await;
    let (vip, _) = proxy_to(server).await;
    for _ in 0..5 {
        assert_eq!(get(vip).await, 200);
        rt::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

/// Run futures concurrently on this runtime and collect their outputs.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(rt::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
