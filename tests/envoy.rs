//! The Envoy rate limit service, answered to a tonic client speaking
//! Envoy's protocol over a bound listener.
#![cfg(feature = "serve")]

use ratesync::http::envoy::proto::{
    Code, Entry, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, UInt64Value, Unit,
};
use ratesync::http::envoy::SHOULD_RATE_LIMIT;
use ratesync::http::{EnvoyServer, EnvoyService, ServeLimits};
use ratesync::{Config, Registry};

const CONFIG: &str = "[policies.per_ip]\nkey = \"ip\"\nwindows = [{ window = \"1m\", limit = 2, name = \"minute\" }]\n\
[policies.api]\nkey = \"api_key\"\nwindows = [{ window = \"1s\", limit = 5, name = \"burst\" }]\n\
[[envoy.rules]]\ndomain = \"edge\"\ndescriptor = [\"remote_address\"]\npolicy = \"per_ip\"\n\
[[envoy.rules]]\ndomain = \"edge\"\ndescriptor = [\"generic_key=api\", \"header_match\"]\npolicy = \"api\"\n";

async fn server() -> EnvoyServer {
    let config = Config::from_toml_str(CONFIG).unwrap();
    let envoy = config.envoy.clone().unwrap();
    let registry = Registry::from_config(config).await.unwrap();
    EnvoyService::new(registry, envoy)
        .unwrap()
        .serve("127.0.0.1:0".parse().unwrap(), ServeLimits::default())
        .await
        .unwrap()
}

async fn ask(s: &EnvoyServer, req: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr()))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(req),
        http::uri::PathAndQuery::from_static(SHOULD_RATE_LIMIT),
        tonic::codec::ProstCodec::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        hits_addend: None,
    }
}

fn request(descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest {
        domain: "edge".into(),
        descriptors,
        hits_addend: hits,
    }
}

#[tokio::test]
async fn descriptors_are_decided_by_their_policies() {
    let s = server().await;
    let ip = || descriptor(&[("remote_address", "203.0.113.7")]);
    let first = ask(&s, request(vec![ip()], 0)).await.unwrap();
    assert_eq!(first.overall_code, Code::Ok as i32);
    let st = &first.statuses[0];
    let limit = st.current_limit.as_ref().expect("the policy's limit");
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (2, Unit::Minute as i32)
    );
    assert_eq!(limit.name, "per_ip/minute (60 s)");
    assert_eq!(st.limit_remaining, 1);
    ask(&s, request(vec![ip()], 0)).await.unwrap();
    let over = ask(&s, request(vec![ip()], 0)).await.unwrap();
    assert_eq!(over.overall_code, Code::OverLimit as i32);
    assert_eq!(over.statuses[0].code, Code::OverLimit as i32);
    let reset = over.statuses[0].duration_until_reset.as_ref().unwrap();
    assert!(reset.seconds >= 59, "{reset:?}");
    let headers: Vec<(&str, &str)> = over
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert!(headers.contains(&("Retry-After", "60")), "{headers:?}");
    // Another address is another client; an unknown descriptor is not limited.
    let other = descriptor(&[("remote_address", "203.0.113.8")]);
    let unknown = descriptor(&[("destination_cluster", "x")]);
    let mixed = ask(&s, request(vec![other, unknown, ip()], 0))
        .await
        .unwrap();
    let codes: Vec<i32> = mixed.statuses.iter().map(|s| s.code).collect();
    assert_eq!(
        codes,
        [Code::Ok as i32, Code::Ok as i32, Code::OverLimit as i32]
    );
    assert_eq!(mixed.overall_code, Code::OverLimit as i32);
    assert!(mixed.statuses[1].current_limit.is_none());
}

#[tokio::test]
async fn hits_addend_is_the_cost() {
    let s = server().await;
    let api = || descriptor(&[("generic_key", "api"), ("header_match", "k1")]);
    let d = ask(&s, request(vec![api()], 3)).await.unwrap();
    assert_eq!(
        (d.overall_code, d.statuses[0].limit_remaining),
        (Code::Ok as i32, 2)
    );
    // The descriptor's own hits_addend wins over the request's.
    let mut heavy = api();
    heavy.hits_addend = Some(UInt64Value { value: 3 });
    let d = ask(&s, request(vec![heavy], 1)).await.unwrap();
    assert_eq!(
        d.overall_code,
        Code::OverLimit as i32,
        "3 more do not fit in 2"
    );
    let d = ask(&s, request(vec![api()], 2)).await.unwrap();
    assert_eq!(
        d.overall_code,
        Code::Ok as i32,
        "the refused 3 took nothing"
    );
    // A value that only matches exactly does not match another.
    let web = descriptor(&[("generic_key", "web"), ("header_match", "k1")]);
    let d = ask(&s, request(vec![web], 100)).await.unwrap();
    assert!(d.statuses[0].current_limit.is_none());
}

#[tokio::test]
async fn what_the_service_cannot_take_is_a_grpc_error() {
    let s = server().await;
    let many = (0..65)
        .map(|i| descriptor(&[("remote_address", &format!("10.0.0.{i}"))]))
        .collect();
    let e = ask(&s, request(many, 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at most 64"), "{e}");
    // Other paths are unimplemented, and the service still answers.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary::<RateLimitRequest, RateLimitResponse, _>(
            tonic::Request::new(request(vec![], 0)),
            http::uri::PathAndQuery::from_static(
                "/envoy.service.ratelimit.v2.RateLimitService/ShouldRateLimit",
            ),
            tonic::codec::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert!(ask(&s, request(vec![], 0)).await.is_ok());
    // A rule naming a policy the registry lacks is refused when built.
    let config = Config::from_toml_str(CONFIG).unwrap();
    let mut envoy = config.envoy.clone().unwrap();
    envoy.rules[0].policy = "gone".into();
    let e = EnvoyService::new(Registry::from_config(config).await.unwrap(), envoy).unwrap_err();
    assert!(
        e.contains("envoy.rules[0].policy") && e.contains("gone"),
        "{e}"
    );
}
