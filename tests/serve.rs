//! The decision service over real sockets: `/v1/check`, `/auth/{policy}`
//! as a gateway calls it, and what a hostile caller sends.
#![cfg(feature = "serve")]

use ratesync::http::{DecisionServer, DecisionService, ServeLimits};
use ratesync::{Config, Registry};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const POLICIES: &str = "[policies.api]\nkey = \"api_key\"\nwindows = [{ window = \"1m\", limit = 2, name = \"minute\" }]\ndeny = [\"leaked\"]\n\
[policies.per_ip]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 1, name = \"minute\" }]\n\
[policies.per_route]\nkey = \"route\"\nwindows = [{ window = \"1m\", limit = 1, name = \"minute\" }]\n";

async fn service(http: &str) -> DecisionServer {
    let config = Config::from_toml_str(&format!("{POLICIES}{http}")).expect("valid config");
    let http = config.http.clone().unwrap_or_default();
    let registry = Registry::from_config(config).await.expect("registry");
    serve(registry, &http).await
}

/// The decision service of `registry` on a free loopback port.
async fn serve(registry: Registry, http: &ratesync::config::http::HttpConfig) -> DecisionServer {
    DecisionService::new(registry, http)
        .expect("valid [http]")
        .serve("127.0.0.1:0".parse().unwrap(), ServeLimits::default())
        .await
        .expect("listens")
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends `head` (request line and headers, without the final blank line).
async fn send(server: &DecisionServer, head: &str) -> Answer {
    let mut s = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

#[tokio::test]
async fn check_answers_the_decision_as_json_with_its_status_and_headers() {
    let s = service("").await;
    let ok = send(&s, "GET /v1/check?policy=api&key=k1 HTTP/1.1").await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.headers["content-type"], "application/json");
    assert_eq!(ok.headers["ratelimit"], "\"minute\";r=1;t=60");
    let d = ok.json();
    assert_eq!(
        (d["allowed"].as_bool(), d["action"].as_str()),
        (Some(true), Some("allow"))
    );
    assert_eq!(d["windows"][0]["window"], 60.0);
    send(
        &s,
        "POST /v1/check?policy=api&key=k1 HTTP/1.1\r\nContent-Length: 0",
    )
    .await;
    let refused = send(&s, "GET /v1/check?policy=api&key=k1 HTTP/1.1").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["retry-after"], "60");
    let d = refused.json();
    assert_eq!(d["action"], "throttle");
    assert!(d["retry_after"].as_f64().unwrap() > 59.0, "{d}");
    // A cost counts in full; the deny list answers 403.
    let heavy = send(&s, "GET /v1/check?policy=api&key=k2&cost=3 HTTP/1.1").await;
    assert_eq!(heavy.status, 429, "a cost above the limit never fits");
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k2&cost=2 HTTP/1.1")
            .await
            .status,
        200
    );
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=leaked HTTP/1.1")
            .await
            .status,
        403
    );
    // Keys are percent-decoded: `k%201` is the key `k 1`.
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k%201 HTTP/1.1")
            .await
            .status,
        200
    );
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k+1 HTTP/1.1")
            .await
            .status,
        200
    );
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k%201 HTTP/1.1")
            .await
            .status,
        429
    );
    assert_eq!(send(&s, "GET /healthz HTTP/1.1").await.status, 200);
}

#[tokio::test]
async fn what_the_service_cannot_read_is_named_and_never_counted() {
    let s = service("").await;
    for (request, status, names) in [
        ("GET /v1/check?key=k HTTP/1.1", 400, "policy=NAME"),
        (
            "GET /v1/check?policy=nope&key=k HTTP/1.1",
            404,
            "no policy `nope`",
        ),
        ("GET /v1/check?policy=api HTTP/1.1", 400, "key=K"),
        (
            "GET /v1/check?policy=api&key=k&cost=0 HTTP/1.1",
            400,
            "`cost`",
        ),
        (
            "GET /v1/check?policy=api&key=k&cost=-1 HTTP/1.1",
            400,
            "`cost`",
        ),
        (
            "GET /v1/check?policy=api&key=k&key=other HTTP/1.1",
            400,
            "`key` is given twice",
        ),
        ("GET /v1/check?policy=api&key=%ff HTTP/1.1", 400, "UTF-8"),
        ("GET /v1/check?policy=api&key=%4 HTTP/1.1", 400, "UTF-8"),
        (
            "DELETE /v1/check?policy=api&key=k HTTP/1.1",
            405,
            "GET or POST",
        ),
        ("GET /auth/api?throttle_status=200 HTTP/1.1", 400, "4xx"),
        ("GET /nowhere HTTP/1.1", 404, "/v1/check"),
    ] {
        let a = send(&s, request).await;
        assert_eq!(a.status, status, "{request}: {}", a.body);
        assert_eq!(a.headers["content-type"], "application/problem+json");
        assert!(a.body.contains(names), "{request}: {}", a.body);
    }
    // None of them took from `k`'s window.
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k HTTP/1.1")
            .await
            .status,
        200
    );
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k HTTP/1.1")
            .await
            .status,
        200
    );
    // A key of any bytes and a long one are keys like any other.
    let long = "k".repeat(4000);
    for key in ["%00%01%02", "%E2%9C%93%20%7B%7D", long.as_str()] {
        let q = format!("GET /v1/check?policy=api&key={key} HTTP/1.1");
        assert_eq!(send(&s, &q).await.status, 200, "{key}");
        assert_eq!(send(&s, &q).await.status, 200, "{key}");
        assert_eq!(send(&s, &q).await.status, 429, "{key}");
    }
}

