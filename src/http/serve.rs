//! The decision service (`ratesync serve`): policy checks over HTTP for
//! services in other languages and for gateways.
//!
//! - `GET|POST /v1/check?policy=P&key=K[&cost=N][&tier=T][&path=/x&method=GET]`: the
//!   [`Decision`] as JSON; 200 allowed, 429 throttled or blocked, 403
//!   denied, with the policy's headers. The caller says who the client is
//!   (`key` stands for every part of the policy's key, as
//!   [`Policy::check_rate_limit`] takes it).
//! - `GET /auth/{policy}` (any method), for forward-auth gateways (nginx
//!   `auth_request`, Traefik ForwardAuth, Envoy `ext_authz` over HTTP): the
//!   client from the forwarded request's headers, as the `[http]` table
//!   says (the address through `trusted_proxies`, the API key, user and
//!   tier headers), the route from `X-Original-URI` or `X-Forwarded-Uri`;
//!   the same statuses and headers, an empty body when allowed. The
//!   decision log records the path, and the method from
//!   `X-Original-Method` or `X-Forwarded-Method`.
//!   `?throttle_status=401` answers a throttle or block with 401 instead of
//!   429, for nginx, whose `auth_request` takes only 2xx, 401 and 403 (its
//!   `error_page 401` then answers the client 429 with the copied headers).
//!   `?cost=N` sets the cost.
//! - `GET /healthz`: 200 while the service runs; `GET /readyz`: 200 when
//!   every store answers within 2 s, else 503 naming the ones that do not;
//!   `GET /metrics` (with the `prometheus` feature): the Prometheus text.
//! - The admin API, with `Authorization: Bearer <http.admin_token>` (off
//!   without a token; a wrong or missing one is 401, compared in constant
//!   time): `GET|POST|DELETE /v1/blocks?policy=P[&key=K&duration=15m&reason=R]`
//!   lists, sets and lifts bans; `GET|POST|DELETE
//!   /v1/lists/{exempt|deny}?policy=P[&entry=E&ttl=1h]` lists, adds and
//!   removes list entries; `POST /v1/reload` reloads the configuration
//!   file's policies. Bans and list changes made here are recorded in the
//!   audit trail as done by `admin-api <peer address>`.
//! - `/dashboard/`: the web dashboard over the decision log (see
//!   [`dashboard`](super::dashboard)), opened with the admin token.
//!
//! A store failure under `fail_closed` is 503 with `Retry-After: 1`;
//! requests it cannot read (an unknown policy, a bad cost) get a
//! problem-details body naming the parameter and what to send.

use super::response::{add_headers, PROBLEM_JSON};
use super::server::{run, Protocol, ServeLimits};
use super::Identify;
use crate::config::http::HttpConfig;
use crate::policy::{Decision, Policy};
use crate::registry::Registry;
use crate::secret::{same_bytes, token_digest};
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
    /// SHA-256 of the admin token: compared digest to digest, so the time
    /// a comparison takes says nothing of the token, not even its length.
    admin_digest: Option<[u8; 32]>,
    #[cfg(feature = "prometheus")]
    exporter: Option<crate::telemetry::PrometheusExporter>,
}

impl std::fmt::Debug for DecisionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionService")
            .field("identify", &self.shared.identify)
            .finish_non_exhaustive()
    }
}

/// A running decision service (see [`ServerHandle`](super::ServerHandle)).
pub type DecisionServer = super::ServerHandle;

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
    /// The admin API without its token.
    Unauthorized,
}

