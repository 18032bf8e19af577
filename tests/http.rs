//! The tower middleware, as a hostile client meets it: statuses, headers
//! and bodies of refusals, spoofed and garbage headers, CORS, preflights,
//! and a store that fails.
#![cfg(feature = "http")]

use http::{Request, Response, StatusCode};
use ratesync::http::{ClientIp, Identify, PeerAddr, RateLimitLayer};
use ratesync::Registry;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tower::{service_fn, Layer, Service, ServiceExt};

async fn registry(toml: &str) -> Registry {
    Registry::from_toml_str(toml).await.expect("valid config")
}

/// An app answering "ok" that counts the requests it saw.
fn app(
    layer: RateLimitLayer,
    seen: Arc<AtomicU32>,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone {
    layer.layer(service_fn(move |_req: Request<String>| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut r = Response::new(String::from("ok"));
            r.headers_mut()
                .insert("x-app", http::HeaderValue::from_static("1"));
            Ok::<_, Infallible>(r)
        }
    }))
}

fn from(peer: &str) -> http::request::Builder {
    Request::get("/items").extension(PeerAddr(peer.parse().unwrap()))
}

async fn send<S>(app: &S, req: http::request::Builder) -> Response<String>
where
    S: Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone,
{
    app.clone()
        .oneshot(req.body(String::new()).unwrap())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn refusals_carry_status_headers_and_problem_details() {
    let reg = registry(
        "[policies.api]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 2, name = \"minute\" }]\ndeny = [\"203.0.113.0/24\"]\n",
    )
    .await;
    let seen = Arc::new(AtomicU32::new(0));
    let app = app(
        RateLimitLayer::new(reg.policy("api").unwrap()),
        seen.clone(),
    );
    let ok = send(&app, from("192.0.2.1")).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["x-app"], "1");
    assert_eq!(ok.headers()["ratelimit-policy"], "\"minute\";q=2;w=60");
    assert_eq!(ok.headers()["ratelimit"], "\"minute\";r=1;t=60");
    send(&app, from("192.0.2.1")).await;
    let refused = send(&app, from("192.0.2.1")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "60");
    assert_eq!(refused.headers()["ratelimit"], "\"minute\";r=0;t=60");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = serde_json::from_str(refused.body()).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
    assert!(!refused.headers().contains_key("x-app"));
    let denied = send(&app, from("203.0.113.9")).await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "refused requests never reach the app"
    );
}

#[tokio::test(start_paused = true)]
async fn allowed_responses_can_go_without_headers() {
    let reg =
        registry("[policies.api]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 1 }]\n")
            .await;
    let layer = RateLimitLayer::new(reg.policy("api").unwrap()).headers_on_allowed(false);
    let app = app(layer, Arc::new(AtomicU32::new(0)));
    let ok = send(&app, from("192.0.2.1")).await;
    assert!(
        ok.headers().get("ratelimit").is_none(),
        "{:?}",
        ok.headers()
    );
    let refused = send(&app, from("192.0.2.1")).await;
    assert!(refused.headers().contains_key("ratelimit"));
}

#[tokio::test(start_paused = true)]
async fn a_client_cannot_forward_its_way_out_of_its_limit() {
    let reg =
        registry("[policies.api]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 1 }]\n")
            .await;
    let trusting =
        Identify::new().client_ip(ClientIp::new(&["10.0.0.0/8"], None).expect("valid proxies"));
    let app = app(
        RateLimitLayer::new(reg.policy("api").unwrap()).identify(trusting),
        Arc::new(AtomicU32::new(0)),
    );
    // From an untrusted peer, every forwarded address is the client's own words.
    let spoof = |fake: &str| {
        from("198.51.100.5")
            .header("x-forwarded-for", fake)
            .header("forwarded", format!("for={fake}"))
    };
    assert_eq!(send(&app, spoof("1.1.1.1")).await.status(), 200);
    assert_eq!(send(&app, spoof("2.2.2.2")).await.status(), 429);
    assert_eq!(send(&app, spoof("10.0.0.1")).await.status(), 429);
    // Behind the trusted proxy, each forwarded client is itself, and a
    // spoofed leftmost hop changes nothing.
    let proxied = |chain: &str| from("10.0.0.2").header("x-forwarded-for", chain);
    assert_eq!(send(&app, proxied("203.0.113.1")).await.status(), 200);
    assert_eq!(send(&app, proxied("203.0.113.2")).await.status(), 200);
    assert_eq!(
        send(&app, proxied("9.9.9.9, 203.0.113.1")).await.status(),
        429
    );
    // A garbage hop is the proxy's, never a fresh client.
    assert_eq!(send(&app, proxied("garbage")).await.status(), 200);
    assert_eq!(send(&app, proxied("unknown")).await.status(), 429);
}

