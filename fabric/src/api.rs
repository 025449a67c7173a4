//! The Controller's REST API: JSON over HTTP/1.1, an axum `Router` served
//! by `fabric::rt`'s accept loop (so it runs in both worlds).
//!
//! Every node serves it; reads are answered from the node's state machine
//! (linearizable by default: a read index confirmed by the leader), writes go
//! through Raft and are forwarded to the leader. See `docs/api.md`.
//!
//! - `GET /api/v1/{kind}` lists the objects of a kind (`pools`,
//!   `virtual_services`, `se_groups`, `health_monitors`, `gslb_services`,
//!   `demo_origins`, `tenants`) the caller may see; for a singleton kind
//!   (`controller`, `dns`) it is the object. `POST` creates one (409 if the
//!   name is taken); `PUT /api/v1/{kind}/{name}` creates or replaces,
//!   `DELETE` removes. `If-Match: "N"` makes a write conditional on version
//!   N (412 otherwise), `If-None-Match: *` makes it create-only. Responses
//!   carry the object's version as `ETag`.
//! - `?consistency=local` reads this node's state without asking the
//!   leader; `x-fabric-stale-ms` says how old it may be.
//! - `GET /api/v1/cluster`, `/api/v1/ses`, `/api/v1/events` (`?since=MS`).
//! - Admin only: `GET/POST /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`,
//!   `GET /api/v1/backup`, `POST /api/v1/restore`.
//!
//! Authentication: `Authorization: Bearer SECRET`. Tokens have a role
//! (`admin`, `operator`, `read_only`) and a tenant. A caller with a tenant
//! sees only that tenant's objects; others' are as if absent. Bad input gets
//! a 4xx with a JSON `{"error": ..., "details": [...]}` and changes nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cluster::state::{
    is_list_kind, key_of, token_id, ApiToken, Backup, Role, Stored, ADMIN_TENANT,
};
use crate::cluster::{ClusterError, Command, Objects, Refusal};
use crate::controller::Controller;
use crate::pki::sha256_hex;
use crate::rt;

/// Largest request body (a whole backup fits).
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Most API connections served at once.
pub const MAX_API_CONNECTIONS: usize = 256;
/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Kinds only an admin may change (and a tenant never sees).
const ADMIN_KINDS: &[&str] = &["tenants", "controller", "dns"];

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id.
    pub id: String,
    /// Its role.
    pub role: Role,
    /// The tenant it is confined to (None: all).
    pub tenant: Option<String>,
}

impl Principal {
    fn sees(&self, s: &Stored) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == s.tenant)
    }

    fn may_write(&self, kind: &str) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Operator => !ADMIN_KINDS.contains(&kind),
            Role::ReadOnly => false,
        }
    }
}

