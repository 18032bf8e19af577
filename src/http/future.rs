//! The future a [`RateLimit`](super::RateLimit) service answers with: the
//! policy check, then the inner service's response (or the refusal).

use std::future::Future;
use std::pin::Pin;

/// The response of a rate-limited request, or the inner service's error.
pub type ResponseFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;
