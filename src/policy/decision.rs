//! What a check answers: the [`Decision`], its HTTP headers (`Retry-After`,
//! the legacy `X-RateLimit-*` trio, and the IETF draft's `RateLimit-Policy`
//! and `RateLimit` fields, draft-ietf-httpapi-ratelimit-headers-11) and a
//! problem-details body for a refusal.

use super::rule::{HeaderStyle, WindowAction};
use serde::Serialize;
use std::time::{Duration, SystemTime};

/// What a policy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Admitted and counted.
    Allow,
    /// Refused: a `throttle` window is full (HTTP 429).
    Throttle,
    /// Refused: a `block` window is full, or the key is banned (HTTP 429).
    Block,
    /// Refused: the key is on the deny list (HTTP 403).
    Deny,
    /// Admitted without counting: the key is on the exempt list.
    Exempt,
}

impl Action {
    /// The name decisions, logs and metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Throttle => "throttle",
            Action::Block => "block",
            Action::Deny => "deny",
            Action::Exempt => "exempt",
        }
    }
}

/// One window's part in a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WindowReport {
    /// The window's name.
    pub name: &'static str,
    /// Its limit (`q=`).
    pub limit: u32,
    /// Its length (`w=`; JSON: seconds).
    #[serde(serialize_with = "seconds::one")]
    pub window: Duration,
    /// What it does above its limit.
    pub action: WindowAction,
    /// It had room for the request.
    pub allowed: bool,
    /// Requests of cost 1 still possible at once.
    pub remaining: u32,
    /// Until it holds nothing any more (JSON: seconds).
    #[serde(serialize_with = "seconds::one")]
    pub reset_after: Duration,
    /// Until the request would fit (zero when it did; JSON: seconds).
    #[serde(serialize_with = "seconds::one")]
    pub retry_after: Duration,
    /// Until one more request of cost 1 fits (zero when one does; JSON: seconds).
    #[serde(serialize_with = "seconds::one")]
    pub next_after: Duration,
}

impl WindowReport {
    /// Seconds until the quota this window reports comes back: the next
    /// request's when none is left, else the whole window's reset.
    fn reset_seconds(&self) -> u64 {
        if self.remaining == 0 || !self.allowed {
            delay_seconds(self.retry_after.max(self.next_after))
        } else {
            delay_seconds(self.reset_after)
        }
    }
}

/// The answer to one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The request may proceed (always true in shadow mode).
    pub allowed: bool,
    /// What the policy did.
    pub action: Action,
    /// The policy's name.
    pub policy: &'static str,
    /// The window that decided: the refusing one (the one that refuses
    /// longest), else the enforcing one with the least room.
    pub window: Option<&'static str>,
    /// That window's limit.
    pub limit: Option<u32>,
    /// That window's room left, for requests of cost 1.
    pub remaining: Option<u32>,
    /// Until that window holds nothing (JSON: seconds).
    #[serde(serialize_with = "seconds::some")]
    pub reset_after: Option<Duration>,
    /// For a refusal: until the request would be admitted (JSON: seconds).
    #[serde(serialize_with = "seconds::some")]
    pub retry_after: Option<Duration>,
    /// For a banned key: when the ban ends (JSON: Unix seconds).
    #[serde(serialize_with = "seconds::unix")]
    pub blocked_until: Option<SystemTime>,
    /// Some window, enforcing or not, had no room for the request.
    pub violated: bool,
    /// A shadow window (or the whole policy, in monitor mode) would have refused.
    pub would_deny: bool,
    /// The tier whose windows applied, if the request named one the policy has.
    pub tier: Option<String>,
    /// The configuration version the decision was made under.
    pub config_version: u64,
    /// The store failed and the policy fails open: admitted undecided.
    pub degraded: bool,
    /// When the store decided, on its clock (Unix µs), where it says: one
    /// clock for every host sharing the store.
    pub decided_at_us: Option<u64>,
    /// Every window's part, in the policy's order.
    pub windows: Vec<WindowReport>,
    /// The headers the policy sends.
    #[serde(skip)]
    pub(crate) style: HeaderStyle,
}

