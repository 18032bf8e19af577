//! The web dashboard of `ratesync serve`, over the decision log:
//!
//! - `GET /dashboard/?days=N`: today's and the window's totals, a chart of
//!   admitted and refused per minute (one day) or hour (more), the top
//!   offenders, hits per rule, and the bans in force;
//! - `GET /dashboard/offenders.csv?days=N`: the top offenders as CSV;
//! - `GET /dashboard/offender?key=K&days=N`: one key's detail as JSON
//!   (400 without `key`);
//! - `POST /dashboard/login` (form fields `token`, and `next`: a page of
//!   the dashboard to go to) and `POST /dashboard/logout`.
//!
//! Only the admin token opens it: the login form sets a session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Path=/dashboard`, 12 hours, `Secure`
//! behind a proxy that says `X-Forwarded-Proto: https`) holding an expiry
//! and its HMAC under the token's digest, so no token is ever in a URL and
//! changing the token ends every session; scripts may send
//! `Authorization: Bearer <token>` instead. Anything else is answered 403,
//! with the login form. Pages are rendered on the server, charts as inline
//! SVG, with no script at all (the Content-Security-Policy allows none).
//! Every key shown is client input and is escaped.

use crate::analytics::{clamp_days, Analytics, Series, Summary};
use crate::decision_log::sink::{Offender, RuleHits};
use crate::policy::BlockEntry;
use crate::registry::Registry;
use crate::secret::{same_bytes, token_digest};
use hmac::{Hmac, Mac};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use sha2::Sha256;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The session cookie's name.
pub const COOKIE: &str = "ratesync_session";

/// How long a dashboard session lasts.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);

/// The longest login form body read.
pub const MAX_LOGIN_BODY: usize = 4096;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(key: &[u8; 32], expires: u64) -> [u8; 32] {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(b"ratesync-dashboard-session-v1:");
    m.update(&expires.to_be_bytes());
    m.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A new session's cookie value: `EXPIRES.HMAC`.
pub fn new_session(admin_digest: &[u8; 32]) -> String {
    let expires = now_s() + SESSION.as_secs();
    format!("{expires}.{}", hex(&mac(admin_digest, expires)))
}

/// Whether `value` is a session this token issued that has not expired.
pub fn valid_session(value: &str, admin_digest: &[u8; 32]) -> bool {
    let Some((exp, sig)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = exp.parse::<u64>() else {
        return false;
    };
    let want = hex(&mac(admin_digest, expires));
    expires > now_s() && same_bytes(sig.as_bytes(), want.as_bytes())
}

/// The session cookie of `headers`, if any.
pub fn session_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// `text` safe in HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Why every dashboard page is 403 without an admin token configured.
pub const OFF: &str =
    "The dashboard is off: set http.admin_token (or $RATESYNC_ADMIN_TOKEN) to open it.";

/// A 303 to `location` (a path of the dashboard).
pub fn redirect(location: &str) -> Response<String> {
    let mut r = html(StatusCode::SEE_OTHER, String::new());
    let location =
        HeaderValue::from_str(location).unwrap_or(HeaderValue::from_static("/dashboard/"));
    r.headers_mut().insert(http::header::LOCATION, location);
    r
}

/// An HTML page with the dashboard's security headers.
pub fn html(status: StatusCode, body: String) -> Response<String> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(h);
    r
}

/// Headers every dashboard answer carries.
pub fn secure(h: &mut HeaderMap) {
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}\
table{border-collapse:collapse;background:#fff}td,th{padding:4px 10px;border:1px solid #ddd;text-align:left}\
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}\
.cards{display:flex;gap:12px}.card{background:#fff;border:1px solid #ddd;padding:10px 14px;min-width:150px}\
.card b{display:block;font-size:22px}.k{font-family:ui-monospace,monospace;word-break:break-all}\
nav a{margin-right:12px}";

fn page(title: &str, body: &str) -> String {
    format!("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>", escape(title))
}

/// The 403 page: why, and the login form.
pub fn login_page(why: &str) -> Response<String> {
    let body = format!(
        "<h1>ratesync dashboard</h1><p class=\"muted\" id=\"why\">{}</p>\
         <form method=\"post\" action=\"/dashboard/login\">\
         <label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" autofocus></label> \
         <button type=\"submit\">Sign in</button></form>",
        escape(why)
    );
    html(
        StatusCode::FORBIDDEN,
        page("ratesync dashboard: sign in", &body),
    )
}

/// The answer to a login form (its fields `token` and `next`, decoded):
/// a session and a redirect to the dashboard, or 403 again.
pub fn login(
    token: Option<&str>,
    next: Option<&str>,
    admin_digest: &[u8; 32],
    https: bool,
) -> Response<String> {
    let next = next.filter(|n| safe_next(n)).unwrap_or("/dashboard/");
    let Some(token) = token else {
        return login_page("Give the admin token.");
    };
    if !same_bytes(&token_digest(token.trim()), admin_digest) {
        tracing::warn!("dashboard login with a wrong token");
        return login_page("That is not the admin token.");
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}{}",
        new_session(admin_digest),
        SESSION.as_secs(),
        if https { "; Secure" } else { "" }
    );
    let mut r = redirect(next);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r
}

/// Whether a login's `next` stays on the dashboard: a path under
/// `/dashboard/`, never another host (`//evil`, `\\evil`) nor a header break.
fn safe_next(next: &str) -> bool {
    next.starts_with("/dashboard/")
        && !next.contains("//")
        && !next.contains('\\')
        && next.len() <= 256
        && next.bytes().all(|b| b.is_ascii_graphic())
}

/// Ends the session (the cookie is cleared) and shows the form.
pub fn logout() -> Response<String> {
    let mut r = login_page("Signed out.");
    r.headers_mut().insert(
        http::header::SET_COOKIE,
        HeaderValue::from_static(
            "ratesync_session=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// What a dashboard page failed on.
pub type Failure = (StatusCode, String);

fn analytics_of(registry: &Registry) -> Result<Analytics, Failure> {
    registry
        .decision_log()
        .map(|l| l.analytics())
        .ok_or_else(|| (StatusCode::NOT_FOUND, "no decision log is configured: add [decision_log] (and log_decisions to the policies) to see decisions here".to_string()))
}

fn failed(e: crate::Error) -> Failure {
    tracing::warn!(error = %e, "dashboard query failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the decision log did not answer: {e}"),
    )
}

/// `/dashboard/offenders.csv`.
pub async fn offenders_csv(registry: &Registry, days: i64) -> Result<Response<String>, Failure> {
    let a = analytics_of(registry)?;
    let csv = a
        .top_offenders_csv(days, None, 1000)
        .await
        .map_err(failed)?;
    let mut r = Response::new(csv);
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    r.headers_mut().insert(
        http::header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"offenders.csv\""),
    );
    secure(r.headers_mut());
    Ok(r)
}

/// `/dashboard/offender?key=K`.
pub async fn offender(
    registry: &Registry,
    key: Option<&str>,
    days: i64,
) -> Result<Response<String>, Failure> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "give `key=...`: the offender's key as logged".into(),
        ));
    };
    let a = analytics_of(registry)?;
    let report = a.offender(key, days, None).await.map_err(failed)?;
    let mut r = Response::new(serde_json::to_string(&report).unwrap_or_default());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    secure(r.headers_mut());
    Ok(r)
}

