//! Envoy's rate limit service protocol (gRPC
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), so that
//! Envoy's `ratelimit` filter asks ratesync's policies.
//!
//! A request carries a domain and descriptors, each a list of entries
//! (`remote_address=203.0.113.7`, `generic_key=api`). The `[envoy]` rules
//! map them to policies: a rule names a domain, the entry keys a
//! descriptor must have, in order (`"key"` takes any value, which becomes
//! part of the client's key; `"key=value"` must match exactly), and the
//! policy that decides. Each descriptor a rule matches is one check of its
//! policy, costing the descriptor's `hits_addend`, else the request's, else
//! 1; a descriptor no rule matches is not limited (`OK`, no limit), as in
//! Envoy's own service. The answer is `OVER_LIMIT` when any descriptor is,
//! with each descriptor's limit, what is left and when it resets, and the
//! refusing policy's headers (`Retry-After`, `RateLimit`) for Envoy to add.
//! A store failure under `fail_closed` is the gRPC status `UNAVAILABLE`
//! (Envoy's `failure_mode_deny` decides what then happens).
//!
//! ```toml
//! [[envoy.rules]]
//! domain = "edge"
//! descriptor = ["remote_address"]
//! policy = "per_ip"
//!
//! [[envoy.rules]]
//! domain = "edge"
//! descriptor = ["generic_key=api", "header_match"]
//! policy = "api"
//! ```

use super::server::{run, Protocol, ServeLimits};
use crate::config::envoy::EnvoyConfig;
use crate::policy::Decision;
use crate::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// The messages of the protocol, as Envoy's `rls.proto` numbers them.
pub mod proto {
    /// One key and value of a descriptor.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        /// The entry's key (`remote_address`).
        #[prost(string, tag = "1")]
        pub key: String,
        /// Its value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.UInt64Value`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UInt64Value {
        /// The value.
        #[prost(uint64, tag = "1")]
        pub value: u64,
    }

    /// `google.protobuf.Duration`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Duration {
        /// Whole seconds.
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        /// And nanoseconds.
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    /// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitDescriptor {
        /// The entries, in order.
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<Entry>,
        /// What this descriptor adds (overrides the request's).
        #[prost(message, optional, tag = "3")]
        pub hits_addend: Option<UInt64Value>,
    }

    /// `envoy.service.ratelimit.v3.RateLimitRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitRequest {
        /// The domain the rules are chosen by.
        #[prost(string, tag = "1")]
        pub domain: String,
        /// The descriptors, each limited on its own.
        #[prost(message, repeated, tag = "2")]
        pub descriptors: Vec<RateLimitDescriptor>,
        /// What each descriptor adds (0: 1).
        #[prost(uint32, tag = "3")]
        pub hits_addend: u32,
    }

    /// `RateLimitResponse.Code`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub enum Code {
        /// Not known.
        Unknown = 0,
        /// Under the limit.
        Ok = 1,
        /// Over the limit.
        OverLimit = 2,
    }

    /// `RateLimitResponse.RateLimit.Unit`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub enum Unit {
        /// A window of another length (the limit's name says which).
        Unknown = 0,
        /// Per second.
        Second = 1,
        /// Per minute.
        Minute = 2,
        /// Per hour.
        Hour = 3,
        /// Per day.
        Day = 4,
    }

    /// `RateLimitResponse.RateLimit`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimit {
        /// The policy and window (`per_ip/minute (60 s)`).
        #[prost(string, tag = "3")]
        pub name: String,
        /// The window's limit.
        #[prost(uint32, tag = "1")]
        pub requests_per_unit: u32,
        /// The window's length, where Envoy has a unit for it.
        #[prost(enumeration = "Unit", tag = "2")]
        pub unit: i32,
    }

    /// `RateLimitResponse.DescriptorStatus`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DescriptorStatus {
        /// This descriptor's answer.
        #[prost(enumeration = "Code", tag = "1")]
        pub code: i32,
        /// The limit that decided, if a policy did.
        #[prost(message, optional, tag = "2")]
        pub current_limit: Option<RateLimit>,
        /// What is left of it.
        #[prost(uint32, tag = "3")]
        pub limit_remaining: u32,
        /// Until it resets.
        #[prost(message, optional, tag = "4")]
        pub duration_until_reset: Option<Duration>,
    }

    /// `envoy.config.core.v3.HeaderValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        /// The header's name.
        #[prost(string, tag = "1")]
        pub key: String,
        /// Its value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `envoy.service.ratelimit.v3.RateLimitResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RateLimitResponse {
        /// `OVER_LIMIT` when any descriptor is.
        #[prost(enumeration = "Code", tag = "1")]
        pub overall_code: i32,
        /// One per descriptor, in order.
        #[prost(message, repeated, tag = "2")]
        pub statuses: Vec<DescriptorStatus>,
        /// Headers for Envoy to add to its answer.
        #[prost(message, repeated, tag = "3")]
        pub response_headers_to_add: Vec<HeaderValue>,
    }
}

/// The gRPC path of the one method.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// Answers `ShouldRateLimit` from a registry's policies (see the module docs).
#[derive(Clone)]
pub struct EnvoyService {
    registry: Registry,
    config: Arc<EnvoyConfig>,
}

impl std::fmt::Debug for EnvoyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvoyService")
            .field("rules", &self.config.rules.len())
            .finish_non_exhaustive()
    }
}

/// A running Envoy rate limit service (see [`ServerHandle`](super::ServerHandle)).
pub type EnvoyServer = super::ServerHandle;