/// Durations in JSON: seconds as a number (`1.5`), instants as Unix seconds.
pub(super) mod seconds {
    use serde::Serializer;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub(crate) fn one<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(crate) fn some<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn unix<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default()) {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

/// Whole seconds, rounded up (RFC 9110 delay-seconds): a client that waits
/// this long is never early.
fn delay_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Decision {
    /// The HTTP status a server answers a refusal with (429 for throttle
    /// and block, 403 for deny); `None` when the request proceeds.
    pub fn status(&self) -> Option<u16> {
        if self.allowed {
            return None;
        }
        Some(match self.action {
            Action::Deny => 403,
            _ => 429,
        })
    }

    /// The headers of the policy's style (see [`headers_in`](Self::headers_in)).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        self.headers_in(self.style)
    }

    /// RateThrottle's name for [`headers`](Self::headers).
    pub fn to_headers(&self) -> Vec<(&'static str, String)> {
        self.headers()
    }

    /// The headers for `style`:
    ///
    /// - `Retry-After` on a 429, in whole seconds rounded up, never less
    ///   than 1 and never earlier than the refusing window's `t`.
    /// - Draft: `RateLimit-Policy: "burst";q=20;w=1, "hourly";q=5000;w=3600`
    ///   lists the enforcing windows (shadow windows limit nobody and are not
    ///   advertised), and `RateLimit: "burst";r=0;t=1, ...` their room and
    ///   reset in seconds.
    /// - Legacy: `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
    ///   `X-RateLimit-Reset` (seconds from now) of the deciding window.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
    /// let registry = ratesync::Registry::from_toml_str(r#"
    ///     [policies.api]
    ///     key = "ip"
    ///     windows = [{ window = "1s", limit = 2, name = "burst" }]
    /// "#).await?;
    /// let api = registry.policy("api")?;
    /// let req = ratesync::policy::Request::new().ip("192.0.2.1".parse().unwrap());
    /// api.check(&req).await?;
    /// api.check(&req).await?;
    /// let refused = api.check(&req).await?;
    /// assert_eq!(refused.status(), Some(429));
    /// let h = refused.headers_in(ratesync::policy::HeaderStyle::Draft);
    /// assert_eq!(h[0], ("Retry-After", "1".to_string()));
    /// assert_eq!(h[1], ("RateLimit-Policy", r#""burst";q=2;w=1"#.to_string()));
    /// assert_eq!(h[2], ("RateLimit", r#""burst";r=0;t=1"#.to_string()));
    /// # Ok(()) }
    /// ```
    pub fn headers_in(&self, style: HeaderStyle) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let (Some(429), Some(retry)) = (self.status(), self.retry_after) {
            out.push(("Retry-After", delay_seconds(retry).max(1).to_string()));
        }
        let enforcing: Vec<&WindowReport> = self
            .windows
            .iter()
            .filter(|w| w.action != WindowAction::Monitor)
            .collect();
        if matches!(style, HeaderStyle::Both | HeaderStyle::Draft) && !enforcing.is_empty() {
            let policy = enforcing
                .iter()
                .map(|w| format!("\"{}\";q={};w={}", w.name, w.limit, delay_seconds(w.window)))
                .collect::<Vec<_>>()
                .join(", ");
            let live = enforcing
                .iter()
                .map(|w| format!("\"{}\";r={};t={}", w.name, w.remaining, w.reset_seconds()))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(("RateLimit-Policy", policy));
            out.push(("RateLimit", live));
        }
        if matches!(style, HeaderStyle::Both | HeaderStyle::Legacy) {
            if let Some(w) = self.deciding_window() {
                out.push(("X-RateLimit-Limit", w.limit.to_string()));
                out.push(("X-RateLimit-Remaining", w.remaining.to_string()));
                out.push(("X-RateLimit-Reset", w.reset_seconds().to_string()));
            }
        }
        out
    }

    fn deciding_window(&self) -> Option<&WindowReport> {
        let name = self.window?;
        self.windows.iter().find(|w| w.name == name)
    }

    /// For a refusal, an RFC 9457 problem-details body
    /// (`application/problem+json`): the draft's `quota-exceeded` type with
    /// the `violated-policies` that refused, or a plain 403 for the deny
    /// list. `None` when the request proceeds.
    pub fn problem_details(&self) -> Option<String> {
        let status = self.status()?;
        let body = if status == 403 {
            serde_json::json!({
                "type": "about:blank",
                "title": "Forbidden",
                "status": 403,
                "detail": format!("refused by policy `{}`", self.policy),
            })
        } else {
            let violated: Vec<&str> = self
                .windows
                .iter()
                .filter(|w| !w.allowed && w.action != WindowAction::Monitor)
                .map(|w| w.name)
                .collect();
            let detail = match self.retry_after {
                Some(r) => format!("retry in {} s", delay_seconds(r).max(1)),
                None => "quota exceeded".to_string(),
            };
            serde_json::json!({
                "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
                "title": "Request cannot be satisfied as assigned quota has been exceeded",
                "status": 429,
                "detail": detail,
                "violated-policies": violated,
            })
        };
        Some(body.to_string())
    }
}
