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
    DecisionService::new(registry, &http)
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
