//! [`RateLimit`]: the service that checks each request against a policy
//! before the service it wraps sees it.

use super::future::ResponseFuture;
use super::response::{add_headers, refusal, unavailable};
use super::Identify;
use crate::policy::Policy;
use http::{Method, Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};

/// What a layer was told.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) policy: Policy,
    pub(super) identify: Identify,
    pub(super) skip_preflight: bool,
    pub(super) headers_on_allowed: bool,
}

/// Checks every request against a policy (build it with
/// [`RateLimitLayer`](super::RateLimitLayer)):
///
/// - refused (throttle or block: 429; deny: 403): the inner service is not
///   called; the response has `Retry-After`, the policy's headers and an
///   `application/problem+json` body. A CORS layer around this one adds
///   its headers to a refusal as to any response.
/// - allowed: the inner service answers, with the policy's headers added
///   unless told otherwise.
/// - the store failed: as the policy's `on_backend_error` says: admitted
///   (`fail_open`), or 503 with `Retry-After: 1` (`fail_closed`), logged.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> RateLimit<S> {
    pub(super) fn new(inner: S, settings: Arc<Settings>) -> Self {
        Self { inner, settings }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn is_preflight<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for RateLimit<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The service made ready is the one to call; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        Box::pin(async move {
            if settings.skip_preflight && is_preflight(&req) {
                return inner.call(req).await;
            }
            let policy = &settings.policy;
            let peer = Identify::peer(req.extensions());
            if peer.is_none() {
                tracing::debug!(policy = %policy.name(),
                    "no peer address in the request's extensions; keyed without an address");
            }
            let asked = settings
                .identify
                .request(
                    policy,
                    peer,
                    req.uri().path(),
                    req.headers(),
                    req.extensions(),
                )
                .method(req.method().as_str());
            match policy.check(&asked).await {
                Ok(d) => match refusal(&d) {
                    Some(refused) => Ok(refused),
                    None => {
                        let mut response = inner.call(req).await?;
                        if settings.headers_on_allowed {
                            add_headers(response.headers_mut(), &d);
                        }
                        Ok(response)
                    }
                },
                // Logged, counted and named by the policy already.
                Err(_) => Ok(unavailable()),
            }
        })
    }
}
