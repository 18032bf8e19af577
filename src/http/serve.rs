//! The decision service (`ratesync serve`): policy checks over HTTP for
//! services in other languages and for gateways.
//!
//! - `GET|POST /v1/check?policy=P&key=K[&cost=N][&tier=T]`: the
//!   [`Decision`] as JSON; 200 allowed, 429 throttled or blocked, 403
//!   denied, with the policy's headers. The caller says who the client is
//!   (`key` stands for every part of the policy's key, as
//!   [`Policy::check_rate_limit`] takes it).
//! - `GET /auth/{policy}` (any method), for forward-auth gateways (nginx
//!   `auth_request`, Traefik ForwardAuth, Envoy `ext_authz` over HTTP): the
//!   client from the forwarded request's headers, as the `[http]` table
//!   says (the address through `trusted_proxies`, the API key, user and
//!   tier headers), the route from `X-Original-URI` or `X-Forwarded-Uri`;
//!   the same statuses and headers, an empty body when allowed.
//!   `?throttle_status=401` answers a throttle or block with 401 instead of
//!   429, for nginx, whose `auth_request` takes only 2xx, 401 and 403 (its
//!   `error_page 401` then answers the client 429 with the copied headers).
//!   `?cost=N` sets the cost.
//! - `GET /healthz`: 200 while the service runs.
//!
//! A store failure under `fail_closed` is 503 with `Retry-After: 1`;
//! requests it cannot read (an unknown policy, a bad cost) get a
//! problem-details body naming the parameter and what to send.

use super::response::{add_headers, PROBLEM_JSON};
use super::server::{run, ServeLimits};
use super::Identify;
use crate::config::http::HttpConfig;
use crate::policy::{Decision, Policy};
use crate::registry::Registry;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Answers the decision service's requests (see the module docs).
#[derive(Clone)]
pub struct DecisionService {
    shared: Arc<Shared>,
}

struct Shared {
    registry: Registry,
    identify: Identify,
}

impl std::fmt::Debug for DecisionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionService")
            .field("identify", &self.shared.identify)
            .finish_non_exhaustive()
    }
}

/// A running decision service; stops when dropped.
#[derive(Debug)]
pub struct DecisionServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DecisionServer {
    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DecisionServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One answer: a status, headers and a body.
fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if !content_type.is_empty() {
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    r
}

/// Why a request gets no decision.
enum Stop {
    /// The service cannot read it: the status, and what to send instead.
    Unreadable(StatusCode, String),
    /// The store failed and the policy fails closed.
    Unavailable,
}

impl Stop {
    fn into_response(self) -> Response<String> {
        match self {
            Stop::Unreadable(status, detail) => {
                let body = serde_json::json!({
                    "type": "about:blank",
                    "title": status.canonical_reason().unwrap_or_default(),
                    "status": status.as_u16(),
                    "detail": detail,
                });
                answer(status, PROBLEM_JSON, body.to_string())
            }
            Stop::Unavailable => super::response::unavailable(),
        }
    }
}

fn problem(status: StatusCode, detail: String) -> Stop {
    Stop::Unreadable(status, detail)
}

/// `text` with `%XX` and `+` decoded; `None` when the result is not UTF-8
/// or an escape is broken.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The query's parameters, each at most once.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, Stop> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (decode(k), decode(v)) else {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    format!("the query parameter `{pair}` is not percent-encoded UTF-8"),
                ));
            };
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(problem(
                    StatusCode::BAD_REQUEST,
                    format!("the query parameter `{k}` is given twice: give it once"),
                ));
            }
            out.push((k, v));
        }
        Ok(Query(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn cost(&self) -> Result<Option<u32>, Stop> {
        match self.get("cost") {
            None => Ok(None),
            Some(c) => c
                .parse::<u32>()
                .ok()
                .filter(|&c| c >= 1)
                .map(Some)
                .ok_or_else(|| {
                    problem(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "`cost` must be a whole number from 1 to {}, got `{c}`",
                            u32::MAX
                        ),
                    )
                }),
        }
    }
}

impl DecisionService {
    /// Decides the policies of `registry`, identifying clients of
    /// `/auth/...` as `http` says.
    pub fn new(registry: Registry, http: &HttpConfig) -> Result<Self, String> {
        let mut identify = Identify::new().client_ip(http.client_ip());
        if let Some(h) = &http.api_key_header {
            identify = identify.api_key_header(h)?;
        }
        if let Some(h) = &http.user_header {
            identify = identify.user_header(h)?;
        }
        if let Some(h) = &http.tier_header {
            let name = http::HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| format!("tier_header: `{h}` is not a header name"))?;
            identify = identify.tier_from(move |headers, _| {
                headers
                    .get(&name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            });
        }
        Ok(Self {
            shared: Arc::new(Shared { registry, identify }),
        })
    }

