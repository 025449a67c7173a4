//! The REST API on a real loopback socket: tokens and roles, tenants that
//! cannot see each other, If-Match, validation, backup and restore into a
//! fresh cluster. Every refused call is checked to have changed nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fabric::cluster::state::{ApiToken, Role};
use fabric::cluster::{ClusterNode, NodeAddr, NodeOptions};
use fabric::controller::Controller;
use fabric::model::Config;
use fabric::platform::{MemStorage, Storage};
use fabric::rt;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

struct Api {
    addr: SocketAddr,
    controller: Controller,
}

/// A one-node cluster holding the example config, and its API.
async fn cluster() -> Api {
    let listener = rt::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = NodeAddr {
        raft: listener.local_addr().unwrap().to_string(),
        api: String::new(),
    };
    let storage: Arc<dyn Storage> = Arc::new(MemStorage::new());
    let node = ClusterNode::start(NodeOptions::new(1, addr, storage), listener)
        .await
        .unwrap();
    node.bootstrap(Config::example()).await.unwrap();
    let controller = Controller::new(node);
    let addr = fabric::api::start(controller.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Api { addr, controller }
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Api {
    async fn token(&self, role: Role, tenant: Option<&str>) -> String {
        let t = ApiToken {
            label: "test".into(),
            role,
            tenant: tenant.map(String::from),
        };
        fabric::api::create_api_token(&self.controller, t)
            .await
            .unwrap()
            .0
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let stream = rt::connect(self.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        rt::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "fabric");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = Full::new(Bytes::from(body.unwrap_or("").to_string()));
        let resp = send.send_request(req.body(body).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A call with a token and no extra headers.
    async fn send(&self, method: &str, path: &str, token: &str, body: &str) -> Reply {
        self.call(method, path, Some(token), &[], Some(body)).await
    }

    /// A call with a token and one conditional header (If-Match, If-None-Match).
    async fn send_if(
        &self,
        method: &str,
        path: &str,
        token: &str,
        header: (&str, &str),
        body: &str,
    ) -> Reply {
        self.call(method, path, Some(token), &[header], Some(body))
            .await
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), &[], None).await
    }

    async fn version(&self) -> u64 {
        self.controller.desired().version
    }
}

fn names(r: &Reply) -> Vec<String> {
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

fn etag(r: &Reply) -> String {
    r.headers["etag"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn tokens_roles_and_tenants() {
    let api = cluster().await;
    let admin = api.token(Role::Admin, None).await;

    // No token, a malformed header, an unknown token: 401, nothing served.
    let r = api.call("GET", "/api/v1/pools", None, &[], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = api
        .call(
            "GET",
            "/api/v1/pools",
            None,
            &[("authorization", "Basic x")],
            None,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(api.get("/api/v1/pools", "nope").await.status, 401);

    // The admin sees the example's objects, read linearizably.
    let r = api.get("/api/v1/pools", &admin).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.headers["x-fabric-read"], "linearizable");
    let admin_pools = names(&r);
    assert!(!admin_pools.is_empty());
    let r = api.get("/api/v1/pools?consistency=local", &admin).await;
    assert_eq!(r.headers["x-fabric-read"], "local");
    assert!(r.headers.contains_key("x-fabric-stale-ms"));
    assert_eq!(
        api.get("/api/v1/pools?consistency=eventual", &admin)
            .await
            .status,
        400
    );

    // A tenant, and tokens confined to it.
    let r = api
        .send("POST", "/api/v1/tenants", &admin, r#"{"name":"blue"}"#)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let blue = api.token(Role::Operator, Some("blue")).await;
    let blue_ro = api.token(Role::ReadOnly, Some("blue")).await;
    let all_ro = api.token(Role::ReadOnly, None).await;

    // The operator creates a pool: it belongs to blue.
    let pool = r#"{"name":"blue-web","servers":["127.0.0.1:9101"]}"#;
    let r = api.send("POST", "/api/v1/pools", &blue, pool).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["tenant"], "blue");
    let tag = etag(&r);

    // A tenant uses the admin's shared objects, not another tenant's.
    let r = api
        .send("POST", "/api/v1/tenants", &admin, r#"{"name":"red"}"#)
        .await;
    assert_eq!(r.status, 201);
    let red_pool = r#"{"name":"red-web","servers":["127.0.0.1:9301"]}"#;
    let r = api
        .send("POST", "/api/v1/pools?tenant=red", &admin, red_pool)
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let vs = |pool: &str| {
        format!(r#"{{"name":"blue-vs","vip":"127.0.0.30","port":80,"pool":"{pool}"}}"#)
    };
    let r = api
        .send("POST", "/api/v1/virtual_services", &blue, &vs("red-web"))
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.body["details"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("another tenant"));
    let r = api
        .send("POST", "/api/v1/virtual_services", &blue, &vs("blue-web"))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = api
        .send("DELETE", "/api/v1/virtual_services/blue-vs", &blue, "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for path in ["/api/v1/pools/red-web", "/api/v1/tenants/red"] {
        let r = api.send("DELETE", path, &admin, "").await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }

    // Each sees what it may: blue only its own; the admin and a global reader everything.
    assert_eq!(names(&api.get("/api/v1/pools", &blue).await), ["blue-web"]);
    assert_eq!(
        names(&api.get("/api/v1/pools", &blue_ro).await),
        ["blue-web"]
    );
    assert_eq!(
        names(&api.get("/api/v1/pools", &all_ro).await).len(),
        admin_pools.len() + 1
    );
    assert_eq!(
        names(&api.get("/api/v1/tenants", &blue).await),
        Vec::<String>::new()
    );
    let other = &admin_pools[0];
    let r = api.get(&format!("/api/v1/pools/{other}"), &blue).await;
    assert_eq!(r.status, 404, "another tenant's object is absent to blue");

    // Writes blue may not make: 403/404/409, and the version does not move.
    let before = api.version().await;
    let refused = [
        (
            "POST",
            "/api/v1/tenants".to_string(),
            &blue,
            r#"{"name":"red"}"#,
            403,
        ),
        ("POST", "/api/v1/pools".to_string(), &blue_ro, pool, 403),
        (
            "POST",
            "/api/v1/pools?tenant=admin".to_string(),
            &blue,
            pool,
            403,
        ),
        ("DELETE", format!("/api/v1/pools/{other}"), &blue, "", 404),
        ("GET", "/api/v1/tokens".to_string(), &blue, "", 403),
        ("GET", "/api/v1/backup".to_string(), &all_ro, "", 403),
    ];
    for (method, path, token, body, want) in refused {
        let r = api.call(method, &path, Some(token), &[], Some(body)).await;
        assert_eq!(r.status, want, "{method} {path}: {:?}", r.body);
    }
    let body = format!(r#"{{"name":"{other}","servers":["127.0.0.1:9102"]}}"#);
    let r = api
        .send("PUT", &format!("/api/v1/pools/{other}"), &blue, &body)
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(api.version().await, before);

    // A token that is revoked stops working at once.
    let r = api.get("/api/v1/tokens", &admin).await;
    let ids: Vec<String> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);
    let sha = fabric::pki::sha256_hex(blue_ro.as_bytes());
    let id = fabric::cluster::state::token_id(&sha);
    let r = api
        .send("DELETE", &format!("/api/v1/tokens/{id}"), &admin, "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(api.get("/api/v1/pools", &blue_ro).await.status, 401);

    // A tenant that still owns objects cannot be removed.
    let r = api.send("DELETE", "/api/v1/tenants/blue", &admin, "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);

    // Optimistic concurrency: a stale If-Match is 412; the current one wins.
    let update = r#"{"name":"blue-web","servers":["127.0.0.1:9101","127.0.0.1:9103"]}"#;
    let put_blue = |header| api.send_if("PUT", "/api/v1/pools/blue-web", &blue, header, update);
    let r = put_blue(("if-match", "\"1\"")).await;
    assert_eq!(r.status, 412, "{:?}", r.body);
    let r = put_blue(("if-match", &tag)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_ne!(etag(&r), tag);
    let r = put_blue(("if-match", &tag)).await;
    assert_eq!(r.status, 412, "the old version no longer matches");
    let r = put_blue(("if-none-match", "*")).await;
    assert_eq!(r.status, 409, "create-only on an existing object");

    // Delete with the current version; then the tenant can go.
    let current = etag(&api.get("/api/v1/pools/blue-web", &blue).await);
    let r = api
        .send_if(
            "DELETE",
            "/api/v1/pools/blue-web",
            &blue,
            ("if-match", &current),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = api.send("DELETE", "/api/v1/tenants/blue", &admin, "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Tokens of a removed tenant see nothing.
    assert_eq!(
        names(&api.get("/api/v1/pools", &blue).await),
        Vec::<String>::new()
    );

    // Events say what happened.
    let r = api.get("/api/v1/events", &all_ro).await;
    let kinds: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"leader_change"), "{kinds:?}");
    assert!(kinds.contains(&"desired_state_changed"), "{kinds:?}");
}

/// method, path, headers, body, expected status.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, u16);

#[tokio::test]
async fn private_keys_are_write_only() {
    let api = cluster().await;
    let admin = api.token(Role::Admin, None).await;
    let cert = fabric::pki::self_signed("app-cert", &["app.fabric.test"]).unwrap();
    let body = serde_json::to_value(&cert).unwrap();
    let r = api
        .send("POST", "/api/v1/certificates", &admin, &body.to_string())
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["spec"]["key_pem"], fabric::api::REDACTED);
    let r = api.get("/api/v1/certificates/app-cert", &admin).await;
    assert_eq!(r.body["spec"]["key_pem"], fabric::api::REDACTED);
    assert_eq!(r.body["spec"]["cert_pem"], cert.cert_pem);
    let listed = api.get("/api/v1/certificates", &admin).await;
    assert!(!listed.body.to_string().contains("PRIVATE KEY"));
    // A virtual service offers it by name.
    let vs = api.get("/api/v1/virtual_services/app", &admin).await;
    let mut spec = vs.body["spec"].clone();
    spec["tls"] = serde_json::json!({"certificates": ["app-cert"]});
    let r = api
        .send(
            "PUT",
            "/api/v1/virtual_services/app",
            &admin,
            &spec.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let config = api.controller.desired().config.clone().unwrap();
    let se = fabric::proto::SeConfig::for_group(&config, "default", 1);
    let offered = se.virtual_services[0].tls.as_ref().unwrap();
    assert_eq!(offered[0].key_pem, cert.key_pem, "the SE gets the key");
}

#[tokio::test]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let api = cluster().await;
    let admin = api.token(Role::Admin, None).await;
    let before = api.version().await;
    let cases: &[Case] = &[
        ("POST", "/api/v1/pools", &[], "{not json", 400),
        ("POST", "/api/v1/pools", &[], "[1,2]", 400),
        ("POST", "/api/v1/pools", &[], r#"{"servers":[]}"#, 400),
        (
            "POST",
            "/api/v1/pools",
            &[],
            r#"{"name":"p","servers":"nope"}"#,
            422,
        ),
        (
            "POST",
            "/api/v1/pools",
            &[],
            r#"{"name":"p","servers":[],"bogus":1}"#,
            422,
        ),
        ("POST", "/api/v1/widgets", &[], r#"{"name":"w"}"#, 404),
        (
            "PUT",
            "/api/v1/pools/a",
            &[],
            r#"{"name":"b","servers":[]}"#,
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/a",
            &[("if-match", "abc")],
            r#"{"name":"a","servers":[]}"#,
            400,
        ),
        (
            "PUT",
            "/api/v1/pools/a",
            &[("if-none-match", "\"3\"")],
            r#"{"name":"a","servers":[]}"#,
            400,
        ),
        ("POST", "/api/v1/dns", &[], "{}", 405),
        ("DELETE", "/api/v1/pools/nope", &[], "", 404),
        ("POST", "/api/v1/tokens", &[], r#"{"role":"god"}"#, 400),
        ("POST", "/api/v1/tokens", &[], r#"{"role":"operator"}"#, 400),
        (
            "POST",
            "/api/v1/tokens",
            &[],
            r#"{"role":"operator","tenant":"ghost"}"#,
            422,
        ),
        ("POST", "/api/v1/restore", &[], r#"{"format":"x"}"#, 400),
        ("GET", "/api/v2/anything", &[], "", 404),
    ];
    for (method, path, headers, body, want) in cases {
        let r = api
            .call(method, path, Some(&admin), headers, Some(body))
            .await;
        assert_eq!(r.status, *want, "{method} {path} {body}: {:?}", r.body);
        assert!(r.body["error"].is_string(), "{method} {path}: {:?}", r.body);
    }
    // Validation errors name the field.
    let r = api
        .send(
            "POST",
            "/api/v1/pools",
            &admin,
            r#"{"name":"p","servers":"nope"}"#,
        )
        .await;
    assert!(
        r.body["details"][0]["path"]
            .as_str()
            .unwrap()
            .contains("servers"),
        "{:?}",
        r.body
    );
    // A body over the limit is 413.
    let big = format!(
        r#"{{"name":"{}"}}"#,
        "x".repeat(fabric::api::MAX_BODY_BYTES + 1)
    );
    let r = api.send("POST", "/api/v1/pools", &admin, &big).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        api.version().await,
        before,
        "a refused call changed the state"
    );
}

#[tokio::test]
async fn a_backup_restored_into_a_fresh_cluster_serves_the_same_virtual_services() {
    let api = cluster().await;
    let admin = api.token(Role::Admin, None).await;
    let r = api
        .send("POST", "/api/v1/tenants", &admin, r#"{"name":"green"}"#)
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .send(
            "POST",
            "/api/v1/pools?tenant=green",
            &admin,
            r#"{"name":"green-web","servers":["127.0.0.1:9201"]}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let backup = api.get("/api/v1/backup", &admin).await;
    assert_eq!(backup.status, 200);
    assert_eq!(backup.body["format"], "fabric-backup/1");
    let backup_version = backup.body["version"].as_u64().unwrap();

    let fresh = cluster().await;
    let fresh_admin = fresh.token(Role::Admin, None).await;
    let r = fresh
        .send(
            "POST",
            "/api/v1/restore",
            &fresh_admin,
            &backup.body.to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["version"].as_u64().unwrap() > backup_version);
    let want = api.controller.desired().config.clone().unwrap();
    let got = fresh.controller.desired().config.clone().unwrap();
    assert_eq!(got.virtual_services, want.virtual_services);
    assert_eq!(got.pools, want.pools);
    // Owners and tokens came along: the old admin token works on the new cluster.
    let r = fresh.get("/api/v1/pools/green-web", &admin).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["tenant"], "green");
}