impl Stop {
    fn into_response(self) -> Response<String> {
        match self {
            Stop::Unreadable(status, detail) => super::response::problem(status, &detail),
            Stop::Unavailable => super::response::unavailable(),
            Stop::Unauthorized => {
                let mut r = Stop::Unreadable(
                    StatusCode::UNAUTHORIZED,
                    "the admin API needs `Authorization: Bearer <http.admin_token>`".to_string(),
                )
                .into_response();
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                r
            }
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
            identify = identify.tier_header(h)?;
        }
        let admin_digest = http.admin_token.as_ref().map(|t| token_digest(t.expose()));
        #[cfg(feature = "prometheus")]
        let exporter = match crate::telemetry::PrometheusExporter::new(&registry) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(error = %e, "no /metrics on the decision service");
                None
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                registry,
                identify,
                admin_digest,
                #[cfg(feature = "prometheus")]
                exporter,
            }),
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
        } else if path == "/readyz" {
            Ok(self.ready().await)
        } else if path == "/metrics" {
            Ok(self.metrics())
        } else if path == "/v1/blocks" || path == "/v1/reload" || path.starts_with("/v1/lists/") {
            match self.admitted(req.headers()) {
                Ok(()) => {
                    self.admin(req.method(), path, req.uri().query(), peer)
                        .await
                }
                Err(refused) => Err(refused),
            }
        } else if path == "/dashboard" || path.starts_with("/dashboard/") {
            return self.dashboard(req, path).await;
        } else {
            Err(problem(
                StatusCode::NOT_FOUND,
                "no such endpoint; try /v1/check?policy=P&key=K, /auth/POLICY, /healthz, /readyz or /metrics"
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
        if let Some(path) = q.get("path") {
            asked = asked.path(path);
        }
        if let Some(method) = q.get("method") {
            asked = asked.method(method);
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
        if let Some(m) = ["x-original-method", "x-forwarded-method"]
            .iter()
            .find_map(|h| headers.get(*h))
        {
            asked = asked.method(String::from_utf8_lossy(m.as_bytes()));
        }
        let d = policy.check(&asked).await.map_err(|_| Stop::Unavailable)?;
        let mut r = match d.problem_details() {
            Some(body) => answer(status(&d, throttle_status), PROBLEM_JSON, body),
            None => answer(StatusCode::OK, "", String::new()),
        };
        add_headers(r.headers_mut(), &d);
        Ok(r)
    }

    /// `Ok` when `headers` carry the admin token.
    fn admitted(&self, headers: &HeaderMap) -> Result<(), Stop> {
        let Some(want) = &self.shared.admin_digest else {
            return Err(problem(
                StatusCode::FORBIDDEN,
                "the admin API is off: set http.admin_token in the configuration".to_string(),
            ));
        };
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| token_digest(t.trim()));
        match given {
            Some(given) if same_bytes(&given, want) => Ok(()),
            _ => Err(Stop::Unauthorized),
        }
    }

    /// The dashboard's pages (see `dashboard.rs`), all 403 without a
    /// session or the admin token.
    async fn dashboard<B>(&self, req: &Request<B>, path: &str) -> Response<String> {
        use super::dashboard as d;
        let Some(admin) = &self.shared.admin_digest else {
            return d::login_page(d::OFF);
        };
        let bearer = self.admitted(req.headers()).is_ok();
        let session = d::session_of(req.headers()).is_some_and(|s| d::valid_session(s, admin));
        if path == "/dashboard/logout" && req.method() == Method::POST {
            return d::logout();
        }
        if !(bearer || session) {
            return d::login_page("Sign in with the admin token.");
        }
        if path == "/dashboard" {
            return d::redirect("/dashboard/");
        }
        let q = match Query::parse(req.uri().query()) {
            Ok(q) => q,
            Err(stop) => return stop.into_response(),
        };
        let days = match q.get("days").map(str::parse::<i64>) {
            None => 1,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "`days` is a whole number from 1 to 365".into(),
                )
                .into_response()
            }
        };
        let registry = &self.shared.registry;
        let result = match path {
            "/dashboard/" => d::overview(registry, days).await,
            "/dashboard/offenders.csv" => d::offenders_csv(registry, days).await,
            "/dashboard/offender" => d::offender(registry, q.get("key"), days).await,
            _ => Err((StatusCode::NOT_FOUND, "the dashboard has /dashboard/, /dashboard/offenders.csv and /dashboard/offender?key=K".into())),
        };
        result.unwrap_or_else(|(status, why)| {
            let mut r = super::response::problem(status, &why);
            d::secure(r.headers_mut());
            r
        })
    }

    /// A dashboard login form's answer (`POST /dashboard/login`, its body
    /// read by the server loop, at most [`MAX_LOGIN_BODY`](super::dashboard::MAX_LOGIN_BODY) bytes).
    pub fn dashboard_login(&self, form: &[u8], headers: &HeaderMap) -> Response<String> {
        let Some(admin) = &self.shared.admin_digest else {
            return super::dashboard::login_page(super::dashboard::OFF);
        };
        let https = headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let fields = Query::parse(std::str::from_utf8(form).ok()).unwrap_or(Query(Vec::new()));
        super::dashboard::login(fields.get("token"), fields.get("next"), admin, https)
    }

    async fn admin(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        peer: IpAddr,
    ) -> Result<Response<String>, Stop> {
        let q = Query::parse(query)?;
        let json = |v: serde_json::Value| answer(StatusCode::OK, "application/json", v.to_string());
        let failed = |e: crate::Error| problem(StatusCode::BAD_REQUEST, e.to_string());
        if path == "/v1/reload" {
            if method != Method::POST {
                return Err(problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "/v1/reload takes POST".into(),
                ));
            }
            let v = self.shared.registry.reload().await.map_err(failed)?;
            return Ok(json(serde_json::json!({ "config_version": v })));
        }
        let policy = self
            .policy(q.get("policy"))?
            .acting_as(format!("admin-api {peer}"));
        let required = |name: &str| {
            q.get(name)
                .ok_or_else(|| problem(StatusCode::BAD_REQUEST, format!("give `{name}=...`")))
        };
        let duration = |name: &str, text: &str| {
            crate::duration::parse_seconds(text, crate::duration::Range::POSITIVE)
                .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("`{name}` {e}")))
        };
        if path == "/v1/blocks" {
            return Ok(json(match *method {
                Method::GET => {
                    let bans = policy.list_blocks().await.map_err(failed)?;
                    serde_json::to_value(bans).unwrap_or_default()
                }
                Method::POST => {
                    let req = policy.request_for(required("key")?);
                    let d = duration("duration", required("duration")?)?;
                    let reason = q.get("reason").unwrap_or("ratesync serve admin API");
                    let held = policy.block(&req, d, reason).await.map_err(failed)?;
                    serde_json::json!({ "banned": true, "a_ban_held": held })
                }
                Method::DELETE => {
                    let req = policy.request_for(required("key")?);
                    let held = policy.unblock(&req).await.map_err(failed)?;
                    serde_json::json!({ "lifted": held })
                }
                _ => {
                    return Err(problem(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "/v1/blocks takes GET, POST or DELETE".into(),
                    ))
                }
            }));
        }
        let list = match path.strip_prefix("/v1/lists/") {
            Some("exempt") => crate::policy::ListKind::Exempt,
            Some("deny") => crate::policy::ListKind::Deny,
            _ => {
                return Err(problem(
                    StatusCode::NOT_FOUND,
                    "the lists are /v1/lists/exempt and /v1/lists/deny".into(),
                ))
            }
        };
        Ok(json(match *method {
            Method::GET => {
                let entries = policy.list_entries(list).await.map_err(failed)?;
                serde_json::Value::Array(
                    entries
                        .into_iter()
                        .map(|e| serde_json::json!({ "entry": e.entry, "left": e.left.map(|l| l.as_secs_f64()) }))
                        .collect(),
                )
            }
            Method::POST => {
                let ttl = q.get("ttl").map(|t| duration("ttl", t)).transpose()?;
                let changed = policy
                    .list_add(list, required("entry")?, ttl)
                    .await
                    .map_err(failed)?;
                serde_json::json!({ "changed": changed })
            }
            Method::DELETE => {
                let removed = policy
                    .list_remove(list, required("entry")?)
                    .await
                    .map_err(failed)?;
                serde_json::json!({ "removed": removed })
            }
            _ => {
                return Err(problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "the lists take GET, POST or DELETE".into(),
                ))
            }
        }))
    }

    /// 200 when every store answers within [`READY_WITHIN`], else 503
    /// naming those that do not (their errors go to the log).
    async fn ready(&self) -> Response<String> {
        let mut down = Vec::new();
        for name in self.shared.registry.store_names() {
            let Some(engine) = self.shared.registry.store(&name) else {
                continue;
            };
            match tokio::time::timeout(READY_WITHIN, engine.describe()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(store = %name, error = %e, "not ready: the store does not answer");
                    down.push(name);
                }
                Err(_) => {
                    tracing::warn!(store = %name, "not ready: the store took over {} s", READY_WITHIN.as_secs());
                    down.push(name);
                }
            }
        }
        if down.is_empty() {
            answer(StatusCode::OK, "text/plain", "ready\n".to_string())
        } else {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: store(s) {} do not answer", down.join(", ")),
            )
            .into_response();
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }

    fn metrics(&self) -> Response<String> {
        #[cfg(feature = "prometheus")]
        if let Some(e) = &self.shared.exporter {
            return answer(StatusCode::OK, "text/plain; version=0.0.4", e.encode());
        }
        problem(
            StatusCode::NOT_FOUND,
            "this build has no /metrics: build with the `prometheus` feature".to_string(),
        )
        .into_response()
    }

    /// Serves on `addr` within `limits` until the returned handle is dropped.
    pub async fn serve(
        self,
        addr: SocketAddr,
        limits: ServeLimits,
    ) -> std::io::Result<DecisionServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let running = run(
            listener,
            limits,
            Protocol::Http1,
            "decision service",
            move |req: Request<hyper::body::Incoming>, peer| {
                let service = self.clone();
                async move {
                    let r =
                        if req.uri().path() == "/dashboard/login" && req.method() == Method::POST {
                            let (parts, body) = req.into_parts();
                            match read_form(body).await {
                                Some(form) => service.dashboard_login(&form, &parts.headers),
                                None => super::response::problem(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "a login form is at most 4096 bytes, sent within 5 s",
                                ),
                            }
                        } else {
                            service.answer(&req, peer.ip()).await
                        };
                    r.map(|body| Full::new(Bytes::from(body)))
                }
            },
        );
        Ok(DecisionServer::new(local, running))
    }
}

/// A login form's body: at most `MAX_LOGIN_BODY` bytes within 5 s.
async fn read_form(body: hyper::body::Incoming) -> Option<Bytes> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(body, super::dashboard::MAX_LOGIN_BODY);
    tokio::time::timeout(std::time::Duration::from_secs(5), limited.collect())
        .await
        .ok()?
        .ok()
        .map(|c| c.to_bytes())
}

/// How long `/readyz` waits for each store.
pub const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

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
