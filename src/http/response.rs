//! The HTTP side of a [`Decision`]: its headers on any response, and the
//! response that refuses (429 or 403, `Retry-After`, the policy's headers,
//! an `application/problem+json` body), or answers a store failure when the
//! policy fails closed (503).

use crate::policy::Decision;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, Response, StatusCode};

/// The media type of a refusal's body (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Adds the decision's headers (the policy's style) to `headers`,
/// replacing any of the same name.
pub fn add_headers(headers: &mut HeaderMap, d: &Decision) {
    for (name, value) in d.headers() {
        // Names are the draft's and the legacy ones; values are digits and
        // window names checked to be printable ASCII: both always valid.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
}

/// The response refusing a request `d` refused, with `d`'s status,
/// headers and problem-details body; `None` when `d` admits it.
pub fn refusal<B: From<String>>(d: &Decision) -> Option<Response<B>> {
    let status = StatusCode::from_u16(d.status()?).ok()?;
    let body = d.problem_details()?;
    let mut r = Response::new(B::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    add_headers(r.headers_mut(), d);
    Some(r)
}

/// A plain problem-details response (RFC 9457, `about:blank`): `status`,
/// its reason as the title, and `detail`.
pub fn problem<B: From<String>>(status: StatusCode, detail: &str) -> Response<B> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or_default(),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = Response::new(B::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    r
}

/// The response when the store failed and the policy fails closed: 503,
/// `Retry-After: 1`, and a body that says nothing of the store (the log
/// has the error).
pub fn unavailable<B: From<String>>() -> Response<B> {
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the rate limit cannot be decided now; retry shortly",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