#[tokio::test]
async fn auth_keys_the_forwarded_client_only_behind_a_trusted_proxy() {
    // Nobody trusted: the forwarded-for header is the client's own words.
    let untrusting = service("").await;
    let from = |addr: &str| format!("GET /auth/per_ip HTTP/1.1\r\nX-Forwarded-For: {addr}");
    assert_eq!(send(&untrusting, &from("203.0.113.1")).await.status, 200);
    let spoofed = send(&untrusting, &from("203.0.113.2")).await;
    assert_eq!(spoofed.status, 429, "a new forwarded-for is no new client");
    assert_eq!(spoofed.headers["retry-after"], "60");
    // The gateway at 127.0.0.1 trusted: each forwarded client is itself.
    let trusting = service("[http]\ntrusted_proxies = [\"127.0.0.1\"]\n").await;
    assert_eq!(send(&trusting, &from("203.0.113.1")).await.status, 200);
    assert_eq!(send(&trusting, &from("203.0.113.2")).await.status, 200);
    let again = send(&trusting, &from("6.6.6.6, 203.0.113.1")).await;
    assert_eq!(again.status, 429, "the leftmost hop is never trusted");
    assert_eq!(again.headers["content-type"], "application/problem+json");
    // nginx takes 401 for a refusal it can turn into a 429 of its own.
    let nginx = send(
        &trusting,
        "GET /auth/per_ip?throttle_status=401 HTTP/1.1\r\nX-Forwarded-For: 203.0.113.1",
    )
    .await;
    assert_eq!(nginx.status, 401);
    assert_eq!(nginx.headers["retry-after"], "60");
}

#[tokio::test]
async fn auth_keys_routes_by_the_original_uri_and_reads_the_api_key_header() {
    let s = service("[http]\napi_key_header = \"X-Api-Key\"\n").await;
    let at = |uri: &str| format!("GET /auth/per_route HTTP/1.1\r\nX-Original-URI: {uri}");
    assert_eq!(send(&s, &at("/a?x=1")).await.status, 200);
    assert_eq!(
        send(&s, &at("/a?x=2")).await.status,
        429,
        "the query is no route"
    );
    assert_eq!(send(&s, &at("/b")).await.status, 200);
    let forwarded = "GET /auth/per_route HTTP/1.1\r\nX-Forwarded-Uri: /c";
    assert_eq!(send(&s, forwarded).await.status, 200);
    let key = |k: &str| format!("GET /auth/api HTTP/1.1\r\nX-Api-Key: {k}");
    let ok = send(&s, &key("k9")).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, ""));
    assert_eq!(ok.headers["ratelimit"], "\"minute\";r=1;t=60");
    assert_eq!(send(&s, &key("leaked")).await.status, 403);
}

const TOKEN: &str = "test-admin-token-0123456789";

#[tokio::test]
async fn the_admin_api_needs_its_token() {
    let off = service("").await;
    let a = send(&off, "GET /v1/blocks?policy=api HTTP/1.1").await;
    assert_eq!(a.status, 403);
    assert!(a.body.contains("http.admin_token"), "{}", a.body);
    let s = service(&format!("[http]\nadmin_token = \"{TOKEN}\"\n")).await;
    for auth in [
        "",
        "Authorization: Bearer wrong-token-0123456789\r\n",
        "Authorization: Bearer test-admin-token-012345678\r\n",
        "Authorization: test-admin-token-0123456789\r\n",
        "Authorization: Basic dGVzdDp0ZXN0\r\n",
    ] {
        for path in [
            "/v1/blocks?policy=api",
            "/v1/lists/deny?policy=api",
            "/v1/reload",
        ] {
            let a = send(&s, format!("GET {path} HTTP/1.1\r\n{auth}").trim_end()).await;
            assert_eq!(a.status, 401, "{path} with {auth:?}: {}", a.body);
            assert_eq!(a.headers["www-authenticate"], "Bearer");
            assert!(!a.body.contains(TOKEN));
        }
    }
}