/// An API error: a status and a JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    details: Vec<Value>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            details: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if !self.details.is_empty() {
            body["details"] = Value::Array(self.details);
        }
        let mut r = (self.status, axum::Json(body)).into_response();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        r
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> Self {
        let status = match &e {
            ClusterError::Refused(r) => return refusal(r, false),
            ClusterError::NoLeader | ClusterError::NoQuorum(_) | ClusterError::Unreachable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ClusterError::Unknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ClusterError::Invalid(_) => StatusCode::BAD_REQUEST,
            ClusterError::NotLeader(_) | ClusterError::Fatal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

/// The status of a refused write; `conditional` when the caller sent If-Match.
fn refusal(r: &Refusal, conditional: bool) -> ApiError {
    match r {
        Refusal::Conflict { current } => {
            let (status, what) = if conditional {
                (
                    StatusCode::PRECONDITION_FAILED,
                    "version mismatch (If-Match)",
                )
            } else {
                (StatusCode::CONFLICT, "already exists")
            };
            let mut e = ApiError::new(status, format!("{what}; nothing was written"));
            e.details.push(json!({ "current_version": current }));
            e
        }
        Refusal::NotFound => ApiError::new(StatusCode::NOT_FOUND, "no such object"),
        Refusal::StaleTerm { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{r}: the leader changed; nothing was written"),
        ),
        Refusal::OtherTenant => ApiError::new(
            StatusCode::CONFLICT,
            "the name is taken by an object of another tenant; nothing was written",
        ),
        Refusal::Invalid { errors } => {
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the change would make the desired state invalid; nothing was written",
            );
            e.details = errors
                .iter()
                .map(|(path, reason)| json!({ "path": path, "reason": reason }))
                .collect();
            e
        }
    }
}

type ApiResult = Result<Response, ApiError>;

/// The API's routes over `controller`.
pub fn router(controller: Controller) -> Router {
    Router::new()
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/ses", get(ses))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/placement", get(placement))
        .route("/api/v1/ses/{name}/drain", axum::routing::post(drain))
        .route("/api/v1/events", get(events))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/backup", get(backup))
        .route("/api/v1/restore", axum::routing::post(restore))
        .route(
            "/api/v1/{kind}",
            get(list_or_singleton)
                .post(create)
                .put(put_singleton)
                .delete(delete_singleton),
        )
        .route(
            "/api/v1/{kind}/{name}",
            get(read_one).put(put_one).delete(delete_one),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(controller)
}

/// Serve the API on `listener` until it fails.
pub async fn serve(controller: Controller, listener: rt::TcpListener) -> std::io::Result<()> {
    let router = router(controller);
    rt::accept_loop(listener, MAX_API_CONNECTIONS, move |stream, _peer| {
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(rt::Timer)
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

/// Bind `addr` and serve the API there (a task); returns the bound address.
pub async fn start(controller: Controller, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = rt::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    rt::spawn(async move {
        if let Err(e) = serve(controller, listener).await {
            tracing::error!(error = %e, "API listener failed");
        }
    });
    Ok(bound)
}

fn authenticate(c: &Controller, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let unauthorized = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why.to_string());
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing `Authorization: Bearer TOKEN`"))?;
    let secret = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer TOKEN`"))?;
    let sha = sha256_hex(secret.as_bytes());
    let token = c
        .node()
        .peek(|o| o.api_tokens.get(&sha).cloned())
        .ok_or_else(|| unauthorized("unknown or revoked token"))?;
    Ok(Principal {
        id: token_id(&sha).to_string(),
        role: token.role,
        tenant: token.tenant.filter(|_| token.role != Role::Admin),
    })
}

fn require_admin(p: &Principal) -> Result<(), ApiError> {
    if p.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only an admin token may do this",
        ))
    }
}

fn forbid_write(p: &Principal, kind: &str) -> Result<(), ApiError> {
    if p.may_write(kind) {
        Ok(())
    } else {
        let why = match p.role {
            Role::ReadOnly => "a read-only token cannot change anything".to_string(),
            _ => format!("only an admin may change `{kind}`"),
        };
        Err(ApiError::new(StatusCode::FORBIDDEN, why))
    }
}

/// The caller of a write on `kind`, if it may write there and `kind` is a
/// list kind (`list`) or a singleton (`!list`) as the route needs.
fn writer(
    c: &Controller,
    headers: &HeaderMap,
    kind: &str,
    list: bool,
) -> Result<Principal, ApiError> {
    let p = authenticate(c, headers)?;
    if check_kind(kind)? != list {
        let hint = if list {
            format!("`{kind}` is a single object: PUT or DELETE /api/v1/{kind}")
        } else {
            format!("`{kind}` is a list: POST /api/v1/{kind}, or PUT or DELETE /api/v1/{kind}/NAME")
        };
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, hint));
    }
    forbid_write(&p, kind)?;
    Ok(p)
}

fn check_kind(kind: &str) -> Result<bool, ApiError> {
    is_list_kind(kind)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no kind of object `{kind}`")))
}

#[derive(Debug, Default, Deserialize)]
struct ReadParams {
    consistency: Option<String>,
    tenant: Option<String>,
}

/// Read the objects as asked (linearizable unless `consistency=local`) and
/// the headers saying how fresh they are.
async fn read(c: &Controller, params: &ReadParams) -> Result<(Objects, HeaderMap), ApiError> {
    let view = match params.consistency.as_deref() {
        None | Some("linearizable") => c.node().read().await?,
        Some("local") => c.node().read_local(),
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("consistency must be `linearizable` or `local`, not `{other}`"),
            ))
        }
    };
    let mut h = HeaderMap::new();
    let kind = if view.linearizable {
        "linearizable"
    } else {
        "local"
    };
    h.insert("x-fabric-read", HeaderValue::from_static(kind));
    let stale = view
        .stale_ms
        .map_or("unknown".to_string(), |ms| ms.to_string());
    if let Ok(v) = HeaderValue::from_str(&stale) {
        h.insert("x-fabric-stale-ms", v);
    }
    Ok((view.objects, h))
}

#[derive(Serialize)]
struct ObjectView<'a> {
    kind: &'a str,
    name: &'a str,
    version: u64,
    tenant: &'a str,
    spec: std::borrow::Cow<'a, Value>,
}

/// What a private key reads as: keys are write-only.
pub const REDACTED: &str = "<redacted>";

fn view<'a>(kind: &'a str, name: &'a str, s: &'a Stored) -> ObjectView<'a> {
    let spec = if kind == "certificates" {
        let mut spec = s.body.clone();
        spec["key_pem"] = Value::String(REDACTED.into());
        std::borrow::Cow::Owned(spec)
    } else {
        std::borrow::Cow::Borrowed(&s.body)
    };
    ObjectView {
        kind,
        name,
        version: s.version,
        tenant: &s.tenant,
        spec,
    }
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header value")
}

fn one(kind: &str, name: &str, s: &Stored, mut headers: HeaderMap) -> Response {
    headers.insert(header::ETAG, etag(s.version));
    (headers, axum::Json(view(kind, name, s))).into_response()
}

async fn list_or_singleton(
    State(c): State<Controller>,
    Path(kind): Path<String>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    let list = check_kind(&kind)?;
    let (objects, h) = read(&c, &params).await?;
    let section = objects.objects.get(&kind);
    if !list {
        return match section.and_then(|s| s.get("")).filter(|s| p.sees(s)) {
            Some(s) => Ok(one(&kind, "", s, h)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no `{kind}` set"),
            )),
        };
    }
    let items: Vec<ObjectView> = section
        .into_iter()
        .flatten()
        .filter(|(_, s)| p.sees(s))
        .filter(|(_, s)| params.tenant.as_ref().is_none_or(|t| *t == s.tenant))
        .map(|(name, s)| view(&kind, name, s))
        .collect();
    let body = json!({ "kind": kind, "version": objects.version, "items": items });
    Ok((h, axum::Json(body)).into_response())
}

async fn read_one(
    State(c): State<Controller>,
    Path((kind, name)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    check_kind(&kind)?;
    let (objects, h) = read(&c, &params).await?;
    match objects.get(&kind, &name).filter(|s| p.sees(s)) {
        Some(s) => Ok(one(&kind, &name, s, h)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {kind} `{name}`"),
        )),
    }
}

/// The version a write is conditional on: `If-Match: "N"` (or N), or
/// `If-None-Match: *` (create-only, version 0).
fn condition(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let text = v.to_str().unwrap_or("").trim();
        let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        return text.parse::<u64>().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "If-Match must be a version as the ETag gives it, e.g. \"12\"",
            )
        });
    }
    match headers.get(header::IF_NONE_MATCH) {
        Some(v) if v == "*" => Ok(Some(0)),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "only `If-None-Match: *` (create only) is supported on writes",
        )),
        None => Ok(None),
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    }
    Ok(value)
}

/// The tenant a write by `p` stores the object under.
fn owner(
    c: &Controller,
    p: &Principal,
    kind: &str,
    name: &str,
    asked: Option<&String>,
) -> Result<String, ApiError> {
    if let Some(t) = &p.tenant {
        if asked.is_some_and(|a| a != t) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token acts in tenant `{t}` only"),
            ));
        }
        return Ok(t.clone());
    }
    if ADMIN_KINDS.contains(&kind) {
        return Ok(ADMIN_TENANT.into());
    }
    Ok(match asked {
        Some(t) => t.clone(),
        None => c
            .node()
            .peek(|o| o.get(kind, name).map(|s| s.tenant.clone()))
            .unwrap_or_else(|| ADMIN_TENANT.into()),
    })
}

async fn write_object(
    c: &Controller,
    p: &Principal,
    kind: &str,
    name: &str,
    body: Value,
    if_version: Option<u64>,
    tenant: Option<&String>,
) -> ApiResult {
    let tenant = owner(c, p, kind, name, tenant)?;
    let created = c.node().peek(|o| o.get(kind, name).is_none());
    let cmd = Command::Put {
        kind: kind.to_string(),
        name: name.to_string(),
        tenant: tenant.clone(),
        body: body.clone(),
        if_version,
    };
    let version = c.node().write(cmd).await.map_err(|e| match e {
        ClusterError::Refused(r) => refusal(&r, if_version.is_some_and(|v| v > 0)),
        e => e.into(),
    })?;
    let stored = Stored {
        version,
        tenant,
        body,
    };
    let mut h = HeaderMap::new();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    h.insert(header::ETAG, etag(version));
    Ok((status, h, axum::Json(view(kind, name, &stored))).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct WriteParams {
    tenant: Option<String>,
}

async fn create(
    State(c): State<Controller>,
    Path(kind): Path<String>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let p = writer(&c, &headers, &kind, true)?;
    let body = parse_body(&body)?;
    let name = key_of(&body)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the object needs a `name` (`fqdn` for GSLB services)",
            )
        })?
        .to_string();
    let tenant = params.tenant.as_ref();
    write_object(&c, &p, &kind, &name, body, Some(0), tenant).await
}

async fn put_one(
    State(c): State<Controller>,
    Path((kind, name)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let p = writer(&c, &headers, &kind, true)?;
    let if_version = condition(&headers)?;
    let body = parse_body(&body)?;
    let key = key_of(&body);
    if key != Some(name.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the object's name ({key:?}) must be the name in the path (`{name}`)"),
        ));
    }
    let tenant = params.tenant.as_ref();
    write_object(&c, &p, &kind, &name, body, if_version, tenant).await
}

async fn put_singleton(
    State(c): State<Controller>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let p = writer(&c, &headers, &kind, false)?;
    let if_version = condition(&headers)?;
    let body = parse_body(&body)?;
    write_object(&c, &p, &kind, "", body, if_version, None).await
}

async fn delete_object(
    c: &Controller,
    p: &Principal,
    kind: &str,
    name: &str,
    headers: &HeaderMap,
) -> ApiResult {
    let if_version = condition(headers)?;
    let cmd = Command::Delete {
        kind: kind.to_string(),
        name: name.to_string(),
        if_version,
        tenant: p.tenant.clone(),
    };
    match c.node().write(cmd).await {
        Ok(version) => Ok((
            StatusCode::OK,
            axum::Json(json!({ "deleted": name, "version": version })),
        )
            .into_response()),
        // Another tenant's object is, to this caller, absent.
        Err(ClusterError::Refused(Refusal::OtherTenant)) => Err(refusal(&Refusal::NotFound, false)),
        Err(ClusterError::Refused(r)) => Err(refusal(&r, if_version.is_some())),
        Err(e) => Err(e.into()),
    }
}

async fn delete_one(
    State(c): State<Controller>,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let p = writer(&c, &headers, &kind, true)?;
    delete_object(&c, &p, &kind, &name, &headers).await
}

async fn delete_singleton(
    State(c): State<Controller>,
    Path(kind): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let p = writer(&c, &headers, &kind, false)?;
    delete_object(&c, &p, &kind, "", &headers).await
}

async fn cluster(State(c): State<Controller>, headers: HeaderMap) -> ApiResult {
    authenticate(&c, &headers)?;
    Ok(axum::Json(c.node().status()).into_response())
}

async fn ses(State(c): State<Controller>, headers: HeaderMap) -> ApiResult {
    authenticate(&c, &headers)?;
    Ok(axum::Json(json!({ "node": c.node().id(), "items": c.ses() })).into_response())
}

/// Where the virtual services the caller may see run, what is short and
/// why, and how each elastic group's SEs are used (docs/placement.md).
async fn placement(State(c): State<Controller>, headers: HeaderMap) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    let desired = c.desired();
    let visible = |name: &str| {
        c.node()
            .peek(|o| o.get("virtual_services", name).is_some_and(|s| p.sees(s)))
    };
    let placement = &desired.placement;
    let virtual_services: std::collections::BTreeMap<_, _> = placement
        .virtual_services
        .iter()
        .filter(|(vs, _)| visible(vs))
        .collect();
    let problems: std::collections::BTreeMap<_, _> = placement
        .problems
        .iter()
        .filter(|(vs, _)| visible(vs))
        .collect();
    Ok(axum::Json(json!({
        "node": c.node().id(),
        "version": desired.placement_version,
        "virtual_services": virtual_services,
        "problems": problems,
        "groups": placement.groups,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    draining: bool,
}

/// Drain an SE (`{"draining": true}`) or stop draining it (`false`): its
/// virtual services move to other SEs, each place kept until its
/// connections end (docs/placement.md, "Draining"). Admin only.
async fn drain(
    State(c): State<Controller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    require_admin(&p)?;
    let body: DrainBody =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("body: {e} (expected {{\"draining\": true|false}})"),
                )
            })?;
    let known = c.ses().iter().any(|s| s.name == name)
        || c.node().peek(|o| o.se_certs.values().any(|n| *n == name));
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no SE named `{name}`"),
        ));
    }
    let version = c.set_draining(&name, body.draining).await?;
    Ok(
        axum::Json(json!({ "se": name, "draining": body.draining, "version": version }))
            .into_response(),
    )
}

/// p50, p90, p99 and p99.9 of a histogram in milliseconds (null when empty).
fn quantiles_ms(h: &crate::stats::Histogram) -> serde_json::Value {
    let q = |q: f64| h.quantile(q).map(|d| d.as_secs_f64() * 1000.0);
    json!({ "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "count": h.total() })
}

/// Traffic of the virtual services and pools the caller may see, summed
/// over the SEs connected to this node (their latest reports).
async fn stats(State(c): State<Controller>, headers: HeaderMap) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    let (sum, reporting) = c.stats();
    let visible = |kind: &str, name: &str| {
        c.node()
            .peek(|o| o.get(kind, name).is_some_and(|s| p.sees(s)))
    };
    let virtual_services: Vec<_> = sum
        .virtual_services
        .iter()
        .filter(|v| visible("virtual_services", &v.name))
        .map(|v| {
            let mut item = serde_json::to_value(v).unwrap_or_default();
            item["latency_ms"] = quantiles_ms(&v.latency);
            item
        })
        .collect();
    let pools: Vec<_> = sum
        .pools
        .iter()
        .filter(|pool| visible("pools", &pool.name))
        .map(|pool| {
            let servers: Vec<_> = pool
                .servers
                .iter()
                .map(|s| {
                    let mut item = serde_json::to_value(s).unwrap_or_default();
                    item["latency_ms"] = quantiles_ms(&s.latency);
                    item
                })
                .collect();
            json!({ "name": pool.name, "servers": servers })
        })
        .collect();
    Ok(axum::Json(json!({
        "node": c.node().id(),
        "ses_reporting": reporting,
        "latency_bucket_bounds_us": crate::stats::BUCKET_BOUNDS_US,
        "virtual_services": virtual_services,
        "pools": pools,
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
struct EventParams {
    /// Only events at or after this wall-clock time (ms since the epoch).
    since: Option<u64>,
}

async fn events(
    State(c): State<Controller>,
    Query(params): Query<EventParams>,
    headers: HeaderMap,
) -> ApiResult {
    authenticate(&c, &headers)?;
    let since = params.since.unwrap_or(0);
    let items: Vec<_> = c
        .events()
        .into_iter()
        .filter(|e| e.unix_ms >= since)
        .collect();
    Ok(axum::Json(json!({ "node": c.node().id(), "items": items })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default)]
    label: String,
    role: Role,
    #[serde(default)]
    tenant: Option<String>,
}

async fn create_token(State(c): State<Controller>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    require_admin(&p)?;
    let req: NewToken = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"role\": \"admin|operator|read_only\", \"tenant\": ..., \"label\": ...}}: {e}"),
        )
    })?;
    if req.role == Role::Operator && req.tenant.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "an operator token needs a `tenant`",
        ));
    }
    let (secret, id) = create_api_token(
        &c,
        ApiToken {
            label: req.label,
            role: req.role,
            tenant: req.tenant,
        },
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "id": id, "token": secret })),
    )
        .into_response())
}

/// Make a new API token through the leader: its secret (shown once) and id.
pub async fn create_api_token(
    c: &Controller,
    token: ApiToken,
) -> Result<(String, String), ClusterError> {
    let (secret, id, cmd) = Command::new_api_token(token);
    c.node().write(cmd).await?;
    Ok((secret, id))
}

async fn list_tokens(State(c): State<Controller>, headers: HeaderMap) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    require_admin(&p)?;
    let items: Vec<Value> = c.node().peek(|o| {
        o.api_tokens
            .iter()
            .map(|(sha, t)| json!({ "id": token_id(sha), "label": t.label, "role": t.role, "tenant": t.tenant }))
            .collect()
    });
    Ok(axum::Json(json!({ "items": items })).into_response())
}

async fn revoke_token(
    State(c): State<Controller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    require_admin(&p)?;
    c.node()
        .write(Command::RevokeApiToken { id: id.clone() })
        .await?;
    Ok(axum::Json(json!({ "revoked": id })).into_response())
}

async fn backup(State(c): State<Controller>, headers: HeaderMap) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    require_admin(&p)?;
    let view = c.node().read().await?;
    Ok(axum::Json(view.objects.backup()).into_response())
}

async fn restore(State(c): State<Controller>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let p = authenticate(&c, &headers)?;
    require_admin(&p)?;
    let backup: Backup =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("not a backup: {}: {}", e.path(), e.inner()),
                )
            })?;
    let version = c
        .node()
        .write(Command::Restore {
            backup: Box::new(backup),
        })
        .await?;
    Ok(axum::Json(json!({ "restored": true, "version": version })).into_response())
}