/// `/dashboard/`.
pub async fn overview(registry: &Registry, days: i64) -> Result<Response<String>, Failure> {
    let a = analytics_of(registry)?;
    let days = i64::from(clamp_days(days));
    let summary = a.summary(days, None).await.map_err(failed)?;
    let series = a.series(days, None).await.map_err(failed)?;
    let top = a.top_offenders(days, None, 20).await.map_err(failed)?;
    let rules = a.rule_hits(days, None).await.map_err(failed)?;
    let mut bans: Vec<(String, BlockEntry)> = Vec::new();
    for name in registry.policy_names() {
        if let Ok(p) = registry.policy(&name) {
            match p.list_blocks().await {
                Ok(list) => bans.extend(list.into_iter().map(|b| (name.clone(), b))),
                Err(e) => tracing::warn!(policy = %name, error = %e, "dashboard cannot list bans"),
            }
        }
    }
    bans.sort_by_key(|b| std::cmp::Reverse(b.1.left));
    bans.truncate(50);
    let span = a.span(days, None);
    Ok(html(
        StatusCode::OK,
        render(
            &summary,
            &series,
            (span.since, span.until),
            &top,
            &rules,
            &bans,
        ),
    ))
}

fn card(id: &str, label: &str, value: impl std::fmt::Display) -> String {
    format!("<div class=\"card\">{label}<b id=\"{id}\">{value}</b></div>")
}