#[tokio::test]
async fn bans_and_lists_are_managed_over_the_admin_api() {
    let s = service(&format!("[http]\nadmin_token = \"{TOKEN}\"\n")).await;
    let admin = |line: &str| format!("{line} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}");
    let banned = send(
        &s,
        &admin("POST /v1/blocks?policy=api&key=mallory&duration=15m&reason=abuse+report"),
    )
    .await;
    assert_eq!(banned.status, 200, "{}", banned.body);
    assert_eq!(banned.json()["a_ban_held"], false);
    let check = |key: &str| format!("GET /v1/check?policy=api&key={key} HTTP/1.1");
    let refused = send(&s, &check("mallory")).await;
    assert_eq!(
        (refused.status, refused.json()["action"].as_str()),
        (429, Some("block"))
    );
    let listed = send(&s, &admin("GET /v1/blocks?policy=api")).await.json();
    assert_eq!(listed[0]["key"], "api.mallory");
    assert_eq!(listed[0]["reason"], "abuse report");
    assert!(listed[0]["left"].as_f64().unwrap() > 899.0, "{listed}");
    let lifted = send(&s, &admin("DELETE /v1/blocks?policy=api&key=mallory")).await;
    assert_eq!(lifted.json()["lifted"], true);
    assert_eq!(send(&s, &check("mallory")).await.status, 200);
    // Lists: a deny entry holds at once on this host.
    let added = send(
        &s,
        &admin("POST /v1/lists/deny?policy=api&entry=bad-key&ttl=1h"),
    )
    .await;
    assert_eq!(added.json()["changed"], true, "{}", added.body);
    assert_eq!(send(&s, &check("bad-key")).await.status, 403);
    let entries = send(&s, &admin("GET /v1/lists/deny?policy=api"))
        .await
        .json();
    assert_eq!(entries[0]["entry"], "bad-key");
    assert!(entries[0]["left"].as_f64().unwrap() > 3599.0);
    let removed = send(&s, &admin("DELETE /v1/lists/deny?policy=api&entry=bad-key")).await;
    assert_eq!(removed.json()["removed"], true);
    assert_eq!(send(&s, &check("bad-key")).await.status, 200);
    // What it cannot take is named.
    for (line, status, names) in [
        (
            "POST /v1/blocks?policy=api&key=k",
            400,
            "give `duration=...`",
        ),
        (
            "POST /v1/blocks?policy=api&key=k&duration=soon",
            400,
            "`duration` must be a number",
        ),
        (
            "POST /v1/lists/deny?policy=api&entry=10.0.0.1/8",
            400,
            "did you mean 10.0.0.0/8",
        ),
        (
            "POST /v1/lists/other?policy=api&entry=x",
            404,
            "/v1/lists/exempt",
        ),
        ("PUT /v1/blocks?policy=api", 405, "GET, POST or DELETE"),
        ("POST /v1/reload", 400, "not built from a file"),
    ] {
        let a = send(&s, &admin(line)).await;
        assert_eq!(a.status, status, "{line}: {}", a.body);
        assert!(a.body.contains(names), "{line}: {}", a.body);
    }
}

#[tokio::test]
async fn readiness_and_metrics() {
    let s = service("").await;
    let ready = send(&s, "GET /readyz HTTP/1.1").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));
    send(&s, "GET /v1/check?policy=api&key=k HTTP/1.1").await;
    let m = send(&s, "GET /metrics HTTP/1.1").await;
    if cfg!(feature = "prometheus") {
        assert_eq!(m.status, 200);
        assert!(
            m.body
                .contains("ratesync_policy_requests_total{outcome=\"allowed\",policy=\"api\"} 1"),
            "{}",
            m.body
        );
    } else {
        assert_eq!(m.status, 404);
    }
    // A store that does not answer makes the service unready, and says which.
    let store = std::sync::Arc::new(ratesync::testing::FaultyStore::memory());
    let reg = Registry::new();
    reg.add_store("flaky", store.clone());
    let down = serve(reg, &Default::default()).await;
    store.fail_policies(true);
    let a = send(&down, "GET /readyz HTTP/1.1").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.body.contains("flaky"), "{}", a.body);
    store.fail_policies(false);
    assert_eq!(send(&down, "GET /readyz HTTP/1.1").await.status, 200);
}

