//! The DNS node's read-only HTTP API (`dns.api_listen`): explain, member
//! health, health changes and counters, as JSON.
//!
//! - `GET /api/v1/dns/explain?name=N[&type=A][&client=ADDR][&ecs=NET]`
//! - `GET /api/v1/dns/health`: every GSLB member with its verdict and sources
//! - `GET /api/v1/dns/changes`: the last health changes
//! - `GET /api/v1/dns/metrics`: queries, answers per member, decisions by rule
//! - `GET /api/v1/dns/state`: config, serial and own probe reports, which the
//!   other sites' DNS servers poll (`fabric dns --peer`)
//!
//! Bad parameters get 400 with the reason.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fabric::rt;
use ipnet::IpNet;
use serde::Deserialize;

use crate::node::DnsNode;

/// Open API connections at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainParams {
    name: String,
    #[serde(rename = "type", default = "default_type")]
    qtype: String,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    ecs: Option<String>,
}

fn default_type() -> String {
    "A".into()
}

fn bad(reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": reason })),
    )
        .into_response()
}

async fn explain(
    State(node): State<DnsNode>,
    params: Result<Query<ExplainParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return bad(e.body_text()),
    };
    let client = match p.client.as_deref().map(str::parse::<IpAddr>).transpose() {
        Ok(c) => c.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        Err(_) => {
            return bad(format!(
                "client: `{}` is not an IP address",
                p.client.unwrap_or_default()
            ))
        }
    };
    let ecs = match p.ecs.as_deref().map(parse_net).transpose() {
        Ok(e) => e,
        Err(e) => return bad(format!("ecs: {e}")),
    };
    match node.explain(&p.name, &p.qtype, client, ecs) {
        Ok(x) => Json(x).into_response(),
        Err(e) => bad(e),
    }
}

/// A network (`10.1.2.0/24`) or a host address (as /32 or /128).
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a network (10.1.2.0/24) or an address"))
}

async fn health(State(node): State<DnsNode>) -> Response {
    Json(node.health_report()).into_response()
}

async fn changes(State(node): State<DnsNode>) -> Response {
    Json(node.changes()).into_response()
}

async fn state(State(node): State<DnsNode>) -> Response {
    Json(node.state()).into_response()
}

async fn metrics(State(node): State<DnsNode>) -> Response {
    Json(node.metrics()).into_response()
}

/// The routes over `node`.
pub fn router(node: DnsNode) -> Router {
    Router::new()
        .route("/api/v1/dns/explain", get(explain))
        .route("/api/v1/dns/health", get(health))
        .route("/api/v1/dns/changes", get(changes))
        .route("/api/v1/dns/metrics", get(metrics))
        .route("/api/v1/dns/state", get(state))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "error": "no such endpoint" })),
            )
        })
        .with_state(node)
}

/// Bind `addr` and serve the API (a task); the bound address.
pub async fn start(node: DnsNode, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = rt::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let router = router(node);
    rt::spawn(async move {
        let served = rt::accept_loop(listener, MAX_CONNECTIONS, move |stream, _peer| {
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(rt::Timer)
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .max_buf_size(16 * 1024)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "DNS API listener failed");
        }
    });
    Ok(bound)
}