fn render(
    s: &Summary,
    series: &Series,
    span: (i64, i64),
    top: &[Offender],
    rules: &[RuleHits],
    bans: &[(String, BlockEntry)],
) -> String {
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>ratesync</h1><p class=\"muted\">decisions over the last {} day(s)</p>\
         <nav><a href=\"?days=1\">1 day</a><a href=\"?days=7\">7 days</a><a href=\"?days=30\">30 days</a>\
         <a href=\"offenders.csv?days={}\">offenders.csv</a></nav>\
         <form method=\"post\" action=\"/dashboard/logout\"><button>Sign out</button></form>",
        s.days, s.days
    );
    let _ = write!(
        b,
        "<h2>Today</h2><div class=\"cards\">{}{}{}</div>",
        card("today-total", "decisions", s.today.total),
        card("today-allowed", "allowed", s.today.allowed),
        card("today-blocked", "blocked", s.today.blocked),
    );
    let _ = write!(
        b,
        "<h2>Last {} day(s)</h2><div class=\"cards\">{}{}{}{}</div>",
        s.days,
        card("window-total", "decisions", s.window.total),
        card("window-allowed", "allowed", s.window.allowed),
        card("window-blocked", "blocked", s.window.blocked),
        card(
            "window-block-rate",
            "block rate",
            format!("{:.1}%", s.block_rate * 100.0)
        ),
    );
    let _ = write!(
        b,
        "<h2>Allowed and blocked per {}</h2>{}",
        if series.bucket == 60 {
            "minute"
        } else {
            "hour"
        },
        chart(series, span)
    );
    b.push_str("<h2>Top offenders</h2>");
    if top.is_empty() {
        b.push_str("<p class=\"muted\">No key was refused.</p>");
    } else {
        b.push_str("<table id=\"offenders\"><tr><th>key</th><th>blocked</th><th>total</th><th>block rate</th></tr>");
        for o in top {
            let rate = o.block_rate() * 100.0;
            let _ = write!(
                b,
                "<tr><td class=\"k\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{rate:.1}%</td></tr>",
                escape(&o.key), o.blocked, o.total
            );
        }
        b.push_str("</table>");
    }
    b.push_str("<h2>Rule hits</h2><table id=\"rules\"><tr><th>policy</th><th>window</th><th>hits</th><th>blocks</th></tr>");
    for r in rules {
        let window = if r.window.is_empty() {
            "(lists)"
        } else {
            &r.window
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&r.policy),
            escape(window),
            r.hits,
            r.blocks
        );
    }
    b.push_str("</table><h2>Bans in force</h2>");
    if bans.is_empty() {
        b.push_str("<p class=\"muted\" id=\"bans\">No ban in force.</p>");
    } else {
        b.push_str(
            "<table id=\"bans\"><tr><th>policy</th><th>key</th><th>left</th><th>reason</th></tr>",
        );
        for (p, ban) in bans {
            let _ = write!(
                b,
                "<tr><td>{}</td><td class=\"k\">{}</td><td class=\"n\">{:.0} s</td><td>{}</td></tr>",
                escape(p), escape(&ban.key), ban.left.as_secs_f64(), escape(&ban.reason)
            );
        }
        b.push_str("</table>");
    }
    page("ratesync dashboard", &b)
}

/// Admitted (green) and refused (red) per bucket as stacked bars, in SVG.
fn chart(series: &Series, (since, until): (i64, i64)) -> String {
    let (w, h, pad) = (960.0_f64, 220.0_f64, 30.0_f64);
    let buckets = ((until - since) / series.bucket).max(1) as f64;
    let peak = series
        .points
        .iter()
        .map(|p| p.allowed + p.blocked)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (w - 2.0 * pad) / buckets;
    let bar = slot.max(2.0);
    let mut svg = format!(
        "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"allowed and blocked over time\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#ddd\"/>\
         <text x=\"{pad}\" y=\"16\" font-size=\"11\" fill=\"#777\">peak {peak} per bucket</text>"
    );
    for p in &series.points {
        let x = pad + ((p.at - since) / series.bucket) as f64 * slot;
        let scale = (h - 2.0 * pad) / peak;
        let (ha, hb) = (p.allowed as f64 * scale, p.blocked as f64 * scale);
        let base = h - pad;
        let _ = write!(
            svg,
            "<g><title>{} allowed, {} blocked</title>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{ha:.1}\" fill=\"#4caf50\"/>\
             <rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{hb:.1}\" fill=\"#e53935\"/></g>",
            p.allowed,
            p.blocked,
            base - ha,
            base - ha - hb
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\" fill=\"#777\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#777\" text-anchor=\"end\">{} (UTC)</text>\
         <rect x=\"{}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#4caf50\"/><text x=\"{}\" y=\"17\" font-size=\"11\">allowed</text>\
         <rect x=\"{}\" y=\"8\" width=\"10\" height=\"10\" fill=\"#e53935\"/><text x=\"{}\" y=\"17\" font-size=\"11\">blocked</text></svg>",
        h - 10.0,
        stamp(since),
        w - pad,
        h - 10.0,
        stamp(until),
        w - 200.0,
        w - 186.0,
        w - 120.0,
        w - 106.0
    );
    svg
}

/// `YYYY-MM-DD HH:MM` of Unix seconds.
fn stamp(secs: i64) -> String {
    crate::analytics::utc_time(secs)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_hold_until_they_expire_and_only_for_their_token() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let s = new_session(&a);
        assert!(valid_session(&s, &a));
        assert!(!valid_session(&s, &b), "another token's session");
        let (exp, sig) = s.split_once('.').unwrap();
        let later = exp.parse::<u64>().unwrap() + 3600;
        assert!(
            !valid_session(&format!("{later}.{sig}"), &a),
            "an extended expiry"
        );
        let past = now_s() - 1;
        assert!(
            !valid_session(&format!("{past}.{}", hex(&mac(&a, past))), &a),
            "expired"
        );
        assert!(!valid_session("garbage", &a));
    }

    #[test]
    fn a_login_only_returns_to_the_dashboard() {
        assert!(safe_next("/dashboard/?days=7"));
        for bad in [
            "//evil.example/",
            "/dashboard//evil",
            "https://evil/",
            "/dashboard/\\evil",
            "/dashboard/\r\nSet-Cookie: x",
            "/v1/blocks",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }

    #[test]
    fn keys_are_escaped() {
        assert_eq!(
            escape("<script>\"x\"&'\u{1b}"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;\u{FFFD}"
        );
        assert_eq!(stamp(1_700_000_000), "2023-11-14 22:13");
    }
}