#[tokio::test]
async fn reload_over_the_admin_api_puts_a_new_file_in_force_and_keeps_a_bad_one_out() {
    let dir = std::env::temp_dir().join(format!("ratesync-serve-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ratesync.toml");
    let file = |limit: u32| {
        format!("[policies.api]\nkey = \"api_key\"\nwindows = [{{ window = \"1m\", limit = {limit} }}]\n[http]\nadmin_token = \"{TOKEN}\"\n")
    };
    std::fs::write(&path, file(1)).unwrap();
    let config = Config::from_file(&path).unwrap();
    let http = config.http.clone().unwrap();
    let registry = Registry::from_file(&path).await.unwrap();
    let s = serve(registry, &http).await;
    let check = "GET /v1/check?policy=api&key=k HTTP/1.1";
    let reload = format!("POST /v1/reload HTTP/1.1\r\nAuthorization: Bearer {TOKEN}");
    assert_eq!(send(&s, check).await.status, 200);
    assert_eq!(send(&s, check).await.status, 429);
    std::fs::write(&path, file(3)).unwrap();
    let a = send(&s, &reload).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json()["config_version"].as_u64().unwrap();
    let d = send(&s, check).await;
    assert_eq!(d.status, 200, "the new limit is in force");
    assert_eq!(d.json()["config_version"].as_u64(), Some(v));
    std::fs::write(&path, "[policies.api]\nwindows = \"not a list\"\n").unwrap();
    let bad = send(&s, &reload).await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("windows"), "{}", bad.body);
    assert_eq!(
        send(&s, check).await.json()["config_version"].as_u64(),
        Some(v)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn shutdown_lets_the_requests_under_way_finish_and_takes_no_more() {
    let store = std::sync::Arc::new(ratesync::testing::FaultyStore::memory());
    store.delay_reserve_answers(std::time::Duration::from_millis(400));
    let reg = Registry::new();
    reg.add_store("slow", store.clone());
    reg.reload_from(
        Config::from_toml_str(
            "[stores.slow]\nengine = \"memory\"\n[policies.api]\nstore = \"slow\"\nwindows = [{ window = \"1m\", limit = 10 }]\n",
        )
        .unwrap(),
    )
    .unwrap();
    let server = serve(reg, &Default::default()).await;
    let addr = server.addr();
    let under_way = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/check?policy=api&key=k HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut raw = vec![0; 4096];
        let n = s.read(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw[..n]).into_owned()
    });
    // An idle kept-alive connection does not hold the shutdown up.
    let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    assert!(server.shutdown(std::time::Duration::from_secs(5)).await);
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let answer = under_way.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(idle);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn auth_takes_the_tier_from_the_gateways_header() {
    let config = Config::from_toml_str(
        "[policies.tiered]\nkey = \"api_key\"\nwindows = [{ window = \"1m\", limit = 1 }]\n\
         [policies.tiered.tiers.pro]\nwindows = [{ window = \"1m\", limit = 2 }]\n\
         [http]\napi_key_header = \"X-Api-Key\"\ntier_header = \"X-Tier\"\n",
    )
    .unwrap();
    let http = config.http.clone().unwrap();
    let s = serve(Registry::from_config(config).await.unwrap(), &http).await;
    let ask = |key: &str, tier: &str| {
        format!("GET /auth/tiered HTTP/1.1\r\nX-Api-Key: {key}\r\nX-Tier: {tier}")
    };
    assert_eq!(send(&s, &ask("a", "pro")).await.status, 200);
    assert_eq!(send(&s, &ask("a", "pro")).await.status, 200);
    assert_eq!(send(&s, &ask("a", "pro")).await.status, 429);
    // An unknown tier gets the default windows.
    assert_eq!(send(&s, &ask("b", "gold")).await.status, 200);
    assert_eq!(send(&s, &ask("b", "gold")).await.status, 429);
}

#[tokio::test]
async fn a_megabyte_key_or_header_is_refused_and_the_service_goes_on() {
    let s = service("[http]\napi_key_header = \"X-Api-Key\"\n").await;
    let huge = "k".repeat(1 << 20);
    let by_query = send(&s, &format!("GET /v1/check?policy=api&key={huge} HTTP/1.1")).await;
    let by_header = send(&s, &format!("GET /auth/api HTTP/1.1\r\nX-Api-Key: {huge}")).await;
    for a in [&by_query, &by_header] {
        // hyper refuses a head this large before any check (431), or closes.
        assert!(a.status == 431 || a.status == 0, "{}: {}", a.status, a.body);
    }
    assert_eq!(
        send(&s, "GET /v1/check?policy=api&key=k HTTP/1.1")
            .await
            .status,
        200
    );
}
