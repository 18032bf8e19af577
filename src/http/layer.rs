//! [`RateLimitLayer`]: applies a policy to every request of the service it
//! wraps.

use super::service::{RateLimit, Settings};
use super::Identify;
use crate::policy::Policy;
use std::sync::Arc;

/// A tower layer applying `policy` per request (see [`RateLimit`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> ratesync::Result<()> {
/// use ratesync::http::{Identify, PeerAddr, RateLimitLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// let registry = ratesync::Registry::from_toml_str(r#"
///     [policies.api]
///     key = "ip"
///     windows = [{ window = "1m", limit = 1, name = "minute" }]
/// "#).await?;
/// let layer = RateLimitLayer::new(registry.policy("api")?).identify(Identify::new());
/// let app = layer.layer(service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// }));
/// let request = || {
///     let mut r = http::Request::new(String::new());
///     r.extensions_mut().insert(PeerAddr("192.0.2.7".parse().unwrap()));
///     r
/// };
/// assert_eq!(app.clone().oneshot(request()).await.unwrap().status(), 200);
/// let refused = app.oneshot(request()).await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert_eq!(refused.headers()["retry-after"], "60");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    settings: Settings,
}

impl RateLimitLayer {
    /// Applies `policy`, identifying clients by their peer address alone
    /// until [`identify`](Self::identify) says more; `OPTIONS` preflights
    /// are limited like any request and allowed responses carry the
    /// policy's headers, until told otherwise.
    pub fn new(policy: Policy) -> Self {
        Self {
            settings: Settings {
                policy,
                identify: Identify::new(),
                skip_preflight: false,
                headers_on_allowed: true,
            },
        }
    }

    /// Identifies clients with `identify`.
    pub fn identify(mut self, identify: Identify) -> Self {
        self.settings.identify = identify;
        self
    }

    /// Lets CORS preflights (`OPTIONS` with `Access-Control-Request-Method`)
    /// through unlimited and uncounted.
    pub fn skip_preflight(mut self, skip: bool) -> Self {
        self.settings.skip_preflight = skip;
        self
    }

    /// Adds the policy's headers to responses the policy allowed (refusals
    /// always carry them).
    pub fn headers_on_allowed(mut self, add: bool) -> Self {
        self.settings.headers_on_allowed = add;
        self
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit::new(inner, Arc::new(self.settings.clone()))
    }
}