    fn policy(&self, name: Option<&str>) -> Result<Policy, Stop> {
        let Some(name) = name.filter(|n| !n.is_empty()) else {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "give the policy: `policy=NAME`".to_string(),
            ));
        };
        self.shared.registry.policy(name).map_err(|_| {
            let known = self.shared.registry.policy_names().join(", ");
            problem(
                StatusCode::NOT_FOUND,
                format!("no policy `{name}`; the configuration has: {known}"),
            )
        })
    }

    /// The answer to `req` from `peer` (see the module docs).
    pub async fn answer<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<String> {
        let path = req.uri().path();
        let result = if path == "/v1/check" {
            if req.method() != Method::GET && req.method() != Method::POST {
                Err(problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "/v1/check takes GET or POST".to_string(),
                ))
            } else {
                self.check(req.uri().query()).await
            }
        } else if let Some(name) = path.strip_prefix("/auth/") {
            self.auth(name, req.uri().query(), req.headers(), peer)
                .await
        } else if path == "/healthz" {
            Ok(answer(StatusCode::OK, "text/plain", "ok\n".to_string()))
        } else {
            Err(problem(
                StatusCode::NOT_FOUND,
                "no such endpoint; try /v1/check?policy=P&key=K, /auth/POLICY or /healthz"
                    .to_string(),
            ))
        };
        result.unwrap_or_else(Stop::into_response)
    }

    async fn check(&self, query: Option<&str>) -> Result<Response<String>, Stop> {
        let q = Query::parse(query)?;
        let policy = self.policy(q.get("policy"))?;
        let Some(key) = q.get("key") else {
            return Err(problem(
                StatusCode::BAD_REQUEST,
                "give the client's key: `key=K`".to_string(),
            ));
        };
        let mut asked = policy.request_for(key);
        if let Some(cost) = q.cost()? {
            asked = asked.cost(cost);
        }
        if let Some(tier) = q.get("tier") {
            asked = asked.tier(tier);
        }
        let d = policy.check(&asked).await.map_err(|_| Stop::Unavailable)?;
        let body = serde_json::to_string(&d).unwrap_or_default();
        let mut r = answer(status(&d, None), "application/json", body);
        add_headers(r.headers_mut(), &d);
        Ok(r)
    }

    async fn auth(
        &self,
        name: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Response<String>, Stop> {
        let q = Query::parse(query)?;
        let name = decode(name);
        let policy = self.policy(name.as_deref())?;
        let throttle_status = match q.get("throttle_status") {
            None => None,
            Some(s) => Some(
                s.parse::<u16>()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(|s| s.is_client_error())
                    .ok_or_else(|| {
                        problem(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "`throttle_status` must be a 4xx status (401 for nginx), got `{s}`"
                            ),
                        )
                    })?,
            ),
        };
        let uri = ["x-original-uri", "x-forwarded-uri"]
            .iter()
            .find_map(|h| headers.get(*h))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "/".to_string());
        let route = uri.split(['?', '#']).next().unwrap_or("/");
        let mut asked = self.shared.identify.request(
            &policy,
            Some(peer),
            route,
            headers,
            &http::Extensions::new(),
        );
        if let Some(cost) = q.cost()? {
            asked = asked.cost(cost);
        }
        let d = policy.check(&asked).await.map_err(|_| Stop::Unavailable)?;
        let mut r = match d.problem_details() {
            Some(body) => answer(status(&d, throttle_status), PROBLEM_JSON, body),
            None => answer(StatusCode::OK, "", String::new()),
        };
        add_headers(r.headers_mut(), &d);
        Ok(r)
    }

    /// Serves on `addr` within `limits` until the returned handle is dropped.
    pub async fn serve(
        self,
        addr: SocketAddr,
        limits: ServeLimits,
    ) -> std::io::Result<DecisionServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let task = run(listener, limits, "decision service", move |req, peer| {
            let service = self.clone();
            async move {
                let r = service.answer(&req, peer.ip()).await;
                r.map(|body| Full::new(Bytes::from(body)))
            }
        });
        Ok(DecisionServer { addr: local, task })
    }
}

/// The status of `d`: 200, or its refusal's, a throttle or block as
/// `throttle_status` when given.
fn status(d: &Decision, throttle_status: Option<StatusCode>) -> StatusCode {
    match d.status() {
        None => StatusCode::OK,
        Some(403) => StatusCode::FORBIDDEN,
        Some(_) => throttle_status.unwrap_or(StatusCode::TOO_MANY_REQUESTS),
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn queries_decode_or_say_no() {
        assert_eq!(decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(decode("%E2%9C%93").as_deref(), Some("✓"));
        for bad in ["%", "%4", "%zz", "%ff"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }
}