fn unit(window: std::time::Duration) -> proto::Unit {
    if window.subsec_nanos() != 0 {
        return proto::Unit::Unknown;
    }
    match window.as_secs() {
        1 => proto::Unit::Second,
        60 => proto::Unit::Minute,
        3600 => proto::Unit::Hour,
        86_400 => proto::Unit::Day,
        _ => proto::Unit::Unknown,
    }
}

fn status(d: &Decision) -> proto::DescriptorStatus {
    let code = if d.allowed {
        proto::Code::Ok
    } else {
        proto::Code::OverLimit
    };
    let window = d
        .window
        .and_then(|w| d.windows.iter().find(|r| r.name == w));
    proto::DescriptorStatus {
        code: code as i32,
        current_limit: window.map(|w| proto::RateLimit {
            name: format!("{}/{} ({} s)", d.policy, w.name, w.window.as_secs_f64()),
            requests_per_unit: w.limit,
            unit: unit(w.window) as i32,
        }),
        limit_remaining: d.remaining.unwrap_or(0),
        duration_until_reset: d.retry_after.or(d.reset_after).map(|r| proto::Duration {
            seconds: i64::try_from(r.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(r.subsec_nanos()).unwrap_or(0),
        }),
    }
}

impl EnvoyService {
    /// Decides `config`'s rules with `registry`'s policies; every rule's
    /// policy must exist.
    pub fn new(registry: Registry, config: EnvoyConfig) -> Result<Self, String> {
        for (i, r) in config.rules.iter().enumerate() {
            registry.policy(&r.policy).map_err(|_| {
                format!(
                    "envoy.rules[{i}].policy: no policy `{}`; the configuration has: {}",
                    r.policy,
                    registry.policy_names().join(", ")
                )
            })?;
        }
        Ok(Self {
            registry,
            config: Arc::new(config),
        })
    }

    /// The answer to one request.
    pub async fn should_rate_limit(
        &self,
        req: &proto::RateLimitRequest,
    ) -> Result<proto::RateLimitResponse, tonic::Status> {
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(tonic::Status::invalid_argument(format!(
                "{} descriptors; at most {MAX_DESCRIPTORS} are decided per request",
                req.descriptors.len()
            )));
        }
        let mut out = proto::RateLimitResponse {
            overall_code: proto::Code::Ok as i32,
            ..Default::default()
        };
        let mut refused: Option<Decision> = None;
        for descriptor in &req.descriptors {
            let entries: Vec<(&str, &str)> = descriptor
                .entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            let matched = self
                .config
                .matching(&req.domain, &entries)
                .and_then(|(rule, key)| match self.registry.policy(&rule.policy) {
                    Ok(policy) => Some((policy, key)),
                    Err(_) => {
                        // A reload took the policy away: not limited, and said.
                        tracing::warn!(policy = %rule.policy, "an [envoy] rule names a policy no longer there");
                        None
                    }
                });
            let Some((policy, key)) = matched else {
                out.statuses.push(proto::DescriptorStatus {
                    code: proto::Code::Ok as i32,
                    ..Default::default()
                });
                continue;
            };
            let hits = descriptor
                .hits_addend
                .as_ref()
                .map(|h| h.value)
                .unwrap_or(u64::from(req.hits_addend));
            let cost = u32::try_from(hits.max(1)).unwrap_or(u32::MAX);
            let d = policy
                .check(&policy.request_for(&key).cost(cost))
                .await
                .map_err(|_| tonic::Status::unavailable("the rate limit store is unavailable"))?;
            out.statuses.push(status(&d));
            if !d.allowed {
                out.overall_code = proto::Code::OverLimit as i32;
                refused.get_or_insert(d);
            }
        }
        if let Some(d) = refused {
            out.response_headers_to_add = d
                .headers()
                .into_iter()
                .map(|(k, v)| proto::HeaderValue {
                    key: k.to_string(),
                    value: v,
                })
                .collect();
        }
        Ok(out)
    }

    /// Serves the protocol on `addr` (HTTP/2) until the handle is dropped.
    pub async fn serve(
        self,
        addr: SocketAddr,
        limits: ServeLimits,
    ) -> std::io::Result<EnvoyServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let running = run(
            listener,
            limits,
            Protocol::Http2,
            "envoy rate limit service",
            move |req, _peer| {
                let service = self.clone();
                async move {
                    if req.uri().path() != SHOULD_RATE_LIMIT {
                        return tonic::Status::unimplemented(format!(
                            "ratesync answers {SHOULD_RATE_LIMIT} only"
                        ))
                        .into_http();
                    }
                    let mut grpc = tonic::server::Grpc::new(tonic::codec::ProstCodec::default());
                    grpc.unary(Unary(service), req).await
                }
            },
        );
        Ok(EnvoyServer::new(local, running))
    }
}

/// Descriptors decided per request, at most: each is a check.
pub const MAX_DESCRIPTORS: usize = 64;

struct Unary(EnvoyService);

impl tonic::server::UnaryService<proto::RateLimitRequest> for Unary {
    type Response = proto::RateLimitResponse;
    type Future = Pin<
        Box<dyn Future<Output = Result<tonic::Response<Self::Response>, tonic::Status>> + Send>,
    >;

    fn call(&mut self, request: tonic::Request<proto::RateLimitRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            service
                .should_rate_limit(request.get_ref())
                .await
                .map(tonic::Response::new)
        })
    }
}