#[tokio::test(start_paused = true)]
async fn any_header_bytes_are_a_key_like_any_other() {
    let reg = registry(
        "[policies.api]\nkey = [\"api_key\", \"header:X-Tenant\"]\nwindows = [{ window = \"1m\", limit = 1 }]\n",
    )
    .await;
    let identify = Identify::new().api_key_header("X-Api-Key").unwrap();
    let app = app(
        RateLimitLayer::new(reg.policy("api").unwrap()).identify(identify),
        Arc::new(AtomicU32::new(0)),
    );
    let odd = http::HeaderValue::from_bytes(b"\xff\xfe key \x80").unwrap();
    let long = "k".repeat(64 * 1024);
    for key in [odd, http::HeaderValue::from_str(&long).unwrap()] {
        let req = || {
            from("192.0.2.1")
                .header("x-api-key", key.clone())
                .header("x-tenant", "acme")
        };
        assert_eq!(send(&app, req()).await.status(), 200);
        assert_eq!(send(&app, req()).await.status(), 429);
    }
    // The tenant is part of the key.
    let other = from("192.0.2.1")
        .header("x-api-key", long.as_str())
        .header("x-tenant", "globex");
    assert_eq!(send(&app, other).await.status(), 200);
    assert!(Identify::new().api_key_header("bad header").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_cors_layer_outside_dresses_refusals_and_preflights_can_pass() {
    let reg =
        registry("[policies.api]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 1 }]\n")
            .await;
    let seen = Arc::new(AtomicU32::new(0));
    let inner = app(
        RateLimitLayer::new(reg.policy("api").unwrap()).skip_preflight(true),
        seen.clone(),
    );
    let cors = tower_http::cors::CorsLayer::permissive().layer(inner.clone());
    let call = |req: http::request::Builder| {
        let cors = cors.clone();
        async move {
            let r: Response<_> = cors
                .oneshot(req.body(String::new()).unwrap())
                .await
                .unwrap();
            r
        }
    };
    let with_origin = || from("192.0.2.1").header("origin", "https://app.example");
    assert_eq!(call(with_origin()).await.status(), 200);
    let refused = call(with_origin()).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");
    assert!(refused.headers().contains_key("retry-after"));
    // A preflight the CORS layer answers never reaches the limit; one it
    // passes on is let through uncounted.
    let preflight = || {
        from("192.0.2.1")
            .method("OPTIONS")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
    };
    assert_eq!(call(preflight()).await.status(), 200);
    let direct = send(&inner, preflight()).await;
    assert_eq!(direct.status(), 200);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_admits_or_answers_503_as_the_policy_says() {
    use ratesync::testing::FaultyStore;
    let store = Arc::new(FaultyStore::memory());
    let reg = Registry::new();
    reg.add_store("memory", store.clone());
    reg.reload_from(
        ratesync::Config::from_toml_str(
            "[policies.open]\non_backend_error = \"fail_open\"\nwindows = [{ window = \"1m\", limit = 1 }]\n\
             [policies.closed]\nwindows = [{ window = \"1m\", limit = 1 }]\n",
        )
        .unwrap(),
    )
    .unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let open = app(
        RateLimitLayer::new(reg.policy("open").unwrap()),
        seen.clone(),
    );
    let closed = app(
        RateLimitLayer::new(reg.policy("closed").unwrap()),
        seen.clone(),
    );
    store.fail_policies(true);
    assert_eq!(send(&open, from("192.0.2.1")).await.status(), 200);
    let down = send(&closed, from("192.0.2.1")).await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(down.headers()["retry-after"], "1");
    assert!(!down.body().contains("memory"), "{}", down.body());
    store.fail_policies(false);
    assert_eq!(send(&closed, from("192.0.2.1")).await.status(), 200);
    assert_eq!(send(&closed, from("192.0.2.1")).await.status(), 429);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn axum_routes_are_keyed_by_their_connect_info() {
    use axum::extract::ConnectInfo;
    use tower::BoxError;
    let reg =
        registry("[policies.api]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 1 }]\n")
            .await;
    let router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .route_layer(RateLimitLayer::new(reg.policy("api").unwrap()));
    let req = |peer: &str| {
        Request::get("/")
            .extension(ConnectInfo::<std::net::SocketAddr>(peer.parse().unwrap()))
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let status = |r: axum::response::Response| r.status();
    let call = |peer: &'static str| {
        let router = router.clone();
        async move {
            let r: Result<_, BoxError> = router.oneshot(req(peer)).await.map_err(Into::into);
            status(r.unwrap())
        }
    };
    assert_eq!(call("192.0.2.1:5000").await, 200);
    assert_eq!(call("192.0.2.1:5001").await, 429);
    assert_eq!(call("192.0.2.2:5000").await, 200);
}

#[tokio::test(start_paused = true)]
async fn only_the_header_the_proxies_keep_names_the_client() {
    use ratesync::http::HopHeader;
    let reg =
        registry("[policies.api]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 1 }]\n")
            .await;
    let proxies = ClientIp::new(&["10.0.0.0/8"], None).unwrap();
    for (hops, kept, other) in [
        (HopHeader::XForwardedFor, "x-forwarded-for", "forwarded"),
        (HopHeader::Forwarded, "forwarded", "x-forwarded-for"),
    ] {
        let app = app(
            RateLimitLayer::new(reg.policy("api").unwrap())
                .identify(Identify::new().client_ip(proxies.clone().hops_in(hops))),
            Arc::new(AtomicU32::new(0)),
        );
        let value = |addr: &str| match hops {
            HopHeader::Forwarded => format!("for={addr}"),
            HopHeader::XForwardedFor => addr.to_string(),
        };
        let (first, second) = match hops {
            HopHeader::Forwarded => ("203.0.113.10", "203.0.113.11"),
            HopHeader::XForwardedFor => ("203.0.113.20", "203.0.113.21"),
        };
        let proxied = |client: &str, spoof: &str| {
            from("10.0.0.2")
                .header(kept, value(client))
                .header(other, spoof)
        };
        assert_eq!(
            send(&app, proxied(first, "for=198.51.100.1"))
                .await
                .status(),
            200
        );
        // The other header, which the proxies pass on from the client, changes nothing.
        assert_eq!(
            send(&app, proxied(first, "198.51.100.2")).await.status(),
            429
        );
        assert_eq!(
            send(&app, proxied(second, "198.51.100.2")).await.status(),
            200
        );
    }
}
